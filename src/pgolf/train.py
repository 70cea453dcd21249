"""The training loop: wall-clock-budgeted, distributed, resumable (spec pr1550-stack.md 4.3-4.6).

* Batch: grad accumulation `config.grad_accum_steps` lets one GPU reproduce the 8-GPU batch.
  Gradients are averaged by one flattened all-reduce per dtype (no DDP wrapper, as PR #1550),
  then the *averaged* gradient is clipped (as PR #1493; #1550 clips local gradients).
* `torch.compile(dynamic=False, fullgraph=True)` on CUDA; the uncompiled module is kept for
  state_dict, checkpoints, eval (house style 5.8). bf16 autocast + TF32; `GPT.plan_attention`.
* Compile warm-up (modded-nanogpt, the challenge baseline): `warmup_steps` real steps, then as
  many with depth recurrence on when configured (PR #1493 pre-compiles the looped graph; #1550
  pays ~30 s at step 3000); weights, optimizer, loader and RNG are then reset.
* Clock: CUDA is synchronised before each read; validation and checkpoint I/O are excluded. LR
  multiplier = `optim.lr_multiplier(max(elapsed / (budget - reserve), step / iterations))`: the
  records' wall-clock progress, plus iteration progress so that an iteration-bound run (and its
  resume) warms down deterministically; `train.schedule=steps` (cpu-tiny) uses step progress
  alone: the wall clock only stops an overrun (logged). Stop/recurrence flags are MAX-reduced.
* EMA after every optimizer step, copied into the model at the end (section 4.4).
* Validation (plain round trip of the live weights): every `val_loss_every` steps, and at the last
  step only with `train.final_val` (FINAL_VAL=1; off in every preset). The records' loops always
  validate there (their `step:N/N val_loss:` line), right before EMA replaces those weights; the
  run scores the EMA weights next (`DIAGNOSTIC post_ema`), so pgolf skips that pass by default.
* A non-finite loss raises `TrainingDiverged`; checkpoints are never written from non-finite
  weights, so the last good one stays on disk. Ctrl-C saves a checkpoint, then re-raises.
* Checkpoints: weights, EMA, optimizer, per-rank loader state, RNG, step, elapsed time,
  recurrence flag; elapsed time continues on resume, so iteration-driven runs resume to identical
  losses (tests/test_train.py). Log lines follow the challenge's shapes (spec section 10.1).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as tdist
from torch import Tensor, nn

from pgolf import checkpoint as CK
from pgolf import config as C
from pgolf import dist
from pgolf.bpb import ByteTables, build_byte_tables
from pgolf.data import find_tokenizer, load_val_tokens, make_train_loader
from pgolf.evaluate import EvalResult, eval_plain
from pgolf.model import GPT, graph_state, restore_graph_state
from pgolf.optim import EMA, build_optimizers, clip_grad_norm_, lr_multiplier, muon_momentum_at
from pgolf.runlog import RunDir, train_header


class TrainingDiverged(RuntimeError):
    """The training loss became NaN/inf; the message names the step, run folder and fixes."""


@dataclass
class TrainResult:
    model: nn.Module
    """The uncompiled model; holds the EMA weights when `ema_applied`, else the live weights."""
    ema: EMA | None
    ema_applied: bool
    steps: int
    """Optimizer steps taken in total (including those before a resume)."""
    train_seconds: float
    """Training wall-clock (validation and checkpoint I/O excluded), continued across resumes."""
    stopped_early: bool
    """True when the wall-clock cap, not `iterations`, ended training."""
    val: EvalResult | None
    """The last validation of the live weights (before EMA): at the final step with
    `train.final_val`, else the last `val_loss_every` one (None when neither ran)."""
    tables: ByteTables
    val_tokens: Tensor
    run: RunDir


def local_batch(cfg: C.RunConfig, world: int) -> tuple[int, int]:
    """(grad accumulation steps, sequences per micro-step per rank)."""
    t = cfg.train
    accum = C.grad_accum_steps(t, world)
    per = world * accum * t.train_seq_len
    if t.train_batch_tokens % per:
        raise ValueError(
            f"train_batch_tokens {t.train_batch_tokens} is not a multiple of world_size {world} x "
            f"grad_accum {accum} x train_seq_len {t.train_seq_len}; change TRAIN_BATCH_TOKENS"
        )
    return accum, t.train_batch_tokens // per


def build_model(cfg: C.RunConfig, device: torch.device) -> GPT:
    """GPT built on meta, materialised on `device`, initialised from `train.seed` (all ranks)."""
    with torch.device("meta"):
        model = GPT(cfg.model)
    model.to_empty(device=device)
    torch.manual_seed(cfg.train.seed)
    model.init_weights()
    for p in model.parameters():
        dist.broadcast_(p.data, 0)
    return model


def all_reduce_grads(params: list[nn.Parameter]) -> None:
    """Average gradients across ranks: one flattened all-reduce per gradient dtype."""
    if not dist.is_dist():
        return
    by_dtype: dict[torch.dtype, list[Tensor]] = {}
    for p in params:
        if p.grad is not None:
            by_dtype.setdefault(p.grad.dtype, []).append(p.grad)
    for grads in by_dtype.values():
        flat = dist.all_reduce_(torch.cat([g.reshape(-1) for g in grads]), "avg")
        for g, piece in zip(grads, flat.split([g.numel() for g in grads])):
            g.copy_(piece.view_as(g))


class _Clock:
    """Training time in ms: accumulates only while running; synchronises CUDA on every read."""

    def __init__(self, device: torch.device, start_ms: float = 0.0) -> None:
        self.device, self.acc, self.t0 = device, start_ms, None

    def start(self) -> None:
        self.t0 = None
        self.ms()  # synchronise
        self.t0 = time.perf_counter()

    def stop(self) -> float:
        self.acc, self.t0 = self.ms(), None
        return self.acc

    def ms(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        if self.t0 is None:
            return self.acc
        return self.acc + 1000.0 * (time.perf_counter() - self.t0)


class _Trainer:
    """The pieces of one run (model, optimizers, loader, EMA); `train()` drives it."""

    def __init__(self, cfg: C.RunConfig, run: RunDir, data_dir: Path) -> None:
        self.cfg, self.run, self.data_dir = cfg, run, data_dir
        self.di, self.device = dist.info(), dist.info().device
        self.accum, self.local_seqs = local_batch(cfg, self.di.world_size)
        self.model = build_model(cfg, self.device)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        if cuda := self.device.type == "cuda":
            dist.log0(self.model.plan_attention(self.local_seqs, cfg.train.train_seq_len))
        self.compiled: nn.Module = self.model
        if cfg.train.compile and cuda:
            self.compiled = torch.compile(self.model, dynamic=False, fullgraph=True)
        self.autocast_dtype = torch.bfloat16 if cuda else None
        self.opt = build_optimizers(self.model, cfg.optim)
        self.loader = self.new_loader()
        self.loader_state = self.loader.state_dict()
        self.ema: EMA | None = None
        starts = max(cfg.train.recur_start_step, cfg.train.recur_start_frac) >= 0
        self.recur_on = bool(cfg.model.recur_layers) and starts  # recurrence is configured

    def new_loader(self) -> Any:
        c = self.cfg
        return make_train_loader(
            self.data_dir,
            c.data.loader,
            self.di.rank,
            self.di.world_size,
            c.train.train_seq_len,
            self.local_seqs,
            c.train.seed,
            c.data.train_shards,
            c.model.vocab_size,
        )

    def step(self) -> Tensor:
        """One optimizer step (all micro-steps); returns this rank's mean loss (a tensor)."""
        total = torch.zeros((), device=self.device)
        dt = self.autocast_dtype
        ctx = torch.autocast("cuda", dtype=dt) if dt else contextlib.nullcontext()
        for _ in range(self.accum):
            x, y = (t.to(self.device, non_blocking=True) for t in self.loader.next_batch())
            with ctx:
                loss = self.compiled(x, y)
            (loss / self.accum).backward()
            total += loss.detach().float()
        all_reduce_grads(self.params)
        if self.cfg.optim.grad_clip_norm > 0:
            clip_grad_norm_(self.params, self.cfg.optim.grad_clip_norm)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return total / self.accum

    def warmup(self) -> None:
        """Compile warm-up on the real shapes, then reset weights, optimizer, loader and RNG."""
        n = self.cfg.train.warmup_steps
        if n <= 0:
            return
        init = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        rng = CK.rng_state()
        phases = [False, True] if self.recur_on else [False]
        for i, recur in enumerate(phases):
            self.model.set_recurrence(recur)
            for k in range(n):
                self.step()
                dist.log0(f"warmup_step:{i * n + k + 1}/{n * len(phases)}")
        self.model.set_recurrence(False)
        self.model.load_state_dict(init)
        self.opt = build_optimizers(self.model, self.cfg.optim)
        self.loader = self.new_loader()
        self.loader_state = self.loader.state_dict()
        CK.set_rng_state(rng)

    def all_finite(self) -> bool:
        flags = torch.stack([torch.isfinite(p.detach()).all() for p in self.params])
        return bool(flags.all().item())

    def save(self, step: int, train_ms: float, collective: bool = True) -> Path | None:
        """Checkpoint after `step` steps; None for non-finite weights. `collective=False` (Ctrl-C)
        keeps rank 0's loader state only and, on several ranks, writes a separate file."""
        loaders: list[Any] = [self.loader_state]
        if collective and dist.is_dist():
            loaders = [None] * self.di.world_size
            tdist.all_gather_object(loaders, self.loader_state)
        if not self.all_finite():
            return None
        meta = dict(
            step=step,
            train_ms=train_ms,
            **graph_state(self.model),
            world_size=self.di.world_size,
            config=C.to_dict(self.cfg),
        )
        state = {"optim": self.opt.state_dict(), "loaders": loaders, "rng": CK.rng_state()}
        ema = self.ema.state_dict() if self.ema is not None else None
        target = self.run.checkpoint_path  # never replaced by a rank-0-only state:
        if len(loaders) < self.di.world_size:
            target = target.with_name("checkpoint.interrupted.safetensors")
        path = CK.save_checkpoint(target, self.model.state_dict(), ema, state, meta)
        dist.log0(f"checkpoint:saved {path} step:{step}", console=False)
        return path

    def restore(self, ck: CK.Checkpoint, source: str) -> tuple[int, float]:
        """Load a checkpoint's state; returns (step, train_ms)."""
        if C.from_dict(ck.meta.get("config", {})).model != self.cfg.model:
            raise ValueError(
                f"checkpoint {source} was trained with a different model config; resume with the "
                "same preset/overrides (see its run folder's config.json)"
            )
        self.model.load_state_dict(ck.model)
        restore_graph_state(self.model, ck.meta, source)
        self.opt.load_state_dict(ck.state["optim"])
        loaders, world = ck.state["loaders"], self.di.world_size
        if len(loaders) != world and self.cfg.data.loader != "stream":
            raise ValueError(
                f"checkpoint {source} holds loader state for {len(loaders)} rank(s), this run has "
                f"{world}; resume with the same world size or data.loader=stream"
            )  # (the stream position is global, so rank 0's state serves every rank)
        self.loader.load_state_dict(loaders[self.di.rank if len(loaders) == world else 0])
        self.loader_state = self.loader.state_dict()
        if self.ema is not None:
            if ck.ema is not None:
                self.ema.load_state_dict(ck.ema)
            else:
                self.ema = EMA(self.model, self.cfg.optim.ema_decay)
        CK.set_rng_state(ck.state["rng"])
        return int(ck.meta["step"]), float(ck.meta["train_ms"])

    def validate(self, val_tokens: Tensor, tables: ByteTables, step: int, ms: float) -> EvalResult:
        e, iters = self.cfg.eval, self.cfg.train.iterations
        r = eval_plain(
            self.model,
            val_tokens,
            e.eval_seq_len,
            e.val_batch_seqs,
            tables,
            self.device,
            self.autocast_dtype,
        )
        dist.log0(
            f"step:{step}/{iters} val_loss:{r.val_loss:.4f} val_bpb:{r.val_bpb:.4f} "
            f"train_time:{ms:.0f}ms step_avg:{ms / max(step, 1):.2f}ms"
        )
        self.run.metric(step=step, val_loss=r.val_loss, val_bpb=r.val_bpb, elapsed_s=ms / 1000)
        return r


