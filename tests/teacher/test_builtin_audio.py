"""The built-in teacher on the audio SkillWorld family (issue G): trained on audio corpus-task
text (no clip is ever synthesised), cached under a key that carries the family, and good
enough at a tiny size to name audio skills for audio chains. The vision teacher's key and
training data are pinned: existing caches must still hit."""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmtune.config import config_hash, load_config
from mmtune.data.catalog import skillworld_key
from mmtune.data.skillworld import (
    ALL_STEPS,
    SKILLS,
    family,
    first_wrong_step,
)
from mmtune.data.skillworld import generate as sw_generate
from mmtune.teacher import Teacher, make_backend
from mmtune.teacher.builtin import (
    META_FILE,
    _teacher_items,
    build_examples,
    ensure_builtin_teacher,
    teacher_key,
)

AUDIO = family("audio")
# A tiny teacher that learns audio skill names in ~150 steps. Measured: 65/100 on this test's
# items; 43-74/100 over build seeds 0-5 on another draw of target items. Chance is 1/6, the
# most common skill ~22%. With hidden 32, or 100 steps, it often names one phrase for every
# question (10-40/100).
TINY_AUDIO = ["data.skillworld.modality=audio", "teacher.builtin.samples_per_task=20", "teacher.builtin.steps=150",
              "teacher.builtin.batch_size=16", "teacher.builtin.hidden=64", "teacher.builtin.layers=1",
              "teacher.builtin.heads=2", "teacher.builtin.intermediate=128", "teacher.builtin.lr=5e-3",
              "teacher.parse_retries=0"]


def _legacy_teacher_key(cfg) -> str:
    """teacher_key as it was before the audio family (commit fb444d3), verbatim."""
    from mmtune.data.skillworld import GENERATOR_VERSION

    return config_hash({"builtin": cfg.teacher.builtin.model_dump(mode="json", exclude={"threads"}),
                        "skillworld_seed": cfg.data.skillworld.seed, "generator": GENERATOR_VERSION,
                        "hint": cfg.teacher.hint_probability, "prompts": cfg.teacher.prompt_version,
                        "score_candidates": cfg.teacher.score_candidates,
                        "seed": cfg.run.shared_seed})


def _legacy_skillworld_key(cfg) -> str:
    """skillworld_key as it was before the audio family (commit 381c6ed), when SkillWorldConfig
    had no ``modality`` and ``clip_seconds``."""
    from mmtune.data.skillworld import GENERATOR_VERSION

    fields = cfg.data.skillworld.model_dump(mode="json", exclude={"modality", "clip_seconds"})
    return config_hash({"cfg": fields, "version": GENERATOR_VERSION})


VISION_CONFIGS = [("configs/demo.yaml", []), (None, []),
                  ("configs/demo.yaml", ["data.skillworld.seed=3", "teacher.builtin.steps=7", "run.seed=2"])]


@pytest.mark.parametrize("path,overrides", VISION_CONFIGS)
def test_vision_cache_keys_are_unchanged(path, overrides):
    cfg = load_config(path, overrides)
    assert cfg.data.skillworld.modality == "vision"
    assert teacher_key(cfg) == _legacy_teacher_key(cfg), "the vision teacher's cache key changed: every cache misses"
    assert skillworld_key(cfg) == _legacy_skillworld_key(cfg), "the vision SkillWorld key changed"


def test_the_demo_caches_keep_their_names():
    """The demo's SkillWorld and built-in teacher directories as every cache made before the
    audio family names them (they last changed on purpose with SkillWorld generator version 4,
    from skillworld/5294587c8dda and builtin-5fbd53ea907b). If a new
    SkillWorldConfig field changed them, leave it out of the vision key when it does not
    change vision data (catalog.AUDIO_ONLY_FIELDS), or every vision cache misses."""
    cfg = load_config("configs/demo.yaml", [])
    assert skillworld_key(cfg) == "0d7a76da4a99"
    assert teacher_key(cfg) == "041a58d77b20"


