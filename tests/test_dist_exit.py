"""How a rank leaves a multi-rank job (`pgolf.dist.leave`): after a clean run the process group
ends and the rank exits at once, output flushed, before interpreter teardown (CI once saw a
finished gloo rank abort there with SIGABRT, so torchrun called the whole job failed); a failed
or single-process run keeps the normal exit."""

import subprocess
import sys
import textwrap

import pytest

_RANK = textwrap.dedent(
    """
    import atexit, sys
    import torch.distributed as tdist
    from pgolf import dist
    rank, world, init, ok = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4] == "1"
    if world > 1:
        tdist.init_process_group("gloo", init_method="file://" + init, rank=rank, world_size=world)
    atexit.register(lambda: print("teardown ran", flush=True))
    print(f"rank {rank} done", end="")  # unflushed on purpose: leave must flush it
    dist.leave(ok)
    print(" and returned", end="")
    """
)


def _ranks(tmp_path, world: int, ok: bool) -> list[subprocess.CompletedProcess]:
    flags = [str(world), str(tmp_path / "init"), str(int(ok))]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _RANK, str(r), *flags],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(world)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    return [
        subprocess.CompletedProcess(p.args, p.returncode, o, e) for p, (o, e) in zip(procs, outs)
    ]


@pytest.mark.dist
def test_a_finished_rank_of_a_multi_rank_job_exits_before_teardown_with_output_flushed(tmp_path):
    for r, res in enumerate(_ranks(tmp_path, 2, ok=True)):
        assert res.returncode == 0, res.stderr
        assert res.stdout == f"rank {r} done", res.stdout  # flushed; neither returned nor torn down


def test_a_single_process_or_a_failed_rank_keeps_the_normal_exit(tmp_path):
    (res,) = _ranks(tmp_path, 1, ok=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout == "rank 0 done and returnedteardown ran\n"


@pytest.mark.dist
def test_a_failed_rank_ends_the_group_without_the_early_exit(tmp_path):
    for r, res in enumerate(_ranks(tmp_path, 2, ok=False)):
        assert res.returncode == 0, res.stderr
        assert res.stdout == f"rank {r} done and returnedteardown ran\n"
