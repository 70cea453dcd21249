"""Exact arithmetic coding over integer frequencies, for the auditor's round-trip test T2.3
(spec rules-and-compliance.md part (d)): big-integer intervals, so there is no renormalization
and no precision loss - the code length is within 2 bits of the ideal for the frequencies."""

from __future__ import annotations

import numpy as np
import torch

FREQ_TOTAL = 1 << 24


def freqs(logp: torch.Tensor) -> np.ndarray:
    """Integer frequencies, floor 1 per token, total ~2^24 (spec T2.3)."""
    p = torch.exp(logp.double()).clamp(min=0).numpy()
    return np.floor(p / max(p.sum(), 1e-300) * (FREQ_TOTAL - p.size)).astype(np.int64) + 1


def encode(symbols: list[int], tables: list[np.ndarray]) -> tuple[int, int]:
    """-> (m, b): the code value m / 2^b, b = code length in bits."""
    low, rng, den = 0, 1, 1
    for s, f in zip(symbols, tables, strict=True):
        tot, cum = int(f.sum()), int(f[:s].sum())
        low, rng, den = low * tot + cum * rng, rng * int(f[s]), den * tot
    b = 1
    while True:
        m = -(-(low << b) // den)
        if m * den < (low + rng) << b:
            return m, b
        b += 1


class Decoder:
    """Decodes the symbols of `encode(symbols, tables)` given the same tables in order."""

    def __init__(self, m: int, b: int) -> None:
        self.m, self.b, self.low, self.rng, self.den = m, b, 0, 1, 1

    def next(self, f: np.ndarray) -> int:
        tot = int(f.sum())
        idx = ((self.m * self.den - (self.low << self.b)) * tot) // (self.rng << self.b)
        cum = np.cumsum(f)
        s = int(np.searchsorted(cum, idx, side="right"))
        s = min(s, f.size - 1)
        c0 = int(cum[s] - f[s])
        self.low, self.rng, self.den = (
            self.low * tot + c0 * self.rng,
            self.rng * int(f[s]),
            self.den * tot,
        )
        return s
