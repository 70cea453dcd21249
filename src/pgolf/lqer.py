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
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

from pgolf.artifact_check import LOWRANK_SUFFIXES, lowrank_rank
from pgolf.quant import dequantize, output_error, rtn_quantize

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

    out = []
    for qt in qtensors:
        rank = ranks.get(qt.group, 0)
        if qt.kind != "int" or rank <= 0 or qt.name not in hessians:
            continue
        W = state[qt.name].detach().float().cpu().reshape(qt.rows, -1)
        W_hat = dequantize(qt.codes.reshape(qt.rows, -1), qt.scales)
        H = hessians[qt.name].detach().cpu()
        (ca, sa), (cb, sb) = quantized_factors(W - W_hat, H, rank, damp)
        fixed = W_hat + dequantize(ca, sa) @ dequantize(cb, sb)
        if output_error(W, fixed, H.float()) >= output_error(W, W_hat, H.float()):
            continue
        r = ca.shape[1]
        out.append(QTensor(qt.name + SUFFIX_A, (qt.rows, r), "int", 8, ca, sa, group="lqer"))
        out.append(QTensor(qt.name + SUFFIX_B, (r, W.shape[1]), "int", 8, cb, sb, group="lqer"))
    return out


def add_back(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Fold every stored "<name>.lqer.a" @ "<name>.lqer.b" into "<name>" and drop the factors."""
    for key in [k for k in state if k.endswith(SUFFIX_A)]:
        base = key[: -len(SUFFIX_A)]
        A, B = state.pop(key), state.pop(base + SUFFIX_B, None)
        W = state.get(base)
        if B is None or W is None:
            raise ValueError(f"low-rank term {key!r} has no matching {SUFFIX_B} factor or tensor")
        lowrank_rank(base, A.shape, B.shape, W.shape)
        state[base] = W + (A @ B).reshape(W.shape)
    orphans = [k for k in state if k.endswith(SUFFIX_B)]
    if orphans:
        raise ValueError(f"low-rank factors without their {SUFFIX_A} partner: {orphans[:3]}")
    return state
