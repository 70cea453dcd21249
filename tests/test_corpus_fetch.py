"""The labelled corpus: the committed manifest's shape, and `benchmarks/corpus/fetch.py` on a
tiny local git repository (no network, no mirror)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "benchmarks" / "corpus"


def _fetch_module():
    spec = importlib.util.spec_from_file_location("corpus_fetch", CORPUS / "fetch.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_folder_manifest_is_labelled_and_pinned():
    doc = json.loads((CORPUS / "folders.json").read_text())
    es = doc["entries"]
    assert len({e["id"] for e in es}) == len(es) >= 70
    merged = [e for e in es if e["source"]["kind"] == "merged"]
    assert len(merged) == 60 and len(es) - len(merged) >= 10
    for e in es:
        assert e["kind"] == "folder" and len(e["commit"]) == 40 and e["files"], e["id"]
        assert e["expected"]["verdict"] in ("accept", "reject", "not_checkable"), e["id"]
        if e["expected"]["verdict"] != "accept":
            assert e["expected"]["check"] and e["expected"]["numbers"], e["id"]
        assert e["source"]["url"].startswith("https://github.com/openai/parameter-golf/")
        assert e["source"]["summary"], e["id"]
        for h in e["files"].values():
            assert len(h) == 64 or h.startswith("absent:"), e["id"]


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    ).stdout


def test_fetch_pins_materializes_and_checks_hashes(tmp_path, monkeypatch):
    fetch = _fetch_module()
    repo = tmp_path / "mirror"
    rec = repo / "records" / "track_10min_16mb" / "r1"
    (rec / "logs").mkdir(parents=True)
    (rec / "train_gpt.py").write_text("print('hi')\n")
    (rec / "logs" / "train_seed1.log").write_text("final val_loss:2.0 val_bpb:1.18\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "r1")
    monkeypatch.setattr(fetch, "MIRROR", repo)
    monkeypatch.setattr(fetch, "OUT", tmp_path / "out")
    man = tmp_path / "m.json"
    entries = [
        {
            "id": "f",
            "kind": "folder",
            "ref": "HEAD",
            "commit": "",
            "path": "records/track_10min_16mb/r1",
        },
        {
            "id": "s",
            "kind": "script",
            "ref": "HEAD",
            "commit": "",
            "path": "records/track_10min_16mb/r1/train_gpt.py",
        },
    ]
    man.write_text(json.dumps({"entries": entries}))
    fetch.pin([man])
    pinned = json.loads(man.read_text())["entries"]
    assert pinned[0]["commit"] == _git(repo, "rev-parse", "HEAD").strip()
    assert set(pinned[0]["files"]) == {"train_gpt.py", "logs/train_seed1.log"}
    es = fetch.load_entries([man])
    d = fetch.materialize(es[0])
    assert d == tmp_path / "out" / "f" / "records/track_10min_16mb/r1"  # layout kept
    assert (d / "logs" / "train_seed1.log").read_text().startswith("final")
    s = fetch.materialize(es[1])
    assert (s / "train_gpt.py").read_text() == "print('hi')\n"
    bad = dict(es[0], files={**es[0]["files"], "train_gpt.py": "0" * 64})
    with pytest.raises(ValueError, match="differ from the manifest"):
        fetch.materialize(bad)
    dup = tmp_path / "dup.json"
    dup.write_text(json.dumps({"entries": [entries[0]]}))
    with pytest.raises(ValueError, match="already in"):
        fetch.load_entries([man, dup])
