"""`pgolf verify` on small hand-written records folders (no network, no mirror): discovery by
content, tracks, the run-code closure, claim precision, not-checkable, byte accounting,
validation-token evidence, exit codes, hostile folders (issue 23.6) and the one aggregate rule
shared with export (issue 23.9)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgolf.lab.records import folderscan as F
from pgolf.lab.records import rules as U
from pgolf.lab.records import verify as V

RATIO = 0.59226  # sp1024: val_bpb / val_loss on the challenge's validation set
MODEL = 15_000_000


def log_text(
    seed: int,
    loss: float,
    ratio: float = RATIO,
    train_ms: int = 590_000,
    code: int = 50_000,
    before_quant: tuple[str, ...] = (),
    val_tokens: int = 62_021_632,
    eval_ms: int = 20_000,
) -> str:
    bpb = loss * ratio
    return (
        "\n".join(
            [
                f"seed:{seed}",
                f"val_loader:shards pattern=./data/datasets/fineweb10B_sp1024/fineweb_val_*.bin "
                f"tokens:{val_tokens}",
                f"step:100/20000 train_loss:{loss + 0.02:.4f} train_time:{train_ms}ms "
                "step_avg:100.00ms",
                f"stopping_early: wallclock_cap train_time:{train_ms}ms step:100/20000",
                *before_quant,
                f"Serialized model int8+zlib: {MODEL} bytes",
                f"Code size: {code} bytes",
                f"Total submission size int8+zlib: {MODEL + code} bytes",
                f"final_int8_zlib_roundtrip val_loss:{loss:.4f} val_bpb:{bpb:.4f} "
                f"eval_time:{eval_ms}ms",
                f"final_int8_zlib_roundtrip_exact val_loss:{loss:.8f} val_bpb:{bpb:.8f}",
            ]
        )
        + "\n"
    )


def make_record(
    d: Path,
    losses: dict[int, float],
    claim_text: str | None = None,
    track: str = "10min_16mb",
    code: int = 50_000,
    **log_kw,
) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "README.md").write_text("# a record\n")
    body = "# entry point\n"
    (d / "train_gpt.py").write_text(body + "#" * (code - len(body) - 1) + "\n")
    for s, loss in losses.items():
        (d / f"train_seed{s}.log").write_text(log_text(s, loss, code=code, **log_kw))
    vals = [float(f"{loss * log_kw.get('ratio', RATIO):.8f}") for loss in losses.values()]
    bpb = claim_text or f"{U.aggregate(vals)['mean']:.8f}"
    (d / "submission.json").write_text(
        f'{{"track": "{track}", "val_bpb": {bpb}, "seeds": {json.dumps(list(losses))}, '
        f'"bytes_code": {code}}}\n'
    )
    return d


def status(checks: list[V.Check]) -> dict[str, str]:
    return {c.name: c.status for c in checks}


def test_a_clean_folder_passes_every_checkable_check(tmp_path):
    d = make_record(tmp_path / "r", {1: 2.0, 2: 2.01, 3: 1.99})
    checks = V.verify(d)
    st_ = status(checks)
    assert V.exit_code(checks) == 0, V.format_checks(checks)
    for name in (
        "files",
        "seed_logs",
        "aggregates",
        "bytes_code",
        "bytes_cap",
        "train_time",
        "eval_time",
        "byte_accounting",
        "eval_subset",
        "val_training",
        "track",
    ):
        assert st_[name] == V.PASS, (name, V.format_checks(checks))


def test_logs_and_claims_are_found_by_content(tmp_path):
    d = make_record(tmp_path / "r", {1: 2.0, 2: 2.01})
    (d / "logs").mkdir()
    (d / "train_seed1.log").rename(d / "logs" / "run_a.txt")  # seed from the `seed:1` line
    (d / "train_seed2.log").rename(d / "logs" / "seed_2_final.txt")  # seed from the name
    (d / "submission.json").rename(d / "submission_main.json")
    checks = V.verify(d)
    ev = {c.name: c.evidence for c in checks}
    assert status(checks)["seed_logs"] == V.PASS, V.format_checks(checks)
    assert "logs/run_a.txt (seed 1 by log content)" in ev["files"]
    assert "logs/seed_2_final.txt (seed 2 by file name)" in ev["files"]
    assert "submission_main.json" in ev["aggregates"]


def test_claim_precision_comes_from_the_json_text(tmp_path):
    # the logs' mean is 1.08001 at 5 decimals; a claim "1.08000" is one unit off
    loss = 1.08001 / RATIO
    ok = make_record(tmp_path / "ok", {1: loss}, claim_text="1.08001")
    assert status(V.verify(ok))["aggregates"] == V.PASS
    bad = make_record(tmp_path / "bad", {1: loss}, claim_text="1.08000")
    checks = V.verify(bad)
    ev = {c.name: c.evidence for c in checks}["aggregates"]
    assert status(checks)["aggregates"] == V.FAIL and "1.08000 (submission.json:1)" in ev
    assert "train_seed1.log:9" in ev  # the log line the value was recomputed from
    assert U.decimals(json.loads('{"x": 1.08000}', parse_float=U.ClaimFloat)["x"]) == 5


def test_nothing_parsed_is_not_checkable_never_a_pass(tmp_path):
    d = make_record(tmp_path / "r", {1: 2.0})
    (d / "train_seed1.log").write_text("hello\nnothing here\n")
    (d / "submission.json").write_text('{"val_bpb": 1.2}\n')  # no seeds claimed
    checks = V.verify(d)
    st_ = status(checks)
    assert st_["aggregates"] == V.FORM and st_["files"] == V.FORM
    assert V.PASS not in (st_["byte_accounting"], st_["val_training"], st_["train_time"])
    assert V.exit_code(checks) == V.EXIT_FORM


def test_the_track_picks_the_limits(tmp_path):
    slow = dict(train_ms=7_200_000)
    rec = make_record(tmp_path / "a", {1: 2.0}, **slow)
    assert status(V.verify(rec))["train_time"] == V.FAIL
    nr = make_record(tmp_path / "b", {1: 2.0}, track="non-record-unlimited-compute-16mb", **slow)
    checks = V.verify(nr)
    assert status(checks)["train_time"] == V.PASS, V.format_checks(checks)
    # the track folder the record sits in wins over the claims
    parent = make_record(tmp_path / "track_non_record_16mb" / "c", {1: 2.0}, **slow)
    assert status(V.verify(parent))["train_time"] == V.PASS


def test_run_code_follows_the_entry_point(tmp_path):
    d = make_record(tmp_path / "r", {1: 2.0}, code=50_000)
    entry = d / "train_gpt.py"
    text = entry.read_text()
    helper = "X = 1\n"
    kernel = "int f() { return 1; }\n"
    (d / "helpers.py").write_text(helper)
    (d / "kern.cpp").write_text(kernel)
    (d / "train_gpt_readable.py").write_text("# a readable copy\n" * 100)
    (d / "tok.model").write_bytes(b"\0" * 1234)
    head = "import helpers\nSRC = 'kern.cpp'\nTOK = 'tok.model'\n"
    entry.write_text(head + text[len(head) :])  # same size, now imports and loads a kernel
    total = 50_000 + len(helper) + len(kernel)
    sub = json.loads((d / "submission.json").read_text())
    sub["bytes_code"] = total
    (d / "submission.json").write_text(json.dumps(sub))
    checks = V.verify(d)
    ev = {c.name: c.evidence for c in checks}
    assert status(checks)["bytes_code"] == V.PASS, ev["bytes_code"]
    assert "kern.cpp" in ev["bytes_code"] and "helpers.py" in ev["bytes_code"]
    assert "left out ['train_gpt_readable.py']" in ev["bytes_code"]
    assert "reads at run time {'tok.model': 1234}" in ev["bytes_code"]


def test_byte_accounting_flags_a_double_counted_space(tmp_path):
    d = make_record(tmp_path / "r", {1: 2.0, 2: 2.01}, ratio=RATIO / 1.17)
    checks = V.verify(d)
    ev = {c.name: c.evidence for c in checks}
    assert status(checks)["byte_accounting"] == V.FAIL and "-14.53%" in ev["byte_accounting"]
    assert "train_seed1.log:9" in ev["byte_accounting"]  # file:line of the evidence
    assert V.exit_code(checks) == V.EXIT_RULES


def test_validation_passes_and_subsets_are_evidence(tmp_path):
    ttt = ("ttt:epoch 1/3 loss:2.91 time:14.2s", "ttt:epoch 2/3 loss:2.85 time:28.3s")
    d = make_record(tmp_path / "pre", {1: 2.0}, before_quant=ttt)
    c = {x.name: x for x in V.verify(d)}
    assert c["val_training"].status == V.FAIL and "train_seed1.log:5" in c["val_training"].evidence
    sub = make_record(tmp_path / "subset", {1: 2.0}, val_tokens=9_662_464)
    assert status(V.verify(sub))["eval_subset"] == V.FAIL
    slow_eval = make_record(tmp_path / "ev", {1: 2.0}, eval_ms=650_000)
    assert status(V.verify(slow_eval))["eval_time"] == V.FAIL


def test_json_output_carries_the_evidence(tmp_path, capsys):
    from pgolf.cli import main

    d = make_record(tmp_path / "r", {1: 2.0}, ratio=RATIO / 1.17)
    with pytest.raises(SystemExit) as e:
        main(["verify", str(d), "--json"])
    assert e.value.code == V.EXIT_RULES
    rows = json.loads(capsys.readouterr().out)
    ba = next(r for r in rows if r["name"] == "byte_accounting")
    assert ba["status"] == V.FAIL and "train_seed1.log:" in ba["evidence"]


# ---------------------------------------------------------------------------------------------
# hostile folders (issue 23.6): exit 2 naming the file, bounded time and memory


def _hostile(kind: str, d: Path) -> str:
    log = d / "train_seed1.log"
    if kind == "fifo":
        log.unlink()
        os.mkfifo(log)
        return "train_seed1.log"
    if kind in ("dev_zero", "etc_passwd"):
        log.unlink()
        log.symlink_to("/dev/zero" if kind == "dev_zero" else "/etc/passwd")
        return "train_seed1.log"
    if kind == "junk_200MB":
        with open(d / "train_seed9.log", "wb") as f:  # sparse: no disk, same size
            f.truncate(200 * 1024 * 1024)
        return "train_seed9.log"
    if kind == "json_50MB":
        with open(d / "submission.json", "wb") as f:
            f.truncate(50 * 1024 * 1024)
        return "submission.json"
    if kind == "nested":
        (d / "submission.json").write_text("[" * 200_000 + "]" * 200_000)
        return "submission.json"
    raise ValueError(kind)


HOSTILE = ["fifo", "dev_zero", "etc_passwd", "junk_200MB", "json_50MB", "nested"]


@pytest.mark.parametrize("kind", HOSTILE)
def test_hostile_folder_is_refused_naming_the_file(tmp_path, kind, capsys):
    from pgolf.cli import main

    d = make_record(tmp_path / "r", {1: 2.0})
    name = _hostile(kind, d)
    t0 = time.perf_counter()
    with pytest.raises(SystemExit) as e:
        main(["verify", str(d)])
    assert time.perf_counter() - t0 < 10
    assert e.value.code == 2
    assert name in capsys.readouterr().err


def test_hostile_folders_stay_within_memory(tmp_path):
    """All six in one fresh process: exit 2 each, peak RSS under 500 MB."""
    dirs = []
    for kind in HOSTILE:
        d = make_record(tmp_path / kind, {1: 2.0})
        _hostile(kind, d)
        dirs.append(str(d))
    code = (
        "import resource, sys\n"
        "from pgolf.cli import main\n"
        "codes = []\n"
        "for d in sys.argv[1:]:\n"
        "    try:\n"
        "        main(['verify', d])\n"
        "    except SystemExit as e:\n"
        "        codes.append(e.code)\n"
        "st = open('/proc/self/status').read()  # VmHWM, not ru_maxrss (kept over exec)\n"
        "hwm = int(st.split('VmHWM:')[1].split()[0])\n"
        "print(codes, hwm // 1024)\n"
    )
    p = subprocess.run(
        [sys.executable, "-c", code, *dirs],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    codes, mb = p.stdout.strip().rsplit(" ", 1)
    assert codes == str([2] * len(HOSTILE)), p.stdout + p.stderr
    assert int(mb) < 500


def test_json_depth_is_counted_without_recursion():
    assert F.json_depth('{"a": [1, {"b": "[[[["}]}') == 3
    assert F.json_depth("[" * 100_000) == 100_000


# ---------------------------------------------------------------------------------------------
# issue 23.9: export and verify share one rule for every aggregate


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(min_value=0.5, max_value=9.0, allow_nan=False), min_size=1, max_size=8))
def test_a_fresh_aggregate_always_verifies(values):
    """What export writes (per-seed values as the logs print them, mean/std rounded to 8
    decimals, through JSON) matches what verify recomputes from the logs' printed values."""
    printed = [U.printed(v) for v in values]
    agg = U.aggregate(values)
    text = json.dumps({"mean": agg["mean"], "std": agg["std"]})
    back = json.loads(text, parse_float=U.ClaimFloat)
    mean, std = U.mean_std(printed)
    assert U.matches(back["mean"], mean)
    assert U.matches(back["std"], std)
    # and one unit in the last printed digit is caught
    off = U.ClaimFloat(f"{agg['mean'] + 2 * 10.0 ** -U.decimals(back['mean']):.8f}")
    assert not U.matches(off, mean)


