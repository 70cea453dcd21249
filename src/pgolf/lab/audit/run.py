"""`pgolf audit ARTIFACT`: load an artifact in this process, take a slice of its validation
stream and run the empirical tests of `pgolf.lab.audit` with an evaluation mode, plus the
artifact-level rows: T1.3 from the metadata (weights adapted on validation tokens: PR #1550's
pre-quant TTT) and the T4.4 budget checks (artifact + code bytes, train and eval time from the
run's result.json when it sits next to the artifact) and T2.5 for the run's own evaluation (the
validation targets its config scores against the canonical count of the shards; a run log's
`targets:` line must agree). Everything runs on the CPU, seeded.

`pgolf audit --train CONFIG_OR_RUN` (`audit_train`, T1.3): two short deterministic runs of the
config (TRAIN_DEFAULTS shrink it: 2 steps, 8,192 validation tokens, one small pre-quant epoch),
one on the real validation shards and one on a decoy of the same shape - random tokens drawn
from the ids the shard uses, BOS kept at the same positions (same documents and lengths). The
artifacts (tensors and metadata, data paths aside) must be byte-identical; opens of the
validation shards during each run are counted as evidence (reads alone are allowed: periodic
validation logging is legal when the artifact does not depend on it).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from pgolf import config as C
from pgolf import modes as M
from pgolf.lab.audit.base import MODES, Evaluator, Row, audit_scale, traced
from pgolf.lab.audit.conditions import audit, format_rows
from pgolf.runlog import RunDir

LIMIT_BYTES, LIMIT_SECONDS = 16_000_000, 600.0


@contextmanager
def one_thread() -> Iterator[None]:
    """One intra-op thread while auditing: the audit's shapes are small, single-threaded runs
    are bitwise repeatable, and on a shared 2-core machine two OpenMP threads waiting on each
    other made a --quick audit 16x slower (109 s against 6.6 s, docs/benchmarks.md "Audit")."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def run_coverage(path: Path, cfg, data_dir: Path) -> Row:
    """T2.5 for the run's evaluation: the targets its config scores on the full validation shards
    against their canonical count (all tokens of every val shard, minus one)."""
    import re

    from pgolf.data import find_shards, load_val_tokens, read_shard

    test = "T2.5 run scores the whole validation set"
    try:
        canon = sum(int(read_shard(f).size) for f in find_shards(data_dir, "val")) - 1
        scored = (
            load_val_tokens(
                data_dir, cfg.eval.eval_seq_len, cfg.data.max_val_tokens, cfg.model.vocab_size
            ).numel()
            - 1
        )
    except (OSError, ValueError) as e:
        return Row("C2", test, "n.a.", f"validation shards unreadable ({e})"[:160])
    run = RunDir(path.parent, create=False)  # the run the artifact sits in, if any
    own = Path(cfg.data.data_path or ".").resolve() == data_dir.resolve()  # the run's shards
    hits = re.findall(r"targets:(\d+)", run.log_text()) if own else []
    said = f"; {run.log_path.name} says {hits[-1]}" if hits else ""
    if hits and int(hits[-1]) != scored:
        return Row("C2", test, "fail", f"config scores {scored} targets{said}")
    short = canon - scored
    full = load_val_tokens(data_dir, cfg.eval.eval_seq_len, 0, cfg.model.vocab_size).numel() - 1
    if scored < full:
        return Row(
            "C2",
            test,
            "fail",
            f"data.max_val_tokens={cfg.data.max_val_tokens}: scores "
            f"{scored} of {canon} canonical targets (subset evaluation){said}",
        )
    ok = short < cfg.eval.eval_seq_len
    why = (
        f" - the loader's documented cut to k x eval_seq_len + 1 tokens drops the last {short}"
        if 0 < short < cfg.eval.eval_seq_len
        else ""
    )
    return Row(
        "C2", test, "pass" if ok else "fail", f"{scored} of {canon} canonical targets{why}{said}"
    )


