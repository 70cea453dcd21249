"""The static screen (`pgolf audit --static`) on small hand-written fixtures, one per pattern
of the challenge's rulings: packed code (each packing), score-first TTT whose scoring sits in an
enclosing loop or another function (legal), pre-quant TTT and SLOT (C3), target-in-key through an
assignment or the scored position (C1), a mixture formed for the realized token (C2) and its
renormalized twin (legal), multi-pass and oracle-min scoring (C4), subset limits vs batch sizes,
PEP 701 f-strings on this interpreter, and an `exec` that cannot be decoded (a warning)."""

from __future__ import annotations

import base64
import bz2
import gzip
import json
import lzma
import zlib

import brotli
import pytest

from pgolf.lab.audit import static as S
from pgolf.lab.audit import unpack as U

PREQUANT = """
import torch

def prequant_ttt(model, opt, val_tokens, epochs):
    model.eval()
    for ep in range(epochs):
        for s in range(0, len(val_tokens), 64):
            x = val_tokens[s:s + 64]
            loss = model(x[:-1], x[1:])
            loss.backward()
            opt.step()

def eval_val(model, val_tokens):
    loss_sum = 0.0
    with torch.no_grad():
        for s in range(0, len(val_tokens), 64):
            loss_sum += model(val_tokens[s:s + 64], val_tokens[s + 1:s + 65])
    return loss_sum

def main(model, opt, val_tokens):
    eval_val(model, val_tokens)
    prequant_ttt(model, opt, val_tokens, 3)
    return eval_val(model, val_tokens)
"""


def write(tmp_path, text, name="train_gpt.py"):
    p = tmp_path / name
    p.write_text(text)
    return p


def found(tmp_path, text, name="train_gpt.py"):
    return S.screen(write(tmp_path, text, name))


def rules(fs, grade=None):
    return {(f.rule, f.line) for f in fs if grade is None or f.grade == grade}


def test_prequant_ttt_is_a_violation_at_its_backward_even_after_model_eval(tmp_path) -> None:
    fs = found(tmp_path, PREQUANT)
    v = [f for f in fs if f.rule == "val-train"]
    # `model.eval()` (line 5) is not scoring; the backward at line 10 is flagged, with its reason
    assert [(f.line, f.grade, f.condition) for f in v] == [(10, "violation", "C3")]
    assert "line 22" in v[0].message and v[0].file == "train_gpt.py"
    assert "train_gpt.py:10" in v[0].evidence


SCORE_FIRST_NESTED = """
import torch

def eval_ttt(model, opt, val_tokens, chunks, epochs):
    loss_sum = 0.0
    for ci in range(chunks):
        chunk = val_tokens[ci * 64:(ci + 1) * 64 + 1]
        with torch.no_grad():
            nll = torch.nn.functional.cross_entropy(model(chunk[:-1]), chunk[1:])
        loss_sum += nll
        for ep in range(epochs):
            for s in range(0, 64, 16):
                loss = model(chunk[s:s + 16], chunk[s + 1:s + 17])
                loss.backward()
                opt.step()
    return loss_sum
"""


def test_score_first_in_an_enclosing_loop_is_legal(tmp_path) -> None:
    assert not [f for f in found(tmp_path, SCORE_FIRST_NESTED) if f.rule == "val-train"]
    # the same loop with the scoring moved AFTER the update is flagged
    late = SCORE_FIRST_NESTED.replace(
        "        with torch.no_grad():\n"
        "            nll = torch.nn.functional.cross_entropy(model(chunk[:-1]), chunk[1:])\n"
        "        loss_sum += nll\n",
        "",
    ).replace(
        "    return loss_sum",
        "        with torch.no_grad():\n"
        "            loss_sum += model(chunk[:-1], chunk[1:])\n    return loss_sum",
    )
    assert [f.rule for f in found(tmp_path, late) if f.grade == "violation"] == ["val-train"]


