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
   `**kw` that is only passed on is known: empty when no caller fills it, its keywords when every
   caller passes the same ones alike. A local bound once to a literal folds as that constant. An
   attribute of a core table's row keyed by a str switch (`M.MODES[cfg.ttt.mode].adapts`, a dict
   no code stores into, read from the installed core) folds, checked as `field in (the keys whose
   row gives the same answer)`; an upper-case core constant (`ENTROPY_CODECS`) is a constant of
   a comparison; a bool switch used as an `and`/`or` operand folds to its value. Folding repeats
   on its own output until nothing changes.
2. Simplify: an `if`/ternary/`while` on a constant keeps its live branch, `and`/`or`/`not` of
   operands of known truth reduce (`x is not None and False` is False when `x` only reads),
   `assert True` goes, statements after `return`/`raise`/`continue`/`break` go.
3. Prune: from the entry point, module-level functions, classes, assignments and imports that no
   kept code reaches are dropped (a module imported at module level by a kept module keeps its
   module-level statements, as Python would run them); a module nothing reaches is left out. A
   function's own local or parameter is no use of a module name it shadows; an attribute of
   another package's module (`os.open`) keeps no core method. Then `tidy`: unused import names
   and function-local stores nothing reads go.

Never folded or dropped: methods some kept code may name (`reach.Module.methods`: dunders,
methods with a registering decorator, framework hooks, a name any kept code spells; behind
`classmethod`/`property`/... a method goes like any other), module-level statements that are
not plain definitions, assignments whose value calls something (side effects), and definitions a
module-level decorator of the same module may register. `specialize` returns the sources, the
folds and what was pruned; `tests/test_bundle.py` checks a specialized bundle against `pgolf run`.

The steps live in their own modules: `scope` (the config's shape, the type of an expression),
`fold` (step 1), `simplify` (step 2), `reach` (step 3), `tidy`, `seeds` (what call sites and
attribute stores tell), `names` (what a scope binds); this module runs them to a fixpoint.
"""

from __future__ import annotations

import ast
import dataclasses
from dataclasses import dataclass, field
from typing import Any

from pgolf import config as C
from pgolf.lab.bundle.fold import Folder
from pgolf.lab.bundle.reach import Module, _defined, _from_import, reach
from pgolf.lab.bundle.scope import Shape, _is_replace
from pgolf.lab.bundle.seeds import _attr_stores, _class_attrs, _seeds
from pgolf.lab.bundle.simplify import Simplify
from pgolf.lab.bundle.tidy import tidy


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
# Run-time changes to the config, and the functions that run before the check


def _replaced_fields(mods: dict[str, Module], kept, shape: Shape) -> set[tuple[str, str]]:
    """(section, field) a kept `replace(...)` or config-class call sets by keyword (in a kept
    class, only its kept methods count: a pruned method never runs)."""
    out: set[tuple[str, str]] = set()
    for m, mod in mods.items():
        body = mod.tree.body
        for i in kept.get(m, ()):
            if isinstance(i, tuple):
                nodes = [body[i[0]].body[i[1]]]
            elif i in mod.methods:  # the class less its prunable methods (kept ones are (i, j))
                nodes = [st for j, st in enumerate(body[i].body) if j not in mod.methods[i]]
                nodes += [*body[i].decorator_list, *body[i].bases, *body[i].keywords]
            else:
                nodes = [body[i]]
            for n in (x for node in nodes for x in ast.walk(node)):
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
    mutable = Shape.mutated(list(base.values()))
    for _ in range(8):  # folds prune calls, which seed more folds; a replace may unfold a field
        trees = {m: ast.parse(s) for m, s in sources.items()}
        shape = Shape.of(cfg, never)
        shape.mutable = mutable
        folded: list[tuple[str, str, Any, bool]] = []
        if fold:
            for m, tree in trees.items():
                mine = {s.split(".", 1)[1] for s in skip if s.split(".", 1)[0] == m}
                before = None
                for _ in range(4):  # a folded branch may leave a constant that folds more
                    mod = Module(m, tree)
                    mshape = dataclasses.replace(shape, aliases=mod.aliases)
                    attrs = _class_attrs(tree, mshape, stores)
                    folder = Folder(mshape, attrs, mine, mod, seeds)
                    folder.visit(tree)
                    Simplify().visit(tree)
                    ast.fix_missing_locations(tree)
                    folded += [f for f in folder.folded if f not in folded]
                    if before == (before := ast.dump(tree)):
                        break
        mods = {m: Module(m, t) for m, t in trees.items()}
        kept = (
            reach(mods, entry) if prune else {m: set(range(len(t.body))) for m, t in trees.items()}
        )
        late = _replaced_fields(mods, kept, shape) & {tuple(f[0].split(".")) for f in folded}
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
        tree.body = tidy(tree.body)
        out[m] = ast.unparse(tree) + "\n"
    return Result(out, folded, dropped, [m for m in sources if m not in kept], seeds)
