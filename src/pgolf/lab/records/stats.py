"""Significance of a record claim: per-seed table, mean/std, and the one-sided t tests.

Tests (both one-sided, on per-seed `val_loss` by default):

* the README rule: a record must beat the previous one by at least 0.005 nats at p < 0.01. We
  test H1: mean(new) < mean(base) - 0.005 (the margin inside the test, as several records did),
  and also report p without the margin;
* the maintainers' final "chronological frontier" rule (PRs #1902, #2146): a one-sided Welch
  t-test at p < 0.25 against the previous frontier row (H1: mean(new) < mean(base)).

With a baseline given as one number (`--against-loss/--against-bpb`) the test is a one-sample t
test (df = n - 1), as in the March records' READMEs. Welch's test is B. L. Welch (1947). The t
distribution comes from scipy (a lab dependency; the core never imports it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pgolf.lab.records.results import SeedResult

README_MARGIN_NATS = 0.005
README_P = 0.01
FRONTIER_P = 0.25


# ----------------------------------------------------------------------------------------------
# Tests


def mean_std(xs: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; 0.0 for one value)."""
    n = len(xs)
    m = sum(xs) / n
    return m, (math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1)) if n > 1 else 0.0)


@dataclass(frozen=True)
class TTest:
    kind: str  # "welch" or "one-sample"
    t: float
    df: float
    p: float
    margin: float


def one_sided_test(new: Sequence[float], base: Sequence[float], margin: float = 0.0) -> TTest:
    """H1: mean(new) < mean(base) - margin. Welch's t test, or a one-sample t test against the
    single value when `base` has one element. t = (mean_new - mean_base + margin) / se, so a
    better `new` gives a negative t; p = P(T_df <= t)."""
    from scipy import stats as S

    n = len(new)
    if n < 2:
        raise ValueError(f"a t test needs at least 2 seeds of the new result, got {n}")
    m1, s1 = mean_std(new)
    m2, s2 = mean_std(base)
    if len(base) == 1:
        kind, v1, v2 = "one-sample", s1 * s1 / n, 0.0
        df = float(n - 1)
    else:
        kind, v1, v2 = "welch", s1 * s1 / n, s2 * s2 / len(base)
        den = v1 * v1 / (n - 1) + v2 * v2 / (len(base) - 1)
        df = (v1 + v2) ** 2 / den if den > 0 else float(n + len(base) - 2)
    se = math.sqrt(v1 + v2)
    diff = m1 - m2 + margin
    if se == 0.0:
        t = -math.inf if diff < 0 else (math.inf if diff > 0 else 0.0)
        p = 0.0 if diff < 0 else (1.0 if diff > 0 else 0.5)
    else:
        t = diff / se
        p = float(S.t.cdf(t, df))
    return TTest(kind, t, df, p, margin)


def compare(
    new: Sequence[SeedResult],
    base: Sequence[SeedResult] | None = None,
    base_loss: float | None = None,
    base_bpb: float | None = None,
    metric: str = "loss",
) -> dict[str, Any]:
    """Gap and both verdicts of `new` against a baseline (per-seed results, or single values).

    `metric` "loss" tests per-seed val_loss (the README's unit, nats); "bpb" tests val_bpb, as
    several early records did; the README's 0.005-nat margin is then converted to bpb with the
    new runs' own bpb/loss ratio."""
    if metric not in ("loss", "bpb"):
        raise ValueError(f"metric must be 'loss' or 'bpb', got {metric!r}")
    nl, nb = [r.val_loss for r in new], [r.val_bpb for r in new]
    if base:
        bl, bb = [r.val_loss for r in base], [r.val_bpb for r in base]
    else:
        bl = [base_loss] if base_loss is not None else []
        bb = [base_bpb] if base_bpb is not None else []
    xs, ys = (nl, bl) if metric == "loss" else (nb, bb)
    if not ys:
        raise ValueError(
            f"no baseline {metric}: pass --against RECORD_DIR or --against-{metric} VALUE"
        )
    ratio = mean_std(nb)[0] / mean_std(nl)[0]
    margin = README_MARGIN_NATS if metric == "loss" else README_MARGIN_NATS * ratio
    plain, shifted = one_sided_test(xs, ys), one_sided_test(xs, ys, margin)
    gap_nats = mean_std(bl)[0] - mean_std(nl)[0] if bl else None
    gap_bpb = mean_std(bb)[0] - mean_std(nb)[0] if bb else None
    gap = gap_nats if metric == "loss" else gap_bpb
    unit = "nats" if metric == "loss" else "bpb"
    readme_ok = gap is not None and gap >= margin and shifted.p < README_P
    why = (
        f"gap {gap:+.5f} {unit} {'>=' if gap >= margin else '<'} {margin:.5f} {unit}; "
        f"p(H1: better by more than the margin) = {shifted.p:.3g} "
        f"{'<' if shifted.p < README_P else '>='} {README_P} "
        f"(without the margin in the test: p = {plain.p:.3g})"
    )
    front_ok = plain.p < FRONTIER_P
    fwhy = f"one-sided {plain.kind} p = {plain.p:.3g} {'<' if front_ok else '>='} {FRONTIER_P}"
    return {
        "metric": metric,
        "test": plain.kind,
        "n_new": len(xs),
        "n_base": len(ys),
        "baseline_mean": mean_std(ys)[0],
        "new_mean": mean_std(xs)[0],
        "gap_nats": gap_nats,
        "gap_bpb": gap_bpb,
        "t": plain.t,
        "df": plain.df,
        "p": plain.p,
        "readme_margin": margin,
        "t_margin": shifted.t,
        "p_margin": shifted.p,
        "readme_rule": {"met": readme_ok, "why": why},
        "frontier_rule": {"met": front_ok, "why": fwhy},
    }


