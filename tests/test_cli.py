"""The `pgolf` command as a user runs it: exact parameter counts, clean errors, and the whole
pipeline end to end (train → quantize → artifact → reload in a fresh process → same score)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import TINY_RUN

from pgolf import cli

RECORD_COUNTS = {"baseline": 17_059_912, "pr1493": 35_944_536, "pr1550": 36_311_132}


def pgolf(*args: str, env: dict | None = None, cwd: Path | None = None, timeout: int = 300):
    e = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    e.pop("PGOLF_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "pgolf", *args],
        capture_output=True,
        text=True,
        env=e,
        cwd=cwd,
        timeout=timeout,
    )


@pytest.mark.parametrize("name,count", sorted(RECORD_COUNTS.items()))
def test_params_prints_the_record_count_as_last_line(name, count, capsys):
    cli.main(["params", "--preset", name])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == str(count)


def test_corrupt_shard_is_refused_without_traceback(tmp_path):
    from pgolf.data import write_shard

    good = tmp_path / "x_val_000000.bin"
    write_shard(good, list(range(1000)))
    bad = tmp_path / "trunc_val_000000.bin"
    bad.write_bytes(good.read_bytes()[:1500])
    foreign = tmp_path / "foreign.bin"
    foreign.write_bytes(b"PK\x03\x04" + b"\0" * 2000)
    for f in (bad, foreign):
        r = pgolf("data", "inspect", str(f), "--json")
        assert r.returncode != 0
        assert str(f) in r.stderr and "Traceback" not in r.stderr + r.stdout


def test_eval_refuses_a_pickle_that_would_run_code(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "artifact.pgolf"
    code = (
        "import os, torch\n"
        "class E:\n"
        f"    def __reduce__(self): return (os.system, ('touch {marker}',))\n"
        f"torch.save({{'w': E()}}, {str(evil)!r})\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    r = pgolf("eval", str(evil))
    assert r.returncode == 2, r.stderr
    assert "not a pgolf artifact" in r.stderr and "Traceback" not in r.stderr
    assert not marker.exists()


# helpers.TINY_RUN with what these tests exercise on top: recurrence and parallel lanes, a
# wall-clock cap, the train log, the default codec (brotli).
_DIFFERS = ("recur_layers=", "iterations=", "codec=")
TINY = [
    *(kv for kv in TINY_RUN if not kv.startswith(_DIFFERS)),
    "parallel_start=1",
    "recur_layers=0,1,1",
    "iterations=6",
    "max_wallclock_seconds=20",
    "train_log_every=5",
]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    env = {"PGOLF_DATA_DIR": "data"}  # relative to the run's cwd: the run stores it absolute
    args = ["run", "--run-dir", str(root / "run")]
    for kv in TINY:
        args += ["--set", kv]
    r = pgolf(*args, env=env, cwd=root)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return root, env, r


def test_run_writes_result_plot_and_artifact(tiny_run):
    root, _, r = tiny_run
    res = json.loads((root / "run" / "result.json").read_text())
    for key in (
        "val_bpb",
        "val_loss",
        "train_seconds",
        "steps",
        "preset",
        "val_bpb_prequant",
        "val_bpb_roundtrip",
        "val_bpb_sliding",
        "artifact_bytes",
        "code_bytes",
        "model_bytes",
        "artifact_path",
        "unigram_bpb",
        "bigram_bpb",
    ):
        assert key in res, key
    assert res["artifact_bytes"] == res["model_bytes"] + res["code_bytes"]
    assert res["model_bytes"] == Path(res["artifact_path"]).stat().st_size
    assert (root / "run" / "loss.png").stat().st_size > 1000
    assert "code_hash:" in (root / "run" / "log.txt").read_text()
    assert re.search(
        r"final_int6_sliding_window_exact val_loss:\d+\.\d{8} val_bpb:\d+\.\d{8}", r.stdout
    )


def test_eval_in_a_fresh_process_reproduces_the_roundtrip(tiny_run):
    root, env, r = tiny_run
    line = re.compile(r"final_int6_roundtrip_exact val_loss:(\S+) val_bpb:(\S+)")
    in_run = line.search(r.stdout).groups()
    # No training data present: only the val shard and the tokenizer are needed.
    data = root / "data" / "sp512"
    for f in data.glob("*_train_*.bin"):
        f.rename(f.with_suffix(".hidden"))
    try:
        e = pgolf("eval", str(root / "run" / "artifact.pgolf"), "--no-sliding", env=env)
    finally:
        for f in data.glob("*.hidden"):
            f.rename(f.with_suffix(".bin"))
    assert e.returncode == 0, e.stderr[-3000:]
    assert line.search(e.stdout).groups() == in_run


def test_budget_components_add_up(tiny_run):
    root, _, _ = tiny_run
    r = pgolf("budget", str(root / "run" / "artifact.pgolf"), "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    rep = json.loads(r.stdout)
    res = json.loads((root / "run" / "result.json").read_text())
    assert rep["total_bytes"] == res["artifact_bytes"]
    assert sum(c["compressed"] for c in rep["components"]) == rep["total_bytes"]


def test_checkpoint_resumes_through_the_cli(tiny_run, tmp_path):
    root, env, _ = tiny_run
    ck = root / "run" / "checkpoint.safetensors"
    assert ck.exists()
    args = [
        "train",
        "--preset",
        "cpu-tiny",
        "--run-dir",
        str(tmp_path / "resumed"),
        "--resume",
        str(ck),
    ]
    for kv in TINY:
        args += ["--set", kv.replace("iterations=6", "iterations=8")]
    r = pgolf(*args, env=env, cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "resumed" / "final_model.safetensors").exists()
    assert (tmp_path / "resumed" / "loss.png").stat().st_size > 1000  # `pgolf train` plots too


def test_quantize_with_a_plan_override_shrinks_the_artifact(tiny_run, tmp_path):
    root, env, _ = tiny_run
    base = json.loads((root / "run" / "result.json").read_text())["model_bytes"]
    out = tmp_path / "int3.pgolf"
    r = pgolf(
        "quantize",
        str(root / "run"),
        "--plan",
        "mlp=bits:3",
        "--plan",
        "attn=bits:3",
        "--out",
        str(out),
        env=env,
        cwd=root,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert out.stat().st_size < base
    bad = pgolf("quantize", str(root / "run"), "--plan", "mlp=bits", env=env, cwd=root)
    assert bad.returncode == 2 and "--plan" in bad.stderr


def test_eval_refuses_validation_data_from_another_tokenizer(tiny_run, tmp_path):
    root, env, _ = tiny_run
    other = pgolf("data", "default", "--vocab-size", "384", "--out", str(tmp_path / "d"))
    assert other.returncode == 0, other.stderr[-2000:]
    r = pgolf("eval", str(root / "run" / "artifact.pgolf"), "--data", str(tmp_path / "d" / "sp384"))
    assert r.returncode == 2 and "not the tokenizer" in r.stderr, r.stderr[-2000:]


CHALLENGE_SHAPES = [  # spec pr1550-stack 10.1
    r"^train_loader:dataset:\S+ train_shards:\d+$",
    r"^val_loader:shards pattern=\S+ tokens:\d+$",
    r"^model_params:\d+$",
    r"^world_size:\d+ grad_accum_steps:\d+$",
    r"^sdp_backends:cudnn=\w+ flash=\w+ mem_efficient=\w+ math=\w+$",
    r"^step:\d+/\d+ train_loss:\d+\.\d{4} train_time:\d+ms step_avg:\d+\.\d{2}ms",
    r"^DIAGNOSTIC post_ema val_loss:\d+\.\d{4} val_bpb:\d+\.\d{4} eval_time:\d+ms$",
    r"^Serialized model int6\+BROT: \d+ bytes$",
    r"^Code size: \d+ bytes$",
    r"^Total submission size int6\+BROT: (\d+) bytes$",
    r"^final_int6_sliding_window_exact val_loss:\d+\.\d{8} val_bpb:\d+\.\d{8}$",
    r"^final_int8_zlib_roundtrip_exact val_loss:\d+\.\d{8} val_bpb:\d+\.\d{8}$",
    r"^RUN_COMPLETE$",
]


def test_log_parses_with_the_challenge_line_shapes(tiny_run):
    root, _, r = tiny_run
    text = (root / "run" / "log.txt").read_text()
    for shape in CHALLENGE_SHAPES:
        assert re.search(shape, text, re.M), shape
    total = int(re.search(CHALLENGE_SHAPES[9], text, re.M).group(1))
    res = json.loads((root / "run" / "result.json").read_text())
    assert total == res["artifact_bytes"]


def test_over_budget_quantize_exits_3_after_writing_and_logs_next_to_it(tiny_run, tmp_path):
    root, env, _ = tiny_run
    out = tmp_path / "big.pgolf"
    log = (root / "run" / "log.txt").read_bytes()
    args = ["quantize", str(root / "run"), "--set", "quant.byte_budget=1000", "--out", str(out)]
    r = pgolf(*args, env=env, cwd=root)
    assert r.returncode == 3 and "over the byte budget" in r.stderr, r.stderr[-2000:]
    assert out.exists()
    ok = pgolf(*args, "--allow-over-budget", env=env, cwd=root)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert f"quantize:{root / 'run'}" in (tmp_path / "big.pgolf.log").read_text()
    assert (root / "run" / "log.txt").read_bytes() == log  # an artifact elsewhere: not the run's


def test_quantize_and_eval_from_another_directory(tiny_run, tmp_path):
    """The run was started in `root` with a relative data folder; its config stores absolute
    paths, so the run quantizes and its artifact scores from anywhere. A tokenizer that has gone
    is reported as missing."""
    root, env, _ = tiny_run
    cfg = json.loads((root / "run" / "config.json").read_text())["data"]
    assert Path(cfg["data_path"]).is_absolute() and Path(cfg["tokenizer_path"]).is_absolute()
    art = tmp_path / "again.pgolf"
    q = pgolf("quantize", str(root / "run"), "--out", str(art), env=env, cwd=tmp_path)
    assert q.returncode == 0, q.stderr[-3000:]
    e = pgolf("eval", str(art), "--no-sliding", env=env, cwd=tmp_path)
    assert e.returncode == 0, e.stderr[-3000:]
    tok = Path(cfg["tokenizer_path"])
    tok.rename(tok.with_suffix(".gone"))
    try:
        m = pgolf("eval", str(art), "--no-sliding", env=env, cwd=tmp_path)
    finally:
        tok.with_suffix(".gone").rename(tok)
    assert m.returncode == 2 and f"tokenizer {tok} is missing" in m.stderr, m.stderr[-2000:]
    assert "Traceback" not in m.stderr


def _exact(label: str, text: str) -> tuple[str, str]:
    m = re.search(rf"^{label}_exact val_loss:(\S+) val_bpb:(\S+)$", text, re.M)
    assert m, f"no {label}_exact line in:\n{text[-2000:]}"
    return m.groups()


def test_eval_of_the_unquantized_weights_reproduces_the_runs_post_ema_score(tiny_run, tmp_path):
    """Differential: the final weights (EMA applied), reloaded in a fresh process and scored by
    `pgolf eval RUN --weights final`, give the run's own pre-quant line to the last digit; so does
    the last checkpoint's EMA copy. The lines land in the run's later_evals.txt, the scores in its
    result (its own keys), the headline stays the artifact's, and the forced progress bar stays out
    of the log."""
    import shutil

    root, env, r = tiny_run
    assert not any(b in r.stderr for b in ("%|", "it/s", "s/it"))  # captured: no bar by default
    in_run = _exact("pre_quant_roundtrip", r.stdout)
    run = tmp_path / "run"
    shutil.copytree(root / "run", run)
    before = json.loads((run / "result.json").read_text())
    e = pgolf("--progress", "on", "eval", str(run), "--weights", "final", env=env)
    assert e.returncode == 0, e.stderr[-3000:]
    assert _exact("pre_quant_roundtrip", e.stdout) == in_run
    assert "eval plain+sliding" in e.stderr  # the bar of the one pass (stride | seq_len), on stderr
    assert (run / "log.txt").read_text().count("pre_quant_roundtrip_exact") == 1  # the run's
    log = (run / "later_evals.txt").read_text()  # a later evaluation: never the run's record
    assert log.count("pre_quant_roundtrip_exact") == 1 and "pre_quant_sliding_window" in log
    assert log.startswith("later_eval:") and "weights:final" in log
    assert not any(b in log for b in ("%|", "it/s", "s/it")) and "\r" not in log
    res = json.loads((run / "result.json").read_text())
    assert f"{res['val_bpb_prequant']:.8f}" == in_run[1]
    assert res["val_bpb_prequant_sliding"] > 0
    assert (res["val_bpb"], res["val_bpb_source"]) == (before["val_bpb"], before["val_bpb_source"])
    ck = pgolf("eval", str(run / "checkpoint.safetensors"), "--no-sliding", env=env)
    assert ck.returncode == 0, ck.stderr[-3000:]
    assert _exact("checkpoint_ema_roundtrip", ck.stdout) == in_run  # saved at the last step
    assert json.loads((run / "result.json").read_text()) == res  # a checkpoint: logged only


def test_eval_refuses_weights_that_do_not_fit_the_runs_config(tiny_run, tmp_path):
    import shutil

    root, env, _ = tiny_run
    run = tmp_path / "run"
    shutil.copytree(root / "run", run)
    cfg = json.loads((run / "config.json").read_text())
    cfg["model"]["mlp_mult"] = 3
    (run / "config.json").write_text(json.dumps(cfg))
    r = pgolf("eval", str(run), "--weights", "final", "--no-sliding", env=env)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "final_model.safetensors does not fit the config" in r.stderr
    assert "config.json" in r.stderr and "Traceback" not in r.stderr
    missing = pgolf("eval", str(tmp_path), "--weights", "checkpoint", env=env)
    assert missing.returncode == 2 and "checkpoint.safetensors not found" in missing.stderr
