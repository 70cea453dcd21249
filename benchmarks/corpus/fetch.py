"""Materialize the labelled corpus from the challenge's mirror into `.fetched/corpus/`.

Manifests are the `*.json` files next to this script (`folders.json`, later `scripts.json`):
`{"entries": [ENTRY, ...]}`, each ENTRY with

* `id` (unique over all manifests; the folder name under `.fetched/corpus/`), `kind`:
  `folder` (every file under `path` at `commit`) or `script` (the one file `path`);
* `pr` (number or null), `ref` (the git ref it was resolved from: `HEAD` for merged records,
  `refs/pull/N/head` for a PR head), `commit` (the resolved sha), `path`;
* `files`: `{relative path: sha256}` (kind folder) or `sha256` (kind script);
* the labels (`track`, `expected`, `source`), read by the review scripts, not here.

Nothing fetched is committed (`.fetched/` is git-ignored). The mirror is the bare clone of
openai/parameter-golf (`PGOLF_MIRROR` overrides its path). Usage:

    python benchmarks/corpus/fetch.py              # every manifest, every entry
    python benchmarks/corpus/fetch.py --only ID... # some entries
    python benchmarks/corpus/fetch.py --pin        # (maintainers) resolve ref -> commit and
                                                   # record the hashes in the manifests

Another manifest reuses this module: `load_entries()`, `materialize(entry)`, `entry_dir(entry)`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
OUT = ROOT / ".fetched" / "corpus"
MIRROR = Path(os.environ.get("PGOLF_MIRROR", "/work/.mirror/openai+parameter-golf/repo"))
KINDS = ("folder", "script")


def _git(*args: str) -> bytes:
    return subprocess.run(["git", "-C", str(MIRROR), *args], check=True, capture_output=True).stdout


def manifests() -> list[Path]:
    return sorted(HERE.glob("*.json"))


def load_entries(paths: list[Path] | None = None) -> list[dict[str, Any]]:
    """Every entry of the manifests, each with `_manifest` (its file); ids must be unique."""
    out, seen = [], {}
    for m in paths or manifests():
        for e in json.loads(m.read_text())["entries"]:
            if e["kind"] not in KINDS:
                raise ValueError(f"{m.name}: entry {e['id']}: kind must be one of {KINDS}")
            if e["id"] in seen:
                raise ValueError(f"{m.name}: id {e['id']} already in {seen[e['id']]}")
            seen[e["id"]] = m.name
            out.append({**e, "_manifest": m})
    return out


def entry_dir(entry: dict[str, Any]) -> Path:
    """`.fetched/corpus/<id>/<path>` for a folder (the repository's layout is kept, so the
    folder's parent names its track), `.fetched/corpus/<id>/` for a script."""
    return OUT / entry["id"] / entry["path"] if entry["kind"] == "folder" else OUT / entry["id"]


def _tree(commit: str, path: str) -> list[tuple[str, str, str]]:
    """(mode, blob sha, path relative to `path`) of every file under `path` at `commit`."""
    raw = _git("ls-tree", "-r", "-z", commit, "--", path.rstrip("/") + "/")
    rows = []
    for item in raw.split(b"\0"):
        if not item:
            continue
        meta, name = item.split(b"\t", 1)
        mode, typ, sha = meta.decode().split()
        if typ == "blob":
            rows.append((mode, sha, name.decode()[len(path.rstrip("/")) + 1 :]))
    return rows


ABSENT = (
    "absent:"  # a file whose blob the mirror lacks (its largest files): "absent:<git blob sha>"
)


def _blob(sha: str) -> bytes | None:
    p = subprocess.run(["git", "-C", str(MIRROR), "cat-file", "blob", sha], capture_output=True)
    return p.stdout if p.returncode == 0 else None


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _files_at(entry: dict[str, Any], commit: str) -> dict[str, bytes | str]:
    """Relative path -> content, or `absent:<blob sha>` where the mirror lacks the blob."""
    if entry["kind"] == "script":
        return {Path(entry["path"]).name: _git("show", f"{commit}:{entry['path']}")}
    out: dict[str, bytes | str] = {}
    for mode, sha, rel in _tree(commit, entry["path"]):
        if mode == "120000":  # a symlink in the tree: never materialized, never followed
            continue
        data = _blob(sha)
        out[rel] = ABSENT + sha if data is None else data
    return out


def _digest(v: bytes | str) -> str:
    return v if isinstance(v, str) else sha256(v)


def materialize(entry: dict[str, Any], check: bool = True) -> Path:
    """Write the entry's files under `.fetched/corpus/<id>/` (a folder entry: the folder's
    files; a script entry: the one file) and check each sha256 against the manifest."""
    dest = entry_dir(entry)
    files = _files_at(entry, entry["commit"])
    if check:
        want = (
            entry["files"]
            if entry["kind"] == "folder"
            else {Path(entry["path"]).name: entry["sha256"]}
        )
        got = {k: _digest(v) for k, v in files.items()}
        if got != want:
            bad = sorted(set(got) ^ set(want)) + [k for k in got if k in want and got[k] != want[k]]
            raise ValueError(f"{entry['id']}: files differ from the manifest: {bad[:5]}")
    for rel, data in files.items():
        if isinstance(data, str):  # absent from the mirror: listed in the manifest, not written
            continue
        p = dest / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if not p.is_file() or p.read_bytes() != data:
            p.write_bytes(data)
    return dest


def pin(paths: list[Path]) -> None:
    """Resolve each entry's ref to a commit (where none is pinned yet) and record the hashes."""
    for m in paths:
        doc = json.loads(m.read_text())
        for e in doc["entries"]:
            if not e.get("commit"):
                e["commit"] = _git("rev-parse", e["ref"]).decode().strip()
            files = _files_at(e, e["commit"])
            if e["kind"] == "folder":
                e["files"] = {k: _digest(v) for k, v in sorted(files.items())}
            else:
                e["sha256"] = _digest(next(iter(files.values())))
        m.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="*", help="entry ids")
    ap.add_argument("--pin", action="store_true", help="resolve refs and record hashes")
    ap.add_argument("--manifest", nargs="*", type=Path, help="manifests (default: all)")
    a = ap.parse_args(argv)
    paths = a.manifest or manifests()
    if a.pin:
        pin(paths)
        return 0
    n = 0
    for e in load_entries(paths):
        if a.only and e["id"] not in a.only:
            continue
        materialize(e)
        n += 1
    print(f"materialized {n} entries under {OUT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
