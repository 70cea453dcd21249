"""The scoring modes: one table, `MODES`, of every way pgolf scores a model on the validation
stream.

Each `Mode` names its runner (a function of `pgolf.score`, whose `score(model, tokens, mode, ...)`
is the one entry point that runs a mode) and says what the mode is: a value of `ttt.mode` or an
evaluator only (`plain`, `sliding`); run when an artifact is scored or before quantization; whether
it adapts the weights while it scores; per-document; non-record; the optional core modules it
needs. The config's choices for `ttt.mode` (`pgolf.config.CHOICES`), the modules a bundle ships
(`pgolf.config.modules_needed`), the auditor's modes and the CLI's `--ttt` choices all come from it.
This module comes first in the bundle (the config reads it) and imports nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

PLAIN = "plain"
SLIDING = "sliding"
NONE = "none"
SCORE_FIRST = "score_first"
LORA = "lora"
PREQUANT = "prequant"
PHASED = "phased"


@dataclass(frozen=True)
class Mode:
    name: str
    runner: str
    """The function of `pgolf.score` that runs the mode."""
    what: str
    ttt: bool = False
    """A value of `ttt.mode` (plain and sliding are evaluators only)."""
    eval_time: bool = True
    """Runs when an artifact is scored (False: pre-quant TTT, a stage of the run before
    quantization; the artifact it leaves is scored with the sliding window)."""
    adapts: bool = False
    """Test-time training at evaluation: changes the weights while it scores, so it runs after
    the plain lines, on its own, with its ledger checked."""
    per_document: bool = False
    """Claims that each document is scored independently of the others."""
    non_record: bool = False
    """Trains on validation tokens before scoring them (issue #1017 Condition 3)."""
    needs: frozenset[str] = frozenset()
    """Optional core modules (`pgolf.config.OPTIONAL_MODULES`) it runs."""
    document_order: bool = False
    """Scores each document left to right, documents in a queue order (the auditor's T4.2 is
    checked per document)."""
    tilt: bool = False
    """Takes the n-gram tilt (`eval.ngram_tilt`, `pgolf.ngram_tilt`) on its scores."""


MODES: dict[str, Mode] = {
    m.name: m
    for m in (
        Mode(PLAIN, "run_plain", "consecutive non-overlapping windows (the round trip)"),
        Mode(SLIDING, "run_sliding", "sliding windows, each target scored once", tilt=True),
        Mode(
            NONE, "run_sliding", "no test-time training: the sliding windows", ttt=True, tilt=True
        ),
        Mode(
            SCORE_FIRST,
            "run_score_first",
            "PR #1493's legal TTT: score a chunk, then SGD on it",
            ttt=True,
            adapts=True,
            needs=frozenset({"ttt_lora"}),  # its SGD step, `sgd_on_ranges`, lives there
            tilt=True,
        ),
        Mode(
            LORA,
            "run_lora",
            "per-document LoRA TTT (#1530/#1610 family)",
            ttt=True,
            adapts=True,
            per_document=True,
            needs=frozenset({"ttt_lora"}),
            document_order=True,
        ),
        Mode(
            PHASED,
            "run_phased",
            "PR #1855's phased score-first LoRA TTT (warm A, global SGD on scored documents)",
            ttt=True,
            adapts=True,
            needs=frozenset({"ttt_phased", "ttt_lora"}),  # ttt_lora: its documents()
            document_order=True,
            tilt=True,
        ),
        Mode(
            PREQUANT,
            "run_prequant",
            "PR #1550's pre-quant AdamW TTT on the stream, then the sliding windows",
            ttt=True,
            eval_time=False,
            non_record=True,
        ),
    )
}

TTT_MODES = tuple(k for k, m in MODES.items() if m.ttt)
"""The values of `ttt.mode`."""
EVAL_TTT_MODES = tuple(k for k, m in MODES.items() if m.ttt and m.eval_time)
"""The `ttt.mode` values an artifact can be scored with (`pgolf eval --ttt`)."""


def eval_mode(ttt_mode: str) -> str:
    """The mode that scores, at evaluation time, an artifact of a run with `ttt_mode`: its own
    when it adapts, else the sliding windows (pre-quant TTT already ran before quantization)."""
    return ttt_mode if MODES[ttt_mode].adapts else SLIDING
