"""`pgolf verify RECORD_DIR`: a reviewer's replay of any records folder, ours or the challenge's.

Every check is recomputed from the folder itself (its logs, found by content; its shipped code,
followed from the entry point) and compared with what the claims file and README.md say; each
ends pass / fail (a rules failure: exit 1) / form (a missing or unparsable piece: exit 2) / not
checkable (never a pass), with its evidence as `file:line`. A folder verify refuses to read (a
symlink, FIFO, device, an oversized file, JSON nested too deep) ends with exit 2 naming the file
(`folderscan`). The rules come from the challenge README (16,000,000-byte cap with code counted as
the shipped code's length, 600 s of training and 600 s of evaluation on the 10-minute track,
logs for every seed, the 0.005-nat / p < 0.01 bar), from the maintainers' review practice (issue
#1017, PRs #1902 and #2146) and from the bugs that invalidated submissions (`accounting`).
Numbers are compared by the one rule `export` writes them with (`rules`).

Tracks: `track` in the claims (else the folder's parent, `track_non_record_16mb`) picks the
limits: the non-record track has no 600 s training limit.

Time: the reference training loop checks its wallclock cap after each step, so a log may end up
to one step past 600 s (the Naive Baseline logs 600.038 s; merged records log up to 600.185 s,
where the step time printed is an average). An overshoot up to max(one step, `OVERSHOOT_S`)
passes, with a note; `strict_time=True` fails it.
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

from pgolf.lab.records import accounting as A
from pgolf.lab.records import dataprep as DP
from pgolf.lab.records import folderscan as F
from pgolf.lab.records import results as R
from pgolf.lab.records import rules as U
from pgolf.lab.records import seeds as Z
from pgolf.lab.records import stats as S

CAP_BYTES = 16_000_000
TRAIN_S = 600.0
EVAL_S = 600.0
PASS, FAIL, FORM, NA = "pass", "fail", "form", "not checkable"
NON_RECORD = "non_record_16mb"
CODE_DRIFT = 0.10  # shipped code vs the size the log counted: cosmetic edits after the run
OVERSHOOT_S = 0.5  # the cap is checked between steps; a log may end this far past 600 s
WARN = "warn"  # reported, never changes the verdict (README prose numbers)
EXIT_RULES, EXIT_FORM = 1, 2
FolderError = F.FolderError


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    evidence: str


_close = U.matches


@dataclass(frozen=True)
class Rec:
    """What verify knows of a folder: its files, claims, logs, chosen per-seed results."""

    fo: F.Folder
    sub: dict[str, Any]
    track: str
    track_why: str
    seeds: tuple[R.SeedResult, ...]
    chosen: dict[str, F.LogFile]  # seed -> the log its result came from
    code: dict[str, Any]

    @property
    def path(self) -> Path:
        return self.fo.path


def _track(fo: F.Folder, sub: dict[str, Any]) -> tuple[str, str]:
    """The track folder the record sits in (where the maintainers filed it) wins; else the
    claims' `track`; else the 10-minute track."""
    parent = fo.path.resolve().parent.name
    named = str(sub.get("track") or "")
    if parent.startswith("track_"):
        t, where = parent, "the folder's parent" + (f"; claims say {named!r}" if named else "")
    elif named:
        t, where = named, f"{fo.rel(fo.claims_path)} `track`" if fo.claims_path else "claims"
    else:
        return "10min_16mb", "default (no track named, no track_* parent)"
    low = t.lower().replace("-", "_")
    if "non_record" in low or "unlimited" in low or "nonrecord" in low:
        return NON_RECORD, f"{t!r} ({where})"
    return "10min_16mb", f"{t!r} ({where})"


_IMPORT = re.compile(r"^\s*(?:from\s+(\.?[\w.]+)\s+import|import\s+([\w., ]+))", re.M)
_LITERAL = re.compile(r"""["']([\w./\-]+\.(?:py|c|cc|cpp|cu|cuh|h|hpp|so|rs))["']""")
_DATA_LIT = re.compile(
    r"""["']([\w./\-]+\.(?:model|vocab|npz|npy|bin|pt|ptz|json|txt|tsv|br|xz|lzma|zst))["']"""
)
_RUN_CMD = re.compile(r"(?:torchrun|python3?)\b[^\n`]{0,200}?([\w./\-]+\.py)")


