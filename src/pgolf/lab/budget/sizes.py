"""Byte budget: where the 16,000,000 bytes go, what-ifs, codec comparisons and the code count.

* `budget_report` splits the artifact into components (one per integer-code group: attn, mlp,
  embed, value_embed, ...; all fp16 scales; fp16 passthrough tensors; container = headers + tensor
  table + meta + checksums; code). Each is compressed alone with the artifact's codec and shuffle;
  the standalone sizes are then scaled proportionally (largest-remainder rounding) so that they add
  up exactly to the real artifact size, and the report says so.
* `what_if` re-measures the artifact after another bit width / SDClip k per group (RTN + SDClip from
  `pgolf.quant`), another value-embedding width (PR #1550 sweeps VE dim 0..128, spec §8), or
  selective ±1 pruning (PR #1550 / #1485: zero ±1 codes in increasing order of their row's scale²,
  spec §5.7; here the count is found by binary search on the real compressed size).
* `byteshuffle_brotli_reference` is PR #1550's compression (4-byte shuffle + pad byte + Brotli-11 +
  b"BROT" tag) as described in spec §5.6, written from that description, for comparisons.
* code bytes are the length of the bundled `train_gpt.py` (`pgolf.lab.bundle.code_size`),
  recorded in the artifact by the run that wrote it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from pgolf.artifact import (
    CODECS,
    DEFAULT_SHUFFLE,
    QTensor,
    build_payload,
    byte_shuffle,
    compress,
    encode_artifact,
    meta_bytes,
    tensor_parts,
    wrap,
)
from pgolf.artifact_check import ENTROPY_CODECS
from pgolf.dist import progress
from pgolf.model import param_role
from pgolf.quant import pm1_order, zero_codes

__all__ = [
    "budget_report",
    "compare_codecs",
    "format_budget",
    "format_what_if",
    "what_if",
    "byteshuffle_brotli_reference",
    "reference_input",
    "group_of",
]
BYTE_BUDGET = 16_000_000
MATRIX_GROUPS = ("attn", "mlp")
_DEFAULT_K = {"attn": 12.85, "mlp": 12.85, "embed": 20.0, "value_embed": 20.0}


def group_of(t: QTensor) -> str:
    """Budget component of a tensor's integer codes (its `group`, else its role's group)."""
    if t.kind != "int":
        return "passthrough"
    return t.group or param_role(t.name, len(t.shape)).group


def _apportion(sizes: list[int], total: int) -> list[int]:
    """Scale non-negative sizes so they sum exactly to total (largest-remainder rounding)."""
    s = sum(sizes)
    if s == 0:
        return [total] + [0] * (len(sizes) - 1) if sizes else []
    exact = [x * total / s for x in sizes]
    out = [int(e) for e in exact]
    order = sorted(range(len(sizes)), key=lambda i: exact[i] - out[i], reverse=True)
    for i in order[: total - sum(out)]:
        out[i] += 1
    return out


def budget_report(
    tensors: Iterable[QTensor],
    meta: dict,
    codec: str = "brotli",
    code_bytes: int | tuple[int, str] = 0,
    byte_budget: int = BYTE_BUDGET,
    *,
    pack_bits: bool | None = None,
    shuffle: int = DEFAULT_SHUFFLE,
) -> dict[str, Any]:
    """Per-component raw / compressed bytes, bits per parameter, total and margin (decimal).
    pack_bits None = the run's `quant.pack_bits` from meta (what the artifact was written with)."""
    tensors, pack_bits = list(tensors), _packed(meta, pack_bits)
    code_n, code_desc = code_bytes if isinstance(code_bytes, tuple) else (code_bytes, "")
    payload = build_payload(tensors, meta, pack_bits)
    model = len(wrap(payload, codec, shuffle))
    comps: dict[str, list] = {}  # name -> [params, [bytes chunks]]
    for t in tensors:
        codes, scales, data = tensor_parts(t, pack_bits)
        entry = comps.setdefault(group_of(t), [0, []])
        entry[0] += t.numel
        entry[1].append(codes or data)
        if scales:
            comps.setdefault("scales", [0, []])[1].append(scales)
    body = sum(len(b) for _, chunks in comps.values() for b in chunks)
    container = len(payload) - body + 32  # headers, table, meta, SHA-256 + the wrapper header
    names = sorted(comps, key=lambda k: (k in ("scales", "passthrough"), k))
    raw = [sum(len(b) for b in comps[k][1]) for k in names] + [container]
    est = "brotli" if codec in ENTROPY_CODECS else codec  # they code whole artifacts only
    alone = [len(compress(byte_shuffle(b"".join(comps[k][1]), shuffle), est)) for k in names]
    head = payload[: 56 + int.from_bytes(payload[16:24], "little")]  # headers + tensor table
    box = head + meta_bytes(meta) + payload[-32:]
    alone.append(len(compress(byte_shuffle(box, shuffle), est)) + 32)
    share = _apportion(alone, model)
    rows = []
    for i, name in enumerate([*names, "container"]):
        params = comps[name][0] if name in comps else 0
        bpp = 8 * share[i] / params if params else None
        rows.append(
            dict(
                name=name,
                params=params,
                raw=raw[i],
                alone=alone[i],
                compressed=share[i],
                bits_per_param=bpp,
            )
        )
    rows.append(
        dict(
            name="code", params=0, raw=code_n, alone=code_n, compressed=code_n, bits_per_param=None
        )
    )
    params = sum(t.numel for t in tensors)
    total = model + code_n
    return {
        "components": rows,
        "model_bytes": model,
        "code_bytes": code_n,
        "code_desc": code_desc,
        "total_bytes": total,
        "byte_budget": byte_budget,
        "margin": byte_budget - total,
        "params": params,
        "bits_per_param": 8 * model / params if params else None,
        "codec": codec,
        "shuffle": shuffle,
        "packed": pack_bits,
        "standalone_sum": sum(alone),
        "note": (
            "each component was compressed alone; those sizes were scaled by "
            f"{model / max(sum(alone), 1):.4f} so the components add up exactly to the artifact"
        ),
    }


