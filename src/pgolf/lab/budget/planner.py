"""Budget planner: per quantized group, the bits / SDClip k / low-rank rank / ±1 pruning that fill
a byte cap.

`pgolf budget RUN --fit CAP` measures, on a finished run, what each option costs and what it
loses: every option (bits, clip k, LQER rank, ±1 prune fraction) of one group is quantized
alone, the other groups staying at the run's own plan, and measured as (Δbytes of the whole
artifact, compressed as it is written; Δbpb of the round-trip model on calibration tokens, the
tail of the last TRAINING shard, never validation). Assuming the deltas add, `solve` picks one
option per group to minimize the summed Δbpb with the summed Δbytes within the cap: an exact
multiple-choice knapsack (groups merged one by one into a Pareto frontier of (bytes, loss);
branches that cannot fit even with the smallest options of the groups left are cut). The chosen
combination is then built for real and re-solved with a tighter budget while it is over the cap
(compression is not additive).

The stated prediction error adds (a) the additivity residual measured on the pair of chosen
options that move the loss most, times the number of pairs of changed groups, and (b) the
difference of the summed Δbpb between the two halves of the calibration tokens (sampling error).
The plan file (`pgolf.lab.budget.planfile`) is what `pgolf quantize --plan plan.json` applies, as
the config overrides `quant.groups` and `quant.lqer` (`Bench.plan_sets`: the groups the plan moves
over the run's own), so the quantized config, and a bundle of it, carry the plan. Every what-if is
quantized by the quantize stage itself (`pgolf.pipeline.quantize_weights`) with another typed plan
(`Bench.plan_for`), one group at a time. The idea of spending
the budget by measured marginal value is PR #1550's (VE width, not logged); low-rank terms are
`pgolf.lqer` (LQER, arXiv:2402.02446; PR #1797).
"""

from __future__ import annotations

import copy
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from pgolf.lab.budget.planfile import Option
from pgolf.quantplan import QuantPlan
from pgolf.runlog import RunDir

SOLVER = "exact multiple-choice knapsack (Pareto-frontier merge over groups)"


@dataclass(frozen=True)
class Row:
    """A measured option of a group: Δ against the run's own plan (its baseline row is 0, 0)."""

    group: str
    option: Option
    d_bytes: int
    d_bpb: float
    d_halves: tuple[float, float] = (0.0, 0.0)  # Δbpb on each half of the calibration tokens


class InfeasibleBudget(ValueError):
    """No combination of the measured options fits the cap (the CLI exits 2)."""


def solve(table: Mapping[str, Sequence[Row]], budget: int) -> dict[str, Row]:
    """One row per group, Σ d_bytes <= budget, least Σ d_bpb (ties: fewer bytes); exact."""
    groups = sorted(g for g in table if table[g])
    if not groups:
        raise InfeasibleBudget("budget planner: no groups with measured options")
    mins = [min(r.d_bytes for r in table[g]) for g in groups]
    rest = [sum(mins[i:]) for i in range(len(groups) + 1)]  # least bytes the later groups add
    if rest[0] > budget:
        raise InfeasibleBudget(
            f"no plan fits: the smallest options still need {rest[0] - budget:,} bytes more than "
            "the cap allows; raise --fit, or measure smaller options (--fit-bits 3,4)"
        )
    front: list[tuple[int, float, tuple[Row, ...]]] = [(0, 0.0, ())]
    for i, g in enumerate(groups):
        slack = budget - rest[i + 1]
        cand = [
            (b + r.d_bytes, loss + r.d_bpb, picks + (r,))
            for b, loss, picks in front
            for r in table[g]
            if b + r.d_bytes <= slack
        ]
        cand.sort(key=lambda c: (c[0], c[1]))
        front = []
        for c in cand:  # Pareto: keep a point only if it loses less than every smaller one
            if not front or c[1] < front[-1][1]:
                front.append(c)
    best = min(front, key=lambda c: (c[1], c[0]))
    return {r.group: r for r in best[2]}


# ----------------------------------------------------------------------------------------------
# Measurement on a finished run