def _export_and_verify(root: Path, values: list[float]) -> dict[str, str]:
    import importlib.util
    import types

    from test_records import make_run

    from pgolf.lab.records import export

    with pytest.MonkeyPatch.context() as mp:
        if importlib.util.find_spec("pgolf.lab.bundle") is None:
            mod = types.ModuleType("pgolf.lab.bundle")

            def write_bundle(cfg, out):
                Path(out).write_text("print('train')\n")
                return {"path": str(out), "bytes": Path(out).stat().st_size}

            mod.write_bundle = write_bundle
            mp.setitem(sys.modules, "pgolf.lab.bundle", mod)
        runs = [make_run(root / "runs", s + 1, v) for s, v in enumerate(values)]
        export(runs, root / "rec", name="t")
    return status(V.verify(root / "rec"))


def test_export_of_unrounded_values_verifies(tmp_path):
    """Issue 23.9's case: result.json keeps more digits than the log prints; the mean of the
    unrounded values (4.67431595) differs from the mean of the printed ones (4.674315943).
    Found by a random search against the old export."""
    st_ = _export_and_verify(tmp_path, [4.844421851525048, 4.757954402940302, 4.4205715808308454])
    assert st_["aggregates"] == V.PASS and st_["seed_results"] == V.PASS


@pytest.mark.slow
@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.floats(min_value=1.5, max_value=6.0, allow_nan=False),
        min_size=2,
        max_size=4,
        unique=True,
    )
)
def test_export_then_verify_agrees_for_any_seed_values(tmp_path_factory, values):
    """pgolf export over runs with these values, then verify: aggregates and per-seed pass."""
    st_ = _export_and_verify(tmp_path_factory.mktemp("agg"), values)
    assert st_["aggregates"] == V.PASS and st_["seed_results"] == V.PASS


