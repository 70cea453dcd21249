"""Tampered copies of merged records: each a known defect, labelled with the check that must
name it. Written under `.fetched/tampered/<id>/` with `labels.json`; never committed.

    python benchmarks/corpus/fetch.py     # first: the merged records
    python benchmarks/corpus/tamper.py    # then: 15 defects x 2 base records = 30 copies

The bases are two merged records of different eras (an sp1024 March record and an sp8192
CaseOps April record, both with 8-decimal claims and per-seed results) that `pgolf verify`
accepts untouched; `benchmarks/review_verify.py` reads the labels.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import fetch

OUT = fetch.OUT.parent / "tampered"
BASES = [
    "m10-2026-03-25_ValCalib_GPTQ_XSA_BigramHash3072",
    "m10-2026-04-18_PR1626_CaseOps_Taper",
]
_FINAL_BPB = re.compile(r"(val_bpb[:=]\s*)(\d+\.\d+)")


def _logs(d: Path) -> list[Path]:
    return sorted(p for p in d.glob("train_seed*.log"))


def _sub(d: Path) -> dict:
    return json.loads((d / "submission.json").read_text())


def _put(d: Path, sub: dict) -> None:
    (d / "submission.json").write_text(json.dumps(sub, indent=1))


def _last_digit(text: str) -> str:
    """`1.08217956` -> `1.08217957` (the last printed digit, +1 mod 10)."""
    return text[:-1] + str((int(text[-1]) + 1) % 10)


def score_last_digit(d: Path) -> None:
    raw = (d / "submission.json").read_text()
    m = re.search(r'("val_bpb"\s*:\s*)(\d+\.\d+)', raw)
    (d / "submission.json").write_text(raw[: m.start(2)] + _last_digit(m[2]) + raw[m.end(2) :])


def claim_trailing_zeros(d: Path) -> None:
    """The claim printed at 5 decimals with trailing zeros one unit off the logs' mean."""
    raw = (d / "submission.json").read_text()
    m = re.search(r'("val_bpb"\s*:\s*)(\d+\.\d+)', raw)
    v = round(float(m[2]), 5) + 1e-5
    (d / "submission.json").write_text(raw[: m.start(2)] + f"{v:.5f}" + raw[m.end(2) :])


def seed_claim_edit(d: Path) -> None:
    sub = _sub(d)
    k = next(iter(sub["seed_results"]))
    sub["seed_results"][k]["val_bpb"] = round(float(sub["seed_results"][k]["val_bpb"]) - 2e-3, 8)
    _put(d, sub)


def bytes_over_cap(d: Path) -> None:
    p = _logs(d)[0]
    t = p.read_text()
    t = re.sub(r"(Total submission size[^:]*:\s*)(\d+)", lambda m: m[1] + "16000123", t)
    t = re.sub(
        r"(Serialized model[^:]*(?:int|quant|zlib|zstd|brotli|lzma)[^:]*:\s*)(\d+)",
        lambda m: m[1] + "15990000",
        t,
    )
    p.write_text(t)


def missing_seed_log(d: Path) -> None:
    _logs(d)[-1].unlink()


def symlinked_log(d: Path) -> None:
    p = _logs(d)[0]
    p.unlink()
    p.symlink_to("/etc/passwd")


def fifo_log(d: Path) -> None:
    p = _logs(d)[0]
    p.unlink()
    os.mkfifo(p)


def junk_log(d: Path) -> None:
    with open(d / "train_seed777.log", "wb") as f:
        for _ in range(17):
            f.write(b"x" * (1 << 20))


def nested_json(d: Path) -> None:
    (d / "submission.json").write_text("[" * 200_000 + "]" * 200_000)


def inflated_code(d: Path) -> None:
    """The shipped code grows past what the logs counted and over the cap with the model."""
    p = d / "train_gpt.py"
    p.write_bytes(p.read_bytes() + b"#" * 120_000 + b"\n")


def train_time_over(d: Path) -> None:
    p = _logs(d)[0]
    t = p.read_text()
    t = re.sub(r"(stopping_early:.*?train_time:\s*)(\d+)", lambda m: m[1] + "652000", t)
    p.write_text(t)


