"""The auditor's Condition 3 and 4 tests (spec rules-and-compliance.md part (d)), from a base run
of an evaluator, a re-run of it, and one counterfactual run.

C3: T3.1/T3.2 score before update from the ledger (`pgolf.ttt.score_before_update`); T3.3 the
reported total equals the sum of the per-target scores; T3.4 the no-update counterfactual:
the optimizer steps that consumed one scored chunk are undone in a re-run (`audit.Steps`, global
optimizer hooks, so pre-quant TTT's private model and optimizer are covered too) and the
chunk's scores must not move - a chunk scored before its updates cannot see them. Steps are
attributed to the first ledger update recorded after them, so an evaluator that trains on a
chunk, scores it and only then writes "update" is caught even though its ledger reads legal;
steps that no ledger update follows fail the test (updates the ledger does not announce).
T3.5 no inference-mode tensors left in the model.
C4: T4.1 every target scored exactly once (`pgolf.ttt.single_pass`); T4.2 score commits in
canonical order - per state lineage (the stream) for stream-stateful modes, per document for
per-document LoRA TTT (whose batches run longest document first); T4.3 a re-run reproduces the
reported total.
"""

from __future__ import annotations

import bisect

import torch
from torch import nn

from pgolf import modes as M
from pgolf import ttt as TT
from pgolf.lab.audit.base import EvalOut, Evaluator, Row, maxdiff
from pgolf.ttt_lora import documents


def inference_tensors(model: nn.Module) -> list[str]:
    """Names of inference-mode tensors in parameters, buffers and tensor attributes (T3.5)."""
    out = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_inference()]
    for name, mod in model.named_modules():
        for k, v in vars(mod).items():
            vals = v if isinstance(v, list | tuple) else [v]
            if any(isinstance(x, torch.Tensor) and x.is_inference() for x in vals):
                out.append(f"{name}.{k}" if name else k)
    return out


def _overlaps(r1: list[tuple[int, int]], r2: list[tuple[int, int]]) -> bool:
    return any(a < d and c < b for a, b in r1 for c, d in r2)


def step_owners(out: EvalOut) -> tuple[list[dict | None], int]:
    """For each optimizer step of a run, the first ledger update recorded after it (None for
    steps no update follows) -> (owners, number of unannounced steps)."""
    owners: list[dict | None] = [None] * out.steps
    done = 0
    for e in out.ledger.events:
        if e["kind"] == "update":
            for i in range(done, min(e.get("steps", 0), out.steps)):
                owners[i] = e
            done = max(done, e.get("steps", 0))
    return owners, out.steps - done


def counterfactual(
    ev: Evaluator, model: nn.Module, tokens: torch.Tensor, base: EvalOut, tol: float
) -> Row:
    """T3.4 (module docstring) on the scored chunk nearest the middle of the run."""
    test = "T3.4 no-update counterfactual (one chunk)"
    owners, hidden = step_owners(base)
    if hidden:
        return Row(
            "C3",
            test,
            "fail",
            f"{hidden} of {base.steps} optimizer steps are followed by "
            "no ledger update (updates the ledger does not announce)",
        )
    if not base.steps:
        return Row("C3", test, "n.a.", "no optimizer step: nothing to disable")
    scores = [e for e in base.ledger.events if e["kind"] == "score"]
    mid = (len(scores) - 1) / 2
    for k in sorted(range(len(scores)), key=lambda i: (abs(i - mid), i)):
        chunk = scores[k]["ranges"]
        off = frozenset(i for i, u in enumerate(owners) if _overlaps(u["ranges"], chunk))
        if off:
            break
    else:
        return Row("C3", test, "n.a.", "no optimizer step consumed a scored chunk")
    cf = ev.run(model, tokens, off=off)
    mask = torch.zeros_like(base.nll, dtype=torch.bool)
    for a, b in chunk:
        mask[a:b] = True
    d, j = maxdiff(base.nll[mask], cf.nll[mask])
    rest, _ = maxdiff(base.nll[~mask], cf.nll[~mask])
    a, b = chunk[0]
    return Row(
        "C3",
        test,
        "pass" if d <= tol else "fail",
        f"score event {k} ({int(mask.sum())} targets, first [{a},{b})): {len(off)} of "
        f"{base.steps} optimizer steps consumed it and were undone; its scores moved "
        f"{d:.2e} (tol {tol:.0e}), other targets {rest:.2e}"
        + (f"; first moved: target {int(mask.nonzero()[j])}" if d > tol else ""),
    )


