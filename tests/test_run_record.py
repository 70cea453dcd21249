"""A run's record (its log.txt and result.json) describes its own artifact only (issue 23, items
7 and 8): an artifact written elsewhere (`pgolf quantize --out`) logs next to itself, a later
`pgolf eval` logs in the run's later_evals.txt, and neither changes what `pgolf export` ships or
what `pgolf verify` finds. A new artifact of the run itself awaits its own evaluation. Also the
run-folder reader (`RunDir.open`): errors name the folder and the file."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from helpers import TINY_RUN, set_args

from pgolf import cli
from pgolf.lab.records import ExportError, export
from pgolf.runlog import RunDir


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A finished tiny `pgolf run` (trained, quantized, scored)."""
    root = tmp_path_factory.mktemp("record")
    cli.main(["data", "default", "--out", str(root / "data")])
    args = ["run", "--data", str(root / "data" / "sp512"), "--run-dir", str(root / "run")]
    cli.main(args + set_args(TINY_RUN))
    return root / "run"


@pytest.fixture
def run(tiny, tmp_path) -> Path:
    """A fresh copy of the finished run, free to change."""
    return Path(shutil.copytree(tiny, tmp_path / "run"))


def _record(folder: Path) -> dict[str, object]:
    """What an exported records folder says: submission.json (less its date) and its logs."""
    sub = json.loads((folder / "submission.json").read_text())
    sub.pop("date")
    logs = {p.name: p.read_bytes() for p in sorted(folder.glob("train_seed*.log"))}
    return {"submission": sub, "logs": logs}


def _verify(folder: Path, capsys) -> None:
    """`pgolf verify FOLDER` passes (exit 1 on any failed check)."""
    capsys.readouterr()
    try:
        cli.main(["verify", str(folder)])
    except SystemExit as e:
        pytest.fail(f"pgolf verify {folder}: exit {e.code}\n{capsys.readouterr().out[-3000:]}")


def _eval_seconds(log: str) -> float:
    """Seconds of `eval_time` on a log's evaluation lines, diagnostics aside (the records' rule)."""
    ms = [
        float(m[1])
        for line in log.splitlines()
        if not line.startswith("DIAGNOSTIC") and (m := re.search(r" eval_time:(\d+)ms", line))
    ]
    return sum(ms) / 1000.0


def test_quantize_elsewhere_and_later_evals_leave_the_exported_record_unchanged(
    run, tmp_path, capsys
):
    export([run], tmp_path / "before")
    _verify(tmp_path / "before", capsys)
    kept = {f: (run / f).read_bytes() for f in ("log.txt", "result.json")}

    other = tmp_path / "elsewhere" / "other.pgolf"  # 23.7: an experiment on a copy
    other.parent.mkdir()
    cli.main(["quantize", str(run), "--plan", "mlp=bits:4", "--out", str(other)])
    assert {f: (run / f).read_bytes() for f in kept} == kept  # the record: byte for byte
    assert f"quantize:{run}" in (other.parent / "other.pgolf.log").read_text()
    cli.main(["eval", str(run), "--no-sliding"])  # 23.8: diagnostic re-evaluations
    cli.main(["eval", str(run / "artifact.pgolf"), "--stride", "64"])
    cli.main(["eval", str(run), "--weights", "final", "--no-sliding"])
    assert {f: (run / f).read_bytes() for f in kept} == kept
    later = (run / "later_evals.txt").read_text()
    assert later.count("later_eval:") == 3 and later.count("final_int6_roundtrip_exact") == 2
    assert "pre_quant_roundtrip_exact" in later

    export([run], tmp_path / "after")
    assert _record(tmp_path / "after") == _record(tmp_path / "before")
    _verify(tmp_path / "after", capsys)


def test_a_new_artifact_of_the_run_awaits_the_runs_own_evaluation(run, tmp_path, capsys):
    scored = json.loads((run / "result.json").read_text())
    assert scored["artifact_scored"] is True and scored["val_bpb_source"] == "sliding"
    cli.main(["quantize", str(run), "--plan", "mlp=bits:5"])  # the run's own artifact, again
    res = json.loads((run / "result.json").read_text())
    assert res["artifact_scored"] is False and res["val_bpb_sliding"] is None
    assert res["val_bpb_source"] == "prequant"  # the old artifact's scores are gone
    assert "quantize:plan as config" in (run / "log.txt").read_text()
    with pytest.raises(ExportError, match=r"not scored.*pgolf eval"):
        export([run], tmp_path / "refused")

    lines = len((run / "log.txt").read_text().splitlines())
    cli.main(["eval", str(run)])  # the first evaluation of the new artifact is the run's own
    res = json.loads((run / "result.json").read_text())
    assert res["artifact_scored"] is True and res["val_bpb_source"] == "sliding"
    new = (run / "log.txt").read_text().splitlines()[lines:]
    assert any(x.startswith("final_int6_sliding_window_exact") for x in new)
    assert not (run / "later_evals.txt").exists()
    cli.main(["eval", str(run), "--no-sliding"])  # any further one is a later evaluation
    assert (run / "later_evals.txt").read_text().startswith("later_eval:")
    assert json.loads((run / "result.json").read_text()) == res

    # the record counts the new artifact's evaluation only: its eval time, its final line
    text = (run / "log.txt").read_text()
    before, after = text.split("\nartifact_replaced:", 1)
    assert _eval_seconds(before) > 0  # the old artifact's passes: not counted
    sub = export([run], tmp_path / "after")
    (seed,) = sub["seed_results"].values()
    assert seed["eval_time_s"] == round(_eval_seconds(after), 1)
    final = re.findall(r"^final_int6_sliding_window_exact val_loss:\S+ val_bpb:(\S+)$", after, re.M)
    assert seed["val_bpb"] == round(res["val_bpb"], 8) == float(final[-1])
    _verify(tmp_path / "after", capsys)


def test_run_reader_names_the_folder_and_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing config.json, final_model.safetensors"):
        RunDir.open(tmp_path, need=("config", "final"), what="quantize needs")
    assert not list(tmp_path.iterdir())  # reading creates nothing
    assert RunDir.find(tmp_path) is None
    (tmp_path / "config.json").write_text("{not json")
    run = RunDir.open(tmp_path / "config.json")  # a file inside: its folder
    assert run.path == tmp_path and RunDir.find(tmp_path / "artifact.pgolf").path == tmp_path
    with pytest.raises(ValueError, match=rf"{tmp_path / 'config.json'}: not valid JSON"):
        run.config()
    (tmp_path / "config.json").write_text('{"model": {"num_heads": 7}}')
    with pytest.raises(ValueError, match="config.json: not a valid pgolf config"):
        run.config()
    (tmp_path / "result.json").write_text("[1]")
    with pytest.raises(ValueError, match="result.json: expected a JSON object"):
        run.read_result()
    (tmp_path / "result.json").write_text("[" * 100_000)
    with pytest.raises(ValueError, match="result.json"):
        run.read_result()
    with pytest.raises(FileNotFoundError, match="checkpoint.safetensors not found"):
        run.weights("checkpoint")
    (tmp_path / "log.txt").write_bytes(b"seed:1\n\xff\xfe\n")
    assert run.log_text().startswith("seed:1\n")
