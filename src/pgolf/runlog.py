"""Run folders: the text log and its header, metrics and the result record.

A run folder (house style section 5.6) holds

* `log.txt` - every `pgolf.dist.log0` line of the run. It starts with a header the console does
  not echo (like the challenge's per-run log, spec section 10.1): the code hash (sha256 of the
  concatenated `src/pgolf/*.py` sources), the resolved config as JSON, and the environment
  (Python, torch, CUDA, GPU name, `nvidia-smi`, hostname, world size, git commit);
* `config.json` - the resolved `RunConfig`;
* `metrics.jsonl` - one JSON object per line (`RunDir.metric`);
* `result.json` - the run's summary, merged and rewritten atomically by `RunDir.write_result`;
* `checkpoint.safetensors` / `final_model.safetensors` - see below.

Checkpoints live in checkpoint.py. Only rank 0 writes anything; every rank may read.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import platform
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import torch
import torch.distributed as tdist

from pgolf import config as C
from pgolf import config_env, dist
from pgolf.checkpoint import json_default
from pgolf.data import write_atomically


def code_hash(n_hex: int = 12) -> str:
    """First `n_hex` hex digits of sha256 over the sorted `src/pgolf/*.py` sources."""
    h = hashlib.sha256()
    for f in sorted(Path(__file__).resolve().parent.glob("*.py")):
        h.update(f.read_bytes())
    return h.hexdigest()[:n_hex]


def _run_cmd(args: list[str], cwd: Path | None = None, timeout: float = 10.0) -> str | None:
    try:
        out = subprocess.run(
            args, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def environment() -> dict[str, Any]:
    """Versions, hardware and provenance of this process (best effort; missing items are None)."""
    cuda = torch.cuda.is_available()
    here = Path(__file__).resolve().parent
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name() if cuda else None,
        "gpu_count": torch.cuda.device_count() if cuda else 0,
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "world_size": dist.info().world_size,
        "git_commit": _run_cmd(["git", "rev-parse", "HEAD"], cwd=here),
        "nvidia_smi": _run_cmd(["nvidia-smi"]) if cuda else None,
    }


def default_run_dir(cfg: C.RunConfig, root: str | Path = "out") -> Path:
    """`out/<YYYYmmdd-HHMMSS>_<preset>_s<seed>` (or `cfg.train.run_dir` when that is set); the
    time is rank 0's, broadcast, so every rank of a torchrun job names the same folder. Open it
    with `RunDir(path, exclusive=True)`: a second run in the same second gets `...-2`."""
    if cfg.train.run_dir:
        return Path(cfg.train.run_dir)
    now = torch.tensor([time.time()], dtype=torch.float64, device=dist.info().device)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(float(dist.broadcast_(now).item())))
    return Path(root) / f"{stamp}_{cfg.preset}_s{cfg.train.seed}"


def _atomic_write_text(path: Path, text: str) -> None:
    write_atomically(path, lambda tmp: tmp.write_text(text))


def claim_dir(path: str | Path) -> Path:
    """Create a new run folder exclusively: `path`, else `path-2`, `path-3`, ... (rank 0 picks,
    every rank gets its name), so two runs started in the same second never share one."""
    path, name = Path(path), [None]
    if dist.info().is_main:
        path.parent.mkdir(parents=True, exist_ok=True)
        for k in itertools.count(1):
            cand = path if k == 1 else path.with_name(f"{path.name}-{k}")
            with contextlib.suppress(FileExistsError):
                os.mkdir(cand)  # atomic: exactly one process creates a given name
                name = [str(cand)]
                break
    if dist.is_dist():
        tdist.broadcast_object_list(name, src=0)
    return Path(name[0]) if name[0] else path


HEADLINE_ORDER = ("ttt", "sliding", "roundtrip", "prequant", "live")
"""The headline score is the first of these stages a run has a score for: the last, most complete
evaluation of what would be submitted (eval-time TTT, then the quantized artifact's sliding
window, its plain round trip, the unquantized EMA weights, the live weights)."""


def headline(result: dict[str, Any]) -> dict[str, Any]:
    """{val_bpb, val_loss, val_bpb_source} chosen by HEADLINE_ORDER (empty when nothing scored)."""
    for stage in HEADLINE_ORDER:
        if result.get(f"val_bpb_{stage}") is not None:
            return {
                "val_bpb": result[f"val_bpb_{stage}"],
                "val_loss": result.get(f"val_loss_{stage}"),
                "val_bpb_source": stage,
            }
    return {}


@contextlib.contextmanager
def log_to(path: str | Path, first: str | None = None) -> Iterator[None]:
    """Append the `log0` lines of the block to `path` (rank 0; the folder is created), after the
    line `first` when given; the previous log file is restored afterwards. For work on a run
    that is not part of its record: an artifact written elsewhere logs next to itself, a later
    evaluation in the run's `later_evals.txt`."""
    if not dist.info().is_main:
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    before = dist.get_log_file()
    with open(path, "a", encoding="utf-8") as f:
        dist.set_log_file(f)
        try:
            if first is not None:
                dist.log0(first, console=False)
            yield
        finally:
            dist.set_log_file(before)


