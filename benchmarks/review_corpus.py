"""Both reviewer tools over the whole labelled corpus, one command: `pgolf verify` on the folder
half (`review_verify.py`, `corpus/folders.json` + the tampered copies) and `pgolf audit --static`
on the script half (`review_static.py`, `corpus/scripts.json`). Each prints its confusion table
and every miss and false alarm with its reason; the exit status is the worse of the two.

    python benchmarks/corpus/fetch.py        # once: the files, from the challenge's mirror
    python benchmarks/corpus/tamper.py       # once: the tampered copies of merged records
    python benchmarks/review_corpus.py [--json-dir DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json-dir", type=Path, help="write review_verify.json, review_static.json")
    a = ap.parse_args(argv)
    worst = 0
    for name in ("review_verify", "review_static"):
        print(f"==== {name}")
        args = ["--json", str(a.json_dir / f"{name}.json")] if a.json_dir else []
        worst = max(worst, _load(name).main(args) or 0)
    return worst


if __name__ == "__main__":
    sys.exit(main())
