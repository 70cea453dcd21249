"""Low-rank error correction: the H-weighted error it targets goes down, the fit is the optimum of
its objective (checked against a brute-force reference), and the add-back survives an artifact."""

from __future__ import annotations

import pytest
import torch

from pgolf import lqer
from pgolf.artifact import QTensor, decode_artifact, encode_artifact
from pgolf.quant import dequantize, dequantize_state, gptq_quantize, output_error
from pgolf.quantplan import parse_lqer


def problem(seed: int = 0, R: int = 48, C: int = 64, N: int = 512):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(C, C, generator=g) / C**0.5 + torch.eye(C) * 0.3
    X = torch.randn(N, C, generator=g) @ mix  # correlated inputs: H far from diagonal
    H = (X.T @ X).double()
    W = torch.randn(R, C, generator=g) / C**0.5
    codes, scales = gptq_quantize(W, H.float(), 3, 3.0)
    return W, H, codes, scales


@pytest.mark.parametrize("rank", [1, 4, 16])
def test_lowrank_term_reduces_the_h_weighted_error(rank: int) -> None:
    W, H, codes, scales = problem()
    W_hat = dequantize(codes, scales)
    before = output_error(W, W_hat, H.float())
    (ca, sa), (cb, sb) = lqer.quantized_factors(W - W_hat, H, rank)
    after = output_error(W, W_hat + dequantize(ca, sa) @ dequantize(cb, sb), H.float())
    assert after < before * (1 - 0.02 * rank)
    A, B = lqer.fit_lowrank(W - W_hat, H, rank)
    exact = output_error(W, W_hat + A @ B, H.float())
    assert exact <= after * 1.001  # int8 factors cost a little of the exact fit


def test_fit_is_the_weighted_optimum_brute_force() -> None:
    """Against a slow reference: no random rank-r perturbation of (A, B) lowers the objective."""
    W, H, codes, scales = problem(seed=1, R=12, C=10, N=200)
    E = (W - dequantize(codes, scales)).double()
    A, B = lqer.fit_lowrank(E, H, 2, damp=0.0)
    obj = lambda a, b: output_error(E, (a @ b).double(), H)  # noqa: E731
    best = obj(A.double(), B.double())
    g = torch.Generator().manual_seed(2)
    for _ in range(200):
        da = 1e-3 * torch.randn(A.shape, generator=g, dtype=torch.float64)
        db = 1e-3 * torch.randn(B.shape, generator=g, dtype=torch.float64)
        assert obj(A.double() + da, B.double() + db) >= best * (1 - 1e-9)
    # and it beats the unweighted SVD of E on the weighted objective
    U, S, Vh = torch.linalg.svd(E)
    assert best <= obj(U[:, :2] * S[:2], Vh[:2]) + 1e-12


def test_factors_round_trip_through_an_artifact_and_are_added_back() -> None:
    W, H, codes, scales = problem(seed=3)
    qt = QTensor("blocks.0.mlp.fc.weight", tuple(W.shape), "int", 3, codes, scales, group="mlp")
    args = ({qt.name: W}, [qt], {qt.name: H.float()})
    extra = lqer.lqer_tensors(*args, parse_lqer("mlp:4,attn:2"))
    assert [t.name for t in extra] == [qt.name + ".lqer.a", qt.name + ".lqer.b"]
    assert extra[0].shape == (W.shape[0], 4)
    assert lqer.lqer_tensors(*args, {"attn": 4}) == []
    assert lqer.lqer_tensors(*args, parse_lqer("mlp:0")) == []
    for bad in ("mlp:8,ffn:2", "mlp:8,mlp:4", "mlp:1025", "mlp:" + "9" * 5000, "mlp:-1"):
        with pytest.raises(ValueError, match="group:rank"):
            parse_lqer(bad)
    for codec in ("brotli", "rans"):
        out, _ = decode_artifact(encode_artifact([qt, *extra], {}, codec=codec))
        state = lqer.add_back(dequantize_state(out))
        assert list(state) == [qt.name]
        W_hat = dequantize(codes, scales)
        assert output_error(W, state[qt.name], H.float()) < output_error(W, W_hat, H.float())
    bad = dequantize_state([qt, extra[0]])
    with pytest.raises(ValueError, match="no matching"):
        lqer.add_back(bad)
