"""Configuration: frozen dataclasses, named presets, and the environment/CLI overlay.

One dataclass per concern (data, model, optimizer, training, evaluation, quantization), nested in
`RunConfig`. Presets are plain Python functions (`cpu-tiny`, `baseline`, `pr1493`, `pr1550`);
variants are `dataclasses.replace` of a base. Precedence: preset < environment variables (the
challenge's own names, e.g. `SEED`, `VOCAB_SIZE`, `MAX_WALLCLOCK_SECONDS`) < `--set key=value`.

Sources of the preset values: the Naive Baseline record, PR #1493 (merged legal-TTT record) and
PR #1550 (pre-quant TTT stack); see `../shared/spec/pr1550-stack.md` sections 3-5.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from pgolf import config_env as E
from pgolf import modes as M
from pgolf.quantplan import QuantPlan

# ----------------------------------------------------------------------------------------------
# Sections


@dataclass(frozen=True, kw_only=True, slots=True)
class DataConfig:
    data_path: str = ""  # folder of *_{train,val}_NNNNNN.bin shards ('' = embedded default)
    tokenizer_path: str = ""  # SentencePiece .model; '' = the one in or beside data_path
    loader: str = "stream"  # 'stream' (sequential, #1550) or 'shuffled' (windows, #1493)
    train_shards: int = 0  # use only the first N train shards (0 = all)
    max_val_tokens: int = 0  # truncate the val stream (0 = all); smoke runs only
    caseops: bool = False  # CaseOps data (#1855): val bytes from the byte sidecar, required


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelConfig:
    vocab_size: int = 8192
    num_layers: int = 11  # physical layers (distinct weights)
    model_dim: int = 512
    num_heads: int = 8
    num_kv_heads: int = 4
    mlp_mult: float = 4.0
    activation: str = "leaky_relu2"  # 'relu2' or LeakyReLU(slope)^2 (#1493/#1550)
    leaky_slope: float = 0.5
    tie_embeddings: bool = True
    tied_embed_init_std: float = 0.005
    logit_softcap: float = 30.0
    rope_dims: int = 16  # Rotary dims per head (partial RoPE); 0 = the whole head.
    rope_base: float = 10000.0  # at every length (not #1550's NTK rescale, 22,082 at 2048)
    rope_ntk_len: int = 0  # N > 0 copies #1550's NTK rescale above N tokens (parity checks only)
    qk_gain_init: float = 5.25
    ln_scale: bool = True  # Scale each block's normed input by 1/sqrt(layer+1).
    xsa_layers: tuple[int, ...] = tuple(range(11))  # Exclusive Self Attention, arXiv:2603.09078
    ve_dim: int = 44  # value-embedding table width (0 = off)
    ve_layers: tuple[int, ...] = (9, 10)
    smear_gate: bool = True
    smear_form: str = "channel"  # 'channel' (#1550, after the norm) or 'window' (#1855, below)
    gate_window: int = 12  # #1855: the first N channels feed the smear and attention gates
    attn_gate: str = "none"  # per-head output gate: none, sparse (#1787), dense (#1736), out
    attn_gate_scale: float = 1.0  # sparse: sigmoid(scale * W x[:gate_window]) (#1855: 0.5)
    attn_gate_init_std: float = 0.0  # 0 = zero init; N(0, std^2) otherwise
    attn_gate_src: str = "proj"  # 'out' gate input: the block input ('proj') or raw q ('q')
    unet_skips: bool = True
    num_skip_weights: int = -1  # -1 = num_layers // 2 (#1550); #1493: 8 (looped enc/dec split)
    skip_gate: str = "none"  # 'none' w*skip, 'sigmoid' (#1550 SIGMOID_SKIPS), 'lerp' (#1493)
    parallel_residual: str = "lanes"  # none, lanes (#1550), gptj (#1493), lanes2x2 (#1855)
    parallel_final: str = "mean"  # lanes2x2 output: mean of the lanes, or the 'attn'/'mlp' lane
    parallel_start: int = 7  # first physical layer that runs in parallel-residual form
    recur_layers: tuple[int, ...] = ()  # virtual layers once recurrence is on (physical ids)
    attn_backend: str = "auto"  # auto (FA3, else fastest SDPA), sdpa[:kernel[+repeat]], fa3, naive
    fused_ce: int = 0  # N > 0: chunked softcapped CE, N rows at a time (no fp32 [B,T,V] logits)
    doc_mask: bool = False  # Mask attention across BOS document boundaries (off in every record).
    bos_id: int = 1


@dataclass(frozen=True, kw_only=True, slots=True)
class OptimConfig:
    matrix_lr: float = 0.022
    muon_momentum: float = 0.99
    muon_momentum_warmup_start: float = 0.92
    muon_momentum_warmup_steps: int = 1500
    muon_wd: float = 0.095
    muon_nesterov: bool = True
    ns_coeffs: str = "polar_express"  # per-iteration (arXiv:2505.16932) or 'quintic'
    ns_steps: int = 4
    muon_row_norm: bool = True  # MuonEq-R: normalise update rows before Newton-Schulz
    muon_row_axis: str = "wide"  # rows of the wide-oriented matrix (#1550) or 'rows' (#1855)
    embed_lr: float = 0.03  # AdamW LR, tied embedding + value-embedding table (TIED_EMBED_LR)
    embed_wd: float = 0.095
    scalar_lr: float = 0.02
    scalar_wd: float = 0.02
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    grad_clip_norm: float = 0.3  # global norm clip on the averaged gradient (0 = off)
    warmdown_frac: float = 0.72  # LR falls linearly over the last fraction (train.schedule)
    lr_floor: float = 0.0
    lr_floor_mode: str = "lerp"  # warm-down ends at lr_floor ('lerp') or max(ramp, floor) (#1855)
    ema_decay: float = 0.9965  # 0 = no EMA


@dataclass(frozen=True, kw_only=True, slots=True)
class TrainConfig:
    seed: int = 1337
    iterations: int = 20000
    train_batch_tokens: int = 786432  # global tokens per optimizer step (all ranks, accum.)
    train_seq_len: int = 2048
    grad_accum_steps: int = 0  # 0 = 8 // world_size (one GPU reproduces the 8-GPU batch)
    max_wallclock_seconds: float = 600.0
    schedule: str = "time"  # LR/recurrence progress: 'time' = max(clock, step), 'steps' = step
    reserve_seconds: float = 0.0  # of the budget, kept for Hessians (GPTQ_RESERVE_SECONDS)
    warmup_steps: int = 20  # compile warm-up steps; weights, optimizer, loader reset after
    val_loss_every: int = 4000
    final_val: bool = False  # validate the live weights at the last step, as the records do
    train_log_every: int = 500
    recur_start_step: int = -1  # recurrence on after this step (-1 = use recur_start_frac)
    recur_start_frac: float = -1.0  # ... or after this fraction of the budget (-1 = never)
    compile: bool = True
    device: str = "auto"
    checkpoint_every: int = 0  # resumable checkpoint every N steps (0 = only at the end)
    run_dir: str = ""  # '' = out/<date>_<preset>_s<seed>


@dataclass(frozen=True, kw_only=True, slots=True)
class EvalConfig:
    eval_seq_len: int = 2048
    eval_stride: int = 64
    val_batch_seqs: int = 32
    sliding: bool = True
    ngram_tilt: bool = False  # #2135's causal token n-gram tilt on the scored distribution
    ngram_order: int = 16  # tokens of the n-gram (context = order - 1 previous tokens)
    ngram_threshold: float = 0.8  # tilt only where the n-gram's top-token share is at least this
    ngram_boost: float = 2.625  # log-boost of the hinted token before renormalization


@dataclass(frozen=True, kw_only=True, slots=True)
class QuantConfig:
    method: str = "gptq"  # 'gptq' or 'rtn'
    matrix_bits: int = 6
    matrix_clip_k: float = 12.85
    embed_bits: int = 8
    embed_clip_k: float = 20.0
    embed_method: str = "gptq"  # 'gptq' (output-side Hessian, #1493) or 'rtn' (#1550)
    passthrough_numel: int = 65536  # tensors with at most this many elements: fp16
    calib: str = "train"  # 'train' (training batches, #1493) or 'selfgen' (sampled, #1550)
    calib_seqs: int = 32
    calib_temperature: float = 0.8
    block_size: int = 128
    damp: float = 0.01
    act_order: bool = True
    codec: str = "brotli"  # brotli/lzma/zstd; rans/crans: codes entropy-coded, the rest brotli
    pack_bits: bool = False  # bit-pack integer codes instead of one byte per code
    lqer: str = ""  # low-rank GPTQ-error terms: group:rank list, e.g. "mlp:8,attn:4" (pgolf.lqer)
    groups: str = ""  # per-group plan, e.g. "mlp=bits:5;embed=method:rtn" (pgolf.quantplan)
    gate_int8: bool = False  # attention gate weights int8 per row, not fp16 (#1736 quant gate)
    lqer_top: int = 0  # #1855 low-rank terms: plain SVD of the error, on the N largest ‖E‖
    lqer_top_rank: int = 4  # their rank (LQER_RANK)
    lqer_top_form: str = "asym"  # 'asym': A one scale, B one per group; 'sym': per-row scales
    lqer_a_bits: int = 2  # asym: A bits (one scale per matrix)
    lqer_b_bits: int = 4  # asym: B bits, one scale per lqer_group entries
    lqer_group: int = 64
    lqer_sym_bits: int = 4  # sym form (or B not divisible by lqer_group): bits of both factors
    awq: bool = False  # #1908 AWQ-lite: the most salient column groups kept at awq_bits in GPTQ
    awq_bits: int = 8  # bits of the promoted column groups (AWQ_LITE_BITS)
    awq_top_k: int = 1  # column groups promoted, over all GPTQ matrices together (#1908)
    awq_group: int = 64  # columns per group (AWQ_LITE_GROUP_SIZE)
    byte_budget: int = 16_000_000


@dataclass(frozen=True, kw_only=True, slots=True)
class TTTConfig:
    """pgolf.ttt; mode none | score_first (#1493) | lora (#1530/#1610) | prequant (#1550)."""

    mode: str = M.NONE  # none | score_first | lora | prequant (pgolf.modes.TTT_MODES)
    chunk_tokens: int = 32768  # score_first: chunk of the val stream (TTT_CHUNK_TOKENS)
    lr: float = 0.005  # score_first SGD (TTT_LR), cosine over chunks; also the phased SGD
    momentum: float = 0.9
    epochs: int = 3  # score_first epochs per chunk (TTT_EPOCHS)
    grad_clip: float = 1.0
    lora_rank: int = 8
    lora_targets: str = "q,v"  # comma list of q,k,v,o,fc,mlp_proj
    lora_lr: float = 0.01
    lora_chunk: int = 256  # tokens scored then trained on per step, per document
    lora_batch_docs: int = 64
    lora_init: str = "reset"  # 'reset' per batch of docs, or 'warm' (previous batch's mean)
    phased_docs: int = 0  # >0: after this many docs are scored, SGD the base on exactly them
    prequant_lr: float = 5e-4  # AdamW, cosine per epoch to prequant_min_lr
    prequant_min_lr: float = 5e-5
    prequant_epochs: int = 6
    prequant_freeze_blocks: int = 2  # TTT_FREEZE_BLOCKS
    prequant_seq_len: int = 2048
    prequant_batch_seqs: int = 32  # global sequences per step (TTT_BATCH_SEQS)
    eval_budget_seconds: float = 600.0
    # mode 'phased': PR #1855's phased score-first LoRA TTT (pgolf.ttt_phased); record env names
    phased_rank: int = 80  # TTT_LORA_RANK
    phased_alpha: float = 144.0  # TTT_LORA_ALPHA: LoRA output scale alpha / rank
    phased_lr: float = 1e-4  # TTT_LORA_LR (constant)
    phased_warm_a: bool = True  # TTT_WARM_START_A: A kept across documents, only B reset
    phased_chunk: int = 48  # TTT_CHUNK_SIZE: targets scored, then trained on, per step
    phased_seq_len: int = 0  # TTT_EVAL_SEQ_LEN: context window (0 = eval.eval_seq_len)
    phased_batch_docs: int = 64  # TTT_BATCH_SIZE: documents per batch (one per row)
    phased_grad_steps: int = 1  # TTT_GRAD_STEPS per chunk
    phased_wd: float = 0.5  # TTT_WEIGHT_DECAY (AdamW, decoupled)
    phased_beta1: float = 0.0  # TTT_BETA1
    phased_beta2: float = 0.99  # TTT_BETA2
    phased_optimizer: str = "adam"  # TTT_OPTIMIZER: 'adam' (AdamW) or 'sgd' (momentum beta1)
    phased_k: bool = True  # TTT_K_LORA: LoRA on K too (Q and V always)
    phased_mlp: bool = True  # TTT_MLP_LORA: bypass LoRA beside the MLP, fed its normed input
    phased_o: bool = True  # TTT_O_LORA: bypass LoRA beside attention, fed its normed input
    phased_prefix_docs: int = 2500  # PHASED_TTT_PREFIX_DOCS: documents the global phases see
    phased_phases: int = 3  # PHASED_TTT_NUM_PHASES: cumulative global-SGD phases
    phased_seed: int = 0  # generator of the LoRA A initialisation
    phased_order: str = "length"  # 'length' (the record: longest batch first) or 'stream' (C1)
    global_lr: float = 0.001  # GLOBAL_TTT_LR: SGD on already-scored documents, cosine
    global_momentum: float = 0.9  # GLOBAL_TTT_MOMENTUM
    global_epochs: int = 1  # GLOBAL_TTT_EPOCHS
    global_chunk_tokens: int = 32768  # GLOBAL_TTT_CHUNK_TOKENS: LR steps over chunks of this
    global_batch_seqs: int = 32  # GLOBAL_TTT_BATCH_SEQS: sequences per SGD step
    global_warmup_start_lr: float = 0.0  # GLOBAL_TTT_WARMUP_START_LR
    global_warmup_chunks: int = 0  # GLOBAL_TTT_WARMUP_CHUNKS
    global_grad_clip: float = 1.0  # GLOBAL_TTT_GRAD_CLIP (0 = off)
    global_respect_docs: bool = True  # GLOBAL_TTT_RESPECT_DOC_BOUNDARIES: mask attention at BOS


@dataclass(frozen=True, kw_only=True, slots=True)
class RunConfig:
    preset: str = "custom"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    ttt: TTTConfig = field(default_factory=TTTConfig)


SECTIONS = ("data", "model", "optim", "train", "eval", "quant", "ttt")
SECTION_CLASSES: dict[str, type] = dict(
    zip(
        SECTIONS,
        (DataConfig, ModelConfig, OptimConfig, TrainConfig, EvalConfig, QuantConfig, TTTConfig),
    )
)

# ----------------------------------------------------------------------------------------------
# Presets


def pr1550() -> RunConfig:
    """PR #1550: 11L x 512d, SP8192, VE 44 at 9-10, lanes from 7, recurrence 3-5 at step 3000.

    Quantization as #1550 (int6 GPTQ k 12.85, self-generated calibration) except the tied
    embedding: GPTQ with the head-side Hessian (#1493) instead of #1550's plain SDClip rounding;
    `--set quant.embed_method=rtn` gives #1550's choice."""
    return RunConfig(
        preset="pr1550",
        model=ModelConfig(recur_layers=(0, 1, 2, 3, 4, 5, 3, 4, 5, 6, 7, 8, 9, 10)),
        train=TrainConfig(recur_start_step=3000),
        quant=QuantConfig(calib="selfgen"),
        ttt=TTTConfig(mode=M.PREQUANT),  # faithful to #1550, hence non-record (Condition 3)
    )


def pr1493() -> RunConfig:
    """PR #1493: no SmearGate/VE, gated skips (8), GPT-J parallel from 7, layers 3-5 x3 at 35%."""
    base = pr1550()
    return replace(
        base,
        preset="pr1493",
        data=replace(base.data, loader="shuffled"),
        model=replace(
            base.model,
            ve_dim=0,
            ve_layers=(),
            smear_gate=False,
            num_skip_weights=8,
            skip_gate="lerp",
            parallel_residual="gptj",
            recur_layers=(0, 1, 2, 3, 4, 5, 3, 4, 5, 3, 4, 5, 6, 7, 8, 9, 10),
        ),
        optim=replace(base.optim, embed_wd=0.085, ns_coeffs="quintic", ns_steps=5),
        train=replace(base.train, recur_start_step=-1, recur_start_frac=0.35, reserve_seconds=12.0),
        quant=replace(base.quant, calib="train"),
        ttt=TTTConfig(mode=M.SCORE_FIRST),
    )


def pr1855() -> RunConfig:
    """PR #1855 (val_bpb 1.06108, the best merged record on 2026-05-02), its logged settings:
    #1493's trunk with QK gain 5.0, window SmearGate and sparse attention gate (scale 0.5) from
    the first 12 channels, #1797's 2x2 lanes from layer 8, document-isolated attention, MuonEq-R
    on rows with momentum 0.97, LR floor max(warm-down, 0.1), GPTQ int6 (clip 11.5 mlp / 13
    attn) with int7 embeddings (clip 14), int8 gates, asymmetric rank-4 low-rank terms on the 3
    largest errors, CaseOps data. Not reproduced: its lrzip per-group compressor (brotli here),
    its fused Triton kernels (same arithmetic). Its phased LoRA TTT: ttt.mode=phased."""
    base = pr1493()
    return replace(
        base,
        preset="pr1855",
        data=replace(base.data, loader="stream", caseops=True),
        model=replace(
            base.model,
            qk_gain_init=5.0,
            smear_gate=True,
            smear_form="window",
            gate_window=12,
            attn_gate="sparse",
            attn_gate_scale=0.5,
            parallel_residual="lanes2x2",
            parallel_start=8,
            doc_mask=True,
        ),
        optim=replace(
            base.optim,
            matrix_lr=0.026,
            muon_momentum=0.97,
            ns_coeffs="polar_express",
            ns_steps=5,
            muon_row_axis="rows",
            adam_beta2=0.99,
            warmdown_frac=0.85,
            lr_floor=0.1,
            lr_floor_mode="max",
        ),
        train=replace(base.train, reserve_seconds=0.5, val_loss_every=0),
        quant=replace(
            base.quant,
            calib="train",
            calib_seqs=16 * 48,  # 16 batches of 48 windows (GPTQ_CALIBRATION_BATCHES=16)
            embed_bits=7,
            embed_clip_k=14.0,
            groups="mlp=clip_k:11.5;attn=clip_k:13",
            gate_int8=True,
            lqer_top=3,
        ),
        ttt=replace(
            base.ttt,
            mode=M.PHASED,  # pgolf.ttt_phased; the TTTConfig defaults are #1855's values
        ),
    )


def baseline() -> RunConfig:
    """The Naive Baseline record: SP1024, 9L x 512d, MLP 2x ReLU^2, full RoPE, int8 + zlib era."""
    return RunConfig(
        preset="baseline",
        model=ModelConfig(
            vocab_size=1024,
            num_layers=9,
            mlp_mult=2.0,
            activation="relu2",
            rope_dims=0,
            qk_gain_init=1.5,
            ln_scale=False,
            xsa_layers=(),
            ve_dim=0,
            ve_layers=(),
            smear_gate=False,
            parallel_residual="none",
        ),
        optim=OptimConfig(
            matrix_lr=0.04,
            muon_momentum=0.95,
            muon_momentum_warmup_start=0.85,
            muon_momentum_warmup_steps=500,
            muon_wd=0.0,
            ns_coeffs="quintic",
            ns_steps=5,
            muon_row_norm=False,
            embed_lr=0.05,
            embed_wd=0.0,
            scalar_lr=0.04,
            scalar_wd=0.0,
            grad_clip_norm=0.0,
            warmdown_frac=0.087,
            ema_decay=0.0,
        ),
        train=TrainConfig(train_batch_tokens=524288, train_seq_len=1024),
        eval=EvalConfig(eval_seq_len=1024, sliding=False),
        quant=QuantConfig(method="rtn", matrix_bits=8, matrix_clip_k=0.0, embed_method="rtn"),
    )


def cpu_tiny() -> RunConfig:
    """Minutes on 2 CPU cores: the full #1550 feature set at toy size, on the embedded default.

    Capped by 440 steps (a quiet 2-core machine's 443 in the former 150 s), LR by step progress:
    the same model on any machine; 600 s of wall clock is a safety limit, logged when it binds.

    Chosen by measurement on 2 cores (dev/LOG.md): at 150 s, 4L x 128d with a 512-piece vocabulary
    reached 1.750 bpb (1.740 with 4,096-token steps instead of 8,192), against 1.798 for 4L x 160d
    (same vocab) and 1.892 for 6L x 192d at vocab 1024."""
    base = pr1550()
    return replace(
        base,
        preset="cpu-tiny",
        model=replace(
            base.model,
            vocab_size=512,
            num_layers=4,
            model_dim=128,
            num_heads=4,
            num_kv_heads=2,
            mlp_mult=3.0,
            rope_dims=16,
            xsa_layers=tuple(range(4)),
            ve_dim=32,
            ve_layers=(2, 3),
            parallel_start=2,
            recur_layers=(0, 1, 2, 1, 2, 3),
            attn_backend="sdpa",
        ),
        optim=replace(
            base.optim,
            matrix_lr=0.03,
            embed_lr=0.05,
            scalar_lr=0.03,
            muon_momentum_warmup_steps=100,
            ema_decay=0.98,
        ),
        train=replace(
            base.train,
            train_batch_tokens=4096,
            train_seq_len=256,
            grad_accum_steps=1,
            iterations=440,
            max_wallclock_seconds=600.0,
            schedule="steps",
            warmup_steps=0,
            val_loss_every=0,
            train_log_every=50,
            recur_start_step=-1,
            recur_start_frac=0.5,
            compile=False,
            device="cpu",
        ),
        eval=replace(base.eval, eval_seq_len=256, eval_stride=128, val_batch_seqs=16),
        quant=replace(base.quant, calib_seqs=16, passthrough_numel=4096),
        ttt=TTTConfig(chunk_tokens=8192, lora_chunk=128, prequant_seq_len=256),
    )


PRESETS: dict[str, Callable[[], RunConfig]] = {
    "cpu-tiny": cpu_tiny,
    "baseline": baseline,
    "pr1493": pr1493,
    "pr1550": pr1550,
    "pr1855": pr1855,
}


def preset(name: str) -> RunConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]()


