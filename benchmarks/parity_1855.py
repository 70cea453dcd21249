"""Parity of pgolf's `pr1855` model, optimizers and quantizer with PR #1855's own script, CPU fp32.

    python benchmarks/parity_1855.py --reference .ref/train_gpt_1855.py     # ~1 min on 2 cores

The reference is `records/track_10min_16mb/2026-04-27_SP8192_LQER_SparseGate_BOSSmearFix_9HpStack_
1.0611/train_gpt.py` of the challenge repository, copied into the git-ignored `.ref/` (never
committed):

    git -C /work/.mirror/openai+parameter-golf/repo show HEAD:records/track_10min_16mb/\\
2026-04-27_SP8192_LQER_SparseGate_BOSSmearFix_9HpStack_1.0611/train_gpt.py > .ref/train_gpt_1855.py

Its CUDA-only imports are replaced before it is imported, by stand-ins written here:
`flash_attn_interface` (FA3) by SDPA with K/V repeated over the query groups, its varlen form by
SDPA under a block-diagonal causal mask built from `cu_seqlens`; `triton` by a module whose `jit`
returns the kernel undecorated (the kernels are never launched: `FUSED_CE_ENABLED=0`, every MLP's
`use_fused=False`); `torch.compile` returns the function undecorated while the script loads.
Its `Hyperparameters` read the environment at import: the record's own command line (`RUN_ENV`,
from its README) is set first, so `hyper_diffs` compares pgolf's preset with the record as it ran.

Steps: (1) the reference GPT built from its Hyperparameters at a small width, every parameter
perturbed (zero-initialised gates and projections would hide bugs), copied into pgolf's GPT
(`ref_to_pgolf`: banked 3-D tensors -> per-layer matrices, renamed gates and lane scalars);
(2) fp32 logits, loss and every gradient, recurrence off and on, with and without document
isolation (the reference: FA3 varlen over `cu_seqlens` at the BOS positions of one packed row;
pgolf: `model.doc_mask`); (3) one optimizer step (Muon + AdamW at step 0's momentum) from
identical weights and gradients clipped to 0.3 by their exact (float64) norm, each side its own
optimizers, the reference's bf16 casts turned into fp32 (`bf16_as_fp32`), and each side's own
fp32 norm against the exact one; (4) GPTQ int6/int7 + int8 gates + low-rank terms of a synthetic
state given the same Hessians: every stored code and scale compared.
"""

from __future__ import annotations

import contextlib
import dataclasses as dc
import importlib.util
import io
import json
import os
import sys
import types
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from pgolf import config as C
from pgolf import lqer, quant
from pgolf.model import GPT
from pgolf.optim import build_optimizers, clip_grad_norm_, muon_momentum_at
from pgolf.quantplan import parse_groups

sys.path.insert(0, str(Path(__file__).resolve().parent))
import parity_common as X  # noqa: E402  (the sibling module: shared comparisons)

DEFAULT_REF = Path(__file__).resolve().parents[1] / ".ref" / "train_gpt_1855.py"
FETCH = (
    "git -C /work/.mirror/openai+parameter-golf/repo show HEAD:records/track_10min_16mb/"
    "2026-04-27_SP8192_LQER_SparseGate_BOSSmearFix_9HpStack_1.0611/train_gpt.py "
    "> .ref/train_gpt_1855.py"
)
BANKS = ("qo_bank", "kv_bank", "mlp_up_bank", "mlp_down_bank")
RUN_ENV = {  # the record's command line (README), training and quantization variables
    "VOCAB_SIZE": "8192",
    "CASEOPS_ENABLED": "1",
    "EMBED_BITS": "7",
    "MATRIX_LR": "0.026",
    "MIN_LR": "0.1",
    "MLP_CLIP_SIGMAS": "11.5",
    "ATTN_CLIP_SIGMAS": "13.0",
    "EMBED_CLIP_SIGMAS": "14.0",
    "GRAD_CLIP_NORM": "0.3",
    "WARMUP_STEPS": "20",
    "MUON_BACKEND_STEPS": "5",
    "WARMDOWN_FRAC": "0.85",
    "BETA2": "0.99",
    "SPARSE_ATTN_GATE_SCALE": "0.5",
    "GPTQ_RESERVE_SECONDS": "0.5",
    "GPTQ_CALIBRATION_BATCHES": "16",
    "VAL_LOSS_EVERY": "0",
    "GATED_ATTN_QUANT_GATE": "1",
    "SPARSE_ATTN_GATE_ENABLED": "1",
    "GATE_WINDOW": "12",
    "SMEAR_GATE_ENABLED": "1",
    "LQER_ENABLED": "1",
    "LQER_ASYM_ENABLED": "1",
    "LQER_RANK": "4",
    "LQER_FACTOR_BITS": "4",
    "LQER_ASYM_GROUP": "64",
    "LQER_TOP_K": "3",
    "FUSED_CE_ENABLED": "0",  # the Triton kernel: same arithmetic, CUDA only
}


