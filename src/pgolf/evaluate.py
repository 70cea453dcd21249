"""Validation scoring: non-overlapping and sliding-window bits per byte, plus n-gram references.

Both model evaluations score windows of the 1-D validation stream (`val_tokens`, int64; target j
is `val_tokens[j + 1]` predicted from `val_tokens[: j + 1]`, so there are N = len - 1 targets):

* `eval_plain` - consecutive, non-overlapping `seq_len` windows, every position scored (the
  baseline's "roundtrip" eval; PR #1550 section 6.1 of the spec).
* `eval_sliding` - windows of `seq_len` starting every `stride` tokens; the first window scores all
  its positions and each later one only its last `stride` positions, so every target after the
  first window sees at least `seq_len - stride` tokens of context (the headline metric of PRs
  #1493 and #1550, spec section 6.2). Windows are kept only while `start + seq_len - stride < N`,
  the rule of PR #1493, so the tail is not scored twice (PR #1550 re-scores ~2,000 trailing
  tokens); every target is scored exactly once and the call checks the count.

Windows are split contiguously across ranks, run in batches of `batch_seqs` under
`torch.no_grad()` (not `inference_mode`: PR #1550 found that inference tensors poison caches such
as rotary tables that training later reuses), with the model in eval mode (restored afterwards).
Windows that run past the end of the stream and a short last batch are padded to the full
[batch_seqs, seq_len] shape, so a model compiled with static shapes never recompiles; padding is
never scored (the model must be causal). NLL, token and byte counts are summed in float64 and
all-reduced; bytes follow the spec section 2.2 rule via `pgolf.bpb.target_bytes` (or the
folder's byte sidecar, read at the targets' stream positions).

Log lines in the challenge's shape come from `format_eval_line`. (The n-gram reference points
live in the lab: `pgolf.lab.data.references`.)
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pgolf import dist as pdist
from pgolf.bpb import ByteTables, bits_per_byte, target_bytes


@dataclass(frozen=True)
class EvalResult:
    val_loss: float
    """Mean NLL per scored token (nats)."""
    val_bpb: float
    nll_sum: float
    """Sum of per-token NLL in nats (float64, all ranks)."""
    tokens: int
    """Number of scored targets (all ranks)."""
    bytes: int
    seconds: float


# ----------------------------------------------------------------------------------------------
# Window plans


def plain_windows(n_targets: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Non-overlapping windows: (starts, lo, hi), scoring offsets [lo, hi) of each window."""
    _check(n_targets, seq_len, seq_len)
    starts = torch.arange(0, n_targets, seq_len, dtype=torch.int64)
    lo = torch.zeros_like(starts)
    hi = (n_targets - starts).clamp(max=seq_len)
    return starts, lo, hi


