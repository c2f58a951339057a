"""Benchmark: pre-train the generic student and score it per task (issue A's numbers).

    python -m bench.generic_student --config configs/demo.yaml [--fresh] [--write] [KEY=VALUE ...]

Prints the pre-training time and samples/s, and the per-task accuracy with majority
baselines on every target's test split and on the corpus tasks' held-out items. With
``--write`` the markdown section between the ``bench:generic_student`` markers in
docs/benchmarks.md is replaced by this run's (machine, date and command included).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

from bench.report import write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MARK = "bench:generic_student"


def machine() -> str:
    import torch

    return (f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), {platform.python_version()}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    ap.add_argument("--fresh", action="store_true", help="retrain the student even when cached")
    ap.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)

    from mmtune.config import load_config
    from mmtune.data.catalog import data_paths
    from mmtune.runtime import init_ray
    from mmtune.training.evaluate import evaluate_splits, format_table
    from mmtune.training.pretrain import META_FILE, ensure_generic_student, student_dir

    cfg = load_config(args.config, args.overrides)
    paths = data_paths(cfg)
    if args.fresh and student_dir(cfg).exists():
        shutil.rmtree(student_dir(cfg))
    sdir = ensure_generic_student(cfg, force=args.fresh)  # --fresh trains it here, never the shipped copy
    meta = json.loads((sdir / META_FILE).read_text())
    init_ray(cfg.ray)
    splits = {f"{t}/test": [str(p) for p in ps] for t, ps in paths.target_test.items()}
    splits["corpus-tasks"] = [str(p) for p in paths.generic_eval]
    t0 = time.time()
    scores = evaluate_splits(cfg, sdir, splits)
    eval_s = time.time() - t0
    manifest = json.loads((paths.root / "skillworld.json").read_text())
    rare = {name for name, t in manifest["tasks"].items() if t.get("rare")}

    table = format_table(scores)
    print(table)
    cmd = "python -m bench.generic_student " + " ".join(sys.argv[1:] if argv is None else argv)
    lines = [
        f"<!-- {MARK} -->",
        "### Generic student (issue A)",
        "",
        f"- date: {dt.date.today().isoformat()}; machine: {machine()}",
        f"- command: `{cmd.strip()}`",
        f"- student: tiny-llava, {meta['params'] / 1e6:.2f}M parameters, {meta['steps']} steps × batch "
        f"{meta['batch_size']} on {meta['train_samples']} generic samples",
        *_tower_line(meta.get("vision_tower")),
        f"- language pre-training: **{meta['seconds']:.0f} s, {meta['samples_per_s']:.0f} samples/s** "
        f"(final loss {meta['loss_curve'][-1][1]:.3f})",
        f"- evaluation (Ray Data, greedy, max {cfg.student.max_new_tokens} new tokens): "
        f"{sum(s.n for s in scores)} items in {eval_s:.0f} s",
        "",
        "| split | task | skill rarity | n | accuracy | majority | Δ |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for s in scores:
        kind = "rare" if s.task in rare else "common"
        lines.append(f"| {s.split} | {s.task} | {kind} | {s.n} | {s.accuracy:.3f} | {s.majority:.3f} | "
                     f"{s.accuracy - s.majority:+.3f} |")
    lines.append(f"<!-- /{MARK} -->")
    section = "\n".join(lines)
    print("\n" + section)
    if args.write:
        if not write_section(MARK, section):
            return 1
    return 0


def _tower_line(tower: dict | None) -> list[str]:
    if not tower:
        return ["- vision tower: trained with the rest (student.pretrain.vision_steps=0)"]
    acc = ", ".join(f"{k} {v:.3f}" for k, v in tower["held_out_accuracy"].items())
    return [f"- vision tower (stage 1): {tower['steps']} supervised steps × batch {tower['batch_size']} in "
            f"{tower['seconds']:.0f} s; held-out region accuracy {acc}; then frozen"]


if __name__ == "__main__":
    sys.exit(main())
