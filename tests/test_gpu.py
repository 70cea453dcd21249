"""GPU tier (marker `gpu`, skipped without CUDA): the fast paths used on H100 against the CPU/eager
references — compiled vs eager model, bf16 autocast vs fp32, FA3 vs SDPA when FA3 imports, the
KV-cached (CUDA-graph) generation vs a full forward, and bf16 Newton–Schulz vs fp64."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from helpers import perturbed_gpt

from pgolf.config import ModelConfig
from pgolf.model import GPT, fa3_function
from pgolf.optim import zeropower
from pgolf.sampling import generate

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

CFG = ModelConfig(
    vocab_size=512,
    num_layers=4,
    model_dim=128,
    num_heads=4,
    num_kv_heads=2,
    mlp_mult=2.0,
    rope_dims=16,
    xsa_layers=(0, 1, 2, 3),
    ve_dim=16,
    ve_layers=(2, 3),
    parallel_start=2,
    recur_layers=(0, 1, 2, 1, 2, 3),
    attn_backend="sdpa",
)


def build(cfg: ModelConfig = CFG) -> GPT:
    return perturbed_gpt(cfg, True, 0, scale=0.02, device="cuda")


def ids(B: int = 4, T: int = 256) -> torch.Tensor:
    return torch.randint(
        0, CFG.vocab_size, (B, T), device="cuda", generator=torch.Generator("cuda").manual_seed(1)
    )


def test_compiled_equals_eager():
    model, x = build(), ids()
    with torch.no_grad():
        ref = model(x)
        out = torch.compile(model, dynamic=False, fullgraph=True)(x)
    torch.testing.assert_close(out, ref, atol=2e-3, rtol=2e-3)


def test_bf16_autocast_close_to_fp32():
    model, x = build(), ids()
    with torch.no_grad():
        ref = model(x, x)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(x, x)
    assert abs(out.item() - ref.item()) < 2e-2 * ref.item()


@pytest.mark.skipif(fa3_function() is None, reason="FlashAttention-3 not installed")
def test_fa3_matches_sdpa():
    x = ids()
    sdpa, fa3 = build(), build(replace(CFG, attn_backend="fa3"))
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        torch.testing.assert_close(fa3(x), sdpa(x), atol=3e-2, rtol=3e-2)


def test_cached_generation_matches_full_forward():
    model = build()
    prompt = ids(2, 1)
    with torch.no_grad():
        out = generate(model, prompt, 63, temperature=0.0)
        logits = model(out[:, :-1])
    # greedy decoding: every generated token is the argmax of the full forward at its position
    assert torch.equal(logits.argmax(-1)[:, prompt.shape[1] - 1 :], out[:, prompt.shape[1] :])


def test_bf16_newton_schulz_close_to_fp64():
    G = torch.randn(6, 256, 128, device="cuda", generator=torch.Generator("cuda").manual_seed(2))
    fast = zeropower(G, "polar_express", 4, row_norm=True, dtype=torch.bfloat16).double()
    ref = zeropower(G.double(), "polar_express", 4, row_norm=True, dtype=torch.float64)
    assert ((fast - ref).norm() / ref.norm()).item() < 0.03