def _code(fo: F.Folder, sub: dict[str, Any]) -> dict[str, Any]:
    """The code the entry point runs: its import closure inside the folder, plus any source
    file it names in a string (a `.cpp` kernel loaded at run time); the rest is listed."""
    by_name = {p.name: p for p in fo.files}
    pys = [p for p in fo.files if p.suffix == ".py"]
    entry, why = None, ""
    if (fo.path / "train_gpt.py").is_file():
        entry, why = fo.path / "train_gpt.py", "train_gpt.py (the challenge's entry point)"
    else:
        readme = fo.path / "README.md"
        text = F.read_text(readme, F.MAX_JSON_BYTES) if readme.is_file() else ""
        for m in _RUN_CMD.finditer(text):
            if Path(m[1]).name in by_name:
                entry, why = by_name[Path(m[1]).name], f"README.md run command `{m[0][:60]}`"
                break
        if entry is None and len(pys) == 1:
            entry, why = pys[0], "the only .py file"
    if entry is None:
        return {"entry": None, "why": "no train_gpt.py, no run command, several .py", "files": {}}
    seen: dict[str, int] = {}
    reads: dict[str, int] = {}
    todo = [entry]
    while todo:
        p = todo.pop()
        rel = fo.rel(p)
        if rel in seen:
            continue
        data = F.read_bytes(p, F.MAX_LOG_BYTES)
        seen[rel] = len(data)
        if p.suffix != ".py":
            continue
        text = data.decode("utf-8", errors="replace")
        mods = []
        for m in _IMPORT.finditer(text):
            if m[1]:
                mods.append(m[1].lstrip(".").split(".")[0])
            else:
                mods += [x.strip().split(" ")[0].split(".")[0] for x in m[2].split(",")]
        for mod in mods:
            q = p.parent / f"{mod}.py"
            if q.is_file() and q in fo.files:
                todo.append(q)
        for lit in _LITERAL.findall(text):
            q = by_name.get(Path(lit).name)
            if q is not None and q.suffix != ".so":
                todo.append(q)
        for lit in _DATA_LIT.findall(text):
            q = by_name.get(Path(lit).name)
            if q is not None:
                reads[fo.rel(q)] = q.stat().st_size
    left = {
        fo.rel(p): "not imported or named by the entry point (a readable copy, a checker, a tool)"
        for p in fo.files
        if p.suffix in F.CODE_SUFFIXES and fo.rel(p) not in seen
    }
    return {"entry": fo.rel(entry), "why": why, "files": seen, "left_out": left, "data": reads}


def read(folder: str | Path) -> Rec:
    d = Path(folder)
    if not d.is_dir():
        raise FileNotFoundError(f"{d}: no such records folder")
    fo = F.discover(d)
    sub = fo.claims if isinstance(fo.claims, dict) else {}
    track, twhy = _track(fo, sub)
    seeds, chosen = Z.choose(fo, sub)
    return Rec(fo, sub, track, twhy, tuple(seeds), chosen, _code(fo, sub))


def _facts(rec: Rec, r: R.SeedResult) -> R.LogFacts:
    return rec.chosen[str(r.seed)].facts


def _src(rec: Rec, r: R.SeedResult, line: int | None = None) -> str:
    lf = rec.chosen[str(r.seed)]
    return f"{lf.rel}:{line}" if line else lf.rel


def _claim_at(rec: Rec, key: str, seed: str | None = None) -> str:
    """`claims.json:LINE` of a claimed key (the top-level one, or the one under `seed`)."""
    fo = rec.fo
    if fo.claims_path is None:
        return "claims"
    lines = F.read_text(fo.claims_path, F.MAX_JSON_BYTES).splitlines()
    start = 0
    if seed is not None:
        start = next((i for i, ln in enumerate(lines) if f'"{seed}"' in ln), 0)
    hits = [(len(ln) - len(ln.lstrip()), i) for i, ln in enumerate(lines) if f'"{key}"' in ln]
    hits = [h for h in hits if h[1] >= start]
    rel = fo.rel(fo.claims_path)
    if not hits:
        return rel
    i = hits[0][1] if seed is not None else min(hits)[1]
    return f"{rel}:{i + 1}"


def _log_at(rec: Rec, r: R.SeedResult) -> str:
    """`log:LINE` of the evaluation line a seed's result came from."""
    lf = rec.chosen[str(r.seed)]
    line = next((e.line for e in lf.facts.evals if e.val_bpb == r.val_bpb), None)
    return f"{lf.rel}:{line}" if line else lf.rel


def _claimed_seeds(sub: dict[str, Any]) -> list[str]:
    raw = sub.get("seeds")
    return [str(s) for s in raw] if isinstance(raw, list) else list(Z.claims(sub))