def summarize(results: Sequence[SeedResult]) -> dict[str, Any]:
    """Per-seed rows and mean/std of each number."""
    out: dict[str, Any] = {"seeds": [asdict(r) for r in results]}
    for key in ("val_loss", "val_bpb", "artifact_bytes", "steps", "train_seconds", "eval_seconds"):
        vals = [getattr(r, key) for r in results if getattr(r, key) is not None]
        if vals:
            m, s = mean_std(vals)
            out[f"{key}_mean"], out[f"{key}_std"] = m, s
            out[f"{key}_max"] = max(vals)
    return out


def _f(v: Any, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def format_text(summary: dict[str, Any], comparison: dict[str, Any] | None) -> str:
    head = (
        f"{'seed':>6} {'val_loss':>11} {'val_bpb':>11} {'bytes':>10} {'steps':>6} "
        f"{'train_s':>8} {'eval_s':>8}  source"
    )
    lines = [head]
    for r in summary["seeds"]:
        lines.append(
            f"{_f(r['seed'], '>6')} {r['val_loss']:>11.8f} {r['val_bpb']:>11.8f} "
            f"{_f(r['artifact_bytes'], '>10')} {_f(r['steps'], '>6')} "
            f"{_f(r['train_seconds'], '>8.1f')} {_f(r['eval_seconds'], '>8.1f')}  "
            f"{Path(r['source']).name} [{r['label']}]"
        )
    for stat in ("mean", "std"):
        g = summary.get
        lines.append(
            f"{stat:>6} {_f(g('val_loss_' + stat), '>11.8f')} {_f(g('val_bpb_' + stat), '>11.8f')} "
            f"{_f(g('artifact_bytes_' + stat), '>10.0f')} {_f(g('steps_' + stat), '>6.0f')} "
            f"{_f(g('train_seconds_' + stat), '>8.1f')} {_f(g('eval_seconds_' + stat), '>8.1f')}"
        )
    if comparison:
        c = comparison
        lines += [
            "",
            f"against the baseline ({c['test']} t test on per-seed val_{c['metric']}, "
            f"n={c['n_new']} vs {c['n_base']}, H1: new is lower):",
            f"  gap: {_f(c['gap_nats'], '+.5f')} nats, {_f(c['gap_bpb'], '+.5f')} bpb "
            "(positive = better)",
            f"  t = {c['t']:.4f}  df = {c['df']:.4f}  p = {c['p']:.4g}",
            f"  README rule (>= 0.005 nats at p < 0.01): "
            f"{'MET' if c['readme_rule']['met'] else 'NOT MET'} - {c['readme_rule']['why']}",
            f"  frontier rule (one-sided Welch p < 0.25): "
            f"{'MET' if c['frontier_rule']['met'] else 'NOT MET'} - {c['frontier_rule']['why']}",
        ]
    return "\n".join(lines)
