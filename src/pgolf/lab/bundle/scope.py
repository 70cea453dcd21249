"""The frozen config's shape and the config type of an expression in one scope (the specializer's
typing; see `specialize`)."""

from __future__ import annotations

import ast
import dataclasses
import importlib
from dataclasses import dataclass, field
from typing import Any

from pgolf import config as C
from pgolf.lab.bundle.names import _bindings
from pgolf.lab.bundle.reach import _module_ref

_RUN = "run"  # the type tag of a RunConfig value; a section is ("sec", name), a field ("fld", s, f)
# a row of a core table keyed by a str field is ("row", s, f, (module, table)), an attribute of
# that row ("entry", s, f, (module, table), attr); a literal every read sees is ("const", value)
_SCALAR = bool | int | float | str | type(None)
_MUTATORS = {"update", "pop", "popitem", "setdefault", "clear", "__setitem__", "__delitem__"}


# ----------------------------------------------------------------------------------------------
# The config's shape


@dataclass
class Shape:
    """What the folder knows about the frozen config."""

    cfg: C.RunConfig
    sections: dict[str, set[str]]  # section -> field names
    classes: dict[str, str | None]  # class name -> section (None: RunConfig)
    never: set[tuple[str, str]]  # (section, field) never folded
    mutable: set[str] = field(default_factory=set)  # table names some core code stores into
    aliases: dict[str, str] = field(default_factory=dict)  # this module's `X = _M["x"]`

    @classmethod
    def of(cls, cfg: C.RunConfig, never: set[tuple[str, str]]) -> Shape:
        sections, classes = {}, {type(cfg).__name__: None}
        for f in dataclasses.fields(cfg):
            sub = getattr(cfg, f.name)
            if dataclasses.is_dataclass(sub):
                sections[f.name] = {g.name for g in dataclasses.fields(sub)}
                classes[type(sub).__name__] = f.name
        return cls(cfg, sections, classes, set(never))

    def value(self, section: str, name: str) -> Any:
        return getattr(getattr(self.cfg, section), name)

    def table_ref(self, node: ast.expr) -> tuple[str, str] | None:
        """(module, name) when `node` is a dict table of a core module (`M.MODES` with `M =
        _M["modes"]`, or `_M["modes"].MODES`) that no core code stores into; the table's
        value is read from the installed core (`pgolf.<module>`, the source being bundled)."""
        if not isinstance(node, ast.Attribute) or node.attr in self.mutable:
            return None
        base = node.value
        m = self.aliases.get(base.id) if isinstance(base, ast.Name) else _module_ref(base)
        return (m, node.attr) if m and isinstance(self.table((m, node.attr)), dict) else None

    @staticmethod
    def table(ref: tuple[str, str]) -> Any:
        try:
            return getattr(importlib.import_module(f"pgolf.{ref[0]}"), ref[1], None)
        except ImportError:
            return None

    def entry(self, key: tuple) -> Any:
        """The frozen value of an ("entry", ...) tag: the attribute of the frozen key's row."""
        _, section, name, ref, attr = key
        return getattr(self.table(ref)[self.value(section, name)], attr, None)

    @staticmethod
    def mutated(trees: list[ast.Module]) -> set[str]:
        """Names of tables some code stores into (`T[k] = v`, `X.T[k] = v`, `T.update(...)`)."""
        out: set[str] = set()
        name = lambda n: n.attr if isinstance(n, ast.Attribute) else getattr(n, "id", None)  # noqa: E731
        for tree in trees:
            for n in ast.walk(tree):
                if isinstance(n, ast.Subscript) and not isinstance(n.ctx, ast.Load):
                    out.add(name(n.value))
                elif isinstance(n, ast.Attribute) and n.attr in _MUTATORS:
                    out.add(name(n.value))
        return out - {None}

    def switch(self, section: str, name: str, op: str) -> bool:
        """May a read of section.name be folded under `op` (FOLD_OPS, or an order: <, >, ...)?
        bool and str fields always; an int or tuple field only while it is *off* (0, a negative
        sentinel, empty), as a condition or against a constant, so the code it switches on goes
        and an override between two "on" values (VE_DIM=64 for 44) still runs."""
        if (section, name) in self.never:
            return False
        v = self.value(section, name)
        if isinstance(v, bool | str):
            return op in C.FOLD_OPS
        if isinstance(v, int) and v <= 0:
            return True
        return isinstance(v, tuple) and not v and op == "truth"

    def annotation(self, node: ast.expr | None) -> Any:
        """The type tag of an annotation naming a config class (`C.RunConfig`, `ModelConfig`,
        `RunConfig | None`, or the same as a string), else None."""
        if node is None:
            return None
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            try:
                node = ast.parse(node.value, mode="eval").body
            except SyntaxError:
                return None
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
            left, right = self.annotation(node.left), self.annotation(node.right)
            none = lambda n: isinstance(n, ast.Constant) and n.value is None  # noqa: E731
            return left if none(node.right) else right if none(node.left) else None
        name = node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", None)
        if name not in self.classes:
            return None
        section = self.classes[name]
        return _RUN if section is None else ("sec", section)


