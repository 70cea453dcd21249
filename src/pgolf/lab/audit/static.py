"""`pgolf audit --static SCRIPT`: a static PRE-SCREEN of a submission script (ours or not), the
kind of AST check the community reviewers automated (spec rules-and-compliance.md, "Static
pre-screen"). It reads the script and every payload the script exec's (`unpack`: packed code is
decoded, never run), and grades each finding:

* `violation`: the code does what a ruling named (file:line and the evidence);
* `audit`: a pattern the empirical tests of `pgolf audit ARTIFACT` must decide (a mixture whose
  normalization the screen cannot see, an `exec` it could not decode, ...);
* `note`: context for the reviewer (switches that default off, `inference_mode` blocks).

A clean screen proves nothing; the empirical tests are the ground truth. Rules:

* `val-train` (C3): a `backward()` whose loss derives (through assignments, and through the
  arguments of the calls that reach the function) from validation data, where those tokens were
  not scored first: no scoring earlier in an enclosing loop, none earlier in the function, or,
  where the function has none, at every call site the same test holds. Scored AFTER the update in
  the same function (pre-quant TTT, SLOT) is the violation.
* `target-hash` (C1/C2): a cache/table read whose key derives from the target (a target name, or
  the token at the scored position `a[p]` of an array also read at `a[p - k]`), the #779 family;
  a cache query given the target (`audit`).
* `oracle-min` / `multi-pass` (C4): a per-token minimum or a keep-the-lower-loss branch over two
  scorings; a score sum accumulated inside an epoch/pass loop that also trains.
* `unnormalized-mix` (C2, `audit`): a cache/n-gram term added to the model's probability where
  the cache term derives from the target (formed for the realized token only), or in a scoring
  function with no renormalization over the vocabulary.
* `subset-eval`: an evaluation-subset limit whose default truncates (`violation`) or can
  (`note`); a prefix slice of the validation tokens. Batch sizes (`VAL_BATCH_TOKENS`) are
  not limits.
* `bos-switch-off` (T1.4) and `inference-mode` (T3.5): notes.
* `exec-undecoded` (`audit`): an `exec` whose payload the screen could not decode.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pgolf.lab.audit.unpack import Unit, units

VAL = re.compile(r"^val(_|$)|_val(_|$)", re.I)
TARGET = re.compile(
    r"^(y|ys|y_\w+|(\w+_)?targets?(_\w+)?|(\w+_)?tgts?(_\w+)?|labels?(_\w+)?|next_tok\w*|gold\w*)$",
    re.I,
)
CACHE = re.compile(r"cache|table|count|hash|bucket|ngram|gram_|full|ppm", re.I)
MIXER = re.compile(
    r"ngram|n_gram|(^|_)ng(_|$)|cache|ppm|count|bigram_p|gram_p|tilt|hint|mem_p", re.I
)
MODEL_P = re.compile(r"^(p|probs?|p_model|model_p\w*|nn_p\w*|logits?|lp|logp\w*|p_nn\w*)$", re.I)
MODEL_NAME = re.compile(r"model|neural|^nn_|_nn$|lo_n$", re.I)
SCORE_SUM = re.compile(r"(loss|nll|bpb|bits)s?_?(sum|total|acc)|(total|sum)_?(loss|nll|bits)", re.I)
LOSSY = re.compile(r"nll|loss|bpb", re.I)
PASS_LOOP = re.compile(r"epoch|pass", re.I)
SCORE_FN = re.compile(r"cross_entropy|nll_loss|log_softmax|logsumexp|^softmax$", re.I)
SCORE_CALL = re.compile(r"cross_entropy|nll_loss|log_softmax|logits|forward|model|loss", re.I)
UPDATE = re.compile(r"update|add|push|observe|append|record|insert|extend|learn|train", re.I)
NORMALIZE = re.compile(r"softmax|logsumexp|normaliz|renorm", re.I)
BOS_ENV = re.compile(r"BOS|DOC_?(MASK|ISO)|SMEAR\w*(FIX|MASK|RESET|DOC)", re.I)
LIMIT_ENV = re.compile(
    r"^(?!.*(BATCH|EVERY|SEQ|STRIDE|LEN))(VAL\w*(TOKENS|DOCS|LIMIT|MAX|SUBSET|FRAC\w*)|"
    r"\w*SUBSET\w*|MAX_VAL\w*|EVAL_(MAX_)?TOKENS|\w*VAL_DOCS)$",
    re.I,
)
TARGET_POS = "<token at the scored position>"
VAL_ARG = "<validation data passed in>"
TGT_ARG = "<target passed in>"
LOOPS = (ast.For, ast.AsyncFor, ast.While)
DEFS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)


@dataclass(frozen=True)
class Finding:
    rule: str
    line: int
    message: str
    grade: str = "note"  # violation | audit | note
    condition: str = ""  # C1..C4, subset, T1.4, T3.5
    file: str = ""
    evidence: str = ""


def _call_name(node: ast.Call) -> str:
    f = node.func
    return f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""


def _names(node: ast.AST | None) -> set[str]:
    out: set[str] = set()
    if node is None:
        return out
    for n in ast.walk(node):
        if isinstance(n, ast.Name):
            out.add(n.id)
        elif isinstance(n, ast.Attribute):
            out.add(n.attr)
    return out


def _src(node: ast.AST, n: int = 80) -> str:
    return " ".join(ast.unparse(node).split())[:n]


def _own(node: ast.AST) -> Iterator[ast.AST]:
    """`node`'s subtree without the bodies of nested defs/classes (their own scopes)."""
    stack = list(ast.iter_child_nodes(node))
    while stack:
        n = stack.pop()
        yield n
        if not isinstance(n, (*DEFS, ast.ClassDef)):
            stack.extend(ast.iter_child_nodes(n))


