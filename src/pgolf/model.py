"""The GPT of the PR #1550 / #1493 stacks, every architectural choice a switch in `ModelConfig`.

Choices (credits by paper or challenge PR number):
* Tied input/output embedding, init N(0, tied_embed_init_std^2); optional untied zero-init head
  (Naive Baseline). Logit softcap c*tanh(z/c) (Gemma 2; Naive Baseline), loss in fp32.
* Parameter-free RMSNorm everywhere (`F.rms_norm`), including `final_norm` before the head.
* GQA attention (arXiv:2305.13245) with q/k RMS-normalisation (QK-norm) and a learnable
  per-head QK gain (Naive Baseline; init 5.25 in #1493/#1550).
* Partial RoPE (arXiv:2104.09864) on the first `rope_dims` dims of each head, rotate-half layout,
  plain base at every length (we do not copy #1550's accidental NTK rescale, spec §3.4).
* XSA, Exclusive Self Attention (arXiv:2603.09078): remove from each head's output its component
  along the token's own normalised value vector, broadcast over the GQA group.
* Value embeddings (#1550): one shared table projected to the KV width, added to v at `ve_layers`.
* SmearGate (#1550): x_t <- (1 - sigmoid(g)) x_t + sigmoid(g) x_{t-1}, per channel; or #1855's
  window form (`smear_form='window'`): x_t += λ·σ(w·x_t[:gate_window])·x_{t-1} on the raw
  embedding, before the norm, never at a BOS token.
* Per-head attention output gates (`attn_gate`): #1787's sparse σ(scale·W·h[:gate_window]),
  #1736's dense σ(W·h), #1667's 2σ(W·src[:gate_window]); after XSA, before the projection.
* MLP with ReLU^2 (arXiv:2109.08668, baseline) or LeakyReLU(slope)^2 (#1493/#1550).
* Layerwise LN scale 1/sqrt(physical layer + 1), resid_mix with the embedding x0, per-channel
  attn/mlp scales and U-Net skips with plain / sigmoid / lerp gates (Naive Baseline, #1550, #1493).
* Parallel residuals: #1550's two-lane routing ('lanes', split at the first decoder virtual
  layer whose physical index >= parallel_start) or #1493's GPT-J form ('gptj', every physical
  layer >= parallel_start), or #1797/#1855's 'lanes2x2' (learned 2x2 mixing of the attention and
  MLP outputs into both lanes, residual scales init 1.1, lanes averaged at the end).
* Depth recurrence as data: `recur_layers` lists physical layers per virtual layer once
  `set_recurrence(True)` (#1493, #1550); the first half of the virtual layers form the encoder.
* Zero-init output projections, orthogonal init for the other matrices (#1550 §3.5).
* Optional document masking at BOS tokens (off in every record; also stops SmearGate at BOS).
* KV-cached decoding (`new_cache`, `decode`; the cache and `generate` live in sampling.py) for
  self-generated GPTQ calibration.

Shape legend: B batch, T time (new tokens), S attended keys, D model dim, H query heads,
Hk KV heads, G = H/Hk query heads per KV head, K head dim, R rotary dims, V vocab, E ve_dim,
F MLP hidden, L virtual layers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pgolf.config import ModelConfig, head_dim, num_skip_weights
from pgolf.kernels import (  # noqa: F401  (re-exported: pgolf.model.attend etc.)
    SdpaPlan,
    attend,
    fa3_function,
    naive_attention,
    parse_sdpa,
    sdpa_has_gqa,
    sdpa_plan,
    softcap_cross_entropy,
)
from pgolf.sampling import KVCache

SIGMOID_SKIP_INIT = 2.2  # sigmoid(2.2) ~= 0.90 (#1550 SIGMOID_SKIPS)
LANE_RESID_INIT = 1.1  # #1855's parallel_resid_lambdas

# ----------------------------------------------------------------------------------------------
# Kernels


def rope_tables(positions: Tensor, dims: int, base: float) -> tuple[Tensor, Tensor]:
    """cos, sin [T, R/2] for angles t * base^(-2i/R), i = 0..R/2-1."""
    inv_freq = base ** (-torch.arange(0, dims, 2, device=positions.device).float() / dims)
    angles = positions.float()[:, None] * inv_freq[None, :]  # [T,R/2]
    return angles.cos(), angles.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate-half RoPE on the first R = 2*cos.size(-1) dims of x [B,T,H,K]; the rest pass."""
    half = cos.size(-1)
    cos, sin = cos[None, :, None, :].to(x.dtype), sin[None, :, None, :].to(x.dtype)
    x1, x2, rest = x[..., :half], x[..., half : 2 * half], x[..., 2 * half :]
    return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin, rest), dim=-1)