def train(
    cfg: C.RunConfig,
    run: RunDir,
    resume: str | Path | None = None,
    data_dir: str | Path | None = None,
    *,
    tables: ByteTables | None = None,
) -> TrainResult:
    """Train `cfg` into `run` (see the module docstring). `data_dir` defaults to
    `data.data_path`; `tables` (precomputed byte tables) to those of `data.tokenizer_path` or of
    the tokenizer found beside the shards."""
    di = dist.init(cfg.train.device)
    device, t, e, V = di.device, cfg.train, cfg.eval, cfg.model.vocab_size
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.allow_tf32 = True
    run.open_log(cfg)
    ddir = Path(data_dir or cfg.data.data_path)
    if not str(data_dir or cfg.data.data_path):
        raise ValueError("train: no data folder; pass data_dir or set data.data_path (DATA_PATH)")
    if tables is None:
        tok = cfg.data.tokenizer_path or find_tokenizer(ddir)
        tables = build_byte_tables(str(tok), V)
    tables = tables.to(device)
    val_tokens = load_val_tokens(ddir, e.eval_seq_len, cfg.data.max_val_tokens, V)
    tr = _Trainer(cfg, run, ddir)
    model = tr.model
    n_params = sum(p.numel() for p in model.parameters())
    for line in (
        *train_header(cfg, ddir, val_tokens.numel(), n_params, tr.accum, device),
        tr.opt.describe(),
        f"train_batch_tokens:{t.train_batch_tokens} train_seq_len:{t.train_seq_len} "
        f"iterations:{t.iterations} warmup_steps:{t.warmup_steps} "
        f"max_wallclock_seconds:{t.max_wallclock_seconds:.3f} reserve_seconds:{t.reserve_seconds}",
        f"seed:{t.seed}",
    ):
        dist.log0(line)
    tr.warmup()
    if cfg.optim.ema_decay > 0:
        tr.ema = EMA(model, cfg.optim.ema_decay)
    step, now_ms = 0, 0.0
    if resume:
        step, now_ms = tr.restore(CK.load_checkpoint(resume), str(resume))
        dist.log0(f"resume:{resume} step:{step} train_time:{now_ms:.0f}ms")

    cap_s = t.max_wallclock_seconds - t.reserve_seconds
    budget_ms = 1000.0 * cap_s if t.max_wallclock_seconds > 0 else math.inf
    iters, clock, val, done = t.iterations, _Clock(device, now_ms), None, step
    sched_ms = budget_ms if t.schedule == "time" else math.inf  # 'steps': clock only stops
    clock.start()
    try:
        while True:
            # decisions for the next step, agreed by all ranks (MAX of the flags)
            by_step = t.recur_start_step >= 0 and step >= t.recur_start_step
            progress = max(now_ms / sched_ms, step / max(iters, 1))  # as the LR schedule
            by_frac = t.recur_start_frac >= 0 and progress >= t.recur_start_frac
            want = tr.recur_on and not model.recurrence_active and (by_step or by_frac)
            flags = torch.tensor([float(now_ms >= budget_ms), float(want)], device=device)
            time_up, want = (v > 0 for v in dist.all_reduce_(flags, "max").tolist())
            last = step >= iters or time_up
            every = t.val_loss_every > 0 and step % t.val_loss_every == 0
            if (last and t.final_val) or (not last and every):  # live weights (train.final_val)
                val = tr.validate(val_tokens, tables, step, now_ms := clock.stop())
                clock.start()
            if last:
                break
            if want:
                model.set_recurrence(True)
                vl = model.virtual_layers()
                dist.log0(f"recurrence:activated at step {step}, virtual_layers={vl}")
            mult = lr_multiplier(max(now_ms / sched_ms, step / max(iters, 1)), cfg.optim)
            tr.opt.set_lr_mult(mult)
            tr.opt.set_muon_momentum(muon_momentum_at(step, cfg.optim))
            loss = tr.step()
            if tr.ema is not None:
                tr.ema.update(model)
            step += 1
            loss_v = float(dist.all_reduce_(loss, "avg").item())
            if not math.isfinite(loss_v):
                _diverged(run, step, f"train_loss became {loss_v}")
            tr.loader_state, done, now_ms = tr.loader.state_dict(), step, clock.ms()
            if step <= 10 or (t.train_log_every > 0 and step % t.train_log_every == 0):
                dist.log0(
                    f"step:{step}/{iters} train_loss:{loss_v:.4f} train_time:{now_ms:.0f}ms "
                    f"step_avg:{now_ms / step:.2f}ms"
                )
            run.metric(step=step, train_loss=loss_v, lr_mult=mult, elapsed_s=now_ms / 1000.0)
            if t.checkpoint_every > 0 and step % t.checkpoint_every == 0:
                if tr.save(step, now_ms := clock.stop()) is None:
                    _diverged(run, step, "weights became non-finite")
                clock.start()
    except KeyboardInterrupt:
        path = tr.save(done, clock.stop(), collective=False)
        dist.log0(f"interrupted: step:{done} checkpoint:{path or 'not saved (non-finite weights)'}")
        raise

    now_ms = clock.stop()
    stopped_early = time_up and step < iters
    if stopped_early:
        note = " (safety limit; train.schedule=steps)" if t.schedule == "steps" else ""
        ms = f"{now_ms:.0f}ms"
        dist.log0(f"stopping_early: wallclock_cap train_time:{ms} step:{step}/{iters}{note}")
    if device.type == "cuda":
        mib = torch.cuda.max_memory_allocated() // 2**20, torch.cuda.max_memory_reserved() // 2**20
        dist.log0(f"peak memory allocated: {mib[0]} MiB reserved: {mib[1]} MiB")
    if tr.save(step, now_ms) is None:
        _diverged(run, step, "weights became non-finite")
    if tr.ema is not None:
        dist.log0("ema:applying EMA weights")
        tr.ema.copy_to(model)
    ema_applied = tr.ema is not None
    CK.save_weights(
        run.final_model_path,
        model.state_dict(),
        {"step": step, "ema": ema_applied, **graph_state(model)},
    )
    run.write_result(
        dict(
            status="trained",
            steps=step,
            train_seconds=now_ms / 1000.0,
            stopped_early=stopped_early,
            ema_applied=ema_applied,
            val_loss_live=val.val_loss if val else None,
            val_bpb_live=val.val_bpb if val else None,
        )
    )
    return TrainResult(
        model=model,
        ema=tr.ema,
        ema_applied=ema_applied,
        steps=step,
        train_seconds=now_ms / 1000.0,
        stopped_early=stopped_early,
        val=val,
        tables=tables,
        val_tokens=val_tokens,
        run=run,
    )


def _diverged(run: RunDir, step: int, what: str) -> None:
    ck = run.checkpoint_path
    kept = f"the last good checkpoint is kept at {ck}" if ck.exists() else "no checkpoint was saved"
    run.write_result({"status": "diverged", "diverged_step": step})
    dist.log0(f"diverged: step:{step} {what}")
    raise TrainingDiverged(
        f"training diverged at step {step} ({what}) in run folder {run.path}; {kept}. "
        "Fix: lower the learning rates (optim.matrix_lr / embed_lr / scalar_lr), keep gradient "
        "clipping on (optim.grad_clip_norm), or check the data shards and vocab_size."
    )
