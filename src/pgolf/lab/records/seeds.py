"""Per-seed results of a records folder or a pgolf run folder: the one reader `pgolf verify`,
`pgolf stats` and `pgolf export --against` share.

A records folder is read through `folderscan` (regular files only, bounded, logs found by
content under any name); per seed, the log whose evaluation line matches the claimed val_bpb (at
the claim's printed precision, `rules.matches`) wins, else that seed's last log. A claim may name
an earlier evaluation line than the log's last (a record that scored its sliding window, then a
worse TTT pass): that line is used and its label says so. A claim no log of its seed prints, but
the final line of a log whose seed is claimed nowhere does, marks a mislabelled seed (said in the
label).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from pgolf.lab.records import folderscan as F
from pgolf.lab.records import results as R
from pgolf.lab.records import rules as U


def claims(sub: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """seed -> its claimed numbers (`seed_results` as a mapping or, in a few records, a list)."""
    sr = (sub or {}).get("seed_results") or {}
    if isinstance(sr, list):
        return {str(r.get("seed")): r for r in sr if isinstance(r, dict)}
    return {str(k): v for k, v in sr.items() if isinstance(v, dict)}


def precise(evals: tuple[R.Eval, ...]) -> list[R.Eval]:
    """Evaluation lines without their rounded twins (`x val_bpb:1.0800` next to
    `x_exact val_bpb:1.08001234`): a claim is compared with what was measured, not a rounding."""
    return [
        e
        for e in evals
        if not any(
            o is not e
            and o.label.startswith(e.label)
            and len(o.bpb_text) > len(e.bpb_text)
            and abs(o.val_bpb - e.val_bpb) < 10.0 ** -(len(e.bpb_text.split(".")[1]))
            for o in evals
        )
    ]


def _pick(lfs: list[F.LogFile], claim: Any) -> tuple[R.SeedResult, F.LogFile] | None:
    pick = None
    for lf in lfs:
        r = R.from_log(lf.path, lf.facts)
        if r is None:
            continue
        r = replace(r, seed=lf.seed)
        if claim is None or U.matches(claim, r.val_bpb):
            pick = (r, lf)
            if claim is not None:
                break
            continue
        for e in precise(lf.facts.evals):  # the claim may be an earlier line (pre-TTT)
            if not e.label.lower().startswith("diag") and U.matches(claim, e.val_bpb):
                lab = f"{e.label} (claimed; last line: {r.label})"
                pick = (replace(r, val_loss=e.val_loss, val_bpb=e.val_bpb, label=lab), lf)
                break
        if pick and claim is not None and U.matches(claim, pick[0].val_bpb):
            break
    if pick is None:
        lf = lfs[-1]
        r = R.from_log(lf.path, lf.facts)
        pick = None if r is None else (replace(r, seed=lf.seed), lf)
    return pick


def choose(fo: F.Folder, sub: dict[str, Any]) -> tuple[list[R.SeedResult], dict[str, F.LogFile]]:
    """Per seed, the result its claim names and the log it came from."""
    said = claims(sub)
    by_seed: dict[str, list[F.LogFile]] = {}
    for lf in fo.logs:
        if lf.facts.final is not None:
            by_seed.setdefault(str(lf.seed), []).append(lf)
    chosen, which = [], {}
    for seed, lfs in by_seed.items():
        claim = said.get(seed, {}).get("val_bpb")
        if claim is None and len(by_seed) == 1 and "val_bpb" in sub:
            claim = sub["val_bpb"]
        if (pick := _pick(lfs, claim)) is None:
            continue
        chosen.append(pick[0])
        which[seed] = pick[1]
    spare = [lf for lf in fo.logs if lf.facts.final and str(lf.seed) not in said]
    for i, r in enumerate(chosen):
        claim = said.get(str(r.seed), {}).get("val_bpb")
        if claim is None or U.matches(claim, r.val_bpb):
            continue
        for lf in spare:
            if U.matches(claim, lf.facts.final.val_bpb):
                got = R.from_log(lf.path, lf.facts)
                lab = f"{got.label} (claimed for seed {r.seed}; {lf.rel} says seed {lf.seed})"
                chosen[i] = replace(got, seed=r.seed, label=lab)
                which[str(r.seed)] = lf
                spare.remove(lf)
                break
    return chosen, which


def from_folder(folder: str | Path) -> list[R.SeedResult]:
    """The chosen per-seed results of one records folder (`FolderError` for a hostile one)."""
    fo = F.discover(Path(folder))
    return choose(fo, fo.claims if isinstance(fo.claims, dict) else {})[0]


def load_results(paths: Sequence[str | Path]) -> list[R.SeedResult]:
    """Per-seed results from pgolf run folders and/or records folders (in the order given)."""
    out: list[R.SeedResult] = []
    for p in map(Path, paths):
        if (p / "result.json").is_file():  # a pgolf run folder (pgolf.runlog.RUN_FILES)
            out.append(R.read_run(p))
            continue
        if not p.is_dir():
            raise FileNotFoundError(
                f"{p}: no such folder; pass a pgolf run folder (result.json) or a records folder"
            )
        seeds = from_folder(p)
        if not seeds:
            raise ValueError(
                f"{p}: neither a pgolf run folder (result.json) nor a records folder with a "
                "training log ending in a val_loss/val_bpb line (any file name); pass one of those"
            )
        out.extend(seeds)
    return out