def audit_stream(data_dir: Path, n: int, vocab: int, bos: int, sp, docs: int = 4):
    """(stream of about n + 1 validation tokens, how it was picked): the first n + 1 tokens when
    they open at least 3 documents, else the heads of the first `docs` documents - each its BOS
    and first pieces (the first a third longer: boundaries off the window grid), cut before a
    trailing run of byte pieces (no character split) - so T1.1's document-boundary cut, T1.4 and
    T2.4 see several documents even when documents are long (the default corpus: ~30k tokens each).
    Searches the first max(64 (n + 1), 2^20) validation tokens."""
    from pgolf.data import load_val_tokens

    head = load_val_tokens(data_dir, 1, n + 1, vocab)
    if int((head == bos).sum()) >= 3:
        return head, f"first {head.numel()} validation tokens"
    pool = load_val_tokens(data_dir, 1, max(64 * (n + 1), 1 << 20), vocab)
    starts = torch.nonzero(pool == bos).flatten().tolist()
    if len(starts) < 3:
        return head, f"first {head.numel()} validation tokens ({len(starts)} documents found)"
    k = min(docs, len(starts))
    ends = [*starts[1:], pool.numel()]
    parts, left, per = [], n + 1, (n + 1) // k
    for i in range(k):
        s, end = starts[i], ends[i]
        e = min(end, s + (left if i == k - 1 else per + (per // 3 if i == 0 else 0)))
        while e < end and e > s + 1 and sp.is_byte(int(pool[e - 1])):
            e -= 1
        parts.append(pool[s:e])
        left -= e - s
    out = torch.cat(parts)
    return out, f"heads of {k} validation documents, {out.numel()} tokens"


def artifact_rows(path: Path, cfg, meta: dict, data_dir: Path | None = None) -> list[Row]:
    """T1.3 (metadata), T2.5 (the run's coverage) and T4.4 (budget) rows for an artifact."""
    rows = [] if data_dir is None else [run_coverage(path, cfg, data_dir)]
    res = RunDir(path.parent, create=False).read_result()  # the run's, when next to it
    if M.MODES[cfg.ttt.mode].non_record or res.get("non_record"):
        rows.append(
            Row(
                "C1",
                "T1.3 artifact independent of validation data",
                "fail",
                "the weights were trained on the validation stream before quantization "
                "(ttt.mode=prequant, non-record)",
            )
        )
        rows.append(
            Row(
                "C3",
                "T3.2 no training on unscored validation tokens",
                "fail",
                "pre-quant TTT read every validation token with grad before any score",
            )
        )
    else:
        rows.append(
            Row(
                "C1",
                "T1.3 artifact independent of validation data",
                "n.a.",
                "no validation-trained stage in the metadata; the empirical test is "
                "`pgolf audit --train`",
            )
        )
    code = meta.get("code_bytes", res.get("code_bytes"))
    size = path.stat().st_size
    if code is None:
        rows.append(
            Row(
                "C4",
                "T4.4 artifact bytes (model + code)",
                "n.a.",
                f"model {size} bytes; code bytes unknown",
            )
        )
    else:
        total = size + int(code)
        rows.append(
            Row(
                "C4",
                "T4.4 artifact bytes (model + code)",
                "pass" if total <= LIMIT_BYTES else "fail",
                f"{size} + {int(code)} code = {total} <= {LIMIT_BYTES}",
            )
        )
    for key, what in (("train_seconds", "train"), ("eval_seconds", "eval")):
        if key in res:
            s = float(res[key])
            rows.append(
                Row(
                    "C4",
                    f"T4.4 {what} time",
                    "pass" if s <= LIMIT_SECONDS else "fail",
                    f"{s:.1f}s from result.json (limit {LIMIT_SECONDS:.0f}s; hardware of that run)",
                )
            )
        else:
            rows.append(Row("C4", f"T4.4 {what} time", "n.a.", f"no {key} in a result.json"))
    return rows


def audit_artifact(
    path: str | Path,
    mode: str | None = None,
    data: str | None = None,
    quick: bool = False,
    n_tokens: int | None = None,
    overrides: list[str] = (),
) -> tuple[list[Row], dict]:
    """(rows, info) for the artifact at `path` with evaluation `mode` (default: its own);
    `overrides` (`--set`) change the artifact's config for the audit (e.g. eval.ngram_tilt)."""
    from pgolf import bpb
    from pgolf.data import find_tokenizer
    from pgolf.pipeline import load_artifact_model

    t0 = time.perf_counter()
    torch.manual_seed(0)
    path = Path(path)
    with one_thread():  # the model's construction too (init, the meta-device shape check)
        cfg, model, meta = load_artifact_model(path, torch.device("cpu"))
    if overrides:
        cfg = C.apply_overrides(cfg, overrides)
        C.validate(cfg)
    mode = mode or M.eval_mode(cfg.ttt.mode)
    if mode not in MODES:
        raise ValueError(f"--ttt {mode!r}: use one of {', '.join(MODES)}")
    data_dir = Path(data) if data else Path(cfg.data.data_path)
    tok = find_tokenizer(data_dir) if data else Path(cfg.data.tokenizer_path)
    n = n_tokens or (512 if quick else 4096)
    sp = bpb.load_sp(tok)
    val, picked = audit_stream(data_dir, n, cfg.model.vocab_size, cfg.model.bos_id, sp)
    tables = bpb.build_byte_tables(str(tok), cfg.model.vocab_size)
    ev = Evaluator(mode, audit_scale(cfg, val.numel() - 1), tables, "cpu", sp)
    with one_thread():
        rows = audit(ev, model, val, quick=quick)
    rows += artifact_rows(path, cfg, meta, data_dir)
    info = {
        "artifact": str(path),
        "mode": mode,
        "targets": val.numel() - 1,
        "stream": picked,
        "seconds": time.perf_counter() - t0,
        "quick": quick,
        "failures": sum(r.verdict == "fail" for r in rows),
    }
    return rows, info


TRAIN_DEFAULTS = [
    "iterations=2",
    "max_val_tokens=8192",
    "warmup_steps=0",
    "val_loss_every=0",
    "ttt.prequant_epochs=1",
    "ttt.prequant_batch_seqs=4",
]


def main(
    artifact: str | None,
    ttt: str | None,
    data: str | None,
    as_json: bool,
    quick: bool,
    static: str | None = None,
    train: str | None = None,
    overrides: list[str] = (),
) -> tuple[str, int]:
    """The CLI's `pgolf audit`: (text to print, exit code: 1 on any failure); with --json the
    runs' log lines stay off stdout, so the printed text is JSON alone."""
    from pgolf import dist

    dist.set_quiet(as_json)
    try:
        return _main(artifact, ttt, data, as_json, quick, static, train, overrides)
    finally:
        dist.set_quiet(False)


def _main(
    artifact: str | None,
    ttt: str | None,
    data: str | None,
    as_json: bool,
    quick: bool,
    static: str | None = None,
    train: str | None = None,
    overrides: list[str] = (),
) -> tuple[str, int]:
    import tempfile
    from dataclasses import asdict

    if train:
        ov = TRAIN_DEFAULTS + ([f"data.data_path={data}"] if data else []) + list(overrides)
        with tempfile.TemporaryDirectory(prefix="pgolf-audit-") as tmp:
            rows = audit_train(train, ov, Path(tmp))
        fails = sum(r.verdict == "fail" for r in rows)
        if as_json:
            return json.dumps([asdict(r) for r in rows]), int(bool(fails))
        return "\n".join(
            [
                f"audit --train {train} ({' '.join(ov)})",
                *format_rows(rows),
                f"audit: {fails} failure(s)",
            ]
        ), int(bool(fails))

    if static:
        from pgolf.lab.audit.static import format_findings, screen

        found = screen(static)
        text = json.dumps([asdict(f) for f in found]) if as_json else format_findings(static, found)
        return text, 0
    if not artifact:
        raise ValueError("pgolf audit: give an ARTIFACT (or --static SCRIPT)")
    rows, info = audit_artifact(artifact, ttt, data, quick, overrides=list(overrides))
    if as_json:
        return json.dumps({**info, "rows": [asdict(r) for r in rows]}, indent=1), int(
            bool(info["failures"])
        )
    head = (
        f"audit {info['artifact']} mode:{info['mode']} targets:{info['targets']} "
        f"({info['stream']}; {info['seconds']:.1f}s, CPU)"
    )
    lines = [head, *format_rows(rows), f"audit: {info['failures']} failure(s)"]
    return "\n".join(lines), int(bool(info["failures"]))


def decoy_data(data_dir: Path, out: Path, bos: int, seed: int = 0) -> Path:
    """A copy of `data_dir` whose validation shards hold random tokens of the same shape: the
    ids the shard uses, drawn uniformly, BOS kept where it was; other files are symlinks."""
    import numpy as np

    from pgolf.data import find_shards, read_shard, write_shard

    out.mkdir(parents=True, exist_ok=True)
    vals = set(find_shards(data_dir, "val"))
    rng = np.random.default_rng(seed)
    for f in data_dir.iterdir():
        if f in vals:
            arr = np.asarray(read_shard(f)).astype(np.int64)
            ids = np.unique(arr[arr != bos])
            new = ids[rng.integers(0, max(1, ids.size), arr.size)] if ids.size else arr.copy()
            new[arr == bos] = bos
            write_shard(out / f.name, new)
        elif not (out / f.name).exists():
            (out / f.name).symlink_to(f.resolve())
    return out


def _fingerprint(path: Path) -> tuple[bytes, dict]:
    """(tensor payload bytes, metadata without data paths) of an artifact."""
    from pgolf import artifact

    tensors, meta = artifact.load_artifact(path)
    blob = artifact.build_payload(tensors, {})
    meta = dict(meta)
    cfg = dict(meta.pop("config", {}))
    cfg.pop("data", None)
    return blob, {**meta, "config": cfg}


def audit_train(config_or_run: str, overrides: list[str], work: Path) -> list[Row]:
    """T1.3 (module docstring): real vs decoy validation shards -> one row."""
    from dataclasses import replace
    from functools import partial

    from pgolf import config as C
    from pgolf import pipeline
    from pgolf.data import find_shards
    from pgolf.lab.bundle import code_size

    src = Path(config_or_run)
    if src.is_dir():
        why = "--train takes a preset name or a run folder; it needs"
        cfg = RunDir.open(src, what=why).config()
        cfg = C.apply_overrides(cfg, overrides) if overrides else cfg
        C.validate(cfg)
    else:
        cfg = C.load(config_or_run, overrides)
    cfg, data_dir, tok = pipeline.resolve_data(cfg)
    decoy = decoy_data(data_dir, work / "decoy_data", cfg.model.bos_id)
    code = code_size(cfg)  # built once: the bundle does not depend on the data folder
    arts, reads = [], []
    for name, d in (("real", data_dir), ("decoy", decoy)):
        c = replace(cfg, data=replace(cfg.data, data_path=str(d), tokenizer_path=str(tok)))
        vals = {f.name for f in find_shards(d, "val")}
        with one_thread():
            res, opened = traced(
                partial(pipeline.run, code_size=lambda _c: code), c, str(work / name)
            )
        arts.append(Path(res["artifact_path"]))
        reads.append(sum(o.startswith("open:") and o.rsplit("/", 1)[-1] in vals for o in opened))
    (a, ma), (b, mb) = _fingerprint(arts[0]), _fingerprint(arts[1])
    same = a == b and ma == mb
    why = "identical" if same else ("tensors differ" if a != b else "metadata differs")
    note = (
        f" (ttt.mode={cfg.ttt.mode} trains on the validation stream)"
        if M.MODES[cfg.ttt.mode].non_record
        else ""
    )
    return [
        Row(
            "C1",
            "T1.3 artifact independent of validation data",
            "pass" if same else "fail",
            f"real vs random-token decoy validation shards: artifacts {why} ({len(a)} payload "
            f"bytes; val shards opened {reads[0]}/{reads[1]} times){note}",
        )
    ]
