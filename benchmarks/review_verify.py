"""Run `pgolf verify` over the labelled folder corpus and print its confusion table.

    python benchmarks/corpus/fetch.py          # materialize the folders (once)
    python benchmarks/corpus/tamper.py         # the tampered copies of merged records
    python benchmarks/review_verify.py [--json OUT]

A verdict is reject when verify exits non-zero (1: rules, 2: form); accept when it exits 0. A
real folder's verdict is right when it equals the manifest's `expected.verdict`; a rejection of
a merged record counts as right only when the manifest says the record's own numbers show the
problem (`expected.verdict` reject). Tampered copies are expected to be rejected with the check
named in their label.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "corpus"))

import fetch  # noqa: E402  (the corpus helper next to this script)

from pgolf.lab.records import verify as V  # noqa: E402


def run_one(folder: Path) -> tuple[int, list[str], str, str]:
    """(exit code, failing checks, their evidence, the data_overlap check's status: evidence
    where the folder ships its data preparation, else "")."""
    try:
        checks = V.verify(folder)
    except V.FolderError as e:
        return V.EXIT_FORM, ["refused"], str(e), ""
    except Exception as e:  # a traceback is a defect of verify: counted, shown
        return 99, ["traceback"], f"{type(e).__name__}: {e}", ""
    failing = [c.name for c in checks if c.status in (V.FAIL, V.FORM)]
    if not any(c.status == V.FAIL for c in checks) and failing:
        failing = [f"{n}(form)" for n in failing]
    ev = "; ".join(f"{c.name}: {c.evidence[:220]}" for c in checks if c.name in failing)
    prep = "".join(f"{c.status}: {c.evidence}" for c in checks if c.name == "data_overlap")
    return V.exit_code(checks), failing, ev, prep


def verdict(code: int) -> str:
    """exit 0 accept, 1 reject (a rules failure), 2 not checkable (a form failure)."""
    return {0: "accept", 1: "reject", 2: "not_checkable"}.get(code, "traceback")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    rows = []
    for e in fetch.load_entries([HERE / "corpus" / "folders.json"]):
        d = fetch.entry_dir(e)
        if not d.is_dir():
            print(f"missing {d}: run benchmarks/corpus/fetch.py", file=sys.stderr)
            return 2
        code, failing, ev, prep = run_one(d)
        rows.append(
            {
                "id": e["id"],
                "group": e["source"]["kind"],
                "track": e["track"],
                "expected": e["expected"],
                "code": code,
                "failing": failing,
                "evidence": ev,
                "data_prep": prep,
            }
        )
    tdir = fetch.OUT.parent / "tampered"
    labels = tdir / "labels.json"
    if labels.is_file():
        for t in json.loads(labels.read_text()):
            code, failing, ev, _ = run_one(tdir / t["id"])
            rows.append(
                {
                    "id": t["id"],
                    "group": "tampered",
                    "track": "",
                    "expected": t["expected"],
                    "code": code,
                    "failing": failing,
                    "evidence": ev,
                }
            )
    conf: Counter = Counter()
    per_check: Counter = Counter()
    misses = []
    for r in rows:
        want = r["expected"]["verdict"]
        got = verdict(r["code"])
        grp = (
            "merged"
            if r["group"] == "merged"
            else ("tampered" if r["group"] == "tampered" else "unmerged")
        )
        conf[(grp, want, got)] += 1
        for c in r["failing"]:
            per_check[(c, grp, want)] += 1
        if want != verdict(r["code"]):
            misses.append(r)
    print(f"{'group':<10} {'expected':<14} {'accept':>7} {'reject':>7} {'not_checkable':>14}")
    for grp in ("merged", "unmerged", "tampered"):
        for want in ("accept", "reject", "not_checkable"):
            got = [conf[(grp, want, g)] for g in ("accept", "reject", "not_checkable")]
            if any(got):
                print(f"{grp:<10} {want:<14} {got[0]:>7} {got[1]:>7} {got[2]:>14}")
    real = [r for r in rows if r["group"] != "tampered"]
    right = sum(verdict(r["code"]) == r["expected"]["verdict"] for r in real)
    merged = [r for r in rows if r["group"] == "merged"]
    acc = sum(not r["code"] for r in merged)
    clean = [r for r in merged if r["expected"]["verdict"] == "accept"]
    acc_clean = sum(not r["code"] for r in clean)
    tam = [r for r in rows if r["group"] == "tampered"]
    caught = sum(bool(r["code"]) for r in tam)
    named = sum(
        r["expected"].get("check") in r["failing"] or r["failing"] == ["refused"] for r in tam
    )
    print(
        f"\nreal folders right: {right}/{len(real)}; merged accepted: {acc}/{len(merged)} "
        f"({acc_clean}/{len(clean)} of those whose own numbers show no problem); "
        f"tampered rejected: {caught}/{len(tam)} (with the labelled check: {named}); "
        f"tracebacks: {sum(r['code'] == 99 for r in rows)}"
    )
    print("\nper check: TP = flagged where the label names it, FN = the label names it but not")
    print("flagged, FP = flagged on a folder labelled accept, co = flagged beside another label")
    names = sorted(
        {c.split("(")[0] for r in rows for c in r["failing"]}
        | {r["expected"].get("check") for r in rows if r["expected"].get("check")}
    )
    print(f"  {'check':<18} {'TP':>4} {'FN':>4} {'FP':>4} {'co':>4}")
    for c in names:
        flag = [r for r in rows if c in [f.split("(")[0] for f in r["failing"]]]
        lab = [r for r in rows if r["expected"].get("check") == c]
        tp = sum(r in flag for r in lab)
        fp = sum(r["expected"]["verdict"] == "accept" for r in flag)
        co = len(flag) - tp - fp
        print(f"  {c:<18} {tp:>4} {len(lab) - tp:>4} {fp:>4} {co:>4}")
    print("\nmisses and false alarms:")
    for r in misses:
        print(
            f"- {r['id']} expected {r['expected']['verdict']} ({r['expected'].get('check', '')}), "
            f"exit {r['code']}: {r['failing']} {r['evidence'][:400]}"
        )
    print("\nright verdict, but not for the labelled check (the reason differs):")
    for r in rows:
        c = r["expected"].get("check")
        base = [f.split("(")[0] for f in r["failing"]]
        if c and r not in misses and r["expected"]["verdict"] != "accept" and c not in base:
            print(f"- {r['id'][:70]} labelled {c}: flagged {r['failing']} {r['evidence'][:300]}")
    prep = [r for r in rows if r.get("data_prep")]
    print(f"\nfolders that ship their data preparation ({len(prep)}; data_overlap without shards):")
    for r in prep:
        print(f"- {r['id'][:60]} ({r['expected']['verdict']}): {r['data_prep'][:260]}")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
