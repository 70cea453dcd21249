"""Optimizers, schedules, gradient clipping and the weight EMA (spec sections 4.1-4.4).

* `zeropower`: Newton-Schulz orthogonalisation (Muon, Keller Jordan), batched over leading dims;
  per-iteration Polar Express coefficients (arXiv:2505.16932, PR #1344) or the fixed quintic;
  optional MuonEq-R row normalisation (PR #1344/#1550).
* `Muon`: Nesterov momentum, orthogonalised update scaled by sqrt(max(1, rows/cols)), decoupled
  weight decay. Same-shape matrices are orthogonalised as one batch; under a process group of
  world size > 1 each rank does a slice of the batch and the results are all-gathered (the caller
  must have averaged the gradients already).
* `param_kind` / `build_optimizers`: PR #1550's parameter groups from the role table
  `pgolf.model.PARAM_ROLES` and `GROUP_SETTINGS`: Muon for block matrices, AdamW for embeddings
  and for all the rest.
* `lr_multiplier`, `muon_momentum_at`: wall-clock warm-down and momentum warm-up.
* `clip_grad_norm_`: global-norm clip. We clip the *averaged* gradients (as PR #1493), not each
  rank's local gradients before communication (PR #1550, spec section 10.5 item 3).
* `EMA`: fp32 shadow of the weights, ema <- decay*ema + (1-decay)*theta.

Row normalisation (spec 10.5 item 2): we copy PR #1550. The matrix is put in the wide orientation
(transposed when rows > cols) and the rows of *that* matrix are normalised, so for a tall matrix
(mlp.fc) it is the original columns that get unit norm. PR #1493/#1394 normalise original rows.

`Optimizers.set_lr_mult(m)` sets every group's lr to base_lr*m; Muon and AdamW both decay weights
by lr*wd, so weight decay follows the schedule too, as in PR #1550.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.distributed as tdist
from torch import Tensor, nn

from pgolf.config import OptimConfig
from pgolf.dist import is_dist
from pgolf.model import param_role

Coeffs = tuple[float, float, float]

NS_COEFFS: dict[str, list[Coeffs]] = {
    "polar_express": [
        (8.156554524902461, -22.48329292557795, 15.878769915207462),
        (4.042929935166739, -2.808917465908714, 0.5000178451051316),
        (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
        (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
        (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
    ],
    "quintic": [(3.4445, -4.7750, 2.0315)],
}


def ns_schedule(coeffs: str | Sequence[Coeffs], steps: int) -> list[Coeffs]:
    """The (a, b, c) of each of `steps` iterations: the first `steps` of the list, then its last."""
    table = NS_COEFFS[coeffs] if isinstance(coeffs, str) else list(coeffs)
    if not table:
        raise ValueError("optim.ns_schedule: empty coefficient list")
    return [tuple(table[min(i, len(table) - 1)]) for i in range(steps)]  # type: ignore[misc]


def _compute_dtype(name: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if name in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return name if isinstance(name, torch.dtype) else getattr(torch, name)


def zeropower(
    G: Tensor,
    coeffs: str | Sequence[Coeffs] = "polar_express",
    steps: int = 5,
    row_norm: bool = False,
    eps: float = 1e-7,
    dtype: str | torch.dtype | None = None,
    row_axis: str = "wide",
) -> Tensor:
    """Approximate orthogonalisation U·S'·Vᵀ (S' ≈ I) of G [..., m, n] by Newton-Schulz.

    Works in the wide orientation (transposes when m > n). With `row_norm` (MuonEq-R) each row of
    the *wide-oriented* matrix is divided by max(‖row‖, eps) first (= columns of a tall G, as in
    PR #1550); `row_axis='rows'` divides the rows of G itself, whatever its shape (PR #1855).
    Then X <- X / (‖X‖_F + eps) and `steps` iterations X <- aX + (bA + cA²)X, A = XXᵀ.
    `dtype` is the compute dtype ('auto'/None: bf16 on CUDA, fp32 elsewhere); the result is
    returned in that dtype, shape of G.
    """
    if G.ndim < 2:
        raise ValueError(f"optim.zeropower: need a [..., m, n] tensor, got shape {tuple(G.shape)}")
    m, n = G.shape[-2:]
    X = G.reshape(-1, m, n).to(_compute_dtype(dtype, G.device))
    if row_norm and row_axis == "rows":
        X = X / X.float().norm(dim=-1, keepdim=True).clamp_min(eps).to(X.dtype)
    tall = m > n
    if tall:
        X = X.mT
    if row_norm and row_axis != "rows":
        X = X / X.norm(dim=-1, keepdim=True).clamp_min(eps)
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + eps)
    for a, b, c in ns_schedule(coeffs, steps):
        A = torch.bmm(X, X.mT)
        B = torch.baddbmm(A, A, A, beta=b, alpha=c)
        X = torch.baddbmm(X, B, X, beta=a)
    if tall:
        X = X.mT
    return X.reshape(G.shape)


def _sharded_zeropower(U: Tensor, **ns: Any) -> Tensor:
    """zeropower of a stack U [k, m, n], each rank doing ~k/world of it, then all-gathered."""
    world, rank = tdist.get_world_size(), tdist.get_rank()
    k = U.shape[0]
    chunk = -(-k // world)
    if chunk * world > k:
        U = torch.cat([U, U.new_zeros(chunk * world - k, *U.shape[1:])])
    local = zeropower(U[rank * chunk : (rank + 1) * chunk], **ns).contiguous()
    parts = [torch.empty_like(local) for _ in range(world)]
    tdist.all_gather(parts, local)
    return torch.cat(parts)[:k]


class Muon(torch.optim.Optimizer):
    """Muon for 2-D parameters (Keller Jordan), with PR #1550's MuonEq-R + Polar Express options.

    Per step: b <- μb + g; u = g + μb (nesterov) or b; O = zeropower(u); W <- W(1 - lr·wd);
    W <- W - lr·sqrt(max(1, rows/cols))·O. `batched=False` is the per-matrix reference path;
    `shard=False` disables splitting the NS work across ranks. `ns_dtype`: 'auto' (bf16 on CUDA,
    fp32 on CPU), 'float32' or 'bfloat16'.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 0.02,
        momentum: float = 0.95,
        weight_decay: float = 0.0,
        nesterov: bool = True,
        ns_coeffs: str | Sequence[Coeffs] = "polar_express",
        ns_steps: int = 5,
        row_norm: bool = False,
        eps: float = 1e-7,
        ns_dtype: str = "auto",
        batched: bool = True,
        shard: bool = True,
    ) -> None:
        if lr < 0 or momentum < 0 or weight_decay < 0 or ns_steps < 1:
            raise ValueError("optim.Muon: lr, momentum, weight_decay must be >= 0, ns_steps >= 1")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
        defaults.update(ns_coeffs=ns_coeffs, ns_steps=ns_steps, row_norm=row_norm, eps=eps)
        super().__init__(params, dict(defaults, ns_dtype=ns_dtype))
        self.batched, self.shard = batched, shard
        bad = [tuple(p.shape) for g in self.param_groups for p in g["params"] if p.ndim != 2]
        if bad:
            raise ValueError(f"optim.Muon: only 2-D parameters, got shapes {bad}; use AdamW")

    def _orthogonalise(self, U: Tensor, group: dict[str, Any]) -> Tensor:
        ns = dict(coeffs=group["ns_coeffs"], steps=group["ns_steps"], row_norm=group["row_norm"])
        ns.update(row_axis=group.get("row_axis", "wide"))
        ns.update(eps=group["eps"], dtype=group["ns_dtype"])
        if self.shard and U.shape[0] > 1 and is_dist():
            return _sharded_zeropower(U, **ns)
        return zeropower(U, **ns)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None if closure is None else torch.enable_grad()(closure)()
        for group in self.param_groups:
            mu, lr, wd = group["momentum"], group["lr"], group["weight_decay"]
            params, updates = [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad)
                buf = state["momentum_buffer"]
                buf.mul_(mu).add_(p.grad)
                params.append(p)
                updates.append(p.grad.add(buf, alpha=mu) if group["nesterov"] else buf)
            # Group same-shape matrices into one batch (the reference path uses batches of one).
            batches: dict[Any, list[int]] = {}
            for i, p in enumerate(params):
                key = (tuple(p.shape), p.dtype, p.device) if self.batched else i
                batches.setdefault(key, []).append(i)
            for idx in batches.values():
                ps = [params[i] for i in idx]
                O = self._orthogonalise(torch.stack([updates[i] for i in idx]), group)
                scale = math.sqrt(max(1.0, ps[0].shape[0] / ps[0].shape[1]))
                if wd:
                    torch._foreach_mul_(ps, 1.0 - lr * wd)
                torch._foreach_add_(ps, list(O.to(ps[0].dtype).unbind(0)), alpha=-lr * scale)
        return loss


