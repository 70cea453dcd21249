"""Test-time training: legal score-first TTT, per-document LoRA TTT, #1550's pre-quant TTT.

Modes (`cfg.ttt.mode`, spec section 7 and the conditions of issue #1017):

* `score_first` (PR #1493's legal form, after PR #549): the validation stream in chunks of
  `chunk_tokens`; each sliding window belongs to the chunk holding the first target it scores.
  Per chunk, its windows are first scored with the current weights (no grad) and added to the
  totals; then, unless it is the last chunk, the weights train on the chunk's tokens (SGD with
  momentum, `epochs` passes, lr cosine over chunks, global-norm clip). Ranks score and train
  disjoint shares; gradients are summed so that 2 ranks equal 1.
* `lora` (PRs #1530/#1610/#1626 family): see `pgolf.ttt_lora`; the phased global SGD on already
  scored documents is `sgd_on_ranges` below.
* `phased` (PR #1855's form: rank-80 LoRAs per virtual layer on Q/K/V, O and MLP bypasses and
  the head, three cumulative global-SGD phases): see `pgolf.ttt_phased`.

`eval.ngram_tilt` (PR #2135's causal token n-gram tilt, `pgolf.ngram_tilt`) applies to the
scores of the modes none, score_first and phased; its hints are built inside the eval clock.
* `prequant` (PR #1550, recipe of #1485/#1423): AdamW on the validation stream for `prequant_epochs`
  before quantization. It trains on tokens before they are scored (Condition 3), so every result
  that used it is labelled `non_record` (NON_RECORD_REASON). It runs on a fresh model instance
  built from cloned tensors: #1550's "rotary cache poisoning" came from reusing tensors created
  under `inference_mode`.

The modes are rows of `pgolf.modes.MODES`, run through `pgolf.score.score` (the one entry point);
every mode scores through `pgolf.evaluate.score_windows` / `score_batch` and records a `Ledger`
(format in dev/INTERFACES.md) from which `score_before_update` / `single_pass` check Conditions
3 and 4. `EvalClock` times the evaluation stages against the 600 s budget.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pgolf import dist as pdist
from pgolf import ttt_lora
from pgolf.bpb import ByteTables
from pgolf.config import RunConfig
from pgolf.evaluate import (
    EvalResult,
    result_from_sums,
    score_windows,
    sliding_windows,
)
from pgolf.model import graph_state, restore_graph_state

NON_RECORD_REASON = (
    "pre-quant TTT trains on the validation tokens before they are scored "
    "(issue #1017 Condition 3, score-before-update)"
)

# ----------------------------------------------------------------------------------------------
# Ledger


@dataclass
class Ledger:
    """Append-only record of scoring and update events over target positions of the val stream.

    Target j is val_tokens[j + 1]; ranges are half-open [start, end). A score event says which
    targets entered the totals and the weights version that scored them; an update event says
    which targets' tokens (as input or target) a loss consumed and the version it produced."""

    events: list[dict] = field(default_factory=list)

    def score(self, positions: list[tuple[int, int]], weights_version: int) -> None:
        self.events.append(
            {"kind": "score", "ranges": _clean(positions), "version": weights_version}
        )

    def update(self, positions: list[tuple[int, int]], new_version: int) -> None:
        self.events.append({"kind": "update", "ranges": _clean(positions), "version": new_version})

    def to_json(self) -> str:
        return json.dumps({"format": "pgolf-ttt-ledger", "version": 1, "events": self.events})

    @classmethod
    def from_json(cls, text: str) -> Ledger:
        d = json.loads(text)
        if d.get("format") != "pgolf-ttt-ledger":
            raise ValueError("not a pgolf TTT ledger (format field missing)")
        return cls(events=[dict(e, ranges=[tuple(r) for r in e["ranges"]]) for e in d["events"]])

    def gather(self) -> Ledger:
        """All ranks' events on every rank, stably sorted by their optional 'order' key."""
        if not pdist.is_dist():
            return self
        parts: list = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(parts, self.events)
        events = [e for p in parts for e in p]
        return Ledger(events=sorted(events, key=lambda e: e.get("order", 0)))  # stable