def _files(rec: Rec) -> list[Check]:
    fo = rec.fo
    miss = []
    if fo.claims_path is None:
        miss.append("submission.json (or submission_*.json)")
    if not (fo.path / "README.md").is_file():
        miss.append("README.md")
    if rec.code["entry"] is None:
        miss.append("an entry-point script")
    logmap = {lf.rel: (lf.seed, lf.seed_how) for lf in fo.logs}
    ev = (f"missing {miss}; " if miss else "") + (
        "logs: " + ", ".join(f"{k} (seed {s} by {h})" for k, (s, h) in logmap.items())
        if logmap
        else "no training log (no file with an evaluation or step line)"
    )
    if fo.skipped:
        ev += f"; read but not logs (no evaluation or step line): {fo.skipped[:5]}"
    out = [Check("files", FORM if miss or not logmap else PASS, ev)]
    claimed = _claimed_seeds(rec.sub)
    have = {str(lf.seed) for lf in fo.logs}
    if not claimed:
        out.append(Check("seed_logs", NA, f"the claims list no seeds; logs for {sorted(have)}"))
    else:
        lost = [s for s in claimed if s not in have]
        which = {s: rec.chosen[s].rel for s in claimed if s in rec.chosen}
        out.append(
            Check(
                "seed_logs",
                FAIL if lost else PASS,
                f"claimed seeds {claimed}; no log for {lost}"
                if lost
                else f"a log per claimed seed: {which}",
            )
        )
    return out


def _seed_claims(rec: Rec) -> Check:
    claims = Z.claims(rec.sub)
    if not claims:
        return Check("seed_results", NA, "the claims have no seed_results")
    by_seed = {str(r.seed): r for r in rec.seeds}
    bad, ok = [], 0
    for seed, c in claims.items():
        r = by_seed.get(seed)
        if r is None:
            bad.append(f"seed {seed}: no log to recompute from")
            continue
        facts = _facts(rec, r)
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
            if key not in c or c[key] is None:
                continue
            if all(v is None for v in cands):
                continue  # the log does not print it: not checkable, not a pass
            ok += 1
            if not any(_close(c[key], v) for v in cands if v is not None):
                bad.append(
                    f"seed {seed} {key}: claimed {getattr(c[key], 'text', c[key])} "
                    f"({_claim_at(rec, key, seed)}), {_log_at(rec, r)} says {cands[0]}"
                )
    if not ok and not bad:
        return Check("seed_results", NA, "no claimed per-seed number is printed in the logs")
    score = [b for b in bad if " val_bpb:" in b or " val_loss:" in b or "no log" in b]
    status = FAIL if score else (WARN if bad else PASS)
    if bad and not score:  # steps, times, bytes: the limits are checked on the logs themselves
        bad.append("(not the score: reported, the limits are checked on the logs)")
    return Check("seed_results", status, "; ".join(bad) or f"{ok} per-seed numbers match the logs")


