"""The bundle's specializer and packer on small synthetic cores (fast): what it folds, what it
drops, what it must keep, and that the packed literal reads back byte for byte."""

from __future__ import annotations

import ast
import os
import random
import sys
from dataclasses import replace

import pytest

from pgolf import config as C
from pgolf.lab.bundle import pack
from pgolf.lab.bundle.specialize import specialize

CFG = C.load("cpu-tiny", [])  # smear_gate True, codec brotli, ttt.mode none


def _run(sources: dict[str, str]) -> dict:
    """Execute specialized sources the way the bundle does (one module table `_M`)."""
    import types

    table: dict = {}
    for name, src in sources.items():
        m = types.ModuleType(f"specialize_test.{name}")
        m._M = table
        table[name] = sys.modules[m.__name__] = m  # as the bundle does (dataclasses look it up)
        exec(compile(src, name, "exec"), m.__dict__)
    return table


CORE = {
    "lib": """
from __future__ import annotations

class Smear:
    def forward(self):
        return "smear"

class Plain:
    def forward(self):
        return "plain"

def pick(m: C.ModelConfig):
    if m.smear_gate:
        return Smear()
    return Plain()

def codec_name(codec):
    if codec == "brotli":
        return "b"
    return helper_for_others(codec)

def helper_for_others(codec):
    return "other:" + codec

def unused():
    return 1
""",
    "main": """
from __future__ import annotations
C = _M["lib"]
pick = _M["lib"].pick

def entry(cfg):
    refuse_folded(cfg)
    return run(cfg)

def refuse_folded(cfg):
    return cfg.model.smear_gate

def run(cfg: C.RunConfig):
    return pick(cfg.model).forward(), _M["lib"].codec_name(cfg.quant.codec)
""",
}


def _spec(sources=CORE, cfg=CFG, **kw):
    return specialize(dict(sources), cfg, entry=("main", "entry"), **kw)


def test_a_switch_is_folded_its_dead_code_dropped_and_the_fold_recorded():
    r = _spec()
    lib = r.sources["lib"]
    assert "Plain" not in lib and "unused" not in lib and "helper_for_others" not in lib
    assert ("model.smear_gate", "truth", None, True) in r.folded
    # codec reaches codec_name only through its one caller: folded as quant.codec
    assert ("quant.codec", "==", "brotli", True) in r.folded
    assert set(r.dropped["lib"]) >= {"Plain", "unused", "helper_for_others"}
    assert _run(r.sources)["main"].run(CFG) == ("smear", "b")
    # the other value of the switch keeps the other branch
    off = _spec(cfg=replace(CFG, model=replace(CFG.model, smear_gate=False)))
    assert "class Plain" in off.sources["lib"] and "class Smear" not in off.sources["lib"]
    # the functions run before the check are never folded
    assert "cfg.model.smear_gate" in r.sources["main"].split("def run")[0]


def test_nothing_is_folded_for_a_caller_that_passes_another_value():
    src = dict(CORE)
    src["main"] += """
def other(cfg: C.RunConfig):
    from pgolf_alias import nothing  # not a pgolf import: ignored
    codec_name = _M["lib"].codec_name
    return codec_name("zstd")

def entry2(cfg):
    return run(cfg), other(cfg)
"""
    r = specialize(src, CFG, entry=("main", "entry2"))
    assert "helper_for_others" in r.sources["lib"]  # called through a local alias with 'zstd'
    assert not any(f[0] == "quant.codec" for f in r.folded)


def test_a_parameter_rebound_to_another_value_is_not_folded_after_the_rebinding():
    """dist.pick_device's shape: `device` comes in as train.device ('auto') and is rebound."""
    src = {
        "main": """
from __future__ import annotations
def entry(cfg):
    refuse_folded(cfg)
    return run(cfg)
def refuse_folded(cfg):
    pass
def run(cfg: C.RunConfig):
    return pick(cfg.train.device)
def pick(device):
    if device == "auto":
        device = "cpu"
    if device not in ("cpu", "cuda"):
        raise ValueError(device)
    return device
"""
    }
    cfg = replace(CFG, train=replace(CFG.train, device="auto"))
    r = specialize(src, cfg, entry=("main", "entry"))
    assert r.seeds[("main", "pick")] == {"device": ("fld", "train", "device")}
    assert not r.folded  # rebound in the function: not the field any more (flow-insensitive)
    assert "raise ValueError" in r.sources["main"]
    assert _run(r.sources)["main"].entry(cfg) == "cpu"


