"""Specialize the core for one frozen config before it is packed (issue 22).

Works on the import-rewritten sources of the core (`assemble.rewrite_imports`: every pgolf import
is a lookup in the bundle's module table `_M`), from the AST, on whatever the core's text is:

1. Fold. A config *switch* (a bool or str field, or an int or tuple field used as a condition) read
   through a value whose type is known — a parameter annotated with a config class (`RunConfig`,
   `ModelConfig`, ...), a name bound only to such a value or to `replace(...)` of it, `x.model` of a
   `RunConfig`, `self.attr` set only from one — is replaced by its frozen value where it decides
   something: the test of an `if`/ternary/`while`/`assert`, an operand of `not`/`and`/`or` there,
   or one side of a comparison with constants. Each fold is recorded as a predicate
   (`section.field`, op, argument, value; `config.FOLD_OPS`) that `pipeline.bundle_main` checks
   (`config.refuse_folded`) after the environment is applied and before any folded code runs, so an
   override that needs left-out code is refused by name. Numeric tunables (learning rates, step
   counts, ...) are never folded; neither are the per-run fields (`assemble.PER_RUN`), fields a
   reachable `replace(...)` sets at run time, nor anything in the functions that run before the
   check (the entry's statements up to `refuse_folded`, and what they call).
   A parameter every kept call passes the same way (one config value, or one constant; a
   default counts) is typed or folded like one (no run-time check needed for a constant): calls
   of a module-level function by name, and `x.name(...)` of a method `name` that one kept class
   alone defines, no string spells, and nothing uses other than by calling it on an instance; a
   `**kw` no caller fills is known empty, so calls that pass it on are still seen.
2. Simplify: an `if`/ternary/`while` on a constant keeps its live branch, `and`/`or`/`not` of
   constants reduce, `assert True` goes, statements after `return`/`raise`/`continue`/`break` go.
3. Prune: from the entry point, module-level functions, classes, assignments and imports that no
   kept code reaches are dropped (a module imported at module level by a kept module keeps its
   module-level statements, as Python would run them); a module nothing reaches is left out.

Never folded or dropped: class members (methods are kept whole), module-level statements that are
not plain definitions, assignments whose value calls something (side effects), and definitions a
module-level decorator of the same module may register. `specialize` returns the sources, the
folds and what was pruned; `tests/test_bundle.py` checks a specialized bundle against `pgolf run`.
"""

from __future__ import annotations

import ast
import dataclasses
import sys
from dataclasses import dataclass, field
from typing import Any

from pgolf import config as C

_CMP = {
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
    ast.Eq: "==",
    ast.NotEq: "!=",
    ast.In: "in",
    ast.NotIn: "not in",
    ast.Is: "is",
    ast.IsNot: "is not",
}
_RUN = "run"  # the type tag of a RunConfig value; a section is ("sec", name), a field ("fld", s, f)


@dataclass
class Result:
    sources: dict[str, str]  # module -> specialized source (modules left out are absent)
    folded: list[tuple[str, str, Any, bool]]  # (section.field, op, arg, value): config.FOLD_OPS
    dropped: dict[str, list[str]] = field(default_factory=dict)  # module -> names pruned
    left_out: list[str] = field(default_factory=list)  # modules nothing reaches
    seeds: dict = field(
        default_factory=dict
    )  # (module, function) -> {param: what every call passes}


# ----------------------------------------------------------------------------------------------
# The config's shape


