"""Tokenizer training: SentencePiece BPE with the FineWeb exporter's settings (lab only)."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

from pgolf.data import atomic_write
from pgolf.dist import log0

SP_TRAINER_ARGS: dict[str, Any] = dict(
    model_type="bpe",
    character_coverage=0.999,
    byte_fallback=True,
    split_digits=True,
    normalization_rule_name="nmt_nfkc",
    add_dummy_prefix=False,
    pad_id=0,
    bos_id=1,
    eos_id=2,
    unk_id=3,
    hard_vocab_limit=False,
)


def train_tokenizer(
    texts: list[str], vocab_size: int, path: Path, user_symbols: tuple[str, ...] = ()
) -> Path:
    """Train a SentencePiece BPE model with the exporter's settings; write it to `path`.
    `user_symbols`: pieces reserved as they are (the CaseOps operators), ids 4, 5, ..."""
    import sentencepiece as spm

    clean = [c for c in (t.replace("\x00", " ").strip() for t in texts) if c]
    if not clean:
        raise ValueError("cannot train a tokenizer: every document is empty")
    buf = io.BytesIO()
    log0(f"tokenizer: training SentencePiece BPE vocab {vocab_size} on {len(clean)} documents")
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(clean),
            model_writer=buf,
            vocab_size=vocab_size,
            # long documents would otherwise be skipped silently (the default limit is 4192 B)
            max_sentence_length=max(len(t.encode("utf-8")) for t in clean) + 16,
            num_threads=max(1, min(os.cpu_count() or 1, 16)),
            minloglevel=2,
            **({"user_defined_symbols": list(user_symbols)} if user_symbols else {}),
            **SP_TRAINER_ARGS,
        )
    except RuntimeError as e:  # e.g. "Vocabulary size is smaller than required_chars"
        raise ValueError(
            f"cannot train a {vocab_size}-piece tokenizer for {path}: {e}; "
            "choose a larger --vocab-size"
        ) from e
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, buf.getvalue())  # unique temporary name, removed on failure
    return path
