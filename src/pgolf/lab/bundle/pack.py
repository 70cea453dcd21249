"""Pack a specialized bundle: minify each module, compress them as one payload, and embed the
payload in the densest literal the interpreter reads (issue 22; figures in docs/benchmarks.md).

- Minification: python-minifier (a lab dependency; the bundle never imports it) with the options
  `MINIFY`, chosen by measurement: locals renamed, module globals renamed too except the names
  that must keep their spelling (`spelled`: every attribute name and identifier-like string of the
  bundle, so other modules' `_M["x"].name` lookups, the modes table's runner names, `getattr` on
  a module, config fields and log keys all still find them), literals not hoisted (hoisting
  costs Brotli more than it saves), asserts removed (as `python -O` would: the core's asserts
  restate `config.validate`'s checks, which the bundle runs, or internal invariants).
- Payload: the loader, then each module as `name \\1 source`, joined by NUL: plain text, no
  `repr` escapes to compress (measured 0.5 KB smaller than one `_mod(name, 'source')` per module).
- Codec: Brotli quality 11 (smaller than lzma/xz and zlib on this text; `CODECS` keeps the rest
  measurable).
- Literal: the file declares `coding: latin-1`, so every byte of the compressed payload is one
  character of a triple-quoted string; only backslash, CR, NUL and a quote that would close the
  string are escaped (about 1 % of the bytes), against base85's 25 %.
"""

from __future__ import annotations

import ast
import base64
import lzma
import re
import zlib
from collections.abc import Callable

import brotli

MINIFY = dict(
    remove_literal_statements=True,
    rename_locals=True,
    rename_globals=True,
    hoist_literals=False,
    remove_asserts=True,
    remove_annotations=True,
)


def spelled(sources: list[str]) -> set[str]:
    """The module-level names no bundle may rename: every attribute name (`_M["x"].name`, `C.f`,
    `self.f`), keyword argument name and identifier-like string constant (a name looked up by
    its spelling: the modes table's runners, `getattr`, config fields) of `sources`, and dunders."""
    out: set[str] = set()
    for src in sources:
        for n in ast.walk(ast.parse(src)):
            if isinstance(n, ast.Attribute):
                out.add(n.attr)
            elif isinstance(n, ast.keyword) and n.arg:
                out.add(n.arg)
            elif isinstance(n, ast.Constant) and isinstance(n.value, str):
                out |= set(re.findall(r"[A-Za-z_]\w*", n.value))
            elif isinstance(n, ast.Name) and n.id.startswith("__"):
                out.add(n.id)
    return out


def minify(src: str, preserve: set[str] | frozenset = frozenset(), **options) -> str:
    """`src` through python-minifier with MINIFY (updated by `options`); with `rename_globals`,
    the module-level names in `preserve` keep their spelling (`spelled`)."""
    import python_minifier  # a lab dependency, imported only when a bundle is packed

    opts = {**MINIFY, **options}
    if opts.get("rename_globals"):
        opts["preserve_globals"] = sorted(preserve)
    return python_minifier.minify(src, **opts)


CODECS: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    # name: (compress, module to import in the bundle for its `decompress`)
    "brotli": (lambda b: brotli.compress(b, quality=11), "brotli"),
    "lzma": (lambda b: lzma.compress(b, preset=9 | lzma.PRESET_EXTREME), "lzma"),
    "zlib": (lambda b: zlib.compress(b, 9), "zlib"),
}


def latin1_literal(data: bytes) -> bytes:
    """A triple-quoted str literal whose latin-1 encoding is `data`, in a latin-1 source file."""
    q = b"'" if data.count(b"'") <= data.count(b'"') else b'"'
    out = bytearray()
    for i, b in enumerate(data):
        c = bytes([b])
        nxt = data[i + 1 : i + 2]
        if c == b"\\":
            out += b"\\\\"
        elif c == b"\r":
            out += b"\\r"
        elif c == b"\0":
            out += b"\\x00" if nxt and nxt in b"01234567" else b"\\0"
        elif c == q and (nxt == q or nxt == b"" or out.endswith(q)):
            out += b"\\" + q  # never three in a row, never last
        else:
            out += c
    return q * 3 + bytes(out) + q * 3


def base85_literal(data: bytes) -> bytes:
    return b'b"' + base64.b85encode(data) + b'"'


LITERALS: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    # name: (literal of the payload, the expression that turns it back into bytes: {} = literal)
    "latin1": (latin1_literal, "{}.encode('latin1')"),
    "base85": (base85_literal, "__import__('base64').b85decode({})"),
}
CODING = b"# coding: latin-1\n"  # PEP 263; a base85 form needs no declaration


def wrap(payload: bytes, codec: str, literal: str) -> bytes:
    """The file body: decompress the payload into `P` (text), run its loader (the part before
    the first NUL); the loader defines the modules from the rest of `P`."""
    compress, mod = CODECS[codec]
    lit_fn, expr = LITERALS[literal]
    data = expr.format(lit_fn(compress(payload)).decode("latin-1")).encode("latin-1")
    body = b"import " + mod.encode() + b";P=" + mod.encode() + b".decompress(" + data
    body += b").decode();exec(P[:P.index('\\0')])\n"
    return (CODING if literal == "latin1" else b"") + body
