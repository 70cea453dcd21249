"""Statistics of the TTT memorization study (`pgolf.lab.study`; spec rules-and-compliance.md,
"Quantifying memorization vs generalization", steps 3, 6 and 7). NON-RECORD.

* Paired bootstrap over documents: each replicate draws documents with replacement (multinomial
  counts, one draw shared by every epoch and arm, so the curves are paired); with several
  replicates (training runs x study seeds) the replicates are drawn too (an outer random effect).
  A bpb gain over a draw is (sum NLL at epoch 0 - sum NLL at e) / sum bytes / ln 2.
* Difference in differences: memorization ~ DeltaA - DeltaB; cross-fitted (train on B, DeltaB -
  DeltaA) and averaged, A and B documents drawn independently.
* Curves: DeltaB(e) ~ g (1 - exp(-e / tau)) (least squares; g closed-form per tau on a fine
  log grid of tau) and DeltaA - DeltaB ~ m e (through the origin); their parameters' intervals come
  from refitting every bootstrap curve.
"""

from __future__ import annotations

import numpy as np

LN2 = float(np.log(2))
TAUS = np.logspace(-2, 3, 1201)  # 1% .. 1000 epochs, ~1 % apart


def counts(n: int, reps: int, rng: np.random.Generator) -> np.ndarray:
    """[reps + 1, n] bootstrap multiplicities; row 0 is the sample itself (all ones)."""
    c = rng.multinomial(n, np.full(n, 1.0 / n), size=reps).astype(np.float64)
    return np.vstack([np.ones((1, n)), c])


def rep_draws(r: int, reps: int, rng: np.random.Generator) -> np.ndarray:
    """[reps + 1, r] replicate indices: row 0 each once, then drawn with replacement."""
    if r == 1:
        return np.zeros((reps + 1, 1), dtype=np.int64)
    return np.vstack([np.arange(r)[None], rng.integers(0, r, (reps, r))])


def gains(
    n0: np.ndarray, ne: np.ndarray, nbytes: np.ndarray, cnt: np.ndarray, rdraw: np.ndarray
) -> np.ndarray:
    """Bootstrap bpb gains. n0 [R, n] NLL at epoch 0, ne [R, E, n] at the ladder, nbytes [n],
    cnt [D, n] document draws, rdraw [D, R] replicate draws -> [D, E] (row 0 = estimate)."""
    s0 = np.einsum("dn,rn->dr", cnt, n0)
    se = np.einsum("dn,ren->dre", cnt, ne)
    b = cnt @ nbytes
    per = (s0[:, :, None] - se) / b[:, None, None] / LN2  # [D, R, E]
    return np.take_along_axis(per, rdraw[:, :, None], axis=1).mean(1)


def interval(samples: np.ndarray) -> list:
    """[estimate, 2.5 %, 97.5 %] per column of [D, ...] samples (row 0 = the estimate)."""
    lo, hi = np.percentile(samples[1:], [2.5, 97.5], axis=0)
    return np.stack([samples[0], lo, hi], axis=-1).tolist()


def fit_saturating(e: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least-squares g (1 - exp(-e / tau)) for each row of y [D, E] -> [D, 2] (g, tau)."""
    y = np.atleast_2d(y)
    x = 1.0 - np.exp(-np.asarray(e, float)[None, :] / TAUS[:, None])  # [T, E]
    g = (y @ x.T) / (x * x).sum(1)  # [D, T]
    sse = ((y[:, None, :] - g[:, :, None] * x[None]) ** 2).sum(-1)
    k = sse.argmin(1)
    return np.stack([g[np.arange(len(y)), k], TAUS[k]], 1)


def fit_slope(e: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least-squares m e through the origin for each row of y [D, E] -> [D]."""
    e = np.asarray(e, float)
    return np.atleast_2d(y) @ e / max(float(e @ e), 1e-12)


def summarize_arm(e: np.ndarray, dA: np.ndarray, dB: np.ndarray) -> dict:
    """Intervals for one TTT arm's gains on A and B ([D, E] each) and their difference."""
    return {"delta_A": interval(dA), "delta_B": interval(dB), "A_minus_B": interval(dA - dB)}


def curves(e: np.ndarray, gen: np.ndarray, mem: np.ndarray) -> dict:
    """Fitted curves with intervals: saturating on the generalization gain, slope on the
    memorization gap (both [D, E] with row 0 the estimate)."""
    sat, m = fit_saturating(e, gen), fit_slope(e, mem)
    return {
        "generalization_g": interval(sat[:, 0]),
        "generalization_tau": interval(sat[:, 1]),
        "memorization_slope": interval(m),
        "formula": "gen(e) = g (1 - exp(-e/tau)); mem(e) = m e",
    }


def canary_nll(nll: np.ndarray, ntok: np.ndarray) -> float:
    """Mean NLL per token (nats) of canaries: nll [n] sums, ntok [n] tokens."""
    return float(nll.sum() / max(ntok.sum(), 1))


def canary_gap(a0, ae, b0, be, ta, tb, reps: int, rng) -> list:
    """Canary memorization: (NLL drop on A canaries) - (drop on B canaries), nats/token, with a
    bootstrap over canaries. a0/ae [R, m] NLL sums at epoch 0 / e, ta/tb [m] token counts."""
    ca, cb = counts(ta.size, reps, rng), counts(tb.size, reps, rng)
    dA = (ca @ (a0 - ae).mean(0)) / (ca @ ta)
    dB = (cb @ (b0 - be).mean(0)) / (cb @ tb)
    return interval(dA - dB)


def buckets(
    len_a: np.ndarray, len_b: np.ndarray, dup_b: np.ndarray
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(A mask, B mask) of the per-length breakdown: short (<= the median length of all units),
    long; and, if any, B's near-duplicates of A units against all of A."""
    med = float(np.median(np.concatenate([len_a, len_b]))) if len_a.size + len_b.size else 0.0
    out = {
        f"short (<={med:.0f} tok)": (len_a <= med, len_b <= med),
        f"long (>{med:.0f} tok)": (len_a > med, len_b > med),
    }
    if dup_b.any():
        out["near-duplicate B"] = (np.ones(len_a.size, bool), dup_b)
    return out