def sliding_windows(
    n_targets: int, seq_len: int, stride: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sliding windows (starts, lo, hi): target `start + o` is scored for o in [lo, hi).

    Starts are 0, stride, 2*stride, ... while `start + seq_len - stride < n_targets` (start 0 is
    always kept). Window 0 scores offsets [0, min(seq_len, N)); window k > 0 scores
    [seq_len - stride, min(seq_len, N - start)), which begins exactly where window k - 1 ended,
    so the scored ranges tile [0, N) without gaps or overlaps.
    """
    _check(n_targets, seq_len, stride)
    n_win = 1 + max(0, -(-(n_targets - seq_len) // stride))
    starts = torch.arange(n_win, dtype=torch.int64) * stride
    lo = torch.full_like(starts, seq_len - stride)
    lo[0] = 0
    hi = (n_targets - starts).clamp(max=seq_len)
    return starts, lo, hi


def _check(n_targets: int, seq_len: int, stride: int) -> None:
    if n_targets < 1:
        raise ValueError("evaluate: the validation stream needs at least 2 tokens")
    if seq_len < 1 or not 1 <= stride <= seq_len:
        raise ValueError(
            f"evaluate: need seq_len >= 1 and 1 <= stride <= seq_len, got seq_len={seq_len} "
            f"stride={stride}; fix eval.eval_seq_len / eval.eval_stride"
        )


# ----------------------------------------------------------------------------------------------
# Scoring core


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def score_batch(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
    tab: ByteTables,
    autocast_dtype: torch.dtype | None = None,
    at: torch.Tensor | None = None,
    tilt=None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The scoring primitive: inputs x / targets y [B,T] (on the model's device), row b scores
    offsets [lo[b], hi[b]). Returns (nll [B,T] fp32 with autograd when grad is enabled, mask
    [B,T] bool, bytes [B,T]). Every evaluator and every TTT mode scores through this. `at`
    [B,T]: the targets' positions in the validation stream (read by a byte sidecar). `tilt`
    (a `pgolf.ngram_tilt.Tilt`, needs `at`): the n-gram tilt's detached term is added, so the
    value is the tilted NLL and the gradient the model's own."""
    with _autocast(x.device, autocast_dtype):
        logits = model(x)
    nll = F.cross_entropy(
        logits.float().reshape(-1, logits.size(-1)), y.reshape(-1), reduction="none"
    ).view(y.shape)
    if tilt is not None:
        if at is None:
            raise ValueError("evaluate: the n-gram tilt needs the targets' stream positions")
        nll = nll + tilt.delta(logits, y, at)
    pos = torch.arange(x.size(1), device=x.device)
    mask = (pos >= lo.to(x.device)[:, None]) & (pos < hi.to(x.device)[:, None])
    return nll, mask, target_bytes(x, y, tab, at)


def score_windows(
    model: nn.Module,
    val_tokens: torch.Tensor,
    plan: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    seq_len: int,
    batch_seqs: int,
    tables: ByteTables,
    device: torch.device | str,
    autocast_dtype: torch.dtype | None = None,
    token_nll: torch.Tensor | None = None,
    pad_batches: bool = True,
    *,
    shard: bool = True,
    reduce: bool = True,
    bar: str | None = "eval",
    tilt=None,
) -> EvalResult:
    """Score the windows `plan` = (starts, lo, hi) of the stream without grad, in eval mode.

    Target `start + o` is scored for o in [lo, hi). `shard`: split the windows contiguously
    across ranks; `reduce`: all-reduce the sums (and check their count). With shard and reduce
    off (a rank scoring its own windows) the result holds this rank's sums only. `bar`: the
    progress bar's label (`pgolf.dist.progress`; None: no bar); `tilt`: see `score_batch`."""
    starts, lo, hi = plan
    (r,) = score_spans(
        model,
        val_tokens,
        starts,
        [(lo, hi)],
        seq_len,
        batch_seqs,
        tables,
        device,
        autocast_dtype,
        [token_nll],
        pad_batches,
        shard=shard,
        reduce=reduce,
        bar=bar,
        tilt=tilt,
    )
    return r


def score_spans(
    model: nn.Module,
    val_tokens: torch.Tensor,
    starts: torch.Tensor,
    spans: list[tuple[torch.Tensor, torch.Tensor]],
    seq_len: int,
    batch_seqs: int,
    tables: ByteTables,
    device: torch.device | str,
    autocast_dtype: torch.dtype | None = None,
    token_nlls: list[torch.Tensor | None] | None = None,
    pad_batches: bool = True,
    *,
    shard: bool = True,
    reduce: bool = True,
    bar: str | None = "eval",
    tilt=None,
) -> list[EvalResult]:
    """One forward pass over the windows at `starts`, scored several ways: for each (lo, hi) of
    `spans` (one value per window), target `start + o` counts for o in [lo, hi) -> one result per
    span, each with the pass's time. `token_nlls`: per span, as `token_nll` of `score_windows`.
    Otherwise as `score_windows`, which is this with one span."""
    device = torch.device(device)
    if batch_seqs < 1:
        raise ValueError(f"evaluate: batch_seqs must be >= 1, got {batch_seqs}")
    tokens = torch.as_tensor(val_tokens)
    if tokens.ndim != 1:
        raise ValueError(f"evaluate: val_tokens must be 1-D, got shape {tuple(tokens.shape)}")
    tokens = tokens.to(torch.int64)
    n_tok = tokens.numel()
    k = len(spans)
    token_nlls = list(token_nlls or [None] * k)
    expected = [int((hi - lo).sum()) for lo, hi in spans]

    info = pdist.info()
    n_win = starts.numel()
    if shard:
        a = n_win * info.rank // info.world_size
        b = n_win * (info.rank + 1) // info.world_size
        starts, spans = starts[a:b], [(lo[a:b], hi[a:b]) for lo, hi in spans]

    tab = tables.to(device)
    pos = torch.arange(seq_len, device=device)
    ar = torch.arange(seq_len + 1, device=tokens.device)
    acc = torch.zeros(k, 3, dtype=torch.float64, device=device)  # per span: nll, tokens, bytes
    was_training = model.training
    _sync(device)
    t0 = time.perf_counter()
    model.eval()
    try:
        with torch.no_grad():
            for i in pdist.progress(range(0, starts.numel(), batch_seqs), desc=bar):
                sl = slice(i, i + batch_seqs)
                s = starts[sl]
                n_pad = batch_seqs - s.numel() if pad_batches else 0
                if n_pad > 0:  # filler rows (masked out) keep the batch shape static
                    s = torch.cat([s, s[:1].expand(n_pad)])
                idx = (s.to(tokens.device)[:, None] + ar).clamp_(max=n_tok - 1)
                chunk = tokens[idx].to(device, non_blocking=True)
                nll = nbytes = None
                for j, (lo, hi) in enumerate(spans):
                    lo_b, hi_b = lo[sl], hi[sl]
                    if n_pad > 0:
                        lo_b = torch.cat([lo_b, lo_b.new_zeros(n_pad)])
                        hi_b = torch.cat([hi_b, hi_b.new_zeros(n_pad)])
                    if nll is None:  # the forward pass, once per batch
                        x, y = chunk[:, :-1], chunk[:, 1:]
                        nll, mask, nbytes = score_batch(
                            model, x, y, lo_b, hi_b, tab, autocast_dtype, idx[:, 1:], tilt=tilt
                        )
                    else:
                        mask = (pos >= lo_b.to(device)[:, None]) & (pos < hi_b.to(device)[:, None])
                    acc[j, 0] += torch.where(mask, nll.double(), 0.0).sum()
                    acc[j, 1] += mask.sum()
                    acc[j, 2] += torch.where(mask, nbytes.double(), 0.0).sum()
                    if (token_nll := token_nlls[j]) is not None:
                        tgt = s.to(device)[:, None] + pos
                        token_nll.index_add_(
                            0, tgt[mask].to(token_nll.device), nll[mask].to(token_nll)
                        )
    finally:
        model.train(was_training)
    if reduce:
        pdist.all_reduce_(acc, "sum")
    _sync(device)
    seconds = time.perf_counter() - t0
    out = []
    for j, (nll_sum, n, nb) in enumerate(acc.tolist()):
        if reduce and int(n) != expected[j]:
            raise RuntimeError(f"evaluate: scored {int(n)} targets, expected {expected[j]}")
        out.append(result_from_sums(nll_sum, int(n), int(nb), seconds))
    return out


def result_from_sums(nll_sum: float, n: int, nbytes: int, seconds: float) -> EvalResult:
    return EvalResult(
        val_loss=nll_sum / max(n, 1),
        val_bpb=bits_per_byte(nll_sum, n, nbytes),
        nll_sum=nll_sum,
        tokens=n,
        bytes=nbytes,
        seconds=seconds,
    )


def eval_plain(
    model: nn.Module,
    val_tokens: torch.Tensor,
    seq_len: int,
    batch_seqs: int,
    tables: ByteTables,
    device: torch.device | str,
    autocast_dtype: torch.dtype | None = None,
    *,
    token_nll: torch.Tensor | None = None,
    pad_batches: bool = True,
) -> EvalResult:
    """Score consecutive non-overlapping `seq_len` windows (all positions scored).

    `val_tokens` normally has length k*seq_len + 1; a shorter last window is scored too (padded).
    `token_nll` (float64 [len - 1], optional) receives, via index_add, the NLL of every target
    scored on this rank - for tests and per-token analysis.
    """
    plan = plain_windows(torch.as_tensor(val_tokens).numel() - 1, seq_len)
    return score_windows(
        model,
        val_tokens,
        plan,
        seq_len,
        batch_seqs,
        tables,
        device,
        autocast_dtype,
        token_nll,
        pad_batches,
        bar="eval plain",
    )


def eval_sliding(
    model: nn.Module,
    val_tokens: torch.Tensor,
    seq_len: int,
    stride: int,
    batch_seqs: int,
    tables: ByteTables,
    device: torch.device | str,
    autocast_dtype: torch.dtype | None = None,
    *,
    token_nll: torch.Tensor | None = None,
    pad_batches: bool = True,
    tilt=None,
) -> EvalResult:
    """Sliding-window eval (see `sliding_windows`); each of the len - 1 targets scored once.

    `result.tokens == len(val_tokens) - 1` always (checked; a mismatch raises RuntimeError).
    `token_nll` as in `eval_plain`; `tilt`: the n-gram tilt (see `score_batch`).
    """
    n_targets = torch.as_tensor(val_tokens).numel() - 1
    plan = sliding_windows(n_targets, seq_len, stride)
    r = score_windows(
        model,
        val_tokens,
        plan,
        seq_len,
        batch_seqs,
        tables,
        device,
        autocast_dtype,
        token_nll,
        pad_batches,
        bar="eval sliding",
        tilt=tilt,
    )
    pdist.log0(
        f"eval_sliding windows:{plan[0].numel()} seq_len:{seq_len} stride:{stride} "
        f"scored_tokens:{r.tokens} targets:{n_targets}",
        console=False,
    )
    return r


def eval_plain_sliding(
    model: nn.Module,
    val_tokens: torch.Tensor,
    seq_len: int,
    stride: int,
    batch_seqs: int,
    tables: ByteTables,
    device: torch.device | str,
    autocast_dtype: torch.dtype | None = None,
) -> tuple[EvalResult, EvalResult]:
    """(plain, sliding): the results of `eval_plain` and `eval_sliding`, in one forward pass when
    `seq_len` is a multiple of `stride`. Then every plain window starts where a sliding window
    starts (a multiple of seq_len is one of stride) and runs over the same tokens, so the pass
    over the sliding windows - plus the last plain window when it starts past the last sliding
    one, too short to be kept - scores both, each target of each once. Each result carries the
    one pass's time. Otherwise the two passes run."""
    n = torch.as_tensor(val_tokens).numel() - 1
    if seq_len % stride:
        args = (batch_seqs, tables, device, autocast_dtype)
        return (
            eval_plain(model, val_tokens, seq_len, *args),
            eval_sliding(model, val_tokens, seq_len, stride, *args),
        )
    starts, lo, hi = sliding_windows(n, seq_len, stride)
    p_starts = plain_windows(n, seq_len)[0]
    extra = p_starts[p_starts > starts[-1]]  # at most the plain tail window
    nil = extra.new_zeros(extra.numel())
    starts = torch.cat([starts, extra])
    plain_hi = torch.where(starts % seq_len == 0, (n - starts).clamp(max=seq_len), 0)
    plain, sliding = score_spans(
        model,
        val_tokens,
        starts,
        [(torch.zeros_like(starts), plain_hi), (torch.cat([lo, nil]), torch.cat([hi, nil]))],
        seq_len,
        batch_seqs,
        tables,
        device,
        autocast_dtype,
        bar="eval plain+sliding",
    )
    pdist.log0(
        f"eval_sliding windows:{starts.numel() - extra.numel()} seq_len:{seq_len} stride:{stride} "
        f"scored_tokens:{sliding.tokens} targets:{n}",
        console=False,
    )
    return plain, sliding


def format_eval_line(label: str, r: EvalResult, extra: str = "") -> list[str]:
    """The challenge's two lines: 4-decimal summary with eval_time, and the 8-decimal `_exact`."""
    mid = f" {extra}" if extra else ""
    return [
        f"{label} val_loss:{r.val_loss:.4f} val_bpb:{r.val_bpb:.4f}{mid} "
        f"eval_time:{1000.0 * r.seconds:.0f}ms",
        f"{label}_exact val_loss:{r.val_loss:.8f} val_bpb:{r.val_bpb:.8f}",
    ]
