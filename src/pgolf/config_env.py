"""The challenge's environment variables: which config field each one sets, and which are known
but not supported (reported, never silently ignored).

Three tables, read by `pgolf.config.apply_env` (this module comes before `config` in the bundle and
imports only `pgolf.modes`, the scoring modes' names): `ENV_VARS` maps a variable 1:1 onto
`section.field`; `CONVERTERS` hold the variables whose meaning differs from a field (`XSA_LAST_N` =
the last N layers, `NUM_LOOPS`/`LOOP_START`/`LOOP_END` = #1493's looped segment as a virtual layer
list, `WARMDOWN_ITERS` = a fraction of `ITERATIONS`, ...); `UNSUPPORTED` names the variables of the
baseline, #1493 and #1550 scripts that pgolf has no equivalent for, with the reason. Names come
from the Naive Baseline's and PR #1550's `Hyperparameters` and PR #1493's logged hyperparameters,
except `FINAL_VAL` (pgolf's own: the records have no switch, their loops always validate the live
weights at the last step; pgolf does so only with FINAL_VAL=1, `train.final_val`).
"""

from __future__ import annotations

import os.path
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from pgolf import modes as M

ENV_VARS: dict[str, tuple[str, str]] = {
    "DATA_PATH": ("data", "data_path"),
    "TOKENIZER_PATH": ("data", "tokenizer_path"),
    "VOCAB_SIZE": ("model", "vocab_size"),
    "NUM_LAYERS": ("model", "num_layers"),
    "MODEL_DIM": ("model", "model_dim"),
    "NUM_HEADS": ("model", "num_heads"),
    "NUM_KV_HEADS": ("model", "num_kv_heads"),
    "MLP_MULT": ("model", "mlp_mult"),
    "LOGIT_SOFTCAP": ("model", "logit_softcap"),
    "ROPE_BASE": ("model", "rope_base"),
    "ROPE_DIMS": ("model", "rope_dims"),
    "QK_GAIN_INIT": ("model", "qk_gain_init"),
    "VE_DIM": ("model", "ve_dim"),
    "VE_LAYERS": ("model", "ve_layers"),
    "PARALLEL_START_LAYER": ("model", "parallel_start"),
    "PARALLEL_RESIDUAL_START": ("model", "parallel_start"),
    "RECUR_LAYERS": ("model", "recur_layers"),
    "LN_SCALE": ("model", "ln_scale"),
    "TIE_EMBEDDINGS": ("model", "tie_embeddings"),
    "TIED_EMBED_INIT_STD": ("model", "tied_embed_init_std"),
    "MATRIX_LR": ("optim", "matrix_lr"),
    "SCALAR_LR": ("optim", "scalar_lr"),
    "TIED_EMBED_LR": ("optim", "embed_lr"),
    "EMBED_WD": ("optim", "embed_wd"),
    "ADAM_WD": ("optim", "scalar_wd"),
    "ADAM_WEIGHT_DECAY": ("optim", "scalar_wd"),
    "MUON_WD": ("optim", "muon_wd"),
    "MUON_WEIGHT_DECAY": ("optim", "muon_wd"),
    "BETA1": ("optim", "adam_beta1"),
    "BETA2": ("optim", "adam_beta2"),
    "ADAM_EPS": ("optim", "adam_eps"),
    "MUON_MOMENTUM": ("optim", "muon_momentum"),
    "MUON_MOMENTUM_WARMUP_START": ("optim", "muon_momentum_warmup_start"),
    "MUON_MOMENTUM_WARMUP_STEPS": ("optim", "muon_momentum_warmup_steps"),
    "MUON_BACKEND_STEPS": ("optim", "ns_steps"),
    "MUONEQ_R": ("optim", "muon_row_norm"),
    "WARMDOWN_FRAC": ("optim", "warmdown_frac"),
    "LR_FLOOR": ("optim", "lr_floor"),
    "GRAD_CLIP_NORM": ("optim", "grad_clip_norm"),
    "EMA_DECAY": ("optim", "ema_decay"),
    "SEED": ("train", "seed"),
    "ITERATIONS": ("train", "iterations"),
    "TRAIN_BATCH_TOKENS": ("train", "train_batch_tokens"),
    "TRAIN_SEQ_LEN": ("train", "train_seq_len"),
    "MAX_WALLCLOCK_SECONDS": ("train", "max_wallclock_seconds"),
    "GPTQ_RESERVE_SECONDS": ("train", "reserve_seconds"),
    "WARMUP_STEPS": ("train", "warmup_steps"),
    "VAL_LOSS_EVERY": ("train", "val_loss_every"),
    "FINAL_VAL": ("train", "final_val"),
    "TRAIN_LOG_EVERY": ("train", "train_log_every"),
    "RECUR_START_STEP": ("train", "recur_start_step"),
    "RECUR_START_FRAC": ("train", "recur_start_frac"),
    "ENABLE_LOOPING_AT": ("train", "recur_start_frac"),
    "EVAL_SEQ_LEN": ("eval", "eval_seq_len"),
    "EVAL_STRIDE": ("eval", "eval_stride"),
    "SLIDING_WINDOW_ENABLED": ("eval", "sliding"),
    "SDCLIP_K_INT6": ("quant", "matrix_clip_k"),
    "MATRIX_CLIP_SIGMAS": ("quant", "matrix_clip_k"),
    "SDCLIP_K_INT8": ("quant", "embed_clip_k"),
    "EMBED_CLIP_SIGMAS": ("quant", "embed_clip_k"),
    "MATRIX_BITS": ("quant", "matrix_bits"),
    "EMBED_BITS": ("quant", "embed_bits"),
    "GPTQ_CALIB_SEQS": ("quant", "calib_seqs"),
    "GPTQ_BLOCK_SIZE": ("quant", "block_size"),
    "COMPRESS_METHOD": ("quant", "codec"),
    "TTT_CHUNK_TOKENS": ("ttt", "chunk_tokens"),
    "TTT_MOMENTUM": ("ttt", "momentum"),
    "TTT_FREEZE_BLOCKS": ("ttt", "prequant_freeze_blocks"),
    "TTT_BATCH_SEQS": ("ttt", "prequant_batch_seqs"),
    # PR #1855 (and its #1736/#1787/#1797 bases)
    "CASEOPS_ENABLED": ("data", "caseops"),
    "GATE_WINDOW": ("model", "gate_window"),
    "SPARSE_ATTN_GATE_SCALE": ("model", "attn_gate_scale"),
    "ATTN_OUT_GATE_SRC": ("model", "attn_gate_src"),
    "PARALLEL_FINAL_LANE": ("model", "parallel_final"),
    "GATED_ATTN_QUANT_GATE": ("quant", "gate_int8"),
    "LQER_TOP_K": ("quant", "lqer_top"),
    "LQER_RANK": ("quant", "lqer_top_rank"),
    "LQER_FACTOR_BITS": ("quant", "lqer_sym_bits"),
    "LQER_ASYM_GROUP": ("quant", "lqer_group"),
    "AWQ_LITE_ENABLED": ("quant", "awq"),  # PR #1908's AWQ-lite (pgolf.quant.awq_plan)
    "AWQ_LITE_BITS": ("quant", "awq_bits"),
    "AWQ_LITE_GROUP_TOP_K": ("quant", "awq_top_k"),
    "AWQ_LITE_GROUP_SIZE": ("quant", "awq_group"),
    "TTT_LORA_RANK": ("ttt", "phased_rank"),  # PR #1855's phased TTT (ttt.mode=phased)
    "TTT_LORA_ALPHA": ("ttt", "phased_alpha"),
    "TTT_LORA_LR": ("ttt", "phased_lr"),
    "TTT_WARM_START_A": ("ttt", "phased_warm_a"),
    "TTT_CHUNK_SIZE": ("ttt", "phased_chunk"),
    "TTT_EVAL_SEQ_LEN": ("ttt", "phased_seq_len"),
    "TTT_BATCH_SIZE": ("ttt", "phased_batch_docs"),
    "TTT_GRAD_STEPS": ("ttt", "phased_grad_steps"),
    "TTT_WEIGHT_DECAY": ("ttt", "phased_wd"),
    "TTT_BETA1": ("ttt", "phased_beta1"),
    "TTT_BETA2": ("ttt", "phased_beta2"),
    "TTT_OPTIMIZER": ("ttt", "phased_optimizer"),
    "TTT_K_LORA": ("ttt", "phased_k"),
    "TTT_MLP_LORA": ("ttt", "phased_mlp"),
    "TTT_O_LORA": ("ttt", "phased_o"),
    "PHASED_TTT_PREFIX_DOCS": ("ttt", "phased_prefix_docs"),
    "PHASED_TTT_NUM_PHASES": ("ttt", "phased_phases"),
    "GLOBAL_TTT_LR": ("ttt", "global_lr"),
    "GLOBAL_TTT_MOMENTUM": ("ttt", "global_momentum"),
    "GLOBAL_TTT_EPOCHS": ("ttt", "global_epochs"),
    "GLOBAL_TTT_CHUNK_TOKENS": ("ttt", "global_chunk_tokens"),
    "GLOBAL_TTT_BATCH_SEQS": ("ttt", "global_batch_seqs"),
    "GLOBAL_TTT_WARMUP_START_LR": ("ttt", "global_warmup_start_lr"),
    "GLOBAL_TTT_WARMUP_CHUNKS": ("ttt", "global_warmup_chunks"),
    "GLOBAL_TTT_GRAD_CLIP": ("ttt", "global_grad_clip"),
    "GLOBAL_TTT_RESPECT_DOC_BOUNDARIES": ("ttt", "global_respect_docs"),
    "NGRAM_TILT_ENABLED": ("eval", "ngram_tilt"),  # PR #2135's token n-gram tilt
    "TOKEN_ORDER": ("eval", "ngram_order"),
    "TOKEN_THRESHOLD": ("eval", "ngram_threshold"),
    "TOKEN_BOOST": ("eval", "ngram_boost"),
}
"""Variable -> (section, field), parsed as the field's type."""

