"""pgolf stats / export / verify: Welch against a hand computation, log parsing in the challenge's
shapes, export → verify clean, and each planted defect caught by the check that names it."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import sys
import types
from pathlib import Path

import pytest

from pgolf import config as C
from pgolf.lab.records import results as R
from pgolf.lab.records import stats as S
from pgolf.lab.records import verify as V

# ----------------------------------------------------------------------------------------------
# Welch, by hand


def test_welch_matches_a_hand_computed_example():
    # new = [1.0, 1.1, 1.2]: mean 1.1, s^2 = (0.01 + 0 + 0.01) / 2 = 0.01, s^2/n = 0.01/3
    # base = [1.3, 1.5]:     mean 1.4, s^2 = (0.01 + 0.01) / 1 = 0.02, s^2/n = 0.02/2 = 0.01
    # se = sqrt(0.01/3 + 0.01) = sqrt(0.0133333) = 0.1154701
    # t = (1.1 - 1.4) / 0.1154701 = -2.5980762
    # df = (0.0133333)^2 / ((0.01/3)^2 / 2 + 0.01^2 / 1) = 1.7777778e-4 / 1.0555556e-4 = 1.6842105
    new, base = [1.0, 1.1, 1.2], [1.3, 1.5]
    r = S.one_sided_test(new, base)
    assert r.kind == "welch"
    assert r.t == pytest.approx(-2.5980762, abs=1e-6)
    assert r.df == pytest.approx(1.6842105, abs=1e-6)
    # p = P(T_1.684 <= -2.598): the Student t CDF by numerical integration of its density
    nu, t = r.df, r.t
    c = math.gamma((nu + 1) / 2) / (math.sqrt(nu * math.pi) * math.gamma(nu / 2))
    # substitute x = t - u/(1-u), u in [0, 1): the whole tail on a finite interval (midpoints)
    n = 20_000
    tail = 0.0
    for i in range(n):
        u = (i + 0.5) / n
        x = t - u / (1 - u)
        tail += c * (1 + x * x / nu) ** (-(nu + 1) / 2) / (1 - u) ** 2 / n
    assert r.p == pytest.approx(tail, abs=1e-5)
    assert 0.07 < r.p < 0.075  # 0.0722: one-sided, so the README rule (p < 0.01) is far off
    # a margin shifts the hypothesis: H1 mean(new) < mean(base) - 0.1 -> t = -0.2 / se
    assert S.one_sided_test(new, base, 0.1).t == pytest.approx(-0.2 / 0.1154701, abs=1e-6)


def test_one_sample_against_a_single_value():
    # [1.20576485, 1.20617460, 1.20715923] vs 1.2193657 (a March record's README: t=31.42, df=2,
    # p=0.00051, printed with the opposite sign convention)
    r = S.one_sided_test([1.20576485, 1.20617460, 1.20715923], [1.2193657])
    assert r.kind == "one-sample" and r.df == 2.0
    assert r.t == pytest.approx(-31.42, abs=0.01)
    assert r.p == pytest.approx(0.00051, abs=0.000005)


def test_compare_verdicts():
    new = [R.SeedResult(s, 2.000 + d, 1.2 + d) for s, d in ((1, 0.0), (2, 0.001), (3, -0.001))]
    base = [R.SeedResult(s, 2.010 + d, 1.21 + d) for s, d in ((1, 0.0), (2, 0.001), (3, -0.001))]
    c = S.compare(new, base)
    assert c["gap_nats"] == pytest.approx(0.010)
    assert c["readme_rule"]["met"] and c["frontier_rule"]["met"]
    close = [R.SeedResult(s, 2.008 + d, 1.2) for s, d in ((1, 0.0), (2, 0.002), (3, -0.002))]
    c = S.compare(close, base)
    assert not c["readme_rule"]["met"] and "<" in c["readme_rule"]["why"]
    assert c["frontier_rule"]["met"]  # 0.002 nats better, p well under 0.25


# ----------------------------------------------------------------------------------------------
# Synthetic pgolf run folders in the real shapes


def make_run(
    root: Path,
    seed: int,
    loss: float,
    train_ms: float = 150_100.0,
    model_bytes: int = 400_000,
    code_hash: str = "f786a6c75de3",
    non_record: str | None = None,
    **cfg_over,
) -> Path:
    d = root / f"run_s{seed}"
    d.mkdir(parents=True)
    cfg = C.preset("cpu-tiny")
    cfg = C.from_dict({**C.to_dict(cfg), "train": {**C.to_dict(cfg)["train"], "seed": seed}})
    cd = C.to_dict(cfg)
    for k, v in cfg_over.items():
        sec, f = k.split("__")
        cd[sec][f] = v
    (d / "config.json").write_text(json.dumps(cd) + "\n")
    bpb = loss / 1.7
    code = 60_000
    lines = [
        f"run_dir:{d}",
        f"code_hash:{code_hash}",
        "config:" + json.dumps(cd),
        "env:torch:2.13.0+cpu",
        "env:gpu:None",
        "env:gpu_count:0",
        f"seed:{seed}",
        f"step:1/20000 train_loss:6.2357 train_time:{train_ms / 20:.0f}ms step_avg:100.00ms",
        f"step:20/20000 val_loss:{loss + 0.05:.4f} val_bpb:{bpb + 0.03:.4f} "
        f"train_time:{train_ms:.0f}ms step_avg:100.00ms",
        f"stopping_early: wallclock_cap train_time:{train_ms:.0f}ms step:20/20000",
        "pre_quant_roundtrip val_loss:4.1000 val_bpb:2.4100 eval_time:1200ms",
        "pre_quant_roundtrip_exact val_loss:4.10000000 val_bpb:2.41000000",
        f"Serialized model int6+brotli: {model_bytes} bytes",
        f"Code size: {code} bytes (stub + base85(lzma(...)))",
        f"Total submission size: {model_bytes + code} bytes budget:16000000",
        f"final_int6_sliding_window val_loss:{loss:.4f} val_bpb:{bpb:.4f} stride:128 "
        "eval_time:3400ms",
        f"final_int6_sliding_window_exact val_loss:{loss:.8f} val_bpb:{bpb:.8f}",
    ]
    (d / "log.txt").write_text("\n".join(lines) + "\n")
    (d / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "train_loss": 6.0 - s / 10}) + "\n" for s in range(1, 21))
    )
    res = {
        "preset": "cpu-tiny",
        "steps": 20,
        "train_seconds": train_ms / 1000,
        "val_loss": loss,
        "val_bpb": bpb,
        "artifact_bytes": model_bytes + code,
        "model_bytes": model_bytes,
        "code_bytes": code,
    }
    if non_record:
        res["non_record"] = non_record
    (d / "result.json").write_text(json.dumps(res))
    return d


def _stand_in_bundler(mp: pytest.MonkeyPatch) -> str:
    """The lead's `pgolf.lab.bundle` when it is there; else a stand-in that writes a small
    script (these tests are about export/verify, not about the bundle's content)."""
    if importlib.util.find_spec("pgolf.lab.bundle") is not None:
        return "real"
    mod = types.ModuleType("pgolf.lab.bundle")

    def write_bundle(cfg, out):
        Path(out).write_text(f"# stand-in bundle for preset {cfg.preset}\nprint('train')\n")
        return {"path": str(out), "bytes": Path(out).stat().st_size}

    mod.write_bundle = write_bundle
    mp.setitem(sys.modules, "pgolf.lab.bundle", mod)
    return "stand-in"


@pytest.fixture
def bundler(monkeypatch):
    return _stand_in_bundler(monkeypatch)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One exported record (3 seeds) and its baseline record, built once per module."""
    from pgolf.lab.records import export

    root = tmp_path_factory.mktemp("records")
    with pytest.MonkeyPatch.context() as mp:
        _stand_in_bundler(mp)
        runs = [make_run(root / "runs", s, l) for s, l in ((1, 4.00), (2, 4.01), (3, 3.99))]
        base = [make_run(root / "base", s, l) for s, l in ((1, 4.05), (2, 4.06), (3, 4.04))]
        export(base, root / "baseline_record", name="baseline")
        export(
            runs,
            root / "rec",
            name="test",
            author="a",
            github_id="g",
            against=str(root / "baseline_record"),
        )
    return root


@pytest.fixture
def record(built, tmp_path):
    """A fresh copy of the exported record, free to damage."""
    return Path(shutil.copytree(built / "rec", tmp_path / "rec"))


def names_failing(folder: Path, **kw) -> set[str]:
    return {c.name for c in V.verify(folder, **kw) if c.status == V.FAIL}


def test_log_parser_reads_the_challenge_shapes(tmp_path):
    d = make_run(tmp_path, 7, 4.0)
    f = R.parse_log((d / "log.txt").read_text())
    assert f.final.label == "final_int6_sliding_window_exact" and f.final.val_loss == 4.0
    assert (f.train_ms, f.steps, f.iterations, f.seed) == (150_100.0, 20, 20000, 7)
    assert (f.model_bytes, f.code_bytes, f.artifact_bytes) == (400_000, 60_000, 460_000)
    assert f.eval_seconds == pytest.approx(4.6)  # 1.2 s pre-quant + 3.4 s sliding
    text = "DIAGNOSTIC post_ema val_loss:1.9 val_bpb:1.1 eval_time:9000ms\n" + (
        "quantized_ttt val_loss:2.79180191 val_bpb:1.08079352 eval_time:366525ms\n"
        "stopping_early: wallclock_cap train_time: 588047ms step: 4550/20000\n"
    )
    g = R.parse_log(text)
    assert g.final.val_bpb == 1.08079352 and g.eval_seconds == pytest.approx(366.525)
    assert (g.train_ms, g.steps) == (588047.0, 4550)


def test_export_then_verify_is_clean(record):
    checks = V.verify(record)
    bad = [c for c in checks if c.status == V.FAIL]
    assert not bad, V.format_checks(checks)
    st = {c.name: c.status for c in checks}
    for name in (
        "files",
        "seed_logs",
        "seed_results",
        "aggregates",
        "bytes_code",
        "bytes_cap",
        "bundle_hash",
        "train_time",
        "eval_time",
        "readme_numbers",
        "stats",
    ):
        assert st[name] == V.PASS, name
    sub = json.loads((record / "submission.json").read_text())
    assert sub["seeds"] == [1, 2, 3] and sub["frontier_rule_met"] is True
    for f in ("README.md", "train_gpt.py", "requirements.txt", "loss.png", "train_seed2.log"):
        assert (record / f).is_file(), f


@pytest.mark.parametrize(
    "defect, check",
    [
        ("seed_log_removed", "seed_logs"),
        ("number_edited", "seed_results"),
        ("mean_edited", "aggregates"),
        ("over_cap", "bytes_cap"),
        ("slow_train", "train_time"),
        ("bundle_edited", "bundle_hash"),
        ("readme_edited", "readme_numbers"),
        ("p_edited", "stats"),
    ],
)
def test_each_planted_defect_is_named(record, defect, check):
    sub_p = record / "submission.json"
    sub = json.loads(sub_p.read_text())
    if defect == "seed_log_removed":
        (record / "train_seed2.log").unlink()
    elif defect == "number_edited":
        sub["seed_results"]["1"]["val_bpb"] = round(sub["seed_results"]["1"]["val_bpb"] - 1e-3, 8)
    elif defect == "mean_edited":
        sub["val_loss"] = round(sub["val_loss"] - 0.01, 8)
    elif defect == "over_cap":
        log = record / "train_seed3.log"
        log.write_text(
            log.read_text().replace(
                "Serialized model int6+brotli: 400000 bytes",
                "Serialized model int6+brotli: 15999990 bytes",
            )
        )
    elif defect == "slow_train":
        log = record / "train_seed1.log"
        log.write_text(log.read_text().replace("train_time:150100ms", "train_time:650100ms"))
    elif defect == "bundle_edited":
        p = record / "train_gpt.py"
        p.write_bytes(p.read_bytes().replace(b"\n", b" \n", 1))
    elif defect == "readme_edited":
        p = record / "README.md"
        v = f"{sub['seed_results']['2']['val_bpb']:.8f}"
        p.write_text(p.read_text().replace(v, f"{float(v) - 0.001:.8f}"))
    elif defect == "p_edited":
        sub["p_value"] = 0.2
    sub_p.write_text(json.dumps(sub))
    assert check in names_failing(record)
    from pgolf.cli import main

    with pytest.raises(SystemExit) as e:
        main(["verify", str(record)])
    assert e.value.code == 1


def test_export_refuses_with_reasons(tmp_path, bundler):
    from pgolf.lab.records import ExportError, export

    a = make_run(tmp_path / "x", 1, 4.0)
    b = make_run(tmp_path / "x", 2, 4.0, model__num_layers=5)
    c = make_run(tmp_path / "x", 3, 4.0, code_hash="000000000000")
    with pytest.raises(ExportError, match=r"model.num_layers: 4 vs 5"):
        export([a, b], tmp_path / "o1")
    with pytest.raises(ExportError, match="code_hash"):
        export([a, c], tmp_path / "o2")
    big = make_run(tmp_path / "y", 4, 4.0, model_bytes=15_990_000)
    with pytest.raises(ExportError, match="not under the cap"):
        export([a, big], tmp_path / "o3")
    nr = make_run(tmp_path / "z", 5, 4.0, non_record="pre-quantization TTT on validation tokens")
    with pytest.raises(ExportError, match="non-record"):
        export([a, nr], tmp_path / "o4")
    sub = export([nr], tmp_path / "o5", track="non-record-16mb")
    assert "pre-quantization TTT" in (tmp_path / "o5" / "README.md").read_text()
    assert sub["compliance"]["no_pre_quant_ttt"] is False
    (a / "log.txt").unlink()
    with pytest.raises(ExportError, match="missing"):
        export([a], tmp_path / "o6")


def test_stats_cli_reads_runs_and_records(record, built, capsys):
    from pgolf.cli import cmd_stats

    out = cmd_stats([str(record)], against_bpb=4.05 / 1.7, against_loss=4.05)
    text = capsys.readouterr().out
    assert "one-sample" in text and out["comparison"]["test"] == "one-sample"
    assert out["comparison"]["gap_nats"] == pytest.approx(0.05)
    runs = sorted((built / "runs").iterdir())
    out = cmd_stats([str(r) for r in runs], against=str(built / "baseline_record"), as_json=True)
    assert out["comparison"]["test"] == "welch" and out["comparison"]["readme_rule"]["met"]


def test_stats_reads_a_records_folder_as_verify_does(record, tmp_path):
    """Logs under other names than train*.log (log_seed42.txt, logs/s2.out, ...) are found by
    content, and stats picks the same per-seed results verify does: one reader for both."""
    from pgolf.cli import cmd_stats
    from pgolf.lab.records import seeds as Z

    logs = sorted(record.glob("train*.log"))
    assert len(logs) == 3
    (record / "logs").mkdir()
    for i, p in enumerate(logs):
        dest = record / ("logs" if i else ".") / p.name.replace("train_seed", "log_s")
        p.rename(dest.with_suffix(".txt"))
    assert not list(record.glob("train*.log"))
    got = {(r.seed, r.val_bpb) for r in Z.load_results([record])}
    assert got == {(r.seed, r.val_bpb) for r in V.read(record).seeds}
    assert {s for s, _ in got} == {1, 2, 3}
    out = cmd_stats([str(record)], against_bpb=4.05 / 1.7, against_loss=4.05, as_json=True)
    assert out["comparison"]["test"] == "one-sample"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="any file name"):
        Z.load_results([empty])
    with pytest.raises(FileNotFoundError, match="no such folder"):
        Z.load_results([tmp_path / "missing"])


@pytest.mark.slow
@pytest.mark.timeout(3600)  # three whole cpu-tiny runs: 7 min on a quiet 2-core machine
def test_real_cpu_tiny_runs_export_and_verify(tmp_path):
    """Three real `cpu-tiny` runs (minutes each) → export → verify clean; train_gpt.py runs."""
    from pgolf.cli import cmd_run
    from pgolf.lab.records import export

    runs = []
    for seed in (1, 2, 3):  # the main job's own path: the embedded default corpus, built once
        cmd_run(
            preset="cpu-tiny", overrides=[f"train.seed={seed}"], run_dir=str(tmp_path / f"s{seed}")
        )
        runs.append(tmp_path / f"s{seed}")
    out = tmp_path / "rec"
    export(runs, out)
    assert not names_failing(out), V.format_checks(V.verify(out))
