"""FineWeb from the challenge's hub: the published shard exports, and CaseOps shards built from the
hub's document list.

* `download_fineweb` - the hub's published exports, driven by its `manifest.json` like the
  reference downloader (spec pr1550-stack.md section 1.3), into OUT/datasets/fineweb10B_<variant>/
  and OUT/tokenizers/; resumable, every shard verified (header, size, sha256 when listed).
* `build_fineweb_caseops` - the first `NUM_VAL_DOCS` documents of `docs_selected.jsonl` as the
  validation split and the rest as training, through the CaseOps transform, with the byte
  sidecar; written by the shard writer of `datasets`.
"""

from __future__ import annotations

import contextlib
import gzip
import itertools
import json
import lzma
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pgolf import data as D
from pgolf.bpb import load_sp
from pgolf.dist import log0, progress
from pgolf.lab.data import caseops as K
from pgolf.lab.data import datasets as S


def _expected_sha(entry: dict[str, Any], rel: str) -> str | None:
    """A sha256 listed for `rel` under the entry's `sha256` or `files` table, if any."""
    for table in (entry.get("sha256"), entry.get("files")):
        v = table.get(rel) or table.get(Path(rel).name) if isinstance(table, dict) else None
        v = v.get("sha256") if isinstance(v, dict) else v
        if isinstance(v, str):
            return v
    return None


def _check_file(path: Path, sha: str | None) -> Path:
    if path.suffix == ".bin":
        D.read_header(path)
    if sha and D.sha256_file(path) != sha:
        raise D.ShardError(f"{path}: sha256 differs from the hub manifest; delete it, re-download")
    return path


def download_fineweb(
    variant: str,
    train_shards: int,
    out: Path,
    repo_id: str | None = None,
    remote_root: str | None = None,
    fetch: Callable[..., str] | None = None,
) -> Path:
    """Download a FineWeb export (val shards, the first `train_shards` train shards, tokenizer)
    into OUT/datasets/fineweb10B_<variant> (returned); `fetch(repo_id=, filename=,
    repo_type="dataset")` gives a local path (default `huggingface_hub.hf_hub_download`)."""
    if fetch is None:
        from huggingface_hub import hf_hub_download as fetch
    out = Path(out)
    repo = repo_id or os.environ.get("MATCHED_FINEWEB_REPO_ID") or "willdepueoai/parameter-golf"
    if remote_root is None:
        remote_root = os.environ.get("MATCHED_FINEWEB_REMOTE_ROOT_PREFIX", "datasets")
    root = remote_root.strip("/")
    if not re.fullmatch(r"sp\d+|byte260", variant):
        raise ValueError(f"variant {variant!r} must look like sp1024, sp8192 or byte260")

    def get(rel: str, sha: str | None = None, refetch: bool = False) -> Path:
        dest = out / rel
        if dest.is_file() and not refetch:
            with contextlib.suppress(D.ShardError):
                return _check_file(dest, sha)
            log0(f"data: {dest} failed verification; downloading it again")
        remote = f"{root}/{rel}" if root else rel
        log0(f"data: fetching {repo}:{remote}")
        src = Path(fetch(repo_id=repo, filename=remote, repo_type="dataset")).resolve()
        dest.parent.mkdir(parents=True, exist_ok=True)

        def place(tmp: Path) -> None:  # hard link out of the hub cache where possible
            try:
                os.link(src, tmp)
            except OSError:
                shutil.copyfile(src, tmp)

        D.write_atomically(dest, place)  # unlinks tmp (a rename of one file's two links is a no-op)
        try:
            _check_file(dest, sha)
        except D.ShardError:
            dest.unlink()
            raise
        return dest

    try:
        manifest = S.read_json(get("manifest.json", refetch=True))
    except Exception as e:  # offline: use the copy of an earlier download
        if not (out / "manifest.json").is_file():
            raise
        log0(f"data: warning: using the local manifest.json ({e})")
        manifest = S.read_json(out / "manifest.json")
    name = f"fineweb10B_{variant}"
    entry = next((d for d in manifest.get("datasets", []) if d.get("name") == name), None)
    if entry is None:
        have = [d.get("name") for d in manifest.get("datasets", [])]
        hint = "for sp8192 set MATCHED_FINEWEB_REPO_ID=kevclark/parameter-golf"
        raise ValueError(f"{name} is not in {repo}/{root}/manifest.json ({have}); {hint}")
    stats = entry.get("stats") or {}
    n_train, n_val = int(stats.get("files_train", 0)), int(stats.get("files_val", 0))
    if not 0 <= train_shards <= n_train:
        raise ValueError(f"{name} has {n_train} train shards on {repo}; asked for {train_shards}")
    for split, n in (("val", n_val), ("train", train_shards)):
        for i in progress(range(n), desc=f"fetch {split} shards"):
            rel = f"datasets/{name}/fineweb_{split}_{i:06d}.bin"
            get(rel, _expected_sha(entry, rel))
    tok_name = entry.get("tokenizer_name")
    tok = next((t for t in manifest.get("tokenizers", []) if t.get("name") == tok_name), None)
    paths = [str(tok[k]) for k in ("model_path", "vocab_path", "path") if tok and tok.get(k)]
    if not paths:
        raise ValueError(f"tokenizer {tok_name!r} of {name} is missing from the hub manifest")
    for rel in paths:
        get(rel, _expected_sha(tok, rel))
    log0(f"data: {name} ready in {out / 'datasets' / name}")
    return out / "datasets" / name


