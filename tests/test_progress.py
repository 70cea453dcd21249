"""Progress bars (issue 10): a tqdm bar on stderr for long stages, on rank 0, when stderr is a
terminal or PGOLF_PROGRESS=1; never in log.txt, never on other ranks, none by default in a
captured (non-TTY) run."""

from __future__ import annotations

import io

import pytest
import torch

from pgolf import dist, quant
from pgolf.config import ModelConfig, QuantConfig
from pgolf.lab.data import datasets as D
from pgolf.runlog import RunDir

TINY = ModelConfig(
    vocab_size=64,
    num_layers=2,
    model_dim=32,
    num_heads=2,
    num_kv_heads=1,
    mlp_mult=2.0,
    rope_dims=8,
    xsa_layers=(0,),
    ve_dim=0,
    ve_layers=(),
    parallel_start=0,
    recur_layers=(),
    attn_backend="naive",
)
BAR = ("%|", "it/s", "s/it")  # what a tqdm bar always prints


def _gptq_stage(run: RunDir) -> None:
    """Calibration (Hessians) and GPTQ per tensor of a tiny GPT, logging into the run."""
    from pgolf.model import GPT

    torch.manual_seed(0)
    model = GPT(TINY)
    model.init_weights()
    run.open_log()
    g = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, 64, (2, 12), generator=g) for _ in range(3)]
    hess = quant.collect_hessians(model, batches)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    plan = quant.make_plan(state, QuantConfig(passthrough_numel=256), TINY)
    quant.quantize_state(state, hess, plan)
    run.close()


def test_forced_bars_go_to_stderr_and_never_into_the_log(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PGOLF_PROGRESS", "1")
    _gptq_stage(RunDir(tmp_path / "run"))
    out, err = capsys.readouterr()
    assert "calibration (Hessians)" in err and "quantize (per tensor)" in err
    assert any(b in err for b in BAR)
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "quant:done" in log and "quant:done" in out  # the plain lines still arrive
    assert not any(b in log for b in BAR) and "\r" not in log and "calibration" not in log
    assert not any(b in out for b in BAR)


def test_data_building_shows_a_bar_when_forced(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PGOLF_PROGRESS", "1")
    txt = tmp_path / "book.txt"
    txt.write_text("\n\n".join(f"paragraph {i} " + "word " * 20 for i in range(40)))
    D.build_corpus([txt], tmp_path / "d", vocab_size=300, split="paragraph", val_permille=200)
    err = capsys.readouterr().err
    assert "tokenize train" in err and "tokenize val" in err


@pytest.mark.parametrize("env", [None, "0"])
def test_no_bar_off_a_terminal_or_when_switched_off(tmp_path, monkeypatch, capsys, env):
    if env is None:
        monkeypatch.delenv("PGOLF_PROGRESS", raising=False)
    else:
        monkeypatch.setenv("PGOLF_PROGRESS", env)
    it = [1, 2, 3]
    assert dist.progress(it, desc="x") is it  # a pass-through, not a wrapper
    _gptq_stage(RunDir(tmp_path / "run"))
    err = capsys.readouterr().err
    assert err == "", err


def test_other_ranks_never_show_a_bar(monkeypatch, capsys):
    monkeypatch.setenv("PGOLF_PROGRESS", "1")
    it = [1, 2, 3]
    assert dist.progress(it, desc="x") is not it  # forced: rank 0 gets a bar
    list(dist.progress(it, desc="x"))
    assert "x:" in capsys.readouterr().err
    old = dist.info()
    dist.set_info(dist.DistInfo(rank=1, world_size=2))
    try:
        assert dist.progress(it, desc="x") is it
    finally:
        dist.set_info(old)
    monkeypatch.setenv("RANK", "3")  # torchrun's rank, before the process group exists
    assert dist.progress(it, desc="x") is it
    assert capsys.readouterr().err == ""


def test_a_tty_stderr_gets_a_bar_unless_switched_off(monkeypatch):
    class TTY(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = TTY()
    monkeypatch.setattr("sys.stderr", tty)
    monkeypatch.delenv("PGOLF_PROGRESS", raising=False)
    assert list(dist.progress(range(3), desc="tty bar")) == [0, 1, 2]
    assert "tty bar" in tty.getvalue()
    monkeypatch.setenv("PGOLF_PROGRESS", "0")
    it = [1]
    assert dist.progress(it, desc="tty bar") is it
    assert dist.progress(it, desc=None) is it  # no label: never a bar
