"""A records folder's data preparation, read statically for `pgolf verify`'s `data_overlap` check.

Why: challenge issue #2127 found that the published CaseOps preparation script
(`prepare_caseops_data.py`) takes the first `--val-docs` documents (default 10,000) as validation
and every later one as training, while the challenge's validation set is the first 50,000
documents of the frozen document list: by default documents 10,000..49,999 of the validation set
are trained on. Nothing in a folder's logs shows it; its preparation script does.

* `prep_scripts`: the folder's data-preparation code: `.py`/`.sh` files whose name says so
  (`prepare*`, `prep_*`, `*data*`, `download*`, `*tokeniz*`, `*fineweb*`, `*shard*`), never the
  entry point (`train_gpt*`).
* `static_leaks`: the #2127 pattern in a Python script (parsed, never run): a validation-document
  count (an argparse option or a constant whose name says val + docs, e.g. `--val-docs`,
  `NUM_VAL_DOCS`) with a default below `CANONICAL_VAL_DOCS`, and a split by it (`i < val_docs`):
  the first N documents validation, the rest training.

The check itself (`verify._data_overlap`) runs `pgolf.lab.data.overlap` on prepared shards when
they are given, else says how to run it; a static finding is reported either way.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

CANONICAL_VAL_DOCS = 50_000
"""The challenge's validation set: the first 50,000 documents of the frozen shuffled list."""
PREP_NAME = re.compile(r"^(prepare|prep_)|data|download|tokeniz|fineweb|shard", re.IGNORECASE)
PREP_SUFFIXES = (".py", ".sh")
_VAL_DOCS = re.compile(r"val\w*docs?|docs?\w*val", re.IGNORECASE)
MAX_SCRIPT_BYTES = 1 << 20  # the corpus's largest preparation script is 30 KB


def prep_scripts(files: list[Path]) -> list[Path]:
    """The data-preparation scripts among a folder's files (module docstring), sorted."""
    return sorted(
        p
        for p in files
        if p.suffix in PREP_SUFFIXES
        and not p.name.startswith("train_gpt")
        and PREP_NAME.search(p.stem)
    )


@dataclass(frozen=True)
class StaticLeak:
    """The first `count` documents are validation (`name`, defined at `line`), the rest
    training (the split at `split_line`)."""

    name: str
    count: int
    line: int
    split_line: int

    def text(self, rel: str) -> str:
        return (
            f"{rel}:{self.line} validation = the first {self.count:,} documents ({self.name} "
            f"default), every later one training ({rel}:{self.split_line}): documents "
            f"{self.count:,}..{CANONICAL_VAL_DOCS - 1:,} of the challenge's validation set (its "
            f"first {CANONICAL_VAL_DOCS:,}) are trained on by default (challenge issue #2127)"
        )


def _int(node: ast.AST | None) -> int | None:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    return None


def _counts(tree: ast.AST) -> list[tuple[str, str, int, int]]:
    """(name as written, name the code compares, default, line) of every validation-document
    count: argparse options (`add_argument("--val-docs", default=N)`) and constants."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
            opts = [a.value for a in node.args if isinstance(a, ast.Constant)]
            opts = [o for o in opts if isinstance(o, str) and o.startswith("-")]
            kw = {k.arg: k.value for k in node.keywords if k.arg}
            if not any(_VAL_DOCS.search(o.replace("-", "_")) for o in opts):
                continue
            longest = max(opts, key=len)
            dest = kw.get("dest")
            name = dest.value if isinstance(dest, ast.Constant) else None
            name = name if isinstance(name, str) else longest.lstrip("-").replace("-", "_")
            if (n := _int(kw.get("default"))) is not None:
                out.append((longest, name, n, node.lineno))
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                if isinstance(t, ast.Name) and _VAL_DOCS.search(t.id):
                    if (n := _int(node.value)) is not None:
                        out.append((t.id, t.id, n, node.lineno))
    return out


def _ref(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _splits(tree: ast.AST) -> dict[str, int]:
    """{name: first line} of every comparison `x < name` (or `name > x`): documents before the
    count go one way, the rest the other."""
    out: dict[str, int] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and len(node.ops) == 1:
            op, left, right = node.ops[0], node.left, node.comparators[0]
            ref = _ref(right) if isinstance(op, ast.Lt) else None
            ref = ref or (_ref(left) if isinstance(op, ast.Gt) else None)
            if ref is not None:
                out[ref] = min(out.get(ref, node.lineno), node.lineno)
    return out


def static_leaks(source: str) -> list[StaticLeak]:
    """The #2127 pattern in a Python script's source (module docstring); [] when there is none
    or the source does not parse."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return []
    splits = _splits(tree)
    out = []
    for written, name, count, line in _counts(tree):
        split = splits.get(name)
        if 0 <= count < CANONICAL_VAL_DOCS and split is not None:
            out.append(StaticLeak(written, count, line, split))
    return out
