"""A bad-input corpus against the CLI (issue 7, item 4): every case exits with status 2, prints
no traceback, and names the field or file at fault. Most cases call `pgolf.cli.main` in this
process (each fails in validation, before any work); a few run `python -m pgolf` for real, so the
exit status and stderr are those a user sees."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pgolf import cli
from pgolf.artifact import QTensor, save_artifact
from pgolf.data import write_shard
from pgolf.quant import rtn_quantize

BAD_SET = [  # (--set value, what the message must name)
    ("iterations=1e400", "train.iterations"),
    ("iterations=0", "iterations"),
    ("seed=abc", "train.seed"),
    ("max_wallclock_seconds=nan", "train.max_wallclock_seconds"),
    ("recur_layers=0,x", "model.recur_layers"),
    ("compile=maybe", "train.compile"),
    ("num_heads=7", "num_heads"),
    ("eval_stride=0", "eval_stride"),
    ("attn_backend=flash", "model.attn_backend"),
    ("quant.codec=zip", "quant.codec"),
    ("quant.method=awq", "quant.method"),
    ("embed_method=awq", "quant.embed_method"),
    ("calib=val", "quant.calib"),
    ("device=tpu", "train.device"),
    ("loader=random", "data.loader"),
    ("schedule=never", "train.schedule"),
    ("activation=gelu", "model.activation"),
    ("ns_coeffs=cubic", "optim.ns_coeffs"),
    ("skip_gate=tanh", "model.skip_gate"),
    ("parallel_residual=both", "model.parallel_residual"),
    ("matrix_bits=12", "bit widths"),
    ("nosuchkey=1", "nosuchkey"),
    ("model.nosuch=1", "model.nosuch"),
    ("seed", "seed"),
]

BAD_ENV = [  # (variable, value, what the message must name)
    ("SEED", "abc", "SEED"),
    ("VOCAB_SIZE", "1e400", "VOCAB_SIZE"),
    ("MAX_WALLCLOCK_SECONDS", "ten", "MAX_WALLCLOCK_SECONDS"),
    ("COMPRESS_METHOD", "zip", "quant.codec"),
    ("RECUR_LAYERS", "a,b", "RECUR_LAYERS"),
]


def run_main(argv: list[str], capsys) -> str:
    """`pgolf ARGV` in this process: must exit 2; returns stderr."""
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert "Traceback" not in err and err.startswith(f"pgolf {argv[0]}: error: ")
    return err


@pytest.fixture(autouse=True)
def no_debug(monkeypatch):
    monkeypatch.delenv("PGOLF_DEBUG", raising=False)
    for var, _, _ in BAD_ENV:
        monkeypatch.delenv(var, raising=False)


@pytest.mark.parametrize("cmd", ["run", "train", "params"])
@pytest.mark.parametrize(("kv", "needle"), BAD_SET)
def test_bad_set_is_refused_before_any_work(cmd, kv, needle, capsys, tmp_path):
    argv = [cmd, "--preset", "cpu-tiny", "--set", kv]
    if cmd != "params":
        argv += ["--run-dir", str(tmp_path / "run"), "--data", str(tmp_path / "none")]
    assert needle in run_main(argv, capsys)
    assert not (tmp_path / "run").exists()  # refused before the run folder or data


@pytest.mark.parametrize(("var", "value", "needle"), BAD_ENV)
def test_bad_environment_variable_is_named(var, value, needle, capsys, monkeypatch):
    monkeypatch.setenv(var, value)
    assert needle in run_main(["params", "--preset", "cpu-tiny"], capsys)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    """A small artifact with attn, mlp and embed integer groups (no model config needed)."""
    g = torch.Generator().manual_seed(0)
    ts = []
    for name, group in (
        ("tok_emb.weight", "embed"),
        ("blocks.0.attn.c_q.weight", "attn"),
        ("blocks.0.mlp.fc.weight", "mlp"),
    ):
        codes, scales = rtn_quantize(torch.randn(32, 16, generator=g) * 0.02, 6, 12.85)
        ts.append(QTensor(name, (32, 16), "int", 6, codes, scales, None, group))
    path = tmp_path_factory.mktemp("art") / "a.pgolf"
    save_artifact(path, ts, {"code_bytes": 1000})
    return path


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--bits", "nosuch=5"], "nosuch"),
        (["--bits", "mlp"], "--bits 'mlp'"),
        (["--bits", "mlp=x"], "--bits 'mlp=x'"),
        (["--bits", "mlp=12"], "2..8"),
        (["--clip-k", "attn=-1"], "--clip-k 'attn=-1'"),
        (["--clip-k", "value_embed=3"], "value_embed"),  # not in this artifact
    ],
)
def test_budget_what_if_errors(artifact, args, needle, capsys):
    assert needle in run_main(["budget", str(artifact), *args], capsys)


def test_budget_weights_must_be_safetensors(artifact, tmp_path, capsys):
    txt = tmp_path / "w.txt"
    txt.write_text("not weights")
    err = run_main(["budget", str(artifact), "--bits", "mlp=5", "--weights", str(txt)], capsys)
    assert f"--weights {txt}" in err and "safetensors" in err


def test_missing_and_foreign_files(tmp_path, capsys):
    junk = tmp_path / "junk.pgolf"
    junk.write_text("hello")
    shard = tmp_path / "t_val_000000.bin"
    write_shard(shard, list(range(100)))
    trunc = tmp_path / "x_val_000000.bin"
    trunc.write_bytes(shard.read_bytes()[:1100])
    nothing = tmp_path / "nothing"
    cases = [
        (["eval", str(nothing)], str(nothing)),
        (["eval", str(junk)], str(junk)),
        (["budget", str(nothing)], str(nothing)),
        (["budget", str(junk)], str(junk)),
        (["quantize", str(nothing)], "config.json"),
        (["quantize", str(tmp_path), "--plan", "mlp=bits"], "--plan"),
        (["data", "inspect", str(nothing)], str(nothing)),
        (["data", "inspect", str(trunc)], str(trunc)),
        (
            ["data", "corpus", "--input", str(nothing / "a.txt"), "--out", str(tmp_path / "o")],
            str(nothing / "a.txt"),
        ),
        (["train", "--preset", "cpu-tiny", "--data", str(nothing)], str(nothing)),
    ]
    for argv, needle in cases:
        assert needle in run_main(argv, capsys), argv


@pytest.mark.parametrize(
    ("code", "fix"),
    [
        (errno.ENOSPC, "free disk space"),
        (errno.EROFS, "writable folder"),
        (errno.EACCES, "permissions"),
    ],
)
def test_os_errors_become_file_reason_and_fix(code, fix, monkeypatch, capsys, tmp_path):
    """A full disk or a read-only output folder, wherever a command meets it."""
    from pgolf import pipeline

    target = str(tmp_path / "out" / "artifact.pgolf")

    def fail(*a, **k):
        raise OSError(code, os.strerror(code), target)

    monkeypatch.setattr(pipeline, "run", fail)
    err = run_main(["run", "--set", "iterations=2"], capsys)
    assert target in err and os.strerror(code) in err and fix in err


def test_run_dir_under_a_file_is_a_clean_error(tmp_path, capsys, monkeypatch):
    """A real OSError from the run folder's creation (data resolution stubbed out)."""
    from pgolf import pipeline

    monkeypatch.setattr(pipeline, "resolve_data", lambda cfg: (cfg, tmp_path, tmp_path / "t.model"))
    monkeypatch.setattr(pipeline, "check_vocab", lambda cfg, tok: None)
    afile = tmp_path / "f"
    afile.write_text("x")
    for run_dir in (afile / "run", None):  # explicit, and a generated name (created exclusively)
        argv = ["train", "--preset", "cpu-tiny"]
        if run_dir is None:
            monkeypatch.chdir(tmp_path)
            (tmp_path / "out").write_text("a file where the out/ folder goes")
        argv += ["--run-dir", str(run_dir)] if run_dir else []
        err = run_main(argv, capsys)
        if run_dir:
            assert f"{run_dir}: Not a directory" in err and "a part of the path is a file" in err
        else:
            assert "out: File exists" in err and "a file is in the way" in err, err


