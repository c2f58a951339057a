"""The report as a list of blocks (headings, paragraphs, tables, figures, notes), and the
two renderers over it: self-contained HTML (inline CSS, figures as base64 data URIs) and
GitHub markdown (the same tables, figures as links to PNG files).

Every string that comes from data (task names, skills, model output in the diagnosis) is
escaped by the renderers: a plain ``str`` cell is text, never markup. Cells that need
markup (a step list with the mistake marked) are :class:`Rich` and carry both renderings,
built here from escaped parts.
"""

from __future__ import annotations

import base64
import html
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmtune.report import plots
from mmtune.report.collect import corpus_mean, num, target_scores, targets_mean

# ---------------------------------------------------------------------------------------
# blocks


@dataclass
class Rich:
    """A cell with markup: ``html`` and ``md`` must already be escaped."""
    html: str
    md: str


Cell = Any  # str | int | float | None | Rich


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Para:
    text: str
    cls: str = ""


@dataclass
class Table:
    caption: str
    header: list[str]
    rows: list[list[Cell]]
    numeric: list[bool] | None = None  # right-aligned columns
    row_cls: list[str] | None = None  # per row: "" | "ref" (a reference row) | "sep" (a rule above)
    bold: set[tuple[int, int]] = field(default_factory=set)  # (row, col) to set in bold
    wide: bool = False


@dataclass
class Figure:
    caption: str
    png: bytes
    slug: str
    alt: str = ""
    width_in: float = 7.0


@dataclass
class Notes:
    items: list[str]


Block = Heading | Para | Table | Figure | Notes


# ---------------------------------------------------------------------------------------
# formatting


def fmt_acc(x: Any) -> str:
    v = num(x)
    return "–" if v is None else f"{v:.3f}"


def fmt_pm(mean: Any, sd: Any, n: Any = None) -> str:
    """``mean ± sd``; the mean alone when there is no sd or a single seed."""
    m, s, k = num(mean), num(sd), num(n)
    if m is None:
        return "–"
    return f"{m:.3f}" if s is None or (k is not None and k < 2) else f"{m:.3f} ± {s:.3f}"


def fmt_int(x: Any) -> str:
    v = num(x)
    return "–" if v is None else f"{int(v):,}"


def fmt_s(x: Any) -> str:
    v = num(x)
    if v is None:
        return "–"
    if v >= 3600:
        return f"{v / 3600:.1f} h"
    if v >= 120:
        return f"{v / 60:.1f} min"
    return f"{v:.1f} s"


def fmt_loss(x: Any) -> str:
    v = num(x)
    return "–" if v is None else f"{v:.4f}"


MAX_STEPS = 10  # steps shown per example (the mistake always among them)
MAX_CHARS = 300  # characters per question or step; model output can run long


def clip(s: Any, n: int = MAX_CHARS) -> str:
    t = "" if s is None else str(s)
    return t if len(t) <= n else t[: n - 1].rstrip() + "…"


def _steps_cell(steps: list[str], mistake: Any) -> Rich:
    k = num(mistake)
    k = int(k) if k is not None else None
    if not steps:
        return Rich('<span class="muted">(no steps)</span>', "(no steps)")
    show = list(range(1, min(len(steps), MAX_STEPS) + 1))
    if k is not None and k <= len(steps) and k not in show:
        show = show[:-1] + [k]
    items_h, items_m = [], []
    prev = 0
    for i in show:
        if i > prev + 1:
            items_h.append(f'<li class="muted" style="list-style:none">… {i - prev - 1} step(s)</li>')
            items_m.append(f"… {i - prev - 1} step(s)")
        s = clip(steps[i - 1])
        if i == k:
            items_h.append(f'<li value="{i}" class="mistake">{esc_html(s)} <span class="tag">mistake</span></li>')
            items_m.append(f"{i}. **{esc_md(s)}** ← mistake")
        else:
            items_h.append(f'<li value="{i}">{esc_html(s)}</li>')
            items_m.append(f"{i}. {esc_md(s)}")
        prev = i
    if prev < len(steps):
        items_h.append(f'<li class="muted" style="list-style:none">… {len(steps) - prev} more step(s)</li>')
        items_m.append(f"… {len(steps) - prev} more step(s)")
    if k is not None and k > len(steps):
        items_h.append(f'<li class="mistake muted">(no step {k}) <span class="tag">mistake</span></li>')
        items_m.append(f"{k}. (no such step) ← mistake")
    return Rich('<ol class="steps">' + "".join(items_h) + "</ol>", "<br>".join(items_m))