def _clean(positions: list[tuple[int, int]]) -> list[tuple[int, int]]:
    return [(int(a), int(b)) for a, b in positions if b > a]


def _extent(ledger: Ledger) -> int:
    return max((b for e in ledger.events for _, b in e["ranges"]), default=0)


def score_before_update(ledger: Ledger) -> list[str]:
    """Condition 3: every target an update consumed was scored by an earlier event, with a
    weights version older than that update's. Returns violations (empty = clean)."""
    n = _extent(ledger)
    scored_at = np.full(n, -1, dtype=np.int64)  # version that scored each target, -1 = not yet
    out: list[str] = []
    for i, e in enumerate(ledger.events):
        for a, b in e["ranges"]:
            if e["kind"] == "score":
                seg = scored_at[a:b]
                seg[seg < 0] = e["version"]
                continue
            seg = scored_at[a:b]
            bad = np.flatnonzero((seg < 0) | (seg >= e["version"]))
            if bad.size:
                out.append(
                    f"event {i}: update to version {e['version']} consumed {bad.size} targets of "
                    f"[{a}, {b}) not scored before it (first {a + int(bad[0])})"
                )
    return out


def single_pass(ledger: Ledger, n_targets: int) -> list[str]:
    """Condition 4: every target in [0, n_targets) scored exactly once, nothing outside."""
    diff = np.zeros(max(n_targets, _extent(ledger)) + 1, dtype=np.int64)
    for e in ledger.events:
        if e["kind"] == "score":
            for a, b in e["ranges"]:
                diff[a] += 1
                diff[b] -= 1
    count = np.cumsum(diff)[:-1]
    out = []
    holes = np.flatnonzero(count[:n_targets] == 0)
    twice = np.flatnonzero(count > 1)
    if holes.size:
        out.append(f"{holes.size} targets never scored (first {int(holes[0])})")
    if twice.size:
        out.append(f"{twice.size} targets scored more than once (first {int(twice[0])})")
    if count.size > n_targets and count[n_targets:].any():
        out.append(f"targets scored beyond the stream end {n_targets}")
    return out


# ----------------------------------------------------------------------------------------------
# Eval clock


@dataclass
class EvalClock:
    """Wall-clock of each evaluation stage (load, warm-up, sliding, TTT, ...), in order."""

    stages: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.stages[name] = self.stages.get(name, 0.0) + time.perf_counter() - t0

    @property
    def total(self) -> float:
        return sum(self.stages.values())

    def report(self, budget: float) -> dict:
        """Log the table; return {eval_stage_seconds, eval_seconds, eval_over_budget}."""
        for name, s in self.stages.items():
            pdist.log0(f"eval_clock {name:<12} {s:9.2f}s")
        over = self.total > budget
        pdist.log0(f"eval_clock total        {self.total:9.2f}s budget:{budget:.0f}s")
        if over:
            pdist.log0(
                f"eval_clock:WARNING evaluation took {self.total:.1f}s, over the {budget:.0f}s "
                "budget (ttt.eval_budget_seconds); a record submission must fit it"
            )
        return {
            "eval_stage_seconds": dict(self.stages),
            "eval_seconds": self.total,
            "eval_over_budget": over,
        }


# ----------------------------------------------------------------------------------------------
# Score-first TTT (the SGD step, sgd_on_ranges, is shared with the phased LoRA mode)


