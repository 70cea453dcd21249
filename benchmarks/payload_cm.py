"""Could a context-mixing coder beat Brotli-11 on the bundle's payload (issue 22, item 3:
"and anything better")? A bitwise coder, integer arithmetic only (so a decoder would be
deterministic across machines): hashed order-1..6 contexts and an identifier context feeding
adaptive counters, one logistic mixer chosen by the partial byte, a 32-bit binary arithmetic
coder. Prints its size and time against Brotli-11 on the same payload, and checks the round trip.

    PYTHONPATH=src python benchmarks/payload_cm.py [--preset pr1550] [--orders 1,2,3,4,6]

A decoder is the same loop, so its time is the encoder's; it would ship as plain source beside
the payload (its bytes count too).
"""

from __future__ import annotations

import argparse
import math
import time
from array import array

import brotli

# 33 knots of 4096 / (1 + e^(-x/256)), x = -2048, -1920, ..., 2048. A shipped decoder would
# carry them as integer literals, so that no libm difference could change a rounding.
_KNOTS = [min(4095, max(1, round(4096 / (1 + math.exp(-(i - 16) / 2))))) for i in range(33)]


def _squash(d: int) -> int:
    d = max(-2047, min(2047, d))
    w, i = d & 127, (d >> 7) + 16
    return (_KNOTS[i] * (128 - w) + _KNOTS[i + 1] * w + 64) >> 7


SQUASH = [_squash(d) for d in range(-2047, 2048)]
STRETCH = [2047] * 4096
_lo = 0
for _x in range(-2047, 2048):
    for _j in range(_lo, SQUASH[_x + 2047] + 1):
        STRETCH[_j] = _x
    _lo = max(_lo, SQUASH[_x + 2047] + 1)
RATE = [65536 * 2 // (2 * n + 3) for n in range(256)]


def code(orders: list[int], data: bytes | None, n: int, src: bytes = b"") -> bytes:
    """Encode `data` (n bytes), or decode n bytes from `src` when data is None."""
    enc, mask, limit = data is not None, (1 << 22) - 1, 30
    table = array("I", [32768 << 8]) * (1 << 22)
    order0 = array("I", [32768 << 8]) * (1 << 16)
    weights = [[1 << 14] * (len(orders) + 2) for _ in range(256)]
    hist, word, hashes = 0, 0, [0] * len(orders)
    x1, x2, x, ip, out = 0, 0xFFFFFFFF, int.from_bytes(src[:4], "big"), 4, bytearray()

    def update(tab, i, y):
        v = tab[i]
        p, k = v >> 8, v & 255
        p += (((y << 16) - p) * RATE[k]) >> 16
        tab[i] = (p << 8) | (k + 1 if k < limit else k)

    for k in range(n):
        c0, c1 = 1, hist & 255
        bases = [(h * 0x2F0B4AB5 + i * 0x9E3779B1) & 0xFFFFFFFF for i, h in enumerate(hashes)]
        bases.append((word * 0x7A3C5 + 12345) & 0xFFFFFFFF)
        for b in range(8):
            idx = [(base ^ (c0 * 0x1000193)) & mask for base in bases]
            i0 = (c1 << 8) | c0
            st = [STRETCH[table[i] >> 12] for i in idx] + [STRETCH[order0[i0] >> 12]]
            ws = weights[c0]
            dot = sum(w * s for w, s in zip(ws, st)) >> 16
            p = max(1, min(4095, SQUASH[max(-2047, min(2047, dot)) + 2047]))
            xm = x1 + ((x2 - x1) >> 12) * p
            y = (data[k] >> (7 - b)) & 1 if enc else int(x <= xm)
            x1, x2 = (x1, xm) if y else (xm + 1, x2)
            while not (x1 ^ x2) & 0xFF000000:
                if enc:
                    out.append(x2 >> 24)
                else:
                    x = ((x << 8) & 0xFFFFFFFF) | (src[ip] if ip < len(src) else 0)
                    ip += 1
                x1, x2 = (x1 << 8) & 0xFFFFFFFF, ((x2 << 8) & 0xFFFFFFFF) | 255
            err = ((y << 12) - p) * 6
            for j, s in enumerate(st):
                ws[j] += (s * err) >> 13
            for i in idx:
                update(table, i, y)
            update(order0, i0, y)
            c0 = (c0 << 1) | y
        byte = c0 & 255
        if not enc:
            out.append(byte)
        hist = ((hist << 8) | byte) & ((1 << 64) - 1)
        hashes = [hist & ((1 << (8 * o)) - 1) for o in orders]
        ident = 48 <= byte <= 57 or 65 <= byte <= 90 or 97 <= byte <= 122 or byte == 95
        word = (word * 31 + byte) & 0xFFFFFFF if ident else 0
    return bytes(out + x1.to_bytes(4, "big")) if enc else bytes(out)


def main() -> None:
    from pgolf import config as C
    from pgolf.lab import bundle

    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="pr1550")
    ap.add_argument("--orders", default="1,2,3,4,6")
    a = ap.parse_args()
    orders = [int(o) for o in a.orders.split(",")]
    payload = bundle.specialized(C.load(a.preset, []))[1].encode()
    t0 = time.perf_counter()
    packed = code(orders, payload, len(payload))
    t1 = time.perf_counter()
    assert code(orders, None, len(payload), packed) == payload, "round trip failed"
    t2 = time.perf_counter()
    br = len(brotli.compress(payload, quality=11))
    print(f"| {a.preset} | {len(payload):,} | {br:,} | {len(packed):,} | {len(packed) / br:.3f} |")
    print(f"encode {t1 - t0:.1f} s, decode {t2 - t1:.1f} s (pure Python)")


if __name__ == "__main__":
    main()
