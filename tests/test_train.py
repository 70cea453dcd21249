"""Training loop: resume equals an uninterrupted run, divergence handling, 2-rank gloo equals
1 rank with 2 accumulation steps, compile warm-up leaves the weights at init, wall-clock stop."""

from __future__ import annotations

import dataclasses as dc
import json
import os
import re
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pgolf import train as T
from pgolf.bpb import ByteTables
from pgolf.checkpoint import load_checkpoint
from pgolf.config import RunConfig, preset
from pgolf.data import write_shard
from pgolf.pipeline import train_stage
from pgolf.runlog import RunDir

V = 256


def tiny_cfg(loader: str = "stream", **train: object) -> RunConfig:
    """2 layers, D 64, vocab 256, seq 32, 4 sequences per step, iteration-driven, CPU."""
    b = preset("cpu-tiny")
    model = dc.replace(
        b.model,
        vocab_size=V,
        num_layers=2,
        model_dim=64,
        xsa_layers=(0, 1),
        ve_layers=(1,),
        parallel_start=1,
        recur_layers=(0, 1, 0, 1),
    )
    t = dict(
        iterations=6,
        train_batch_tokens=128,
        train_seq_len=32,
        grad_accum_steps=1,
        warmup_steps=0,
        val_loss_every=0,
        train_log_every=1,
        max_wallclock_seconds=1e9,
        recur_start_step=3,
        recur_start_frac=-1.0,
        checkpoint_every=0,
        compile=False,
        device="cpu",
    )
    t.update(train)
    return dc.replace(
        b,
        data=dc.replace(b.data, loader=loader),
        model=model,
        train=dc.replace(b.train, **t),
        eval=dc.replace(b.eval, eval_seq_len=32, eval_stride=16, val_batch_seqs=8),
    )


def stub_tables() -> ByteTables:
    """One byte per token (the real tables need a SentencePiece model; not under test here)."""
    z = torch.zeros(V, dtype=torch.bool)
    return ByteTables(torch.ones(V, dtype=torch.int32), z, z.clone())


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("shards")
    rng = np.random.default_rng(0)
    # a noisy periodic stream: learnable, so the losses move visibly between steps
    n = 30_000
    base = (np.arange(n) * 7) % V
    noise = rng.integers(0, V, n)
    toks = np.where(rng.random(n) < 0.3, noise, base)
    write_shard(d / "syn_train_000000.bin", toks[:24_000])
    write_shard(d / "syn_train_000001.bin", toks[24_000:28_000])
    write_shard(d / "syn_val_000000.bin", toks[28_000 : 28_000 + 32 * 8 + 1])
    return d


def run_train(cfg: RunConfig, path: Path, data_dir: Path, **kw: object) -> T.TrainResult:
    """Train as the CLI does (`pipeline.train_stage`: the caller records the result)."""
    run = RunDir(path)
    try:
        return train_stage(cfg, run, data_dir=data_dir, tables=stub_tables(), **kw)
    finally:
        run.close()


