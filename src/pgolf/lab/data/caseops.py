"""CaseOps: a reversible case transform for tokenizers, and the exact byte count per token.

The idea (PRs #1729/#1736, used by the record #1855): capital ASCII letters are rewritten as
lowercase letters behind reserved operator characters, so a tokenizer trained on the transformed
text reuses one set of lowercase pieces for "the", "The" and "THE". Over each maximal run of
ASCII letters of the original text:

* all lowercase: unchanged;
* two or more letters, all capitals: `ALLCAPS` + the run in lowercase ("NASA" -> ALLCAPS nasa);
* a capital then only lowercase letters (a single capital too): `TITLE` + lowercase;
* anything else (camelCase, McDonald, iPhone): `TITLE` when the first letter is a capital, then
  the lowercase run with `CAPNEXT` before every later capital ("McDonald" -> TITLE mc CAPNEXT
  donald).

Non-ASCII letters are left as they are (their case mappings are not one-to-one: 'ß'.upper() is
'SS', 'İ'.lower() is two characters). A literal operator character of the input is written as
`ESC` + the character. The operators are the private-use characters U+E001..U+E004 (TITLE,
ALLCAPS, CAPNEXT, ESC), the code points the record's tokenizer reserves as pieces, so text
encoded here tokenizes with that tokenizer as the record's preparation does.

Bits per byte must still divide by the bytes of the original text: `TokenBytes` gives, for each
token of a document, the number of UTF-8 bytes of the original text it stands for (operators 0,
an escaped operator its 3 bytes, a letter 1, anything else its own UTF-8 length, a document's
first leading U+2581 0 as in the challenge's rule). Summed over a document this equals
`len(decode(sp.decode(ids)).encode("utf-8"))`: the original text after SentencePiece's
normalization (which also folds whitespace runs, as the challenge's byte-table rule counts them),
i.e. exactly the original bytes for text the tokenizer's normalizer leaves unchanged. The build
(`pgolf.lab.data.datasets`) checks that identity for every validation document it writes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

TITLE, ALLCAPS, CAPNEXT, ESC = "\ue001", "\ue002", "\ue003", "\ue004"
OPERATORS = (TITLE, ALLCAPS, CAPNEXT, ESC)
NAME = "caseops_v1"
SPACE = "\u2581"
_LOWER = frozenset("abcdefghijklmnopqrstuvwxyz")
_ALPHA = _LOWER | frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ")


class CaseOpsError(ValueError):
    """Transformed text that no original text encodes to (a dangling or misplaced operator)."""


def _word(word: str) -> str:
    low = word.lower()
    if word == low:
        return word
    if len(word) >= 2 and word.isupper():
        return ALLCAPS + low
    head = TITLE if word[0].isupper() else ""
    if word[1:] == low[1:]:
        return head + low
    rest = "".join(CAPNEXT + c.lower() if c.isupper() else c for c in word[1:])
    return head + low[0] + rest


def encode(text: str) -> str:
    """The CaseOps form of `text` (see the module docstring)."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in _ALPHA:
            j = i + 1
            while j < n and text[j] in _ALPHA:
                j += 1
            out.append(_word(text[i:j]))
            i = j
            continue
        out.append(ESC + c if c in OPERATORS else c)
        i += 1
    return "".join(out)


def decode(text: str) -> str:
    """The original text of a CaseOps string: `decode(encode(t)) == t` for every string t.

    Lenient where SentencePiece's normalizer may have changed the text around the operators
    (a capital letter from NFKC passes as it is); raises CaseOpsError for an operator with
    nothing valid after it."""
    out: list[str] = []
    allcaps = False
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in _LOWER:
            out.append(c.upper() if allcaps else c)
            i += 1
            continue
        allcaps = False
        if c not in OPERATORS:
            out.append(c)
            i += 1
            continue
        if i + 1 >= n:
            raise CaseOpsError(f"dangling operator U+{ord(c):04X} at the end of the text")
        nxt = text[i + 1]
        if c == ESC:
            out.append(nxt)
        elif nxt not in _LOWER:
            raise CaseOpsError(
                f"operator U+{ord(c):04X} at {i} is followed by {nxt!r}, not a lowercase letter"
            )
        else:
            out.append(nxt.upper())
            allcaps = c == ALLCAPS
        i += 2
    return "".join(out)


def original_bytes(transformed: str) -> int:
    """UTF-8 bytes of `decode(transformed)`, counted without decoding (operators 0)."""
    total, escaped = 0, False
    for c in transformed:
        if escaped or c not in OPERATORS:
            total += len(c.encode("utf-8"))
            escaped = False
        else:
            escaped = c == ESC
    return total


class TokenBytes:
    """Per-token original byte counts for a SentencePiece model with the CaseOps operators as
    pieces (each operator a piece of its own, as user-defined symbols are)."""

    def __init__(self, sp: Any) -> None:
        n = int(sp.vocab_size())
        self.base = np.zeros(n, dtype=np.int64)
        self.lead = np.zeros(n, dtype=bool)
        self.op = np.zeros(n, dtype=np.int8)  # 1 + index in OPERATORS for an operator piece
        found = set()
        for i in range(n):
            if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
                continue
            if sp.is_byte(i):
                self.base[i] = 1
                continue
            piece = sp.id_to_piece(i)
            if piece in OPERATORS:
                self.op[i] = 1 + OPERATORS.index(piece)
                found.add(piece)
                continue
            if any(o in piece for o in OPERATORS):
                raise ValueError(
                    f"tokenizer piece {i} {piece!r} joins an operator with other text; CaseOps "
                    "needs each operator as a piece of its own (user_defined_symbols)"
                )
            self.lead[i] = piece.startswith(SPACE)
            self.base[i] = len(piece.replace(SPACE, " ").encode("utf-8"))
        missing = [f"U+{ord(o):04X}" for o in OPERATORS if o not in found]
        if missing:
            raise ValueError(
                f"tokenizer has no pieces for the CaseOps operators {missing}: train it with "
                "`pgolf data corpus --caseops` or use a CaseOps tokenizer (such as the record's)"
            )
        self.esc_width = len(ESC.encode("utf-8"))

    def __call__(self, ids: Any) -> np.ndarray:
        """Bytes of each token of one document's ids (without its BOS), int64."""
        ids = np.asarray(ids, dtype=np.int64)
        out = self.base[ids]
        if ids.size and self.lead[ids[0]]:
            out[0] -= 1  # the first piece's leading space is not decoded (the challenge's rule)
        ops = self.op[ids]
        pending, last = False, -2
        for p in np.flatnonzero(ops).tolist():
            if pending and p == last + 1:  # the escaped literal operator
                out[p], pending = self.esc_width, False
            else:
                out[p], pending = 0, ops[p] == 1 + OPERATORS.index(ESC)
            last = p
        return out
