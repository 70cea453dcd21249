"""`pgolf bundle`: the single-file, self-contained `train_gpt.py` a submission ships.

The challenge counts a submission's code as the bytes of its `train_gpt.py` (spec: rules, section
"Submission folder contents"; house style section 5.9). The bundle holds the core modules
(`pgolf.CORE_MODULES`, in that order) as in-file modules: each one's source, with every
`from pgolf... import ...` rewritten to a lookup in the bundle's own module table, is executed into
a fresh module object before anything runs, so no installed pgolf is ever imported and every module
keeps its own namespace (no renaming, no collisions). Optional core modules the config never
runs (`config.OPTIONAL_MODULES` minus `config.modules_needed`) are left out as stubs. The
resolved config is frozen into the file as its defaults (data and tokenizer paths left out:
`DATA_PATH` gives them), the challenge's environment variables still override it, and `__main__`
runs the record job through `pgolf.pipeline.bundle_main`.

Five forms are measured and the smallest is shipped (the self-extracting wrapper is the records'
habit since PR #1493's 16,594-byte lzma/base85 script): raw source; docstrings and comments
stripped (`ast.unparse`); stripped + lzma + base85; stripped + brotli + base85; and `packed`
(issue 22): the core specialized for the frozen config (`specialize`: switches folded, dead
branches and unreachable definitions and modules dropped, the folds checked at run time by
`config.refuse_folded`), the scoring runners narrowed to the frozen TTT mode (`narrow`), the
environment variables' explanations shortened (`terse`), each
module minified, one Brotli payload in a latin-1 literal (`pack`).
`special` is the specialized bundle unpacked (readable; for inspection and tests). The first line
of every form names the generator, its version, the git commit and a hash of the core sources.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import importlib.metadata
import json
import lzma
import os
import subprocess
from pathlib import Path
from typing import Any

import brotli

import pgolf
from pgolf import config as C
from pgolf.data import atomic_write
from pgolf.lab.bundle import narrow, pack
from pgolf.lab.bundle.specialize import specialize
from pgolf.lab.bundle.terse import terse

SRC = Path(pgolf.__file__).resolve().parent
FORMS = ("raw", "stripped", "lzma", "brotli", "special", "packed")
PACKED = "specialized for its config, minified, brotli-11 in a latin-1 literal"
"""How the `packed` form's bytes came to be: the code-size note of a run (`code_size:source:`)."""
_WRAP = b'import Z,base64;exec(Z.decompress(base64.b85decode(b"P")))\n'


def core_sources() -> list[tuple[str, str]]:
    """(name, source) of `pgolf/__init__.py` and every core module, in bundle order."""
    out = [("__init__", (SRC / "__init__.py").read_text())]
    out += [(m, (SRC / f"{m}.py").read_text()) for m in pgolf.CORE_MODULES]
    return out


def core_hash(n_hex: int = 12) -> str:
    h = hashlib.sha256()
    for name, src in core_sources():
        h.update(name.encode() + b"\0" + src.encode())
    return h.hexdigest()[:n_hex]


def _git_commit() -> str:
    try:
        r = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=SRC,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return r.stdout.strip() if r.returncode == 0 and r.stdout.strip() else "unknown"


