"""`pgolf export RUN_DIR... --out DIR`: finished pgolf runs (one per seed) → a records folder in
the challenge's layout (README section "Submission folder contents"): `README.md`,
`submission.json` (the fields the records use, plus the statistics and a compliance block),
one `train_seed<S>.log` per seed (a copy of the run's `log.txt`), the bundled `train_gpt.py`
(`pgolf.lab.bundle.write_bundle`), `requirements.txt` and the loss-curve PNG.

The config bundled is the run's config.json with the quant section its artifact.pgolf was made
with (a later `pgolf quantize --plan/--set` records its overrides there, e.g. quant.groups).
It refuses, naming the run and the reason: runs of different configs or code (config.json with
the seed and paths removed; `code_hash:` in the log header), an over-cap artifact, a run with
missing files, duplicate seeds, and runs marked non-record (`result.json` key `non_record`, e.g.
pre-quantization TTT on validation tokens) for the `10min_16mb` track.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from pgolf import config as C
from pgolf.lab.bundle import PER_RUN
from pgolf.lab.records import results as R
from pgolf.lab.records import rules as U
from pgolf.lab.records import seeds as Z
from pgolf.lab.records import stats as S
from pgolf.lab.records.readme import RECORD_TRACK, readme, technique_lines
from pgolf.runlog import RunDir

CAP_BYTES = 16_000_000


class ExportError(ValueError):
    """A run set that cannot become this records folder (the message says why and what to do)."""


def _config_key(cfg: dict[str, Any]) -> dict[str, Any]:
    return {
        sec: {k: v for k, v in vals.items() if (sec, k) not in PER_RUN}
        if isinstance(vals, dict)
        else vals
        for sec, vals in cfg.items()
    }


def _diff(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    out = []
    for sec in sorted(set(a) | set(b)):
        x, y = a.get(sec), b.get(sec)
        if isinstance(x, dict) and isinstance(y, dict):
            out += [
                f"{sec}.{k}: {x.get(k)!r} vs {y.get(k)!r}"
                for k in sorted(set(x) | set(y))
                if x.get(k) != y.get(k)
            ]
        elif x != y:
            out.append(f"{sec}: {x!r} vs {y!r}")
    return out


def _artifact_quant(path: Path) -> dict[str, Any]:
    """The quant section an artifact was made with: `pgolf quantize --plan/--set` changes it
    (quant.groups, quant.lqer, ...) while config.json keeps the training's, and the bundle must
    reproduce the artifact."""
    from pgolf.artifact import load_artifact

    return dict(load_artifact(path)[1]["config"]["quant"])


def check_runs(runs: Sequence[str | Path], track: str) -> list[dict[str, Any]]:
    """Load and cross-check the runs; raises ExportError with every reason found."""
    loaded, errors = [], []
    for r in map(Path, runs):
        try:
            run = RunDir.open(r, need=("result", "log", "config"), what="export needs")
            res, cfg = run.read_result(), C.to_dict(run.config())
        except (OSError, ValueError) as e:
            errors.append(str(e))
            continue
        if run.artifact_path.is_file():  # re-quantized (--plan/--set): the artifact's quant
            try:
                cfg["quant"] = _artifact_quant(run.artifact_path)
            except (ValueError, KeyError, TypeError) as e:
                errors.append(f"{run.artifact_path}: unreadable config ({e}); re-quantize the run")
        if res.get("artifact_scored") is False:
            errors.append(
                f"{r}: its artifact.pgolf is not scored since `pgolf quantize` wrote it; run "
                f"`pgolf eval {r}` (the run's own evaluation) first"
            )
        facts = R.parse_log(run.log_text())
        loaded.append(
            {"dir": r, "result": res, "config": cfg, "facts": facts, "seed": R.read_run(r)}
        )
        total = res.get("artifact_bytes")
        if total is None:
            errors.append(f"{r}: no artifact_bytes in result.json (run with quantization on)")
        elif total >= CAP_BYTES:
            errors.append(f"{r}: artifact {total} bytes is not under the cap {CAP_BYTES}")
        if track == RECORD_TRACK and res.get("non_record"):
            errors.append(
                f"{r}: marked non-record ({res['non_record']}); export it with "
                "--track non-record-16mb (it cannot claim the 10min_16mb track)"
            )
        if facts.final is None:
            errors.append(f"{r}/log.txt: no final evaluation line (did the run finish?)")
    if loaded:
        ref = loaded[0]
        for o in loaded[1:]:
            d = _diff(_config_key(ref["config"]), _config_key(o["config"]))
            if d:
                errors.append(f"{o['dir']}: config differs from {ref['dir']}: {'; '.join(d[:5])}")
            if o["facts"].code_hash != ref["facts"].code_hash:
                errors.append(
                    f"{o['dir']}: code_hash {o['facts'].code_hash} differs from "
                    f"{ref['dir']}'s {ref['facts'].code_hash}: one code per record"
                )
        seeds = [x["seed"].seed for x in loaded]
        dup = sorted({s for s in seeds if seeds.count(s) > 1})
        if dup:
            errors.append(f"seeds {dup} appear twice: one run per seed")
    if errors:
        raise ExportError("refusing to export:\n  " + "\n  ".join(errors))
    if not loaded:
        raise ExportError("no runs given: pass finished `pgolf run` folders")
    return loaded


def _plot(runs: list[dict[str, Any]], out: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    drawn = False
    for r in runs:
        rows = RunDir(r["dir"], create=False).read_metrics()
        pts = [(x["step"], x["train_loss"]) for x in rows if "train_loss" in x and "step" in x]
        if pts:
            ax.plot(*zip(*pts), label=f"seed {r['seed'].seed}")
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("step")
    ax.set_ylabel("train loss (nats/token)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def export(
    runs: Sequence[str | Path],
    out: str | Path,
    name: str | None = None,
    author: str = "unknown",
    github_id: str = "unknown",
    track: str = RECORD_TRACK,
    against: str | None = None,
) -> dict[str, Any]:
    """Write the records folder; returns its submission.json content."""
    try:  # lazily: the bundler is a lab tool of its own
        from pgolf.lab.bundle import write_bundle
    except ImportError as e:
        raise ExportError(f"export needs pgolf.lab.bundle to write train_gpt.py ({e})") from e

    loaded = check_runs(runs, track)
    dest = Path(out)
    if dest.exists() and any(dest.iterdir()):
        raise ExportError(f"{dest} exists and is not empty: choose a new --out folder")
    dest.mkdir(parents=True, exist_ok=True)
    cfg_d = loaded[0]["config"]
    bundle = write_bundle(C.from_dict(cfg_d), dest / "train_gpt.py")
    code = int(bundle["bytes"])
    seeds: list[R.SeedResult] = []
    seed_results: dict[str, Any] = {}
    for r in loaded:
        sr, facts = r["seed"], r["facts"]
        shutil.copyfile(RunDir(r["dir"], create=False).log_path, dest / f"train_seed{sr.seed}.log")
        model = r["result"].get("model_bytes", facts.model_bytes)
        total = model + code if model is not None else sr.artifact_bytes
        if total is not None and total >= CAP_BYTES:
            raise ExportError(
                f"{r['dir']}: model {model} + bundle {code} = {total} bytes, not under {CAP_BYTES}"
            )
        fin = facts.final  # the values the shipped log prints: what verify reads back
        if fin is not None:
            sr = replace(sr, val_loss=fin.val_loss, val_bpb=fin.val_bpb)
        seeds.append(sr)
        seed_results[str(sr.seed)] = {
            "val_loss": U.printed(sr.val_loss),
            "val_bpb": U.printed(sr.val_bpb),
            "artifact_bytes": sr.artifact_bytes,
            "model_bytes": model,
            "bytes_with_bundle": total,
            "steps": sr.steps,
            "train_time_s": None if sr.train_seconds is None else round(sr.train_seconds, 3),
            "eval_time_s": None if sr.eval_seconds is None else round(sr.eval_seconds, 1),
        }
    summ = S.summarize(seeds)
    bpb_agg = U.aggregate([s.val_bpb for s in seeds])  # the one rule verify checks them by
    loss_agg = U.aggregate([s.val_loss for s in seeds])
    worst = max(v["bytes_with_bundle"] or 0 for v in seed_results.values())
    sub: dict[str, Any] = {
        "name": name or f"pgolf {cfg_d.get('preset')}",
        "author": author,
        "github_id": github_id,
        "date": dt.date.today().isoformat(),
        "track": track,
        "val_bpb": bpb_agg["mean"],
        "val_loss": loss_agg["mean"],
        "val_bpb_std": bpb_agg["std"],
        "val_loss_std": loss_agg["std"],
        "bytes_total": worst,
        "bytes_code": code,
        "bundle_sha256": hashlib.sha256((dest / "train_gpt.py").read_bytes()).hexdigest(),
        "seeds": [s.seed for s in seeds],
        "seed_results": seed_results,
        "hardware": _hardware(loaded[0]["dir"]),
        "pytorch_version": _torch_version(loaded[0]["dir"]),
        "technique_summary": " + ".join(technique_lines(cfg_d)),
    }
    cmp = None
    if against:
        base = Z.load_results([against])
        cmp = S.compare(seeds, base) if len(seeds) > 1 else None
        sub["baseline"] = {
            "name": str(against),
            "val_loss": [b.val_loss for b in base],
            "val_bpb": [b.val_bpb for b in base],
        }
        if cmp:
            sub.update(
                t_statistic=round(cmp["t"], 4),
                welch_df=round(cmp["df"], 4),
                p_value=float(f"{cmp['p']:.4g}"),
                delta_nats=round(-cmp["gap_nats"], 8),
                readme_rule_met=cmp["readme_rule"]["met"],
                frontier_rule_met=cmp["frontier_rule"]["met"],
            )
    tr = [s.train_seconds for s in seeds if s.train_seconds is not None]
    ev = [s.eval_seconds for s in seeds if s.eval_seconds is not None]
    sub["compliance"] = {
        "train_under_600s": bool(tr) and max(tr) <= 600.0,
        "eval_under_600s": bool(ev) and max(ev) <= 600.0,
        "artifact_under_16mb": worst < CAP_BYTES,
        "three_seeds": len(seeds) >= 3,
        "no_pre_quant_ttt": not any(r["result"].get("non_record") for r in loaded),
        "train_time_max_s": round(max(tr), 3) if tr else None,
        "eval_time_max_s": round(max(ev), 1) if ev else None,
    }
    (dest / "submission.json").write_text(json.dumps(sub, indent=2) + "\n")
    (dest / "requirements.txt").write_text(_requirements())
    png = _plot(loaded, dest / "loss.png")

    (dest / "README.md").write_text(readme(sub, summ, cmp, cfg_d, png is not None, loaded))
    return sub


def _env(run: Path) -> dict[str, str]:
    """The `env:key:value` header lines of a run's log (pgolf.runlog)."""
    out = {}
    for ln in RunDir(run, create=False).log_text().splitlines():
        if ln.startswith("env:") and ln.count(":") >= 2:
            _, k, v = ln.split(":", 2)
            out[k] = v
    return out


def _hardware(run: Path) -> str:
    e = _env(run)
    gpu = e.get("gpu")
    if not gpu or gpu == "None":
        return f"CPU ({e.get('platform', 'unknown platform')})"
    return f"{e.get('gpu_count', '?')}x {gpu}"


def _torch_version(run: Path) -> str:
    return _env(run).get("torch", "unknown")


def _requirements() -> str:
    return "torch\nnumpy\nsentencepiece\nbrotli\nzstandard\nsafetensors\n"