# ----------------------------------------------------------------------------------------------
# Parameter groups as data


# kind -> (optimizer, OptimConfig lr field, OptimConfig weight-decay field)
GROUP_SETTINGS: dict[str, tuple[str, str, str]] = {
    "matrix": ("muon", "matrix_lr", "muon_wd"),
    "embed": ("adamw", "embed_lr", "embed_wd"),
    "scalar": ("adamw", "scalar_lr", "scalar_wd"),
}

_WRAPPER_PREFIXES = ("_orig_mod.", "module.")


def canonical_name(name: str) -> str:
    """Strip torch.compile / DDP wrapper prefixes from a parameter name."""
    while name.startswith(_WRAPPER_PREFIXES):
        name = next(name[len(p) :] for p in _WRAPPER_PREFIXES if name.startswith(p))
    return name


def param_kind(name: str, p: Tensor) -> str:
    """'matrix', 'embed' or 'scalar': the optimizer role of `pgolf.model.PARAM_ROLES`."""
    return param_role(canonical_name(name), p.ndim).optim


def muon_momentum_at(step: int, ocfg: OptimConfig) -> float:
    """Linear warm-up from muon_momentum_warmup_start to muon_momentum over the warm-up steps."""
    n = ocfg.muon_momentum_warmup_steps
    phi = 1.0 if n <= 0 else min(max(step, 0) / n, 1.0)
    return (1.0 - phi) * ocfg.muon_momentum_warmup_start + phi * ocfg.muon_momentum


