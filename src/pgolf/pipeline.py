"""The record job as functions: train → EMA → (pre-quant TTT) → quantize → artifact → evaluate
(sliding window, test-time training) → result. `run()` is `pgolf run` and the bundle's `main`;
`quantize_run()` and `eval_artifact()` are the same stages alone (`pgolf quantize`, `pgolf eval`;
the latter needs only the artifact and the validation shards)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from pgolf import artifact_check as AC
from pgolf import config as C
from pgolf import lqer
from pgolf import modes as M
from pgolf import score as S
from pgolf import ttt as TT
from pgolf.dist import barrier, info, init, log0
from pgolf.runlog import RunDir, size_lines

CODE_DESC = "length of the bundled script"
CodeSize = Callable[[C.RunConfig], tuple[int, str]]
"""cfg -> (code bytes of the submission script for cfg, how they were measured)."""

# ----------------------------------------------------------------------------------------------
# Data


def resolve_data(cfg: C.RunConfig) -> tuple[C.RunConfig, Path, Path]:
    """cfg with data_path/tokenizer_path filled in, absolute (a run's config works from any
    directory), the tokenizer checked against the folder's manifest (the CLI builds defaults)."""
    from pgolf import data as D
    from pgolf.bpb import check_tokenizer

    if not cfg.data.data_path:
        raise ValueError(
            "no data folder: set DATA_PATH (or --data DIR); `pgolf data default` builds the "
            "embedded default corpus"
        )
    data_dir = Path(cfg.data.data_path).resolve()
    if not data_dir.is_dir():
        raise FileNotFoundError(
            f"data folder {data_dir} does not exist: build it with `pgolf data default` or "
            "`pgolf data fineweb`, or pass --data DIR"
        )
    tok = Path(cfg.data.tokenizer_path or D.find_tokenizer(data_dir)).resolve()
    check_tokenizer(data_dir, tok)  # present, and the one the folder's manifest lists
    cfg = replace(cfg, data=replace(cfg.data, data_path=str(data_dir), tokenizer_path=str(tok)))
    return cfg, data_dir, tok


def check_vocab(cfg: C.RunConfig, tok: Path) -> None:
    from pgolf.bpb import load_sp

    sp = load_sp(tok)
    if sp.vocab_size() > cfg.model.vocab_size:
        raise ValueError(
            f"tokenizer {tok} has {sp.vocab_size()} pieces but the model's vocab_size is "
            f"{cfg.model.vocab_size}: set VOCAB_SIZE={sp.vocab_size()} (or --set vocab_size=...) "
            "or use the matching tokenizer"
        )


# ----------------------------------------------------------------------------------------------
# Quantization


def model_from_state(
    cfg: C.RunConfig, state: dict[str, torch.Tensor], device: torch.device, meta, source: str
):
    """Rebuild the model with the layer graph the weights were trained and measured with."""
    from pgolf.model import GPT, restore_graph_state

    model = GPT(cfg.model).to(device)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise ValueError(f"weights do not fit the model config (shapes differ): {e}") from e
    missing = [k for k in missing if not k.endswith(("_cos", "_sin", "inv_freq"))]
    if missing or unexpected:
        raise ValueError(
            f"weights do not match the config: missing {missing} unexpected {unexpected}"
        )
    restore_graph_state(model, meta, source)
    return model