@dataclass
class Shape:
    """What the folder knows about the frozen config."""

    cfg: C.RunConfig
    sections: dict[str, set[str]]  # section -> field names
    classes: dict[str, str | None]  # class name -> section (None: RunConfig)
    never: set[tuple[str, str]]  # (section, field) never folded

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
        if isinstance(node, ast.Attribute):
            if self.me and isinstance(node.value, ast.Name) and node.value.id == self.me:
                if node.value.id not in self.env and node.attr in self.attrs:
                    return self.attrs[node.attr]
            base = self.of(node.value)
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
    type (a field alias only when bound once, not a parameter); free names keep the outer type."""
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
            if t is None or (t[0] in ("fld", "const") and len(values) != 1):
                continue
            new[name] = t
        if new == env:
            break
        env = new
    return env


# ----------------------------------------------------------------------------------------------
# Folding


class Folder(ast.NodeTransformer):
    """Fold the config switches of one module (see the module docstring)."""

    def __init__(
        self,
        shape: Shape,
        class_attrs: dict[str, dict[str, Any]],
        skip: set[str],
        module: Module | None = None,
        seeds: dict[tuple[str, str], dict[str, Any]] | None = None,
        record_only: bool = False,
    ):
        self.shape, self.class_attrs, self.skip = shape, class_attrs, skip
        self.module, self.seeds, self.record_only = module, seeds or {}, record_only
        self.types = Types(shape, {}, {}, None)
        self.folded: list[tuple[str, str, Any, bool]] = []
        self.active = not record_only
        self.top: ast.stmt | None = None  # the module-level statement being visited
        self.local: dict[str, str] = {}  # function-local module aliases (`q = _M["quant"]`)
        self.calls: list[tuple[ast.stmt, tuple[str, str], list, dict]] = []  # call sites
        self.uses: list[tuple[ast.stmt, tuple[str, str]]] = []  # other references to a def
        self.method_calls: list[tuple[ast.stmt, str, list, dict]] = []  # `x.name(...)` sites
        self.method_uses: list[tuple[ast.stmt, str]] = []  # any other `x.name`

    # -- scopes --------------------------------------------------------------------------------

    def visit_Module(self, node: ast.Module) -> ast.Module:
        for i, stmt in enumerate(node.body):
            self.top = stmt
            if _from_import(stmt):
                continue  # `f = _M["x"].f`: a binding, not a use
            self.local = {}
            for n in ast.walk(stmt):
                if isinstance(n, ast.Assign) and (ref := _from_import(n)):
                    self.local |= {t.id: ref for t in n.targets if isinstance(t, ast.Name)}
            skip = isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and (
                stmt.name in self.skip
            )
            self.active = not (skip or self.record_only)
            node.body[i] = self.visit(stmt)
        return node

    # -- call sites (for the parameters every caller passes the same way) ---------------------

    def _callee(self, node: ast.expr) -> tuple[str, str] | None:
        mod = self.module
        if mod is None:
            return None
        if isinstance(node, ast.Name):
            if node.id in self.types.env:
                return None
            if isinstance(ref := self.local.get(node.id), tuple):
                return ref  # a function-local `from pgolf.x import f`
            if node.id in mod.defs:
                stmt = mod.tree.body[mod.defs[node.id][0]]
                if isinstance(stmt, ast.Assign) and isinstance(stmt.value, ast.Attribute):
                    if (m := _module_ref(stmt.value.value)) is not None:
                        return (m, stmt.value.attr)  # `f = _M["x"].f` (a from-import)
                return (mod.name, node.id)
            return None
        if isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name):
                m = self.local.get(node.value.id) or mod.aliases.get(node.value.id)
                return (m, node.attr) if isinstance(m, str) else None
            if (m := _module_ref(node.value)) is not None:
                return (m, node.attr)
        return None

    def _tag(self, node: ast.expr) -> Any:
        if (c := _const(node)) is not _NO:
            return ("const", c)
        return self.types.of(node)

    def visit_Call(self, node: ast.Call) -> ast.expr:
        callee = self._callee(node.func)
        if callee is not None and self.top is not None:
            if any(isinstance(a, ast.Starred) for a in node.args) or any(
                k.arg is None and self._tag(k.value) != ("const", {}) for k in node.keywords
            ):  # `**kw` is known only when every caller leaves it empty (`_seeds`)
                self.uses.append((self.top, callee))
            else:
                args = [self._tag(a) for a in node.args]
                kws = {k.arg: self._tag(k.value) for k in node.keywords if k.arg is not None}
                self.calls.append((self.top, callee, args, kws))
            for field_name in ("args", "keywords"):
                setattr(node, field_name, [self.visit(x) for x in getattr(node, field_name)])
            return node
        if isinstance(node.func, ast.Attribute) and self.top is not None:  # `x.method(...)`
            name, base = node.func.attr, node.func.value
            unbound = (  # `Cls.method(obj, ...)`: the first argument would be `self`
                isinstance(base, ast.Name)
                and self.module is not None
                and (base.id in self.module.defs or base.id in self.module.aliases)
            ) or (isinstance(base, ast.Attribute) and _module_ref(base.value) is not None)
            if (
                unbound
                or any(isinstance(a, ast.Starred) for a in node.args)
                or any(k.arg is None and self._tag(k.value) != ("const", {}) for k in node.keywords)
            ):
                self.method_uses.append((self.top, name))
            else:
                args = [self._tag(a) for a in node.args]
                kws = {k.arg: self._tag(k.value) for k in node.keywords if k.arg is not None}
                self.method_calls.append((self.top, name, args, kws))
            node.func.value = self.visit(node.func.value)
            for field_name in ("args", "keywords"):
                setattr(node, field_name, [self.visit(x) for x in getattr(node, field_name)])
            return node
        return self.generic_visit(node)

    def visit_Assign(self, node: ast.Assign) -> ast.stmt:
        return node if _from_import(node) else self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> ast.expr:
        if isinstance(node.ctx, ast.Load) and (c := self._callee(node)) and self.top is not None:
            self.uses.append((self.top, c))
        return node

    def visit_Attribute(self, node: ast.Attribute) -> ast.expr:
        if self.top is not None:  # not a call's callee (visit_Call): a bound method may escape
            self.method_uses.append((self.top, node.attr))
        if isinstance(node.ctx, ast.Load) and self.top is not None:
            base = node.value
            if (isinstance(base, ast.Name) and base.id not in self.types.env) or _module_ref(base):
                if c := self._callee(node):
                    self.uses.append((self.top, c))
        return self.generic_visit(node)

    def visit_ClassDef(self, node: ast.ClassDef) -> ast.ClassDef:
        saved = self.types
        self.types = Types(self.shape, saved.env, self.class_attrs.get(node.name, {}), None)
        try:
            for i, stmt in enumerate(node.body):
                node.body[i] = self.visit(stmt)
            node.decorator_list = [self.visit(d) for d in node.decorator_list]
        finally:
            self.types = saved
        return node

    def visit_FunctionDef(self, node):
        a = node.args
        params = {
            p.arg: self.shape.annotation(p.annotation)
            for p in [*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg]
            if p is not None
        }
        if self.module is not None and self.top is node:  # a module-level function
            for k, v in self.seeds.get((self.module.name, node.name), {}).items():
                params[k] = params.get(k) or v
        elif (
            self.module is not None
            and isinstance(self.top, ast.ClassDef)
            and any(s is node for s in self.top.body)
        ):  # a method: seeded when every `x.name(...)` of the core agrees (`_seeds`)
            key = (self.module.name, f"{self.top.name}.{node.name}")
            for k, v in self.seeds.get(key, {}).items():
                params[k] = params.get(k) or v
        first = (a.posonlyargs + a.args)[:1]
        me = first[0].arg if first and self.types.attrs and first[0].arg == "self" else None
        for d in node.decorator_list:
            self.visit(d)
        attrs = self.types.attrs if me else {}
        saved = self.types
        env = _scope_env(self.shape, saved.env, params, node.body, attrs, me)
        self.types = Types(self.shape, env, attrs, me)
        try:
            node.body = [self.visit(s) for s in node.body]
        finally:
            self.types = saved
        return node

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Lambda(self, node: ast.Lambda) -> ast.Lambda:
        a = node.args
        shadow = {p.arg for p in [*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg] if p}
        return self._shadowed(node, shadow)

    def _comp(self, node):
        shadow: set[str] = set()
        for g in node.generators:
            shadow |= {n.id for n in ast.walk(g.target) if isinstance(n, ast.Name)}
        return self._shadowed(node, shadow)

    visit_ListComp = visit_SetComp = visit_DictComp = visit_GeneratorExp = _comp

    def _shadowed(self, node, names: set[str]):
        saved = self.types
        env = {k: v for k, v in saved.env.items() if k not in names}
        self.types = Types(self.shape, env, saved.attrs, None if saved.me in names else saved.me)
        try:
            self.generic_visit(node)
        finally:
            self.types = saved
        return node

    # -- folds ---------------------------------------------------------------------------------

    def _field(self, node: ast.expr) -> Any:
        """("fld", section, field) or ("const", value) when `node` is one, and folding is on."""
        t = self.types.of(node)
        ok = self.active and isinstance(t, tuple) and t[0] in ("fld", "const")
        return t if ok else None

    def _switch(self, key: Any, op: str) -> bool:
        return key[0] == "const" or self.shape.switch(key[1], key[2], op)

    def _fold(self, key: Any, op: str, arg: Any) -> ast.Constant:
        if key[0] == "const":  # every caller passes this value: no run-time check needed
            return ast.Constant(C.FOLD_OPS[op](key[1], arg))
        value = C.FOLD_OPS[op](self.shape.value(key[1], key[2]), arg)
        fact = (f"{key[1]}.{key[2]}", op, arg, value)
        if fact not in self.folded:
            self.folded.append(fact)
        return ast.Constant(value)

    def cond(self, node: ast.expr) -> ast.expr:
        """Visit `node` where only its truth matters."""
        if (key := self._field(node)) and self._switch(key, "truth"):
            return self._fold(key, "truth", None)
        if isinstance(node, ast.BoolOp):
            node.values = [self.cond(v) for v in node.values]
            return _bool_op(node, truth=True)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            node.operand = self.cond(node.operand)
            return _not(node)
        return self.visit(node)

    def visit_Compare(self, node: ast.Compare) -> ast.expr:
        self.generic_visit(node)
        if len(node.ops) != 1 or type(node.ops[0]) not in _CMP:
            return node
        key, arg = self._field(node.left), _const(node.comparators[0])
        op = _CMP.get(type(node.ops[0]))
        if key is None or arg is _NO or not self._switch(key, op):
            return node
        return self._fold(key, op, arg)

    def visit_If(self, node: ast.If):
        node.test = self.cond(node.test)
        node.body = [self.visit(s) for s in node.body]
        node.orelse = [self.visit(s) for s in node.orelse]
        return node

    visit_While = visit_If

    def visit_IfExp(self, node: ast.IfExp) -> ast.expr:
        node.test = self.cond(node.test)
        node.body, node.orelse = self.visit(node.body), self.visit(node.orelse)
        return node

    def visit_Assert(self, node: ast.Assert):
        node.test = self.cond(node.test)
        if node.msg is not None:
            node.msg = self.visit(node.msg)
        return node

    def visit_UnaryOp(self, node: ast.UnaryOp) -> ast.expr:
        if isinstance(node.op, ast.Not):
            node.operand = self.cond(node.operand)
            return _not(node)
        return self.generic_visit(node)

    def visit_BoolOp(self, node: ast.BoolOp) -> ast.expr:
        node.values = [self.visit(v) for v in node.values]
        return _bool_op(node, truth=False)


_NO = object()


def _const(node: ast.expr) -> Any:
    """The value of a literal (constants and tuples/lists/sets of them), else _NO."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        vals = [_const(e) for e in node.elts]
        return _NO if any(v is _NO for v in vals) else tuple(vals)
    return _NO


