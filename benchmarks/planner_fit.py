"""Budget planner on a finished run: the option table once, then a plan for each cap.

    python benchmarks/planner_fit.py RUN_DIR --caps 340000,400000 --out-dir out/plans
    python benchmarks/planner_fit.py --synthetic pr1550 [--fraction 0.05]   bytes only

Same code path as `pgolf budget RUN --fit CAP --out plan.json` (pgolf.lab.budget.planner), but the
options are measured once for all caps. Writes OUT_DIR/table.json and OUT_DIR/plan_CAP.json; check
each plan with `pgolf quantize RUN --plan plan_CAP.json --out A && pgolf eval A --no-sliding`.

--synthetic: the bytes side of the option table at another scale, on i.i.d. Gaussian weights of
every tensor the preset quantizes (as `entropy_codec.synthetic`; a `fraction` of each tensor's
rows):
per group and bit width, the group's codes + scales compressed alone (Brotli-11, the artifact's
shuffle), scaled back by 1/fraction, as Δ against the preset's own bits. No loss: no model.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from pgolf.lab.budget import planner as P
from pgolf.lab.budget.planfile import write_plan


def synthetic_bytes(preset: str, fraction: float, bits: tuple[int, ...]) -> None:
    import torch

    from pgolf import config as C
    from pgolf.artifact import DEFAULT_SHUFFLE, byte_shuffle, compress, tensor_parts
    from pgolf.artifact import QTensor as Q
    from pgolf.model import GPT
    from pgolf.quant import make_plan, rtn_quantize

    t0 = time.perf_counter()
    cfg = C.PRESETS[preset]()
    with torch.device("meta"):
        sd = GPT(cfg.model).state_dict()
    g = torch.Generator().manual_seed(0)
    weights: dict[str, list] = {}  # group -> [(entry, W)]
    for e in make_plan(sd, cfg.quant, cfg.model):
        if e.method != "fp16":
            shape = tuple(sd[e.name].shape)
            rows, cols = max(1, int(shape[0] * fraction)), int(sd[e.name].numel() // shape[0])
            W = torch.randn((rows, cols), generator=g) / cols**0.5  # as entropy_codec.synthetic
            weights.setdefault(e.group, []).append((e, W))

    def alone(group: str, b: int | None) -> float:
        parts = []
        for e, W in weights[group]:
            codes, scales = rtn_quantize(W, b or e.bits, e.clip_k)
            parts.append(
                b"".join(
                    tensor_parts(
                        Q(e.name, W.shape, "int", b or e.bits, codes, scales, None, group)
                    )[:2]
                )
            )
        return len(compress(byte_shuffle(b"".join(parts), DEFAULT_SHUFFLE), "brotli")) / fraction

    print(f"synthetic {preset}, fraction {fraction}: group, params, bits, bytes (x1/fraction)")
    for group, items in sorted(weights.items()):
        own = items[0][0].bits
        base = alone(group, None)
        params = sum(W.numel() for _, W in items) / fraction
        print(f"{group:<12} {params:>12,.0f} int{own} {base:>12,.0f} (the preset's own bits)")
        for b in (b for b in bits if b != own):
            got = alone(group, b)
            print(f"{group:<12} {'':>12} int{b} {got:>12,.0f} Δ {got - base:+,.0f}")
    print(f"synthetic total {time.perf_counter() - t0:.0f}s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run_dir", nargs="?")
    ap.add_argument("--synthetic", default=None, help="preset name (bytes only), e.g. pr1550")
    ap.add_argument("--fraction", type=float, default=0.05)
    ap.add_argument("--caps", default="340000,400000")
    ap.add_argument("--out-dir", default="out/plans")
    ap.add_argument("--calib-tokens", type=int, default=65536)
    ap.add_argument("--bits", default="4,5,6,7,8")
    ap.add_argument("--ranks", default="0,4,8")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    a = ap.parse_args()
    import torch

    torch.set_num_threads(a.threads)  # 2 threads on a shared 2-core box spin: one is faster
    if a.synthetic:
        return synthetic_bytes(a.synthetic, a.fraction, tuple(int(b) for b in a.bits.split(",")))
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    bench = P.Bench(a.run_dir, a.calib_tokens)
    bits = tuple(int(b) for b in a.bits.split(","))
    ranks = tuple(int(r) for r in a.ranks.split(","))
    table = P.measure(bench, P.default_grid(bench, bits, ranks), log=print)
    print(
        f"measured {sum(len(v) for v in table.values())} options in {time.perf_counter() - t0:.0f}s"
    )
    res_file = Path(a.run_dir) / "result.json"
    base = json.loads(res_file.read_text()).get("val_bpb_roundtrip") if res_file.is_file() else None
    for cap in (int(c) for c in a.caps.split(",")):
        try:
            res = P.fit(bench, table, cap)
        except P.InfeasibleBudget as e:
            print(f"cap {cap}: {e}")
            continue
        lines, extra = P.plan_report(res, table, base)
        print("\n".join(lines))
        write_plan(out / f"plan_{cap}.json", res["choice"], {"run": str(bench.run), **extra})
        (out / "table.json").write_text(json.dumps(extra["table"], indent=1) + "\n")
    print(f"total {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
