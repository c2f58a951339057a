"""Fair comparison in one command: ``mmtune compare --config ...`` (docs/compare.md).

Every *cell* (arm × budget × seed) is an ordinary pipeline run in
``<out_dir>/<name>/<arm>-b<budget>-s<seed>/`` (its own manifest, so ``--resume`` skips the
cells already done). What is held fixed across arms, by construction:

- the generic student, the pool (corpus), the test splits and the evaluation subset;
- the optimiser, the learning rate and the schedule (``training.*``, one config);
- **the number of steps at a budget**: ``ceil(compare.epochs × budget / batch_size)``,
  whatever the arm selected (the oracle, whose val splits may hold fewer samples than the
  budget, takes more passes over them; the ``full`` arm is one budget, the whole corpus);
- the rounds (``compare.rounds``), and the seeds (``compare.seeds``: a seed changes the
  random arms' draws and the training's data order and LoRA initialisation).

The generic student's diagnosis and evaluation are computed once and shared by every
cell (the pipeline's shared cache). Results land in ``compare.json`` (the format the
report reads) and ``compare.md``, rewritten after every cell so an interrupted comparison
still shows what it has.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from mmtune.config import RunConfig

Progress = Callable[[str], None]

# arm -> config overrides (dotted paths). Each arm states its retrieval in full, so a base
# config that turns context reranking on does not change what `dense`
# means: `dense` is the paper's skill-only retrieval, `dense_context` adds the rerank, and
# the ablations are the paper's method with one part removed.
_PAPER = {"retrieval.method": "dense", "retrieval.context_rerank": False}
ARMS: dict[str, dict[str, Any]] = {
    "dense": dict(_PAPER),
    # [ours] the skill's hits reranked by the failed question (mmtune/retrieval/rerank.py)
    "dense_context": {"retrieval.method": "dense", "retrieval.context_rerank": True},
    "bm25": {"retrieval.method": "bm25"},
    "random": {"retrieval.method": "random"},
    "instruction_similarity": {"retrieval.method": "instruction_similarity"},
    "full": {"retrieval.method": "full"},
    "oracle": {"retrieval.method": "oracle"},
    "random_step": {**_PAPER, "teacher.locate": "random"},  # no mistake identification
    "step_text": {**_PAPER, "retrieval.query": "step_text"},  # no skill analysis
}
ARM_LABELS = {
    "dense": "ours (switch + skill + dense)", "dense_context": "ours + context rerank",
    "bm25": "ours, BM25 retrieval (paper)", "random": "random",
    "instruction_similarity": "instruction similarity", "full": "full corpus", "oracle": "oracle (target val)",
    "random_step": "ablation: random step", "step_text": "ablation: step text query",
}


def corpus_size(files: list[str]) -> int:
    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def budget_counts(budgets: list[float], n: int) -> list[int]:
    """Fractions of the corpus (< 1) or counts (>= 1) as sample counts, sorted, distinct."""
    out = sorted({max(1, round(b * n)) if b < 1 else int(b) for b in budgets})
    too_big = [b for b in out if b > n]
    if too_big:
        raise ValueError(f"compare.budgets {too_big} exceed the corpus ({n} samples); use fractions or smaller counts")
    return out


def steps_for(cfg: RunConfig, budget: int) -> int:
    return max(1, math.ceil(cfg.compare.epochs * budget / cfg.training.batch_size))


def _set(tree: Any, dotted: str, value: Any) -> None:
    *head, last = dotted.split(".")
    for k in head:
        tree = getattr(tree, k)
    setattr(tree, last, value)


def cell_name(arm: str, budget: int, seed: int) -> str:
    return f"{arm}-b{budget}-s{seed}"


def cell_config(cfg: RunConfig, arm: str, budget: int, seed: int, n_corpus: int) -> RunConfig:
    """The base config with one arm's settings, a budget, a seed and the shared step count."""
    c = cfg.model_copy(deep=True)
    for k, v in ARMS[arm].items():
        _set(c, k, v)
    c.run.out_dir = str(Path(cfg.run.out_dir) / cfg.run.name)  # cells live inside the comparison's directory
    c.run.name = cell_name(arm, budget, seed)
    c.run.seed = seed
    c.run.build_seed = cfg.run.shared_seed  # one generic student, teacher and index for every cell
    c.retrieval.rounds = 1 if arm in ("full", "oracle") else (cfg.compare.rounds or cfg.retrieval.rounds)
    c.retrieval.budget = budget
    steps = steps_for(cfg, n_corpus if arm == "full" else budget)
    if arm == "full" and cfg.compare.full_max_steps:
        steps = min(steps, cfg.compare.full_max_steps)
    c.training.max_steps = steps
    c.training.epochs = cfg.compare.epochs
    return RunConfig.model_validate(c.model_dump())  # re-validate the edited copy


