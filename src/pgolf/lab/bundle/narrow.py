"""Tables of the core narrowed to what the bundle's frozen config can run (issue 22).

`score.RUNNERS` maps each runner name of `pgolf.modes.MODES` to its function, so every runner (and
everything it calls: score-first's chunk loop, the LoRA batches, ...) is reached from the table
whatever the config. The bundle keeps the runners of the evaluators (`plain`, `sliding`) and of the
TTT modes whose runner is one of those or the frozen `ttt.mode`'s, and records the predicate
`ttt.mode in (those modes)` with the folds, so `config.refuse_folded` refuses by name any other
mode the environment asks for before anything runs (a mode whose optional module was left out is
already refused by `config.refuse_absent`).
"""

from __future__ import annotations

import ast
from typing import Any

from pgolf import config as C
from pgolf import modes as M


def runners(src: str, cfg: C.RunConfig) -> tuple[str, tuple[str, str, Any, bool]]:
    """(`score`'s source with `RUNNERS` narrowed, the predicate that guards it)."""
    keep = {M.MODES[m].runner for m in (M.PLAIN, M.SLIDING, cfg.ttt.mode)}
    allowed = tuple(m.name for m in M.MODES.values() if m.ttt and m.runner in keep)
    tree = ast.parse(src)
    hits = 0
    for stmt in tree.body:
        target = stmt.targets[0] if isinstance(stmt, ast.Assign) else getattr(stmt, "target", None)
        if getattr(target, "id", None) != "RUNNERS":
            continue
        comp = stmt.value
        if not (
            isinstance(comp, ast.DictComp)
            and isinstance(comp.generators[0].iter, ast.Tuple)
            and all(isinstance(e, ast.Name) for e in comp.generators[0].iter.elts)
        ):
            raise ValueError("score.RUNNERS is not `{f.__name__: f for f in (run_a, ...)}`")
        names = comp.generators[0].iter
        if missing := keep - {e.id for e in names.elts}:
            raise ValueError(f"score.RUNNERS lacks {sorted(missing)}")
        names.elts = [e for e in names.elts if e.id in keep]
        hits += 1
    if hits != 1:
        raise ValueError(f"score: {hits} assignments of RUNNERS (expected 1)")
    return ast.unparse(tree) + "\n", ("ttt.mode", "in", allowed, True)