def format_budget(report: Mapping[str, Any]) -> list[str]:
    """Human-readable lines (`budget:` prefix) for logs."""
    r = report
    lines = [
        f"budget: {'component':<12} {'params':>12} {'raw':>12} {'alone':>12} "
        f"{'compressed':>12} {'bits/param':>10}"
    ]
    for c in r["components"]:
        bpp = "" if c["bits_per_param"] is None else f"{c['bits_per_param']:.3f}"
        lines.append(
            f"budget: {c['name']:<12} {c['params']:>12,} {c['raw']:>12,} "
            f"{c['alone']:>12,} {c['compressed']:>12,} {bpp:>10}"
        )
    pack = "bit-packed codes" if r["packed"] else "one byte per code"
    lines.append(
        f"budget: model {r['model_bytes']:,} bytes ({r['codec']}, shuffle {r['shuffle']}, "
        f"{pack}) + code {r['code_bytes']:,} = {r['total_bytes']:,} bytes"
    )
    if r["code_desc"]:
        lines.append(f"budget: code counted as {r['code_desc']}")
    lines += code_at_margin(r)
    lines.append(
        f"budget: limit {r['byte_budget']:,} bytes, margin {r['margin']:,} bytes"
        + (" (OVER BUDGET)" if r["margin"] < 0 else "")
    )
    lines.append(f"budget: note: {r['note']}")
    return lines


MBPB_PER_KB = 0.146
"""Planner measurement (dev/LOG.md 2026-11-30, docs/benchmarks.md section 14, run r1337, a
cpu-tiny model): mlp int5 saved 46,535 bytes for +0.00675 bpb, i.e. 0.146 mbpb per 1,000 bytes.
Only an order of magnitude for other models; `code_at_margin` says so."""


