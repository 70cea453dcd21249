"""`pgolf config show`: every config key with its value, its environment variable and its help.

The help is read from `pgolf/config.py` itself (a field's attribute docstring, else its trailing
comment), so the documentation cannot drift from the code; variables come from `pgolf.config_env`.
"""

from __future__ import annotations

import ast
import inspect
import re
from dataclasses import fields

from pgolf import config as C
from pgolf import config_env as E


def field_help() -> dict[str, str]:
    """`section.field` -> help text (attribute docstring, else the comment on its line)."""
    src = inspect.getsource(C)
    lines = src.splitlines()
    owner = {cls.__name__: s for s, cls in C.SECTION_CLASSES.items()}
    out: dict[str, str] = {}
    for node in ast.parse(src).body:
        if not isinstance(node, ast.ClassDef) or node.name not in owner:
            continue
        for i, stmt in enumerate(node.body):
            if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
                continue
            key = f"{owner[node.name]}.{stmt.target.id}"
            nxt = node.body[i + 1] if i + 1 < len(node.body) else None
            if isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None), ast.Constant):
                out[key] = " ".join(str(nxt.value.value).split())
            elif "#" in (line := lines[stmt.lineno - 1]):
                out[key] = line.split("#", 1)[1].strip()
    return out


def env_of() -> dict[str, list[str]]:
    """`section.field` -> the variables that set it (1:1, then converters)."""
    out: dict[str, list[str]] = {}
    for var, (section, name) in E.ENV_VARS.items():
        out.setdefault(f"{section}.{name}", []).append(var)
    for var, (what, _) in E.CONVERTERS.items():
        for key in _keys_named(what):
            out.setdefault(key, []).append(f"{var} (converted)")
    return out


def _keys_named(text: str) -> list[str]:
    keys = [f"{s}.{f.name}" for s, c in C.SECTION_CLASSES.items() for f in fields(c)]
    return [k for k in keys if re.search(re.escape(k) + r"(?!\w)", text)]  # whole keys only


def describe(cfg: C.RunConfig) -> list[str]:
    """One line per key: `section.field = value  [VARS]  help`, grouped by section."""
    helps, envs = field_help(), env_of()
    lines = [f"preset = {cfg.preset!r}"]
    for section, cls in C.SECTION_CLASSES.items():
        lines.append(f"[{section}]")
        for f in fields(cls):
            key = f"{section}.{f.name}"
            val = getattr(getattr(cfg, section), f.name)
            var = f"  [{', '.join(envs[key])}]" if key in envs else ""
            text = f"  # {helps[key]}" if key in helps else ""
            lines.append(f"  {key} = {val!r}{var}{text}")
    return lines
