"""Generate SkillWorld: the corpus, the generic student's mix, and the target splits.

Randomness: every (split, task) pair has its own ``random.Random`` stream, seeded from a
SHA-256 of ``(cfg.seed, split, task)``. Streams never overlap across splits (so the corpus
pool and the generic mix share no draws), and a task's items do not depend on which other
tasks or targets are generated. Python's ``random`` is used instead of numpy because its
per-call overhead is ~10x lower, and generation makes dozens of tiny draws per sample.
(An audio scene records a seed for its clip's noise, drawn from the same stream.)

``cfg.modality`` picks the task family: "vision" (``tasks.py``) or "audio"
(``tasks_audio.py``). Both go through the same code; only the rendering (PNG image or WAV
clip), the generic mix and the LLaVA-style export differ.
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
from mmtune.data.schema import SAMPLE_SCHEMA, join_response, make_sample, to_table

from . import audio as _audio
from .scenes import DIGIT_SPLIT_SEED, TARGET_DIGIT_FRACTION, digit_pools, render_scene
from .tasks import ALL_STEPS, CORPUS_TASKS, Task, family, format_instruction, gold, resolve_targets
from .tasks_audio import AUDIO_CORPUS_TASKS
from .verifier import majority_baseline

GENERATOR_VERSION = "4"  # the vision family's; bump when its output changes (4: option/check steps)
AUDIO_GENERATOR_VERSION = "1"  # the audio family's
SOURCE = "skillworld"
SHARD_ROWS = 4096  # rows per corpus/generic shard [module constant: no config field yet]
AUDIO_ROW_GROUP = 256  # rows per parquet row group in audio files: 256 clips of 2 s are 16 MB

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

# The audio generic student's mix, on the same principle and fixed without looking at the
# audio targets: counting beeps, pitch and sweep direction are common; comparing durations,
# comparing loudness and locating a tone in time (order) are rare, as fine temporal and
# level comparisons are where small audio-LLMs are weakest.
AUDIO_GENERIC_WEIGHTS: dict[str, float] = {
    "beep_count": COMMON_WEIGHT,
    "beep_count_mc": COMMON_WEIGHT,
    "beep_count_yesno": COMMON_WEIGHT,
    "pitch_open": COMMON_WEIGHT,
    "pitch_yesno": COMMON_WEIGHT,
    "higher_tone": COMMON_WEIGHT,
    "higher_tone_yesno": COMMON_WEIGHT,
    "sweep_dir": COMMON_WEIGHT,
    "sweep_dir_yesno": COMMON_WEIGHT,
    "longer_tone": RARE_WEIGHT,
    "shorter_tone_mc": RARE_WEIGHT,
    "louder_tone": RARE_WEIGHT,
    "quieter_tone_yesno": RARE_WEIGHT,
    "odd_tone": RARE_WEIGHT,
    "odd_tone_mc": RARE_WEIGHT,
}
assert set(AUDIO_GENERIC_WEIGHTS) == set(AUDIO_CORPUS_TASKS), "AUDIO_GENERIC_WEIGHTS must cover the audio corpus"
_GENERIC = {"vision": GENERIC_WEIGHTS, "audio": AUDIO_GENERIC_WEIGHTS}
_VERSION = {"vision": GENERATOR_VERSION, "audio": AUDIO_GENERATOR_VERSION}


def generic_weights(modality: str = "vision") -> dict[str, float]:
    """The generic student's mix (corpus task -> relative weight) of one family."""
    family(modality)  # a clear error for an unknown modality
    return _GENERIC[modality]