def test_audio_keys_carry_the_family_and_its_generator_version(monkeypatch):
    vision = load_config("configs/demo.yaml", [])
    audio = load_config("configs/demo.yaml", ["data.skillworld.modality=audio"])
    assert teacher_key(audio) != teacher_key(vision) and skillworld_key(audio) != skillworld_key(vision)
    before = {"tv": teacher_key(vision), "sv": skillworld_key(vision), "ta": teacher_key(audio),
              "sa": skillworld_key(audio)}
    # A changed audio generator invalidates the audio caches only.
    monkeypatch.setitem(sw_generate._VERSION, "audio", "audio-generator-changed")
    assert teacher_key(vision) == before["tv"] and skillworld_key(vision) == before["sv"]
    assert teacher_key(audio) != before["ta"] and skillworld_key(audio) != before["sa"]


def test_vision_training_data_is_unchanged():
    """The vision teacher's items and examples, hashed before the audio family and again at
    SkillWorld generator version 4: a fresh vision teacher trains on exactly what it did. (A deliberate change to the examples
    or a vision generator bump should update this hash.)"""
    cfg = load_config("configs/demo.yaml", ["teacher.builtin.samples_per_task=10"])
    items = _teacher_items(cfg)
    ex = build_examples(cfg, items, 300, seed=0)
    digest = hashlib.sha256(json.dumps([items, ex], sort_keys=True, default=str).encode()).hexdigest()[:16]
    assert digest == "b2d3460fee608870"  # SkillWorld 4's answer-format steps (was 8d8edcbb3b8f5c49)


def test_audio_items_are_text_only_audio_corpus_tasks(monkeypatch):
    def no_synthesis(scene):
        raise AssertionError("the teacher reads text only; it must not synthesise clips")

    monkeypatch.setattr(sw_generate._audio, "render_clip", no_synthesis)
    cfg = load_config("configs/demo.yaml", TINY_AUDIO)
    items = _teacher_items(cfg)
    assert {it["task"] for it in items} == set(AUDIO.corpus_tasks)
    assert not {it["task"] for it in items} & set(AUDIO.target_tasks)
    assert all(it["id"].startswith("sw-teacher-") for it in items)
    phrases = set(AUDIO.skills.values())
    assert {s for it in items for s in it["skills"]} == phrases  # every audio skill, nothing else
    # Every skill and annotation target is an audio phrase; off-task chains come from audio tasks.
    for prompt, target in build_examples(cfg, items, 400, seed=0):
        if "Mistake at step" in prompt:
            assert target.strip() in phrases
            assert "cell" not in prompt and "digit" not in prompt  # no vision step text
        elif "List the general skills" in prompt:
            assert set(target.strip().split("; ")) <= phrases


WORLD = ["data.skillworld.corpus_per_task=10", "data.skillworld.generic_size=100",
         "data.skillworld.generic_eval_per_task=8", "data.skillworld.val_size=24", "data.skillworld.test_size=10",
         "data.skillworld.clip_seconds=1.5", f"data.skillworld.targets={list(AUDIO.target_tasks)}"]


@pytest.fixture(scope="module")
def audio_teacher(tmp_path_factory):
    """A tiny audio SkillWorld (all six targets, ~1 s to generate) and the tiny built-in
    teacher trained for it (~10 s), cached under the run's cache_dir like the pipeline's."""
    from mmtune.data.catalog import data_paths

    cfg = load_config("configs/demo.yaml", [f"run.cache_dir={tmp_path_factory.mktemp('cache')}", *TINY_AUDIO,
                                            *WORLD])
    paths = data_paths(cfg, progress=lambda m: None)
    out = ensure_builtin_teacher(cfg, progress=lambda m: None)
    return cfg, paths, out, Teacher(make_backend(cfg.teacher, out), cfg.teacher)


