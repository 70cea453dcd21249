"""Reading results: one pgolf run folder, and one training log of any shape.

* a pgolf run folder (`result.json` + `log.txt` + `config.json`, see `pgolf.runlog`);
* a log of a records folder of the challenge (which logs a folder holds, and which one a seed's
  claim names, is `seeds`, on top of `folderscan`); the logs are parsed in the shapes the
  challenge's scripts print them
  (`final_int6_sliding_window_exact val_loss:... val_bpb:...`, `step:N/M ... train_time:Xms`,
  `stopping_early: wallclock_cap train_time:Xms step:N/M`, `Total submission size ...: N bytes`,
  `Code size: N bytes`). The headline of a log is its last labelled evaluation line that is not
  a diagnostic; its eval time is the sum of `eval_time` over those lines. In a pgolf run's log an
  `artifact_replaced:` line (`pgolf quantize` re-made the run's artifact) drops the evaluation
  lines before it: they scored the previous artifact.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_EVAL = re.compile(
    r"^(?P<label>[A-Za-z][\w\-+. ]{0,120}?)(?:\s+[a-z_]+:\d+){0,6}\s+val_loss[:=]\s*"
    r"(?P<loss>\d+\.\d+)\s+"
    r"val_bpb[:=]\s*(?P<bpb>\d+\.\d+)(?P<rest>.*)$"
)
_EVAL_TIME = re.compile(r"eval_time:\s*(\d+(?:\.\d+)?)ms")
_STOP = re.compile(
    r"stopping_early:[^\n]{0,200}?train_time:\s*(\d+(?:\.\d+)?)ms\s+step:\s*(\d+)/(\d+)"
)
_STEP = re.compile(
    r"^(?:step:)?(\d+)/(\d+)\s+(?:train_loss|val_loss)[^\n]{0,300}?train_time:\s*([\d.]+)(ms|m)\b"
)
_STEP_AVG = re.compile(r"step_avg:\s*([\d.]+)ms")
_TOTAL = re.compile(r"^Total submission size[^:]{0,120}:\s*(\d+)\s*bytes")
_CODE = re.compile(r"^Code size(?P<kind>[^:]{0,120}):\s*(?P<n>\d+)\s*bytes")
_MODEL = re.compile(r"^Serialized model[^:]{0,120}:\s*(\d+)\s*bytes")
_TVAL = re.compile(r"val_loss:\s*(\d+\.\d+)\s+val_bpb:\s*(\d+\.\d+)")
_SEED = re.compile(r"^\s*seed:\s*(\d+)\s*$")
_HASH = re.compile(r"^code_hash:\s*(\w+)")
_REPLACED = "artifact_replaced:"  # pgolf.runlog.ARTIFACT_REPLACED: a run's artifact re-made
_PATH_SEED = re.compile(r"^(?:logfile|artifact_dir|run_dir|run_id):[^\n]{0,300}?seed[_\-]?(\d+)\b")
_STAMP = re.compile(r"^\d{9,10}\.\d+\s+")  # a unix-time prefix some loggers add


MAX_LINE = 4096  # characters of a log line parsed (no line this parser needs is longer)


@dataclass(frozen=True)
class Eval:
    label: str
    val_loss: float
    val_bpb: float
    eval_ms: float | None
    line: int
    loss_text: str
    bpb_text: str


@dataclass(frozen=True)
class LogFacts:
    """What a training log says (None where it does not say)."""

    evals: tuple[Eval, ...]
    train_ms: float | None
    steps: int | None
    iterations: int | None
    step_avg_ms: float | None
    artifact_bytes: int | None
    model_bytes: int | None
    code_bytes: int | None
    seed: int | None
    code_hash: str | None
    train_vals: tuple[float, ...] = ()

    @property
    def final(self) -> Eval | None:
        """The headline: the last non-diagnostic labelled evaluation line."""
        main = [e for e in self.evals if not e.label.lower().startswith("diagnostic")]
        return main[-1] if main else None

    @property
    def eval_seconds(self) -> float | None:
        """Sum of `eval_time` over the non-diagnostic evaluation lines after training."""
        ms = [
            e.eval_ms
            for e in self.evals
            if e.eval_ms is not None and not e.label.lower().startswith("diagnostic")
        ]
        return sum(ms) / 1000.0 if ms else None


def parse_log(text: str) -> LogFacts:
    evals: list[Eval] = []
    step_avg = total = model = code = seed = code_c = chash = None
    stop = last = None
    tvals: list[float] = []
    for i, raw in enumerate(text.splitlines(), start=1):
        line = _STAMP.sub("", raw[:MAX_LINE].strip(), count=1)
        if m := _EVAL.match(line):
            t = _EVAL_TIME.search(m["rest"])
            evals.append(
                Eval(
                    m["label"],
                    float(m["loss"]),
                    float(m["bpb"]),
                    float(t.group(1)) if t else None,
                    i,
                    m["loss"],
                    m["bpb"],
                )
            )
            continue
        if line.startswith(_REPLACED):  # the evaluations above scored the previous artifact
            evals.clear()
            continue
        if (line[:1].isdigit() or line.startswith("step:")) and (m := _TVAL.search(line)):
            tvals += [float(m[1]), float(m[2])]
        if m := _STOP.search(line):
            stop = (float(m[1]), int(m[2]), int(m[3]))
        elif m := _STEP.match(line):
            last = (float(m[3]) * (60_000.0 if m[4] == "m" else 1.0), int(m[1]), int(m[2]))
        if m := _STEP_AVG.search(line):
            step_avg = float(m[1])
        if m := _TOTAL.match(line):
            total = int(m[1])
        if m := _MODEL.match(line):
            model = int(m[1])
        if m := _CODE.match(line):
            if "compressed" in m["kind"] and "uncompressed" not in m["kind"]:
                code_c = int(m["n"])
            else:
                code = int(m["n"])
        if seed is None and (m := _SEED.match(line) or _PATH_SEED.match(line)):
            seed = int(m[1])
        if chash is None and (m := _HASH.match(line)):
            chash = m[1]
    train_ms, steps, iters = stop or last or (None, None, None)
    return LogFacts(
        tuple(evals),
        train_ms,
        steps,
        iters,
        step_avg,
        total,
        model,
        code_c if code_c is not None else code,
        seed,
        chash,
        tuple(tvals),
    )


@dataclass(frozen=True)
class SeedResult:
    seed: int | None
    val_loss: float
    val_bpb: float
    artifact_bytes: int | None = None
    code_bytes: int | None = None
    steps: int | None = None
    train_seconds: float | None = None
    eval_seconds: float | None = None
    source: str = ""
    label: str = ""


def pop_std(sample_std: float, n: int) -> float:
    """The population std (ddof 0) several records print instead of the sample std."""
    return sample_std * ((n - 1) / n) ** 0.5 if n > 1 else 0.0


def log_seed(path: Path, facts: LogFacts) -> int | None:
    m = re.match(r"train_seed(\d+)", path.name)
    return int(m[1]) if m else facts.seed


def from_log(path: Path, facts: LogFacts | None = None) -> SeedResult | None:
    facts = facts or parse_log(path.read_text(errors="replace"))
    f = facts.final
    if f is None:
        return None
    return SeedResult(
        log_seed(path, facts),
        f.val_loss,
        f.val_bpb,
        facts.artifact_bytes,
        facts.code_bytes,
        facts.steps,
        None if facts.train_ms is None else facts.train_ms / 1000.0,
        facts.eval_seconds,
        str(path),
        f.label,
    )


def read_run(run_dir: str | Path) -> SeedResult:
    """One pgolf run folder (`result.json`, `log.txt`, `config.json`; pgolf.runlog)."""
    from pgolf.runlog import RunDir  # torch: not for records folders (`pgolf verify`)

    run = RunDir.open(run_dir, need=("result",), what="stats and export need")
    res = run.read_result()
    for key in ("val_loss", "val_bpb"):
        if res.get(key) is None:
            raise ValueError(
                f"{run.result_path}: no `{key}`; re-run `pgolf run` (quantize on) for {run.path}"
            )
    facts = parse_log(run.log_text()) if run.log_path.is_file() else None
    seed = run.config().train.seed if run.config_path.is_file() else None
    return SeedResult(
        seed if seed is not None else (facts.seed if facts else None),
        float(res["val_loss"]),
        float(res["val_bpb"]),
        res.get("artifact_bytes"),
        res.get("code_bytes"),
        res.get("steps"),
        res.get("train_seconds"),
        facts.eval_seconds if facts else None,
        str(run.path),
        "result.json",
    )
