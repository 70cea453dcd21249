"""Distributed context and the one logging helper.

`init()` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) and starts a process group:
NCCL on CUDA, gloo on CPU. Everything works without a process group (world size 1): the helpers
below then do nothing. The library never prints; it calls `log0`, which writes on rank 0 only, to
stdout and to the log file set by `set_log_file` (the challenge's `key:value` lines). Long stages
wrap their loops in `progress`: a tqdm bar on stderr, never in the log (tqdm imported lazily, so
the core runs without it). Nothing here runs at import time.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TextIO

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_INFO = DistInfo()
_LOG_FILE: TextIO | None = None
_QUIET = False
_BARS = None  # the tqdm class once `progress` showed a bar: console lines then go around bars


def info() -> DistInfo:
    return _INFO


def pick_device(requested: str = "auto", local_rank: int = 0) -> torch.device:
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {requested!r} must be auto, cpu, cuda or mps")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda requested but torch sees no CUDA GPU; use --set device=cpu")
    if requested == "cuda":
        return torch.device("cuda", local_rank)
    return torch.device(requested)


def init(requested_device: str = "auto") -> DistInfo:
    """Start the process group if launched by torchrun; return (and remember) the context."""
    global _INFO
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(requested_device, local)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    _INFO = DistInfo(rank=rank, world_size=world, local_rank=local, device=device)
    return _INFO


def set_info(di: DistInfo) -> None:
    """For tests and spawned workers that start the process group themselves."""
    global _INFO
    _INFO = di


def cleanup(ok: bool = True) -> None:
    """End the process group; the barrier only on a clean exit (a failed rank must not wait for
    ranks that are blocked in a collective, or the whole job hangs)."""
    if dist.is_available() and dist.is_initialized():
        if ok:
            dist.barrier()
        dist.destroy_process_group()


def leave(ok: bool) -> None:
    """End a rank of a multi-rank job: the process group is ended (`cleanup`); after a clean
    run the process then exits at once with its output flushed, before interpreter teardown,
    where a communicator's C++ thread once aborted a finished gloo rank (SIGABRT after
    RUN_COMPLETE, so torchrun reported the whole job failed). One process: `cleanup` only."""
    multi = is_dist()
    cleanup(ok)
    if ok and multi:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os._exit(0)


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce (sum, avg or max); identity without a process group."""
    if not is_dist():
        return t
    ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
    if op == "avg":
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t.div_(dist.get_world_size())
    else:
        dist.all_reduce(t, op=ops[op])
    return t


def any_rank(flag: bool, device: torch.device | None = None) -> bool:
    """True on every rank if `flag` is true on any rank (the shared stop decision)."""
    t = torch.tensor([1.0 if flag else 0.0], device=device or _INFO.device)
    return bool(all_reduce_(t, "max").item() > 0)


def broadcast_(t: torch.Tensor, src: int = 0) -> torch.Tensor:
    if is_dist():
        dist.broadcast(t, src)
    return t


def barrier() -> None:
    if is_dist():
        dist.barrier()


# ----------------------------------------------------------------------------------------------
# Logging (rank 0 only)


def set_log_file(f: TextIO | None) -> None:
    global _LOG_FILE
    _LOG_FILE = f


def get_log_file() -> TextIO | None:
    """The file `log0` lines go to besides stdout (None: stdout only)."""
    return _LOG_FILE


def set_quiet(quiet: bool) -> None:
    """Silence stdout (the log file, if any, still receives every line)."""
    global _QUIET
    _QUIET = quiet


def log0(msg: str, console: bool = True) -> None:
    """Write one line on rank 0: to stdout (unless quiet or console=False) and the run log."""
    if _INFO.rank != 0:
        return
    if console and not _QUIET:
        if _BARS is not None:
            _BARS.write(msg, file=sys.stdout)
        else:
            sys.stdout.write(msg + "\n")
        sys.stdout.flush()
    if _LOG_FILE is not None:
        _LOG_FILE.write(msg + "\n")
        _LOG_FILE.flush()


def progress(it: Iterable, total: int | None = None, desc: str | None = None) -> Iterable:
    """`it`, with a tqdm bar on stderr on rank 0 when stderr is a TTY or PGOLF_PROGRESS=1 (never
    with PGOLF_PROGRESS=0, desc None, or tqdm missing); else `it` itself. Never in the log file."""
    on = os.environ.get("PGOLF_PROGRESS", "")
    off = on == "0" or (on != "1" and not sys.stderr.isatty())
    if off or desc is None or _INFO.rank or os.environ.get("RANK", "0") != "0":
        return it
    global _BARS
    try:
        from tqdm import tqdm as _BARS
    except ImportError:
        return it
    return _BARS(it, total=total, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True)
