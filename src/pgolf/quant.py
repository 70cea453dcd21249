"""Post-training quantization: SDClip scales, round-to-nearest, GPTQ, the quant plan, Hessians.

* SDClip (PR #1394/#1493/#1550): one fp16 scale per row, s = k·std(row)/Q with Q = 2^(bits-1)-1,
  codes q = clamp(round(w/s), -Q, Q). Unlike #1550 the scale is floored only at the smallest
  positive fp16 (2^-24), not at 1/Q: #1550's 1/Q floor binds on every row with k·std < 1 (std <
  0.078 at int6), clipping those rows far too coarsely. k <= 0 means max-abs scaling. The scale
  used to quantize is exactly the stored fp16 value.
* GPTQ (Frantar et al., "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
  Transformers", arXiv:2210.17323): dead inputs, relative damping, act-order (descending diag H),
  upper Cholesky factor of H^-1, lazy block updates; scales fixed beforehand by SDClip (#1550).
* Plan (declarative, spec §5.4): small or non-float tensors -> fp16; attn/mlp matrices -> GPTQ
  int6; tied embedding -> int8 GPTQ on the head-side Hessian (#1493) or RTN (#1550); value
  embedding -> int8 RTN; anything else large -> int8 max-abs RTN; the typed plan
  (`pgolf.quantplan.QuantPlan`: quant.groups) overrides these per group (`make_plan`). The whole
  stage (plan, GPTQ/RTN, pruning, low-rank terms) is `pgolf.pipeline.quantize_weights`.
* ±1 pruning (`prune`, PR #1550's selective pruning): after GPTQ/RTN, a fraction of a group's ±1
  codes is zeroed, lowest row scale² first (the same rule as `pgolf budget --prune-to`).
* AWQ-lite (`quant.awq`; idea and selection rule: PR #1908): each GPTQ tensor's columns in groups
  of `awq_group`; a group's saliency is the sum over its columns of the input's RMS times the
  column's mean |w|; the `awq_top_k` most salient groups over all tensors together are quantized
  on `awq_bits` with their own SDClip row scales inside the tensor's GPTQ solve (`awq_plan`,
  `gptq_promoted`) and stored as their own tensors "<name>.awq.<start>" (`promoted_tensors`;
  checked on load by `artifact_check.check_promoted`, folded back by `dequantize_state`).
* Hessians are collected on the model as it really runs (depth recurrence, lanes), hooks keyed by
  parameter name so a weight used at several depths sums every visit; the tied embedding's comes
  from `model.final_norm`'s output (#1493). #1550 instead used a non-recurrent surrogate graph. The
  same pass gives each input channel's RMS (`Calibration.act_rms`, from the Hessian sums' diagonal).

Shapes: R rows (output features), C columns (input features), N calibration tokens,
B batch, T time, V vocab.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from pgolf.artifact_check import PROMOTED_TAG, promoted_cols, promoted_of
from pgolf.config import ModelConfig, QuantConfig
from pgolf.dist import all_reduce_, log0, progress
from pgolf.model import param_role
from pgolf.quantplan import QuantPlan

SCALE_MIN = 2.0**-24  # smallest positive fp16
SCALE_MAX = 65504.0  # largest finite fp16

# ----------------------------------------------------------------------------------------------
# Scales, round-to-nearest, GPTQ


def qmax(bits: int) -> int:
    """Largest code magnitude of a symmetric signed `bits`-bit grid."""
    if not 2 <= bits <= 8:
        raise ValueError(f"quant bits must be within 2..8, got {bits}")
    return 2 ** (bits - 1) - 1


def sdclip_scales(W: Tensor, bits: int, k: float) -> Tensor:
    """Per-row fp16 scales [R]: k·std(row)/Q (sample std), or max|row|/Q when k <= 0."""
    Q = qmax(bits)
    W = W.float() if W.dtype not in (torch.float32, torch.float64) else W
    if k > 0:
        spread = k * W.std(dim=1, correction=1 if W.shape[1] > 1 else 0)
    else:
        spread = W.abs().amax(dim=1)
    return (spread / Q).clamp(SCALE_MIN, SCALE_MAX).to(torch.float16)


def rtn_quantize(W: Tensor, bits: int, k: float) -> tuple[Tensor, Tensor]:
    """Round-to-nearest on the SDClip grid -> (codes int8 [R, C], scales fp16 [R])."""
    Q = qmax(bits)
    scales = sdclip_scales(W, bits, k)
    s = scales.to(torch.float64 if W.dtype == torch.float64 else torch.float32)[:, None]
    codes = torch.round(W.to(s.dtype) / s).clamp_(-Q, Q).to(torch.int8)
    return codes, scales


def dequantize(codes: Tensor, scales: Tensor) -> Tensor:
    """codes [R, C] * scales [R] -> fp32 [R, C]."""
    return codes.float() * scales.float()[:, None]


def _upper_chol_of_inverse(H: Tensor) -> Tensor:
    """U with UᵀU = H^-1 (upper Cholesky); extra damping only if H is not positive definite."""
    eye = torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    mean_diag = H.diagonal().mean()
    for extra in (0.0, 1e-3, 1e-2, 1e-1, 1.0):
        L, info = torch.linalg.cholesky_ex(H + extra * mean_diag * eye)
        if int(info) == 0:
            U, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(L), upper=True)
            if int(info) == 0:
                return U
    raise ValueError("gptq: Hessian is not positive definite even with damping 1.0*mean(diag H)")


def gptq_quantize(
    W: Tensor,
    H: Tensor,
    bits: int,
    k: float,
    block_size: int = 128,
    damp: float = 0.01,
    act_order: bool = True,
) -> tuple[Tensor, Tensor]:
    """GPTQ with fixed SDClip scales -> (codes int8 [R, C] in original column order, scales [R]).

    W [R, C], H [C, C] (≈ XᵀX of the layer inputs). Works in fp32, or fp64 when W is fp64.
    """
    codes, scales, _ = gptq_promoted(W, H, bits, k, block_size, damp, act_order)
    return codes, scales


def gptq_promoted(
    W: Tensor,
    H: Tensor,
    bits: int,
    k: float,
    block_size: int = 128,
    damp: float = 0.01,
    act_order: bool = True,
    promote: tuple[int, ...] = (),
    promote_bits: int = 8,
    promote_size: int = 64,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """`gptq_quantize`, the columns [p, p + promote_size) of each start p in `promote` on
    `promote_bits` with their own SDClip row scales (AWQ-lite, PR #1908), inside the same solve
    -> (codes [R, C], scales [R], promoted-column scales [R] or None when nothing is promoted).
    The codes of a promoted column lie in ±qmax(promote_bits), the others in ±qmax(bits)."""
    R, C = W.shape
    if H.shape != (C, C):
        raise ValueError(f"gptq: Hessian shape {tuple(H.shape)} does not match {C} weight columns")
    Q, Qh = qmax(bits), qmax(promote_bits)
    dtype = torch.float64 if W.dtype == torch.float64 else torch.float32
    scales = sdclip_scales(W, bits, k)  # from the original weight, before dead-column zeroing
    hi_scales = sdclip_scales(W, promote_bits, k) if promote else None
    s = scales.to(dtype)
    sh = s if hi_scales is None else hi_scales.to(dtype)
    hi = torch.zeros(C, dtype=torch.bool)
    for p in promote:
        if not 0 <= p < p + promote_size <= C:
            raise ValueError(f"gptq: promoted columns {p}..{p + promote_size} outside 0..{C}")
        hi[p : p + promote_size] = True
    W = W.to(dtype).clone()
    H = H.to(device=W.device, dtype=dtype).clone()
    dead = H.diagonal() == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H.diagonal().add_(damp * H.diagonal().mean())
    perm = torch.argsort(H.diagonal(), descending=True, stable=True) if act_order else None
    if perm is not None:
        W, H, hi = W[:, perm], H[perm][:, perm], hi[perm.cpu()]
    col_hi = hi.tolist()
    U = _upper_chol_of_inverse(H)  # [C, C]
    codes = torch.empty(R, C, dtype=dtype, device=W.device)
    for b0 in range(0, C, block_size):
        b1 = min(b0 + block_size, C)
        Wb = W[:, b0:b1].clone()  # [R, b]
        Eb = torch.empty_like(Wb)  # scaled errors of the block
        Ub = U[b0:b1, b0:b1]
        for j in range(b1 - b0):
            w = Wb[:, j]
            sj, Qj = (sh, Qh) if col_hi[b0 + j] else (s, Q)
            q = torch.round(w / sj).clamp_(-Qj, Qj)
            codes[:, b0 + j] = q
            err = (w - q * sj) / Ub[j, j]  # [R]
            Wb[:, j + 1 :] -= err[:, None] * Ub[j, j + 1 :][None, :]
            Eb[:, j] = err
        if b1 < C:
            W[:, b1:] -= Eb @ U[b0:b1, b1:]  # lazy batch update of all later columns
    if perm is not None:
        codes[:, perm] = codes.clone()
    return codes.to(torch.int8), scales, hi_scales


def output_error(W: Tensor, W_hat: Tensor, H: Tensor) -> float:
    """tr((W - Ŵ) H (W - Ŵ)ᵀ): the layer's summed squared output error on the calibration set."""
    D = (W - W_hat).to(H.dtype)
    return float(((D @ H) * D).sum())


# ----------------------------------------------------------------------------------------------
# Plan


@dataclass(frozen=True)
class PlanEntry:
    name: str
    method: str  # "gptq" | "rtn" | "fp16"
    bits: int
    clip_k: float
    group: str  # one of pgolf.quantplan.GROUPS
    prune: float = 0.0  # fraction of the group's ±1 codes zeroed after quantization
    promote: tuple[int, ...] = ()  # AWQ-lite: first columns of the groups kept at promote_bits
    promote_bits: int = 8
    promote_size: int = 64  # columns per promoted group


def make_plan(
    state_dict: Mapping[str, Tensor],
    qcfg: QuantConfig,
    model_cfg: ModelConfig,
    plan: QuantPlan | None = None,
) -> list[PlanEntry]:
    """One PlanEntry per tensor: the config's defaults, then `plan`'s groups over them (default:
    the plan `qcfg` carries; a what-if passes another)."""
    plan = QuantPlan.of(qcfg) if plan is None else plan
    for m in (qcfg.method, qcfg.embed_method):
        if m not in ("gptq", "rtn"):
            raise ValueError(f"quant.method/embed_method {m!r} must be 'gptq' or 'rtn'")
    entries = []
    for name, t in state_dict.items():
        if not t.is_floating_point() or t.numel() <= qcfg.passthrough_numel:
            entry = PlanEntry(name, "fp16", 16, 0.0, "passthrough")
        else:
            group = param_role(name, t.ndim).group
            if group in ("attn", "mlp"):
                entry = PlanEntry(name, qcfg.method, qcfg.matrix_bits, qcfg.matrix_clip_k, group)
            elif group == "embed":
                # An untied input embedding has no input-side Hessian: plain rounding.
                untied = name == "tok_emb.weight" and not model_cfg.tie_embeddings
                method = "rtn" if untied else qcfg.embed_method
                entry = PlanEntry(name, method, qcfg.embed_bits, qcfg.embed_clip_k, group)
            elif group == "value_embed":
                entry = PlanEntry(name, "rtn", qcfg.embed_bits, qcfg.embed_clip_k, group)
            else:
                entry = PlanEntry(name, "rtn", 8, 0.0, "other")
        if ov := plan.group(entry.group).items():
            entry = replace(entry, **ov)
            entry = replace(entry, bits=16) if entry.method == "fp16" else entry
        entries.append(entry)
    return gate_int8_plan(entries, state_dict) if qcfg.gate_int8 else entries


GATE_INT8_NUMEL = (32, 8192)  # #1736/#1855: gate weights of this size, dense (8x512) or sparse


def gate_int8_plan(plan: list[PlanEntry], state_dict: Mapping[str, Tensor]) -> list[PlanEntry]:
    """`quant.gate_int8`: the attention gates (`.attn.gate_w`, 2-D, 32..8192 entries) on int8
    with max-abs row scales instead of fp16 (#1736's quant gate)."""
    lo, hi = GATE_INT8_NUMEL

    def is_gate(e: PlanEntry) -> bool:
        t = state_dict[e.name]
        return e.name.endswith(".attn.gate_w") and t.ndim == 2 and lo <= t.numel() <= hi

    return [
        replace(e, method="rtn", bits=8, clip_k=0.0, group="other") if is_gate(e) else e
        for e in plan
    ]


def awq_scores(W: Tensor, act_rms: Tensor, size: int) -> list[float]:
    """AWQ-lite saliency (PR #1908) of each whole group of `size` columns of W [R, C]: the sum over
    the group of act_rms[c] · mean_r |W[r, c]| (fp32; a last partial group is never a candidate)."""
    n = W.shape[1] // size
    sal = act_rms.float().cpu() * W.detach().float().cpu().abs().mean(dim=0)
    return [float(sal[i * size : (i + 1) * size].sum()) for i in range(n)]


def awq_plan(
    plan: list[PlanEntry],
    state: Mapping[str, Tensor],
    act_rms: Mapping[str, Tensor],
    bits: int,
    top_k: int,
    size: int,
) -> list[PlanEntry]:
    """`quant.awq` (PR #1908's AWQ-lite): the `top_k` column groups of `size` with the highest
    `awq_scores` over all GPTQ tensors together (those on fewer than `bits` bits with an
    activation RMS), each then quantized on `bits` inside its tensor's GPTQ solve. Ties keep plan
    order, then column order (a stable sort, as #1908)."""
    cands = []
    for e in plan:
        if e.method == "gptq" and e.bits < bits and e.name in act_rms:
            W = state[e.name].reshape(state[e.name].shape[0], -1)
            cands += [
                (sc, e.name, i * size) for i, sc in enumerate(awq_scores(W, act_rms[e.name], size))
            ]
    cands.sort(key=lambda c: -c[0])
    chosen: dict[str, list[int]] = {}
    for _, name, start in cands[:top_k]:
        chosen.setdefault(name, []).append(start)
    return [
        replace(e, promote=tuple(chosen[e.name]), promote_bits=bits, promote_size=size)
        if e.name in chosen
        else e
        for e in plan
    ]


# ----------------------------------------------------------------------------------------------
# Hessians and calibration data


def _hessian_targets(model: nn.Module, names: Iterable[str] | None) -> dict[str, nn.Module]:
    """Parameter name -> the module whose forward hook sees that weight's input."""
    wanted = None if names is None else set(names)
    targets: dict[str, nn.Module] = {}
    for mod_name, mod in model.named_modules():
        pname = f"{mod_name}.weight"
        default = mod_name.startswith("blocks.") or mod_name == "lm_head"
        if isinstance(mod, nn.Linear) and (default if wanted is None else pname in wanted):
            targets[pname] = mod
    tied = getattr(model, "lm_head", None) is None
    if tied and (wanted is None or "tok_emb.weight" in wanted):
        if not isinstance(getattr(model, "final_norm", None), nn.Module):
            raise ValueError("collect_hessians: model has no `final_norm` module to hook")
        targets["tok_emb.weight"] = model.final_norm  # its output is the tied head's input
    return targets


class Calibration(dict):
    """Hessians {name: H [C, C]} (a plain dict to every reader) with `act_rms` {name: [C]}: the
    root mean square of each input channel over every visit and token (PR #1908's activation
    statistics), from the same calibration pass."""

    def __init__(self, hessians: Mapping[str, Tensor], act_rms: Mapping[str, Tensor]):
        super().__init__(hessians)
        self.act_rms = dict(act_rms)


@torch.no_grad()
def collect_hessians(
    model: nn.Module, batches: Iterable[Tensor], names: Iterable[str] | None = None
) -> Calibration:
    """H[name] [C, C] fp32 = Σ over visits and tokens of x xᵀ / N, N = tokens fed (all ranks);
    `.act_rms[name]` [C] = sqrt(diag Σ x xᵀ / rows seen), rows = tokens x visits.

    `batches`: token tensors [B, T] (or (x, y) pairs). The model runs as configured (recurrence,
    lanes), so a weight visited v times gets the sum of its v per-visit Hessians.
    """
    targets = _hessian_targets(model, names)
    device = next(model.parameters()).device
    sums: dict[str, Tensor] = {}
    rows: dict[str, Tensor] = {}

    def make_hook(pname: str, use_output: bool):
        def hook(mod: nn.Module, inputs: tuple, output: Tensor) -> None:
            x = output if use_output else inputs[0]
            x = x.detach().reshape(-1, x.shape[-1]).float()  # [B*T, C]
            if pname not in sums:
                sums[pname] = torch.zeros(x.shape[1], x.shape[1], device=x.device)
                rows[pname] = torch.zeros((), dtype=torch.float64, device=x.device)
            sums[pname].addmm_(x.T, x)
            rows[pname] += x.shape[0]

        return hook

    handles = [
        mod.register_forward_hook(make_hook(p, p == "tok_emb.weight" and mod is model.final_norm))
        for p, mod in targets.items()
    ]
    n_tokens = torch.zeros((), dtype=torch.float64, device=device)
    was_training = model.training
    model.eval()
    try:
        for batch in progress(batches, desc="calibration (Hessians)"):
            x = (batch[0] if isinstance(batch, (tuple, list)) else batch).to(device)
            model(x)
            n_tokens += x.numel()
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if all_reduce_(n_tokens, "sum").item() == 0:
        raise ValueError("collect_hessians: no calibration tokens (empty `batches`)")
    rms = {}
    for p in sorted(sums):  # sorted: the same all-reduce order on every rank
        all_reduce_(sums[p], "sum")
        n = all_reduce_(rows[p], "sum").clamp_min(1).float()
        rms[p] = (sums[p].diagonal() / n).sqrt()
        sums[p].div_(n_tokens.float())
    return Calibration({p: sums[p] for p in sorted(sums)}, rms)


@torch.no_grad()
def selfgen_batches(
    model: nn.Module,
    n_seqs: int,
    seq_len: int,
    temperature: float = 0.8,
    seed: int = 0,
    batch: int = 8,
) -> list[Tensor]:
    """Calibration sequences sampled by the model itself (#1550): first token uniform, then
    softmax(logits / temperature), seeded -> list of [b, seq_len] token tensors."""
    from pgolf.sampling import generate

    device = next(model.parameters()).device
    vocab = model.tok_emb.weight.shape[0]
    gen = torch.Generator(device=device).manual_seed(seed)
    out = []
    for start in progress(range(0, n_seqs, batch), desc="calibration (self-generated)"):
        b = min(batch, n_seqs - start)
        prompt = torch.randint(vocab, (b, 1), generator=gen, device=device)
        seqs = generate(model, prompt, seq_len - 1, temperature, gen)
        out.append(seqs[:, -seq_len:])
    return out


# ----------------------------------------------------------------------------------------------
# State dict <-> QTensors


def quantize_state(
    state_dict: Mapping[str, Tensor],
    hessians: Mapping[str, Tensor],
    plan: list[PlanEntry],
    log: bool = True,
    block_size: int = 128,
    damp: float = 0.01,
    act_order: bool = True,
) -> list[Any]:
    """Apply the plan -> list[QTensor] (CPU). GPTQ needs hessians[name]; RTN is the fallback."""
    from pgolf.artifact import QTensor

    t0 = time.perf_counter()
    out, stats = [], {}
    for e in progress(plan, desc="quantize (per tensor)" if log else None):
        t = state_dict[e.name].detach()
        shape = tuple(t.shape)
        if e.method == "fp16":
            data = t.to(torch.float16).cpu()
            out.append(QTensor(e.name, shape, "fp16", 16, None, None, data, e.group))
            continue
        W = t.float().reshape(shape[0] if t.dim() > 1 else 1, -1)  # [R, C]
        method = e.method
        if method == "gptq" and e.name not in hessians:
            if log:
                log0(f"quant:no Hessian for {e.name}, using RTN")
            method = "rtn"
        hi = None
        if method == "gptq":
            H = hessians[e.name]
            args = (block_size, damp, act_order, e.promote, e.promote_bits, e.promote_size)
            codes, scales, hi = gptq_promoted(W, H, e.bits, e.clip_k, *args)
        else:
            codes, scales = rtn_quantize(W, e.bits, e.clip_k)
        codes, scales = codes.cpu(), scales.cpu()
        blocks = promoted_tensors(e, codes, hi.cpu()) if hi is not None else []
        out.append(
            QTensor(e.name, shape, "int", e.bits, codes.reshape(shape), scales, None, e.group)
        )
        out += blocks
        if blocks and log:
            cols = " ".join(f"{p}:{p + e.promote_size}" for p in e.promote)
            log0(f"quant:awq {e.name} int{e.promote_bits} columns {cols}")
        n, numel = stats.get((e.group, method, e.bits), (0, 0))
        stats[(e.group, method, e.bits)] = (n + 1, numel + t.numel())
    for g, f in sorted({e.group: e.prune for e in plan if e.prune > 0}.items()):
        idx, flat = pm1_order(out, lambda t, g=g: t.group == g)
        out = zero_codes(out, idx, flat, n := round(f * idx.numel()))
        if log:
            log0(f"quant:{g} pruned {n} of {idx.numel()} ±1 codes (prune {f:g})")
    if log:
        for (group, method, bits), (n, numel) in sorted(stats.items()):
            log0(f"quant:{group} {method} int{bits} tensors:{n} params:{numel}")
        log0(f"quant:done tensors:{len(out)} time:{time.perf_counter() - t0:.1f}s")
    return out


def promoted_tensors(e: PlanEntry, codes: Tensor, hi_scales: Tensor) -> list[Any]:
    """The promoted column groups of `codes` [R, C] as their own int QTensors
    "<name>.awq.<start>" [R, promote_size] with `hi_scales` (group "awq"); those columns of
    `codes` are set to 0 (the tensor's own grid stores nothing there)."""
    from pgolf.artifact import QTensor

    out = []
    for p in sorted(e.promote):
        block = codes[:, p : p + e.promote_size].clone()
        codes[:, p : p + e.promote_size] = 0
        name = f"{e.name}{PROMOTED_TAG}{p}"
        out.append(
            QTensor(name, tuple(block.shape), "int", e.promote_bits, block, hi_scales, None, "awq")
        )
    return out


def pm1_order(tensors: list[Any], pick: Any) -> tuple[Tensor, Tensor]:
    """(tensor index, flat position) of each ±1 code of the int tensors `pick(t)` selects, lowest
    row scale² first (stable sort: ties keep tensor, then row-major, order)."""
    idx, flat, keys = [torch.zeros(0, dtype=torch.long)], [torch.zeros(0, dtype=torch.long)], []
    for j, t in enumerate(tensors):
        if t.kind == "int" and pick(t):
            f = torch.nonzero(t.codes.reshape(-1).abs() == 1)[:, 0]
            idx, flat = idx + [torch.full_like(f, j)], flat + [f]
            keys.append(t.scales.float()[f // max(1, t.codes.numel() // t.rows)] ** 2)
    order = torch.sort(torch.cat(keys), stable=True).indices if keys else idx[0]
    return torch.cat(idx)[order], torch.cat(flat)[order]


def zero_codes(tensors: list[Any], idx: Tensor, flat: Tensor, count: int) -> list[Any]:
    """A copy of `tensors` with the first `count` codes of a `pm1_order` set to 0."""
    out = list(tensors)
    for j in torch.unique(idx[:count]).tolist():
        codes = tensors[j].codes.clone()
        codes.view(-1)[flat[:count][idx[:count] == j]] = 0
        out[j] = replace(tensors[j], codes=codes)
    return out


def dequantize_state(tensors: Iterable[Any]) -> dict[str, Tensor]:
    """list[QTensor] -> {name: fp32 tensor of the stored shape}; promoted column groups
    ("<name>.awq.<start>", `promoted_tensors`) written into their tensor's columns and dropped."""
    state = {}
    for qt in tensors:
        shape = tuple(qt.shape)
        if qt.kind == "fp16":
            state[qt.name] = qt.data.float().reshape(shape)
        elif qt.kind == "int":
            rows = shape[0] if len(shape) > 1 else 1
            W = dequantize(qt.codes.reshape(rows, -1), qt.scales)
            state[qt.name] = W.reshape(shape)
        else:
            raise ValueError(f"dequantize_state: {qt.name} has unknown kind {qt.kind!r}")
    for name in [k for k in state if promoted_of(k)]:
        base, block = promoted_of(name)[0], state.pop(name)
        if base not in state:
            raise ValueError(f"promoted columns {name!r} have no tensor {base!r}")
        W = state[base]
        start, width = promoted_cols(name, block.shape, W.shape)
        W.reshape(W.shape[0] if W.dim() > 1 else 1, -1)[:, start : start + width] = block
    return state
