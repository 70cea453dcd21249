"""Pipeline stages: the artifact and the saved weights keep the layer graph (recurrence on/off)
the weights were trained and measured with, so a round trip never changes the graph."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from pgolf import config as C
from pgolf import pipeline as P
from pgolf import quant
from pgolf.model import GPT
from pgolf.runlog import save_weights


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
    P.write_artifact(cfg, quant.quantize_state(state, {}, plan), art, model.recurrence_active)
    _, back, meta = P.load_artifact_model(art, torch.device("cpu"))
    assert meta["recurrence_active"] == recurrence
    assert back.recurrence_active == recurrence
    x = torch.randint(0, 128, (2, 16))
    with torch.no_grad():  # same graph: the round trip only adds quantization noise
        assert (back(x) - model(x)).abs().max() < 0.05

    w = tmp_path / "final_model.safetensors"
    save_weights(w, model.state_dict(), {"recurrence_active": model.recurrence_active})
    again = P.load_run_model(cfg, w, torch.device("cpu"))
    assert again.recurrence_active == recurrence
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x))
