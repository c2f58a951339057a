"""Read a run directory (or a comparison directory) into plain dicts for the report.

Nothing here raises on a missing or unreadable piece: each reader returns what it could
read and appends a sentence to ``notes`` saying what was missing, so a half-finished or
failed run still gets a report. Only pyarrow and the standard library are used; parquet
files are read column by column (never the image bytes).
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path
from typing import Any

CORPUS_SPLIT = "corpus-tasks"
MEAN_TASK = "mean"  # compare.json's table: the row per (arm, budget) averaged over the targets
N_EXAMPLES = 8
_ROUND_DIR = re.compile(r"^round_(\d+)$")


# ---------------------------------------------------------------------------------------
# small readers


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def read_json(path: Path, notes: list[str], root: Path, *, required: bool = False) -> Any:
    """JSON (NaN literals allowed) or None; a missing file is noted only when ``required``."""
    if not path.is_file():
        if required:
            notes.append(f"{_rel(path, root)} is missing.")
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        notes.append(f"{_rel(path, root)} could not be read ({type(exc).__name__}: {exc}).")
        return None


def read_jsonl(path: Path, notes: list[str], root: Path) -> list[dict[str, Any]]:
    """Lines of JSON objects; a bad line (e.g. cut off by a killed run) is skipped and noted."""
    rows: list[dict[str, Any]] = []
    bad = 0
    try:
        text = path.read_text()
    except OSError as exc:
        notes.append(f"{_rel(path, root)} could not be read ({exc}).")
        return rows
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if isinstance(obj, dict):
            rows.append(obj)
        else:
            bad += 1
    if bad:
        notes.append(f"{_rel(path, root)}: {bad} unreadable line(s) skipped.")
    return rows


def read_parquet(path: Path, columns: list[str], notes: list[str], root: Path) -> list[dict[str, Any]] | None:
    """The named columns (those present) of a parquet file as row dicts, or None."""
    if not path.is_file():
        return None
    try:
        import pyarrow.parquet as pq

        names = pq.read_schema(path).names
        cols = [c for c in columns if c in names]
        return pq.read_table(path, columns=cols).to_pylist()
    except Exception as exc:  # noqa: BLE001 - any unreadable file becomes a note
        notes.append(f"{_rel(path, root)} could not be read ({type(exc).__name__}: {exc}).")
        return None


def num(x: Any) -> float | None:
    """A finite float or None (NaN, inf, strings and None all become None)."""
    if isinstance(x, bool):
        return float(x)
    if isinstance(x, (int, float)):
        f = float(x)
        return f if math.isfinite(f) else None
    return None


def mean_sd(values: list[float]) -> tuple[float | None, float | None, int]:
    """Mean, sample standard deviation (ddof=1; None for one value) and count."""
    vals = [v for v in (num(x) for x in values) if v is not None]
    if not vals:
        return None, None, 0
    m = sum(vals) / len(vals)
    if len(vals) < 2:
        return m, None, len(vals)
    var = sum((v - m) ** 2 for v in vals) / (len(vals) - 1)
    return m, math.sqrt(var), len(vals)


# ---------------------------------------------------------------------------------------
# scores


def clean_scores(scores: Any) -> list[dict[str, Any]]:
    """TaskScore dicts with the fields the report uses; anything malformed is dropped."""
    out = []
    for s in scores or []:
        if not isinstance(s, dict) or "task" not in s:
            continue
        out.append({"split": str(s.get("split", "")), "task": str(s["task"]), "n": s.get("n"),
                    "accuracy": num(s.get("accuracy")), "majority": num(s.get("majority")),
                    "no_answer": s.get("no_answer")})
    return out


def is_corpus(score: dict[str, Any]) -> bool:
    return score.get("split") == CORPUS_SPLIT


def target_scores(scores: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Target-task rows by task (every split other than the corpus tasks)."""
    return {s["task"]: s for s in scores if not is_corpus(s)}


def corpus_mean(scores: list[dict[str, Any]], key: str = "accuracy") -> float | None:
    """Macro mean over the corpus tasks (the forgetting check), or None when there are none."""
    vals = [s[key] for s in scores if is_corpus(s) and s.get(key) is not None]
    return sum(vals) / len(vals) if vals else None


