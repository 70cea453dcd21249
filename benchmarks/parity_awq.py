"""Parity of pgolf's AWQ-lite (`quant.awq`) with PR #1908's own quantizer, CPU fp32.

    python benchmarks/parity_awq.py --reference .ref/train_gpt_1908.py      # ~1 min on 2 cores

The reference is PR #1908's `records/track_10min_16mb/2026-04-28_PR1855Base_AWQGPTQ_StepMatched/
train_gpt.py` (#1855's script with AWQ-lite added), copied into the git-ignored `.ref/` (never
committed):

    git -C /work/.mirror/openai+parameter-golf/repo show refs/pull/1908/head:records/\\
track_10min_16mb/2026-04-28_PR1855Base_AWQGPTQ_StepMatched/train_gpt.py > .ref/train_gpt_1908.py

It is imported as `parity_1855.py` imports #1855's (its CUDA-only imports replaced by the stand-ins
written there, the record's command line in the environment). Given the same weights, Hessians and
activation RMS (a pr1855-shaped synthetic state, `parity_1855.synthetic_state`, and per-channel
RMS with a heavy tail), both quantize with AWQ-lite on, #1908 by its `gptq_mixed_quantize`, pgolf
by `pipeline.quantize_weights` with `quant.awq`: the promoted groups each chooses, every stored
code (pgolf's promoted columns put back into their tensor, as #1908 stores them), row scale,
promoted-column scale and low-rank code are compared, for several `AWQ_LITE_GROUP_TOP_K`.
"""

from __future__ import annotations

import contextlib
import dataclasses as dc
import io
import json
import os
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import torch
from torch import Tensor

from pgolf import config as C
from pgolf import lqer, quant
from pgolf.artifact_check import promoted_of
from pgolf.pipeline import quantize_weights

sys.path.insert(0, str(Path(__file__).resolve().parent))
import parity_1855 as P  # noqa: E402  (the stand-ins, the loader and the synthetic state)

DEFAULT_REF = Path(__file__).resolve().parents[1] / ".ref" / "train_gpt_1908.py"
FETCH = (
    "git -C /work/.mirror/openai+parameter-golf/repo show refs/pull/1908/head:records/"
    "track_10min_16mb/2026-04-28_PR1855Base_AWQGPTQ_StepMatched/train_gpt.py "
    "> .ref/train_gpt_1908.py"
)


def find_reference(path: str | None = None) -> Path | None:
    """--reference, else $PGOLF_REF_1908, else .ref/train_gpt_1908.py; None when absent."""
    for cand in (path, os.environ.get("PGOLF_REF_1908"), str(DEFAULT_REF)):
        if cand and Path(cand).is_file():
            return Path(cand)
    return None