# ----------------------------------------------------------------------------------------------
# Environment overlay: the challenge's variable names -> (section, field)

ENV_VARS = E.ENV_VARS  # the tables live in pgolf.config_env


def parse_value(type_str: Any, raw: str) -> Any:
    """Parse a string into the type named by a dataclass field annotation (a string here)."""
    t = str(type_str)
    raw = raw.strip()
    if t == "bool":
        low = raw.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(f"not a boolean: {raw!r}")
    if t == "int":
        v = float(raw) if "e" in raw.lower() else int(raw)  # 1e400: OverflowError
        return int(v) if v == int(v) else int(raw)  # int('1.5e0') raises ValueError
    if t == "float":
        if math.isnan(v := float(raw)):
            raise ValueError("NaN is not a usable value")
        return v
    if t.startswith("tuple[int"):
        raw = raw.strip("()[] ")
        return tuple(int(x) for x in raw.replace(" ", ",").split(",") if x.strip())
    return raw


def set_field(cfg: RunConfig, key: str, raw: str) -> RunConfig:
    """Return cfg with `key` (`section.field` or a field name unique across sections) set."""
    return set_value(cfg, *resolve_key(key), raw)


def resolve_key(key: str) -> tuple[str, str]:
    """A user's key (`--set`, a plan's override) -> (section, field); ValueError naming the
    closest keys for a misspelt one."""
    classes = SECTION_CLASSES
    if "." in key:
        section, name = key.split(".", 1)
        if section not in classes:
            raise ValueError(f"unknown config section {section!r} in {key!r}")
    else:
        owners = [s for s, c in classes.items() if name_in(c, key)]
        if not owners:
            raise ValueError(f"unknown config key {key!r}{_nearest(key)}")
        if len(owners) > 1:
            raise ValueError(f"ambiguous key {key!r}: use one of {[o + '.' + key for o in owners]}")
        section, name = owners[0], key
    if not name_in(classes[section], name):
        raise ValueError(f"unknown config key {key!r}{_nearest(key)}")
    return section, name