def code_at_margin(r: Mapping[str, Any]) -> list[str]:
    """What the code bytes cost against the model: the parameters they would hold in the largest
    integer group at its own compressed bits/param (this report's numbers), and the bpb at the
    planner's measured rate (MBPB_PER_KB, cited)."""
    code = r["code_bytes"]
    groups = [c for c in r["components"] if c["bits_per_param"]]
    if not code or not groups:
        return []
    big = max(groups, key=lambda c: c["compressed"])
    params = int(8 * code / big["bits_per_param"])
    return [
        f"budget: code at the margin: {code:,} bytes would hold {params:,} {big['name']} params "
        f"at its {big['bits_per_param']:.3f} bits/param; at the planner's measured "
        f"{MBPB_PER_KB} mbpb per KB (mlp int5 on run r1337, benchmarks section 14) about "
        f"{MBPB_PER_KB * code / 1e6:.4f} bpb"
    ]


def _ve_columns(t: QTensor, dim: int) -> QTensor:
    """Keep the first `dim` columns; new columns draw existing values at random (seed 0)."""
    x = t.codes if t.kind == "int" else t.data
    x = x.reshape(t.shape[0], -1)
    if dim <= x.shape[1]:
        x = x[:, :dim].clone()
    else:
        g = torch.Generator().manual_seed(0)
        extra = x.reshape(-1)[torch.randint(x.numel(), (x.shape[0], dim - x.shape[1]), generator=g)]
        x = torch.cat([x, extra], dim=1)
    shape = (t.shape[0], dim)
    if t.kind == "int":
        return QTensor(t.name, shape, "int", t.bits, x, t.scales, None, t.group)
    return QTensor(t.name, shape, "fp16", t.bits, None, None, x, t.group)


def _meta_quant(meta: Mapping[str, Any]) -> Mapping[str, Any]:
    return meta.get("quant") or meta.get("config", {}).get("quant") or {}


def _packed(meta: Mapping[str, Any], pack_bits: bool | None) -> bool:
    return bool(_meta_quant(meta).get("pack_bits", False)) if pack_bits is None else pack_bits


def _meta_k(meta: Mapping[str, Any], group: str) -> float:
    if group == "other":  # the plan quantizes "other" tensors with max-abs scales (k = 0)
        return 0.0
    q = _meta_quant(meta)
    key = "matrix_clip_k" if group in MATRIX_GROUPS else "embed_clip_k"
    return float(q.get(key, _DEFAULT_K.get(group, 12.85)))


