"""Drop the dead branches a fold leaves (step 2 of `specialize`)."""

from __future__ import annotations

import ast

from pgolf.lab.bundle.names import _scope_nodes

# ----------------------------------------------------------------------------------------------
# Dead branches


class Simplify(ast.NodeTransformer):
    """Keep the live branch of constant conditions; drop code after a jump (module docstring)."""

    def _block(self, body: list[ast.stmt]) -> list[ast.stmt]:
        out: list[ast.stmt] = []
        for s in body:
            r = self.visit(s)
            new = r if isinstance(r, list) else [] if r is None else [r]
            out.extend(new)
            if new and isinstance(new[-1], ast.Return | ast.Raise | ast.Continue | ast.Break):
                break
        return out

    def generic_visit(self, node):
        for name, value in ast.iter_fields(node):
            if isinstance(value, list) and value and isinstance(value[0], ast.stmt):
                new = self._block(value)
                if not new and name in ("body", "finalbody") or (not new and name == "orelse"):
                    new = [ast.Pass()] if name != "orelse" else []
                if name == "body" and not new:
                    new = [ast.Pass()]
                setattr(node, name, new)
            elif isinstance(value, list):
                setattr(node, name, [self.visit(v) if isinstance(v, ast.AST) else v for v in value])
            elif isinstance(value, ast.AST):
                setattr(node, name, self.visit(value))
        return node

    def visit_If(self, node: ast.If):
        self.generic_visit(node)
        if isinstance(node.test, ast.Constant) and not _has_yield(node):
            live = node.body if node.test.value else node.orelse
            return [s for s in live if not isinstance(s, ast.Pass)] or []
        return node

    def visit_While(self, node: ast.While):
        self.generic_visit(node)
        if isinstance(node.test, ast.Constant) and not node.test.value and not _has_yield(node):
            return node.orelse
        return node

    def visit_IfExp(self, node: ast.IfExp) -> ast.expr:
        self.generic_visit(node)
        if isinstance(node.test, ast.Constant):
            return node.body if node.test.value else node.orelse
        return node

    def visit_Assert(self, node: ast.Assert):
        if isinstance(node.test, ast.Constant) and node.test.value:
            return None
        return node


def _has_yield(node: ast.AST) -> bool:
    """A yield/await in this scope: dropping it would change what the function is."""
    return any(
        isinstance(n, ast.Yield | ast.YieldFrom | ast.Await)
        for n in _scope_nodes([node] if isinstance(node, ast.stmt) else [])
    )