def set_value(cfg: RunConfig, section: str, name: str, raw: str) -> RunConfig:
    """Return cfg with the known field `section.name` parsed from `raw` (the environment's
    table names only known fields, so `apply_env` comes here without resolving a key)."""
    ftype = next(f.type for f in fields(SECTION_CLASSES[section]) if f.name == name)
    try:
        value = parse_value(ftype, raw)
    except (ValueError, OverflowError) as e:
        raise ValueError(f"{section}.{name}={raw!r} is not a valid {ftype} ({e})") from None
    sub = replace(getattr(cfg, section), **{name: value})
    return replace(cfg, **{section: sub})


def _nearest(key: str) -> str:
    """'; did you mean ...' with the closest field names (difflib), or ''."""
    import difflib

    names = [f"{s}.{f.name}" for s, c in SECTION_CLASSES.items() for f in fields(c)]
    pool = names if "." in key else [n.split(".", 1)[1] for n in names]
    near = difflib.get_close_matches(key, pool, n=3, cutoff=0.6)
    return (
        f"; did you mean {', '.join(near)}? (`pgolf config show` lists every key)"
        if near
        else ("; `pgolf config show` lists every key")
    )


def name_in(cls: type, name: str) -> bool:
    return any(f.name == name for f in fields(cls))