def eval_time_over(d: Path) -> None:
    p = _logs(d)[0]
    t = p.read_text().splitlines()
    idx = max(i for i, ln in enumerate(t) if _FINAL_BPB.search(ln) and "eval_time" in ln)
    t[idx] = re.sub(r"eval_time:\s*\d+", "eval_time:712000", t[idx])
    p.write_text("\n".join(t) + "\n")


def pre_quant_ttt(d: Path) -> None:
    """TTT epochs over the validation tokens logged before the quantized artifact."""
    for p in _logs(d):
        t = p.read_text().splitlines()
        idx = next(
            i
            for i, ln in enumerate(t)
            if re.match(r"(Serialized model|Total submission size)", ln)
            and re.search(r"int|quant|zlib|brotli|lzma", ln)
        )
        t[idx:idx] = [
            f"ttt:epoch {k}/3 loss:{2.9 - k / 50:.4f} time:{14.2 * k:.1f}s" for k in (1, 2, 3)
        ]
        p.write_text("\n".join(t) + "\n")


def byte_accounting(d: Path) -> None:
    """Every bpb 15 % lower (a double-counted leading space), claims to match."""
    for p in _logs(d):
        t = p.read_text()
        t = _FINAL_BPB.sub(lambda m: m[1] + f"{float(m[2]) / 1.17:.{len(m[2].split('.')[1])}f}", t)
        p.write_text(t)
    sub = _sub(d)
    for k in ("val_bpb",):
        sub[k] = round(float(sub[k]) / 1.17, 8)
    for v in (sub.get("seed_results") or {}).values():
        if "val_bpb" in v:
            v["val_bpb"] = round(float(v["val_bpb"]) / 1.17, 8)
    _put(d, sub)


def val_subset(d: Path) -> None:
    for p in _logs(d):
        t = p.read_text()
        if re.search(r"\bval_tokens[:=]\s*\d+", t):
            t = re.sub(r"(\bval_tokens[:=]\s*)(\d+)", lambda m: m[1] + "9662464", t)
        else:
            t = "val_tokens: 9662464\n" + t
        p.write_text(t)


def log_val_edit(d: Path) -> None:
    """One seed's final score edited in its log (the claims untouched)."""
    p = _logs(d)[1]
    t = p.read_text().splitlines()
    idx = max(i for i, ln in enumerate(t) if _FINAL_BPB.search(ln))
    t[idx] = _FINAL_BPB.sub(lambda m: m[1] + f"{float(m[2]) - 0.004:.8f}", t[idx])
    p.write_text("\n".join(t) + "\n")


DEFECTS: list[tuple[str, Callable[[Path], None], str]] = [
    ("score_last_digit", score_last_digit, "aggregates"),
    ("claim_trailing_zeros", claim_trailing_zeros, "aggregates"),
    ("seed_claim_edit", seed_claim_edit, "seed_results"),
    ("bytes_over_cap", bytes_over_cap, "bytes_cap"),
    ("missing_seed_log", missing_seed_log, "seed_logs"),
    ("symlinked_log", symlinked_log, "refused"),
    ("fifo_log", fifo_log, "refused"),
    ("junk_log_17MB", junk_log, "refused"),
    ("nested_json", nested_json, "refused"),
    ("inflated_code", inflated_code, "bytes_cap"),
    ("train_time_over", train_time_over, "train_time"),
    ("eval_time_over", eval_time_over, "eval_time"),
    ("pre_quant_ttt", pre_quant_ttt, "val_training"),
    ("byte_accounting", byte_accounting, "byte_accounting"),
    ("val_subset", val_subset, "eval_subset"),
]


def main() -> int:
    entries = {e["id"]: e for e in fetch.load_entries([fetch.HERE / "folders.json"])}
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    labels = []
    for base in BASES:
        src = fetch.entry_dir(entries[base])
        for name, fn, check in DEFECTS:
            tid = f"{name}--{base[:40]}"
            dest = OUT / tid / "records" / "track_10min_16mb" / src.name
            shutil.copytree(src, dest, symlinks=True)
            fn(dest)
            labels.append(
                {
                    "id": f"{tid}/records/track_10min_16mb/{src.name}",
                    "base": base,
                    "defect": name,
                    "expected": {
                        "verdict": "not_checkable" if check == "refused" else "reject",
                        "check": check,
                    },
                }
            )
    (OUT / "labels.json").write_text(json.dumps(labels, indent=1) + "\n")
    print(f"wrote {len(labels)} tampered copies under {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
