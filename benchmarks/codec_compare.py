"""The same integer codes through three storage schemes: pgolf's context-modelled rANS (`crans`),
Brotli-11 (pgolf's `brotli` codec: byte shuffle + Brotli at quality 11), and the scheme of the
merged record PR #1855 as its README describes it (rows of each matrix reordered by similarity,
then each quantization group compressed by a general-purpose compressor; the record used lrzip's
ZPAQ back end). Here the per-group compressor is the best of those on the package index that
install as wheels: zpaq (level 5, one thread), PPMd (pyppmd, orders 4-16), bzip3, xz (preset 9e),
zstd-22 and Brotli-11; the row permutation is charged at 2 bytes per row.

Only the integer codes are compared (scales, passthrough tensors and the container are the same
under every scheme). Decode times are wall seconds, best of 3, one thread, in this process.

    python benchmarks/codec_compare.py --artifact RUN/artifact.pgolf [--artifact ...]
    python benchmarks/codec_compare.py --synthetic pr1550 --fraction 0.25

Synthetic codes come from i.i.d. Gaussian weights (`entropy_codec.synthetic`): they have no row
structure, so they measure the coders, not what a trained model's rows give a similarity sort.
Needs the `bench` extra (`pip install -e .[bench]`: zpaq, pyppmd, bzip3).
"""

from __future__ import annotations

import argparse
import json
import lzma
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pgolf import artifact as A
from pgolf import crans

sys.path.insert(0, str(Path(__file__).resolve().parent))
from entropy_codec import synthetic  # noqa: E402  (a sibling benchmark script, not a package)


def _compressors() -> dict[str, tuple[Callable[[bytes], bytes], Callable[[bytes, int], bytes]]]:
    """name -> (compress, decompress(blob, n)); each missing package is left out, with a note."""
    import brotli

    out = {
        "xz9e": (
            lambda b: lzma.compress(b, preset=9 | lzma.PRESET_EXTREME),
            lambda z, n: lzma.decompress(z),
        ),
        "zstd22": (lambda b: A.compress(b, "zstd"), lambda z, n: A.decompress(z, "zstd", n)),
        "brotli11": (lambda b: brotli.compress(b, quality=11), lambda z, n: brotli.decompress(z)),
    }
    try:
        import zpaq

        out["zpaq5"] = (
            lambda b: zpaq.compress(b, level=5, threads=1),
            lambda z, n: zpaq.decompress(z),
        )
    except ImportError:
        print("note: zpaq not installed (pip install -e .[bench])")
    try:
        import pyppmd

        for order in (4, 8, 16):
            out[f"ppmd{order}"] = (
                lambda b, o=order: pyppmd.compress(b, max_order=o, mem_size=256 << 20),
                lambda z, n, o=order: pyppmd.decompress(z, max_order=o, mem_size=256 << 20),
            )
    except ImportError:
        print("note: pyppmd not installed (pip install -e .[bench])")
    try:
        import bz3

        out["bzip3"] = (lambda b: bz3.compress(b), lambda z, n: bz3.decompress(z))
    except ImportError:
        print("note: bzip3 not installed (pip install -e .[bench])")
    return out


def similarity_order(codes: np.ndarray, dims: int = 32, seed: int = 0) -> np.ndarray:
    """Greedy nearest-neighbour chain over the rows (L2 on a random projection of the codes),
    starting from the row of smallest norm: similar rows end up next to each other."""
    r = codes.shape[0]
    if r < 3:
        return np.arange(r)
    g = np.random.default_rng(seed)
    x = codes.astype(np.float32) @ g.standard_normal((codes.shape[1], dims)).astype(np.float32)
    sq = (x * x).sum(1)
    left = np.ones(r, bool)
    cur = int(np.argmin(sq))
    order = [cur]
    left[cur] = False
    for _ in range(r - 1):
        d = sq - 2 * x @ x[cur]
        d[~left] = np.inf
        cur = int(np.argmin(d))
        order.append(cur)
        left[cur] = False
    return np.asarray(order)