def test_a_toy_validation_set_is_not_judged_by_the_challenges_table(tmp_path):
    d = make_record(tmp_path / "r", {1: 2.0}, ratio=0.3)
    for p in d.glob("train_seed*.log"):
        p.write_text(
            p.read_text().replace(
                "./data/datasets/fineweb10B_sp1024/fineweb_val_*.bin",
                "data/default/sp1024/default_val_*.bin",
            )
        )
    c = {x.name: x for x in V.verify(d)}
    assert (
        c["byte_accounting"].status == V.NA and "not the challenge" in c["byte_accounting"].evidence
    )


@pytest.mark.timeout(60)
def test_a_crafted_log_at_the_bound_is_parsed_in_bounded_time(tmp_path):
    """Lines built to make unbounded regular expressions backtrack, up to the log bound."""
    d = make_record(tmp_path / "r", {1: 2.0})
    pats = [
        "stopping_early: ",
        "bpb ",
        "val_loader: ",
        "b:1 ",
        "step 1/2 loss ",
        "seed",
        "ttt: epoch ",
        "Total submission size 1",
        "val_tokens ",
        "train_time:1",
    ]
    lines = [(p * (4000 // len(p)))[:4000] for p in pats]  # one pattern a line, 4,000 chars
    n = (F.MAX_LOG_BYTES // 2) // (4001 * len(lines))
    long = [p * (F.MAX_LOG_BYTES // (4 * len(p) * len(pats))) for p in pats]  # 100 KB lines
    (d / "train_seed7.log").write_text("\n".join(lines * n + long) + "\n")
    t0 = time.perf_counter()
    checks = V.verify(d)
    assert time.perf_counter() - t0 < 10
    assert "train_seed7.log" in {c.name: c.evidence for c in checks}["files"]  # named, not silent


def test_a_refusal_in_json_names_the_file(tmp_path, capsys):
    from pgolf.cli import main

    d = make_record(tmp_path / "r", {1: 2.0})
    name = _hostile("etc_passwd", d)
    with pytest.raises(SystemExit) as e:
        main(["verify", str(d), "--json"])
    assert e.value.code == 2
    out = json.loads(capsys.readouterr().out)
    assert out["file"].endswith(name) and out["exit"] == 2 and "symlink" in out["error"]


def test_a_caseops_switch_that_is_off_names_no_caseops_tokenizer():
    """pgolf's logs carry the config (`"caseops": false`): that is no CaseOps tokenizer."""
    from pgolf.lab.records.accounting import tokenizers_named

    assert tokenizers_named([("log", '{"data": {"caseops": false, "vocab": 1}}')]) == {}
    for on in ("DATA_PATH=fineweb10B_sp8192_caseops", "CASEOPS_ENABLED=1", '"caseops": true'):
        assert tokenizers_named([("log", on)]) == {"sp8192-caseops": "log:1"}, on