def what_if(
    tensors: Iterable[QTensor],
    meta: dict,
    codec: str = "brotli",
    *,
    bits: int | None = None,
    clip_k: float | None = None,
    group: str | Iterable[str] = MATRIX_GROUPS,
    ve_dim: int | None = None,
    prune_to: int | None = None,
    weights: Mapping[str, torch.Tensor] | None = None,
    pack_bits: bool | None = None,
    shuffle: int = DEFAULT_SHUFFLE,
    prune_tol: float = 0.001,
) -> dict[str, Any]:
    """Re-measure the compressed model after changes (applied in this order):

    bits / clip_k: re-quantise the tensors of `group` with RTN + SDClip from `weights` (original
    fp32 tensors by name) when given, else from the dequantised codes (an approximation);
    ve_dim: keep / add columns of `ve.embed.weight` and `ve.proj.weight` (0 drops every `ve.*`);
    prune_to: zero ±1 codes of `group` by increasing row scale² until the compressed *model* blob
    is at most `prune_to` bytes (subtract the code bytes from the budget first); the count is the
    binary-search answer within `prune_tol` x the number of ±1 candidates.
    Returns baseline/new bytes, the new tensors, and a list of what was done; `format_what_if`
    renders it. pack_bits None = the run's `quant.pack_bits` from meta."""
    from pgolf.quant import dequantize, rtn_quantize

    groups = (group,) if isinstance(group, str) else tuple(group)
    tensors, pack_bits = list(tensors), _packed(meta, pack_bits)
    size = lambda ts: len(encode_artifact(ts, meta, codec, pack_bits, shuffle))  # noqa: E731
    out: dict[str, Any] = {"baseline_bytes": size(tensors), "changes": [], "pruned": 0}
    new = list(tensors)
    if bits is not None or clip_k is not None:
        used = {"weights": 0, "dequantised codes": 0}
        for i, t in enumerate(new):
            if t.kind != "int" or group_of(t) not in groups:
                continue
            b, k = bits or t.bits, clip_k if clip_k is not None else _meta_k(meta, group_of(t))
            if weights is not None and t.name in weights:
                W, src = weights[t.name].float().reshape(t.rows, -1), "weights"
            else:
                W, src = dequantize(t.codes.reshape(t.rows, -1), t.scales), "dequantised codes"
            used[src] += 1
            codes, scales = rtn_quantize(W, b, k)
            new[i] = QTensor(
                t.name, t.shape, "int", b, codes.reshape(t.shape), scales, None, t.group
            )
            out["changes"].append(f"{t.name}: int{t.bits} -> int{b}, k={k:g} (RTN from {src})")
        out["requant_source"] = {k: v for k, v in used.items() if v}
    if ve_dim is not None:
        keep = []
        for t in new:
            if t.name in ("ve.embed.weight", "ve.proj.weight") and ve_dim > 0:
                keep.append(_ve_columns(t, ve_dim))
                out["changes"].append(f"{t.name}: {t.shape[1]} -> {ve_dim} columns")
            elif t.name.startswith("ve.") and ve_dim == 0:
                out["changes"].append(f"{t.name}: dropped (ve_dim=0)")
            else:
                keep.append(t)
        new = keep
    if prune_to is not None:
        new, out["pruned"], out["prune_candidates"] = _prune(new, groups, prune_to, size, prune_tol)
        out["changes"].append(f"pruned {out['pruned']:,} of {out['prune_candidates']:,} ±1 codes")
    out["bytes"] = size(new)
    out["delta"] = out["bytes"] - out["baseline_bytes"]
    out["reached"] = prune_to is None or out["bytes"] <= prune_to
    out["tensors"] = new
    return out


def format_what_if(
    r: Mapping[str, Any], limit: int = 6, code: int | None = None, cap: int = BYTE_BUDGET
) -> list[str]:
    """Log lines for a `what_if` result (at most `limit` change lines, then a count); with the
    code bytes, the new submission total and its margin to `cap` too. What-ifs do not stack:
    each starts from the artifact as it is."""
    lines = [f"what-if: {c}" for c in r["changes"][:limit]]
    if len(r["changes"]) > limit:
        lines.append(f"what-if: ... and {len(r['changes']) - limit} more changes")
    if r.get("requant_source"):
        src = ", ".join(f"{v} tensors from {k}" for k, v in r["requant_source"].items())
        lines.append(f"what-if: re-quantised with RTN + SDClip: {src}")
    flag = "" if r["reached"] else " (target NOT reached: pruning alone cannot get there)"
    lines.append(
        f"what-if: model {r['baseline_bytes']:,} -> {r['bytes']:,} bytes ({r['delta']:+,}){flag}"
    )
    if code is not None:
        total = r["bytes"] + code
        lines.append(
            f"what-if: total {total:,} bytes (model + code {code:,}), margin to "
            f"{cap:,}: {cap - total:+,} (from the artifact as it is; not stacked)"
        )
    return lines


def _prune(
    tensors: list[QTensor], groups: tuple[str, ...], target: int, size: Any, tol: float
) -> tuple[list[QTensor], int, int]:
    """Smallest count (within tol) of ±1 codes to zero, lowest row scale² first, so size fits."""
    idx, flat = pm1_order(tensors, lambda t: group_of(t) in groups)
    if not idx.numel():
        return tensors, 0, 0
    n = idx.numel()

    def apply(count: int) -> list[QTensor]:
        return zero_codes(tensors, idx, flat, count)

    if size(tensors) <= target:
        return tensors, 0, n
    if size(apply(n)) > target:
        return apply(n), n, n  # cannot reach the target by pruning alone; `reached` says so
    lo, hi, step = 0, n, max(1, int(tol * n))
    rounds = range(2 + math.ceil(math.log2(n / step)))  # more than the bisection needs
    for _ in progress(rounds, desc="what-if prune (bisection)"):
        if hi - lo <= step:  # invariant: lo does not fit, hi fits
            break
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if size(apply(mid)) <= target else (mid, hi)
    return apply(hi), hi, n


