"""`pgolf verify RECORD_DIR`: a reviewer's replay of any records folder, ours or the challenge's.

Every check is recomputed from the folder itself (the train logs, the shipped code files) and
compared with what `submission.json` and `README.md` claim; each ends pass / fail / not
checkable, with its evidence. The rules come from the challenge README (16,000,000-byte cap with
code counted as the shipped code's length, 600 s of training and 600 s of evaluation, logs for
every seed, the 0.005-nat / p < 0.01 bar) and from the maintainers' review practice (issue
#1017, PRs #1902 and #2146). Optional: re-score an artifact in a fresh process (`pgolf eval`).

Time: the reference training loop checks its wallclock cap after each step, so a log may end up
to one step past 600 s (the Naive Baseline logs 600.038 s). That overshoot passes, with a note;
`strict_time=True` fails it.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pgolf.lab.records import results as R
from pgolf.lab.records import stats as S

CAP_BYTES = 16_000_000
TRAIN_S = 600.0
EVAL_S = 600.0
PASS, FAIL, NA = "pass", "fail", "not checkable"


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    evidence: str


_close = R.close_to_claim


def _files(rec: R.Record) -> list[Check]:
    d = rec.path
    need = ["README.md", "submission.json", "train_gpt.py"]
    missing = [f for f in need if not (d / f).is_file()]
    logs = sorted(p.name for p in d.glob("train*.log"))
    out = [
        Check(
            "files",
            FAIL if missing or not logs else PASS,
            (f"missing {missing}; " if missing else "")
            + f"logs: {logs or 'none'}"
            + ("" if (d / "requirements.txt").is_file() else "; no requirements.txt"),
        )
    ]
    claimed = [str(s) for s in (rec.submission or {}).get("seeds") or []]
    have = {str(s) for s in rec.logs}
    if not claimed:
        out.append(Check("seed_logs", NA, f"submission.json lists no `seeds`; logs for {have}"))
    else:
        lost = [s for s in claimed if s not in have]
        out.append(
            Check(
                "seed_logs",
                FAIL if lost else PASS,
                f"claimed seeds {claimed}; no log for {lost}"
                if lost
                else f"a log per seed {claimed}",
            )
        )
    return out


def _seed_claims(rec: R.Record) -> Check:
    claims = R._claims(rec.submission)
    if not claims:
        return Check("seed_results", NA, "submission.json has no seed_results")
    by_seed = {str(r.seed): r for r in rec.seeds}
    bad, ok = [], 0
    for seed, c in claims.items():
        r = by_seed.get(seed)
        if r is None:
            bad.append(f"seed {seed}: no log to recompute from")
            continue
        facts = R.parse_log(Path(r.source).read_text(errors="replace"))
        vals = {
            "val_bpb": [r.val_bpb],
            "val_loss": [r.val_loss],
            "artifact_bytes": [r.artifact_bytes],
            "steps": [r.steps],
            "train_time_s": [r.train_seconds],
            "eval_time_s": [r.eval_seconds] + [e.eval_ms / 1000 for e in facts.evals if e.eval_ms],
            "step_avg_ms": [facts.step_avg_ms],
        }
        for key, cands in vals.items():
            if key not in c:
                continue
            ok += 1
            if not any(_close(c[key], v) for v in cands if v is not None):
                bad.append(f"seed {seed} {key}: claimed {c[key]}, log says {cands[0]}")
    status = FAIL if bad else PASS
    return Check("seed_results", status, "; ".join(bad) or f"{ok} per-seed numbers match the logs")


def _aggregate_claims(rec: R.Record) -> Check:
    sub, seeds = rec.submission or {}, rec.seeds
    if not seeds:
        return Check("aggregates", FAIL, "no log with a final evaluation line")
    summ = S.summarize(seeds)
    art = [r.artifact_bytes for r in seeds if r.artifact_bytes is not None]
    code = sum(q.stat().st_size for q in rec.path.glob("*.py"))
    models = [R.parse_log(Path(r.source).read_text(errors="replace")).model_bytes for r in seeds]
    with_code = [m + code for m in models if m is not None]
    art = art + ([max(with_code)] + with_code if with_code else [])
    canon = [r for r in seeds if Path(r.source).name == "train.log"]  # early records: one run
    want = {
        "val_bpb": [summ["val_bpb_mean"]] + [r.val_bpb for r in canon],
        "val_loss": [summ["val_loss_mean"]] + [r.val_loss for r in canon],
        "val_bpb_std": [summ["val_bpb_std"], R.pop_std(summ["val_bpb_std"], len(seeds))],
        "val_loss_std": [summ["val_loss_std"], R.pop_std(summ["val_loss_std"], len(seeds))],
        "bytes_total": [max(art)] + art if art else [],
        "artifact_bytes_mean": [summ.get("artifact_bytes_mean")],
        "artifact_bytes_max": [summ.get("artifact_bytes_max")],
    }
    bad, ok = [], 0
    for key, cands in want.items():
        if key in sub:
            ok += 1
            if not any(_close(sub[key], v) for v in cands if v is not None):
                bad.append(f"{key}: claimed {sub[key]}, logs give {cands[0] if cands else None}")
    note = ""
    for k in ("val_bpb_std", "val_loss_std"):
        if k in sub and not _close(sub[k], want[k][0]) and _close(sub[k], want[k][1]):
            note += f" ({k} is the population std, ddof 0)"
    if canon and "val_bpb" in sub and not _close(sub["val_bpb"], summ["val_bpb_mean"]):
        note = f" (val_bpb is train.log's run, not the {len(seeds)}-seed mean)"
    return Check(
        "aggregates", FAIL if bad else PASS, ("; ".join(bad) or f"{ok} fields match") + note
    )


def _bytes(rec: R.Record) -> list[Check]:
    shipped = {p.name: p.stat().st_size for p in sorted(rec.path.glob("*.py"))}
    code = sum(shipped.values())
    sub = rec.submission or {}
    out = []
    if "bytes_code" in sub:
        ok = sub["bytes_code"] == code
        out.append(
            Check(
                "bytes_code",
                PASS if ok else FAIL,
                f"claimed {sub['bytes_code']}, shipped code files {shipped} = {code}",
            )
        )
    else:
        out.append(Check("bytes_code", NA, f"no bytes_code claim; shipped {shipped} = {code}"))
    worst, notes = 0, []
    for r in rec.seeds:
        facts = R.parse_log(Path(r.source).read_text(errors="replace"))
        model = facts.model_bytes
        if model is None and r.artifact_bytes is not None and facts.code_bytes is not None:
            model = r.artifact_bytes - facts.code_bytes
        total = max(r.artifact_bytes or 0, (model or 0) + code)
        worst = max(worst, total)
        notes.append(
            f"seed {r.seed}: log total {r.artifact_bytes}, model {model} + shipped code {code}"
            f" = {None if model is None else model + code} (log code size {facts.code_bytes})"
        )
    sha = sub.get("bundle_sha256")
    if sha is not None:
        got = hashlib.sha256((rec.path / "train_gpt.py").read_bytes()).hexdigest()
        out.append(
            Check(
                "bundle_hash",
                PASS if got == sha else FAIL,
                f"submission.json {sha[:16]}..., train_gpt.py {got[:16]}...",
            )
        )
    if not rec.seeds or worst == 0:
        out.append(Check("bytes_cap", NA, "no byte count in the logs"))
    else:
        out.append(
            Check(
                "bytes_cap",
                PASS if worst < CAP_BYTES else FAIL,
                f"worst {worst} vs cap {CAP_BYTES}; " + "; ".join(notes),
            )
        )
    return out


def _times(rec: R.Record, strict: bool) -> list[Check]:
    tr, ev = [], []
    tbad = ebad = False
    t_na = e_na = True
    for r in rec.seeds:
        facts = R.parse_log(Path(r.source).read_text(errors="replace"))
        if r.train_seconds is not None:
            t_na = False
            over = r.train_seconds - TRAIN_S
            step = (facts.step_avg_ms or 0.0) / 1000.0
            note = ""
            if over > 0 and not strict and over <= step:
                note = f" (+{over:.3f} s, within one step of {step:.3f} s: cap-check overshoot)"
            elif over > 0:
                tbad, note = True, " OVER"
            tr.append(f"seed {r.seed}: {r.train_seconds:.3f} s{note}")
        if r.eval_seconds is not None:
            e_na = False
            ebad |= r.eval_seconds > EVAL_S
            ev.append(
                f"seed {r.seed}: {r.eval_seconds:.1f} s{' OVER' if r.eval_seconds > EVAL_S else ''}"
            )
    return [
        Check(
            "train_time", NA if t_na else (FAIL if tbad else PASS), "; ".join(tr) or "no log says"
        ),
        Check(
            "eval_time",
            NA if e_na else (FAIL if ebad else PASS),
            ("; ".join(ev) or "no eval_time in the logs") + " (sum of non-diagnostic eval lines)",
        ),
    ]


_ROW = re.compile(r"^\|\s*\**\s*(?P<key>[A-Za-z0-9]+)\s*\**\s*\|(?P<rest>.*)$")
_DEC = re.compile(r"(?<![\d.])(\d+\.\d{3,})(?![\d.])")
_INT = re.compile(r"(?<![\d.,])(\d{1,3}(?:,\d{3})+|\d{5,})(?![\d.,])")


def _readme(rec: R.Record) -> Check:
    p = rec.path / "README.md"
    if not p.is_file() or not rec.seeds:
        return Check("readme_numbers", NA, "no README.md or no logs")
    by_seed = {str(r.seed): r for r in rec.seeds}
    facts = {s: R.parse_log(Path(r.source).read_text(errors="replace")) for s, r in by_seed.items()}
    code = sum(q.stat().st_size for q in rec.path.glob("*.py"))
    floats: dict[str, list[float]] = {}
    ints: dict[str, list[int | None]] = {}
    for s, f in facts.items():
        r = by_seed[s]
        gs = [R.parse_log(q.read_text(errors="replace")) for q in rec.logs.get(r.seed, [])] or [f]
        floats[s] = [v for g in gs for e in g.evals for v in (e.val_loss, e.val_bpb)]
        floats[s] += [v for g in gs for v in g.train_vals]
        floats[s] += [r.train_seconds or 0.0, r.eval_seconds or 0.0]
        ints[s] = [v for g in gs for v in (g.artifact_bytes, g.model_bytes, g.code_bytes, g.steps)]
        ints[s] += [f.model_bytes + code] if f.model_bytes is not None else []
    labels = {e.label for f in facts.values() for e in f.evals}
    agg: list[float] = []
    for lab in labels:
        per = [[e for e in f.evals if e.label == lab] for f in facts.values()]
        if all(per):
            for k in ("val_loss", "val_bpb"):
                xs = [getattr(es[-1], k) for es in per]
                agg += list(S.mean_std(xs))
    agg += [S.summarize(rec.seeds).get("artifact_bytes_mean") or 0]
    bad, ok = [], 0
    for line in p.read_text().splitlines():
        m = _ROW.match(line.strip())
        if not m:
            continue
        key = m["key"]
        if key in by_seed:
            fl, it = floats[key], ints[key]
        elif key.lower() in ("mean", "std", "avg", "average"):
            fl, it = agg, [round(x) for x in agg]
        else:
            continue
        for x in _DEC.findall(m["rest"]):
            ok += 1
            if not any(_close(x, v) for v in fl):
                bad.append(f"row {key}: {x} matches no logged value")
        for x in _INT.findall(m["rest"]):
            ok += 1
            if int(x.replace(",", "")) not in [v for v in it if v is not None]:
                bad.append(f"row {key}: {x} matches no logged byte count or step count")
    if ok == 0:
        return Check("readme_numbers", NA, "no per-seed/mean table rows found in README.md")
    return Check(
        "readme_numbers",
        FAIL if bad else PASS,
        "; ".join(bad) or f"{ok} numbers in seed/mean rows match the logs",
    )


def _stats(rec: R.Record, against: str | None) -> Check:
    sub = rec.submission or {}
    keys = {"t_statistic": "t", "welch_df": "df", "p_value": "p"}
    claimed = {k: sub[k] for k in keys if k in sub}
    if not claimed:
        return Check("stats", NA, "submission.json claims no t_statistic/welch_df/p_value")
    if len(rec.seeds) < 2:
        return Check("stats", FAIL, f"claims {claimed} but only {len(rec.seeds)} seed log(s)")
    base_blk = sub.get("baseline") if isinstance(sub.get("baseline"), dict) else None
    if against:
        base = R.load_results([against])
        src = f"--against {against}"
    elif base_blk and base_blk.get("val_loss") and base_blk.get("val_bpb"):
        base = [
            R.SeedResult(None, float(a), float(b))
            for a, b in zip(base_blk["val_loss"], base_blk["val_bpb"], strict=True)
        ]
        src = f"baseline block ({base_blk.get('name', '?')})"
    else:
        return Check("stats", NA, f"claims {claimed}; pass --against BASELINE_DIR to recompute")
    tried = []
    for metric in ("loss", "bpb"):
        c = S.compare(rec.seeds, base, metric=metric)
        got = {k: c[v] for k, v in keys.items() if k in claimed}
        tried.append(f"val_{metric}: " + ", ".join(f"{k}={v:.6g}" for k, v in got.items()))
        if all(_close(claimed[k], got[k]) for k in claimed):
            return Check("stats", PASS, f"claims {claimed} = recomputed on val_{metric} vs {src}")
    return Check("stats", FAIL, f"claims {claimed}; recomputed vs {src}: " + "; ".join(tried))


def _compliance(sub: dict[str, Any], checks: list[Check]) -> Check:
    block = sub.get("compliance")
    if not isinstance(block, dict):
        return Check("compliance_claims", NA, "no compliance block in submission.json")
    status = {c.name: c.status for c in checks}
    n_seeds = len(sub.get("seeds") or [])
    derived = {
        "train_under_600s": status.get("train_time"),
        "eval_under_600s": status.get("eval_time"),
        "artifact_under_16mb": status.get("bytes_cap"),
        "three_seeds": PASS if n_seeds >= 3 and status.get("seed_logs") == PASS else FAIL,
    }
    bad = [
        f"{k}: claimed {block[k]}, check says {v}"
        for k, v in derived.items()
        if k in block and v != NA and bool(block[k]) != (v == PASS)
    ]
    return Check(
        "compliance_claims",
        FAIL if bad else PASS,
        "; ".join(bad)
        or "claims agree with the recomputed checks "
        "(the others, e.g. score-first TTT, need an audit of the code)",
    )


def _rescore(rec: R.Record, artifact: str, data: str | None) -> Check:
    cmd = [sys.executable, "-m", "pgolf", "eval", artifact] + (["--data", data] if data else [])
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        return Check("rescore", FAIL, f"`{' '.join(cmd)}` exit {p.returncode}: {p.stderr[-300:]}")
    facts = R.parse_log(p.stdout + "\n" + p.stderr)
    f = facts.final
    if f is None:
        return Check("rescore", FAIL, "pgolf eval printed no evaluation line")
    hits = [r for r in rec.seeds if abs(r.val_bpb - f.val_bpb) <= 1e-6]
    ev = (
        f"fresh process: {f.label} val_bpb {f.val_bpb:.8f}; logged {[r.val_bpb for r in rec.seeds]}"
    )
    return Check(
        "rescore",
        PASS if hits else FAIL,
        ev + (f" (= seed {hits[0].seed})" if hits else " (no seed matches within 1e-6)"),
    )


def verify(
    folder: str | Path,
    artifact: str | None = None,
    data: str | None = None,
    against: str | None = None,
    strict_time: bool = False,
) -> list[Check]:
    """All checks of a records folder, in order."""
    d = Path(folder)
    if not d.is_dir():
        raise FileNotFoundError(f"{d}: no such records folder")
    rec = R.read_record(d)
    checks = _files(rec)
    checks += [_seed_claims(rec), _aggregate_claims(rec)]
    checks += _bytes(rec)
    checks += _times(rec, strict_time)
    checks += [_readme(rec), _stats(rec, against)]
    checks.append(_compliance(rec.submission or {}, checks))
    if artifact:
        checks.append(_rescore(rec, artifact, data))
    else:
        checks.append(Check("rescore", NA, "pass --artifact A --data DIR to re-score"))
    return checks


def format_checks(checks: list[Check]) -> str:
    w = max(len(c.name) for c in checks)
    rows = [f"{c.name:<{w}}  {c.status:<13}  {c.evidence}" for c in checks]
    bad = [c.name for c in checks if c.status == FAIL]
    rows.append(f"\n{'FAILED: ' + ', '.join(bad) if bad else 'all checkable checks pass'}")
    return "\n".join(rows)


def as_json(checks: list[Check]) -> str:
    return json.dumps([asdict(c) for c in checks], indent=1)
