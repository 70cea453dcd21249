"""Training-step throughput of a preset on one device: eager vs compiled, recurrence off vs on.

    python benchmarks/train_throughput.py --preset pr1550 --batch-seqs 48 --seq-len 2048 --steps 20
    python benchmarks/train_throughput.py --preset cpu-tiny --steps 2 --device cpu   # smoke test

One step = forward + backward on `batch_seqs x seq_len` random tokens + the optimizer step (Muon
+ AdamW, as `pgolf.optim.build_optimizers`), bf16 autocast on CUDA - the per-GPU work of one
PR #1550 step (48 x 2048 tokens per GPU; no gradient communication on a single device). Each
mode gets untimed warm-up steps (compilation happens there), then `--steps` timed steps between
two CUDA synchronisations.

Model FLOPs per step = 6 * N_matmul * tokens + attention, where N_matmul counts each linear
weight once per use (a layer repeated by depth recurrence counts once per visit; the tied
embedding counts once as the output head) and attention is the causal score + value product,
6 * T * (heads * head_dim) FLOPs per token per virtual layer for forward + backward (half of
PaLM's non-causal 12 * L * H * Q * T). MFU = model FLOPs / time / `--peak-flops` (default
989e12, H100 SXM dense bf16). The last column compares ms/step with PR #1550's logged
~99.6 ms/step before recurrence and ~123 ms/step after (spec pr1550-stack.md section 4.6).

Prints one table; with `--out FILE` appends one JSON line with every number.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses as dc
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pgolf import config as C
from pgolf import dist
from pgolf.optim import build_optimizers, clip_grad_norm_
from pgolf.train import build_model

PR1550_MS = {False: 99.6, True: 123.0}


def matmul_params(model: nn.Module) -> int:
    """Linear weights weighted by their uses per forward (see the module docstring)."""
    visits = model.virtual_layers()
    total = 0
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.Linear):
            continue
        parts = name.split(".")
        uses = visits.count(int(parts[1])) if parts[0] == "blocks" else 1
        total += mod.weight.numel() * uses
    if getattr(model, "lm_head", None) is None:  # tied head: x @ E^T
        total += model.tok_emb.weight.numel()
    return total


def step_flops(model: nn.Module, cfg: C.ModelConfig, batch: int, seq: int) -> float:
    tokens = batch * seq
    attn = 6.0 * seq * cfg.model_dim * len(model.virtual_layers()) * tokens  # causal
    return 6.0 * matmul_params(model) * tokens + attn


def bench_mode(
    cfg: C.RunConfig,
    device: torch.device,
    batch: int,
    seq: int,
    steps: int,
    warmup: int,
    use_compile: bool,
    recur: bool,
) -> dict[str, Any]:
    torch.manual_seed(0)
    model = build_model(cfg, device)
    model.set_recurrence(recur)
    plan = model.plan_attention(batch, seq) if device.type == "cuda" else ""
    opt = build_optimizers(model, cfg.optim)
    fwd = torch.compile(model, dynamic=False, fullgraph=True) if use_compile else model
    params = [p for p in model.parameters() if p.requires_grad]
    V = cfg.model.vocab_size
    gen = torch.Generator(device="cpu").manual_seed(1)
    data = [torch.randint(0, V, (batch, seq + 1), generator=gen) for _ in range(2)]
    data = [d.to(device) for d in data]
    cuda = device.type == "cuda"
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()

    def one(i: int) -> None:
        d = data[i % 2]
        with ctx:
            loss = fwd(d[:, :-1], d[:, 1:])
        loss.backward()
        if cfg.optim.grad_clip_norm > 0:
            clip_grad_norm_(params, cfg.optim.grad_clip_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for i in range(warmup):
        one(i)
    sync()
    t1 = time.perf_counter()
    for i in range(steps):
        one(i)
    sync()
    ms = 1000.0 * (time.perf_counter() - t1) / steps
    flops = step_flops(model, cfg.model, batch, seq)
    out = {
        "compile": use_compile,
        "recurrence": recur,
        "virtual_layers": len(model.virtual_layers()),
        "warmup_s": t1 - t0,
        "ms_per_step": ms,
        "tokens_per_s": batch * seq / (ms / 1000.0),
        "model_tflops_per_step": flops / 1e12,
        "peak_mem_mib": torch.cuda.max_memory_allocated(device) // 2**20 if cuda else None,
        "ratio_to_pr1550": ms / PR1550_MS[recur],
        "attn_plan": plan,
    }
    return out


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="pr1550", choices=sorted(C.PRESETS))
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--batch-seqs", type=int, default=None, help="default 48 (CUDA) / 2 (CPU)")
    p.add_argument("--seq-len", type=int, default=None, help="default: the preset's")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per mode")
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--compile",
        choices=["both", "on", "off"],
        default=None,
        help="default: both on CUDA, off on CPU",
    )
    p.add_argument("--peak-flops", type=float, default=989e12)
    p.add_argument("--out", type=Path, default=None, help="append one JSON line here")
    a = p.parse_args(argv)

    cfg = C.load(a.preset, a.overrides, environ={})
    device = dist.pick_device(a.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.set_device(device)
        torch.set_float32_matmul_precision("high")
    cfg = dc.replace(cfg, train=dc.replace(cfg.train, device=device.type))
    batch = a.batch_seqs or (48 if cuda else 2)
    seq = a.seq_len or cfg.train.train_seq_len
    compile_modes = {"on": [True], "off": [False], "both": [False, True]}[
        a.compile or ("both" if cuda else "off")
    ]
    recur_modes = [False, True] if cfg.model.recur_layers else [False]
    rows = []
    for use_compile in compile_modes:
        for recur in recur_modes:
            try:
                r = bench_mode(cfg, device, batch, seq, a.steps, a.warmup, use_compile, recur)
            except torch.OutOfMemoryError:
                r = {"compile": use_compile, "recurrence": recur, "error": "out of memory"}
                torch.cuda.empty_cache()
            if "ms_per_step" in r:
                r["mfu"] = r["model_tflops_per_step"] * 1e12 / (r["ms_per_step"] / 1e3)
                r["mfu"] /= a.peak_flops
            rows.append(r)

    gpu = torch.cuda.get_device_name(device) if cuda else "cpu"
    print(
        f"preset:{cfg.preset} device:{gpu} batch:{batch}x{seq} steps:{a.steps} "
        f"torch:{torch.__version__} peak_flops:{a.peak_flops:.3g}"
    )
    head = f"{'compile':>7} {'recur':>5} {'ms/step':>9} {'tok/s':>11} {'MFU':>6} "
    print(head + f"{'peak MiB':>9} {'vs #1550':>8} {'warmup s':>8}")
    for r in rows:
        if "error" in r:
            print(f"{r['compile']!s:>7} {r['recurrence']!s:>5} {r['error']}")
            continue
        mem = "-" if r["peak_mem_mib"] is None else str(r["peak_mem_mib"])
        print(
            f"{r['compile']!s:>7} {r['recurrence']!s:>5} {r['ms_per_step']:9.2f} "
            f"{r['tokens_per_s']:11.0f} {100 * r['mfu']:5.1f}% {mem:>9} "
            f"{r['ratio_to_pr1550']:7.2f}x {r['warmup_s']:8.1f}"
        )
    record = {
        "preset": cfg.preset,
        "device": gpu,
        "torch": torch.__version__,
        "batch_seqs": batch,
        "seq_len": seq,
        "steps": a.steps,
        "peak_flops": a.peak_flops,
        "pr1550_ms_per_step": {"recurrence_off": 99.6, "recurrence_on": 123.0},
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "results": rows,
    }
    if a.out is not None:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        with open(a.out, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
