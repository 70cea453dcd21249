"""`pgolf data overlap` (issue 20, deliverable 2): planted leaks of known size are all found
(exact copies, near copies, one across a shard border), a clean split and a below-threshold
look-alike are not reported; exit 1 on overlap, 0 clean, 2 on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pgolf.data import write_shard
from pgolf.lab.data import overlap as O

V, BOS = 2000, 1


def _doc(rng, n=None):
    return rng.integers(4, V, size=n or int(rng.integers(60, 300)))


def _stream(docs):
    return np.concatenate([np.concatenate([[BOS], d]) for d in docs])


def _planted(folder: Path, leak: bool = True, seed: int = 0):
    """val: 60 docs; train: 300 docs, with (when `leak`) 5 exact copies of val docs (one across
    the two train shards' border), 4 near copies (3 with ~5% of tokens changed, 1 cut to 80%) and
    one look-alike sharing 30% of a val doc (Jaccard ~0.2, below the threshold)."""
    rng = np.random.default_rng(seed)
    val = [_doc(rng) for _ in range(60)]
    train = [_doc(rng) for _ in range(300)]
    exact, near = {3, 11, 25, 40, 59}, {7, 18, 33, 52}
    if leak:
        for i in (3, 11, 25, 40):
            train.insert(int(rng.integers(0, len(train))), val[i].copy())
        for i in (7, 18, 33):
            d = val[i].copy()
            pos = rng.choice(d.size, size=max(1, d.size // 20), replace=False)
            d[pos] = rng.integers(4, V, size=pos.size)
            train.insert(int(rng.integers(0, len(train))), d)
        train.insert(5, val[52][: int(0.8 * val[52].size)].copy())
        v = val[45]
        train.insert(9, np.concatenate([v[: int(0.3 * v.size)], _doc(rng, 200)]))
        train.insert(150, val[59].copy())  # across the border of the two train shards
        cut = sum(d.size + 1 for d in train[:150]) + 1 + train[150].size // 2
    stream = _stream(train)
    cut = cut if leak else stream.size // 2
    folder.mkdir(parents=True, exist_ok=True)
    write_shard(folder / "t_train_000000.bin", stream[:cut])
    write_shard(folder / "t_train_000001.bin", stream[cut:])
    write_shard(folder / "t_val_000000.bin", _stream(val))
    return (exact, near) if leak else (set(), set())


def test_every_planted_leak_is_found_and_nothing_else(tmp_path):
    exact, near = _planted(tmp_path / "d")
    rep = O.check_overlap(tmp_path / "d", tmp_path / "d")
    assert set(rep.exact) == exact
    assert set(rep.near) == near  # the 30% look-alike (val doc 45) stays below 0.5
    assert all(0.5 <= m.jaccard < 1 for m in rep.near.values())
    d = rep.as_dict()
    assert (d["val_docs"], d["train_docs"], d["exact_docs"], d["near_docs"]) == (60, 310, 5, 4)
    assert d["exact_examples"][0]["val_doc"] == 3
    assert rep.leaks == 9


def test_exact_only_finds_the_exact_copies(tmp_path, capsys):
    exact, _ = _planted(tmp_path / "d")
    rep = O.check_overlap(tmp_path / "d", tmp_path / "d", near=False)
    assert set(rep.exact) == exact and not rep.near
    assert "not checked" in rep.as_dict()["method"]
    code, out, _ = _cli(capsys, tmp_path / "d", tmp_path / "d", "--exact-only", "--json")
    assert code == 1 and json.loads(out)["near_docs"] == 0


def test_a_clean_split_reports_nothing(tmp_path):
    _planted(tmp_path / "d", leak=False)
    rep = O.check_overlap(tmp_path / "d", tmp_path / "d")
    assert rep.leaks == 0 and rep.train_docs == 300 and rep.val_docs == 60


def test_near_copies_are_measured_exactly():
    rng = np.random.default_rng(1)
    a = _doc(rng, 400)
    b = a.copy()
    b[::40] = 7
    got = O.jaccard(O.shingles(a), O.shingles(b))
    sa, sb = ({tuple(x[i : i + O.SHINGLE]) for i in range(x.size - O.SHINGLE + 1)} for x in (a, b))
    assert got == pytest.approx(len(sa & sb) / len(sa | sb))
    est = np.mean(O.signature(O.shingles(a)) == O.signature(O.shingles(b)))
    assert abs(est - got) < 0.2  # MinHash estimates it (64 hash functions)


def test_text_documents_are_compared_by_words(tmp_path):
    train = tmp_path / "train.jsonl"
    val = tmp_path / "val.jsonl"
    words = " ".join(f"w{i}" for i in range(50))
    train.write_text(
        "\n".join(json.dumps({"text": t}) for t in ["alpha beta", words, "x y z"]) + "\n"
    )
    val.write_text(json.dumps({"text": "  " + words.replace(" ", "\n")}) + "\n")
    rep = O.check_overlap(train, val)
    assert set(rep.exact) == {0} and rep.exact[0].train_doc == 1


def _cli(capsys, *args) -> tuple[int, str, str]:
    from pgolf.cli import main

    try:
        main(["data", "overlap", *map(str, args)])
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_exit_codes(tmp_path, capsys):
    _planted(tmp_path / "leaky")
    _planted(tmp_path / "clean", leak=False)
    code, out, err = _cli(capsys, tmp_path / "leaky", tmp_path / "leaky", "--json")
    assert code == 1, err
    assert json.loads(out)["exact_docs"] == 5
    code, out, _ = _cli(capsys, tmp_path / "clean", tmp_path / "clean")
    assert code == 0 and "clean" in out
    bad = tmp_path / "bad_val_000000.bin"
    bad.write_bytes(b"not a shard")
    for args, named in [
        ((tmp_path / "missing", tmp_path / "clean"), "missing"),
        ((tmp_path / "clean", bad), bad.name),
    ]:
        code, _, err = _cli(capsys, *args)
        assert code == 2 and "Traceback" not in err and named in err


def test_verify_evidence_names_the_leaks(tmp_path):
    _planted(tmp_path / "leaky")
    _planted(tmp_path / "clean", leak=False)
    ok, ev = O.verify_evidence(tmp_path / "leaky", tmp_path / "leaky")
    assert not ok and ev.startswith("5 exact + 4 near-duplicate of 60 val docs in 310 train docs")
    assert "val 3~train" in ev
    ok, ev = O.verify_evidence(tmp_path / "clean", tmp_path / "clean")
    assert ok and ev == "0 exact + 0 near-duplicate of 60 val docs in 300 train docs"