def _targets(t: ast.AST) -> list[str]:
    if isinstance(t, ast.Name):
        return [t.id]
    if isinstance(t, ast.Attribute):
        return [t.attr]
    if isinstance(t, ast.Subscript | ast.Starred):
        return _targets(t.value)
    if isinstance(t, ast.Tuple | ast.List):
        return [x for e in t.elts for x in _targets(e)]
    return []


class Index:
    """One unit's tree with parents, defs by name, per-scope assignment graphs, call sites."""

    def __init__(self, tree: ast.Module) -> None:
        self.tree = tree
        self.parent: dict[ast.AST, ast.AST] = {}
        for n in ast.walk(tree):
            for c in ast.iter_child_nodes(n):
                self.parent[c] = n
        self.defs: dict[str, list[ast.AST]] = {}
        self.scopes: list[ast.AST] = [tree]
        for n in ast.walk(tree):
            if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef):
                self.defs.setdefault(n.name, []).append(n)
                self.scopes.append(n)
        self.deps = {s: self._deps(s) for s in self.scopes}
        self.calls: dict[str, list[ast.Call]] = {}
        for n in ast.walk(tree):
            if isinstance(n, ast.Call) and _call_name(n) in self.defs:
                self.calls.setdefault(_call_name(n), []).append(n)
        self.target_pos = {s: self._target_positions(s) for s in self.scopes}
        self._rhs: dict[ast.AST, list] = {}
        self.calls_in = {s: [n for n in _own(s) if isinstance(n, ast.Call)] for s in self.scopes}

    def scope(self, node: ast.AST) -> ast.AST:
        n = self.parent.get(node)
        while n is not None and not isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef):
            n = self.parent.get(n)
        return n if n is not None else self.tree

    def loops(self, node: ast.AST) -> list[ast.AST]:
        """Enclosing loops of `node` inside its scope, innermost first."""
        out, n = [], self.parent.get(node)
        while n is not None and not isinstance(n, DEFS):
            if isinstance(n, LOOPS):
                out.append(n)
            n = self.parent.get(n)
        return out

    def _deps(self, scope: ast.AST) -> dict[str, set[ast.AST]]:
        """name -> the right-hand sides assigned to it in `scope` (flow-insensitive)."""
        out: dict[str, set[ast.AST]] = {}

        def add(target: ast.AST, value: ast.AST) -> None:
            for name in _targets(target):
                out.setdefault(name, set()).add(value)

        if isinstance(scope, ast.FunctionDef | ast.AsyncFunctionDef):
            a = scope.args
            pos = a.posonlyargs + a.args
            for p, d in zip(pos[len(pos) - len(a.defaults) :], a.defaults, strict=True):
                add(ast.Name(p.arg), d)
            for p, d in zip(a.kwonlyargs, a.kw_defaults, strict=True):
                if d is not None:
                    add(ast.Name(p.arg), d)
        for n in _own(scope):
            if isinstance(n, ast.Assign):
                for t in n.targets:
                    add(t, n.value)
            elif isinstance(n, ast.AugAssign | ast.AnnAssign) and n.value is not None:
                add(n.target, n.value)
            elif isinstance(n, ast.For | ast.comprehension):
                add(n.target, n.iter)
            elif isinstance(n, ast.withitem) and n.optional_vars is not None:
                add(n.optional_vars, n.context_expr)
            elif isinstance(n, ast.NamedExpr):
                add(n.target, n.value)
        return out

    def _target_positions(self, scope: ast.AST) -> set[ast.AST]:
        """Subscripts `a[p]` where the same scope also reads `a[p - k]` / `a[p + k]`: `a[p]` is
        the token at the scored position when the others are its context."""
        plain: dict[tuple[str, str], list[ast.AST]] = {}
        offset: set[tuple[str, str]] = set()
        for n in _own(scope):
            if not (isinstance(n, ast.Subscript) and isinstance(n.value, ast.Name)):
                continue
            s = n.slice
            if isinstance(s, ast.Name):
                plain.setdefault((n.value.id, s.id), []).append(n)
            elif isinstance(s, ast.BinOp) and isinstance(s.left, ast.Name):
                if isinstance(s.op, ast.Sub | ast.Add):
                    offset.add((n.value.id, s.left.id))
        return {x for k, v in plain.items() if k in offset for x in v}

    def rhs(self, scope: ast.AST) -> list[tuple[str, frozenset[str], frozenset[int]]]:
        """(assigned name, names read on the right, ids of the calls/subscripts there)."""
        if scope not in self._rhs:
            rows = []
            for name, values in self.deps[scope].items():
                for v in values:
                    nodes = list(ast.walk(v))
                    names = frozenset(
                        x.id if isinstance(x, ast.Name) else x.attr
                        for x in nodes
                        if isinstance(x, ast.Name | ast.Attribute)
                    )
                    ids = frozenset(id(x) for x in nodes if isinstance(x, ast.Call | ast.Subscript))
                    rows.append((name, names, ids))
            self._rhs[scope] = rows
        return self._rhs[scope]

    def tainted(
        self, scope: ast.AST, seed: Callable[[str], bool], extra: set[str], marks: set[ast.AST]
    ) -> set[str]:
        """Names of `scope` that derive from a seed name, an `extra` name, or an expression
        containing one of `marks` (nodes that carry the property themselves)."""
        rows = self.rhs(scope)
        mark_ids = {id(m) for m in marks}
        out = set(extra)
        users: dict[str, list[str]] = {}
        for name, names, ids in rows:
            if seed(name) or (ids & mark_ids) or any(seed(x) for x in names):
                out.add(name)
            for x in names:
                users.setdefault(x, []).append(name)
        todo = list(out)
        while todo:
            x = todo.pop()
            for name in users.get(x, ()):
                if name not in out:
                    out.add(name)
                    todo.append(name)
        return out