SCORE_OTHER_FUNCTION = """
import torch

def score_chunk(model, chunk):
    with torch.no_grad():
        return torch.nn.functional.cross_entropy(model(chunk[:-1]), chunk[1:], reduction="sum")

def adapt(model, opt, chunk):
    loss = model(chunk[:-1], chunk[1:])
    loss.backward()
    opt.step()

def eval_ttt(model, opt, val_tokens):
    total = 0.0
    for ci in range(0, len(val_tokens), 64):
        chunk = val_tokens[ci:ci + 65]
        total = total + score_chunk(model, chunk)
        adapt(model, opt, chunk)
    return total
"""


def test_scoring_in_another_function_before_the_update_is_legal(tmp_path) -> None:
    assert not [f for f in found(tmp_path, SCORE_OTHER_FUNCTION) if f.rule == "val-train"]
    swapped = SCORE_OTHER_FUNCTION.replace(
        "        total = total + score_chunk(model, chunk)\n        adapt(model, opt, chunk)\n",
        "        adapt(model, opt, chunk)\n        total = total + score_chunk(model, chunk)\n",
    )
    v = [f for f in found(tmp_path, swapped) if f.rule == "val-train"]
    assert [(f.line, f.grade) for f in v] == [(10, "violation")]
    assert "called at line 17" in v[0].message


SLOT = """
import torch

def eval_slot(model, val_tokens, steps):
    loss_sum = 0.0
    for s in range(0, len(val_tokens), 64):
        x, y = val_tokens[s:s + 64], val_tokens[s + 1:s + 65]
        with torch.no_grad():
            H = model.forward_hidden(x)
        delta = torch.zeros(H.shape[-1], requires_grad=True)
        opt = torch.optim.AdamW([delta])
        for _ in range(steps):
            loss_s = torch.nn.functional.cross_entropy(model.logits(H + delta), y)
            loss_s.backward()
            opt.step()
        with torch.no_grad():
            loss_sum += torch.nn.functional.cross_entropy(model.logits(H + delta), y)
    return loss_sum
"""


def test_slot_fitted_on_the_window_before_scoring_is_flagged(tmp_path) -> None:
    # the no-grad forward for the hidden states (line 9) is not a scoring of the window
    fs = found(tmp_path, SLOT)
    assert ("val-train", 14) in rules(fs, "violation")
    off = SLOT.replace(
        "def eval_slot(model, val_tokens, steps):",
        "def eval_slot(model, val_tokens, steps, use=USE):",
    ).replace("    for s in range", "    if not use:\n        return 0.0\n    for s in range")
    switch = 'import os\nUSE = bool(int(os.environ.get("SLOT_ENABLED", "0")))\n'
    fs = found(
        tmp_path,
        switch
        + off.replace("    if not use:\n        return 0.0\n", "").replace(
            "    for s in range", "    if use:\n     for s in range", 1
        ),
    )
    # behind a switch that defaults to off, a path is for the empirical audit, not a violation
    assert not rules(fs, "violation") and any(
        f.rule == "val-train" and f.grade == "audit" for f in fs
    )


ETLB_AND_WARMUP = """
import torch

def eval_etlb(model, val_tokens, steps):
    loss_sum = 0.0
    for ws in range(0, len(val_tokens), 64):
        y = val_tokens[ws + 1:ws + 65]
        logits = model(val_tokens[ws:ws + 64]).detach()
        s = 32
        b = torch.zeros(logits.shape[-1], requires_grad=True)
        opt = torch.optim.SGD([b])
        for _ in range(steps):
            loss = torch.nn.functional.cross_entropy(logits[:s] + b, y[:s])
            loss.backward()
            opt.step()
        loss_sum += torch.nn.functional.cross_entropy(logits[s:] + b, y[s:], reduction="sum")
    return loss_sum

def warmup(model, val_tokens, make_adapter):
    for n in (64, 128):
        adapter = make_adapter()
        ptl = model(val_tokens[:n], val_tokens[1:n + 1], lora=adapter)
        ptl.mean().backward()
        del adapter
    with torch.no_grad():
        return model(val_tokens[:64], val_tokens[1:65])
"""


def test_context_only_updates_and_throwaway_warmups_are_notes(tmp_path) -> None:
    fs = [f for f in found(tmp_path, ETLB_AND_WARMUP) if f.rule == "val-train"]
    assert {(f.line, f.grade) for f in fs} == {(14, "note"), (23, "note")}
    assert "context" in fs[0].message and "del adapter" in fs[1].message


