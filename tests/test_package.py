"""Package hygiene: an acyclic import graph in a fixed order (the bundler inlines modules in that
order), nothing done at import time, no bare print in the library, the formatter's layout (no
line budgets, no `# fmt:` suppressions)."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import pgolf

SRC = Path(__file__).resolve().parents[1] / "src" / "pgolf"
CORE = list(pgolf.CORE_MODULES)
TOP = ["cli", "cli_parser", "__main__"]  # import both layers; nothing imports them


def pgolf_imports(path: Path) -> set[str]:
    """Dotted pgolf modules `path` imports, anywhere in it (lazy imports included)."""
    deps = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pgolf"):
            if node.module == "pgolf":
                deps.update(f"pgolf.{a.name}" for a in node.names)
            elif node.module == "pgolf.lab":
                deps.update(f"pgolf.lab.{a.name}" for a in node.names)
            else:
                deps.add(node.module)
        elif isinstance(node, ast.Import):
            deps.update(a.name for a in node.names if a.name.startswith("pgolf"))
    return deps


def test_core_modules_are_declared_once_and_import_only_earlier_core_modules():
    top = sorted(p.stem for p in SRC.glob("*.py") if p.stem != "__init__")
    assert sorted(CORE + TOP) == top, "declare core modules in pgolf.CORE_MODULES (bundle order)"
    for i, name in enumerate(CORE):
        deps = pgolf_imports(SRC / f"{name}.py")
        lab = {d for d in deps if d.startswith("pgolf.lab")}
        assert not lab, f"core module {name} imports the lab: {lab}"
        later = {d.split(".")[1] for d in deps} & set(CORE[i + 1 :] + TOP)
        assert not later, f"{name} imports later modules {later}: follow pgolf.CORE_MODULES"


def test_lab_modules_never_import_the_cli_and_the_walk_catches_a_core_that_imports_the_lab(
    tmp_path,
):
    labs = sorted((SRC / "lab").rglob("*.py"))
    assert len(labs) >= 5
    for p in labs:
        bad = {d for d in pgolf_imports(p) if d in ("pgolf.cli", "pgolf.__main__")}
        assert not bad, f"{p.name} imports {bad}"
    # the check above is not vacuous: a core module that imports the lab is found
    fake = tmp_path / "quant.py"
    fake.write_text("def f():\n    from pgolf.lab import budget\n")
    assert "pgolf.lab.budget" in pgolf_imports(fake)


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph(files: list[Path]) -> dict[str, set[str]]:
    """Module -> the package modules it imports, lazy imports included; `from pkg import sub`
    is an edge to `pkg.sub` when `sub` is a module of the package (the implicit import of a
    package's own __init__ by its submodules is not an edge)."""
    names = {module_name(p): p for p in files}
    graph = {}
    for name, path in names.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pgolf"):
                for a in node.names:
                    sub = f"{node.module}.{a.name}"
                    deps.add(sub if sub in names else node.module)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("pgolf"))
        graph[name] = {d for d in deps if d in names and d != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for d in sorted(graph.get(n, ())):
            if state.get(d) == 1:
                return stack[stack.index(d) :] + [d]
            if d not in state and (c := visit(d)):
                return c
        state[n] = 2
        stack.pop()
        return None

    for n in sorted(graph):
        if n not in state and (c := visit(n)):
            return c
    return None


def test_no_import_circles_lazy_imports_included(tmp_path):
    graph = import_graph(sorted(SRC.rglob("*.py")))
    assert "pgolf.lab.audit.c2" in graph and "pgolf.lab.audit.base" in graph["pgolf.lab.audit.c2"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))
    # the walk is not vacuous: a lazy import back from a sibling closes a circle
    graph["pgolf.lab.audit.base"] = graph["pgolf.lab.audit.base"] | {"pgolf.lab.audit.conditions"}
    assert find_cycle(graph) is not None


def test_lab_groups_have_a_public_face_and_members_never_import_it():
    lab = SRC / "lab"
    groups = [p.parent for p in lab.glob("*/__init__.py")]
    assert {g.name for g in groups} >= {"audit", "budget", "data", "records", "study"}
    for g in groups:
        face = f"pgolf.lab.{g.name}"
        assert ast.get_docstring(ast.parse((g / "__init__.py").read_text())), (
            f"{face}: no docstring"
        )
        for p in g.glob("*.py"):
            if p.name == "__init__.py":
                continue
            for node in ast.walk(ast.parse(p.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module == face:
                    subs = {a.name for a in node.names}
                    mods = {q.stem for q in g.glob("*.py")}
                    assert subs <= mods, f"{p}: imports {subs - mods} from {face}, not a sibling"


def test_lab_faces_resolve_every_public_name_and_stay_light():
    import importlib

    for g in ("audit", "records", "study"):
        face = importlib.import_module(f"pgolf.lab.{g}")
        for name in face.__all__:
            assert getattr(face, name) is not None, f"pgolf.lab.{g}.{name}"
        with pytest.raises(AttributeError):
            face.no_such_name  # noqa: B018
    # a light member imported through its face does not drag torch in (pgolf verify, plan files)
    code = (
        "import sys; from pgolf.lab.records import verify; from pgolf.lab.budget import planfile;"
        " from pgolf.lab.audit import static; print('torch' in sys.modules)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout == "False\n", r.stderr


def test_import_has_no_side_effects():
    code = (
        "import torch.distributed as d, pgolf.cli, pgolf.pipeline, pgolf.train,"
        " pgolf.lab.budget, pgolf.lab.data.datasets, pgolf.lab.bundle;"
        " assert not d.is_initialized(); print('ok')"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "ok\n" and r.stderr == ""


def test_library_never_prints():
    for p in [*SRC.glob("*.py"), *(SRC / "lab").rglob("*.py")]:
        if p.stem in ("cli", "__main__"):
            continue
        tree = ast.parse(p.read_text())
        prints = [
            n.lineno
            for n in ast.walk(tree)
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "print"
        ]
        assert not prints, f"{p.name} calls print at lines {prints}: use pgolf.dist.log0"


def test_no_formatter_suppressions():
    root = SRC.parents[1]
    marks = ("# fmt: " + "skip", "# fmt: " + "off")  # split so this file does not match itself
    for p in [*root.joinpath("src").rglob("*.py"), *root.joinpath("tests").rglob("*.py")]:
        for i, line in enumerate(p.read_text().splitlines(), 1):
            assert not any(m in line for m in marks), f"{p}:{i} suppresses the formatter"


@pytest.mark.parametrize("args", [["check"], ["format", "--check"]])
def test_ruff_is_clean(args):
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff not installed (it is in the dev extra)")
    root = SRC.parents[1]
    r = subprocess.run(
        [ruff, *args, "src", "tests", "benchmarks"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout[-3000:]