def generator_version(modality: str = "vision") -> str:
    """The generator version of one family (cache keys should include it)."""
    family(modality)
    return _VERSION[modality]

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
                  image_size: int = 32, clip_seconds: float = 2.0,
                  render_audio: bool = True) -> tuple[list[dict], list[dict]]:
    """``n`` samples of one task and their meta rows, answers balanced.

    The answer value is chosen first (balanced), then a scene is built for it; for multiple
    choice the correct letter is balanced independently. ``pool`` picks the digit images:
    "corpus" or "target" (disjoint, see scenes.digit_pools). Ids: ``sw-<split>-<task>-<i>``.
    Vision tasks get a PNG ``image`` of ``image_size``; audio tasks a WAV ``audio`` clip of
    ``clip_seconds`` (``pool`` and ``image_size`` do not apply to them). With
    ``render_audio=False`` the ``audio`` field is left None: ``audio.render_clip(scene)``
    makes the same bytes later (text-only users such as the teacher skip synthesis).
    """
    rng = _rng(seed, split, task.name)
    is_audio = task.modality == "audio"
    if is_audio:
        ctx: Any = clip_seconds
    else:
        digits = digit_pools()[pool]
        ctx = lambda r, d: r.choice(digits[d])  # noqa: E731
    values = _balanced(rng, task.values, n)
    letters = _balanced(rng, range(task.n_options), n) if task.fmt == "mc" else None
    skills = [ALL_STEPS[k].skill for k in task.chain]
    prefix = f"sw-{split}-{task.name}"
    samples, metas = [], []
    for i in range(n):
        scene = task.build(rng, values[i], ctx)
        options = None
        if task.fmt == "mc":
            wrong = task.distract(rng, values[i], scene)
            rng.shuffle(wrong)
            options = wrong[:letters[i]] + [values[i]] + wrong[letters[i]:]
            scene["query"]["options"] = options
        steps, _, answer = gold(task, scene)
        sid = f"{prefix}-{i:05d}"
        if is_audio:
            media = {"audio": _audio.render_clip(scene) if render_audio else None}
        else:
            media = {"image": render_scene(scene, rng, image_size)}
        samples.append(make_sample(
            id=sid, task=task.name, source=SOURCE, **media,
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


def _with_audio(samples: list[dict], metas: list[dict]) -> list[dict]:
    """The samples with their clips synthesised (from each meta row's scene) where missing."""
    return [s if s["audio"] is not None else {**s, "audio": _audio.render_clip(json.loads(m["scene"]))}
            for s, m in zip(samples, metas)]


def _write(out: Path, rel: str, samples: list[dict], metas: list[dict], fill_audio: bool = False) -> list[str]:
    """Write samples to ``out/rel`` and meta to ``out/meta/rel``; ``rel`` ending in ``-*`` is sharded.

    With ``fill_audio``, audio samples made with ``render_audio=False`` get their clips here,
    one shard at a time, so memory holds one shard of clips rather than the whole split.
    """
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
        for base in (out, out / "meta"):
            (base / r).parent.mkdir(parents=True, exist_ok=True)
        if fill_audio:
            _write_clips(out / r, samples[chunk], metas[chunk])
        else:
            pq.write_table(to_table(samples[chunk]), out / r)
        pq.write_table(pa.Table.from_pylist(metas[chunk], schema=META_SCHEMA), out / "meta" / r)
    return [r for r, _ in parts]


def _write_clips(path: Path, samples: list[dict], metas: list[dict]) -> None:
    """An audio shard, synthesised and written one row group at a time (bounded memory)."""
    with pq.ParquetWriter(path, SAMPLE_SCHEMA) as writer:
        for i in range(0, len(samples), AUDIO_ROW_GROUP):
            part = slice(i, i + AUDIO_ROW_GROUP)
            writer.write_table(to_table(_with_audio(samples[part], metas[part])))


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


def _write_llamafactory_audio(out: Path, name: str, samples: list[dict], metas: list[dict]) -> None:
    """LLaMA-Factory's audio format: ``messages`` (user turn with ``<audio>``, assistant) and an
    ``audios`` list of WAV paths relative to ``out/llava`` (plus ``task``/``options``, kept by
    mmtune's reader). Clips missing from ``samples`` are synthesised from the meta scenes."""
    aud_dir = out / "llava" / "audios"
    aud_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for s, m in zip(samples, metas):
        clip = s["audio"] if s["audio"] is not None else _audio.render_clip(json.loads(m["scene"]))
        (aud_dir / f"{s['id']}.wav").write_bytes(clip)
        rec = {"id": s["id"], "messages": [
            {"role": "user", "content": "<audio>" + s["instruction"]},
            {"role": "assistant", "content": s["response"]}], "audios": [f"audios/{s['id']}.wav"], "task": s["task"]}
        if s["options"]:
            rec["options"] = s["options"]
        records.append(rec)
    (out / "llava" / f"{name}.json").write_text(json.dumps(records, indent=1))


def generate_skillworld(cfg: SkillWorldConfig, out_dir, *, llava_json: bool = False,
                        progress: Callable[[str], None] | None = None) -> dict:
    """Write the SkillWorld benchmark of ``cfg.modality`` under ``out_dir`` and return its manifest.

    Layout: ``corpus/part-*.parquet``, ``generic/train-*.parquet``, ``generic/eval.parquet``,
    ``targets/<name>/{val,test}.parquet`` (Sample schema), ``meta/<same path>`` (generator
    metadata; benchmarks only, never the pipeline), ``skillworld.json`` (the manifest), and
    with ``llava_json`` ``llava/<split>.json`` plus ``llava/images/<id>.png`` (vision: LLaVA
    conversations) or ``llava/audios/<id>.wav`` (audio: LLaMA-Factory messages + audios).
    """
    say = progress or (lambda msg: None)
    fam = family(cfg.modality)
    targets = resolve_targets(cfg.targets, cfg.modality)  # fail before any work
    weights = generic_weights(cfg.modality)
    corpus_tasks = fam.corpus_tasks
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, list[str]] = {}
    stats: dict[str, dict[str, Any]] = {}
    is_audio = cfg.modality == "audio"

    def run(split: str, names_counts: list[tuple[str, int]], pool: str) -> tuple[list[dict], list[dict]]:
        samples: list[dict] = []
        metas: list[dict] = []
        for name, n in names_counts:
            # Audio clips (~64 KB each) are synthesised at write time, one shard at a time.
            s, m = generate_task(fam.tasks[name], n, seed=cfg.seed, split=split, pool=pool,
                                 image_size=cfg.image_size, clip_seconds=cfg.clip_seconds, render_audio=False)
            samples += s
            metas += m
        return samples, metas

    def emit(key: str, samples: list[dict], metas: list[dict]) -> None:
        # Each split is written as soon as it is made and only its statistics are kept.
        rel = {"corpus": "corpus/part-*", "generic/train": "generic/train-*"}.get(key, key)
        files[key] = _write(out, rel, samples, metas, fill_audio=is_audio)
        if llava_json:
            name = key.replace("targets/", "target_").replace("/", "_")
            if is_audio:
                _write_llamafactory_audio(out, name, samples, metas)
            else:
                _write_llava(out, name, samples)
        stats[key] = _split_stats(samples)

    say(f"skillworld: {cfg.modality} corpus, {len(corpus_tasks)} tasks x {cfg.corpus_per_task}")
    emit("corpus", *_shuffled(_rng(cfg.seed, "order", "corpus"),
                              *run("corpus", [(t, cfg.corpus_per_task) for t in corpus_tasks], "corpus")))
    say(f"skillworld: generic mix, {cfg.generic_size} samples")
    counts = allocate(weights, cfg.generic_size)
    emit("generic/train", *_shuffled(_rng(cfg.seed, "order", "generic"),
                                     *run("generic", [(t, counts[t]) for t in corpus_tasks if counts[t]], "corpus")))
    emit("generic/eval", *run("geval", [(t, cfg.generic_eval_per_task) for t in corpus_tasks], "corpus"))
    for name in targets:
        say(f"skillworld: target {name}")
        emit(f"targets/{name}/val", *run("val", [(name, cfg.val_size)], "target"))
        emit(f"targets/{name}/test", *run("test", [(name, cfg.test_size)], "target"))

    manifest: dict[str, Any] = {
        "name": "skillworld",
        "version": generator_version(cfg.modality),
        "modality": cfg.modality,
        "seed": cfg.seed,
        "config": cfg.model_dump(),
        "skills": {k: {"phrase": v, "rare": k in fam.rare_skills} for k, v in fam.skills.items()},
        "tasks": {t.name: {"kind": t.kind, "format": t.fmt, "skills": list(t.skills), "chain": list(t.chain),
                           "step_templates": [fam.steps[k].template for k in t.chain], "question": t.question,
                           "rare": t.rare, "generic_weight": weights.get(t.name),
                           "n_options": t.n_options or None} for t in fam.tasks.values()},
        "targets": targets,
        "default_targets": list(fam.default_targets),
        "generic_counts": counts,
    }
    if not is_audio:
        pools = digit_pools()
        manifest["digit_split"] = {"seed": DIGIT_SPLIT_SEED, "target_fraction": TARGET_DIGIT_FRACTION,
                                   "corpus_images": sum(len(v) for v in pools["corpus"].values()),
                                   "target_images": sum(len(v) for v in pools["target"].values())}
    else:
        manifest["audio"] = {"sample_rate": _audio.SAMPLE_RATE, "clip_seconds": cfg.clip_seconds,
                             "format": "WAV, mono, 16-bit PCM", "pitch_hz": _audio.PITCH_HZ,
                             "length_s": _audio.LENGTH_S, "level_amp": _audio.LEVEL_AMP, "sweep_s": _audio.SWEEP_S}
    manifest.update({
        "counts": {k: st["rows"] for k, st in stats.items()},  # rows per split, for quick reports
        "splits": {k: {"files": files[k], "meta_files": [f"meta/{f}" for f in files[k]], **st}
                   for k, st in stats.items()},
        "llava": bool(llava_json),
        "generation_seconds": round(time.perf_counter() - t0, 3),
    })
    (out / "skillworld.json").write_text(json.dumps(manifest, indent=1))
    say(f"skillworld: done in {manifest['generation_seconds']}s")
    return manifest