@pytest.mark.parametrize(
    "rebind",
    ["def g():\n        nonlocal m\n        m = None\n    g()", "[(m := None) for _ in (1,)]"],
)
def test_a_config_name_rebound_from_a_nested_scope_is_not_folded(rebind):
    src = {
        "main": f"""
from __future__ import annotations
def entry(cfg):
    refuse_folded(cfg)
    return run(cfg)
def refuse_folded(cfg):
    pass
def run(cfg: C.RunConfig):
    m = cfg.model
    {rebind}
    return "none" if m is None else ("on" if m.smear_gate else "off")
"""
    }
    r = specialize(src, CFG, entry=("main", "entry"))
    assert not r.folded and _run(r.sources)["main"].entry(CFG) == "none"


def test_a_field_replaced_at_run_time_is_never_folded():
    src = dict(CORE)
    src["main"] = CORE["main"].replace(
        "return pick(cfg.model)", "m = replace(cfg.model, smear_gate=False)\n    return pick(m)"
    )
    r = _spec(src)
    assert "class Plain" in r.sources["lib"] and "class Smear" in r.sources["lib"]
    assert not any(f[0] == "model.smear_gate" for f in r.folded)


def test_numeric_tunables_are_never_folded_and_int_switches_only_while_off():
    src = {
        "main": """
from __future__ import annotations
def entry(cfg):
    refuse_folded(cfg)
    return run(cfg)
def refuse_folded(cfg):
    pass
def run(cfg: C.RunConfig):
    out = []
    if cfg.optim.matrix_lr > 0.01:
        out.append("lr")
    if cfg.model.fused_ce > 0:
        out.append("fused")
    if cfg.model.ve_dim > 0:
        out.append("ve")
    return out
"""
    }
    cfg = replace(CFG, model=replace(CFG.model, fused_ce=0, ve_dim=8))
    r = specialize(src, cfg, entry=("main", "entry"))
    keys = {f[0] for f in r.folded}
    assert keys == {"model.fused_ce"}  # off: its branch goes; lr (float) and ve_dim (on) stay
    assert "fused" not in r.sources["main"] and "matrix_lr" in r.sources["main"]


def test_methods_nothing_calls_go_but_framework_hooks_stay():
    src = {
        "main": """
from __future__ import annotations
import torch
from torch import nn
class Net(nn.Module):
    def forward(self, x):
        return x
    def extra_repr(self):
        return "net"
    def never_called(self):
        return 0
    def called(self):
        return 1
def entry(cfg):
    n = Net()
    return n.called()
"""
    }
    r = specialize(src, CFG, entry=("main", "entry"))
    out = r.sources["main"]
    assert "never_called" not in out and "Net.never_called" in r.dropped["main"]
    assert "def forward" in out and "def extra_repr" in out and "def called" in out


def test_classmethods_properties_and_methods_only_another_package_names_go():
    src = {
        "main": """
from __future__ import annotations
import os
from contextlib import contextmanager

class Run:
    def __init__(self, n):
        self._n = n

    def join(self, other):
        return self._n + other._n

    def split(self):
        return [self._n]

    @classmethod
    def open(cls, n):
        return cls(n)

    @classmethod
    def find(cls, path):
        return None

    @property
    def size(self):
        return self._n

    @property
    def unused_size(self):
        return 0

    @property
    def value(self):
        return self._n

    @value.setter
    def value(self, v):
        self._n = v

    @contextmanager
    def never_entered(self):
        yield

def entry(cfg):
    path = os.path.join("a", "b")  # another package's `join`: not Run.join
    run = Run.open(3)
    return run.size, run.split(), path
"""
    }
    r = specialize(src, CFG, entry=("main", "entry"))
    out = r.sources["main"]
    dropped = {"Run.find", "Run.unused_size", "Run.never_entered", "Run.join"}
    assert dropped <= set(r.dropped["main"]) and "def split" in out
    assert "def open" in out and "def size" in out
    assert out.count("def value") == 2  # the setter names its property: both stay
    assert _run(r.sources)["main"].entry(CFG) == (3, [3], os.path.join("a", "b"))


