"""Entropy-coded weights: the rANS and crans codecs against general-purpose compressors.

For the int codes of an artifact (or synthetic `pr1550`-shaped codes) prints: the order-0
empirical entropy bound (one table per tensor), rANS table + lane-state overhead, rANS bytes,
Brotli-11 at the best byte-shuffle stride, lzma, zstd, the ratio to Brotli-11, and decode times
of rANS and Brotli side by side in one process; then whole artifacts, codec brotli vs rans.

    python benchmarks/entropy_codec.py --artifact RUN/artifact.pgolf
    python benchmarks/entropy_codec.py --synthetic pr1550 [--fraction 1.0]

Synthetic codes: every tensor the pr1550 plan quantizes, with its shape, bits and SDClip k, from
i.i.d. Gaussian weights by `pgolf.quant.rtn_quantize` (trained weights have heavier tails and
row structure, so this measures the coder, not a trained model's entropy).
"""

from __future__ import annotations

import argparse
import json
import lzma
import time

import numpy as np
import torch

from pgolf import artifact as A
from pgolf import artifact_check as AC
from pgolf import config as C
from pgolf import crans, rans
from pgolf.model import GPT
from pgolf.quant import make_plan, rtn_quantize


def synthetic(preset: str, fraction: float, seed: int = 0) -> list[A.QTensor]:
    cfg = C.PRESETS[preset]()
    with torch.device("meta"):
        sd = GPT(cfg.model).state_dict()
    g = torch.Generator().manual_seed(seed)
    out = []
    for e in make_plan(sd, cfg.quant, cfg.model):
        shape = tuple(sd[e.name].shape)
        if e.method == "fp16":
            continue
        rows = max(1, int(shape[0] * fraction))
        W = torch.randn((rows, int(np.prod(shape[1:]))), generator=g) / shape[-1] ** 0.5
        codes, scales = rtn_quantize(W, e.bits, e.clip_k)
        out.append(A.QTensor(e.name, W.shape, "int", e.bits, codes, scales, group=e.group))
    return out


def order0_bytes(segs: list[np.ndarray]) -> float:
    total = 0.0
    for s in segs:
        if s.size:
            p = np.bincount(s.astype(np.int16) + 128) / s.size
            p = p[p > 0]
            total += float(-(p * np.log2(p)).sum()) * s.size / 8
    return total


def model_bytes(ints: list[A.QTensor]) -> float:
    """Empirical entropy under the model `crans.plan` picks per tensor (its bound, no tables)."""
    total = 0.0
    for t in ints:
        r = t.shape[0] if t.shape else 1
        c = t.codes.numpy().astype(np.int8).reshape(r, -1)
        if not c.size:
            continue
        flags, proto, cls, k = crans.plan(c)
        sym = crans._symbols(c, flags if flags is not None else np.zeros(r, bool), proto)
        ctx = crans._ctx_ids(flags, cls, k, r)
        cnt = np.bincount(ctx * 256 + sym.reshape(-1))
        tot = np.bincount(ctx)
        h, tt = cnt[cnt > 0], tot[tot > 0]
        total += float((tt * np.log2(tt)).sum() - (h * np.log2(h)).sum()) / 8
    return total


