"""Shorter explanation tables in the bundle (issue 22).

The core's tables of the challenge's environment variables carry one sentence per variable:
`config_env.UNSUPPORTED` says why a variable is not supported, `config_env.CONVERTERS` what a
converter did with one. They are read only by `config_env.report`, whose `env:` lines tell a run
that a variable was converted or is not supported. In the bundle every variable keeps its row (so
none is ever silent and every converter still runs), and every line keeps its shape
(`env:not supported: VAR=value (...)`, `env:VAR=value -> ...`); only the sentence becomes one
shared pointer to `pgolf config show`, which prints the full line for the same environment.
About 1 KB of the compressed pr1550 payload (docs/benchmarks.md).
"""

from __future__ import annotations

import ast

REASON = "not supported by pgolf; `pgolf config show` says why"
CONVERTED = "converted; `pgolf config show` says how"
TABLES = {"UNSUPPORTED": "reason", "CONVERTERS": "first"}
"""config_env's tables: name -> what is shortened (`reason`: every value; `first`: the first
element of every tuple value)."""


def terse(src: str) -> str:
    """`config_env`'s source with the sentences of `TABLES` replaced (keys and converters kept)."""
    tree = ast.parse(src)
    done = set()
    for stmt in tree.body:
        target = stmt.targets[0] if isinstance(stmt, ast.Assign) else getattr(stmt, "target", None)
        name = getattr(target, "id", None)
        if name not in TABLES or not isinstance(stmt.value, ast.Dict):
            continue
        d = stmt.value
        if TABLES[name] == "reason":
            d.values = [ast.Constant(REASON) for _ in d.values]
        else:
            for v in d.values:
                if not (isinstance(v, ast.Tuple) and len(v.elts) == 2):
                    raise ValueError(f"config_env.{name}: a value is not (text, converter)")
                v.elts[0] = ast.Constant(CONVERTED)
        done.add(name)
    if done != set(TABLES):
        raise ValueError(f"config_env: no dict literal for {sorted(set(TABLES) - done)}")
    return ast.unparse(ast.fix_missing_locations(tree)) + "\n"