def targets_mean(scores: list[dict[str, Any]], targets: list[str] | None = None,
                 key: str = "accuracy") -> float | None:
    """Macro mean over the target tasks (all of ``targets`` must be present)."""
    by = target_scores(scores)
    tasks = targets if targets else sorted(by)
    vals = [by[t].get(key) for t in tasks if t in by]
    if not tasks or len(vals) != len(tasks) or any(v is None for v in vals):
        return None
    return sum(vals) / len(vals)


# ---------------------------------------------------------------------------------------
# a pipeline run directory


def _round_dirs(root: Path) -> dict[int, Path]:
    out = {}
    if root.is_dir():
        for p in root.iterdir():
            m = _ROUND_DIR.match(p.name)
            if m and p.is_dir():
                out[int(m.group(1))] = p
    return out


def _stages(manifest: dict[str, Any] | None) -> list[dict[str, Any]]:
    stages = []
    for name, st in ((manifest or {}).get("stages") or {}).items():
        if not isinstance(st, dict):
            continue
        outputs = st.get("outputs") if isinstance(st.get("outputs"), dict) else {}
        err = st.get("error")
        stages.append({"name": str(name), "state": str(st.get("state", "?")), "seconds": num(st.get("seconds")),
                       "started": num(st.get("started")), "work_seconds": num(outputs.get("seconds")),
                       "error": str(err).strip().splitlines()[-1] if err else None})
    return stages


def _skill_counts(rows: list[dict[str, Any]]) -> Counter:
    c: Counter = Counter()
    for r in rows:
        skills = r.get("skills") or []
        if isinstance(skills, str):
            skills = [skills]
        if not skills:
            c["(no skills annotated)"] += 1
        for s in skills:
            c[str(s)] += 1
    return c


def _interleave(groups: dict[str, list[dict[str, Any]]], n: int) -> list[dict[str, Any]]:
    """Round-robin over the groups (in key order) until ``n`` items or none are left."""
    order = sorted(groups)
    picked: list[dict[str, Any]] = []
    depth = 0
    while len(picked) < n and any(len(groups[k]) > depth for k in order):
        for k in order:
            if depth < len(groups[k]) and len(picked) < n:
                picked.append(groups[k][depth])
        depth += 1
    return picked


def _examples(rows: list[dict[str, Any]], r: int, n: int = N_EXAMPLES) -> list[dict[str, Any]]:
    """Up to ``n`` diagnosed items: round-robin over the tasks, and within a task over the skills."""
    ok = [x for x in rows if x.get("status") == "ok"] or rows
    seen: set[tuple[str, str, str]] = set()
    distinct = []
    for x in ok:  # one of each (question, steps, skill): near-duplicates say nothing new
        key = (str(x.get("question")), repr(x.get("student_steps")), str(x.get("missing_skill")))
        if key not in seen:
            seen.add(key)
            distinct.append(x)
    ok = distinct
    by_task: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for x in ok:
        by_task.setdefault(str(x.get("task")), {}).setdefault(str(x.get("missing_skill")), []).append(x)
    picked = _interleave({t: _interleave(g, len(ok)) for t, g in by_task.items()}, n)
    picked.sort(key=lambda x: str(x.get("task")))  # stable: grouped by task, skills still varied
    out = []
    for x in picked:
        steps = x.get("student_steps")
        out.append({"round": r, "id": x.get("id"), "task": x.get("task"), "question": x.get("question"),
                    "steps": [str(s) for s in steps] if isinstance(steps, list) else [],
                    "mistake_step": x.get("mistake_step"), "student_answer": x.get("student_answer"),
                    "gold": x.get("gold"), "missing_skill": x.get("missing_skill"),
                    "locate_method": x.get("locate_method"), "status": x.get("status")})
    return out