# ----------------------------------------------------------------------------------------------
# Scopes and the type of an expression


def _is_replace(call: ast.expr) -> bool:
    f = call.func if isinstance(call, ast.Call) else None
    return (isinstance(f, ast.Name) and f.id == "replace") or (
        isinstance(f, ast.Attribute) and f.attr == "replace" and isinstance(f.value, ast.Name)
    )


class Types:
    """Type tags of expressions in one scope: names (`env`) and `self.attr` (`attrs`)."""

    def __init__(self, shape: Shape, env: dict[str, Any], attrs: dict[str, Any], me: str | None):
        self.shape, self.env, self.attrs, self.me = shape, env, attrs, me

    def of(self, node: ast.expr | None) -> Any:
        if isinstance(node, ast.Name):
            return self.env.get(node.id)
        if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load):
            key, ref = self.of(node.slice), self.shape.table_ref(node.value)
            if ref and isinstance(key, tuple) and key[0] == "fld":
                if self.shape.value(key[1], key[2]) in self.shape.table(ref):
                    return ("row", key[1], key[2], ref)
            return None
        if isinstance(node, ast.Attribute):
            if self.me and isinstance(node.value, ast.Name) and node.value.id == self.me:
                if node.value.id not in self.env and node.attr in self.attrs:
                    return self.attrs[node.attr]
            base = self.of(node.value)
            if isinstance(base, tuple) and base[0] == "row":
                return ("entry", *base[1:], node.attr)
            if base == _RUN and node.attr in self.shape.sections:
                return ("sec", node.attr)
            if isinstance(base, tuple) and base[0] == "sec":
                if node.attr in self.shape.sections[base[1]]:
                    return ("fld", base[1], node.attr)
            return None
        if isinstance(node, ast.Call) and _is_replace(node) and node.args:
            t = self.of(node.args[0])
            return t if t == _RUN or (isinstance(t, tuple) and t[0] == "sec") else None
        return None


def _scope_env(
    shape: Shape, outer: dict[str, Any], params: dict[str, Any], body: list[ast.stmt], attrs, me
) -> dict[str, Any]:
    """The typed names of a scope: annotated parameters, and names every binding of which has one
    type (a field alias, or a literal constant, only when bound once and not a parameter); free
    names keep the outer type."""
    binds = _bindings(body)
    env = {k: v for k, v in outer.items() if k not in binds and k not in params}
    env.update({k: v for k, v in params.items() if v is not None})
    for _ in range(3):  # a binding may use another (cfg = replace(cfg, ...)); reach a fixpoint
        types = Types(shape, env, attrs, me)
        new = {k: v for k, v in params.items() if v is not None}
        new.update({k: v for k, v in outer.items() if k not in binds and k not in params})
        for name, values in binds.items():
            tags = {repr(types.of(v)) if v is not None else "None" for v in values}
            if name in params:  # a parameter keeps its type only if every rebinding has it
                own = params[name]
                if own is not None and tags <= {repr(own)}:
                    new[name] = own
                else:
                    new.pop(name, None)
                continue
            if len(tags) != 1 or None in values:
                continue
            t = types.of(values[0])
            if t is None and isinstance(values[0], ast.Constant) and len(values) == 1:
                t = ("const", values[0].value)  # bound once to a literal: every read sees it
            if t is None or (t[0] in ("fld", "const") and len(values) != 1):
                continue
            new[name] = t
        if new == env:
            break
        env = new
    return env


_NO = object()


def _const(node: ast.expr) -> Any:
    """The value of a literal (constants and tuples/lists/sets of them), else _NO."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        vals = [_const(e) for e in node.elts]
        return _NO if any(v is _NO for v in vals) else tuple(vals)
    return _NO
