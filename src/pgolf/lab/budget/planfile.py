"""The budget planner's plan file (`pgolf budget RUN --fit BYTES --out plan.json`): per quantized
group an `Option` (bits, SDClip k, low-rank rank, ±1 prune), written as JSON (`write_plan`) and
read back by `pgolf quantize --plan` (`read_plan`) into the typed plan (`pgolf.quantplan.
QuantPlan`: quant.groups and quant.lqer; LQER, arXiv:2402.02446; PR #1797), so the quantized
config carries the plan.

A plan file is read like an artifact: a regular file (a FIFO or a device is refused before it is
read), at most `MAX_BYTES`, UTF-8, JSON nested at most `MAX_DEPTH` deep (checked before parsing),
integers of at most `MAX_DIGITS` digits, no key twice in an object, and every value it applies
typed and range-checked (`pgolf.quantplan`); each refusal is a ValueError naming the file.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgolf.quantplan import (
    CLIP_K_MAX,
    GROUPS,
    LQER_GROUPS,
    RANK_MAX,
    GroupPlan,
    QuantPlan,
)

PLAN_FORMAT = "pgolf-quant-plan"
MAX_BYTES = 1 << 20  # a written plan with its report is a few tens of KB
MAX_DEPTH = 32  # the written form nests 4 deep
MAX_DIGITS = 30  # an integer literal, anywhere in the file
GROUP_KEYS = ("bits", "clip_k", "lqer_rank", "prune")


@dataclass(frozen=True)
class Option:
    """One way to store a group: bit width, SDClip k, low-rank correction rank (0 = none), and the
    fraction of its ±1 codes zeroed (`pgolf.quant.pm1_order`; 0 = none)."""

    bits: int
    clip_k: float
    rank: int = 0
    prune: float = 0.0

    def label(self) -> str:
        return f"int{self.bits} k={self.clip_k:g} r={self.rank}" + (
            f" p={self.prune:g}" if self.prune else ""
        )

    def group_plan(self) -> GroupPlan:
        """The quant.groups keys of this option (prune only when set)."""
        return GroupPlan(bits=self.bits, clip_k=self.clip_k, prune=self.prune or None)


def plan_of(choice: Mapping[str, Option]) -> QuantPlan:
    """{group: Option} -> the QuantPlan setting each group's bits / clip_k / prune and ranks."""
    return QuantPlan.build(
        {g: o.group_plan() for g, o in choice.items()}, {g: o.rank for g, o in choice.items()}
    )


def plan_sets(plan: QuantPlan) -> list[str]:
    """The `--set` overrides equal to a plan (quant.lqer only when it has a say on ranks)."""
    out = [f"quant.groups={plan.groups_spec()}"]
    return out + ([] if plan.lqer is None else [f"quant.lqer={plan.lqer_spec()}"])


def write_plan(path: str | Path, choice: Mapping[str, Option], extra: Mapping[str, Any]) -> dict:
    """The plan JSON: per-group bits / clip_k / lqer_rank / prune, the lqer spec, the equal `--set`
    overrides (`set`: quant.groups and quant.lqer, for `pgolf bundle`), and `extra` (report)."""
    plan = plan_of(choice)
    doc = {
        "format": PLAN_FORMAT,
        "version": 1,
        "groups": {
            g: {"bits": o.bits, "clip_k": o.clip_k, "lqer_rank": o.rank, "prune": o.prune}
            for g, o in sorted(choice.items())
        },
        "lqer": plan.lqer_spec(),
        "set": plan_sets(plan),
        **extra,
    }
    Path(path).write_text(json.dumps(doc, indent=1, sort_keys=True, default=float) + "\n")
    return doc


# ----------------------------------------------------------------------------------------------
# Reading


