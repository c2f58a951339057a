"""Collect the student's errors on the validation set and analyse them with the teacher.

``collect_errors`` runs the student as Ray Data batch inference (the same actor pool as
evaluation) and joins its step-by-step outputs with the validation questions.
``analyse_all`` sends the wrong items to a teacher in chunks: a local ``Teacher`` or the
Serve app's ``ServedTeacher``, anything with ``analyse(items, locate)``. ``diagnose`` does
both and writes Diagnosis parquet (the ARCHITECTURE.md contract).

Nothing is dropped: an unparseable reply is re-asked by the teacher and then recorded as
``unparsed`` with its raw text; a teacher call that still fails after retries records its
items as ``skipped`` with the error as the reason.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mmtune.config import RunConfig
from mmtune.data.schema import split_response

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 2.0  # at most one progress line per this many seconds (and one at the end)

DIAGNOSIS_SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("task", pa.string(), nullable=False),
    pa.field("round", pa.int32(), nullable=False),
    pa.field("question", pa.string()),
    pa.field("student_steps", pa.list_(pa.string())),
    pa.field("student_answer", pa.string()),  # null: the student wrote no "Answer:" line
    pa.field("gold", pa.string()),
    pa.field("mistake_step", pa.int32()),  # 1-based; null when skipped
    pa.field("locate_method", pa.string()),  # switch | fallback | asked | random | no_steps ...
    pa.field("switch_trace", pa.struct([
        pa.field("candidates", pa.list_(pa.string())),
        pa.field("gold_index", pa.int32()),
        pa.field("pred_index", pa.int32()),
        pa.field("p_gold", pa.list_(pa.float64())),  # after prefix k = 0..n
        pa.field("p_pred", pa.list_(pa.float64())),
        pa.field("logprobs", pa.list_(pa.list_(pa.float64()))),  # raw backend scores per prefix
    ])),
    pa.field("missing_skill", pa.string()),
    pa.field("teacher_raw", pa.string()),
    pa.field("status", pa.string(), nullable=False),  # ok | unparsed | skipped
    pa.field("reason", pa.string()),
    pa.field("prompts", pa.string()),  # JSON: template ids used, e.g. {"locate": "answer_switch.v1"}
])


class NoErrors(Exception):
    """The student answered every validation item correctly: there is nothing to diagnose."""


# --------------------------------------------------------------------------- errors
def collect_errors(cfg: RunConfig, student_dir: str | Path, val_splits: dict[str, Sequence[str | Path]],
                   adapter_dir: str | Path | None = None, out_dir: str | Path | None = None,
                   progress: Callable[[str], None] = print) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The student's wrong validation items (as teacher items) and per-split counts.

    Raises ValueError for an empty validation split: there is nothing to learn from."""
    for split, paths in val_splits.items():
        n = sum(pq.ParquetFile(str(p)).metadata.num_rows for p in paths)
        if n == 0:
            raise ValueError(f"validation split {split!r} ({', '.join(map(str, paths))}) has no rows; "
                             "a target needs validation items to diagnose the student on: give the target a "
                             "non-empty val file (data.targets[].val), or drop the target")
    from mmtune.training.evaluate import evaluate_splits, safe_name  # (Ray Data: only once the splits are sound)

    out = Path(out_dir) if out_dir else None
    scores = evaluate_splits(cfg, student_dir, val_splits, adapter_dir=adapter_dir, out_dir=out, progress=progress)
    if out is None:
        raise ValueError("collect_errors needs out_dir (the student's predictions are kept as evidence)")
    wrong: list[dict[str, Any]] = []
    for split, paths in val_splits.items():
        preds = pq.read_table(out / f"predictions_{safe_name(split)}.parquet").to_pylist()
        questions = {}
        for p in paths:
            for r in pq.read_table(str(p), columns=["id", "instruction", "options"]).to_pylist():
                questions[r["id"]] = r
        for r in preds:
            if r["correct"]:
                continue
            steps, _ = split_response(str(r["prediction"]))
            q = questions[r["id"]]
            wrong.append({"id": r["id"], "task": r["task"], "question": q["instruction"], "steps": steps,
                          "prediction": r["pred_answer"] or None, "gold": r["answer"], "options": q["options"]})
    counts = {"items": sum(s.n for s in scores), "wrong": len(wrong),
              "accuracy": {f"{s.split}/{s.task}": s.accuracy for s in scores}}
    return wrong, counts