def losses(path: Path) -> dict[int, float]:
    rows = [json.loads(x) for x in (path / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train_loss"] for r in rows if "train_loss" in r}


@pytest.mark.parametrize("loader", ["stream", "shuffled"])
def test_resume_after_interrupt_equals_uninterrupted_run(tmp_path, data_dir, loader):
    cfg = tiny_cfg(loader, final_val=True)
    straight = run_train(cfg, tmp_path / "a", data_dir)
    ref = losses(tmp_path / "a")
    assert sorted(ref) == [1, 2, 3, 4, 5, 6]
    assert len(set(ref.values())) == 6  # the test would be vacuous on a constant loss

    # Ctrl-C right after step 3 completes (recurrence switches on before step 4)
    run = RunDir(tmp_path / "b")
    real_metric = run.metric

    def metric(**kv):
        real_metric(**kv)
        if kv.get("step") == 3 and "train_loss" in kv:
            raise KeyboardInterrupt

    run.metric = metric
    with pytest.raises(KeyboardInterrupt):
        T.train(cfg, run, data_dir=data_dir, tables=stub_tables())
    run.close()
    ck = load_checkpoint(run.checkpoint_path)
    assert ck.meta["step"] == 3 and ck.meta["recurrence_active"] is False
    assert ck.ema is not None and "optim" in ck.state

    resumed = run_train(cfg, tmp_path / "c", data_dir, resume=run.checkpoint_path)
    got = losses(tmp_path / "c")
    assert sorted(got) == [4, 5, 6]
    assert [got[s] for s in (4, 5, 6)] == [ref[s] for s in (4, 5, 6)]
    assert resumed.steps == 6 and resumed.model.recurrence_active
    a = load_file(str(tmp_path / "a" / "final_model.safetensors"))
    c = load_file(str(tmp_path / "c" / "final_model.safetensors"))
    assert a.keys() == c.keys() and all(torch.equal(a[k], c[k]) for k in a)
    assert straight.val is not None and resumed.val == dc.replace(
        straight.val, seconds=resumed.val.seconds
    )


def test_nan_loss_raises_and_keeps_last_good_checkpoint(tmp_path, data_dir, monkeypatch):
    cfg = tiny_cfg(iterations=10, checkpoint_every=2)
    real_step = T._Trainer.step
    calls = {"n": 0}

    def step(self):
        calls["n"] += 1
        if calls["n"] == 4:  # poison the weights: step 4's loss is NaN
            with torch.no_grad():
                self.model.tok_emb.weight[0, 0] = float("nan")
        return real_step(self)

    monkeypatch.setattr(T._Trainer, "step", step)
    run_path = tmp_path / "nan"
    with pytest.raises(T.TrainingDiverged) as exc:
        run_train(cfg, run_path, data_dir)
    msg = str(exc.value)
    assert "step 4" in msg and str(run_path) in msg and "lower the learning rates" in msg
    ck = load_checkpoint(run_path / "checkpoint.safetensors")
    assert ck.meta["step"] == 2
    assert all(torch.isfinite(t).all() for t in ck.model.values())
    assert json.loads((run_path / "result.json").read_text())["status"] == "diverged"


def test_nonfinite_weights_never_overwrite_a_good_checkpoint(tmp_path, data_dir, monkeypatch):
    cfg = tiny_cfg(iterations=10, checkpoint_every=2)
    real_step = T._Trainer.step
    calls = {"n": 0}

    def step(self):
        loss = real_step(self)
        calls["n"] += 1
        if calls["n"] == 4:  # the update of step 4 breaks the weights; its loss is still finite
            with torch.no_grad():
                self.model.blocks[0].mlp.fc.weight.fill_(float("inf"))
        return loss

    monkeypatch.setattr(T._Trainer, "step", step)
    with pytest.raises(T.TrainingDiverged, match="weights became non-finite"):
        run_train(cfg, tmp_path / "inf", data_dir)
    ck = load_checkpoint(tmp_path / "inf" / "checkpoint.safetensors")
    assert ck.meta["step"] == 2
    assert all(torch.isfinite(t).all() for t in ck.model.values())


def test_warmup_reset_leaves_weights_at_init(tmp_path, data_dir):
    base = run_train(tiny_cfg(iterations=3), tmp_path / "plain", data_dir)
    warm = run_train(
        tiny_cfg(iterations=3, warmup_steps=2, final_val=True), tmp_path / "warm", data_dir
    )
    assert losses(tmp_path / "warm") == losses(tmp_path / "plain")
    sa, sb = base.model.state_dict(), warm.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    log = (tmp_path / "warm" / "log.txt").read_text()
    # plain graph then the recurrent graph (recurrence is configured)
    assert [f"warmup_step:{k}/4" for k in range(1, 5)] == re.findall(r"warmup_step:\d+/\d+", log)
    assert re.search(
        r"^step:1/3 train_loss:\d+\.\d{4} train_time:\d+ms step_avg:[\d.]+ms$", log, re.M
    )
    assert "ema:applying EMA weights" in log
    assert re.search(r"^step:3/3 val_loss:\d+\.\d{4} val_bpb:\d+\.\d{4} train_time:", log, re.M)
    # the live weights' last validation runs only when asked for (train.final_val)
    assert base.val is None and warm.val is not None
    assert "val_loss:" not in (tmp_path / "plain" / "log.txt").read_text()
    assert json.loads((tmp_path / "plain" / "result.json").read_text())["val_bpb_live"] is None


def test_wallclock_cap_stops_early(tmp_path, data_dir):
    res = run_train(tiny_cfg(iterations=1000, max_wallclock_seconds=1e-3), tmp_path / "w", data_dir)
    assert res.stopped_early and res.steps == 1
    log = (tmp_path / "w" / "log.txt").read_text()
    assert re.search(r"stopping_early: wallclock_cap train_time:\d+ms step:1/1000", log)
    result = json.loads((tmp_path / "w" / "result.json").read_text())
    assert result["steps"] == 1 and result["stopped_early"] is True


class _SlowClock(T._Clock):
    """A loaded machine, deterministically: the first step seems to take 20 s, every read while
    running adds one more second."""

    def ms(self) -> float:
        if self.t0 is not None:
            self.t0 -= 1.0 if getattr(self, "stalled", False) else 20.0
            self.stalled = True
        return super().ms()


@pytest.mark.parametrize("schedule", ["steps", "time"])
def test_step_schedule_ignores_a_wallclock_cap_that_does_not_bind(
    tmp_path, data_dir, monkeypatch, schedule
):
    quick = run_train(tiny_cfg(schedule=schedule), tmp_path / "quick", data_dir)
    monkeypatch.setattr(T, "_Clock", _SlowClock)
    slow = run_train(
        tiny_cfg(schedule=schedule, max_wallclock_seconds=40.0), tmp_path / "slow", data_dir
    )
    assert quick.steps == slow.steps == 6 and not slow.stopped_early
    same = losses(tmp_path / "quick") == losses(tmp_path / "slow")
    # 'time' (the records) warms down by the clock, so the control run must differ
    assert same == (schedule == "steps")


def test_binding_wallclock_safety_limit_is_logged(tmp_path, data_dir, monkeypatch):
    monkeypatch.setattr(T, "_Clock", _SlowClock)
    res = run_train(tiny_cfg(max_wallclock_seconds=23.0), tmp_path / "w", data_dir)
    assert res.stopped_early and 0 < res.steps < 6
    log = (tmp_path / "w" / "log.txt").read_text()
    assert re.search(r"stopping_early: wallclock_cap train_time:\d+ms step:\d/6 \(safety", log)


def test_train_leaves_the_result_to_its_caller(tmp_path, data_dir):
    """`train` writes the run's log, metrics and weights; result.json is the caller's
    (`pipeline.train_stage` records `TrainResult.record()`)."""
    run = RunDir(tmp_path / "t")
    try:
        res = T.train(
            tiny_cfg(iterations=2, final_val=True), run, data_dir=data_dir, tables=stub_tables()
        )
    finally:
        run.close()
    assert not run.result_path.exists() and run.final_model_path.exists()
    rec = res.record()
    assert rec["status"] == "trained" and rec["steps"] == 2 and rec["stopped_early"] is False
    assert rec["val_bpb_live"] == res.val.val_bpb and rec["ema_applied"] is True


def test_cpu_tiny_is_capped_by_steps():
    t = preset("cpu-tiny").train
    assert t.schedule == "steps" and t.iterations == 440 and t.max_wallclock_seconds >= 300


# ----------------------------------------------------------------------------------------------
# 2 ranks (gloo) == 1 rank with 2 accumulation steps


def _worker(rank: int, world: int, port: int, cfg: RunConfig, out: str, data: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    from pgolf import dist

    try:
        run_train(cfg, Path(out), Path(data))
    finally:
        dist.cleanup()


@pytest.mark.dist
def test_two_gloo_ranks_match_one_rank_with_accumulation(tmp_path, data_dir):
    one = tiny_cfg(iterations=4, grad_accum_steps=2)
    run_train(one, tmp_path / "one", data_dir)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    two = tiny_cfg(iterations=4, grad_accum_steps=1)
    args = (2, port, two, str(tmp_path / "two"), str(data_dir))
    torch.multiprocessing.spawn(_worker, args=args, nprocs=2, join=True)
    a, b = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    np.testing.assert_allclose([b[s] for s in a], [a[s] for s in a], rtol=1e-5, atol=1e-6)
    wa = load_file(str(tmp_path / "one" / "final_model.safetensors"))
    wb = load_file(str(tmp_path / "two" / "final_model.safetensors"))
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# benchmarks/train_throughput.py smoke test


def test_throughput_benchmark_smoke(tmp_path):
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "train_throughput.py"
    spec = importlib.util.spec_from_file_location("train_throughput", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "b.jsonl"
    sets = [
        "model.num_layers=2",
        "model.model_dim=64",
        "model.xsa_layers=0,1",
        "model.ve_layers=1",
        "model.parallel_start=1",
        "model.recur_layers=0,1,1",
    ]
    argv = [
        "--preset",
        "cpu-tiny",
        "--device",
        "cpu",
        "--steps",
        "1",
        "--warmup",
        "0",
        "--batch-seqs",
        "1",
        "--seq-len",
        "32",
        "--out",
        str(out),
    ]
    for s in sets:
        argv += ["--set", s]
    bench.main(argv)
    rec = json.loads(out.read_text())
    rows = rec["results"]
    assert [(r["compile"], r["recurrence"]) for r in rows] == [(False, False), (False, True)]
    assert all(r["ms_per_step"] > 0 and r["tokens_per_s"] > 0 for r in rows)
    # FLOPs: layer 1 visited twice with recurrence on -> its linear weights count twice
    model = T.build_model(tiny_cfg(), torch.device("cpu"))
    lin = [[m for m in b.modules() if isinstance(m, torch.nn.Linear)] for b in model.blocks]
    blk = [sum(m.weight.numel() for m in ms) for ms in lin]
    off = bench.matmul_params(model)
    model.set_recurrence(True)  # virtual layers (0, 1, 0, 1): both layers visited twice
    assert bench.matmul_params(model) - off == blk[0] + blk[1] > 0
    assert (
        off
        == sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
        + model.tok_emb.weight.numel()
    )