def apply_env(cfg: RunConfig, environ: Mapping[str, str] | None = None) -> RunConfig:
    """The challenge's variables (`pgolf.config_env`): 1:1 fields first, then the converters;
    `config_env.report` says what was converted and what is not supported."""
    environ = os.environ if environ is None else environ
    for var, (section, name) in E.ENV_VARS.items():
        if environ.get(var, "") != "":
            try:
                cfg = set_value(cfg, section, name, environ[var])
            except ValueError as e:
                raise ValueError(f"environment variable {var}: {e}; fix or unset {var}") from None
    for var, (_, convert) in E.CONVERTERS.items():
        if environ.get(var, "") != "":
            try:
                cfg = convert(cfg, environ[var], environ)
            except ValueError as e:
                raise ValueError(f"environment variable {var}={environ[var]!r}: {e}") from None
    return cfg


def apply_overrides(cfg: RunConfig, overrides: list[str] | tuple[str, ...]) -> RunConfig:
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not key=value")
        key, raw = item.split("=", 1)
        cfg = set_field(cfg, key.strip(), raw)
    return cfg


def load(
    name: str, overrides: list[str] | tuple[str, ...] = (), environ: Mapping[str, str] | None = None
) -> RunConfig:
    """Preset < environment < overrides, then validated."""
    cfg = apply_overrides(apply_env(preset(name), environ), overrides)
    validate(cfg)
    return cfg