TARGET_KEY = """
import numpy as np

def ngram_eval(val_np, pos, ctx_hash, full_table, ctx_table, P, mask):
    tgt_np = val_np[pos + 1].astype(np.uint64)
    full_key = (ctx_hash ^ (tgt_np * P)) & mask
    idx = full_key.astype(np.int64)
    full_c = full_table[idx]
    ctx_c = ctx_table[ctx_hash & mask]
    return np.minimum(full_c, ctx_c) / np.maximum(ctx_c, 1)

def update(val_np, pos, ctx_hash, full_table, P, mask):
    tgt_np = val_np[pos + 1].astype(np.uint64)
    key = ((ctx_hash ^ (tgt_np * P)) & mask).astype(np.int64)
    np.add.at(full_table, key, 1)
    full_table[key] += 1

def keys(tokens_np, pos, order, primes, mask):
    h = np.zeros(pos.size, dtype=np.uint64)
    for k in range(order - 1):
        h ^= tokens_np[pos - (order - 1 - k)] * primes[k]
    return (h & mask), ((h ^ (tokens_np[pos] * primes[order])) & mask)

def lookup(tokens_np, pos, order, primes, mask, ngram_full):
    ck, fk = keys(tokens_np, pos, order, primes, mask)
    return ngram_full[fk]
"""


def test_target_in_key_through_assignments_and_the_scored_position(tmp_path) -> None:
    fs = found(tmp_path, TARGET_KEY)
    got = {(f.rule, f.line) for f in fs if f.grade == "violation"}
    # the read two assignments after the target enters the key (line 8); the updates (15, 16)
    # are legal; the key built from the token at the scored position in another def (line 26)
    assert got == {("target-hash", 8), ("target-hash", 26)}
    assert all(f.condition == "C1" for f in fs if f.rule == "target-hash")


MIX = """
import torch

def eval_mix(model, val_tokens, table, a):
    loss_sum = 0.0
    for s in range(0, len(val_tokens), 64):
        x, y = val_tokens[s:s + 64], val_tokens[s + 1:s + 65]
        with torch.no_grad():
            logits = model(x)
        p_model = torch.softmax(logits, -1).gather(-1, y[:, None])[:, 0]
        ngram_p = table[x * 7 + y]
        mixed = (1 - a) * p_model + a * ngram_p
        loss_sum += -torch.log(mixed).sum()
    return loss_sum
"""

RENORMALIZED = """
import torch

def eval_mix(model, val_tokens, cache_dist, a):
    loss_sum = 0.0
    for s in range(0, len(val_tokens), 64):
        x, y = val_tokens[s:s + 64], val_tokens[s + 1:s + 65]
        with torch.no_grad():
            probs = torch.softmax(model(x), -1)
        ngram_dist = cache_dist[x]
        mixed = (1 - a) * probs + a * ngram_dist
        mixed = mixed / mixed.sum(-1, keepdim=True)
        loss_sum += -torch.log(mixed.gather(-1, y[:, None])).sum()
    return loss_sum
"""


def test_unnormalized_mixture_vs_renormalized_mixture(tmp_path) -> None:
    fs = found(tmp_path, MIX)
    mix = [f for f in fs if f.rule == "unnormalized-mix"]
    assert [(f.line, f.grade, f.condition) for f in mix] == [(12, "audit", "C2")]
    assert "realized token" in mix[0].message
    # the in-place form of the #770 family: model array on both sides, an `_ng` cache name
    inplace = MIX.replace("ngram_p = table", "best_p_ng = table").replace(
        "        mixed = (1 - a) * p_model + a * ngram_p\n",
        "        m = best_p_ng > 0\n        p_model[m] = (1 - a) * p_model[m] + a * best_p_ng[m]\n"
        "        mixed = p_model\n",
    )
    assert [f.line for f in found(tmp_path, inplace) if f.rule == "unnormalized-mix"] == [13]
    assert not [f for f in found(tmp_path, RENORMALIZED) if f.rule == "unnormalized-mix"]
    # the same mixture without any normalization in a scoring function is still a finding
    bare = RENORMALIZED.replace("        mixed = mixed / mixed.sum(-1, keepdim=True)\n", "")
    bare = bare.replace("torch.softmax(model(x), -1)", "model(x).exp()")
    assert [f.line for f in found(tmp_path, bare) if f.rule == "unnormalized-mix"] == [11]