def esc_html(s: Any) -> str:
    return html.escape("" if s is None else str(s), quote=True).replace("\n", "<br>")


_MD_SPECIAL = re.compile(r"([\\`*\[\]|]|(?<!\w)_|_(?!\w))")  # an intra-word _ is literal in GFM


def esc_md(s: Any) -> str:
    """Text for a markdown table cell: HTML-escaped, markdown specials backslashed, no newlines."""
    t = html.escape("" if s is None else str(s), quote=False)
    t = _MD_SPECIAL.sub(r"\\\1", t)
    return t.replace("\r", "").replace("\n", "<br>")


# ---------------------------------------------------------------------------------------
# a pipeline run


def _cfg(run: dict[str, Any], *path: str) -> Any:
    x: Any = run.get("config") or {}
    for p in path:
        x = x.get(p) if isinstance(x, dict) else None
    return x


def _run_meta(run: dict[str, Any]) -> str:
    parts = []
    if run.get("method"):
        parts.append(f"arm {run['method']}")
    student = _cfg(run, "student", "name_or_path")
    if student:
        parts.append(f"student {student}")
    # The report shows no media, so say which modality the run's SkillWorld data was (audio
    # runs read like vision runs otherwise: the questions are text either way).
    if _cfg(run, "data", "source") == "skillworld" and _cfg(run, "data", "skillworld", "modality"):
        parts.append(f"data SkillWorld ({_cfg(run, 'data', 'skillworld', 'modality')})")
    teacher = _cfg(run, "teacher", "backend")
    if teacher:
        name = _cfg(run, "teacher", "name_or_path")
        parts.append(f"teacher {teacher}" + (f" ({name})" if name else ""))
    budget, rounds = _cfg(run, "retrieval", "budget"), _cfg(run, "retrieval", "rounds")
    if budget is not None:
        parts.append(f"budget {budget}" + (f" in {rounds} round(s)" if rounds else ""))
    mode = _cfg(run, "training", "coordination", "mode")
    if mode:
        parts.append(f"coordination {mode}")
    if run.get("config_hash"):
        parts.append(f"config {run['config_hash']}")
    if run.get("seconds") is not None:
        parts.append(f"wall time {fmt_s(run['seconds'])}")
    return " · ".join(parts)


def _headline(run: dict[str, Any]) -> str | None:
    rounds = [r for r in run["rounds"] if r.get("scores")]
    if len(rounds) < 2 or rounds[0]["round"] != 0:
        return None
    first, last = rounds[0], rounds[-1]
    tasks = list(target_scores(first["scores"]))
    a, b = targets_mean(first["scores"], tasks), targets_mean(last["scores"], tasks)
    if a is None or b is None:
        return None
    text = (f"Mean accuracy over the {len(tasks)} target task(s): {a:.3f} for the generic student, "
            f"{b:.3f} after round {last['round']} ({b - a:+.3f}).")
    ca, cb = corpus_mean(first["scores"]), corpus_mean(last["scores"])
    if ca is not None and cb is not None:
        text += f" Corpus tasks (the forgetting check): {ca:.3f} → {cb:.3f} ({cb - ca:+.3f})."
    return text


def _accuracy_table(run: dict[str, Any]) -> Table | None:
    rounds = [r for r in run["rounds"] if r.get("scores")]
    if not rounds:
        return None
    tasks = list(dict.fromkeys(t for r in rounds for t in target_scores(r["scores"])))
    has_corpus = any(corpus_mean(r["scores"]) is not None for r in rounds)
    header = ["", *tasks] + (["mean of targets"] if len(tasks) > 1 else []) + (
        ["corpus tasks"] if has_corpus else [])
    rows, cls = [], []
    first = target_scores(rounds[0]["scores"])
    maj = [fmt_acc(first.get(t, {}).get("majority")) for t in tasks]
    if len(tasks) > 1:
        maj.append(fmt_acc(targets_mean(rounds[0]["scores"], tasks, "majority")))
    if has_corpus:
        maj.append(fmt_acc(corpus_mean(rounds[0]["scores"], "majority")))
    rows.append(["majority answer", *maj])
    cls.append("ref")
    bold: set[tuple[int, int]] = set()
    for r in rounds:
        by = target_scores(r["scores"])
        label = "round 0 (generic student)" if r["round"] == 0 else f"round {r['round']}"
        row = [label] + [fmt_acc(by.get(t, {}).get("accuracy")) for t in tasks]
        if len(tasks) > 1:
            row.append(fmt_acc(targets_mean(r["scores"], tasks)))
        if has_corpus:
            row.append(fmt_acc(corpus_mean(r["scores"])))
        rows.append(row)
        cls.append("sep" if r["round"] == 0 else "")
    n = next((by.get(t, {}).get("n") for by in [target_scores(rounds[0]["scores"])] for t in tasks), None)
    caption = ("Accuracy per round on the target tasks' test splits" + (f" (n = {n} each)" if n else "")
               + "; round 0 is the generic student before any tuning."
               + (" Corpus tasks: macro mean over the corpus tasks (forgetting check)." if has_corpus else ""))
    return Table(caption, header, rows, numeric=[False] + [True] * (len(header) - 1), row_cls=cls, bold=bold)


