"""Reading a submission script the way the static screen needs it, without running any of it.

* `parse(text, name)`: `ast.parse`, and where the interpreter is older than 3.12 and the source
  uses PEP 701 f-strings (quotes of the outer kind nested inside a replacement field), a retry on
  a rewrite that keeps every line where it was: each f-string becomes `_fstr_(expr, ...)`, a call
  on its replacement fields (the names stay visible to the data-flow rules; the literal text and
  the format specs go).
* `units(path)`: the script and every piece of code it hands to `exec`: a payload packed with
  lzma (xz or raw LZMA2), brotli, zlib, gzip or bz2 behind base85/base64/base32/a85 decoding, the
  payload literal inline or in a module-level name, or `open(...).read()` of a file shipped next
  to the script. Only literals, module-level constants, `__file__`, and a fixed set of
  decode/decompress functions are evaluated; anything else (an `exec` of a computed string, a
  missing shipped file, an unknown codec) is reported as a warning naming its line.
"""

from __future__ import annotations

import ast
import base64
import bz2
import lzma
import re
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path

MAX_OUT = 64 << 20  # a decoded payload larger than this is refused (bounded memory)
MAX_DEPTH = 4  # wrappers inside wrappers

_PREFIX = re.compile(r"([rRbBuUfF]{0,2})('''|\"\"\"|'|\")")


# ------------------------------------------------------------------------------------------------
# PEP 701 f-strings on an older parser


def _scan_string(src: str, i: int) -> tuple[int, str, str] | None:
    """At `src[i]`, a string literal's prefix and opening quote: (index after the quote, prefix,
    quote); None when `src[i]` does not start a literal."""
    m = _PREFIX.match(src, i)
    if not m or (m.group(1) and i > 0 and (src[i - 1].isalnum() or src[i - 1] == "_")):
        return None
    return m.end(), m.group(1).lower(), m.group(2)


def _skip_plain(src: str, j: int, quote: str, raw: bool) -> int:
    """Index after the closing `quote` of a non-f literal whose body starts at `j`."""
    while j < len(src):
        if src[j] == "\\" and not raw:
            j += 2
            continue
        if src.startswith(quote, j):
            return j + len(quote)
        if src[j] == "\n" and len(quote) == 1:
            return j  # unterminated: let the parser report it
        j += 1
    return j


def _fstring(src: str, j: int, quote: str, raw: bool) -> tuple[int, str]:
    """Rewrite the f-string whose body starts at `j`: (index after it, `_fstr_(...)` text with
    the same number of newlines)."""
    fields: list[str] = []
    newlines = 0
    while j < len(src):
        c = src[j]
        if c == "\\" and not raw:
            newlines += src[j : j + 2].count("\n")
            j += 2
        elif src.startswith(quote, j):
            j += len(quote)
            break
        elif src.startswith("{{", j) or src.startswith("}}", j):
            j += 2
        elif c == "{":
            j, expr = _field(src, j + 1)
            fields.append(expr)
        else:
            newlines += c == "\n"
            j += 1
    return j, "_fstr_(" + ", ".join(f for f in fields if f.strip()) + "\n" * newlines + ")"


def _field(src: str, j: int) -> tuple[int, str]:
    """A replacement field from after its `{` to after its `}`: (index, rewritten expression);
    conversions, `=` and format specs are dropped, nested fields in a spec are kept."""
    out: list[str] = []
    depth = 0
    extra: list[str] = []
    while j < len(src):
        c = src[j]
        s = _scan_string(src, j)
        if s is not None:
            k, text = _literal(src, j, *s)
            out.append(text)
            j = k
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            if depth == 0:
                return j + 1, "".join(out) + "".join(extra)
            depth -= 1
        elif depth == 0 and (
            (c == "!" and src[j + 1 : j + 2] != "=") or c == ":" or (c == "=" and _lone_eq(src, j))
        ):
            j = _skip_spec(src, j, extra)
            return j, "".join(out) + "".join(extra)
        out.append(c)
        j += 1
    return j, "".join(out)