def _aggregate_claims(rec: Rec) -> Check:
    sub, seeds = rec.sub, rec.seeds
    if not seeds:
        return Check("aggregates", FORM, "no log with a final evaluation line: nothing to check")
    claimed = _claimed_seeds(sub)
    if claimed and any(str(r.seed) in claimed for r in seeds):  # the mean is over the claimed
        seeds = tuple(r for r in seeds if str(r.seed) in claimed)
    loss = U.mean_std([r.val_loss for r in seeds])
    bpb = U.mean_std([r.val_bpb for r in seeds])
    art = [r.artifact_bytes for r in seeds if r.artifact_bytes is not None]
    code = sum(rec.code["files"].values())
    models = [_facts(rec, r).model_bytes for r in seeds]
    with_code = [m + code for m in models if m is not None]
    art = art + ([max(with_code)] + with_code if with_code else [])
    n = len(seeds)
    # a folder that claims no seeds (the March records) headlines one logged run
    single = not sub.get("seeds") and not Z.claims(sub)
    runs = [
        (e, lf)
        for lf in rec.fo.logs
        for e in Z.precise(lf.facts.evals)
        if single and not e.label.lower().startswith("diag")
    ]

    def rounded_mean(key: str) -> float | None:
        """The mean of per-seed values first rounded at the claim's precision (a README
        table's convention)."""
        c = sub.get(key)
        if not isinstance(c, int | float) or isinstance(c, bool):
            return None
        d = U.decimals(c)
        return U.mean_std([round(getattr(r, key), d) for r in seeds])[0]

    want = {
        "val_bpb": [bpb[0], rounded_mean("val_bpb")] + [e.val_bpb for e, _ in runs],
        "val_loss": [loss[0], rounded_mean("val_loss")] + [e.val_loss for e, _ in runs],
        "val_bpb_std": [bpb[1], R.pop_std(bpb[1], n)],
        "val_loss_std": [loss[1], R.pop_std(loss[1], n)],
        "bytes_total": [max(art)] + art if art else [],
    }
    bad, ok = [], 0
    for key, cands in want.items():
        if key in sub and sub[key] is not None and cands:
            ok += 1
            if not any(_close(sub[key], v) for v in cands if v is not None):
                bad.append(
                    f"{key}: claimed {getattr(sub[key], 'text', sub[key])} "
                    f"({_claim_at(rec, key)}), the {n} logs give {cands[0]:.8g} ("
                    + ", ".join(_log_at(rec, r) for r in seeds)
                    + ")"
                )
    if not ok:
        return Check("aggregates", NA, "the claims carry no val_bpb/val_loss/bytes_total")
    note = ""
    for k in ("val_bpb_std", "val_loss_std"):
        if k in sub and not _close(sub[k], want[k][0]) and _close(sub[k], want[k][1]):
            note += f" ({k} is the population std, ddof 0)"
    if single and "val_bpb" in sub and not _close(sub["val_bpb"], bpb[0]):
        hit = [f"{lf.rel}:{e.line}" for e, lf in runs if _close(sub["val_bpb"], e.val_bpb)]
        if hit:
            note = f" (no seeds claimed: val_bpb is one logged run, {hit[0]})"
    where = f" [{rec.fo.rel(rec.fo.claims_path)}]" if rec.fo.claims_path else ""
    score = [b for b in bad if b.startswith(("val_bpb:", "val_loss:"))]
    status = FAIL if score else (WARN if bad else PASS)
    if bad and status == WARN:
        note += " (std or byte total only: reported; the cap is checked on the logs)"
    return Check("aggregates", status, ("; ".join(bad) or f"{ok} fields match") + note + where)


def _bytes(rec: Rec) -> list[Check]:
    code_files = rec.code["files"]
    code = sum(code_files.values())
    entry = rec.code["entry"]
    entry_b = code_files.get(entry, 0) if entry else 0
    sub = rec.sub
    out = []
    left = rec.code.get("left_out") or {}
    data = rec.code.get("data") or {}
    closure = (
        f"entry {entry} ({rec.code['why']}); runs {code_files} = {code}"
        + (f"; left out {sorted(left)}: {next(iter(left.values()))}" if left else "")
        + (
            f"; reads at run time {data} = {sum(data.values())} (data, not code: with the code "
            f"{code + sum(data.values())})"
            if data
            else ""
        )
    )
    log_code = sorted({_facts(rec, r).code_bytes for r in rec.seeds} - {None})
    if "bytes_code" in sub and sub["bytes_code"] is not None:
        c = sub["bytes_code"]
        conv = {"the run code": code, "the entry point alone": entry_b}
        conv.update({f"the log's packed count {v}": v for v in log_code})
        hit = [k for k, v in conv.items() if c == v]
        models = [_facts(rec, r).model_bytes for r in rec.seeds]
        shifts = any(
            m is not None and (m + c < CAP_BYTES) != (m + code < CAP_BYTES) for m in models
        )
        out.append(
            Check(
                "bytes_code",
                PASS if hit else (FAIL if shifts else WARN),
                f"claimed {c} = {hit[0]}; {closure}"
                if hit
                else f"claimed {c}; {closure}; logs count {log_code or 'none'}",
            )
        )
    else:
        out.append(Check("bytes_code", NA, f"no bytes_code claim; {closure}"))
    worst, worst_rec, notes = 0, 0, []
    for r in rec.seeds:
        facts = _facts(rec, r)
        model = facts.model_bytes
        if model is None and r.artifact_bytes is not None and facts.code_bytes is not None:
            model = r.artifact_bytes - facts.code_bytes
        shipped = None if model is None else model + code
        # the code counted either as shipped (run code) or in the packed form the log counts;
        # the log's own total is never undercut
        lf = rec.chosen[str(r.seed)]
        packed = facts.code_bytes if _PACKED.search(lf.text) else None
        raw = _RAW_CODE.search(lf.text)
        ran = int(raw[1]) if raw else None
        if (
            packed is not None
            and ran
            and min(abs(ran - code), abs(ran - entry_b)) > CODE_DRIFT * ran
        ):
            notes.append(
                f"seed {r.seed}: the log packed {ran} bytes of code, the shipped code is {code} "
                f"(entry {entry_b}), more than {CODE_DRIFT:.0%} apart: not the code that ran, so "
                "its packed count is not used"
            )
            packed = None
        codes = [c for c in (code, packed) if c is not None]
        low = model + min(codes) if model is not None and codes else None
        conv = [v for v in (r.artifact_bytes, low) if v]
        worst = max(worst, max(conv) if conv else 0)
        worst_rec = max(worst_rec, max(v for v in (r.artifact_bytes, shipped, 0) if v is not None))
        notes.append(
            f"seed {r.seed} ({_src(rec, r)}): log total {r.artifact_bytes}, model {model} + run "
            f"code {code} = {shipped} (log's code count {facts.code_bytes})"
        )
    sha = sub.get("bundle_sha256")
    if sha is not None and entry:
        got = hashlib.sha256(F.read_bytes(rec.path / entry, F.MAX_LOG_BYTES)).hexdigest()
        out.append(
            Check(
                "bundle_hash",
                PASS if got == sha else FAIL,
                f"claims {str(sha)[:16]}..., {entry} {got[:16]}...",
            )
        )
    if not rec.seeds or worst == 0:
        claim = sub.get("bytes_total")
        if isinstance(claim, int | float) and claim >= CAP_BYTES:
            out.append(Check("bytes_cap", FAIL, f"claims bytes_total {claim} >= cap {CAP_BYTES}"))
        else:
            out.append(Check("bytes_cap", NA, "no byte count in the logs"))
    else:
        ev = f"worst {worst} vs cap {CAP_BYTES}; " + "; ".join(notes)
        if worst < CAP_BYTES <= worst_rec:
            ev += (
                " (under the cap with the code in the packed form the log counts; model + the"
                " shipped readable code is over: both reported)"
            )
        out.append(Check("bytes_cap", PASS if worst < CAP_BYTES else FAIL, ev))
    return out