def _rounds_table(run: dict[str, Any]) -> Table | None:
    rounds = [r for r in run["rounds"] if r["round"] > 0]
    if not rounds:
        return None
    header = ["round", "wrong (val)", "diagnosed", "distinct skills", "retrieved", "train rows", "steps",
              "final loss", "train time"]
    rows = []
    for r in rounds:
        st = r.get("diagnosis_status") or {}
        diag = ", ".join(f"{v} {k}" for k, v in st.items()) if isinstance(st, dict) and st else "–"
        skills = r.get("missing_skills")
        tr = r.get("train") or {}
        rows.append([str(r["round"]), fmt_int(r.get("wrong")), diag,
                     fmt_int(len(skills)) if isinstance(skills, dict) else "–",
                     fmt_int(r.get("retrieved_n")), fmt_int(r.get("train_rows") or tr.get("samples")),
                     fmt_int(tr.get("steps")), fmt_loss(tr.get("loss")), fmt_s(tr.get("seconds"))])
    return Table("Each round: the student's wrong validation answers, how many the teacher diagnosed "
                 "(ok / unparsed / skipped), the distinct missing skills, the samples retrieved this round, "
                 "the training set (all rounds so far) and the training run.",
                 header, rows, numeric=[False, True, False, True, True, True, True, True, True])


def _examples_table(run: dict[str, Any]) -> Table | None:
    ex = run.get("examples") or []
    if not ex:
        return None
    rows = []
    for e in ex:
        q = clip(e.get("question"))
        ans = clip("–" if e.get("student_answer") is None else e.get("student_answer"), 120)
        gold = clip(e.get("gold"), 120)
        rows.append([e.get("task"), Rich(esc_html(q), esc_md(q)),
                     _steps_cell(e.get("steps") or [], e.get("mistake_step")),
                     Rich(f'{esc_html(ans)} <span class="muted">/ {esc_html(gold)}</span>',
                          f"{esc_md(ans)} / {esc_md(gold)}"),
                     clip(e.get("missing_skill") or "–", 160)])
    r = ex[0].get("round")
    return Table(f"Diagnosis examples (round {r}): the question, the student's steps with the step the teacher "
                 f"located as the first mistake, the student's answer / the gold answer, and the missing skill "
                 f"the teacher named.", ["task", "question", "student steps", "answer / gold", "missing skill"],
                 rows, wide=True)


def _stages_table(run: dict[str, Any]) -> Table | None:
    stages = run.get("stages") or []
    if not stages:
        return None
    total = sum(s["seconds"] or 0 for s in stages)
    rows, cls = [], []
    for s in stages:
        note = ""
        if s["state"] == "failed":
            note = f"failed: {s['error']}" if s.get("error") else "failed"
        elif s["state"] == "running":
            note = "running (or the driver was killed)"
        elif (s["seconds"] or 0) < 0.05 and (s.get("work_seconds") or 0) > 0:
            note = f"cached (built in {fmt_s(s['work_seconds'])})"
        elif (s["seconds"] or 0) < 0.05:
            note = "cached"
        share = f"{100 * (s['seconds'] or 0) / total:.0f}%" if total > 0 and s["seconds"] is not None else "–"
        rows.append([s["name"], s["state"], fmt_s(s["seconds"]), share, note])
        cls.append("")
    rows.append(["sum of stages", "", fmt_s(total), "100%" if total else "–", ""])
    cls.append("sep")
    return Table("Stage timings from manifest.json (this run's wall time per stage; cached stages took "
                 "no time here).", ["stage", "state", "time", "share", "note"], rows,
                 numeric=[False, False, True, True, False], row_cls=cls)


def _draw(notes: list[str], what: str, fn: Callable[..., bytes | None], *args: Any) -> bytes | None:
    """A figure, or None and a note: the report is written at the end of long runs, so one
    figure the data cannot make must not cost the whole report."""
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001
        notes.append(f"The {what} figure could not be drawn ({type(exc).__name__}: {exc}).")
        return None


