"""Budget planner: the knapsack is exact (against brute force), the plan file round-trips, and
`pgolf quantize --plan plan.json` writes exactly the planned bits / low-rank ranks under the cap."""

from __future__ import annotations

import itertools
import json
import random

import pytest
from helpers import TINY_RUN, set_args

from pgolf import cli
from pgolf.lab.budget import planfile as P
from pgolf.lab.budget import planner as planner
from pgolf.lab.budget.planfile import Option, plan_sets, read_plan
from pgolf.lab.budget.planner import InfeasibleBudget, Row, solve
from pgolf.quantplan import GroupPlan, QuantPlan


def brute_force(table: dict[str, list[Row]], budget: int) -> float | None:
    """Least summed loss over every combination within the budget (None: nothing fits)."""
    best = None
    for combo in itertools.product(*table.values()):
        if sum(r.d_bytes for r in combo) <= budget:
            loss = sum(r.d_bpb for r in combo)
            best = loss if best is None else min(best, loss)
    return best


def random_table(rng: random.Random, groups: int, options: int) -> dict[str, list[Row]]:
    table = {}
    for gi in range(groups):
        g = f"g{gi}"
        rows = [Row(g, Option(6, 10.0), 0, 0.0)]  # the run's own plan
        for j in range(options - 1):
            rows.append(
                Row(
                    g, Option(2 + j % 7, float(j)), rng.randint(-500, 500), rng.uniform(-0.02, 0.05)
                )
            )
        table[g] = rows
    return table


def test_knapsack_finds_the_brute_force_optimum():
    rng = random.Random(0)
    checked = infeasible = 0
    for _ in range(150):
        table = random_table(rng, rng.randint(1, 4), rng.randint(1, 6))
        budget = rng.randint(-1500, 800)
        want = brute_force(table, budget)
        if want is None:
            with pytest.raises(InfeasibleBudget, match="more than the cap allows"):
                solve(table, budget)
            infeasible += 1
            continue
        picks = solve(table, budget)
        assert sorted(picks) == sorted(table)  # one row per group
        assert all(r in table[g] for g, r in picks.items())
        assert sum(r.d_bytes for r in picks.values()) <= budget
        assert sum(r.d_bpb for r in picks.values()) == pytest.approx(want, abs=1e-12)
        checked += 1
    assert checked > 50 and infeasible > 5  # both branches exercised


def test_knapsack_prefers_the_cheaper_of_two_equal_losses_and_names_the_shortfall():
    g = {"a": [Row("a", Option(6, 1.0), 0, 0.0), Row("a", Option(5, 1.0), -100, 0.0)]}
    assert solve(g, 0)["a"].option.bits == 5
    with pytest.raises(InfeasibleBudget, match="need 50 bytes more"):
        solve({"a": [Row("a", Option(6, 1.0), 0, 0.0), Row("a", Option(5, 1.0), -100, 0.1)]}, -150)


def test_plan_file_round_trips_and_bad_files_name_the_field(tmp_path):
    choice = {"mlp": Option(5, 12.85, 4), "attn": Option(7, 10.0, 0), "embed": Option(8, 20.0, 2)}
    path = tmp_path / "plan.json"
    doc = P.write_plan(path, choice, {"cap": 123})
    assert doc["lqer"] == "embed:2,mlp:4" and json.loads(path.read_text())["cap"] == 123
    plan = read_plan(path)
    assert plan.lqer_spec() == "embed:2,mlp:4" and plan_sets(plan) == doc["set"]
    assert dict(plan.groups) == {g: GroupPlan(o.bits, o.clip_k) for g, o in choice.items()}
    for field, value, msg in (
        ("format", "x", "format"),
        ("groups", [1], "groups"),
        ("groups", {"mlp": {"bits": 9, "clip_k": 1}}, "bits 2..8"),
        ("groups", {"nope": {"bits": 5, "clip_k": 1}}, "groups.nope"),
        ("groups", {"mlp": {"clip_k": 1}}, "groups.mlp"),
    ):
        bad = dict(doc, **{field: value})
        path.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=msg):
            read_plan(path)


