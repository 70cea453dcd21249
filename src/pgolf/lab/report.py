"""Presenting a run: the loss-curve PNG and the human summary beside the n-gram references."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def plot_losses(run_dir: Path) -> Path | None:
    """Loss curve (train loss per logged step, val bpb points) from metrics.jsonl → loss.png."""
    metrics = run_dir / "metrics.jsonl"
    if not metrics.exists():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    tr = [(r["step"], r["train_loss"]) for r in rows if "train_loss" in r and "step" in r]
    va = [(r["step"], r["val_bpb"]) for r in rows if "val_bpb" in r and "step" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    if tr:
        ax.plot(*zip(*tr), label="train loss (nats/token)")
    ax.set_xlabel("step")
    ax.set_ylabel("train loss")
    if va:
        ax2 = ax.twinx()
        ax2.plot(*zip(*va), "o-", color="tab:red", label="val bpb")
        ax2.set_ylabel("val bpb")
    ax.set_title(run_dir.name)
    fig.tight_layout()
    out = run_dir / "loss.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def summary_lines(res: dict[str, Any]) -> list[str]:
    """Human summary of `run()`'s result, with the references side by side."""
    lines = [
        f"run folder: {res['run_dir']}",
        f"preset: {res['preset']}  steps: {res['steps']}  train: {res['train_seconds']:.1f}s",
    ]
    rows = [("model (headline)", res.get("val_bpb"))]
    for key, name in (
        ("val_bpb_prequant", "model, before quantization"),
        ("val_bpb_roundtrip", "artifact, round trip"),
        ("val_bpb_sliding", "artifact, sliding window"),
        ("unigram_bpb", "reference: unigram of train tokens"),
        ("bigram_bpb", "reference: bigram of train tokens"),
    ):
        if res.get(key) is not None:
            rows.append((name, res[key]))
    lines += [f"  {n:<36} {v:.4f} bpb" for n, v in rows if v is not None]
    if res.get("bigram_bpb") and res.get("val_bpb"):
        lines.append(
            f"margin to bigram: {res['bigram_bpb'] - res['val_bpb']:+.4f} bpb "
            f"(positive = model better); to unigram: "
            f"{res['unigram_bpb'] - res['val_bpb']:+.4f}"
        )
    if "artifact_bytes" in res:
        lines.append(
            f"artifact: {res['artifact_bytes']} bytes (model {res['model_bytes']} + code "
            f"{res['code_bytes']}), margin to 16,000,000: {res['budget_margin']}"
        )
    return lines
