"""Presets build and validate; precedence preset < environment < --set; JSON round trip."""

from __future__ import annotations

import dataclasses

import pytest

from pgolf import config as C


@pytest.mark.parametrize("name", list(C.PRESETS))
def test_every_preset_builds_and_validates(name):
    cfg = C.load(name, environ={})
    assert cfg.preset == name
    C.validate(cfg)
    assert C.from_dict(C.to_dict(cfg)) == cfg


def test_precedence_preset_env_overrides():
    env = {"SEED": "42", "VOCAB_SIZE": "1024", "MAX_WALLCLOCK_SECONDS": "90"}
    cfg = C.load("pr1550", ["seed=7"], environ=env)
    assert cfg.train.seed == 7  # --set beats the environment
    assert cfg.model.vocab_size == 1024  # the environment beats the preset
    assert cfg.train.max_wallclock_seconds == 90.0
    assert C.load("pr1550", environ={}).train.seed == 1337


def test_set_parses_types_and_sections():
    cfg = C.load(
        "pr1550",
        ["model.recur_layers=0,1,1,2", "compile=false", "optim.matrix_lr=0.01"],
        environ={},
    )
    assert cfg.model.recur_layers == (0, 1, 1, 2)
    assert cfg.train.compile is False
    assert cfg.optim.matrix_lr == 0.01


@pytest.mark.parametrize("bad", ["nosuchkey=1", "model.nosuch=1", "seed", "num_heads=7"])
def test_bad_overrides_are_refused(bad):
    with pytest.raises(ValueError):
        C.load("pr1550", [bad], environ={})


def test_configs_are_frozen():
    cfg = C.preset("cpu-tiny")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.seed = 3  # type: ignore[misc]


def test_preset_differences_follow_the_records():
    b, p93, p50 = C.preset("baseline"), C.preset("pr1493"), C.preset("pr1550")
    assert (b.model.num_layers, b.model.vocab_size, b.model.mlp_mult) == (9, 1024, 2.0)
    assert len(p50.model.recur_layers) == 14 and len(p93.model.recur_layers) == 17
    assert p50.train.recur_start_step == 3000 and p93.train.recur_start_frac == 0.35
    assert C.grad_accum_steps(p50.train, 1) == 8 and C.grad_accum_steps(p50.train, 8) == 1


def test_final_live_validation_is_off_in_every_preset_and_reachable_by_env_and_set() -> None:
    assert not any(C.preset(name).train.final_val for name in C.PRESETS)
    assert C.load("cpu-tiny", environ={"FINAL_VAL": "1"}).train.final_val
    assert C.load("pr1550", ["train.final_val=true"], environ={}).train.final_val


def test_the_environment_sets_known_fields_without_resolving_a_key():
    """`apply_env` sets the fields its table names (`set_value`); resolving a user's key (and
    the difflib suggestions) is `--set`'s, so a bundle, which takes no `--set`, leaves it out
    (`test_bundle_forms_compile_and_name_their_generator` checks the bundle)."""
    from dataclasses import fields

    from pgolf import config_env as E

    for var, (section, name) in E.ENV_VARS.items():
        assert name in {f.name for f in fields(C.SECTION_CLASSES[section])}, var
    assert C.apply_env(C.load("cpu-tiny", []), {"MATRIX_LR": "0.5"}).optim.matrix_lr == 0.5
    with pytest.raises(ValueError, match="did you mean matrix_lr"):
        C.set_field(C.load("cpu-tiny", []), "matrix_lrr", "0.5")