def _expr_hit(expr: ast.AST, names: set[str], seed: Callable[[str], bool], marks=()) -> list[str]:
    hits = []
    for x in ast.walk(expr):
        if x in marks:
            hits.append(_src(x, 40))
        elif isinstance(x, ast.Name | ast.Attribute):
            name = x.id if isinstance(x, ast.Name) else x.attr
            if name in names or seed(name):
                hits.append(name)
    return sorted(set(hits))


class Flow:
    """A property (validation data, the target) followed through assignments and calls."""

    def __init__(
        self, ix: Index, seed: Callable[[str], bool], marks: dict[ast.AST, set[ast.AST]]
    ) -> None:
        self.ix, self.seed, self.marks = ix, seed, marks
        self.extra: dict[ast.AST, set[str]] = {s: set() for s in ix.scopes}
        self.returns: set[str] = set()  # defs whose return value carries the property
        for _ in range(4):  # arguments -> parameters, returns -> call results
            self.mark = {s: self._marks(s) for s in ix.scopes}
            self.names = {s: ix.tainted(s, seed, self.extra[s], self.mark[s]) for s in ix.scopes}
            if not self._propagate():
                break

    def _marks(self, scope: ast.AST) -> set[ast.AST]:
        m = set(self.marks.get(scope, ()))
        m.update(n for n in self.ix.calls_in[scope] if _call_name(n) in self.returns)
        return m

    def has(self, scope: ast.AST, expr: ast.AST) -> list[str]:
        return _expr_hit(expr, self.names[scope], self.seed, self.mark[scope])

    def _propagate(self) -> bool:
        changed = False
        for name, calls in self.ix.calls.items():
            for d in self.ix.defs[name]:
                params = [a.arg for a in d.args.posonlyargs + d.args.args]
                if params[:1] == ["self"] or params[:1] == ["cls"]:
                    params = params[1:]
                for c in calls:
                    caller = self.ix.scope(c)
                    pairs = list(zip(params, c.args, strict=False))
                    pairs += [(k.arg, k.value) for k in c.keywords if k.arg]
                    for p, arg in pairs:
                        if p not in self.extra[d] and self.has(caller, arg):
                            self.extra[d].add(p)
                            changed = True
                if name not in self.returns and any(
                    isinstance(r, ast.Return) and r.value is not None and self.has(d, r.value)
                    for r in _own(d)
                ):
                    self.returns.add(name)
                    changed = True
        return changed


# ------------------------------------------------------------------------------------------------
# Scoring: what counts as scoring the validation tokens


def _no_grad(item: ast.AST) -> bool:
    s = ast.unparse(item)
    return "no_grad" in s or "inference_mode" in s