def _lone_eq(src: str, j: int) -> bool:
    return src[j + 1 : j + 2] != "=" and src[j - 1 : j] not in ("=", "!", "<", ">")


def _skip_spec(src: str, j: int, extra: list[str]) -> int:
    """Skip a field's conversion / format spec up to its closing `}`; nested `{expr}` fields of
    the spec are appended to `extra` (as `, expr`)."""
    while j < len(src):
        c = src[j]
        if c == "{":
            j, expr = _field(src, j + 1)
            extra.append(", " + expr)
            continue
        if c == "}":
            return j + 1
        j += 1
    return j


def _literal(src: str, i: int, j: int, prefix: str, quote: str) -> tuple[int, str]:
    raw = "r" in prefix
    if "f" in prefix:
        return _fstring(src, j, quote, raw)
    k = _skip_plain(src, j, quote, raw)
    return k, src[i:k]


def rewrite_fstrings(src: str) -> str:
    """The source with every f-string replaced by `_fstr_(fields...)`, line numbers kept."""
    out: list[str] = []
    i = 0
    while i < len(src):
        c = src[i]
        if c == "#":
            k = src.find("\n", i)
            k = len(src) if k < 0 else k
            out.append(src[i:k])
            i = k
            continue
        s = _scan_string(src, i)
        if s is not None:
            k, text = _literal(src, i, *s)
            out.append(text)
            i = k
            continue
        out.append(c)
        i += 1
    return "".join(out)


def parse(text: str, name: str) -> ast.Module:
    """The module's tree; Python 3.12 f-strings parse on older interpreters (see above)."""
    try:
        return ast.parse(text, filename=name)
    except SyntaxError as e:
        if sys.version_info >= (3, 12):
            raise
        first = e
    try:
        return ast.parse(rewrite_fstrings(text), filename=name)
    except SyntaxError:
        raise first from None


# ------------------------------------------------------------------------------------------------
# Packed code


@dataclass
class Unit:
    """One piece of code the script runs: `name` is how findings cite it (the script, or
    `script:LINE<codecs>` for a payload exec'd at LINE)."""

    name: str
    text: str
    tree: ast.Module


@dataclass
class Unpacked:
    units: list[Unit] = field(default_factory=list)
    warnings: list[tuple[str, int, str]] = field(default_factory=list)  # (unit, line, why)


class _NoEval(Exception):
    pass


_LZMA_CONST = {k: getattr(lzma, k) for k in dir(lzma) if k.isupper()}
_DECODERS = {
    ("base64", "b85decode"): base64.b85decode,
    ("base64", "b64decode"): base64.b64decode,
    ("base64", "a85decode"): base64.a85decode,
    ("base64", "b32decode"): base64.b32decode,
    ("base64", "urlsafe_b64decode"): base64.urlsafe_b64decode,
    ("base64", "decodebytes"): base64.decodebytes,
}


def _bounded(data: bytes) -> bytes:
    if len(data) > MAX_OUT:
        raise _NoEval(f"decoded payload over {MAX_OUT >> 20} MiB")
    return data


def _lzma(data: bytes, kw: dict) -> bytes:
    d = lzma.LZMADecompressor(**kw)
    out = d.decompress(data, max_length=MAX_OUT + 1)
    return _bounded(out)


def _zlib(data: bytes, wbits: int = 15) -> bytes:
    d = zlib.decompressobj(wbits)
    return _bounded(d.decompress(data, MAX_OUT + 1))


def _brotli(data: bytes) -> bytes:
    import brotli

    d = brotli.Decompressor()
    return _bounded(d.process(data, output_buffer_limit=MAX_OUT + 1))


def _gzip(data: bytes) -> bytes:
    return _zlib(data, 31)