def exclusive_self_attention(y: Tensor, v: Tensor) -> Tensor:
    """XSA: y [B,T,H,K] minus its projection on the token's own unit value v [B,T,Hk,K]."""
    B, T, H, K = y.shape
    Hk = v.size(2)
    yg = y.view(B, T, Hk, H // Hk, K)  # [B,T,Hk,G,K]
    vn = F.normalize(v, dim=-1).unsqueeze(3)  # [B,T,Hk,1,K]
    return (yg - (yg * vn).sum(-1, keepdim=True) * vn).view(B, T, H, K)


# ----------------------------------------------------------------------------------------------
# Modules


class CastedLinear(nn.Linear):
    """Bias-free linear layer whose fp32 weight is cast to the input dtype at use."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight.to(x.dtype))


class RMSNorm(nn.Module):
    """Parameter-free RMSNorm over the last dim (a module so that hooks can see its output)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x, (x.size(-1),))


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, xsa: bool) -> None:
        super().__init__()
        D, K = cfg.model_dim, head_dim(cfg)
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, K
        self.c_q = CastedLinear(D, cfg.num_heads * K)
        self.c_k = CastedLinear(D, cfg.num_kv_heads * K)
        self.c_v = CastedLinear(D, cfg.num_kv_heads * K)
        self.proj = CastedLinear(cfg.num_heads * K, D)
        self.q_gain = nn.Parameter(torch.full((cfg.num_heads,), cfg.qk_gain_init))
        self.xsa = xsa
        self.backend = cfg.attn_backend
        self.fa3: Callable[..., Any] | None = None  # set by GPT when FA3 may be used
        self.sdpa_gqa = sdpa_has_gqa()
        self.plan: SdpaPlan | None = parse_sdpa(cfg.attn_backend)  # 'auto': GPT.plan_attention
        self.gate, self.gate_window = cfg.attn_gate, cfg.gate_window
        self.gate_scale, self.gate_src = cfg.attn_gate_scale, cfg.attn_gate_src
        if cfg.attn_gate in ("sparse", "dense"):  # #1787 / #1736: named like no Muon matrix
            cols = cfg.gate_window if cfg.attn_gate == "sparse" else D
            self.gate_w = nn.Parameter(torch.zeros(cfg.num_heads, cols))
        elif cfg.attn_gate == "out":  # #1667 AttnOutGate: 2 sigmoid(W x[:gate_window])
            self.gate_proj = nn.Parameter(torch.zeros(cfg.num_heads, cfg.gate_window))

    def _gate(self, h: Tensor, q_raw: Tensor) -> Tensor:
        """The per-head output gate [B,T,H] of the configured form (h: the normed block input)."""
        w = self.gate_window
        if self.gate == "sparse":
            return torch.sigmoid(self.gate_scale * F.linear(h[..., :w], self.gate_w.to(h.dtype)))
        if self.gate == "dense":
            return torch.sigmoid(F.linear(h, self.gate_w.to(h.dtype)))
        src = q_raw if self.gate_src == "q" else h
        return 2.0 * torch.sigmoid(F.linear(src[..., :w], self.gate_proj.to(h.dtype)))

    def forward(
        self,
        h: Tensor,
        cos: Tensor,
        sin: Tensor,
        ve: Tensor | None = None,
        mask: Tensor | None = None,
        cache: KVCache | None = None,
        vi: int = 0,
        positions: Tensor | None = None,
    ) -> Tensor:
        B, T, _ = h.shape
        H, Hk, K = self.num_heads, self.num_kv_heads, self.head_dim
        q = q_raw = self.c_q(h)
        dtype = q.dtype  # compute dtype (bf16 under autocast)
        k, v = self.c_k(h), self.c_v(h)
        if ve is not None:
            v = v + ve.to(v.dtype)  # [B,T,Hk*K]
        q = F.rms_norm(q.view(B, T, H, K), (K,))
        k = F.rms_norm(k.view(B, T, Hk, K), (K,))
        v = v.view(B, T, Hk, K).to(dtype)
        q = apply_rope(q, cos, sin) * self.q_gain.to(q.dtype)[:, None]  # [B,T,H,K]
        q, k = q.to(dtype), apply_rope(k, cos, sin).to(dtype)
        if cache is None:
            y = attend(q, k, v, mask, self.backend, self.fa3, self.sdpa_gqa, self.plan)
        else:
            k_all, v_all = cache.append(vi, k, v, positions)  # [B,max_len,Hk,K]
            y = naive_attention(q, k_all, v_all, mask)
        if self.xsa:
            y = exclusive_self_attention(y, v)
        if self.gate != "none":
            y = y * self._gate(h, q_raw)[..., None].to(y.dtype)
        return self.proj(y.reshape(B, T, H * K))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        hidden = int(cfg.mlp_mult * cfg.model_dim)
        self.fc = CastedLinear(cfg.model_dim, hidden)
        self.proj = CastedLinear(hidden, cfg.model_dim)
        self.leaky = cfg.activation == "leaky_relu2"
        self.slope = cfg.leaky_slope

    def forward(self, x: Tensor) -> Tensor:
        u = self.fc(x)  # [B,T,F]
        u = F.leaky_relu(u, self.slope) if self.leaky else F.relu(u)
        return self.proj(u.square())


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        D = cfg.model_dim
        self.attn = Attention(cfg, xsa=layer in cfg.xsa_layers)
        self.mlp = MLP(cfg)
        self.attn_scale = nn.Parameter(torch.ones(D))
        self.mlp_scale = nn.Parameter(torch.ones(D))
        self.resid_mix = nn.Parameter(torch.ones(2, D))  # [2,D]; init_weights: rows 1, 0
        self.ln = 1.0 / math.sqrt(layer + 1) if cfg.ln_scale else 1.0  # physical index

    def _norm(self, x: Tensor) -> Tensor:
        return F.rms_norm(x, (x.size(-1),)) * self.ln

    def forward(self, x: Tensor, x0: Tensor, parallel: bool, **attn_kw: Any) -> Tensor:
        """Sequential block, or GPT-J parallel (#1493) where both sub-layers read x_in."""
        x_in = self.resid_mix[0] * x + self.resid_mix[1] * x0
        h = self._norm(x_in)
        out = x_in + self.attn_scale * self.attn(h, **attn_kw)
        if parallel:
            return out + self.mlp_scale * self.mlp(h)
        return out + self.mlp_scale * self.mlp(self._norm(out))

    def forward_lanes(
        self, lane0: Tensor, lane1: Tensor, x0: Tensor, **attn_kw: Any
    ) -> tuple[Tensor, Tensor]:
        """#1550 two-lane form: attention on lane0 (with resid_mix), MLP on lane1 alone."""
        a_in = self.resid_mix[0] * lane0 + self.resid_mix[1] * x0
        lane0 = a_in + self.attn_scale * self.attn(self._norm(a_in), **attn_kw)
        lane1 = lane1 + self.mlp_scale * self.mlp(self._norm(lane1))
        return lane0, lane1

    def forward_lanes2x2(
        self, lanes: tuple[Tensor, Tensor], x0: Tensor, post: Tensor, resid: Tensor, **attn_kw: Any
    ) -> tuple[Tensor, Tensor]:
        """#1855 (from #1797): attention reads lane0 mixed with x0, the MLP reads lane1; each
        lane k becomes resid[k]·lane_k + post[0, k]·attn + post[1, k]·mlp (post [2,2], resid
        [2]); resid_mix shapes only the attention input, not the residual."""
        lane0, lane1 = lanes
        a_in = self.resid_mix[0] * lane0 + self.resid_mix[1] * x0
        a = self.attn_scale * self.attn(self._norm(a_in), **attn_kw)
        m = self.mlp_scale * self.mlp(self._norm(lane1))
        lane0 = resid[0] * lane0 + post[0, 0] * a + post[1, 0] * m
        lane1 = resid[1] * lane1 + post[0, 1] * a + post[1, 1] * m
        return lane0, lane1