class Scoring:
    def __init__(self, ix: Index) -> None:
        self.ix = ix
        self.defs: set[str] = set()
        for _ in range(4):
            new = {
                name
                for name, ds in ix.defs.items()
                if any(self._def_scores(d) for d in ds) and name not in self.defs
            }
            if not new:
                break
            self.defs |= new

    def _def_scores(self, d: ast.AST) -> bool:
        decorated = any(_no_grad(x) for x in getattr(d, "decorator_list", ()))
        for n in _own(d):
            if self.node(n):
                return True
            if (
                decorated
                and isinstance(n, ast.Call)
                and SCORE_CALL.search(_call_name(n))
                and _call_name(n) not in ("eval", "train")
            ):
                return True
        return False

    def node(self, n: ast.AST) -> bool:
        """`n` scores: a no-grad block that runs the model / a loss, a score-sum accumulation,
        or a call of a scoring def (a call merely named eval*/score* that is not defined here
        counts only with arguments: `model.eval()` is not scoring)."""
        if isinstance(n, ast.With | ast.AsyncWith):
            if any(_no_grad(i.context_expr) for i in n.items):
                return any(self._scores_inside(c) for s in n.body for c in ast.walk(s))
            return False
        if isinstance(n, ast.AugAssign):
            return any(SCORE_SUM.search(t) for t in _targets(n.target))
        if isinstance(n, ast.Call):
            name = _call_name(n)
            if any(isinstance(a, ast.Name) and a.id in self.defs for a in n.args):
                return True  # a scoring def handed to a runner: `timed_eval("x", eval_val, ...)`
            if name in self.ix.defs:
                return name in self.defs
            return bool(re.match(r"(eval|score)", name, re.I)) and bool(n.args or n.keywords)
        return False

    def _scores_inside(self, c: ast.AST) -> bool:
        """Inside a no-grad block: a loss / log-probabilities, a forward of the model to its
        logits or loss, a score accumulation, or a scoring def; a forward for hidden states
        alone (SLOT's frozen `H`) is not scoring."""
        if isinstance(c, ast.AugAssign):
            return any(LOSSY.search(t) or SCORE_SUM.search(t) for t in _targets(c.target))
        if not isinstance(c, ast.Call):
            return False
        name = _call_name(c)
        if SCORE_FN.search(name) or (name in self.ix.defs and name in self.defs):
            return True
        forward = re.search("model|logits", name, re.I) and "hidden" not in name.lower()
        return bool(forward) and len(c.args) >= 1

    def within(self, node: ast.AST) -> list[ast.AST]:
        return [n for n in _own(node) if self.node(n)]


# ------------------------------------------------------------------------------------------------
# Rules


def _off_switches(ix: Index) -> dict[str, str]:
    """Names assigned from an environment switch that defaults to off -> the variable."""
    out = {}
    for n in ast.walk(ix.tree):
        if isinstance(n, ast.Assign | ast.AnnAssign) and n.value is not None:
            for c in ast.walk(n.value):
                env = _env_call(c)
                if env and env[1]:
                    targets = n.targets if isinstance(n, ast.Assign) else [n.target]
                    for t in targets:
                        for x in _targets(t):
                            out[x] = env[0]
    return out


def _env_call(c: ast.AST) -> tuple[str, bool] | None:
    """(variable, defaults off) for `os.environ.get("NAME", default)` / `getenv`."""
    if not (isinstance(c, ast.Call) and _call_name(c) in ("get", "getenv") and c.args):
        return None
    first = c.args[0]
    if not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
        return None
    if not re.fullmatch(r"[A-Z][A-Z0-9_]*", first.value):
        return None
    default = c.args[1] if len(c.args) > 1 else None
    dval = default.value if isinstance(default, ast.Constant) else None
    off = default is None or str(dval).lower() in ("0", "false", "", "none", "-1", "0.0")
    return first.value, off


def _switched_off(ix: Index, node: ast.AST, off: dict[str, str]) -> str:
    """The env switch (default off) guarding `node`: an enclosing `if` in its scope, or, for a
    def, the `if` around every call site."""
    for _ in range(3):
        scope = ix.scope(node)
        deps = ix.deps[scope]
        p = ix.parent.get(node)
        while p is not None and p is not scope:
            if isinstance(p, ast.If):
                names = _names(p.test)
                for nm in list(names):  # one assignment back; `getattr(args, "flag", ...)`
                    for v in deps.get(nm, ()):
                        names |= _names(v) | {
                            c.value
                            for c in ast.walk(v)
                            if isinstance(c, ast.Constant) and isinstance(c.value, str)
                        }
                for nm in names:
                    if nm in off:
                        return off[nm]
            p = ix.parent.get(p)
        sites = ix.calls.get(getattr(scope, "name", ""), [])
        if len(sites) != 1:
            return ""
        node = sites[0]
    return ""