def timed(fn, reps: int = 3):
    """(result, best wall seconds, best process CPU seconds) over `reps` calls."""
    best, cpu, out = float("inf"), float("inf"), None
    for _ in range(reps):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        best, cpu = min(best, time.perf_counter() - t0), min(cpu, time.process_time() - c0)
    return out, best, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--artifact", default=None)
    ap.add_argument("--synthetic", default=None, help="preset name, e.g. pr1550")
    ap.add_argument("--fraction", type=float, default=1.0, help="rows kept per synthetic tensor")
    ap.add_argument("--prec", type=int, default=rans.DEFAULT_PREC)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    if a.artifact:
        tensors, _ = A.load_artifact(a.artifact)
        src = a.artifact
    else:
        tensors, src = synthetic(a.synthetic or "pr1550", a.fraction), f"synthetic {a.synthetic}"
    ints = [t for t in tensors if t.kind == "int"]
    segs = [t.codes.numpy().reshape(-1) for t in ints]
    codes = np.concatenate(segs)
    sizes = [s.size for s in segs]
    raw = codes.tobytes()
    n = codes.size

    bound = order0_bytes(segs)
    blob, enc_s, _ = timed(lambda: rans.encode(codes, sizes, prec=a.prec), reps=1)
    tables = len(rans._tables(rans._segments(codes, sizes), a.prec)[1])
    states = 4 * rans.default_lanes(n)
    dec, dec_s, dec_cpu = timed(lambda: rans.decode(blob, expect=n))
    assert np.array_equal(dec, codes)
    shapes = [
        (t.shape[0], t.numel // t.shape[0]) if t.shape and t.shape[0] else (1, t.numel)
        for t in ints
    ]
    cblob, cenc_s, _ = timed(lambda: crans.encode(codes, shapes, prec=a.prec), reps=1)
    cdec, cdec_s, cdec_cpu = timed(lambda: crans.decode(cblob, expect=n))
    assert np.array_equal(cdec, codes)
    mbound = model_bytes(ints)
    brot = {s: len(A.compress(A.byte_shuffle(raw, s), "brotli")) for s in (1, 2, 4)}
    best_s = min(brot, key=brot.get)
    bstream = A.compress(A.byte_shuffle(raw, best_s), "brotli")
    _, bdec_s, bdec_cpu = timed(lambda: A.decompress(bstream, "brotli", len(raw)))
    lz = len(lzma.compress(raw, format=lzma.FORMAT_RAW, filters=AC._LZMA_FILTERS))
    zs = len(A.compress(raw, "zstd"))
    res = dict(
        source=src,
        codes=n,
        tensors=len(ints),
        bound=round(bound),
        tables=tables,
        lane_states=states,
        rans=len(blob),
        brotli11=brot[best_s],
        brotli_stride=best_s,
        lzma=lz,
        zstd=zs,
        ratio_to_brotli=len(blob) / brot[best_s],
        over_bound_plus_tables=len(blob) / (bound + tables + states) - 1,
        rans_decode_s=dec_s,
        brotli_decode_s=bdec_s,
        rans_encode_s=enc_s,
        rans_decode_cpu_s=dec_cpu,
        brotli_decode_cpu_s=bdec_cpu,
        crans=len(cblob),
        crans_model_bound=round(mbound),
        crans_ratio_to_brotli=len(cblob) / brot[best_s],
        crans_encode_s=cenc_s,
        crans_decode_s=cdec_s,
        crans_decode_cpu_s=cdec_cpu,
    )
    art = {c: len(A.encode_artifact(tensors, {}, codec=c)) for c in ("brotli", "rans", "crans")}
    res.update(
        artifact_brotli=art["brotli"],
        artifact_rans=art["rans"],
        artifact_crans=art["crans"],
        artifact_ratio=art["rans"] / art["brotli"],
        artifact_crans_ratio=art["crans"] / art["brotli"],
    )
    print(f"source: {src}: {n:,} codes in {len(ints)} tensors")
    print(f"order-0 bound          {bound:>14,.0f} bytes ({8 * bound / n:.4f} bits/code)")
    print(f"tables + lane states   {tables:>14,} + {states:,} bytes")
    print(
        f"rANS                   {len(blob):>14,} bytes "
        f"({100 * res['over_bound_plus_tables']:+.3f}% vs bound + tables + states)"
    )
    for s, v in brot.items():
        print(f"brotli-11 shuffle {s}    {v:>14,} bytes")
    print(f"lzma (9e)              {lz:>14,} bytes")
    print(f"zstd-22                {zs:>14,} bytes")
    print(f"rANS / brotli-11 best  {res['ratio_to_brotli']:>14.4f}")
    print(f"crans model bound      {mbound:>14,.0f} bytes ({8 * mbound / max(n, 1):.4f} bits/code)")
    print(
        f"crans                  {len(cblob):>14,} bytes (side info, tables, states "
        f"{len(cblob) - mbound:,.0f})"
    )
    print(f"crans / brotli-11 best {res['crans_ratio_to_brotli']:>14.4f}")
    print(
        f"decode wall/CPU s (best of 3): rANS {dec_s:.3f}/{dec_cpu:.3f}  "
        f"brotli {bdec_s:.3f}/{bdec_cpu:.3f}; crans {cdec_s:.3f}/{cdec_cpu:.3f}; "
        f"encode rANS {enc_s:.2f} crans {cenc_s:.2f}"
    )
    print(
        f"whole artifact: brotli {art['brotli']:,}  rans {art['rans']:,} "
        f"({res['artifact_ratio']:.4f})  crans {art['crans']:,} "
        f"({res['artifact_crans_ratio']:.4f})"
    )
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