def find_reference(path: str | None = None) -> Path | None:
    """--reference, else $PGOLF_REF_1855, else .ref/train_gpt_1855.py; None when absent."""
    for cand in (path, os.environ.get("PGOLF_REF_1855"), str(DEFAULT_REF)):
        if cand and Path(cand).is_file():
            return Path(cand)
    return None


# ----------------------------------------------------------------------------------------------
# Stand-ins for the CUDA-only imports


def fa3_dense(q: Tensor, k: Tensor, v: Tensor, causal: bool = True, **_: Any) -> Tensor:
    """flash_attn_func(q [B,T,H,D], k/v [B,T,Hk,D], causal) by SDPA, K/V repeated per group."""
    rep = q.shape[2] // k.shape[2]
    k, v = k.repeat_interleave(rep, 2), v.repeat_interleave(rep, 2)
    y = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal
    )
    return y.transpose(1, 2)


def segment_mask(cu_seqlens: Tensor, n: int) -> Tensor:
    """[n, n] boolean: causal and within one segment [cu[j], cu[j+1]) (padding repeats n)."""
    pos = torch.arange(n)
    seg = torch.bucketize(pos, cu_seqlens.long().cpu(), right=True)
    return (seg[:, None] == seg[None, :]) & (pos[None, :] <= pos[:, None])


def fa3_varlen(q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor, **_: Any) -> Tensor:
    """flash_attn_varlen_func(q [N,H,D], k/v [N,Hk,D], cu_seqlens, causal) by masked SDPA."""
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    mask = segment_mask(cu_seqlens_q, q.shape[0]).to(q.device)
    y = F.scaled_dot_product_attention(
        q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None], attn_mask=mask
    )
    return y[0].transpose(0, 1)