def _corrupted_target_chains(paths, n: int, seed: int = 7) -> tuple[list[dict], list[tuple[int, str, str]]]:
    """Wrong answers on the audio targets' validation items (phrasings the teacher never saw):
    each item's steps are another item's of the same target with a different answer. The
    verifier gives the first wrong step from the generator's scene, and the right skill is the
    gold chain's step skill there, as bench/diagnosis_skills.py scores a diagnosis."""
    rng = random.Random(seed)
    items, truth = [], []
    for name, files in sorted(paths.target_val.items()):
        rows = pq.read_table(files, columns=["id", "instruction", "steps", "answer", "options"]).to_pylist()
        meta = {m["id"]: m for m in pq.read_table(paths.root / "meta" / "targets" / name / "val.parquet").to_pylist()}
        chain = AUDIO.tasks[name].chain
        for r in rows:
            other = rng.choice([o for o in rows if o["answer"] != r["answer"]])
            k = first_wrong_step(meta[r["id"]], list(other["steps"]), other["answer"])
            if k is None or k >= len(chain):
                continue
            items.append({"id": r["id"], "task": name, "question": r["instruction"], "steps": list(other["steps"]),
                          "prediction": other["answer"], "gold": r["answer"], "options": r["options"]})
            truth.append((k, AUDIO.skills[ALL_STEPS[chain[k]].skill], name))
    order = list(range(len(items)))
    rng.shuffle(order)
    return [items[i] for i in order[:n]], [truth[i] for i in order[:n]]


@pytest.mark.slow
def test_audio_teacher_names_audio_skills_well_above_chance(audio_teacher, tmp_path):
    from bench.diagnosis_skills import skill_accuracy

    cfg, paths, out, teacher = audio_teacher
    meta = json.loads((out / META_FILE).read_text())
    assert meta["key"] == teacher_key(cfg) and meta["items"] == 20 * len(AUDIO.corpus_tasks)
    assert out.name == f"builtin-{teacher_key(cfg)}"
    items, truth = _corrupted_target_chains(paths, 100)
    assert len(items) == 100 and len({t for _, _, t in truth}) == 6
    got = teacher.skills_for_steps(items, [k + 1 for k, _, _ in truth])
    hits = [g[0] == right for g, (_, right, _) in zip(got, truth)]
    per_task = Counter(t for h, (_, _, t) in zip(hits, truth) if h)
    majority = Counter(right for _, right, _ in truth).most_common(1)[0][1] / len(truth)
    acc = sum(hits) / len(hits)
    print(f"audio skill naming: {sum(hits)}/{len(hits)} (most common skill {majority:.2f}, chance 1/6); "
          f"right per target: {dict(per_task)} of {dict(Counter(t for _, _, t in truth))}")
    assert acc >= 0.35 and acc > 1.5 * majority, (acc, majority, per_task)
    assert not {g[0] for g in got if g[0]} & set(SKILLS.values())  # audio vocabulary, never a vision skill
    # bench/diagnosis_skills.py scores the same diagnosis the same way on the audio family
    diag = tmp_path / "diagnosis.parquet"
    pq.write_table(pa.Table.from_pylist([
        {"id": it["id"], "task": it["task"], "status": "ok", "mistake_step": k + 1, "missing_skill": g[0]}
        for it, (k, _, _), g in zip(items, truth, got)]), diag)
    registry = json.loads((paths.root / "skillworld.json").read_text())
    by_task = skill_accuracy(str(diag), registry)
    assert sum(a for a, _ in by_task.values()) == sum(hits) and sum(n for _, n in by_task.values()) == 100


@pytest.mark.slow
def test_audio_teacher_annotates_the_audio_corpus_with_audio_skills(audio_teacher):
    """bench/teacher_quality.py's annotation agreement on the audio pool (corpus rows: a split
    the teacher never trained on), against the generator's step skills."""
    from bench.teacher_quality import annotation

    cfg, paths, _, teacher = audio_teacher
    res = annotation(cfg, teacher, paths, 60, progress=lambda m: None)
    print(f"audio annotation: exact {res['exact']:.2f}, precision {res['precision']:.2f}, recall "
          f"{res['recall']:.2f} on {res['rows']} corpus rows")
    assert res["rows"] == 60 and res["unparsed"] <= 3
    assert res["exact"] >= 0.7 and res["precision"] >= 0.7