def lr_multiplier(frac: float, ocfg: OptimConfig) -> float:
    """1 until 1 - warmdown_frac of the budget, then linear down to lr_floor at frac = 1
    (`lr_floor_mode` 'lerp'); 'max' (PR #1855's MIN_LR): max(linear down to 0, lr_floor), flat
    at the floor from frac = 1 - warmdown_frac·lr_floor on."""
    wd = ocfg.warmdown_frac
    if wd <= 0 or frac <= 1.0 - wd:
        return 1.0
    t = min((frac - (1.0 - wd)) / wd, 1.0)
    if ocfg.lr_floor_mode == "max":
        return max(1.0 - t, ocfg.lr_floor)
    return 1.0 - t * (1.0 - ocfg.lr_floor)


class Optimizers:
    """Muon (block matrices) + AdamW (embeddings, scalars) driven as one optimizer."""

    def __init__(self, named: Sequence[tuple[str, Tensor]], ocfg: OptimConfig) -> None:
        self.ocfg = ocfg
        self.kinds = {canonical_name(n): param_kind(n, p) for n, p in named}
        self.counts = dict.fromkeys(GROUP_SETTINGS, 0)
        by_kind: dict[str, list[Tensor]] = {k: [] for k in GROUP_SETTINGS}
        for n, p in named:
            by_kind[self.kinds[canonical_name(n)]].append(p)
            self.counts[self.kinds[canonical_name(n)]] += p.numel()
        self.tied = "lm_head.weight" not in self.kinds
        self.muon: Muon | None = None
        self.adamw: torch.optim.AdamW | None = None
        adam_groups = []
        for kind, (opt, lr_field, wd_field) in GROUP_SETTINGS.items():
            if not by_kind[kind]:
                continue
            lr, wd = getattr(ocfg, lr_field), getattr(ocfg, wd_field)
            group = dict(params=by_kind[kind], lr=lr, base_lr=lr, weight_decay=wd, kind=kind)
            if opt == "muon":
                group.update(nesterov=ocfg.muon_nesterov, row_norm=ocfg.muon_row_norm)
                group.update(row_axis=ocfg.muon_row_axis)
                group.update(ns_coeffs=ocfg.ns_coeffs, ns_steps=ocfg.ns_steps)
                self.muon = Muon([group], momentum=muon_momentum_at(0, ocfg))
            else:
                adam_groups.append(group)
        if adam_groups:
            ps = [p for g in adam_groups for p in g["params"]]
            fused = torch.cuda.is_available() and all(p.is_cuda for p in ps)
            betas, eps = (ocfg.adam_beta1, ocfg.adam_beta2), ocfg.adam_eps
            self.adamw = torch.optim.AdamW(adam_groups, betas=betas, eps=eps, fused=fused or None)

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [o for _, o in self._named()]

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def set_lr_mult(self, m: float) -> None:
        """lr = base_lr·m in every group (weight decay, lr·wd, follows the schedule too)."""
        for opt in self.optimizers:
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * m

    def set_muon_momentum(self, mu: float) -> None:
        if self.muon is not None:
            for g in self.muon.param_groups:
                g["momentum"] = mu

    def state_dict(self) -> dict[str, Any]:
        return {name: opt.state_dict() for name, opt in self._named()}

    def load_state_dict(self, sd: Mapping[str, Any]) -> None:
        names = {name for name, _ in self._named()}
        if set(sd) != names:
            msg = f"checkpoint has {sorted(sd)}, expected {sorted(names)} (other model/config?)"
            raise KeyError(f"optim.Optimizers.load_state_dict: {msg}")
        for name, opt in self._named():
            opt.load_state_dict(sd[name])

    def _named(self) -> list[tuple[str, torch.optim.Optimizer]]:
        return [(n, o) for n, o in (("muon", self.muon), ("adamw", self.adamw)) if o is not None]

    def describe(self) -> str:
        o = self.ocfg
        return (
            f"tie_embeddings:{self.tied} embed_lr:{o.embed_lr} matrix_lr:{o.matrix_lr} "
            f"scalar_lr:{o.scalar_lr} muon_wd:{o.muon_wd} embed_wd:{o.embed_wd} "
            f"scalar_wd:{o.scalar_wd} ns:{o.ns_coeffs}x{o.ns_steps} row_norm:{o.muon_row_norm} "
            f"row_axis:{o.muon_row_axis} "
            f"matrix_params:{self.counts['matrix']} embed_params:{self.counts['embed']} "
            f"scalar_params:{self.counts['scalar']}"
        )


