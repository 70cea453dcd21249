"""`pgolf audit --static SCRIPT`: a static PRE-SCREEN of a submission script (ours or not), the
kind of AST/line check the community reviewers automated (spec rules-and-compliance.md, "Static
pre-screen"). Findings carry line numbers and say what to look at; they are not a verdict - the
empirical tests of `pgolf.lab.audit` are the ground truth (a flagged loop may be legal, and a
clean screen proves nothing).

Rules:
* `val-train`: a loop whose body reads a validation-named variable (`val*`) and calls
  `backward()` / `.step()` with no scoring (`no_grad` / `inference_mode` block, or a call named
  *eval* / *score*) earlier in the same loop: training on tokens before they are scored (the
  pre-quant TTT of PR #1550; issue #1017 Condition 3).
* `target-hash`: a hash call, or a cache/table/count subscript, whose key mentions a target name
  (`y`, `target(s)`, `tgt`, `labels`, `next_tok*`): the #779 family (Conditions 1 and 2).
* `subset-eval`: a validation variable re-assigned to a prefix slice, or a `VAL_*` limit read from
  the environment (#1785 / #1835-style subset evaluation; T2.5).
* `bos-switch-off`: an environment switch about BOS / document isolation / SmearGate that defaults
  to off (a fix that the reported run may not have used; T1.4).
* `inference-mode`: `torch.inference_mode` blocks (tensors made there must not reach training:
  the rotary-cache poisoning PR #1550 found; T3.5). Informational.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

VAL = re.compile(r"^val(_|$)|_val(_|$)", re.I)
TARGET = re.compile(r"^(y|ys|target|targets|tgt|tgts|labels?|next_tok\w*|y_batch)$")
CACHE = re.compile(r"cache|table|count|hash|bucket", re.I)
BOS_ENV = re.compile(r"BOS|DOC_?(MASK|ISO)|SMEAR\w*(FIX|MASK|RESET|DOC)", re.I)
LIMIT_ENV = re.compile(r"^VAL\w*(TOKENS|DOCS|LIMIT|MAX|SUBSET)|MAX_VAL", re.I)


@dataclass(frozen=True)
class Finding:
    rule: str
    line: int
    message: str


def _names(node: ast.AST) -> set[str]:
    out = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Name):
            out.add(n.id)
        elif isinstance(n, ast.Attribute):
            out.add(n.attr)
    return out


def _call_name(node: ast.Call) -> str:
    f = node.func
    return f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""


def _is_scoring(node: ast.AST) -> bool:
    if isinstance(node, ast.With):
        return any(
            "no_grad" in ast.unparse(i.context_expr)
            or "inference_mode" in ast.unparse(i.context_expr)
            for i in node.items
        )
    if isinstance(node, ast.Call):
        return bool(re.search(r"eval|score", _call_name(node), re.I))
    return False


def _loops_training_on_val(tree: ast.AST) -> list[Finding]:
    out: list[Finding] = []
    loops = [n for n in ast.walk(tree) if isinstance(n, ast.For | ast.While)]
    hits = {}
    for loop in loops:
        trains = [
            n
            for n in ast.walk(loop)
            if isinstance(n, ast.Call) and _call_name(n) in ("backward", "step")
        ]
        vals = sorted(
            {n.lineno for n in ast.walk(loop) if isinstance(n, ast.Name) and VAL.search(n.id)}
        )
        if trains and vals:
            first_train = min(n.lineno for n in trains)
            scored = any(_is_scoring(n) and n.lineno < first_train for n in ast.walk(loop))
            hits[loop] = (first_train, vals, scored)
    for loop, (line, vals, scored) in hits.items():
        inner = [n for n in ast.walk(loop) if n is not loop and n in hits]
        if inner or scored:  # report the innermost loop; a score-first loop is not flagged
            continue
        out.append(
            Finding(
                "val-train",
                line,
                f"loop at line {loop.lineno} reads validation data (lines "
                f"{', '.join(map(str, vals[:4]))}) and calls backward/step at line "
                f"{line} with no scoring before it in the loop: training on "
                "unscored validation tokens? (Condition 3)",
            )
        )
    return out


def _target_hashes(tree: ast.AST) -> list[Finding]:
    out = []
    for n in ast.walk(tree):
        key = None
        if isinstance(n, ast.Call) and "hash" in _call_name(n).lower():
            key = ast.Tuple(elts=[*n.args, *(k.value for k in n.keywords)])
        elif isinstance(n, ast.Subscript) and CACHE.search(ast.unparse(n.value)):
            key = n.slice
        if key is not None:
            hit = sorted(x for x in _names(key) if TARGET.match(x))
            if hit:
                out.append(
                    Finding(
                        "target-hash",
                        n.lineno,
                        f"key built from target name(s) {', '.join(hit)}: "
                        f"`{ast.unparse(n)[:70]}` (Conditions 1-2, #779 family)",
                    )
                )
    return out


def _subset_and_switches(tree: ast.AST) -> list[Finding]:
    out = []
    for n in ast.walk(tree):
        if isinstance(n, ast.Assign) and isinstance(n.value, ast.Subscript):
            tgt = [t.id for t in n.targets if isinstance(t, ast.Name) and VAL.search(t.id)]
            sl = n.value.slice
            if (
                tgt
                and isinstance(sl, ast.Slice)
                and sl.lower is None
                and sl.upper is not None
                and VAL.search(ast.unparse(n.value.value))
            ):
                out.append(
                    Finding(
                        "subset-eval",
                        n.lineno,
                        f"`{ast.unparse(n)[:70]}` keeps a prefix of the validation "
                        "data (T2.5: all documents must be scored)",
                    )
                )
        first = n.args[0] if isinstance(n, ast.Call) and n.args else None
        if _call_name(n) in ("get", "getenv") if isinstance(n, ast.Call) else False:
            if not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
                continue
            name = first.value
            default = n.args[1] if len(n.args) > 1 else None
            off = default is None or (
                isinstance(default, ast.Constant)
                and str(default.value).lower() in ("0", "false", "", "none")
            )
            if BOS_ENV.search(name) and off:
                out.append(
                    Finding(
                        "bos-switch-off",
                        n.lineno,
                        f"{name} defaults to off: a BOS / document-isolation fix "
                        "the reported run may not have used (T1.4)",
                    )
                )
            if LIMIT_ENV.search(name):
                out.append(
                    Finding("subset-eval", n.lineno, f"{name} can limit the validation set (T2.5)")
                )
        if isinstance(n, ast.With) and any(
            "inference_mode" in ast.unparse(i.context_expr) for i in n.items
        ):
            out.append(
                Finding(
                    "inference-mode",
                    n.lineno,
                    "inference_mode block: tensors made here must not reach "
                    "training (T3.5; informational)",
                )
            )
    return out


def screen(path: str | Path) -> list[Finding]:
    """All findings for the script at `path`, by line."""
    path = Path(path)
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except SyntaxError as e:
        raise ValueError(f"{path}: not valid Python ({e.msg}, line {e.lineno})") from e
    found = _loops_training_on_val(tree) + _target_hashes(tree) + _subset_and_switches(tree)
    return sorted(set(found), key=lambda f: (f.line, f.rule))


def format_findings(path: str | Path, found: list[Finding]) -> str:
    head = (
        f"STATIC PRE-SCREEN of {path} - not a verdict: run `pgolf audit ARTIFACT` (empirical "
        f"tests) for the ground truth. {len(found)} finding(s)."
    )
    return "\n".join([head, *(f"  line {f.line:>5}  {f.rule:<15} {f.message}" for f in found)])
