"""Package hygiene: an acyclic import graph in a fixed order (the bundler inlines modules in that
order), nothing done at import time, no bare print in the library, line budgets."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "pgolf"
ORDER = [
    "config",
    "dist",
    "data",
    "bpb",
    "model",
    "optim",
    "artifact",
    "quant",
    "evaluate",
    "ttt_lora",
    "ttt",
    "runlog",
    "train",
    "datasets",
    "budget",
    "report",
    "pipeline",
    "cli",
    "__main__",
]
BUDGET = {"model": 600, "config": 600}


def pgolf_imports(path: Path) -> set[str]:
    deps = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pgolf"):
            names = (
                [node.module.split(".")[1]] if "." in node.module else [a.name for a in node.names]
            )
            deps.update(names)
        elif isinstance(node, ast.Import):
            deps.update(a.name.split(".")[1] for a in node.names if a.name.startswith("pgolf."))
    return deps


def test_every_module_is_in_the_order_and_imports_only_earlier_ones():
    modules = sorted(p.stem for p in SRC.glob("*.py") if p.stem != "__init__")
    assert sorted(ORDER) == modules, "add new modules to ORDER (the bundler's inlining order)"
    for i, name in enumerate(ORDER):
        later = set(pgolf_imports(SRC / f"{name}.py")) & set(ORDER[i + 1 :])
        assert not later, f"{name} imports later modules {later}: the graph must follow ORDER"


def test_import_has_no_side_effects():
    code = (
        "import torch.distributed as d, pgolf.cli, pgolf.pipeline, pgolf.train, pgolf.budget,"
        " pgolf.datasets; assert not d.is_initialized(); print('ok')"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "ok\n" and r.stderr == ""


def test_library_never_prints_and_stays_within_line_budgets():
    for p in SRC.glob("*.py"):
        if p.stem in ("cli", "__main__"):
            continue
        tree = ast.parse(p.read_text())
        prints = [
            n.lineno
            for n in ast.walk(tree)
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "print"
        ]
        assert not prints, f"{p.name} calls print at lines {prints}: use pgolf.dist.log0"
        n = len(p.read_text().splitlines())
        assert n <= BUDGET.get(p.stem, 400), f"{p.name} has {n} lines"


def test_ruff_is_clean():
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff not installed (it is in the dev extra)")
    root = SRC.parents[1]
    r = subprocess.run(
        [ruff, "check", "src", "tests", "benchmarks"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout[-3000:]
