"""Generate SkillWorld: the corpus, the generic student's mix, and the target splits.

Randomness: every (split, task) pair has its own ``random.Random`` stream, seeded from a
SHA-256 of ``(cfg.seed, split, task)``. Streams never overlap across splits (so the corpus
pool and the generic mix share no draws), and a task's items do not depend on which other
tasks or targets are generated. Python's ``random`` is used instead of numpy because its
per-call overhead is ~10x lower, and generation makes dozens of tiny draws per sample.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa
import pyarrow.parquet as pq

from mmtune.config import SkillWorldConfig
from mmtune.data.schema import join_response, make_sample, to_table

from .scenes import DIGIT_SPLIT_SEED, TARGET_DIGIT_FRACTION, digit_pools, render_scene
from .tasks import CORPUS_TASKS, DEFAULT_TARGETS, RARE_SKILLS, SKILLS, STEPS, TASKS, Task, \
    format_instruction, gold, resolve_targets
from .verifier import majority_baseline

GENERATOR_VERSION = "3"
SOURCE = "skillworld"
SHARD_ROWS = 4096  # rows per corpus/generic shard [module constant: no config field yet]

# The generic student's pre-training mix: relative weight per corpus task. A fixed long
# tail chosen without looking at the targets: tasks whose chain uses only common skills
# (shape, color, locate, count) get 1.0; tasks that need a rare skill (size, digit,
# parity, compare, add) get RARE_WEIGHT. Reading handwriting is rare because LLaVA-1.5-class
# models are weak at OCR, and because a ViT trained from scratch needs far more than the
# demo's ten CPU minutes to read digits (docs/benchmarks.md); making it common cost the
# grid skills their grounding without teaching digits.
COMMON_WEIGHT, RARE_WEIGHT = 1.0, 0.04
GENERIC_WEIGHTS: dict[str, float] = {
    "color_of_shape": COMMON_WEIGHT,
    "color_of_shape_mc": COMMON_WEIGHT,
    "color_at_pos": COMMON_WEIGHT,
    "shape_of_color": COMMON_WEIGHT,
    "shape_at_pos_mc": COMMON_WEIGHT,
    "shape_at_pos_yesno": COMMON_WEIGHT,
    "where_is": COMMON_WEIGHT,
    "object_at_pos_yesno": COMMON_WEIGHT,
    "count_objects": COMMON_WEIGHT,
    "count_mc": COMMON_WEIGHT,
    "count_yesno": COMMON_WEIGHT,
    "digit_read": RARE_WEIGHT,
    "digit_mc": RARE_WEIGHT,
    "size_larger": RARE_WEIGHT,
    "size_smaller_mc": RARE_WEIGHT,
    "parity_open": RARE_WEIGHT,
    "parity_yesno": RARE_WEIGHT,
    "compare_larger": RARE_WEIGHT,
    "compare_yesno": RARE_WEIGHT,
    "add_open": RARE_WEIGHT,
    "add_mc": RARE_WEIGHT,
}
assert set(GENERIC_WEIGHTS) == set(CORPUS_TASKS), "GENERIC_WEIGHTS must cover exactly the corpus tasks"

META_SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("task", pa.string(), nullable=False),
    pa.field("step_skills", pa.list_(pa.string()), nullable=False),
    pa.field("scene", pa.string(), nullable=False),  # JSON, see scenes.py
    pa.field("chain", pa.list_(pa.string()), nullable=False),  # step kind ids, see tasks.STEPS
])


def _rng(seed: int, *parts: str) -> random.Random:
    digest = hashlib.sha256("/".join([str(seed), *parts]).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _balanced(rng: random.Random, values, n: int) -> list:
    """``n`` values, each of ``values`` equally often (+-1), in random order."""
    out = [values[i % len(values)] for i in range(n)]
    rng.shuffle(out)
    return out


def generate_task(task: Task, n: int, *, seed: int, split: str, pool: str = "corpus",
                  image_size: int = 32) -> tuple[list[dict], list[dict]]:
    """``n`` samples of one task and their meta rows, answers balanced.

    The answer value is chosen first (balanced), then a scene is built for it; for multiple
    choice the correct letter is balanced independently. ``pool`` picks the digit images:
    "corpus" or "target" (disjoint, see scenes.digit_pools). Ids: ``sw-<split>-<task>-<i>``.
    """
    rng = _rng(seed, split, task.name)
    digits = digit_pools()[pool]
    pick = lambda r, d: r.choice(digits[d])  # noqa: E731
    values = _balanced(rng, task.values, n)
    letters = _balanced(rng, range(task.n_options), n) if task.fmt == "mc" else None
    skills = [STEPS[k].skill for k in task.chain]
    prefix = f"sw-{split}-{task.name}"
    samples, metas = [], []
    for i in range(n):
        scene = task.build(rng, values[i], pick)
        options = None
        if task.fmt == "mc":
            wrong = task.distract(rng, values[i], scene)
            rng.shuffle(wrong)
            options = wrong[:letters[i]] + [values[i]] + wrong[letters[i]:]
            scene["query"]["options"] = options
        steps, _, answer = gold(task, scene)
        sid = f"{prefix}-{i:05d}"
        samples.append(make_sample(
            id=sid, task=task.name, source=SOURCE, image=render_scene(scene, rng, image_size),
            instruction=format_instruction(task, scene), response=join_response(steps, answer),
            steps=steps, answer=answer, options=options, skills=[]))
        metas.append({"id": sid, "task": task.name, "step_skills": skills,
                      "scene": json.dumps(scene, sort_keys=True, separators=(",", ":")),
                      "chain": list(task.chain)})
    return samples, metas


def allocate(weights: dict[str, float], total: int) -> dict[str, int]:
    """Split ``total`` over tasks in proportion to ``weights`` (largest remainder, exact)."""
    z = sum(weights.values())
    raw = {t: total * w / z for t, w in weights.items()}
    counts = {t: int(r) for t, r in raw.items()}
    for t in sorted(raw, key=lambda t: (counts[t] - raw[t], t))[: total - sum(counts.values())]:
        counts[t] += 1
    return counts


def _shuffled(rng: random.Random, samples: list[dict], metas: list[dict]) -> tuple[list[dict], list[dict]]:
    order = list(range(len(samples)))
    rng.shuffle(order)  # mixed tasks per shard: a reader that takes the first rows is not biased
    return [samples[i] for i in order], [metas[i] for i in order]


def _write(out: Path, rel: str, samples: list[dict], metas: list[dict]) -> list[str]:
    """Write samples to ``out/rel`` and meta to ``out/meta/rel``; ``rel`` ending in ``-*`` is sharded."""
    if rel.endswith("-*"):
        n_shards = max(1, -(-len(samples) // SHARD_ROWS))
        parts = [(rel[:-1] + f"{k:05d}.parquet", slice(k * SHARD_ROWS, (k + 1) * SHARD_ROWS))
                 for k in range(n_shards)]
        for base in (out, out / "meta"):  # stale shards of an earlier, larger run would be read too
            for old in (base / rel).parent.glob(Path(rel).name + ".parquet"):
                old.unlink()
    else:
        parts = [(rel + ".parquet", slice(None))]
    for r, chunk in parts:
        for base, table in ((out, to_table(samples[chunk])),
                            (out / "meta", pa.Table.from_pylist(metas[chunk], schema=META_SCHEMA))):
            (base / r).parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, base / r)
    return [r for r, _ in parts]


def _split_stats(samples: list[dict]) -> dict[str, Any]:
    by_task: dict[str, list[str]] = {}
    for s in samples:
        by_task.setdefault(s["task"], []).append(s["answer"])
    return {"rows": len(samples),
            "tasks": {t: {"rows": len(a), "majority_baseline": round(majority_baseline(a), 4),
                          "answers": dict(sorted(Counter(a).items()))} for t, a in by_task.items()}}


def _write_llava(out: Path, name: str, samples: list[dict]) -> None:
    """LLaVA conversation JSON (plus ``task``/``options``); ``image`` is relative to ``out/llava``."""
    img_dir = out / "llava" / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for s in samples:
        (img_dir / f"{s['id']}.png").write_bytes(s["image"])
        rec = {"id": s["id"], "image": f"images/{s['id']}.png", "conversations": [
            {"from": "human", "value": "<image>\n" + s["instruction"]},
            {"from": "gpt", "value": s["response"]}], "task": s["task"]}
        if s["options"]:  # extra keys LLaVA ignores and mmtune's reader keeps: a lossless round trip
            rec["options"] = s["options"]
        records.append(rec)
    (out / "llava" / f"{name}.json").write_text(json.dumps(records, indent=1))


def generate_skillworld(cfg: SkillWorldConfig, out_dir, *, llava_json: bool = False,
                        progress: Callable[[str], None] | None = None) -> dict:
    """Write the SkillWorld benchmark under ``out_dir`` and return its manifest.

    Layout: ``corpus/part-*.parquet``, ``generic/train-*.parquet``, ``generic/eval.parquet``,
    ``targets/<name>/{val,test}.parquet`` (Sample schema), ``meta/<same path>`` (generator
    metadata; benchmarks only, never the pipeline), ``skillworld.json`` (the manifest), and
    with ``llava_json`` ``llava/<split>.json`` plus ``llava/images/<id>.png``.
    """
    say = progress or (lambda msg: None)
    targets = resolve_targets(cfg.targets)  # fail before any work
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    size = cfg.image_size
    splits: dict[str, tuple[list[dict], list[dict]]] = {}

    def run(split: str, names_counts: list[tuple[str, int]], pool: str) -> tuple[list[dict], list[dict]]:
        samples: list[dict] = []
        metas: list[dict] = []
        for name, n in names_counts:
            s, m = generate_task(TASKS[name], n, seed=cfg.seed, split=split, pool=pool, image_size=size)
            samples += s
            metas += m
        return samples, metas

    say(f"skillworld: corpus, {len(CORPUS_TASKS)} tasks x {cfg.corpus_per_task}")
    splits["corpus"] = _shuffled(_rng(cfg.seed, "order", "corpus"),
                                 *run("corpus", [(t, cfg.corpus_per_task) for t in CORPUS_TASKS], "corpus"))
    say(f"skillworld: generic mix, {cfg.generic_size} samples")
    counts = allocate(GENERIC_WEIGHTS, cfg.generic_size)
    splits["generic/train"] = _shuffled(_rng(cfg.seed, "order", "generic"),
                                        *run("generic", [(t, counts[t]) for t in CORPUS_TASKS if counts[t]], "corpus"))
    splits["generic/eval"] = run("geval", [(t, cfg.generic_eval_per_task) for t in CORPUS_TASKS], "corpus")
    for name in targets:
        say(f"skillworld: target {name}")
        splits[f"targets/{name}/val"] = run("val", [(name, cfg.val_size)], "target")
        splits[f"targets/{name}/test"] = run("test", [(name, cfg.test_size)], "target")

    say("skillworld: writing parquet")
    files: dict[str, list[str]] = {}
    for key, (samples, metas) in splits.items():
        rel = {"corpus": "corpus/part-*", "generic/train": "generic/train-*"}.get(key, key)
        files[key] = _write(out, rel, samples, metas)
    if llava_json:
        say("skillworld: writing LLaVA JSON and PNG files")
        for key, (samples, _) in splits.items():
            _write_llava(out, key.replace("targets/", "target_").replace("/", "_"), samples)

    pools = digit_pools()
    manifest = {
        "name": "skillworld",
        "version": GENERATOR_VERSION,
        "seed": cfg.seed,
        "config": cfg.model_dump(),
        "skills": {k: {"phrase": v, "rare": k in RARE_SKILLS} for k, v in SKILLS.items()},
        "tasks": {t.name: {"kind": t.kind, "format": t.fmt, "skills": list(t.skills), "chain": list(t.chain),
                           "step_templates": [STEPS[k].template for k in t.chain], "question": t.question,
                           "rare": t.rare, "generic_weight": GENERIC_WEIGHTS.get(t.name),
                           "n_options": t.n_options or None} for t in TASKS.values()},
        "targets": targets,
        "default_targets": list(DEFAULT_TARGETS),
        "generic_counts": counts,
        "digit_split": {"seed": DIGIT_SPLIT_SEED, "target_fraction": TARGET_DIGIT_FRACTION,
                        "corpus_images": sum(len(v) for v in pools["corpus"].values()),
                        "target_images": sum(len(v) for v in pools["target"].values())},
        "counts": {k: len(s) for k, (s, _) in splits.items()},  # rows per split, for quick reports
        "splits": {k: {"files": files[k], "meta_files": [f"meta/{f}" for f in files[k]], **_split_stats(s)}
                   for k, (s, _) in splits.items()},
        "llava": bool(llava_json),
        "generation_seconds": round(time.perf_counter() - t0, 3),
    }
    (out / "skillworld.json").write_text(json.dumps(manifest, indent=1))
    say(f"skillworld: done in {manifest['generation_seconds']}s")
    return manifest
