"""AWQ-lite (PR #1908, `quant.awq`): the promoted column group is the most salient one, the
promoted columns live on their own grid inside the GPTQ solve, they survive the artifact, and a
corrupt group index is refused on load."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from pgolf import artifact as A
from pgolf import config as C
from pgolf import lqer, quant
from pgolf.artifact_check import ArtifactError, check_shapes, promoted_cols, promoted_of
from pgolf.pipeline import quantize_weights


def hessian(c: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(4 * c, c, generator=g) @ torch.randn(c, c, generator=g) / c**0.5
    return X.T @ X / X.shape[0] + 0.1 * torch.eye(c)


def entries(names: dict[str, int]) -> list[quant.PlanEntry]:
    return [quant.PlanEntry(n, "gptq", b, 12.0, "mlp") for n, b in names.items()]


def test_the_group_with_the_largest_activation_times_weight_saliency_is_promoted():
    g = torch.Generator().manual_seed(0)
    state = {"a": torch.randn(8, 256, generator=g) * 0.02, "b": torch.randn(8, 128, generator=g)}
    state["b"] *= 0.02
    rms = {"a": torch.ones(256), "b": torch.ones(128)}
    rms["a"][128:192] = 5.0  # group 2 of a: salient by its inputs
    state["b"][:, 64:128] *= 3  # group 1 of b: salient by its weights, less than a's
    plan = entries({"a": 6, "b": 6})
    one = {e.name: e.promote for e in quant.awq_plan(plan, state, rms, 8, 1, 64)}
    assert one == {"a": (128,), "b": ()}  # top 1 over all matrices together, as #1908
    two = {e.name: e.promote for e in quant.awq_plan(plan, state, rms, 8, 2, 64)}
    assert two == {"a": (128,), "b": (64,)}
    scores = quant.awq_scores(state["a"], rms["a"], 64)
    assert len(scores) == 4 and max(scores) == scores[2]
    # on awq bits already, or without an activation RMS: never a candidate
    high = quant.awq_plan(entries({"a": 8, "b": 6}), state, rms, 8, 1, 64)
    assert [e.promote for e in high] == [(), (64,)]
    assert all(not e.promote for e in quant.awq_plan(plan, state, {}, 8, 3, 64))
    # a last partial group is never a candidate
    assert len(quant.awq_scores(state["a"][:, :250], rms["a"][:250], 64)) == 3


def test_promoted_columns_are_quantized_on_their_own_grid_in_the_same_solve():
    g = torch.Generator().manual_seed(1)
    W, H = torch.randn(16, 128, generator=g) * 0.02, hessian(128, 2)
    plain = quant.gptq_quantize(W, H, 4, 3.0, block_size=32)
    same = quant.gptq_promoted(W, H, 4, 3.0, block_size=32)
    assert torch.equal(plain[0], same[0]) and same[2] is None
    codes, scales, hi = quant.gptq_promoted(W, H, 4, 3.0, 32, promote=(64,), promote_size=32)
    assert torch.equal(scales, plain[1]) and torch.equal(hi, quant.sdclip_scales(W, 8, 3.0))
    block, rest = codes[:, 64:96], torch.cat([codes[:, :64], codes[:, 96:]], 1)
    assert rest.abs().max() <= 7 < block.abs().max() <= 127
    W_hat = quant.dequantize(codes, scales)
    W_hat[:, 64:96] = quant.dequantize(block, hi)
    W_old = quant.dequantize(*plain)
    # a quarter of the columns on 8 bits instead of 4: the layer's output error drops
    assert quant.output_error(W, W_hat, H) < 0.85 * quant.output_error(W, W_old, H)
    with pytest.raises(ValueError, match="outside"):
        quant.gptq_promoted(W, H, 4, 3.0, promote=(100,), promote_size=32)


def tiny() -> C.RunConfig:
    m = replace(C.cpu_tiny().model, vocab_size=128, num_layers=2, model_dim=64, num_heads=2)
    m = replace(m, num_kv_heads=1, ve_layers=(), xsa_layers=(), recur_layers=())
    q = replace(C.cpu_tiny().quant, passthrough_numel=1024, awq=True, awq_top_k=3, awq_group=16)
    return replace(C.cpu_tiny(), model=m, quant=q)


def calibrated(cfg: C.RunConfig):
    from pgolf.model import GPT

    torch.manual_seed(3)
    model = GPT(cfg.model)
    model.init_weights()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    g = torch.Generator().manual_seed(4)
    batches = [torch.randint(0, cfg.model.vocab_size, (2, 16), generator=g) for _ in range(2)]
    state = {k: v.detach() for k, v in model.state_dict().items()}
    return state, quant.collect_hessians(model, batches)


def test_round_trip_through_the_artifact_keeps_the_promoted_groups():
    cfg = tiny()
    state, cal = calibrated(cfg)
    tensors = quantize_weights(cfg, state, cal, log=False)
    groups = [t for t in tensors if promoted_of(t.name)]
    assert len(groups) == 3 and {t.bits for t in groups} == {8}
    assert all(t.group == "awq" and t.shape[1] == 16 for t in groups)
    loaded, _ = A.decode_artifact(A.encode_artifact(tensors, {}, pack_bits=True))
    check_shapes(cfg, loaded, "x.pgolf")
    back, mem = quant.dequantize_state(loaded), quant.dequantize_state(tensors)
    assert back.keys() == mem.keys() == state.keys()
    assert all(torch.equal(back[k], mem[k]) for k in back)
    for t in groups:  # the promoted columns come back on the group's own grid
        base, start = promoted_of(t.name)
        cols = back[base].reshape(t.shape[0], -1)[:, start : start + 16]
        assert torch.equal(cols, quant.dequantize(t.codes, t.scales))
    off = quantize_weights(replace(cfg, quant=replace(cfg.quant, awq=False)), state, cal, log=False)
    assert not any(promoted_of(t.name) for t in off)
    err = lambda s: sum(float((s[k] - state[k]).pow(2).sum()) for k, _ in bases)  # noqa: E731
    bases = [promoted_of(t.name) for t in groups]
    assert err(back) < err(quant.dequantize_state(off))


def test_low_rank_terms_fit_the_weights_as_loaded_promoted_groups_included():
    cfg = tiny()
    cfg = replace(cfg, quant=replace(cfg.quant, lqer_top=2, lqer_top_rank=2, lqer_group=16))
    state, cal = calibrated(cfg)
    tensors = quantize_weights(cfg, state, cal, log=False)
    terms = [t for t in tensors if t.group == "lqer"]
    assert len(terms) == 4
    main = [t for t in tensors if t.group != "lqer"]
    hat = lqer.realized(main)
    for a in terms[::2]:
        name = a.name[: -len(lqer.SUFFIX_A)]
        E = state[name].reshape(a.shape[0], -1) - hat[name].reshape(a.shape[0], -1)
        A_, B_ = lqer.top_error_factors(E, 2)
        ca, _ = lqer.asym_quantize(A_, 2)
        assert torch.equal(ca.reshape(a.codes.shape), a.codes)  # fitted to Ŵ as loaded


def test_quantize_weights_without_activation_statistics_says_what_to_do():
    cfg = tiny()
    state, cal = calibrated(cfg)
    with pytest.raises(ValueError, match="activation RMS"):
        quantize_weights(cfg, state, dict(cal), log=False)


def _artifact(cfg: C.RunConfig) -> list[A.QTensor]:
    state, cal = calibrated(cfg)
    cfg = replace(cfg, quant=replace(cfg.quant, awq_top_k=1))
    return quantize_weights(cfg, state, cal, log=False)


def _renamed(tensors: list[A.QTensor], start: int | str) -> list[A.QTensor]:
    out = []
    for t in tensors:
        if promoted_of(t.name):
            t = replace(t, name=f"{promoted_of(t.name)[0]}.awq.{start}")
        out.append(t)
    return out


def test_corrupt_group_index_or_group_is_refused_on_load():
    tensors = _artifact(tiny())
    ((i, grp),) = [(i, t) for i, t in enumerate(tensors) if promoted_of(t.name)]
    base_i = next(i for i, t in enumerate(tensors) if t.name == promoted_of(grp.name)[0])
    cols = tensors[base_i].numel // tensors[base_i].rows

    def refused(ts, match):
        blob = A.encode_artifact(ts, {})
        with pytest.raises(ArtifactError, match=match) as e:
            A.decode_artifact(blob, "bad.pgolf")
        assert "bad.pgolf" in str(e.value) and "re-quantize" in str(e.value)

    refused(_renamed(tensors, 8), "whole group")  # not a multiple of the width
    refused(_renamed(tensors, cols), "whole group")  # past the last column
    codes = tensors[base_i].codes.clone()
    codes.reshape(codes.shape[0], -1)[0, promoted_of(grp.name)[1]] = 1
    refused(
        [*tensors[:base_i], replace(tensors[base_i], codes=codes), *tensors[base_i + 1 :]],
        "stores codes",
    )
    refused([t for t in tensors if t is not tensors[base_i]], "no int tensor")
    low = replace(grp, bits=tensors[base_i].bits, codes=grp.codes.clamp(-31, 31))
    refused([*tensors[:i], low, *tensors[i + 1 :]], "not more than")
    short = replace(grp, shape=(grp.shape[0] - 1, 16), codes=grp.codes[1:], scales=grp.scales[1:])
    refused([*tensors[:i], short, *tensors[i + 1 :]], r"must be \[")
    other = 32 if promoted_of(grp.name)[1] < 32 else 0  # another tensor of the same base
    name = f"{promoted_of(grp.name)[0]}.awq.{other}"
    second = replace(grp, name=name, shape=(grp.shape[0], 32))
    second = replace(second, codes=torch.zeros(grp.shape[0], 32, dtype=torch.int8))
    refused([*tensors, second], "differ in width")
    # a name with a leading zero is no promoted group: the config check refuses the extra tensor
    odd = _renamed(tensors, "064")
    assert promoted_of(odd[i].name) is None
    with pytest.raises(ArtifactError, match="do not fit"):
        check_shapes(tiny(), A.decode_artifact(A.encode_artifact(odd, {}))[0], "bad.pgolf")
    with pytest.raises(ValueError, match="whole group"):
        promoted_cols("w.awq.8", (4, 16), (4, 64))
    assert promoted_cols("w.awq.48", (4, 16), (4, 64)) == (48, 16)


def test_challenge_variables_set_the_switch_and_bad_values_are_refused():
    cfg = C.apply_env(
        C.pr1855(),
        {
            "AWQ_LITE_ENABLED": "1",
            "AWQ_LITE_BITS": "7",
            "AWQ_LITE_GROUP_TOP_K": "2",
            "AWQ_LITE_GROUP_SIZE": "32",
        },
    )
    q = cfg.quant
    assert (q.awq, q.awq_bits, q.awq_top_k, q.awq_group) == (True, 7, 2, 32)
    assert not C.pr1855().quant.awq  # the record (#1855) runs without it
    for bad in ("awq_bits=9", "awq_group=0", "awq_top_k=-1"):
        with pytest.raises(ValueError, match="awq"):
            C.validate(C.apply_overrides(C.pr1855(), [f"quant.{bad}"]))
