"""Low-rank correction of the quantization error, fitted where the calibration Hessian weighs it.

Idea credits: LQER (Zhang et al., "LQER: Low-Rank Quantization Error Reconstruction for LLMs",
arXiv:2402.02446); an asymmetric low-rank error term in Parameter Golf: PR #1797. Our variant:
after GPTQ, for the tensors of the chosen groups, the error E = W - Ŵ is approximated by A·B of
rank r minimizing the layer's output error tr((E - AB) H (E - AB)ᵀ): with H + λI = L·Lᵀ
(Cholesky), the best AB is the rank-r truncated SVD of E·L times L⁻¹. A [R, r] and B [r, C] are
stored as int8 with per-row max-abs scales (rank per group: `quant.lqer` "mlp:8,attn:4", typed
as `pgolf.quantplan.QuantPlan.ranks`), as two more int tensors "<name>.lqer.a"/".lqer.b" of group
"lqer"; `add_back` (run on load) folds A·B into the dequantized weight and drops them. Loading
checks every term first (rank 1..min(R, C), shapes, finite values: `artifact_check.check_lowrank`,
run by the artifact's parser, and `lowrank_rank`, the same rule in `add_back`).

PR #1855's form (`top_lowrank_tensors`, `quant.lqer_top` > 0): the plain SVD of E on the tensors
with the largest ‖E‖_F, A on a 2-bit grid with one scale, B on a 4-bit grid with one scale per 64
entries (stored as rows of 64, reshaped on load).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

from pgolf.artifact_check import LOWRANK_SUFFIXES, lowrank_rank
from pgolf.quant import dequantize, dequantize_state, output_error, rtn_quantize

SUFFIX_A, SUFFIX_B = LOWRANK_SUFFIXES


def fit_lowrank(E: Tensor, H: Tensor, rank: int, damp: float = 0.01) -> tuple[Tensor, Tensor]:
    """Rank-r (A [R, r], B [r, C]) minimizing tr((E - AB) H (E - AB)ᵀ), factors balanced."""
    E, H = E.double(), H.double()
    C = H.shape[0]
    lam = damp * float(H.diagonal().mean().clamp_min(1e-12))
    Lc = torch.linalg.cholesky(H + lam * torch.eye(C, dtype=H.dtype))
    U, S, Vh = torch.linalg.svd(E @ Lc, full_matrices=False)
    r = min(rank, S.numel())
    root = S[:r].sqrt()
    A = U[:, :r] * root
    B = torch.linalg.solve_triangular(Lc, root[:, None] * Vh[:r], upper=False, left=False)
    return A.float(), B.float()


def quantized_factors(E: Tensor, H: Tensor, rank: int, damp: float = 0.01):
    """Fit, then int8-quantize both factors -> ((codes_a, scales_a), (codes_b, scales_b))."""
    A, B = fit_lowrank(E, H, rank, damp)
    return rtn_quantize(A, 8, 0.0), rtn_quantize(B, 8, 0.0)


def lqer_tensors(
    state: Mapping[str, Tensor],
    qtensors: Iterable[Any],
    hessians: Mapping[str, Tensor],
    ranks: Mapping[str, int],
    damp: float = 0.01,
) -> list[Any]:
    """The factor QTensors for every int tensor of a group in `ranks` {group: rank} that has a
    Hessian. A pair is kept only if it lowers the H-weighted error after its own quantization."""
    from pgolf.artifact import QTensor

    out, qtensors = [], list(qtensors)
    hat = realized(qtensors)
    for qt in qtensors:
        rank = ranks.get(qt.group, 0)
        if qt.kind != "int" or rank <= 0 or qt.name not in hessians:
            continue
        W = state[qt.name].detach().float().cpu().reshape(qt.rows, -1)
        W_hat = hat[qt.name].reshape(qt.rows, -1)
        H = hessians[qt.name].detach().cpu()
        (ca, sa), (cb, sb) = quantized_factors(W - W_hat, H, rank, damp)
        fixed = W_hat + dequantize(ca, sa) @ dequantize(cb, sb)
        if output_error(W, fixed, H.float()) >= output_error(W, W_hat, H.float()):
            continue
        r = ca.shape[1]
        out.append(QTensor(qt.name + SUFFIX_A, (qt.rows, r), "int", 8, ca, sa, group="lqer"))
        out.append(QTensor(qt.name + SUFFIX_B, (r, W.shape[1]), "int", 8, cb, sb, group="lqer"))
    return out


def realized(qtensors: list[Any]) -> dict[str, Tensor]:
    """{name: Ŵ} of the int tensors as loading rebuilds them (promoted column groups folded in,
    `quant.dequantize_state`), low-rank factors aside: the base the terms correct."""
    return dequantize_state([t for t in qtensors if t.kind == "int" and t.group != "lqer"])


def add_back(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Fold every stored "<name>.lqer.a" @ "<name>.lqer.b" into "<name>" and drop the factors."""
    for key in [k for k in state if k.endswith(SUFFIX_A)]:
        base = key[: -len(SUFFIX_A)]
        A, B = state.pop(key), state.pop(base + SUFFIX_B, None)
        W = state.get(base)
        if B is not None and B.shape[0] != A.shape[1] and B.numel() % max(A.shape[1], 1) == 0:
            B = B.reshape(A.shape[1], -1)  # stored as groups of quant.lqer_group (#1855 form)
        if B is None or W is None:
            raise ValueError(f"low-rank term {key!r} has no matching {SUFFIX_B} factor or tensor")
        lowrank_rank(base, A.shape, B.shape, W.shape)
        state[base] = W + (A @ B).reshape(W.shape)
    orphans = [k for k in state if k.endswith(SUFFIX_B)]
    if orphans:
        raise ValueError(f"low-rank factors without their {SUFFIX_A} partner: {orphans[:3]}")
    return state


