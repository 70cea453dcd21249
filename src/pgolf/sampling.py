"""Decoding: the static KV cache and KV-cached sampling (`generate`).

Used for self-generated GPTQ calibration (PR #1550 generates its calibration text; we decode with
one static cache per virtual layer, each step a replayed CUDA graph on GPU: ~11 s for 32x2048 on
one H100 where #1550's full re-forward loop takes ~128 s). `generate` is tested equal to a full
re-forward. The model side (`GPT.new_cache`, `GPT.decode`) lives in model.py.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


@dataclass
class KVCache:
    """Decoding state with static shapes (so a decoding step can be a CUDA graph): keys/values
    per virtual layer over all max_len slots, the position as a device tensor, SmearGate's
    previous row and document ids. Every update after the first call is in place."""

    batch: int
    max_len: int
    num_virtual: int
    pos: Tensor  # [1] long: tokens cached so far
    keys: list[Tensor | None] = field(default_factory=list)  # each [B,max_len,Hk,K]
    values: list[Tensor | None] = field(default_factory=list)
    prev_x: Tensor | None = None  # [B,1,D] normed embedding of the last token (SmearGate)
    doc_ids: Tensor | None = None  # [B,max_len]
    doc_count: Tensor | None = None  # [B] BOS tokens seen so far

    def append(self, vi: int, k: Tensor, v: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        """Write the new k/v [B,T,Hk,K] of virtual layer vi at positions [T]; return the whole
        buffers [B,max_len,Hk,K] (slots not yet written are masked by position)."""
        if not self.keys:
            self.keys, self.values = [None] * self.num_virtual, [None] * self.num_virtual
        if self.keys[vi] is None:
            shape = (self.batch, self.max_len, *k.shape[2:])
            self.keys[vi], self.values[vi] = k.new_zeros(shape), v.new_zeros(shape)
        kc, vc = self.keys[vi], self.values[vi]
        assert kc is not None and vc is not None
        kc.index_copy_(1, positions, k.to(kc.dtype))
        vc.index_copy_(1, positions, v.to(vc.dtype))
        return kc, vc


@torch.no_grad()
def generate(
    model: Any,  # pgolf.model.GPT
    prompt: Tensor,
    max_new_tokens: int,
    temperature: float = 0.8,
    generator: torch.Generator | None = None,
    cuda_graph: bool | None = None,
) -> Tensor:
    """Sample max_new_tokens after prompt [B,T0] with a KV cache -> LongTensor [B,T0+N].
    temperature <= 0 means greedy. On CUDA (cuda_graph None or True) the one-token step is
    captured once as a CUDA graph and replayed, so a step costs GPU time, not Python time."""
    B, T0 = prompt.shape
    if max_new_tokens <= 0:
        return prompt.clone()
    use_graph = prompt.is_cuda if cuda_graph is None else cuda_graph
    ctx: Any = contextlib.nullcontext()
    if use_graph and torch.is_autocast_enabled("cuda"):  # no cached weight casts in a graph
        ctx = torch.autocast("cuda", torch.get_autocast_dtype("cuda"), cache_enabled=False)
    with ctx:
        cache = model.new_cache(B, T0 + max_new_tokens)
        logits = model.decode(prompt, cache)[:, -1]  # [B,V]
        step_in = torch.zeros(B, 1, dtype=torch.long, device=prompt.device)
        graph, graph_logits = None, logits
        out = [prompt]
        for i in range(max_new_tokens):
            if temperature <= 0:
                nxt = logits.argmax(dim=-1, keepdim=True)  # [B,1]
            else:
                probs = torch.softmax(logits.float() / temperature, dim=-1)
                nxt = torch.multinomial(probs, 1, generator=generator)
            out.append(nxt)
            if i + 1 == max_new_tokens:
                break
            step_in.copy_(nxt)
            if not use_graph:
                logits = model.decode(step_in, cache)[:, -1]
            elif i < 2:  # eager warm-up steps on a side stream (they advance the cache too)
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    logits = model.decode(step_in, cache)[:, -1]
                torch.cuda.current_stream().wait_stream(side)
            else:
                if graph is None:  # capture records the step without running it
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph):
                        graph_logits = model.decode(step_in, cache)[:, -1]
                graph.replay()
                logits = graph_logits
    return torch.cat(out, dim=1)