def pgolf(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    e = {k: v for k, v in os.environ.items() if k != "PGOLF_DEBUG"}
    return subprocess.Popen(
        [sys.executable, "-m", "pgolf", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**e, **(env or {})},
    )


def test_real_processes_exit_2_without_traceback(tmp_path):
    cases = [
        (["run", "--set", "iterations=1e400"], {}, "train.iterations"),
        (["params", "--preset", "cpu-tiny"], {"SEED": "abc"}, "SEED"),
        (["eval", str(tmp_path / "none.pgolf")], {}, "none.pgolf"),
    ]
    procs = [(pgolf(*args, env=env), needle) for args, env, needle in cases]  # all at once
    for p, needle in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 2 and "Traceback" not in err and needle in err, err


def test_eval_refuses_artifacts_only_the_checked_read_catches(tmp_path, capsys):
    """`pgolf eval` reads any artifact with the hostile-input bounds (the run's own read back,
    `load_artifact(..., checked=False)`, skips them): files with valid checksums whose only fault
    is one of those bounds' are refused, naming the file and the fault."""
    import hashlib

    from pgolf import config as C
    from pgolf.artifact import build_payload, wrap

    g = torch.Generator().manual_seed(0)
    codes, scales = rtn_quantize(torch.randn(8, 8, generator=g), 6, 12.85)
    ts = [QTensor(n, (8, 8), "int", 6, codes, scales, None, "mlp") for n in ("wa", "wb")]
    payload = bytearray(build_payload(ts, {}))  # the writer refuses duplicate names itself
    at = payload.index(b"\x02\x00wb")
    payload[at + 3] = ord("a")
    payload[-32:] = hashlib.sha256(bytes(payload[:-32])).digest()
    dup = tmp_path / "dup.pgolf"
    dup.write_bytes(wrap(bytes(payload)))
    cfg = C.to_dict(C.load("cpu-tiny", []))
    typed = tmp_path / "typed.pgolf"
    save_artifact(typed, ts, {"config": {**cfg, "model": {**cfg["model"], "num_layers": "2"}}})
    shapes = tmp_path / "shapes.pgolf"
    save_artifact(shapes, ts, {"config": cfg})
    for path, fault in (
        (dup, "duplicate tensor name 'wa'"),
        (typed, "model.num_layers = 2 is not a valid int"),
        (shapes, "config and weights disagree"),
    ):
        err = run_main(["eval", str(path)], capsys)
        assert str(path) in err and fault in err, err