# ----------------------------------------------------------------------------------------------
# PR #1855's form: plain SVD of the error on the tensors with the largest ‖E‖, A and B on
# asymmetric grids (settings `quant.lqer_top*`).


def asym_quantize(X: Tensor, bits: int, group: int = 0) -> tuple[Tensor, Tensor]:
    """Codes in [-2^(b-1), 2^(b-1)-1] with one fp16 scale max|x|/(2^(b-1) - 1/2) per `group`
    consecutive entries of X flattened (0: one scale for all) -> (codes [G, n], scales [G]).
    2 bits: codes -2..1, scale max/1.5; 4 bits: -8..7, max/7.5 (#1855's A and B grids)."""
    half = 2 ** (bits - 1)
    flat = X.float().reshape(1, -1) if group <= 0 else X.float().reshape(-1, group)
    scales = (flat.abs().amax(dim=1).clamp_min(1e-10) / (half - 0.5)).to(torch.float16)
    codes = torch.round(flat / scales.float()[:, None]).clamp_(-half, half - 1)
    return codes.to(torch.int8), scales


def top_error_factors(E: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """A = U_r·S_r [R, r], B = V_rᵀ [r, C] from the plain (unweighted) SVD of E."""
    U, S, Vh = torch.linalg.svd(E.float(), full_matrices=False)
    r = min(rank, S.numel())
    return (U[:, :r] * S[:r]).contiguous(), Vh[:r, :].contiguous()


def top_lowrank_tensors(state: Mapping[str, Tensor], qtensors: Iterable[Any], q: Any) -> list:
    """#1855's low-rank terms for the `q.lqer_top` int tensors (attention gates aside) with the
    largest ‖W - Ŵ‖_F: A stored on `lqer_a_bits` with one scale (as `lqer_rows` equal per-row
    scales), B on `lqer_b_bits` with one scale per `lqer_group` entries (rows of that length);
    form 'sym', or a B not divisible into groups: both on `lqer_sym_bits` with per-row scales."""
    from pgolf.artifact import QTensor

    errors, qtensors = [], list(qtensors)
    hat = realized(qtensors)
    for qt in qtensors:
        if qt.kind != "int" or qt.group in ("lqer", "awq") or qt.name.endswith(GATE_SUFFIXES):
            continue
        W = state[qt.name].detach().float().cpu().reshape(qt.rows, -1)
        E = W - hat[qt.name].reshape(qt.rows, -1)
        errors.append((float(E.norm()), qt.name, E))
    errors.sort(key=lambda t: -t[0])  # stable: equal norms keep state order, as #1855
    out = []
    for _, name, E in errors[: q.lqer_top]:
        A, B = top_error_factors(E, q.lqer_top_rank)
        (R, r), g = A.shape, q.lqer_group
        if q.lqer_top_form == "asym" and g > 0 and B.numel() % g == 0:
            ca, sa = asym_quantize(A, q.lqer_a_bits)
            cb, sb = asym_quantize(B, q.lqer_b_bits, g)
            ta = QTensor(
                name + SUFFIX_A,
                (R, r),
                "int",
                q.lqer_a_bits,
                ca.reshape(R, r),
                sa.expand(R).clone(),
                group="lqer",
            )
            tb = QTensor(
                name + SUFFIX_B, tuple(cb.shape), "int", q.lqer_b_bits, cb, sb, group="lqer"
            )
        else:
            bits = q.lqer_sym_bits
            (ca, sa), (cb, sb) = rtn_quantize(A, bits, 0.0), rtn_quantize(B, bits, 0.0)
            ta = QTensor(name + SUFFIX_A, (R, r), "int", bits, ca, sa, group="lqer")
            tb = QTensor(name + SUFFIX_B, tuple(B.shape), "int", bits, cb, sb, group="lqer")
        out += [ta, tb]
    return out


GATE_SUFFIXES = (".attn.gate_w", ".attn.gate_proj")