def rewrite_imports(src: str, name: str) -> str:
    """Replace every pgolf import in `src` by lookups in the bundle's module table `_M`."""
    core = set(pgolf.CORE_MODULES)
    tree = ast.parse(src)
    lines = src.splitlines(keepends=True)
    edits: list[tuple[int, int, int, int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name.startswith("pgolf") for a in node.names):
            raise ValueError(f"{name}.py line {node.lineno}: use `from pgolf import X` instead")
        if not isinstance(node, ast.ImportFrom) or not (node.module or "").startswith("pgolf"):
            continue
        mod = node.module or ""
        if mod.startswith("pgolf.lab") or mod.split(".")[1:2] and mod.split(".")[1] not in core:
            raise ValueError(
                f"core module {name}.py imports {mod} (line {node.lineno}): the core never "
                "imports the lab or a module missing from pgolf.CORE_MODULES"
            )
        parts = []
        for a in node.names:
            target = a.asname or a.name
            if mod == "pgolf":
                if a.name in core:
                    parts.append(f'{target} = _M["{a.name}"]')
                elif a.name == "lab" or a.name.startswith("lab"):
                    raise ValueError(f"core module {name}.py imports pgolf.lab")
                else:
                    parts.append(f'{target} = _M["__init__"].{a.name}')
            else:
                parts.append(f'{target} = _M["{mod.split(".")[1]}"].{a.name}')
        edits.append(
            (
                node.lineno,
                node.col_offset,
                node.end_lineno or node.lineno,
                node.end_col_offset or 0,
                "; ".join(parts),
            )
        )
    for l0, c0, l1, c1, text in sorted(edits, reverse=True):
        head, tail = lines[l0 - 1][:c0], lines[l1 - 1][c1:]
        lines[l0 - 1 : l1] = [head + text + tail]
    return "".join(lines)


def strip_source(src: str) -> str:
    """Drop docstrings (module, class, function and attribute docstrings), comments and the
    annotations of functions (never evaluated: every core module has `from __future__ import
    annotations`); class-level annotations stay (dataclass fields)."""
    tree = ast.parse(src)
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            node.returns = None
            a = node.args
            for arg in [*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg]:
                if arg is not None:
                    arg.annotation = None
            node.body = [_unannotate(s) for s in node.body]
        body = getattr(node, "body", None)
        if not isinstance(body, list):
            continue
        kept = [
            s
            for s in body
            if not (
                isinstance(s, ast.Expr)
                and isinstance(s.value, ast.Constant)
                and isinstance(s.value.value, str)
            )
        ]
        node.body = kept or [ast.Pass()]
    return ast.unparse(tree) + "\n"


def _unannotate(s: ast.stmt) -> ast.stmt:
    """`x: T = v` inside a function body → `x = v` (`x: T` alone → `pass`)."""
    if isinstance(s, ast.AnnAssign) and s.simple:
        if s.value is None:
            return ast.Pass()
        return ast.Assign(targets=[s.target], value=s.value, lineno=s.lineno)
    return s


PER_RUN = {
    ("train", "seed"),
    ("train", "run_dir"),
    ("data", "data_path"),
    ("data", "tokenizer_path"),
}
"""Config fields that differ between the runs of one record: the seed (`SEED` sets it), the run
folder and this machine's paths. The bundle leaves them at their defaults; export ignores them
when it checks that runs share one config."""


def bundle_config(cfg: C.RunConfig) -> dict[str, Any]:
    """The config frozen into the bundle: everything but PER_RUN (at its defaults), so every seed
    of a record has the same script and the same code bytes."""
    d = C.to_dict(cfg)
    for section, name in PER_RUN:
        d[section][name] = C.to_dict(C.RunConfig())[section][name]
    return d


def header(cfg: C.RunConfig) -> str:
    return (
        f"# train_gpt.py generated by pgolf {pgolf.__version__} (commit {_git_commit()}, core "
        f"{core_hash()}) from preset {cfg.preset}; regenerate with `pgolf bundle`, do not edit\n"
    )


def omitted(cfg: C.RunConfig) -> tuple[str, ...]:
    """The optional core modules (`config.OPTIONAL_MODULES`) the bundle for `cfg` leaves out."""
    need = C.modules_needed(cfg)
    return tuple(m for m in C.OPTIONAL_MODULES if m not in need)


def assemble(cfg: C.RunConfig, strip: bool) -> str:
    """The plain bundle: loader, inlined modules, frozen config, `__main__` guard. A module the
    config does not use (`omitted`) becomes a stub whose first attribute use raises, and
    `bundle_main` refuses up front a config (environment included) that needs it."""
    gone = omitted(cfg)
    parts = [
        "import sys as _s, types as _t\n",
        "_M = {}\n",
        "def _mod(n, src):\n",
        '    m = _t.ModuleType("pgolf_bundle." + n)\n',
        "    m.__file__, m._M = __file__, _M\n",
        "    _s.modules[m.__name__] = _M[n] = m\n",
        '    exec(compile(src, "train_gpt.py:" + n, "exec"), m.__dict__)\n',
    ]
    for name, src in core_sources():
        if name in gone:  # AttributeError, so hasattr() on the stub stays quiet
            stub = (
                f"def __getattr__(a):\n    raise AttributeError(f'{name}.{{a}}: this "
                "train_gpt.py was bundled without it (its config does not use it); rebuild "
                "it with `pgolf bundle`')\n"
            )
            parts.append(f"_mod({name!r}, {stub!r})\n")
            continue
        src = rewrite_imports(src, name)
        if strip:
            src = strip_source(src)
        parts.append(f"_mod({name!r}, {src!r})\n")
    parts.append(f"CONFIG = {bundle_config(cfg)!r}\n")
    call = f"bundle_main(CONFIG, __file__{f', {gone!r}' if gone else ''})"
    parts.append(f'if __name__ == "__main__":\n    _M["pipeline"].{call}\n')
    return "".join(parts)


_STUB = (
    "def __getattr__(a):raise AttributeError(f'%s.{a}: this train_gpt.py was bundled without it "
    "(its config does not use it); rebuild it with `pgolf bundle`')"
)


def specialized(cfg: C.RunConfig) -> tuple[str, str, dict[str, Any]]:
    """(the body of `special`, the payload of `packed`, a report: folds, drops, left out). Each is
    a loader, then NUL, then each kept module as `name \\1 source` joined by NUL; `packed`'s
    modules are minified."""
    sources = {name: rewrite_imports(src, name) for name, src in core_sources()}
    sources["config_env"] = terse(sources["config_env"])
    sources["score"], mode_check = narrow.runners(sources["score"], cfg)
    spec = specialize(sources, cfg, never=set(PER_RUN), absent=set(omitted(cfg)))
    gone = tuple(m for m in sources if m in omitted(cfg) or m not in spec.sources)
    stubs = tuple(m for m in gone if m in _referenced(spec.sources))  # the rest: nothing asks
    folded = (*spec.folded, mode_check)
    loader = (
        "import sys as _s,types as _t\n_M={}\n"
        "def _mod(n,src):\n"
        " m=_t.ModuleType('pgolf_bundle.'+n);m.__file__,m._M=__file__,_M\n"
        " _s.modules[m.__name__]=_M[n]=m;exec(compile(src,'train_gpt.py:'+n,'exec'),m.__dict__)\n"
        f"for n in {stubs!r}:_mod(n,{_STUB!r}%n)\n"
        "for c in P.split('\\0')[1:]:_mod(*c.split('\\1',1))\n"
        f"CONFIG={config_delta(cfg)!r}\n"
        "if __name__=='__main__':_M['pipeline'].bundle_main"
        f"(CONFIG,__file__,{gone!r},{folded!r},{code_desc('packed')!r})\n"
    )
    kept = {n: strip_source(s) for n, s in spec.sources.items() if n not in gone}
    keep = pack.spelled([loader, *kept.values()])
    plain = [f"{name}\1{src}" for name, src in kept.items()]
    small = [f"{name}\1{pack.minify(src, keep)}" for name, src in kept.items()]
    report = {"folded": folded, "dropped": spec.dropped, "left_out": gone}
    return "\0".join([loader, *plain]), "\0".join([loader, *small]), report


def _referenced(sources: dict[str, str]) -> set[str]:
    """The modules some kept source looks up in the module table (`_M["name"]`)."""
    import re

    return {m for src in sources.values() for m in re.findall(r"_M\[['\"](\w+)['\"]\]", src)}


def config_delta(cfg: C.RunConfig) -> dict[str, Any]:
    """`bundle_config(cfg)` less every field at its dataclass default (`config.from_dict` fills
    those in): the frozen config in fewer bytes, the same config once loaded."""
    full, base = bundle_config(cfg), C.to_dict(C.RunConfig())
    out: dict[str, Any] = {"preset": full["preset"]}
    for section, fields in full.items():
        if isinstance(fields, dict):
            diff = {k: v for k, v in fields.items() if base[section].get(k) != v}
            if diff:
                out[section] = diff
    if C.from_dict(out) != C.from_dict(full):  # a bundle must load exactly its config
        raise RuntimeError(f"config_delta: {out} does not load as the frozen config")
    return out


def code_desc(form: str) -> str:
    """How the code bytes of a bundle in `form` were counted (the run's `code_size:source:`)."""
    from pgolf.pipeline import CODE_DESC

    return f"{CODE_DESC}: train_gpt.py" + (f" ({PACKED})" if form == "packed" else "")


def forms(cfg: C.RunConfig) -> dict[str, bytes]:
    """Every form of the bundle for `cfg` (module docstring), each starting with the header."""
    head = header(cfg).encode()
    raw = assemble(cfg, strip=False).encode()
    stripped = assemble(cfg, strip=True).encode()
    lz = base64.b85encode(lzma.compress(stripped, preset=9 | lzma.PRESET_EXTREME))
    br = base64.b85encode(brotli.compress(stripped, quality=11))
    special, body, _ = specialized(cfg)
    return {
        "raw": head + raw,
        "stripped": head + stripped,
        "lzma": head + _WRAP.replace(b"Z", b"lzma").replace(b"P", lz),
        "brotli": head + _WRAP.replace(b"Z", b"brotli").replace(b"P", br),
        "special": head + b"P=" + repr(special).encode() + b"\nexec(P[:P.index('\\0')])\n",
        "packed": head + pack.wrap(body.encode(), "brotli", "latin1"),
    }


def _cache_key(cfg: C.RunConfig) -> str:
    """Everything a bundle's bytes depend on: the header (version, commit, core hash), the frozen
    config, the core and bundler sources, the minifier's version."""
    h = hashlib.sha256(header(cfg).encode())
    h.update(json.dumps(bundle_config(cfg), sort_keys=True).encode())
    for _, src in core_sources():
        h.update(src.encode())
    for p in sorted(Path(__file__).parent.glob("*.py")):
        h.update(p.read_bytes())
    h.update(importlib.metadata.version("python-minifier").encode())
    return h.hexdigest()[:32]


def cache_dir() -> Path | None:
    """Where built bundles are kept (PGOLF_BUNDLE_CACHE, default ~/.cache/pgolf/bundle; `off`:
    nowhere). Specializing takes tens of seconds and every `pgolf run` measures its code size."""
    where = os.environ.get("PGOLF_BUNDLE_CACHE", "")
    if where == "off":
        return None
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pgolf" / "bundle"
    return Path(where) if where else base


def cached_forms(cfg: C.RunConfig) -> dict[str, bytes]:
    """`forms(cfg)`, from the cache when this exact bundle was built before."""
    folder = cache_dir()
    if folder is None:
        return forms(cfg)
    key = _cache_key(cfg)
    paths = {f: folder / f"{key}.{f}.py" for f in FORMS}
    if all(p.is_file() for p in paths.values()):
        return {f: p.read_bytes() for f, p in paths.items()}
    out = forms(cfg)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for f, p in paths.items():
            atomic_write(p, out[f])
    except OSError:
        pass  # a cache that cannot be written is no cache
    return out


def build(cfg: C.RunConfig, form: str = "auto") -> tuple[bytes, dict[str, Any]]:
    """(the bundle's bytes, a report of every form's size and which was chosen). `auto` keeps the
    smallest form; every form is compiled (and the wrappers' payloads decoded) as a check."""
    C.validate(cfg)
    all_forms = cached_forms(cfg)
    for name, blob in all_forms.items():
        compile(blob, f"train_gpt.py ({name})", "exec")
    sizes = {k: len(v) for k, v in all_forms.items()}
    if form == "auto":
        form = min(sizes, key=lambda k: sizes[k])
    if form not in all_forms:
        raise ValueError(f"bundle form {form!r}: choose one of auto, {', '.join(FORMS)}")
    return all_forms[form], {"form": form, "bytes": sizes[form], "sizes": sizes}


def code_size(cfg: C.RunConfig) -> tuple[int, str]:
    """Code bytes of a run with `cfg`: the length of the bundle `pgolf bundle` writes for it."""
    blob, rep = build(cfg)
    return len(blob), code_desc(rep["form"])


def write_bundle(cfg: C.RunConfig, out: str | Path, form: str = "auto") -> dict[str, Any]:
    """Write `train_gpt.py` for `cfg` to `out`; returns {path, bytes, form, sizes}."""
    blob, rep = build(cfg, form)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, blob)  # unique temporary name, removed on failure
    return {"path": str(out), **rep}