def _read_text(path: Path) -> str:
    """The file's text: regular file only (opened without blocking), at most MAX_BYTES, UTF-8."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise ValueError(f"--plan {path}: cannot open ({e.strerror}); check the path") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"--plan {path}: not a regular file; pass the plan's JSON file")
        if st.st_size > MAX_BYTES:
            raise ValueError(
                f"--plan {path}: {st.st_size:,} bytes, more than a plan's {MAX_BYTES:,}"
            )
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(MAX_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_BYTES:
        raise ValueError(f"--plan {path}: more than a plan's {MAX_BYTES:,} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"--plan {path}: not UTF-8 text (byte {e.start}); not a plan file"
        ) from None


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)
_BRACKET = re.compile(r"[\[\]{}]")


def _check_depth(path: Path, text: str) -> None:
    """Brackets outside strings nest at most MAX_DEPTH deep (before the recursive parser runs)."""
    depth = 0
    for m in _BRACKET.finditer(_STRING.sub("", text)):
        depth += 1 if m.group() in "[{" else -1
        if depth > MAX_DEPTH:
            raise ValueError(f"--plan {path}: JSON nested more than {MAX_DEPTH} deep; not a plan")


def _load_json(path: Path, text: str) -> Any:
    def integer(s: str) -> int:
        if len(s.lstrip("-")) > MAX_DIGITS:
            raise ValueError(f"an integer of {len(s.lstrip('-')):,} digits")
        return int(s)

    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in pairs:
            if k in out:
                raise ValueError(f"key {k[:40]!r} twice in one object")
            out[k] = v
        return out

    _check_depth(path, text)
    try:
        return json.loads(text, parse_int=integer, object_pairs_hook=unique)
    except ValueError as e:  # JSONDecodeError included
        raise ValueError(
            f"--plan {path}: not a plan's JSON ({e}); write it with `pgolf budget --fit`"
        ) from None


def _short(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 40 else r[:37] + "..."


def _group(path: Path, g: str, spec: Any) -> tuple[GroupPlan, int]:
    """groups.G {bits, clip_k, lqer_rank?, prune?} -> (GroupPlan, low-rank rank), checked."""
    where = f"--plan {path}: groups.{g}"
    if not isinstance(spec, dict) or not {"bits", "clip_k"} <= set(spec):
        raise ValueError(
            f"{where} must be {{bits, clip_k, lqer_rank, prune}} (bits, clip_k needed)"
        )
    if unknown := sorted(set(spec) - set(GROUP_KEYS)):
        raise ValueError(
            f"{where}: unknown keys {_short(unknown)} (known: {', '.join(GROUP_KEYS)})"
        )
    rank_max = RANK_MAX if g in LQER_GROUPS else 0
    rules = {  # key -> (is it an int only, low, high, the rule in words)
        "bits": (True, 2, 8, "bits 2..8, an integer"),
        "clip_k": (False, 0, CLIP_K_MAX, f"clip_k 0..{CLIP_K_MAX:g}, a number"),
        "lqer_rank": (True, 0, rank_max, f"lqer_rank 0..{rank_max}, an integer"),
        "prune": (False, 0, 1, "prune 0..1, a number"),
    }
    vals = {"lqer_rank": 0, "prune": 0.0, **spec}
    for key, (whole, lo, hi, rule) in rules.items():
        v = vals[key]
        ok_type = isinstance(v, int if whole else (int, float)) and not isinstance(v, bool)
        if not (ok_type and lo <= v <= hi):  # NaN fails the range
            raise ValueError(f"{where}.{key} {_short(v)}: {rule}")
    gp = GroupPlan(bits=vals["bits"], clip_k=vals["clip_k"], prune=vals["prune"] or None)
    return gp, vals["lqer_rank"]


def read_plan(path: str | Path) -> QuantPlan:
    """Plan file -> the QuantPlan it applies (over the run's own), checked: from its `set` when it
    has one (the groups the plan moves, over the run's own quant.groups; its low-rank ranks), else
    every group it names."""
    path = Path(path)
    doc = _load_json(path, _read_text(path))
    if not isinstance(doc, dict) or doc.get("format") != PLAN_FORMAT:
        raise ValueError(
            f"--plan {path}: field 'format' is not {PLAN_FORMAT!r}; write the file "
            "with `pgolf budget RUN --fit BYTES --out FILE`"
        )
    if doc.get("version", 1) != 1 or isinstance(doc.get("version"), bool):
        raise ValueError(f"--plan {path}: field 'version' {_short(doc['version'])} is not 1")
    groups = doc.get("groups")
    if not isinstance(groups, dict):
        raise ValueError(f"--plan {path}: field 'groups' must map group -> {{bits, clip_k}}")
    plans, ranks = {}, {}
    for g, spec in groups.items():
        if g not in GROUPS or g == "passthrough":
            raise ValueError(
                f"--plan {path}: groups.{_short(g)[1:-1]} is not a quantized group ({GROUPS[1:]})"
            )
        plans[g], ranks[g] = _group(path, g, spec)
    if "set" not in doc:  # a hand-written plan: every group it names
        return QuantPlan.build(plans, ranks)
    return _plan_sets(path, doc["set"], plans, ranks)


def _plan_sets(
    path: Path, sets: Any, plans: dict[str, GroupPlan], ranks: dict[str, int]
) -> QuantPlan:
    """A plan file's `set` ["quant.groups=...", "quant.lqer=..."] (the groups it moves over the
    run's own) -> its QuantPlan, checked against its `groups`."""
    ok = isinstance(sets, list) and all(isinstance(x, str) for x in sets)
    keys = [x.partition("=")[0] for x in sets] if ok else None
    if keys != ["quant.groups", "quant.lqer"]:
        raise ValueError(
            f"--plan {path}: field 'set' must be [\"quant.groups=...\", "
            '"quant.lqer=..."] (as `pgolf budget --fit` writes it)'
        )
    groups, lqer = (x.partition("=")[2] for x in sets)
    try:
        moved = QuantPlan.parse(groups, lqer)
    except ValueError as e:
        raise ValueError(f"--plan {path}: field 'set': {e}") from None
    for g, gp in moved.groups:
        if g in plans and any(gp.items().get(k, v) != v for k, v in plans[g].items().items()):
            raise ValueError(
                f"--plan {path}: 'set' moves {g} to {gp.items()}, 'groups' says "
                f"{plans[g].items()}: rewrite the file with `pgolf budget --fit`"
            )
    if any(moved.ranks().get(g, 0) != r for g, r in ranks.items()):
        raise ValueError(
            f"--plan {path}: 'set' has low-rank ranks {lqer!r}, 'groups' says "
            f"{ {g: r for g, r in ranks.items() if r} }: rewrite the file with `pgolf budget --fit`"
        )
    return moved