def _bz2(data: bytes) -> bytes:
    d = bz2.BZ2Decompressor()
    return _bounded(d.decompress(data, max_length=MAX_OUT + 1))


class _Evaluator:
    """Evaluates the argument of an `exec` from literals and a fixed set of functions."""

    def __init__(self, tree: ast.Module, path: Path) -> None:
        self.path = path
        self.alias: dict[str, str] = {}  # local name -> "module" or "module.attr"
        self.consts: dict[str, ast.expr] = {}
        self.codecs: list[str] = []
        for n in tree.body:
            if isinstance(n, ast.Import):
                for a in n.names:
                    self.alias[a.asname or a.name] = a.name
            elif isinstance(n, ast.ImportFrom) and n.module:
                for a in n.names:
                    self.alias[a.asname or a.name] = f"{n.module}.{a.name}"
            elif (
                isinstance(n, ast.Assign)
                and len(n.targets) == 1
                and isinstance(n.targets[0], ast.Name)
            ):
                self.consts[n.targets[0].id] = n.value

    def qual(self, f: ast.expr) -> str:
        if isinstance(f, ast.Name):
            return self.alias.get(f.id, f.id)
        if isinstance(f, ast.Attribute):
            return f"{self.qual(f.value)}.{f.attr}"
        return "?"

    def value(self, n: ast.expr, depth: int = 0) -> object:
        if depth > 400:
            raise _NoEval("expression too deep")
        if isinstance(n, ast.Constant):
            return n.value
        if isinstance(n, ast.Name):
            if n.id == "__file__":
                return str(self.path.resolve())
            if n.id in self.consts:
                return self.value(self.consts[n.id], depth + 1)
            raise _NoEval(f"`{n.id}` is not a module-level constant")
        if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Add):
            return self.value(n.left, depth + 1) + self.value(n.right, depth + 1)
        if isinstance(n, ast.Attribute):
            q = self.qual(n)
            if q.startswith("lzma.") and q[5:] in _LZMA_CONST:
                return _LZMA_CONST[q[5:]]
            raise _NoEval(f"`{q}` is not a known constant")
        if isinstance(n, ast.List | ast.Tuple):
            return [self.value(e, depth + 1) for e in n.elts]
        if isinstance(n, ast.Dict):
            return {
                self.value(k, depth + 1): self.value(v, depth + 1)
                for k, v in zip(n.keys, n.values, strict=True)
                if k is not None
            }
        if isinstance(n, ast.Call):
            return self.call(n, depth)
        raise _NoEval(f"`{ast.unparse(n)[:60]}` is computed")

    def call(self, n: ast.Call, depth: int) -> object:
        args = [self.value(a, depth + 1) for a in n.args]
        kw = {k.arg: self.value(k.value, depth + 1) for k in n.keywords if k.arg}
        f = n.func
        if isinstance(f, ast.Attribute) and self.qual(f).split(".")[0] not in (
            "lzma",
            "zlib",
            "brotli",
            "gzip",
            "bz2",
            "base64",
            "codecs",
        ):
            obj = self.value(f.value, depth + 1)
            if isinstance(obj, str | bytes) and f.attr in (
                "replace",
                "encode",
                "decode",
                "strip",
                "rstrip",
                "lstrip",
                "join",
            ):
                return getattr(obj, f.attr)(*args)
            if isinstance(obj, _Opened) and f.attr == "read":
                return obj.read()
            raise _NoEval(f"`{ast.unparse(f)[:60]}` is not a known decoder")
        q = self.qual(f)
        mod, _, fn = q.rpartition(".")
        data = args[0] if args else None
        if isinstance(data, str) and q != "open":
            data = data.encode("latin-1")
        if (mod, fn) in _DECODERS:
            self.codecs.append(fn.replace("decode", "").replace("decodebytes", "b64"))
            return _DECODERS[(mod, fn)](data)
        if q == "lzma.decompress":
            self.codecs.append("lzma")
            lz = {k: v for k, v in kw.items() if k in ("format", "filters", "memlimit")}
            return _lzma(data, lz)
        if q == "zlib.decompress":
            self.codecs.append("zlib")
            return _zlib(data, args[1] if len(args) > 1 else kw.get("wbits", 15))
        if q == "brotli.decompress":
            self.codecs.append("brotli")
            return _brotli(data)
        if q == "gzip.decompress":
            self.codecs.append("gzip")
            return _gzip(data)
        if q == "bz2.decompress":
            self.codecs.append("bz2")
            return _bz2(data)
        if q == "compile":
            return args[0]
        if q in ("str", "bytes") and len(args) >= 1:
            return args[0] if len(args) == 1 else args[0].decode(*args[1:])
        if q == "open":
            return _Opened(self.path, args[0])
        if q == "codecs.decode" and len(args) >= 2:
            import codecs

            return codecs.decode(*args[:2])
        raise _NoEval(f"`{q}` is not a known decoder")


