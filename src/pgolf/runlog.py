"""Run folders: the text log and its header, metrics, results and resumable checkpoints.

A run folder (house style section 5.6) holds

* `log.txt` - every `pgolf.dist.log0` line of the run. It starts with a header the console does
  not echo (like the challenge's per-run log, spec section 10.1): the code hash (sha256 of the
  concatenated `src/pgolf/*.py` sources), the resolved config as JSON, and the environment
  (Python, torch, CUDA, GPU name, `nvidia-smi`, hostname, world size, git commit);
* `config.json` - the resolved `RunConfig`;
* `metrics.jsonl` - one JSON object per line (`RunDir.metric`);
* `result.json` - the run's summary, merged and rewritten atomically by `RunDir.write_result`;
* `checkpoint.safetensors` / `final_model.safetensors` - see below.

Checkpoints are safetensors files (no pickle, house style section 5.7). Model and EMA tensors are
stored under `model/<name>` and `ema/<name>`; any nested state (optimizer state dicts, the data
loader's state, RNG states) is flattened: its tensors go into the file as `<prefix>/<n>` and the
structure around them into the file's string metadata as JSON, with dictionaries written as
key/value pair lists so integer keys (torch optimizers key their state by int) survive. Files are
written to a temporary name and renamed, so a crash never leaves a half-written checkpoint.

Only rank 0 writes anything; every rank may read.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import torch
from safetensors.torch import load_file, safe_open, save_file

from pgolf import config as C
from pgolf import dist

FORMAT = "pgolf-checkpoint-1"


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
    time is rank 0's, broadcast, so every rank of a torchrun job names the same folder."""
    if cfg.train.run_dir:
        return Path(cfg.train.run_dir)
    now = torch.tensor([time.time()], dtype=torch.float64, device=dist.info().device)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(float(dist.broadcast_(now).item())))
    return Path(root) / f"{stamp}_{cfg.preset}_s{cfg.train.seed}"


def _json_default(o: Any) -> Any:
    if isinstance(o, torch.Tensor) and o.numel() == 1:
        return o.item()
    if hasattr(o, "item"):  # numpy scalars
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class RunDir:
    """One run's folder. Creating it makes the folder (on rank 0); nothing else is written yet."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._log: TextIO | None = None
        self._metrics: TextIO | None = None
        self._header_done = False
        if dist.info().is_main:
            self.path.mkdir(parents=True, exist_ok=True)

    log_path = property(lambda self: self.path / "log.txt")
    config_path = property(lambda self: self.path / "config.json")
    metrics_path = property(lambda self: self.path / "metrics.jsonl")
    result_path = property(lambda self: self.path / "result.json")
    checkpoint_path = property(lambda self: self.path / "checkpoint.safetensors")
    final_model_path = property(lambda self: self.path / "final_model.safetensors")

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

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
        self._metrics.write(json.dumps(kv, default=_json_default) + "\n")
        self._metrics.flush()

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        lines = self.metrics_path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def read_result(self) -> dict[str, Any]:
        return json.loads(self.result_path.read_text()) if self.result_path.exists() else {}

    def write_result(self, values: dict[str, Any]) -> dict[str, Any]:
        """Merge `values` into result.json (atomically) and return the merged dict."""
        merged = {**self.read_result(), **values}
        if dist.info().is_main:
            text = json.dumps(merged, indent=2, sort_keys=True, default=_json_default)
            _atomic_write_text(self.result_path, text + "\n")
        return merged


# ----------------------------------------------------------------------------------------------
# Checkpoints


def _flatten(obj: Any, prefix: str, out: dict[str, torch.Tensor]) -> Any:
    """Replace the tensors in a nested structure by `{"__t": key}` (tensor stored in `out`)."""
    if isinstance(obj, torch.Tensor):
        key = f"{prefix}/{len(out)}"
        out[key] = obj.detach().to("cpu", copy=True).contiguous()
        return {"__t": key}
    if isinstance(obj, dict):
        return {"__d": [[k, _flatten(v, prefix, out)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple": [_flatten(v, prefix, out) for v in obj]}
    if isinstance(obj, list):
        return [_flatten(v, prefix, out) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"runlog: cannot store {type(obj).__name__} in a checkpoint")


def _unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__t" in obj:
            return tensors[obj["__t"]]
        if "__d" in obj:
            return {k: _unflatten(v, tensors) for k, v in obj["__d"]}
        if "__tuple" in obj:
            return tuple(_unflatten(v, tensors) for v in obj["__tuple"])
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    return obj


def _named(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}/{k}": v.detach().to("cpu", copy=True).contiguous() for k, v in sd.items()}


def rng_state() -> dict[str, Any]:
    """Torch CPU and CUDA generator states."""
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        states = list(state["cuda"])[: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(states)


@dataclass
class Checkpoint:
    """What `load_checkpoint` returns (all tensors on CPU)."""

    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor] | None
    state: dict[str, Any] = field(default_factory=dict)
    """Nested state (e.g. `optim`, `loader`, `rng`) with tensors restored in place."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Scalars: step, train_ms, recurrence, ... plus `config` (the RunConfig dict) when saved."""


def save_checkpoint(
    path: str | Path,
    model: dict[str, torch.Tensor],
    ema: dict[str, torch.Tensor] | None = None,
    state: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically (tmp + rename); rank 0 only. Returns the path."""
    path = Path(path)
    if not dist.info().is_main:
        return path
    tensors = _named(model, "model")
    if ema is not None:
        tensors.update(_named(ema, "ema"))
    structure = _flatten(state or {}, "state", tensors)
    metadata = {
        "format": FORMAT,
        "meta": json.dumps(meta or {}, default=_json_default),
        "state": json.dumps(structure),
        "has_ema": "1" if ema is not None else "0",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    os.chmod(tmp, 0o644)  # safetensors creates 0600 files
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a file written by `save_checkpoint` (CPU tensors)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist (pass a *.safetensors file)")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error type for a bad header
        raise ValueError(f"{path} is not a readable safetensors checkpoint ({e})") from e
    if metadata.get("format") != FORMAT:
        raise ValueError(
            f"{path} is not a pgolf checkpoint (format {metadata.get('format')!r}, "
            f"expected {FORMAT!r}); final_model.safetensors holds weights only"
        )
    tensors = load_file(str(path))
    groups: dict[str, dict[str, torch.Tensor]] = {"model": {}, "ema": {}}
    for k, v in tensors.items():
        head, _, rest = k.partition("/")
        if head in groups:
            groups[head][rest] = v
    state = _unflatten(json.loads(metadata["state"]), tensors)
    return Checkpoint(
        model=groups["model"],
        ema=groups["ema"] if metadata.get("has_ema") == "1" else None,
        state=state,
        meta=json.loads(metadata["meta"]),
    )


def save_weights(
    path: str | Path, state_dict: dict[str, torch.Tensor], meta: dict[str, Any] | None = None
) -> Path:
    """Plain safetensors weights (e.g. `final_model.safetensors`), atomically; rank 0 only."""
    path = Path(path)
    if dist.info().is_main:
        tmp = path.with_name(path.name + ".tmp")
        plain = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state_dict.items()}
        save_file(plain, str(tmp), {"meta": json.dumps(meta or {}, default=_json_default)})
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    return path
