"""The auditor's empirical tests: run an evaluation mode on a model and a token stream, perturb
the stream, and check the four conditions of issue #1017 (spec rules-and-compliance.md part (d)).

An `Evaluator` is a mode of `pgolf.modes.MODES` (plain, sliding, none, score_first, lora, phased,
prequant) run by the core's one scoring entry point, `pgolf.score.score`, given the auditor's
ledger, its per-target NLL (`token_nll`) and its probe (`hook`) - never a copy of it. A run returns
the per-target NLL (float64 [N], target j = tokens[j + 1]), the reported totals, the ledger of
score/update events (`pgolf.ttt.Ledger`) and, at requested positions, the full log-distribution that
scored them: a forward hook (`Tap`) on the scoring model records the log-softmax of every eval-mode
window that contains a probed position, keyed by window start (windows shorter than eval_seq_len, as
phased TTT's, are located by their first token and matched up to the probe). With `eval.ngram_tilt`
the scores and the recorded distributions are the tilted ones (`pgolf.ngram_tilt`: hints built once
per run from the run's own stream, as the core does). Every run of a stateful mode (or of a
subclass) works on a deep copy of the model, so TTT never leaks from one run into the next; the
evaluator-only modes (plain, sliding) change nothing and skip the copy.

Tests (rows: condition, test, verdict pass / fail / n.a., evidence), C1 here:
T1.1 future-perturbation prefix invariance at cut points (inside a chunk, at a window/chunk
boundary, at a document boundary); T1.2 target-flip invariance of p_t and every earlier score;
T1.4 neighbour-replacement and batch-size invariance for modes that claim per-document scoring;
T1.5 no training-data reads / network during evaluation (`sys.addaudithook`). C2 (T2.1
normalization, T2.3 arithmetic-coding round trip, T2.4 byte oracle, T2.5 coverage) lives in
`pgolf.lab.audit.c2`, C3/C4 (T3.1-T3.5, T4.1-T4.3) in `pgolf.lab.audit.c3`, and the function that
runs them all (`audit`) in `pgolf.lab.audit.conditions`. Each run counts
the optimizer steps (`Steps`, global optimizer hooks) and stamps every ledger event with that
count (`StampLedger`), which T3.4 uses to undo the steps that consumed one chunk. The noise floor
is measured by running the identical input twice; "unchanged" means within max(100 x floor,
1e-5) nats. T1.3 (artifact independence) needs training runs: `pgolf.lab.audit.run`.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from pgolf import modes as M
from pgolf import ngram_tilt
from pgolf import score as S
from pgolf import ttt as TT
from pgolf.bpb import ByteTables
from pgolf.config import RunConfig
from pgolf.evaluate import EvalResult

MODES = tuple(M.MODES)


@dataclass(frozen=True)
class Row:
    condition: str
    test: str
    verdict: str  # pass | fail | n.a.
    evidence: str


@dataclass
class EvalOut:
    nll: torch.Tensor  # float64 [N] per-target NLL as it entered the totals
    total: float  # reported NLL sum
    tokens: int  # reported number of scored targets
    ledger: TT.Ledger
    probs: dict[int, list[tuple[int, torch.Tensor]]]  # target -> [(window start, log-probs)]
    model: nn.Module  # the model as the evaluation left it (T3.5)
    bytes: int = 0  # reported byte denominator
    steps: int = 0  # optimizer steps taken (T3.4)


class Steps:
    """Global optimizer-step hooks while `active`: counts every `optimizer.step()` of any
    optimizer (pre-quant TTT's fresh model included) and undoes the steps whose index is in
    `off` (the parameters are restored after the step: the update is disabled, T3.4)."""

    def __init__(self, off: frozenset[int] = frozenset()) -> None:
        self.n, self.off, self.saved = 0, off, None

    @staticmethod
    def _params(opt) -> list[torch.Tensor]:
        return [p for g in opt.param_groups for p in g["params"]]

    def _pre(self, opt, args, kwargs) -> None:
        if self.n in self.off:
            self.saved = [p.detach().clone() for p in self._params(opt)]

    def _post(self, opt, args, kwargs) -> None:
        if self.saved is not None:
            with torch.no_grad():
                for p, s in zip(self._params(opt), self.saved, strict=True):
                    p.copy_(s)
            self.saved = None
        self.n += 1

    @contextmanager
    def active(self) -> Iterator[Steps]:
        from torch.optim.optimizer import (
            register_optimizer_step_post_hook,
            register_optimizer_step_pre_hook,
        )

        hs = [
            register_optimizer_step_pre_hook(self._pre),
            register_optimizer_step_post_hook(self._post),
        ]
        try:
            yield self
        finally:
            for h in hs:
                h.remove()


@dataclass
class StampLedger(TT.Ledger):
    """A ledger whose every event also records how many optimizer steps preceded it."""

    steps: Steps | None = None

    def score(self, positions, weights_version) -> None:
        super().score(positions, weights_version)
        self.events[-1]["steps"] = self.steps.n if self.steps else 0

    def update(self, positions, new_version) -> None:
        super().update(positions, new_version)
        self.events[-1]["steps"] = self.steps.n if self.steps else 0


class Tap:
    """Forward hook: log-softmax rows at probed targets of eval-mode windows of the stream."""

    def __init__(self, tokens: torch.Tensor, probes: list[int], seq_len: int, tilt=None) -> None:
        self.index: dict[bytes, list[int]] = {}
        self.seq_len, self.probes, self.tilt = seq_len, sorted(set(probes)), tilt
        self.probs: dict[int, list[tuple[int, torch.Tensor]]] = {}
        ar, n = torch.arange(seq_len), tokens.numel()
        self.tokens = tokens
        for s in sorted({s for t in self.probes for s in range(max(0, t - seq_len + 1), t + 1)}):
            key = tokens[(s + ar).clamp(max=n - 1)].numpy().tobytes()
            self.index.setdefault(key, []).append(s)
        self.heads: dict[int, list[int]] = {}  # first token -> starts (short windows)
        for s, x in enumerate(tokens.tolist()):
            self.heads.setdefault(x, []).append(s)

    def _record(self, t: int, s: int, logits: torch.Tensor) -> None:
        row = torch.log_softmax(logits.detach().double().cpu(), -1)
        if self.tilt is not None:
            row = self.tilt.logprobs(row, t + 1)
        self.probs.setdefault(t, []).append((s, row))

    short = False  # set for modes whose windows are shorter than eval_seq_len (phased TTT)

    def __call__(self, module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        x = args[0]
        if module.training or x.ndim != 2 or not self.index:
            return
        xc = x.detach().cpu().to(torch.int64)
        if self.short:
            self._short_windows(xc, out)
            return
        if x.size(1) != self.seq_len:
            return
        for b in range(xc.size(0)):
            for s in self.index.get(xc[b].numpy().tobytes(), ()):
                for t in self.probes:
                    if 0 <= t - s < self.seq_len:
                        self._record(t, s, out[b, t - s])

    def _short_windows(self, xc: torch.Tensor, out: torch.Tensor) -> None:
        """Windows located by their first tokens; a probe t is taken where the window's tokens
        up to t equal the stream's (causal: the rest cannot change its distribution)."""
        T, n = xc.size(1), self.tokens.numel()
        for b in range(xc.size(0)):
            cands = self.heads.get(int(xc[b, 0]), ())
            for s in cands:
                for t in self.probes:
                    o = t - s
                    if 0 <= o < T and t < n and torch.equal(xc[b, : o + 1], self.tokens[s : t + 1]):
                        self._record(t, s, out[b, o])


@dataclass
class Evaluator:
    """One evaluation mode on the core's entry points (module docstring). `sp`: the
    SentencePiece processor of the tokenizer (the byte oracle T2.4; None: not applicable)."""

    mode: str
    cfg: RunConfig
    tables: ByteTables
    device: str = "cpu"
    sp: Any = None

    @property
    def per_document(self) -> bool:
        """Claims per-document scoring: LoRA TTT always, any mode on a doc-masked model (phased
        TTT does not: warm A and the global phases carry state from document to document)."""
        spec = M.MODES[self.mode]
        return spec.per_document or (self.cfg.model.doc_mask and self.mode != M.PHASED)

    @property
    def document_order(self) -> bool:
        """Scores each document left to right, documents in a queue order (T4.2 per document)."""
        return M.MODES[self.mode].document_order

    def with_batch(self, n: int) -> Evaluator:
        c = self.cfg
        return replace(
            self,
            cfg=replace(
                c,
                eval=replace(c.eval, val_batch_seqs=n),
                ttt=replace(c.ttt, lora_batch_docs=n, phased_batch_docs=n),
            ),
        )

    def score(
        self, model: nn.Module, tokens: torch.Tensor, nll: torch.Tensor, ledger: TT.Ledger, tap: Tap
    ) -> tuple[EvalResult, nn.Module]:
        """Run the mode; fills `nll` and `ledger`; returns (reported totals, scoring model)."""
        tilt = ngram_tilt.build(self.cfg, tokens)
        if tilt is not None and not M.MODES[self.mode].tilt:
            modes = ", ".join(k for k, m in M.MODES.items() if m.tilt)
            raise ValueError(f"audit: eval.ngram_tilt applies to {modes}, not {self.mode}")
        tap.tilt, tap.short = tilt, self.mode == M.PHASED
        s = S.score(
            model,
            tokens,
            self.mode,
            self.cfg,
            self.tables,
            self.device,
            ledger=ledger,
            token_nll=nll,
            hook=tap,
            tilt=tilt,
        )
        return s.result, s.model

    def run(
        self,
        model: nn.Module,
        tokens: torch.Tensor,
        probes: list[int] = (),
        off: frozenset[int] = frozenset(),
    ) -> EvalOut:
        """One evaluation on a copy of `model` (no copy for the stateless base modes);
        optimizer steps numbered in `off` are undone (T3.4)."""
        tokens = torch.as_tensor(tokens).to(torch.int64).cpu()
        nll = torch.zeros(tokens.numel() - 1, dtype=torch.float64)
        spec = M.MODES[self.mode]  # plain, sliding, none: scoring changes nothing
        stateless = type(self) is Evaluator and spec.eval_time and not spec.adapts
        with Steps(off).active() as steps:
            ledger = StampLedger(steps=steps)
            tap = Tap(tokens, list(probes), self.cfg.eval.eval_seq_len)
            r, scorer = self.score(
                model if stateless else copy.deepcopy(model), tokens, nll, ledger, tap
            )
        return EvalOut(nll, r.nll_sum, r.tokens, ledger, tap.probs, scorer, r.bytes, steps.n)


def audit_scale(cfg: RunConfig, n_targets: int) -> RunConfig:
    """TTT geometry scaled to a short audit stream (several chunks, >= 1 pre-quant batch, phased
    TTT's global phases within the first 8 documents, its SGD over chunks of n/8 tokens); at most
    4 windows per batch (short streams need no more, and padding costs time)."""
    L, t = cfg.eval.eval_seq_len, cfg.ttt
    chunk = max(cfg.eval.eval_stride, min(t.chunk_tokens, n_targets // 4))
    ttt = replace(
        t,
        chunk_tokens=chunk,
        lora_chunk=min(t.lora_chunk, max(1, L // 2)),
        prequant_seq_len=min(t.prequant_seq_len, L),
        prequant_epochs=1,
        prequant_batch_seqs=max(
            1, min(t.prequant_batch_seqs, n_targets // (2 * min(t.prequant_seq_len, L)))
        ),
        phased_chunk=min(t.phased_chunk, max(1, L // 2)),
        phased_batch_docs=min(t.phased_batch_docs, 4),
        phased_prefix_docs=min(t.phased_prefix_docs, 8),
        global_chunk_tokens=max(L + 1, min(t.global_chunk_tokens, n_targets // 8)),
        global_batch_seqs=min(t.global_batch_seqs, 4),
    )
    ev = replace(cfg.eval, val_batch_seqs=min(cfg.eval.val_batch_seqs, 4))
    return replace(cfg, eval=ev, ttt=ttt)


# ----------------------------------------------------------------------------------------------
# Helpers


_TRACE: list[list[str]] = []
_HOOKED: list[bool] = []


def _hook(event: str, args: tuple) -> None:
    if _TRACE and event in ("open", "socket.connect", "socket.getaddrinfo"):
        _TRACE[-1].append(f"{event}:{args[0] if args else ''}")


def traced(fn, *a):
    """fn(*a) with file opens and network calls recorded -> (result, events)."""
    if not _HOOKED:
        sys.addaudithook(_hook)  # cannot be removed; inert while _TRACE is empty
        _HOOKED.append(True)
    _TRACE.append([])
    try:
        return fn(*a), _TRACE[-1]
    finally:
        _TRACE.pop()


def scoring_row(out: EvalOut, t: int, y: int) -> tuple[int, torch.Tensor] | None:
    """(window start, log-probs) of the recorded row that matches the reported NLL of t (a
    position may sit in several eval-mode windows, e.g. under successive TTT states)."""
    rows = out.probs.get(t, [])
    if not rows:
        return None
    return min(rows, key=lambda kv: abs(-float(kv[1][y]) - float(out.nll[t])))


def maxdiff(a: torch.Tensor, b: torch.Tensor) -> tuple[float, int]:
    d = (a - b).abs()
    return (float(d.max()), int(d.argmax())) if d.numel() else (0.0, -1)
