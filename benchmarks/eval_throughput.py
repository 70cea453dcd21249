"""Sliding-window eval throughput (stride 64) on one device, pgolf against PR #1550's own eval.

    python benchmarks/eval_throughput.py --data .bench/bench-v1 --reference .ref/train_gpt_1550.py
    python benchmarks/eval_throughput.py --device cpu --set num_layers=2 --set ve_layers=1 \\
        --set xsa_layers=0,1 --set recur_layers= --set parallel_start=1 \\
        --max-tokens 4096 --seq-len 128 --stride 32 --batch 8 --no-compile      # smoke test

Same weights (random `pr1550` init, perturbed so every path matters; throughput does not depend
on training), same validation tokens (bench-v1 val, or --max-tokens of it), bf16 autocast on CUDA.
Variants, each timed on its own after one untimed pass (compilation happens there):

* `eager bN`: `pgolf.evaluate.eval_sliding` as the pipeline calls it (batch N windows).
* `compiled bN`: the same with `torch.compile(model, dynamic=False, fullgraph=True)` (static
  shapes: eval_sliding pads the last batch).
* `tail bN`: a scorer written here that runs the compiled trunk (`GPT.hidden`) but the head and
  the cross-entropy only on the positions a window scores (its last `stride`, all of the first
  window's), instead of fp32 [N, T, V] logits; it must give eval_sliding's bpb (printed side by
  side) - the measurement for deciding whether evaluate.py should do the same.
* `#1550 b32`: the reference's `eval_val_sliding` (compiled `forward_logits`, inference mode,
  batch 32) on the same weights mapped into its banks, in bf16 as its main() holds them; needs
  --reference (CUDA only: it autocasts for CUDA). It also re-scores the tail (spec 6.2), so its
  token count differs slightly; tokens/s is per scored token on each side.

Prints tokens/s, seconds, bpb and the ratio to #1550 (or to the first variant).
"""

from __future__ import annotations

import argparse
import dataclasses as dc
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from parity_1550 import find_reference, load_reference, pgolf_to_ref, reference_kwargs  # noqa: E402

from pgolf import config as C  # noqa: E402
from pgolf import dist  # noqa: E402
from pgolf.bpb import ByteTables, bits_per_byte, build_byte_tables, target_bytes  # noqa: E402
from pgolf.data import find_tokenizer, load_val_tokens  # noqa: E402
from pgolf.evaluate import eval_sliding, sliding_windows  # noqa: E402
from pgolf.model import GPT  # noqa: E402


