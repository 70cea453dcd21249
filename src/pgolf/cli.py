"""`pgolf`: one CLI whose subcommands are typed functions (tests call the same functions).

    pgolf run [--preset cpu-tiny] [--data DIR] [--set key=value ...]      the main job
    pgolf train --preset NAME [--data DIR] [--set key=value ...] [--resume CKPT]
    pgolf params --preset NAME                                           parameter count (meta)
    pgolf data default|corpus|fineweb|inspect ...                        datasets
    pgolf quantize RUN_DIR [--set quant.key=value ...]                   → artifact
    pgolf eval ARTIFACT|RUN_DIR [--stride 64] [--data DIR]               round trip + sliding
    pgolf eval RUN_DIR --weights final|checkpoint                        the unquantized weights
    pgolf audit ARTIFACT [--ttt MODE] [--quick] | --static SCRIPT | --train CFG   compliance
    pgolf study ttt-memorization RUN_DIR... [--epochs 0,0.5,1,2] [--quick]  NON-RECORD study
    pgolf budget ARTIFACT [--bits GROUP=N] [--clip-k GROUP=K] [--ve-dim N] [--prune-to BYTES]
    pgolf budget RUN_DIR --fit BYTES [--out plan.json]      plan bits / k / low-rank to fill BYTES
    pgolf stats RUN_OR_RECORD... [--against DIR | --against-bpb X --against-loss Y] [--json]
    pgolf export RUN_DIR... --out DIR [--name N] [--author A --github-id G] [--track T]
    pgolf verify RECORD_DIR [--artifact A --data DIR] [--against DIR] [--json]   exit 1 on failure

Configuration precedence: preset < the challenge's environment variables < --set. Bad input
(corrupt shard, wrong tokenizer, foreign artifact) exits with status 2 and a message naming the
file and the fix; set PGOLF_DEBUG=1 for the traceback.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from pathlib import Path

from pgolf import config as C
from pgolf.cli_parser import build_parser

__all__ = ["build_parser", "main"]


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


def cmd_config_show(preset: str, overrides: list[str], as_json: bool) -> list[str]:
    from pgolf import config_env
    from pgolf.lab.configdoc import describe

    cfg = C.load(preset, overrides)
    lines = [C.to_json(cfg)] if as_json else describe(cfg)
    print("\n".join(lines + config_env.report(os.environ)))
    return lines


def _run_folder(artifact_or_dir: Path):
    """The run folder an artifact or a run path belongs to (its log is appended), else None."""
    from pgolf.runlog import RunDir

    folder = artifact_or_dir if artifact_or_dir.is_dir() else artifact_or_dir.parent
    if not (folder / "config.json").is_file() or not folder.exists():
        return None
    run = RunDir(folder)
    run.open_log()
    return run


def cmd_params(preset: str, overrides: list[str]) -> int:
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
    preset: str,
    overrides: list[str],
    data: str | None,
    run_dir: str | None,
    resume: str | None,
    any_seed: bool = False,
) -> dict:
    from pgolf import pipeline, train
    from pgolf.dist import init
    from pgolf.runlog import new_run

    cfg = _default_data(C.load(preset, _with_data(overrides, data)))
    init(cfg.train.device)
    cfg, _, tok = pipeline.resolve_data(cfg)
    pipeline.check_vocab(cfg, tok)
    if resume and not any_seed:
        _check_resume(Path(resume), cfg)
    if resume and not run_dir:  # resuming continues the checkpoint's own run folder
        run_dir = str(Path(resume).resolve().parent)
    run = new_run(cfg, run_dir)  # a generated name is never shared
    try:
        res = train.train(cfg, run, resume=resume)
    finally:
        run.close()
    out = {"run_dir": str(run.path), "steps": res.steps, "train_seconds": res.train_seconds}
    if res.val is not None:  # measured on the live weights, before EMA was applied
        out.update(val_bpb_live=res.val.val_bpb, val_loss_live=res.val.val_loss)
    run.write_result(out)
    from pgolf.dist import info

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
    preset: str,
    overrides: list[str],
    data: str | None,
    run_dir: str | None,
    quantize: bool,
    allow_over: bool = False,
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
    return _check_budget(res, allow_over)


def cmd_data_default(vocab_size: int, out: str | None, caseops: bool = False) -> Path:
    from pgolf.lab.data import datasets as datasets

    path = datasets.build_default(Path(out) if out else None, vocab_size, caseops)
    print(path)
    return path


def cmd_data_corpus(
    inputs: list[str],
    out: str,
    tokenizer: str | None,
    vocab_size: int | None,
    split: str = "paragraph",
    val_share: float = 0.1,
    caseops: bool = False,
) -> Path:
    from pgolf.lab.data import datasets as datasets

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


def cmd_data_fineweb(variant: str | None, train_shards: int, out: str, caseops=None) -> Path:
    """`caseops`: None, or (tokenizer, docs, val_docs, max_train_docs) for the CaseOps build."""
    from pgolf.lab.data import datasets as datasets

    if caseops is not None:
        tok, docs, val_docs, max_train = caseops
        if not tok:
            raise ValueError("data fineweb --caseops needs --tokenizer: a CaseOps .model")
        path = datasets.build_fineweb_caseops(
            Path(out), Path(tok), Path(docs) if docs else None, val_docs, max_train
        )
    elif variant is None:
        raise ValueError("data fineweb: pass --variant (sp1024, sp4096, sp8192) or --caseops")
    else:
        path = datasets.download_fineweb(variant, train_shards, Path(out))
    print(path)
    return path


def cmd_data_overlap(
    train: str, val: str, threshold: float, examples: int, as_json: bool, near: bool = True
) -> dict:
    """Exit 1 when a validation document is (nearly) a training document."""
    from pgolf.lab.data import overlap as overlap

    rep = overlap.check_overlap(Path(train), Path(val), threshold, examples, near=near)
    print(json.dumps(rep.as_dict(), indent=1) if as_json else "\n".join(rep.lines()))
    if rep.leaks:
        raise SystemExit(1)
    return rep.as_dict()


def cmd_data_inspect(path: str, tokenizer: str | None, as_json: bool) -> dict:
    from pgolf.lab.data import datasets as datasets

    rep = datasets.inspect(Path(path), Path(tokenizer) if tokenizer else None)
    if as_json:
        print(json.dumps(rep, sort_keys=True))
    else:
        for k, v in rep.items():
            print(f"{k}:{v}")
    return rep


def parse_plan(specs: list[str], base: str = "") -> list[str]:
    """`GROUP=key:value[,key:value]` (keys bits, clip_k, method, prune) or a plan JSON file (`pgolf
    budget --fit`) → the equal config overrides: `quant.groups` (the plans over `base`, the
    run's own quant.groups) and the file's `quant.lqer`; none for no plans."""
    from pgolf.config import parse_groups
    from pgolf.lab.budget.planner import groups_spec, read_plan

    plan, sets = parse_groups(base), []
    for spec in specs:
        if "=" not in spec and (spec.endswith(".json") or Path(spec).is_file()):
            groups, lqer = read_plan(spec)
            sets.append(f"quant.lqer={lqer}")
        else:
            try:
                groups = parse_groups(spec)
            except ValueError as e:
                raise ValueError(f"--plan {spec!r}: {e}") from None
        for g, ov in groups.items():
            plan[g] = {**plan.get(g, {}), **ov}
    spec = base if plan == parse_groups(base) else groups_spec(plan)
    return [f"quant.groups={spec}", *sets] if specs else []


def cmd_quantize(
    run_dir: str, overrides: list[str], plan: list[str], out: str | None, allow_over: bool = False
) -> dict:
    from pgolf import pipeline
    from pgolf.dist import log0
    from pgolf.lab.bundle import code_size

    run = _run_folder(Path(run_dir))
    try:
        log0(f"quantize:{run_dir} set:{overrides} plan:{plan}")
        cfg_file = Path(run_dir) / "config.json"
        base = ""
        if plan and cfg_file.is_file():  # a plan goes over the run's own quant.groups
            cfg = C.apply_overrides(C.from_dict(json.loads(cfg_file.read_text())), overrides)
            base = cfg.quant.groups
        sets = parse_plan(plan, base)
        if sets:
            log0(f"quantize:plan as config: {' '.join(f'--set {s}' for s in sets)}")
        res = pipeline.quantize_run(run_dir, [*overrides, *sets], out, code_size=code_size)
        if run is not None and out is None:  # the run's own artifact: its result follows
            res = run.write_result(res)
    finally:
        if run is not None:
            run.close()
    return _check_budget(res, allow_over)


def cmd_eval(
    artifact: str,
    stride: int | None,
    data: str | None,
    sliding: bool,
    ttt: str | None = None,
    allow_over: bool = False,
    weights: str | None = None,
    ngram_tilt: bool = False,
) -> dict:
    from pgolf import pipeline
    from pgolf.dist import log0

    if weights or artifact.endswith(".safetensors"):
        return _eval_weights(artifact, weights, stride, data, sliding, ttt)
    if Path(artifact).is_dir():  # a run folder: its artifact
        artifact = str(Path(artifact) / "artifact.pgolf")
    run = _run_folder(Path(artifact))
    try:
        log0(f"eval:{artifact} stride:{stride} data:{data} sliding:{sliding} ttt:{ttt}")
        res = pipeline.eval_artifact(
            artifact, data=data, stride=stride, sliding=sliding, ttt=ttt, ngram_tilt=ngram_tilt
        )
        if run is not None and data is None:  # scored on the run's own validation data
            keep = {k: v for k, v in res.items() if k.startswith(("val_", "budget", "eval_"))}
            for k in ("roundtrip", "sliding"):
                if f"{k}_bpb" in res:
                    keep[f"val_bpb_{k}"], keep[f"val_loss_{k}"] = res[f"{k}_bpb"], res[f"{k}_loss"]
            run.write_result(keep)
    finally:
        if run is not None:
            run.close()
    return _check_budget(res, allow_over)


def _eval_weights(
    target: str,
    weights: str | None,
    stride: int | None,
    data: str | None,
    sliding: bool,
    ttt: str | None,
) -> dict:
    """`pgolf eval RUN_DIR --weights ...`: the unquantized weights (pgolf.lab.evalweights); the
    final weights' scores go to the run's result.json under its `val_bpb_prequant` keys."""
    from pgolf.dist import log0
    from pgolf.lab.evalweights import eval_weights

    run = _run_folder(Path(target))
    try:
        log0(
            f"eval:{target} weights:{weights or 'file'} stride:{stride} data:{data} "
            f"sliding:{sliding} ttt:{ttt}"
        )
        res = eval_weights(target, weights, data, stride, sliding, ttt)
        if run is not None and data is None and res["weights_label"] == "pre_quant":
            run.write_result({k: v for k, v in res.items() if k.startswith("val_")})
    finally:
        if run is not None:
            run.close()
    return res


def cmd_audit(
    artifact: str | None,
    ttt: str | None,
    data: str | None,
    as_json: bool,
    quick: bool,
    static: str | None = None,
    train: str | None = None,
    overrides: list[str] = (),
) -> int:
    """Compliance audit (pgolf.lab.audit.run): prints the table; 1 on any failure."""
    from pgolf.lab.audit.run import main

    text, rc = main(artifact, ttt, data, as_json, quick, static, train, overrides)
    print(text)
    return rc


def cmd_budget(
    artifact: str,
    bits: list[str],
    clip_k: list[str],
    ve_dim: int | None,
    prune_to: int | None,
    weights: str | None,
    as_json: bool,
    fit: int | None = None,
    out: str | None = None,
    calib_tokens: int = 65536,
    fit_bits: str = "4,5,6,7,8",
    fit_ranks: str = "0,4,8",
    fit_prunes: str = "0.1,0.25,0.5",
) -> dict:
    from pgolf import artifact as A
    from pgolf.dist import progress
    from pgolf.lab import budget as B

    if fit is not None:
        return cmd_budget_fit(
            artifact, fit, out, calib_tokens, fit_bits, fit_ranks, as_json, fit_prunes
        )
    path = Path(artifact)
    tensors, meta = A.load_artifact(path / "artifact.pgolf" if path.is_dir() else path)
    # The code bytes the run measured (kept in the artifact), else the bundle for its config.
    if "code_bytes" in meta:
        code = int(meta["code_bytes"])
    else:
        from pgolf.lab.bundle import code_size

        code = code_size(C.from_dict(meta.get("config", {})))[0]
    codec = meta.get("config", {}).get("quant", {}).get("codec", "brotli")
    rep = B.budget_report(tensors, meta, codec, code)
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


def cmd_budget_fit(
    run: str,
    cap: int,
    out: str | None,
    calib_tokens: int,
    bits: str,
    ranks: str,
    as_json: bool,
    prunes: str = "0.1,0.25,0.5",
) -> dict:
    """`pgolf budget RUN --fit BYTES`: measure the options, solve, write the plan (planner)."""
    from pgolf.lab.budget import planner as P

    if cap <= 0 or calib_tokens <= 0:
        raise ValueError(f"--fit {cap} / --calib-tokens {calib_tokens}: both must be positive")
    bits_t, ranks_t = _ints("--fit-bits", bits, 2, 8), _ints("--fit-ranks", ranks, 0, 256)
    try:
        prunes_t = tuple(float(v) for v in prunes.split(",") if v.strip())
    except ValueError:
        prunes_t = (-1.0,)
    if not all(0 <= v <= 1 for v in prunes_t):
        raise ValueError(
            f"--fit-prunes {prunes!r}: expected comma-separated fractions in 0..1 (or '' for none)"
        )
    bench = P.Bench(run, calib_tokens)
    grid = P.default_grid(bench, bits_t, ranks_t, prunes=prunes_t)
    table = P.measure(bench, grid, log=None if as_json else print)
    res = P.fit(bench, table, cap)
    result = bench.run / "result.json"
    base = json.loads(result.read_text()).get("val_bpb_roundtrip") if result.is_file() else None
    lines, extra = P.plan_report(res, table, base)
    if out:
        doc = P.write_plan(out, res["choice"], {"run": str(bench.run), **extra})
        lines.append(f"plan: wrote {out} (apply: pgolf quantize {bench.run} --plan {out})")
    else:
        doc = {"groups": {g: o.label() for g, o in res["choice"].items()}, **extra}
    print(json.dumps(doc, sort_keys=True, default=str) if as_json else "\n".join(lines))
    return doc


def cmd_bundle(preset: str, overrides: list[str], out: str, form: str) -> dict:
    from pgolf.lab.bundle import write_bundle

    cfg = C.load(preset, overrides)
    rep = write_bundle(cfg, out, form)
    sizes = " ".join(f"{k}:{v}" for k, v in rep["sizes"].items())
    print(f"bundle:{rep['path']} form:{rep['form']} bytes:{rep['bytes']} ({sizes})")
    return rep


def cmd_stats(
    paths: list[str],
    against: str | None,
    against_bpb: float | None,
    against_loss: float | None,
    metric: str,
    as_json: bool,
) -> dict:
    from pgolf.lab.records import results as R
    from pgolf.lab.records import stats as S

    seeds = R.load_results(paths)
    summ = S.summarize(seeds)
    cmp = None
    if against or against_bpb is not None or against_loss is not None:
        if against_loss is None and against_bpb is not None and not against:
            metric = "bpb"  # only a bpb baseline: test bpb (one-sample)
        base = R.load_results([against]) if against else None
        cmp = S.compare(seeds, base, against_loss, against_bpb, metric=metric)
    out = {**summ, "comparison": cmp}
    print(json.dumps(out, indent=1, default=str) if as_json else S.format_text(summ, cmp))
    return out


def cmd_export(
    runs: list[str],
    out: str,
    name: str | None,
    author: str,
    github_id: str,
    track: str,
    against: str | None,
) -> dict:
    from pgolf.lab.records import export

    sub = export(runs, out, name, author, github_id, track, against)
    print(f"wrote {out}: val_bpb {sub['val_bpb']} seeds {sub['seeds']} bytes {sub['bytes_total']}")
    return sub


def cmd_verify(
    folder: str,
    artifact: str | None,
    data: str | None,
    against: str | None,
    strict_time: bool,
    as_json: bool,
) -> list:
    """Exit 1 when any check fails."""
    from pgolf.lab.records import verify as V

    checks = V.verify(folder, artifact, data, against, strict_time)
    print(V.as_json(checks) if as_json else V.format_checks(checks))
    if any(c.status == V.FAIL for c in checks):
        raise SystemExit(1)
    return checks


# ----------------------------------------------------------------------------------------------


def _default_data(cfg: C.RunConfig) -> C.RunConfig:
    """No data folder given: build (once) and use the embedded default corpus (lab)."""
    if cfg.data.data_path:
        return cfg
    from dataclasses import replace

    from pgolf.dist import init
    from pgolf.lab.data import datasets as datasets

    init(cfg.train.device)  # rank-aware: the build is locked and idempotent on every rank
    path = datasets.build_default(vocab_size=cfg.model.vocab_size, caseops=cfg.data.caseops)
    return replace(cfg, data=replace(cfg.data, data_path=str(Path(path).resolve())))


def _references(cfg: C.RunConfig, run, val_tokens, tables) -> dict:
    from pgolf.lab.data.references import references

    return references(Path(cfg.data.data_path), val_tokens, tables, cfg.model.vocab_size)


def _with_data(overrides: list[str], data: str | None) -> list[str]:
    return ([f"data.data_path={data}"] if data else []) + list(overrides)


def dispatch(a: argparse.Namespace):
    if a.cmd == "run":
        return cmd_run(
            a.preset, a.overrides, a.data, a.run_dir, not a.no_quantize, a.allow_over_budget
        )
    if a.cmd == "train":
        return cmd_train(a.preset, a.overrides, a.data, a.run_dir, a.resume, a.resume_any_seed)
    if a.cmd == "config":
        return cmd_config_show(a.preset, a.overrides, a.json)
    if a.cmd == "params":
        return cmd_params(a.preset, a.overrides)
    if a.cmd == "data":
        if a.data_cmd == "default":
            return cmd_data_default(a.vocab_size, a.out, a.caseops)
        if a.data_cmd == "corpus":
            return cmd_data_corpus(
                a.input, a.out, a.tokenizer, a.vocab_size, a.split, a.val_share, a.caseops
            )
        if a.data_cmd == "fineweb":
            ops = (a.tokenizer, a.docs, a.val_docs, a.max_train_docs) if a.caseops else None
            return cmd_data_fineweb(a.variant, a.train_shards, a.out, ops)
        if a.data_cmd == "overlap":
            return cmd_data_overlap(
                a.train, a.val, a.threshold, a.examples, a.json, not a.exact_only
            )
        return cmd_data_inspect(a.path, a.tokenizer, a.json)
    if a.cmd == "quantize":
        return cmd_quantize(a.run_dir, a.overrides, a.plan, a.out, a.allow_over_budget)
    if a.cmd == "eval":
        return cmd_eval(
            a.artifact,
            a.stride,
            a.data,
            not a.no_sliding,
            a.ttt,
            a.allow_over_budget,
            a.weights,
            a.ngram_tilt,
        )
    if a.cmd == "audit":
        sys.exit(
            cmd_audit(a.artifact, a.ttt, a.data, a.json, a.quick, a.static, a.train, a.overrides)
        )
    if a.cmd == "study":
        from pgolf.lab.study import study_main
        from pgolf.lab.study.report import table

        res = study_main(a)
        print("\n".join(table(res)))
        print(f"wrote {res['out_dir']}/study.json, study.txt, study_delta.png, study_canary.png")
        return res
    if a.cmd == "budget":
        return cmd_budget(
            a.artifact,
            a.bits,
            a.clip_k,
            a.ve_dim,
            a.prune_to,
            a.weights,
            a.json,
            a.fit,
            a.out,
            a.calib_tokens,
            a.fit_bits,
            a.fit_ranks,
            a.fit_prunes,
        )
    if a.cmd == "bundle":
        return cmd_bundle(a.preset, a.overrides, a.out, a.form)
    if a.cmd == "stats":
        return cmd_stats(a.paths, a.against, a.against_bpb, a.against_loss, a.metric, a.json)
    if a.cmd == "export":
        return cmd_export(a.runs, a.out, a.name, a.author, a.github_id, a.track, a.against)
    if a.cmd == "verify":
        return cmd_verify(a.folder, a.artifact, a.data, a.against, a.strict_time, a.json)
    raise AssertionError(a.cmd)


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors whose message names the file and the fix (OSError: see `describe_error`)."""
    from pgolf.train import TrainingDiverged

    return (OSError, ValueError, TrainingDiverged)


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
    args = build_parser().parse_args(argv)
    if args.progress != "auto":  # read by pgolf.dist.progress
        os.environ["PGOLF_PROGRESS"] = "1" if args.progress == "on" else "0"
    ok = False
    try:
        dispatch(args)
        ok = True
    except _user_errors() as e:
        if os.environ.get("PGOLF_DEBUG"):
            raise
        print(f"pgolf {args.cmd}: error: {describe_error(e)}", file=sys.stderr)
        sys.exit(2)
    except OverBudget as e:
        print(f"pgolf {args.cmd}: over budget: {e}", file=sys.stderr)
        sys.exit(3)
    except KeyboardInterrupt:
        print(f"pgolf {args.cmd}: interrupted (anything already written was kept)", file=sys.stderr)
        sys.exit(130)
    finally:
        from pgolf.dist import cleanup

        cleanup(ok)


if __name__ == "__main__":
    main()
