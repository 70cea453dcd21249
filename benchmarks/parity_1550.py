"""Parity of pgolf's `pr1550` model and optimizers with PR #1550's own script, on CPU in fp32.

    python benchmarks/parity_1550.py --reference .ref/train_gpt_1550.py            # tiny, ~1 min
    python benchmarks/parity_1550.py --reference .ref/train_gpt_1550.py --size full --batch 1

The reference (`records/track_10min_16mb/2026-04-11_SP8192_PreQuantTTT_CompiledTTT/train_gpt.py`
at 11ca47c, see ../shared/bench/vs-1550/README.md) is imported as a module from a git-ignored
copy, never committed. Without FlashAttention-3 it runs its SDPA fallback (K/V repeated). Its
hyperparameters are class attributes read from the environment at import; the model is built
with explicit arguments from pgolf's config (`reference_kwargs`), BigramHash off as in the runs.

Steps: (1) build the reference GPT, perturb every parameter (zero-initialised projections would
hide bugs), copy it into pgolf's GPT through `ref_to_pgolf` (banked 3-D tensors -> per-layer
matrices); (2) compare fp32 logits, loss and every gradient, recurrence off and on, at a length
<= 1024 and at 2048 with and without `model.rope_ntk_len=1024` (pgolf's switch that reproduces
#1550's NTK rescale; the default is plain base 10000); (3) one optimizer step (grad clip 0.3,
Muon + AdamW at step 0's momentum) from identical weights and gradients, each side with its own
optimizers and its own defaults: once with the reference as it is (bf16 Muon momentum and
Newton-Schulz) against pgolf with `ns_dtype=bfloat16`, once with the reference's `.bfloat16()`
casts turned into `.float()` for the step (an fp32 probe of the algorithm).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses as dc
import importlib.util
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

from pgolf import config as C
from pgolf.model import GPT
from pgolf.optim import build_optimizers, clip_grad_norm_, muon_momentum_at

sys.path.insert(0, str(Path(__file__).resolve().parent))
import parity_common as X  # noqa: E402  (the sibling module: shared comparisons)

DEFAULT_REF = Path(__file__).resolve().parents[1] / ".ref" / "train_gpt_1550.py"
BANKS = ("qo_bank", "kv_bank", "mlp_up_bank", "mlp_down_bank")


def find_reference(path: str | None = None) -> Path | None:
    """--reference, else $PGOLF_REF_1550, else .ref/train_gpt_1550.py; None when absent."""
    for cand in (path, os.environ.get("PGOLF_REF_1550"), str(DEFAULT_REF)):
        if cand and Path(cand).is_file():
            return Path(cand)
    return None


def load_reference(path: Path, skip_gate: str = "none") -> ModuleType:
    """Import #1550's script as a module (its Hyperparameters read the environment here)."""
    os.environ.update(BIGRAM_VOCAB_SIZE="0", TRIGRAM="0")
    os.environ["SIGMOID_SKIPS"] = "1" if skip_gate == "sigmoid" else "0"
    spec = importlib.util.spec_from_file_location(f"ref1550_{skip_gate}", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ----------------------------------------------------------------------------------------------
# Configs and the parameter mapping (pure functions: tested without the reference)


def parity_config(size: str = "tiny") -> C.ModelConfig:
    """pgolf's pr1550 model; 'tiny' keeps every layer index (11 layers, VE 9-10, lanes from 7,
    recurrence 3-5, XSA everywhere, 64-dim heads with 16 RoPE dims) at width 128, vocab 1024."""
    m = C.pr1550().model
    if size == "full":
        return m
    return dc.replace(m, vocab_size=1024, model_dim=128, num_heads=2, num_kv_heads=1)


def repeated_layers(m: C.ModelConfig) -> str:
    """#1550's RECUR_LAYERS for pgolf's virtual layer list: the layers visited twice."""
    seen = [i for i in dict.fromkeys(m.recur_layers) if m.recur_layers.count(i) > 1]
    return ",".join(str(i) for i in seen)


def reference_kwargs(m: C.ModelConfig) -> dict[str, Any]:
    """Arguments of the reference's GPT(...) for pgolf's ModelConfig; ValueError if #1550's model
    cannot express it."""
    bad = []
    if m.skip_gate == "lerp" or m.parallel_residual == "gptj" or m.doc_mask:
        bad.append("skip_gate lerp / parallel_residual gptj / doc_mask")
    if m.activation != "leaky_relu2" or m.leaky_slope != 0.5 or not m.smear_gate:
        bad.append("activation must be leaky_relu2 (0.5) with smear_gate")
    xsa = m.num_layers - min(m.xsa_layers, default=m.num_layers)
    if tuple(range(m.num_layers - xsa, m.num_layers)) != tuple(m.xsa_layers):
        bad.append("xsa_layers must be the last N layers")
    if m.num_skip_weights not in (-1, m.num_layers // 2) or not m.unet_skips:
        bad.append("num_skip_weights must be num_layers // 2")
    if bad:
        raise ValueError("parity_1550: #1550's model cannot express " + "; ".join(bad))
    return dict(
        vocab_size=m.vocab_size,
        num_layers=m.num_layers,
        model_dim=m.model_dim,
        num_heads=m.num_heads,
        num_kv_heads=m.num_kv_heads,
        mlp_mult=m.mlp_mult,
        tie_embeddings=m.tie_embeddings,
        tied_embed_init_std=m.tied_embed_init_std,
        logit_softcap=m.logit_softcap,
        rope_base=m.rope_base,
        qk_gain_init=m.qk_gain_init,
        bigram_vocab_size=0,
        xsa_last_n=xsa,
        rope_dims=m.rope_dims,
        ln_scale=m.ln_scale,
        ve_enabled=m.ve_dim > 0 and bool(m.ve_layers),
        ve_dim=m.ve_dim,
        ve_layers=",".join(map(str, m.ve_layers)),
        recur_layers=repeated_layers(m),
        parallel_start_layer=m.parallel_start if m.parallel_residual == "lanes" else -1,
    )


def _block_names(i: int, n: int) -> dict[str, tuple[str, int]]:
    """pgolf name of each matrix of layer i -> (bank, index in the bank)."""
    return {
        f"blocks.{i}.attn.c_q.weight": ("qo_bank", i),
        f"blocks.{i}.attn.proj.weight": ("qo_bank", n + i),
        f"blocks.{i}.attn.c_k.weight": ("kv_bank", i),
        f"blocks.{i}.attn.c_v.weight": ("kv_bank", n + i),
        f"blocks.{i}.mlp.fc.weight": ("mlp_up_bank", i),
        f"blocks.{i}.mlp.proj.weight": ("mlp_down_bank", i),
    }


def ref_to_pgolf(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """#1550 state (or gradient) dict -> pgolf names and shapes: banks split per layer, the
    0-d scalars (ve scale, lane_merge) as [1], the per-layer VE scales stacked."""
    n = sd["mlp_up_bank"].shape[0]
    out: dict[str, Tensor] = {}
    ve_scales: dict[int, Tensor] = {}
    for name, t in sd.items():
        if name in BANKS:
            continue
        if name.startswith("bigram."):
            raise ValueError("parity_1550: BigramHash is not in pgolf; set BIGRAM_VOCAB_SIZE=0")
        if name.startswith("ve_layer_scales."):
            ve_scales[int(name.split(".")[1])] = t.reshape(1)
        elif name.startswith("ve_shared."):
            out["ve." + name[len("ve_shared.") :]] = t.reshape(1) if t.ndim == 0 else t
        elif name == "lane_merge":
            out[name] = t.reshape(1)
        else:
            out[name] = t
    for i in range(n):
        for pname, (bank, j) in _block_names(i, n).items():
            out[pname] = sd[bank][j]
    if ve_scales:
        out["ve.layer_scales"] = torch.cat([ve_scales[j] for j in sorted(ve_scales)])
    return out


def pgolf_to_ref(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Inverse of `ref_to_pgolf`."""
    n = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    out: dict[str, Tensor] = {}
    banks: dict[str, dict[int, Tensor]] = {b: {} for b in BANKS}
    mats = {k: v for i in range(n) for k, v in _block_names(i, n).items()}
    for name, t in sd.items():
        if name in mats:
            bank, j = mats[name]
            banks[bank][j] = t
        elif name == "ve.layer_scales":
            out.update({f"ve_layer_scales.{j}": s.reshape(1) for j, s in enumerate(t)})
        elif name == "ve.scale" or name == "lane_merge":
            out["ve_shared.scale" if name == "ve.scale" else name] = t.reshape(())
        elif name.startswith("ve."):
            out["ve_shared." + name[3:]] = t
        else:
            out[name] = t
    for bank, parts in banks.items():
        out[bank] = torch.stack([parts[j] for j in range(len(parts))])
    return out


# ----------------------------------------------------------------------------------------------
# The comparisons


def build_pair(ref: ModuleType, m: C.ModelConfig, seed: int = 0) -> tuple[torch.nn.Module, GPT]:
    """The reference GPT (fp32, perturbed) and pgolf's GPT holding the same weights."""
    torch.manual_seed(seed)
    r = ref.GPT(**reference_kwargs(m)).float()
    g = GPT(dc.replace(m, attn_backend="sdpa"))
    X.load_perturbed(r, g, ref_to_pgolf, "parity_1550")
    return r, g


def compare_forward(r: Any, g: GPT, idx: Tensor, tgt: Tensor, recur: bool) -> dict[str, Any]:
    """Max |logit| and |loss| differences; max |gradient difference| over all parameters divided
    by the largest gradient entry, and the parameter with the largest such ratio of its own."""
    r.set_recurrence_active(recur)
    g.set_recurrence(recur)
    if r._get_virtual_layers() != g.virtual_layers():
        raise ValueError(f"virtual layers: {r._get_virtual_layers()} vs {g.virtual_layers()}")
    with torch.no_grad():
        dlogit = (r.forward_logits(idx) - g(idx)).abs().max().item()
    return X.loss_and_grads(r, g, lambda: r(idx, tgt), lambda: g(idx, tgt), ref_to_pgolf, dlogit)


def reference_optimizers(ref: ModuleType, r: Any) -> list[torch.optim.Optimizer]:
    """#1550's three optimizers and groups (main() of its script), from its Hyperparameters."""
    a = ref.Hyperparameters
    ctrl = ref.CONTROL_TENSOR_NAME_PATTERNS
    scal = [p for n, p in r.blocks.named_parameters() if p.ndim < 2 or any(c in n for c in ctrl)]
    scal += [r.skip_weights, r.smear.gate]
    tok = [r.tok_emb.weight]
    if r.ve_shared is not None:
        tok.append(r.ve_shared.embed.weight)
        scal += [r.ve_shared.proj.weight, r.ve_shared.scale, *r.ve_layer_scales]
    if r.lane_merge is not None:
        scal.append(r.lane_merge)
    betas, eps = (a.beta1, a.beta2), a.adam_eps
    banks = [getattr(r, b) for b in BANKS]
    momentum = a.muon_momentum_warmup_start  # step 0 of its warm-up
    return [
        torch.optim.AdamW(tok, lr=a.tied_embed_lr, betas=betas, eps=eps, weight_decay=a.embed_wd),
        torch.optim.AdamW(scal, lr=a.scalar_lr, betas=betas, eps=eps, weight_decay=a.adam_wd),
        ref.Muon(
            banks,
            lr=a.matrix_lr,
            momentum=momentum,
            backend_steps=a.muon_backend_steps,
            weight_decay=a.muon_wd,
            muoneq_r=a.muoneq_r,
        ),
    ]


def compare_step(
    ref: ModuleType, r: Any, g: GPT, ocfg: C.OptimConfig, fp32: bool
) -> tuple[dict[str, float], dict[str, Tensor], dict[str, Tensor]]:
    """One clipped optimizer step on both sides from the gradients the reference holds (copied to
    pgolf): max |ΔW| and the largest update per kind; both sides' new weights (pgolf names)."""
    with torch.no_grad():
        g.load_state_dict(ref_to_pgolf({k: v for k, v in r.state_dict().items()}))
    for k, p in g.named_parameters():
        p.grad = ref_to_pgolf({n: q.grad for n, q in r.named_parameters()})[k].clone()
    before = {k: v.clone() for k, v in g.state_dict().items()}
    torch.nn.utils.clip_grad_norm_(r.parameters(), ref.Hyperparameters.grad_clip_norm)
    clip_grad_norm_(list(g.parameters()), ocfg.grad_clip_norm)
    opts = build_optimizers(g, ocfg)
    opts.set_muon_momentum(muon_momentum_at(0, ocfg))
    if opts.muon is not None:
        opts.muon.param_groups[0]["ns_dtype"] = "float32" if fp32 else "bfloat16"
    ctx = X.bf16_as_fp32() if fp32 else contextlib.nullcontext()
    with ctx:
        for opt in reference_optimizers(ref, r):
            opt.step()
    opts.step()
    after_r = ref_to_pgolf({k: v.detach() for k, v in r.state_dict().items()})
    out: dict[str, float] = {}
    for kind in ("matrix", "embed", "scalar"):
        names = [k for k in before if opts.kinds.get(k) == kind]
        if not names:
            continue
        diff = max((after_r[k] - g.state_dict()[k]).abs().max().item() for k in names)
        upd = max((after_r[k] - before[k]).abs().max().item() for k in names)
        out[f"{kind}_dW"], out[f"{kind}_update"] = diff, upd
    return out, after_r, {k: v.clone() for k, v in g.state_dict().items()}


def hyper_diffs(ref: ModuleType, cfg: C.RunConfig) -> list[str]:
    """pgolf preset values that differ from the reference script's defaults."""
    a, o, m = ref.Hyperparameters, cfg.optim, cfg.model
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
        "momentum_warmup": (o.muon_momentum_warmup_start, a.muon_momentum_warmup_start),
        "grad_clip": (o.grad_clip_norm, a.grad_clip_norm),
        "row_norm": (o.muon_row_norm, a.muoneq_r),
        "warmdown_frac": (o.warmdown_frac, a.warmdown_frac),
        "qk_gain": (m.qk_gain_init, a.qk_gain_init),
        "softcap": (m.logit_softcap, a.logit_softcap),
        "rope_dims": (m.rope_dims, a.rope_dims),
        "ve_dim": (m.ve_dim, a.ve_dim),
        "vocab": (m.vocab_size, a.vocab_size),
        "layers": (m.num_layers, a.num_layers),
        "dim": (m.model_dim, a.model_dim),
        "recur": (repeated_layers(m), a.recur_layers),
        "parallel": (m.parallel_start, a.parallel_start_layer),
    }
    return [f"{k}: pgolf {p} vs #1550 {q}" for k, (p, q) in pairs.items() if p != q]


def optimizer_rows(ref: ModuleType, m: C.ModelConfig, cfg: C.RunConfig, idx: Tensor, seed: int):
    """compare_step as-is and as fp32 probe, plus each side's own bf16-vs-fp32 difference."""
    rows, after = [], []
    for fp32 in (True, False):
        r, g = build_pair(ref, m, seed)
        r(idx[:, :-1], idx[:, 1:]).backward()
        res, wr, wg = compare_step(ref, r, g, cfg.optim, fp32)
        rows.append(("fp32 probe" if fp32 else "as-is (bf16 NS)", res))
        after.append((wr, wg))
    mats = [k for k, kind in build_optimizers(g, cfg.optim).kinds.items() if kind == "matrix"]
    upd = rows[0][1]["matrix_update"]
    for label, side in (("#1550 bf16 vs its fp32 probe", 0), ("pgolf bf16 NS vs fp32 NS", 1)):
        d = max((after[1][side][k] - after[0][side][k]).abs().max().item() for k in mats)
        rows.append((label, {"matrix_dW": d, "matrix_update": upd}))
    return rows


def report(path: Path, args: argparse.Namespace, m: C.ModelConfig, rows, step_rows, diffs) -> None:
    print(
        f"# parity with PR #1550 ({path.name}), size {args.size}: {m.num_layers}L x "
        f"{m.model_dim}d, vocab {m.vocab_size}, batch {args.batch}, torch {torch.__version__}, "
        "fp32 CPU"
    )
    print(f"{'case':<38} {'max|dlogit|':>11} {'|dloss|':>9} {'max|dg|/max|g|':>14}  worst own")
    for name, res in rows:
        print(
            f"{name:<38} {res['dlogit']:>11.3e} {res['dloss']:>9.2e} {res['dgrad_rel']:>14.3e}  "
            f"{res['worst_param_rel']:.1e} {res['worst_param']}"
        )
    print(f"{'optimizer step (same W and grads)':<38} {'kind':>8} {'max|dW|':>10} {'max|upd|':>10}")
    for name, res in step_rows:
        for kind in ("matrix", "embed", "scalar"):
            if f"{kind}_dW" in res:
                dw, upd = res[f"{kind}_dW"], res[f"{kind}_update"]
                print(f"{name:<38} {kind:>8} {dw:>10.3e} {upd:>10.3e}")
    print("preset vs #1550 defaults:", "; ".join(diffs) if diffs else "identical")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reference", default=None, help="PR #1550's train_gpt.py")
    ap.add_argument("--size", choices=("tiny", "full"), default="tiny")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=256, help="short case (<= 1024)")
    ap.add_argument("--long-len", type=int, default=2048, help="RoPE quirk case (> 1024; 0 = skip)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default="", help="write every figure to this file")
    args = ap.parse_args(argv)
    path = find_reference(args.reference)
    if path is None:
        sys.exit("parity_1550: reference not found; pass --reference or set PGOLF_REF_1550")
    cfg = C.pr1550()
    m = parity_config(args.size)
    ref = load_reference(path, m.skip_gate)
    rows: list[tuple[str, dict[str, Any]]] = []
    gen = torch.Generator().manual_seed(args.seed + 1)
    for T, quirk in ((args.seq_len, False), (args.long_len, True), (args.long_len, False)):
        if T <= 0:
            continue
        print(f"... T={T} rope_ntk_len={1024 if quirk else 0}", file=sys.stderr, flush=True)
        mq = dc.replace(m, rope_ntk_len=1024 if quirk else 0)
        r, g = build_pair(ref, mq, args.seed)
        idx = torch.randint(0, m.vocab_size, (args.batch, T + 1), generator=gen)
        for recur in (False, True):
            res = compare_forward(r, g, idx[:, :-1], idx[:, 1:], recur)
            rows.append((f"T={T} recur={int(recur)} rope_ntk_len={mq.rope_ntk_len}", res))
    idx = torch.randint(0, m.vocab_size, (args.batch, args.seq_len + 1), generator=gen)
    step_rows = optimizer_rows(ref, m, cfg, idx, args.seed)
    diffs = hyper_diffs(ref, cfg)
    report(path, args, m, rows, step_rows, diffs)
    out = {"forward": dict(rows), "step": dict(step_rows), "hyper_diffs": diffs, "size": args.size}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