def _not(node: ast.UnaryOp) -> ast.expr:
    if isinstance(node.operand, ast.Constant):
        return ast.Constant(not node.operand.value)
    return node


def _bool_op(node: ast.BoolOp, truth: bool) -> ast.expr:
    """`and`/`or` with constant operands reduced (`truth`: only the result's truth matters)."""
    is_and = isinstance(node.op, ast.And)
    out: list[ast.expr] = []
    for i, v in enumerate(node.values):
        last = i == len(node.values) - 1
        if isinstance(v, ast.Constant):
            if bool(v.value) == is_and:  # neutral: True in `and`, False in `or`
                if not last or (truth and out):
                    continue
            else:  # absorbing: the result is decided here
                out.append(v)
                break
        out.append(v)
    if not out:
        return ast.Constant(is_and)
    if len(out) == 1:
        return out[0]
    node.values = out
    return node


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


# ----------------------------------------------------------------------------------------------
# Reachability


def _from_import(stmt: ast.AST) -> str | tuple[str, str] | None:
    """`x = _M["m"]` -> "m"; `f = _M["m"].f` -> ("m", "f"); else None."""
    if not isinstance(stmt, ast.Assign):
        return None
    v = stmt.value
    if isinstance(v, ast.Attribute) and (m := _module_ref(v.value)) is not None:
        return (m, v.attr)
    return _module_ref(v)


