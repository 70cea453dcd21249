"""What the entry point reaches: module definitions, class methods, modules (step 3 of
`specialize`)."""

from __future__ import annotations

import ast
from typing import Any

from pgolf.lab.bundle.names import local_loads

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


PLAIN_DECORATORS = {"classmethod", "staticmethod", "property", "cached_property", "contextmanager"}
"""Method decorators that register nothing: the method is still reached only through its name
(`x.name`, `Cls.name`), so it may go when no kept code spells that name."""


def _plain(d: ast.expr) -> bool:
    name = d.attr if isinstance(d, ast.Attribute) else getattr(d, "id", None)
    return name in PLAIN_DECORATORS


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
        self.external: set[str] = {  # names of other packages' modules and objects (`os`, `F`)
            (a.asname or a.name).split(".")[0]
            for s in tree.body
            if isinstance(s, ast.Import | ast.ImportFrom)
            and getattr(s, "module", 0) != "__future__"
            for a in s.names
        }
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
                    named = {  # names a decorator spells (`@value.setter` needs `value`)
                        n.id
                        for f in stmt.body
                        for d in getattr(f, "decorator_list", [])
                        for n in ast.walk(d)
                        if isinstance(n, ast.Name) and not _plain(d)
                    }
                    self.methods[i] = {
                        j: f.name
                        for j, f in enumerate(stmt.body)
                        if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
                        and not (f.name.startswith("__") and f.name.endswith("__"))
                        and f.name not in inherited
                        and f.name not in named
                        and all(_plain(d) for d in f.decorator_list)
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
        rebound = {
            n.id for n, _ in pairs if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)
        }
        rebound |= {n.arg for n, _ in pairs if isinstance(n, ast.arg)}
        locals_ = local_loads(stmt)
        out: set[tuple[str, str | None]] = set()
        for n, p in pairs:
            if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Store):
                if n.id in aliases:
                    if isinstance(p, ast.Attribute) and p.value is n:
                        out.add((aliases[n.id], p.attr))
                    else:
                        out.add((aliases[n.id], None))
                if n.id in self.defs and id(n) not in locals_:  # not a function's own local
                    out.add((self.name, n.id))
            elif isinstance(n, ast.Attribute) and not self._foreign(n, rebound):
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

    def _foreign(self, node: ast.Attribute, rebound: set[str]) -> bool:
        """`os.open`, `torch.cuda.synchronize`: an attribute looked up on another package's
        module or object (imported by name, not rebound here), never a method of the core."""
        root = node.value
        while isinstance(root, ast.Attribute):
            root = root.value
        return isinstance(root, ast.Name) and root.id in self.external and root.id not in rebound


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
