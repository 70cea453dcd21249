"""The one rule for every number a records folder claims, shared by `export` and `verify`.

* Per-seed values are the values the seed's log prints (its final evaluation line, as text):
  `export` writes them, `verify` reads them back; never the unrounded values of result.json.
* An aggregate is the mean (and the sample std, n - 1) of those per-seed values, computed in
  float64 and written rounded to `DECIMALS` decimals.
* A claim matches a recomputed value when the value rounds to the claim at the number of
  decimals the claim is PRINTED with (its JSON text: `"1.08000"` has 5), i.e. within half a unit
  of its last digit, plus `EPS` for float noise in a printed half-unit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

DECIMALS = 8
EPS = 1e-9


class ClaimFloat(float):
    """A float read from JSON that remembers its text (so its printed precision is known)."""

    text: str

    def __new__(cls, text: str) -> ClaimFloat:
        obj = super().__new__(cls, float(text))
        obj.text = text
        return obj


def decimals(claim: Any) -> int:
    """Decimals a claim is printed with: its JSON text when known, else its repr."""
    s = getattr(claim, "text", None) or (claim if isinstance(claim, str) else repr(claim))
    s = s.lower()
    if "e" in s:  # 1e-05: the mantissa's decimals plus the exponent
        mant, exp = s.split("e")
        return max(0, (len(mant.split(".")[1]) if "." in mant else 0) - int(exp))
    return len(s.split(".")[1]) if "." in s else 0


def matches(claim: Any, value: float | None) -> bool:
    """`value` rounds to `claim` at the claim's printed precision; False for a missing value or a
    claim that is no number."""
    if value is None or isinstance(claim, bool) or not isinstance(claim, int | float | str):
        return False
    try:
        c = float(claim)
    except ValueError:
        return False
    if not math.isfinite(c) or not math.isfinite(float(value)):
        return False
    return abs(float(value) - c) <= 0.5 * 10.0 ** -decimals(claim) + EPS


def mean_std(xs: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; 0.0 for one value)."""
    n = len(xs)
    m = math.fsum(xs) / n
    return m, (math.sqrt(math.fsum((x - m) ** 2 for x in xs) / (n - 1)) if n > 1 else 0.0)


def printed(x: float) -> float:
    """A per-seed value as a log prints it (`:.8f`)."""
    return float(f"{x:.{DECIMALS}f}")


def aggregate(per_seed: Sequence[float]) -> dict[str, float]:
    """The claimed mean and std of per-seed values (each first taken as its log prints it)."""
    m, s = mean_std([printed(x) for x in per_seed])
    return {"mean": round(m, DECIMALS), "std": round(s, DECIMALS)}
