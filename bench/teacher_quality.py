"""Benchmark: how well the teacher localises mistakes, names skills and annotates the corpus.

    python -m bench.teacher_quality [--modality vision|audio] [--annotate-rows 1000] [--write] [KEY=VALUE ...]

On SkillWorld, with the configured generic student and teacher (``configs/demo.yaml``: the
built-in teacher, trained or loaded from the cache):

1. **Mistake-step localisation.** The student answers every target's validation split step
   by step (Ray Data); each wrong item's mistake step is found three ways: the answer
   switch (METHODS.md §1.2), asking the teacher which step is wrong, and a random step.
   The ground truth is the generator's verifier ``first_wrong_step`` on the scene. Items
   whose steps are all right but whose final answer is wrong have no wrong step to find;
   they are counted and left out. The paper reports 65% / 28% / 7% on real tasks.
2. **Skill analysis.** For the answer-switch step, whether the teacher's skill phrase is
   the skill of the verifier's wrong step (the generator's step skill, as a phrase).
3. **Annotation agreement.** The teacher annotates ``--annotate-rows`` seeded corpus rows;
   its phrases are compared with the generator's step skills: exact set match, and
   micro precision / recall over phrases.

Generator metadata is read here, by the benchmark, as the yardstick; the pipeline never
reads it. ``--write`` replaces the ``bench:teacher_quality`` section of docs/benchmarks.md
(``bench:teacher_quality_audio`` on the audio family).

``--modality audio`` (or ``data.skillworld.modality: audio`` in the config) measures the
same on the audio SkillWorld family: the built-in teacher trained on audio corpus tasks, the
audio preset student (swapped in for ``tiny-llava``, as bench/coordination.py does), and the
audio skills and step kinds, looked up by name in ``ALL_SKILLS``/``ALL_STEPS``/``ALL_TASKS``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import torch

from bench.report import code_version, load_1min, write_section

MARK = "bench:teacher_quality"
METHODS = ("switch", "which_step", "random")


def _meta(root: Path, rel: str) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in pq.read_table(root / "meta" / rel).to_pylist()}


def localisation(cfg, teacher, student, paths, work: Path, progress=print) -> dict[str, Any]:
    # ALL_*: a task, step kind or skill of either family (vision or audio) by its name
    from mmtune.data.skillworld import (
        ALL_SKILLS,
        ALL_STEPS,
        ALL_TASKS,
        first_wrong_step,
    )
    from mmtune.diagnosis import analyse_all, collect_errors

    splits = {f"{t}/val": [str(p) for p in ps] for t, ps in paths.target_val.items()}
    items, counts = collect_errors(cfg, student, splits, out_dir=work / "student", progress=progress)
    truth: dict[str, int | None] = {}
    meta: dict[str, dict[str, Any]] = {}
    for t in paths.target_val:
        meta.update(_meta(paths.root, f"targets/{t}/val.parquet"))
    for it in items:
        truth[it["id"]] = first_wrong_step(meta[it["id"]], it["steps"], it["prediction"] or "")
    scored = [it for it in items if it["steps"] and truth[it["id"]] is not None
              and truth[it["id"]] < len(ALL_TASKS[it["task"]].chain)]
    res: dict[str, Any] = {"wrong": len(items), "scored": len(scored),
                           "answer_only": sum(1 for it in items if truth[it["id"]] is not None
                                              and truth[it["id"]] >= len(ALL_TASKS[it["task"]].chain)),
                           "no_steps": sum(1 for it in items if not it["steps"]), "methods": {}}
    for how in METHODS:
        t0 = time.time()
        got = analyse_all(teacher, scored, locate=how, progress=lambda m: None, seed=cfg.run.seed)
        hits_by_task: dict[str, list[int]] = {}
        skill_ok = []
        for it, a in zip(scored, got):
            gt = truth[it["id"]]
            hit = a["mistake_step"] is not None and a["mistake_step"] - 1 == gt
            hits_by_task.setdefault(it["task"], []).append(int(hit))
            if a["mistake_step"] is not None:
                chain = ALL_TASKS[it["task"]].chain
                kind = chain[min(gt, len(chain) - 1)]
                skill_ok.append(int(a["missing_skill"] == ALL_SKILLS[ALL_STEPS[kind].skill]))
        allhits = [h for hs in hits_by_task.values() for h in hs]
        res["methods"][how] = {
            "accuracy": sum(allhits) / max(len(allhits), 1),
            "per_task": {t: (sum(h) / len(h), len(h)) for t, h in sorted(hits_by_task.items())},
            "skill_match": sum(skill_ok) / max(len(skill_ok), 1),
            "switch_share": sum(a["switch_method"] == "switch" for a in got) / max(len(got), 1),
            "unparsed": sum(a["status"] != "ok" for a in got),
            "seconds": round(time.time() - t0, 1)}
        progress(f"[bench] {how}: localisation {res['methods'][how]['accuracy']:.3f} on {len(allhits)} items")
    res["val_accuracy"] = counts["accuracy"]
    return res


def annotation(cfg, teacher, paths, n: int, progress=print) -> dict[str, Any]:
    from mmtune.data.skillworld import ALL_SKILLS

    rows = []
    for f in paths.corpus:
        rows += pq.read_table(f, columns=["id", "instruction", "response"]).to_pylist()
    rows = random.Random(cfg.run.seed).sample(rows, min(n, len(rows)))
    meta: dict[str, dict[str, Any]] = {}
    for f in paths.corpus:
        meta.update(_meta(paths.root, f"corpus/{f.name}"))
    t0 = time.time()
    got = []
    for i in range(0, len(rows), 64):
        got += teacher.annotate(rows[i:i + 64])
    tp = fp = fn = exact = 0
    for r, (skills, _) in zip(rows, got):
        want = {ALL_SKILLS[k] for k in meta[r["id"]]["step_skills"]}
        have = set(skills)
        tp, fp, fn = tp + len(want & have), fp + len(have - want), fn + len(want - have)
        exact += have == want
    secs = time.time() - t0
    progress(f"[bench] annotation: exact {exact / len(rows):.3f} on {len(rows)} rows in {secs:.0f}s")
    return {"rows": len(rows), "exact": exact / len(rows), "precision": tp / max(tp + fp, 1),
            "recall": tp / max(tp + fn, 1), "unparsed": sum(1 for s, _ in got if not s),
            "rows_per_s": len(rows) / secs}


def mark(modality: str) -> str:
    """The docs/benchmarks.md section marker of one family (vision keeps the original one)."""
    return MARK if modality == "vision" else f"{MARK}_{modality}"


def render(loc: dict[str, Any], ann: dict[str, Any], meta: dict[str, str], modality: str = "vision") -> str:
    m = loc["methods"]
    title = ("### Teacher quality on SkillWorld (issue D)" if modality == "vision"
             else f"### Teacher quality on SkillWorld, {modality} family (issue G)")
    lines = [f"<!-- {mark(modality)} -->", title, "",
             f"- date: {meta['date']}; machine: {meta['machine']}; load average {meta['load']}",
             f"- command: `{meta['command']}`; code: {meta['code']}",
             f"- teacher: {meta['teacher']}; student: {meta['student']}", "",
             (f"**Mistake-step localisation** (ground truth: the verifier's `first_wrong_step`). Of "
              f"{loc['wrong']} wrong validation answers, {loc['scored']} have a wrong reasoning step; "
              f"{loc['answer_only']} have right steps and a wrong final answer and {loc['no_steps']} no steps "
              "(both left out)."), "",
             "| method | localisation accuracy | skill = the wrong step's skill | switch found (not fallback) | s |",
             "|---|---:|---:|---:|---:|"]
    names = {"switch": "answer switch", "which_step": "ask the teacher", "random": "random step"}
    for how in METHODS:
        r = m[how]
        lines.append(f"| {names[how]} | {r['accuracy']:.3f} | {r['skill_match']:.3f} | "
                     f"{r['switch_share']:.2f} | {r['seconds']} |")
    lines += ["", "Per target (accuracy, n):", "", "| target | " + " | ".join(names[h] for h in METHODS) + " |",
              "|---|" + "---:|" * len(METHODS)]
    for t in m["switch"]["per_task"]:
        lines.append(f"| {t} | " + " | ".join(f"{m[h]['per_task'][t][0]:.2f} ({m[h]['per_task'][t][1]})"
                                             for h in METHODS) + " |")
    lines += ["", (f"**Corpus annotation** on {ann['rows']} seeded corpus rows: exact skill-set match "
                   f"**{ann['exact']:.3f}**, phrase precision {ann['precision']:.3f}, recall {ann['recall']:.3f}, "
                   f"{ann['unparsed']} unparsed, {ann['rows_per_s']:.1f} rows/s (in-process, no Ray)."),
              f"<!-- /{mark(modality)} -->"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--modality", choices=["vision", "audio"],
                    help="SkillWorld family (default: the config's data.skillworld.modality)")
    ap.add_argument("--annotate-rows", type=int, default=1000)
    ap.add_argument("--write", action="store_true")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)

    from bench.coordination import bench_config
    from mmtune.data.catalog import data_paths
    from mmtune.runtime import init_ray
    from mmtune.teacher import Teacher, make_backend
    from mmtune.teacher.builtin import resolve_teacher
    from mmtune.training.pretrain import resolve_student

    cfg = bench_config(args.config, args.overrides, args.modality)
    modality = cfg.data.skillworld.modality
    paths = data_paths(cfg)
    student = resolve_student(cfg)
    tdir = resolve_teacher(cfg)
    teacher = Teacher(make_backend(cfg.teacher, tdir), cfg.teacher)
    init_ray(cfg.ray)
    with tempfile.TemporaryDirectory() as work:
        loc = localisation(cfg, teacher, student, paths, Path(work))
    ann = annotation(cfg, teacher, paths, args.annotate_rows)
    meta = {"date": dt.date.today().isoformat(),
            "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, {platform.python_version()}",
            "load": f"{load_1min():.1f}", "command": "python -m bench.teacher_quality " + " ".join(sys.argv[1:]),
            "code": code_version(["mmtune/teacher", "mmtune/diagnosis", "bench/teacher_quality.py"]),
            "teacher": f"{cfg.teacher.backend} ({tdir or cfg.teacher.name_or_path})", "student": str(student)}
    section = render(loc, ann, meta, modality)
    print(section)
    if args.write:
        write_section(mark(modality), section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