def test_refuse_folded_names_the_field_and_the_environment_variable():
    cfg = C.load("pr1550", [], environ={})
    folded = (("model.tie_embeddings", "truth", None, True), ("quant.calib", "==", "selfgen", True))
    C.refuse_folded(cfg, folded, "train_gpt.py", {})  # the frozen config passes
    bad = C.apply_env(cfg, {"TIE_EMBEDDINGS": "0"})
    with pytest.raises(SystemExit, match=r"model\.tie_embeddings=False \(set by TIE_EMBEDDINGS\)"):
        C.refuse_folded(bad, folded, "train_gpt.py", {"TIE_EMBEDDINGS": "0"})


def test_the_latin1_literal_reads_back_every_byte():
    rng = random.Random(0)
    cases = [bytes(range(256)) * 2, b"", b"'", b'"', b"''", b"'''", b"\\", b"\0" + b"7", b"\r\n"]
    cases += [bytes(rng.choice(b"\0\n\r'\"\\07a\x85") for _ in range(40)) for _ in range(200)]
    cases += [os.urandom(rng.randint(0, 300)) for _ in range(50)]
    for data in cases:
        src = pack.CODING + b"X = " + pack.latin1_literal(data) + b"\n"
        ns: dict = {}
        exec(compile(src, "t", "exec"), ns)
        assert ns["X"].encode("latin-1") == data, data


def test_the_wrapper_runs_its_payload_and_beats_base85():
    payload = ("X = 41 + 1\0mod\1y = 2\n" * 50).encode()
    body = pack.wrap(payload, "brotli", "latin1")
    ns: dict = {}
    exec(compile(body, "t", "exec"), ns)
    assert ns["X"] == 42 and ns["P"].startswith("X = 41")
    assert len(body) < len(pack.wrap(payload, "brotli", "base85"))
    assert ast.parse(body.decode("latin-1"))


def test_renamed_globals_keep_the_spellings_other_code_looks_up():
    """Module-level names are renamed, except those another module reads as an attribute, a
    table names in a string (the runners by `__name__`), or `getattr` finds by spelling."""
    lib = """
def run_plain():
    return "plain"

def _private_helper_with_a_long_name():
    return 40

def shared_by_attribute():
    return _private_helper_with_a_long_name() + 2

RUNNERS = {f.__name__: f for f in (run_plain,)}

def by_spelling(name):
    import sys
    return getattr(sys.modules[__name__], name)()
"""
    user = """
lib = _M["lib"]

def answer():
    return lib.shared_by_attribute(), lib.RUNNERS["run_plain"](), lib.by_spelling("run_plain")
"""
    loader = "_M['user'].answer()"  # the bundle's loader calls its entry point by attribute
    keep = pack.spelled([loader, lib, user])
    small = {n: pack.minify(s, keep) for n, s in {"lib": lib, "user": user}.items()}
    assert "_private_helper_with_a_long_name" not in small["lib"]  # renamed: it is private
    for name in ("run_plain", "shared_by_attribute", "RUNNERS", "by_spelling"):
        assert f"def {name}" in small["lib"] or f"{name}=" in small["lib"], name
    import sys
    import types

    table: dict = {}
    for name, src in small.items():
        m = types.ModuleType(f"h22b_{name}")
        m._M, table[name] = table, m
        sys.modules[m.__name__] = m
        exec(compile(src, name, "exec"), m.__dict__)
    try:
        assert table["user"].answer() == (42, "plain", "plain")
    finally:
        for name in small:
            sys.modules.pop(f"h22b_{name}", None)
    bare = pack.minify(lib)  # without the table the name the runners table needs is renamed
    assert "def run_plain" not in bare


