"""Run folders: header, config.json, metrics, result merging, run-dir naming, checkpoints."""

from __future__ import annotations

import dataclasses as dc
import hashlib
import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from pgolf import checkpoint as CK
from pgolf import config as C
from pgolf import dist
from pgolf import runlog as R


def test_open_log_writes_header_config_and_log_lines(tmp_path):
    cfg = dc.replace(C.preset("cpu-tiny"), preset="cpu-tiny")
    with R.RunDir(tmp_path / "r" / "nested") as run:
        assert run.path.is_dir()
        run.open_log(cfg)
        run.open_log(cfg)  # idempotent: one header
        dist.log0("step:1/2 train_loss:1.0000")
    text = run.log_path.read_text()
    assert text.count("code_hash:") == 1
    assert f"code_hash:{R.code_hash()}\n" in text
    assert re.fullmatch(r"[0-9a-f]{12}", R.code_hash())
    assert "env:torch:" + torch.__version__ in text and "env:world_size:1" in text
    assert "env:hostname:" in text and "env:python:" in text
    cfg_line = next(x for x in text.splitlines() if x.startswith("config:"))
    assert C.from_dict(json.loads(cfg_line[len("config:") :])) == cfg
    assert C.from_dict(json.loads(run.config_path.read_text())) == cfg
    assert text.rstrip().endswith("step:1/2 train_loss:1.0000")
    dist.log0("after close")  # detached: not in the file
    assert "after close" not in run.log_path.read_text()


def test_code_hash_covers_every_module(tmp_path, monkeypatch):
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "b.py").write_text("y = 2\n")
    (tmp_path / "notes.txt").write_text("ignored")
    monkeypatch.setattr(R, "__file__", str(tmp_path / "runlog.py"))
    expect = hashlib.sha256(b"x = 1\ny = 2\n").hexdigest()[:12]
    assert R.code_hash() == expect
    (tmp_path / "b.py").write_text("y = 3\n")
    assert R.code_hash() != expect


def test_metrics_and_result(tmp_path):
    run = R.RunDir(tmp_path)
    run.metric(step=1, train_loss=torch.tensor(2.5), lr_mult=1.0)
    run.metric(step=2, val_bpb=1.25)
    run.close()
    assert run.read_metrics() == [
        {"step": 1, "train_loss": 2.5, "lr_mult": 1.0},
        {"step": 2, "val_bpb": 1.25},
    ]
    run.write_result({"a": 1, "b": 2})
    merged = run.write_result({"b": 3, "c": Path("x")})
    assert merged == {"a": 1, "b": 3, "c": Path("x")}
    assert json.loads(run.result_path.read_text()) == {"a": 1, "b": 3, "c": "x"}
    assert not list(tmp_path.glob("*.tmp"))


def test_default_run_dir():
    cfg = C.preset("pr1550")
    p = R.default_run_dir(cfg)
    assert p.parent == Path("out")
    assert re.fullmatch(r"\d{8}-\d{6}_pr1550_s1337", p.name)
    cfg2 = dc.replace(cfg, train=dc.replace(cfg.train, run_dir="somewhere/else", seed=7))
    assert R.default_run_dir(cfg2) == Path("somewhere/else")


def test_checkpoint_round_trip_keeps_nested_state(tmp_path):
    model = {"w": torch.randn(3, 4), "e": torch.randn(5).bfloat16()}
    ema = {"w": torch.zeros(3, 4)}
    state = {
        "optim": {"state": {0: {"step": torch.tensor(3.0), "buf": torch.ones(2)}}, "lr": 0.1},
        "loaders": [{"kind": "stream", "pos": 12, "rng": {"state": 2**80}}],
        "pair": (1, None, "x"),
    }
    p = CK.save_checkpoint(tmp_path / "ck.safetensors", model, ema, state, {"step": 7})
    ck = CK.load_checkpoint(p)
    assert ck.meta == {"step": 7}
    assert all(torch.equal(ck.model[k], model[k]) for k in model)
    assert ck.model["e"].dtype == torch.bfloat16
    assert ck.ema is not None and torch.equal(ck.ema["w"], ema["w"])
    inner = ck.state["optim"]["state"]
    assert list(inner) == [0]  # int keys survive JSON
    assert torch.equal(inner[0]["step"], torch.tensor(3.0)) and inner[0]["step"].ndim == 0
    assert ck.state["loaders"] == state["loaders"] and ck.state["pair"] == (1, None, "x")
    assert not list(tmp_path.glob("*.tmp"))
    assert CK.load_checkpoint(CK.save_checkpoint(tmp_path / "n.safetensors", model)).ema is None


def test_optimizer_state_round_trip_continues_identically(tmp_path):
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(4, 4))
    opt = torch.optim.AdamW([w], lr=0.1)
    for _ in range(2):
        (w**2).sum().backward()
        opt.step()
        opt.zero_grad()
    p = CK.save_checkpoint(tmp_path / "o.safetensors", {"w": w}, None, {"o": opt.state_dict()})
    ck = CK.load_checkpoint(p)
    w2 = torch.nn.Parameter(ck.model["w"].clone())
    opt2 = torch.optim.AdamW([w2], lr=0.1)
    opt2.load_state_dict(ck.state["o"])
    for p_, o in ((w, opt), (w2, opt2)):
        (p_**2).sum().backward()
        o.step()
    assert torch.equal(w, w2)


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        CK.load_checkpoint(tmp_path / "missing.safetensors")
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.ones(2)}, str(plain))
    with pytest.raises(ValueError, match="not a pgolf checkpoint"):
        CK.load_checkpoint(plain)
    CK.save_weights(tmp_path / "final.safetensors", {"w": torch.ones(2)}, {"step": 3})
    with pytest.raises(ValueError, match="not a pgolf checkpoint"):
        CK.load_checkpoint(tmp_path / "final.safetensors")