def collect_run(run_dir: str | Path) -> dict[str, Any]:
    """A pipeline run directory as a dict (see the module docstring: never raises on gaps)."""
    root = Path(run_dir)
    notes: list[str] = []
    manifest = read_json(root / "manifest.json", notes, root, required=True)
    summary = read_json(root / "summary.json", notes, root)
    if summary is None and (root / "manifest.json").is_file():
        notes.append("summary.json is missing (the run has not finished?); rounds are read from round_*/.")
    config = (manifest or {}).get("config") or {}
    summary_rounds = {int(x["round"]): x for x in (summary or {}).get("rounds") or []
                      if isinstance(x, dict) and isinstance(x.get("round"), int)}
    dirs = _round_dirs(root)
    stages = _stages(manifest)
    stage_out = {s: (st.get("outputs") or {}) for s, st in ((manifest or {}).get("stages") or {}).items()
                 if isinstance(st, dict)}

    rounds = []
    examples: list[dict[str, Any]] = []
    prev_train_ids: set[str] = set()
    for r in sorted(set(dirs) | set(summary_rounds)):
        rdir = dirs.get(r, root / f"round_{r}")
        srow = summary_rounds.get(r, {})
        rnd: dict[str, Any] = {"round": r, "selected": srow.get("selected"), "wrong": srow.get("wrong"),
                               "train": srow.get("train") if isinstance(srow.get("train"), dict) else None}
        # scores
        scores = read_json(rdir / "eval" / "scores.json", notes, root)
        if scores is None:
            scores = srow.get("scores")
        rnd["scores"] = clean_scores(scores) if scores else None
        if rnd["scores"] is None:
            notes.append(f"round {r}: no evaluation scores (round_{r}/eval/scores.json).")
        if r == 0:
            rounds.append(rnd)
            continue
        # diagnosis: the missing skills
        diag = read_parquet(rdir / "diagnosis" / "diagnosis.parquet",
                            ["id", "task", "question", "student_steps", "student_answer", "gold", "mistake_step",
                             "locate_method", "missing_skill", "status"], notes, root)
        if diag is not None:
            status = Counter(str(x.get("status")) for x in diag)
            rnd["diagnosis_status"] = dict(status)
            rnd["missing_skills"] = dict(Counter(str(x["missing_skill"]) for x in diag
                                                 if x.get("status") == "ok" and x.get("missing_skill")))
            if rnd["wrong"] is None:
                rnd["wrong"] = len(diag)
            if not examples:
                examples = _examples(diag, r)
        else:
            skills = srow.get("skills") or (stage_out.get(f"diagnose_{r}") or {}).get("skills")
            rnd["missing_skills"] = dict(skills) if isinstance(skills, dict) else None
            rnd["diagnosis_status"] = (stage_out.get(f"diagnose_{r}") or {}).get("status")
            notes.append(f"round {r}: no diagnosis.parquet" + (" (skill counts from summary.json)."
                                                              if rnd["missing_skills"] else "."))
        # selection and the retrieved samples' skills
        sel = read_parquet(rdir / "selection.parquet", ["id", "query", "method"], notes, root)
        train_rows = read_parquet(rdir / "train_data.parquet", ["id", "skills"], notes, root)
        rnd["selection_methods"] = dict(Counter(str(x.get("method")) for x in sel)) if sel else None
        if sel is not None and rnd["selected"] is None:
            rnd["selected"] = len(sel)
        if train_rows is None:
            rnd["retrieved_skills"] = None
            notes.append(f"round {r}: no train_data.parquet, so no skills of the retrieved samples.")
        else:
            ids_now = {str(x.get("id")) for x in train_rows}
            if sel is not None:
                sel_ids = {str(x.get("id")) for x in sel}
                new = [x for x in train_rows if str(x.get("id")) in sel_ids]
            else:
                new = [x for x in train_rows if str(x.get("id")) not in prev_train_ids]
                notes.append(f"round {r}: no selection.parquet; the retrieved samples are the rows of "
                             f"train_data.parquet not in the previous round's.")
            rnd["retrieved_skills"] = dict(_skill_counts(new))
            rnd["retrieved_n"] = len(new)
            rnd["train_rows"] = len(train_rows)
            prev_train_ids = ids_now
        # training history
        hist_path = rdir / "train" / "history.jsonl"
        if not hist_path.is_file() and rnd["train"] and rnd["train"].get("run_dir"):
            hist_path = Path(rnd["train"]["run_dir"]) / "history.jsonl"
        if hist_path.is_file():
            rnd["history"] = read_jsonl(hist_path, notes, root)
        else:
            rnd["history"] = []
            notes.append(f"round {r}: no train/history.jsonl.")
        if rnd["train"] is None:
            tr = stage_out.get(f"train_{r}")
            rnd["train"] = tr if isinstance(tr, dict) and tr else None
        rounds.append(rnd)

    if not rounds:
        notes.append("no rounds found (neither summary.json nor round_*/ directories).")
    if rounds and rounds[0]["round"] != 0:
        notes.append("round 0 (the generic student) is missing.")
    method = (summary or {}).get("method") or (config.get("retrieval") or {}).get("method")
    total = num((summary or {}).get("seconds"))
    return {"kind": "run", "run_dir": str(root), "name": (config.get("run") or {}).get("name") or root.name,
            "method": method, "config": config, "config_hash": (manifest or {}).get("config_hash"),
            "seconds": total, "rounds": rounds, "examples": examples, "stages": stages, "notes": notes}


