"""`pgolf study ttt-memorization RUN_DIR...`: how much of pre-quant TTT's gain (PR #1550) is
memorization of the very tokens later scored and how much is generalization -- the protocol of
spec rules-and-compliance.md, "Quantifying memorization vs generalization". NON-RECORD throughout:
nothing here is, or may be quoted as, a leaderboard number.

Protocol (pre-registered in this docstring; `study.json` carries it):
1. Validation documents into halves A and B by a fixed hash, stratified by length; B units that
   are near-duplicates of A units tagged (token 8-shingle Jaccard >= 0.3). A slice with too few
   documents falls back to fixed segments, and every output says so (`pgolf.lab.study.data`).
   M canaries (random-token documents) join each half.
2. From the run's post-EMA weights (`final_model.safetensors`), the core's pre-quant TTT
   (`pgolf.ttt.prequant_ttt`: AdamW, cosine lr, frozen first blocks, the run's ttt.prequant_*)
   trains on A only for each e of the epoch ladder. `--schedule separate` (default): one TTT run
   per e with the cosine over ceil(e) epochs, stopped at e (fractional e stop mid-epoch);
   `snapshot`: one run to max(e), read at each e (cheaper, lr schedule differs).
3. Each result is quantized with the run's own quant plan (GPTQ or RTN as configured, the run's
   bits/clip; Hessians collected on the TTT'd model from one fixed set of calibration sequences
   drawn once per replicate) -- `--quant none` skips this -- and A and B are scored with the core's
   sliding-window evaluator. Epoch 0 = the quantized post-EMA model, no TTT.
4. Estimands (`pgolf.lab.study.stats`): DeltaA(e), DeltaB(e) (bpb gains), memorization ~ DeltaA -
   DeltaB, cross-fitted (train on B too) and averaged; generalization = gain on the unseen half.
5. Controls: (a) TTT on an equal number of tokens from the END of the training shards (flagged
   if the run may have read them); (b) legal score-first TTT on stream A with the same optimizer
   (prequant_ttt per chunk, after scoring that chunk, from the quantized model; AdamW state and
   cosine restart per chunk), e epochs per chunk; (c) decoy TTT on A with the tokens shuffled
   inside each unit.
6. Paired bootstrap over units (replicates = runs x seeds drawn as an outer effect), 95 %
   intervals; saturating fit of the generalization gain, slope of the memorization gap; canary
   NLL per epoch; short / long / near-duplicate breakdown.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from pgolf import dist as pdist
from pgolf import modes as M
from pgolf.lab.study import data as D
from pgolf.lab.study import stats as S
from pgolf.runlog import RunDir
from pgolf.score import score
from pgolf.ttt import NON_RECORD_REASON, prequant_ttt

FULL_LADDER = (0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0)


@dataclass(frozen=True)
class StudyConfig:
    epochs: tuple[float, ...] = FULL_LADDER
    seeds: tuple[int, ...] = (0,)
    tokens: int = 32768  # validation tokens read (the head of the stream)
    canaries: int = 4  # per half
    schedule: str = "separate"  # separate | snapshot
    quant: str = "run"  # run (the run's plan) | none
    crossfit: bool = True
    controls: bool = True
    reps: int = 1000
    min_docs: int = D.MIN_DOCS


QUICK = StudyConfig(epochs=(0.0, 0.5, 1.0, 2.0), tokens=4096, canaries=2, reps=200)


def parse_epochs(text: str) -> tuple[float, ...]:
    try:
        e = sorted({float(x) for x in text.split(",") if x.strip()} | {0.0})
    except ValueError:
        raise ValueError(f"--epochs {text!r}: give numbers like 0,0.5,1,2,4") from None
    if e[0] < 0 or len(e) < 2:
        raise ValueError(f"--epochs {text!r}: need at least one epoch count > 0, none negative")
    return tuple(e)


def ladder(cfg, model, stream: torch.Tensor, epochs, schedule: str, dev, at) -> None:
    """Pre-quant TTT on `stream` from `model`; at(e, epochs_done, net) at every ladder e > 0."""
    pos = [e for e in epochs if e > 0]
    runs = [pos] if schedule == "snapshot" else [[e] for e in pos]
    for want in runs:
        pending = list(want)

        def hook(done: float, net, pending=pending) -> bool:
            while pending and done >= pending[0] - 1e-9:
                at(pending.pop(0), done, net)
            return not pending

        c = replace(cfg, ttt=replace(cfg.ttt, prequant_epochs=math.ceil(max(want))))
        prequant_ttt(c, model, stream, dev, on_batch=hook)


class Replicate:
    """One trained run x one study seed: model, streams, quantizer, scorer."""

    def __init__(self, run_dir: Path, seed: int, sc: StudyConfig):
        from pgolf import bpb
        from pgolf.data import load_val_tokens
        from pgolf.pipeline import calibration_batches, load_run_model

        run = RunDir.open(run_dir, need=("config", "final"), what="the study needs")
        cfg = run.config()
        self.dev = torch.device("cpu")
        torch.manual_seed(seed)
        self.model = load_run_model(cfg, run.weights("final"), self.dev)
        m, e = cfg.model, cfg.eval
        val = load_val_tokens(cfg.data.data_path, 1, sc.tokens + 1, m.vocab_size)
        self.tables = bpb.build_byte_tables(cfg.data.tokenizer_path, m.vocab_size)
        self.spans, self.unit = D.units(val, m.bos_id, e.eval_seq_len, sc.min_docs)
        self.iA, self.iB = D.split_halves(self.spans)
        self.dups = D.near_duplicates(val, self.spans, self.iA, self.iB)
        lens = [b - a for a, b in self.spans]
        can = D.canaries(lens, 2 * sc.canaries, m.vocab_size, m.bos_id, 1000 + seed)
        self.sA = D.build_stream(val, self.spans, self.iA, can[: sc.canaries])
        self.sB = D.build_stream(val, self.spans, self.iB, can[sc.canaries :])
        n_seq = (min(self.sA.tokens.numel(), self.sB.tokens.numel()) - 1) // min(
            cfg.ttt.prequant_seq_len, e.eval_seq_len
        )
        t = replace(
            cfg.ttt,
            mode=M.PREQUANT,
            prequant_seq_len=min(cfg.ttt.prequant_seq_len, e.eval_seq_len),
            prequant_batch_seqs=max(1, min(cfg.ttt.prequant_batch_seqs, n_seq // 8)),
        )
        self.cfg = replace(cfg, ttt=t)
        self.sc, self.seed, self.run_dir = sc, seed, run_dir
        self.calib = None
        if sc.quant == "run" and "gptq" in (cfg.quant.method, cfg.quant.embed_method):
            c = replace(self.cfg, train=replace(cfg.train, seed=cfg.train.seed + seed))
            self.calib = calibration_batches(c, self.model, Path(cfg.data.data_path), self.dev)
        consumed = cfg.train.iterations * cfg.train.train_batch_tokens
        self.train_tokens, self.train_unseen = D.train_slice(
            cfg.data.data_path, self.sA.tokens.numel() - 1, consumed, m.vocab_size
        )

    def quantize(self, net):
        """The run's quant plan on `net` -> a model with the dequantized weights."""
        if self.sc.quant == "none":
            return net
        from pgolf import lqer, quant
        from pgolf.model import graph_state
        from pgolf.pipeline import model_from_state, quantize_model

        tensors = quantize_model(self.cfg, net, Path(self.cfg.data.data_path), batches=self.calib)
        state = lqer.add_back(quant.dequantize_state(tensors))
        return model_from_state(self.cfg, state, self.dev, graph_state(net), "study")

    def _nll(self, net, s: D.Stream) -> np.ndarray:
        nll = torch.zeros(s.tokens.numel() - 1, dtype=torch.float64)
        score(net, s.tokens, M.SLIDING, self.cfg, self.tables, self.dev, token_nll=nll)
        return np.array([float(nll[a:b].sum()) for a, b in s.ranges])

    def score(self, net) -> dict:
        q = self.quantize(net)
        return {"A": self._nll(q, self.sA), "B": self._nll(q, self.sB)}

    def nbytes(self, s: D.Stream) -> np.ndarray:
        from pgolf import bpb

        nb = bpb.target_bytes(s.tokens[:-1][None], s.tokens[1:][None], self.tables)[0].double()
        return np.array([float(nb[a:b].sum()) for a, b in s.ranges])

    def score_first(self, qmodel, e: float) -> tuple[np.ndarray, float]:
        """Control (b): the core's score-first TTT on stream A, trained per chunk with
        prequant_ttt's AdamW (e epochs, fresh optimizer and cosine per chunk) instead of SGD."""
        t = self.cfg.ttt
        tok = self.sA.tokens
        n = tok.numel() - 1
        chunk = max(2 * t.prequant_batch_seqs * t.prequant_seq_len, min(t.chunk_tokens, n // 4))
        cfg = replace(self.cfg, ttt=replace(t, chunk_tokens=chunk, prequant_epochs=math.ceil(e)))
        nll = torch.zeros(n, dtype=torch.float64)
        done: list[float] = []

        def adapt(net, c, n_chunks, ab, lr):
            seen: list[float] = []
            a, b = ab
            net = prequant_ttt(
                cfg,
                net,
                tok[a : b + 1],
                self.dev,
                on_batch=lambda d, _n: seen.append(d) or d >= e - 1e-9,
            )
            done.append(seen[-1])
            return net, 1

        score(qmodel, tok, M.SCORE_FIRST, cfg, self.tables, self.dev, token_nll=nll, adapt=adapt)
        return np.array([float(nll[a:b].sum()) for a, b in self.sA.ranges]), float(np.mean(done))

    def run(self) -> dict:
        """Every arm on the ladder -> {arm: {e: {"A": nll per unit, "B": ..., "done": e'}}}."""
        sc = self.sc
        base_q = self.quantize(self.model)
        base = {"A": self._nll(base_q, self.sA), "B": self._nll(base_q, self.sB), "done": 0.0}
        streams = {"A": self.sA.tokens, "B": self.sB.tokens}
        arms = ["A"] + (["B"] if sc.crossfit else [])
        if sc.controls:
            streams["train"] = self.train_tokens
            streams["decoy"] = D.shuffle_within(self.sA, 2000 + self.seed)
            arms += ["train", "decoy"]
        out: dict = {}
        for arm in arms:
            res = out.setdefault(arm, {0.0: base})
            pdist.log0(f"study: arm {arm} seed {self.seed} (NON-RECORD)")
            ladder(
                self.cfg,
                self.model,
                streams[arm],
                sc.epochs,
                sc.schedule,
                self.dev,
                lambda e, d, net, res=res: res.__setitem__(e, {**self.score(net), "done": d}),
            )
        if sc.controls:
            res = out.setdefault(M.SCORE_FIRST, {0.0: base})
            for e in (x for x in sc.epochs if x > 0):
                nll, d = self.score_first(base_q, e)
                res[e] = {"A": nll, "done": d}
        return out


def analyse(reps: list[Replicate], raw: list[dict], sc: StudyConfig) -> dict:
    """Bootstrap summaries of every arm, curves, canaries and the per-length breakdown."""
    r0 = reps[0]
    E = np.array(sc.epochs)
    nA, nB = r0.sA.n_real, r0.sB.n_real
    byA, byB = r0.nbytes(r0.sA)[:nA], r0.nbytes(r0.sB)[:nB]
    rng = np.random.default_rng(sc.seeds[0])
    cA, cB = S.counts(nA, sc.reps, rng), S.counts(nB, sc.reps, rng)
    rd = S.rep_draws(len(raw), sc.reps, rng)

    def stack(arm: str, h: str, n: int) -> tuple[np.ndarray, np.ndarray]:
        n0 = np.array([x[arm][0.0][h][:n] for x in raw])
        ne = np.array([[x[arm][e][h][:n] for e in sc.epochs] for x in raw])
        return n0, ne

    def g(arm, h, mask_a=None):
        n = nA if h == "A" else nB
        n0, ne = stack(arm, h, n)
        c, by = (cA, byA) if h == "A" else (cB, byB)
        return S.gains(n0, ne, by, c if mask_a is None else c * mask_a[None], rd)

    arms, G = {}, {}
    for arm in raw[0]:
        G[arm] = {"A": g(arm, "A")}
        if arm != M.SCORE_FIRST:
            G[arm]["B"] = g(arm, "B")
            arms[arm] = S.summarize_arm(E, G[arm]["A"], G[arm]["B"])
        else:
            arms[arm] = {"delta_A": S.interval(G[arm]["A"])}
        arms[arm]["epochs_done"] = [
            float(np.mean([x[arm][e]["done"] for x in raw])) for e in sc.epochs
        ]
    memA = G["A"]["A"] - G["A"]["B"]
    gen, mem = G["A"]["B"], memA
    if "B" in G:  # cross-fit: trained on B, B is the seen half
        mem = (memA + G["B"]["B"] - G["B"]["A"]) / 2
        gen = (G["A"]["B"] + G["B"]["A"]) / 2
    out = {
        "arms": arms,
        "memorization_crossfit": S.interval(mem),
        "generalization_crossfit": S.interval(gen),
        "curves": S.curves(E, gen, mem),
    }
    if "train" in G:
        out["A_gain_minus_train_control_A_gain"] = S.interval(G["A"]["A"] - G["train"]["A"])
    out["canaries"] = canary_summary(r0, raw, sc, rng)
    out["capacity"] = {
        "bytes_A": float(byA.sum()),
        "memorized_bits_at_max_epoch": float(
            np.array(out["memorization_crossfit"])[-1, 0] * byA.sum()
        ),
        "note": "spec step 8: bits saved = memorization gain x scored bytes",
    }
    lens = np.array([r0.spans[i][1] - r0.spans[i][0] for i in r0.iA])
    lensB = np.array([r0.spans[i][1] - r0.spans[i][0] for i in r0.iB])
    dupB = np.array([i in r0.dups for i in r0.iB])
    bl = {}
    for name, (mA, mB) in S.buckets(lens, lensB, dupB).items():
        if mA.sum() == 0 or mB.sum() == 0:
            continue
        dA, dB = g("A", "A", mA.astype(float)), g("A", "B", mB.astype(float))
        bl[name] = {
            "units_A": int(mA.sum()),
            "units_B": int(mB.sum()),
            **S.summarize_arm(E, dA, dB),
        }
    out["by_length"] = bl
    return out


def canary_summary(r0: Replicate, raw: list[dict], sc: StudyConfig, rng) -> dict:
    ta = np.array([b - a for a, b in r0.sA.ranges[r0.sA.n_real :]], float)
    tb = np.array([b - a for a, b in r0.sB.ranges[r0.sB.n_real :]], float)
    nA, nB = r0.sA.n_real, r0.sB.n_real
    out: dict = {"per_half": sc.canaries, "tokens_A": int(ta.sum()), "tokens_B": int(tb.sum())}
    for arm in (a for a in raw[0] if a != M.SCORE_FIRST):
        A = np.array([[x[arm][e]["A"][nA:] for e in sc.epochs] for x in raw])  # [R, E, m]
        B = np.array([[x[arm][e]["B"][nB:] for e in sc.epochs] for x in raw])
        out[arm] = {
            "nll_A": [S.canary_nll(A[:, k].mean(0), ta) for k in range(len(sc.epochs))],
            "nll_B": [S.canary_nll(B[:, k].mean(0), tb) for k in range(len(sc.epochs))],
            "gap": [
                S.canary_gap(A[:, 0], A[:, k], B[:, 0], B[:, k], ta, tb, sc.reps, rng)
                for k in range(len(sc.epochs))
            ],
        }
    return out


def run_study(run_dirs, sc: StudyConfig = StudyConfig(), out: str | Path | None = None) -> dict:
    """The whole study (module docstring) -> the study.json dict; writes study.json and PNGs."""
    from pgolf.lab.study import report as study_report

    if sc.schedule not in ("separate", "snapshot") or sc.quant not in ("run", "none"):
        raise ValueError("study: --schedule must be separate|snapshot, --quant run|none")
    run_dirs = [Path(r) for r in ([run_dirs] if isinstance(run_dirs, str | Path) else run_dirs)]
    for r in run_dirs:  # every folder checked before the first one's work
        RunDir.open(r, need=("config", "final"), what="the study needs")
    reps, raw = [], []
    for r in run_dirs:
        for seed in sc.seeds:
            rep = Replicate(r, seed, sc)
            reps.append(rep)
            raw.append(rep.run())
    r0 = reps[0]
    for r in reps[1:]:
        if (r.spans, r.sA.ranges, r.sB.ranges) != (r0.spans, r0.sA.ranges, r0.sB.ranges):
            raise ValueError(
                f"study: {r.run_dir} reads other validation data than "
                f"{r0.run_dir}; replicates must share the data and --tokens"
            )
    res = {
        "non_record": True,
        "non_record_reason": NON_RECORD_REASON,
        "protocol": __doc__.split("Protocol (pre-registered")[1].strip(),
        "config": {
            **{k: getattr(sc, k) for k in sc.__dataclass_fields__},
            "quantizer": _quantizer(r0),
            "ttt": {
                k: getattr(r0.cfg.ttt, k)
                for k in (
                    "prequant_lr",
                    "prequant_min_lr",
                    "prequant_freeze_blocks",
                    "prequant_seq_len",
                    "prequant_batch_seqs",
                )
            },
        },
        "runs": [str(r) for r in run_dirs],
        "unit": r0.unit,
        "units_A": r0.sA.n_real,
        "units_B": r0.sB.n_real,
        "tokens_A": int(r0.sA.tokens.numel()),
        "tokens_B": int(r0.sB.tokens.numel()),
        "near_duplicates_B": len(r0.dups),
        "train_control_unseen": all(r.train_unseen for r in reps),
        "epochs": list(sc.epochs),
        **analyse(reps, raw, sc),
        "raw": [
            {
                arm: {
                    str(e): {
                        k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in d.items()
                    }
                    for e, d in x.items()
                }
                for arm, x in rr.items()
            }
            for rr in raw
        ],
    }
    out_dir = Path(out) if out else run_dirs[0] / "study_ttt_memorization"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "study.json").write_text(json.dumps(res, indent=1))
    (out_dir / "study.txt").write_text("\n".join(study_report.table(res)) + "\n")
    study_report.plots(res, out_dir)
    pdist.log0(
        f"study: wrote {out_dir}/study.json, study.txt, study_delta.png, study_canary.png",
        console=False,
    )
    res["out_dir"] = str(out_dir)
    return res


def _quantizer(r: Replicate) -> str:
    q = r.cfg.quant
    if r.sc.quant == "none":
        return "none (scored unquantized)"
    calib = f"{q.calib} calibration fixed per replicate" if r.calib is not None else "no Hessians"
    return (
        f"the run's plan: matrices {q.method} {q.matrix_bits}-bit, embeddings "
        f"{q.embed_method} {q.embed_bits}-bit, lqer {q.lqer or 'off'}; {calib}"
    )


def study_main(
    run_dirs: list[str],
    *,
    quick: bool = False,
    epochs: str | None = None,
    seeds: str | None = None,
    crossfit: bool = True,
    controls: bool = True,
    out: str | None = None,
    **given: int | str | None,
) -> dict:
    """The CLI's `pgolf study ttt-memorization`: options -> StudyConfig -> run (quietly). `given`:
    StudyConfig fields as the CLI passes them (tokens, canaries, schedule, quant, reps; None:
    the default)."""
    sc = QUICK if quick else StudyConfig()
    kw: dict = {"crossfit": crossfit and sc.crossfit, "controls": controls}
    if epochs:
        kw["epochs"] = parse_epochs(epochs)
    if seeds:
        try:
            kw["seeds"] = tuple(int(x) for x in seeds.split(","))
        except ValueError:
            raise ValueError(f"--seeds {seeds!r}: give integers like 0,1,2") from None
    kw.update({k: v for k, v in given.items() if v is not None})
    pdist.set_quiet(True)  # the TTT / GPTQ lines of every ladder point: the table says it all
    try:
        res = run_study(run_dirs, replace(sc, **kw), out)
    finally:
        pdist.set_quiet(False)
    return res
