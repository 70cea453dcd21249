"""The one scoring entry point (`pgolf.score.score`) and its mode table (`pgolf.modes.MODES`): every
row runs, the config, bundle, auditor and CLI read their choices from the table, score-first's
training step can be replaced (the study's control), and no mode name is spelled outside it."""

from __future__ import annotations

import ast
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from test_ttt import CPU, cfg, model, stream, tables

from pgolf import config as C
from pgolf import modes as M
from pgolf import score as S
from pgolf import ttt
from pgolf.evaluate import eval_plain, eval_sliding
from pgolf.lab import audit as AU
from pgolf.lab import bundle

SRC = Path(__file__).resolve().parents[1] / "src" / "pgolf"


def test_every_mode_has_a_runner_and_the_choices_come_from_the_table() -> None:
    assert set(M.MODES) == {
        "plain",
        "sliding",
        "none",
        "score_first",
        "lora",
        "phased",
        "prequant",
    }
    for name, mode in M.MODES.items():
        assert mode.name == name and mode.runner in S.RUNNERS
        assert mode.needs <= set(C.OPTIONAL_MODULES)
    assert (
        C.CHOICES["ttt.mode"]
        == M.TTT_MODES
        == ("none", "score_first", "lora", "phased", "prequant")
    )
    assert M.EVAL_TTT_MODES == ("none", "score_first", "lora", "phased")
    assert AU.MODES == tuple(M.MODES)
    evals = [M.eval_mode(m) for m in M.TTT_MODES]
    assert evals == ["sliding", "score_first", "lora", "phased", "sliding"]
    for mode in M.TTT_MODES:  # the bundle ships exactly the modules the table names
        c = replace(C.load("cpu-tiny", environ={}), ttt=replace(C.TTTConfig(), mode=mode))
        assert C.modules_needed(c) == set(M.MODES[mode].needs)
        assert ("ttt_lora" in bundle.omitted(c)) == ("ttt_lora" not in M.MODES[mode].needs)
    with pytest.raises(ValueError, match="ttt.mode='plain'"):
        C.load("cpu-tiny", ["ttt.mode=plain"], environ={})  # an evaluator only, not a TTT mode


def test_mode_names_are_spelled_only_in_the_table() -> None:
    """No string literal equal to a mode name compares against or chooses a mode elsewhere."""
    names = set(M.MODES)
    hits = []
    for p in [*SRC.glob("*.py"), *(SRC / "lab").rglob("*.py")]:
        if p.name == "modes.py":
            continue
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Compare):
                parts = [node.left, *node.comparators]
                lits = [x for x in parts if isinstance(x, ast.Constant)]
                lits += [e for x in parts if isinstance(x, ast.Tuple | ast.List) for e in x.elts]
                attr = any(
                    isinstance(x, ast.Attribute) and x.attr in ("mode", "ttt_mode") for x in parts
                )
                if attr and any(isinstance(e, ast.Constant) and e.value in names for e in lits):
                    hits.append(f"{p.name}:{node.lineno}")
            if isinstance(node, ast.keyword) and node.arg in ("mode", "choices"):
                v = node.value
                elts = v.elts if isinstance(v, ast.Tuple | ast.List) else [v]
                ours = names if node.arg == "mode" else names - {"none"}  # --quant run|none
                if any(isinstance(e, ast.Constant) and e.value in ours for e in elts):
                    hits.append(f"{p.name}:{node.lineno}")
    assert not hits, f"mode names spelled outside pgolf.modes: {hits}"


@pytest.mark.parametrize("mode", list(M.MODES))
def test_every_mode_scores_every_target_once(mode: str) -> None:
    toks, tab = stream(301), tables()
    c = cfg(chunk_tokens=64, lr=0.01, epochs=1, lora_chunk=8, lora_batch_docs=2)
    c = replace(
        c,
        ttt=replace(
            c.ttt,
            prequant_epochs=1,
            prequant_seq_len=16,
            prequant_batch_seqs=4,
            phased_chunk=8,
            phased_batch_docs=2,
        ),
    )
    nll = torch.zeros(300, dtype=torch.float64)
    seen: list[int] = []
    s = S.score(
        model(), toks, mode, c, tab, CPU, token_nll=nll, hook=lambda m, a, o: seen.append(1)
    )
    assert s.result.tokens == 300 and ttt.single_pass(s.ledger, 300) == []
    assert s.result.nll_sum == pytest.approx(float(nll.sum()), rel=1e-9)
    assert seen  # the hook sat on the model that scored (pre-quant TTT's copy included)
    legal = ttt.score_before_update(s.ledger) == []
    assert legal != M.MODES[mode].non_record
    if mode == "plain":
        assert s.result == replace(
            eval_plain(model(), toks, 16, 4, tab, CPU), seconds=s.result.seconds
        )
    if mode in ("sliding", "none"):
        ref = eval_sliding(model(), toks, 16, 8, 4, tab, CPU)
        assert s.result == replace(ref, seconds=s.result.seconds)


def test_unknown_mode_and_misplaced_adapt_are_refused() -> None:
    with pytest.raises(ValueError, match="scoring mode 'sgd'"):
        S.score(model(), stream(41), "sgd", cfg(), tables(), CPU)
    with pytest.raises(ValueError, match="takes no `adapt`"):
        S.score(model(), stream(41), M.LORA, cfg(), tables(), CPU, adapt=lambda *a: (a[0], 0))


def test_score_first_takes_another_training_step() -> None:
    """The study's control: the chunk loop is score_first's, the step after each chunk its own
    (here: a fresh model per chunk with the head moved, one ledger update each)."""
    toks, tab = stream(301), tables()
    c = cfg(mode=M.SCORE_FIRST, chunk_tokens=64, lr=0.3)
    calls: list[tuple[int, int, tuple[int, int], float]] = []

    def adapt(net, chunk, n_chunks, ab, lr):
        calls.append((chunk, n_chunks, ab, lr))
        new = ttt.fresh_copy(net)
        with torch.no_grad():
            for p in new.parameters():
                p.mul_(0.9)
        return new, 1

    s = S.score(model(), toks, M.SCORE_FIRST, c, tab, CPU, adapt=adapt)
    same = S.score(model(), toks, M.SCORE_FIRST, c, tab, CPU, adapt=lambda n, *a: (n, 0))
    ref = eval_sliding(model(), toks, 16, 8, 4, tab, CPU)
    assert [k for k, *_ in calls] == [0, 1, 2, 3] and all(n == 5 for _, n, *_ in calls)
    assert calls[0][2] == (0, 64) and calls[0][3] == pytest.approx(0.3)
    assert s.result.nll_sum != pytest.approx(ref.nll_sum, rel=1e-6)
    assert sum(e["kind"] == "update" for e in s.ledger.events) == 4
    assert ttt.score_before_update(s.ledger) == [] and ttt.single_pass(s.ledger, 300) == []
    assert same.result.nll_sum == pytest.approx(ref.nll_sum, rel=1e-12)  # no step: the sliding
