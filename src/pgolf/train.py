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
  The progress is computed once per step, at the clock read that ended the previous step, and
  drives both the LR and the recurrence switch.
* One object (`_Trainer`) owns the run's state and every decision of the loop; `train()` builds
  it and returns its `TrainResult`; the caller records the result (`pipeline.train_stage`).
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
from pgolf.bpb import ByteTables, build_byte_tables, with_sidecar
from pgolf.data import find_tokenizer, load_val_tokens, make_train_loader
from pgolf.evaluate import EvalResult, eval_plain
from pgolf.model import GPT, graph_state, restore_graph_state
from pgolf.optim import EMA, build_optimizers, clip_grad_norm_, lr_multiplier, muon_momentum_at
from pgolf.runlog import RunDir, train_header


class TrainingDiverged(RuntimeError):
    """The training loss became NaN/inf; the message names the step, run folder and fixes."""

    def __init__(self, message: str, step: int) -> None:
        super().__init__(message)
        self.step = step
        """The step at which training diverged (result.json `diverged_step`)."""


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

    def record(self) -> dict[str, Any]:
        """The trained run's result.json fields (the caller writes them)."""
        val = self.val
        return dict(
            status="trained",
            steps=self.steps,
            train_seconds=self.train_seconds,
            stopped_early=self.stopped_early,
            ema_applied=self.ema_applied,
            val_loss_live=val.val_loss if val else None,
            val_bpb_live=val.val_bpb if val else None,
        )


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
    """One training run: its pieces (model, optimizers, loader, EMA), its state (steps, clock,
    last validation, the stop flag) and every decision of the loop (stop and recurrence,
    all-reduced; LR and momentum; validation, checkpoints, divergence; the log lines). `train()`
    builds it and calls `run_training`; nothing outside sets its state."""

    def __init__(
        self,
        cfg: C.RunConfig,
        run: RunDir,
        data_dir: Path,
        val_tokens: Tensor,
        tables: ByteTables,
    ) -> None:
        self.cfg, self.run, self.data_dir = cfg, run, data_dir
        self.val_tokens, self.tables = val_tokens, tables
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
        t = cfg.train
        self.budget_ms = 1000.0 * (t.max_wallclock_seconds - t.reserve_seconds)
        if t.max_wallclock_seconds <= 0:
            self.budget_ms = math.inf
        self.sched_ms = self.budget_ms if t.schedule == "time" else math.inf  # steps: clock stops
        self.steps = 0
        """Optimizer steps taken (a resumed run starts at its checkpoint's)."""
        self.done = 0
        """Steps whose loader state is `loader_state` (what an interrupt saves)."""
        self.now_ms = 0.0
        """Training time at the last clock read."""
        self.clock = _Clock(self.device)
        self.val: EvalResult | None = None
        self.time_up = False

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

    # ------------------------------------------------------------------------------------------
    # The run

    def run_training(self, resume: str | Path | None = None) -> TrainResult:
        """Header, compile warm-up, EMA, resume, the loop, the final checkpoint and weights."""
        self.log_header()
        self.warmup()
        if self.cfg.optim.ema_decay > 0:
            self.ema = EMA(self.model, self.cfg.optim.ema_decay)
        if resume:
            self.restore(CK.load_checkpoint(resume), str(resume))
            dist.log0(f"resume:{resume} step:{self.steps} train_time:{self.now_ms:.0f}ms")
        self.clock = _Clock(self.device, self.now_ms)
        self.loop()
        return self.finish()

    def log_header(self) -> None:
        cfg, t = self.cfg, self.cfg.train
        n_params = sum(p.numel() for p in self.model.parameters())
        n_val = self.val_tokens.numel()
        for line in (
            *train_header(cfg, self.data_dir, n_val, n_params, self.accum, self.device),
            self.opt.describe(),
            f"train_batch_tokens:{t.train_batch_tokens} train_seq_len:{t.train_seq_len} "
            f"iterations:{t.iterations} warmup_steps:{t.warmup_steps} "
            f"max_wallclock_seconds:{t.max_wallclock_seconds:.3f} "
            f"reserve_seconds:{t.reserve_seconds}",
            f"seed:{t.seed}",
        ):
            dist.log0(line)

    def progress(self) -> float:
        """Training progress in [0, 1+]: the larger of wall-clock progress (schedule=time) and
        iteration progress; computed once per step, it drives both the LR and the recurrence."""
        return max(self.now_ms / self.sched_ms, self.steps / max(self.cfg.train.iterations, 1))

    def decide(self, progress: float) -> tuple[bool, bool]:
        """(time is up, switch recurrence on now), agreed by all ranks (MAX of the flags)."""
        t = self.cfg.train
        by_step = t.recur_start_step >= 0 and self.steps >= t.recur_start_step
        by_frac = t.recur_start_frac >= 0 and progress >= t.recur_start_frac
        want = self.recur_on and not self.model.recurrence_active and (by_step or by_frac)
        flags = torch.tensor(
            [float(self.now_ms >= self.budget_ms), float(want)], device=self.device
        )
        time_up, want = (v > 0 for v in dist.all_reduce_(flags, "max").tolist())
        return time_up, want

    def loop(self) -> None:
        t = self.cfg.train
        self.clock.start()
        try:
            while True:
                progress = self.progress()
                time_up, recur = self.decide(progress)
                last = self.steps >= t.iterations or time_up
                every = t.val_loss_every > 0 and self.steps % t.val_loss_every == 0
                if (last and t.final_val) or (not last and every):  # live weights (final_val)
                    self.validate()
                if last:
                    self.time_up = time_up
                    return
                if recur:
                    self.model.set_recurrence(True)
                    vl = self.model.virtual_layers()
                    dist.log0(f"recurrence:activated at step {self.steps}, virtual_layers={vl}")
                self.train_step(progress)
        except KeyboardInterrupt:
            path = self.save(self.done, self.clock.stop(), collective=False)
            saved = path or "not saved (non-finite weights)"
            dist.log0(f"interrupted: step:{self.done} checkpoint:{saved}")
            raise

    def train_step(self, progress: float) -> None:
        """LR and momentum for this step, the step, EMA, divergence check, log, checkpoint."""
        t, iters = self.cfg.train, self.cfg.train.iterations
        mult = lr_multiplier(progress, self.cfg.optim)
        self.opt.set_lr_mult(mult)
        self.opt.set_muon_momentum(muon_momentum_at(self.steps, self.cfg.optim))
        loss = self.step()
        if self.ema is not None:
            self.ema.update(self.model)
        self.steps += 1
        loss_v = float(dist.all_reduce_(loss, "avg").item())
        if not math.isfinite(loss_v):
            self.diverged(f"train_loss became {loss_v}")
        self.loader_state, self.done, self.now_ms = (
            self.loader.state_dict(),
            self.steps,
            self.clock.ms(),
        )
        step, ms = self.steps, self.now_ms
        if step <= 10 or (t.train_log_every > 0 and step % t.train_log_every == 0):
            dist.log0(
                f"step:{step}/{iters} train_loss:{loss_v:.4f} train_time:{ms:.0f}ms "
                f"step_avg:{ms / step:.2f}ms"
            )
        self.run.metric(step=step, train_loss=loss_v, lr_mult=mult, elapsed_s=ms / 1000.0)
        if t.checkpoint_every > 0 and step % t.checkpoint_every == 0:
            self.now_ms = self.clock.stop()
            if self.save(step, self.now_ms) is None:
                self.diverged("weights became non-finite")
            self.clock.start()

    def finish(self) -> TrainResult:
        """Stop the clock, report, save the last checkpoint, apply EMA, save the final weights."""
        self.now_ms = self.clock.stop()
        step, iters = self.steps, self.cfg.train.iterations
        stopped_early = self.time_up and step < iters
        if stopped_early:
            note = (
                " (safety limit; train.schedule=steps)"
                if self.cfg.train.schedule == "steps"
                else ""
            )
            ms = f"{self.now_ms:.0f}ms"
            dist.log0(f"stopping_early: wallclock_cap train_time:{ms} step:{step}/{iters}{note}")
        if self.device.type == "cuda":
            mib = torch.cuda.max_memory_allocated() // 2**20
            res = torch.cuda.max_memory_reserved() // 2**20
            dist.log0(f"peak memory allocated: {mib} MiB reserved: {res} MiB")
        if self.save(step, self.now_ms) is None:
            self.diverged("weights became non-finite")
        if self.ema is not None:
            dist.log0("ema:applying EMA weights")
            self.ema.copy_to(self.model)
        ema_applied = self.ema is not None
        CK.save_weights(
            self.run.final_model_path,
            self.model.state_dict(),
            {"step": step, "ema": ema_applied, **graph_state(self.model)},
        )
        return TrainResult(
            model=self.model,
            ema=self.ema,
            ema_applied=ema_applied,
            steps=step,
            train_seconds=self.now_ms / 1000.0,
            stopped_early=stopped_early,
            val=self.val,
            tables=self.tables,
            val_tokens=self.val_tokens,
            run=self.run,
        )

    def diverged(self, what: str) -> None:
        """Log and raise TrainingDiverged (the caller records it in the run's result)."""
        ck = self.run.checkpoint_path
        kept = (
            f"the last good checkpoint is kept at {ck}"
            if ck.exists()
            else "no checkpoint was saved"
        )
        dist.log0(f"diverged: step:{self.steps} {what}")
        raise TrainingDiverged(
            f"training diverged at step {self.steps} ({what}) in run folder {self.run.path}; "
            f"{kept}. Fix: lower the learning rates (optim.matrix_lr / embed_lr / scalar_lr), "
            "keep gradient clipping on (optim.grad_clip_norm), or check the data shards and "
            "vocab_size.",
            self.steps,
        )

    # ------------------------------------------------------------------------------------------
    # The pieces

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

    def restore(self, ck: CK.Checkpoint, source: str) -> None:
        """Load a checkpoint's state: weights, optimizer, loader, EMA, RNG, steps, train time."""
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
        self.steps = self.done = int(ck.meta["step"])
        self.now_ms = float(ck.meta["train_ms"])

    def validate(self) -> None:
        """Score the live weights (the clock stopped meanwhile); log, metric, keep as `val`."""
        self.now_ms = ms = self.clock.stop()
        e, iters, step = self.cfg.eval, self.cfg.train.iterations, self.steps
        r = eval_plain(
            self.model,
            self.val_tokens,
            e.eval_seq_len,
            e.val_batch_seqs,
            self.tables,
            self.device,
            self.autocast_dtype,
        )
        dist.log0(
            f"step:{step}/{iters} val_loss:{r.val_loss:.4f} val_bpb:{r.val_bpb:.4f} "
            f"train_time:{ms:.0f}ms step_avg:{ms / max(step, 1):.2f}ms"
        )
        self.run.metric(step=step, val_loss=r.val_loss, val_bpb=r.val_bpb, elapsed_s=ms / 1000)
        self.val = r
        self.clock.start()


def train(
    cfg: C.RunConfig,
    run: RunDir,
    resume: str | Path | None = None,
    data_dir: str | Path | None = None,
    *,
    tables: ByteTables | None = None,
) -> TrainResult:
    """Train `cfg` into `run` (see the module docstring): its log, metrics, checkpoints and final
    weights; the caller records the outcome in result.json (`TrainResult.record`, or the
    `TrainingDiverged` it raises; `pgolf.pipeline.train_stage`). `data_dir` defaults to
    `data.data_path`; `tables` (precomputed byte tables) to those of `data.tokenizer_path` or of
    the tokenizer found beside the shards."""
    di = dist.init(cfg.train.device)
    device, e, V = di.device, cfg.eval, cfg.model.vocab_size
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
    val_tokens = load_val_tokens(ddir, e.eval_seq_len, cfg.data.max_val_tokens, V)
    if tables.sidecar is None:  # the folder's byte sidecar (CaseOps), if it has one
        tables = with_sidecar(tables, ddir, val_tokens.numel(), cfg.data.caseops)
    tables = tables.to(device)
    return _Trainer(cfg, run, ddir, val_tokens, tables).run_training(resume)
