"""Kernels: the chunked softcapped cross-entropy against the plain fp32-logits path (loss and
gradients), the model's fused_ce switch, SDPA plans (parsing, GQA forms against the oracle)."""

from __future__ import annotations

import dataclasses as dc

import pytest
import torch
import torch.nn.functional as F

from pgolf import kernels as K
from pgolf.config import cpu_tiny
from pgolf.model import GPT
from tests.helpers import perturbed_gpt

CFG = dc.replace(cpu_tiny().model, vocab_size=96, model_dim=64, rope_dims=8, ve_dim=8)


def plain_ce(h, w, t, cap):
    z = (h @ w.t()).float()
    z = cap * torch.tanh(z / cap) if cap > 0 else z
    return F.cross_entropy(z, t)


@pytest.mark.parametrize("cap,chunk,n", [(30.0, 7, 50), (30.0, 64, 50), (0.0, 16, 33), (5.0, 1, 9)])
def test_chunked_ce_matches_plain_loss_and_grads(cap, chunk, n):
    torch.manual_seed(0)
    D, V = 16, 97
    h = (torch.randn(n, D) * 3).requires_grad_()
    w = torch.randn(V, D).requires_grad_()
    t = torch.randint(0, V, (n,))
    ref = plain_ce(h, w, t, cap)
    gh, gw = torch.autograd.grad(ref * 1.7, (h, w))
    out = K.softcap_cross_entropy(h, w, t, cap, chunk)
    fh, fw = torch.autograd.grad(out * 1.7, (h, w))
    assert abs(out.item() - ref.item()) <= 1e-5 * max(1.0, abs(ref.item()))
    torch.testing.assert_close(fh, gh, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fw, gw, atol=1e-5, rtol=1e-5)


def test_chunked_ce_under_cpu_autocast_matches_bf16_head():
    torch.manual_seed(1)
    h, w = torch.randn(40, 32), torch.randn(64, 32)
    t = torch.randint(0, 64, (40,))
    with torch.autocast("cpu", torch.bfloat16):
        ref = plain_ce(h, w, t, 30.0)  # matmul in bf16, then fp32 softcap + CE
        out = K.softcap_cross_entropy(h, w, t, 30.0, 8)
    assert abs(out.item() - ref.item()) < 1e-5


def test_model_fused_ce_switch_equals_plain_loss():
    model = perturbed_gpt(CFG)
    fused = GPT(dc.replace(model.cfg, fused_ce=13))
    fused.load_state_dict(model.state_dict())
    fused.set_recurrence(model.recurrence_active)
    torch.manual_seed(2)
    idx = torch.randint(0, model.cfg.vocab_size, (2, 24))
    tgt = torch.randint(0, model.cfg.vocab_size, (2, 24))
    a, b = model(idx, tgt), fused(idx, tgt)
    a.backward()
    b.backward()
    assert abs(a.item() - b.item()) < 1e-5
    grads = dict(fused.named_parameters())
    for name, p in model.named_parameters():
        torch.testing.assert_close(grads[name].grad, p.grad, atol=1e-5, rtol=1e-4, msg=name)
    assert fused(idx).shape == model(idx).shape  # logits path untouched


def test_parse_sdpa_and_plans():
    assert K.parse_sdpa("sdpa") == K.SdpaPlan()
    assert K.parse_sdpa("sdpa:cudnn") == K.SdpaPlan("cudnn", True)
    assert K.parse_sdpa("sdpa:flash+repeat") == K.SdpaPlan("flash", False)
    assert K.parse_sdpa("sdpa:default+repeat").name == "sdpa:default+repeat"
    assert K.parse_sdpa("auto") is None and K.parse_sdpa("naive") is None
    with pytest.raises(ValueError, match="attn_backend"):
        K.parse_sdpa("sdpa:fast")
    assert K.SdpaPlan("efficient").backends() is not None and K.SdpaPlan().backends() is None
    names = [p.name for p in K.sdpa_candidates()]
    assert names[0] == "sdpa:default" and "sdpa:cudnn+repeat" in names
    plan, timed = K.sdpa_plan("cpu", (1, 8, 4, 2, 16))
    assert plan == K.SdpaPlan() and timed == ()  # the CPU path is never re-planned


@pytest.mark.parametrize("gqa", [True, False])
def test_attend_gqa_forms_match_oracle(gqa):
    torch.manual_seed(3)
    q, k, v = torch.randn(2, 9, 4, 8), torch.randn(2, 9, 2, 8), torch.randn(2, 9, 2, 8)
    ref = K.naive_attention(q, k, v, None)
    out = K.attend(q, k, v, None, "sdpa", gqa_kwarg=gqa, plan=K.SdpaPlan("math", gqa))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_time_sdpa_runs_on_cpu_and_model_plan_is_noop_off_cuda():
    ms = K.time_sdpa(K.SdpaPlan(), (1, 16, 4, 2, 8), torch.float32, torch.device("cpu"), iters=1)
    assert 0 < ms < float("inf")
    model = GPT(dc.replace(CFG, attn_backend="auto"))
    assert "no planning" in model.plan_attention(2, 16)
    assert all(b.attn.plan is None for b in model.blocks)
    forced = GPT(dc.replace(model.cfg, attn_backend="sdpa:math+repeat"))
    assert forced.blocks[0].attn.plan == K.SdpaPlan("math", False)


def test_chunked_ce_traces_with_fullgraph_compile():
    torch.manual_seed(4)
    h = torch.randn(40, 16, requires_grad=True)
    w, t = torch.randn(50, 16), torch.randint(0, 50, (40,))
    f = torch.compile(
        lambda h, w, t: K.softcap_cross_entropy(h, w, t, 30.0, 16),
        fullgraph=True,
        backend="aot_eager",
    )
    (gc,) = torch.autograd.grad(f(h, w, t), h)
    (ge,) = torch.autograd.grad(K.softcap_cross_entropy(h, w, t, 30.0, 16), h)
    torch.testing.assert_close(gc, ge)
