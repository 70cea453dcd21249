"""Issue 10: environment variables never silently ignored, config show, budget exit status, log
line shapes of the challenge, corpus splitting, help/version without torch."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from pgolf import config as C
from pgolf import config_env as E
from pgolf.lab.configdoc import describe
from pgolf.lab.data import datasets as D
from pgolf.lab.report import flags
from pgolf.runlog import size_lines

MEASURED = [
    "RUN_ID",
    "VAL_BATCH_SIZE",
    "WARMDOWN_ITERS",
    "TIE_EMBEDDINGS",
    "EMBED_LR",
    "HEAD_LR",
    "BETA1",
    "BETA2",
    "ADAM_EPS",
    "MUON_WEIGHT_DECAY",
    "ADAM_WEIGHT_DECAY",
    "XSA_LAST_N",
    "NUM_LOOPS",
    "TTT_ENABLED",
]
VALUES = {
    "RUN_ID": "abc",
    "VAL_BATCH_SIZE": "262144",
    "WARMDOWN_ITERS": "5000",
    "TIE_EMBEDDINGS": "0",
    "EMBED_LR": "0.6",
    "HEAD_LR": "0.008",
    "BETA1": "0.8",
    "BETA2": "0.9",
    "ADAM_EPS": "1e-6",
    "MUON_WEIGHT_DECAY": "0.05",
    "ADAM_WEIGHT_DECAY": "0.01",
    "XSA_LAST_N": "4",
    "NUM_LOOPS": "2",
    "TTT_ENABLED": "0",
}


@pytest.mark.parametrize("var", MEASURED)
def test_every_measured_variable_changes_the_config_or_is_reported(var):
    base = C.load("pr1550", environ={})
    got = C.load("pr1550", environ={var: VALUES[var]})
    reported = [line for line in E.report({var: VALUES[var]}) if "not supported" in line]
    assert (got != base) != bool(reported), var


def test_converters_follow_the_records_semantics():
    cfg = C.load(
        "pr1550",
        environ={
            "XSA_LAST_N": "4",
            "NUM_LOOPS": "2",
            "WARMDOWN_ITERS": "5000",
            "VAL_BATCH_SIZE": "524288",
            "RUN_ID": "r1",
        },
    )
    assert cfg.model.xsa_layers == (7, 8, 9, 10)
    assert cfg.model.recur_layers == (0, 1, 2, 3, 4, 5, 3, 4, 5, 3, 4, 5, 6, 7, 8, 9, 10)
    assert cfg.optim.warmdown_frac == 5000 / 20000
    assert cfg.eval.val_batch_seqs == 32 and cfg.train.run_dir == "out/r1"
    with pytest.raises(ValueError, match="NUM_LOOPS"):
        C.load("pr1550", environ={"NUM_LOOPS": "2", "LOOP_END": "20"})


def test_every_record_variable_is_mapped_converted_unsupported_or_torchrun():
    src = (
        open("/work/ref/train_gpt_1550.py").read()
        if __import__("os").path.exists("/work/ref/train_gpt_1550.py")
        else ""
    )
    names = set(re.findall(r'os\.environ\.get\("([A-Z0-9_]+)"', src))
    known = set(E.ENV_VARS) | set(E.CONVERTERS) | set(E.UNSUPPORTED)
    torchrun = {"RANK", "WORLD_SIZE", "LOCAL_RANK"}
    assert not names - known - torchrun, sorted(names - known - torchrun)


def test_unknown_set_key_suggests_the_nearest_and_config_show_lists_every_key():
    with pytest.raises(ValueError, match="did you mean matrix_lr"):
        C.load("pr1550", ["matrx_lr=0.1"], environ={})
    lines = describe(C.load("pr1550", environ={}))
    n_fields = sum(len(c.__dataclass_fields__) for c in C.SECTION_CLASSES.values())
    assert sum(1 for x in lines if " = " in x) == n_fields + 1
    seed = next(x for x in lines if "train.seed =" in x)
    assert "[SEED]" in seed and "1337" in seed
    assert any("xsa_layers" in x and "XSA_LAST_N" in x and "Exclusive" in x for x in lines)


def test_size_lines_have_the_challenge_labels_and_the_margin_on_its_own_line():
    cfg = C.load("pr1550", environ={})
    lines = size_lines(cfg, 15_000_000, 50_000, "test")
    assert "Serialized model int6+BROT: 15000000 bytes" in lines
    assert "Total submission size int6+BROT: 15050000 bytes" in lines
    assert "Code size: 50000 bytes" in lines
    over = size_lines(cfg, 16_000_000, 10, "test")
    assert any(x.startswith("budget:") and "margin:-10" in x and "OVER" in x for x in over)


def test_summary_flags():
    assert flags({"val_bpb": 3.0, "unigram_bpb": 2.5})
    assert flags({"steps": 10, "iterations": 440, "stopped_early": True})
    assert flags({"val_bpb_live": 1.5, "val_bpb_prequant": 1.7})
    assert not flags({"val_bpb": 2.0, "unigram_bpb": 2.5, "steps": 440, "iterations": 440})


def test_corpus_splits_paragraphs_and_refuses_an_empty_validation_split(tmp_path):
    txt = tmp_path / "book.txt"
    txt.write_text("\n\n".join(f"paragraph {i} " + "word " * 20 for i in range(40)))
    assert len(D.read_documents([txt], "paragraph")) == 40
    assert len(D.read_documents([txt], "file")) == 1
    assert len(D.read_documents([txt], "line")) == 40
    with pytest.raises(ValueError, match="validation split of 40 documents would be empty"):
        D.build_corpus([txt], tmp_path / "one", vocab_size=64, split="paragraph", val_permille=1)


def test_help_and_version_do_not_import_torch():
    code = (
        "import sys\nfrom pgolf.cli_parser import build_parser\n"
        "try:\n    build_parser().parse_args(['--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "Parameter Golf" in r.stdout and "pgolf config show" in r.stdout
    v = subprocess.run([sys.executable, "-m", "pgolf", "--version"], capture_output=True, text=True)
    assert v.stdout.startswith("pgolf ")


def test_resume_refuses_another_config_or_seed_but_not_another_budget(tmp_path):
    import torch

    from pgolf import config as C
    from pgolf.checkpoint import save_checkpoint
    from pgolf.cli import _check_resume

    cfg = C.load("cpu-tiny", ["seed=7"])
    ck = save_checkpoint(
        tmp_path / "ck.safetensors",
        {"w": torch.zeros(1)},
        None,
        {},
        {"config": C.to_dict(cfg), "step": 1},
    )
    _check_resume(ck, C.load("cpu-tiny", ["seed=7", "iterations=900", "run_dir=elsewhere"]))
    with pytest.raises(ValueError, match="seed 7"):
        _check_resume(ck, C.load("cpu-tiny", ["seed=8"]))
    with pytest.raises(ValueError, match=r"optim\.matrix_lr"):
        _check_resume(ck, C.load("cpu-tiny", ["seed=7", "matrix_lr=0.5"]))


def test_loss_plot_has_a_legend_units_and_a_wall_clock_axis(tmp_path, monkeypatch):
    import json

    import matplotlib.pyplot as plt

    from pgolf.lab.report import plot_losses

    rows = [{"step": s, "train_loss": 6.0 - s / 10, "elapsed_s": 0.5 * s} for s in range(1, 21)]
    rows.append({"step": 20, "val_loss": 3.1, "val_bpb": 2.1, "elapsed_s": 10.0})
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    figs = []
    monkeypatch.setattr(plt, "close", figs.append)  # keep the figure to read it back
    out = plot_losses(tmp_path)
    assert out == tmp_path / "loss.png" and out.stat().st_size > 1000
    (fig,) = figs
    labels = [a.get_xlabel() + "|" + a.get_ylabel() for a in fig.axes]
    legend = [t.get_text() for a in fig.axes if a.get_legend() for t in a.get_legend().texts]
    assert legend == ["train loss (nats/token)", "val (bits/byte)"]
    assert any("nats/token" in lb for lb in labels) and any("bits per byte" in lb for lb in labels)
    wall = [c for a in fig.axes for c in a.child_axes if "wall clock (s" in c.get_xlabel()]
    assert len(wall) == 1  # seconds on top: 20 steps in 10 s, so the limits are halved
    assert wall[0].get_xlim() == pytest.approx([0.5 * x for x in fig.axes[0].get_xlim()])
    plt.close(fig)


def test_params_does_not_pay_for_torch_dynamo():
    """`pgolf params` builds on the meta device without running initialisers: torch's meta refs
    (normal_, stack) import torch._dynamo on first use, seconds of a command meant to be quick."""
    code = (
        "import sys, io, contextlib\nimport torch\n"
        "if 'torch._dynamo' in sys.modules:\n    sys.exit(77)\n"
        "from pgolf import cli\nwith contextlib.redirect_stdout(io.StringIO()) as f:\n"
        "    cli.main(['params', '--preset', 'pr1550'])\n"
        "assert f.getvalue().split()[-1] == '36311132', f.getvalue()\n"
        "assert 'torch._dynamo' not in sys.modules, 'torch._dynamo imported'\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if r.returncode == 77:
        pytest.skip("this torch imports torch._dynamo at `import torch`")
    assert r.returncode == 0, r.stderr[-2000:]
