"""Small synthetic run and comparison directories with the real file formats and schemas."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from mmtune.data.schema import SAMPLE_SCHEMA
from mmtune.diagnosis.diagnose import DIAGNOSIS_SCHEMA
from mmtune.retrieval.select import SELECTION_SCHEMA

TARGETS = ["color_check", "count_grid"]
CORPUS = ["add_mc", "digit_read", "where_is"]
SKILLS = ["reading a handwritten digit", "locating an object in the picture", "counting the objects"]
EVIL = "<script>alert('x')</script>"


def scores(r: int, shift: float = 0.0) -> list[dict]:
    out = [{"split": f"{t}/test", "task": t, "n": 64, "accuracy": round(0.25 + 0.05 * r + 0.1 * i + shift, 4),
            "majority": 0.5 if i == 0 else 0.25, "no_answer": 0} for i, t in enumerate(TARGETS)]
    out += [{"split": "corpus-tasks", "task": t, "n": 16, "accuracy": round(0.6 - 0.01 * r + shift / 2, 4),
             "majority": 0.25, "no_answer": 0} for t in CORPUS]
    return out


def _history(steps: int, r: int) -> str:
    lines = []
    for s in range(1, steps + 1):
        measured = s % 4 == 0
        lines.append(json.dumps({
            "step": float(s), "loss": 1.0 / (s + r), "kappa": 1.5 + 0.1 * s if measured else math.nan,
            "kappa_bar": 1.0 + 0.05 * s, "lr_encoder": 2e-5 * (1 - s / (steps + 1)),
            "lr_llm": 2e-4 * (1 - s / (steps + 1)), "sched/eta_s": 1.0, "sched/eta_t": 1.0,
            "measured": float(measured)}))
    return "\n".join(lines) + "\n"


def build_run_dir(root: Path, rounds: int = 2, name: str = "toy", method: str = "dense",
                  shift: float = 0.0) -> Path:
    """A finished pipeline run: manifest, summary, round_0 eval and ``rounds`` tuning rounds."""
    root.mkdir(parents=True, exist_ok=True)
    stages = {"data": {"state": "done", "key": "k0", "inputs": {}, "started": 1.0, "outputs": {}, "seconds": 0.0},
              "annotate": {"state": "done", "key": "k1", "inputs": {}, "started": 1.0,
                           "outputs": {"rows": 10, "seconds": 61.5}, "seconds": 0.0},
              "evaluate_0": {"state": "done", "key": "k2", "inputs": {}, "started": 2.0, "outputs": {},
                             "seconds": 12.5}}
    summary_rounds = [{"round": 0, "scores": scores(0, shift)}]
    (root / "round_0" / "eval").mkdir(parents=True, exist_ok=True)
    (root / "round_0" / "eval" / "scores.json").write_text(json.dumps(scores(0, shift)))
    train_rows: list[dict] = []
    for r in range(1, rounds + 1):
        rd = root / f"round_{r}"
        (rd / "diagnosis").mkdir(parents=True, exist_ok=True)
        (rd / "eval").mkdir(parents=True, exist_ok=True)
        (rd / "train").mkdir(parents=True, exist_ok=True)
        diag = []
        for i in range(10):
            task = TARGETS[i % 2]
            diag.append({"id": f"sw-val-{task}-{r}{i:03d}", "task": task, "round": r,
                         "question": (EVIL + " Is the circle red?") if i == 0 else f"Question {i} about {task}?",
                         "student_steps": [f"The digit is {i}.", "That makes <b>1</b> in total." if i == 1
                                           else "So the answer follows."],
                         "student_answer": "yes", "gold": "no", "mistake_step": 1 + i % 2,
                         "locate_method": "switch", "switch_trace": None,
                         "missing_skill": SKILLS[i % 3] if i < 9 else None, "teacher_raw": SKILLS[i % 3],
                         "status": "ok" if i < 9 else "unparsed", "reason": "", "prompts": "{}"})
        pq.write_table(pa.Table.from_pylist(diag, schema=DIAGNOSIS_SCHEMA), rd / "diagnosis" / "diagnosis.parquet")
        sel, new = [], []
        for i in range(6):
            sid = f"sw-corpus-{CORPUS[i % 3]}-{r}{i:03d}"
            sel.append({"round": r, "id": sid, "query": SKILLS[i % 3], "score": 0.9, "method": method})
            new.append({"id": sid, "task": CORPUS[i % 3], "source": "skillworld", "image": None, "audio": None,
                        "instruction": "What is shown?", "response": "Answer: 3", "steps": [], "answer": "3",
                        "options": None, "skills": [SKILLS[i % 3]] + ([SKILLS[0]] if i == 5 else [])})
        train_rows += new
        pq.write_table(pa.Table.from_pylist(sel, schema=SELECTION_SCHEMA), rd / "selection.parquet")
        pq.write_table(pa.Table.from_pylist(train_rows, schema=SAMPLE_SCHEMA), rd / "train_data.parquet")
        (rd / "train" / "history.jsonl").write_text(_history(8 * r, r))
        (rd / "eval" / "scores.json").write_text(json.dumps(scores(r, shift)))
        train = {"adapter": str(rd / "train" / "adapter"), "steps": 8 * r, "samples": len(train_rows),
                 "seconds": 3.25 * r, "loss": 1.0 / (9 * r), "run_dir": str(rd / "train")}
        summary_rounds.append({"round": r, "scores": scores(r, shift), "selected": len(train_rows), "wrong": 10,
                               "skills": {SKILLS[0]: 3, SKILLS[1]: 3, SKILLS[2]: 3}, "train": train})
        for st, secs in (("diagnose", 4.0), ("select", 0.5), ("train", 3.5), ("evaluate", 9.0)):
            stages[f"{st}_{r}"] = {"state": "done", "key": f"{st}{r}", "inputs": {}, "started": 3.0 + r,
                                   "outputs": {"seconds": secs}, "seconds": secs}
    manifest = {"stages": stages, "config_hash": "abc123def456",
                "config": {"run": {"name": name}, "student": {"name_or_path": "tiny-llava"},
                           "teacher": {"backend": "builtin", "name_or_path": None},
                           "retrieval": {"method": method, "budget": 6 * rounds, "rounds": rounds},
                           "training": {"coordination": {"mode": "commit"}}}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    (root / "summary.json").write_text(json.dumps({"run_dir": str(root), "method": method,
                                                   "rounds": summary_rounds, "seconds": 42.0}))
    return root


ARMS = ["dense", "bm25", "random", "full", "oracle"]
BUDGETS = [100, 300, 1000]
SEEDS = [0, 1]
CORPUS_SIZE = 5000
ARM_GAIN = {"dense": 0.12, "bm25": 0.08, "random": 0.02, "full": 0.05, "oracle": 0.3}


def _row(vals: list[float]) -> dict:
    m = sum(vals) / len(vals)
    sd = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return {"mean": m, "sd": sd, "n": len(vals)}


def build_compare_dir(root: Path, detail_run: bool = True) -> Path:
    """A comparison as ``mmtune compare`` writes it: five arms (``full`` at its own budget, the
    corpus), three budgets, two seeds; one dense cell has a run directory, the rest are gone."""
    root.mkdir(parents=True, exist_ok=True)
    cells = []
    for s in SEEDS:
        for arm in ARMS:
            for b in [CORPUS_SIZE] if arm == "full" else BUDGETS:
                gain = ARM_GAIN[arm] * math.log10(b) / 3 + 0.01 * s
                run_dir = root / f"{arm}-b{b}-s{s}"
                if detail_run and arm == "dense" and b == 1000 and s == 0:
                    build_run_dir(run_dir, rounds=2, name=run_dir.name, shift=gain)
                cells.append({"arm": arm, "budget": b, "seed": s, "run_dir": str(run_dir),
                              "scores": scores(0, gain), "selected": b, "steps": 10, "seconds": 12.0 + s})
    table, forgetting = [], []
    for arm in ARMS:
        for b in [CORPUS_SIZE] if arm == "full" else BUDGETS:
            mine = [c for c in cells if c["arm"] == arm and c["budget"] == b]
            for t in TARGETS:
                table.append({"arm": arm, "budget": b, "task": t,
                              **_row([next(x["accuracy"] for x in c["scores"] if x["task"] == t) for c in mine])})
            table.append({"arm": arm, "budget": b, "task": "mean",
                          **_row([sum(x["accuracy"] for x in c["scores"] if x["split"] != "corpus-tasks")
                                  / len(TARGETS) for c in mine])})
            forgetting.append({"arm": arm, "budget": b,
                               **_row([sum(x["accuracy"] for x in c["scores"] if x["split"] == "corpus-tasks")
                                       / len(CORPUS) for c in mine])})
    data = {"name": "toy-compare", "arms": ARMS, "budgets": BUDGETS, "seeds": SEEDS, "corpus_size": CORPUS_SIZE,
            "targets": TARGETS, "steps": {str(b): 10 for b in BUDGETS}, "config": {},
            "baseline": {"scores": scores(0)}, "cells": cells, "table": table, "forgetting": forgetting,
            "seconds": 300.0}
    (root / "compare.json").write_text(json.dumps(data, indent=1))
    return root