def test_plan_file_maps_to_the_quant_groups_string_quantize_applies(tmp_path):
    """The plan's `set` lines, `pgolf quantize --plan FILE` and the file's groups agree: one
    quant.groups string, parsed back by the core into the plan's overrides."""
    from pgolf.config import QuantConfig

    choice = {"mlp": Option(5, 12.85, 4), "attn": Option(7, 10.28, 0), "embed": Option(8, 20.0, 2)}
    path = tmp_path / "plan.json"
    doc = P.write_plan(path, choice, {})
    plan = read_plan(path)
    want = "attn=bits:7,clip_k:10.28;embed=bits:8,clip_k:20.0;mlp=bits:5,clip_k:12.85"
    assert doc["set"] == [f"quant.groups={want}", "quant.lqer=embed:2,mlp:4"]
    assert plan.groups_spec() == want and QuantPlan.parse(want).groups == plan.groups
    assert cli.parse_plan([str(path)]) == plan and plan_sets(plan) == doc["set"]
    # a run's own quant.groups stays under the plan: methods kept, the file's bits/k on top
    q = QuantConfig(groups="attn=method:rtn,bits:4", lqer="mlp:1")
    top = cli.parse_plan([str(path), "value_embed=bits:6"])
    got = QuantPlan.of(q).over(top).into(q)
    assert dict(QuantPlan.parse(got.groups).groups) == {
        **dict(plan.groups),
        "attn": GroupPlan(method="rtn", bits=7, clip_k=10.28),
        "value_embed": GroupPlan(bits=6),
    }
    assert got.lqer == "embed:2,mlp:4"  # the file's ranks replace the run's
    # a GROUP=... plan keeps the run's ranks; a plan equal to the run's keeps its spelling
    same = QuantPlan.of(q).over(cli.parse_plan(["attn=bits:4"])).into(q)
    assert (same.groups, same.lqer) == (q.groups, q.lqer)
    assert cli.parse_plan([]) is None


def test_grid_has_prune_options_and_a_pruned_plan_round_trips(tmp_path):
    """The planner's grid offers ±1 pruning (run's own bits / k / rank) per group; a plan with
    prune round-trips through plan.json into the quant.groups the core parses back."""
    from types import SimpleNamespace as NS

    bench = NS(
        base={"mlp": Option(6, 12.85, 0), "embed": Option(8, 20.0, 0)}, lowrank_groups={"mlp"}
    )
    grid = planner.default_grid(bench, bits=(5,), ranks=(0,), prunes=(0.1, 0.5))
    for g, o in bench.base.items():
        assert {Option(o.bits, o.clip_k, 0, p) for p in (0.1, 0.5)} <= set(grid[g])
        assert len(grid[g]) == len(set(grid[g])) <= 6  # modest: base, 1 bits, 2 k, 2 prunes
    assert all(o.prune == 0 for o in planner.default_grid(bench, prunes=())["mlp"])
    choice = {"mlp": Option(5, 12.85, 2, 0.25), "attn": Option(6, 10.0, 0)}
    path = tmp_path / "plan.json"
    doc = P.write_plan(path, choice, {})
    assert doc["groups"]["mlp"]["prune"] == 0.25 and doc["groups"]["attn"]["prune"] == 0.0
    plan = read_plan(path)
    assert dict(plan.groups) == {
        "mlp": GroupPlan(bits=5, clip_k=12.85, prune=0.25),
        "attn": GroupPlan(bits=6, clip_k=10.0),
    }
    assert plan.lqer_spec() == "mlp:2"
    spec = doc["set"][0].split("=", 1)[1]
    assert QuantPlan.parse(spec).groups == plan.groups
    assert "mlp=bits:5,clip_k:12.85,prune:0.25" in spec
    assert plan_sets(cli.parse_plan([str(path)])) == doc["set"]
    for bad in (1.5, -0.1):
        mlp = {**doc["groups"]["mlp"], "prune": bad}
        path.write_text(json.dumps({**doc, "groups": {"mlp": mlp}}))
        with pytest.raises(ValueError, match="prune 0..1"):
            read_plan(path)


