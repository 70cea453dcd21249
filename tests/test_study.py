"""The NON-RECORD TTT memorization study (`pgolf study ttt-memorization`): its split, its
statistics against known truths, and the whole study on a tiny run (files, keys, a planted
memorizer that it must detect)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from pgolf import config as C
from pgolf.lab.study import data as D
from pgolf.lab.study import stats as S

VOCAB = 320

# ----------------------------------------------------------------------------------------------
# Split


def _corpus(lengths: list[int], seed: int = 0, vocab: int = 50) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    parts = []
    for n in lengths:
        d = torch.randint(2, vocab, (n,), generator=g)
        d[0] = 1
        parts.append(d)
    return torch.cat(parts + [torch.tensor([1])])


def test_the_hash_split_is_deterministic_stratified_and_disjoint():
    rng = np.random.default_rng(0)
    lengths = rng.integers(10, 400, 101).tolist()
    toks = _corpus(lengths)
    spans, unit = D.units(toks, 1, 64)
    assert unit == "documents" and len(spans) == 101
    A, B = D.split_halves(spans)
    assert (A, B) == D.split_halves(list(spans))  # deterministic
    assert not set(A) & set(B) and len(A) + len(B) == 101 and abs(len(A) - len(B)) <= 1
    la = sorted(spans[i][1] - spans[i][0] for i in A)
    lb = sorted(spans[i][1] - spans[i][0] for i in B)
    for q in (0.1, 0.25, 0.5, 0.75, 0.9):  # each length stratum is split one-one
        cut = np.quantile(la + lb, q)
        assert abs(sum(x <= cut for x in la) - sum(x <= cut for x in lb)) <= 1
    # not just alternating by sorted position: the hash decides inside each pair
    order = sorted(range(101), key=lambda i: (spans[i][1] - spans[i][0], i))
    firsts = [order[k] in A for k in range(0, 100, 2)]
    assert 10 < sum(firsts) < 40


def test_too_few_documents_fall_back_to_segments_and_say_so():
    spans, unit = D.units(_corpus([3000, 2000]), 1, 256)
    assert "FALLBACK" in unit and "256-token segments" in unit
    assert all(b - a <= 257 for a, b in spans) and len(spans) >= 19


def test_near_duplicates_across_halves_are_tagged():
    lengths = [120] * 20
    toks = _corpus(lengths, vocab=500)
    spans, _ = D.units(toks, 1, 64)
    A, B = D.split_halves(spans)
    a, b = spans[A[3]], spans[B[5]]
    toks[b[0] + 1 : b[0] + 100] = toks[a[0] + 1 : a[0] + 100]  # B[5] copies most of A[3]
    dups = D.near_duplicates(toks, spans, A, B)
    assert set(dups) == {B[5]} and dups[B[5]][0] == A[3] and dups[B[5]][1] > 0.6


def test_decoy_shuffle_keeps_each_unit_s_tokens():
    toks = _corpus([30, 50, 40])
    spans, _ = D.units(toks, 1, 64, min_docs=2)
    s = D.build_stream(toks, spans, [0, 2], D.canaries([20], 1, 50, 1, 0))
    sh = D.shuffle_within(s, 0)
    assert not torch.equal(sh, s.tokens)
    for a, b in s.ranges:
        assert sh[a] == 1 and sorted(sh[a : b + 1].tolist()) == sorted(s.tokens[a : b + 1].tolist())


def test_canaries_pool_across_seeds_same_lengths_other_tokens():
    a, b = D.canaries([10, 20, 30, 40], 4, 50, 1, 0), D.canaries([10, 20, 30, 40], 4, 50, 1, 1)
    assert [x.numel() for x in a] == [x.numel() for x in b]
    assert all(x[0] == 1 and (x[1:] >= 2).all() for x in a + b)
    assert any(not torch.equal(x, y) for x, y in zip(a, b, strict=True))


# ----------------------------------------------------------------------------------------------
# Statistics


def test_paired_bootstrap_interval_covers_the_true_gain():
    """Ratio gain (sum n0 - sum ne) / sum bytes / ln 2 with a known population value 0.02:
    the 95 % interval covers it in roughly 95 % of independent samples."""
    rng = np.random.default_rng(1)
    hits, trials = 0, 120
    for _ in range(trials):
        by = rng.uniform(50, 150, 60)
        n0 = 2 * by + rng.normal(0, 5, 60)
        ne = n0 - by * 0.02 * S.LN2 - rng.normal(0, 1.0, 60)
        g = S.gains(n0[None], ne[None, None], by, S.counts(60, 400, rng), S.rep_draws(1, 400, rng))
        est, lo, hi = S.interval(g)[0]
        hits += lo <= 0.02 <= hi
    assert 0.85 <= hits / trials <= 1.0


def test_replicates_are_an_outer_random_effect():
    rng = np.random.default_rng(0)
    by = np.full(40, 100.0)
    n0 = np.full((3, 40), 200.0)
    ne = n0[:, None] - np.array([0.0, 1.0, 2.0])[:, None, None] * np.ones((3, 1, 40))
    g = S.gains(n0, ne, by, S.counts(40, 300, rng), S.rep_draws(3, 300, rng))
    est, lo, hi = S.interval(g)[0]
    assert est == pytest.approx(1.0 / 100 / S.LN2) and hi - lo > 0.005  # seed spread shows


def test_curve_fits_recover_known_parameters():
    e = np.array([0, 0.5, 1, 2, 3, 4, 6, 8, 12])
    y = 0.03 * (1 - np.exp(-e / 1.7))
    g, tau = S.fit_saturating(e, y)[0]
    assert g == pytest.approx(0.03, rel=0.01) and tau == pytest.approx(1.7, rel=0.02)
    noisy = y + np.random.default_rng(0).normal(0, 1e-4, (50, e.size))
    fits = S.fit_saturating(e, noisy)
    assert np.median(fits[:, 1]) == pytest.approx(1.7, rel=0.1)
    assert S.fit_slope(e, 0.004 * e)[0] == pytest.approx(0.004)


# ----------------------------------------------------------------------------------------------
# The study on a tiny run


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Path:
    """A 320-piece sentencepiece model (the byte tables need one), trained in a second."""
    import random

    import sentencepiece as spm

    from pgolf.lab.data.tokenizer import SP_TRAINER_ARGS

    rng = random.Random(0)
    words = "the of and to a in that is was he for it with as his on be at by had not".split()
    texts = [" ".join(rng.choice(words) for _ in range(60)) + "." for _ in range(300)]
    path = tmp_path_factory.mktemp("tok") / "t.model"
    with path.open("wb") as f:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts),
            model_writer=f,
            vocab_size=VOCAB,
            num_threads=1,
            minloglevel=2,
            **SP_TRAINER_ARGS,
        )
    return path


def _tiny_run(tmp: Path, tok: Path, lr: float, docs_seed: int = 0, vocab: int = VOCAB) -> Path:
    from helpers import perturbed_gpt

    from pgolf.checkpoint import save_weights
    from pgolf.data import write_shard
    from pgolf.model import graph_state

    data = tmp / "data"
    data.mkdir()
    rng = np.random.default_rng(docs_seed)
    lengths = rng.integers(40, 160, 40).tolist()
    write_shard(data / "t_val_000000.bin", _corpus(lengths, docs_seed, 300).numpy())
    write_shard(data / "t_train_000000.bin", _corpus([100] * 80, docs_seed + 1, 300).numpy())
    cfg = C.preset("cpu-tiny")
    m = replace(
        cfg.model,
        vocab_size=vocab,
        num_layers=2,
        model_dim=32,
        num_heads=2,
        num_kv_heads=1,
        xsa_layers=(0, 1),
        ve_dim=8,
        ve_layers=(1,),
        parallel_start=1,
        recur_layers=(0, 1),
        rope_dims=8,
    )
    cfg = replace(
        cfg,
        model=m,
        data=replace(cfg.data, data_path=str(data), tokenizer_path=str(tok)),
        eval=replace(cfg.eval, eval_seq_len=64, eval_stride=32, val_batch_seqs=8),
        quant=replace(cfg.quant, calib="train", calib_seqs=4, passthrough_numel=256),
        train=replace(cfg.train, train_seq_len=64, iterations=1, train_batch_tokens=64),
        ttt=replace(
            cfg.ttt,
            prequant_lr=lr,
            prequant_min_lr=lr / 10,
            prequant_freeze_blocks=0,
            prequant_batch_seqs=4,
            prequant_seq_len=64,
        ),
    )
    run = tmp / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(C.to_dict(cfg)))
    model = perturbed_gpt(m, recur=True, seed=docs_seed, scale=0.02)
    save_weights(run / "final_model.safetensors", model.state_dict(), graph_state(model))
    return run


def test_study_on_a_tiny_run_writes_table_json_and_plots(tmp_path, tokenizer):
    from pgolf.lab.study import StudyConfig, run_study
    from pgolf.lab.study.report import table

    run = _tiny_run(tmp_path, tokenizer, 3e-3)
    sc = StudyConfig(epochs=(0.0, 0.5, 1.0), tokens=3000, canaries=2, reps=100)
    res = run_study(run, sc, tmp_path / "out")
    out = tmp_path / "out"
    for f in ("study.json", "study.txt", "study_delta.png", "study_canary.png"):
        assert (out / f).stat().st_size > 500, f
    js = json.loads((out / "study.json").read_text())
    assert js["non_record"] is True and "NON-RECORD" in (out / "study.txt").read_text()
    for k in (
        "protocol",
        "config",
        "unit",
        "units_A",
        "units_B",
        "near_duplicates_B",
        "epochs",
        "arms",
        "memorization_crossfit",
        "generalization_crossfit",
        "curves",
        "canaries",
        "by_length",
        "train_control_unseen",
        "raw",
        "capacity",
        "A_gain_minus_train_control_A_gain",
    ):
        assert k in js, k
    assert set(js["arms"]) == {"A", "B", "train", "decoy", "score_first"}
    assert js["unit"] == "documents" and js["units_A"] >= 8
    assert js["config"]["quantizer"].startswith("the run's plan: matrices gptq")
    done = js["arms"]["A"]["epochs_done"]  # 0.5: stops at the first step past half an epoch
    assert done[0] == 0.0 and 0.5 <= done[1] < 0.75 and done[2] == 1.0
    for arm in ("A", "B", "train", "decoy"):
        assert len(js["arms"][arm]["delta_B"]) == 3 and js["arms"][arm]["delta_A"][0][0] == 0.0
    assert set(js["curves"]) >= {"generalization_g", "generalization_tau", "memorization_slope"}
    assert {"short", "long"} <= {k.split(" ")[0] for k in js["by_length"]}
    assert len(js["canaries"]["A"]["nll_A"]) == 3
    base, sf = js["raw"][0]["score_first"]["0.0"]["A"], js["raw"][0]["score_first"]["1.0"]["A"]
    assert sf[0] == base[0] and sf[-1] != base[-1]  # first chunk scored before any update
    lines = table(res)
    assert any(line.lstrip().startswith("0.5 ") for line in lines)


def test_a_planted_memorizer_shows_a_gap_with_an_interval_above_zero(tmp_path, tokenizer):
    """Random-token documents can only be learned by memorizing them: many epochs at a high lr
    on A must open dA - dB > 0 with the whole interval above zero, and the canaries too."""
    from pgolf.lab.study import StudyConfig, run_study

    run = _tiny_run(tmp_path, tokenizer, 2e-2)
    sc = StudyConfig(
        epochs=(0.0, 4.0, 12.0),
        tokens=6000,
        canaries=3,
        reps=200,
        schedule="snapshot",
        quant="none",
        crossfit=False,
        controls=False,
    )
    res = run_study(run, sc, tmp_path / "out")
    est, lo, hi = res["memorization_crossfit"][-1]
    assert lo > 0 and est > 0.05, res["memorization_crossfit"]
    assert res["curves"]["memorization_slope"][1] > 0
    can = res["canaries"]["A"]
    assert can["nll_A"][-1] < can["nll_B"][-1] - 0.1 and can["gap"][-1][1] > 0


def test_the_cli_refuses_bad_input_with_exit_2_and_the_fix(tmp_path, capsys):
    from pgolf import cli

    with pytest.raises(SystemExit) as e:
        cli.main(["study", "ttt-memorization", str(tmp_path), "--quick"])
    assert e.value.code == 2 and "final_model.safetensors" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli.main(["study", "ttt-memorization", str(tmp_path), "--epochs", "0,x"])
    assert e.value.code == 2 and "--epochs" in capsys.readouterr().err
