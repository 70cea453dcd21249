"""What a records folder's logs say about the score's own validity (beyond its claims).

Byte accounting. For a fixed validation set and tokenizer, val_bpb / val_loss =
tokens / (bytes * ln 2) is a constant: the canonical tokens-per-byte of that tokenizer on the
challenge's validation set. The table below is read off the merged records' logs (every merged
log of a tokenizer agrees to 1e-4; column `val_tokens` is their `val_tokens`/`tokens:` line) and
cross-checked: tokens / (ratio * ln 2) gives the same 151.08 M validation bytes for every
tokenizer, and the byte-level tokenizer's ratio is 1/ln 2 (one token per byte). A log whose
ratio is off the table by more than `RATIO_TOL` counts bytes differently (issue #1719's
double-counted leading space is +15 %, the Scylla byte-fallback bug +4 %) or scores another
token set (a validation subset). Logs that print no val_loss are compared through their last
training loss: the claimed bpb divided by (train loss x ratio) is the implied val/train loss
ratio, which for a trained model stays near 1; under `TRAIN_GAP_MIN` the bytes are
over-counted.

Validation tokens in training: `<tag>ttt<tag>: epoch k/N` lines (passes of test-time training
over the validation tokens, e.g. PR #1550's pre-quant TTT) before the QUANTIZED artifact is
serialized or scored (a raw `Serialized model: N bytes` checkpoint save does not count) are
training on the validation set before the score. Score-first TTT logs its chunks after.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

RATIO_TOL = 0.01
TRAIN_GAP_MIN = 0.90
LN2 = math.log(2.0)


@dataclass(frozen=True)
class Tokenizer:
    name: str
    ratio: float  # val_bpb / val_loss = tokens / (bytes ln 2)
    val_tokens: int
    source: str


TOKENIZERS = {
    "sp1024": Tokenizer(
        "sp1024", 0.59226, 62_021_632, "2026-03-22_11L_EMA_GPTQ-lite... and 30 logs"
    ),
    "sp4096": Tokenizer(
        "sp4096", 0.43459, 45_508_608, "2026-04-01_Vocab4096... 2026-04-04_SP4096..."
    ),
    "sp8192": Tokenizer("sp8192", 0.38713, 40_540_160, "2026-04-05_SP8192... and 27 logs"),
    "sp8192-caseops": Tokenizer(
        "sp8192-caseops", 0.45696, 47_851_520, "2026-04-18_PR1626_CaseOps_Taper... and 19 logs"
    ),
    "byte260": Tokenizer("byte260", 1 / LN2, 151_130_112, "HNet_ByteVsSubword_Study (1/ln 2)"),
}

_TOK_PATTERNS = [
    (  # a CaseOps name, not a switch that says it is off (pgolf logs `"caseops": false`)
        re.compile(r"caseops(?![\"']?\s*[:=]\s*(?:false|0|no|off)\b)|lossless_caps", re.I),
        lambda m: "sp8192-caseops",
    ),
    (
        re.compile(r"byte260|byte[-_ ]level|vocab_size\s*[=:]\s*(?:25[6-9]|260)\b", re.I),
        lambda m: "byte260",
    ),
    (
        re.compile(
            r"fineweb10B_sp(\d+)|fineweb_(\d+)_bpe|\bsp(\d{3,5})\b|"
            r"vocab_size\s*[=:]\s*(1024|4096|8192)\b",
            re.I,
        ),
        None,
    ),
]


def tokenizers_named(texts: list[tuple[str, str]]) -> dict[str, str]:
    """Every tokenizer the folder names, in order of first mention: name -> `file:line`."""
    out: dict[str, str] = {}
    for name, text in texts:
        for i, line in _lines(text, 5000):
            for rx, fn in _TOK_PATTERNS:  # the first pattern that matches a line names it
                hits = list(rx.finditer(line))
                for m in hits:
                    tok = fn(m) if fn else "sp" + next(g for g in m.groups() if g)
                    out.setdefault(tok, f"{name}:{i}")
                if hits:
                    break
    return out


_TTT_EPOCH = re.compile(r"^\s*([\w\-]*ttt[\w\-]*)\s*[:|]\s*epoch[\s:=]*(\d+)\s*/\s*(\d+)", re.I)
_SERIALIZE = re.compile(
    r"^(Serialized model[^:\n]{0,40}(?:int\d|quant|zlib|zstd|brotli|lzma|ptz)[^:\n]{0,80}:"
    r"\s*\d+\s*bytes|"
    r"Total submission size[^:\n]{0,120}:\s*\d+\s*bytes|"
    r"(final_|quantized)\w*\s+val_loss[:=]\s*\d)",
    re.I,
)
_TRAIN_LOSS = re.compile(
    r"^\s*step[\s:]*\d+\s*/\s*\d+[^\n]{0,300}?\b(?:train_)?loss[\s:=|]+(\d+\.\d+)"
)
_VAL_TOKENS = re.compile(r"\bval_tokens[:=]\s*(\d+)|val_loader:[^\n]{0,300}?\btokens:(\d+)")
_BPB_ANY = re.compile(r"\bbpb\b[^:=\n]{0,40}[:=]\s*(\d+\.\d+)", re.I)


MAX_LINE = 4096  # characters of a line scanned (the evidence lines are short)


def _lines(text: str, limit: int | None = None):
    """(number, line cut to MAX_LINE) of a text's lines: each scan is bounded per line."""
    for i, line in enumerate(text.splitlines()[:limit], start=1):
        yield i, line[:MAX_LINE]


def pre_quant_ttt(text: str) -> list[tuple[int, str]]:
    """(line, text) of TTT epoch lines before the artifact is serialized or scored."""
    hits, anchor = [], None
    for i, line in _lines(text):
        if anchor is None and _SERIALIZE.match(line.strip()):
            anchor = i
        if anchor is None and _TTT_EPOCH.match(line):
            hits.append((i, line.strip()[:100]))
    return hits


def last_train_loss(text: str) -> tuple[float, int] | None:
    out = None
    for i, line in _lines(text):
        if m := _TRAIN_LOSS.match(line):
            out = (float(m[1]), i)
    return out


def val_tokens(text: str) -> tuple[int, int] | None:
    for i, line in _lines(text):
        if m := _VAL_TOKENS.search(line):
            return int(m[1] or m[2]), i
    return None


def last_bpb(text: str) -> tuple[float, int] | None:
    out = None
    for i, line in _lines(text):
        if m := _BPB_ANY.search(line):
            out = (float(m[1]), i)
    return out


_VAL_PATTERN = re.compile(r"^(?:\d+\.\d+\s+)?val_loader:shards pattern=(\S+)", re.M)


def other_val_set(text: str) -> str | None:
    """The validation shard pattern when the log names one that is not the challenge's
    (FineWeb) validation set, e.g. pgolf's embedded toy corpus; else None."""
    m = _VAL_PATTERN.search(text)
    return m[1] if m and "fineweb" not in m[1].lower() else None
