"""Fold the frozen config's switches in one module (step 1 of `specialize`)."""

from __future__ import annotations

import ast
from typing import Any

from pgolf import config as C
from pgolf.lab.bundle.names import _bindings
from pgolf.lab.bundle.reach import Module, _from_import, _module_ref
from pgolf.lab.bundle.scope import _NO, _SCALAR, Shape, Types, _const, _scope_env

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
        self.bound: frozenset[str] = frozenset()  # names the enclosing functions bind
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
            if node.id in self.bound:
                return None  # a local (`run = new_run(...)`) shadows the module's `run`
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

    def _site(self, node: ast.Call) -> tuple[list, dict] | None:
        """(tags of the positional arguments, {keyword: tag}) of a call, or None when they are
        not all known: `*args`, or a `**kw` that is not known empty or known keywords
        (`seeds._param_tags`)."""
        if any(isinstance(a, ast.Starred) for a in node.args):
            return None
        kws: dict[str, Any] = {}
        for k in node.keywords:
            t = self._tag(k.value)
            if k.arg is not None:
                kws[k.arg] = t
            elif isinstance(t, tuple) and t[0] == "kwargs":
                kws.update(dict(t[1]))
            elif t != ("const", {}):
                return None
        return [self._tag(a) for a in node.args], kws

    def visit_Call(self, node: ast.Call) -> ast.expr:
        callee = self._callee(node.func)
        if callee is not None and self.top is not None:
            if (site := self._site(node)) is None:
                self.uses.append((self.top, callee))
            else:
                self.calls.append((self.top, callee, *site))
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
            if unbound or (site := self._site(node)) is None:
                self.method_uses.append((self.top, name))
            else:
                self.method_calls.append((self.top, name, *site))
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
        self.types, bound = Types(self.shape, env, attrs, me), self.bound
        local = {k for k in _bindings(node.body) if not isinstance(self.local.get(k), tuple)}
        self.bound = bound | set(params) | local
        try:
            node.body = [self.visit(s) for s in node.body]
        finally:
            self.types, self.bound = saved, bound
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
        saved, bound = self.types, self.bound
        env = {k: v for k, v in saved.env.items() if k not in names}
        self.types = Types(self.shape, env, saved.attrs, None if saved.me in names else saved.me)
        self.bound = bound | names
        try:
            self.generic_visit(node)
        finally:
            self.types, self.bound = saved, bound
        return node

    # -- folds ---------------------------------------------------------------------------------

    def _field(self, node: ast.expr) -> Any:
        """("fld", section, field), ("entry", ...) or ("const", value) when `node` is one, and
        folding is on."""
        t = self.types.of(node)
        ok = self.active and isinstance(t, tuple) and t[0] in ("fld", "const", "entry")
        return t if ok else None

    def _switch(self, key: Any, op: str) -> bool:
        if key[0] == "entry":  # a table row's attribute: the key field decides it
            ok = isinstance(self.shape.entry(key), _SCALAR)
            return ok and op in C.FOLD_OPS and self.shape.switch(key[1], key[2], "in")
        return key[0] == "const" or self.shape.switch(key[1], key[2], op)

    def _fold(self, key: Any, op: str, arg: Any) -> ast.Constant:
        if key[0] == "const":  # every caller passes this value: no run-time check needed
            return ast.Constant(C.FOLD_OPS[op](key[1], arg))
        if key[0] == "entry":  # checked as: the key is one whose row gives the same answer
            _, section, name, ref, attr = key
            table, test = self.shape.table(ref), C.FOLD_OPS[op]
            value = test(self.shape.entry(key), arg)
            same = tuple(
                k for k, row in table.items() if test(getattr(row, attr, None), arg) == value
            )
            fact = (f"{section}.{name}", "in", same, True)
            if fact not in self.folded:
                self.folded.append(fact)
            return ast.Constant(value)
        value = C.FOLD_OPS[op](self.shape.value(key[1], key[2]), arg)
        fact = (f"{key[1]}.{key[2]}", op, arg, value)
        if fact not in self.folded:
            self.folded.append(fact)
        return ast.Constant(value)

    def _constant(self, node: ast.expr) -> Any:
        """A literal, or a core module's constant (an upper-case name bound once at module level,
        `ENTROPY_CODECS = _M["artifact_check"].ENTROPY_CODECS` or `M.NAME`) holding scalars or a
        tuple, set or dict of them (as a tuple: what `in` tests), that no code stores into;
        else _NO. Its value is read from the installed core, like `Shape.table`."""
        if (c := _const(node)) is not _NO or self.module is None:
            return c
        ref = None
        if (
            isinstance(node, ast.Name)
            and node.id not in self.bound
            and node.id not in self.types.env
        ):
            where = self.module.defs.get(node.id, [])
            stmt = self.module.tree.body[where[0]] if len(where) == 1 else None
            if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
                if (imp := _from_import(stmt)) and isinstance(imp, tuple):
                    ref = imp
                elif (c := _const(stmt.value)) is not _NO:
                    ref = (self.module.name, node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if (m := self.module.aliases.get(node.value.id)) and node.value.id not in self.bound:
                ref = (m, node.attr)
        if ref is None or not ref[1].isupper() or ref[1] in self.shape.mutable:
            return _NO
        if any(  # a function of this module may rebind it (`global NAME`)
            isinstance(n, ast.Global) and isinstance(node, ast.Name) and node.id in n.names
            for n in ast.walk(self.module.tree)
        ):
            return _NO
        v = self.shape.table(ref)
        if isinstance(v, dict | set | frozenset | tuple):
            v = tuple(sorted(v, key=repr)) if isinstance(v, set | frozenset) else tuple(v)
            return v if all(isinstance(x, _SCALAR) for x in v) else _NO
        return v if isinstance(v, _SCALAR) and v is not None else _NO

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
        key, arg = self._field(node.left), self._constant(node.comparators[0])
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
        node.values = [self._operand(v) for v in node.values]
        return _bool_op(node, truth=False)

    def _operand(self, node: ast.expr) -> ast.expr:
        """An operand of `and`/`or` whose value is used: a bool switch is its own truth, so it
        folds as one (`tilted = cfg.eval.ngram_tilt and ...`); a known constant is itself."""
        key = self._field(node)
        if key and key[0] == "const" and isinstance(key[1], _SCALAR):
            return ast.Constant(key[1])
        if key and key[0] != "const" and self._switch(key, "truth"):
            v = self.shape.entry(key) if key[0] == "entry" else self.shape.value(key[1], key[2])
            if isinstance(v, bool):
                return self._fold(key, "truth", None)
        return self.visit(node)


def _pure(node: ast.expr) -> bool:
    """Evaluating `node` has no effect but its value: constants, names, attribute reads (the
    core's properties compute without side effects), `is`/`is not`, `not`, `and`/`or` of those."""
    if isinstance(node, ast.Constant | ast.Name):
        return True
    if isinstance(node, ast.Attribute):
        return _pure(node.value)
    if isinstance(node, ast.Compare):
        return all(isinstance(op, ast.Is | ast.IsNot) for op in node.ops) and all(
            _pure(x) for x in (node.left, *node.comparators)
        )
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return _pure(node.operand)
    return isinstance(node, ast.BoolOp) and all(_pure(v) for v in node.values)


def _known(node: ast.expr) -> bool | None:
    """The truth of `node` when the folds decide it whatever the unknown operands are: `x and
    False` is falsy, `x or True` truthy; None when it is not known."""
    if isinstance(node, ast.Constant):
        return bool(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        k = _known(node.operand)
        return None if k is None else not k
    if isinstance(node, ast.BoolOp):
        ks = [_known(v) for v in node.values]
        decisive = isinstance(node.op, ast.Or)  # the truth that decides: True in `or`
        if decisive in ks:
            return decisive
        return (not decisive) if all(k is not None for k in ks) else None
    return None


def _not(node: ast.UnaryOp) -> ast.expr:
    k = _known(node.operand)
    if k is not None and _pure(node.operand):
        return ast.Constant(not k)
    return node


def _bool_op(node: ast.BoolOp, truth: bool) -> ast.expr:
    """`and`/`or` with operands of known truth reduced (`truth`: only the result's truth
    matters, so a pure operation of known truth becomes that constant)."""
    is_and = isinstance(node.op, ast.And)
    out: list[ast.expr] = []
    for i, v in enumerate(node.values):
        last = i == len(node.values) - 1
        k = _known(v)
        if k is not None and k == is_and and _pure(v):  # neutral: truthy in `and`, falsy in `or`
            if not last or (truth and out):
                continue
        elif k is not None and k != is_and:  # absorbing: the result is decided here
            out.append(v)
            break
        out.append(v)
    if not out:
        return ast.Constant(is_and)
    if len(out) == 1:
        result = out[0]
    else:
        node.values = out
        result = node
    if truth and (k := _known(result)) is not None and _pure(result):
        return ast.Constant(k)
    return result
