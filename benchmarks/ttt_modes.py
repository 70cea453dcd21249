"""Every test-time-training mode on the same trained weights, side by side in one run.

    python benchmarks/ttt_modes.py RUN_DIR [--epochs 1,2,4,6] [--max-val-tokens N] [--json F]
        [--modes none,score_first,lora,phased,tilt,phased_tilt] [--set KEY=VALUE ...]

RUN_DIR is a finished `pgolf train`/`pgolf run` folder (config.json + final_model.safetensors).
The weights are quantized once (the run's quant config) and scored with the sliding window (no
TTT), score-first TTT (PR #1493), per-document LoRA TTT, PR #1855's phased LoRA TTT and the
n-gram tilt (PR #2135), each on its own copy of the weights; then PR #1550's pre-quant AdamW TTT
runs on the unquantized weights, and after each listed epoch the adapted weights are quantized and
scored with the same sliding window. Pre-quant rows are NON-RECORD (Condition 3: they train on
validation tokens before scoring them). Every row gives val_bpb, its difference to the no-TTT row,
the eval (or TTT + quantize + eval) seconds, and the ledger's Condition 3 / 4 verdicts.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import replace
from pathlib import Path

from pgolf import bpb, ngram_tilt, quant
from pgolf import config as C
from pgolf import modes as M
from pgolf import pipeline as P
from pgolf import score as S
from pgolf import ttt as TT
from pgolf.data import load_val_tokens
from pgolf.dist import init, set_quiet


def _quantized(cfg, model, data_dir):
    """Quantize `model` like the run would and return the dequantized model (no file)."""
    tensors = P.quantize_model(cfg, model, data_dir)
    state = quant.dequantize_state(tensors)
    from pgolf.model import graph_state

    return P.model_from_state(
        cfg, state, next(model.parameters()).device, graph_state(model), "benchmark"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run_dir")
    ap.add_argument("--epochs", default="1,2,4,6")
    ap.add_argument("--max-val-tokens", type=int, default=None)
    ap.add_argument("--json", default=None)
    ap.add_argument(
        "--modes",
        default="none,score_first,lora,phased,tilt,phased_tilt",
        help="comma list of none, score_first, lora, phased, tilt, phased_tilt",
    )
    ap.add_argument("--set", action="append", default=[], help="config override KEY=VALUE")
    a = ap.parse_args()
    run = Path(a.run_dir)
    cfg = C.from_dict(json.loads((run / "config.json").read_text()))
    cfg = C.apply_overrides(cfg, a.set)
    if a.max_val_tokens is not None:
        cfg = replace(cfg, data=replace(cfg.data, max_val_tokens=a.max_val_tokens))
    di = init("auto")
    set_quiet(True)
    cfg, data_dir, tok = P.resolve_data(cfg)
    base = P.load_run_model(cfg, run / "final_model.safetensors", di.device)
    e = cfg.eval
    val = load_val_tokens(data_dir, e.eval_seq_len, cfg.data.max_val_tokens, cfg.model.vocab_size)
    tables = bpb.build_byte_tables(str(tok), cfg.model.vocab_size)
    n = val.numel() - 1
    rows = []

    def score(label, mode, model, extra_s=0.0, before=None, tilt=False):
        """Score with `mode` on a copy of `model` (TTT adapts the weights it is given);
        `before` = the pre-quant ledger whose updates preceded it; `tilt`: eval.ngram_tilt."""
        c = replace(cfg, ttt=replace(cfg.ttt, mode=mode))
        c = replace(c, eval=replace(c.eval, ngram_tilt=tilt))
        model = copy.deepcopy(model)
        t0 = time.perf_counter()
        hints = ngram_tilt.build(c, val)  # inside the timed span, as in eval_stage
        s = S.score(model, val, mode, c, tables, di.device, tilt=hints)
        r, ledger = s.result, s.ledger
        secs = time.perf_counter() - t0 + extra_s
        if before is not None:  # the scoring used the weights the last update produced
            last = max((ev["version"] for ev in before.events), default=0)
            ledger = TT.Ledger(
                events=[*before.events, *[dict(ev, version=last) for ev in ledger.events]]
            )
        c3 = not TT.score_before_update(ledger)
        c4 = not TT.single_pass(ledger, n)
        rows.append(
            dict(
                mode=label,
                val_bpb=r.val_bpb,
                val_loss=r.val_loss,
                seconds=secs,
                condition3=c3,
                condition4=c4,
                non_record=before is not None,
            )
        )
        print(
            f"{label:28s} val_bpb:{r.val_bpb:.4f} seconds:{secs:8.1f} C3:{c3} C4:{c4}", flush=True
        )

    q = _quantized(cfg, base, data_dir)
    modes = a.modes.split(",")
    if "none" in modes:
        score("none (sliding)", M.NONE, q)
    if "score_first" in modes:
        score("score_first", M.SCORE_FIRST, q)
    if "lora" in modes:
        score("lora", M.LORA, q)
    if "phased" in modes:
        score("phased", M.PHASED, q)
    if "tilt" in modes:
        score("none + ngram tilt", M.NONE, q, tilt=True)
    if "phased_tilt" in modes:
        score("phased + ngram tilt", M.PHASED, q, tilt=True)

    epochs = sorted({int(x) for x in a.epochs.split(",") if x})
    if epochs:
        pc = replace(cfg, ttt=replace(cfg.ttt, mode=M.PREQUANT, prequant_epochs=max(epochs)))
        t_start = time.perf_counter()
        spent = {"eval": 0.0}  # quantize + score time of earlier epochs, not TTT time
        pre_ledger = TT.Ledger()

        def on_epoch(epoch: int, net) -> None:
            if epoch in epochs:
                ttt_s = time.perf_counter() - t_start - spent["eval"]
                t0 = time.perf_counter()
                qe = _quantized(pc, net, data_dir)
                score(
                    f"prequant {epoch} ep (NON-RECORD)",
                    M.NONE,
                    qe,
                    extra_s=ttt_s + time.perf_counter() - t0,
                    before=TT.Ledger(events=list(pre_ledger.events)),
                )
                spent["eval"] += time.perf_counter() - t0

        TT.prequant_ttt(pc, base, val, di.device, on_epoch=on_epoch, ledger=pre_ledger)

    ref = rows[0]["val_bpb"]
    print("\n| mode | val_bpb | vs no TTT | seconds | Condition 3 | Condition 4 |")
    print("| --- | ---: | ---: | ---: | --- | --- |")
    for r in rows:
        print(
            f"| {r['mode']} | {r['val_bpb']:.4f} | {r['val_bpb'] - ref:+.4f} | "
            f"{r['seconds']:.1f} | {'pass' if r['condition3'] else 'FAIL'} | "
            f"{'pass' if r['condition4'] else 'FAIL'} |"
        )
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