def run_blocks(run: dict[str, Any], dpi: int, level: int = 2, prefix: str = "") -> list[Block]:
    """The sections of a pipeline run's report (``level`` 3 when nested in a comparison)."""
    out: list[Block] = []
    sec = 0

    def heading(text: str) -> None:
        nonlocal sec
        sec += 1
        out.append(Heading(f"{prefix}{sec} {text}" if prefix else f"{sec}. {text}", level))

    heading("Accuracy")
    head = _headline(run)
    if head:
        out.append(Para(head))
    t = _accuracy_table(run)
    if t:
        out.append(t)
    png = _draw(run["notes"], "accuracy per round", plots.accuracy_rounds, run, dpi)
    if png:
        out.append(Figure("Accuracy per round. (a) Each target task's test accuracy (solid) and its "
                          "majority-answer baseline (dashed, same colour); black: the mean over the targets. "
                          "(b) Macro-mean accuracy on the corpus tasks, which tuning should not lower.",
                          png, "accuracy-rounds"))
    if not t and not png:
        out.append(Para("No evaluation scores in this run.", "muted"))

    heading("Rounds")
    t = _rounds_table(run)
    out.append(t if t else Para("No tuning rounds in this run.", "muted"))

    heading("Diagnosis")
    missing = {r["round"]: r["missing_skills"] for r in run["rounds"] if r.get("missing_skills")}
    png = _draw(run["notes"], "missing skills", plots.skill_bars, missing, "wrong answers attributed to the skill",
                dpi)
    if png:
        out.append(Figure("Missing skills the teacher named for the student's wrong validation answers, per "
                          "round (counts of wrong answers).", png, "missing-skills", width_in=6.2))
    t = _examples_table(run)
    if t:
        out.append(t)
    if not png and not t:
        out.append(Para("No diagnosis in this run (the arm needs none, or the stage did not run).", "muted"))

    heading("Retrieved data")
    retrieved = {r["round"]: r["retrieved_skills"] for r in run["rounds"] if r.get("retrieved_skills")}
    png = _draw(run["notes"], "retrieved skills", plots.skill_bars, retrieved, "retrieved samples with the skill",
                dpi)
    if png:
        out.append(Figure("Skills of the samples retrieved in each round (the teacher's annotation of each "
                          "corpus sample; a sample can carry several skills).", png, "retrieved-skills",
                          width_in=6.2))
    else:
        out.append(Para("No retrieved samples to show.", "muted"))

    heading("Training")
    png = _draw(run["notes"], "training", plots.training, run, dpi)
    if png:
        mode = _cfg(run, "training", "coordination", "mode")
        out.append(Figure("Training of each round (from the generic student, on the data of rounds 1..r)"
                          + (f", coordination mode {mode}" if mode else "") + ". (a) Loss per step. (b) κ, the "
                          "ratio of the two modalities' learning signals: measured at probe steps (dots) and its "
                          "running estimate κ̄ (line); 1 means balanced. (c) Learning rates of the LLM's LoRA "
                          "adapters (solid) and the encoder/projector (dashed).", png, "training"))
    else:
        out.append(Para("No training history in this run.", "muted"))

    heading("Stage timings")
    t = _stages_table(run)
    out.append(t if t else Para("No manifest.json, so no stage timings.", "muted"))
    return out


def build_run(run: dict[str, Any], dpi: int = plots.DPI) -> tuple[str, str, list[Block]]:
    title = f"Run report: {run['name']}"
    blocks: list[Block] = [Para(_run_meta(run), "meta"), Para(f"Run directory: {run['run_dir']}", "meta")]
    blocks += run_blocks(run, dpi)
    if run["notes"]:  # first, so a reader sees what is missing before reading the rest
        blocks[2:2] = [Heading("Notes: missing or unreadable pieces"), Notes(list(run["notes"]))]
    return title, run["name"], blocks


# ---------------------------------------------------------------------------------------
# a comparison


def _budget_key(b: Any) -> float:
    v = num(b)
    return v if v is not None else float("inf")


def _budget_label(b: Any, corpus: float | None) -> str:
    v = num(b)
    if v is None:
        return str(b)
    return f"{int(v):,}" + (f" ({100 * v / corpus:.1f}%)" if corpus else "")


def _bold_best(rows: list[list[Cell]], values: list[list[float | None]], skip: list[bool],
               first_col: int) -> set[tuple[int, int]]:
    """(row, col) of the highest value per column among the rows not skipped (ties: all)."""
    bold = set()
    for j in range(len(values[0]) if values else 0):
        col = [(i, v[j]) for i, v in enumerate(values) if not skip[i] and v[j] is not None]
        if len(col) < 2:
            continue
        best = max(v for _, v in col)
        bold |= {(i, j + first_col) for i, v in col if abs(v - best) < 1e-12}
    return bold