def _module_ref(node: ast.expr) -> str | None:
    """`_M["name"]` -> name."""
    if (
        isinstance(node, ast.Subscript)
        and isinstance(node.value, ast.Name)
        and node.value.id == "_M"
        and isinstance(node.slice, ast.Constant)
    ):
        return node.slice.value
    return None


def _defined(stmt: ast.stmt) -> list[str] | None:
    """Names a droppable module-level statement defines; None: a statement always kept."""
    if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return [stmt.name]
    if isinstance(stmt, ast.ImportFrom) and stmt.module == "__future__":
        return None
    if isinstance(stmt, ast.Import | ast.ImportFrom):
        return [(a.asname or a.name).split(".")[0] for a in stmt.names]
    targets = (
        stmt.targets
        if isinstance(stmt, ast.Assign)
        else [stmt.target]
        if isinstance(stmt, ast.AnnAssign) and stmt.value is not None
        else None
    )
    if targets is None or not all(isinstance(t, ast.Name) for t in targets):
        return None
    if any(isinstance(n, ast.Call) for n in ast.walk(stmt.value)):
        return None  # a call may have side effects
    return [t.id for t in targets]


class Module:
    """One core module's definitions and what each references."""

    def __init__(self, name: str, tree: ast.Module):
        self.name, self.tree = name, tree
        self.lazy_annotations = any(
            isinstance(s, ast.ImportFrom)
            and s.module == "__future__"
            and any(a.name == "annotations" for a in s.names)
            for s in tree.body
        )
        self.defs: dict[str, list[int]] = {}  # name -> indices of the statements defining it
        self.roots: list[int] = []  # statements always kept
        self.aliases: dict[str, str] = {}  # module-level name -> core module (`X = _M["x"]`)
        self.imports: set[str] = set()  # core modules its module-level statements import
        for i, stmt in enumerate(tree.body):
            names = _defined(stmt)
            if names is None:
                self.roots.append(i)
            else:
                for n in names:
                    self.defs.setdefault(n, []).append(i)
            for n in ast.walk(stmt) if not isinstance(stmt, ast.FunctionDef | ast.ClassDef) else []:
                if (m := _module_ref(n)) is not None:
                    self.imports.add(m)
            if isinstance(stmt, ast.Assign) and (m := _module_ref(stmt.value)) is not None:
                for t in stmt.targets:
                    if isinstance(t, ast.Name):
                        self.aliases[t.id] = m
        for i, stmt in enumerate(tree.body):  # a local decorator may register what it wraps
            for d in getattr(stmt, "decorator_list", []):
                if any(isinstance(n, ast.Name) and n.id in self.defs for n in ast.walk(d)):
                    self.roots.append(i)
        # class index -> {method index: name} of the methods kept only if something uses the name
        self.methods: dict[int, dict[int, str]] = {}
        for i, stmt in enumerate(tree.body):
            if isinstance(stmt, ast.ClassDef):
                inherited = self._inherited(stmt)
                if inherited is not None:
                    self.methods[i] = {
                        j: f.name
                        for j, f in enumerate(stmt.body)
                        if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
                        and not (f.name.startswith("__") and f.name.endswith("__"))
                        and f.name not in inherited
                        and not f.decorator_list
                    }

    def _inherited(self, cls: ast.ClassDef) -> set[str] | None:
        """Attribute names the class's bases outside this module define (a framework may call
        them: `forward`, `step`, ...), or None when a base cannot be resolved (keep every
        method). A base defined in this module adds its own inherited names."""
        out: set[str] = set(dir(object))
        if cls.keywords:
            return None
        for b in cls.bases:
            if isinstance(b, ast.Name) and b.id in self.defs:
                stmt = self.tree.body[self.defs[b.id][0]]
                sub = self._inherited(stmt) if isinstance(stmt, ast.ClassDef) else None
                if sub is None:
                    return None
                out |= sub
                continue
            obj = self._resolve(b)
            if obj is None:
                return None
            out |= set(dir(obj))
        return out

    def _resolve(self, node: ast.expr) -> Any:
        """The object an imported (non-core) dotted name stands for, or None."""
        import importlib

        parts: list[str] = []
        while isinstance(node, ast.Attribute):
            parts.insert(0, node.attr)
            node = node.value
        if not isinstance(node, ast.Name):
            return None
        for stmt in self.tree.body:
            if (
                isinstance(stmt, ast.Import | ast.ImportFrom)
                and getattr(stmt, "module", 0) != "__future__"
            ):
                for a in stmt.names:
                    if (a.asname or a.name.split(".")[0]) != node.id:
                        continue
                    if isinstance(stmt, ast.Import):
                        path = a.name if a.asname else a.name.split(".")[0]
                        base, rest = path, parts
                    else:
                        base, rest = stmt.module or "", [a.name, *parts]
                    try:
                        obj = importlib.import_module(base)
                        for r in rest:
                            try:
                                obj = getattr(obj, r)
                            except AttributeError:
                                obj = importlib.import_module(f"{obj.__name__}.{r}")
                        return obj
                    except Exception:  # noqa: BLE001 - unresolvable: keep every method
                        return None
        return None

    def shell(self, i: int) -> ast.stmt:
        """Statement `i` without its prunable methods (a class), else the statement."""
        stmt = self.tree.body[i]
        if i not in self.methods:
            return stmt
        body = [s for j, s in enumerate(stmt.body) if j not in self.methods[i]]
        return ast.ClassDef(
            name=stmt.name,
            bases=stmt.bases,
            keywords=stmt.keywords,
            body=body,
            decorator_list=stmt.decorator_list,
        )

    def refs(self, i: int | ast.AST) -> set[tuple[str, str | None]]:
        """(module, name) pairs statement `i` (an index, or any node) needs; name None: the whole
        module; module "@" names an attribute or string the code uses (a method name)."""
        stmt = self.shell(i) if isinstance(i, int) else i
        pairs = list(_code_nodes(stmt, self.lazy_annotations))
        local = {  # function-local `x = _M["m"]`
            t.id: m
            for n, _ in pairs
            if isinstance(n, ast.Assign) and (m := _module_ref(n.value)) is not None
            for t in n.targets
            if isinstance(t, ast.Name)
        }
        aliases = {**self.aliases, **local}
        out: set[tuple[str, str | None]] = set()
        for n, p in pairs:
            if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Store):
                if n.id in aliases:
                    if isinstance(p, ast.Attribute) and p.value is n:
                        out.add((aliases[n.id], p.attr))
                    else:
                        out.add((aliases[n.id], None))
                if n.id in self.defs:
                    out.add((self.name, n.id))
            elif isinstance(n, ast.Attribute):
                out.add(("@", n.attr))
            elif isinstance(n, ast.Constant) and isinstance(n.value, str) and len(n.value) < 64:
                out.add(("@", n.value))
            if (m := _module_ref(n)) is not None:
                if isinstance(p, ast.Attribute) and p.value is n:
                    out.add((m, p.attr))
                elif not (isinstance(p, ast.Assign) and p.value is n):
                    out.add((m, None))
                else:
                    out.add((m, "__module__"))
        return out


