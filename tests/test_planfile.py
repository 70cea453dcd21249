"""Plan files are read like artifacts (issue 23, item 5): regular files only, bounded size, JSON
depth checked before parsing, every value typed and range-checked, duplicates refused; each crafted
file ends in a ValueError naming the file (exit 2 from `pgolf quantize --plan`, no traceback),
quickly. A seeded random fuzzer of plan files checks the same on mutated files."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pgolf import cli
from pgolf.lab.budget.planfile import MAX_BYTES, MAX_DEPTH, Option, plan_sets, read_plan, write_plan
from pgolf.quantplan import QuantPlan

CHOICE = {"mlp": Option(5, 12.85, 4, 0.25), "attn": Option(6, 10.0, 0), "embed": Option(8, 20.0, 2)}


def valid_text(tmp_path: Path) -> str:
    path = tmp_path / "valid.json"
    write_plan(path, CHOICE, {"cap": 123, "table": [{"d_bpb": 0.001}]})
    return path.read_text()


def group_doc(mlp: str) -> str:
    """A hand-written plan whose mlp entry is the raw JSON text `mlp` (no `set`)."""
    return (
        '{"format": "pgolf-quant-plan", "version": 1, "groups": {"attn": {"bits": 6, '
        f'"clip_k": 10.0}}, "mlp": {mlp}}}}}'
    )


OK_MLP = '{"bits": 5, "clip_k": 12.85, "lqer_rank": 4, "prune": 0.25}'
CRAFTED = {  # name -> (file bytes, what the message says)
    "bits 1e999": (group_doc('{"bits": 1e999, "clip_k": 1}').encode(), "bits"),
    "rank 1e999": (group_doc('{"bits": 5, "clip_k": 1, "lqer_rank": 1e999}').encode(), "lqer_rank"),
    "bits 5.9": (group_doc('{"bits": 5.9, "clip_k": 1}').encode(), "an integer"),
    "bits '5'": (group_doc('{"bits": "5", "clip_k": 1}').encode(), "an integer"),
    "bits true": (group_doc('{"bits": true, "clip_k": 1}').encode(), "an integer"),
    "rank 10**18": (
        group_doc('{"bits": 5, "clip_k": 1, "lqer_rank": 1000000000000000000}').encode(),
        "lqer_rank 0..1024",
    ),
    "clip_k 1e308": (group_doc('{"bits": 5, "clip_k": 1e308}').encode(), "clip_k 0..100"),
    "clip_k NaN": (group_doc('{"bits": 5, "clip_k": NaN}').encode(), "clip_k"),
    "clip_k -Infinity": (group_doc('{"bits": 5, "clip_k": -Infinity}').encode(), "clip_k"),
    "prune 2": (group_doc('{"bits": 5, "clip_k": 1, "prune": 2}').encode(), "prune 0..1"),
    "unknown key": (group_doc('{"bits": 5, "clip_k": 1, "rank": 2}').encode(), "unknown keys"),
    "rank on other": (
        b'{"format": "pgolf-quant-plan", "groups": {"other": {"bits": 6, "clip_k": 1, '
        b'"lqer_rank": 2}}}',
        "lqer_rank 0..0",
    ),
    "group twice": (
        group_doc(OK_MLP).replace('"attn"', '"mlp"').encode(),
        "key 'mlp' twice",
    ),
    "format twice": (
        group_doc(OK_MLP).replace('"version": 1', '"format": "pgolf-quant-plan"').encode(),
        "twice",
    ),
    "10,000 brackets": (("[" * 10_000 + "]" * 10_000).encode(), f"nested more than {MAX_DEPTH}"),
    "10,000 braces": (('{"a":' * 10_000 + "1" + "}" * 10_000).encode(), "nested more than"),
    "non-UTF-8": (group_doc(OK_MLP).encode().replace(b'"mlp"', b'"ml\xff"'), "not UTF-8"),
    "5,000 digits": (group_doc('{"bits": ' + "9" * 5000 + ', "clip_k": 1}').encode(), "digits"),
    "5,000 digits elsewhere": (
        group_doc(OK_MLP).replace('"version": 1', '"version": -' + "1" * 5000).encode(),
        "5,000 digits",
    ),
    "version 2": (group_doc(OK_MLP).replace('"version": 1', '"version": 2').encode(), "version"),
    "not JSON": (b'{"format": "pgolf-quant-plan", "groups": {', "not a plan's JSON"),
    "too big": (b" " * (MAX_BYTES + 1) + group_doc(OK_MLP).encode(), "bytes"),
    "empty": (b"", "not a plan's JSON"),
    "a list": (b"[1, 2]", "format"),
    "set not strings": (
        group_doc(OK_MLP).replace('"version": 1', '"set": [1, 2]').encode(),
        "field 'set' must be",
    ),
}


def check_refused(path: Path, msg: str) -> None:
    t0 = time.perf_counter()
    with pytest.raises(ValueError) as e:
        read_plan(path)
    assert time.perf_counter() - t0 < 10
    assert str(path) in str(e.value) and msg in str(e.value), str(e.value)[:300]
    assert len(str(e.value)) < 1000  # the message never echoes the file


def test_the_hand_written_base_document_is_valid(tmp_path):
    path = tmp_path / "ok.json"
    path.write_text(group_doc(OK_MLP))
    plan = read_plan(path)
    assert plan == QuantPlan.parse(
        "attn=bits:6,clip_k:10.0;mlp=bits:5,clip_k:12.85,prune:0.25", "mlp:4"
    )


@pytest.mark.parametrize("case", list(CRAFTED))
def test_a_crafted_plan_file_is_refused_naming_the_file(tmp_path, case):
    data, msg = CRAFTED[case]
    path = tmp_path / "plan.json"
    path.write_bytes(data)
    check_refused(path, msg)


@pytest.mark.parametrize("case", ["bits 1e999", "10,000 brackets", "group twice", "non-UTF-8"])
def test_pgolf_quantize_plan_exits_2_naming_the_file(tmp_path, capsys, case):
    path = tmp_path / "plan.json"
    path.write_bytes(CRAFTED[case][0])
    with pytest.raises(SystemExit) as e:  # the run folder need not exist: the plan is read first
        cli.main(["quantize", str(tmp_path / "no-run"), "--plan", str(path)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("pgolf quantize: error: --plan ") and str(path) in err
    assert "Traceback" not in err and not (tmp_path / "no-run").exists()


def test_non_regular_files_are_refused_without_reading(tmp_path):
    check_refused(tmp_path, "not a regular file")  # a folder
    if hasattr(os, "mkfifo"):
        fifo = tmp_path / "plan.json"
        os.mkfifo(fifo)  # no writer: opening it for reading would block without O_NONBLOCK
        check_refused(fifo, "not a regular file")
    if Path("/dev/zero").exists():
        check_refused(Path("/dev/zero"), "not a regular file")
    check_refused(tmp_path / "absent.json", "cannot open")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_and_deep_nesting_exit_2_in_a_fresh_process_in_bounded_time_and_memory(tmp_path):
    """`pgolf quantize RUN --plan FILE` refuses before torch loads: under a second, ~20 MB."""
    fifo, deep = tmp_path / "fifo.json", tmp_path / "deep.json"
    os.mkfifo(fifo)
    deep.write_bytes(("[" * 10_000 + "]" * 10_000).encode())
    probe = (
        "import resource, sys\n"
        "from pgolf import cli\n"
        "try:\n"
        "    cli.main(sys.argv[1:])\n"
        "finally:\n"
        "    sys.stderr.write(f'torch:{\"torch\" in sys.modules} ')\n"
        "    st = open('/proc/self/status').read()  # VmHWM: this process's own peak (ru_maxrss\n"
        "    hwm = int(st.split('VmHWM:')[1].split()[0])  # keeps the forked parent's)\n"
        "    sys.stderr.write(f'maxrss_kb:{hwm}')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    for path in (fifo, deep):
        t0 = time.perf_counter()
        p = subprocess.run(
            [sys.executable, "-c", probe, "quantize", str(tmp_path / "r"), "--plan", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert time.perf_counter() - t0 < 10 and p.returncode == 2, p.stderr[-500:]
        assert str(path) in p.stderr and "Traceback" not in p.stderr
        assert "torch:False" in p.stderr  # refused before the heavy imports
        assert int(p.stderr.rsplit("maxrss_kb:", 1)[1]) < 500 * 1024


def test_a_bad_plan_via_set_is_refused_with_the_field_named():
    from pgolf import config as C

    for bad in (
        "quant.groups=mlp=bits:1e999",
        "quant.groups=mlp=bits:5.9",
        "quant.groups=mlp=clip_k:1e308",
        "quant.groups=mlp=clip_k:inf",
        "quant.groups=mlp=bits:" + "9" * 5000,
        "quant.lqer=mlp:1000000000000000000",
        "quant.lqer=mlp:4,mlp:8",
        "quant.lqer=other:4",
    ):
        with pytest.raises(ValueError, match=r"invalid config: quant\.(groups|lqer)") as e:
            C.load("cpu-tiny", [bad])
        assert len(str(e.value)) < 1000


MUTATIONS = [
    "1e999",
    "-1e999",
    "NaN",
    "Infinity",
    "9" * 40,
    "-0",
    "5.9",
    '"5"',
    "true",
    "null",
    "[]",
    "{}",
    "[" * 50,
    '"\\ud800"',
    '"mlp"',
    '"bits"',
    "0",
    "1025",
    "2",
    "8",
    ",",
    ":",
    '"',
]


SCALAR = re.compile(  # a JSON scalar in value position (after "key": )
    r'(?<=": )(?:"(?:[^"\\]|\\.)*"|-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?|true|false|null)'
)


def mutate(rng: random.Random, text: str) -> bytes:
    """One to three edits: a JSON value replaced by a tricky token (most often), a span replaced
    or repeated, the text cut, or a bit flipped."""
    data = text
    for _ in range(rng.randint(1, 3)):
        op = rng.random()
        if op < 0.6:
            m = rng.choice(list(SCALAR.finditer(data)) or [re.match("", data)])
            data = data[: m.start()] + rng.choice(MUTATIONS) + data[m.end() :]
            continue
        i = rng.randrange(len(data))
        j = min(len(data), i + rng.randint(0, 12))
        if op < 0.75:
            data = data[:i] + rng.choice(MUTATIONS) + data[j:]
        elif op < 0.85:
            data = data[:i]
        elif op < 0.95:
            data = data[:i] + data[i:j] * rng.randint(2, 50) + data[j:]
        else:
            raw = bytearray(data.encode())
            raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
            return bytes(raw)
    return data.encode()


def test_random_plan_files_are_read_or_refused_naming_the_file(tmp_path):
    """Seeded fuzzer: 400 mutated plan files; each is a valid typed plan or a ValueError that
    names the file, never another exception, each within a second."""
    rng = random.Random(1234)
    bases = (valid_text(tmp_path), json.dumps(json.loads(group_doc(OK_MLP)), indent=1))
    path = tmp_path / "fuzz.json"
    accepted = refused = 0
    for _ in range(400):
        data = mutate(rng, rng.choice(bases))
        path.write_bytes(data)
        t0 = time.perf_counter()
        try:
            plan = read_plan(path)
        except ValueError as e:
            assert str(path) in str(e), (data[:200], str(e)[:200])
            refused += 1
        else:
            assert isinstance(plan, QuantPlan)
            assert QuantPlan.parse(plan.groups_spec(), plan.lqer_spec()) == plan
            accepted += 1
        assert time.perf_counter() - t0 < 1.0
    assert refused > 100 and accepted > 10  # both branches exercised


def test_long_fuzz_corpus_by_hand(tmp_path):
    """`PGOLF_PLAN_FUZZ=N [PGOLF_PLAN_FUZZ_SEED=S] pytest -k long_fuzz`: N more mutated files."""
    n = int(os.environ.get("PGOLF_PLAN_FUZZ", "0"))
    if not n:
        pytest.skip("set PGOLF_PLAN_FUZZ=N to run N more fuzzed plan files")
    rng = random.Random(int(os.environ.get("PGOLF_PLAN_FUZZ_SEED", "0")))
    base, path = valid_text(tmp_path), tmp_path / "fuzz.json"
    for _ in range(n):
        path.write_bytes(mutate(rng, base))
        try:
            read_plan(path)
        except ValueError as e:
            assert str(path) in str(e)


def test_a_written_plan_reads_back_as_its_typed_plan(tmp_path):
    path = tmp_path / "plan.json"
    doc = json.loads(valid_text(tmp_path))
    path.write_text(json.dumps(doc))
    assert plan_sets(read_plan(path)) == doc["set"]