TWO_PASS = """
import torch

def eval_epochs(model, opt, val_tokens, epochs):
    loss_sum = 0.0
    for epoch in range(epochs):
        for s in range(0, len(val_tokens), 64):
            x, y = val_tokens[s:s + 64], val_tokens[s + 1:s + 65]
            if epoch == epochs - 1:
                with torch.no_grad():
                    loss_sum += model(x, y)
            loss = model(x, y)
            loss.backward()
            opt.step()
    return loss_sum

def eval_best(model, val_tokens, best_nll, passes):
    for pass_idx in range(passes):
        with torch.no_grad():
            nll = model(val_tokens[:-1], val_tokens[1:])
        best_nll = torch.minimum(best_nll, nll)
    return best_nll.sum()
"""


def test_two_passes_and_oracle_min_are_condition_4(tmp_path) -> None:
    fs = found(tmp_path, TWO_PASS)
    c4 = {(f.rule, f.line) for f in fs if f.condition == "C4" and f.grade == "violation"}
    assert c4 == {("multi-pass", 11), ("oracle-min", 21)}


ENV = """
import os
VAL_BATCH_TOKENS = int(os.environ.get("VAL_BATCH_TOKENS", 524288))
VAL_BATCH_SIZE = int(os.environ.get("VAL_BATCH_SIZE", 524_288))
VAL_LOSS_EVERY = int(os.environ.get("VAL_LOSS_EVERY", 1000))
LIMIT = int(os.environ.get("VAL_TOKENS_LIMIT", 0))
PPM_SUBSET = int(os.environ.get("PPM_SUBSET_TOKENS", 5_000_000))
FRAC = float(os.environ.get("VAL_DOC_FRACTION", 1.0))
"""


def test_batch_sizes_are_not_subset_limits(tmp_path) -> None:
    got = {(f.line, f.grade) for f in found(tmp_path, ENV) if f.rule == "subset-eval"}
    assert got == {(6, "note"), (7, "violation"), (8, "note")}


FSTRING_312 = '''
import torch
names = ["a", "b"]
print(f"{", ".join(names)}: {len(names):>{4}d} {f"{names[0]!r}"}")
print(f"""multi
{", ".join(names)}
line""")

def prequant_ttt(model, opt, val_tokens):
    for s in range(0, len(val_tokens), 64):
        loss = model(val_tokens[s:s + 64], val_tokens[s + 1:s + 65])
        loss.backward()
'''


def test_pep701_fstrings_parse_with_lines_kept(tmp_path) -> None:
    fs = found(tmp_path, FSTRING_312)
    assert ("val-train", 12) in rules(fs, "violation")
    text = U.rewrite_fstrings(FSTRING_312)
    assert text.count("\n") == FSTRING_312.count("\n") and "_fstr_(" in text
    # plain strings, comments and escaped braces are left alone
    assert (
        U.rewrite_fstrings("x = 'f{'  # f'{'\ny = f'{{a}}'\n") == "x = 'f{'  # f'{'\ny = _fstr_()\n"
    )


def _pack(code: str, how: str) -> str:
    raw = code.encode()
    if how == "lzma+b85":
        return (
            "import lzma as L, base64 as B\n"
            f"exec(L.decompress(B.b85decode({base64.b85encode(lzma.compress(raw))!r})))\n"
        )
    if how == "rawlzma+b85":
        data = lzma.compress(raw, format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2}])
        return (
            "import lzma as L, base64 as B\n"
            f"exec(L.decompress(B.b85decode({base64.b85encode(data).decode()!r}),"
            "format=L.FORMAT_RAW,filters=[{'id':L.FILTER_LZMA2}]))\n"
        )
    if how == "brotli+b85":
        return (
            "import brotli, base64\n"
            f"exec(brotli.decompress(base64.b85decode({base64.b85encode(brotli.compress(raw))!r})))\n"
        )
    if how == "zlib+b64":
        return (
            "from zlib import decompress as Z\nimport base64\n"
            f"exec(compile(Z(base64.b64decode({base64.b64encode(zlib.compress(raw)).decode()!r})),"
            "'x','exec'))\n"
        )
    if how == "const+lzma+b85":
        b = base64.b85encode(lzma.compress(raw))
        body = "\n".join(b[i : i + 60].decode() for i in range(0, len(b), 60))
        return (
            f'import lzma, base64\n_b = b"""\n{body}\n"""\n'
            "exec(lzma.decompress(base64.b85decode(_b.replace(b'\\n', b''))).decode())\n"
        )
    if how == "gzip+a85":
        return (
            "import gzip, base64\n"
            f"exec(gzip.decompress(base64.a85decode({base64.a85encode(gzip.compress(raw))!r})))\n"
        )
    if how == "bz2+b32":
        return (
            "import bz2, base64\n"
            f"exec(bz2.decompress(base64.b32decode({base64.b32encode(bz2.compress(raw))!r})))\n"
        )
    raise AssertionError(how)