_ANNOTATIONS = {"annotation", "returns"}


def _code_nodes(node: ast.AST, lazy_annotations: bool = True):
    """(node, parent) for every node under `node` that runs: with `from __future__ import
    annotations` (`lazy_annotations`), annotations are never evaluated and are skipped."""
    stack: list[tuple[ast.AST, ast.AST | None]] = [(node, None)]
    while stack:
        n, parent = stack.pop()
        yield n, parent
        for name, value in ast.iter_fields(n):
            if lazy_annotations and name in _ANNOTATIONS:
                continue
            if isinstance(value, ast.AST):
                stack.append((value, n))
            elif isinstance(value, list):
                stack.extend((v, n) for v in value if isinstance(v, ast.AST))


def reach(
    mods: dict[str, Module], entry: tuple[str, str], start: set | None = None
) -> dict[str, set[int]]:
    """Statements kept per module, from `entry` (module, function) or from the references
    `start` (the entry's module still runs)."""
    kept: dict[str, set] = {m: set() for m in mods}
    live: set[str] = set()
    todo: list[tuple[str, str | None]] = [entry] if start is None else list(start)
    seen: set[tuple[str, str | None]] = set()

    def want_module(m: str) -> None:
        if m in live or m not in mods:
            return
        live.add(m)
        for i in mods[m].roots:
            keep(m, i)
        for dep in mods[m].imports:  # module-level imports run when the module runs
            want_module(dep)

    used: set[str] = set()  # attribute names and strings of kept code
    pending: dict[str, list[tuple[str, tuple[int, int]]]] = {}  # method name -> methods

    def keep(m: str, i: int | tuple[int, int]) -> None:
        if i in kept[m]:
            return
        kept[m].add(i)
        if isinstance(i, tuple):
            todo.extend(mods[m].refs(mods[m].tree.body[i[0]].body[i[1]]))
            return
        todo.extend(mods[m].refs(i))
        for j, name in mods[m].methods.get(i, {}).items():
            if name in used:
                keep(m, (i, j))
            else:
                pending.setdefault(name, []).append((m, (i, j)))

    want_module(entry[0])
    while todo:
        item = todo.pop()
        if item in seen:
            continue
        seen.add(item)
        m, name = item
        if m == "@":
            used.add(name)
            for mm, ij in pending.pop(name, []):
                keep(mm, ij)
            continue
        if m not in mods:
            continue
        want_module(m)
        if name is None:
            for idx in mods[m].defs.values():
                for i in idx:
                    keep(m, i)
        elif name in mods[m].defs:
            for i in mods[m].defs[name]:
                keep(m, i)
    return {m: kept[m] for m in live}


