"""The report's figures, each a function from collected dicts to PNG bytes.

matplotlib is imported inside the functions (``import mmtune`` stays fast) and used through
``matplotlib.figure.Figure`` with the Agg canvas only: no pyplot, no global backend switch,
so making a report never changes a caller's matplotlib state. Colours are fixed per arm
(Okabe-Ito, colour-blind safe) so an arm looks the same in every figure and every report.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from mmtune.report.collect import corpus_mean, num, target_scores, targets_mean

DPI = 200
# Okabe & Ito (2008); grey for the random baseline, black for the oracle (a reference).
ARM_COLOURS = {"dense": "#0072B2", "dense_context": "#003A66", "bm25": "#E69F00", "instruction_similarity": "#009E73",
               "random": "#8C8C8C", "full": "#CC79A7", "oracle": "#000000", "random_step": "#D55E00",
               "step_text": "#56B4E9"}
ARM_LABELS = {"dense": "ours (dense)", "dense_context": "ours + context", "bm25": "ours (BM25)",
              "instruction_similarity": "instruction similarity",
              "random": "random", "full": "full corpus", "oracle": "oracle (target val)",
              "random_step": "ablation: random step", "step_text": "ablation: step-text query"}
_MORE = ["#7A4FA0", "#4D8F3A", "#B3446C", "#F0B400", "#5B3A1A", "#2F6F8F"]
TASK_COLOURS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#7A4FA0", "#8C8C8C"]
ARM_MARKERS = {"dense": "o", "dense_context": "h", "bm25": "s", "instruction_similarity": "^", "random": "D",
               "full": "v", "oracle": "*", "random_step": "P", "step_text": "X"}
MAJORITY = {"color": "#8C8C8C", "linestyle": (0, (4, 2.5)), "linewidth": 0.9}
GENERIC = {"color": "#333333", "linestyle": (0, (1, 1.6)), "linewidth": 1.3}
MAX_SKILLS = 14

_RC = {
    "font.family": "DejaVu Sans", "font.size": 8.5, "axes.titlesize": 9, "axes.titleweight": "normal",
    "axes.labelsize": 8.5, "xtick.labelsize": 7.8, "ytick.labelsize": 7.8, "legend.fontsize": 7.8,
    "axes.spines.top": False, "axes.spines.right": False, "axes.linewidth": 0.7,
    "axes.edgecolor": "#333333", "axes.grid": True, "axes.grid.axis": "y", "grid.color": "#E8E8E8",
    "grid.linewidth": 0.6, "axes.axisbelow": True, "legend.frameon": False, "legend.handlelength": 2.2,
    "lines.linewidth": 1.5, "lines.markersize": 4.2, "xtick.major.width": 0.7, "ytick.major.width": 0.7,
    "xtick.major.size": 2.8, "ytick.major.size": 2.8, "axes.titlepad": 4, "svg.fonttype": "none",
}


def arm_colours(arms: list[str]) -> dict[str, str]:
    """A colour per arm: the fixed ones for the known arms, then the rest in order."""
    out, spare = {}, iter(_MORE + TASK_COLOURS)
    for a in arms:
        out[a] = ARM_COLOURS.get(a) or next(spare, "#555555")
    return out


def arm_label(arm: str) -> str:
    return ARM_LABELS.get(arm, arm)


def round_colours(rounds: list[int]) -> dict[int, Any]:
    """Rounds light → dark on one blue ramp (they are ordered, not categories)."""
    import matplotlib

    cmap = matplotlib.colormaps["Blues"]
    n = len(rounds)
    return {r: cmap(0.45 + 0.5 * (i / (n - 1) if n > 1 else 1.0)) for i, r in enumerate(rounds)}


@contextmanager
def _figure(width: float, height: float) -> Iterator[Any]:
    import matplotlib
    from matplotlib.figure import Figure

    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(width, height), layout="constrained")
        fig.get_layout_engine().set(w_pad=0.04, h_pad=0.04, wspace=0.06, hspace=0.08)
        yield fig


def to_png(fig: Any, dpi: int = DPI) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", pad_inches=0.04,
                metadata={"Software": None})
    return buf.getvalue()


def _panel_label(ax: Any, label: str, title: str) -> None:
    ax.set_title(f"({label}) {title}" if label else title, loc="left")


def _int_xticks(ax: Any, values: list[int]) -> None:
    ax.set_xticks(values)
    ax.set_xticklabels([str(v) for v in values])
    ax.minorticks_off()


def _proxy(**kw: Any) -> Any:
    from matplotlib.lines import Line2D

    return Line2D([], [], **kw)


# ---------------------------------------------------------------------------------------
# a pipeline run


def accuracy_rounds(run: dict[str, Any], dpi: int = DPI) -> bytes | None:
    """(a) target-task accuracy per round with each task's majority dashed; (b) corpus tasks."""
    rounds = [r for r in run["rounds"] if r.get("scores")]
    if not rounds:
        return None
    xs = [r["round"] for r in rounds]
    tasks = list(dict.fromkeys(t for r in rounds for t in target_scores(r["scores"])))
    has_corpus = any(corpus_mean(r["scores"]) is not None for r in rounds)
    with _figure(7.0, 2.7) as fig:
        axes = fig.subplots(1, 2, width_ratios=[2.1, 1]) if has_corpus else [fig.subplots(1, 1)]
        ax = axes[0]
        handles = []
        for i, t in enumerate(tasks):
            c = TASK_COLOURS[i % len(TASK_COLOURS)]
            pts = [(r["round"], target_scores(r["scores"]).get(t, {})) for r in rounds]
            acc = [(x, s.get("accuracy")) for x, s in pts if s.get("accuracy") is not None]
            maj = [(x, s.get("majority")) for x, s in pts if s.get("majority") is not None]
            if acc:
                h, = ax.plot(*zip(*acc), marker="o", color=c, label=t)
                handles.append(h)
            if maj:
                ax.plot(*zip(*maj), color=c, alpha=0.75, linestyle=MAJORITY["linestyle"],
                        linewidth=MAJORITY["linewidth"])
        mean = [(r["round"], targets_mean(r["scores"], tasks)) for r in rounds]
        mean = [(x, y) for x, y in mean if y is not None]
        if len(tasks) > 1 and mean:
            h, = ax.plot(*zip(*mean), color="#000000", linewidth=2.2, marker="o", label="mean of targets")
            handles.append(h)
        handles.append(_proxy(color="#555555", linestyle=MAJORITY["linestyle"], linewidth=0.9,
                              label="majority answer"))
        _panel_label(ax, "a" if has_corpus else "", "target tasks (test)")
        ax.set_xlabel("round (0 = generic student)")
        ax.set_ylabel("accuracy")
        _int_xticks(ax, xs)
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), borderaxespad=0.2)
        if has_corpus:
            ax = axes[1]
            acc = [(r["round"], corpus_mean(r["scores"])) for r in rounds]
            maj = [(r["round"], corpus_mean(r["scores"], "majority")) for r in rounds]
            acc = [(x, y) for x, y in acc if y is not None]
            maj = [(x, y) for x, y in maj if y is not None]
            ax.plot(*zip(*acc), marker="o", color="#000000")
            if maj:
                ax.plot(*zip(*maj), color="#555555", linestyle=MAJORITY["linestyle"], linewidth=0.9)
            _panel_label(ax, "b", "corpus tasks (forgetting)")
            ax.set_xlabel("round")
            ax.set_ylabel("accuracy (macro mean)")
            _int_xticks(ax, xs)
        return to_png(fig, dpi)