@pytest.mark.parametrize(
    "how",
    ["lzma+b85", "rawlzma+b85", "brotli+b85", "zlib+b64", "const+lzma+b85", "gzip+a85", "bz2+b32"],
)
def test_packed_code_is_decoded_and_screened(tmp_path, how) -> None:
    text = _pack(PREQUANT, how)
    line = 1 + [x[:5] for x in text.splitlines()].index("exec(")
    fs = found(tmp_path, text)
    v = [f for f in fs if f.rule == "val-train"]
    assert [(f.line, f.grade) for f in v] == [(10, "violation")]
    assert v[0].file.startswith(f"train_gpt.py:{line}<") and v[0].file.endswith(">")
    assert not [f for f in fs if f.rule == "exec-undecoded"]
    # the same payload is invisible to a screen of the wrapper alone (what the old screen saw)
    assert not [f for f in fs if f.file == "train_gpt.py" and f.rule == "val-train"]


def test_exec_of_a_shipped_file_and_undecodable_execs(tmp_path) -> None:
    write(tmp_path, PREQUANT, "train_gpt_decode.py")
    stub = 'exec(open(__file__.replace("train_gpt.py", "train_gpt_decode.py")).read())\n'
    fs = found(tmp_path, stub)
    assert [(f.file, f.line) for f in fs if f.rule == "val-train"] == [("train_gpt.py:1<open>", 10)]
    (tmp_path / "train_gpt_decode.py").unlink()
    computed = stub + "import os\nexec(os.environ['CODE'])\n"
    fs = found(tmp_path, computed)
    warn = [f for f in fs if f.rule == "exec-undecoded"]
    assert [(f.line, f.grade) for f in warn] == [(1, "audit"), (3, "audit")]
    assert "not shipped" in warn[0].message and "computed" in warn[1].message
    assert "WARNING" in S.format_findings("train_gpt.py", fs)


