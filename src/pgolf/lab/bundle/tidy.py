"""After pruning: imports and local stores nothing reads any more (the last step of `specialize`).

- A module-level `import`/`from ... import` of the standard library whose names nothing uses goes;
  of another package, the names nothing uses go from a `from ... import` (the package is still
  imported, so whatever importing it does still happens).
- Inside a function, `x = <value>` goes when nothing in the function (nested scopes included)
  reads `x`, `x` is not declared `global`/`nonlocal`, and the value only reads: a constant, a
  name, an attribute, a subscript or a tuple of those (`make_train_loader = _M["data"].
  make_train_loader` left behind by a folded branch, `tilted = False`).
"""

from __future__ import annotations

import ast
import sys


def tidy(body: list[ast.stmt]) -> list[ast.stmt]:
    """`body` (a module's statements) without unused imports and dead local stores."""
    for s in body:
        for fn in ast.walk(s):
            if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                _dead_stores(fn)
    used = {
        n.id
        for s in body
        for n in ast.walk(s)
        if isinstance(n, ast.Name) and not isinstance(s, ast.Import | ast.ImportFrom)
    }
    out = []
    for s in body:
        if isinstance(s, ast.Import | ast.ImportFrom) and not (
            isinstance(s, ast.ImportFrom) and s.module == "__future__"
        ):
            root = (s.module if isinstance(s, ast.ImportFrom) else s.names[0].name) or ""
            names = [a for a in s.names if (a.asname or a.name).split(".")[0] in used]
            if root.split(".")[0] in sys.stdlib_module_names:
                if not names:
                    continue
                s.names = names
            elif isinstance(s, ast.ImportFrom) and s.module:
                s.names = names or s.names[:1]
        out.append(s)
    return out


def _reads_only(node: ast.expr) -> bool:
    if isinstance(node, ast.Constant | ast.Name):
        return True
    if isinstance(node, ast.Attribute):
        return _reads_only(node.value)
    if isinstance(node, ast.Subscript):
        return _reads_only(node.value) and _reads_only(node.slice)
    return isinstance(node, ast.Tuple) and all(_reads_only(e) for e in node.elts)


def _dead_stores(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
    loads = {
        n.id for n in ast.walk(fn) if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Store)
    }
    loads |= {x for n in ast.walk(fn) if isinstance(n, ast.Global | ast.Nonlocal) for x in n.names}

    def dead(s: ast.stmt) -> bool:
        if not isinstance(s, ast.Assign) or not _reads_only(s.value):
            return False
        targets = [n for t in s.targets for n in ast.walk(t)]
        return all(isinstance(n, ast.Name | ast.Tuple | ast.Store) for n in targets) and not any(
            isinstance(n, ast.Name) and n.id in loads for n in targets
        )

    for node in ast.walk(fn):
        for name in ("body", "orelse", "finalbody"):
            block = getattr(node, name, None)
            if isinstance(block, list) and block and isinstance(block[0], ast.stmt):
                kept = [s for s in block if not dead(s)]
                setattr(node, name, kept or ([ast.Pass()] if name == "body" else []))
