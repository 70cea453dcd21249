"""The quantization plan as a typed value: per group the method / bits / SDClip k / ±1 prune
fraction over the config's defaults (`GroupPlan`), and the low-rank (LQER) rank per group
(`QuantPlan`).

It enters as text in four places and is parsed once, where it enters, into a `QuantPlan`: the
config's `quant.groups` / `quant.lqer` (presets, `--set`, environment, an artifact's metadata:
`QuantPlan.of`, kept per string pair), `pgolf quantize --plan GROUP=key:value` (`parse`), and a plan
file (`pgolf.lab.budget.planfile.read_plan`). The config keeps the two strings (they are what an
artifact's metadata and a bundle carry); `into` writes a plan back into them, keeping the config's
own spelling where the plan equals it. Every value is typed and range-checked on construction
(`GroupPlan.__post_init__`), so no reader can build an unchecked plan.

String forms: quant.groups "mlp=bits:5;attn=bits:5,clip_k:10.28;embed=method:rtn" (a group named
twice merges key by key, in order); quant.lqer "mlp:8,attn:4" (rank 0 = none).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

GROUPS = ("passthrough", "attn", "mlp", "embed", "value_embed", "other")  # pgolf.quant
METHODS = ("gptq", "rtn", "fp16")
LQER_GROUPS = ("attn", "mlp", "embed", "value_embed")  # groups with a Hessian (pgolf.lqer)
BITS_MIN, BITS_MAX = 2, 8  # integer codes; fp16 tensors are 16 bits
CLIP_K_MAX = 100.0  # SDClip k (scale k·std/Q): far past any useful clip (0 = max-abs scaling)
RANK_MAX = 1024  # low-rank terms; the fit also caps the rank at min(rows, cols)
KEY_TYPES = {"bits": int, "clip_k": float, "method": str, "prune": float}
"""quant.groups keys = GroupPlan's fields, with their types: a new per-group setting is one field
of GroupPlan, one entry here and its range check in `GroupPlan.__post_init__`."""
KEYS = tuple(KEY_TYPES)


def _short(v: Any) -> str:
    """repr(v), cut to 60 characters (a message never echoes a megabyte)."""
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass(frozen=True, slots=True)
class GroupPlan:
    """One group's settings over the config's defaults; None keeps the default."""

    bits: int | None = None
    clip_k: float | None = None
    method: str | None = None
    prune: float | None = None  # fraction of the group's ±1 codes zeroed after quantization

    def __post_init__(self) -> None:
        fp16 = self.method == "fp16"
        problems = []
        if self.method is not None and self.method not in METHODS:
            problems.append(f"method {_short(self.method)} is not one of {', '.join(METHODS)}")
        if self.bits is not None and not (
            _is_int(self.bits) and (BITS_MIN <= self.bits <= (16 if fp16 else BITS_MAX))
        ):
            problems.append(f"bits {_short(self.bits)} must be an integer {BITS_MIN}..{BITS_MAX}")
        if self.clip_k is not None and not (
            _is_num(self.clip_k) and 0 <= self.clip_k <= CLIP_K_MAX
        ):
            problems.append(f"clip_k {_short(self.clip_k)} must be a number 0..{CLIP_K_MAX:g}")
        if self.prune is not None and not (_is_num(self.prune) and 0 <= self.prune <= 1):
            problems.append(f"prune {_short(self.prune)} must be a fraction 0..1")
        if problems:
            raise ValueError("; ".join(problems))
        for k in ("clip_k", "prune"):  # numbers are floats (1 and 1.0 are one plan)
            if getattr(self, k) is not None:
                object.__setattr__(self, k, float(getattr(self, k)))

    def items(self) -> dict[str, Any]:
        """The keys this plan sets, in `KEYS` order."""
        return {k: getattr(self, k) for k in KEYS if getattr(self, k) is not None}

    def over(self, top: GroupPlan) -> GroupPlan:
        """This plan with every key `top` sets replaced by `top`'s."""
        return replace(self, **top.items())

    def spec(self) -> str:
        """ "bits:5,clip_k:10.28" (keys sorted; floats as repr, which parse back exactly)."""
        return ",".join(
            f"{k}:{repr(float(v)) if KEY_TYPES[k] is float else v}"
            for k, v in sorted(self.items().items())
        )


def _check_group(g: str, where: str) -> None:
    if g not in GROUPS:
        raise ValueError(f"{where}: {_short(g)} is not a group ({', '.join(GROUPS)})")