def _discarded(ix: Index, sc: Scoring, node: ast.Call, scope: ast.AST) -> str:
    """A `del` after the backward, before any later scoring, of a name the loss was computed
    with (a throwaway warm-up adapter): the names deleted, or ''."""
    deps = ix.deps[scope]
    used = _names(node.func.value)
    used |= {x for nm in list(used) for v in deps.get(nm, ()) for x in _names(v)}
    later = [s.lineno for s in sc.within(scope) if s.lineno > node.lineno]
    stop = min(later) if later else 1 << 30
    for d in _own(scope):
        if isinstance(d, ast.Delete) and node.lineno < d.lineno < stop:
            gone = {x for t in d.targets for x in _targets(t)} & used
            if gone:
                return ", ".join(sorted(gone))
    return ""


def _context_only(ix: Index, node: ast.Call, scope: ast.AST) -> str:
    """The bound `s` when the loss reaches the data only through prefix slices `[:s]` and the
    same loop scores a slice `[s:...]` after it (a context-only update, ETLB-style)."""
    deps = ix.deps[scope]
    seen, todo, bounds = set(), [node.func.value], set()
    while todo:
        e = todo.pop()
        for x in ast.walk(e):
            if isinstance(x, ast.Slice) and x.lower is None and isinstance(x.upper, ast.Name):
                bounds.add(x.upper.id)
            if isinstance(x, ast.Name) and x.id not in seen:
                seen.add(x.id)
                todo.extend(deps.get(x.id, ()))
    loops = ix.loops(node)
    if not bounds or not loops:
        return ""
    for x in _own(loops[-1]):
        if (
            isinstance(x, ast.Slice)
            and isinstance(x.lower, ast.Name)
            and x.lower.id in bounds
            and x.lower.lineno > node.lineno
        ):
            return x.lower.id
    return ""


def _reaching(ix: Index, flow: Flow, scope: ast.AST, expr: ast.AST, at: ast.AST, depth: int):
    """`flow.has`, but a name assigned earlier in the innermost loop around `at` is followed
    through those assignments only (the batch a training step reads is the one fetched in its
    loop, whatever else the name holds elsewhere in the function)."""
    loops = ix.loops(at)
    if not loops or depth > 6:
        return flow.has(scope, expr)
    local: dict[str, list[ast.AST]] = {}
    for n in _own(loops[0]):
        if isinstance(n, ast.Assign | ast.AugAssign | ast.AnnAssign) and n.value is not None:
            if n.lineno <= at.lineno and n is not ix.parent.get(at):
                targets = n.targets if isinstance(n, ast.Assign) else [n.target]
                for t in targets:
                    for name in _targets(t):
                        local.setdefault(name, []).append(n.value)
    for c in ast.walk(expr):  # comprehension variables are bound by their own iterables
        if isinstance(c, ast.comprehension):
            for name in _targets(c.target):
                local[name] = [c.iter]
    hits: list[str] = []
    for x in ast.walk(expr):
        if isinstance(x, ast.Name) and x.id in local:
            for v in local[x.id]:
                hits += _reaching(ix, flow, scope, v, at, depth + 1)
        elif isinstance(x, ast.Name | ast.Attribute):
            name = x.id if isinstance(x, ast.Name) else x.attr  # the node itself, not below
            if name in flow.names[scope] or flow.seed(name):
                hits.append(name)
        elif x in flow.mark[scope] and not (
            isinstance(x, ast.Call) and _call_name(x) in flow.returns
        ):  # a local def's result carries the property through its arguments (walked here)
            hits.append(_src(x, 40))
    return sorted(set(hits))


def _val_train(ix: Index, sc: Scoring, val: Flow, name: str) -> list[Finding]:
    out = []
    off = _off_switches(ix)
    for scope in ix.scopes:
        for n in _own(scope):
            if not (
                isinstance(n, ast.Call)
                and isinstance(n.func, ast.Attribute)
                and n.func.attr == "backward"
            ):
                continue
            hits = _reaching(ix, val, scope, n.func.value, n, 0)
            if not hits:
                continue
            ok, why = _scored_first(ix, sc, n, scope, 0)
            if ok:
                continue
            grade, cond = "violation", ""
            gone = _discarded(ix, sc, n, scope)
            switch = _switched_off(ix, n, off)
            ctx = _context_only(ix, n, scope)
            if ctx:
                grade, cond = (
                    "note",
                    (
                        f"; it trains on the window's context `[:{ctx}]` and scores `[{ctx}:]`, "
                        "positions already scored by earlier windows"
                    ),
                )
            elif gone:
                grade, cond = (
                    "note",
                    f"; the trained state is discarded (del {gone}) before any scoring",
                )
            elif switch:
                grade, cond = "audit", f"; the path is behind {switch}, which defaults to off"
            out.append(
                Finding(
                    "val-train",
                    n.lineno,
                    f"`{_src(n, 50)}` trains on validation data ({', '.join(hits[:3])}) {why}: "
                    "an update before the tokens are scored (Condition 3; the pre-quant TTT of "
                    f"PR #1550 / the #1376 ruling, SLOT #1240){cond}",
                    grade,
                    "C3",
                    name,
                    f"backward at {name}:{n.lineno} on `{_src(n.func.value, 40)}`; {why}{cond}",
                )
            )
    return out