Env = Mapping[str, str]
Converter = Callable[[Any, str, Env], Any]


def _flag(raw: str) -> bool:
    return raw.strip().lower() in ("1", "true", "yes", "on")


def _sub(cfg: Any, section: str, **kw: Any) -> Any:
    return replace(cfg, **{section: replace(getattr(cfg, section), **kw)})


def _xsa_last_n(cfg: Any, raw: str, env: Env) -> Any:
    n, layers = int(raw), cfg.model.num_layers
    return _sub(cfg, "model", xsa_layers=tuple(range(max(0, layers - n), layers)))


def _num_loops(cfg: Any, raw: str, env: Env) -> Any:
    """#1493: layers LOOP_START..LOOP_END run 1 + NUM_LOOPS times (0 = no recurrence)."""
    loops, n = int(raw), cfg.model.num_layers
    a, b = int(env.get("LOOP_START") or 3), int(env.get("LOOP_END") or 5)
    if loops <= 0:
        return _sub(cfg, "model", recur_layers=())
    if not 0 <= a <= b < n:
        raise ValueError(f"LOOP_START {a} / LOOP_END {b} must satisfy 0 <= start <= end < {n}")
    seg = list(range(a, b + 1))
    return _sub(cfg, "model", recur_layers=(*range(b + 1), *seg * loops, *range(b + 1, n)))


