"""Training-step speed candidates, each measured on its own, side by side in one run (GPU).

    python benchmarks/step_ablation.py                                    # every candidate
    python benchmarks/step_ablation.py --only base,sdpa:cudnn,fused_ce    # a subset
    python benchmarks/step_ablation.py --device cpu --compile off --batch-seqs 1 --seq-len 64 \\
        --preset cpu-tiny --steps 1 --warmup 0 --only base,fused_ce       # smoke test

Each candidate is the `pr1550` preset (or --preset) plus a few `--set`-style overrides, timed by
`train_throughput.bench_mode` (forward + backward + clip + Muon/AdamW step of one micro-batch of
`batch_seqs x seq_len` random tokens, bf16 autocast, torch.compile by default, recurrence off then
on). Candidates (issue 13; PyTorch issue #142132 for cuDNN attention on Hopper):

* base: `attn_backend=sdpa`, torch's own SDPA kernel choice with `enable_gqa` (today's default).
* sdpa:<kernel>[+repeat]: one SDPA kernel pinned (cudnn, flash, efficient), GQA through
  `enable_gqa` or by repeating K/V per group (#1550's fallback does flash + repeat).
* auto: `attn_backend=auto` (times the kernels above for the shape, keeps the fastest; FA3 first
  when importable). fa3: FlashAttention-3 when importable.
* fused_ce: `fused_ce=8192`, the chunked softcapped cross-entropy (no fp32 [B,T,V] logits).
* auto+fused_ce: both.

Model FLOPs per step (train_throughput.step_flops) = 6 * N_matmul * tokens + 6 * T * D * L_virtual
* tokens (causal attention, forward + backward); MFU = FLOPs / (ms/1000) / --peak-flops (default
989e12, H100 SXM dense bf16; pass 989e12 for H200 too: same tensor cores). One table: ms/step,
ratio to `base`, MFU and peak memory, recurrence off and on.
"""

from __future__ import annotations

import argparse
import dataclasses as dc
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import bench_mode  # noqa: E402

from pgolf import config as C  # noqa: E402
from pgolf import dist  # noqa: E402
from pgolf.kernels import fa3_function, sdpa_has_gqa  # noqa: E402

KERNELS = ("cudnn", "flash", "efficient")


def candidates() -> dict[str, list[str]]:
    """name -> overrides. Attention variants first, then the loss."""
    out: dict[str, list[str]] = {"base": ["attn_backend=sdpa"]}
    forms = ("", "+repeat") if sdpa_has_gqa() else ("+repeat",)
    for kern in KERNELS:
        for form in forms:
            out[f"sdpa:{kern}{form}"] = [f"attn_backend=sdpa:{kern}{form}"]
    out["sdpa:default+repeat"] = ["attn_backend=sdpa:default+repeat"]
    if fa3_function() is not None:
        out["fa3"] = ["attn_backend=fa3"]
    out["auto"] = ["attn_backend=auto"]
    out["fused_ce"] = ["attn_backend=sdpa", "fused_ce=8192"]
    out["auto+fused_ce"] = ["attn_backend=auto", "fused_ce=8192"]
    return out


def run(a: argparse.Namespace) -> list[dict[str, Any]]:
    device = dist.pick_device(a.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.set_device(device)
        torch.set_float32_matmul_precision("high")
    cands = candidates()
    names = list(cands) if not a.only else a.only.split(",")
    unknown = [n for n in names if n not in cands]
    if unknown:
        sys.exit(f"step_ablation: unknown candidates {unknown}; choose from {', '.join(cands)}")
    base_cfg = C.load(a.preset, [], environ={})
    batch = a.batch_seqs or (48 if cuda else 1)
    seq = a.seq_len or base_cfg.train.train_seq_len
    use_compile = (a.compile == "on") if a.compile else cuda
    recur_modes = [False, True] if base_cfg.model.recur_layers and not a.no_recur else [False]
    rows = []
    for name in names:
        cfg = C.load(a.preset, cands[name] + a.overrides, environ={})
        cfg = dc.replace(cfg, train=dc.replace(cfg.train, device=device.type))
        for recur in recur_modes:
            try:
                r = bench_mode(cfg, device, batch, seq, a.steps, a.warmup, use_compile, recur)
                flops_per_s = r["model_tflops_per_step"] * 1e12 / (r["ms_per_step"] / 1e3)
                r["mfu"] = flops_per_s / a.peak_flops
            except (RuntimeError, torch.OutOfMemoryError) as e:  # a kernel may refuse the shapes
                r = {"recurrence": recur, "error": f"{type(e).__name__}: {str(e)[:120]}"}
                if cuda:
                    torch.cuda.empty_cache()
            r["candidate"] = name
            rows.append(r)
            print(json.dumps(r), file=sys.stderr, flush=True)
    gpu = torch.cuda.get_device_name(device) if cuda else "cpu"
    print(
        f"preset:{base_cfg.preset} device:{gpu} batch:{batch}x{seq} steps:{a.steps} "
        f"compile:{use_compile} torch:{torch.__version__} peak_flops:{a.peak_flops:.3g}"
    )
    print("MFU = (6*N_matmul*tokens + 6*T*D*L_virtual*tokens) / step_time / peak_flops")
    base = {r["recurrence"]: r.get("ms_per_step") for r in rows if r["candidate"] == names[0]}
    print(
        f"{'candidate':<22} {'recur':>5} {'ms/step':>9} {'vs ' + names[0]:>12} {'MFU':>6} "
        f"{'peak MiB':>9} attn plan"
    )
    for r in rows:
        if "error" in r:
            print(f"{r['candidate']:<22} {r['recurrence']!s:>5} {r['error']}")
            continue
        b = base.get(r["recurrence"])
        ratio = f"{r['ms_per_step'] / b:.3f}x" if b else "-"
        mem = "-" if r["peak_mem_mib"] is None else str(r["peak_mem_mib"])
        print(
            f"{r['candidate']:<22} {r['recurrence']!s:>5} {r['ms_per_step']:9.2f} {ratio:>12} "
            f"{100 * r['mfu']:5.1f}% {mem:>9} {r.get('attn_plan', '')[:60]}"
        )
    if a.out is not None:
        record = {
            "device": gpu,
            "torch": torch.__version__,
            "batch": batch,
            "seq": seq,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "rows": rows,
        }
        with open(a.out, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
    return rows


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="pr1550", choices=sorted(C.PRESETS))
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--only", default="", help="comma-separated candidates (first = ratio base)")
    p.add_argument("--batch-seqs", type=int, default=None, help="default 48 (CUDA) / 1 (CPU)")
    p.add_argument("--seq-len", type=int, default=None)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--compile", choices=["on", "off"], default=None, help="default on for CUDA")
    p.add_argument("--no-recur", action="store_true", help="recurrence off only")
    p.add_argument("--peak-flops", type=float, default=989e12)
    p.add_argument("--out", type=Path, default=None, help="append one JSON line here")
    return run(p.parse_args(argv))


if __name__ == "__main__":
    main(sys.argv[1:])