def new_run(cfg: C.RunConfig, run_dir: str | Path | None = None) -> RunDir:
    """The run folder: `run_dir` or `train.run_dir` as given (created, or reused when it exists),
    else a generated `default_run_dir` name, created exclusively (`claim_dir`)."""
    if run_dir or cfg.train.run_dir:
        return RunDir(run_dir or cfg.train.run_dir)
    return RunDir(default_run_dir(cfg), exclusive=True)


RUN_FILES = {
    "config": "config.json",
    "log": "log.txt",
    "metrics": "metrics.jsonl",
    "result": "result.json",
    "checkpoint": "checkpoint.safetensors",
    "final": "final_model.safetensors",
    "artifact": "artifact.pgolf",
    "later_evals": "later_evals.txt",
}
"""A run folder's files by role (`RunDir.file`). `later_evals.txt` holds the evaluations run after
the run's own (`pgolf eval` of a scored artifact, of its weights): never part of its record."""

ARTIFACT_REPLACED = "artifact_replaced:"
"""The log line a new artifact of the run starts with; parsers drop the evaluation lines before."""

ARTIFACT_SCORES = ("roundtrip", "sliding", "ttt")
"""The stages that score the run's artifact (`val_bpb_<stage>`); a new artifact clears them."""


class RunDir:
    """One run's folder: the writer (creating it makes the folder on rank 0; nothing else is
    written yet) and the one reader of finished runs (`RunDir.open`, `RunDir.find`)."""

    def __init__(self, path: str | Path, exclusive: bool = False, *, create: bool = True) -> None:
        """`exclusive`: a new folder, suffixed `-2`, `-3`, ... when `path` exists (`claim_dir`);
        else `path` is created when missing and reused when it exists (an explicit --run-dir).
        `create=False` (the readers) touches nothing."""
        self.path = claim_dir(path) if exclusive else Path(path)
        self._log: TextIO | None = None
        self._metrics: TextIO | None = None
        self._header_done = False
        if create and dist.info().is_main:
            self.path.mkdir(parents=True, exist_ok=True)

    def file(self, role: str) -> Path:
        """The path of a file by its role in RUN_FILES (whether or not it exists)."""
        return self.path / RUN_FILES[role]

    log_path = property(lambda self: self.file("log"))
    config_path = property(lambda self: self.file("config"))
    metrics_path = property(lambda self: self.file("metrics"))
    result_path = property(lambda self: self.file("result"))
    checkpoint_path = property(lambda self: self.file("checkpoint"))
    final_model_path = property(lambda self: self.file("final"))
    artifact_path = property(lambda self: self.file("artifact"))
    later_evals_path = property(lambda self: self.file("later_evals"))

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # ------------------------------------------------------------------------------------------
    # Reading a run folder

    @classmethod
    def open(cls, path: str | Path, need: tuple[str, ...] = ("config",), what: str = "") -> RunDir:
        """An existing run folder for reading (nothing is created or changed): `path`, or the
        folder of a file inside it (an artifact, weights). The files of the roles in `need` must
        exist, else FileNotFoundError naming the folder, the missing files and `what` needs
        them (e.g. "--fit needs"). Each read below names its file when it is corrupt."""
        p = Path(path)
        folder = p.parent if p.is_file() else p
        wanted = f"{what or 'this command needs'} a finished `pgolf train`/`pgolf run` folder"
        wanted += f" ({', '.join(RUN_FILES[r] for r in need)})" if need else ""
        if not folder.is_dir():
            raise FileNotFoundError(f"{p} not found: {wanted}")
        run = cls(folder, create=False)
        missing = [RUN_FILES[r] for r in need if not run.file(r).is_file()]
        if missing:
            raise FileNotFoundError(f"{folder}: missing {', '.join(missing)}; {wanted}")
        return run

    @classmethod
    def find(cls, path: str | Path) -> RunDir | None:
        """The run folder `path` is or sits in (an artifact, weights), or None when it is not one
        (no config.json there)."""
        p = Path(path)
        folder = p if p.is_dir() else p.parent
        return cls(folder, create=False) if (folder / RUN_FILES["config"]).is_file() else None

    def _read_json(self, role: str) -> Any:
        f = self.file(role)
        try:
            return json.loads(f.read_text(encoding="utf-8"))
        except UnicodeDecodeError as e:
            raise ValueError(f"{f}: not UTF-8 text ({e}); restore it or re-run") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{f}: not valid JSON ({e}); restore it or re-run") from None
        except RecursionError:
            raise ValueError(f"{f}: nested too deeply to be a run's JSON") from None

    def config(self) -> C.RunConfig:
        """The run's resolved config (config.json), validated."""
        f, d = self.config_path, self._read_json("config")
        if not isinstance(d, dict):
            raise ValueError(f"{f}: expected a JSON object (a pgolf RunConfig)")
        try:
            cfg = C.from_dict(d)
            C.validate(cfg)
        except (TypeError, ValueError, KeyError) as e:
            raise ValueError(f"{f}: not a valid pgolf config ({e}); restore it or re-run") from None
        return cfg

    def read_result(self) -> dict[str, Any]:
        """result.json ({} when the run has none yet)."""
        if not self.result_path.exists():
            return {}
        d = self._read_json("result")
        if not isinstance(d, dict):
            raise ValueError(f"{self.result_path}: expected a JSON object")
        return d

    def log_text(self) -> str:
        """log.txt ("" when absent); bytes that are not UTF-8 are replaced."""
        f = self.log_path
        return f.read_text(encoding="utf-8", errors="replace") if f.is_file() else ""

    def weights(self, which: str = "final") -> Path:
        """The path of the run's `final` or `checkpoint` weights, which must exist."""
        f = self.file(which)
        if not f.is_file():
            raise FileNotFoundError(
                f"{f} not found: {self.path} has no {which} weights (a finished `pgolf train`/"
                "`pgolf run` folder has final_model.safetensors)"
            )
        return f

    def artifact_scored(self) -> bool:
        """Whether the run's record holds the scores of its current artifact: set by the run's
        evaluation (`pgolf run`, the first `pgolf eval` after `pgolf quantize`), cleared by a
        new artifact; older folders without the key count as scored when they hold a score."""
        res = self.read_result()
        if "artifact_scored" in res:
            return bool(res["artifact_scored"])
        return any(res.get(f"val_bpb_{s}") is not None for s in ARTIFACT_SCORES)

    # ------------------------------------------------------------------------------------------
    # Writing

    def open_log(self, cfg: C.RunConfig | None = None) -> None:
        """Send `log0` lines to `log.txt` (appending); with `cfg`, write the header and config.json.

        Idempotent: a second call only writes the header again if it was not written yet.
        """
        if not dist.info().is_main:
            return
        first = self._log is None
        if first:
            self.path.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "a", encoding="utf-8")  # noqa: SIM115
            dist.set_log_file(self._log)
        if cfg is not None and not self._header_done:
            self._header_done = True
            self.write_header(cfg)

    def write_header(self, cfg: C.RunConfig) -> None:
        """The header: run dir and code hash on the console; config and environment in the file."""
        _atomic_write_text(self.config_path, C.to_json(cfg) + "\n")
        dist.log0(f"run_dir:{self.path}")
        dist.log0(f"code_hash:{code_hash()}")
        dist.log0("config:" + json.dumps(C.to_dict(cfg), sort_keys=True), console=False)
        for line in config_env.report(os.environ):  # converted or not supported, never silent
            dist.log0(line)
        env = environment()
        smi = env.pop("nvidia_smi")
        for k, v in env.items():
            dist.log0(f"env:{k}:{v}", console=False)
        if smi:
            dist.log0("nvidia_smi:\n" + smi, console=False)

    def close(self) -> None:
        """Close the log and metrics files (and detach the log from `pgolf.dist`)."""
        if self._log is not None:
            dist.set_log_file(None)
            self._log.close()
            self._log = None
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def metric(self, **kv: Any) -> None:
        """Append one JSON line (`kv`, with tensors/numpy scalars as numbers) to metrics.jsonl."""
        if not dist.info().is_main:
            return
        if self._metrics is None:
            self.path.mkdir(parents=True, exist_ok=True)
            self._metrics = open(self.metrics_path, "a", encoding="utf-8")  # noqa: SIM115
        self._metrics.write(json.dumps(kv, default=json_default) + "\n")
        self._metrics.flush()

    def read_metrics(self) -> list[dict[str, Any]]:
        """metrics.jsonl's rows ([] when absent); a line that is no JSON object is refused,
        naming the file and the line."""
        f = self.metrics_path
        if not f.exists():
            return []
        rows = []
        for i, line in enumerate(f.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, RecursionError):
                row = None
            if not isinstance(row, dict):
                raise ValueError(f"{f}:{i}: not a JSON object; restore the file or re-run")
            rows.append(row)
        return rows

    def write_result(self, values: dict[str, Any]) -> dict[str, Any]:
        """The one writer of result.json: merge `values` into it (atomically), set the headline
        `val_bpb`/`val_loss` by `headline`, and return the merged dict. Stages record their own
        scores as `val_bpb_<stage>`/`val_loss_<stage>` and never set the headline themselves."""
        merged = {**self.read_result(), **values}
        merged.update(headline(merged))
        if dist.info().is_main:
            text = json.dumps(merged, indent=2, sort_keys=True, default=json_default)
            _atomic_write_text(self.result_path, text + "\n")
        return merged

    def record_artifact(self, values: dict[str, Any]) -> dict[str, Any]:
        """A new artifact of the run (`pgolf quantize`): its sizes into result.json, the old
        artifact's scores cleared; the next `pgolf eval` of it on the run's data is the run's.
        The log gets an `artifact_replaced:` line: the evaluation lines above it scored the old
        artifact (`pgolf.lab.records.results.parse_log` counts only those after it)."""
        dist.log0(
            f"{ARTIFACT_REPLACED} {values.get('artifact_path')} (evaluation lines above this one "
            "scored the previous artifact)",
            console=False,
        )
        cleared = {f"val_{m}_{s}": None for s in ARTIFACT_SCORES for m in ("bpb", "loss")}
        return self.write_result({**cleared, **values, "artifact_scored": False})

    def record_scores(self, values: dict[str, Any]) -> dict[str, Any]:
        """The run's own evaluation of its artifact (`pgolf run`, or the first `pgolf eval`)."""
        return self.write_result({**values, "artifact_scored": True})