# ----------------------------------------------------------------------------------------------
# Derived values and checks


def num_skip_weights(m: ModelConfig) -> int:
    if not m.unet_skips:
        return 0
    return m.num_layers // 2 if m.num_skip_weights < 0 else m.num_skip_weights


def head_dim(m: ModelConfig) -> int:
    return m.model_dim // m.num_heads


def grad_accum_steps(t: TrainConfig, world_size: int) -> int:
    if t.grad_accum_steps > 0:
        return t.grad_accum_steps
    if 8 % world_size != 0:
        raise ValueError(f"world_size {world_size} does not divide 8; set train.grad_accum_steps")
    return 8 // world_size


OPTIONAL_MODULES = ("rans", "crans", "ttt_lora", "ttt_phased", "ngram_tilt")
"""Core modules only some configs run; a bundle ships the ones `modules_needed` names."""


def modules_needed(cfg: RunConfig) -> set[str]:
    """The OPTIONAL_MODULES that a run with `cfg` uses: an entropy codec; those its TTT mode needs
    (`pgolf.modes.Mode.needs`: LoRA TTT's module, whose SGD step score-first TTT shares; phased
    TTT's); the n-gram tilt."""
    codec = cfg.quant.codec
    need = {"rans", "crans"} if codec == "crans" else {"rans"} if codec == "rans" else set()
    need |= {"ngram_tilt"} if cfg.eval.ngram_tilt else set()
    return need | set(M.MODES[cfg.ttt.mode].needs)