def test_terse_env_tables_report_every_variable_in_the_same_shape():
    """The bundle's config_env keeps every row (no variable silent, every converter runs) and
    every `env:` line's shape; only the sentence becomes a pointer to `pgolf config show`."""
    import types

    from pgolf import config_env, modes
    from pgolf.lab.bundle import rewrite_imports, terse

    with open(config_env.__file__) as f:
        src = rewrite_imports(f.read(), "config_env")
    table: dict = {"modes": modes}
    m = types.ModuleType("terse_config_env")
    m._M = table
    exec(compile(terse.terse(src), "config_env", "exec"), m.__dict__)
    assert m.UNSUPPORTED.keys() == config_env.UNSUPPORTED.keys()
    assert m.CONVERTERS.keys() == config_env.CONVERTERS.keys()
    assert m.ENV_VARS == config_env.ENV_VARS
    assert [f for _, f in m.CONVERTERS.values()] != []
    env = {v: "1" for v in [*config_env.UNSUPPORTED, *config_env.CONVERTERS, "SEED"]}
    full, short = config_env.report(env), m.report(env)
    assert len(full) == len(short) == len(env) - 1 - len(config_env.USED_WITH)
    for a, b in zip(full, short, strict=True):
        if a.startswith("env:not supported: "):
            assert b == a[: a.index(" (")] + f" ({terse.REASON})"
        else:
            assert b == a[: a.index(" -> ")] + f" -> {terse.CONVERTED}"
    cfg = C.load("pr1550", [])  # a converter still converts
    assert m.CONVERTERS["NUM_LOOPS"][1](cfg, "2", {}) == config_env.CONVERTERS["NUM_LOOPS"][1](
        cfg, "2", {}
    )


def test_runners_narrowed_to_the_frozen_mode_and_any_other_mode_refused():
    """score.RUNNERS keeps the evaluators' runners and the frozen TTT mode's; the predicate it
    returns makes `refuse_folded` stop any other TTT mode by name before anything runs."""
    from pgolf import score
    from pgolf.lab.bundle import narrow

    with open(score.__file__) as f:
        src = f.read()
    cfg = C.load("pr1550", [])
    out, check = narrow.runners(src, cfg)
    tree = ast.parse(out)
    (comp,) = [
        s.value for s in tree.body if getattr(s, "target", None) and s.target.id == "RUNNERS"
    ]
    kept = {e.id for e in comp.generators[0].iter.elts}
    assert kept == {"run_plain", "run_sliding", "run_prequant"}
    assert check == ("ttt.mode", "in", ("none", "prequant"), True)
    C.refuse_folded(cfg, (check,), "train_gpt.py", {})  # its own mode passes
    C.refuse_folded(replace(cfg, ttt=replace(cfg.ttt, mode="none")), (check,), "t.py", {})
    other = replace(cfg, ttt=replace(cfg.ttt, mode="score_first"))
    with pytest.raises(SystemExit, match="ttt.mode='score_first'"):
        C.refuse_folded(other, (check,), "train_gpt.py", {"TTT_ENABLED": "1"})
    tiny, _ = narrow.runners(src, CFG)  # ttt.mode none: no TTT runner but the sliding one
    assert "run_score_first" not in tiny.split("RUNNERS", 1)[1].split("\n", 1)[0]


METHOD_CORE = {
    "lib": """
from __future__ import annotations

def load(path):
    return "loaded " + path

class Job:
    def __init__(self, n):
        self.n = n

    def go(self, resume=None):
        if resume:
            return load(resume)
        return "fresh"

def stage(n, **options):
    return Job(n).go(**options)
""",
    "main": """
from __future__ import annotations
stage = _M["lib"].stage

def entry(cfg):
    refuse_folded(cfg)
    return stage(1)

def refuse_folded(cfg):
    return None
""",
}


