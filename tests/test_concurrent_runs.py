"""Concurrent runs never share a run folder; temporary files are unique to their process and
removed when a write fails (a full disk leaves nothing behind). Issue 7, item 2."""

from __future__ import annotations

import errno
import multiprocessing as mp
import os
from pathlib import Path

import pytest
import torch

from pgolf import checkpoint as CK
from pgolf import config as C
from pgolf import data as D
from pgolf import runlog as R


def test_two_runs_in_the_same_second_get_two_folders(tmp_path, monkeypatch):
    monkeypatch.setattr(R.time, "time", lambda: 1_800_000_000.0)  # one frozen second
    cfg = C.preset("cpu-tiny")
    a = R.RunDir(R.default_run_dir(cfg, tmp_path), exclusive=True)
    b = R.RunDir(R.default_run_dir(cfg, tmp_path), exclusive=True)
    c = R.RunDir(R.default_run_dir(cfg, tmp_path), exclusive=True)
    assert a.path.is_dir() and b.path == a.path.with_name(a.path.name + "-2")
    assert c.path == a.path.with_name(a.path.name + "-3") and c.path.is_dir()
    # an explicit --run-dir is the user's choice: reused as it is
    assert R.RunDir(a.path).path == a.path


def _claim(path: str, barrier, out) -> None:
    barrier.wait()
    out.put(str(R.claim_dir(path)))


def test_processes_starting_at_once_never_share_a_folder(tmp_path):
    # fork: the children start at once without re-importing torch (they only call os.mkdir)
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    n = 2
    barrier, out = ctx.Barrier(n), ctx.Queue()
    target = str(tmp_path / "out" / "20261130-120000_cpu-tiny_s1337")
    procs = [ctx.Process(target=_claim, args=(target, barrier, out)) for _ in range(n)]
    for p in procs:
        p.start()
    got = sorted(out.get(timeout=120) for _ in range(n))
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert got == sorted([target, target + "-2"])


def test_temporary_names_are_unique_per_call_and_process(tmp_path):
    a, b = D.temp_path(tmp_path / "x.bin"), D.temp_path(tmp_path / "x.bin")
    assert a != b and str(os.getpid()) in a.name and a.parent == tmp_path


def _full_disk(real):
    """A writer that puts half its bytes on disk, then fails as a full disk does."""

    def write(self, data, *args, **kwargs):
        real(self, data[: len(data) // 2], *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    return write


def test_full_disk_leaves_no_partial_shard_and_keeps_the_old_one(tmp_path, monkeypatch):
    shard = tmp_path / "x_train_000000.bin"
    D.write_shard(shard, list(range(100)))
    before = shard.read_bytes()
    monkeypatch.setattr(Path, "write_bytes", _full_disk(Path.write_bytes))
    with pytest.raises(OSError) as e:
        D.write_shard(shard, list(range(5000)))
    assert e.value.errno == errno.ENOSPC
    assert sorted(p.name for p in tmp_path.iterdir()) == [shard.name]
    assert shard.read_bytes() == before


def test_full_disk_leaves_no_partial_checkpoint_or_result(tmp_path, monkeypatch):
    run = R.RunDir(tmp_path / "run")
    run.write_result({"a": 1})

    def full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 100)
        raise OSError(errno.ENOSPC, "No space left on device", filename)

    monkeypatch.setattr(CK, "save_file", full)
    with pytest.raises(OSError):
        CK.save_checkpoint(run.checkpoint_path, {"w": torch.zeros(3)})
    with pytest.raises(OSError):
        CK.save_weights(run.final_model_path, {"w": torch.zeros(3)})
    monkeypatch.setattr(Path, "write_text", _full_disk(Path.write_text))
    with pytest.raises(OSError):
        run.write_result({"b": 2})
    assert sorted(p.name for p in run.path.iterdir()) == ["result.json"]
    assert run.read_result() == {"a": 1}