def refuse_absent(cfg: RunConfig, absent: tuple[str, ...], script: str) -> None:
    """Stop a bundle (`script`) that left out a module `cfg` (environment included) needs."""
    if missing := sorted(modules_needed(cfg) & set(absent)):
        raise SystemExit(
            f"{script} lacks {', '.join(missing)}, which this config needs "
            "(environment included): rebuild it with `pgolf bundle` for this config"
        )


FOLD_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "truth": lambda v, _: bool(v),
    "==": lambda v, a: v == a,
    "!=": lambda v, a: v != a,
    "in": lambda v, a: v in a,
    "not in": lambda v, a: v not in a,
    "is": lambda v, a: v is a,
    "is not": lambda v, a: v is not a,
    "<": lambda v, a: v < a,
    "<=": lambda v, a: v <= a,
    ">": lambda v, a: v > a,
    ">=": lambda v, a: v >= a,
}
"""The predicates a specialized bundle may fold on a config field (`pgolf.lab.bundle.specialize`):
`op(value, arg)`; `truth` is the field used as a condition."""


def refuse_folded(
    cfg: RunConfig,
    folded: tuple[tuple[str, str, Any, bool], ...],
    script: str,
    environ: Mapping[str, str],
) -> None:
    """Stop a specialized bundle (`script`) whose config, environment included, breaks a predicate
    the bundler folded: (`section.field`, op of FOLD_OPS, argument, value it had when bundled).
    The message names the field, the environment variables that set it and the fix."""
    bad = {}
    for key, op, arg, want in folded:
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if FOLD_OPS[op](value, arg) != want:
            bad[key] = value
    if not bad:
        return
    lines = []
    for key, value in bad.items():
        set_by = [v for v, f in E.ENV_VARS.items() if ".".join(f) == key and environ.get(v)]
        set_by = set_by or [v for v in E.CONVERTERS if environ.get(v)]
        lines.append(f"{key}={value!r} (set by {', '.join(set_by) or 'the environment'})")
    raise SystemExit(
        f"{script} was specialized for its frozen config and left out the code for "
        f"{'; '.join(lines)}: unset it, or rebuild the script with `pgolf bundle --set "
        f"{next(iter(bad))}=...` for this config"
    )