def stand_in_modules() -> dict[str, ModuleType]:
    """sys.modules entries for flash_attn_interface and triton (never launched on CPU)."""
    fa = types.ModuleType("flash_attn_interface")
    fa.flash_attn_func = fa3_dense  # type: ignore[attr-defined]
    fa.flash_attn_varlen_func = fa3_varlen  # type: ignore[attr-defined]
    triton = types.ModuleType("triton")
    triton.jit = lambda fn=None, **_: fn if fn is not None else (lambda f: f)  # type: ignore
    triton.cdiv = lambda a, b: -(-a // b)  # type: ignore[attr-defined]
    tl = types.ModuleType("triton.language")
    tl.constexpr = int  # type: ignore[attr-defined]
    tools = types.ModuleType("triton.tools")
    desc = types.ModuleType("triton.tools.tensor_descriptor")
    desc.TensorDescriptor = type("TensorDescriptor", (), {})  # type: ignore[attr-defined]
    triton.language, triton.tools = tl, tools  # type: ignore[attr-defined]
    tools.tensor_descriptor = desc  # type: ignore[attr-defined]
    return {
        "flash_attn_interface": fa,
        "triton": triton,
        "triton.language": tl,
        "triton.tools": tools,
        "triton.tools.tensor_descriptor": desc,
    }


_LOADED: dict[str, ModuleType] = {}


def load_reference(path: Path) -> ModuleType:
    """Import #1855's script once per process (it registers custom ops) under the stand-ins and
    the record's command-line environment, `torch.compile` an identity meanwhile."""
    key = str(path.resolve())
    if key in _LOADED:
        return _LOADED[key]
    saved = {k: os.environ.get(k) for k in RUN_ENV}
    os.environ.update(RUN_ENV)
    mods = stand_in_modules()
    old = {k: sys.modules.get(k) for k in mods}
    sys.modules.update(mods)
    compile_ = torch.compile  # decorating would import inductor, which imports triton
    torch.compile = lambda fn=None, **_: fn if fn is not None else (lambda f: f)  # type: ignore
    try:
        spec = importlib.util.spec_from_file_location("ref1855", path)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        torch.compile = compile_  # type: ignore[assignment]
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
        for k, m in old.items():
            sys.modules.pop(k) if m is None else sys.modules.__setitem__(k, m)
    _LOADED[key] = mod
    return mod


# ----------------------------------------------------------------------------------------------
# Configs and the parameter mapping (pure functions: tested without the reference)


def parity_config(size: str = "tiny") -> C.ModelConfig:
    """pgolf's pr1855 model; 'tiny' keeps every layer index (11 layers, lanes from 8, recurrence
    3-5 x3, XSA everywhere, 64-dim heads with 16 RoPE dims, gate window 12) at width 128."""
    m = dc.replace(C.pr1855().model, attn_backend="sdpa")
    if size == "full":
        return m
    return dc.replace(m, vocab_size=512, model_dim=128, num_heads=2, num_kv_heads=1)


def reference_hparams(ref: ModuleType, m: C.ModelConfig) -> SimpleNamespace:
    """The reference's Hyperparameters (its RUN_ENV values) with pgolf's model shape; ValueError
    where #1855's model cannot express `m`."""
    bad = []
    if m.parallel_residual != "lanes2x2" or m.skip_gate != "lerp" or m.ve_dim:
        bad.append("needs parallel_residual lanes2x2, skip_gate lerp, no value embeddings")
    if not (m.smear_gate and m.smear_form == "window") or m.attn_gate != "sparse":
        bad.append("needs the window SmearGate and the sparse attention gate")
    if tuple(m.xsa_layers) != tuple(range(m.num_layers)) or m.activation != "leaky_relu2":
        bad.append("needs XSA on every layer and LeakyReLU(0.5)^2")
    if bad:
        raise ValueError("parity_1855: #1855's model cannot express it: " + "; ".join(bad))
    h = SimpleNamespace(**{k: v for k, v in vars(ref.Hyperparameters).items() if k[0] != "_"})
    h.__dict__.update(
        vocab_size=m.vocab_size,
        num_layers=m.num_layers,
        model_dim=m.model_dim,
        num_heads=m.num_heads,
        num_kv_heads=m.num_kv_heads,
        mlp_mult=m.mlp_mult,
        qk_gain_init=m.qk_gain_init,
        rope_dims=m.rope_dims,
        rope_base=m.rope_base,
        logit_softcap=m.logit_softcap,
        parallel_start_layer=m.parallel_start,
        parallel_final_lane=m.parallel_final,
        gate_window=m.gate_window,
        sparse_attn_gate_scale=m.attn_gate_scale,
        fused_ce_enabled=False,
    )
    return h


def _block_names(i: int, n: int) -> dict[str, tuple[str, int]]:
    return {
        f"blocks.{i}.attn.c_q.weight": ("qo_bank", i),
        f"blocks.{i}.attn.proj.weight": ("qo_bank", n + i),
        f"blocks.{i}.attn.c_k.weight": ("kv_bank", i),
        f"blocks.{i}.attn.c_v.weight": ("kv_bank", n + i),
        f"blocks.{i}.mlp.fc.weight": ("mlp_up_bank", i),
        f"blocks.{i}.mlp.proj.weight": ("mlp_down_bank", i),
    }


RENAMES = {  # #1855 name -> pgolf name (the rest are equal)
    "parallel_post_lambdas": "lane_post",
    "parallel_resid_lambdas": "lane_resid",
    "smear_gate.weight": "smear.gate",
    "smear_lambda": "smear.lam",
}


def ref_to_pgolf(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """#1855 state (or gradient) dict -> pgolf names and shapes."""
    n = sd["mlp_up_bank"].shape[0]
    out: dict[str, Tensor] = {}
    for name, t in sd.items():
        if name in BANKS:
            continue
        name = RENAMES.get(name, name.replace(".attn.attn_gate_w", ".attn.gate_w"))
        out[name] = t
    for i in range(n):
        for pname, (bank, j) in _block_names(i, n).items():
            out[pname] = sd[bank][j]
    return out


def pgolf_to_ref(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Inverse of `ref_to_pgolf`."""
    n = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    back = {v: k for k, v in RENAMES.items()}
    mats = {k: v for i in range(n) for k, v in _block_names(i, n).items()}
    banks: dict[str, dict[int, Tensor]] = {b: {} for b in BANKS}
    out: dict[str, Tensor] = {}
    for name, t in sd.items():
        if name in mats:
            bank, j = mats[name]
            banks[bank][j] = t
        else:
            out[back.get(name, name.replace(".attn.gate_w", ".attn.attn_gate_w"))] = t
    for bank, parts in banks.items():
        out[bank] = torch.stack([parts[j] for j in range(len(parts))])
    return out


def cu_seqlens_of(idx: Tensor, bos: int) -> tuple[Tensor, int]:
    """#1855's boundaries for one packed row idx [T]: 0, every BOS position, T."""
    T = idx.numel()
    starts = sorted({0, *torch.nonzero(idx == bos)[:, 0].tolist()})
    bounds = torch.tensor([*starts, T], dtype=torch.int32)
    return bounds, int((bounds[1:] - bounds[:-1]).max())


# ----------------------------------------------------------------------------------------------
# The comparisons


def build_pair(ref: ModuleType, m: C.ModelConfig, seed: int = 0) -> tuple[Any, GPT]:
    """The reference GPT (fp32, perturbed, eager MLP) and pgolf's GPT holding the same weights."""
    ref.BOS_ID = m.bos_id
    torch.manual_seed(seed)
    r = ref.GPT(reference_hparams(ref, m)).float()
    for block in r.blocks:
        block.mlp.use_fused = False
    g = GPT(m)
    X.load_perturbed(r, g, ref_to_pgolf, "parity_1855")
    return r, g


def compare_forward(r: Any, g: GPT, idx: Tensor, tgt: Tensor, recur: bool) -> dict[str, Any]:
    """One packed row idx [1, T]: max |logit| and |loss| differences, max |gradient difference|
    over the largest gradient entry, and the parameter with the largest own ratio. With
    `g.cfg.doc_mask` the reference runs FA3 varlen over the BOS boundaries."""
    r.looping_active = recur
    g.set_recurrence(recur)
    ref_layers = [*r.encoder_indices, *r.decoder_indices] if recur else list(range(r.num_layers))
    if ref_layers != g.virtual_layers():
        raise ValueError(f"virtual layers: {ref_layers} vs {g.virtual_layers()}")
    kw: dict[str, Any] = {}
    if g.cfg.doc_mask:
        cu, mx = cu_seqlens_of(idx[0], g.cfg.bos_id)
        kw = dict(cu_seqlens=cu, max_seqlen=mx)
    with torch.no_grad():
        dlogit = (r.forward_logits(idx, **kw) - g(idx)).abs().max().item()
    return X.loss_and_grads(
        r, g, lambda: r(idx, tgt, **kw), lambda: g(idx, tgt), ref_to_pgolf, dlogit
    )


def reference_optimizers(ref: ModuleType, r: Any, h: Any) -> list[torch.optim.Optimizer]:
    """#1855's three optimizers and groups (its `Optimizers`, without the CUDA stream)."""
    pats = ref.CONTROL_TENSOR_NAME_PATTERNS
    scal = [p for n, p in r.blocks.named_parameters() if p.ndim < 2 or any(c in n for c in pats)]
    scal += [r.skip_weights, r.skip_gates, r.parallel_post_lambdas, r.parallel_resid_lambdas]
    scal += [r.smear_gate.weight, r.smear_lambda]
    betas, eps = (h.beta1, h.beta2), h.adam_eps
    tok = [r.tok_emb.weight]
    return [
        torch.optim.AdamW(tok, lr=h.tied_embed_lr, betas=betas, eps=eps, weight_decay=h.embed_wd),
        torch.optim.AdamW(scal, lr=h.scalar_lr, betas=betas, eps=eps, weight_decay=h.adam_wd),
        ref.Muon(
            [getattr(r, b) for b in BANKS],
            lr=h.matrix_lr,
            momentum=h.muon_momentum_warmup_start,  # step 0 of its warm-up
            backend_steps=h.muon_backend_steps,
            weight_decay=h.muon_wd,
            row_normalize=h.muon_row_normalize,
        ),
    ]


def compare_step(ref: ModuleType, r: Any, g: GPT, ocfg: C.OptimConfig) -> dict[str, float]:
    """One clipped step on both sides from the gradients the reference holds (copied to pgolf),
    the reference's bf16 casts as fp32: max |ΔW| and the largest update per kind, and each
    side's error of its fp32 total gradient norm."""
    for k, p in g.named_parameters():
        p.grad = ref_to_pgolf({n: q.grad for n, q in r.named_parameters()})[k].clone()
    before = {k: v.clone() for k, v in g.state_dict().items()}
    h = reference_hparams(ref, g.cfg)
    # The clip: each side's fp32 total norm against the exact one (CPU fp32 norms of #1855's
    # banked [22, 512, 512] tensors are off by up to 3e-3 relative); both then scale by the
    # coefficient of the exact norm, so the step compares the optimizers alone.
    exact = sum(p.grad.double().pow(2).sum() for p in g.parameters()).sqrt().item()
    ref_norm = torch.nn.utils.get_total_norm([p.grad for p in r.parameters()]).item()
    our_norm = clip_grad_norm_(list(g.parameters()), 0.0).item()  # 0: measure only
    assert h.grad_clip_norm == ocfg.grad_clip_norm, "hyper_diffs reports the clip difference"
    coef = min(1.0, ocfg.grad_clip_norm / (exact + 1e-6))
    with torch.no_grad():
        for p in [*r.parameters(), *g.parameters()]:
            p.grad.mul_(coef)
    opts = build_optimizers(g, ocfg)
    opts.set_muon_momentum(muon_momentum_at(0, ocfg))
    if opts.muon is not None:
        opts.muon.param_groups[0]["ns_dtype"] = "float32"
    with X.bf16_as_fp32():
        for opt in reference_optimizers(ref, r, h):
            opt.step()
    opts.step()
    after_r = ref_to_pgolf({k: v.detach() for k, v in r.state_dict().items()})
    out = {
        "norm_rel_ref": abs(ref_norm - exact) / exact,
        "norm_rel_pgolf": abs(our_norm - exact) / exact,
    }
    for kind in ("matrix", "embed", "scalar"):
        names = [k for k in before if opts.kinds.get(k) == kind]
        diff = max((after_r[k] - g.state_dict()[k]).abs().max().item() for k in names)
        upd = max((after_r[k] - before[k]).abs().max().item() for k in names)
        out[f"{kind}_dW"], out[f"{kind}_update"] = diff, upd
    return out


def hyper_diffs(ref: ModuleType, cfg: C.RunConfig) -> list[str]:
    """pgolf preset values that differ from the reference's (under its command line)."""
    a, o, m, q = ref.Hyperparameters, cfg.optim, cfg.model, cfg.quant
    groups = parse_groups(q.groups)
    pairs = {
        "matrix_lr": (o.matrix_lr, a.matrix_lr),
        "embed_lr": (o.embed_lr, a.tied_embed_lr),
        "scalar_lr": (o.scalar_lr, a.scalar_lr),
        "muon_wd": (o.muon_wd, a.muon_wd),
        "embed_wd": (o.embed_wd, a.embed_wd),
        "scalar_wd": (o.scalar_wd, a.adam_wd),
        "betas": ((o.adam_beta1, o.adam_beta2), (a.beta1, a.beta2)),
        "adam_eps": (o.adam_eps, a.adam_eps),
        "ns_steps": (o.ns_steps, a.muon_backend_steps),
        "muon_momentum": (o.muon_momentum, a.muon_momentum),
        "momentum_warmup": (
            (o.muon_momentum_warmup_start, o.muon_momentum_warmup_steps),
            (a.muon_momentum_warmup_start, a.muon_momentum_warmup_steps),
        ),
        "grad_clip": (o.grad_clip_norm, a.grad_clip_norm),
        "row_norm": ((o.muon_row_norm, o.muon_row_axis), (a.muon_row_normalize, "rows")),
        "warmdown_frac": (o.warmdown_frac, a.warmdown_frac),
        "lr_floor": ((o.lr_floor, o.lr_floor_mode), (a.min_lr, "max")),
        "ema_decay": (o.ema_decay, a.ema_decay),
        "recur_start_frac": (cfg.train.recur_start_frac, a.enable_looping_at),
        "reserve_seconds": (cfg.train.reserve_seconds, a.gptq_reserve_seconds),
        "qk_gain": (m.qk_gain_init, a.qk_gain_init),
        "softcap": (m.logit_softcap, a.logit_softcap),
        "rope_dims": (m.rope_dims, a.rope_dims),
        "vocab": (m.vocab_size, a.vocab_size),
        "layers": (m.num_layers, a.num_layers),
        "dim": (m.model_dim, a.model_dim),
        "parallel": (m.parallel_start, a.parallel_start_layer),
        "gate_window": (m.gate_window, a.gate_window),
        "attn_gate_scale": (m.attn_gate_scale, a.sparse_attn_gate_scale),
        "matrix_bits": (q.matrix_bits, a.matrix_bits),
        "embed_bits/clip": ((q.embed_bits, q.embed_clip_k), (a.embed_bits, a.embed_clip_sigmas)),
        "mlp_clip": (groups["mlp"].clip_k, a.mlp_clip_sigmas),
        "attn_clip": (groups["attn"].clip_k, a.attn_clip_sigmas),
        "gate_int8": (q.gate_int8, a.gated_attn_quant_gate),
        "lqer": (
            (q.lqer_top, q.lqer_top_rank, q.lqer_top_form == "asym", q.lqer_group),
            (a.lqer_top_k, a.lqer_rank, a.lqer_asym_enabled, a.lqer_asym_group),
        ),
        "caseops": (cfg.data.caseops, a.caseops_enabled),
    }
    return [f"{k}: pgolf {p} vs #1855 {q_}" for k, (p, q_) in pairs.items() if p != q_]


# ----------------------------------------------------------------------------------------------
# Quantization: the same state and Hessians through both quantizers


def synthetic_state(
    m: C.ModelConfig, layers: int, seed: int
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """A pr1855-shaped state dict of `layers` layers (pgolf = #1855 unbanked names) with heavy
    tailed weights, and Hessians XᵀX/N of correlated inputs for every quantized matrix."""
    gen = torch.Generator().manual_seed(seed)
    D, K = m.model_dim, m.model_dim // m.num_heads
    Fh, kv = int(m.mlp_mult * D), m.num_kv_heads * K

    def w(*shape: int) -> Tensor:
        t = torch.randn(*shape, generator=gen) * 0.02
        return t * (1 + 3 * (torch.rand(*shape, generator=gen) > 0.99))  # 1% outliers

    def hess(c: int) -> Tensor:
        X = torch.randn(4 * c, c, generator=gen) @ (torch.randn(c, c, generator=gen) / c**0.5)
        X = X + 0.3 * torch.randn(4 * c, c, generator=gen)
        H = X.T @ X / X.shape[0]
        while H.diagonal().unique().numel() < c:  # see `compare_quant` on ties
            H.diagonal().mul_(1 + 1e-6 * torch.rand(c, generator=gen))
        return H

    state = {"tok_emb.weight": w(m.vocab_size, D)}
    for i in range(layers):
        b = f"blocks.{i}."
        mats = {"attn.c_q": (D, D), "attn.c_k": (kv, D), "attn.c_v": (kv, D)}
        mats.update({"attn.proj": (D, D), "mlp.fc": (Fh, D), "mlp.proj": (D, Fh)})
        for k, shape in mats.items():
            state[b + k + ".weight"] = w(*shape)
        state[b + "attn.gate_w"] = w(m.num_heads, m.gate_window) * 20
        state[b + "attn_scale"] = 1 + w(D)
        state[b + "resid_mix"] = 1 + w(2, D)
    hessians = {k: hess(t.shape[1]) for k, t in state.items() if k.endswith(".weight")}
    return state, hessians


def compare_quant(ref: ModuleType, cfg: C.RunConfig, m: C.ModelConfig, layers: int, seed: int):
    """Both quantizers on `synthetic_state`: counts of tensors compared and of differing codes
    and scales, per kind (gptq, gate int8, low-rank A and B).

    The Hessians have no ties on their diagonal: act-order sorts it, and pgolf breaks ties by
    column index (a stable sort) where #1855's unstable argsort leaves them to the sort's
    implementation; with ties (2 among 1,536 random fp32 values happen) the column order, hence
    some codes, differ (375 of 589,824 in that case)."""
    state, hessians = synthetic_state(m, layers, seed)
    h = SimpleNamespace(**{k: v for k, v in vars(ref.Hyperparameters).items() if k[0] != "_"})
    ref_state = {k.replace(".attn.gate_w", ".attn.attn_gate_w"): v for k, v in state.items()}
    ref_hess = {k: v for k, v in hessians.items() if k != "tok_emb.weight"}
    ref_hess["tok_emb.weight"] = hessians["tok_emb.weight"]
    with contextlib.redirect_stdout(io.StringIO()):
        result, _meta = ref.gptq_mixed_quantize(ref_state, ref_hess, h)
    plan = quant.make_plan(state, cfg.quant, m)
    qts = quant.quantize_state(state, hessians, plan, log=False, block_size=cfg.quant.block_size)
    terms = lqer.top_lowrank_tensors(state, qts, cfg.quant)
    ours = {t.name: t for t in qts + terms}
    rows: dict[str, dict[str, int]] = {}

    def tally(kind: str, a: Tensor, b: Tensor, sa: Tensor, sb: Tensor) -> None:
        row = rows.setdefault(kind, {"tensors": 0, "codes": 0, "code_diff": 0, "scale_diff": 0})
        row["tensors"] += 1
        row["codes"] += a.numel()
        same_shape = a.numel() == b.numel()
        row["code_diff"] += int((a.reshape(-1) != b.reshape(-1)).sum()) if same_shape else a.numel()
        sa, sb = sa.reshape(-1).float(), sb.reshape(-1).float()
        row["scale_diff"] += int((sa != sb).sum()) if sa.numel() == sb.numel() else sa.numel()

    for name in state:
        rname = name.replace(".attn.gate_w", ".attn.attn_gate_w")
        t = ours[name]
        if rname + ".q" in result:
            tally("gptq", result[rname + ".q"], t.codes, result[rname + ".scale"], t.scales)
        elif rname + ".gq" in result:
            tally("gate int8", result[rname + ".gq"], t.codes, result[rname + ".gs"], t.scales)
        if rname + ".lqA_a" in result:
            a, b = ours.get(name + lqer.SUFFIX_A), ours.get(name + lqer.SUFFIX_B)
            if a is None or b is None:
                rows.setdefault("missing low-rank", {"tensors": 0})["tensors"] += 1
                continue
            sa = result[rname + ".lqAs_a"].reshape(1).expand(a.scales.numel())
            tally("low-rank A", result[rname + ".lqA_a"], a.codes, sa, a.scales)
            tally(
                "low-rank B", result[rname + ".lqB_a"], b.codes, result[rname + ".lqBs_a"], b.scales
            )
    got = sorted(k for k in ours if k.endswith(lqer.SUFFIX_A))
    want = sorted(k[: -len(".lqA_a")] + lqer.SUFFIX_A for k in result if k.endswith(".lqA_a"))
    rows["low-rank tensors chosen"] = {"tensors": len(want), "code_diff": len(set(got) ^ set(want))}
    return rows


# ----------------------------------------------------------------------------------------------


def report(path: Path, args: Any, m: C.ModelConfig, rows, step, qrows, diffs) -> None:
    print(
        f"# parity with PR #1855 ({path.name}), {m.num_layers}L x {m.model_dim}d, vocab "
        f"{m.vocab_size}, T {args.seq_len}, torch {torch.__version__}, fp32 CPU"
    )
    print(f"{'case':<34} {'max|dlogit|':>11} {'|dloss|':>9} {'max|dg|/max|g|':>14}  worst own")
    for name, res in rows:
        print(
            f"{name:<34} {res['dlogit']:>11.3e} {res['dloss']:>9.2e} {res['dgrad_rel']:>14.3e}  "
            f"{res['worst_param_rel']:.1e} {res['worst_param']}"
        )
    print(f"{'optimizer step (same W and grads)':<34} {'kind':>8} {'max|dW|':>10} {'max|upd|':>10}")
    for kind in ("matrix", "embed", "scalar"):
        dw, upd = step[kind + "_dW"], step[kind + "_update"]
        print(f"{'fp32 probe':<34} {kind:>8} {dw:>10.3e} {upd:>10.3e}")
    print(
        f"clip: fp32 total norm vs exact (float64), relative: #1855 {step['norm_rel_ref']:.1e}, "
        f"pgolf {step['norm_rel_pgolf']:.1e}; both sides then clip by the exact norm"
    )
    head = f"{'tensors':>8} {'codes':>10} {'differ':>8} {'scales differ':>14}"
    print(f"{'quantization (same Hessians)':<34} {head}")
    for kind, r in qrows.items():
        print(
            f"{kind:<34} {r.get('tensors', 0):>8} {r.get('codes', 0):>10} "
            f"{r.get('code_diff', 0):>8} {r.get('scale_diff', 0):>14}"
        )
    print("preset vs #1855 as run:", "; ".join(diffs) if diffs else "identical")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reference", default=None, help="PR #1855's train_gpt.py")
    ap.add_argument("--size", choices=("tiny", "full"), default="tiny")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--docs", type=int, default=4, help="documents in the packed row")
    ap.add_argument("--quant-dim", type=int, default=384, help="width of the quantized state")
    ap.add_argument("--quant-layers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default="", help="write every figure to this file")
    args = ap.parse_args(argv)
    path = find_reference(args.reference)
    if path is None:
        sys.exit(f"parity_1855: reference not found; pass --reference or fetch it:\n  {FETCH}")
    ref = load_reference(path)
    cfg = C.pr1855()
    m = parity_config(args.size)
    gen = torch.Generator().manual_seed(args.seed + 1)
    idx = torch.randint(2, m.vocab_size, (1, args.seq_len + 1), generator=gen)
    cuts = torch.randperm(args.seq_len - 1, generator=gen)[: args.docs - 1] + 1
    idx[0, 0], idx[0, cuts] = m.bos_id, m.bos_id
    rows: list[tuple[str, dict[str, Any]]] = []
    for doc in (False, True):
        r, g = build_pair(ref, dc.replace(m, doc_mask=doc), args.seed)
        for recur in (False, True):
            print(f"... doc_mask={int(doc)} recur={int(recur)}", file=sys.stderr, flush=True)
            res = compare_forward(r, g, idx[:, :-1], idx[:, 1:], recur)
            rows.append((f"docs={int(doc)} recur={int(recur)}", res))
    r, g = build_pair(ref, m, args.seed)
    r(idx[:, :-1], idx[:, 1:], *cu_seqlens_of(idx[0, :-1], m.bos_id)).backward()
    step = compare_step(ref, r, g, cfg.optim)
    qm = dc.replace(m, model_dim=args.quant_dim, num_heads=args.quant_dim // 64)
    qm = dc.replace(qm, num_kv_heads=qm.num_heads // 2, vocab_size=1024)
    qrows = compare_quant(ref, cfg, qm, args.quant_layers, args.seed)
    diffs = hyper_diffs(ref, cfg)
    report(path, args, m, rows, step, qrows, diffs)
    out = {"forward": dict(rows), "step": step, "quant": qrows, "hyper_diffs": diffs}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