_PACKED = re.compile(r"^(?:\d+\.\d+\s+)?Code size \(compressed\):\s*\d+\s*bytes", re.M)
_RAW_CODE = re.compile(r"^(?:\d+\.\d+\s+)?Code size(?: \(uncompressed\))?:\s*(\d+)\s*bytes", re.M)


def _times(rec: Rec, strict: bool) -> list[Check]:
    tr, ev = [], []
    tbad = ebad = False
    t_na = e_na = True
    limit = rec.track != NON_RECORD
    for r in rec.seeds:
        facts = _facts(rec, r)
        if r.train_seconds is not None:
            t_na = False
            over = r.train_seconds - TRAIN_S
            step = (facts.step_avg_ms or 0.0) / 1000.0
            note = ""
            if not limit:
                note = ""
            elif over > 0 and not strict and over <= max(step, OVERSHOOT_S):
                note = (
                    f" (+{over:.3f} s, within max(one step {step:.3f} s, {OVERSHOOT_S} s): the"
                    " cap is checked between steps)"
                )
            elif over > 0:
                tbad, note = True, " OVER"
            tr.append(f"seed {r.seed} ({_src(rec, r)}): {r.train_seconds:.3f} s{note}")
        if r.eval_seconds is not None:
            e_na = False
            over = r.eval_seconds > EVAL_S and limit
            ebad |= over
            ev.append(
                f"seed {r.seed} ({_src(rec, r)}): {r.eval_seconds:.1f} s{' OVER' if over else ''}"
            )
    tname = f"track {rec.track} from {rec.track_why}"
    tstat = NA if t_na else (FAIL if tbad else PASS)
    if not limit and not t_na:
        tr.append("no 600 s limit on this track")
    return [
        Check("track", PASS, tname),
        Check("train_time", tstat, "; ".join(tr) or "no log says"),
        Check(
            "eval_time",
            NA if e_na else (FAIL if ebad else PASS),
            ("; ".join(ev) or "no eval_time in the logs")
            + " (sum of every non-diagnostic evaluation pass)",
        ),
    ]


def _texts(rec: Rec) -> list[tuple[str, str]]:
    out = [(lf.rel, lf.text) for lf in rec.fo.logs]
    for name in ("README.md",):
        p = rec.path / name
        if p.is_file():
            out.append((name, F.read_text(p, F.MAX_JSON_BYTES)))
    if rec.fo.claims_path is not None:
        out.append((rec.fo.rel(rec.fo.claims_path), json.dumps(rec.sub)))
    entry = rec.code.get("entry")
    if entry:
        out.append((entry, F.read_text(rec.path / entry)))
    return out


