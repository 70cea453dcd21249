"""Code bytes of the bundled `train_gpt.py` (issue 22): forms per preset, minifier options and
payload literals, as markdown tables for docs/benchmarks.md.

    PYTHONPATH=src python benchmarks/bundle_size.py [--presets cpu-tiny,pr1493,pr1550]

1. Per preset: every form of `pgolf.lab.bundle.forms` (`brotli` is the form shipped before
   issue 22: the whole stripped core, Brotli-11, base85; `packed` the one shipped after it).
2. On the last preset's specialized modules: the python-minifier option sets (each row changes
   one option of `pack.MINIFY`), measured as the packed file.
3. The same payload under each codec and literal of `pack` (the smallest is what ships).
4. With `--where N`: where the last preset's compressed payload is. Each module, and the N
   largest top-level statements (classes also per method), cost what removing it alone from the
   minified payload saves under Brotli-11; then two upper bounds: every string literal of 13+
   characters emptied, every `raise` statement's message dropped.
"""

from __future__ import annotations

import argparse
import ast
import re

import brotli

from pgolf import config as C
from pgolf.lab import bundle
from pgolf.lab.bundle import pack


def _payload(loader_and_mods: str, **options) -> bytes:
    loader, *mods = loader_and_mods.split("\0")
    keep = pack.spelled([loader, *(m.split("\1", 1)[1] for m in mods)])
    out = [loader]
    for m in mods:
        name, src = m.split("\1", 1)
        out.append(f"{name}\1{pack.minify(src, keep, **options)}")
    return "\0".join(out).encode()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", default="cpu-tiny,pr1493,pr1550")
    ap.add_argument("--where", type=int, default=0, help="top N statements of the last preset")
    args = ap.parse_args()
    presets = args.presets.split(",")
    print("| preset | raw | stripped | brotli+base85 (before) | special | packed (after) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for p in presets:
        f = bundle.forms(C.load(p, [], environ={}))
        row = [f"{len(f[k]):,}" for k in ("raw", "stripped", "brotli", "special", "packed")]
        print(f"| {p} | " + " | ".join(row) + " |")
    cfg = C.load(presets[-1], [], environ={})
    special, _, rep = bundle.specialized(cfg)
    head = len(bundle.header(cfg).encode())
    print(f"\n{presets[-1]}: {len(rep['folded'])} folds, left out {', '.join(rep['left_out'])}")
    print("\n| minifier options (vs pack.MINIFY) | packed bytes |")
    print("| --- | ---: |")
    variants = {
        "pack.MINIFY": {},
        "hoist_literals=True": {"hoist_literals": True},
        "remove_asserts=False": {"remove_asserts": False},
        "rename_locals=False": {"rename_locals": False},
        "rename_globals=False": {"rename_globals": False},
        "constant_folding=False": {"constant_folding": False},
        "remove_literal_statements=False": {"remove_literal_statements": False},
    }
    payload = None
    for name, opts in variants.items():
        data = _payload(special, **opts)
        payload = data if not opts else payload
        print(f"| {name} | {head + len(pack.wrap(data, 'brotli', 'latin1')):,} |")
    unmin = special.encode()
    print(f"| not minified | {head + len(pack.wrap(unmin, 'brotli', 'latin1')):,} |")
    print("\n| codec | latin-1 literal | base85 |")
    print("| --- | ---: | ---: |")
    for codec in pack.CODECS:
        cells = [f"{head + len(pack.wrap(payload, codec, lit)):,}" for lit in pack.LITERALS]
        print(f"| {codec} | " + " | ".join(cells) + " |")
    if args.where:
        where(payload.decode(), args.where)


def _br(text: str) -> int:
    return len(brotli.compress(text.encode(), quality=11))


def where(payload: str, top: int) -> None:
    """Section 4 of the module docstring, on the packed payload (loader NUL modules)."""
    parts = payload.split("\0")
    total = _br(payload)
    print(f"\npayload: {len(payload):,} characters, {total:,} B Brotli-11")
    print("\n| module | chars | B saved without it |\n| --- | ---: | ---: |")
    rows, stmts = [], []
    for i, part in enumerate(parts):
        name = part.split("\1", 1)[0] if i else "(loader)"
        rows.append((total - _br("\0".join(parts[:i] + parts[i + 1 :])), len(part), name))
        if not i:
            continue
        src = part.split("\1", 1)[1]
        lines = src.split("\n")

        def cut(a: int, b: int, i=i, name=name, lines=lines) -> int:
            ps = list(parts)
            ps[i] = name + "\1" + "\n".join(lines[: a - 1] + lines[b:])
            return total - _br("\0".join(ps))

        for s in ast.parse(src).body:
            label = getattr(s, "name", None) or ast.unparse(s)[:30]
            saved = cut(s.lineno, s.end_lineno)
            stmts.append((saved, f"{name}.{label}"))
            if isinstance(s, ast.ClassDef) and saved > 300:
                for f in s.body:
                    if isinstance(f, ast.FunctionDef) and f.lineno > s.lineno:
                        stmts.append((cut(f.lineno, f.end_lineno), f"{name}.{s.name}.{f.name}"))
    for saved, n, name in sorted(rows, reverse=True):
        print(f"| {name} | {n:,} | {saved:,} |")
    print("\n| statement (minified names) | B saved without it |\n| --- | ---: |")
    for saved, name in sorted(stmts, reverse=True)[:top]:
        print(f"| {name} | {saved:,} |")
    strings = re.sub(r"f?(['\"])(?:(?!\1)[^\\\n]|\\.){12,}\1", "''", payload)
    raises = re.sub(r"raise \w+\(f?(['\"])(?:(?!\1)[^\\\n]|\\.)*\1[^\n;]*", "raise F", payload)
    print(
        f"\nupper bounds: strings of 13+ characters emptied saves {total - _br(strings):,} B; "
        f"every raise's message dropped saves {total - _br(raises):,} B"
    )


if __name__ == "__main__":
    main()