# ----------------------------------------------------------------------------------------------
# Run-time changes to the config, and the functions that run before the check


def _replaced_fields(trees: dict[str, ast.Module], kept, shape: Shape) -> set[tuple[str, str]]:
    """(section, field) a kept `replace(...)` or config-class call sets by keyword."""
    out: set[tuple[str, str]] = set()
    for m, tree in trees.items():
        for i in kept.get(m, ()):
            node = tree.body[i[0]].body[i[1]] if isinstance(i, tuple) else tree.body[i]
            for n in ast.walk(node):
                if not isinstance(n, ast.Call):
                    continue
                f = n.func
                fname = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
                if not (_is_replace(n) or fname in shape.classes):
                    continue
                for kw in n.keywords:
                    out |= {(s, kw.arg) for s, names in shape.sections.items() if kw.arg in names}
    return out


def _pre_check(mods: dict[str, Module], entry: tuple[str, str], check: str) -> set[str]:
    """`module.name` of the functions and classes (their methods may run too) the entry reaches up
    to its call to `check`: never folded."""
    m, name = entry
    fn = mods[m].tree.body[mods[m].defs[name][0]]
    stop = next(
        (
            i
            for i, s in enumerate(fn.body)
            if any(
                (isinstance(n, ast.Attribute) and n.attr == check)
                or (isinstance(n, ast.Name) and n.id == check)
                for n in ast.walk(s)
            )
        ),
        len(fn.body),
    )
    start = set().union(*(mods[m].refs(s) for s in fn.body[: stop + 1] if not _from_import(s)))
    kept = reach(mods, entry, start)
    out = {f"{m}.{name}"}
    for mod, idx in kept.items():
        for n, where in mods[mod].defs.items():
            stmt = mods[mod].tree.body[where[0]]
            if set(where) & idx and isinstance(stmt, ast.FunctionDef | ast.ClassDef):
                out.add(f"{mod}.{n}")
    return out


# ----------------------------------------------------------------------------------------------
# The whole pass


def _class_attrs(tree: ast.Module, shape: Shape, stores: dict[str, int]) -> dict[str, dict]:
    """class -> {attr: type tag} for `self.attr = <typed>` set only so inside the class (every
    `x.attr = ...` of that name in the core is one of them)."""
    out: dict[str, dict[str, Any]] = {}
    for cls in [s for s in tree.body if isinstance(s, ast.ClassDef)]:
        seen: dict[str, list[Any]] = {}
        for fn in [s for s in cls.body if isinstance(s, ast.FunctionDef)]:
            a = fn.args
            params = {p.arg: shape.annotation(p.annotation) for p in [*a.posonlyargs, *a.args]}
            first = (a.posonlyargs + a.args)[:1]
            if not first:
                continue
            me = first[0].arg
            types = Types(shape, _scope_env(shape, {}, params, fn.body, {}, None), {}, None)
            handled: set[int] = set()
            for n in _scope_nodes(fn.body):
                for t in n.targets if isinstance(n, ast.Assign) else []:
                    pairs = (
                        zip(t.elts, n.value.elts)
                        if isinstance(t, ast.Tuple) and isinstance(n.value, ast.Tuple)
                        else [(t, n.value)]
                    )
                    for tt, v in pairs:
                        if (
                            isinstance(tt, ast.Attribute)
                            and isinstance(tt.value, ast.Name)
                            and tt.value.id == me
                        ):
                            seen.setdefault(tt.attr, []).append(types.of(v))
                            handled.add(id(tt))
            for n in ast.walk(fn):  # any other store (augmented, nested, ...): unknown
                if (
                    isinstance(n, ast.Attribute)
                    and not isinstance(n.ctx, ast.Load)
                    and isinstance(n.value, ast.Name)
                    and n.value.id == me
                    and id(n) not in handled
                ):
                    seen.setdefault(n.attr, []).append(None)
        out[cls.name] = {
            k: tags[0]
            for k, tags in seen.items()
            if tags[0] is not None and all(t == tags[0] for t in tags) and not stores.get(k)
        }
    return out