def _byte_accounting(rec: Rec) -> list[Check]:
    """Each log's bpb/loss against the canonical ratio of a tokenizer the folder names (the
    nearest one; a folder naming only an unknown tokenizer is not checkable)."""
    named = A.tokenizers_named(_texts(rec))
    known = {t: w for t, w in named.items() if t in A.TOKENIZERS}
    if not known:
        msg = f"tokenizers named: {named or 'none'}"
        return [
            Check("byte_accounting", NA, f"{msg}: no canonical tokens-per-byte in the table"),
            Check("eval_subset", NA, f"{msg}: no canonical validation token count"),
        ]
    bad, good, sub_bad, sub_ok = [], [], [], []
    claim_bpb = rec.sub.get("val_bpb")
    folder_known = known
    other = []
    for lf in rec.fo.logs:
        f = lf.facts.final
        ref = None
        if pat := A.other_val_set(lf.text):
            other.append(f"{lf.rel}: validation shards {pat} (not the challenge's FineWeb set)")
            continue
        own = {
            t: w for t, w in A.tokenizers_named([(lf.rel, lf.text)]).items() if t in A.TOKENIZERS
        }
        known = own or folder_known  # the tokenizer the log itself names, else the folder's
        vt = A.val_tokens(lf.text)
        by_count = [t for t in known if vt and abs(vt[0] / A.TOKENIZERS[t].val_tokens - 1) < 0.01]
        if by_count:  # the validation token count identifies the tokenizer's validation set
            known = {by_count[0]: known[by_count[0]] + f", val_tokens {vt[0]:,}"}
        if f is not None and f.val_loss > 0:
            r = f.val_bpb / f.val_loss
            tok = min(known, key=lambda t: abs(r / A.TOKENIZERS[t].ratio - 1))
            ref = A.TOKENIZERS[tok]
            dev = r / ref.ratio - 1
            (bad if abs(dev) > A.RATIO_TOL else good).append(
                f"{lf.rel}:{f.line} bpb/loss {r:.5f} vs {tok} {ref.ratio:.5f} ({dev:+.2%}; "
                f"{tok} named at {known[tok]})"
            )
        else:
            tl = A.last_train_loss(lf.text)
            b = A.last_bpb(lf.text)
            bpb = b[0] if b else (float(claim_bpb) if isinstance(claim_bpb, int | float) else None)
            if tl and bpb:
                tok = min(known, key=lambda t: abs(bpb / (tl[0] * A.TOKENIZERS[t].ratio) - 1))
                ref = A.TOKENIZERS[tok]
                gap = bpb / (tl[0] * ref.ratio)
                line = (
                    f"{lf.rel}:{b[1] if b else '?'} bpb {bpb} vs last train loss {tl[0]} "
                    f"({lf.rel}:{tl[1]}) x {tok} {ref.ratio:.5f}: implied val/train loss "
                    f"{gap:.3f} ({tok} named at {known[tok]})"
                )
                (bad if gap < A.TRAIN_GAP_MIN else good).append(line)
        if vt:
            ref = ref or A.TOKENIZERS[next(iter(known))]
            frac = vt[0] / ref.val_tokens
            (sub_bad if frac < 0.99 else sub_ok).append(
                f"{lf.rel}:{vt[1]} {vt[0]:,} of {ref.name}'s {ref.val_tokens:,} ({frac:.1%})"
            )
    if bad:
        ba = Check(
            "byte_accounting",
            FAIL,
            f"off the canonical tokens-per-byte by more than {A.RATIO_TOL:.0%} (or an implied "
            f"val/train loss under {A.TRAIN_GAP_MIN}): " + "; ".join(bad[:4]),
        )
    elif good:
        ba = Check("byte_accounting", PASS, "; ".join(good[:3]))
    elif other:
        ba = Check("byte_accounting", NA, "; ".join(other[:3]))
    else:
        ba = Check("byte_accounting", NA, f"named {known}; no log prints val_loss or train loss")
    if sub_bad:
        es = Check("eval_subset", FAIL, "scored fewer validation tokens: " + "; ".join(sub_bad[:3]))
    elif sub_ok:
        es = Check("eval_subset", PASS, "; ".join(sub_ok[:3]))
    else:
        es = Check("eval_subset", NA, "no log prints its validation token count")
    return [ba, es]


_VAL_FILE = re.compile(r"(^|[_/])(fineweb_)?val[_\-.].*\.(bin|npy|pt|npz)$", re.I)