@dataclass(frozen=True, slots=True)
class QuantPlan:
    """Per-group settings and low-rank ranks. `groups`: (group, GroupPlan) sorted, each group once;
    `lqer`: (group, rank > 0) sorted, or None when the plan says nothing about low-rank terms
    (`over` then keeps the lower plan's)."""

    groups: tuple[tuple[str, GroupPlan], ...] = ()
    lqer: tuple[tuple[str, int], ...] | None = None

    def __post_init__(self) -> None:
        gs, lq = [g for g, _ in self.groups], [g for g, _ in self.lqer or ()]
        if not (
            gs == sorted(set(gs) & set(GROUPS))
            and all(isinstance(p, GroupPlan) for _, p in self.groups)
            and lq == sorted(set(lq) & set(LQER_GROUPS))
            and all(_is_int(r) and 1 <= r <= RANK_MAX for _, r in self.lqer or ())
        ):
            raise ValueError(
                f"quant plan {_short(self.groups)} / {_short(self.lqer)}: groups from {GROUPS} "
                f"(low-rank: {LQER_GROUPS}) sorted, each once; ranks 1..{RANK_MAX}"
            )

    # construction

    @classmethod
    def build(
        cls, groups: dict[str, GroupPlan] | None = None, ranks: dict[str, int] | None = None
    ) -> QuantPlan:
        """From {group: GroupPlan} (empty ones dropped) and {group: rank} (0 dropped; None: no
        low-rank say)."""
        gs = tuple(sorted((g, p) for g, p in (groups or {}).items() if p.items()))
        lq = None if ranks is None else tuple(sorted((g, r) for g, r in ranks.items() if r != 0))
        return cls(gs, lq)

    @classmethod
    def parse(cls, groups: str = "", lqer: str | None = None) -> QuantPlan:
        """quant.groups and quant.lqer strings -> the plan (lqer None: no low-rank say)."""
        return cls.build(parse_groups(groups), None if lqer is None else parse_lqer(lqer))

    @staticmethod
    def of(q: Any) -> QuantPlan:
        """The plan a QuantConfig carries (quant.groups, quant.lqer), parsed once per pair."""
        return _parsed(q.groups, q.lqer)

    # reading

    def group(self, g: str) -> GroupPlan:
        return dict(self.groups).get(g, GroupPlan())

    def ranks(self) -> dict[str, int]:
        return dict(self.lqer or ())

    def over(self, top: QuantPlan) -> QuantPlan:
        """`top` over this plan: each group key by key; top's low-rank ranks when it has any say."""
        gs = dict(self.groups)
        for g, p in top.groups:
            gs[g] = gs.get(g, GroupPlan()).over(p)
        return QuantPlan.build(gs, self.ranks() if top.lqer is None else top.ranks())

    # writing

    def groups_spec(self) -> str:
        return ";".join(f"{g}={p.spec()}" for g, p in self.groups)

    def lqer_spec(self) -> str:
        return ",".join(f"{g}:{r}" for g, r in self.lqer or ())

    def into(self, q: Any) -> Any:
        """QuantConfig `q` carrying this plan (as is, not merged: see `over`); `q`'s own strings
        are kept where they already say the same."""
        own = QuantPlan.of(q)
        groups = q.groups if own.groups == self.groups else self.groups_spec()
        lqer = q.lqer if self.lqer is None or own.lqer == self.lqer else self.lqer_spec()
        _parsed(groups, lqer, QuantPlan(self.groups, own.lqer if self.lqer is None else self.lqer))
        return replace(q, groups=groups, lqer=lqer)


_PARSED: dict[tuple[str, str], QuantPlan] = {}  # (quant.groups, quant.lqer) -> their plan


def _parsed(groups: str, lqer: str, known: QuantPlan | None = None) -> QuantPlan:
    """The plan of a config's two strings, parsed once (`known`: recorded by `into`, which wrote
    them from it); at most 256 pairs kept."""
    if (groups, lqer) not in _PARSED:
        if len(_PARSED) >= 256:
            _PARSED.clear()
        _PARSED[(groups, lqer)] = known or QuantPlan.parse(groups, lqer)
    return _PARSED[(groups, lqer)]


def parse_groups(spec: str) -> dict[str, GroupPlan]:
    """quant.groups "mlp=bits:5;attn=bits:5,clip_k:10.28" -> {group: GroupPlan}, checked."""
    example = "e.g. --set 'quant.groups=mlp=bits:5;attn=clip_k:10'"
    out: dict[str, dict[str, Any]] = {}
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        group, eq, body = (s.strip() for s in part.partition("="))
        for key, _, val in (item.strip().partition(":") for item in body.split(",")):
            try:
                if not eq or key not in KEY_TYPES or len(val) > 40:
                    raise ValueError
                out.setdefault(group, {})[key] = KEY_TYPES[key](val.strip())
            except ValueError:
                raise ValueError(
                    f"quant.groups {_short(spec)}: {_short(part)} is not "
                    f"GROUP=key:value[,key:value] with keys {', '.join(KEYS)}; {example}"
                ) from None
    plans = {}
    for g, keys in out.items():
        try:
            _check_group(g, "group")
            plans[g] = GroupPlan(**keys)
        except ValueError as e:
            raise ValueError(
                f"quant.groups {_short(spec)}: {g[:40]}={_short(keys)}: {e} (groups are "
                f"{GROUPS}, methods {METHODS}, bits {BITS_MIN}..{BITS_MAX}, prune 0..1)"
            ) from None
    return plans


def parse_lqer(spec: str) -> dict[str, int]:
    """quant.lqer "mlp:8,attn:4" -> {"mlp": 8, "attn": 4}, checked (a group once)."""
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        group, _, rank = (s.strip() for s in part.partition(":"))
        if (
            group not in LQER_GROUPS
            or group in out
            or not (rank.isascii() and rank.isdigit() and len(rank) <= 6)
            or int(rank) > RANK_MAX
        ):
            raise ValueError(
                f"quant.lqer {_short(spec)}: {_short(part)} is not group:rank with a group from "
                f"{', '.join(LQER_GROUPS)} (each once), rank 0..{RANK_MAX} (e.g. 'mlp:8,attn:4')"
            )
        out[group] = int(rank)
    return out
