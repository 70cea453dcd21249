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


# A tiny run through the CLI (4 steps, zstd codec for speed): `--set` overrides for `pgolf
# run`/`train`, used where a test needs a finished run folder and its artifact.
TINY_RUN = [
    "vocab_size=512",
    "num_layers=2",
    "model_dim=64",
    "num_heads=4",
    "num_kv_heads=2",
    "mlp_mult=2",
    "xsa_layers=0,1",
    "ve_dim=8",
    "ve_layers=1",
    "recur_layers=",
    "train_seq_len=64",
    "train_batch_tokens=512",
    "eval_seq_len=64",
    "eval_stride=32",
    "max_val_tokens=2048",
    "iterations=4",
    "passthrough_numel=1024",
    "calib_seqs=4",
    "codec=zstd",
]


def set_args(overrides: list[str]) -> list[str]:
    """`--set k=v` pairs for the CLI."""
    return [a for kv in overrides for a in ("--set", kv)]