def build_optimizers(model: nn.Module | Mapping[str, Tensor], ocfg: OptimConfig) -> Optimizers:
    """Optimizers for `model`'s trainable parameters (a module or a name -> parameter mapping)."""
    items = model.named_parameters() if isinstance(model, nn.Module) else model.items()
    return Optimizers([(n, p) for n, p in items if p.requires_grad], ocfg)


def clip_grad_norm_(params: Iterable[Tensor], max_norm: float) -> Tensor:
    """Global L2 norm of the gradients (returned); scale them to `max_norm` if above (0 = off)."""
    params = [p for p in params if p.grad is not None]
    if not params:
        return torch.zeros(())
    norm = torch.nn.utils.get_total_norm([p.grad for p in params], norm_type=2.0)
    if max_norm > 0:
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    return norm


# ----------------------------------------------------------------------------------------------
# EMA


def _ema_sources(model: nn.Module) -> dict[str, Tensor]:
    out = {canonical_name(n): p for n, p in model.named_parameters()}
    out.update({canonical_name(n): b for n, b in model.named_buffers() if b.is_floating_point()})
    return out


class EMA:
    """fp32 shadow of every parameter and floating buffer; ema <- decay·ema + (1-decay)·θ."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"optim.EMA: decay {decay} outside [0, 1] (optim.ema_decay)")
        self.decay = decay
        self.shadow = {n: t.detach().float().clone() for n, t in _ema_sources(model).items()}

    def _pairs(self, model: nn.Module) -> tuple[list[Tensor], list[Tensor]]:
        src = _ema_sources(model)
        if src.keys() != self.shadow.keys():
            raise KeyError("optim.EMA: the model's tensors differ from those the EMA was built on")
        names = list(self.shadow)
        return [self.shadow[n] for n in names], [src[n].detach() for n in names]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        ema, cur = self._pairs(model)
        cur = [t if t.dtype == torch.float32 else t.float() for t in cur]
        torch._foreach_lerp_(ema, cur, 1.0 - self.decay)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Load the EMA weights into `model`, cast to each tensor's dtype."""
        ema, cur = self._pairs(model)
        for e, t in zip(ema, cur):
            t.copy_(e.to(t.dtype))

    def state_dict(self) -> dict[str, Tensor]:
        return {n: t.clone() for n, t in self.shadow.items()}

    def load_state_dict(self, sd: Mapping[str, Tensor]) -> None:
        if sd.keys() != self.shadow.keys():
            diff = sorted(set(sd) ^ set(self.shadow))
            raise KeyError(f"optim.EMA.load_state_dict: keys differ from the model's: {diff}")
        for n, t in sd.items():
            self.shadow[n].copy_(t)
