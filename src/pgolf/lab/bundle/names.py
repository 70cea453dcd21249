"""The names a scope binds (shared by the specializer's typing and its reachability)."""

from __future__ import annotations

import ast


def _scope_nodes(body: list[ast.stmt]):
    """Every node of `body` in this scope (nested functions, classes, lambdas and comprehensions
    are yielded but not entered)."""
    stack = list(reversed(body))
    while stack:
        node = stack.pop()
        yield node
        if isinstance(
            node,
            ast.FunctionDef
            | ast.AsyncFunctionDef
            | ast.ClassDef
            | ast.Lambda
            | ast.ListComp
            | ast.SetComp
            | ast.DictComp
            | ast.GeneratorExp,
        ):
            continue
        stack.extend(reversed(list(ast.iter_child_nodes(node))))


def _bindings(body: list[ast.stmt]) -> dict[str, list[ast.expr | None]]:
    """name -> the values bound to it in this scope (None: a binding whose value is unknown)."""
    out: dict[str, list[ast.expr | None]] = {}

    def bind(target: ast.expr, value: ast.expr | None) -> None:
        if isinstance(target, ast.Name):
            out.setdefault(target.id, []).append(value)
        elif isinstance(target, ast.Tuple | ast.List):
            vals = value.elts if isinstance(value, ast.Tuple | ast.List) else None
            if vals is not None and len(vals) != len(target.elts):
                vals = None
            for i, t in enumerate(target.elts):
                bind(t, vals[i] if vals is not None else None)
        elif isinstance(target, ast.Starred):
            bind(target.value, None)

    for node in _scope_nodes(body):
        if isinstance(node, ast.Assign):
            for t in node.targets:
                bind(t, node.value)
        elif isinstance(node, ast.AnnAssign | ast.NamedExpr):
            bind(node.target, node.value)
        elif isinstance(node, ast.AugAssign | ast.For | ast.AsyncFor):
            bind(node.target, None)
        elif isinstance(node, ast.withitem) and node.optional_vars is not None:
            bind(node.optional_vars, None)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            out.setdefault(node.name, []).append(None)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            for a in node.names:
                out.setdefault((a.asname or a.name).split(".")[0], []).append(None)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            out.setdefault(node.name, []).append(None)
        elif isinstance(node, ast.Global | ast.Nonlocal):
            for n in node.names:
                out.setdefault(n, []).append(None)
        elif isinstance(node, ast.Delete):
            for t in node.targets:
                bind(t, None)
        if isinstance(node, ast.ListComp | ast.SetComp | ast.DictComp | ast.GeneratorExp):
            for n in ast.walk(node):  # `:=` in a comprehension binds in this scope
                if isinstance(n, ast.NamedExpr):
                    bind(n.target, None)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            for n in ast.walk(node):  # a nested `nonlocal x` may rebind this scope's x
                if isinstance(n, ast.Nonlocal):
                    for name in n.names:
                        out.setdefault(name, []).append(None)
    return out


def local_loads(stmt: ast.AST) -> set[int]:
    """ids of the `Name` loads in `stmt` that read a function's own local (a parameter or a name
    the function binds, not declared `global`): `def f(pack_bits): g(pack_bits)` does not use
    the module's `pack_bits`. Decorators and defaults are read in the enclosing scope."""
    out: set[int] = set()

    def visit(node: ast.AST, local: frozenset[str]) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            a = node.args
            params = {
                p.arg for p in [*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg] if p
            }
            body = node.body if isinstance(node.body, list) else [ast.Expr(node.body)]
            glob = {n for x in ast.walk(node) if isinstance(x, ast.Global) for n in x.names}
            inner = frozenset((local | params | set(_bindings(body))) - glob)
            for d in [*getattr(node, "decorator_list", []), *a.defaults, *a.kw_defaults]:
                if d is not None:
                    visit(d, local)
            if getattr(node, "returns", None) is not None:
                visit(node.returns, local)
            for s in body:
                visit(s, inner)
            return
        if isinstance(node, ast.ClassDef):  # a class body's names are not its methods' locals
            for c in ast.iter_child_nodes(node):
                visit(c, frozenset())
            return
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id in local:
            out.add(id(node))
        for c in ast.iter_child_nodes(node):
            visit(c, local)

    visit(stmt, frozenset())
    return out