def plan(cfg: RunConfig, n_corpus: int) -> list[tuple[str, int, int]]:
    """(arm, budget, seed) cells, seed-major so an interrupted run has whole seeds."""
    budgets = budget_counts(cfg.compare.budgets, n_corpus)
    cells = []
    for seed in cfg.compare.seeds:
        for b in budgets:
            cells += [(arm, b, seed) for arm in cfg.compare.arms if arm != "full"]
        if "full" in cfg.compare.arms:
            cells.append(("full", n_corpus, seed))
    return cells


def _final_scores(summary: dict[str, Any]) -> list[dict[str, Any]]:
    return summary["rounds"][-1]["scores"]


def aggregate(cells: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Per (arm, budget, target task): mean and sd over seeds; forgetting = the mean corpus-task
    accuracy per cell, then mean and sd over seeds."""
    acc: dict[tuple[str, int, str], list[float]] = {}
    forget: dict[tuple[str, int], list[float]] = {}
    for c in cells:
        targets = [s for s in c["scores"] if s["split"] != "corpus-tasks"]
        for s in targets:
            acc.setdefault((c["arm"], c["budget"], s["task"]), []).append(s["accuracy"])
        if targets:
            acc.setdefault((c["arm"], c["budget"], "mean"), []).append(statistics.fmean(s["accuracy"] for s in targets))
        corpus = [s["accuracy"] for s in c["scores"] if s["split"] == "corpus-tasks"]
        if corpus:
            forget.setdefault((c["arm"], c["budget"]), []).append(statistics.fmean(corpus))

    def row(vals: list[float]) -> dict[str, Any]:
        return {"mean": statistics.fmean(vals), "sd": statistics.stdev(vals) if len(vals) > 1 else 0.0, "n": len(vals)}

    table = [{"arm": a, "budget": b, "task": t, **row(v)} for (a, b, t), v in acc.items()]
    forgetting = [{"arm": a, "budget": b, **row(v)} for (a, b), v in forget.items()]
    return table, forgetting


def headline_markdown(result: dict[str, Any]) -> str:
    """Mean target accuracy (± sd over seeds) per arm and budget, with the baselines."""
    table = {(r["arm"], r["budget"], r["task"]): r for r in result["table"]}
    forget = {(r["arm"], r["budget"]): r for r in result["forgetting"]}
    n = result["corpus_size"]
    budgets = result["budgets"]
    targets = result["targets"]
    base = {s["task"]: s for s in result["baseline"]["scores"] if s["split"] != "corpus-tasks"}
    base_corpus = [s["accuracy"] for s in result["baseline"]["scores"] if s["split"] == "corpus-tasks"]

    def fmt(r: dict[str, Any] | None) -> str:
        return "–" if r is None else f"{r['mean']:.3f} ± {r['sd']:.3f}" if r["n"] > 1 else f"{r['mean']:.3f}"

    lines = [(f"Target accuracy, mean over the {len(targets)} targets ({', '.join(targets)}); mean ± sd over "
              f"seeds {result['seeds']}; the last round's student. Budgets in samples (% of the {n}-sample corpus); "
              "every arm trains the same steps at a budget."), ""]
    head = ("| arm | " + " | ".join(f"{b} ({100 * b / n:.1f}%)" for b in budgets)
            + f" | corpus tasks at {budgets[-1]} (forgetting) |")
    lines += [head, "|" + "---|" * (len(budgets) + 2)]
    if base:
        maj = statistics.fmean(s["majority"] for s in base.values())
        gen = statistics.fmean(s["accuracy"] for s in base.values())
        gc = f"{statistics.fmean(base_corpus):.3f}" if base_corpus else "–"
        lines.append("| majority baseline | " + " | ".join(f"{maj:.3f}" for _ in budgets) + " | |")
        lines.append("| generic student | " + " | ".join(f"{gen:.3f}" for _ in budgets) + f" | {gc} |")
    for arm in result["arms"]:
        if arm == "full":
            r = table.get(("full", n, "mean"))
            lines.append(f"| {ARM_LABELS['full']} (100%) | " + " | ".join(fmt(r) for _ in budgets)
                         + f" | {fmt(forget.get(('full', n)))} |")
            continue
        lines.append(f"| {ARM_LABELS.get(arm, arm)} | " + " | ".join(fmt(table.get((arm, b, "mean"))) for b in budgets)
                     + f" | {fmt(forget.get((arm, budgets[-1])))} |")
    lines += ["", "Per target (largest budget):", "",
              "| arm | " + " | ".join(targets) + " |", "|" + "---|" * (len(targets) + 1)]
    if base:
        for label, key in (("majority", "majority"), ("generic", "accuracy")):
            lines.append(f"| {label} | " + " | ".join(f"{base[t][key]:.3f}" if t in base else "–" for t in targets)
                         + " |")
    for arm in result["arms"]:
        b = n if arm == "full" else budgets[-1]
        lines.append(f"| {ARM_LABELS.get(arm, arm)} | " + " | ".join(fmt(table.get((arm, b, t))) for t in targets)
                     + " |")
    return "\n".join(lines)


def run_compare(cfg: RunConfig, *, resume: bool = False, progress: Progress = print) -> dict[str, Any]:
    """Run every cell (or resume), then write ``compare.json`` and ``compare.md``."""
    from mmtune.data.catalog import data_paths
    from mmtune.pipeline import Pipeline

    t0 = time.time()
    root = (Path(cfg.run.out_dir) / cfg.run.name).resolve()
    if (root / "compare.json").is_file() and not resume:
        raise FileExistsError(f"{root} already holds a comparison; continue it with --resume, or pick another "
                              f"run.name (e.g. run.name={cfg.run.name}-2)")
    root.mkdir(parents=True, exist_ok=True)
    # A resumed cell keeps the wall time it took when it ran, not the ~0 s of reading it back.
    earlier: dict[tuple[str, int, int], Any] = {}
    if resume and (root / "compare.json").is_file():
        earlier = {(c["arm"], c["budget"], c["seed"]): c.get("seconds")
                   for c in json.loads((root / "compare.json").read_text()).get("cells", [])}
    paths = data_paths(cfg, progress)
    n = corpus_size([str(p) for p in paths.corpus])
    cells_plan = plan(cfg, n)
    progress(f"[compare] {len(cells_plan)} cells: arms {cfg.compare.arms} × budgets "
             f"{budget_counts(cfg.compare.budgets, n)} of {n} × seeds {cfg.compare.seeds}; steps per budget "
             + ", ".join(f"{b}: {steps_for(cfg, b)}" for b in budget_counts(cfg.compare.budgets, n)))
    result: dict[str, Any] = {
        "name": cfg.run.name, "arms": list(cfg.compare.arms), "budgets": budget_counts(cfg.compare.budgets, n),
        "seeds": list(cfg.compare.seeds), "corpus_size": n, "targets": sorted(paths.target_test),
        "steps": {str(b): steps_for(cfg, b) for b in budget_counts(cfg.compare.budgets, n)},
        "config": cfg.to_dict(), "baseline": {"scores": []}, "cells": []}
    for i, (arm, budget, seed) in enumerate(cells_plan, 1):
        ccfg = cell_config(cfg, arm, budget, seed, n)
        cell_dir = root / cell_name(arm, budget, seed)
        done = cell_dir / "summary.json"
        tc, seconds = time.time(), None
        if resume and done.is_file():
            seconds = earlier.get((arm, budget, seed))
            summary = json.loads(done.read_text())
            progress(f"[compare] cell {i}/{len(cells_plan)} {cell_name(arm, budget, seed)}: done earlier")
        else:
            progress(f"[compare] cell {i}/{len(cells_plan)} {cell_name(arm, budget, seed)} "
                     f"({ccfg.training.max_steps} steps)")
            summary = Pipeline(ccfg, resume=resume, progress=progress).run_all()
        if not result["baseline"]["scores"]:
            result["baseline"]["scores"] = summary["rounds"][0]["scores"]
        result["cells"].append({"arm": arm, "budget": budget, "seed": seed, "run_dir": str(cell_dir),
                                "scores": _final_scores(summary), "selected": summary["rounds"][-1].get("selected"),
                                "steps": ccfg.training.max_steps,
                                "seconds": seconds if seconds is not None else round(time.time() - tc, 1)})
        result["table"], result["forgetting"] = aggregate(result["cells"])
        result["seconds"] = round(time.time() - t0, 1)
        (root / "compare.json").write_text(json.dumps(result, indent=2, default=str))
        (root / "compare.md").write_text(headline_markdown(result) + "\n")
    progress("\n" + headline_markdown(result))
    progress(f"\n[compare] {len(cells_plan)} cells in {time.time() - t0:.0f}s; {root / 'compare.json'}")
    return result


__all__ = ["ARMS", "aggregate", "budget_counts", "cell_config", "headline_markdown", "plan", "run_compare", "steps_for"]