def test_a_method_every_caller_calls_with_one_constant_is_folded_and_its_dead_code_dropped():
    """`Job(...).go(**options)` where no caller fills `options`: resume is None at every call,
    so the resume branch and what only it calls go."""
    r = specialize(dict(METHOD_CORE), CFG, entry=("main", "entry"))
    assert "load" not in r.sources["lib"] and "load" in r.dropped["lib"]
    assert _run(r.sources)["main"].entry(CFG) == "fresh"
    # a caller that passes a path keeps the branch
    other = dict(METHOD_CORE)
    other["main"] = other["main"].replace("stage(1)", "stage(1), stage(2, resume='ck')")
    r = specialize(other, CFG, entry=("main", "entry"))
    assert "def load" in r.sources["lib"]
    assert _run(r.sources)["main"].entry(CFG) == ("fresh", "loaded ck")
    # so does an unbound call, or a bound method that escapes
    for call in (
        "_M['lib'].Job.go(_M['lib'].Job(1), 'ck')",
        "[_M['lib'].Job(1).go][0]('ck')",
    ):
        src = dict(METHOD_CORE)
        src["main"] = src["main"].replace("stage(1)", f"stage(1), {call}")
        assert "def load" in specialize(src, CFG, entry=("main", "entry")).sources["lib"], call


HOLDER = {
    "holder": """
from __future__ import annotations

class Net:
    def __init__(self, cfg: C.ModelConfig):
        self.cfg = cfg

    def forward(self):
        if self.cfg.smear_gate:
            return "smear"
        return "plain"
""",
    "toggler": """
from __future__ import annotations

def toggle(net, cfg):
    net.cfg = cfg  # a store from outside the class: self.cfg is no longer one typed value
""",
    "main": """
from __future__ import annotations

def run(cfg: C.RunConfig):
    refuse_folded(cfg)
    return _M["holder"].Net(cfg.model).forward()

def refuse_folded(cfg):
    return None
""",
}


def test_an_attribute_store_in_a_left_out_module_does_not_block_folding():
    """A store into `x.cfg` untypes `self.cfg` only where that code can run: a module the bundle
    leaves out (a stub raising on first use, e.g. phased TTT's `model.cfg = ...`) does not."""
    src = {k: v.replace("C.ModelConfig", "ModelConfig") for k, v in HOLDER.items()}
    src = {k: "from pgolf.config import ModelConfig, RunConfig\n" + v for k, v in src.items()}
    src = {k: v.replace("C.RunConfig", "RunConfig") for k, v in src.items()}
    kept = specialize(src, CFG, entry=("main", "run"))
    assert ("model.smear_gate", "truth", None, True) not in kept.folded  # toggler may run
    left_out = specialize(src, CFG, entry=("main", "run"), absent={"toggler"})
    assert ("model.smear_gate", "truth", None, True) in left_out.folded
    assert "plain" not in left_out.sources["holder"]


TRUTH_CORE = {
    "main": """
from __future__ import annotations

def entry(cfg: C.RunConfig, targets=None):
    refuse_folded(cfg)
    return loss(cfg, targets), guarded(cfg), count(cfg)

def refuse_folded(cfg):
    return None

def loss(cfg: C.RunConfig, targets=None):
    if targets is not None and cfg.model.fused_ce > 0:
        return fused(targets)
    return "plain"

def fused(targets):
    return "fused"

def guarded(cfg: C.RunConfig):
    window = cfg.model.smear_gate and cfg.model.fused_ce > 0 or False
    if window and cfg.model.model_dim:
        return windowed()
    return "no window"

def windowed():
    return "window"

CALLS = []

def count(cfg: C.RunConfig):
    if note() and cfg.model.fused_ce > 0:
        return "never"
    return len(CALLS)

def note():
    CALLS.append(1)
    return True
""",
}


def test_a_pure_operand_beside_a_folded_false_goes_with_it():
    """`targets is not None and <folded False>` is falsy whatever `targets` is: the branch and
    what only it calls go; a local bound once to such a value folds too; an operand with an
    effect (a call) is kept and still runs."""
    r = specialize(dict(TRUTH_CORE), CFG, entry=("main", "entry"))
    main = r.sources["main"]
    assert "fused" in r.dropped["main"] and "windowed" in r.dropped["main"]
    assert "note()" in main and "never" in main  # its effect stays, so does its `if`
    assert _run(r.sources)["main"].entry(CFG, targets=[1]) == ("plain", "no window", 1)
    fused_on = replace(CFG, model=replace(CFG.model, fused_ce=64))
    r_on = specialize(dict(TRUTH_CORE), fused_on, entry=("main", "entry"))
    assert "def fused" in r_on.sources["main"] and "def windowed" in r_on.sources["main"]


