"""`pgolf eval RUN_DIR --weights final|checkpoint` (or `pgolf eval FILE.safetensors`): score a
run's unquantized weights with the evaluator the run itself uses (`pgolf.score.evaluate_model`:
plain round trip, sliding window; then `pgolf.score.adapt_and_score`, the eval-time TTT mode,
score-first of PR #1493 or LoRA, with its ledger's conditions).

`final_model.safetensors` holds the weights the run quantized (the EMA weights when EMA was on);
its plain score recomputes the run's `DIAGNOSTIC post_ema` line and `val_bpb_prequant`. The lines
carry the `pre_quant` label the run uses and the scores go to result.json under the run's own
`val_bpb_prequant` / `val_loss_prequant` keys (sliding window and TTT: `..._prequant_sliding`,
`..._prequant_ttt`). A checkpoint is scored on its EMA copy when it kept one, else on its live
weights (`checkpoint_ema` / `checkpoint_live` lines), result.json is left alone. The CLI logs
every such pass in the run's `later_evals.txt`, never in its log.txt (pgolf.runlog).
The config is the run folder's `config.json`; weights that do not fit it are refused.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from pgolf import config as C
from pgolf.runlog import RUN_FILES, RunDir

WEIGHTS = {"final": "final", "checkpoint": "checkpoint"}
"""`--weights` choice -> the run folder file role (`pgolf.runlog.RUN_FILES`)."""


def locate(target: Path, which: str | None) -> tuple[Path, RunDir]:
    """(weights file, its run folder) for `RUN_DIR` + `which`, or a `.safetensors` file."""
    if target.is_dir():
        weights = RunDir(target, create=False).file(WEIGHTS[which or "final"])
    elif which is not None:
        raise ValueError(
            f"--weights {which} takes a run folder, not the file {target}: pass the "
            f"folder, or the weights file alone"
        )
    else:
        weights = target
    if not weights.is_file():
        raise FileNotFoundError(
            f"{weights} not found: pass a finished `pgolf train`/`pgolf run` "
            "folder, or its final_model/checkpoint .safetensors"
        )
    run = RunDir.find(weights)
    if run is None:
        raise FileNotFoundError(
            f"{weights.parent / RUN_FILES['config']} not found: the weights {weights} are scored "
            "with the config of the run that wrote them; keep them in its folder"
        )
    return weights, run


def load_weights(cfg: C.RunConfig, weights: Path, cfg_file: Path, device: torch.device):
    """(model, label) for a final weights file or a checkpoint (its EMA copy if kept)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from pgolf import checkpoint as CK
    from pgolf.pipeline import model_from_state

    try:
        with safe_open(str(weights), "pt") as f:
            md = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error type for a foreign file
        raise ValueError(f"{weights} is not a readable .safetensors file ({e})") from e
    if md.get("format") == CK.FORMAT:
        ck = CK.load_checkpoint(weights)
        state, meta, label = dict(ck.model), ck.meta, "checkpoint_live"
        if ck.ema is not None:  # the EMA shadow (fp32), cast as `EMA.copy_to` does
            state.update({k: v.to(state[k].dtype) for k, v in ck.ema.items() if k in state})
            label = "checkpoint_ema"
    else:
        state, meta, label = load_file(str(weights)), json.loads(md.get("meta", "{}")), "pre_quant"
    try:
        return model_from_state(cfg, state, device, meta, str(weights)), label
    except ValueError as e:
        raise ValueError(
            f"{weights} does not fit the config {cfg_file} ({e}); score weights with "
            "the config.json of the run that wrote them (keep them in its folder)"
        ) from e


def eval_weights(
    target: str | Path,
    which: str | None = None,
    data: str | None = None,
    stride: int | None = None,
    sliding: bool = True,
    ttt: str | None = None,
) -> dict[str, Any]:
    """Score the weights (see the module docstring) -> {label, val_bpb_prequant..., weights}."""
    from pgolf import bpb
    from pgolf import score as S
    from pgolf.data import find_tokenizer, load_val_tokens, sha256_file
    from pgolf.dist import init

    weights, run = locate(Path(target), which)
    cfg_file, cfg = run.config_path, run.config()
    if stride is not None:
        cfg = replace(cfg, eval=replace(cfg.eval, eval_stride=stride))
    cfg = cfg if ttt is None else replace(cfg, ttt=replace(cfg.ttt, mode=ttt))
    C.validate(cfg)
    di = init("auto")
    model, label = load_weights(cfg, weights, cfg_file, di.device)
    data_dir = Path(data or cfg.data.data_path)
    tok, run_tok = Path(cfg.data.tokenizer_path), Path(cfg.data.tokenizer_path)
    if data:
        tok = find_tokenizer(data_dir)
        if run_tok.is_file() and sha256_file(tok) != sha256_file(run_tok):
            raise ValueError(
                f"{tok} is not the tokenizer {weights} was trained with "
                f"({run_tok}): score it on validation shards made with the run's "
                "tokenizer"
            )
    bpb.check_tokenizer(data_dir, tok)  # present, and the one the folder's manifest lists
    V = cfg.model.vocab_size
    val = load_val_tokens(data_dir, cfg.eval.eval_seq_len, cfg.data.max_val_tokens, V)
    tables = bpb.with_sidecar(
        bpb.build_byte_tables(str(tok), V), data_dir, val.numel(), cfg.data.caseops
    )
    r = S.evaluate_model(cfg, model, val, tables, label, sliding, di.device)
    key = "prequant" if label == "pre_quant" else label
    out: dict[str, Any] = {
        "weights": str(weights),
        "weights_label": label,
        f"val_bpb_{key}": r["roundtrip_bpb"],
        f"val_loss_{key}": r["roundtrip_loss"],
    }
    if sliding:
        out[f"val_bpb_{key}_sliding"], out[f"val_loss_{key}_sliding"] = (
            r["sliding_bpb"],
            r["sliding_loss"],
        )
    # after the plain scores: TTT adapts the model
    if (got := S.adapt_and_score(cfg, model, val, tables, di.device, f"{label}_ttt")) is not None:
        out[f"val_bpb_{key}_ttt"], out[f"val_loss_{key}_ttt"] = got[0].val_bpb, got[0].val_loss
    return out
