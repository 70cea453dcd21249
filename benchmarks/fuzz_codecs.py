"""The long random corpus for the artifact's codecs, run by hand (CI runs 160 rounds of it in
tests/test_fuzz_codecs.py): re-signed mutations (CRC-32 redone, so each reaches its codec) of
small valid artifacts of every codec (brotli, lzma, zstd, rans, crans), with and without a
low-rank term, and (every third round) rANS/crans streams crafted at random around every bound
(lanes, declared codes, segments, tensors, tables, states, words, CRC). Each must be refused with
an ArtifactError naming the file, or decode; anything else (another exception, an unnamed error)
is listed and the exit status is 1.

    python benchmarks/fuzz_codecs.py --seed 7 --rounds 5000

Prints the counts per outcome, the slowest case (untraced) and the largest tracemalloc peak (every
`--trace-every`-th round; tracing slows numpy-heavy decodes ~20x, so it is sampled) as JSON.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    fuzz_corpus = importlib.import_module("fuzz_corpus")  # lives with the tests that run it short
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=2000)
    ap.add_argument("--trace-every", type=int, default=8)
    a = ap.parse_args()
    res = fuzz_corpus.run_corpus(a.seed, a.rounds, lambda s: print(s, flush=True), a.trace_every)
    res["peak_mib"] = round(res.pop("peak") / 2**20, 1)
    res["slowest_s"] = round(res.pop("seconds"), 3)
    print(json.dumps({"seed": a.seed, "rounds": a.rounds, **res}, default=str))
    sys.exit(1 if res["bad"] else 0)


if __name__ == "__main__":
    main()