def skill_bars(by_round: dict[int, dict[str, int]], xlabel: str, dpi: int = DPI) -> bytes | None:
    """Horizontal bars: one row per skill (most frequent on top), one bar per round."""
    by_round = {r: c for r, c in sorted(by_round.items()) if c}
    if not by_round:
        return None
    total: dict[str, int] = {}
    for c in by_round.values():
        for k, v in c.items():
            total[k] = total.get(k, 0) + int(v)
    skills = sorted(total, key=lambda k: (-total[k], k))
    if len(skills) > MAX_SKILLS:
        keep, rest = skills[:MAX_SKILLS - 1], skills[MAX_SKILLS - 1:]
        other = f"other ({len(rest)} skills)"
        by_round = {r: {**{k: c.get(k, 0) for k in keep}, other: sum(c.get(k, 0) for k in rest)}
                    for r, c in by_round.items()}
        skills = keep + [other]
    rounds = list(by_round)
    colours = round_colours(rounds)
    n_r = len(rounds)
    bar_h = 0.8 / n_r
    height = 0.75 + len(skills) * (0.16 + 0.13 * n_r)
    with _figure(6.2, height) as fig:
        ax = fig.subplots(1, 1)
        ax.grid(axis="x")
        ax.grid(axis="y", visible=False)
        vmax = max(v for c in by_round.values() for v in c.values()) or 1
        for j, r in enumerate(rounds):
            ys = [i - 0.4 + bar_h * (j + 0.5) for i in range(len(skills))]
            vals = [by_round[r].get(k, 0) for k in skills]
            ax.barh(ys, vals, height=bar_h * 0.92, color=colours[r], label=f"round {r}")
            if len(skills) * n_r <= 40:
                for y, v in zip(ys, vals):
                    if v:
                        ax.text(v + vmax * 0.008, y, str(v), va="center", ha="left", fontsize=6.8, color="#444444")
        ax.set_yticks(range(len(skills)))
        ax.set_yticklabels(skills)
        ax.invert_yaxis()
        ax.set_xlim(0, vmax * 1.09)
        ax.set_xlabel(xlabel)
        ax.tick_params(axis="y", length=0)
        ax.spines["left"].set_visible(False)
        ax.legend(loc="best")
        return to_png(fig, dpi)