def _arm_budget_table(cmp: dict[str, Any], rows_in: list[dict[str, Any]], caption: str,
                      generic: float | None, majority: float | None) -> Table | None:
    """Arms as rows, budgets as columns, mean ± sd over seeds; the baselines on top."""
    if not rows_in:
        return None
    budgets = list(cmp["budgets"])
    corpus = cmp.get("corpus_size")
    cell = {(r["arm"], r["budget"]): r for r in rows_in}
    header = ["arm"] + [_budget_label(b, corpus) for b in budgets]
    rows: list[list[Cell]] = [["majority answer"] + [fmt_acc(majority)] * len(budgets),
                              ["generic student"] + [fmt_acc(generic)] * len(budgets)]
    cls = ["ref", "ref"]
    values: list[list[float | None]] = [[None] * len(budgets), [None] * len(budgets)]
    skip = [True, True]
    arms = [a for a in cmp["arms"] if any(r["arm"] == a for r in rows_in)]
    for a in arms:
        mine = [r for r in rows_in if r["arm"] == a]
        own = {r["budget"] for r in mine}
        if own and not own & set(budgets):  # its own budget (the full corpus): one value for every column
            r = mine[0]
            label = f"{plots.arm_label(a)} ({fmt_int(r['budget'])})"
            picked = [r] * len(budgets)
        else:
            label = plots.arm_label(a)
            picked = [cell.get((a, b)) for b in budgets]
        rows.append([label] + [fmt_pm(r["mean"], r["sd"], r.get("n")) if r else "–" for r in picked])
        values.append([r["mean"] if r else None for r in picked])
        skip.append(a == "oracle")
        cls.append(("sep " if len(rows) == 3 else "") + ("oracle" if a == "oracle" else ""))
    return Table(caption, header, rows, numeric=[False] + [True] * len(budgets), row_cls=[c.strip() for c in cls],
                 bold=_bold_best(rows, values, skip, 1))


def _per_target_table(cmp: dict[str, Any]) -> Table | None:
    targets = cmp["targets"]
    cell = {(r["arm"], r["budget"], str(r.get("task"))): r for r in cmp["table"]}
    if not cell or not targets:
        return None
    header = ["arm", "budget", *targets]
    base = target_scores(cmp["baseline"])
    rows: list[list[Cell]] = [["majority answer", "–"] + [fmt_acc(cmp["majority"].get(t)) for t in targets],
                              ["generic student", "0"] + [fmt_acc(base.get(t, {}).get("accuracy")) for t in targets]]
    cls = ["ref", "ref"]
    values: list[list[float | None]] = [[None] * len(targets)] * 2
    skip = [True, True]
    arms = [a for a in cmp["arms"] if any(k[0] == a for k in cell)]
    arms = [a for a in arms if a != "oracle"] + [a for a in arms if a == "oracle"]
    bold: set[tuple[int, int]] = set()
    for b in sorted({k[1] for k in cell}, key=_budget_key):
        group_rows, group_vals, group_skip = [], [], []
        for a in arms:
            if not any((a, b, t) in cell for t in targets):
                continue
            xs = [cell.get((a, b, t)) for t in targets]
            group_rows.append([plots.arm_label(a), fmt_int(b)]
                              + [fmt_pm(x["mean"], x["sd"], x.get("n")) if x else "–" for x in xs])
            group_vals.append([x["mean"] if x else None for x in xs])
            group_skip.append(a == "oracle")
        start = len(rows)
        bold |= {(i + start, j) for i, j in _bold_best(group_rows, group_vals, group_skip, 2)}
        for k, r in enumerate(group_rows):
            rows.append(r)
            cls.append(" ".join(c for c, on in (("sep", k == 0), ("oracle", group_skip[k])) if on))
        values += group_vals
        skip += group_skip
    return Table("Test accuracy per target task, mean ± sd over seeds, per arm and budget; bold: the best arm "
                 "at each budget (the oracle excluded).", header, rows,
                 numeric=[False, True] + [True] * len(targets), row_cls=cls, bold=bold)


