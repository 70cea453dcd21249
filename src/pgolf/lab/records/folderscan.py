"""Reading a records folder that nobody vouches for: bounded, regular files only, by content.

* Only regular files inside the folder are opened: a symlink (wherever it points), a FIFO, a
  socket or a device anywhere in the folder is refused, naming it (`FolderError`, exit 2 from the
  CLI). Files are opened with O_NOFOLLOW | O_NONBLOCK and re-checked with fstat, so a swap after
  the scan cannot make us read a FIFO or follow a link.
* Text read as a log is bounded by `MAX_LOG_BYTES`, JSON by `MAX_JSON_BYTES` and its nesting by
  `MAX_JSON_DEPTH` (checked on the raw text before parsing, so no recursion limit is hit); the
  folder by `MAX_FILES` entries. The bounds are 20x the largest log and 250x the largest
  submission.json of the challenge's 78 labelled folders (205 KB and 4 KB); every regular
  expression run on them has bounded gaps and sees lines cut to 4,096 characters, so a crafted
  log at the bound is parsed in seconds.
* Logs are found by content (any name, any subfolder): a text file whose lines parse as a
  training log (`results.parse_log`) with an evaluation line or training steps. Claims are
  `submission.json`, else `submission_*.json`, else any JSON whose top level has `val_bpb`.
  Each seed maps to its logs with the reason (file name or the log's own `seed` line).
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pgolf.lab.records import accounting as A
from pgolf.lab.records import results as R
from pgolf.lab.records.rules import ClaimFloat

MAX_LOG_BYTES = 4 * 1024 * 1024
MAX_JSON_BYTES = 1024 * 1024
MAX_JSON_DEPTH = 64
MAX_FILES = 5000
TEXT_SUFFIXES = {".log", ".txt", ".out", ""}
CODE_SUFFIXES = {".py", ".c", ".cc", ".cpp", ".cu", ".cuh", ".h", ".hpp", ".sh", ".rs"}


class FolderError(ValueError):
    """A file of the folder that verify refuses to read (the message names it and says why)."""

    def __init__(self, path: Path | str, why: str) -> None:
        super().__init__(f"{path}: {why}")
        self.path = str(path)
        self.why = why


def _kind(mode: int) -> str | None:
    if stat.S_ISLNK(mode):
        return "a symlink (verify reads only regular files inside the folder)"
    if stat.S_ISFIFO(mode):
        return "a FIFO (verify reads only regular files)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device (verify reads only regular files)"
    if stat.S_ISSOCK(mode):
        return "a socket (verify reads only regular files)"
    return None


def scan(folder: Path) -> list[Path]:
    """Every regular file under `folder` (sorted); raises FolderError on anything else."""
    out: list[Path] = []
    n = 0
    for root, dirs, files in os.walk(folder, followlinks=False):
        for name in sorted(dirs + files):
            p = Path(root) / name
            n += 1
            if n > MAX_FILES:
                raise FolderError(folder, f"more than {MAX_FILES} entries; not a records folder")
            st = os.lstat(p)
            why = _kind(st.st_mode)
            if why:
                raise FolderError(p, why)
            if stat.S_ISREG(st.st_mode):
                out.append(p)
        dirs.sort()
    return sorted(out)


def read_bytes(path: Path, limit: int) -> bytes:
    """A regular file's bytes, refusing links, non-regular files and files over `limit`."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise FolderError(path, _kind(stat.S_IFLNK) or "a symlink") from None
        raise FolderError(path, f"cannot open ({e.strerror})") from None
    try:
        st = os.fstat(fd)
        why = _kind(st.st_mode)
        if why or not stat.S_ISREG(st.st_mode):
            raise FolderError(path, why or "not a regular file")
        if st.st_size > limit:
            raise FolderError(path, f"{st.st_size} bytes, over the {limit}-byte bound for it")
        chunks, got = [], 0
        while got <= limit:
            b = os.read(fd, min(1 << 20, limit + 1 - got))
            if not b:
                break
            chunks.append(b)
            got += len(b)
        if got > limit:
            raise FolderError(path, f"grew past the {limit}-byte bound while read")
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_text(path: Path, limit: int = MAX_LOG_BYTES) -> str:
    return read_bytes(path, limit).decode("utf-8", errors="replace")