def _val_training(rec: Rec) -> Check:
    hits = []
    for lf in rec.fo.logs:
        h = A.pre_quant_ttt(lf.text)
        if h:
            hits.append(f"{lf.rel}:{h[0][0]} `{h[0][1]}` (+{len(h) - 1} more) before serialization")
    shipped = [rec.fo.rel(p) for p in rec.fo.files if _VAL_FILE.search(rec.fo.rel(p))]
    if shipped:
        hits.append(f"validation tokens shipped in the folder: {shipped}")
    if hits:
        return Check(
            "val_training",
            FAIL,
            "passes over validation tokens before the score: " + "; ".join(hits[:4]),
        )
    if not rec.fo.logs:
        return Check("val_training", NA, "no logs")
    return Check(
        "val_training", PASS, "no TTT epoch line before serialization, no validation data shipped"
    )


_ROW = re.compile(r"^\|\s*\**\s*(?P<key>[A-Za-z0-9]+)\s*\**\s*\|(?P<rest>.*)$")
_DEC = re.compile(r"(?<![\d.])(\d+\.\d{3,})(?![\d.])")
_INT = re.compile(r"(?<![\d.,])(\d{1,3}(?:,\d{3})+|\d{5,})(?![\d.,])")


def _readme(rec: Rec) -> Check:
    p = rec.path / "README.md"
    if not p.is_file() or not rec.seeds:
        return Check("readme_numbers", NA, "no README.md or no logs")
    by_seed = {str(r.seed): r for r in rec.seeds}
    code = sum(rec.code["files"].values())
    floats: dict[str, list[float]] = {}
    ints: dict[str, list[int | None]] = {}
    for s, r in by_seed.items():
        gs = [lf.facts for lf in rec.fo.logs if str(lf.seed) == s]
        f = _facts(rec, r)
        floats[s] = [v for g in gs for e in g.evals for v in (e.val_loss, e.val_bpb)]
        floats[s] += [v for g in gs for v in g.train_vals]
        floats[s] += [r.train_seconds or 0.0, r.eval_seconds or 0.0]
        ints[s] = [v for g in gs for v in (g.artifact_bytes, g.model_bytes, g.code_bytes, g.steps)]
        ints[s] += [f.model_bytes + code] if f.model_bytes is not None else []
    facts = {s: _facts(rec, r) for s, r in by_seed.items()}
    labels = {e.label for f in facts.values() for e in f.evals}
    agg: list[float] = []
    for lab in labels:
        per = [[e for e in f.evals if e.label == lab] for f in facts.values()]
        if all(per):
            for k in ("val_loss", "val_bpb"):
                xs = [getattr(es[-1], k) for es in per]
                agg += list(U.mean_std(xs))
    arts = [r.artifact_bytes for r in rec.seeds if r.artifact_bytes is not None]
    agg += [U.mean_std(arts)[0]] if arts else []
    bad, edited, ok = [], [], 0
    for i, line in enumerate(F.read_text(p, F.MAX_JSON_BYTES).splitlines(), start=1):
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
                near = [v for v in fl if v and abs(float(x) - v) <= 0.01 * abs(v)]
                if near and U.decimals(x) >= 6:  # a copied log value that is not it: edited
                    edited.append(f"README.md:{i} row {key}: {x}, the log says {near[0]}")
                else:
                    bad.append(f"README.md:{i} row {key}: {x} matches no logged value")
        for x in _INT.findall(m["rest"]):
            ok += 1
            if int(x.replace(",", "")) not in [v for v in it if v is not None]:
                bad.append(f"README.md:{i} row {key}: {x} matches no logged byte or step count")
    if ok == 0:
        return Check("readme_numbers", NA, "no per-seed/mean table rows found in README.md")
    if edited:
        return Check(
            "readme_numbers",
            FAIL,
            "a log value copied at 6+ decimals, but not it: "
            + "; ".join(edited[:4])
            + (f"; also {len(bad)} unmatched" if bad else ""),
        )
    return Check(
        "readme_numbers",
        WARN if bad else PASS,
        ("; ".join(bad[:6]) + " (other columns: deltas, stds; reported)")
        if bad
        else f"{ok} numbers in seed/mean rows match the logs",
    )


def _stats(rec: Rec, against: str | None) -> Check:
    sub = rec.sub
    keys = {"t_statistic": "t", "welch_df": "df", "p_value": "p"}
    claimed = {k: sub[k] for k in keys if k in sub}
    if not claimed:
        return Check("stats", NA, "submission.json claims no t_statistic/welch_df/p_value")
    if len(rec.seeds) < 2:
        return Check("stats", FAIL, f"claims {claimed} but only {len(rec.seeds)} seed log(s)")
    base_blk = sub.get("baseline") if isinstance(sub.get("baseline"), dict) else None
    if against:
        base = Z.load_results([against])
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


