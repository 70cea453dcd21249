"""The README.md of an exported records folder (`pgolf.lab.records.export`): what the run is,
the per-seed table, the statistics against the named baseline, the byte budget by component,
the technique summary with PR credits, the compliance block, and how to reproduce it."""

from __future__ import annotations

from typing import Any

RECORD_TRACK = "10min_16mb"


def technique_lines(cfg: dict[str, Any]) -> list[str]:
    """Technique summary from the config, with PR credits (the spec's pr1550-stack notes)."""
    m, q, e, o = (cfg.get(k, {}) for k in ("model", "quant", "eval", "optim"))
    out = [f"{m.get('num_layers')} layers x {m.get('model_dim')} dim, vocab {m.get('vocab_size')}"]
    if m.get("recur_layers"):
        out.append(f"depth recurrence over layers {m['recur_layers']} (PR #1331, #1437)")
    if m.get("parallel_residual_start") not in (None, -1, 0):
        out.append(f"parallel residuals from layer {m['parallel_residual_start']} (PR #1412)")
    if q.get("method"):
        out.append(
            f"{q['method']} int{q.get('matrix_bits')} matrices, codec {q.get('codec')} "
            "(GPTQ + SDClip: PR #1394)"
        )
    if q.get("groups") or q.get("lqer"):
        out.append(
            f"per-group quantization {q.get('groups') or '-'}, low-rank terms "
            f"{q.get('lqer') or '-'} (pgolf budget planner; LQER: PR #1797)"
        )
    if e.get("sliding"):
        out.append(f"sliding-window eval, stride {e.get('eval_stride')} (PR #50 lineage)")
    if o.get("ema_decay"):
        out.append(f"EMA {o['ema_decay']}")
    return out


def readme(
    sub: dict[str, Any],
    summ: dict[str, Any],
    cmp: dict[str, Any] | None,
    cfg: dict[str, Any],
    has_png: bool,
    runs: list[dict[str, Any]],
) -> str:
    L = [f"# {sub['name']}", ""]
    L += [
        f"**val_bpb = {sub['val_bpb']:.8f}** (mean of {len(sub['seeds'])} seeds, std "
        f"{sub['val_bpb_std']:.8f}) | val_loss {sub['val_loss']:.8f} nats | "
        f"{sub['bytes_total']:,} bytes | {sub['hardware']} | track `{sub['track']}`",
        "",
        f"Exported by `pgolf export` from the pgolf preset `{cfg.get('preset')}`.",
    ]
    if sub["track"] != RECORD_TRACK:
        why = [str(r["result"].get("non_record")) for r in runs if r["result"].get("non_record")]
        L += ["", f"Non-record track: {'; '.join(why) or 'submitted as non-record'}."]
    L += ["", "## Results", ""]
    L += ["| Seed | val_loss | val_bpb | Artifact | Steps | Train s | Eval s |", "|---" * 7 + "|"]
    for s, r in sub["seed_results"].items():
        L.append(
            f"| {s} | {r['val_loss']:.8f} | {r['val_bpb']:.8f} | {r['bytes_with_bundle']:,} "
            f"| {r['steps']} | {r['train_time_s']} | {r['eval_time_s']} |"
        )
    L.append(f"| Mean | {summ['val_loss_mean']:.8f} | {summ['val_bpb_mean']:.8f} | | | | |")
    L.append(f"| Std | {summ['val_loss_std']:.8f} | {summ['val_bpb_std']:.8f} | | | | |")
    L += ["", "## Statistics", ""]
    if cmp:
        b = sub["baseline"]
        L += [
            f"Baseline: `{b['name']}` ({len(b['val_loss'])} seeds). One-sided {cmp['test']} t "
            f"test on per-seed val_loss: t = {cmp['t']:.4f}, df = {cmp['df']:.4f}, "
            f"p = {cmp['p']:.4g}; gap {cmp['gap_nats']:+.6f} nats, {cmp['gap_bpb']:+.6f} bpb.",
            "",
            f"- README rule (>= 0.005 nats at p < 0.01): "
            f"{'met' if cmp['readme_rule']['met'] else 'not met'} - {cmp['readme_rule']['why']}",
            f"- Frontier rule (one-sided Welch p < 0.25): "
            f"{'met' if cmp['frontier_rule']['met'] else 'not met'} - "
            f"{cmp['frontier_rule']['why']}",
        ]
    else:
        L.append("No baseline given at export (`pgolf export --against RECORD_DIR`).")
    L += ["", "## Artifact budget", ""]
    for s, r in sub["seed_results"].items():
        L.append(
            f"- seed {s}: model {r['model_bytes']} + code (bundled train_gpt.py) "
            f"{sub['bytes_code']} = {r['bytes_with_bundle']} bytes of 16,000,000"
        )
    L += ["", "## Techniques", ""] + [f"- {t}" for t in technique_lines(cfg)]
    L += ["", "## Compliance", ""] + [f"- {k}: {v}" for k, v in sub["compliance"].items()]
    L += [
        "",
        "## Reproduce",
        "",
        "```bash",
        "pip install -r requirements.txt",
        "SEED=<seed> python train_gpt.py   # from inside this folder",
        "```",
        "",
        "Check this folder: `pgolf verify <this folder>`.",
        "",
        "## Included files",
        "",
        "README.md, submission.json, train_gpt.py, requirements.txt, "
        + ", ".join(f"train_seed{s}.log" for s in sub["seeds"])
        + (", loss.png" if has_png else ""),
        "",
    ]
    return "\n".join(L)