def json_depth(text: str) -> int:
    """Deepest bracket nesting of a JSON text (strings skipped), without recursion."""
    depth = best = 0
    in_str = esc = False
    for ch in text:
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            best = max(best, depth)
        elif ch in "]}":
            depth -= 1
    return best


def load_json(path: Path) -> Any:
    """JSON with bounded size and depth; floats keep their text (`rules.ClaimFloat`)."""
    text = read_text(path, MAX_JSON_BYTES)
    d = json_depth(text)
    if d > MAX_JSON_DEPTH:
        raise FolderError(path, f"JSON nested {d} deep, over the bound {MAX_JSON_DEPTH}")
    try:
        return json.loads(text, parse_float=ClaimFloat)
    except (json.JSONDecodeError, ValueError) as e:
        raise FolderError(path, f"not valid JSON ({e})") from None


_NAME_SEED = [
    re.compile(r"seed[_\-=]?(\d+)", re.I),
    re.compile(r"(?:^|[_\-])s(\d+)(?=[_\-.])", re.I),
    re.compile(r"[_\-](\d+)(?:_[a-z0-9]+)*\.(?:log|txt)$", re.I),
]
_CONTENT_SEED = re.compile(r"^\s*(?:seed|SEED|Seed)\s*[:=]\s*(\d+)\s*$|\bseed[:=](\d+)\b")


@dataclass(frozen=True)
class LogFile:
    path: Path
    rel: str
    facts: R.LogFacts
    text: str
    seed: int | None
    seed_how: str  # "file name" / "log content" / "unknown"


@dataclass
class Folder:
    path: Path
    files: list[Path]
    claims_path: Path | None = None
    claims: dict[str, Any] | None = None
    logs: list[LogFile] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def rel(self, p: Path) -> str:
        return str(p.relative_to(self.path))


def _seed_of(rel: str, facts: R.LogFacts, text: str) -> tuple[int | None, str]:
    name = Path(rel).name
    for rx in _NAME_SEED:
        if m := rx.search(name):
            return int(m[1]), "file name"
    if facts.seed is not None:
        return facts.seed, "log content"
    for line in text.splitlines()[:400]:
        if m := _CONTENT_SEED.search(line):
            return int(m[1] or m[2]), "log content"
    return None, "unknown"


def _is_log(f: R.LogFacts, text: str) -> bool:
    return bool(f.evals) or f.steps is not None or A.last_train_loss(text) is not None


def discover(folder: Path) -> Folder:
    files = scan(folder)
    fo = Folder(folder, files)
    jsons = [p for p in files if p.suffix == ".json"]
    order = (
        [p for p in jsons if p.name == "submission.json" and p.parent == folder]
        + sorted(
            p for p in jsons if p.name.startswith("submission") and p.name != "submission.json"
        )
        + [p for p in jsons if not p.name.startswith("submission")]
    )
    for p in order:
        doc = load_json(p)
        if isinstance(doc, dict) and ("val_bpb" in doc or p.name.startswith("submission")):
            fo.claims_path, fo.claims = p, doc
            break
    for p in files:
        if p.suffix.lower() not in TEXT_SUFFIXES or p.name.lower().startswith(
            ("readme", "requirements")
        ):
            continue
        text = read_text(p)
        facts = R.parse_log(text)
        rel = fo.rel(p)
        if not _is_log(facts, text):
            fo.skipped.append(rel)
            continue
        seed, how = _seed_of(rel, facts, text)
        fo.logs.append(LogFile(p, rel, facts, text, seed, how))
    return fo
