"""Byte budget: exact component accounting, what-ifs, pruning, codec comparison, code bytes."""

from __future__ import annotations

import brotli
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pgolf.artifact import CODECS, QTensor, byte_unshuffle, encode_artifact
from pgolf.lab.budget.sizes import (
    _apportion,
    budget_report,
    byteshuffle_brotli_reference,
    compare_codecs,
    format_budget,
    format_what_if,
    reference_input,
    what_if,
)
from pgolf.quant import rtn_quantize

META = {"model": {"model_dim": 64}, "quant": {"matrix_clip_k": 12.85, "embed_clip_k": 20.0}}


def model_set(seed: int = 0) -> tuple[list[QTensor], dict[str, torch.Tensor]]:
    """A tiny model-shaped set: int6 attn/mlp, int8 embed and VE table, fp16 passthrough."""
    g = torch.Generator().manual_seed(seed)
    ts, weights = [], {}

    def q(name: str, shape: tuple[int, int], bits: int, k: float, group: str, std: float) -> None:
        w = torch.randn(shape, generator=g) * std * torch.linspace(0.5, 2, shape[0])[:, None]
        codes, scales = rtn_quantize(w, bits, k)
        weights[name] = w
        ts.append(QTensor(name, shape, "int", bits, codes, scales, None, group))

    q("tok_emb.weight", (128, 64), 8, 20.0, "embed", 0.005)
    for n, shape in (("attn.c_q", (64, 64)), ("mlp.fc", (128, 64)), ("mlp.proj", (64, 128))):
        q(f"blocks.0.{n}.weight", shape, 6, 12.85, n.split(".")[0], 0.02)
    q("ve.embed.weight", (128, 16), 8, 20.0, "value_embed", 0.02)
    proj = (torch.randn(64, 16, generator=g) * 0.1).half()
    ts.append(QTensor("ve.proj.weight", (64, 16), "fp16", 16, None, None, proj, "passthrough"))
    ts.append(QTensor("ve.scale", (), "fp16", 16, None, None, torch.tensor(0.5).half(), ""))
    return ts, weights


def size(ts: list[QTensor], **kw) -> int:
    return len(encode_artifact(ts, META, **kw))


@settings(deadline=None, derandomize=True)
@given(sizes=st.lists(st.integers(0, 10**6), max_size=8), total=st.integers(0, 10**7))
def test_apportion_sums_exactly(sizes: list[int], total: int) -> None:
    out = _apportion(sizes, total)
    assert len(out) == len(sizes)
    if sizes:
        assert sum(out) == total and min(out) >= 0


@pytest.mark.parametrize(("codec", "packed"), [("brotli", False), ("lzma", True), ("zstd", False)])
def test_components_add_up_to_artifact(codec: str, packed: bool) -> None:
    ts, _ = model_set()
    r = budget_report(ts, META, codec, (1234, "test code"), pack_bits=packed)
    model = size(ts, codec=codec, pack_bits=packed)
    assert r["model_bytes"] == model and r["total_bytes"] == model + 1234
    assert sum(c["compressed"] for c in r["components"]) == r["total_bytes"]
    assert r["margin"] == 16_000_000 - model - 1234
    names = [c["name"] for c in r["components"]]
    assert names == [
        "attn",
        "embed",
        "mlp",
        "value_embed",
        "passthrough",
        "scales",
        "container",
        "code",
    ]
    by = {c["name"]: c for c in r["components"]}
    assert by["mlp"]["params"] == 2 * 128 * 64 and by["mlp"]["raw"] == 2 * 128 * 64 * (
        6 / 8 if packed else 1
    )
    assert 2.5 < by["mlp"]["bits_per_param"] < 5.5  # int6 Gaussian entropy is about 3.3 bits
    assert abs(r["standalone_sum"] - model) < 0.2 * model  # zstd: pieces compress 13% better
    text = "\n".join(format_budget(r))
    assert "add up exactly" in text and "margin" in text and "test code" in text


def test_over_budget_is_flagged() -> None:
    ts, _ = model_set()
    r = budget_report(ts, META, "zstd", 0, byte_budget=1000)
    assert r["margin"] < 0 and "OVER BUDGET" in "\n".join(format_budget(r))


def test_what_if_same_bits_and_k_reproduces_size() -> None:
    ts, weights = model_set()
    from_codes = what_if(ts, META, "brotli", bits=6, clip_k=12.85)
    assert from_codes["requant_source"] == {"dequantised codes": 3}
    assert abs(from_codes["delta"]) <= 0.01 * from_codes["baseline_bytes"]
    from_weights = what_if(ts, META, "brotli", bits=6, weights=weights)  # k from META
    assert from_weights["requant_source"] == {"weights": 3}
    assert from_weights["bytes"] == from_weights["baseline_bytes"]  # the very same codes
    text = "\n".join(format_what_if(from_codes))
    assert "3 tensors from dequantised codes" in text and "int6 -> int6, k=12.85" in text
    assert "total" not in text  # without the code bytes there is no total to state
    with_code = format_what_if(from_codes, code=1000, cap=from_codes["bytes"] + 1500)
    assert with_code[-1].startswith(f"what-if: total {from_codes['bytes'] + 1000:,} bytes")
    last = with_code[-1]
    assert "margin to" in last and "+500" in last and "not stacked" in last


