"""Tests for pgolf.model: oracles (naive attention, manual CE, full re-forward vs KV cache),
properties (causality, document isolation, XSA, RoPE) and the records' exact parameter counts."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from helpers import perturbed_gpt

from pgolf import model as M
from pgolf.config import ModelConfig, preset
from pgolf.model import GPT, count_params
from pgolf.sampling import generate

BOS = 1


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def tiny(**kw) -> ModelConfig:
    """Every feature on: GQA, partial RoPE, XSA, VE, SmearGate, skips, lanes, recurrence."""
    base = ModelConfig(
        vocab_size=128,
        num_layers=4,
        model_dim=64,
        num_heads=4,
        num_kv_heads=2,
        mlp_mult=2.0,
        rope_dims=8,
        xsa_layers=(0, 1, 2, 3),
        ve_dim=8,
        ve_layers=(2, 3),
        parallel_start=2,
        recur_layers=(0, 1, 2, 1, 2, 3),
        attn_backend="sdpa",
        bos_id=BOS,
    )
    return replace(base, **kw)


def build(cfg: ModelConfig, recur: bool = True, seed: int = 0) -> GPT:
    """A model whose every parameter is perturbed, so zero-init paths (proj, VE) matter."""
    return perturbed_gpt(cfg, recur, seed)


def tokens(B: int, T: int, vocab: int = 128, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(2, vocab, (B, T), generator=g)  # no accidental BOS
    return idx


# ----------------------------------------------------------------------------------------------
# Parameter counts and names


@pytest.mark.parametrize(
    "name, expected", [("baseline", 17_059_912), ("pr1493", 35_944_536), ("pr1550", 36_311_132)]
)
def test_record_param_counts(name: str, expected: int) -> None:
    assert count_params(preset(name).model) == expected


def test_param_names_follow_interfaces() -> None:
    with torch.device("meta"):
        names = set(GPT(tiny()).state_dict())
    expected = {"tok_emb.weight", "skip_weights", "smear.gate", "lane_merge"}
    expected |= {"ve.embed.weight", "ve.proj.weight", "ve.scale", "ve.layer_scales"}
    for i in range(4):
        expected |= {f"blocks.{i}.attn.{n}.weight" for n in ("c_q", "c_k", "c_v", "proj")}
        expected |= {f"blocks.{i}.mlp.{n}.weight" for n in ("fc", "proj")}
        expected |= {f"blocks.{i}.{n}" for n in ("attn_scale", "mlp_scale", "resid_mix")}
        expected.add(f"blocks.{i}.attn.q_gain")
    assert names == expected
    with torch.device("meta"):
        other = GPT(tiny(skip_gate="lerp", tie_embeddings=False, parallel_residual="gptj"))
    names = set(other.state_dict())
    assert {"skip_gates", "lm_head.weight"} <= names and "lane_merge" not in names
    assert other.skip_gates.shape == other.skip_weights.shape == (2, 64)


def test_meta_build_then_init_matches_direct_build() -> None:
    cfg = tiny()
    direct = GPT(cfg)
    torch.manual_seed(3)
    direct.init_weights()
    with torch.device("meta"):
        lazy = GPT(cfg)
    lazy.to_empty(device="cpu")
    torch.manual_seed(3)
    lazy.init_weights()
    for (n1, a), (n2, b) in zip(direct.state_dict().items(), lazy.state_dict().items()):
        assert n1 == n2 and torch.equal(a, b), n1


def test_init_values() -> None:
    torch.manual_seed(0)
    model = GPT(tiny(vocab_size=4096, skip_gate="sigmoid"))
    std = model.tok_emb.weight.std().item()
    assert abs(std - 0.005) < 0.0005
    b = model.blocks[1]
    for w in (b.attn.c_q.weight, b.attn.c_k.weight):  # [64,64], [32,64]: orthonormal rows
        assert torch.allclose(w @ w.T, torch.eye(w.size(0)), atol=1e-5)
    assert torch.allclose(b.mlp.fc.weight.T @ b.mlp.fc.weight, torch.eye(64), atol=1e-5)
    assert b.attn.proj.weight.abs().max() == 0 and b.mlp.proj.weight.abs().max() == 0
    assert torch.all(b.attn.q_gain == 5.25)
    assert torch.equal(b.resid_mix, torch.stack((torch.ones(64), torch.zeros(64))))
    assert torch.allclose(torch.sigmoid(model.skip_weights), torch.full((2, 64), 0.9), atol=1e-3)
    assert model.ve is not None and model.ve.proj.weight.abs().max() == 0
    assert model.ve.scale.item() == pytest.approx(0.1) and model.lane_merge.item() == 0.5
    assert model.smear is not None and model.smear.gate.abs().max() == 0
    assert model.blocks[3].ln == pytest.approx(0.5)  # 1/sqrt(3+1)


# ----------------------------------------------------------------------------------------------
# Attention kernels


@pytest.mark.parametrize("gqa_kwarg", [True, False])
def test_attend_sdpa_matches_naive(gqa_kwarg: bool) -> None:
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 12, 4, 16, generator=g)
    k, v = torch.randn(2, 12, 2, 16, generator=g), torch.randn(2, 12, 2, 16, generator=g)
    for mask in (None, torch.rand(2, 1, 12, 12, generator=g) > 0.4):
        if mask is not None:
            mask = mask & torch.ones(12, 12, dtype=torch.bool).tril() | torch.eye(12).bool()
        ref = M.naive_attention(q, k, v, mask)
        out = M.attend(q, k, v, mask, "sdpa", gqa_kwarg=gqa_kwarg)
        assert torch.allclose(out, ref, atol=1e-5)
    # GQA mapping: query head h reads KV head h // 2, so heads 0 and 1 agree when their q agree
    q2 = q.clone()
    q2[:, :, 1] = q2[:, :, 0]
    out = M.attend(q2, k, v, None, "sdpa")
    assert torch.allclose(out[:, :, 0], out[:, :, 1], atol=1e-6)
    assert not torch.allclose(out[:, :, 0], out[:, :, 2], atol=1e-3)


@pytest.mark.parametrize("doc_mask", [False, True])
def test_model_sdpa_matches_naive_backend(doc_mask: bool) -> None:
    idx = tokens(2, 24)
    idx[:, 9] = BOS
    a = build(tiny(doc_mask=doc_mask, attn_backend="sdpa"))
    b = build(tiny(doc_mask=doc_mask, attn_backend="naive"))
    with torch.no_grad():
        assert torch.allclose(a(idx), b(idx), atol=1e-4)


def test_xsa_removes_own_value_direction() -> None:
    g = torch.Generator().manual_seed(0)
    y, v = torch.randn(2, 5, 4, 8, generator=g), torch.randn(2, 5, 2, 8, generator=g)
    out = M.exclusive_self_attention(y, v)
    vn = F.normalize(v, dim=-1).repeat_interleave(2, dim=2)  # [B,T,H,K]
    assert (out * vn).sum(-1).abs().max() < 1e-5
    assert torch.allclose(out - y, -((y * vn).sum(-1, keepdim=True)) * vn, atol=1e-6)


def test_partial_rope_is_relative_and_leaves_tail() -> None:
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 1, 16, generator=g), torch.randn(1, 1, 1, 16, generator=g)

    def rot(x: torch.Tensor, pos: int) -> torch.Tensor:
        cos, sin = M.rope_tables(torch.tensor([pos]), 8, 10000.0)
        return M.apply_rope(x, cos, sin)

    assert torch.equal(rot(q, 7)[..., 8:], q[..., 8:])
    assert torch.allclose(rot(q, 0), q)
    dots = [(rot(q, m)[..., :8] * rot(k, m - 3)[..., :8]).sum().item() for m in (3, 10, 40)]
    assert dots[0] == pytest.approx(dots[1], abs=1e-4) == pytest.approx(dots[2], abs=1e-4)
    assert rot(q, 5).norm().item() == pytest.approx(q.norm().item(), rel=1e-5)


# ----------------------------------------------------------------------------------------------
# An independent oracle: the spec's forward pass (§3.3, §3.7) written out for tiny()'s
# virtual layers [0,1,2,1,2,3] (encoder [0,1,2], decoder [1,2,3], 3 skips, parallel from 2).


def _rms(x: torch.Tensor) -> torch.Tensor:
    return x / torch.sqrt(x.square().mean(-1, keepdim=True) + torch.finfo(x.dtype).eps)


def _ref_attention(attn: M.Attention, h: torch.Tensor, v_add: torch.Tensor | None) -> torch.Tensor:
    B, T, _ = h.shape
    H, Hk, K, R = 4, 2, 16, 8
    q = _rms((h @ attn.c_q.weight.T).view(B, T, H, K))
    k = _rms((h @ attn.c_k.weight.T).view(B, T, Hk, K))
    v = h @ attn.c_v.weight.T + (0 if v_add is None else v_add)
    v = v.view(B, T, Hk, K)
    theta = torch.arange(T).float()[:, None] * 10000.0 ** (-torch.arange(0, R, 2).float() / R)
    c, s = theta.cos()[None, :, None], theta.sin()[None, :, None]

    def rope(x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x[..., : R // 2], x[..., R // 2 : R]
        return torch.cat((x1 * c + x2 * s, -x1 * s + x2 * c, x[..., R:]), dim=-1)

    q, k = rope(q) * attn.q_gain[None, None, :, None], rope(k)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    heads = []
    for hd in range(H):
        j = hd // (H // Hk)
        scores = (q[:, :, hd] @ k[:, :, j].transpose(1, 2)) / math.sqrt(K)  # [B,T,T]
        y = scores.masked_fill(~causal, float("-inf")).softmax(-1) @ v[:, :, j]
        vn = v[:, :, j] / v[:, :, j].norm(dim=-1, keepdim=True)
        heads.append(y - (y * vn).sum(-1, keepdim=True) * vn)  # XSA on every layer
    return torch.stack(heads, dim=2).reshape(B, T, H * K) @ attn.proj.weight.T


def reference_logits(model: GPT, idx: torch.Tensor, mode: str) -> torch.Tensor:
    """mode 'lanes' (plain skips, #1550) or 'gptj' (lerp skips, #1493)."""
    x = _rms(model.tok_emb.weight[idx])
    g = torch.sigmoid(model.smear.gate)
    x = (1 - g) * x + g * torch.cat((torch.zeros_like(x[:, :1]), x[:, :-1]), dim=1)
    x0 = x
    ve = (model.ve.embed.weight[idx] @ model.ve.proj.weight.T) * model.ve.scale

    def attn(li: int, h: torch.Tensor) -> torch.Tensor:
        v_add = model.ve.layer_scales[li - 2] * ve if li >= 2 else None
        return _ref_attention(model.blocks[li].attn, h, v_add)

    def mlp(li: int, h: torch.Tensor) -> torch.Tensor:
        b = model.blocks[li].mlp
        return F.leaky_relu(h @ b.fc.weight.T, 0.5).square() @ b.proj.weight.T

    def block(li: int, x: torch.Tensor, parallel: bool) -> torch.Tensor:
        b, s = model.blocks[li], 1 / math.sqrt(li + 1)
        x_in = b.resid_mix[0] * x + b.resid_mix[1] * x0
        out = x_in + b.attn_scale * attn(li, _rms(x_in) * s)
        h = _rms(x_in) * s if parallel else _rms(out) * s
        return out + b.mlp_scale * mlp(li, h)

    def skip(i: int, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        w = model.skip_weights[i]
        if mode == "lanes":
            return x + w * e
        gate = torch.sigmoid(model.skip_gates[i])
        return gate * x + (1 - gate) * (w * e)

    gptj = mode == "gptj"
    e0 = block(0, x0, False)
    e1 = block(1, e0, False)
    e2 = block(2, e1, gptj)
    x = block(1, skip(0, e2, e2), False)
    x = skip(1, x, e1)
    if gptj:
        x = block(3, skip(2, block(2, x, True), e0), True)
    else:
        lane0, lane1 = x, x
        for li in (2, 3):
            b, s = model.blocks[li], 1 / math.sqrt(li + 1)
            if li == 3:
                lane0 = skip(2, lane0, e0)  # later skips feed the attention lane
            a_in = b.resid_mix[0] * lane0 + b.resid_mix[1] * x0
            lane0 = a_in + b.attn_scale * attn(li, _rms(a_in) * s)
            lane1 = lane1 + b.mlp_scale * mlp(li, _rms(lane1) * s)
        x = model.lane_merge * lane0 + (1 - model.lane_merge) * lane1
    return 30.0 * torch.tanh((_rms(x) @ model.tok_emb.weight.T) / 30.0)


@pytest.mark.parametrize("mode", ["lanes", "gptj"])
def test_forward_matches_spec_oracle(mode: str) -> None:
    extra = {} if mode == "lanes" else dict(parallel_residual="gptj", skip_gate="lerp")
    model = build(tiny(num_skip_weights=3, **extra), recur=True)
    idx = tokens(2, 12, seed=6)
    with torch.no_grad():
        assert torch.allclose(model(idx), reference_logits(model, idx, mode), atol=2e-5)


# ----------------------------------------------------------------------------------------------
# Causality, recurrence, document masking


CAUSAL_CONFIGS = {
    "all_lanes_recur": (tiny(), True),
    "all_lanes_plain": (tiny(), False),
    "gptj_lerp_recur": (tiny(parallel_residual="gptj", skip_gate="lerp"), True),
    "lanes_early": (tiny(parallel_start=1), True),
    "doc_mask_naive": (tiny(doc_mask=True, attn_backend="naive"), True),
}


@pytest.mark.parametrize("name", list(CAUSAL_CONFIGS))
def test_causality(name: str) -> None:
    cfg, recur = CAUSAL_CONFIGS[name]
    model = build(cfg, recur)
    idx = tokens(2, 20)
    with torch.no_grad():
        ref = model(idx)
        for t in (0, 7, 19):
            idx2 = idx.clone()
            idx2[:, t] = (idx2[:, t] + 5) % 126 + 2
            out = model(idx2)
            assert torch.allclose(out[:, :t], ref[:, :t], atol=1e-6, rtol=0), t
            assert (out[:, t:] - ref[:, t:]).abs().max() > 1e-4, t


def test_recurrence_switch() -> None:
    model = build(tiny(), recur=False)
    idx = tokens(2, 16)
    names = [n for n, _ in model.named_parameters()]
    assert model.virtual_layers() == [0, 1, 2, 3] and not model.recurrence_active
    with torch.no_grad():
        plain = model(idx)
        model.set_recurrence(True)
        assert model.recurrence_active and model.virtual_layers() == [0, 1, 2, 1, 2, 3]
        looped = model(idx)
        model.set_recurrence(False)
        again = model(idx)
    assert (plain - looped).abs().max() > 1e-3
    assert torch.equal(plain, again)
    assert [n for n, _ in model.named_parameters()] == names
    never = build(tiny(recur_layers=()), recur=True)
    assert never.virtual_layers() == [0, 1, 2, 3]


@pytest.mark.parametrize("doc_mask", [True, False])
def test_doc_mask_blocks_cross_document_attention(doc_mask: bool) -> None:
    model = build(tiny(doc_mask=doc_mask))
    idx = tokens(2, 24)
    idx[:, 0] = BOS
    idx[:, 11] = BOS
    idx2 = idx.clone()
    idx2[:, 5] = (idx2[:, 5] + 7) % 126 + 2  # edit inside document 1 ...
    idx2[:, 10] = (idx2[:, 10] + 7) % 126 + 2  # ... and its last token (SmearGate's reach)
    with torch.no_grad():
        a, b = model(idx), model(idx2)
    assert (a[:, 5:11] - b[:, 5:11]).abs().max() > 1e-4  # document 1 sees its own edit
    leak = (a[:, 11:] - b[:, 11:]).abs().max().item()  # document 2
    if doc_mask:
        assert leak < 1e-6
    else:
        assert leak > 1e-4


# ----------------------------------------------------------------------------------------------
# Switches, loss, compile


SWITCH_OFF = {
    "no_xsa": dict(xsa_layers=()),
    "no_ve": dict(ve_dim=0, ve_layers=()),
    "no_smear": dict(smear_gate=False),
    "no_skips": dict(unet_skips=False),
    "sigmoid_skips": dict(skip_gate="sigmoid"),
    "lerp_skips": dict(skip_gate="lerp"),
    "sequential": dict(parallel_residual="none"),
    "gptj": dict(parallel_residual="gptj"),
    "no_recurrence": dict(recur_layers=()),
    "no_ln_scale_relu2": dict(ln_scale=False, activation="relu2"),
    "full_rope": dict(rope_dims=0),
    "untied_no_softcap": dict(tie_embeddings=False, logit_softcap=0.0),
    "mha": dict(num_kv_heads=4),
}


@pytest.mark.parametrize("name", list(SWITCH_OFF))
def test_each_switch_off(name: str) -> None:
    model = build(tiny(**SWITCH_OFF[name]))
    idx, tgt = tokens(2, 16, seed=1), tokens(2, 16, seed=2)
    loss = model(idx, tgt)
    assert loss.dtype == torch.float32 and loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert not unused, unused
    names = set(n for n, _ in model.named_parameters())
    if name == "no_ve":
        assert not any(n.startswith("ve.") for n in names)
    gone = {"no_smear": "smear.gate", "no_skips": "skip_weights", "sequential": "lane_merge"}
    if name in gone:
        assert gone[name] not in names


def test_loss_equals_manual_cross_entropy() -> None:
    model = build(tiny(logit_softcap=3.0))
    idx, tgt = tokens(2, 16, seed=1), tokens(2, 16, seed=2)
    with torch.no_grad():
        logits = model(idx)
        loss = model(idx, tgt)
    assert logits.shape == (2, 16, 128) and logits.dtype == torch.float32
    assert logits.abs().max() < 3.0  # softcapped
    logp = logits.log_softmax(-1)
    manual = -logp.gather(-1, tgt[..., None]).mean()
    assert loss.item() == pytest.approx(manual.item(), rel=1e-6)
    assert loss.item() != pytest.approx(math.log(128), rel=1e-3)


def test_compile_fullgraph_matches_eager() -> None:
    model = build(tiny())
    idx, tgt = tokens(2, 16, seed=1), tokens(2, 16, seed=2)
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    with torch.no_grad():
        assert torch.allclose(compiled(idx, tgt), model(idx, tgt), atol=1e-6)


# ----------------------------------------------------------------------------------------------
# KV-cached decoding


CACHE_CONFIGS = {
    "all_lanes_recur": tiny(),
    "gptj_lerp": tiny(parallel_residual="gptj", skip_gate="lerp"),
    "doc_mask": tiny(doc_mask=True),
    "naive": tiny(attn_backend="naive"),
}


@pytest.mark.parametrize("name", list(CACHE_CONFIGS))
def test_kv_cache_matches_full_forward(name: str) -> None:
    model = build(CACHE_CONFIGS[name], recur=True)
    idx = tokens(2, 20, seed=4)
    idx[0, 8] = BOS
    idx[1, 13] = BOS
    with torch.no_grad():
        full = model(idx)
        cache = model.new_cache(2, 20)
        parts = [model.decode(idx[:, :6], cache)]  # prefill
        parts += [model.decode(idx[:, t : t + 1], cache) for t in range(6, 16)]
        parts.append(model.decode(idx[:, 16:], cache))  # a multi-token chunk on a warm cache
    assert int(cache.pos) == 20
    assert torch.allclose(torch.cat(parts, dim=1), full, atol=1e-5)


def test_generate_greedy_and_sampled() -> None:
    model = build(tiny(), recur=True)
    prompt = tokens(2, 3, seed=5)
    greedy = generate(model, prompt, 8, temperature=0.0)
    assert greedy.shape == (2, 11) and torch.equal(greedy[:, :3], prompt)
    seq = prompt
    with torch.no_grad():
        for _ in range(8):  # the slow oracle: a full re-forward per token
            seq = torch.cat((seq, model(seq)[:, -1].argmax(-1, keepdim=True)), dim=1)
    assert torch.equal(greedy, seq)
    s1 = generate(model, prompt, 8, 0.8, torch.Generator().manual_seed(0))
    s2 = generate(model, prompt, 8, 0.8, torch.Generator().manual_seed(0))
    assert torch.equal(s1, s2) and s1.dtype == torch.long
    assert int(s1.min()) >= 0 and int(s1.max()) < 128


def test_one_role_table_gives_the_optimizer_quant_and_budget_groups():
    from pgolf.artifact import QTensor
    from pgolf.config import QuantConfig
    from pgolf.lab.budget.sizes import group_of
    from pgolf.model import PARAM_ROLES, param_role
    from pgolf.optim import param_kind
    from pgolf.quant import make_plan

    cfg = preset("cpu-tiny").model
    m = GPT(cfg)
    plan = {e.name: e for e in make_plan(m.state_dict(), QuantConfig(passthrough_numel=0), cfg)}
    for n, p in m.named_parameters():
        role = param_role(n, p.ndim)
        assert param_kind(n, p) == role.optim
        assert plan[n].group == role.group
        q = QTensor(n, tuple(p.shape), "int", 6, None, None, None, "")
        assert group_of(q) == role.group
    assert param_role("_orig_mod.blocks.0.mlp.fc.weight", 2).group == "mlp"
    assert param_role("blocks.0.resid_mix", 2).optim == "scalar"  # not `.weight`: stays in AdamW
    assert PARAM_ROLES[-1].names == () and PARAM_ROLES[-1].suffix == ""  # a catch-all last row
