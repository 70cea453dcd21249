"""The budget planner's plan file (`pgolf budget RUN --fit BYTES --out plan.json`) and its
config form: per quantized group an `Option` (bits, SDClip k, low-rank rank, ±1 prune), written
as JSON (`write_plan`) and read back checked (`read_plan`) by `pgolf quantize --plan`, which
applies it as the config overrides `quant.groups` (`groups_spec`, the inverse of
`pgolf.config.parse_groups`) and `quant.lqer` (LQER, arXiv:2402.02446; PR #1797), so the
quantized config carries the plan.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PLAN_FORMAT = "pgolf-quant-plan"


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

    def overrides(self) -> dict[str, Any]:
        """The `quant.groups` keys of this option (prune only when set)."""
        return {"bits": self.bits, "clip_k": self.clip_k} | (
            {"prune": self.prune} if self.prune else {}
        )


def lqer_spec(choice: Mapping[str, Option]) -> str:
    """{group: Option} -> the `quant.lqer` string ("attn:4,mlp:8"; "" = no low-rank terms)."""
    return ",".join(f"{g}:{o.rank}" for g, o in sorted(choice.items()) if o.rank > 0)


def groups_spec(overrides: Mapping[str, Mapping[str, Any]]) -> str:
    """{group: {bits, clip_k, method, prune}} -> the `quant.groups` string ("attn=bits:5,clip_k:
    10.5;mlp=bits:5"; "" = none) that `pgolf.quant.parse_groups` reads back to the same dict."""
    fmt = {
        "bits": lambda v: str(int(v)),
        "clip_k": lambda v: repr(float(v)),
        "method": str,
        "prune": lambda v: repr(float(v)),
    }
    return ";".join(
        f"{g}=" + ",".join(f"{k}:{fmt[k](ov[k])}" for k in sorted(ov))
        for g, ov in sorted(overrides.items())
        if ov
    )


def choice_sets(choice: Mapping[str, Option]) -> list[str]:
    """The `--set` overrides equal to a plan: `quant.groups` (bits, clip_k, prune), `quant.lqer`."""
    groups = {g: o.overrides() for g, o in choice.items()}
    return [f"quant.groups={groups_spec(groups)}", f"quant.lqer={lqer_spec(choice)}"]


def write_plan(path: str | Path, choice: Mapping[str, Option], extra: Mapping[str, Any]) -> dict:
    """The plan JSON: per-group bits / clip_k / lqer_rank / prune, the lqer spec, the equal `--set`
    overrides (`set`: quant.groups and quant.lqer, for `pgolf bundle`), and `extra` (report)."""
    doc = {
        "format": PLAN_FORMAT,
        "version": 1,
        "groups": {
            g: {"bits": o.bits, "clip_k": o.clip_k, "lqer_rank": o.rank, "prune": o.prune}
            for g, o in sorted(choice.items())
        },
        "lqer": lqer_spec(choice),
        "set": choice_sets(choice),
        **extra,
    }
    Path(path).write_text(json.dumps(doc, indent=1, sort_keys=True, default=float) + "\n")
    return doc


def read_plan(path: str | Path) -> tuple[dict[str, dict], str]:
    """Plan JSON -> (quant plan overrides {group: {bits, clip_k}}, quant.lqer spec), checked; from
    its `set` when it has one (the groups the plan moves, over the run's own quant.groups)."""
    from pgolf.quant import GROUPS

    try:
        doc = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(
            f"--plan {path}: not JSON ({e}); write it with `pgolf budget --fit`"
        ) from None
    if not isinstance(doc, dict) or doc.get("format") != PLAN_FORMAT:
        raise ValueError(
            f"--plan {path}: field 'format' is not {PLAN_FORMAT!r}; write the file "
            "with `pgolf budget RUN --fit BYTES --out FILE`"
        )
    groups = doc.get("groups")
    if not isinstance(groups, dict):
        raise ValueError(f"--plan {path}: field 'groups' must map group -> {{bits, clip_k}}")
    overrides: dict[str, dict] = {}
    choice = {}
    for g, spec in groups.items():
        if g not in GROUPS or g == "passthrough":
            raise ValueError(f"--plan {path}: groups.{g} is not a quantized group ({GROUPS[1:]})")
        try:
            o = Option(
                int(spec["bits"]),
                float(spec["clip_k"]),
                int(spec.get("lqer_rank", 0)),
                float(spec.get("prune", 0.0)),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(
                f"--plan {path}: groups.{g} needs integer 'bits', number 'clip_k', "
                f"integer 'lqer_rank', number 'prune' ({e!r})"
            ) from None
        if not (
            2 <= o.bits <= 8 and 0 <= o.clip_k < math.inf and o.rank >= 0 and 0 <= o.prune <= 1
        ):
            raise ValueError(
                f"--plan {path}: groups.{g}: bits 2..8, clip_k finite >= 0, "
                f"lqer_rank >= 0, prune 0..1 (got {o.label()})"
            )
        overrides[g], choice[g] = o.overrides(), o
    if "set" not in doc:  # a hand-written plan: every group it names
        return overrides, lqer_spec(choice)
    return _plan_sets(path, doc["set"], overrides)


def _plan_sets(path: str | Path, sets: Any, overrides: dict[str, dict]) -> tuple[dict, str]:
    """A plan file's `set` ["quant.groups=...", "quant.lqer=..."] (the groups it moves over the
    run's own) -> (its quant.groups overrides, quant.lqer), checked against its `groups`."""
    from pgolf.config import parse_groups
    from pgolf.lqer import parse_spec

    keys = [str(x).partition("=")[0] for x in sets] if isinstance(sets, list) else None
    if keys != ["quant.groups", "quant.lqer"]:
        raise ValueError(
            f"--plan {path}: field 'set' must be [\"quant.groups=...\", "
            '"quant.lqer=..."] (as `pgolf budget --fit` writes it)'
        )
    groups, lqer = (x.partition("=")[2] for x in sets)
    try:
        moved, _ = parse_groups(groups), parse_spec(lqer)
    except ValueError as e:
        raise ValueError(f"--plan {path}: field 'set': {e}") from None
    for g, ov in moved.items():
        if g in overrides and any(ov.get(k, v) != v for k, v in overrides[g].items()):
            raise ValueError(
                f"--plan {path}: 'set' moves {g} to {ov}, 'groups' says "
                f"{overrides[g]}: rewrite the file with `pgolf budget --fit`"
            )
    return moved, lqer
