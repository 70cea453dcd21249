"""Presenting a run: the loss-curve PNG and the human summary beside the n-gram references."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_losses(run_dir: Path) -> Path | None:
    """Loss curve (train loss per logged step, val bpb points) from metrics.jsonl → loss.png."""
    from pgolf.runlog import RunDir

    rows = RunDir(run_dir, create=False).read_metrics()
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tr = [(r["step"], r["train_loss"], r.get("elapsed_s")) for r in rows if "train_loss" in r]
    va = [(r["step"], r["val_bpb"]) for r in rows if "val_bpb" in r and "step" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    handles = []
    if tr:
        handles += ax.plot([t[0] for t in tr], [t[1] for t in tr], label="train loss (nats/token)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("train loss (nats/token)")
    if va:
        ax2 = ax.twinx()
        handles += ax2.plot(*zip(*va), "o-", color="tab:red", label="val (bits/byte)")
        ax2.set_ylabel("validation bits per byte")
    if tr and all(t[2] is not None for t in tr) and tr[-1][0] > 0:  # wall clock on top
        s_per_step = tr[-1][2] / tr[-1][0]
        top = ax.secondary_xaxis(
            "top", functions=(lambda x: x * s_per_step, lambda x: x / s_per_step)
        )
        top.set_xlabel("training wall clock (s, at the mean step time)")
    if handles:
        ax.legend(handles=handles, loc="upper right")
    ax.set_title(run_dir.name, fontsize=9)
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
    lines += flags(res)
    if "artifact_bytes" in res:
        lines.append(
            f"artifact: {res['artifact_bytes']} bytes (model {res['model_bytes']} + code "
            f"{res['code_bytes']}), margin to 16,000,000: {res['budget_margin']}"
        )
    return lines


def flags(res: dict[str, Any]) -> list[str]:
    """Warnings a reader must not miss: worse than the unigram reference, far fewer steps than
    configured, or live weights much better than the EMA weights that were kept."""
    out = []
    bpb, uni = res.get("val_bpb"), res.get("unigram_bpb")
    if bpb is not None and uni is not None and bpb > uni:
        out.append(
            f"WARNING: {bpb:.4f} bpb is worse than the unigram reference {uni:.4f}: "
            "the model learned less than token frequencies (steps? LR?)"
        )
    steps, want = res.get("steps"), res.get("iterations")
    if steps is not None and want and steps < 0.5 * want and res.get("stopped_early"):
        out.append(
            f"WARNING: {steps} steps of {want} configured (the wall clock stopped it): "
            "the LR schedule was cut short"
        )
    live, ema = res.get("val_bpb_live"), res.get("val_bpb_prequant")
    if live is not None and ema is not None and ema - live > 0.05:
        out.append(
            f"WARNING: live weights {live:.4f} bpb beat the EMA weights {ema:.4f}: "
            "EMA decay too slow for this many steps (optim.ema_decay)"
        )
    return out
