"""Run `pgolf audit --static` over the script half of the labelled corpus
(`benchmarks/corpus/scripts.json`) and print, per condition, how the screen does:

* on the scripts labelled illegal for a condition: flagged for that condition (a `violation` or
  `audit` finding of it) / missed;
* on the legal scripts (merged records): a false `violation` of that condition, and a false
  `audit` finding (reported, not counted against the screen: the empirical audit decides those);

then the headline (illegal scripts flagged for their own condition; merged records with any
violation) and every miss and false alarm with its reason. The files come from the mirror
through `benchmarks/corpus/fetch.py` (git-ignored `.fetched/corpus/`); a script that exec's a
shipped file gets that file (`companions` in the manifest) next to it.

    python benchmarks/review_static.py [--json OUT] [--only ID...]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

from pgolf.lab.audit.static import screen

HERE = Path(__file__).resolve().parent


def _load_fetch():
    """benchmarks/corpus/fetch.py (a sibling script, not a package)."""
    spec = importlib.util.spec_from_file_location("corpus_fetch", HERE / "corpus" / "fetch.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


fetch = _load_fetch()

CONDITIONS = ("C1", "C2", "C3", "C4", "subset")
FLAGS = ("violation", "audit")


def materialize(entry: dict) -> Path:
    """The script on disk (and its companions, checked against their sha256)."""
    d = fetch.materialize(entry)
    for rel, want in entry.get("companions", {}).items():
        src = entry["path"].rsplit("/", 1)[0] + "/" + rel
        data = fetch._git("show", f"{entry['commit']}:{src}")
        if fetch.sha256(data) != want:
            raise ValueError(f"{entry['id']}: companion {rel} differs from the manifest")
        (d / rel).write_bytes(data)
    return d / Path(entry["path"]).name


def review(entries: list[dict]) -> dict:
    rows = []
    for e in entries:
        path = materialize(e)
        t0 = time.perf_counter()
        found = screen(path)
        rows.append(
            {
                "id": e["id"],
                "pr": e["pr"],
                "expected": e["expected"],
                "conditions": e["conditions"],
                "seconds": round(time.perf_counter() - t0, 2),
                "findings": [
                    {
                        "rule": f.rule,
                        "grade": f.grade,
                        "condition": f.condition,
                        "where": f"{f.file}:{f.line}",
                        "evidence": f.evidence,
                    }
                    for f in found
                    if f.grade in FLAGS
                ],
            }
        )
    return {"rows": rows, "table": table(rows)}


def table(rows: list[dict]) -> dict:
    out = {}
    for c in CONDITIONS:
        bad = [r for r in rows if r["expected"].get(c) == "illegal"]
        good = [r for r in rows if r["expected"]["overall"] == "legal"]
        flagged = [r for r in bad if any(f["condition"] == c for f in r["findings"])]
        false_v = [
            r
            for r in good
            if any(f["condition"] == c and f["grade"] == "violation" for f in r["findings"])
        ]
        false_a = [
            r
            for r in good
            if any(f["condition"] == c and f["grade"] == "audit" for f in r["findings"])
        ]
        out[c] = {
            "illegal": len(bad),
            "flagged": len(flagged),
            "missed": len(bad) - len(flagged),
            "legal": len(good),
            "false_violation": len(false_v),
            "false_audit": len(false_a),
        }
    bad = [r for r in rows if r["expected"]["overall"] == "illegal"]
    good = [r for r in rows if r["expected"]["overall"] == "legal"]
    own = [r for r in bad if _own(r)]
    viol = [r for r in good if any(f["grade"] == "violation" for f in r["findings"])]
    out["headline"] = {
        "illegal": len(bad),
        "flagged_own_condition": len(own),
        "flagged_own_condition_pct": round(100 * len(own) / max(len(bad), 1), 1),
        "merged": len(good),
        "merged_with_violation": len(viol),
        "merged_with_violation_pct": round(100 * len(viol) / max(len(good), 1), 1),
    }
    return out


def _own(r: dict) -> bool:
    return any(f["condition"] in r["conditions"] for f in r["findings"])


def report(res: dict) -> str:
    t = res["table"]
    lines = [
        "| condition | illegal | flagged | missed | legal | false violation | false audit |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for c in CONDITIONS:
        x = t[c]
        lines.append(
            f"| {c} | {x['illegal']} | {x['flagged']} | {x['missed']} | {x['legal']} | "
            f"{x['false_violation']} | {x['false_audit']} |"
        )
    h = t["headline"]
    lines += [
        "",
        f"illegal scripts flagged for their own condition: {h['flagged_own_condition']}/"
        f"{h['illegal']} ({h['flagged_own_condition_pct']} %)",
        f"merged records with a violation: {h['merged_with_violation']}/{h['merged']} "
        f"({h['merged_with_violation_pct']} %)",
        "",
        "misses (illegal, no finding of its own condition):",
    ]
    for r in res["rows"]:
        if r["expected"]["overall"] == "illegal" and not _own(r):
            other = "; ".join(f"{f['rule']} {f['grade']} {f['where']}" for f in r["findings"])
            lines.append(f"  {r['id']} ({'/'.join(r['conditions'])}): {other or 'no finding'}")
    lines.append("false alarms on merged records (violation or audit):")
    for r in res["rows"]:
        if r["expected"]["overall"] == "legal":
            for f in r["findings"]:
                lines.append(f"  {r['id']} {f['grade']} {f['rule']} {f['where']}: {f['evidence']}")
    secs = [r["seconds"] for r in res["rows"]]
    lines.append(f"screen time per script: max {max(secs):.1f} s, total {sum(secs):.0f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, help="write rows + table here")
    ap.add_argument("--only", nargs="*", help="entry ids")
    a = ap.parse_args(argv)
    entries = fetch.load_entries([HERE / "corpus" / "scripts.json"])
    if a.only:
        entries = [e for e in entries if e["id"] in a.only]
    res = review(entries)
    print(report(res))
    if a.json:
        a.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
