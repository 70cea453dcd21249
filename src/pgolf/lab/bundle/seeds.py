"""Parameters every kept call passes the same way, and the typed attributes of classes (what
`specialize` learns from call sites and stores)."""

from __future__ import annotations

import ast
from typing import Any

from pgolf.lab.bundle.fold import Folder
from pgolf.lab.bundle.names import _scope_nodes
from pgolf.lab.bundle.reach import Module
from pgolf.lab.bundle.scope import _NO, Shape, Types, _const, _scope_env

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
    parameter is ("const", {}) when no caller passes a keyword outside the named parameters, and
    ("kwargs", ((name, tag), ...)) when every caller passes the same ones, agreeing on each."""
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
    if (
        a.kwarg is not None
        and _only_passed_on(fn, a.kwarg.arg)
        and all(len(args) <= len(passed) for args, _ in sites)
    ):
        extra = [{k: t for k, t in kws.items() if k not in named} for _, kws in sites]
        if not any(extra):
            tags[a.kwarg.arg] = ("const", {})
        elif all(e.keys() == extra[0].keys() for e in extra):  # the same keywords everywhere
            items = tuple((k, _one_tag([e[k] for e in extra], shape)) for k in sorted(extra[0]))
            if all(t is not None for _, t in items):
                tags[a.kwarg.arg] = ("kwargs", items)
    return tags


def _only_passed_on(fn: ast.FunctionDef, name: str) -> bool:
    """`name` (a `**kw` parameter) is only ever read as `f(**name)`: never changed in place
    (`kw.pop(...)`, `kw[k] = v`), rebound or looked into, so it holds what the callers passed."""
    spread = {id(k.value) for k in ast.walk(fn) if isinstance(k, ast.keyword) and k.arg is None}
    return all(
        id(n) in spread and isinstance(n.ctx, ast.Load)
        for n in ast.walk(fn)
        if isinstance(n, ast.Name) and n.id == name
    )


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
