"""pgolf: Parameter Golf as a small audited package (see README.md)."""

__version__ = "0.1.0"

CORE_MODULES = (
    "modes",
    "config_env",
    "quantplan",
    "config",
    "dist",
    "data",
    "bpb",
    "kernels",
    "sampling",
    "model",
    "optim",
    "rans",
    "crans",
    "artifact_check",
    "artifact",
    "quant",
    "lqer",
    "ngram_tilt",
    "evaluate",
    "ttt_lora",
    "ttt_phased",
    "ttt",
    "score",
    "checkpoint",
    "runlog",
    "train",
    "pipeline",
)
"""The core: what a submission runs, in import (and bundle) order. Each module may import only
earlier ones; none imports `pgolf.lab`. The package test, the bundler (`pgolf.lab.bundle`) and the
code-byte count all read this tuple."""