@torch.no_grad()
def tail_sliding(
    model: GPT,
    trunk: Any,
    tokens: torch.Tensor,
    seq_len: int,
    stride: int,
    batch: int,
    tables: ByteTables,
    device: torch.device,
    amp: torch.dtype | None,
) -> tuple[float, int, float]:
    """(bpb, scored tokens, seconds): head + CE only on scored positions; pgolf's windows."""
    starts, lo, hi = sliding_windows(tokens.numel() - 1, seq_len, stride)
    tab, ar = tables.to(device), torch.arange(seq_len + 1)
    acc = torch.zeros(3, dtype=torch.float64, device=device)
    tail = seq_len - stride
    model.eval()
    t0 = time.perf_counter()
    for i in range(0, starts.numel(), batch):
        s = starts[i : i + batch]
        n_real = s.numel()
        s = torch.cat([s, s[:1].expand(batch - n_real)]) if n_real < batch else s
        chunk = tokens[(s[:, None] + ar).clamp_(max=tokens.numel() - 1)].to(device)
        x, y = chunk[:, :-1], chunk[:, 1:]
        lo_b = torch.cat([lo[i : i + n_real], lo.new_full((batch - n_real,), seq_len)])
        hi_b = torch.cat([hi[i : i + n_real], hi.new_zeros(batch - n_real)])
        first = min(int(lo_b.min()), tail)  # 0 in the batch holding the first window
        with torch.autocast(device.type, amp, enabled=amp is not None):
            h = trunk(x)[:, first:]
            logits = model.logits(h)
        yy, xx = y[:, first:], x[:, first:]
        nll = F.cross_entropy(logits.flatten(0, 1), yy.flatten(), reduction="none").view(yy.shape)
        pos = torch.arange(first, seq_len, device=device)
        mask = (pos >= lo_b.to(device)[:, None]) & (pos < hi_b.to(device)[:, None])
        acc[0] += torch.where(mask, nll.double(), 0.0).sum()
        acc[1] += mask.sum()
        acc[2] += torch.where(mask, target_bytes(xx, yy, tab).double(), 0.0).sum()
    nll_sum, n, nb = acc.tolist()
    seconds = time.perf_counter() - t0
    return bits_per_byte(nll_sum, int(n), int(nb)), int(n), seconds


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="/work/shared/data/bench-v1", help="bench-v1 folder")
    p.add_argument("--preset", default="pr1550", choices=sorted(C.PRESETS))
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--reference", default=None, help="PR #1550's train_gpt.py (CUDA only)")
    p.add_argument("--device", default="auto")
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--stride", type=int, default=64)
    p.add_argument("--batch", default="32,64", help="batch sizes (windows) to try")
    p.add_argument("--max-tokens", type=int, default=0, help="truncate val (0 = all)")
    p.add_argument("--recur", action="store_true", help="depth recurrence on (the trained state)")
    p.add_argument("--no-compile", action="store_true")
    a = p.parse_args(argv)
    device = dist.pick_device(a.device)
    cuda = device.type == "cuda"
    amp = torch.bfloat16 if cuda else None
    cfg = C.load(a.preset, a.overrides, environ={})
    vocab = cfg.model.vocab_size
    data = Path(a.data)
    tables = build_byte_tables(find_tokenizer(data / f"sp{vocab}"), vocab)
    tokens = load_val_tokens(data / f"sp{vocab}", a.seq_len, a.max_tokens, vocab).cpu()
    torch.manual_seed(0)
    model = GPT(dc.replace(cfg.model, attn_backend="sdpa")).to(device)
    with torch.no_grad():
        for prm in model.parameters():
            prm.add_(0.02 * torch.randn_like(prm))
    model.set_recurrence(a.recur)
    rows: list[dict[str, Any]] = []

    def record(name: str, fn: Any) -> None:
        fn()  # untimed: compilation, allocator warm-up
        bpb, n, sec = fn()
        rows.append({"variant": name, "bpb": bpb, "tokens": n, "seconds": sec, "tok_s": n / sec})
        print(f"{name}: {n / sec:,.0f} tok/s bpb {bpb:.5f}", file=sys.stderr, flush=True)

    compiled = model if a.no_compile else torch.compile(model, dynamic=False, fullgraph=True)
    trunk = model.hidden if a.no_compile else torch.compile(model.hidden, dynamic=False)
    for b in (int(x) for x in a.batch.split(",")):
        for name, m in (("eager", model), ("compiled", compiled)):
            if name == "compiled" and a.no_compile:
                continue

            def run(m: Any = m, b: int = b) -> tuple[float, int, float]:
                r = eval_sliding(m, tokens, a.seq_len, a.stride, b, tables, device, amp)
                return r.val_bpb, r.tokens, r.seconds

            record(f"{name} b{b}", run)
        record(
            f"tail b{b}",
            lambda b=b: tail_sliding(
                model, trunk, tokens, a.seq_len, a.stride, b, tables, device, amp
            ),
        )
    ref_path = find_reference(a.reference)
    if a.reference and ref_path is not None and cuda:
        ref = load_reference(ref_path)
        rm = ref.GPT(**reference_kwargs(cfg.model)).to(device).bfloat16()
        rm.load_state_dict(pgolf_to_ref({k: v.detach() for k, v in model.state_dict().items()}))
        for bank in ("qo_bank", "kv_bank", "mlp_up_bank", "mlp_down_bank"):
            getattr(rm, bank).data = getattr(rm, bank).data.float()
        rm.set_recurrence_active(a.recur)
        luts = [
            t.to(device) for t in (tables.base_bytes, tables.has_leading_space, tables.is_boundary)
        ]
        args = type("Args", (), {"train_seq_len": a.seq_len})

        def run_ref() -> tuple[float, int, float]:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            loss, bpb = ref.eval_val_sliding(
                args,
                rm,
                0,
                1,
                device,
                tokens.to(device),
                *luts,
                stride=a.stride,
                batch_seqs=32,
                eval_seq_len=a.seq_len,
            )
            torch.cuda.synchronize()
            return bpb, tokens.numel() - 1, time.perf_counter() - t0  # (+ its re-scored tail)

        record("#1550 b32", run_ref)
    base = next((r for r in rows if r["variant"].startswith("#1550")), rows[0])
    gpu = torch.cuda.get_device_name(device) if cuda else "cpu"
    print(
        f"preset:{cfg.preset} device:{gpu} torch:{torch.__version__} seq_len:{a.seq_len} "
        f"stride:{a.stride} val_tokens:{tokens.numel()} recur:{a.recur}"
    )
    print(f"{'variant':<14} {'tok/s':>10} {'s':>8} {'bpb':>9} {'vs ' + base['variant']:>16}")
    for r in rows:
        ratio = r["tok_s"] / base["tok_s"]
        print(
            f"{r['variant']:<14} {r['tok_s']:>10,.0f} {r['seconds']:>8.2f} {r['bpb']:>9.5f} "
            f"{ratio:>15.2f}x"
        )
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