def _series(history: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for i, h in enumerate(history):
        y = num(h.get(key))
        if y is None:
            continue
        x = num(h.get("step"))
        xs.append(x if x is not None else float(i + 1))
        ys.append(y)
    return xs, ys


def _ema(ys: list[float], decay: float = 0.9) -> list[float]:
    out, m = [], None
    for y in ys:
        m = y if m is None else decay * m + (1 - decay) * y
        out.append(m)
    return out


def training(run: dict[str, Any], dpi: int = DPI) -> bytes | None:
    """(a) loss per round's training, (b) κ measured and κ̄ (EMA), (c) lr of each group."""
    rounds = [r for r in run["rounds"] if r.get("history")]
    if not rounds:
        return None
    colours = round_colours([r["round"] for r in rounds])
    with _figure(7.0, 2.55) as fig:
        ax_l, ax_k, ax_r = fig.subplots(1, 3)
        for r in rounds:
            c = colours[r["round"]]
            xs, ys = _series(r["history"], "loss")
            if len(xs) > 50:
                ax_l.plot(xs, ys, color=c, alpha=0.3, linewidth=0.7)
                ax_l.plot(xs, _ema(ys), color=c, label=f"round {r['round']}")
            elif xs:
                ax_l.plot(xs, ys, color=c, label=f"round {r['round']}")
        _panel_label(ax_l, "a", "training loss")
        ax_l.set_xlabel("step")
        ax_l.set_ylabel("loss")

        measured = False
        kvals: list[float] = []
        for r in rounds:
            c = colours[r["round"]]
            xs, ys = _series(r["history"], "kappa_bar")
            if xs:
                ax_k.plot(xs, ys, color=c)
                kvals += ys
            xs, ys = _series(r["history"], "kappa")
            if xs:
                measured = True
                ax_k.plot(xs, ys, color=c, linestyle="none", marker="o", markersize=4,
                          markeredgecolor="white", markeredgewidth=0.5)
                kvals += ys
        ax_k.axhline(1.0, color="#999999", linewidth=0.7, zorder=0)
        pos = [v for v in kvals if v > 0]
        if pos and max(pos) / min(pos) > 20:
            ax_k.set_yscale("log")
        _panel_label(ax_k, "b", "modality balance κ")
        ax_k.set_xlabel("step")
        ax_k.set_ylabel("κ")
        handles = [_proxy(color=colours[r["round"]], label=f"round {r['round']}") for r in rounds]
        handles.append(_proxy(color="#333333", label="κ̄ (running estimate)"))
        if measured:
            handles.append(_proxy(color="#333333", linestyle="none", marker="o", markersize=4, label="κ measured"))
        else:
            ax_k.text(0.5, 0.08, "κ not measured in these steps", transform=ax_k.transAxes, ha="center",
                      fontsize=7.2, color="#666666")

        any_lr = False
        for r in rounds:
            c = colours[r["round"]]
            for key, ls in (("lr_llm", "-"), ("lr_encoder", (0, (4, 2)))):
                xs, ys = _series(r["history"], key)
                if xs and any(y > 0 for y in ys):
                    any_lr = True
                    ax_r.plot(*zip(*[(x, y) for x, y in zip(xs, ys) if y > 0]), color=c, linestyle=ls)
        if any_lr:
            ax_r.set_yscale("log")
        _panel_label(ax_r, "c", "learning rates")
        ax_r.set_xlabel("step")
        ax_r.set_ylabel("learning rate")
        handles += [_proxy(color="#333333", label="lr LLM (LoRA)"),
                    _proxy(color="#333333", linestyle=(0, (4, 2)), label="lr encoder")]
        fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 6))
        return to_png(fig, dpi)


# ---------------------------------------------------------------------------------------
# a comparison


def _xscale(ax: Any, budgets: list[float]) -> bool:
    pos = [b for b in budgets if b > 0]
    log = bool(pos) and len(pos) == len(budgets) and max(pos) / min(pos) >= 8
    if log:
        ax.set_xscale("log")
    ax.set_xticks(budgets)
    ax.set_xticklabels([f"{int(b):,}" if float(b).is_integer() else f"{b:g}" for b in budgets])
    ax.minorticks_off()
    return log


def _dodge(x: float, i: int, n: int, log: bool, span: float) -> float:
    off = (i - (n - 1) / 2) * 0.045
    return x * math.exp(off * 0.6) if log else x + off * span


