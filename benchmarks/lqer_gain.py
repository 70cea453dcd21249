"""Low-rank error correction: val bpb recovered per KB of artifact, per tensor group and rank.

    python benchmarks/lqer_gain.py RUN_DIR [--ranks 2,4,8] [--groups mlp,attn] [--codec rans]

RUN_DIR is a folder written by `pgolf run`/`pgolf train` (config.json + final_model.safetensors).
Each row quantizes the same weights with GPTQ (same calibration) plus low-rank terms of one rank
on one group (`quant.lqer`), through the real container and back; bytes and bpb against rank 0.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import torch

from pgolf import artifact as A
from pgolf import bpb, lqer, quant
from pgolf import config as C
from pgolf import pipeline as P
from pgolf import score as S
from pgolf.data import load_val_tokens
from pgolf.dist import init
from pgolf.model import graph_state


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run_dir")
    ap.add_argument("--ranks", default="2,4,8")
    ap.add_argument("--groups", default="mlp,attn")
    ap.add_argument("--codec", default="rans")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    di = init("auto")
    run = Path(a.run_dir)
    cfg = C.from_dict(json.loads((run / "config.json").read_text()))
    cfg, data_dir, tok = P.resolve_data(cfg)
    model = P.load_run_model(cfg, run / "final_model.safetensors", di.device)
    gmeta = graph_state(model)
    tables = bpb.build_byte_tables(str(tok), cfg.model.vocab_size).to(di.device)
    val = load_val_tokens(
        data_dir, cfg.eval.eval_seq_len, cfg.data.max_val_tokens, cfg.model.vocab_size
    )

    def measure(rank: int, group: str) -> dict:
        qc = replace(cfg, quant=replace(cfg.quant, lqer=f"{group}:{rank}" if rank else ""))
        torch.manual_seed(0)
        tensors = P.quantize_model(qc, model, data_dir)
        blob = A.encode_artifact(tensors, {}, codec=a.codec)
        state = lqer.add_back(quant.dequantize_state(A.decode_artifact(blob)[0]))
        m = P._model_from_state(qc, state, di.device, gmeta, "lqer_gain")
        r = S.evaluate_model(qc, m, val, tables, "bench", False, di.device)["roundtrip_bpb"]
        return {
            "rank": rank,
            "group": group,
            "bytes": len(blob),
            "bpb": r,
            "base_codes": [t.codes for t in tensors if t.group != "lqer" and t.kind == "int"],
        }

    base = measure(0, "")
    rows = []
    print(f"preset:{cfg.preset} codec:{a.codec} rank 0: {base['bytes']} B, bpb {base['bpb']:.5f}")
    for g in a.groups.split(","):
        for r in (int(x) for x in a.ranks.split(",")):
            row = measure(r, g)
            same = all(torch.equal(u, v) for u, v in zip(row["base_codes"], base["base_codes"]))
            dkb, dbpb = (row["bytes"] - base["bytes"]) / 1000, base["bpb"] - row["bpb"]
            per = dbpb / dkb if dkb else float("nan")
            print(
                f"group {g:<5} rank {r:>2}: +{dkb:7.2f} KB  bpb {row['bpb']:.5f}  "
                f"recovered {dbpb:+.5f}  per KB {per:+.6f}  same GPTQ codes {same}"
            )
            rows.append({k: v for k, v in row.items() if k != "base_codes"})
    if a.out:
        base.pop("base_codes")
        Path(a.out).write_text(json.dumps({"base": base, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