def consumed(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Targets whose tokens a loss over target `ranges` reads: inputs are the tokens of targets
    a - 1 .. b - 2, outputs targets a .. b - 1."""
    return [(max(a - 1, 0), b) for a, b in ranges]


# ----------------------------------------------------------------------------------------------
# Score-first TTT


Adapt = Callable[[nn.Module, int, int, tuple[int, int], float], tuple[nn.Module, int]]
"""(model, chunk, n_chunks, targets (a, b) of the chunk, cosine lr) -> (model, updates made)."""


def score_first(
    cfg: RunConfig,
    model: nn.Module,
    val_tokens: torch.Tensor,
    tables: ByteTables,
    device: torch.device,
    ledger: Ledger,
    token_nll: torch.Tensor | None = None,
    tilt=None,
    *,
    adapt: Adapt | None = None,
) -> EvalResult:
    """PR #1493's legal TTT (see the module docstring); returns the totals over every target.
    `token_nll` (float64 [N], optional) receives the per-target NLL (the auditor reads it);
    `tilt`: the n-gram tilt on the scores (`pgolf.ngram_tilt.Tilt`). `adapt` (default:
    `ttt.epochs` SGD passes over the chunk) replaces the training done after each chunk is scored
    (the study's control trains with pre-quant TTT's AdamW per chunk)."""
    t, e = cfg.ttt, cfg.eval
    amp = torch.bfloat16 if device.type == "cuda" else None
    tokens = torch.as_tensor(val_tokens).to(torch.int64).cpu()
    n = tokens.numel() - 1
    starts, lo, hi = sliding_windows(n, e.eval_seq_len, e.eval_stride)
    chunk_of = (starts + lo) // t.chunk_tokens
    n_chunks = int(chunk_of[-1]) + 1
    if adapt is None:
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=t.lr, momentum=t.momentum)

        def adapt(net: nn.Module, c: int, n_c: int, ab: tuple[int, int], lr: float):
            for g in opt.param_groups:
                g["lr"] = lr
            for _ in range(t.epochs):
                ttt_lora.sgd_on_ranges(
                    net,
                    opt,
                    tokens,
                    [ab],
                    e.eval_seq_len,
                    e.val_batch_seqs,
                    t.grad_clip,
                    device,
                    amp,
                )
            return net, t.epochs

    acc = np.zeros(3)  # nll, tokens, bytes (already all-reduced by score_windows)
    version, t0 = 0, time.perf_counter()
    for c in pdist.progress(range(n_chunks), desc="ttt chunks"):
        sel = chunk_of == c
        if not bool(sel.any()):
            continue
        plan = (starts[sel], lo[sel], hi[sel])
        r = score_windows(
            model,
            tokens,
            plan,
            e.eval_seq_len,
            e.val_batch_seqs,
            tables,
            device,
            amp,
            token_nll,
            bar=None,
            tilt=tilt,
        )
        acc += (r.nll_sum, r.tokens, r.bytes)
        a, b = int((plan[0] + plan[1]).min()), int((plan[0] + plan[2]).max())
        ledger.score([(a, b)], version)
        if c == n_chunks - 1:
            break
        lr = t.lr * 0.5 * (1 + math.cos(math.pi * c / max(n_chunks - 1, 1)))
        model, k = adapt(model, c, n_chunks, (a, b), lr)
        for _ in range(k):
            version += 1
            ledger.update(consumed([(a, b)]), version)
        if c % 10 == 0 or c == n_chunks - 2:
            pdist.log0(
                f"ttt_chunk:{c + 1}/{n_chunks} lr:{lr:.6f} running_loss:"
                f"{acc[0] / max(acc[1], 1):.4f} time:{time.perf_counter() - t0:.1f}s",
                console=False,
            )
    model.eval()
    return result_from_sums(float(acc[0]), int(acc[1]), int(acc[2]), time.perf_counter() - t0)


# ----------------------------------------------------------------------------------------------
# Pre-quant TTT (NON-RECORD)


def fresh_copy(model: nn.Module) -> nn.Module:
    """A new model of the same class and config with cloned weights (no tensor of the old one,
    so no inference-mode tensor or cache is reused: #1550's rotary cache poisoning)."""
    new = type(model)(model.cfg).to(next(model.parameters()).device)
    with torch.inference_mode(False):
        new.load_state_dict({k: v.detach().clone() for k, v in model.state_dict().items()})
    restore_graph_state(new, graph_state(model), "fresh_copy")
    return new


def prequant_ttt(
    cfg: RunConfig,
    model: nn.Module,
    val_tokens: torch.Tensor,
    device: torch.device | str,
    on_epoch: Callable[[int, nn.Module], None] | None = None,
    ledger: Ledger | None = None,
    on_batch: Callable[[float, nn.Module], bool] | None = None,
) -> nn.Module:
    """PR #1550's pre-quant AdamW TTT on a fresh copy of `model` -> the adapted fresh model.

    NON-RECORD (NON_RECORD_REASON). Sequences of `prequant_seq_len` tile the stream; global
    batches of `prequant_batch_seqs` are split across ranks (grads averaged); the ragged last
    batch is dropped so a compiled model sees one shape. lr: cosine from prequant_lr to
    prequant_min_lr, set per epoch; blocks[:prequant_freeze_blocks] frozen. `on_batch(epochs done,
    e.g. 2.5, net)` after every step; True stops training there (fractional epochs)."""
    t = cfg.ttt
    device = torch.device(device)
    di = pdist.info()
    net = fresh_copy(model)
    for i, block in enumerate(net.blocks):
        for p in block.parameters():
            p.requires_grad_(i >= t.prequant_freeze_blocks)
    params = [p for p in net.parameters() if p.requires_grad]
    pdist.log0(
        f"ttt:prequant NON-RECORD ({NON_RECORD_REASON}) trainable:"
        f"{sum(p.numel() for p in params)} epochs:{t.prequant_epochs}"
    )
    opt = torch.optim.AdamW(params, lr=t.prequant_lr, weight_decay=0.0)
    fwd = torch.compile(net, dynamic=False) if device.type == "cuda" else net
    amp = torch.bfloat16 if device.type == "cuda" else None
    tokens = torch.as_tensor(val_tokens).to(torch.int64).cpu()
    L, gb = t.prequant_seq_len, t.prequant_batch_seqs
    if gb % di.world_size:
        raise ValueError(f"ttt.prequant_batch_seqs {gb} must be a multiple of the world size")
    n_seq = (tokens.numel() - 1) // L
    n_batches = n_seq // gb
    if n_batches < 1:
        raise ValueError(
            f"ttt: {n_seq} sequences of {L} tokens, fewer than one batch of {gb}; "
            "lower ttt.prequant_seq_len or ttt.prequant_batch_seqs"
        )
    per = gb // di.world_size
    ar = torch.arange(L + 1)
    version, t0 = 0, time.perf_counter()
    net.train()
    stop = False
    for ep in pdist.progress(range(t.prequant_epochs), desc="prequant ttt epochs"):
        lr = t.prequant_min_lr + (t.prequant_lr - t.prequant_min_lr) * 0.5 * (
            1 + math.cos(math.pi * ep / t.prequant_epochs)
        )
        for g in opt.param_groups:
            g["lr"] = lr
        total = 0.0
        for bi in range(n_batches):
            first = bi * gb + di.rank * per
            st = (torch.arange(first, first + per) * L)[:, None] + ar
            chunk = tokens[st].to(device)
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, amp, enabled=amp is not None):
                logits = fwd(chunk[:, :-1])
            loss = F.cross_entropy(logits.float().flatten(0, 1), chunk[:, 1:].flatten())
            loss.backward()
            for p in params:
                pdist.all_reduce_(p.grad, "avg")
            torch.nn.utils.clip_grad_norm_(params, t.grad_clip)
            opt.step()
            total += float(loss.detach())
            version += 1
            if ledger is not None:
                ledger.update([(max(bi * gb * L - 1, 0), (bi + 1) * gb * L)], version)
            if on_batch is not None and on_batch(ep + (bi + 1) / n_batches, net):
                stop = True
                break
        pdist.log0(
            f"ttt:epoch {ep + 1}/{t.prequant_epochs} loss={total / n_batches:.4f} "
            f"lr={lr:.2e} time={time.perf_counter() - t0:.1f}s non_record:true"
        )
        if stop:
            break
        if on_epoch is not None:
            on_epoch(ep + 1, net)
    for p in net.parameters():
        p.requires_grad_(True)
    net.eval()
    return net


def prequant_stage(cfg: RunConfig, model: nn.Module, val, device, out: dict) -> nn.Module:
    """`prequant_ttt` inside a run: labels `out` (result.json) non-record and logs why."""
    t0 = time.perf_counter()
    model = prequant_ttt(cfg, model, val, device)
    out.update(
        non_record=True,
        non_record_reason=NON_RECORD_REASON,
        prequant_ttt_seconds=time.perf_counter() - t0,
    )
    pdist.log0(f"non_record:true reason:{NON_RECORD_REASON}")
    return model