def _budget_panel(ax: Any, cmp: dict[str, Any], rows: list[dict[str, Any]], ref_generic: float | None,
                  ref_majority: float | None) -> list[Any]:
    """Mean ± sd against budget, one line per arm; reference lines; returns legend handles."""
    budgets = [float(b) for b in cmp["budgets"]]
    colours = arm_colours(cmp["arms"])
    log = _xscale(ax, budgets) if budgets else False
    span = (max(budgets) - min(budgets)) if len(budgets) > 1 else 1.0
    handles = []
    arms = [a for a in cmp["arms"] if any(r["arm"] == a for r in rows)]
    for i, arm in enumerate(arms):
        pts = sorted((float(r["budget"]), r["mean"], r["sd"]) for r in rows
                     if r["arm"] == arm and r["mean"] is not None and num(r["budget"]) is not None)
        if not pts:
            continue
        c = colours[arm]
        ref = arm == "oracle"
        own = {p[0] for p in pts}
        if len(own) == 1 and (len(budgets) > 1 or not own & set(budgets)):
            # one budget of its own (the full corpus): a level line across the axis
            b = next(iter(own))
            h = ax.axhline(pts[0][1], color=c, linestyle=(0, (6, 2, 1, 2)), linewidth=1.1,
                           label=f"{arm_label(arm)} ({int(b):,})" if b not in budgets else arm_label(arm))
            handles.append(h)
            continue
        pts = [p for p in pts if p[0] in budgets] or pts
        xs = [_dodge(p[0], i, len(arms), log, span) for p in pts]
        h = ax.errorbar(xs, [p[1] for p in pts], yerr=[p[2] or 0.0 for p in pts], color=c,
                        marker=ARM_MARKERS.get(arm, "o"), markersize=5.5 if ref else 4.2,
                        linestyle=(0, (5, 2)) if ref else "-", linewidth=1.3, elinewidth=0.9, capsize=2.2,
                        capthick=0.9, label=arm_label(arm))
        handles.append(h)
    if ref_generic is not None:
        handles.append(ax.axhline(ref_generic, label="generic student", zorder=1, **GENERIC))
    if ref_majority is not None:
        handles.append(ax.axhline(ref_majority, label="majority answer", zorder=1, **MAJORITY))
    return handles


def accuracy_vs_budget(cmp: dict[str, Any], dpi: int = DPI) -> bytes | None:
    """One panel per target task (+ their mean): accuracy against the data budget, per arm."""
    targets = cmp["targets"]
    panels = [(t, [r for r in cmp["table"] if r.get("task") == t]) for t in targets]
    if len(targets) > 1 and cmp["targets_mean"]:
        panels.append(("mean of targets", cmp["targets_mean"]))
    panels = [(t, rows) for t, rows in panels if rows]
    if not panels or not cmp["budgets"]:
        return None
    base = target_scores(cmp["baseline"])
    ncol = min(3, len(panels))
    nrow = math.ceil(len(panels) / ncol)
    with _figure(7.0, 0.45 + 2.05 * nrow) as fig:
        axes = fig.subplots(nrow, ncol, squeeze=False, sharey=False)
        handles: dict[str, Any] = {}
        for k, (title, rows) in enumerate(panels):
            ax = axes[k // ncol][k % ncol]
            if title == "mean of targets":
                gen = targets_mean(cmp["baseline"], targets)
                maj = (sum(cmp["majority"][t] for t in targets) / len(targets)
                       if all(cmp["majority"].get(t) is not None for t in targets) else None)
            else:
                gen = base.get(title, {}).get("accuracy")
                maj = cmp["majority"].get(title)
            for h in _budget_panel(ax, cmp, rows, gen, maj):
                handles.setdefault(h.get_label(), h)
            ax.set_title(title, loc="left")
            if k % ncol == 0:
                ax.set_ylabel("accuracy")
            if k // ncol == nrow - 1 or k + ncol >= len(panels):
                ax.set_xlabel("data budget (samples)")
        for k in range(len(panels), nrow * ncol):
            axes[k // ncol][k % ncol].set_visible(False)
        fig.legend(handles=list(handles.values()), labels=list(handles), loc="outside lower center",
                   ncol=min(len(handles), 4))
        return to_png(fig, dpi)


def forgetting_vs_budget(cmp: dict[str, Any], dpi: int = DPI) -> bytes | None:
    """Corpus-task accuracy (macro mean) against the budget, per arm: the forgetting check."""
    rows = cmp["forgetting"]
    if not rows or not cmp["budgets"]:
        return None
    with _figure(4.4, 2.6) as fig:
        ax = fig.subplots(1, 1)
        handles = _budget_panel(ax, cmp, rows, corpus_mean(cmp["baseline"]), cmp.get("corpus_majority"))
        ax.set_xlabel("data budget (samples)")
        ax.set_ylabel("accuracy (macro mean)")
        ax.set_title("corpus tasks", loc="left")
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        return to_png(fig, dpi)