def _scored_first(ix: Index, sc: Scoring, node: ast.AST, scope: ast.AST, depth: int):
    """(True, '') when the tokens reaching `node` were scored before it; else (False, why)."""
    for loop in ix.loops(node):
        if any(s.lineno < node.lineno for s in sc.within(loop)):
            return True, ""
    here = [s for s in sc.within(scope) if s is not node]
    before = [s for s in here if s.lineno < node.lineno]
    after = [s for s in here if s.lineno > node.lineno]
    if after:
        return False, f"and scores them later (line {after[0].lineno})"
    if before:
        return True, ""
    name = getattr(scope, "name", None)
    sites = [c for c in ix.calls.get(name, []) if ix.scope(c) is not scope] if name else []
    if not sites or depth >= 3:
        return False, "with no scoring before it" + (f" (def {name})" if name else "")
    for c in sites:
        ok, why = _scored_first(ix, sc, c, ix.scope(c), depth + 1)
        if not ok:
            return False, f"called at line {c.lineno} {why}"
    return True, ""


def _target_keys(ix: Index, tgt: Flow, name: str) -> list[Finding]:
    out = []
    for scope in ix.scopes:
        for n in _own(scope):
            if (
                isinstance(n, ast.Subscript)
                and isinstance(n.ctx, ast.Load)
                and CACHE.search(_src(n.value, 200))
            ):
                hits = tgt.has(scope, n.slice)
                if hits and not _is_update_target(ix, n):
                    out.append(
                        Finding(
                            "target-hash",
                            n.lineno,
                            f"table read `{_src(n, 60)}` with a key built from the target "
                            f"({', '.join(hits[:3])}): Conditions 1-2 (#779 ruling)",
                            "violation",
                            "C1",
                            name,
                            f"{name}:{n.lineno} key `{_src(n.slice, 50)}` derives from "
                            f"{', '.join(hits[:3])}",
                        )
                    )
            elif (
                isinstance(n, ast.Call)
                and isinstance(n.func, ast.Attribute)
                and MIXER.search(_src(n.func.value, 80))
                and not UPDATE.search(n.func.attr)
            ):
                hits = sorted({h for a in n.args for h in tgt.has(scope, a)})
                if hits:
                    out.append(
                        Finding(
                            "target-hash",
                            n.lineno,
                            f"`{_src(n, 60)}` queries a cache with the target "
                            f"({', '.join(hits[:3])}): a probability for the realized token "
                            "only; normalized over the vocabulary? (Condition 2)",
                            "audit",
                            "C2",
                            name,
                            f"{name}:{n.lineno} argument derives from {', '.join(hits[:3])}",
                        )
                    )
    return out


def _is_update_target(ix: Index, n: ast.AST) -> bool:
    """A read that is part of an in-place update (`t[k] = t[k] + 1`, `np.add.at(t, k, ...)`)."""
    p = ix.parent.get(n)
    while p is not None and not isinstance(p, ast.stmt):
        if isinstance(p, ast.Call) and UPDATE.search(_call_name(p)):
            return True
        p = ix.parent.get(p)
    if isinstance(p, ast.Assign):
        stored = {_src(t, 200) for t in p.targets}
        return _src(n, 200) in stored
    return False