def _cells_table(cmp: dict[str, Any]) -> Table | None:
    cells = cmp["cells"]
    if not cells:
        return None
    rows = []
    for c in sorted(cells, key=lambda c: (cmp["arms"].index(c["arm"]) if c["arm"] in cmp["arms"] else 99,
                                          _budget_key(c["budget"]), num(c["seed"]) or 0)):
        rd = c.get("run_dir")
        here = Path(rd).name if rd and Path(rd).is_dir() else "missing"
        rows.append([plots.arm_label(c["arm"]), fmt_int(c["budget"]), str(c["seed"]),
                     fmt_acc(targets_mean(c["scores"], cmp["targets"])), fmt_acc(corpus_mean(c["scores"])),
                     fmt_int(c.get("selected")), fmt_s(c.get("seconds")), here])
    return Table("Every run of the comparison: its mean target accuracy, corpus-task accuracy, the samples "
                 "it selected, its wall time, and its run directory (or that it is missing here).",
                 ["arm", "budget", "seed", "mean of targets", "corpus tasks", "selected", "time", "run dir"],
                 rows, numeric=[False, True, True, True, True, True, True, False])


def build_compare(cmp: dict[str, Any], dpi: int = plots.DPI) -> tuple[str, str, list[Block]]:
    title = f"Comparison report: {cmp['name']}"
    corpus = cmp.get("corpus_size")
    student = _cfg(cmp, "student", "name_or_path")
    modality = _cfg(cmp, "data", "skillworld", "modality") if _cfg(cmp, "data", "source") == "skillworld" else None
    meta = " · ".join(p for p in [
        f"student {student}" if student else "",
        f"data SkillWorld ({modality})" if modality else "",
        "arms " + ", ".join(cmp["arms"]) if cmp["arms"] else "",
        "budgets " + ", ".join(fmt_int(b) for b in cmp["budgets"]) if cmp["budgets"] else "",
        f"corpus {fmt_int(corpus)} samples" if corpus else "",
        "seeds " + ", ".join(str(s) for s in cmp["seeds"]) if cmp["seeds"] else "",
        f"{len(cmp['cells'])} runs"] if p)
    blocks: list[Block] = [Para(meta, "meta"), Para(f"Comparison directory: {cmp['dir']}", "meta")]
    targets = cmp["targets"]
    if targets:
        blocks.append(Para(f"Target tasks ({len(targets)}): " + ", ".join(targets) + "."))
    seeds = len(cmp.get("seeds") or [])
    over = f"over {seeds} seed(s)" if seeds else "over seeds"
    maj = [cmp["majority"].get(t) for t in targets]
    maj_mean = sum(maj) / len(maj) if maj and all(m is not None for m in maj) else None

    blocks.append(Heading("1. Target accuracy"))
    t = _arm_budget_table(cmp, cmp["targets_mean"],
                          f"Mean test accuracy over the target tasks, mean ± sd {over}, per arm (rows) and data "
                          "budget (columns, samples" + (" and % of the corpus" if corpus else "") + "); bold: the "
                          "best arm at each budget (the oracle excluded). Reference rows: the majority answer and "
                          "the generic student before tuning.", targets_mean(cmp["baseline"], targets), maj_mean)
    blocks.append(t if t else Para("No results in compare.json.", "muted"))
    png = _draw(cmp["notes"], "accuracy vs budget", plots.accuracy_vs_budget, cmp, dpi)
    if png:
        blocks.append(Figure(f"Test accuracy against the data budget, one panel per target task (and their mean): "
                             f"mean ± sd {over} per arm (points dodged sideways so the error bars do not "
                             "overlap; an arm with a single budget of its own, such as the full corpus, is a "
                             "level line). Dotted: the generic student before tuning; dashed grey: the majority "
                             "answer.", png, "accuracy-vs-budget"))
    t = _per_target_table(cmp)
    if t:
        blocks.append(t)

    blocks.append(Heading("2. Forgetting"))
    t = _arm_budget_table(cmp, cmp["forgetting"],
                          f"Macro-mean accuracy on the corpus tasks (the forgetting check; higher is better), mean "
                          f"± sd {over}, per arm and budget.", corpus_mean(cmp["baseline"]),
                          cmp.get("corpus_majority"))
    if t:
        blocks.append(t)
    png = _draw(cmp["notes"], "forgetting", plots.forgetting_vs_budget, cmp, dpi)
    if png:
        blocks.append(Figure(f"Macro-mean accuracy on the corpus tasks against the data budget (mean ± sd {over}): "
                             "tuning for the targets should not lower it below the generic student (dotted).",
                             png, "forgetting", width_in=5.4))
    if not t and not png:
        blocks.append(Para("No corpus-task scores in compare.json.", "muted"))

    d, c = cmp.get("detail"), cmp.get("detail_cell")
    if d and c:
        blocks.append(Heading(f"3. One run in detail: {plots.arm_label(c['arm'])}, budget {fmt_int(c['budget'])}, "
                              f"seed {c['seed']}"))
        blocks.append(Para(f"Run directory: {d['run_dir']}", "meta"))
        blocks += run_blocks(d, dpi, level=3, prefix="3.")
    else:
        blocks.append(Heading("3. One run in detail"))
        blocks.append(Para("No cell's run directory is present here, so no run is shown in detail.", "muted"))
    blocks.append(Heading("Appendix: all runs"))
    t = _cells_table(cmp)
    blocks.append(t if t else Para("No runs.", "muted"))
    notes = list(cmp["notes"]) + [f"(detail run) {n}" for n in (d or {}).get("notes", [])]
    if notes:
        at = 3 if targets else 2
        blocks[at:at] = [Heading("Notes: missing or unreadable pieces"), Notes(notes)]
    return title, cmp["name"], blocks


