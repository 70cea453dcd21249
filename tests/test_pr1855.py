"""PR #1855's pieces as switches: the preset's parameter count, window SmearGate, attention output
gates, the 2x2 lanes, Muon on rows, the max(ramp, floor) LR, the record's environment variables,
int8 gates and the asymmetric low-rank terms. Parity with the record's own script:
tests/test_parity_1855.py."""

from __future__ import annotations

import dataclasses as dc

import pytest
import torch

from pgolf import config as C
from pgolf import config_env as E
from pgolf import lqer, quant
from pgolf.model import GPT, count_params
from pgolf.optim import build_optimizers, lr_multiplier, zeropower

TINY = dc.replace(
    C.pr1855().model, vocab_size=64, model_dim=64, num_heads=4, num_kv_heads=2, attn_backend="sdpa"
)


def _perturbed(m: C.ModelConfig, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    g = GPT(m)
    with torch.no_grad():
        for p in g.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return g


def test_pr1855_has_the_records_parameter_count_and_layout():
    m = C.pr1855().model
    assert count_params(m) == 35_945_671  # the record's log: model_params:35945671
    g = GPT(dc.replace(m, vocab_size=8, model_dim=128, num_heads=8, num_kv_heads=4))
    shapes = {k: tuple(p.shape) for k, p in g.named_parameters()}
    assert shapes["blocks.0.attn.gate_w"] == (8, 12)
    assert shapes["smear.gate"] == (1, 12) and shapes["smear.lam"] == (1,)
    assert shapes["lane_post"] == (11, 2, 2) and shapes["lane_resid"] == (11, 2)
    assert shapes["skip_weights"] == (8, 128) and shapes["skip_gates"] == (8, 128)
    kinds = build_optimizers(g, C.pr1855().optim).kinds
    for name in ("blocks.3.attn.gate_w", "smear.gate", "smear.lam", "lane_post", "lane_resid"):
        assert kinds[name] == "scalar", name  # AdamW, as #1855's control tensors


def test_existing_presets_keep_their_counts():
    assert count_params(C.pr1550().model) == 36_311_132
    assert all(C.preset(n).model.attn_gate == "none" for n in ("pr1493", "pr1550", "cpu-tiny"))


def test_window_smear_is_before_the_norm_and_never_smears_into_bos():
    g = _perturbed(TINY)
    idx = torch.randint(2, 64, (1, 12))
    idx[0, 6] = TINY.bos_id
    other = idx.clone()
    other[0, 5] = (idx[0, 5] + 1) % 62 + 2  # only the token before the BOS changes
    with torch.no_grad():
        a, b = g._embed(idx, None), g._embed(other, None)
        assert torch.equal(a[0, 6], b[0, 6])
        idx[0, 6] = other[0, 6] = 7  # the control: no BOS, so the change smears into 6
        assert not torch.equal(g._embed(idx, None)[0, 6], g._embed(other, None)[0, 6])
        x = g.tok_emb(idx)
        lam, w = g.smear.lam, g.smear.gate
        gate = lam * torch.sigmoid(x[0, 8, :12] @ w[0])
        want = torch.nn.functional.rms_norm(x[0, 8] + gate * x[0, 7], (64,))
        assert torch.allclose(a[0, 8], want, atol=1e-6)


def test_attention_gates_match_their_formulas_and_start_transparent_or_half():
    for form, scale in (("sparse", 0.5), ("dense", 1.0), ("out", 1.0)):
        m = dc.replace(TINY, attn_gate=form, attn_gate_scale=scale)
        g = GPT(m)
        a = g.blocks[0].attn
        h = torch.randn(1, 5, 64)
        w = a.gate_proj if form == "out" else a.gate_w
        with torch.no_grad():
            w.normal_()
            got = a._gate(h, h)
        src = h if form == "dense" else h[..., :12]
        z = src @ w.T
        want = 2 * torch.sigmoid(z) if form == "out" else torch.sigmoid(scale * z)
        assert torch.allclose(got, want, atol=1e-6), form
    g = GPT(dc.replace(TINY, attn_gate="sparse"))
    assert torch.equal(g.blocks[0].attn.gate_w, torch.zeros(4, 12))  # zero init: σ(0) = 0.5


def _lanes_by_hand(g: GPT, idx: torch.Tensor) -> torch.Tensor:
    """#1855's decoder written out (no recurrence, no BOS): lanes fork from x at the first
    decoder layer >= 8 *before* its skip, which goes to lane0; each lane k becomes
    resid[k]·lane_k + post[0,k]·attn + post[1,k]·mlp; the output is the normed lane mean."""
    from pgolf.model import rope_tables

    cos, sin = rope_tables(torch.arange(idx.shape[1]), g.rope_dims, g.cfg.rope_base)
    kw = dict(cos=cos, sin=sin)
    x = x0 = g._embed(idx, None)
    skips = []
    for i in range(5):
        x = g.blocks[i](x, x0, False, **kw)
        skips.append(x)
    lanes = None
    for d, i in enumerate(range(5, 11)):
        b = g.blocks[i]
        if i >= 8 and lanes is None:
            lanes = [x, x]
        if lanes is None:
            x = g._skip(d, x, skips.pop()) if skips else x
            x = b(x, x0, False, **kw)
            continue
        if skips:
            lanes[0] = g._skip(d, lanes[0], skips.pop())
        a_in = b.resid_mix[0] * lanes[0] + b.resid_mix[1] * x0
        a = b.attn_scale * b.attn(b._norm(a_in), **kw)
        m = b.mlp_scale * b.mlp(b._norm(lanes[1]))
        P, R = g.lane_post[i], g.lane_resid[i]
        lanes = [
            R[0] * lanes[0] + P[0, 0] * a + P[1, 0] * m,
            R[1] * lanes[1] + P[0, 1] * a + P[1, 1] * m,
        ]
    return torch.nn.functional.rms_norm(0.5 * (lanes[0] + lanes[1]), (x.shape[-1],))


def test_lanes2x2_is_the_records_decoder():
    g = _perturbed(TINY, 1)
    idx = torch.randint(2, 64, (2, 9))
    with torch.no_grad():
        assert torch.allclose(g.hidden(idx), _lanes_by_hand(g, idx), atol=1e-5)
        other = GPT(dc.replace(TINY, parallel_final="attn"))
        other.load_state_dict(g.state_dict())
        assert not torch.allclose(other.hidden(idx), g.hidden(idx), atol=1e-3)


def test_decoding_with_a_cache_matches_the_full_forward():
    g = _perturbed(TINY, 3)
    g.set_recurrence(True)
    idx = torch.randint(2, 64, (2, 10))
    idx[:, 4] = TINY.bos_id
    with torch.no_grad():
        full = g(idx)
        cache = g.new_cache(2, 10)
        parts = [g.decode(idx[:, :3], cache), g.decode(idx[:, 3:7], cache)]
        parts.append(g.decode(idx[:, 7:], cache))
    assert torch.allclose(torch.cat(parts, 1), full, atol=1e-4)


def test_doc_mask_isolates_documents():
    g = _perturbed(TINY, 4)
    a = torch.randint(2, 64, (1, 12))
    a[0, 0] = a[0, 6] = TINY.bos_id
    b = a.clone()
    b[0, 1:6] = torch.randint(2, 64, (5,))  # another first document
    with torch.no_grad():
        la, lb = g(a), g(b)
    assert torch.allclose(la[0, 6:], lb[0, 6:], atol=1e-5)
    assert not torch.allclose(la[0, :6], lb[0, :6])


def test_muon_row_axis_rows_normalises_the_matrix_rows():
    torch.manual_seed(5)
    G = torch.randn(3, 48, 16) * torch.rand(3, 48, 1)  # tall, rows of very different norms
    rows = zeropower(G, row_norm=True, row_axis="rows")
    want = zeropower(G / G.norm(dim=-1, keepdim=True), row_norm=False)
    assert torch.allclose(rows, want, atol=1e-6)
    assert not torch.allclose(rows, zeropower(G, row_norm=True), atol=1e-3)


def test_lr_floor_max_is_the_records_curve():
    o = dc.replace(C.pr1855().optim, warmdown_frac=0.5, lr_floor=0.1)
    assert o.lr_floor_mode == "max"
    assert lr_multiplier(0.4, o) == 1.0
    assert lr_multiplier(0.75, o) == pytest.approx(0.5)  # (1 - 0.75) / 0.5
    assert lr_multiplier(0.97, o) == pytest.approx(0.1)  # the ramp (0.06) is below the floor
    lerp = dc.replace(o, lr_floor_mode="lerp")
    assert lr_multiplier(0.75, lerp) == pytest.approx(0.55) and lr_multiplier(
        1.0, lerp
    ) == pytest.approx(0.1)


# Every variable #1855's Hyperparameters reads (names from its script).
RECORD_VARS = """
ADAM_EPS ADAM_WD ARTIFACT_DIR ATTN_CLIP_SIGMAS ATTN_OUT_GATE_ENABLED ATTN_OUT_GATE_SRC BETA1
BETA2 CASEOPS_ENABLED COMPRESSOR CONTROL_TENSOR_NAME_PATTERNS DATA_DIR DATA_PATH EMA_DECAY
EMBED_BITS EMBED_CLIP_SIGMAS EMBED_LR EMBED_WD ENABLE_LOOPING_AT EVAL_SEQ_LEN EVAL_STRIDE
FUSED_CE_ENABLED GATED_ATTN_ENABLED GATED_ATTN_INIT_STD GATED_ATTN_QUANT_GATE GATE_WINDOW
GLOBAL_TTT_BATCH_SEQS GLOBAL_TTT_CHUNK_TOKENS GLOBAL_TTT_EPOCHS GLOBAL_TTT_GRAD_CLIP
GLOBAL_TTT_LR GLOBAL_TTT_MOMENTUM GLOBAL_TTT_RESPECT_DOC_BOUNDARIES GLOBAL_TTT_WARMUP_CHUNKS
GLOBAL_TTT_WARMUP_START_LR GPTQ_CALIBRATION_BATCHES GPTQ_RESERVE_SECONDS GRAD_CLIP_NORM
ITERATIONS LN_SCALE LOGIT_SOFTCAP LOOP_END LOOP_START LQER_ASYM_ENABLED LQER_ASYM_GROUP
LQER_ENABLED LQER_FACTOR_BITS LQER_RANK LQER_TOP_K MATRIX_BITS MATRIX_CLIP_SIGMAS MATRIX_LR
MAX_WALLCLOCK_SECONDS MIN_LR MLP_CLIP_SIGMAS MLP_MULT MODEL_DIM MUON_BACKEND_STEPS
MUON_MOMENTUM MUON_MOMENTUM_WARMUP_START MUON_MOMENTUM_WARMUP_STEPS MUON_ROW_NORMALIZE MUON_WD
NUM_HEADS NUM_KV_HEADS NUM_LAYERS NUM_LOOPS PARALLEL_FINAL_LANE PARALLEL_START_LAYER
PHASED_TTT_NUM_PHASES PHASED_TTT_PREFIX_DOCS PREQUANT_ONLY QK_GAIN_INIT ROPE_BASE ROPE_DIMS
ROPE_TRAIN_SEQ_LEN ROPE_YARN RUN_ID SCALAR_LR SEED SKIP_GATES_ENABLED SMEAR_GATE_ENABLED
SPARSE_ATTN_GATE_ENABLED SPARSE_ATTN_GATE_INIT_STD SPARSE_ATTN_GATE_SCALE TIED_EMBED_INIT_STD
TIED_EMBED_LR TIE_EMBEDDINGS TOKENIZER_PATH TRAIN_BATCH_TOKENS TRAIN_LOG_EVERY TRAIN_SEQ_LEN
TTT_BATCH_SIZE TTT_BETA1 TTT_BETA2 TTT_CHUNK_SIZE TTT_ENABLED TTT_EVAL_BATCHES TTT_EVAL_ONLY
TTT_EVAL_SEQ_LEN TTT_GRAD_STEPS TTT_K_LORA TTT_LORA_ALPHA TTT_LORA_LR TTT_LORA_RANK
TTT_MLP_LORA TTT_OPTIMIZER TTT_O_LORA TTT_WARM_START_A TTT_WEIGHT_DECAY VAL_BATCH_TOKENS
VAL_DOC_FRACTION VAL_LOSS_EVERY VOCAB_SIZE WARMDOWN_FRAC WARMUP_STEPS XSA_LAST_N
""".split()


def test_every_variable_of_the_record_is_mapped_converted_or_reported():
    known = set(E.ENV_VARS) | set(E.CONVERTERS) | set(E.UNSUPPORTED)
    assert len(RECORD_VARS) == 117 and not set(RECORD_VARS) - known
    for var in ("MIN_LR", "MUON_ROW_NORMALIZE", "COMPRESSOR"):  # meant otherwise before
        assert var not in E.ENV_VARS and var in E.CONVERTERS
    lines = E.report({v: "1" for v in RECORD_VARS if v in E.UNSUPPORTED})
    assert len(lines) == sum(1 for v in RECORD_VARS if v in E.UNSUPPORTED)
    assert all(line.startswith("env:not supported: ") for line in lines)


# The record's command line (its README), TTT and data aside.
RECORD_ENV = dict(
    VOCAB_SIZE="8192",
    CASEOPS_ENABLED="1",
    ITERATIONS="20000",
    MAX_WALLCLOCK_SECONDS="600",
    EMBED_BITS="7",
    MATRIX_LR="0.026",
    MIN_LR="0.1",
    MLP_CLIP_SIGMAS="11.5",
    ATTN_CLIP_SIGMAS="13.0",
    EMBED_CLIP_SIGMAS="14.0",
    GRAD_CLIP_NORM="0.3",
    WARMUP_STEPS="20",
    MUON_BACKEND_STEPS="5",
    WARMDOWN_FRAC="0.85",
    BETA2="0.99",
    SPARSE_ATTN_GATE_SCALE="0.5",
    GPTQ_RESERVE_SECONDS="0.5",
    GPTQ_CALIBRATION_BATCHES="16",
    VAL_LOSS_EVERY="0",
    GATED_ATTN_QUANT_GATE="1",
    SPARSE_ATTN_GATE_ENABLED="1",
    GATE_WINDOW="12",
    SMEAR_GATE_ENABLED="1",
    LQER_ENABLED="1",
    LQER_ASYM_ENABLED="1",
    LQER_RANK="4",
    LQER_FACTOR_BITS="4",
    LQER_ASYM_GROUP="64",
    LQER_TOP_K="3",
    FUSED_CE_ENABLED="0",
    COMPRESSOR="pergroup",
    SEED="1337",
    QK_GAIN_INIT="5.0",
    PARALLEL_START_LAYER="8",
    MUON_MOMENTUM="0.97",
    MUON_ROW_NORMALIZE="1",
    EMBED_WD="0.085",
)  # the last line: defaults of the record's script that differ from pgolf's pr1493


def test_the_records_variables_on_pr1493_give_pr1855_where_they_speak():
    got = C.load("pr1493", environ=RECORD_ENV)
    want = C.pr1855()
    assert got.quant == want.quant
    assert dc.replace(got.optim, ns_coeffs="polar_express") == want.optim  # hard-coded in #1855
    m = dc.replace(want.model, parallel_residual="gptj", doc_mask=False)
    assert got.model == m  # no variable of the record selects 2x2 lanes or varlen attention
    assert got.data.caseops and got.train.reserve_seconds == 0.5


def test_gate_variables_are_exclusive_and_carry_their_init():
    cfg = C.load("pr1550", environ={"GATED_ATTN_ENABLED": "1"})
    assert cfg.model.attn_gate == "dense" and cfg.model.attn_gate_init_std == 0.01
    env = {"SPARSE_ATTN_GATE_ENABLED": "1", "SPARSE_ATTN_GATE_INIT_STD": "0.02"}
    assert C.load("pr1550", environ=env).model.attn_gate_init_std == 0.02
    with pytest.raises(ValueError, match="mutually exclusive"):
        C.load("pr1550", environ={"GATED_ATTN_ENABLED": "1", "SPARSE_ATTN_GATE_ENABLED": "1"})
    assert C.load("pr1855", environ={"SPARSE_ATTN_GATE_ENABLED": "0"}).model.attn_gate == "none"
    assert C.load("pr1855", environ={"LQER_ENABLED": "0"}).quant.lqer_top == 0
    assert C.load("pr1855", environ={"COMPRESSOR": "lzma"}).quant.codec == "lzma"
    with pytest.raises(ValueError, match="COMPRESSOR"):
        C.load("pr1855", environ={"COMPRESSOR": "paq"})
    assert any("pergroup" in x for x in E.report({"COMPRESSOR": "pergroup"}))
    assert C.load("pr1550", environ={"MUONEQ_R": "1"}).optim.muon_row_axis == "wide"


def test_gate_int8_plan_and_codes():
    g = _perturbed(TINY, 6)
    state = {k: v.detach() for k, v in g.state_dict().items()}
    q = dc.replace(C.pr1855().quant, passthrough_numel=64)
    plan = {e.name: e for e in quant.make_plan(state, q, TINY)}
    gate = plan["blocks.0.attn.gate_w"]
    assert (gate.method, gate.bits, gate.clip_k) == ("rtn", 8, 0.0)
    off = quant.make_plan(state, dc.replace(q, gate_int8=False), TINY)
    assert next(e for e in off if e.name == "blocks.0.attn.gate_w").method == "fp16"
    assert plan["smear.gate"].method == "fp16"  # only attention gates go to int8
    codes, scales = quant.rtn_quantize(state["blocks.0.attn.gate_w"], 8, 0.0)
    assert codes.abs().max() == 127  # the max-abs entry of a row is ±127


def test_asym_grids_are_the_records():
    x = torch.tensor([[3.0, -1.5, 0.2, -3.0]])
    codes, s = lqer.asym_quantize(x, 2)
    assert s.item() == pytest.approx(2.0) and codes.tolist() == [[1, -1, 0, -2]]  # -2..1
    codes, s = lqer.asym_quantize(torch.arange(-8.0, 8.0), 4, 8)
    assert s.tolist() == pytest.approx([8 / 7.5, 7 / 7.5], rel=1e-3)
    assert codes.min() >= -8 and codes.max() <= 7


def test_top_lowrank_terms_pick_the_largest_errors_and_load_back():
    from pgolf.artifact import QTensor

    torch.manual_seed(7)
    state, qts = {}, []
    for i, noise in enumerate((0.1, 0.5, 0.3)):
        W = torch.randn(16, 128)
        codes, scales = quant.rtn_quantize(W, 3, 0.0)
        W = W + noise * torch.randn(16, 1) @ torch.randn(1, 128)  # a rank-1 error of size noise
        state[f"w{i}"] = W
        qts.append(QTensor(f"w{i}", (16, 128), "int", 3, codes, scales, group="mlp"))
    q = dc.replace(C.pr1855().quant, lqer_top=2, lqer_top_rank=1)
    terms = lqer.top_lowrank_tensors(state, qts, q)
    assert [t.name for t in terms] == ["w1.lqer.a", "w1.lqer.b", "w2.lqer.a", "w2.lqer.b"]
    a, b = terms[0], terms[1]
    assert a.bits == 2 and b.bits == 4 and b.shape == (2, 64) and len(set(a.scales.tolist())) == 1
    deq = lqer.add_back(quant.dequantize_state(qts + terms))
    before = quant.dequantize_state(qts)
    for n in ("w1", "w2"):
        assert (state[n] - deq[n]).norm() < (state[n] - before[n]).norm()
    assert torch.equal(deq["w0"], before["w0"])


def test_the_other_record_converters():
    env = {
        "DATA_DIR": "/d",
        "ROPE_YARN": "1",
        "FUSED_CE_ENABLED": "1",
        "ARTIFACT_DIR": "/a",
        "VAL_BATCH_TOKENS": "524288",
        "GPTQ_CALIBRATION_BATCHES": "2",
        "MUON_ROW_NORMALIZE": "0",
        "PARALLEL_FINAL_LANE": "mlp",
    }
    cfg = C.load("pr1855", environ=env)
    assert cfg.data.data_path.endswith("fineweb10B_sp8192_lossless_caps_caseops_v1_reserved")
    assert cfg.data.tokenizer_path.startswith("/d/datasets/fineweb10B_sp8192_caseops/")
    plain = C.load("pr1550", environ={"DATA_DIR": "/d", "DATA_PATH": "/x"})
    assert (
        plain.data.data_path == "/x"
        and plain.data.tokenizer_path == "/d/tokenizers/fineweb_8192_bpe.model"
    )
    assert cfg.model.rope_ntk_len == 2048 and cfg.model.fused_ce > 0
    assert cfg.train.run_dir == "/a" and cfg.eval.val_batch_seqs == 32
    assert cfg.quant.calib_seqs == 2 * 48  # 786,432 tokens / (8 GPUs x 2,048) per batch
    assert not cfg.optim.muon_row_norm and cfg.model.parallel_final == "mlp"
    lines = E.report({"ROPE_YARN": "1", "ROPE_TRAIN_SEQ_LEN": "1024", "TTT_EVAL_BATCHES": "0"})
    assert not any("supported: ROPE_TRAIN_SEQ_LEN" in x for x in lines)  # ROPE_YARN reads it
    assert any(x.startswith("env:not supported: TTT_EVAL_BATCHES=0") for x in lines)
    assert (
        C.load(
            "pr1550", environ={"ROPE_YARN": "1", "ROPE_TRAIN_SEQ_LEN": "1024"}
        ).model.rope_ntk_len
        == 1024
    )
    with pytest.raises(ValueError, match="two forms of low-rank"):
        C.load("pr1855", ["quant.lqer=mlp:4"], environ={})


def test_config_show_names_whole_keys_only():
    from pgolf.lab.configdoc import env_of

    envs = env_of()
    assert "LQER_ASYM_ENABLED (converted)" in envs["quant.lqer_top_form"]
    assert "LQER_ASYM_ENABLED (converted)" not in envs["quant.lqer_top"]  # a prefix, not the key
    assert "MUON_ROW_NORMALIZE (converted)" in envs["optim.muon_row_axis"]