def test_decoded_payloads_are_bounded(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(U, "MAX_OUT", 1000)
    fs = found(tmp_path, _pack("x = 1\n" * 1000, "lzma+b85"))
    assert [f.rule for f in fs] == ["exec-undecoded"] and "MiB" in fs[0].message


def test_cli_json_carries_file_line_grade_and_evidence(tmp_path) -> None:
    from pgolf.lab.audit.run import main

    p = write(tmp_path, _pack(PREQUANT, "lzma+b85"))
    text, rc = main(None, None, None, True, False, static=str(p))
    rows = json.loads(text)
    v = [r for r in rows if r["rule"] == "val-train"]
    assert rc == 0 and v and v[0]["grade"] == "violation" and v[0]["line"] == 10
    assert v[0]["file"].startswith("train_gpt.py:2<") and "backward" in v[0]["evidence"]
    human, _ = main(None, None, None, False, False, static=str(p))
    assert "train_gpt.py:2<lzma+b85>:10  violation" in human


def test_bad_input_is_a_clear_error(tmp_path, monkeypatch) -> None:
    with pytest.raises(ValueError, match="not a regular file"):
        S.screen(tmp_path)
    with pytest.raises(ValueError, match="not valid Python"):
        found(tmp_path, "def f(:\n")
    monkeypatch.setattr(U, "MAX_OUT", 10)
    with pytest.raises(ValueError, match="MiB"):
        found(tmp_path, "x = 1\n" * 10)


NOT_SCORING = """
import torch

def eval_mode(model):
    model.eval()
    torch.cuda.synchronize()

def ttt(model, opt, val_tokens):
    for s in range(0, len(val_tokens), 64):
        eval_mode(model)
        loss = model(val_tokens[s:s + 64], val_tokens[s + 1:s + 65])
        loss.backward()
        opt.step()
"""


def test_a_call_named_eval_that_does_not_score_is_not_scoring(tmp_path) -> None:
    fs = found(tmp_path, NOT_SCORING)
    assert ("val-train", 12) in rules(fs, "violation")
    scoring = NOT_SCORING.replace(
        "    model.eval()\n", "    with torch.no_grad():\n        return model(model.x)\n"
    )
    assert not [f for f in found(tmp_path, scoring) if f.rule == "val-train"]


def test_review_table_counts_own_condition_and_false_violations() -> None:
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "review_static.py"
    spec = importlib.util.spec_from_file_location("review_static", path)
    rs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rs)
    legal = {c: "legal" for c in (*rs.CONDITIONS, "overall")}

    def row(i, exp, conds, finds):
        f = [
            {"rule": r, "grade": g, "condition": c, "where": "x:1", "evidence": ""}
            for r, g, c in finds
        ]
        return {
            "id": i,
            "pr": None,
            "expected": exp,
            "conditions": conds,
            "seconds": 0.1,
            "findings": f,
        }

    rows = [
        row(
            "a",
            {**legal, "C3": "illegal", "overall": "illegal"},
            ["C3"],
            [("val-train", "audit", "C3")],
        ),
        row(
            "b",
            {**legal, "C4": "illegal", "overall": "illegal"},
            ["C4"],
            [("val-train", "violation", "C3")],
        ),
        row("m1", legal, [], [("val-train", "violation", "C3")]),
        row("m2", legal, [], [("subset-eval", "audit", "subset")]),
    ]
    t = rs.table(rows)
    assert t["C3"] == {
        "illegal": 1,
        "flagged": 1,
        "missed": 0,
        "legal": 2,
        "false_violation": 1,
        "false_audit": 0,
    }
    assert t["C4"]["missed"] == 1 and t["subset"]["false_audit"] == 1
    h = t["headline"]
    assert (h["flagged_own_condition"], h["merged_with_violation"]) == (1, 1)
    text = rs.report({"rows": rows, "table": t})
    assert "b (C4): val-train violation x:1" in text and "m1 violation val-train" in text


SAME_NAMES = """
import torch

def main(model, opt, train_loader, train_tokens, val_tokens, steps):
    x = val_tokens[:-1]
    y = val_tokens[1:]
    for step in range(steps):
        x, y = train_loader.next_batch()
        batch = torch.stack([train_tokens[i:i + 8] for i in range(4)])
        loss = model(x, y) + model(batch[:, :-1], batch[:, 1:])
        loss.backward()
        opt.step()
    for i in range(4):
        with torch.no_grad():
            model(val_tokens[i:i + 8], val_tokens[i + 1:i + 9])
"""


def test_the_batch_a_step_reads_is_the_one_fetched_in_its_loop(tmp_path) -> None:
    # `x, y` also hold validation tokens elsewhere in `main`, and `i` indexes them later
    assert not [f for f in found(tmp_path, SAME_NAMES) if f.rule == "val-train"]
    leak = SAME_NAMES.replace("        x, y = train_loader.next_batch()\n", "")
    assert [f.line for f in found(tmp_path, leak) if f.rule == "val-train"] == [10]


SELECTION = """
def find_temp(eval_val, model, tokens):
    best_t, best_loss = 1.0, float("inf")
    for t in (0.9, 1.0, 1.1):
        loss = eval_val(model, tokens, temperature=t)
        if loss < best_loss:
            best_loss = loss
            best_t = t
    return best_t
"""


def test_a_scalar_selection_by_loss_is_for_the_audit(tmp_path) -> None:
    fs = [f for f in found(tmp_path, SELECTION) if f.rule == "oracle-min"]
    assert [(f.line, f.grade) for f in fs] == [(6, "audit")]