# ----------------------------------------------------------------------------------------------
# Log lines in the challenge's shapes (spec pr1550-stack 10.1); pgolf's extras on lines of their own

CODEC_TAG = {"brotli": "BROT", "lzma": "LZMA", "zstd": "ZSTD"}


def train_header(
    cfg: C.RunConfig, ddir: Path, val_tokens: int, n_params: int, accum: int, device: torch.device
) -> list[str]:
    """The training header: loaders, parameters, world and attention backends as the records
    print them, then pgolf's device/thread line."""
    shards = len(list(ddir.glob("*_train_*.bin")))
    sdp = torch.backends.cuda
    return [
        f"train_loader:dataset:{ddir.name} train_shards:{shards}",
        f"val_loader:shards pattern={ddir}/*_val_*.bin tokens:{val_tokens}",
        f"data_loader:kind:{cfg.data.loader} path:{ddir}",
        f"model_params:{n_params}",
        f"world_size:{dist.info().world_size} grad_accum_steps:{accum}",
        f"sdp_backends:cudnn={sdp.cudnn_sdp_enabled()} flash={sdp.flash_sdp_enabled()} "
        f"mem_efficient={sdp.mem_efficient_sdp_enabled()} math={sdp.math_sdp_enabled()}",
        f"device:{device} threads:{torch.get_num_threads()} attn_backend:{cfg.model.attn_backend}",
    ]


def size_lines(cfg: C.RunConfig, model_bytes: int, code_bytes: int, code_desc: str) -> list[str]:
    """`Serialized model int6+BROT:`, `Code size:`, `Total submission size int6+BROT:` (the
    records' labels), then pgolf's `budget:` line with the cap and the margin."""
    q = cfg.quant
    tag = f"int{q.matrix_bits}+{CODEC_TAG.get(q.codec, q.codec.upper())}"
    total = model_bytes + code_bytes
    margin = q.byte_budget - total
    over = f" OVER BUDGET by {-margin} bytes" if margin < 0 else ""
    return [
        f"Serialized model {tag}: {model_bytes} bytes",
        f"Code size: {code_bytes} bytes",
        f"code_size:source:{code_desc}",
        f"Total submission size {tag}: {total} bytes",
        f"budget:cap:{q.byte_budget} total:{total} margin:{margin}{over}",
    ]