def test_a_plan_files_set_moves_only_its_groups_and_must_agree_with_them(tmp_path):
    """`pgolf budget --fit` writes `set` with the groups it moves over the run's own: quantize
    applies exactly those; a `set` that is malformed or contradicts `groups` is refused."""
    from pgolf.config import QuantConfig

    choice = {"mlp": Option(5, 12.85, 0), "attn": Option(6, 12.85, 2)}
    path = tmp_path / "plan.json"
    moved = ["quant.groups=mlp=bits:5,clip_k:12.85", "quant.lqer=attn:2"]
    P.write_plan(path, choice, {"set": moved})  # attn keeps its bits / k: only its rank moves
    assert read_plan(path) == QuantPlan.parse("mlp=bits:5,clip_k:12.85", "attn:2")
    q = QuantConfig(groups="embed=method:rtn")
    got = QuantPlan.of(q).over(cli.parse_plan([str(path)])).into(q)
    assert (got.groups, got.lqer) == ("embed=method:rtn;mlp=bits:5,clip_k:12.85", "attn:2")
    doc = json.loads(path.read_text())
    for bad, msg in (
        (["quant.lqer=attn:2"], "field 'set' must be"),
        (["quant.groups=mlp=bits:4", "quant.lqer="], "'groups' says"),
        (["quant.groups=mlp=bitz:4", "quant.lqer="], "quant.groups"),
        (["quant.groups=", "quant.lqer=attn"], "quant.lqer"),
        (["model.num_layers=99", "quant.lqer="], "field 'set' must be"),
        (["quant.groups=mlp=bits:5,clip_k:12.85", "quant.lqer=attn:3"], "low-rank ranks"),
    ):
        path.write_text(json.dumps({**doc, "set": bad}))
        with pytest.raises(ValueError, match=msg):
            read_plan(path)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A trained tiny run (4 steps, zstd codec for speed) and its own artifact."""
    from pgolf.lab.data.datasets import build_default

    root = tmp_path_factory.mktemp("plan")
    data = build_default(root / "data")
    args = ["train", "--preset", "cpu-tiny", "--data", str(data), "--run-dir", str(root / "run")]
    cli.main(args + set_args(TINY_RUN))
    cli.main(["quantize", str(root / "run")])
    return root


def test_fit_plan_is_applied_exactly_by_quantize_and_fits_the_cap(tiny, capsys):
    from pgolf.artifact import load_artifact
    from pgolf.lqer import SUFFIX_A

    run = tiny / "run"
    res = json.loads((run / "result.json").read_text())
    base = res["model_bytes"] + res["code_bytes"]
    cap = base - 3000  # binds: the run's own plan does not fit
    plan = tiny / "plan.json"
    capsys.readouterr()
    cli.main(
        [
            "budget",
            str(run),
            "--fit",
            str(cap),
            "--out",
            str(plan),
            "--json",
            "--fit-bits",
            "4,8",
            "--fit-ranks",
            "0,2",
            "--calib-tokens",
            "512",
        ]
    )
    doc = json.loads(capsys.readouterr().out)
    assert doc == json.loads(plan.read_text())
    assert doc["baseline"]["bytes"] == base  # the planner's baseline is the artifact, to the byte
    assert doc["predicted"]["bytes_built"] <= cap
    assert any(
        o != doc["baseline"]["options"][g]
        for g, o in (
            (g, Option(v["bits"], v["clip_k"], v["lqer_rank"], v["prune"]).label())
            for g, v in doc["groups"].items()
        )
    )
    assert len(doc["table"]) >= 20 and doc["solver"] == planner.SOLVER
    art = tiny / "planned.pgolf"
    cli.main(["quantize", str(run), "--plan", str(plan), "--out", str(art)])
    tensors, meta = load_artifact(art)
    assert art.stat().st_size + meta["code_bytes"] == doc["predicted"]["bytes_built"] <= cap
    groups = doc["groups"]
    seen = set()
    for t in tensors:
        if t.kind == "int" and t.group in groups:
            assert t.bits == groups[t.group]["bits"], t.name
            seen.add(t.group)
    assert seen == set(groups)
    ranks = {t.name[: -len(SUFFIX_A)]: t.shape[1] for t in tensors if t.name.endswith(SUFFIX_A)}
    group_of = {t.name: t.group for t in tensors}
    for name, r in ranks.items():
        assert r == groups[group_of[name]]["lqer_rank"]
    assert meta["config"]["quant"]["lqer"] == doc["lqer"] == read_plan(plan).lqer_spec()
    # the artifact's config carries the plan as quant.groups: the `set` line the planner printed
    assert doc["set"][0] == f"quant.groups={meta['config']['quant']['groups']}"
    assert QuantPlan.parse(meta["config"]["quant"]["groups"]).groups == read_plan(plan).groups


def test_fit_with_a_cap_below_every_option_exits_2_naming_the_shortfall(tiny, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(
            [
                "budget",
                str(tiny / "run"),
                "--fit",
                "5000",
                "--fit-bits",
                "8",
                "--fit-ranks",
                "0",
                "--calib-tokens",
                "256",
            ]
        )
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--fit 5,000" in err and "bytes more than the cap allows" in err


def test_plan_file_low_rank_ranks_land_in_the_artifact_and_it_loads(tiny):
    """A hand-written plan with low-rank terms: every factor has the planned rank, the config in
    the metadata records them, and the artifact loads for scoring (shape check included)."""
    import torch

    from pgolf.artifact import load_artifact
    from pgolf.lqer import SUFFIX_A, SUFFIX_B
    from pgolf.pipeline import load_artifact_model

    plan = tiny / "ranks.json"
    choice = {"attn": Option(5, 12.85, 0), "mlp": Option(7, 10.0, 2), "embed": Option(8, 16.0, 3)}
    P.write_plan(plan, choice, {})
    art = tiny / "ranks.pgolf"
    cli.main(["quantize", str(tiny / "run"), "--plan", str(plan), "--out", str(art)])
    tensors, meta = load_artifact(art)
    assert meta["config"]["quant"]["lqer"] == "embed:3,mlp:2"
    group = {t.name: t.group for t in tensors}
    factors = [t for t in tensors if t.name.endswith((SUFFIX_A, SUFFIX_B))]
    assert {group[t.name.rsplit(".lqer.", 1)[0]] for t in factors} <= {"mlp", "embed"}
    assert factors, "no low-rank term was kept"
    for t in factors:
        rank = choice[group[t.name.rsplit(".lqer.", 1)[0]]].rank
        assert (t.shape[1] if t.name.endswith(SUFFIX_A) else t.shape[0]) == rank
    for t in tensors:
        if t.kind == "int" and t.group in choice:
            assert t.bits == choice[t.group].bits, t.name
    _, model, _ = load_artifact_model(art, torch.device("cpu"))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    from types import SimpleNamespace as NS

    from pgolf.artifact_check import ArtifactError, check_shapes, config_from_meta

    cfg = config_from_meta(meta, str(art))
    a = next(t for t in factors if t.name.endswith(SUFFIX_A))
    moved = [
        NS(name=t.name, shape=(t.shape[0] + 1, *t.shape[1:]) if t is a else t.shape)
        for t in tensors
    ]
    with pytest.raises(ArtifactError, match="low-rank term"):
        check_shapes(cfg, moved, "x.pgolf")


def test_quantize_plan_prune_zeros_mlp_pm1_codes_and_the_config_carries_it(tiny):
    """`pgolf quantize --plan mlp=prune:0.5`: half the mlp ±1 codes of the same quantization
    are zeroed (no other code moves) and the artifact's config records quant.groups."""
    from pgolf.artifact import load_artifact

    own, _ = load_artifact(tiny / "run" / "artifact.pgolf")
    art = tiny / "pruned.pgolf"
    cli.main(["quantize", str(tiny / "run"), "--plan", "mlp=prune:0.5", "--out", str(art)])
    tensors, meta = load_artifact(art)
    assert meta["config"]["quant"]["groups"] == "mlp=prune:0.5"

    def pm1(ts, group):
        return sum(
            int((t.codes.abs() == 1).sum()) for t in ts if t.kind == "int" and t.group == group
        )

    n = pm1(own, "mlp")
    assert n > 0 and pm1(tensors, "mlp") == n - round(0.5 * n)
    assert pm1(tensors, "attn") == pm1(own, "attn")
    for a, b in zip(own, tensors, strict=True):
        if a.kind == "int":
            moved = a.codes != b.codes
            assert (a.codes[moved].abs() == 1).all() and (b.codes[moved] == 0).all(), a.name
            assert a.group == "mlp" or not moved.any()
    with pytest.raises(SystemExit) as e:
        cli.main(["quantize", str(tiny / "run"), "--plan", "mlp=prune:1.5", "--out", str(art)])
    assert e.value.code == 2