# ---------------------------------------------------------------------------------------
# a comparison directory (``mmtune compare``)


def _cell_target_mean(cell: dict[str, Any], targets: list[str]) -> float | None:
    return targets_mean(cell["scores"], targets)


def aggregate_cells(cells: list[dict[str, Any]], targets: list[str]) -> dict[str, Any]:
    """Per (arm, budget): per-target, targets-mean and corpus-tasks mean ± sd over seeds."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for c in cells:
        groups.setdefault((c["arm"], c["budget"]), []).append(c)
    table, mean, forgetting = [], [], []
    for (arm, budget), cs in groups.items():
        for t in targets:
            vals = [target_scores(c["scores"]).get(t, {}).get("accuracy") for c in cs]
            m, sd, n = mean_sd(vals)
            if n:
                table.append({"arm": arm, "budget": budget, "task": t, "mean": m, "sd": sd, "n": n})
        m, sd, n = mean_sd([_cell_target_mean(c, targets) for c in cs])
        if n:
            mean.append({"arm": arm, "budget": budget, "mean": m, "sd": sd, "n": n})
        m, sd, n = mean_sd([corpus_mean(c["scores"]) for c in cs])
        if n:
            forgetting.append({"arm": arm, "budget": budget, "mean": m, "sd": sd, "n": n})
    return {"table": table, "mean": mean, "forgetting": forgetting}


def _agg_rows(rows: Any) -> list[dict[str, Any]]:
    out = []
    for x in rows or []:
        if isinstance(x, dict) and "arm" in x and "budget" in x:
            out.append({"arm": str(x["arm"]), "budget": x["budget"], "task": x.get("task"),
                        "mean": num(x.get("mean")), "sd": num(x.get("sd")), "n": x.get("n")})
    return out


def pick_detail_cell(cells: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The cell whose run is shown in detail: ours (dense) if present, largest budget, first seed."""
    usable = [c for c in cells if c.get("run_dir") and Path(c["run_dir"]).is_dir()]
    if not usable:
        return None
    arms = [c["arm"] for c in usable]
    arm = "dense" if "dense" in arms else next((a for a in arms if a != "oracle"), arms[0])
    mine = [c for c in usable if c["arm"] == arm]
    return min(mine, key=lambda c: (-(num(c["budget"]) or 0), num(c.get("seed")) or 0))