def test_packing_follows_run_config_in_meta() -> None:
    ts, _ = model_set()
    meta = {"config": {"quant": {"pack_bits": True, "matrix_clip_k": 12.85}}}
    r = budget_report(ts, meta, "zstd")
    assert r["packed"] and r["model_bytes"] == len(encode_artifact(ts, meta, "zstd", True))
    assert not budget_report(ts, meta, "zstd", pack_bits=False)["packed"]


def test_what_if_fewer_bits_and_smaller_k() -> None:
    ts, weights = model_set()
    r5 = what_if(ts, META, "zstd", bits=5, weights=weights)
    assert r5["bytes"] < 0.95 * r5["baseline_bytes"]
    assert all(t.bits == 5 for t in r5["tensors"] if t.group in ("attn", "mlp"))
    assert next(t for t in r5["tensors"] if t.name == "tok_emb.weight").bits == 8
    wider = what_if(ts, META, "zstd", clip_k=8.0, group="embed", weights=weights)
    assert wider["bytes"] > wider["baseline_bytes"]  # smaller k = finer grid = more bytes


def test_what_if_value_embedding_width() -> None:
    ts, _ = model_set()
    small = what_if(ts, META, "zstd", ve_dim=4)
    shapes = {t.name: t.shape for t in small["tensors"]}
    assert shapes["ve.embed.weight"] == (128, 4) and shapes["ve.proj.weight"] == (64, 4)
    assert small["bytes"] < small["baseline_bytes"]
    big = what_if(ts, META, "zstd", ve_dim=32)
    assert big["bytes"] > big["baseline_bytes"]
    none = what_if(ts, META, "zstd", ve_dim=0)
    assert not any(t.name.startswith("ve.") for t in none["tensors"])
    assert none["bytes"] < small["bytes"]


def test_pruning_reaches_target() -> None:
    ts, _ = model_set()
    base = size(ts)
    target = base - 600
    r = what_if(ts, META, "brotli", prune_to=target)
    assert r["reached"] and r["bytes"] <= target and size(r["tensors"]) == r["bytes"]
    assert 0 < r["pruned"] < r["prune_candidates"]
    # only ±1 codes of attn/mlp became 0, and they are those of the lowest-scale rows
    zeroed, kept = [], []
    for old, new in zip(ts, r["tensors"], strict=True):
        if old.kind != "int":
            continue
        changed = old.codes != new.codes
        if old.group not in ("attn", "mlp"):
            assert not changed.any()
            continue
        assert (old.codes[changed].abs() == 1).all() and (new.codes[changed] == 0).all()
        s2 = (old.scales.float() ** 2)[:, None].expand_as(old.codes)
        zeroed.append(s2[changed])
        kept.append(s2[(old.codes.abs() == 1) & ~changed])
    assert torch.cat(zeroed).max() <= torch.cat(kept).min()
    assert int(sum(z.numel() for z in zeroed)) == r["pruned"]
    fits = what_if(ts, META, "brotli", prune_to=base)
    assert fits["pruned"] == 0 and fits["reached"]
    hopeless = what_if(ts, META, "brotli", prune_to=100)
    assert not hopeless["reached"] and hopeless["pruned"] == hopeless["prune_candidates"]


def test_compare_codecs_and_reference() -> None:
    ts, _ = model_set()
    r = compare_codecs(ts, META, strides=(1, 4))
    assert len(r["sizes"]) == (len(CODECS) * 2 - 2) * 2  # no ("rans"/"crans", stride, "packed")
    assert r["best"][3] == min(r["sizes"].values())
    assert r["sizes"][("zstd", 4, "packed")] == size(ts, codec="zstd", pack_bits=True, shuffle=4)
    raw = reference_input(ts)
    want = sum(t.numel + 2 * t.rows if t.kind == "int" else 2 * t.numel for t in ts)
    assert len(raw) == want
    ref = byteshuffle_brotli_reference(raw)
    assert ref[:4] == b"BROT"
    body = brotli.decompress(ref[4:])
    pad = body[-1]
    assert byte_unshuffle(body[:-1], 4, len(raw) + pad)[: len(raw)] == raw


def test_the_code_is_priced_against_the_model_at_the_margin() -> None:
    """1,234 code bytes = the params they would hold in the largest integer group at its own
    compressed bits/param, and the planner-rate bpb with its source."""
    ts, _ = model_set()
    r = budget_report(ts, META, "brotli", (1234, "test code"))
    line = next(x for x in format_budget(r) if "code at the margin" in x)
    ints = [c for c in r["components"] if c["bits_per_param"]]
    big = max(ints, key=lambda c: c["compressed"])
    assert f"would hold {int(8 * 1234 / big['bits_per_param']):,} {big['name']} params" in line
    assert "benchmarks section 14" in line and f"{0.146 * 1234 / 1e6:.4f} bpb" in line
    assert not [x for x in format_budget(budget_report(ts, META, "brotli", 0)) if "margin:" in x]