SDPA_PLANS = tuple(
    f"sdpa:{k}{r}"
    for k in ("default", "cudnn", "flash", "efficient", "math")
    for r in ("", "+repeat")
)
CHOICES: dict[str, tuple[str, ...]] = {  # every choice field, checked by `validate` up front
    "data.loader": ("stream", "shuffled"),
    "model.activation": ("relu2", "leaky_relu2"),
    "model.skip_gate": ("none", "sigmoid", "lerp"),
    "optim.ns_coeffs": ("polar_express", "quintic"),
    "model.parallel_residual": ("none", "lanes", "gptj", "lanes2x2"),
    "model.parallel_final": ("mean", "attn", "mlp"),
    "model.smear_form": ("channel", "window"),
    "model.attn_gate": ("none", "sparse", "dense", "out"),
    "model.attn_gate_src": ("proj", "q"),
    "optim.muon_row_axis": ("wide", "rows"),
    "optim.lr_floor_mode": ("lerp", "max"),
    "quant.lqer_top_form": ("asym", "sym"),
    "train.schedule": ("time", "steps"),
    "model.attn_backend": ("auto", "sdpa", "fa3", "naive", *SDPA_PLANS),
    "quant.method": ("gptq", "rtn"),
    "train.device": ("auto", "cpu", "cuda", "mps"),
    "quant.embed_method": ("gptq", "rtn"),
    "quant.calib": ("train", "selfgen"),
    "quant.codec": ("brotli", "lzma", "zstd", "rans", "crans"),
    "ttt.mode": M.TTT_MODES,
    "ttt.phased_optimizer": ("adam", "sgd"),
    "ttt.phased_order": ("length", "stream"),
    "ttt.lora_init": ("reset", "warm"),
}