class SmearGate(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gate = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor, x_prev: Tensor) -> Tensor:
        g = torch.sigmoid(self.gate)
        return (1 - g) * x + g * x_prev


class WindowSmearGate(nn.Module):
    """#1855's SmearGate (#1667, BOS fix of #1851): x_t += λ·σ(w·x_t[:window])·x_{t-1} on the raw
    embedding, before the norm, and not where x_t is a BOS token; w, λ zero at init."""

    def __init__(self, window: int) -> None:
        super().__init__()
        self.window = window
        self.gate = nn.Parameter(torch.zeros(1, window))
        self.lam = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor, x_prev: Tensor, not_bos: Tensor) -> Tensor:
        g = self.lam * torch.sigmoid(F.linear(x[..., : self.window], self.gate.to(x.dtype)))
        return x + g * x_prev * not_bos


class ValueEmbedding(nn.Module):
    """Shared table [V,E] -> zero-init projection to the KV width, scaled globally and per layer."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        kv_dim = cfg.num_kv_heads * head_dim(cfg)
        self.embed = nn.Embedding(cfg.vocab_size, cfg.ve_dim)
        self.proj = CastedLinear(cfg.ve_dim, kv_dim)
        self.scale = nn.Parameter(torch.full((1,), 0.1))
        self.layer_scales = nn.Parameter(torch.ones(len(cfg.ve_layers)))

    def forward(self, idx: Tensor) -> Tensor:
        return self.proj(self.embed(idx)) * self.scale  # [B,T,Hk*K]


# ----------------------------------------------------------------------------------------------
# The model


class GPT(nn.Module):
    """See the module docstring. Build under `torch.device("meta")`, then `to_empty` and
    `init_weights()`; built on a real device it is initialised at construction."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        D = cfg.model_dim
        assert D % cfg.num_heads == 0, f"model_dim {D} must be divisible by num_heads"
        assert cfg.num_heads % cfg.num_kv_heads == 0, "num_heads must be a multiple of num_kv_heads"
        K = head_dim(cfg)
        self.rope_dims = cfg.rope_dims or K
        assert self.rope_dims % 2 == 0 and self.rope_dims <= K, f"bad rope_dims {cfg.rope_dims}"
        ok = cfg.attn_backend in ("auto", "fa3", "naive") or parse_sdpa(cfg.attn_backend)
        assert ok, f"bad model.attn_backend {cfg.attn_backend!r} (auto, sdpa[:kernel], fa3, naive)"
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, D)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.num_layers))
        self.num_skips = num_skip_weights(cfg)
        if self.num_skips:
            self.skip_weights = nn.Parameter(torch.ones(self.num_skips, D))
            if cfg.skip_gate == "lerp":
                self.skip_gates = nn.Parameter(torch.zeros(self.num_skips, D))
        self.smear: nn.Module | None = None
        if cfg.smear_gate:
            window = cfg.smear_form == "window"
            self.smear = WindowSmearGate(cfg.gate_window) if window else SmearGate(D)
        use_ve = cfg.ve_dim > 0 and len(cfg.ve_layers) > 0
        self.ve = ValueEmbedding(cfg) if use_ve else None
        self.ve_slot = {layer: j for j, layer in enumerate(cfg.ve_layers)} if use_ve else {}
        if cfg.parallel_residual == "lanes":
            self.lane_merge = nn.Parameter(torch.full((1,), 0.5))
        if cfg.parallel_residual == "lanes2x2":  # one set per physical layer, as #1855 keeps
            self.lane_post = nn.Parameter(torch.ones(cfg.num_layers, 2, 2))
            self.lane_resid = nn.Parameter(torch.full((cfg.num_layers, 2), LANE_RESID_INIT))
        self.final_norm = RMSNorm()
        self.lm_head = None if cfg.tie_embeddings else CastedLinear(D, cfg.vocab_size)
        self._recur = False
        if cfg.attn_backend in ("auto", "fa3"):
            fa3 = fa3_function()
            if cfg.attn_backend == "fa3" and fa3 is None:
                raise RuntimeError(
                    "model.attn_backend='fa3' but flash_attn_interface is not importable; "
                    "install FlashAttention-3 or set model.attn_backend=sdpa"
                )
            for block in self.blocks:
                block.attn.fa3 = fa3
        if not self.tok_emb.weight.is_meta:
            self.init_weights()

    # -- weights and recurrence ----------------------------------------------------------------

    @torch.no_grad()
    def init_weights(self) -> None:
        """(Re)initialise every parameter in place (uses the global torch RNG)."""
        cfg = self.cfg
        nn.init.normal_(self.tok_emb.weight, 0.0, cfg.tied_embed_init_std)
        for block in self.blocks:
            a, m = block.attn, block.mlp
            for w in (a.c_q.weight, a.c_k.weight, a.c_v.weight, m.fc.weight):
                nn.init.orthogonal_(w)
            nn.init.zeros_(a.proj.weight)
            nn.init.zeros_(m.proj.weight)
            a.q_gain.fill_(cfg.qk_gain_init)
            for gw in (getattr(a, "gate_w", None), getattr(a, "gate_proj", None)):
                if gw is not None and cfg.attn_gate_init_std > 0 and cfg.attn_gate != "out":
                    nn.init.normal_(gw, 0.0, cfg.attn_gate_init_std)
                elif gw is not None:
                    gw.zero_()
            block.attn_scale.fill_(1.0)
            block.mlp_scale.fill_(1.0)
            block.resid_mix[0].fill_(1.0)
            block.resid_mix[1].fill_(0.0)
        if self.num_skips:
            self.skip_weights.fill_(SIGMOID_SKIP_INIT if cfg.skip_gate == "sigmoid" else 1.0)
            if cfg.skip_gate == "lerp":
                self.skip_gates.zero_()
        if self.smear is not None:
            for p in self.smear.parameters():
                p.zero_()
        if self.ve is not None:
            nn.init.normal_(self.ve.embed.weight, 0.0, 0.01)
            nn.init.zeros_(self.ve.proj.weight)
            self.ve.scale.fill_(0.1)
            self.ve.layer_scales.fill_(1.0)
        if self.cfg.parallel_residual == "lanes":
            self.lane_merge.fill_(0.5)
        if self.cfg.parallel_residual == "lanes2x2":
            self.lane_post.fill_(1.0)
            self.lane_resid.fill_(LANE_RESID_INIT)
        if self.lm_head is not None:
            nn.init.zeros_(self.lm_head.weight)

    def plan_attention(self, batch: int, seq_len: int, dtype: torch.dtype = torch.bfloat16) -> str:
        """attn_backend 'auto' on CUDA without FA3: time the SDPA candidates for these shapes
        (once per process) and pin the fastest in every block; returns a log line."""
        a = self.blocks[0].attn
        dev = self.tok_emb.weight.device
        if self.cfg.attn_backend != "auto" or a.fa3 is not None or dev.type != "cuda":
            return f"attn_backend:{self.cfg.attn_backend} (no planning)"
        shape = (batch, seq_len, a.num_heads, a.num_kv_heads, a.head_dim)
        plan, timed = sdpa_plan(str(dev), shape, str(dtype).removeprefix("torch."))
        for block in self.blocks:
            block.attn.plan = plan
        return f"attn_backend:auto -> {plan.name} " + " ".join(f"{n}={t:.2f}ms" for n, t in timed)

    def set_recurrence(self, active: bool) -> None:
        """Switch to the `recur_layers` virtual layer list (changes the compiled graph)."""
        self._recur = bool(active)

    @property
    def recurrence_active(self) -> bool:
        return self._recur

    def virtual_layers(self) -> list[int]:
        if self._recur and self.cfg.recur_layers:
            return list(self.cfg.recur_layers)
        return list(range(self.cfg.num_layers))

    # -- forward -------------------------------------------------------------------------------

    def _skip(self, i: int, x: Tensor, skip: Tensor) -> Tensor:
        """Add the i-th U-Net skip to x with the configured gate."""
        w = self.skip_weights[i]
        gate = self.cfg.skip_gate
        if gate == "sigmoid":
            return x + torch.sigmoid(w) * skip
        if gate == "lerp":  # #1493: sigmoid(g) x + (1 - sigmoid(g)) (w skip)
            g = torch.sigmoid(self.skip_gates[i])
            return g * x + (1 - g) * (w * skip)
        return x + w * skip

    def _mask(self, idx: Tensor, cache: KVCache | None, qpos: Tensor) -> Tensor | None:
        """None (plain causal) or a boolean [B|1,1,T,S] mask (doc masking, cached decoding:
        S = max_len). qpos [T] are the query positions."""
        cfg = self.cfg
        if cache is None and not cfg.doc_mask:
            return None
        kpos = qpos if cache is None else torch.arange(cache.max_len, device=idx.device)
        mask = (kpos[None, :] <= qpos[:, None])[None, None]  # [1,1,T,S]
        if cfg.doc_mask:
            is_bos = (idx == cfg.bos_id).long()
            if cache is None:
                doc = kdoc = is_bos.cumsum(1)  # [B,T]
            else:
                if cache.doc_ids is None:
                    cache.doc_ids = idx.new_zeros(cache.batch, cache.max_len)
                    cache.doc_count = idx.new_zeros(cache.batch)
                assert cache.doc_count is not None
                doc = cache.doc_count[:, None] + is_bos.cumsum(1)
                cache.doc_ids.index_copy_(1, qpos, doc)
                cache.doc_count.copy_(doc[:, -1])
                kdoc = cache.doc_ids  # [B,S]
            mask = mask & (doc[:, None, :, None] == kdoc[:, None, None, :])  # [B,1,T,S]
        return mask

    def _embed(self, idx: Tensor, cache: KVCache | None) -> Tensor:
        x = self.tok_emb(idx)  # [B,T,D]
        if isinstance(self.smear, WindowSmearGate):  # before the norm, BOS never smeared
            not_bos = (idx != self.cfg.bos_id).unsqueeze(-1).to(x.dtype)
            x = self.smear(x, self._previous(x, cache), not_bos)
        x = F.rms_norm(x, (self.cfg.model_dim,))
        if not isinstance(self.smear, SmearGate):
            return x
        x_prev = self._previous(x, cache)  # [B,T,D], x_{-1} = 0
        if self.cfg.doc_mask:  # no smearing across a document boundary
            x_prev = x_prev * (idx != self.cfg.bos_id).unsqueeze(-1).to(x.dtype)
        return self.smear(x, x_prev)

    def _previous(self, x: Tensor, cache: KVCache | None) -> Tensor:
        """x shifted one step right [B,T,D]: zero before the first token, or the last token of
        the previous call when decoding with `cache` (which then keeps this call's last)."""
        first = x.new_zeros(x.size(0), 1, x.size(2))
        if cache is not None and cache.prev_x is not None:
            first = cache.prev_x
        x_prev = torch.cat((first, x[:, :-1]), dim=1)
        if cache is not None:
            if cache.prev_x is None:
                cache.prev_x = x[:, -1:].clone()
            else:
                cache.prev_x.copy_(x[:, -1:])
        return x_prev

    def hidden(self, idx: Tensor, cache: KVCache | None = None) -> Tensor:
        """Final-normed hidden states [B,T,D] (advances `cache` when given)."""
        cfg = self.cfg
        B, T = idx.shape
        positions = torch.arange(T, device=idx.device)
        if cache is not None:
            positions = positions + cache.pos  # [T]
        x = self._embed(idx, cache)
        x0 = x
        base, R = cfg.rope_base, self.rope_dims
        if 0 < cfg.rope_ntk_len < T:  # #1550's NTK quirk, parity checks only
            base = base * (T / cfg.rope_ntk_len) ** (R / (R - 2))
        cos, sin = rope_tables(positions, R, base)  # [T,R/2]
        ve_all = self.ve(idx) if self.ve is not None else None  # [B,T,Hk*K], once per forward
        mask = self._mask(idx, cache, positions)
        layers = self.virtual_layers()
        if cache is not None:
            assert cache.num_virtual == len(layers), "recurrence changed during decoding"
        num_enc = len(layers) // 2
        lanes = cfg.parallel_residual == "lanes"
        two = cfg.parallel_residual == "lanes2x2"
        skips: list[Tensor] = []
        lane0: Tensor | None = None
        lane1: Tensor | None = None
        for vi, li in enumerate(layers):
            block = self.blocks[li]
            d = vi - num_enc
            if two and lane0 is None and d >= 0 and li >= cfg.parallel_start:
                lane0, lane1 = x, x  # #1855 forks before the skip, which goes to lane0 only
            if 0 <= d < self.num_skips and skips:  # decoder: pop LIFO
                if lane0 is None:
                    x = self._skip(d, x, skips.pop())
                else:
                    lane0 = self._skip(d, lane0, skips.pop())
            ve = None
            if ve_all is not None and li in self.ve_slot:
                assert self.ve is not None
                ve = self.ve.layer_scales[self.ve_slot[li]] * ve_all
            kw = dict(cos=cos, sin=sin, ve=ve, mask=mask, cache=cache, vi=vi, positions=positions)
            if lanes and lane0 is None and d >= 0 and li >= cfg.parallel_start:  # §3.3
                lane0, lane1 = x, x
            if two and lane0 is not None and lane1 is not None:
                post, resid = self.lane_post[li], self.lane_resid[li]
                lane0, lane1 = block.forward_lanes2x2((lane0, lane1), x0, post, resid, **kw)
            elif lane0 is not None and lane1 is not None:
                lane0, lane1 = block.forward_lanes(lane0, lane1, x0, **kw)
            else:
                gptj = cfg.parallel_residual == "gptj" and li >= cfg.parallel_start
                x = block(x, x0, gptj, **kw)
            if vi < num_enc:
                skips.append(x)
        if two and lane0 is not None and lane1 is not None:
            final = cfg.parallel_final
            x = lane0 if final == "attn" else lane1 if final == "mlp" else 0.5 * (lane0 + lane1)
        elif lane0 is not None and lane1 is not None:
            x = self.lane_merge * lane0 + (1 - self.lane_merge) * lane1
        if cache is not None:
            cache.pos.add_(T)
        return self.final_norm(x)

    def logits(self, h: Tensor) -> Tensor:
        """Softcapped fp32 logits [B,T,V] from final-normed hidden states [B,T,D]."""
        if self.lm_head is not None:
            z = self.lm_head(h)
        else:
            z = F.linear(h, self.tok_emb.weight.to(h.dtype))
        z = z.float()
        cap = self.cfg.logit_softcap
        return cap * torch.tanh(z / cap) if cap > 0 else z

    def forward(self, idx: Tensor, targets: Tensor | None = None) -> Tensor:
        """idx [B,T] long -> logits [B,T,V] fp32, or the mean cross-entropy if targets [B,T]."""
        if targets is not None and self.cfg.fused_ce > 0:
            h = self.hidden(idx)
            w = self.tok_emb.weight if self.lm_head is None else self.lm_head.weight
            cap, rows = self.cfg.logit_softcap, self.cfg.fused_ce
            return softcap_cross_entropy(h.flatten(0, 1), w, targets.reshape(-1), cap, rows)
        logits = self.logits(self.hidden(idx))
        if targets is None:
            return logits
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))

    # -- decoding ------------------------------------------------------------------------------

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        pos = torch.zeros(1, dtype=torch.long, device=self.tok_emb.weight.device)
        return KVCache(batch, max_len, len(self.virtual_layers()), pos)

    @torch.no_grad()
    def decode(self, idx: Tensor, cache: KVCache) -> Tensor:
        """Logits [B,T,V] of the next T tokens idx [B,T] given (and extending) the cache."""
        return self.logits(self.hidden(idx, cache))


