"""Tests for pgolf.optim: Newton-Schulz, Muon (fast path, torch.optim.Muon, sharded), parameter
groups, resume, schedules, clipping and EMA. Tiny shapes, CPU, deterministic."""

from __future__ import annotations

import copy
import dataclasses
import math
import os

import pytest
import torch
from torch import nn

from pgolf.config import OptimConfig
from pgolf.optim import (
    EMA,
    NS_COEFFS,
    Muon,
    build_optimizers,
    clip_grad_norm_,
    lr_multiplier,
    muon_momentum_at,
    ns_schedule,
    param_kind,
    zeropower,
)

# ----------------------------------------------------------------------------------------------
# Stand-in model with the parameter names of INTERFACES.md


class _Box(nn.Module):
    pass


class _Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.attn = _Box()
        self.attn.c_q = nn.Linear(d, d, bias=False)
        self.attn.c_k = nn.Linear(d, d // 2, bias=False)
        self.attn.c_v = nn.Linear(d, d // 2, bias=False)
        self.attn.proj = nn.Linear(d, d, bias=False)
        self.attn.q_gain = nn.Parameter(torch.ones(2))
        self.mlp = _Box()
        self.mlp.fc = nn.Linear(d, 3 * d, bias=False)  # tall [3d, d]
        self.mlp.proj = nn.Linear(3 * d, d, bias=False)  # wide [d, 3d]
        self.attn_scale = nn.Parameter(torch.ones(d))
        self.mlp_scale = nn.Parameter(torch.ones(d))
        self.resid_mix = nn.Parameter(torch.stack([torch.ones(d), torch.zeros(d)]))  # 2-D


class _Tiny(nn.Module):
    def __init__(self, d: int = 8, vocab: int = 16, layers: int = 2, tied: bool = True) -> None:
        super().__init__()
        self.tok_emb = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList([_Block(d) for _ in range(layers)])
        self.skip_weights = nn.Parameter(torch.ones(1, d))
        self.smear = _Box()
        self.smear.gate = nn.Parameter(torch.zeros(d))
        self.ve = _Box()
        self.ve.embed = nn.Embedding(vocab, 4)
        self.ve.proj = nn.Linear(4, d // 2, bias=False)
        self.ve.scale = nn.Parameter(torch.ones(()))
        self.lane_merge = nn.Parameter(torch.full((d,), 0.5))
        if not tied:
            self.lm_head = nn.Linear(d, vocab, bias=False)
        self.register_buffer("rope_cos", torch.rand(5))


def _tiny(seed: int = 0, **kw) -> _Tiny:
    torch.manual_seed(seed)
    return _Tiny(**kw)


def _set_grads(params, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)


# ----------------------------------------------------------------------------------------------
# Newton-Schulz


def test_ns_schedule_takes_prefix_then_repeats_last():
    pe = NS_COEFFS["polar_express"]
    assert len(pe) == 5
    assert ns_schedule("polar_express", 4) == pe[:4]
    assert ns_schedule("polar_express", 7) == pe + [pe[-1], pe[-1]]
    assert ns_schedule("quintic", 3) == [(3.4445, -4.7750, 2.0315)] * 3


@pytest.mark.parametrize("shape", [(24, 40), (40, 24)])
def test_zeropower_is_near_polar_factor(shape):
    torch.manual_seed(0)
    G = torch.randn(*shape, dtype=torch.float64)
    O = zeropower(G, "polar_express", 5, dtype="float64")
    assert O.shape == G.shape and O.dtype == torch.float64
    U, S, Vh = torch.linalg.svd(G, full_matrices=False)
    # Same singular vectors as G, singular values pushed towards 1.
    D = U.T @ O @ Vh.T
    diag = torch.diagonal(D)
    assert (D - torch.diag(diag)).abs().max() < 1e-6
    assert diag.min() > 0.8 and diag.max() < 1.2
    assert torch.linalg.svdvals(G).max() > 3  # the input was far from orthogonal


def test_zeropower_batched_equals_per_matrix():
    torch.manual_seed(0)
    G = torch.randn(2, 3, 12, 20)
    O = zeropower(G, "polar_express", 4, row_norm=True)
    for i in range(2):
        for j in range(3):
            ref = zeropower(G[i, j], "polar_express", 4, row_norm=True)
            torch.testing.assert_close(O[i, j], ref, rtol=1e-5, atol=1e-6)


def test_row_norm_normalises_rows_of_the_wide_orientation():
    torch.manual_seed(0)
    scales = torch.logspace(-2, 2, 10)
    tall = torch.randn(30, 10) * scales  # columns of very different norms
    got = zeropower(tall, "polar_express", 4, row_norm=True)
    cols = tall / tall.norm(dim=0, keepdim=True)
    rows = tall / tall.norm(dim=1, keepdim=True)
    torch.testing.assert_close(got, zeropower(cols, "polar_express", 4), rtol=1e-4, atol=1e-5)
    assert (got - zeropower(rows, "polar_express", 4)).abs().max() > 1e-2
    wide = tall.T.contiguous()
    got_w = zeropower(wide, "polar_express", 4, row_norm=True)
    torch.testing.assert_close(got_w, got.T, rtol=1e-4, atol=1e-5)


def test_zeropower_zero_input_and_dtype():
    out = zeropower(torch.zeros(3, 4, 6), "quintic", 5, row_norm=True)
    assert torch.equal(out, torch.zeros(3, 4, 6))
    assert zeropower(torch.randn(4, 6), dtype="bfloat16").dtype == torch.bfloat16
    with pytest.raises(ValueError, match="zeropower"):
        zeropower(torch.randn(5))


# ----------------------------------------------------------------------------------------------
# Muon


def _matrices(seed: int = 0) -> list[nn.Parameter]:
    torch.manual_seed(seed)
    shapes = [(8, 8), (24, 8), (8, 8), (8, 24), (24, 8), (8, 8)]
    return [nn.Parameter(torch.randn(*s)) for s in shapes]


@pytest.mark.parametrize("nesterov", [True, False])
def test_muon_fast_path_equals_reference_loop(nesterov):
    a, b = _matrices(), _matrices()
    kw = dict(lr=0.05, momentum=0.9, weight_decay=0.1, nesterov=nesterov, row_norm=True)
    fast, ref = Muon(a, ns_steps=4, **kw), Muon(b, ns_steps=4, batched=False, **kw)
    for step in range(4):
        _set_grads(a, step)
        _set_grads(b, step)
        fast.step()
        ref.step()
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


def test_muon_two_steps_by_hand():
    torch.manual_seed(0)
    W0 = torch.randn(24, 8)
    g1, g2 = torch.randn(24, 8), torch.randn(24, 8)
    p = nn.Parameter(W0.clone())
    lr, mu, wd = 0.1, 0.9, 0.2
    opt = Muon([p], lr=lr, momentum=mu, weight_decay=wd, ns_coeffs="quintic", ns_steps=5)
    W = W0.clone()
    b = torch.zeros_like(W0)
    for g in (g1, g2):
        p.grad = g.clone()
        opt.step()
        b = mu * b + g
        O = zeropower(g + mu * b, "quintic", 5)
        W = W * (1 - lr * wd) - lr * math.sqrt(24 / 8) * O
    torch.testing.assert_close(p.detach(), W, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="torch.optim.Muon missing")
@pytest.mark.parametrize("shape", [(32, 8), (8, 32), (16, 16)])
def test_muon_matches_torch_muon(shape):
    # torch.optim.Muon keeps buf = lerp(buf, g, 1-mu), i.e. (1-mu) x our buffer, and Nesterov
    # lerp(g, buf, mu) = (1-mu) x our g + mu*b: the same direction, and NS is scale invariant.
    # It always orthogonalises in bf16, so ours runs in bf16 too; differences are rounding only.
    torch.manual_seed(1)
    W0 = torch.randn(*shape)
    ours, theirs = nn.Parameter(W0.clone()), nn.Parameter(W0.clone())
    kw = dict(lr=0.02, momentum=0.9, weight_decay=0.1)
    o1 = Muon([ours], ns_coeffs="quintic", ns_steps=5, ns_dtype="bfloat16", **kw)
    o2 = torch.optim.Muon([theirs], adjust_lr_fn="original", **kw)
    for _ in range(5):
        g = torch.randn(*shape)
        ours.grad, theirs.grad = g.clone(), g.clone()
        o1.step()
        o2.step()
    moved = (theirs - W0).norm()
    assert ((ours - theirs).norm() / moved).item() < 0.03  # Nesterov off would give ~0.2-0.3


def test_muon_rejects_non_matrix():
    with pytest.raises(ValueError, match="2-D"):
        Muon([nn.Parameter(torch.ones(3))])


def _dist_worker(rank: int, world: int, init_file: str) -> None:
    import torch.distributed as tdist

    tdist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        a, b = _matrices(3), _matrices(3)  # same seed on both ranks: identical weights/grads
        kw = dict(lr=0.05, momentum=0.9, weight_decay=0.1, row_norm=True, ns_steps=4)
        sharded, plain = Muon(a, **kw), Muon(b, shard=False, **kw)
        for step in range(3):
            _set_grads(a, 10 + step)
            _set_grads(b, 10 + step)
            sharded.step()
            plain.step()
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7)
    finally:
        tdist.destroy_process_group()


@pytest.mark.dist
def test_muon_sharded_equals_unsharded(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_dist_worker, args=(2, os.fspath(tmp_path / "pg_init")), nprocs=2, join=True)


# ----------------------------------------------------------------------------------------------
# Parameter groups


def test_param_kinds_follow_the_rule_table():
    m = _tiny(tied=False)
    kinds = {n: param_kind(n, p) for n, p in m.named_parameters()}
    embed = {"tok_emb.weight", "ve.embed.weight", "lm_head.weight"}
    matrix = {
        f"blocks.{i}.{s}.weight"
        for i in range(2)
        for s in ("attn.c_q", "attn.c_k", "attn.c_v", "attn.proj", "mlp.fc", "mlp.proj")
    }
    assert {n for n, k in kinds.items() if k == "embed"} == embed
    assert {n for n, k in kinds.items() if k == "matrix"} == matrix
    assert kinds["ve.proj.weight"] == "scalar" and kinds["blocks.0.resid_mix"] == "scalar"
    assert set(kinds.values()) == {"embed", "matrix", "scalar"}
    p = m.blocks[0].attn.c_q.weight
    assert param_kind("_orig_mod.blocks.0.attn.c_q.weight", p) == "matrix"


def test_build_optimizers_groups_and_setters():
    ocfg = OptimConfig()
    m = _tiny()
    opts = build_optimizers(m, ocfg)
    assert opts.muon is not None and opts.adamw is not None
    (mg,) = opts.muon.param_groups
    assert mg["lr"] == ocfg.matrix_lr and mg["weight_decay"] == ocfg.muon_wd
    assert mg["momentum"] == ocfg.muon_momentum_warmup_start
    assert mg["ns_steps"] == 4 and mg["row_norm"] is True and mg["ns_coeffs"] == "polar_express"
    adam = {g["kind"]: g for g in opts.adamw.param_groups}
    assert adam["embed"]["lr"] == ocfg.embed_lr and adam["embed"]["weight_decay"] == ocfg.embed_wd
    assert adam["scalar"]["lr"] == ocfg.scalar_lr and adam["scalar"]["betas"] == (0.9, 0.95)
    n_all = sum(p.numel() for p in m.parameters())
    assert sum(opts.counts.values()) == n_all
    assert opts.counts["matrix"] == 2 * (64 + 32 + 32 + 64 + 192 + 192)
    opts.set_lr_mult(0.5)
    assert mg["lr"] == pytest.approx(ocfg.matrix_lr / 2)
    assert adam["embed"]["lr"] == pytest.approx(ocfg.embed_lr / 2)
    opts.set_muon_momentum(0.97)
    assert mg["momentum"] == 0.97
    line = opts.describe()
    assert "tie_embeddings:True embed_lr:0.03 matrix_lr:0.022 scalar_lr:0.02" in line
    assert f"matrix_params:{opts.counts['matrix']}" in line and "\n" not in line
    assert "tie_embeddings:False" in build_optimizers(_tiny(tied=False), ocfg).describe()


def test_lr_mult_scales_weight_decay():
    ocfg = dataclasses.replace(OptimConfig(), embed_wd=0.5, scalar_wd=0.5, muon_wd=0.5)
    m = _tiny()
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    opts = build_optimizers(m, ocfg)
    opts.set_lr_mult(0.0)  # lr 0: neither update nor decay
    _set_grads(m.parameters(), 0)
    opts.step()
    for n, p in m.named_parameters():
        assert torch.equal(p, before[n]), n


def test_resume_reproduces_updates():
    ocfg = OptimConfig()
    m = _tiny()
    opts = build_optimizers(m, ocfg)

    def run(model, o, steps):
        for s in steps:
            o.set_lr_mult(lr_multiplier(s / 8, ocfg))
            o.set_muon_momentum(muon_momentum_at(s * 300, ocfg))
            o.zero_grad()
            _set_grads(model.parameters(), s)
            o.step()

    run(m, opts, range(3))
    saved_model = copy.deepcopy(m.state_dict())
    saved_opt = copy.deepcopy(opts.state_dict())
    run(m, opts, range(3, 6))

    m2 = _tiny(seed=123)
    m2.load_state_dict(saved_model)
    opts2 = build_optimizers(m2, ocfg)
    opts2.load_state_dict(saved_opt)
    run(m2, opts2, range(3, 6))
    for (n, p), p2 in zip(m.named_parameters(), m2.parameters()):
        assert torch.equal(p, p2), n
    with pytest.raises(KeyError, match="checkpoint"):
        opts2.load_state_dict({"muon": saved_opt["muon"]})


# ----------------------------------------------------------------------------------------------
# Schedules and clipping


def test_lr_multiplier_corners():
    o = OptimConfig()  # warmdown_frac 0.72, lr_floor 0
    assert lr_multiplier(-0.1, o) == 1.0 and lr_multiplier(0.0, o) == 1.0
    assert lr_multiplier(0.28, o) == 1.0
    assert lr_multiplier(0.64, o) == pytest.approx(0.5)
    assert lr_multiplier(1.0, o) == pytest.approx(0.0)
    assert lr_multiplier(1.3, o) == pytest.approx(0.0)
    f = dataclasses.replace(o, lr_floor=0.1)
    assert lr_multiplier(1.0, f) == pytest.approx(0.1)
    assert lr_multiplier(0.64, f) == pytest.approx(0.55)
    assert lr_multiplier(0.99, dataclasses.replace(o, warmdown_frac=0.0)) == 1.0


def test_muon_momentum_warmup_corners():
    o = OptimConfig()  # 0.92 -> 0.99 over 1500 steps
    assert muon_momentum_at(0, o) == pytest.approx(0.92)
    assert muon_momentum_at(750, o) == pytest.approx(0.955)
    assert muon_momentum_at(1500, o) == pytest.approx(0.99)
    assert muon_momentum_at(10_000, o) == pytest.approx(0.99)
    assert muon_momentum_at(3, dataclasses.replace(o, muon_momentum_warmup_steps=0)) == 0.99


def test_clip_grad_norm():
    ps = [
        nn.Parameter(torch.zeros(3)),
        nn.Parameter(torch.zeros(2, 2)),
        nn.Parameter(torch.ones(1)),
    ]
    ps[0].grad = torch.tensor([3.0, 0.0, 0.0])
    ps[1].grad = torch.tensor([[0.0, 4.0], [0.0, 0.0]])  # ps[2] has no grad
    norm = clip_grad_norm_(ps, 0.0)
    assert norm.item() == pytest.approx(5.0) and ps[0].grad[0].item() == 3.0  # off
    norm = clip_grad_norm_(ps, 1.0)
    assert norm.item() == pytest.approx(5.0)
    assert clip_grad_norm_(ps, 0.0).item() == pytest.approx(1.0, rel=1e-5)
    torch.testing.assert_close(ps[1].grad, torch.tensor([[0.0, 0.8], [0.0, 0.0]]))
    clip_grad_norm_(ps, 10.0)  # below the cap: unchanged
    torch.testing.assert_close(ps[0].grad, torch.tensor([0.6, 0.0, 0.0]))


# ----------------------------------------------------------------------------------------------
# EMA


def _perturb(model: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in list(model.parameters()) + [model.rope_cos]:
            t.add_(torch.randn(t.shape, generator=g, dtype=t.dtype))


def test_ema_equals_hand_average():
    m, d = _tiny(), 0.8
    ema = EMA(m, d)
    name = "blocks.0.mlp.fc.weight"
    expect = m.state_dict()[name].clone()
    expect_buf = m.rope_cos.clone()
    for s in range(3):
        _perturb(m, s)
        ema.update(m)
        expect = d * expect + (1 - d) * m.state_dict()[name]
        expect_buf = d * expect_buf + (1 - d) * m.rope_cos
    sd = ema.state_dict()
    torch.testing.assert_close(sd[name], expect)
    torch.testing.assert_close(sd["rope_cos"], expect_buf)
    assert not torch.allclose(sd[name], m.state_dict()[name])


def test_ema_equals_averaged_model():
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    m, d = _tiny(), 0.9
    ema = EMA(m, d)
    ref = AveragedModel(m, multi_avg_fn=get_ema_multi_avg_fn(d), use_buffers=True)
    # AveragedModel's first update_parameters *copies* the model (n_averaged == 0); our EMA is
    # initialised from the model instead, so give the reference that copy at the same point.
    ref.update_parameters(m)
    for s in range(4):
        _perturb(m, 100 + s)
        ema.update(m)
        ref.update_parameters(m)
    expect = ref.module.state_dict()
    for n, t in ema.state_dict().items():
        torch.testing.assert_close(t, expect[n], rtol=1e-6, atol=1e-7)


def test_ema_copy_to_casts_and_state_roundtrip():
    m = _tiny()
    m.blocks[0].attn.c_q.to(torch.bfloat16)
    ema = EMA(m, 0.5)
    assert ema.shadow["blocks.0.attn.c_q.weight"].dtype == torch.float32
    saved = ema.state_dict()
    _perturb(m, 7)
    ema.update(m)
    target = _tiny(seed=5)
    target.blocks[0].attn.c_q.to(torch.bfloat16)
    ema.copy_to(target)
    w = target.blocks[0].attn.c_q.weight
    assert w.dtype == torch.bfloat16
    torch.testing.assert_close(w, ema.shadow["blocks.0.attn.c_q.weight"].bfloat16())
    ema2 = EMA(_tiny(seed=9), 0.5)
    ema2.load_state_dict(saved)
    for n, t in saved.items():
        assert torch.equal(ema2.shadow[n], t)
    with pytest.raises(KeyError, match="differ"):
        ema2.load_state_dict({})