def _two_pass(ix: Index, sc: Scoring, val: Flow, name: str) -> list[Finding]:
    out = []
    for scope in ix.scopes:
        for n in _own(scope):
            if isinstance(n, ast.Call) and _call_name(n) in ("minimum", "min", "fmin", "fmin_"):
                args = [a for a in n.args if not isinstance(a, ast.Constant)]
                if (
                    len(args) >= 2
                    and sum(bool(LOSSY.search(" ".join(_names(a)))) for a in args) >= 2
                ):
                    per_token = _call_name(n) != "min" or any(
                        isinstance(a, ast.Subscript) for a in args
                    )
                    what = f"`{_src(n, 60)}` keeps the lower loss"
                    out.append(_oracle(n, name, what, per_token))
            elif isinstance(n, ast.If) and isinstance(n.test, ast.Compare):
                sides = [n.test.left, *n.test.comparators]
                if (
                    len(sides) == 2
                    and all(LOSSY.search(" ".join(_names(s))) for s in sides)
                    and isinstance(n.test.ops[0], ast.Lt | ast.LtE | ast.Gt | ast.GtE)
                    and any(
                        isinstance(b, ast.Assign)
                        and any(LOSSY.search(t) for x in b.targets for t in _targets(x))
                        for s in n.body
                        for b in ast.walk(s)
                    )
                ):
                    per_token = any(
                        isinstance(b, ast.Assign)
                        and any(isinstance(t, ast.Subscript) for t in b.targets)
                        for x in n.body
                        for b in ast.walk(x)
                    )
                    what = f"`if {_src(n.test, 50)}` keeps the lower of two losses"
                    out.append(_oracle(n, name, what, per_token))
            elif isinstance(n, ast.For) and PASS_LOOP.search(_src(n.target) + _src(n.iter)):
                sums = [
                    s
                    for s in _own(n)
                    if isinstance(s, ast.AugAssign)
                    and any(SCORE_SUM.search(t) or LOSSY.search(t) for t in _targets(s.target))
                    and _in_no_grad(ix, s)
                    and val.has(scope, s.value)
                ]
                trains = [
                    s
                    for s in _own(n)
                    if isinstance(s, ast.Call)
                    and isinstance(s.func, ast.Attribute)
                    and s.func.attr == "backward"
                ]
                if sums and trains:
                    out.append(
                        Finding(
                            "multi-pass",
                            sums[0].lineno,
                            f"the score sum `{_src(sums[0], 50)}` is accumulated inside the "
                            f"pass/epoch loop at line {n.lineno}, which also trains (line "
                            f"{trains[0].lineno}): validation tokens are scored after earlier "
                            "passes over them (Condition 4; #512/#568 multi-epoch scoring)",
                            "violation",
                            "C4",
                            name,
                            f"{name}:{n.lineno} `for {_src(n.target, 20)} in {_src(n.iter, 40)}`",
                        )
                    )
    return out


def _in_no_grad(ix: Index, n: ast.AST) -> bool:
    p = ix.parent.get(n)
    while p is not None and not isinstance(p, DEFS):
        if isinstance(p, ast.With) and any(_no_grad(i.context_expr) for i in p.items):
            return True
        p = ix.parent.get(p)
    return False


def _oracle(n: ast.AST, name: str, what: str, per_token: bool) -> Finding:
    """Per token (an element-wise minimum, a per-position store): a violation; a scalar
    selection (a temperature, an epoch kept by its loss) is legal on training data and a
    hindsight selection on validation data: for the audit."""
    if per_token:
        why = "per token, a choice made with the realized outcome across passes or predictors"
    else:
        why = "a selection by loss: hindsight selection if those losses are on validation data"
    return Finding(
        "oracle-min",
        n.lineno,
        f"{what}: {why} (Conditions 1 and 4; #573/#659)",
        "violation" if per_token else "audit",
        "C4",
        name,
        f"{name}:{n.lineno} {what}",
    )


def _mixtures(ix: Index, sc: Scoring, tgt: Flow, name: str) -> list[Finding]:
    """A cache term added to the model's probability: formed for the realized token only (the
    cache term derives from the target), or in a scoring function with no normalization."""
    out = []
    for scope in ix.scopes:
        own = list(_own(scope))
        scoring = scope is not ix.tree and bool(sc.within(scope))
        normalized = not scoring or any(
            isinstance(n, ast.Call)
            and (NORMALIZE.search(_call_name(n)) or (_call_name(n) == "sum" and _dim_last(n)))
            for n in own
        )
        for n in own:
            if not (isinstance(n, ast.Assign) and isinstance(n.value, ast.BinOp)):
                continue
            if not isinstance(n.value.op, ast.Add):
                continue
            sides = (n.value.left, n.value.right)
            names = [_names(x) for x in sides]
            mix = [any(MIXER.search(x) for x in ns) for ns in names]
            model = [any(MODEL_P.match(x) or MODEL_NAME.search(x) for x in ns) for ns in names]
            if not ((mix[0] and model[1]) or (mix[1] and model[0])):
                continue
            cache_side = sides[0] if mix[0] else sides[1]
            hits = tgt.has(scope, cache_side)
            if hits:
                why = (
                    f"its cache term derives from the target ({', '.join(hits[:3])}): the "
                    "mixture is formed for the realized token only, its sum over the "
                    "vocabulary is never computed"
                )
            elif not normalized:
                why = "no renormalization over the vocabulary in this function"
            else:
                continue
            out.append(
                Finding(
                    "unnormalized-mix",
                    n.lineno,
                    f"`{_src(n, 70)}` adds a cache/n-gram term to the model's probability; "
                    f"{why}: does it sum to 1? (Condition 2; #886, #1147)",
                    "audit",
                    "C2",
                    name,
                    f"{name}:{n.lineno} in def {getattr(scope, 'name', '?')}: {why}",
                )
            )
            break
    return out