class _Opened:
    """`open(NAME)` of a file shipped next to the script (never outside its folder)."""

    def __init__(self, script: Path, name: object) -> None:
        if not isinstance(name, str):
            raise _NoEval("open() of a computed name")
        p = Path(name) if Path(name).is_absolute() else script.parent / name
        if p.is_symlink() or not p.is_file() or p.resolve().parent != script.parent.resolve():
            raise _NoEval(f"the exec'd file {Path(name).name} is not shipped next to the script")
        if p.stat().st_size > MAX_OUT:
            raise _NoEval(f"{p.name} is over {MAX_OUT >> 20} MiB")
        self.p = p

    def read(self) -> str:
        return self.p.read_text(encoding="utf-8", errors="replace")


def _execs(tree: ast.Module) -> list[ast.Call]:
    return [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Call)
        and isinstance(n.func, ast.Name)
        and n.func.id == "exec"
        and n.args
    ]


def units(path: str | Path) -> Unpacked:
    """The script and the code it exec's, decoded without running it (see the module doc).
    Raises ValueError when the script itself does not parse."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: not a regular file; give the submission's script")
    if path.stat().st_size > MAX_OUT:
        raise ValueError(f"{path}: over {MAX_OUT >> 20} MiB, not a script; give the script")
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        tree = parse(text, str(path))
    except SyntaxError as e:
        raise ValueError(f"{path}: not valid Python ({e.msg}, line {e.lineno})") from e
    out = Unpacked()
    _walk(Unit(path.name, text, tree), path, out, 0)
    return out


def _walk(unit: Unit, path: Path, out: Unpacked, depth: int) -> None:
    out.units.append(unit)
    for call in _execs(unit.tree):
        ev = _Evaluator(unit.tree, path)
        try:
            if depth >= MAX_DEPTH:
                raise _NoEval(f"more than {MAX_DEPTH} nested wrappers")
            code = ev.value(call.args[0])
            if isinstance(code, bytes):
                code = code.decode("utf-8", errors="replace")
            if not isinstance(code, str):
                raise _NoEval("the exec'd value is not source text")
            via = "+".join(reversed(ev.codecs)) or "open"
            name = f"{unit.name}:{call.lineno}<{via}>"
            try:
                tree = parse(code, name)
            except SyntaxError as e:
                raise _NoEval(f"decoded, but not valid Python ({e.msg}, line {e.lineno})") from e
        except (
            _NoEval,
            ValueError,
            TypeError,
            LookupError,
            lzma.LZMAError,
            zlib.error,
            OSError,
        ) as e:
            out.warnings.append((unit.name, call.lineno, f"exec not decoded: {e}"))
            continue
        except Exception as e:  # a codec's own error type (brotli.error): still only a warning
            out.warnings.append((unit.name, call.lineno, f"exec not decoded: {type(e).__name__}"))
            continue
        _walk(Unit(name, code, tree), path, out, depth + 1)
