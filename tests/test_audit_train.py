"""`pgolf audit --train` (T1.3) end to end on a tiny config and corpus: two short deterministic
runs, real vs random-token decoy validation shards. A score-first run gives byte-identical
artifacts; a pre-quant TTT run does not and says why. The artifacts those runs write are then
audited as `pgolf audit ARTIFACT` would: pre-quant fails Condition 3 and T1.3 from its metadata,
score-first passes every test."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import tiny_corpus

from pgolf.data import read_shard
from pgolf.lab.audit import Row
from pgolf.lab.audit.run import TRAIN_DEFAULTS, audit_artifact, audit_train, decoy_data, main

TINY = [
    "num_layers=2",
    "model_dim=32",
    "num_heads=2",
    "num_kv_heads=1",
    "mlp_mult=2",
    "rope_dims=8",
    "xsa_layers=0,1",
    "ve_dim=8",
    "ve_layers=1",
    "parallel_start=1",
    "recur_layers=0,1,1",
    "train_seq_len=32",
    "train_batch_tokens=256",
    "eval_seq_len=32",
    "eval_stride=16",
    "val_batch_seqs=4",
    "passthrough_numel=256",
    "calib_seqs=2",
    "quant.method=rtn",
    "quant.embed_method=rtn",
    "train_log_every=1",
    "ttt.prequant_seq_len=32",
    "ttt.chunk_tokens=128",
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("audit_train")
    data, tok, _ = tiny_corpus(root / "data")
    base = [
        *TRAIN_DEFAULTS,
        *TINY,
        "vocab_size=320",
        f"data.data_path={data}",
        f"data.tokenizer_path={tok}",
    ]
    pre = audit_train("cpu-tiny", [*base, "ttt.mode=prequant"], root / "pre")
    # a run folder as CONFIG_OR_RUN: the pre-quant run's config, switched to score-first
    sf = audit_train(str(root / "pre" / "real"), ["ttt.mode=score_first"], root / "sf")
    return root, {r.test.split()[0]: r for r in pre}, {r.test.split()[0]: r for r in sf}


def test_decoy_has_the_shape_and_documents_of_the_real_shard(tmp_path):
    data, _, _ = tiny_corpus(tmp_path / "d")
    real = np.asarray(read_shard(data / "tiny_val_000000.bin"))
    fake = np.asarray(read_shard(decoy_data(data, tmp_path / "decoy", 1) / "tiny_val_000000.bin"))
    assert fake.shape == real.shape
    assert np.array_equal(fake == 1, real == 1)  # BOS where it was: same documents
    assert (fake != real).mean() > 0.9 and set(fake) <= set(real)
    assert (tmp_path / "decoy" / "tiny_train_000000.bin").is_symlink()


def test_train_audit_passes_score_first_and_fails_prequant(runs):
    _, pre, sf = runs
    assert sf["T1.3"].verdict == "pass" and "identical" in sf["T1.3"].evidence
    assert pre["T1.3"].verdict == "fail"
    assert "tensors differ" in pre["T1.3"].evidence and "prequant" in pre["T1.3"].evidence


def test_run_artifacts_audit_prequant_fails_condition_3_score_first_passes(runs, capsys):
    root, _, _ = runs
    text, rc = main(str(root / "pre" / "real" / "artifact.pgolf"), None, None, True, True)
    assert rc == 1 and capsys.readouterr().out == ""  # --json: no log line on stdout
    rows = [Row(**r) for r in json.loads(text)["rows"]]
    bad = {r.test.split()[0] for r in rows if r.verdict == "fail"}
    assert {"T1.3", "T3.2"} <= bad
    assert any(r.condition == "C3" and r.verdict == "fail" for r in rows)
    rows, info = audit_artifact(root / "sf" / "real" / "artifact.pgolf", quick=True, n_tokens=128)
    assert info["mode"] == "score_first"
    assert [r for r in rows if r.verdict == "fail"] == []
    got = {r.test.split()[0]: r.verdict for r in rows}
    for t in ("T1.1", "T2.3", "T2.4", "T2.5", "T3.1/T3.2", "T3.4", "T4.1", "T4.2"):
        assert got[t] == "pass", (t, rows)


def test_run_coverage_fails_a_subset_and_passes_the_documented_tail_cut(tmp_path):
    from dataclasses import replace

    from pgolf import config as C
    from pgolf.lab.audit.run import run_coverage

    data, _, _ = tiny_corpus(tmp_path / "d")
    n = read_shard(data / "tiny_val_000000.bin").size - 1
    cfg = C.load("cpu-tiny", ["eval_seq_len=32", "eval_stride=16", "vocab_size=320"])
    art = tmp_path / "artifact.pgolf"
    row = run_coverage(art, cfg, data)
    assert row.verdict == "pass" and f"of {n} canonical" in row.evidence
    assert (n % 32 == 0) or "drops the last" in row.evidence
    sub = replace(cfg, data=replace(cfg.data, max_val_tokens=n // 2))
    row = run_coverage(art, sub, data)
    assert row.verdict == "fail" and "subset" in row.evidence
    (tmp_path / "log.txt").write_text("eval_sliding windows:3 targets:64\n")
    cfg = replace(cfg, data=replace(cfg.data, data_path=str(data)))
    assert run_coverage(art, cfg, data).verdict == "fail"  # the log disagrees with the config


def test_audit_stream_takes_document_heads_when_documents_are_long(tmp_path):
    import torch

    from pgolf.lab.audit.run import audit_stream

    data, _, sp = tiny_corpus(tmp_path / "d")
    val = torch.from_numpy(read_shard(data / "tiny_val_000000.bin").astype("int64"))
    first, how = audit_stream(data, 400, 320, 1, sp)
    assert torch.equal(first, val[:401]) and how.startswith("first")  # enough BOS already
    heads, how = audit_stream(data, 60, 320, 1, sp)
    assert how.startswith("heads of 4") and 50 <= heads.numel() <= 61
    at = torch.nonzero(heads == 1).flatten().tolist()
    assert len(at) == 4 and at[0] == 0
    starts = torch.nonzero(val == 1).flatten().tolist()
    for i, a in enumerate(at):  # each head is a prefix of its document
        b = at[i + 1] if i + 1 < len(at) else heads.numel()
        assert torch.equal(heads[a:b], val[starts[i] : starts[i] + b - a])
