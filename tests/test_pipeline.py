"""Pipeline stages: the artifact and the saved weights keep the layer graph (recurrence on/off)
the weights were trained and measured with, so a round trip never changes the graph."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from pgolf import config as C
from pgolf import pipeline as P
from pgolf import quant
from pgolf.checkpoint import save_weights
from pgolf.model import GPT, graph_state


def tiny_cfg() -> C.RunConfig:
    cfg = C.preset("cpu-tiny")
    m = replace(
        cfg.model,
        vocab_size=128,
        num_layers=3,
        model_dim=64,
        xsa_layers=(0, 1, 2),
        ve_dim=8,
        ve_layers=(2,),
        parallel_start=2,
        recur_layers=(0, 1, 1, 2),
    )
    return replace(
        cfg,
        model=m,
        quant=replace(cfg.quant, method="rtn", embed_method="rtn", passthrough_numel=256),
    )


@pytest.mark.parametrize("recurrence", [False, True])
def test_artifact_and_weights_keep_the_recurrence_state(tmp_path, recurrence):
    cfg = tiny_cfg()
    torch.manual_seed(0)
    model = GPT(cfg.model)
    model.set_recurrence(recurrence)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    plan = quant.make_plan(state, cfg.quant, cfg.model)
    art = tmp_path / "a.pgolf"
    tensors = quant.quantize_state(state, {}, plan)
    P.write_artifact(cfg, tensors, art, graph_state(model), code_size=lambda c: (123, "test"))
    _, back, meta = P.load_artifact_model(art, torch.device("cpu"))
    assert meta["recurrence_active"] == recurrence
    assert back.recurrence_active == recurrence
    x = torch.randint(0, 128, (2, 16))
    with torch.no_grad():  # same graph: the round trip only adds quantization noise
        assert (back(x) - model(x)).abs().max() < 0.05

    w = tmp_path / "final_model.safetensors"
    save_weights(w, model.state_dict(), graph_state(model))
    again = P.load_run_model(cfg, w, torch.device("cpu"))
    assert again.recurrence_active == recurrence
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x))


def test_the_runs_own_read_back_equals_the_checked_read(tmp_path):
    """`run` reads its own artifact back with `checked=False` (no hostile-input bounds, the
    config from the meta as written): the same config (the run's own), meta and weights, bit
    for bit, as the checked read `pgolf eval` does."""
    cfg = tiny_cfg()
    torch.manual_seed(0)
    model = GPT(cfg.model)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    tensors = quant.quantize_state(state, {}, quant.make_plan(state, cfg.quant, cfg.model))
    art = tmp_path / "a.pgolf"
    P.write_artifact(cfg, tensors, art, graph_state(model), code_size=lambda c: (123, "test"))
    cpu = torch.device("cpu")
    c1, m1, meta1 = P.load_artifact_model(art, cpu)
    c2, m2, meta2 = P.load_artifact_model(art, cpu, checked=False)
    assert c1 == c2 == cfg and meta1 == meta2
    s1, s2 = m1.state_dict(), m2.state_dict()
    assert s1.keys() == s2.keys()
    for k in s1:
        assert s1[k].dtype == s2[k].dtype and torch.equal(s1[k], s2[k]), k


def test_a_file_without_its_graph_state_is_refused_not_guessed(tmp_path):
    cfg = tiny_cfg()
    model = GPT(cfg.model)
    w = tmp_path / "old.safetensors"
    save_weights(w, model.state_dict(), {"step": 3})  # no recurrence_active key
    with pytest.raises(ValueError, match="does not record its layer graph"):
        P.load_run_model(cfg, w, torch.device("cpu"))


def test_the_headline_score_is_chosen_in_one_place_by_one_rule(tmp_path):
    from pgolf.runlog import RunDir, headline

    assert headline({"val_bpb_prequant": 2.0, "val_bpb_roundtrip": 1.9})["val_bpb_source"] == (
        "roundtrip"
    )
    full = {"val_bpb_live": 1.0, "val_bpb_sliding": 1.8, "val_loss_sliding": 3.0}
    assert headline(full) == {"val_bpb": 1.8, "val_loss": 3.0, "val_bpb_source": "sliding"}
    run = RunDir(tmp_path / "r")
    run.write_result({"val_bpb_prequant": 2.0, "val_loss_prequant": 4.0})
    out = run.write_result({"val_bpb_ttt": 1.5, "val_loss_ttt": 3.5})
    assert (out["val_bpb"], out["val_bpb_source"]) == (1.5, "ttt")
    assert run.read_result()["val_bpb"] == 1.5
    run.close()