class Bench:
    """A run's fp weights, Hessians and calibration tokens: size and score any {group: Option}.

    Bytes are the artifact `pgolf quantize` would write (same tensors, order, meta, codec) plus
    the run's code bytes; bpb is the round-trip model on the last `calib_tokens` tokens of the
    last training shard, in two halves (each a whole number of eval windows)."""

    def __init__(self, run_dir: str | Path, calib_tokens: int = 65536):
        from pgolf import pipeline, quant
        from pgolf.bpb import build_byte_tables
        from pgolf.data import find_shards, read_shard, sha256_file
        from pgolf.dist import init
        from pgolf.lab.bundle import code_size
        from pgolf.model import graph_state

        rd = RunDir.open(run_dir, need=("config", "final"), what="--fit needs")
        cfg = rd.config()
        self.device = init("auto").device
        model = pipeline.load_run_model(cfg, rd.weights("final"), self.device)
        cfg, data_dir, tok = pipeline.resolve_data(cfg)
        self.run, self.cfg, self.own = rd.path, cfg, QuantPlan.of(cfg.quant)
        self.state = {k: v.detach() for k, v in model.state_dict().items()}
        self.plan = quant.make_plan(self.state, cfg.quant, cfg.model, self.own)
        self.hessians = pipeline.calibrate(cfg, model, data_dir, self.own, log=False)
        ranks = self.own.ranks()
        self.base: dict[str, Option] = {}
        for e in self.plan:
            if e.method != "fp16" and e.group not in self.base:
                self.base[e.group] = Option(e.bits, e.clip_k, ranks.get(e.group, 0), e.prune)
        self.lowrank_groups = {e.group for e in self.plan if e.name in self.hessians}
        seq = cfg.eval.eval_seq_len
        arr = read_shard(find_shards(data_dir, "train")[-1], cfg.model.vocab_size)
        half = max(1, calib_tokens // (2 * seq)) * seq
        if arr.size < 2 * half + 1:
            raise ValueError(
                f"{data_dir}: last train shard has {arr.size} tokens, fewer than "
                f"--calib-tokens {2 * half}: lower --calib-tokens"
            )
        tail = torch.from_numpy(arr[-(2 * half + 1) :].astype("int64"))
        self.halves = (tail[: half + 1], tail[half:])
        self.tables = build_byte_tables(str(tok), cfg.model.vocab_size)
        self.eval_model = copy.deepcopy(model)
        self.meta = {
            "format": "pgolf-artifact",
            "config": None,
            "code_bytes": 0,
            "code_desc": "",
            **graph_state(model),
            "tokenizer_sha256": sha256_file(tok),
        }
        self._code_size, self._code = code_size, {}
        self.code_bytes, self.meta["code_desc"] = self.code(cfg)
        self._groups: dict[tuple[str, Option], tuple[list, list]] = {}
        self._fixed: list | None = None
        self._scores: dict[tuple, tuple[float, float, float]] = {}

    def code(self, cfg) -> tuple[int, str]:
        """The bundle's code bytes for `cfg` (cached per quant.groups and quant.lqer, the fields
        a plan changes in the config the bundle embeds)."""
        key = (cfg.quant.groups, cfg.quant.lqer)
        if key not in self._code:
            self._code[key] = self._code_size(cfg)
        return self._code[key]

    def plan_for(self, choice: Mapping[str, Option]) -> QuantPlan:
        """The run's plan with `choice` {group: Option} over it, as `quantize --plan` records it
        (`plan_sets`): each group the choice moves gets the run's own keys without prune, then
        the option's bits / clip_k / prune; the low-rank ranks are the choice's."""
        moved = {}
        for g, o in choice.items():
            b = self.base[g]
            if (o.bits, o.clip_k, o.prune) != (b.bits, b.clip_k, b.prune):
                kept = replace(self.own.group(g), prune=None)
                moved[g] = kept.over(o.group_plan())
        ranks = {g: o.rank for g, o in choice.items()}
        return QuantPlan.build({**dict(self.own.groups), **moved}, ranks)

    def cfg_for(self, choice: Mapping[str, Option]):
        """The run config carrying `plan_for(choice)` (quant.groups, quant.lqer)."""
        return replace(self.cfg, quant=self.plan_for(choice).into(self.cfg.quant))

    def plan_sets(self, choice: Mapping[str, Option]) -> list[str]:
        """The `--set` overrides that quantize this run as `choice` (kept in the plan file)."""
        q = self.cfg_for({**self.base, **choice}).quant
        return [f"quant.groups={q.groups}", f"quant.lqer={q.lqer}"]

    def _group(self, g: str, o: Option) -> tuple[list, list]:
        """Group g quantized as option o (the quantize stage, that group only) -> (its tensors,
        its low-rank terms)."""
        from pgolf.pipeline import quantize_weights

        if (g, o) not in self._groups:
            plan = self.plan_for({**self.base, g: o})
            out = quantize_weights(self.cfg, self.state, self.hessians, plan, groups={g}, log=False)
            self._groups[(g, o)] = (
                [t for t in out if t.group != "lqer"],
                [t for t in out if t.group == "lqer"],
            )
        return self._groups[(g, o)]

    def tensors(self, choice: Mapping[str, Option]) -> list:
        """The artifact's tensors for the run's plan changed by `choice`, in `quantize` order."""
        from pgolf.pipeline import quantize_weights

        if self._fixed is None:  # the groups stored as fp16 (passthrough, method fp16)
            fp16 = {e.group for e in self.plan if e.method == "fp16"}
            self._fixed = quantize_weights(
                self.cfg, self.state, {}, self.own, groups=fp16, log=False
            )
        full = {**self.base, **choice}
        by_name = {t.name: t for t in self._fixed}
        low: dict[str, list] = {}
        for g, o in full.items():
            qts, lq = self._group(g, o)
            by_name.update((t.name, t) for t in qts)
            for t in lq:
                low.setdefault(t.name.rsplit(".lqer.", 1)[0], []).append(t)
        main = [by_name[e.name] for e in self.plan]
        return main + [t for m in main for t in low.get(m.name, [])]

    def size(self, choice: Mapping[str, Option], exact_code: bool = False) -> int:
        """Model bytes as written + code bytes (the bundle for this plan's config if exact)."""
        from pgolf.artifact import encode_artifact
        from pgolf.config import to_dict

        cfg = self.cfg_for({**self.base, **choice})
        code = self.code(cfg)[0] if exact_code else self.code_bytes
        meta = {**self.meta, "config": to_dict(cfg), "code_bytes": code}
        q = cfg.quant
        return len(encode_artifact(self.tensors(choice), meta, q.codec, q.pack_bits)) + code

    def score(self, choice: Mapping[str, Option]) -> tuple[float, float, float]:
        """(bpb on all calibration tokens, on the first half, on the second half)."""
        from pgolf import evaluate as E
        from pgolf import lqer, quant
        from pgolf.bpb import bits_per_byte

        key = tuple(sorted({**self.base, **choice}.items()))
        if key not in self._scores:
            state = lqer.add_back(quant.dequantize_state(self.tensors(choice)))
            self.eval_model.load_state_dict(state, strict=False)
            e = self.cfg.eval
            rs = [
                E.eval_plain(
                    self.eval_model, h, e.eval_seq_len, e.val_batch_seqs, self.tables, self.device
                )
                for h in self.halves
            ]
            full = bits_per_byte(
                sum(r.nll_sum for r in rs), sum(r.tokens for r in rs), sum(r.bytes for r in rs)
            )
            self._scores[key] = (full, rs[0].val_bpb, rs[1].val_bpb)
        return self._scores[key]


def default_grid(
    bench: Bench,
    bits: Iterable[int] = (4, 5, 6, 7, 8),
    ranks: Iterable[int] = (0, 4, 8),
    k_scales: Iterable[float] = (0.8, 1.25),
    prunes: Iterable[float] = (0.1, 0.25, 0.5),
) -> dict[str, list[Option]]:
    """Per group: every bits x rank at the run's k (ranks only where a Hessian exists), the run's
    bits with k scaled by each of `k_scales`, and the run's option with each ±1 prune fraction."""
    grid = {}
    for g, o in bench.base.items():
        rs = tuple(ranks) if g in bench.lowrank_groups else (0,)
        opts = [o] + [Option(b, o.clip_k, r) for b in bits for r in rs]
        if o.clip_k > 0:
            opts += [replace(o, clip_k=round(o.clip_k * s, 4)) for s in k_scales]
        opts += [replace(o, prune=p) for p in prunes]
        grid[g] = list(dict.fromkeys(opts))
    return grid


def measure(bench: Bench, grid: Mapping[str, Sequence[Option]], log=None) -> dict[str, list[Row]]:
    """Each option of each group alone against the run's plan -> rows (baseline row included)."""
    b0, (l0, h1, h2) = bench.size({}), bench.score({})
    table: dict[str, list[Row]] = {}
    for g, opts in grid.items():
        for o in opts:
            b, (loss, a1, a2) = bench.size({g: o}), bench.score({g: o})
            row = Row(g, o, b - b0, loss - l0, (a1 - h1, a2 - h2))
            table.setdefault(g, []).append(row)
            if log:
                log(
                    f"plan: measured {g:<12} {o.label():<20} Δbytes {row.d_bytes:+9,} "
                    f"Δbpb {row.d_bpb:+.5f}"
                )
    return table


def fit(bench: Bench, table: Mapping[str, Sequence[Row]], cap: int, tries: int = 5) -> dict:
    """Solve, build the plan for real, tighten while it is over the cap; then the error terms."""
    base_bytes, base_bpb = bench.size({}), bench.score({})[0]
    budget = cap - base_bytes
    for _ in range(tries):
        try:
            picks = solve(table, budget)
        except InfeasibleBudget as e:
            raise InfeasibleBudget(
                f"--fit {cap:,} (the run's own plan: {base_bytes:,} bytes, model + code): {e}"
            ) from None
        choice = {g: r.option for g, r in picks.items()}
        real = bench.size(choice, exact_code=True)
        if real <= cap:
            break
        budget -= real - cap  # compression is not additive: ask for the overshoot back
    else:
        raise InfeasibleBudget(
            f"no plan measured under the cap {cap:,} after {tries} tries "
            f"(last {real:,} bytes): raise --fit"
        )
    d = sum(r.d_bpb for r in picks.values())
    halves = [sum(r.d_halves[i] for r in picks.values()) for i in (0, 1)]
    moved = sorted(
        (r for r in picks.values() if r.option != bench.base[r.group]), key=lambda r: -abs(r.d_bpb)
    )
    pair = None
    if len(moved) >= 2:
        a, b = moved[:2]
        got = bench.score({a.group: a.option, b.group: b.option})[0] - base_bpb
        pair = {
            "groups": [a.group, b.group],
            "measured_d_bpb": got,
            "additive_d_bpb": a.d_bpb + b.d_bpb,
            "residual": got - a.d_bpb - b.d_bpb,
        }
    n_pairs = len(moved) * (len(moved) - 1) // 2
    err = (abs(pair["residual"]) * n_pairs if pair else 0.0) + abs(halves[0] - halves[1])
    full = bench.score(choice)[0] - base_bpb
    return {
        "choice": choice,
        "picks": picks,
        "cap": cap,
        "solver": SOLVER,
        "set": bench.plan_sets(choice),
        "baseline": {
            "bytes": base_bytes,
            "bpb_calib": base_bpb,
            "options": {g: o.label() for g, o in bench.base.items()},
        },
        "predicted": {
            "bytes": base_bytes + sum(r.d_bytes for r in picks.values()),
            "bytes_built": real,
            "d_bpb": d,
            "d_bpb_halves": halves,
            "error_bpb": err,
            "pair": pair,
            "changed_groups": len(moved),
            "d_bpb_calib_full_plan": full,
        },
    }


def plan_report(
    res: Mapping[str, Any], table: Mapping[str, Sequence[Row]], base_val_bpb: float | None
) -> tuple[list[str], dict]:
    """Log lines and the JSON `extra` of a `fit` result."""
    p, b = res["predicted"], res["baseline"]
    lines = [f"plan: solver: {res['solver']}; cap {res['cap']:,} bytes"]
    for g, r in sorted(res["picks"].items()):
        lines.append(
            f"plan: {g:<12} {b['options'][g]:<20} -> {r.option.label():<20} "
            f"Δbytes {r.d_bytes:+,} Δbpb {r.d_bpb:+.5f}"
        )
    lines.append(
        f"plan: bytes {b['bytes']:,} -> predicted {p['bytes']:,}, built "
        f"{p['bytes_built']:,} (cap {res['cap']:,})"
    )
    lines.append(
        f"plan: Δbpb predicted {p['d_bpb']:+.5f} ± {p['error_bpb']:.5f} (calibration "
        f"tokens; the whole plan measured there: {p['d_bpb_calib_full_plan']:+.5f})"
    )
    if base_val_bpb is not None:
        lines.append(
            f"plan: predicted round-trip val bpb {base_val_bpb + p['d_bpb']:.5f} "
            f"(run's own {base_val_bpb:.5f} + Δ)"
        )
    rows = [
        {
            "group": r.group,
            "bits": r.option.bits,
            "clip_k": r.option.clip_k,
            "lqer_rank": r.option.rank,
            "prune": r.option.prune,
            "d_bytes": r.d_bytes,
            "d_bpb": r.d_bpb,
            "d_bpb_halves": list(r.d_halves),
        }
        for g in sorted(table)
        for r in table[g]
    ]
    pred = {
        **p,
        "bpb": None if base_val_bpb is None else base_val_bpb + p["d_bpb"],
        "base_val_bpb_roundtrip": base_val_bpb,
    }
    lines.append("plan: as config: " + " ".join(f"--set {shlex.quote(x)}" for x in res["set"]))
    return lines, {
        "cap": res["cap"],
        "solver": res["solver"],
        "baseline": b,
        "set": res["set"],
        "predicted": pred,
        "table": rows,
    }
