"""Benchmark: does the generic student fail at reading the picture, or at writing the answer?

    python -m bench.step_accuracy --config configs/demo.yaml [--student DIR] [--threads N] [KEY=VALUE ...]

Answer accuracy alone cannot tell the two apart. This scores every held-out corpus item
twice: the answer (as ``mmtune evaluate`` does) and the reasoning steps (SkillWorld's
verifier, ``first_wrong_step``, against the generator's scene). Per task it prints

* ``answer``: answer accuracy, as in the generic student's table;
* ``steps``: the share of items whose every step is right (grounding and reasoning);
* ``steps ok, answer wrong``: right steps, wrong final answer (the answer format: the
  option letter of a right value, yes/no for a right count);
* ``steps wrong, answer ok``: a right answer reached from wrong steps (luck or priors).

It reads the generator metadata, so it is a benchmark of the student, never a pipeline
input (docs/fairness.md). ``--student`` scores any saved student directory (default: the
config's cached generic student).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ("answer", "steps", "steps ok, answer wrong", "steps wrong, answer ok")


def tally(items: Iterable[dict]) -> dict[str, dict[str, float]]:
    """Per task: n and the shares of :data:`COLUMNS`.

    ``items``: dicts with ``task``, ``correct`` (the answer, bool) and ``steps_ok`` (bool).
    """
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])
    for it in items:
        c = counts[it["task"]]
        c[0] += 1
        c[1] += bool(it["correct"])
        c[2] += bool(it["steps_ok"])
        c[3] += bool(it["steps_ok"]) and not it["correct"]
        c[4] += bool(it["correct"]) and not it["steps_ok"]
    return {t: {"n": c[0], **{col: c[i + 1] / c[0] for i, col in enumerate(COLUMNS)}}
            for t, c in sorted(counts.items())}


def format_table(table: dict[str, dict[str, float]]) -> str:
    lines = ["| task | n | " + " | ".join(COLUMNS) + " |", "|---|---:|" + "---:|" * len(COLUMNS)]
    for task, row in table.items():
        lines.append(f"| {task} | {row['n']} | " + " | ".join(f"{row[c]:.3f}" for c in COLUMNS) + " |")
    return "\n".join(lines)


def judge(rows: list[dict], texts: list[str], scenes: dict[str, str]) -> list[dict]:
    """One verdict per generated text: its answer against the gold, its steps against the scene."""
    from mmtune.data.answers import answers_match, extract_answer
    from mmtune.data.schema import split_response
    from mmtune.data.skillworld.verifier import first_wrong_step

    out = []
    for r, text in zip(rows, texts, strict=True):
        steps, _ = split_response(text)
        pred = extract_answer(text)
        correct = pred is not None and answers_match(pred, r["answer"], r["options"])
        wrong = first_wrong_step({"task": r["task"], "scene": scenes[r["id"]]}, steps)
        out.append({"task": r["task"], "correct": bool(correct), "steps_ok": wrong is None})
    return out


def score(student_dir: Path, student_cfg: dict, rows: list[dict], scenes: dict[str, str],
          max_new_tokens: int, batch_size: int = 64, threads: int | None = None, progress=print) -> list[dict]:
    """Generate greedily for ``rows`` (as ``mmtune evaluate`` does) and :func:`judge` each item."""
    import numpy as np

    from mmtune.training.evaluate import Predictor

    pred = Predictor(str(student_dir), student_cfg, max_new_tokens=max_new_tokens, device="cpu", threads=threads)
    out, t0 = [], time.time()
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        batch = {k: np.array([r[k] for r in chunk], dtype=object)
                 for k in ("id", "task", "image", "instruction", "answer", "options")}
        out += judge(chunk, list(pred(batch)["prediction"]), scenes)
        progress(f"[steps] {len(out)}/{len(rows)} items ({len(out) / (time.time() - t0):.1f} items/s)")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    ap.add_argument("--student", help="a saved student directory (default: the config's generic student)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)

    import pyarrow.parquet as pq

    from mmtune.config import load_config
    from mmtune.data.catalog import data_paths
    from mmtune.training.pretrain import ensure_generic_student

    cfg = load_config(args.config, args.overrides)
    if cfg.data.source != "skillworld" or cfg.data.skillworld.modality != "vision":
        raise SystemExit("bench.step_accuracy needs the vision SkillWorld (data.source=skillworld, "
                         "data.skillworld.modality=vision): the step verifier reads its scenes")
    paths = data_paths(cfg)
    student = Path(args.student) if args.student else ensure_generic_student(cfg)
    rows, scenes = [], {}
    for p in paths.generic_eval:
        rows += pq.read_table(p).to_pylist()
        meta = paths.root / "meta" / p.relative_to(paths.root)
        scenes.update((m["id"], m["scene"]) for m in pq.read_table(meta, columns=["id", "scene"]).to_pylist())
    student_cfg = json.loads(cfg.student.model_dump_json())
    table = tally(score(student, student_cfg, rows, scenes, cfg.student.max_new_tokens, threads=args.threads))
    print(f"\nstudent: {student}\n")
    print(format_table(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
