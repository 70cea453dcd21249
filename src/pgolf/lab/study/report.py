"""Table and plots of the TTT memorization study (`pgolf.lab.study`). NON-RECORD: every header
and figure title says so."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pgolf import modes as M


def _ci(x) -> str:
    return f"{x[0]:+.4f} [{x[1]:+.4f},{x[2]:+.4f}]"


def table(res: dict) -> list[str]:
    """The study as text: header, main estimands, controls, curves, canaries, length breakdown."""
    c, ep = res["config"], res["epochs"]
    arms = res["arms"]
    out = [
        f"TTT memorization study -- NON-RECORD ({res['non_record_reason']})",
        f"runs {', '.join(res['runs'])}; seeds {list(c['seeds'])}; unit: {res['unit']}",
        f"A: {res['units_A']} units + {c['canaries']} canaries ({res['tokens_A']} tokens); "
        f"B: {res['units_B']} units + {c['canaries']} canaries ({res['tokens_B']} tokens); "
        f"B near-duplicates of A: {res['near_duplicates_B']}",
        f"quantizer: {c['quantizer']}; schedule: {c['schedule']}; bootstrap reps {c['reps']}",
        "gains in bpb (epoch-0 quantized model minus TTT'd quantized model), 95% paired "
        "bootstrap intervals over units",
        "",
        f"{'epoch':>6} {'done':>5}  {'dA (seen)':<26} {'dB (unseen)':<26} {'dA-dB':<26} "
        f"{'memorization, cross-fit':<26} {'canary NLL A/B':>15}",
    ]
    can = res["canaries"]["A"]
    cf = res["memorization_crossfit"]
    for k, e in enumerate(ep):
        a = arms["A"]
        out.append(
            f"{e:>6g} {a['epochs_done'][k]:>5.2f}  {_ci(a['delta_A'][k]):<26} "
            f"{_ci(a['delta_B'][k]):<26} {_ci(a['A_minus_B'][k]):<26} {_ci(cf[k]):<26} "
            f"{can['nll_A'][k]:>7.3f}/{can['nll_B'][k]:.3f}"
        )
    ctl = [x for x in ("train", "decoy", M.SCORE_FIRST) if x in arms]
    if ctl:
        out += [
            "",
            "controls: (a) TTT on unseen training tokens"
            + ("" if res["train_control_unseen"] else " [WARNING: the run may have read them]")
            + "; (c) decoy TTT (tokens shuffled in each unit); (b) legal score-first TTT "
            "on A, same optimizer (gain on A)",
            f"{'epoch':>6}  {'train: dA':<26} {'train: dB':<26} {'decoy: dA':<26} "
            f"{'decoy: dB':<26} {'score-first: dA':<26}",
        ]
        for k, e in enumerate(ep):
            cols = [
                _ci(arms[x][h][k]) if x in arms else "-"
                for x, h in (
                    ("train", "delta_A"),
                    ("train", "delta_B"),
                    ("decoy", "delta_A"),
                    ("decoy", "delta_B"),
                    (M.SCORE_FIRST, "delta_A"),
                )
            ]
            out.append(f"{e:>6g}  " + " ".join(f"{x:<26}" for x in cols))
    cv = res["curves"]
    out += [
        "",
        f"fits ({cv['formula']}): g = {_ci(cv['generalization_g'])} bpb, "
        f"tau = {_ci(cv['generalization_tau'])} epochs, m = {_ci(cv['memorization_slope'])} "
        "bpb/epoch",
        "canary NLL gap (drop on A canaries - drop on B canaries, nats/token): "
        + ", ".join(
            f"e={e:g}: {_ci(g)}" for e, g in zip(ep, res["canaries"]["A"]["gap"], strict=True)
        ),
    ]
    if "A_gain_minus_train_control_A_gain" in res:
        out.append(
            "val-specific gain, dA(TTT on A) - dA(TTT on training tokens): "
            + ", ".join(
                f"e={e:g}: {_ci(x)}"
                for e, x in zip(ep, res["A_gain_minus_train_control_A_gain"], strict=True)
            )
        )
    out.append(
        "generalization, cross-fit (gain on the unseen half): "
        + ", ".join(
            f"e={e:g}: {_ci(x)}" for e, x in zip(ep, res["generalization_crossfit"], strict=True)
        )
    )
    cap = res["capacity"]
    out.append(
        f"capacity: memorization at e={ep[-1]:g} x {cap['bytes_A']:.0f} bytes of A = "
        f"{cap['memorized_bits_at_max_epoch']:.0f} bits"
    )
    for name, b in res["by_length"].items():
        out.append(
            f"by length {name} (A {b['units_A']}, B {b['units_B']} units): dA-dB "
            + ", ".join(f"e={e:g}: {_ci(x)}" for e, x in zip(ep, b["A_minus_B"], strict=True))
        )
    return out


def plots(res: dict, out_dir: Path) -> list[Path]:
    """study_delta.png (gains against epochs with interval bands and the fitted curves) and
    study_canary.png (canary NLL against epochs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = np.array(res["epochs"])
    arms = res["arms"]
    fig, ax = plt.subplots(figsize=(8, 5))
    series = [
        ("dA (seen, TTT on A)", arms["A"]["delta_A"]),
        ("dB (unseen)", arms["A"]["delta_B"]),
        ("memorization, cross-fit", res["memorization_crossfit"]),
        ("generalization, cross-fit", res["generalization_crossfit"]),
    ]
    for arm, h, lab in (
        ("train", "delta_B", "control: train-data TTT, dB"),
        ("decoy", "delta_A", "control: decoy TTT, dA"),
        (M.SCORE_FIRST, "delta_A", "control: score-first, dA"),
    ):
        if arm in arms:
            series.append((lab, arms[arm][h]))
    for lab, y in series:
        y = np.array(y)
        style = "--" if lab.startswith("control") else "-"
        (line,) = ax.plot(ep, y[:, 0], style, marker="o", label=lab)
        ax.fill_between(ep, y[:, 1], y[:, 2], color=line.get_color(), alpha=0.15)
    cv = res["curves"]
    xs = np.linspace(0, ep.max(), 100)
    g, tau, m = (cv[k][0] for k in ("generalization_g", "generalization_tau", "memorization_slope"))
    ax.plot(xs, g * (1 - np.exp(-xs / tau)), ":", color="grey", label="fit g(1-exp(-e/tau))")
    ax.plot(xs, m * xs, ":", color="black", label="fit m*e")
    ax.axhline(0, color="black", lw=0.5)
    ax.set(
        xlabel="pre-quant TTT epochs",
        ylabel="bpb gain (95% bootstrap band)",
        title=f"NON-RECORD memorization study ({res['unit'].split(' (')[0]})",
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    p1 = out_dir / "study_delta.png"
    fig.savefig(p1, dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    can = res["canaries"]
    for arm, lab in (("A", "TTT on A"), ("B", "TTT on B (cross-fit)")):
        if arm in can:
            for h, mk in (("A", "o"), ("B", "s")):
                seen = h == arm
                ax.plot(
                    ep,
                    can[arm][f"nll_{h}"],
                    marker=mk,
                    ls="-" if seen else "--",
                    label=f"{lab}: canaries in {h} ({'seen' if seen else 'unseen'})",
                )
    ax.set(
        xlabel="epochs", ylabel="NLL per token (nats)", title="NON-RECORD: random-token canaries"
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    p2 = out_dir / "study_canary.png"
    fig.savefig(p2, dpi=100)
    plt.close(fig)
    return [p1, p2]