def _modes_core(extra: str = "") -> dict[str, str]:
    import pgolf.modes

    return {
        "modes": open(pgolf.modes.__file__).read(),
        "main": """
from __future__ import annotations
M = _M["modes"]

def entry(cfg: C.RunConfig):
    refuse_folded(cfg)
    return stage(cfg)

def refuse_folded(cfg):
    return None

def stage(cfg: C.RunConfig):
    spec = M.MODES[cfg.ttt.mode]
    tilted = cfg.eval.ngram_tilt and spec.tilt
    if not (spec.adapts or tilted):
        return "scored"
    return adapt(cfg)

def adapt(cfg):
    return "adapted"
"""
        + extra,
    }


def test_a_core_table_row_keyed_by_a_switch_folds_and_other_keys_are_refused():
    """`M.MODES[cfg.ttt.mode].adapts` is decided by the frozen mode: it folds, the check allows
    exactly the modes whose row answers the same, and a bool switch used as a value
    (`tilted = cfg.eval.ngram_tilt and ...`) folds with it."""
    from pgolf import modes as M

    r = specialize(_modes_core(), CFG, entry=("main", "entry"))
    assert "adapt" in r.dropped["main"]
    assert _run(r.sources)["main"].entry(CFG) == "scored"
    same = tuple(k for k, m in M.MODES.items() if not m.adapts)
    assert ("ttt.mode", "in", same, True) in r.folded and CFG.ttt.mode in same
    assert ("eval.ngram_tilt", "truth", None, False) in r.folded
    lora = replace(CFG, ttt=replace(CFG.ttt, mode="lora"))
    with pytest.raises(SystemExit, match="ttt.mode='lora'"):
        C.refuse_folded(lora, r.folded, "train_gpt.py", {"TTT_MODE": "lora"})
    assert "def adapt" in specialize(_modes_core(), lora, entry=("main", "entry")).sources["main"]
    # a table some code stores into is read at run time, never folded
    stored = _modes_core("\ndef patch():\n    M.MODES['none'] = M.MODES['lora']\n")
    assert "def adapt" in specialize(stored, CFG, entry=("main", "entry")).sources["main"]


def test_a_local_that_shadows_a_function_does_not_hide_its_callers():
    """`run = new_run(...)` inside `def run(...)`, passed on as a value, is the local, not a use
    of the function `run`: every call of `run` still passes quantize=True, so it folds."""
    src = {
        "main": """
from __future__ import annotations

def entry(cfg):
    refuse_folded(cfg)
    return run(cfg)

def refuse_folded(cfg):
    return None

def run(cfg, quantize=True):
    run = folder(cfg)
    return stage(run, quantize)

def folder(cfg):
    return "folder"

def stage(where, quantize):
    if quantize:
        return "quantized in " + where
    return other()

def other():
    return "other"
"""
    }
    r = specialize(src, CFG, entry=("main", "entry"))
    assert "other" in r.dropped["main"]
    assert _run(r.sources)["main"].entry(CFG) == "quantized in folder"


KW_CORE = {
    "artifact_check": """
from __future__ import annotations
ENTROPY_CODECS = ("rans", "crans")
""",
    "main": """
from __future__ import annotations
ENTROPY_CODECS = _M["artifact_check"].ENTROPY_CODECS

def entry(cfg: C.RunConfig):
    refuse_folded(cfg)
    return save("x", codec=cfg.quant.codec, pack_bits=cfg.quant.pack_bits)

def refuse_folded(cfg):
    return None

def save(path, **kw):
    return path + ":" + encode(**kw)

def encode(codec="brotli", pack_bits=False):
    body = payload(pack_bits)
    if codec in ENTROPY_CODECS:
        return entropy(body)
    return codec + ":" + body

def payload(packed):
    return pack_bits() if packed else "raw"

def pack_bits():
    return "packed"

def entropy(body):
    return "entropy:" + body
""",
}