def _attr_stores(trees: dict[str, ast.Module]) -> dict[str, int]:
    """attr -> how many `x.attr = ...` stores the core has outside a class's own methods (where x
    is the method's first parameter)."""
    out: dict[str, int] = {}
    own: set[int] = set()  # ids of the targets `self.attr` inside the class's methods
    for tree in trees.values():
        for cls in [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]:
            for fn in [f for f in cls.body if isinstance(f, ast.FunctionDef)]:
                first = (fn.args.posonlyargs + fn.args.args)[:1]
                if not first:
                    continue
                for n in ast.walk(fn):
                    if (
                        isinstance(n, ast.Attribute)
                        and isinstance(n.ctx, ast.Store)
                        and isinstance(n.value, ast.Name)
                        and n.value.id == first[0].arg
                    ):
                        own.add(id(n))
        for n in ast.walk(tree):
            if isinstance(n, ast.Attribute) and not isinstance(n.ctx, ast.Load):
                if id(n) not in own:
                    out[n.attr] = out.get(n.attr, 0) + 1
    return out


def _seeds(
    mods: dict[str, Module],
    kept: dict[str, set],
    shape: Shape,
    skip: set[str],
    seeds: dict,
    stores: dict[str, int],
) -> dict[tuple[str, str], dict[str, Any]]:
    """(module, function) -> {parameter: tag} for the parameters every kept call passes the same
    way: one config value (a RunConfig or section, or one field), or one constant (a field's
    frozen value counts as it). A function used other than by a plain call gets none."""
    calls: dict[tuple[str, str], list] = {}
    blocked: set[tuple[str, str]] = set()
    method_calls: dict[str, list] = {}
    method_blocked: set[str] = set()
    for m, mod in mods.items():
        if m not in kept:
            continue
        tops = {id(mod.tree.body[i]) for i in kept[m] if isinstance(i, int)}
        tops |= {id(mod.tree.body[i[0]]) for i in kept[m] if isinstance(i, tuple)}
        attrs = _class_attrs(mod.tree, shape, stores)
        rec = Folder(shape, attrs, skip, mod, seeds, record_only=True)
        rec.visit(ast.Module(body=list(mod.tree.body), type_ignores=[]))
        for top, callee, args, kws in rec.calls:
            if id(top) in tops:
                calls.setdefault(callee, []).append((args, kws))
        blocked |= {c for top, c in rec.uses if id(top) in tops}
        for top, name, args, kws in rec.method_calls:
            if id(top) in tops:
                method_calls.setdefault(name, []).append((args, kws))
        method_blocked |= {name for top, name in rec.method_uses if id(top) in tops}
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for (m, name), sites in calls.items():
        if (m, name) in blocked or m not in mods or name not in mods[m].defs:
            continue
        where = mods[m].defs[name]
        fn = mods[m].tree.body[where[0]]
        if len(where) != 1 or not isinstance(fn, ast.FunctionDef):
            continue
        if tags := _param_tags(fn, sites, shape):
            out[(m, name)] = tags
    # methods: `x.name(...)` matched by name, for a name one kept class alone defines among the
    # prunable methods (no dunder, decorator or framework hook: `Module.methods`) that no string
    # spells (getattr) and that is never used other than called (a bound method may escape)
    defs: dict[str, list[tuple[str, ast.ClassDef, ast.FunctionDef]]] = {}
    for m, mod in mods.items():
        for i, methods in mod.methods.items():
            if m in kept and i in kept[m]:
                cls = mod.tree.body[i]
                for j, name in methods.items():
                    defs.setdefault(name, []).append((m, cls, cls.body[j]))
    strings = {
        n.value
        for mod in mods.values()
        for n in ast.walk(mod.tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str)
    }
    for name, where in defs.items():
        if len(where) != 1 or name in strings or name in method_blocked:
            continue
        m, cls, fn = where[0]
        if not isinstance(fn, ast.FunctionDef) or not (fn.args.posonlyargs + fn.args.args):
            continue
        sites = method_calls.get(name)
        if sites and (tags := _param_tags(fn, sites, shape, bound=True)):
            out[(m, f"{cls.name}.{fn.name}")] = tags
    return out


def _param_tags(fn: ast.FunctionDef, sites: list, shape: Shape, bound: bool = False) -> dict:
    """{parameter: the tag every call site in `sites` ((args, kwargs) tags) agrees on};
    `bound`: a method called on an instance (its first parameter is not passed). A `**kw`
    parameter is ("const", {}) when no caller passes a keyword outside the named parameters."""
    a = fn.args
    pos = [p.arg for p in [*a.posonlyargs, *a.args]]
    defaults = dict(zip(pos[len(pos) - len(a.defaults) :], a.defaults, strict=True))
    defaults |= {p.arg: d for p, d in zip(a.kwonlyargs, a.kw_defaults, strict=True) if d}
    passed = pos[1:] if bound else pos
    tags: dict[str, Any] = {}
    for p in [*passed, *(k.arg for k in a.kwonlyargs)]:
        seen = []
        for args, kws in sites:
            i = passed.index(p) if p in passed else -1
            if 0 <= i < len(args):
                seen.append(args[i])
            elif p in kws:
                seen.append(kws[p])
            elif p in defaults and (c := _const(defaults[p])) is not _NO:
                seen.append(("const", c))
            else:
                seen.append(None)
        if (tag := _one_tag(seen, shape)) is not None:
            tags[p] = tag
    named = {*passed, *(k.arg for k in a.kwonlyargs)}
    if a.kwarg is not None and all(
        len(args) <= len(passed) and set(kws) <= named for args, kws in sites
    ):
        tags[a.kwarg.arg] = ("const", {})
    return tags


