"""`pgolf run` exactly as the README's first command runs it (slow: minutes on 2 cores)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_default_run_beats_the_unigram_reference_widely(tmp_path):
    env = dict(os.environ, PGOLF_DATA_DIR=str(tmp_path / "data"))
    r = subprocess.run(
        [sys.executable, "-m", "pgolf", "run", "--run-dir", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "run" / "result.json").read_text())
    assert res["preset"] == "cpu-tiny"
    assert res["val_bpb"] < res["unigram_bpb"] - 0.5
    assert "margin to bigram" in r.stdout