# --------------------------------------------------------------------------- analysis
def _skipped(items: Sequence[dict[str, Any]], reason: str) -> list[dict[str, Any]]:
    return [{"id": str(it["id"]), "mistake_step": None, "switch_method": "", "switch_trace": {},
             "missing_skill": None, "teacher_raw": "", "status": "skipped", "reason": reason, "prompts": {}}
            for it in items]


def analyse_all(teacher: Any, items: Sequence[dict[str, Any]], *, locate: str = "switch", chunk: int = 16,
                concurrency: int = 1, retries: int = 3, progress: Callable[[str], None] = print,
                seed: int = 0) -> list[dict[str, Any]]:
    """Analyses of ``items`` in input order; one per item, always.

    ``concurrency`` > 1 keeps several chunks in flight (for the Serve app, whose
    ``@serve.batch`` fuses them). A chunk whose call raises is retried with backoff, then
    its items are recorded as skipped with the error.
    """
    chunks = [list(items[i:i + chunk]) for i in range(0, len(items), chunk)]
    t0 = time.time()
    done, last = [0], [t0]
    lock = threading.Lock()

    def report(n: int) -> None:
        # One line at a time (chunks finish on several threads) and at most one per
        # PROGRESS_EVERY_S: 500 wrong items are 32 chunks, and a line per chunk buried the log.
        with lock:
            done[0] += n
            now = time.time()
            if done[0] == len(items) or now - last[0] >= PROGRESS_EVERY_S:
                last[0] = now
                progress(f"[diagnose] analysed {done[0]}/{len(items)} wrong items ({now - t0:.1f}s)")

    def run(ci: int) -> list[dict[str, Any]]:
        part = chunks[ci]
        delay, err = 0.5, ""
        for attempt in range(retries + 1):
            try:
                got = teacher.analyse(part, locate=locate, seed=seed + ci)
                res = [a if isinstance(a, dict) else a.to_dict() for a in got]
                if len(res) != len(part):
                    raise RuntimeError(f"teacher returned {len(res)} analyses for {len(part)} items")
                break
            except Exception as e:  # noqa: BLE001 — any failure is retried, then recorded
                err = f"{type(e).__name__}: {e}"
                if attempt < retries:
                    log.warning("teacher chunk %d failed (%s); retry %d/%d", ci, err, attempt + 1, retries)
                    time.sleep(delay)
                    delay *= 2
        else:
            res = _skipped(part, f"teacher call failed after {retries + 1} attempts: {err[:500]}")
        report(len(part))
        return res

    if concurrency > 1:
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            parts = list(pool.map(run, range(len(chunks))))
    else:
        parts = [run(ci) for ci in range(len(chunks))]
    return [a for p in parts for a in p]


def _row(it: dict[str, Any], a: dict[str, Any], round_: int) -> dict[str, Any]:
    tr = a.get("switch_trace") or {}
    trace = None
    if "p_gold" in tr:
        trace = {"candidates": tr.get("candidates"), "gold_index": tr.get("gold"), "pred_index": tr.get("pred"),
                 "p_gold": tr["p_gold"], "p_pred": tr["p_pred"], "logprobs": tr.get("logprobs")}
    raw = a.get("teacher_raw") or tr.get("raw") or ""
    return {"id": str(it["id"]), "task": str(it.get("task", "")), "round": round_, "question": it["question"],
            "student_steps": list(it["steps"]), "student_answer": it.get("prediction"), "gold": str(it["gold"]),
            "mistake_step": a.get("mistake_step"), "locate_method": a.get("switch_method"), "switch_trace": trace,
            "missing_skill": a.get("missing_skill"), "teacher_raw": raw, "status": a["status"],
            "reason": a.get("reason", ""), "prompts": json.dumps(a.get("prompts", {}), sort_keys=True)}