def groups_of(ints: list[A.QTensor], sort: bool) -> tuple[dict[str, bytes], int]:
    """Per quantization group, the concatenated raw code bytes (rows reordered when `sort`),
    and the bytes the permutations cost (2 per row of every sorted matrix)."""
    parts: dict[str, list[bytes]] = {}
    perm_bytes = 0
    for t in ints:
        r = t.shape[0] if t.shape else 1
        c = t.codes.numpy().astype(np.int8).reshape(r, -1)
        if sort and c.ndim == 2 and r > 2 and c.shape[1] > 1:
            c = c[similarity_order(c)]
            perm_bytes += 2 * r
        parts.setdefault(t.group or "other", []).append(np.ascontiguousarray(c).tobytes())
    return {g: b"".join(v) for g, v in parts.items()}, perm_bytes


def best_time(fn, reps: int = 3) -> float:
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def compare(tensors: list[A.QTensor], label: str) -> dict:
    ints = [t for t in tensors if t.kind == "int"]
    segs = [t.codes.numpy().reshape(-1) for t in ints]
    codes = np.concatenate(segs)
    raw = codes.tobytes()
    n = codes.size
    shapes = [
        (t.shape[0], t.numel // t.shape[0]) if t.shape and t.shape[0] else (1, t.numel)
        for t in ints
    ]
    res: dict = {"source": label, "codes": n, "tensors": len(ints)}
    cblob = crans.encode(codes, shapes)
    assert np.array_equal(crans.decode(cblob, expect=n), codes)
    res["crans"] = len(cblob)
    res["crans_decode_s"] = best_time(lambda: crans.decode(cblob, expect=n))
    brot = {s: A.compress(A.byte_shuffle(raw, s), "brotli") for s in (1, 2, 4)}
    s = min(brot, key=lambda k: len(brot[k]))
    res["brotli11"] = len(brot[s])
    res["brotli11_decode_s"] = best_time(lambda: A.decompress(brot[s], "brotli", len(raw)))
    comp = _compressors()
    for sort in (False, True):
        groups, perm = groups_of(ints, sort)
        total, picks, dec_s = perm, {}, 0.0
        for g, blob in groups.items():
            sizes = {name: len(c(blob)) for name, (c, _) in comp.items()}
            name = min(sizes, key=sizes.get)
            z = comp[name][0](blob)
            assert comp[name][1](z, len(blob)) == blob, f"{name} round trip"
            dec_s += best_time(lambda z=z, d=comp[name][1], k=len(blob): d(z, k))
            picks[g] = {"best": name, "bytes": sizes[name], "all": sizes}
            total += sizes[name]
        key = "record_sorted" if sort else "record_unsorted"
        res[key] = total
        res[key + "_perm_bytes"] = perm
        res[key + "_groups"] = picks
        res[key + "_decode_s"] = dec_s
    return res


def report(r: dict) -> None:
    b = r["brotli11"]
    print(f"source: {r['source']}: {r['codes']:,} codes in {r['tensors']} tensors")
    rows = [
        ("brotli-11 (pgolf brotli)", r["brotli11"], r["brotli11_decode_s"]),
        ("crans (pgolf)", r["crans"], r["crans_decode_s"]),
        ("per-group best, rows as stored", r["record_unsorted"], r["record_unsorted_decode_s"]),
        ("per-group best, rows sorted (#1855)", r["record_sorted"], r["record_sorted_decode_s"]),
    ]
    print(f"  {'scheme':<38}{'bytes':>12}{'/ brotli':>10}{'decode s':>10}")
    for name, v, t in rows:
        print(f"  {name:<38}{v:>12,}{v / b:>10.4f}{t:>10.3f}")
    for key in ("record_unsorted", "record_sorted"):
        picks = ", ".join(f"{g}:{p['best']} {p['bytes']:,}" for g, p in r[key + "_groups"].items())
        print(f"  {key}: {picks} (+ permutations {r[key + '_perm_bytes']:,})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--artifact", action="append", default=[])
    ap.add_argument("--synthetic", action="append", default=[], help="preset, e.g. pr1550")
    ap.add_argument("--fraction", type=float, default=1.0, help="rows kept per synthetic tensor")
    ap.add_argument("--out", default=None, help="write the results as JSON")
    a = ap.parse_args()
    results = []
    for path in a.artifact:
        tensors, _ = A.load_artifact(path)
        results.append(compare(tensors, path))
        report(results[-1])
    for preset in a.synthetic:
        label = f"synthetic {preset} (fraction {a.fraction})"
        results.append(compare(synthetic(preset, a.fraction), label))
        report(results[-1])
    if a.out:
        Path(a.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
