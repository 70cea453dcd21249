"""Resumable checkpoints and plain weight files (safetensors; no pickle, house style section 5.7).

Model and EMA tensors are stored under `model/<name>` and `ema/<name>`; any nested state
(optimizer state dicts, the data loader's state, RNG states) is flattened: its tensors go into the
file as `<prefix>/<n>` and the structure around them into the file's string metadata as JSON, with
dictionaries written as key/value pair lists so integer keys (torch optimizers key their state by
int) survive. Files are written to a temporary name and renamed, so a crash never leaves a
half-written checkpoint. Only rank 0 writes; every rank may read.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, safe_open, save_file

from pgolf import dist
from pgolf.data import write_atomically

FORMAT = "pgolf-checkpoint-1"


def json_default(o: Any) -> Any:
    """JSON fallback for logs, metrics and checkpoint metadata: scalars, numpy scalars, paths."""
    if isinstance(o, torch.Tensor) and o.numel() == 1:
        return o.item()
    if hasattr(o, "item"):  # numpy scalars
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


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


def _save_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict) -> None:
    """Unique temporary file + rename (removed on any failure: a full disk leaves nothing)."""

    def write(tmp: Path) -> None:
        save_file(tensors, str(tmp), metadata=metadata)
        os.chmod(tmp, 0o644)  # safetensors creates 0600 files

    write_atomically(path, write)


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
        "meta": json.dumps(meta or {}, default=json_default),
        "state": json.dumps(structure),
        "has_ema": "1" if ema is not None else "0",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    _save_safetensors(path, tensors, metadata)
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
        plain = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state_dict.items()}
        _save_safetensors(path, plain, {"meta": json.dumps(meta or {}, default=json_default)})
    return path