def count_params(cfg: ModelConfig) -> int:
    """Number of distinct parameters of GPT(cfg), counted on the meta device."""
    with torch.device("meta"):
        model = GPT(cfg)
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------------------------
# The layer graph a set of weights was trained with: saved and restored by one pair of functions
# under one key, in checkpoints, weight files and artifacts alike.

GRAPH_KEY = "recurrence_active"


def graph_state(model: GPT) -> dict[str, bool]:
    """What to store beside the weights so they are rebuilt with the graph they were trained on."""
    return {GRAPH_KEY: model.recurrence_active}


def restore_graph_state(model: GPT, meta: dict[str, Any], source: str) -> None:
    """Switch `model` to the graph recorded by `graph_state` in `meta` (no silent default)."""
    if GRAPH_KEY not in meta:
        raise ValueError(
            f"{source} does not record its layer graph ({GRAPH_KEY}); it was written by an older "
            "pgolf: re-create it with this version"
        )
    model.set_recurrence(bool(meta[GRAPH_KEY]) and bool(model.cfg.recur_layers))


# ----------------------------------------------------------------------------------------------
# Parameter roles: the one table from which the optimizer groups (optim.py), the quantization
# groups (quant.py) and the budget components (lab/budget/sizes.py) are all derived.


@dataclass(frozen=True)
class ParamRole:
    """A parameter matches when every given condition holds; the first matching row wins."""

    optim: str  # 'matrix' (Muon) | 'embed' | 'scalar' (AdamW groups, PR #1550)
    group: str  # quantization plan and budget group: attn | mlp | embed | value_embed | other
    names: tuple[str, ...] = ()
    part: str = ""  # the submodule after `blocks.{i}.` (attn, mlp); "" = any block parameter
    suffix: str = ""
    ndim: int | None = None

    def matches(self, name: str, ndim: int) -> bool:
        if self.names:
            return name in self.names
        parts = name.split(".")
        if self.suffix and not (parts[0] == "blocks" and name.endswith(self.suffix)):
            return False
        if self.part and (len(parts) < 3 or parts[2] != self.part):
            return False
        return self.ndim in (None, ndim)


PARAM_ROLES: tuple[ParamRole, ...] = (
    ParamRole("embed", "embed", names=("tok_emb.weight", "lm_head.weight")),
    ParamRole("embed", "value_embed", names=("ve.embed.weight",)),
    # `.weight` + 2-D keeps control tensors such as a [2, d] resid_mix out of Muon.
    ParamRole("matrix", "attn", part="attn", suffix=".weight", ndim=2),
    ParamRole("matrix", "mlp", part="mlp", suffix=".weight", ndim=2),
    ParamRole("matrix", "other", suffix=".weight", ndim=2),
    ParamRole("scalar", "other"),
)


def param_role(name: str, ndim: int) -> ParamRole:
    """The first row of PARAM_ROLES that `name` (wrapper prefixes stripped) matches."""
    while name.startswith(("_orig_mod.", "module.")):
        name = name.split(".", 1)[1]
    return next(r for r in PARAM_ROLES if r.matches(name, ndim))