def _warmdown_iters(cfg: Any, raw: str, env: Env) -> Any:
    frac = min(1.0, int(raw) / max(cfg.train.iterations, 1))
    return _sub(cfg, "optim", warmdown_frac=frac)


def _val_batch_size(cfg: Any, raw: str, env: Env) -> Any:
    # tokens per evaluation batch over the records' 8 GPUs x 1 accumulation step
    return _sub(cfg, "eval", val_batch_seqs=max(1, int(raw) // (8 * cfg.eval.eval_seq_len)))


def _ve_enabled(cfg: Any, raw: str, env: Env) -> Any:
    return cfg if _flag(raw) else _sub(cfg, "model", ve_dim=0, ve_layers=())


def _sigmoid_skips(cfg: Any, raw: str, env: Env) -> Any:
    return _sub(cfg, "model", skip_gate="sigmoid" if _flag(raw) else "none")


def _skip_gates(cfg: Any, raw: str, env: Env) -> Any:
    return _sub(cfg, "model", skip_gate="lerp" if _flag(raw) else "none")


def _run_id(cfg: Any, raw: str, env: Env) -> Any:
    return _sub(cfg, "train", run_dir=f"out/{raw.strip()}")


def _ttt_enabled(cfg: Any, raw: str, env: Env) -> Any:
    """0 -> ttt.mode none; 1 keeps the preset's mode (else score_first)."""
    mode = (cfg.ttt.mode if cfg.ttt.mode != M.NONE else M.SCORE_FIRST) if _flag(raw) else M.NONE
    return _sub(cfg, "ttt", mode=mode)


def _ttt(name: str, conv: Callable[[str], Any]) -> Converter:
    """TTT_LR / TTT_EPOCHS: #1493's SGD values, or #1550's AdamW ones when the mode is prequant."""

    def f(cfg: Any, raw: str, env: Env) -> Any:
        pre = "prequant_" if cfg.ttt.mode == M.PREQUANT else ""
        return _sub(cfg, "ttt", **{pre + name: conv(raw)})

    return f


def _min_lr(cfg: Any, raw: str, env: Env) -> Any:
    return _sub(cfg, "optim", lr_floor=float(raw), lr_floor_mode="max")


def _muon_row_normalize(cfg: Any, raw: str, env: Env) -> Any:
    return _sub(cfg, "optim", muon_row_norm=_flag(raw), muon_row_axis="rows")


PGOLF_CODECS = ("brotli", "lzma", "zstd", "rans", "crans")


def _compressor(cfg: Any, raw: str, env: Env) -> Any:
    name = raw.strip().lower()
    if name == "pergroup":  # #1855's lrzip + brotli per group: reported, brotli stands in
        return _sub(cfg, "quant", codec="brotli")
    if name not in PGOLF_CODECS:
        raise ValueError(f"not one of pergroup, {', '.join(PGOLF_CODECS)}")
    return _sub(cfg, "quant", codec=name)


def _smear_gate_enabled(cfg: Any, raw: str, env: Env) -> Any:
    return _sub(cfg, "model", smear_gate=_flag(raw), smear_form="window")


GATE_VARS = {  # enabling variable -> (model.attn_gate, its init-std variable, record default)
    "SPARSE_ATTN_GATE_ENABLED": ("sparse", "SPARSE_ATTN_GATE_INIT_STD", 0.0),
    "GATED_ATTN_ENABLED": ("dense", "GATED_ATTN_INIT_STD", 0.01),
    "ATTN_OUT_GATE_ENABLED": ("out", "", 0.0),
}


def _attn_gate(var: str) -> Converter:
    form, std_var, std = GATE_VARS[var]

    def f(cfg: Any, raw: str, env: Env) -> Any:
        on = [v for v in GATE_VARS if _flag(env.get(v) or "0")]
        if len(on) > 1:
            raise ValueError(f"{' and '.join(on)} are mutually exclusive (as in #1855)")
        if not _flag(raw):
            return _sub(cfg, "model", attn_gate="none") if cfg.model.attn_gate == form else cfg
        init = float(env.get(std_var) or std) if std_var else 0.0
        return _sub(cfg, "model", attn_gate=form, attn_gate_init_std=init)

    return f


def _gate_init_std(form: str) -> Converter:
    def f(cfg: Any, raw: str, env: Env) -> Any:
        return (
            _sub(cfg, "model", attn_gate_init_std=float(raw))
            if cfg.model.attn_gate == form
            else cfg
        )

    return f


def _set_group_clip(group: str) -> Converter:
    """quant.groups with `group`'s clip_k replaced (other groups and keys kept)."""

    def f(cfg: Any, raw: str, env: Env) -> Any:
        k = float(raw)
        parts = [p.strip() for p in cfg.quant.groups.split(";") if p.strip()]
        out, found = [], False
        for part in parts:
            name, _, body = part.partition("=")
            if name.strip() == group:
                found = True
                items = [
                    i for i in body.split(",") if i.strip() and not i.strip().startswith("clip_k:")
                ]
                body = ",".join([*items, f"clip_k:{k:g}"])
            out.append(f"{name.strip()}={body}")
        if not found:
            out.append(f"{group}=clip_k:{k:g}")
        return _sub(cfg, "quant", groups=";".join(out))

    return f


def _lqer_enabled(cfg: Any, raw: str, env: Env) -> Any:
    """0 -> no #1855 low-rank terms; 1 -> LQER_TOP_K (the preset's, else #1855's 3) tensors."""
    top = (int(env.get("LQER_TOP_K") or 0) or cfg.quant.lqer_top or 3) if _flag(raw) else 0
    return _sub(cfg, "quant", lqer_top=top)


def _lqer_asym(cfg: Any, raw: str, env: Env) -> Any:
    return _sub(cfg, "quant", lqer_top_form="asym" if _flag(raw) else "sym")


def _fused_ce(cfg: Any, raw: str, env: Env) -> Any:
    rows = (cfg.model.fused_ce or FUSED_CE_ROWS) if _flag(raw) else 0
    return _sub(cfg, "model", fused_ce=rows)


FUSED_CE_ROWS = 4096


def _rope_yarn(cfg: Any, raw: str, env: Env) -> Any:
    """#1855's ROPE_YARN is #1550's NTK rescale above ROPE_TRAIN_SEQ_LEN (default 2048)."""
    n = int(env.get("ROPE_TRAIN_SEQ_LEN") or 2048)
    return _sub(cfg, "model", rope_ntk_len=n if _flag(raw) else 0)


def _data_dir(cfg: Any, raw: str, env: Env) -> Any:
    """#1855's layout under DATA_DIR, unless DATA_PATH / TOKENIZER_PATH are given."""
    v, root = cfg.model.vocab_size, raw.strip()
    if cfg.data.caseops:
        name = f"fineweb10B_sp{v}_lossless_caps_caseops_v1_reserved"
        tok = f"fineweb_{v}_bpe_lossless_caps_caseops_v1_reserved.model"
        base = os.path.join(root, "datasets", f"fineweb10B_sp{v}_caseops", "datasets")
        data, tok = os.path.join(base, "datasets", name), os.path.join(base, "tokenizers", tok)
    else:
        data = os.path.join(root, "datasets", f"fineweb10B_sp{v}")
        tok = os.path.join(root, "tokenizers", f"fineweb_{v}_bpe.model")
    kw = {} if env.get("DATA_PATH") else {"data_path": data}
    kw.update({} if env.get("TOKENIZER_PATH") else {"tokenizer_path": tok})
    return _sub(cfg, "data", **kw)


def _artifact_dir(cfg: Any, raw: str, env: Env) -> Any:
    return _sub(cfg, "train", run_dir=raw.strip())


def _calib_batches(cfg: Any, raw: str, env: Env) -> Any:
    """The windows one rank of #1855 reads in N calibration batches (8 GPUs, no accumulation)."""
    per_batch = max(1, cfg.train.train_batch_tokens // (8 * cfg.train.train_seq_len))
    return _sub(cfg, "quant", calib_seqs=int(raw) * per_batch)


CONVERTERS: dict[str, tuple[str, Converter]] = {
    "XSA_LAST_N": ("model.xsa_layers = the last N physical layers", _xsa_last_n),
    "NUM_LOOPS": (
        "model.recur_layers: LOOP_START..LOOP_END (default 3..5) run 1 + N times",
        _num_loops,
    ),
    "WARMDOWN_ITERS": ("optim.warmdown_frac = WARMDOWN_ITERS / ITERATIONS", _warmdown_iters),
    "VAL_BATCH_SIZE": ("eval.val_batch_seqs = tokens // (8 GPUs x eval_seq_len)", _val_batch_size),
    "VE_ENABLED": ("0 -> model.ve_dim 0 and no ve_layers", _ve_enabled),
    "SIGMOID_SKIPS": ("model.skip_gate sigmoid (1) or none (0)", _sigmoid_skips),
    "SKIP_GATES_ENABLED": ("model.skip_gate lerp (1) or none (0)", _skip_gates),
    "RUN_ID": ("train.run_dir = out/<RUN_ID>", _run_id),
    "TTT_ENABLED": ("ttt.mode: 0 none; 1 the preset's mode, else score_first", _ttt_enabled),
    "TTT_LR": ("ttt.lr (ttt.prequant_lr when ttt.mode is prequant)", _ttt("lr", float)),
    "TTT_EPOCHS": ("ttt.epochs (ttt.prequant_epochs when prequant)", _ttt("epochs", int)),
    "MIN_LR": (
        "optim.lr_floor and optim.lr_floor_mode max: lr = max(warm-down ramp, MIN_LR)",
        _min_lr,
    ),
    "MUON_ROW_NORMALIZE": (
        "optim.muon_row_norm with optim.muon_row_axis rows (each matrix's own rows, #1855)",
        _muon_row_normalize,
    ),
    "COMPRESSOR": (
        "quant.codec; pergroup (#1855's lrzip + brotli) is not implemented: brotli instead",
        _compressor,
    ),
    "SMEAR_GATE_ENABLED": (
        "model.smear_gate, model.smear_form window (#1855)",
        _smear_gate_enabled,
    ),
    "SPARSE_ATTN_GATE_ENABLED": (
        "model.attn_gate sparse, model.attn_gate_init_std SPARSE_ATTN_GATE_INIT_STD (default 0)",
        _attn_gate("SPARSE_ATTN_GATE_ENABLED"),
    ),
    "GATED_ATTN_ENABLED": (
        "model.attn_gate dense, model.attn_gate_init_std GATED_ATTN_INIT_STD (default 0.01)",
        _attn_gate("GATED_ATTN_ENABLED"),
    ),
    "ATTN_OUT_GATE_ENABLED": ("model.attn_gate out", _attn_gate("ATTN_OUT_GATE_ENABLED")),
    "SPARSE_ATTN_GATE_INIT_STD": (
        "model.attn_gate_init_std, when the gate is sparse",
        _gate_init_std("sparse"),
    ),
    "GATED_ATTN_INIT_STD": (
        "model.attn_gate_init_std, when the gate is dense",
        _gate_init_std("dense"),
    ),
    "MLP_CLIP_SIGMAS": ("quant.groups mlp=clip_k:X", _set_group_clip("mlp")),
    "ATTN_CLIP_SIGMAS": ("quant.groups attn=clip_k:X", _set_group_clip("attn")),
    "LQER_ENABLED": ("quant.lqer_top: 0, or LQER_TOP_K (default 3)", _lqer_enabled),
    "LQER_ASYM_ENABLED": ("quant.lqer_top_form asym (1) or sym (0)", _lqer_asym),
    "FUSED_CE_ENABLED": (
        f"model.fused_ce: 0, or chunks of {FUSED_CE_ROWS} rows (same arithmetic)",
        _fused_ce,
    ),
    "ROPE_YARN": ("model.rope_ntk_len = ROPE_TRAIN_SEQ_LEN (1) or 0", _rope_yarn),
    "DATA_DIR": ("data.data_path / tokenizer_path in #1855's layout under DATA_DIR", _data_dir),
    "ARTIFACT_DIR": ("train.run_dir", _artifact_dir),
    "VAL_BATCH_TOKENS": (
        "eval.val_batch_seqs = tokens // (8 GPUs x eval_seq_len)",
        _val_batch_size,
    ),
    "GPTQ_CALIBRATION_BATCHES": (
        "quant.calib_seqs = N x train_batch_tokens // (8 x train_seq_len)",
        _calib_batches,
    ),
}
"""Variable -> (what it sets, function(cfg, raw, environ) -> cfg), applied after ENV_VARS in this
order (TTT_ENABLED before TTT_LR/TTT_EPOCHS, which follow the mode)."""

_NOT_BUILT = "not implemented in pgolf (off in the #1550 runs)"
UNSUPPORTED: dict[str, str] = {
    "EMBED_LR": "the baseline's untied input-embedding LR: pgolf trains the embedding and an "
    "untied head with TIED_EMBED_LR (optim.embed_lr)",
    "HEAD_LR": "the baseline's untied-head LR: pgolf uses TIED_EMBED_LR (optim.embed_lr)",
    "MUON_BETA2": "pgolf's Muon has no second-moment state",
    "LOOP_START": "used only with NUM_LOOPS",
    "LOOP_END": "used only with NUM_LOOPS",
    "BIGRAM_VOCAB_SIZE": "BigramHash " + _NOT_BUILT,
    "BIGRAM_DIM": "BigramHash " + _NOT_BUILT,
    "TRIGRAM": _NOT_BUILT,
    "DTG_ENABLED": _NOT_BUILT,
    "GATED_ATTENTION": _NOT_BUILT,
    "VALUE_RESIDUAL": _NOT_BUILT,
    "QAT_ENABLED": "QAT " + _NOT_BUILT,
    "LATE_QAT_THRESHOLD": "late QAT " + _NOT_BUILT,
    "SWA_ENABLED": "SWA: #1550 accumulates it but never uses it; pgolf applies EMA (EMA_DECAY)",
    "SWA_EVERY": "SWA is not implemented (EMA_DECAY)",
    "LAWA_ENABLED": "LAWA " + _NOT_BUILT,
    "LAWA_K": "LAWA " + _NOT_BUILT,
    "LAWA_FREQ": "LAWA " + _NOT_BUILT,
    "MTP_NUM_HEADS": "multi-token prediction " + _NOT_BUILT,
    "MTP_LOSS_WEIGHT": "multi-token prediction " + _NOT_BUILT,
    "SLOT_ENABLED": "SLOT " + _NOT_BUILT,
    "SLOT_LR": "SLOT " + _NOT_BUILT,
    "SLOT_STEPS": "SLOT " + _NOT_BUILT,
    "SLOT_CAUSAL": "SLOT " + _NOT_BUILT,
    "SLOT_DELTA_CLIP": "SLOT " + _NOT_BUILT,
    "SLOT_FOCAL_TOKENS": "SLOT " + _NOT_BUILT,
    "SLOT_LBFGS": "SLOT " + _NOT_BUILT,
    "SLOT_LBFGS_HISTORY": "SLOT " + _NOT_BUILT,
    "SLOT_LBFGS_MAX_ITER": "SLOT " + _NOT_BUILT,
    "ETLB_ENABLED": _NOT_BUILT,
    "ETLB_LR": _NOT_BUILT,
    "ETLB_STEPS": _NOT_BUILT,
    "ETLB_CLIP": _NOT_BUILT,
    "SAVE_RESEARCH_DATA": "no research dump in pgolf",
    "TARGET_MB": "selective ±1 pruning runs offline: `pgolf budget ARTIFACT --prune-to BYTES`",
    "SDCLIP_ENABLED": "SDClip is always on: set SDCLIP_K_INT6 / SDCLIP_K_INT8 instead",
    "GPTQ_CALIB_BATCHES": "use GPTQ_CALIB_SEQS (quant.calib_seqs)",
    "ROPE_TRAIN_SEQ_LEN": "used only with ROPE_YARN",
    "PREQUANT_ONLY": "pgolf runs stages as commands: `pgolf train`, then `pgolf eval`",
    "TTT_EVAL_ONLY": "use `pgolf eval ARTIFACT` to score a saved artifact",
    "NGRAM_HINT_PRECOMPUTE_OUTSIDE": "pgolf builds the n-gram hints inside the eval clock",
    "WITHIN_TAU": "#2135's within-word n-gram channel is not built (token channel only)",
    "WITHIN_BOOST": "#2135's within-word n-gram channel is not built (token channel only)",
    "WORD_TAU": "#2135's word-start n-gram channel is not built (token channel only)",
    "WORD_BOOST": "#2135's word-start n-gram channel is not built (token channel only)",
    "AGREE_ADD_BOOST": "#2135's channel agreement bonus: pgolf has the token channel only",
    "TTT_EVAL_BATCHES": "no debug subset of TTT batches in pgolf",
    "VAL_DOC_FRACTION": "pgolf scores every validation document (data.max_val_tokens: smoke runs)",
    "CONTROL_TENSOR_NAME_PATTERNS": "model.PARAM_ROLES sets the optimizer and quant groups",
}
"""Known variables pgolf cannot honour, with the reason (logged as `not supported: X (why)`)."""


USED_WITH = {"LOOP_START": "NUM_LOOPS", "LOOP_END": "NUM_LOOPS", "ROPE_TRAIN_SEQ_LEN": "ROPE_YARN"}
"""Variables read only by another one's converter: reported only when that one is absent."""


def report(environ: Env) -> list[str]:
    """One line per challenge variable set in `environ` that is not a 1:1 field: what a converter
    did with it, or why it is not supported."""
    out = []
    for var in sorted(environ):
        raw = environ[var]
        if raw == "" or var in ENV_VARS:
            continue
        partner = USED_WITH.get(var, "")
        if var in UNSUPPORTED and not (partner and partner in environ):
            out.append(f"env:not supported: {var}={raw} ({UNSUPPORTED[var]})")
        elif var in CONVERTERS:
            out.append(f"env:{var}={raw} -> {CONVERTERS[var][0]}")
    return out