def compare_codecs(
    tensors: Iterable[QTensor],
    meta: dict | None = None,
    codecs: Iterable[str] = CODECS,
    strides: Iterable[int] = (1, 2, 4),
) -> dict[str, Any]:
    """Compressed artifact bytes for every codec x shuffle stride x packing.

    Returns {"raw": {"bytes": P, "packed": P}, "sizes": {(codec, stride, packing): bytes},
    "best": (codec, stride, packing, bytes)}; packing is "bytes" (one per code) or "packed"."""
    tensors, meta = list(tensors), meta or {}
    payloads = {p: build_payload(tensors, meta, p == "packed") for p in ("bytes", "packed")}
    sizes = {}
    for codec in codecs:
        for s in strides:
            for p, pl in payloads.items():
                if codec in ENTROPY_CODECS and p == "packed":
                    continue  # rans entropy-codes one byte per code
                sizes[(codec, s, p)] = len(wrap(pl, codec, s))
    best = min(sizes.items(), key=lambda kv: kv[1])
    raw = {p: len(pl) for p, pl in payloads.items()}
    return {"raw": raw, "sizes": sizes, "best": (*best[0], best[1])}


def byteshuffle_brotli_reference(blob_bytes: bytes) -> bytes:
    """PR #1550's method per spec §5.6: zero-pad to a multiple of 4, bytes at positions 0, 1, 2, 3
    mod 4, one trailing pad-count byte, Brotli quality 11, prefixed by the tag b"BROT"."""
    pad = -len(blob_bytes) % 4
    return b"BROT" + compress(byte_shuffle(bytes(blob_bytes), 4) + bytes([pad]), "brotli")


def reference_input(tensors: Iterable[QTensor]) -> bytes:
    """The same raw bytes #1550 would compress, minus pickle framing: every int8 code, then every
    fp16 scale, then every fp16 passthrough tensor."""
    parts = [tensor_parts(t) for t in tensors]
    return b"".join(b"".join(p[i] for p in parts) for i in range(3))


def load_weights(path: str) -> dict[str, torch.Tensor]:
    """`--weights`: the run's fp32 safetensors, or an error naming the file and the fix."""
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except OSError:
        raise
    except Exception as e:  # safetensors raises its own error type for a foreign file
        raise ValueError(
            f"--weights {path}: not a safetensors file ({e}); pass the run's "
            "final_model.safetensors"
        ) from None


def parse_what_ifs(tensors: Iterable[QTensor], bits: list[str], clip_k: list[str]) -> list[dict]:
    """`--bits GROUP=N` / `--clip-k GROUP=K` -> `what_if` keywords, each checked (a group this
    artifact quantizes, bits 2..8, a finite k >= 0) before any work is done."""
    groups = sorted({group_of(t) for t in tensors if t.kind == "int"})
    out: list[dict] = []
    for flag, specs, key in (("--bits", bits, "bits"), ("--clip-k", clip_k, "clip_k")):
        for spec in specs:
            g, sep, v = spec.partition("=")
            if not sep or g not in groups:
                raise ValueError(
                    f"{flag} {spec!r}: expected GROUP=VALUE with GROUP one of this artifact's "
                    f"quantized groups {', '.join(groups)} (e.g. {flag} mlp=5)"
                )
            try:
                val = int(v) if key == "bits" else float(v)
            except ValueError as e:
                raise ValueError(f"{flag} {spec!r}: {e}") from None
            if not (2 <= val <= 8 if key == "bits" else 0 <= val < float("inf")):
                need = "bits must be within 2..8" if key == "bits" else "k must be finite, >= 0"
                raise ValueError(f"{flag} {spec!r}: {need}")
            out.append({"group": g, key: val})
    return out