def collect_compare(root: str | Path) -> dict[str, Any]:
    """A comparison directory (``compare.json``) as a dict, plus one cell's run in detail."""
    root = Path(root)
    notes: list[str] = []
    data = read_json(root / "compare.json", notes, root, required=True) or {}
    if not isinstance(data, dict):
        notes.append("compare.json is not an object.")
        data = {}
    cells = []
    for c in data.get("cells") or []:
        if not isinstance(c, dict) or "arm" not in c:
            continue
        run_dir = c.get("run_dir")
        if run_dir and not Path(run_dir).is_absolute():
            run_dir = str(root / run_dir)
        cells.append({"arm": str(c["arm"]), "budget": c.get("budget"), "seed": c.get("seed"),
                      "run_dir": run_dir, "scores": clean_scores(c.get("scores")),
                      "selected": c.get("selected"), "seconds": num(c.get("seconds"))})
    arms = [str(a) for a in data.get("arms") or []] or list(dict.fromkeys(c["arm"] for c in cells))
    for a in dict.fromkeys(c["arm"] for c in cells):
        if a not in arms:
            arms.append(a)
    # the budget axis: compare.json's budgets (the full arm's own budget, the corpus, is not one)
    budgets = sorted({b for b in (data.get("budgets") or []) if num(b) is not None}) or sorted(
        {c["budget"] for c in cells if num(c["budget"]) is not None})
    baseline = clean_scores((data.get("baseline") or {}).get("scores"))
    targets = [str(t) for t in data.get("targets") or []]
    if not targets:
        seen = [s["task"] for s in baseline if not is_corpus(s)]
        for c in cells:
            seen += [s["task"] for s in c["scores"] if not is_corpus(s)]
        targets = list(dict.fromkeys(seen))
    if not baseline:
        notes.append("compare.json has no baseline (generic student) scores.")
    if not cells:
        notes.append("compare.json has no cells.")
    missing = [c for c in cells if not (c["run_dir"] and Path(c["run_dir"]).is_dir())]
    if missing:
        notes.append(f"{len(missing)} of {len(cells)} cells have no run directory here "
                     f"(e.g. {missing[0]['arm']}, budget {missing[0]['budget']}, seed {missing[0]['seed']}).")
    agg = aggregate_cells(cells, targets)
    table = _agg_rows(data.get("table"))
    if not table and agg["table"]:
        table = agg["table"] + [{**r, "task": MEAN_TASK} for r in agg["mean"]]
        notes.append("compare.json has no table; it was computed from the cells.")
    # the mean over the targets: compare.json's rows with task "mean", else computed from the cells
    means = [r for r in table if r.get("task") == MEAN_TASK]
    table = [r for r in table if r.get("task") != MEAN_TASK]
    targets_mean_rows = means or agg["mean"]
    forgetting = _agg_rows(data.get("forgetting"))
    if not forgetting and agg["forgetting"]:
        forgetting = agg["forgetting"]
    majority = {t: s.get("majority") for t, s in target_scores(baseline).items()}
    for c in cells:
        for t, s in target_scores(c["scores"]).items():
            majority.setdefault(t, s.get("majority"))
    corpus_majority = corpus_mean(baseline, "majority")
    if corpus_majority is None:
        corpus_majority = next((v for v in (corpus_mean(c["scores"], "majority") for c in cells)
                                if v is not None), None)
    detail_cell = pick_detail_cell(cells)
    detail = collect_run(detail_cell["run_dir"]) if detail_cell else None
    return {"kind": "compare", "dir": str(root), "name": data.get("name") or root.name, "arms": arms,
            "budgets": budgets, "seeds": list(data.get("seeds") or sorted({c["seed"] for c in cells
                                                                          if c["seed"] is not None})),
            "corpus_size": num(data.get("corpus_size")), "targets": targets, "baseline": baseline, "cells": cells,
            "table": table,
            "targets_mean": targets_mean_rows, "forgetting": forgetting, "majority": majority,
            "corpus_majority": corpus_majority, "detail_cell": detail_cell, "detail": detail, "notes": notes,
            "config": data.get("config") if isinstance(data.get("config"), dict) else {}}


def collect(path: str | Path) -> dict[str, Any]:
    """Either kind of directory; raises FileNotFoundError only when it holds neither."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory")
    if (root / "compare.json").is_file():
        return collect_compare(root)
    if (root / "manifest.json").is_file() or (root / "summary.json").is_file() or _round_dirs(root):
        return collect_run(root)
    raise FileNotFoundError(f"{root} holds neither a run (manifest.json, summary.json, round_*/) "
                            f"nor a comparison (compare.json)")