def _compliance(rec: Rec, checks: list[Check]) -> Check:
    sub = rec.sub
    block = sub.get("compliance")
    if not isinstance(block, dict):
        return Check("compliance_claims", NA, "no compliance block in submission.json")
    status = {c.name: c.status for c in checks}
    raw = sub.get("seeds")
    n_seeds = len(raw) if isinstance(raw, list) else len(Z.claims(sub))
    seed_ok = status.get("seed_logs") == PASS
    if not n_seeds:  # no seed list claimed: the seeds the logs show
        n_seeds = len({c.seed for c in rec.seeds if c.seed is not None})
        seed_ok = True
    derived = {
        "train_under_600s": status.get("train_time"),
        "eval_under_600s": status.get("eval_time"),
        "artifact_under_16mb": status.get("bytes_cap"),
        "three_seeds": PASS if n_seeds >= 3 and seed_ok else FAIL,
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


def _rescore(rec: Rec, artifact: str, data: str | None) -> Check:
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


def _data_overlap(rec: Rec, data: str | None, val_data: str | None) -> Check | None:
    """Where the folder ships its data preparation (`dataprep`): the train/validation overlap of
    the prepared shards `data` (validation: `val_data`, else `data`'s own), pass or fail with the
    counts; without shards, not checkable, naming the command that checks them. A statically
    recognized #2127 split is reported either way (a warning without shards: the record may have
    run it with other options)."""
    from pgolf import data as D
    from pgolf.lab.data import overlap as O

    scripts = DP.prep_scripts(rec.fo.files)
    if not scripts:
        return None
    leaks = []
    for p in scripts:
        if p.suffix == ".py":
            text = F.read_bytes(p, DP.MAX_SCRIPT_BYTES).decode("utf-8", errors="replace")
            leaks += [x.text(rec.fo.rel(p)) for x in DP.static_leaks(text)]
    names = ", ".join(rec.fo.rel(p) for p in scripts)
    static = "; static: " + "; ".join(leaks) if leaks else ""
    if data is None:
        cmd = f"pgolf verify {rec.path} --data PREPARED_SHARDS [--val-data CHALLENGE_VAL_SHARDS]"
        ev = f"ships data preparation ({names}){static}; check its output: `{cmd}`"
        return Check("data_overlap", WARN if leaks else NA, ev)
    val = val_data or data
    try:
        clean, ev = O.verify_evidence(data, val)
    except (ValueError, OSError, D.ShardError) as e:
        return Check("data_overlap", FORM, f"--data {data} / val {val}: {e}")
    ev = f"{names} -> train {data}, val {val}: {ev}{static}"
    return Check("data_overlap", PASS if clean else FAIL, ev)


def verify(
    folder: str | Path,
    artifact: str | None = None,
    data: str | None = None,
    against: str | None = None,
    strict_time: bool = False,
    val_data: str | None = None,
) -> list[Check]:
    """All checks of a records folder, in order. Raises `FolderError` (naming the file) on a
    folder it refuses to read. `data`: prepared shards (the re-score's validation; the data
    overlap's training side, and its validation side unless `val_data` names another folder)."""
    rec = read(folder)
    checks = _files(rec)
    checks += [_seed_claims(rec), _aggregate_claims(rec)]
    checks += _bytes(rec)
    checks += _times(rec, strict_time)
    checks += _byte_accounting(rec)
    checks.append(_val_training(rec))
    if (overlap := _data_overlap(rec, data, val_data)) is not None:
        checks.append(overlap)
    checks += [_readme(rec), _stats(rec, against)]
    checks.append(_compliance(rec, checks))
    if artifact:
        checks.append(_rescore(rec, artifact, data))
    else:
        checks.append(Check("rescore", NA, "pass --artifact A --data DIR to re-score"))
    return checks


def exit_code(checks: list[Check]) -> int:
    """1 for a rules failure, else 2 for a form failure (missing/unparsable), else 0."""
    if any(c.status == FAIL for c in checks):
        return EXIT_RULES
    if any(c.status == FORM for c in checks):
        return EXIT_FORM
    return 0


def format_checks(checks: list[Check]) -> str:
    w = max(len(c.name) for c in checks)
    rows = [f"{c.name:<{w}}  {c.status:<13}  {c.evidence}" for c in checks]
    bad = [c.name for c in checks if c.status == FAIL]
    form = [c.name for c in checks if c.status == FORM]
    verdict = (
        "FAILED (rules): " + ", ".join(bad)
        if bad
        else ("INCOMPLETE (form): " + ", ".join(form) if form else "all checkable checks pass")
    )
    rows.append("\n" + verdict)
    return "\n".join(rows)


def as_json(checks: list[Check]) -> str:
    return json.dumps([asdict(c) for c in checks], indent=1)