def _one_tag(tags: list[Any], shape: Shape) -> Any:
    """The one tag all call sites agree on (constants equal to a field's frozen value join it)."""
    if not tags or any(t is None for t in tags):
        return None
    fields = {t for t in tags if t[0] == "fld"}
    consts = [t[1] for t in tags if t[0] == "const"]
    others = {repr(t) for t in tags if t[0] not in ("fld", "const")}
    if others:
        return tags[0] if len(others) == 1 and not fields and not consts else None
    if len(fields) > 1:
        return None
    if fields:
        (f,) = fields
        v = shape.value(f[1], f[2])
        same = all(type(c) is type(v) and c == v for c in consts)
        return f if same else None
    first = consts[0]
    return ("const", first) if all(type(c) is type(first) and c == first for c in consts) else None


def specialize(
    sources: dict[str, str],
    cfg: C.RunConfig,
    entry: tuple[str, str] = ("pipeline", "bundle_main"),
    never: set[tuple[str, str]] | frozenset = frozenset(),
    check: str = "refuse_folded",
    fold: bool = True,
    prune: bool = True,
    absent: set[str] | frozenset = frozenset(),
) -> Result:
    """Fold `cfg`'s switches in `sources` (module -> import-rewritten source, bundle order) and
    prune what `entry` does not reach. `never`: (section, field) never folded. `absent`: modules
    the bundle leaves out (stubs that raise on first use): their attribute stores never run, so
    they do not untype an attribute (phased TTT's `model.cfg = ...` on a config without it)."""
    never = set(never)
    seeds: dict[tuple[str, str], dict[str, Any]] = {}
    base = {m: ast.parse(s) for m, s in sources.items()}
    skip: set[str] = _pre_check({m: Module(m, t) for m, t in base.items()}, entry, check)
    # of the whole core that can run: folding only removes stores
    stores = _attr_stores({m: t for m, t in base.items() if m not in absent})
    for _ in range(8):  # folds prune calls, which seed more folds; a replace may unfold a field
        trees = {m: ast.parse(s) for m, s in sources.items()}
        shape = Shape.of(cfg, never)
        folded: list[tuple[str, str, Any, bool]] = []
        if fold:
            mods = {m: Module(m, t) for m, t in trees.items()}
            for m, tree in trees.items():
                attrs = _class_attrs(tree, shape, stores)
                mine = {s.split(".", 1)[1] for s in skip if s.split(".", 1)[0] == m}
                folder = Folder(shape, attrs, mine, mods[m], seeds)
                folder.visit(tree)
                Simplify().visit(tree)
                ast.fix_missing_locations(tree)
                folded += [f for f in folder.folded if f not in folded]
        mods = {m: Module(m, t) for m, t in trees.items()}
        kept = (
            reach(mods, entry) if prune else {m: set(range(len(t.body))) for m, t in trees.items()}
        )
        late = _replaced_fields(trees, kept, shape) & {tuple(f[0].split(".")) for f in folded}
        if late:
            never |= late
            seeds = {}  # derived from calls that were kept with the field folded
            continue
        if not fold:
            break
        skip_names = {s.split(".", 1)[1] for s in skip}
        new = _seeds(mods, kept, shape, skip_names, seeds, stores)
        new = {k: v for k, v in new.items() if f"{k[0]}.{k[1].split('.')[0]}" not in skip}
        if new == seeds:
            break
        seeds = new
    else:
        raise RuntimeError(f"specialize: no fixpoint (run-time replaces of {sorted(never)})")
    out: dict[str, str] = {}
    dropped: dict[str, list[str]] = {}
    for m, tree in trees.items():
        if m not in kept:
            continue
        keep = kept[m]
        gone = [s for i, s in enumerate(tree.body) if i not in keep]
        dropped[m] = sorted({n for s in gone for n in (_defined(s) or [])})
        for i, methods in mods[m].methods.items():
            if i in keep:
                cls = tree.body[i]
                dropped[m] += [f"{cls.name}.{n}" for j, n in methods.items() if (i, j) not in keep]
                cls.body = [s for j, s in enumerate(cls.body) if j not in methods or (i, j) in keep]
                cls.body = cls.body or [ast.Pass()]
        tree.body = [s for i, s in enumerate(tree.body) if i in keep] or [ast.Pass()]
        tree.body = _drop_unused_stdlib(tree.body)
        out[m] = ast.unparse(tree) + "\n"
    return Result(out, folded, dropped, [m for m in sources if m not in kept], seeds)


def _drop_unused_stdlib(body: list[ast.stmt]) -> list[ast.stmt]:
    """Module-level `import`/`from ... import` of the standard library whose names nothing uses."""
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
            if root.split(".")[0] in sys.stdlib_module_names:
                names = [a for a in s.names if (a.asname or a.name).split(".")[0] in used]
                if not names:
                    continue
                s.names = names
        out.append(s)
    return out