# ---------------------------------------------------------------------------------------
# renderers

CSS = """
:root { --ink: #1b1b1b; --muted: #6a6a6a; --rule: #1b1b1b; --light: #d9d9d9; }
* { box-sizing: border-box; }
html { background: #ffffff; }
body { margin: 0; color: var(--ink); background: #ffffff;
  font: 15.5px/1.5 Charter, "Bitstream Charter", "Sitka Text", Cambria, "Iowan Old Style", Georgia,
        "DejaVu Serif", "Times New Roman", serif; }
main { max-width: 900px; margin: 0 auto; padding: 36px 32px 72px; }
h1 { font-size: 1.65em; font-weight: 600; margin: 0 0 .25em; letter-spacing: -.01em; }
h2 { font-size: 1.2em; font-weight: 600; margin: 2.1em 0 .7em; padding-bottom: .2em;
  border-bottom: 1px solid var(--light); }
h3 { font-size: 1.04em; font-weight: 600; margin: 1.7em 0 .5em; }
p { margin: .5em 0; }
p.meta { color: var(--muted); font-size: .86em; margin: .15em 0; overflow-wrap: anywhere; }
p.muted, .muted { color: var(--muted); }
.tablewrap { overflow-x: auto; margin: .9em 0 1.5em; }
table { border-collapse: collapse; margin: 0 auto; font-size: .84em; font-variant-numeric: tabular-nums lining-nums;
  border-top: 1.6px solid var(--rule); border-bottom: 1.6px solid var(--rule); }
table.wide { width: 100%; }
caption { caption-side: top; text-align: left; font-size: .95em; padding: 0 0 .45em; line-height: 1.4; }
.label { font-weight: 700; }
th { font-weight: 600; text-align: left; padding: 5px 9px 4px; border-bottom: 1px solid var(--rule);
  vertical-align: bottom; }
td { padding: 3px 9px; vertical-align: top; }

th.num, td.num { text-align: right; }
td.num { white-space: nowrap; }
tr.ref td { color: var(--muted); font-style: italic; }
tr.sep td { border-top: 1px solid var(--light); }
tr.oracle td { color: var(--muted); }
td b { font-weight: 700; }
ol.steps { margin: 0; padding-left: 1.25em; }
ol.steps li { margin: 0; }
ol.steps li.mistake { background: #fbe3dc; border-radius: 2px; }
.tag { font-size: .78em; font-variant: small-caps; color: #a23a1d; letter-spacing: .02em; }
figure { margin: 1.3em 0 1.8em; }
figure img { display: block; margin: 0 auto; max-width: 100%; height: auto; }
figcaption { font-size: .9em; line-height: 1.4; margin: .55em auto 0; max-width: 780px; }
.notes { background: #faf7ee; border-left: 3px solid #d9bd6a; padding: .55em 1em .55em 1.9em;
  font-size: .88em; margin: .6em 0; }
.notes li { margin: .15em 0; }
footer { margin-top: 3em; color: var(--muted); font-size: .8em; border-top: 1px solid var(--light);
  padding-top: .6em; }
@media print { main { padding: 0; max-width: none; } figure, table, .tablewrap { break-inside: avoid; } }
"""


def _cell_html(c: Cell) -> str:
    if isinstance(c, Rich):
        return c.html
    return esc_html("–" if c is None else c)


def _cell_md(c: Cell) -> str:
    if isinstance(c, Rich):
        return c.md
    return esc_md("–" if c is None else c)


def _numbered(blocks: list[Block]) -> list[tuple[Block, int]]:
    """Each block with its figure or table number (0 for the rest)."""
    nf = nt = 0
    out = []
    for b in blocks:
        if isinstance(b, Figure):
            nf += 1
            out.append((b, nf))
        elif isinstance(b, Table):
            nt += 1
            out.append((b, nt))
        else:
            out.append((b, 0))
    return out