def synthetic_rms(hessians: dict[str, Tensor], seed: int) -> dict[str, Tensor]:
    """Per-input-channel RMS for every Hessian: sqrt(diag H) times a heavy-tailed factor (a few
    channels with large activations, as trained models have), so the choice is not trivial."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, H in hessians.items():
        c = H.shape[0]
        tail = torch.rand(c, generator=gen).pow(-0.7)  # Pareto-like: most ~1, a few >> 1
        out[name] = H.diagonal().sqrt() * tail
    return out


def assembled(tensors: list[Any]) -> dict[str, Tensor]:
    """{name: codes [R, C]} of every int tensor with its promoted groups' codes put back into their
    columns (#1908 stores them inside the tensor's own codes)."""
    codes = {t.name: t.codes.reshape(t.rows, -1).clone() for t in tensors if t.kind == "int"}
    for t in tensors:
        if (got := promoted_of(t.name)) is not None:
            base, start = got
            codes.pop(t.name)
            codes[base][:, start : start + t.shape[1]] = t.codes
    return codes


def compare(ref: ModuleType, cfg: C.RunConfig, m: C.ModelConfig, layers: int, seed: int, k: int):
    """Both quantizers, AWQ-lite on with top-k `k`, on the same state, Hessians and RMS ->
    {kind: counts}: tensors and codes compared, codes and scales that differ; the groups chosen."""
    state, hessians = P.synthetic_state(m, layers, seed)
    rms = synthetic_rms(hessians, seed + 1)
    q = cfg.quant
    h = SimpleNamespace(**{a: v for a, v in vars(ref.Hyperparameters).items() if a[0] != "_"})
    h.awq_lite_enabled, h.awq_lite_group_top_k = True, k
    h.awq_lite_bits, h.awq_lite_group_size = q.awq_bits, q.awq_group
    rename = lambda n: n.replace(".attn.gate_w", ".attn.attn_gate_w")  # noqa: E731
    ref_state = {rename(n): v for n, v in state.items()}
    with contextlib.redirect_stdout(io.StringIO()):
        result, _meta = ref.gptq_mixed_quantize(ref_state, hessians, rms, h)
        cfg = dc.replace(cfg, quant=dc.replace(q, awq=True, awq_top_k=k))
        ours = quantize_weights(cfg, state, quant.Calibration(hessians, rms), log=False)
    by_name = {t.name: t for t in ours}
    codes = assembled(ours)
    rows: dict[str, dict[str, int]] = {}

    def tally(kind: str, a: Tensor, b: Tensor, sa: Tensor, sb: Tensor) -> None:
        row = rows.setdefault(kind, {"tensors": 0, "codes": 0, "code_diff": 0, "scale_diff": 0})
        row["tensors"] += 1
        row["codes"] += a.numel()
        same = a.numel() == b.numel()
        row["code_diff"] += int((a.reshape(-1) != b.reshape(-1)).sum()) if same else a.numel()
        sa, sb = sa.reshape(-1).float(), sb.reshape(-1).float()
        row["scale_diff"] += int((sa != sb).sum()) if sa.numel() == sb.numel() else sa.numel()

    want, got = set(), {promoted_of(t.name) for t in ours if promoted_of(t.name)}
    for name in state:
        rn = rename(name)
        if rn + ".q" in result:
            tally(
                "gptq", result[rn + ".q"], codes[name], result[rn + ".scale"], by_name[name].scales
            )
        elif rn + ".gq" in result:
            tally(
                "gate int8",
                result[rn + ".gq"],
                codes[name],
                result[rn + ".gs"],
                by_name[name].scales,
            )
        if rn + ".awqg_start" in result:
            starts = result[rn + ".awqg_start"].tolist()
            want |= {(name, s) for s in starts}
            hi = result[rn + ".awqg_s_hi"]
            for s in starts:
                t = by_name.get(f"{name}.awq.{s}")
                t_scales = t.scales if t is not None else torch.zeros(0)
                tally("promoted scales", torch.zeros(0), torch.zeros(0), hi, t_scales)
            if int(result[rn + ".awqg_size"]) != q.awq_group:
                rows.setdefault("group size", {"code_diff": 0})["code_diff"] += 1
        if rn + ".lqA_a" in result:
            a, b = by_name.get(name + lqer.SUFFIX_A), by_name.get(name + lqer.SUFFIX_B)
            if a is None or b is None:
                rows.setdefault("missing low-rank", {"tensors": 0, "code_diff": 0})
                rows["missing low-rank"]["code_diff"] += 1
                continue
            sa = result[rn + ".lqAs_a"].reshape(1).expand(a.scales.numel())
            tally("low-rank A", result[rn + ".lqA_a"], a.codes, sa, a.scales)
            tally("low-rank B", result[rn + ".lqB_a"], b.codes, result[rn + ".lqBs_a"], b.scales)
    rows["promoted groups chosen"] = {"tensors": len(want), "code_diff": len(want ^ got)}
    rows["promoted groups chosen"]["codes"] = len(got)
    return rows, sorted(want)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reference", default=None, help="PR #1908's train_gpt.py")
    ap.add_argument("--dim", type=int, default=384, help="width of the quantized state")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--top-k", default="1,4,16", help="AWQ_LITE_GROUP_TOP_K values to compare")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default="", help="write every figure to this file")
    args = ap.parse_args(argv)
    path = find_reference(args.reference)
    if path is None:
        sys.exit(f"parity_awq: reference not found; pass --reference or fetch it:\n  {FETCH}")
    ref = P.load_reference(path)
    cfg = C.pr1855()
    m = P.parity_config("tiny")
    m = dc.replace(m, model_dim=args.dim, num_heads=args.dim // 64, vocab_size=1024)
    m = dc.replace(m, num_kv_heads=m.num_heads // 2)
    print(
        f"# AWQ-lite parity with PR #1908 ({path.name}): {args.layers} layers x {args.dim}d, "
        f"vocab {m.vocab_size}, group {cfg.quant.awq_group} columns on int{cfg.quant.awq_bits}, "
        f"torch {torch.__version__}, fp32 CPU"
    )
    head = f"{'tensors':>8} {'codes':>10} {'differ':>8} {'scales differ':>14}"
    out = {}
    for k in (int(x) for x in args.top_k.split(",")):
        rows, groups = compare(ref, cfg, m, args.layers, args.seed, k)
        out[k] = {
            "rows": rows,
            "groups": [f"{n}[{s}:{s + cfg.quant.awq_group}]" for n, s in groups],
        }
        print(f"\ntop-k {k}: #1908 promotes {', '.join(out[k]['groups'])}")
        print(f"{'kind':<26} {head}")
        for kind, r in rows.items():
            print(
                f"{kind:<26} {r.get('tensors', 0):>8} {r.get('codes', 0):>10} "
                f"{r.get('code_diff', 0):>8} {r.get('scale_diff', 0):>14}"
            )
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
