"""Quantization and compression measurements, printed side by side in one run.

1. Quantization gap (val BPB after the artifact round trip minus before) of GPTQ and of
   round-to-nearest at the same bits and clip, on a finished run's weights, and their ratio.
2. Compressed size of the same int6 codes under our container (its configured codec) versus
   PR #1550's method (4-byte-stride byte-shuffle + Brotli-11 of the raw code/scale bytes).
3. The whole artifact against the 16,000,000-byte budget.

    python benchmarks/quant_compare.py RUN_DIR [--bits 6] [--max-val-tokens N] [--out F.json]

RUN_DIR is a folder written by `pgolf run` or `pgolf train` (config.json +
final_model.safetensors). Runs on CPU or GPU.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from pgolf import artifact as A
from pgolf import bpb
from pgolf import config as C
from pgolf import pipeline as P
from pgolf import score as S
from pgolf.data import load_val_tokens
from pgolf.dist import init
from pgolf.lab.budget import sizes as B
from pgolf.lab.bundle import code_size
from pgolf.model import graph_state


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run_dir")
    ap.add_argument("--bits", type=int, default=6)
    ap.add_argument("--max-val-tokens", type=int, default=0)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()

    di = init("auto")
    run = Path(a.run_dir)
    cfg = C.from_dict(json.loads((run / "config.json").read_text()))
    cfg = replace(cfg, quant=replace(cfg.quant, matrix_bits=a.bits))
    cfg, data_dir, tok = P.resolve_data(cfg)
    model = P.load_run_model(cfg, run / "final_model.safetensors", di.device)
    graph = graph_state(model)
    tables = bpb.build_byte_tables(str(tok), cfg.model.vocab_size).to(di.device)
    mvt = a.max_val_tokens or cfg.data.max_val_tokens
    val = load_val_tokens(data_dir, cfg.eval.eval_seq_len, mvt, cfg.model.vocab_size)

    def bpb_of(m) -> float:
        return S.evaluate_model(cfg, m, val, tables, "bench", False, di.device)["roundtrip_bpb"]

    pre = bpb_of(model)
    rows = {}
    for method in ("gptq", "rtn"):
        qc = replace(cfg, quant=replace(cfg.quant, method=method, embed_method=method))
        t0 = time.perf_counter()
        tensors = P.quantize_model(qc, model, data_dir)
        secs = time.perf_counter() - t0
        qmodel = P._model_from_state(qc, A_roundtrip(tensors), di.device, graph, "quant_compare")
        post = bpb_of(qmodel)
        rows[method] = {"bpb": post, "gap": post - pre, "quant_seconds": secs, "tensors": tensors}

    gptq_t = rows["gptq"]["tensors"]
    ours = len(A.encode_artifact(gptq_t, {}, codec=cfg.quant.codec, pack_bits=cfg.quant.pack_bits))
    ref = len(B.byteshuffle_brotli_reference(B.reference_input(gptq_t)))
    codecs = B.compare_codecs(gptq_t)
    code, code_desc = code_size(cfg)

    print(f"device:{di.device} preset:{cfg.preset} bits:{a.bits} val_tokens:{val.numel() - 1}")
    print(f"{'':24}{'val_bpb':>12}{'gap':>12}{'quant_s':>10}")
    print(f"{'pre-quant (fp32)':24}{pre:12.5f}{'':>12}")
    for m in ("gptq", "rtn"):
        r = rows[m]
        print(f"{m + ' round trip':24}{r['bpb']:12.5f}{r['gap']:12.5f}{r['quant_seconds']:10.1f}")
    ratio = rows["gptq"]["gap"] / rows["rtn"]["gap"] if rows["rtn"]["gap"] else float("nan")
    print(f"gap ratio gptq/rtn: {ratio:.3f}")
    print(
        f"compressed int{a.bits} model: ours({cfg.quant.codec}) {ours} bytes  vs  "
        f"PR#1550 shuffle4+brotli11 {ref} bytes  ratio {ours / ref:.4f}"
    )
    for (codec, stride, packing), size in sorted(codecs["sizes"].items(), key=lambda kv: kv[1]):
        print(f"  codec:{codec:<7} shuffle:{stride} codes:{packing:<6} {size} bytes")
    total = ours + code
    print(
        f"artifact: model {ours} + code {code} = {total} bytes; budget 16,000,000; "
        f"margin {16_000_000 - total}  ({code_desc})"
    )
    if a.out:
        res = {
            "device": str(di.device),
            "torch": torch.__version__,
            "preset": cfg.preset,
            "bits": a.bits,
            "prequant_bpb": pre,
            "gap_ratio": ratio,
            **{f"{m}_{k}": v for m in rows for k, v in rows[m].items() if k != "tensors"},
            "ours_bytes": ours,
            "ref_bytes": ref,
            "code_bytes": code,
            "artifact_bytes": total,
        }
        Path(a.out).write_text(json.dumps(res, indent=2))


def A_roundtrip(tensors):
    """Through the real container and back, as `pgolf eval` would see it."""
    from pgolf import quant

    back, _ = A.decode_artifact(A.encode_artifact(tensors, {}))
    return quant.dequantize_state(back)


if __name__ == "__main__":
    main()
