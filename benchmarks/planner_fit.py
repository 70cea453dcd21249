"""Budget planner on a finished run: the option table once, then a plan for each cap.

    python benchmarks/planner_fit.py RUN_DIR --caps 340000,400000 --out-dir out/plans

Same code path as `pgolf budget RUN --fit CAP --out plan.json` (pgolf.lab.planner), but the
options are measured once for all caps. Writes OUT_DIR/table.json and OUT_DIR/plan_CAP.json; check
each plan with `pgolf quantize RUN --plan plan_CAP.json --out A && pgolf eval A --no-sliding`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from pgolf.lab import planner as P


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run_dir")
    ap.add_argument("--caps", default="340000,400000")
    ap.add_argument("--out-dir", default="out/plans")
    ap.add_argument("--calib-tokens", type=int, default=65536)
    ap.add_argument("--bits", default="4,5,6,7,8")
    ap.add_argument("--ranks", default="0,4,8")
    a = ap.parse_args()
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    bench = P.Bench(a.run_dir, a.calib_tokens)
    bits = tuple(int(b) for b in a.bits.split(","))
    ranks = tuple(int(r) for r in a.ranks.split(","))
    table = P.measure(bench, P.default_grid(bench, bits, ranks), log=print)
    print(f"measured {sum(len(v) for v in table.values())} options in "
          f"{time.perf_counter() - t0:.0f}s")  # fmt: skip
    res_file = Path(a.run_dir) / "result.json"
    base = json.loads(res_file.read_text()).get("val_bpb_roundtrip") if res_file.is_file() else None
    for cap in (int(c) for c in a.caps.split(",")):
        try:
            res = P.fit(bench, table, cap)
        except P.InfeasibleBudget as e:
            print(f"cap {cap}: {e}")
            continue
        lines, extra = P.plan_report(res, table, base)
        print("\n".join(lines))
        P.write_plan(out / f"plan_{cap}.json", res["choice"], {"run": str(bench.run), **extra})
        (out / "table.json").write_text(json.dumps(extra["table"], indent=1) + "\n")
    print(f"total {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