def validate(cfg: RunConfig) -> None:
    m, t, e = cfg.model, cfg.train, cfg.eval
    positive = {
        "num_heads": m.num_heads,
        "num_kv_heads": m.num_kv_heads,
        "model_dim": m.model_dim,
        "num_layers": m.num_layers,
        "vocab_size": m.vocab_size,
        "train_seq_len": t.train_seq_len,
        "eval_seq_len": e.eval_seq_len,
        "iterations": t.iterations,
        "train_batch_tokens": t.train_batch_tokens,
        "val_batch_seqs": e.val_batch_seqs,
    }
    bad = [k for k, v in positive.items() if v <= 0]
    if bad:
        raise ValueError(f"invalid config: {', '.join(bad)} must be positive")
    problems = []
    if t.max_wallclock_seconds > 0 and t.reserve_seconds >= t.max_wallclock_seconds:
        problems.append(
            f"reserve_seconds {t.reserve_seconds} leaves no training time within "
            f"max_wallclock_seconds {t.max_wallclock_seconds}"
        )
    if m.model_dim % m.num_heads:
        problems.append(f"model_dim {m.model_dim} not divisible by num_heads {m.num_heads}")
    if m.num_heads % m.num_kv_heads:
        problems.append(f"num_heads {m.num_heads} not divisible by num_kv_heads {m.num_kv_heads}")
    hd = m.model_dim // max(m.num_heads, 1)
    if m.rope_dims % 2 or m.rope_dims > hd:
        problems.append(f"rope_dims {m.rope_dims} must be even and <= head_dim {hd}")
    for name, layers in (("xsa_layers", m.xsa_layers), ("ve_layers", m.ve_layers)):
        if any(not 0 <= i < m.num_layers for i in layers):
            problems.append(f"{name} {layers} outside 0..{m.num_layers - 1}")
    if m.recur_layers and any(not 0 <= i < m.num_layers for i in m.recur_layers):
        problems.append(f"recur_layers {m.recur_layers} outside 0..{m.num_layers - 1}")
    for key, allowed in CHOICES.items():
        section, name = key.split(".")
        if (v := getattr(getattr(cfg, section), name)) not in allowed:
            problems.append(f"{key}={v!r} is not one of {', '.join(allowed)} (--set {key}=...)")
    if t.train_batch_tokens % t.train_seq_len:
        problems.append("train_batch_tokens must be a multiple of train_seq_len")
    if e.eval_stride <= 0 or e.eval_stride > e.eval_seq_len:
        problems.append(f"eval_stride {e.eval_stride} must be in 1..eval_seq_len")
    if not 2 <= cfg.quant.matrix_bits <= 8 or not 2 <= cfg.quant.embed_bits <= 8:
        problems.append("quantization bit widths must be within 2..8")
    q = cfg.quant
    if q.lqer and q.lqer_top > 0:
        problems.append("quant.lqer and quant.lqer_top are two forms of low-rank terms: set one")
    if not all(2 <= b <= 8 for b in (q.lqer_a_bits, q.lqer_b_bits, q.lqer_sym_bits)):
        problems.append("quant.lqer_a_bits / lqer_b_bits / lqer_sym_bits must be within 2..8")
    if q.lqer_top < 0 or q.lqer_top_rank < 1 or q.lqer_group < 0:
        problems.append(
            "quant.lqer_top >= 0, lqer_top_rank >= 1, lqer_group >= 0 (0: the sym form)"
        )
    if not 2 <= q.awq_bits <= 8 or q.awq_top_k < 0 or not 1 <= q.awq_group <= 1 << 16:
        problems.append("quant.awq_bits within 2..8, awq_top_k >= 0, awq_group within 1..65536")
    uses_window = (m.smear_gate and m.smear_form == "window") or m.attn_gate in ("sparse", "out")
    if uses_window and not 1 <= m.gate_window <= m.model_dim:
        problems.append(f"gate_window {m.gate_window} must be in 1..model_dim {m.model_dim}")
    try:
        QuantPlan.of(cfg.quant)  # quant.groups and quant.lqer, typed once (pgolf.quantplan)
    except ValueError as err:
        problems.append(str(err))
    if problems:
        raise ValueError("invalid config: " + "; ".join(problems))


def to_dict(cfg: RunConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def to_json(cfg: RunConfig) -> str:
    return json.dumps(to_dict(cfg), indent=2, sort_keys=True)


def from_dict(d: Mapping[str, Any]) -> RunConfig:
    """Inverse of `to_dict` (tuples restored from JSON lists)."""
    classes = SECTION_CLASSES
    kwargs: dict[str, Any] = {"preset": d.get("preset", "custom")}
    for section, cls in classes.items():
        sub = dict(d.get(section, {}))
        for f in fields(cls):
            if f.name in sub and isinstance(sub[f.name], list):
                sub[f.name] = tuple(sub[f.name])
        known = {f.name for f in fields(cls)}
        kwargs[section] = cls(**{k: v for k, v in sub.items() if k in known})
    return RunConfig(**kwargs)