def test_keywords_passed_on_through_kw_fold_and_a_parameter_does_not_keep_a_namesake():
    """`save(codec=..., pack_bits=...)` passes its `**kw` on to `encode`: every caller agrees, so
    `encode` sees the frozen codec and pack_bits; `codec in ENTROPY_CODECS` (another core
    module's constant) folds; the parameter `pack_bits` is not a use of the function
    `pack_bits`, which goes with the branch that called it."""
    r = specialize(dict(KW_CORE), CFG, entry=("main", "entry"))
    assert {"pack_bits", "entropy"} <= set(r.dropped["main"])
    assert ("quant.pack_bits", "truth", None, False) in r.folded
    assert ("quant.codec", "in", ("rans", "crans"), False) in r.folded
    assert _run(r.sources)["main"].entry(CFG) == "x:brotli:raw"
    crans = replace(CFG, quant=replace(CFG.quant, codec="crans", pack_bits=True))
    r = specialize(dict(KW_CORE), crans, entry=("main", "entry"))
    assert "def entropy" in r.sources["main"] and "def pack_bits" in r.sources["main"]
    # a `**kw` changed before it is passed on holds more than the callers passed
    changed = dict(KW_CORE)
    changed["main"] = changed["main"].replace(
        "    return path + ", '    kw["pack_bits"] = True\n    return path + '
    )
    r = specialize(changed, CFG, entry=("main", "entry"))
    assert _run(r.sources)["main"].entry(CFG) == "x:brotli:packed"
    # a second caller passing other keywords: `**kw` is unknown, nothing folds through it
    other = dict(KW_CORE)
    other["main"] = other["main"].replace(
        "return save(", "save('y', codec='lzma')\n    return save("
    )
    r = specialize(other, CFG, entry=("main", "entry"))
    assert "def pack_bits" in r.sources["main"] and "def entropy" in r.sources["main"]


def test_imports_and_local_stores_nothing_reads_go_and_effects_stay():
    src = {
        "main": """
from __future__ import annotations
import os
from json import dumps, loads
from torch import Tensor, nn

LOG = []

def entry(cfg):
    helper = _M["main"].noted
    flag = False
    mode, spec = (cfg.ttt.mode, os.sep)
    kept = noted(1)
    width = 3
    return dumps([width, nn.Module.__name__, len(LOG)])

def noted(x):
    LOG.append(x)
    return x
"""
    }
    r = specialize(src, CFG, entry=("main", "entry"), fold=False)
    out = r.sources["main"]
    assert "loads" not in out and "Tensor" not in out and "import os" not in out
    assert "from torch import nn" in out and "dumps" in out
    assert "helper" not in out and "flag" not in out and "spec" not in out
    assert "kept = noted(1)" in out  # a call may do something: it stays
    assert _run(r.sources)["main"].entry(CFG) == '[3, "Module", 1]'


def test_a_replace_in_a_pruned_method_does_not_unfold_its_field():
    """A kept class's method that nothing calls is pruned and never runs: the `replace(...)` in
    it sets no field at run time, so the field still folds (`QuantPlan.into` replaces
    quant.lqer; pr1550's bundle keeps QuantPlan but not `into`). Called, it unfolds it."""
    src = dict(CORE)
    src["lib"] = (
        CORE["lib"]
        + """
class Plan:
    def kept(self):
        return 1

    def into(self, m):
        return replace(m, smear_gate=False)
"""
    )
    src["main"] = CORE["main"].replace(
        "return pick(", "Plan = _M['lib'].Plan\n    Plan().kept()\n    return pick("
    )
    r = _spec(src)
    assert "Plan.into" in r.dropped["lib"] and "class Plain" not in r.sources["lib"]
    assert ("model.smear_gate", "truth", None, True) in r.folded
    called = dict(src, main=src["main"].replace("Plan().kept()", "Plan().into(cfg.model)"))
    r = _spec(called)
    assert "class Plain" in r.sources["lib"] and "class Smear" in r.sources["lib"]
    assert not any(f[0] == "model.smear_gate" for f in r.folded)
