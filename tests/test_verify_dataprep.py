"""`pgolf verify`'s `data_overlap` check (issue 20): a folder that ships its data preparation gets
the train/validation overlap of its prepared shards (fail with the counts of planted leaks, pass on
a clean split), or, without shards, the command that checks them; the #2127 split is recognized in
the script itself; a folder without data preparation gets no such check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_overlap import _planted, _stream
from test_verify_folders import make_record, status

from pgolf.data import write_shard
from pgolf.lab.records import dataprep as DP
from pgolf.lab.records import verify as V

LEAKY = '''"""Prepare shards: the first --val-docs documents are validation, the rest training."""
import argparse


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", required=True)
    ap.add_argument("--val-docs", type=int, default=10_000, help="Validation docs count")
    args = ap.parse_args()
    val, train = [], []
    for n_docs, doc in enumerate(open(args.docs)):
        if n_docs < args.val_docs:
            val.append(doc)
        else:
            train.append(doc)
'''


def test_the_2127_split_is_recognized_in_the_script():
    (leak,) = DP.static_leaks(LEAKY)
    assert (leak.name, leak.count, leak.line, leak.split_line) == ("--val-docs", 10_000, 8, 12)
    text = leak.text("prep.py")
    assert "prep.py:8" in text and "10,000..49,999" in text and "#2127" in text
    # the challenge's 50,000: no leak; no default (required): nothing to say
    assert DP.static_leaks(LEAKY.replace("10_000", "50_000")) == []
    assert DP.static_leaks(LEAKY.replace("default=10_000", "required=True")) == []
    # a count that nothing splits by is no finding
    assert DP.static_leaks(LEAKY.replace("n_docs < args.val_docs", "n_docs % 7")) == []
    # a constant, compared the other way round, and a dest= name
    const = "NUM_VAL_DOCS = 2000\nfor i, d in enumerate(docs):\n    v = NUM_VAL_DOCS > i\n"
    assert [(x.name, x.count, x.split_line) for x in DP.static_leaks(const)] == [
        ("NUM_VAL_DOCS", 2000, 3)
    ]
    dest = 'ap.add_argument("--nval-docs", dest="k", default=5)\nif i < a.k: pass\n'
    assert [x.count for x in DP.static_leaks(dest)] == [5]
    assert DP.static_leaks("def (:\n") == []  # does not parse: nothing claimed


def test_preparation_scripts_are_found_by_name():
    names = [
        "train_gpt.py",
        "prepare_caseops_data.py",
        "download_hf_docs_and_tokenize.py",
        "cached_challenge_fineweb.py",
        "lossless_caps.py",
        "setup.sh",
        "train_gpt_data.py",
        "data_notes.md",
    ]
    got = [p.name for p in DP.prep_scripts([Path(n) for n in names])]
    assert got == [
        "cached_challenge_fineweb.py",
        "download_hf_docs_and_tokenize.py",
        "prepare_caseops_data.py",
    ]


def _record(tmp_path: Path, script: str | None = LEAKY) -> Path:
    d = make_record(tmp_path / "rec", {1: 2.0, 2: 2.01, 3: 1.99})
    if script is not None:
        (d / "prepare_data.py").write_text(script)
    return d


def test_planted_leaks_in_the_prepared_shards_fail_with_their_counts(tmp_path):
    d = _record(tmp_path)
    exact, near = _planted(tmp_path / "shards")
    checks = V.verify(d, data=str(tmp_path / "shards"))
    (c,) = [c for c in checks if c.name == "data_overlap"]
    assert c.status == V.FAIL and V.exit_code(checks) == V.EXIT_RULES
    n_train = 300 + 10  # _planted's training documents and its planted copies
    want = f"{len(exact)} exact + {len(near)} near-duplicate of 60 val docs in {n_train} train"
    assert want in c.evidence and "prepare_data.py" in c.evidence
    assert "#2127" in c.evidence  # the script's own split, reported beside the data


def test_a_clean_split_passes(tmp_path):
    d = _record(tmp_path, LEAKY.replace("10_000", "50_000"))
    _planted(tmp_path / "shards", leak=False)
    checks = V.verify(d, data=str(tmp_path / "shards"))
    (c,) = [c for c in checks if c.name == "data_overlap"]
    assert c.status == V.PASS and V.exit_code(checks) == 0
    assert "0 exact + 0 near-duplicate of 60 val docs" in c.evidence and "#2127" not in c.evidence


def test_without_shards_the_check_says_how_to_run_it(tmp_path):
    d = _record(tmp_path)
    checks = V.verify(d)
    (c,) = [c for c in checks if c.name == "data_overlap"]
    assert c.status == V.WARN and V.exit_code(checks) == 0  # the record may have used options
    assert f"pgolf verify {d} --data PREPARED_SHARDS" in c.evidence and "10,000" in c.evidence
    clean = _record(tmp_path / "2", LEAKY.replace("10_000", "50_000"))
    (c,) = [c for c in V.verify(clean) if c.name == "data_overlap"]
    assert c.status == V.NA and "--data PREPARED_SHARDS" in c.evidence  # never a silent pass


def test_a_folder_without_data_preparation_gets_no_check(tmp_path):
    d = _record(tmp_path, None)
    _planted(tmp_path / "shards")
    assert "data_overlap" not in status(V.verify(d, data=str(tmp_path / "shards")))


def test_the_2127_leak_shows_against_the_challenges_validation_set(tmp_path):
    """The script's own split is disjoint (val = docs 0..9, train = docs 10..): only the
    challenge's validation documents (0..49 here) show the 40 trained on."""
    rng = np.random.default_rng(3)
    docs = [rng.integers(4, 2000, size=int(rng.integers(60, 200))) for _ in range(200)]
    prepared, canonical = tmp_path / "prepared", tmp_path / "canonical"
    prepared.mkdir()
    canonical.mkdir()
    write_shard(prepared / "p_val_000000.bin", _stream(docs[:10]))
    write_shard(prepared / "p_train_000000.bin", _stream(docs[10:]))
    write_shard(canonical / "c_val_000000.bin", _stream(docs[:50]))
    d = _record(tmp_path)
    own = status(V.verify(d, data=str(prepared)))
    assert own["data_overlap"] == V.PASS
    checks = V.verify(d, data=str(prepared), val_data=str(canonical))
    (c,) = [c for c in checks if c.name == "data_overlap"]
    assert c.status == V.FAIL and "40 exact + 0 near-duplicate of 50 val docs" in c.evidence


def test_unreadable_shards_are_a_form_failure_naming_them(tmp_path):
    d = _record(tmp_path)
    (tmp_path / "empty").mkdir()
    (c,) = [c for c in V.verify(d, data=str(tmp_path / "empty")) if c.name == "data_overlap"]
    assert c.status == V.FORM and "empty" in c.evidence


def test_the_cli_passes_the_shards_and_exits_1_on_a_leak(tmp_path, capsys):
    from pgolf.cli import main

    d = _record(tmp_path)
    _planted(tmp_path / "shards")
    with pytest.raises(SystemExit) as e:
        main(["verify", str(d), "--data", str(tmp_path / "shards")])
    assert e.value.code == V.EXIT_RULES and "data_overlap" in capsys.readouterr().out