def order(ev: Evaluator, base: EvalOut, tokens: torch.Tensor) -> Row:
    """T4.2: no score commit before a target already committed in its lineage."""
    test = "T4.2 score commits in canonical order"
    events = base.ledger.events
    if not base.steps and not any(e["kind"] == "update" for e in events):
        return Row("C4", test, "n.a.", "no state update: the order of commits cannot matter")
    per_doc = M.MODES[ev.mode].document_order
    starts = [a for a, _ in documents(tokens, ev.cfg.model.bos_id)] if per_doc else [0]
    last: dict[int, int] = {}
    n_scores = 0
    for i, e in enumerate(events):
        if e["kind"] != "score":
            continue
        n_scores += 1
        span: dict[int, tuple[int, int]] = {}
        for a, b in e["ranges"]:
            key = bisect.bisect_right(starts, a) - 1
            lo, hi = span.get(key, (a, b))
            span[key] = (min(lo, a), max(hi, b))
        for key, (lo, _) in span.items():
            if lo < last.get(key, 0):
                where = f"document from target {starts[key]}" if per_doc else "the stream"
                return Row(
                    "C4",
                    test,
                    "fail",
                    f"score commit {n_scores - 1} (event {i}) scores "
                    f"target {lo} after target {last[key] - 1} of {where}",
                )
        for key, (_, hi) in span.items():
            last[key] = max(last.get(key, 0), hi)
    unit = f"per document ({len(starts)})" if per_doc else "along the stream"
    return Row("C4", test, "pass", f"{n_scores} score commits, non-decreasing {unit}")


def rows(
    ev: Evaluator,
    model: nn.Module,
    tokens: torch.Tensor,
    base: EvalOut,
    again: EvalOut,
    floor: float,
    tol: float,
) -> list[Row]:
    """The C3 and C4 rows."""
    n, led = tokens.numel() - 1, base.ledger
    out = []

    def add(cond: str, test: str, ok: bool, evidence: str) -> None:
        out.append(Row(cond, test, "pass" if ok else "fail", evidence))

    n_up = sum(e["kind"] == "update" for e in led.events)
    v = TT.score_before_update(led)
    add(
        "C3",
        "T3.1/T3.2 score before update (ledger)",
        not v,
        f"{n_up} updates, {len(led.events) - n_up} score events" + (f"; {v[0]}" if v else ""),
    )
    dsum = abs(base.total - float(base.nll.sum()))
    add(
        "C3",
        "T3.3 reported total = sum of per-target scores",
        dsum <= 1e-6 * max(1.0, base.total) and base.tokens == n,
        f"reported {base.total:.6f} over {base.tokens} targets, per-target "
        f"sum {float(base.nll.sum()):.6f} over {n}",
    )
    out.append(counterfactual(ev, model, tokens, base, tol))
    inf = inference_tensors(base.model)
    add(
        "C3",
        "T3.5 no inference-mode tensors",
        not inf,
        f"{len(inf)} inference tensors" + (f": {inf[:3]}" if inf else ""),
    )
    v = TT.single_pass(led, n)
    add(
        "C4",
        "T4.1 every target scored exactly once",
        not v and base.tokens == n,
        f"{n} targets, reported {base.tokens}" + (f"; {v[0]}" if v else ""),
    )
    out.append(order(ev, base, tokens))
    dt = abs(base.total - again.total)
    add(
        "C4",
        "T4.3 one sweep, reproducible",
        dt <= max(100 * floor * n, 1e-9 * abs(base.total)),
        f"re-run total differs by {dt:.2e} nats (noise floor {floor:.1e}/target)",
    )
    return out