def figure_files(blocks: list[Block]) -> dict[int, str]:
    """Figure number → its PNG file name under ``report_files/``."""
    return {n: f"fig{n:02d}-{b.slug}.png" for b, n in _numbered(blocks) if isinstance(b, Figure)}


def render_html(title: str, blocks: list[Block]) -> str:
    parts = [f"<h1>{esc_html(title)}</h1>"]
    for b, n in _numbered(blocks):
        if isinstance(b, Heading):
            parts.append(f"<h{b.level}>{esc_html(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            cls = f' class="{b.cls}"' if b.cls else ""
            parts.append(f"<p{cls}>{esc_html(b.text)}</p>")
        elif isinstance(b, Notes):
            parts.append('<ul class="notes">' + "".join(f"<li>{esc_html(x)}</li>" for x in b.items) + "</ul>")
        elif isinstance(b, Figure):
            data = base64.b64encode(b.png).decode("ascii")
            width = int(b.width_in * 118)
            parts.append(f'<figure><img src="data:image/png;base64,{data}" alt="{esc_html(b.alt or b.caption)}" '
                         f'style="width:{width}px"><figcaption><span class="label">Figure {n}.</span> '
                         f"{esc_html(b.caption)}</figcaption></figure>")
        elif isinstance(b, Table):
            numeric = b.numeric or [False] * len(b.header)
            head = "".join(f'<th class="num">{esc_html(h)}</th>' if numeric[j] else f"<th>{esc_html(h)}</th>"
                           for j, h in enumerate(b.header))
            body = []
            for i, row in enumerate(b.rows):
                cls = (b.row_cls or [""] * len(b.rows))[i]
                tds = []
                for j, c in enumerate(row):
                    inner = _cell_html(c)
                    if (i, j) in b.bold:
                        inner = f"<b>{inner}</b>"
                    tds.append(f'<td class="num">{inner}</td>' if j < len(numeric) and numeric[j]
                               else f"<td>{inner}</td>")
                body.append((f'<tr class="{cls}">' if cls else "<tr>") + "".join(tds) + "</tr>")
            wide = ' class="wide"' if b.wide else ""
            parts.append(f'<div class="tablewrap"><table{wide}><caption><span class="label">Table {n}.</span> '
                         f"{esc_html(b.caption)}</caption><thead><tr>{head}</tr></thead><tbody>"
                         + "".join(body) + "</tbody></table></div>")
    stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime())
    parts.append(f"<footer>Generated by mmtune report on {stamp}. Self-contained: the figures are embedded; "
                 f"the same figures are in report_files/ as PNG files.</footer>")
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{esc_html(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n"
            + "\n".join(parts) + "\n</main>\n</body>\n</html>\n")


def render_markdown(title: str, blocks: list[Block], files_dir: str = "report_files") -> str:
    names = figure_files(blocks)
    out = [f"# {esc_md(title)}", ""]
    for b, n in _numbered(blocks):
        if isinstance(b, Heading):
            out += ["#" * b.level + " " + esc_md(b.text), ""]
        elif isinstance(b, Para):
            text = esc_md(b.text)
            out += [f"*{text}*" if b.cls == "meta" else text, ""]
        elif isinstance(b, Notes):
            out += [f"- {esc_md(x)}" for x in b.items] + [""]
        elif isinstance(b, Figure):
            out += [f"![Figure {n}]({files_dir}/{names[n]})", "", f"**Figure {n}.** {esc_md(b.caption)}", ""]
        elif isinstance(b, Table):
            numeric = b.numeric or [False] * len(b.header)
            out += [f"**Table {n}.** {esc_md(b.caption)}", ""]
            out.append("| " + " | ".join(esc_md(h) or " " for h in b.header) + " |")
            out.append("|" + "|".join("---:" if numeric[j] else "---" for j in range(len(b.header))) + "|")
            for i, row in enumerate(b.rows):
                cells = []
                for j, c in enumerate(row):
                    s = _cell_md(c)
                    cells.append(f"**{s}**" if (i, j) in b.bold and s else s)
                out.append("| " + " | ".join(cells) + " |")
            out.append("")
    return "\n".join(out).rstrip() + "\n"


def build(data: dict[str, Any], dpi: int = plots.DPI) -> tuple[str, list[Block]]:
    """The title and blocks for either kind of collected directory."""
    title, _, blocks = build_compare(data, dpi) if data["kind"] == "compare" else build_run(data, dpi)
    return title, blocks
