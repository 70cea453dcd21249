"""Small builders shared by several test files."""

from __future__ import annotations

import torch

from pgolf.config import ModelConfig
from pgolf.model import GPT


def perturbed_gpt(
    cfg: ModelConfig, recur: bool = True, seed: int = 0, scale: float = 0.1, device: str = "cpu"
) -> GPT:
    """A GPT whose every parameter is perturbed, so zero-init paths (projections, VE) matter."""
    torch.manual_seed(seed)
    model = GPT(cfg).to(device)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g).to(device))
    model.set_recurrence(recur)
    return model


WORDS = (
    "the of and to a in that is was he for it with as his on be at by had not are café "
    "naïve — “quoted” 2026 € über"
).split()


def tiny_corpus(folder, vocab: int = 320, docs: int = 60, seed: int = 0):
    """A shard folder like the exporter's ([BOS] + pieces per document, uint16 shards) with a
    SentencePiece BPE model trained in place (byte fallback on, some non-ASCII text):
    -> (folder, tokenizer path, SentencePieceProcessor). `docs` documents, a tenth of them val."""
    import random
    from pathlib import Path

    import sentencepiece as spm

    from pgolf.data import write_shard
    from pgolf.lab.data.tokenizer import train_tokenizer

    rng = random.Random(seed)
    texts = [
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 90))) + "." for _ in range(docs)
    ]
    folder = Path(folder)
    tok = train_tokenizer(texts[: docs // 2], vocab, folder / "tiny.model")
    sp = spm.SentencePieceProcessor(model_file=str(tok))
    n_val = max(3, docs // 10)
    val = [t + " ☃" for t in texts[:n_val]]  # a character the tokenizer never saw: byte pieces
    for split, part in (("val", val), ("train", texts[n_val:])):
        ids = [i for t in part for i in (1, *sp.encode(t))]
        write_shard(folder / f"tiny_{split}_000000.bin", ids)
    return folder, tok, sp