def _dim_last(n: ast.Call) -> bool:
    for k in n.keywords:
        if k.arg in ("dim", "axis") and _src(k.value) in ("-1", "1"):
            return True
    return bool(n.args) and _src(n.args[0]) == "-1"


def _env_rules(ix: Index, name: str) -> list[Finding]:
    out = []
    for n in ast.walk(ix.tree):
        if not (isinstance(n, ast.Call) and _call_name(n) in ("get", "getenv") and n.args):
            continue
        first = n.args[0]
        if not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
            continue
        env = first.value
        default = n.args[1] if len(n.args) > 1 else None
        dval = default.value if isinstance(default, ast.Constant) else None
        off = default is None or str(dval).lower() in ("0", "false", "", "none", "-1")
        if BOS_ENV.search(env) and off:
            out.append(
                Finding(
                    "bos-switch-off",
                    n.lineno,
                    f"{env} defaults to off: a BOS / document-isolation fix the reported run "
                    "may not have used (T1.4)",
                    "note",
                    "T1.4",
                    name,
                    f"{name}:{n.lineno} `{_src(n, 60)}`",
                )
            )
        if LIMIT_ENV.search(env):
            full = off or (isinstance(dval, float) and dval >= 1.0 and "FRAC" in env.upper())
            out.append(
                Finding(
                    "subset-eval",
                    n.lineno,
                    f"{env} can limit the evaluated validation set"
                    + ("" if full else f" and its default {dval!r} does")
                    + " (T2.5: every document must be scored; #1835)",
                    "note" if full else "violation",
                    "subset",
                    name,
                    f"{name}:{n.lineno} `{_src(n, 60)}`",
                )
            )
    for n in ast.walk(ix.tree):
        if isinstance(n, ast.Assign) and isinstance(n.value, ast.Subscript):
            tgt = [t.id for t in n.targets if isinstance(t, ast.Name) and VAL.search(t.id)]
            sl = n.value.slice
            if (
                tgt
                and isinstance(sl, ast.Slice)
                and sl.lower is None
                and sl.upper is not None
                and VAL.search(_src(n.value.value))
            ):
                const = isinstance(sl.upper, ast.Constant)
                out.append(
                    Finding(
                        "subset-eval",
                        n.lineno,
                        f"`{_src(n, 70)}` keeps a prefix of the validation data (T2.5: all "
                        "documents must be scored)",
                        "violation" if const else "audit",
                        "subset",
                        name,
                        f"{name}:{n.lineno} bound `{_src(sl.upper, 30)}`",
                    )
                )
        if isinstance(n, ast.With) and any(
            "inference_mode" in ast.unparse(i.context_expr) for i in n.items
        ):
            out.append(
                Finding(
                    "inference-mode",
                    n.lineno,
                    "inference_mode block: tensors made here must not reach training (T3.5; "
                    "informational)",
                    "note",
                    "T3.5",
                    name,
                    f"{name}:{n.lineno}",
                )
            )
    return out


def screen_unit(unit: Unit) -> list[Finding]:
    ix = Index(unit.tree)
    sc = Scoring(ix)
    val = Flow(ix, lambda s: bool(VAL.search(s)), {})
    tgt = Flow(ix, lambda s: bool(TARGET.match(s)), ix.target_pos)
    name = unit.name
    return (
        _val_train(ix, sc, val, name)
        + _target_keys(ix, tgt, name)
        + _two_pass(ix, sc, val, name)
        + _mixtures(ix, sc, tgt, name)
        + _env_rules(ix, name)
    )


def screen(path: str | Path) -> list[Finding]:
    """All findings for the script at `path` and the code it exec's, by file and line."""
    up = units(path)
    found = [f for u in up.units for f in screen_unit(u)]
    found += [
        Finding(
            "exec-undecoded",
            line,
            f"exec of code the screen could not decode: {why}; that code is NOT screened",
            "audit",
            "",
            unit,
            f"{unit}:{line} {why}",
        )
        for unit, line, why in up.warnings
    ]
    order = {n: i for i, n in enumerate(u.name for u in up.units)}
    return sorted(set(found), key=lambda f: (order.get(f.file, -1), f.line, f.rule))


GRADES = ("violation", "audit", "note")


def format_findings(path: str | Path, found: list[Finding]) -> str:
    counts = ", ".join(f"{sum(f.grade == g for f in found)} {g}" for g in GRADES)
    head = (
        f"STATIC PRE-SCREEN of {path} - not a verdict: run `pgolf audit ARTIFACT` (empirical "
        f"tests) for the ground truth. {len(found)} finding(s): {counts}."
    )
    lines = [head]
    for f in found:
        warn = "WARNING " if f.rule == "exec-undecoded" else ""
        lines.append(f"  {f.file}:{f.line}  {f.grade:<9} {f.rule:<16} {warn}{f.message}")
        lines.append(f"      evidence: {f.evidence}")
    return "\n".join(lines)