def calibration_batches(cfg: C.RunConfig, model, data_dir: Path, device: torch.device):
    """The calibration inputs [b, T] of this rank (its share of quant.calib_seqs; the Hessian
    sums are all-reduced): training batches (inside the budget, #1493) or sequences the model
    samples itself (quant.calib 'selfgen', #1550)."""
    from pgolf import quant
    from pgolf.data import make_train_loader

    q, di, seq = cfg.quant, info(), cfg.train.train_seq_len
    per_rank = max(1, q.calib_seqs // di.world_size)
    if q.calib == "selfgen":
        seed = cfg.train.seed + di.rank
        batches = quant.selfgen_batches(model, per_rank, seq, q.calib_temperature, seed)
    elif q.calib == "train":
        loader = make_train_loader(
            data_dir,
            "stream",
            di.rank,
            di.world_size,
            seq,
            min(8, per_rank),
            cfg.train.seed + 17,
            vocab_size=cfg.model.vocab_size,
        )
        batches, have = [], 0
        while have < per_rank:
            x = loader.next_batch()[0][: per_rank - have]
            batches.append(x)
            have += x.shape[0]
    else:
        raise ValueError(f"quant.calib {q.calib!r} must be 'train' or 'selfgen'")
    return [b.to(device) for b in batches]


def calibrate(cfg: C.RunConfig, model, data_dir: Path, plan=None, batches=None, log: bool = True):
    """Hessians {name: [C, C]} of the tensors `plan` (default: cfg's) quantizes with GPTQ, on the
    model as it really runs; {} when none. `batches`: fixed inputs (default: drawn per
    `quant.calib`); `log`: the timing lines (off for the planner, whose --json is stdout)."""
    from pgolf import quant

    t0 = time.perf_counter()
    state = model.state_dict()
    names = [
        e.name for e in quant.make_plan(state, cfg.quant, cfg.model, plan) if e.method == "gptq"
    ]
    if not names:
        return {}
    if batches is None:
        batches = calibration_batches(cfg, model, data_dir, next(model.parameters()).device)
    hessians = quant.collect_hessians(model, batches, names)
    secs, reserve = time.perf_counter() - t0, cfg.train.reserve_seconds
    if not log:
        return hessians
    log0(f"gptq:collected {len(hessians)} Hessians in {secs:.1f}s")
    if cfg.quant.calib == "train" and reserve > 0 and secs > reserve:
        log0(
            f"gptq:warning calibration on training data took {secs:.1f}s, more than the "
            f"{reserve:.0f}s reserved from the training budget (train.reserve_seconds)"
        )
    return hessians


def quantize_weights(
    cfg: C.RunConfig, state, hessians, plan=None, *, groups=None, log: bool = True
) -> list:
    """THE quantize stage: weights {name: tensor} + plan (a `QuantPlan`; default: the one cfg
    carries) + Hessians (`quant.Calibration`: with the activation RMS that `quant.awq` needs) ->
    list[QTensor] in artifact order: plan resolution (AWQ-lite's promoted column groups among it),
    GPTQ (RTN where a tensor has no Hessian), ±1 pruning, then the low-rank terms of each tensor
    after all the others (on the weights as loaded, promoted groups included). `groups`: only
    those groups' tensors (the planner's what-ifs, one group at a time)."""
    from pgolf import quant
    from pgolf.quantplan import QuantPlan

    q = cfg.quant
    qplan = QuantPlan.of(q) if plan is None else plan
    entries = quant.make_plan(state, q, cfg.model, qplan)
    if q.awq:  # #1908's AWQ-lite: chosen over all tensors, before any `groups` filter
        act_rms = getattr(hessians, "act_rms", None)
        if act_rms is None:
            raise ValueError(
                "quant.awq needs the activation RMS of the calibration pass "
                "(`quant.collect_hessians` returns it with the Hessians): recalibrate"
            )
        entries = quant.awq_plan(entries, state, act_rms, q.awq_bits, q.awq_top_k, q.awq_group)
    if groups is not None:
        entries = [e for e in entries if e.group in groups]
    tensors = quant.quantize_state(
        state, hessians, entries, log, block_size=q.block_size, damp=q.damp, act_order=q.act_order
    )
    # low-rank terms on the GPTQ error (pgolf.lqer), added back on load; the config's own plan has
    # none without quant.lqer (tested first, so a bundle folds it)
    if (plan is not None or q.lqer) and (ranks := qplan.ranks()):
        tensors += lqer.lqer_tensors(state, tensors, hessians, ranks, q.damp)
    if q.lqer_top > 0:  # #1855's form: plain SVD on the largest errors, asymmetric grids
        terms = lqer.top_lowrank_tensors(state, tensors, q)
        names = " ".join(t.name[: -len(lqer.SUFFIX_A)] for t in terms[::2])
        log0(f"quant:lqer_top {q.lqer_top_form} rank:{q.lqer_top_rank} on {names}")
        tensors += terms
    return tensors


def quantize_model(cfg: C.RunConfig, model, data_dir: Path, batches=None):
    """A model's weights quantized as its config says: `calibrate` then `quantize_weights`."""
    t0 = time.perf_counter()
    state = {k: v.detach() for k, v in model.state_dict().items()}
    tensors = quantize_weights(cfg, state, calibrate(cfg, model, data_dir, batches=batches))
    log0(f"quantize:done method:{cfg.quant.method} time:{time.perf_counter() - t0:.1f}s")
    return tensors


def write_artifact(
    cfg: C.RunConfig, tensors, path: Path, graph: dict[str, Any], code_size: CodeSize
) -> dict[str, Any]:
    """Write the artifact (rank 0) and account for it. `code_size(cfg)` gives the code bytes of
    the submission script for this config: the bundle's own length inside `train_gpt.py`, the
    length of the bundle generated for `cfg` under the CLI (`pgolf.lab.bundle.code_size`). They
    are kept in the artifact's metadata so `pgolf budget` reports the same total later."""
    from pgolf import artifact

    code_bytes, code_desc = code_size(cfg)
    meta = {
        "format": "pgolf-artifact",
        "config": C.to_dict(cfg),
        "code_bytes": code_bytes,
        "code_desc": code_desc,
        **graph,
        "tokenizer_sha256": _sha256(Path(cfg.data.tokenizer_path)),
    }
    if info().is_main:  # one writer; every rank reads it after the barrier
        artifact.save_artifact(
            path, tensors, meta, codec=cfg.quant.codec, pack_bits=cfg.quant.pack_bits
        )
    barrier()
    model_bytes = path.stat().st_size
    for line in size_lines(cfg, model_bytes, code_bytes, code_desc):
        log0(line)
    return {
        "artifact_path": str(path),
        "artifact_bytes": model_bytes + code_bytes,
        "model_bytes": model_bytes,
        "code_bytes": code_bytes,
        "code_bytes_note": code_desc,
        "budget_margin": cfg.quant.byte_budget - model_bytes - code_bytes,
    }


# ----------------------------------------------------------------------------------------------
# Evaluation of an artifact


def _sha256(path: Path) -> str | None:
    from pgolf.data import sha256_file

    return sha256_file(path) if path.is_file() else None


def load_artifact_model(path: Path, device: torch.device, checked: bool = True):
    """(config, model with the dequantized weights, artifact metadata); nothing unpickled.
    `checked=False` only for the run's own artifact (`run`, a moment after writing it): no
    hostile-input bounds (`artifact.load_artifact`), the config is the meta's as written (the
    run's own, `C.to_dict` of it), not type-checked nor matched against the tensors' shapes."""
    from pgolf import artifact, artifact_check, quant

    tensors, meta = artifact.load_artifact(path, checked=checked)
    if checked:
        cfg = artifact_check.config_from_meta(meta, str(path))
        artifact_check.check_shapes(cfg, tensors, str(path))
    else:
        cfg = C.from_dict(meta["config"])
    state = lqer.add_back(quant.dequantize_state(tensors))
    return cfg, model_from_state(cfg, state, device, meta, str(path)), meta


def eval_artifact(
    path: str | Path,
    data: str | None = None,
    stride: int | None = None,
    sliding: bool = True,
    max_val_tokens: int | None = None,
    ttt: str | None = None,
    ngram_tilt: bool = False,
) -> dict[str, Any]:
    """Load an artifact in this (fresh) process and score it (timed; `ttt` overrides ttt.mode,
    `ngram_tilt` turns eval.ngram_tilt on)."""
    from pgolf import bpb
    from pgolf.data import find_tokenizer, load_val_tokens

    di = init("auto")
    path = Path(path)
    clock = TT.EvalClock()
    with clock.stage("load"):  # artifact, val shards, byte tables
        cfg, model, meta = load_artifact_model(path, di.device)
        prequant = M.MODES[cfg.ttt.mode].non_record  # the weights were trained on val
        cfg = cfg if ttt is None else replace(cfg, ttt=replace(cfg.ttt, mode=ttt))
        cfg = replace(cfg, eval=replace(cfg.eval, ngram_tilt=True)) if ngram_tilt else cfg
        data_dir = Path(data) if data else Path(cfg.data.data_path)
        tok = Path(cfg.data.tokenizer_path) if not data else find_tokenizer(data_dir)
        bpb.check_tokenizer(data_dir, tok)  # present, and the one the folder's manifest lists
        want = meta.get("tokenizer_sha256")
        if want and _sha256(tok) != want:
            raise ValueError(
                f"{tok} is not the tokenizer {path} was trained with (sha256 differs): "
                "score it on validation shards made with the run's tokenizer"
            )
        if stride is not None:
            cfg = replace(cfg, eval=replace(cfg.eval, eval_stride=stride))
            C.validate(cfg)
        mvt = cfg.data.max_val_tokens if max_val_tokens is None else max_val_tokens
        val = load_val_tokens(data_dir, cfg.eval.eval_seq_len, mvt, cfg.model.vocab_size)
        tables = bpb.build_byte_tables(str(tok), cfg.model.vocab_size)
        tables = bpb.with_sidecar(tables, data_dir, val.numel(), cfg.data.caseops)
    label = f"final_int{cfg.quant.matrix_bits}"
    with clock.stage("sliding"):
        res = S.evaluate_model(cfg, model, val, tables, label, sliding, di.device)
    res.update(S.eval_stage(cfg, model, val, tables, di.device, clock, non_record=prequant))
    AC.require_finite(str(path), res)
    res["artifact_path"] = str(path)
    code, size = int(meta.get("code_bytes", 0)), path.stat().st_size  # as `quantize` counted
    for line in size_lines(cfg, size, code, meta.get("code_desc", "")):
        log0(line, console=line.startswith(("Total", "budget")))
    return {**res, "budget_margin": cfg.quant.byte_budget - size - code}


# ----------------------------------------------------------------------------------------------
# The main job

Extras = Callable[[C.RunConfig, Any, Any, Any], dict[str, Any]]
"""(cfg, run folder, val tokens, byte tables) -> more result fields (the CLI adds references)."""


def run(
    cfg: C.RunConfig,
    run_dir: str | None = None,
    quantize: bool = True,
    *,
    code_size: CodeSize,
    extras: Extras | None = None,
) -> dict[str, Any]:
    """The main job (see the module docstring); returns what it writes to result.json."""
    from pgolf.runlog import new_run

    init(cfg.train.device)  # first: rank-aware logging and run-folder naming
    cfg, data_dir, tok = resolve_data(cfg)
    check_vocab(cfg, tok)
    run = new_run(cfg, run_dir)  # a generated name is never shared
    try:
        return _run(cfg, run, data_dir, quantize, code_size, extras)
    finally:
        run.close()


def train_stage(cfg: C.RunConfig, run: RunDir, resume: str | Path | None = None, **options):
    """Train into `run` (`pgolf.train.train`, `options` its keyword arguments) and record the
    outcome in its result.json: the trained run's fields (`TrainResult.record`), or its
    divergence (then re-raised)."""
    from pgolf import train as T

    try:
        result = T.train(cfg, run, resume=resume, **options)
    except T.TrainingDiverged as e:
        run.write_result({"status": "diverged", "diverged_step": e.step})
        raise
    run.write_result({**result.record(), "run_dir": str(run.path)})
    return result


def artifact_scores(res: dict[str, Any]) -> dict[str, Any]:
    """The run-record fields of an artifact's evaluation (`evaluate_model` + `TT.eval_stage`
    output): `val_bpb_<stage>`/`val_loss_<stage>`, eval times and the budget margin."""
    keep = {k: v for k, v in res.items() if k.startswith(("val_", "budget", "eval_"))}
    for k in ("roundtrip", "sliding"):
        if f"{k}_bpb" in res:
            keep[f"val_bpb_{k}"], keep[f"val_loss_{k}"] = res[f"{k}_bpb"], res[f"{k}_loss"]
    return keep


def _run(cfg: C.RunConfig, run, data_dir: Path, quantize: bool, code_size, extras):
    from pgolf.model import graph_state

    t_start = time.perf_counter()
    result = train_stage(cfg, run)
    model = result.model
    device = next(model.parameters()).device
    tables = result.tables  # built by train() from the same tokenizer, already on the device
    val = result.val_tokens
    out: dict[str, Any] = dict(
        preset=cfg.preset,
        steps=result.steps,
        train_seconds=result.train_seconds,
        run_dir=str(run.path),
        stopped_early=result.stopped_early,
        data_path=str(data_dir),
    )
    pre = S.evaluate_model(cfg, model, val, tables, "pre_quant", False, device)
    out["val_bpb_prequant"], out["val_loss_prequant"] = pre["roundtrip_bpb"], pre["roundtrip_loss"]
    log0(
        f"DIAGNOSTIC post_ema val_loss:{pre['roundtrip_loss']:.4f} val_bpb:"
        f"{pre['roundtrip_bpb']:.4f} eval_time:{1000 * pre['roundtrip_seconds']:.0f}ms"
    )
    if not M.MODES[cfg.ttt.mode].eval_time:  # pre-quant TTT: after EMA, before GPTQ; NON-RECORD
        model = TT.prequant_stage(cfg, model, val, device, out)
    if quantize:
        tensors = quantize_model(cfg, model, data_dir)
        art = run.artifact_path
        out.update(write_artifact(cfg, tensors, art, graph_state(model), code_size))
        with (clock := TT.EvalClock()).stage("load"):
            _, qmodel, _ = load_artifact_model(art, device, checked=False)  # its own file
        label = f"final_int{cfg.quant.matrix_bits}"
        with clock.stage("sliding"):
            post = S.evaluate_model(cfg, qmodel, val, tables, label, cfg.eval.sliding, device)
        out.update(artifact_scores(post), artifact_scored=True)  # the run's own evaluation
        out.update(S.eval_stage(cfg, qmodel, val, tables, device, clock))  # + clock report
    if info().is_main:
        if extras is not None:
            out.update(extras(cfg, run, val, tables))
        out["total_seconds"] = time.perf_counter() - t_start
        out = run.write_result(out)  # the one writer; it picks the headline val_bpb
    log0("RUN_COMPLETE")
    return out


def load_run_model(cfg: C.RunConfig, weights: Path, device: torch.device):
    """A run's `final_model.safetensors`, with the recurrence state it was saved in."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(weights), "pt") as f:
        wmeta = json.loads((f.metadata() or {}).get("meta", "{}"))
    return model_from_state(cfg, load_file(str(weights)), device, wmeta, str(weights))


def quantize_run(
    run: RunDir | str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    out: str | Path | None = None,
    plan=None,
    *,
    code_size: CodeSize,
) -> dict[str, Any]:
    """`pgolf quantize RUN_DIR`: quantize a finished run's final weights into an artifact (`out`,
    default the run's artifact.pgolf). `plan`: a `QuantPlan` applied over the run's own (after
    `overrides`), recorded in the artifact's config as quant.groups / quant.lqer. The caller
    records the artifact (`RunDir.record_artifact`)."""
    from pgolf.quantplan import QuantPlan

    if not isinstance(run, RunDir):
        run = RunDir.open(run, need=("config", "final"), what="quantize needs")
    cfg = C.apply_overrides(run.config(), list(overrides))
    C.validate(cfg)
    if plan is not None:  # over the run's own plan
        cfg = replace(cfg, quant=QuantPlan.of(cfg.quant).over(plan).into(cfg.quant))
        q = cfg.quant
        log0(f"quantize:plan as config: --set quant.groups={q.groups} --set quant.lqer={q.lqer}")
    di = init("auto")
    model = load_run_model(cfg, run.weights("final"), di.device)
    cfg, data_dir, _ = resolve_data(cfg)
    tensors = quantize_model(cfg, model, data_dir)
    dest = Path(out) if out else run.artifact_path
    from pgolf.model import graph_state

    return write_artifact(cfg, tensors, dest, graph_state(model), code_size)


def bundle_main(
    config: dict[str, Any],
    script: str,
    absent: tuple[str, ...] = (),
    folded: tuple[tuple[str, str, Any, bool], ...] = (),
    desc: str = "",
) -> dict:
    """Entry point of the generated `train_gpt.py`: its frozen config, overridden by the
    challenge's environment variables, runs the record job; code bytes are the script's length.
    `absent`: optional core modules the bundle left out, refused here if the config needs one;
    `folded`: the config predicates the bundler folded (`config.refuse_folded`), checked before
    any specialized code runs; `desc`: how the bundler counted the code bytes (the lab's words)."""
    import os

    from pgolf.dist import cleanup, leave

    cfg = C.apply_env(C.from_dict(config), os.environ)
    C.refuse_absent(cfg, absent, Path(script).name)
    C.refuse_folded(cfg, folded, Path(script).name, os.environ)
    C.validate(cfg)
    code, desc = len(Path(script).read_bytes()), desc or f"{CODE_DESC}: {Path(script).name}"
    try:
        res = run(cfg, os.environ.get("RUN_DIR") or None, code_size=lambda _cfg: (code, desc))
    except BaseException:
        cleanup(False)  # no barrier: the other ranks may be blocked in a collective
        raise
    if res.get("budget_margin", 0) < 0:  # fail closed: the artifact is written, the exit is not 0
        cleanup(True)
        raise SystemExit(f"over budget by {-res['budget_margin']} bytes ({res['run_dir']})")
    leave(True)  # under torchrun the rank exits here, its output flushed
    return res
