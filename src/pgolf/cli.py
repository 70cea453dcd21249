"""`pgolf`: one CLI whose subcommands are typed functions (tests call the same functions).

    pgolf run [--preset cpu-tiny] [--data DIR] [--set key=value ...]      the main job
    pgolf train --preset NAME [--data DIR] [--set key=value ...] [--resume CKPT]
    pgolf params --preset NAME                                           parameter count (meta)
    pgolf data default|corpus|fineweb|inspect ...                        datasets, fineweb
    pgolf quantize RUN_DIR [--set quant.key=value ...]                   → artifact
    pgolf eval ARTIFACT|RUN_DIR [--stride 64] [--data DIR]               round trip + sliding
    pgolf eval RUN_DIR --weights final|checkpoint                        the unquantized weights
    pgolf audit ARTIFACT [--ttt MODE] [--quick] | --static SCRIPT | --train CFG   compliance
    pgolf study ttt-memorization RUN_DIR... [--epochs 0,0.5,1,2] [--quick]  NON-RECORD study
    pgolf budget ARTIFACT [--bits GROUP=N] [--clip-k GROUP=K] [--ve-dim N] [--prune-to BYTES]
    pgolf budget RUN_DIR --fit BYTES [--out plan.json]      plan bits / k / low-rank to fill BYTES
    pgolf stats RUN_OR_RECORD... [--against DIR | --against-bpb X --against-loss Y] [--json]
    pgolf export RUN_DIR... --out DIR [--name N] [--author A --github-id G] [--track T]
    pgolf verify RECORD_DIR [--artifact A --data DIR] [--against DIR] [--json] exit 1 rules, 2 form

Each subcommand is one function below, bound to its parser by `COMMANDS` (`set_defaults(func=)`)
and called with the parsed options as keyword arguments named as the parser stores them (the
parser in `cli_parser` spells each option once; `--json` is `as_json`, `--no-X` is `X=False`).

Configuration precedence: preset < the challenge's environment variables < --set. Bad input
(corrupt shard, wrong tokenizer, foreign artifact) exits with status 2 and a message naming the
file and the fix; set PGOLF_DEBUG=1 for the traceback.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sys
from pathlib import Path

from pgolf import cli_parser
from pgolf import config as C

__all__ = ["COMMANDS", "build_parser", "main"]


class OverBudget(Exception):
    """The artifact was written but exceeds quant.byte_budget (exit status 3)."""


def _check_budget(res: dict, allow: bool) -> dict:
    margin = res.get("budget_margin")
    if margin is not None and margin < 0 and not allow:
        raise OverBudget(
            f"{res.get('artifact_path')} is {-margin} bytes over the byte budget (margin "
            f"{margin}); it was written. Shrink it (`pgolf budget` what-ifs) or pass "
            "--allow-over-budget where the cap does not apply"
        )
    return res


def cmd_config_show(*, preset: str, overrides: list[str], as_json: bool = False) -> list[str]:
    from pgolf import config_env
    from pgolf.lab.configdoc import describe

    cfg = C.load(preset, overrides)
    lines = [C.to_json(cfg)] if as_json else describe(cfg)
    print("\n".join(lines + config_env.report(os.environ)))
    return lines


def cmd_params(*, preset: str, overrides: list[str] = ()) -> int:
    import torch

    from pgolf.model import count_params

    class SkipInit(torch.overrides.TorchFunctionMode):
        """`torch.nn.init` skipped on the meta device: it changes no shape, and torch's meta
        `normal_` is a Python ref whose first call imports torch._dynamo (seconds)."""

        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if getattr(func, "__module__", None) == "torch.nn.init":
                return args[0] if args else kwargs["tensor"]
            return func(*args, **kwargs)

    cfg = C.load(preset, overrides)
    with SkipInit():
        n = count_params(cfg.model)
    m = cfg.model
    print(f"preset:{cfg.preset} layers:{m.num_layers} dim:{m.model_dim} vocab:{m.vocab_size}")
    print(n)
    return n


def cmd_train(
    *,
    preset: str,
    overrides: list[str] = (),
    data: str | None = None,
    run_dir: str | None = None,
    resume: str | None = None,
    resume_any_seed: bool = False,
) -> dict:
    from pgolf import pipeline
    from pgolf.dist import info, init
    from pgolf.runlog import new_run

    cfg = _default_data(C.load(preset, _with_data(overrides, data)))
    init(cfg.train.device)
    cfg, _, tok = pipeline.resolve_data(cfg)
    pipeline.check_vocab(cfg, tok)
    if resume and not resume_any_seed:
        _check_resume(Path(resume), cfg)
    if resume and not run_dir:  # resuming continues the checkpoint's own run folder
        run_dir = str(Path(resume).resolve().parent)
    run = new_run(cfg, run_dir)  # a generated name is never shared
    try:
        res = pipeline.train_stage(cfg, run, resume=resume)
    finally:
        run.close()
    out = {"run_dir": str(run.path), "steps": res.steps, "train_seconds": res.train_seconds}
    if info().is_main:
        from pgolf.lab.report import plot_losses

        plot_losses(run.path)
    return out


RESUME_FREE = {
    ("train", "run_dir"),
    ("data", "data_path"),
    ("data", "tokenizer_path"),
    ("train", "iterations"),
    ("train", "max_wallclock_seconds"),
    ("train", "val_loss_every"),
    ("train", "train_log_every"),
}
"""Fields a resumed run may change: where things are and how long/loud it runs."""


def _check_resume(ckpt: Path, cfg: C.RunConfig) -> None:
    """Refuse a checkpoint from another seed or config (every field but RESUME_FREE)."""
    from pgolf.checkpoint import load_checkpoint

    old = load_checkpoint(ckpt).meta.get("config", {})
    new = C.to_dict(cfg)
    seed = old.get("train", {}).get("seed")
    if seed is not None and seed != cfg.train.seed:
        raise ValueError(
            f"checkpoint {ckpt} was trained with seed {seed}, this run has seed "
            f"{cfg.train.seed}: set --set seed={seed} (or SEED={seed}), or pass "
            "--resume-any-seed to continue anyway"
        )
    diff = [
        f"{s}.{k}: {v!r} -> {new[s].get(k)!r}"
        for s, sec in old.items()
        if isinstance(sec, dict)
        for k, v in sec.items()
        if (s, k) not in RESUME_FREE
        and new.get(s, {}).get(k) != v
        and not (isinstance(v, list) and tuple(v) == new.get(s, {}).get(k))
    ]
    if diff:
        raise ValueError(
            f"checkpoint {ckpt} was trained with another config ({'; '.join(diff[:5])}): resume "
            "with its run folder's config.json settings, or pass --resume-any-seed to continue "
            "anyway"
        )


def cmd_run(
    *,
    preset: str = "cpu-tiny",
    overrides: list[str] = (),
    data: str | None = None,
    run_dir: str | None = None,
    quantize: bool = True,
    allow_over_budget: bool = False,
) -> dict:
    from pgolf import pipeline
    from pgolf.dist import info
    from pgolf.lab.bundle import code_size
    from pgolf.lab.report import plot_losses, summary_lines

    cfg = _default_data(C.load(preset, _with_data(overrides, data)))
    res = pipeline.run(cfg, run_dir, quantize=quantize, code_size=code_size, extras=_references)
    if info().is_main:
        plot_losses(Path(res["run_dir"]))
        print("\n".join(summary_lines({"iterations": cfg.train.iterations, **res})))
    return _check_budget(res, allow_over_budget)


def cmd_data_default(
    *, vocab_size: int = 512, out: str | None = None, caseops: bool = False
) -> Path:
    from pgolf.lab.data import datasets

    path = datasets.build_default(Path(out) if out else None, vocab_size, caseops)
    print(path)
    return path


def cmd_data_corpus(
    *,
    inputs: list[str],
    out: str,
    tokenizer: str | None = None,
    vocab_size: int | None = 512,
    split: str = "paragraph",
    val_share: float = 0.1,
    caseops: bool = False,
) -> Path:
    from pgolf.lab.data import datasets

    path = datasets.build_corpus(
        [Path(p) for p in inputs],
        Path(out),
        tokenizer=Path(tokenizer) if tokenizer else None,
        vocab_size=None if tokenizer else vocab_size,
        val_permille=round(1000 * val_share),
        split=split,
        caseops=caseops,
    )
    print(path)
    return path


def cmd_data_fineweb(
    *,
    variant: str | None = None,
    train_shards: int = 80,
    out: str = "data",
    caseops: bool = False,
    tokenizer: str | None = None,
    docs: str | None = None,
    val_docs: int = 50_000,
    max_train_docs: int = 0,
) -> Path:
    """The published exports (`--variant`), or with `--caseops` a CaseOps build from the document
    list with a CaseOps tokenizer (`--tokenizer`, e.g. the record's)."""
    from pgolf.lab.data import fineweb

    if caseops:
        if not tokenizer:
            raise ValueError("data fineweb --caseops needs --tokenizer: a CaseOps .model")
        path = fineweb.build_fineweb_caseops(
            Path(out), Path(tokenizer), Path(docs) if docs else None, val_docs, max_train_docs
        )
    elif variant is None:
        raise ValueError("data fineweb: pass --variant (sp1024, sp4096, sp8192) or --caseops")
    else:
        path = fineweb.download_fineweb(variant, train_shards, Path(out))
    print(path)
    return path


def cmd_data_overlap(
    train: str,
    val: str,
    *,
    threshold: float = 0.5,
    examples: int = 5,
    exact_only: bool = False,
    as_json: bool = False,
) -> dict:
    """Exit 1 when a validation document is (nearly) a training document."""
    from pgolf.lab.data import overlap

    rep = overlap.check_overlap(Path(train), Path(val), threshold, examples, near=not exact_only)
    print(json.dumps(rep.as_dict(), indent=1) if as_json else "\n".join(rep.lines()))
    if rep.leaks:
        raise SystemExit(1)
    return rep.as_dict()


def cmd_data_inspect(path: str, *, tokenizer: str | None = None, as_json: bool = False) -> dict:
    from pgolf.lab.data import datasets

    rep = datasets.inspect(Path(path), Path(tokenizer) if tokenizer else None)
    if as_json:
        print(json.dumps(rep, sort_keys=True))
    else:
        for k, v in rep.items():
            print(f"{k}:{v}")
    return rep


def parse_plan(specs: list[str]):
    """`--plan` items -> one `QuantPlan` (later items over earlier), None for none: each item
    `GROUP=key:value[,key:value]` (keys bits, clip_k, method, prune) or a plan JSON file (`pgolf
    budget --fit`, which also gives the low-rank ranks: `pgolf.lab.budget.planfile.read_plan`)."""
    from pgolf.lab.budget.planfile import read_plan
    from pgolf.quantplan import QuantPlan

    plan = None
    for spec in specs:
        if "=" not in spec and (spec.endswith(".json") or Path(spec).exists()):
            item = read_plan(spec)
        else:
            try:
                item = QuantPlan.parse(spec)
            except ValueError as e:
                raise ValueError(f"--plan {spec!r}: {e}") from None
        plan = item if plan is None else plan.over(item)
    return plan


def cmd_quantize(
    run_dir: str,
    *,
    overrides: list[str] = (),
    plan: list[str] = (),
    out: str | None = None,
    allow_over_budget: bool = False,
) -> dict:
    """The run's own artifact (no --out, or --out naming it) is logged in the run's log.txt and
    result.json (and awaits its scores: `pgolf eval RUN`); an artifact written elsewhere logs
    next to itself (`ARTIFACT.log`) and leaves the run's record alone. A `--plan` goes over the
    run's own quant plan (with the --set ones applied)."""
    typed = parse_plan(list(plan))  # first: a bad plan is refused before torch loads
    from pgolf import pipeline
    from pgolf.dist import log0
    from pgolf.lab.bundle import code_size
    from pgolf.runlog import RunDir, log_to

    run = RunDir.open(run_dir, need=("config", "final"), what="quantize needs")
    dest = Path(out) if out else run.artifact_path
    own = dest.resolve() == run.artifact_path.resolve()
    if own:
        run.open_log()
    logging = contextlib.nullcontext() if own else log_to(dest.with_name(dest.name + ".log"))
    try:
        with logging:
            log0(f"quantize:{run_dir} set:{list(overrides)} plan:{list(plan)}")
            res = pipeline.quantize_run(run, list(overrides), dest, typed, code_size=code_size)
        if own:  # the run's own artifact: its result follows, its scores are those of the old one
            res = run.record_artifact(res)
    finally:
        run.close()
    return _check_budget(res, allow_over_budget)


def cmd_eval(
    artifact: str,
    *,
    weights: str | None = None,
    stride: int | None = None,
    data: str | None = None,
    sliding: bool = True,
    ttt: str | None = None,
    allow_over_budget: bool = False,
    ngram_tilt: bool = False,
) -> dict:
    """Score an artifact (or with --weights / a .safetensors, unquantized weights). Only the
    first evaluation of a run's new artifact on its own validation data is the run's (log.txt,
    result.json); every other evaluation of a run's files is a later one: its lines go to the
    run's `later_evals.txt`, its scores to the console, nothing into the run's record."""
    from pgolf import pipeline
    from pgolf.dist import log0
    from pgolf.runlog import RUN_FILES, RunDir

    if weights or artifact.endswith(".safetensors"):
        return _eval_weights(artifact, weights, stride, data, sliding, ttt)
    path = Path(artifact)
    if path.is_dir():  # a run folder: its artifact
        path = path / RUN_FILES["artifact"]
    run = RunDir.find(path)
    own = run is not None and data is None and path.resolve() == run.artifact_path.resolve()
    record = own and not run.artifact_scored()
    what = f"eval:{path} stride:{stride} data:{data} sliding:{sliding} ttt:{ttt}"
    try:
        with _eval_log(run, record, what):
            log0(what)
            res = pipeline.eval_artifact(
                path, data=data, stride=stride, sliding=sliding, ttt=ttt, ngram_tilt=ngram_tilt
            )
        if record:  # the run's evaluation of its own artifact, on its own validation data
            run.record_scores(pipeline.artifact_scores(res))
    finally:
        if run is not None:
            run.close()
    return _check_budget(res, allow_over_budget)


def _eval_log(run, record: bool, what: str):
    """Where an evaluation logs: the run's log.txt for its own record, its later_evals.txt for
    any later evaluation (a marked header line first), nowhere outside a run folder."""
    import time

    from pgolf.runlog import log_to

    if run is None:
        return contextlib.nullcontext()
    if record:
        run.open_log()
        return contextlib.nullcontext()
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    return log_to(run.later_evals_path, f"later_eval:{stamp} {what} (not part of the run's record)")


def _eval_weights(
    target: str,
    weights: str | None,
    stride: int | None,
    data: str | None,
    sliding: bool,
    ttt: str | None,
) -> dict:
    """`pgolf eval RUN_DIR --weights ...`: the unquantized weights (pgolf.lab.evalweights), a
    later evaluation (`later_evals.txt`); the final weights' scores on the run's own data go to
    its result.json under its `val_bpb_prequant` keys (they recompute the run's own)."""
    from pgolf.dist import log0
    from pgolf.lab.evalweights import eval_weights
    from pgolf.runlog import RunDir

    run = RunDir.find(target)
    what = f"eval:{target} weights:{weights or 'file'} stride:{stride} data:{data} "
    what += f"sliding:{sliding} ttt:{ttt}"
    with _eval_log(run, False, what):
        log0(what)
        res = eval_weights(target, weights, data, stride, sliding, ttt)
    if run is not None and data is None and res["weights_label"] == "pre_quant":
        run.write_result({k: v for k, v in res.items() if k.startswith("val_")})
    return res


def cmd_audit(
    artifact: str | None = None,
    *,
    ttt: str | None = None,
    data: str | None = None,
    as_json: bool = False,
    quick: bool = False,
    static: str | None = None,
    train: str | None = None,
    overrides: list[str] = (),
) -> int:
    """Compliance audit (pgolf.lab.audit.run): prints the table; exit 1 on any failure."""
    from pgolf.lab.audit.run import main

    text, rc = main(artifact, ttt, data, as_json, quick, static, train, list(overrides))
    print(text)
    if rc:
        raise SystemExit(rc)
    return rc


def cmd_study(study: str, run_dir: list[str], **options) -> dict:
    """NON-RECORD studies (pgolf.lab.study): the options as the parser gives them."""
    from pgolf.lab.study import study_main
    from pgolf.lab.study.report import table

    res = study_main(run_dir, **options)
    print("\n".join(table(res)))
    print(f"wrote {res['out_dir']}/study.json, study.txt, study_delta.png, study_canary.png")
    return res


def cmd_budget(
    artifact: str,
    *,
    fit: int | None = None,
    as_json: bool = False,
    bits: list[str] = (),
    clip_k: list[str] = (),
    ve_dim: int | None = None,
    prune_to: int | None = None,
    weights: str | None = None,
    **fit_options,
) -> dict:
    """Budget report with what-ifs; with `fit`, the planner (`_budget_fit`, its options)."""
    from pgolf import artifact as A
    from pgolf.dist import progress
    from pgolf.lab.budget import sizes as B
    from pgolf.runlog import RUN_FILES

    if fit is not None:
        return _budget_fit(artifact, cap=fit, as_json=as_json, **fit_options)
    path = Path(artifact)
    tensors, meta = A.load_artifact(path / RUN_FILES["artifact"] if path.is_dir() else path)
    # The code bytes the run measured (kept in the artifact), else the bundle for its config.
    if "code_bytes" in meta:
        code, desc = int(meta["code_bytes"]), str(meta.get("code_desc", ""))
    else:
        from pgolf.lab.bundle import code_size

        code, desc = code_size(C.from_dict(meta.get("config", {})))
    codec = meta.get("config", {}).get("quant", {}).get("codec", "brotli")
    rep = B.budget_report(tensors, meta, codec, (code, desc))
    lines = B.format_budget(rep)
    w = B.load_weights(weights) if weights else None
    jobs = [{**kw, "weights": w} for kw in B.parse_what_ifs(tensors, bits, clip_k)]  # checked
    if ve_dim is not None:
        jobs.append({"ve_dim": ve_dim, "weights": w})
    if prune_to is not None:  # the whole artifact (model + code); what_if targets model bytes
        jobs.append({"prune_to": prune_to - code})
    for kw in progress(jobs, desc="budget what-ifs"):  # each from the artifact, not stacked
        lines += B.format_what_if(B.what_if(tensors, meta, codec, **kw), code=code)
    print(json.dumps(rep, sort_keys=True, default=str) if as_json else "\n".join(lines))
    return rep


def _ints(flag: str, text: str, lo: int, hi: int) -> tuple[int, ...]:
    try:
        vals = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        vals = ()
    if not vals or not all(lo <= v <= hi for v in vals):
        raise ValueError(f"{flag} {text!r}: expected comma-separated integers in {lo}..{hi}")
    return vals


def _budget_fit(
    run: str,
    *,
    cap: int,
    as_json: bool = False,
    out: str | None = None,
    calib_tokens: int = 65536,
    fit_bits: str = "4,5,6,7,8",
    fit_ranks: str = "0,4,8",
    fit_prunes: str = "0.1,0.25,0.5",
) -> dict:
    """`pgolf budget RUN --fit BYTES`: measure the options, solve, write the plan (planner)."""
    from pgolf.lab.budget import planner as P
    from pgolf.lab.budget.planfile import write_plan
    from pgolf.runlog import RunDir

    if cap <= 0 or calib_tokens <= 0:
        raise ValueError(f"--fit {cap} / --calib-tokens {calib_tokens}: both must be positive")
    bits_t, ranks_t = _ints("--fit-bits", fit_bits, 2, 8), _ints("--fit-ranks", fit_ranks, 0, 256)
    try:
        prunes_t = tuple(float(v) for v in fit_prunes.split(",") if v.strip())
    except ValueError:
        prunes_t = (-1.0,)
    if not all(0 <= v <= 1 for v in prunes_t):
        raise ValueError(
            f"--fit-prunes {fit_prunes!r}: expected comma-separated fractions in 0..1 (or '' for "
            "none)"
        )
    bench = P.Bench(run, calib_tokens)
    grid = P.default_grid(bench, bits_t, ranks_t, prunes=prunes_t)
    table = P.measure(bench, grid, log=None if as_json else print)
    res = P.fit(bench, table, cap)
    base = RunDir.open(bench.run).read_result().get("val_bpb_roundtrip")
    lines, extra = P.plan_report(res, table, base)
    if out:
        doc = write_plan(out, res["choice"], {"run": str(bench.run), **extra})
        lines.append(f"plan: wrote {out} (apply: pgolf quantize {bench.run} --plan {out})")
    else:
        doc = {"groups": {g: o.label() for g, o in res["choice"].items()}, **extra}
    print(json.dumps(doc, sort_keys=True, default=str) if as_json else "\n".join(lines))
    return doc


def cmd_bundle(
    *, preset: str, overrides: list[str] = (), out: str = "train_gpt.py", form: str = "auto"
) -> dict:
    from pgolf.lab.bundle import write_bundle

    cfg = C.load(preset, overrides)
    rep = write_bundle(cfg, out, form)
    sizes = " ".join(f"{k}:{v}" for k, v in rep["sizes"].items())
    print(f"bundle:{rep['path']} form:{rep['form']} bytes:{rep['bytes']} ({sizes})")
    return rep


def cmd_stats(
    paths: list[str],
    *,
    against: str | None = None,
    against_bpb: float | None = None,
    against_loss: float | None = None,
    metric: str = "loss",
    as_json: bool = False,
) -> dict:
    from pgolf.lab.records import seeds as Z
    from pgolf.lab.records import stats as S

    seeds = Z.load_results(paths)
    summ = S.summarize(seeds)
    cmp = None
    if against or against_bpb is not None or against_loss is not None:
        if against_loss is None and against_bpb is not None and not against:
            metric = "bpb"  # only a bpb baseline: test bpb (one-sample)
        base = Z.load_results([against]) if against else None
        cmp = S.compare(seeds, base, against_loss, against_bpb, metric=metric)
    out = {**summ, "comparison": cmp}
    print(json.dumps(out, indent=1, default=str) if as_json else S.format_text(summ, cmp))
    return out


def cmd_export(
    runs: list[str],
    *,
    out: str,
    name: str | None = None,
    author: str = "unknown",
    github_id: str = "unknown",
    track: str = "10min_16mb",
    against: str | None = None,
) -> dict:
    from pgolf.lab.records import export

    sub = export(runs, out, name, author, github_id, track, against)
    print(f"wrote {out}: val_bpb {sub['val_bpb']} seeds {sub['seeds']} bytes {sub['bytes_total']}")
    return sub


def cmd_verify(
    folder: str,
    *,
    artifact: str | None = None,
    data: str | None = None,
    against: str | None = None,
    strict_time: bool = False,
    val_data: str | None = None,
    as_json: bool = False,
) -> list:
    """Exit 1 when a rules check fails, 2 for a form failure (a missing or unparsable piece, or
    a file verify refuses to read, named)."""
    from pgolf.lab.records import verify as V

    try:
        checks = V.verify(folder, artifact, data, against, strict_time, val_data)
    except V.FolderError as e:
        if as_json:
            print(json.dumps({"error": str(e), "file": e.path, "exit": V.EXIT_FORM}))
        print(f"pgolf verify: refused {e}", file=sys.stderr)
        raise SystemExit(V.EXIT_FORM) from None
    print(V.as_json(checks) if as_json else V.format_checks(checks))
    code = V.exit_code(checks)
    if code:
        raise SystemExit(code)
    return checks


COMMANDS = {
    "run": cmd_run,
    "train": cmd_train,
    "params": cmd_params,
    "config show": cmd_config_show,
    "data default": cmd_data_default,
    "data corpus": cmd_data_corpus,
    "data fineweb": cmd_data_fineweb,
    "data overlap": cmd_data_overlap,
    "data inspect": cmd_data_inspect,
    "quantize": cmd_quantize,
    "eval": cmd_eval,
    "audit": cmd_audit,
    "study": cmd_study,
    "budget": cmd_budget,
    "bundle": cmd_bundle,
    "stats": cmd_stats,
    "export": cmd_export,
    "verify": cmd_verify,
}
"""Each subcommand (its words after `pgolf`) and the function it runs; `build_parser` binds them."""


def build_parser():
    """The parser (`pgolf.cli_parser`) with every subcommand bound to its function."""
    return cli_parser.build_parser(COMMANDS)


# ----------------------------------------------------------------------------------------------


def _default_data(cfg: C.RunConfig) -> C.RunConfig:
    """No data folder given: build (once) and use the embedded default corpus (lab)."""
    if cfg.data.data_path:
        return cfg
    from dataclasses import replace

    from pgolf.dist import init
    from pgolf.lab.data import datasets

    init(cfg.train.device)  # rank-aware: the build is locked and idempotent on every rank
    path = datasets.build_default(vocab_size=cfg.model.vocab_size, caseops=cfg.data.caseops)
    return replace(cfg, data=replace(cfg.data, data_path=str(Path(path).resolve())))


def _references(cfg: C.RunConfig, run, val_tokens, tables) -> dict:
    from pgolf.lab.data.references import references

    return references(Path(cfg.data.data_path), val_tokens, tables, cfg.model.vocab_size)


def _with_data(overrides: list[str], data: str | None) -> list[str]:
    return ([f"data.data_path={data}"] if data else []) + list(overrides)


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors whose message names the file and the fix (OSError: see `describe_error`). Training's
    own only once it is loaded (nothing else raises it): a refused input exits without torch."""
    train = sys.modules.get("pgolf.train")
    return (OSError, ValueError) + ((train.TrainingDiverged,) if train else ())


_OS_FIXES = {  # errno -> the fix, for OS errors on the user's paths (full disk, read-only, ...)
    (errno.ENOSPC, errno.EDQUOT): "free disk space or write elsewhere (--run-dir / --out)",
    (errno.EROFS, errno.EACCES, errno.EPERM): "check the permissions or write to a writable folder "
    "(--run-dir / --out)",
    (errno.ENOENT, errno.EISDIR): "check the path",
    (errno.ENOTDIR, errno.EEXIST): "a file is in the way (a part of the path is a file, not a "
    "folder): move it or choose another path",
}


def describe_error(e: BaseException) -> str:
    """The message a user sees: ours as written; an OS error as file + reason + fix."""
    fix = next((f for codes, f in _OS_FIXES.items() if getattr(e, "errno", None) in codes), None)
    ours = not (isinstance(e, OSError) and e.strerror and (e.filename or fix))
    return str(e) if ours else f"{e.filename or ''}: {e.strerror}; {fix or 'check the path'}"


def main(argv: list[str] | None = None) -> None:
    options = vars(build_parser().parse_args(argv))
    func, cmd, progress = options.pop("func"), options.pop("cmd"), options.pop("progress")
    options.pop("action", None)  # the word after `config` / `data`: already chose `func`
    if progress != "auto":  # read by pgolf.dist.progress
        os.environ["PGOLF_PROGRESS"] = "1" if progress == "on" else "0"
    ok = False
    try:
        func(**options)
        ok = True
    except _user_errors() as e:
        if os.environ.get("PGOLF_DEBUG"):
            raise
        print(f"pgolf {cmd}: error: {describe_error(e)}", file=sys.stderr)
        sys.exit(2)
    except OverBudget as e:
        print(f"pgolf {cmd}: over budget: {e}", file=sys.stderr)
        sys.exit(3)
    except KeyboardInterrupt:
        print(f"pgolf {cmd}: interrupted (anything already written was kept)", file=sys.stderr)
        sys.exit(130)
    finally:
        if dist := sys.modules.get("pgolf.dist"):  # never loaded: nothing to clean up
            dist.leave(ok)  # under torchrun a finished rank exits here, its output flushed


if __name__ == "__main__":
    main()