def write_diagnosis(rows: list[dict[str, Any]], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=DIAGNOSIS_SCHEMA), path)
    return path


def read_diagnosis(path: str | Path) -> list[dict[str, Any]]:
    return pq.read_table(str(path)).to_pylist()


def diagnose(cfg: RunConfig, student_dir: str | Path, val_splits: dict[str, Sequence[str | Path]], teacher: Any,
             out_dir: str | Path, *, round_: int = 0, adapter_dir: str | Path | None = None,
             locate: str = "switch", concurrency: int = 1,
             progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the student on ``val_splits``, analyse its errors, write ``out_dir/diagnosis.parquet``.

    ``teacher`` is anything with ``analyse(items, locate, seed)``, or a zero-argument
    factory returning a context manager that yields one (the pipeline's Serve app, started
    after the student's inference and stopped on exit).

    Returns a summary (counts by status, skills found). When the student makes no errors,
    an empty diagnosis is written and the summary says so; callers decide whether that
    ends the run (``NoErrors`` is raised only by :func:`require_errors`).
    """
    out = Path(out_dir)
    t0 = time.time()
    items, counts = collect_errors(cfg, student_dir, val_splits, adapter_dir=adapter_dir, out_dir=out / "student",
                                   progress=progress)
    if not items:
        progress(f"[diagnose] the student answered all {counts['items']} validation items correctly: "
                 "there are no errors to diagnose, so no targeted data can be selected this round")
        analyses: list[dict[str, Any]] = []
    else:
        progress(f"[diagnose] {len(items)} wrong of {counts['items']} validation items; asking the teacher "
                 f"(locate={locate})")
        # A factory starts the teacher only now, after the student's inference has released
        # its CPUs/GPUs: on a small machine both at once would starve Ray Data's read tasks.
        ctx = teacher() if not hasattr(teacher, "analyse") else contextlib.nullcontext(teacher)
        with ctx as t:
            analyses = analyse_all(t, items, locate=locate, concurrency=concurrency,
                                   retries=cfg.teacher.max_retries, progress=progress, seed=cfg.run.seed)
    rows = [_row(it, a, round_) for it, a in zip(items, analyses)]
    path = write_diagnosis(rows, out / "diagnosis.parquet")
    by_status: dict[str, int] = {}
    skills: dict[str, int] = {}
    for r in rows:
        by_status[r["status"]] = by_status.get(r["status"], 0) + 1
        if r["missing_skill"]:
            skills[r["missing_skill"]] = skills.get(r["missing_skill"], 0) + 1
    summary = {"path": str(path), "items": counts["items"], "wrong": len(rows), "status": by_status,
               "skills": dict(sorted(skills.items(), key=lambda kv: -kv[1])), "accuracy": counts["accuracy"],
               "seconds": round(time.time() - t0, 1), "no_errors": not rows}
    (out / "diagnosis.json").write_text(json.dumps(summary, indent=2))
    if rows:
        progress(f"[diagnose] wrote {path}: " + ", ".join(f"{k} {v}" for k, v in sorted(by_status.items()))
                 + "; missing skills: " + ", ".join(f"{k} ×{v}" for k, v in list(summary["skills"].items())[:8]))
    return summary


def require_errors(summary: dict[str, Any]) -> None:
    if summary.get("no_errors"):
        raise NoErrors(f"the student made no errors on {summary['items']} validation items; nothing to diagnose. "
                       "Use a harder validation set or stop: the student already solves this target")