NUM_VAL_DOCS = 50_000  # the challenge's validation set: the first 50,000 documents
DOCS_FILE = "docs_selected.jsonl"


def _jsonl_texts(path: Path) -> Iterator[str]:
    opener = {".xz": lzma.open, ".gz": gzip.open}.get(path.suffix, open)
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as e:
                raise ValueError(f"{path}: line {lineno} is not JSON ({e})") from None
            text = obj.get("text") if isinstance(obj, dict) else obj
            if not isinstance(text, str):
                raise ValueError(f"{path}: line {lineno}: expected an object with a 'text' string")
            yield text


def build_fineweb_caseops(
    out: Path,
    tokenizer: Path,
    docs: Path | None = None,
    val_docs: int = NUM_VAL_DOCS,
    max_train_docs: int = 0,
    shard_tokens: int = S.SHARD_TOKENS,
    fetch: Callable[..., str] | None = None,
    repo_id: str | None = None,
    remote_root: str | None = None,
) -> Path:
    """CaseOps shards of the challenge's FineWeb document list (`docs_selected.jsonl`, fetched
    from the hub when `docs` is None): the first `val_docs` documents are the validation split
    (with byte sidecars), the rest train (`max_train_docs` > 0 keeps only that many), streamed in
    bounded memory, into OUT/datasets/fineweb10B_sp{V}_caseops/ (returned) with its own
    manifest.json; the tokenizer (a CaseOps one, e.g. the record's) is copied to OUT/tokenizers/.
    Challenge issue #2127: the record's preparation script defaulted to 10,000 validation
    documents, so documents 10,000-49,999 of the validation set were trained on."""
    out, tokenizer = Path(out), Path(tokenizer)
    sp = load_sp(tokenizer)
    ops = K.TokenBytes(sp)  # refuses a tokenizer without the operator pieces
    if val_docs < 1:
        raise ValueError(f"--val-docs {val_docs}: the validation split needs documents")
    if val_docs != NUM_VAL_DOCS:
        log0(
            f"data: warning: {val_docs} validation documents, not the challenge's {NUM_VAL_DOCS}: "
            "the rest of the validation set lands in training (challenge issue #2127)"
        )
    if docs is None:
        if fetch is None:
            from huggingface_hub import hf_hub_download as fetch
        repo = repo_id or os.environ.get("MATCHED_FINEWEB_REPO_ID") or "willdepueoai/parameter-golf"
        root = remote_root or os.environ.get("MATCHED_FINEWEB_REMOTE_ROOT_PREFIX", "datasets")
        remote = f"{root.strip('/')}/{DOCS_FILE}" if root.strip("/") else DOCS_FILE
        log0(f"data: fetching {repo}:{remote} (the whole document list: tens of GB)")
        docs = Path(fetch(repo_id=repo, filename=remote, repo_type="dataset"))
    docs = Path(docs)
    if not docs.is_file():
        raise FileNotFoundError(f"documents {docs} not found: pass the challenge's {DOCS_FILE}")
    V = int(sp.vocab_size())
    name = f"fineweb10B_sp{V}_caseops"
    folder = out / "datasets" / name
    model_path = out / "tokenizers" / tokenizer.name
    with S.locked(folder):
        if tokenizer.resolve() != model_path.resolve():
            D.write_atomically(model_path, lambda tmp: shutil.copyfile(tokenizer, tmp))
        for stale in folder.glob("fineweb_*.bin"):
            stale.unlink()
        texts = _jsonl_texts(docs)
        stats = {
            "val": S.write_split(
                sp, itertools.islice(texts, val_docs), folder, "fineweb", "val", shard_tokens, ops
            )
        }
        if stats["val"]["docs"] < val_docs:
            raise ValueError(
                f"{docs} holds only {stats['val']['docs']} documents, fewer than "
                f"the {val_docs} validation documents asked for"
            )
        rest = itertools.islice(texts, max_train_docs) if max_train_docs > 0 else texts
        stats["train"] = S.write_split(sp, rest, folder, "fineweb", "train", shard_tokens, ops)
        rels = [f for st in stats.values() for f in st["bin_files"]]
        manifest = {
            "name": name,
            "format": S.SHARD_FORMAT,
            "split_rule": f"the first {val_docs} documents of {docs.name} are val, the rest train",
            "variants": {
                name: {
                    "recipe": {
                        "docs": docs.name,
                        "val_docs": val_docs,
                        "max_train_docs": max_train_docs,
                        "shard_tokens": shard_tokens,
                        "text_transform": K.NAME,
                        "tokenizer_sha256": D.sha256_file(model_path),
                    },
                    "tokenizer": {
                        "file": f"../../tokenizers/{model_path.name}",
                        "vocab_size": V,
                        "bos_id": S.BOS_ID,
                    },
                    "text_transform": K.NAME,
                    "byte_sidecar": S.SIDECAR_FORMAT,
                    "splits": stats,
                    "files": {rel: D.sha256_file(folder / rel) for rel in rels},
                }
            },
        }
        D.atomic_write(folder / "manifest.json", json.dumps(manifest, indent=1).encode("utf-8"))
    log0(f"data: built {folder}: " + ", ".join(f"{k} {v['tokens']}" for k, v in stats.items()))
    return folder
