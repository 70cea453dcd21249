"""Data and tokenizer consistency (issue 7, item 3): a tokenizer whose sha256 is not the one the
shard folder's manifest lists is refused in training, evaluation and `data inspect`; a missing one
is reported as missing; run configs store absolute paths."""

from __future__ import annotations

import dataclasses as dc
import hashlib
import json
from pathlib import Path

import pytest

from pgolf import config as C
from pgolf import pipeline
from pgolf.bpb import check_tokenizer, manifest_tokenizer_sha
from pgolf.cli import main
from pgolf.data import write_shard


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


@pytest.fixture
def built(tmp_path) -> Path:
    """A folder laid out as `pgolf data corpus` builds it, listing tokenizer bytes b"right"."""
    folder = tmp_path / "out" / "sp300"
    folder.mkdir(parents=True)
    write_shard(folder / "c_train_000000.bin", [1, 5, 6] * 50)
    write_shard(folder / "c_val_000000.bin", [1, 5, 6] * 50)
    (tmp_path / "out" / "c_300_bpe.model").write_bytes(b"right")
    manifest = {
        "variants": {
            "sp300": {
                "tokenizer": {"file": "c_300_bpe.model"},
                "files": {"c_300_bpe.model": _sha(b"right")},
            }
        }
    }
    (tmp_path / "out" / "manifest.json").write_text(json.dumps(manifest))
    return folder


def test_manifest_layouts(tmp_path, built):
    assert manifest_tokenizer_sha(built) == (_sha(b"right"), tmp_path / "out" / "manifest.json")
    bench = tmp_path / "bench" / "sp8192"
    bench.mkdir(parents=True)
    (bench.parent / "manifest.json").write_text(json.dumps({"tokenizer": {"sha256": "ab" * 32}}))
    assert manifest_tokenizer_sha(bench)[0] == "ab" * 32
    hub = tmp_path / "hub" / "datasets" / "fineweb10B_sp1024"
    hub.mkdir(parents=True)
    m = {
        "datasets": [{"name": hub.name, "tokenizer_name": "sp1024"}],
        "tokenizers": [
            {
                "name": "sp1024",
                "model_path": "tokenizers/a.model",
                "sha256": {"tokenizers/a.model": "cd" * 32},
            }
        ],
    }
    (tmp_path / "hub" / "manifest.json").write_text(json.dumps(m))
    assert manifest_tokenizer_sha(hub)[0] == "cd" * 32
    assert manifest_tokenizer_sha(tmp_path) is None  # no manifest: nothing to check against


def test_same_size_other_tokenizer_is_refused_and_missing_is_missing(tmp_path, built):
    check_tokenizer(built, built.parent / "c_300_bpe.model")
    other = tmp_path / "other.model"
    other.write_bytes(b"wrong")  # in the real case: the same vocabulary size, other pieces
    with pytest.raises(ValueError, match=r"other.model is not the one the shards in .*sp300"):
        check_tokenizer(built, other)
    with pytest.raises(FileNotFoundError, match="nosuch.model is missing"):
        check_tokenizer(built, tmp_path / "nosuch.model")


def test_training_config_refuses_it_and_stores_absolute_paths(tmp_path, built, monkeypatch):
    cfg = C.preset("cpu-tiny")
    bad = dc.replace(
        cfg,
        data=dc.replace(cfg.data, data_path=str(built), tokenizer_path=str(tmp_path / "x.model")),
    )
    (tmp_path / "x.model").write_bytes(b"wrong")
    with pytest.raises(ValueError, match="is not the one the shards"):
        pipeline.resolve_data(bad)
    monkeypatch.chdir(tmp_path)
    rel = dc.replace(cfg, data=dc.replace(cfg.data, data_path="out/sp300"))
    got, data_dir, tok = pipeline.resolve_data(rel)
    assert Path(got.data.data_path).is_absolute() and Path(got.data.tokenizer_path).is_absolute()
    assert data_dir == built.resolve() and tok == (built.parent / "c_300_bpe.model").resolve()


def test_data_inspect_refuses_it(tmp_path, built, capsys):
    other = tmp_path / "other.model"
    other.write_bytes(b"wrong")
    with pytest.raises(SystemExit) as e:
        main(["data", "inspect", str(built), "--tokenizer", str(other)])
    assert e.value.code == 2
    assert "other.model is not the one the shards" in capsys.readouterr().err
