"""The audio SkillWorld family: generator, registry, verifier, waveforms and export (tiny sizes)."""

from __future__ import annotations

import hashlib
import io
import json
import re
import time
from collections import Counter

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from mmtune.config import SkillWorldConfig, load_config
from mmtune.data.schema import SAMPLE_SCHEMA
from mmtune.data.skillworld import (
    CORPUS_TASKS,
    DEFAULT_TARGETS,
    RARE_SKILLS,
    SKILLS,
    STEPS,
    TARGET_TASKS,
    TASKS,
    first_wrong_step,
    generate_skillworld,
    generate_task,
)
from mmtune.data.skillworld.audio import MIN_CLIP_S, ORDINALS, SAMPLE_RATE, render_clip
from mmtune.data.skillworld.generate import generic_weights
from mmtune.data.skillworld.tasks import ALL_SKILLS, ALL_TASKS, family, resolve_targets

AUDIO = family("audio")
SMALL = {"modality": "audio", "corpus_per_task": 10, "generic_size": 120, "generic_eval_per_task": 8,
         "val_size": 10, "test_size": 10, "targets": list(AUDIO.target_tasks)}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("swa")
    return out, generate_skillworld(SkillWorldConfig(**SMALL), out, llava_json=True)


def _rows(path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def _one(name: str, seed: int = 0, render: bool = False):
    s, m = generate_task(AUDIO.tasks[name], 1, seed=seed, split="v", render_audio=render)
    return s[0], {"task": name, "scene": m[0]["scene"]}


# --------------------------------------------------------------------------- generation
def test_layout_schema_and_manifest(world):
    out, m = world
    assert pq.read_schema(next((out / "corpus").glob("part-*.parquet"))).equals(SAMPLE_SCHEMA)
    corpus = _rows(out / "corpus")
    assert len(corpus) == 10 * len(AUDIO.corpus_tasks) and {r["task"] for r in corpus} == set(AUDIO.corpus_tasks)
    assert all(r["image"] is None and r["audio"][:4] == b"RIFF" and r["skills"] == [] for r in corpus)
    assert len({r["audio"] for r in corpus}) == len(corpus)  # jitter: no two clips are identical
    for r in corpus:
        assert r["response"].splitlines() == [*r["steps"], f"Answer: {r['answer']}"]
        assert "<audio>" not in r["instruction"] and "<image>" not in r["instruction"]
    for t in AUDIO.target_tasks:
        for split in ("val", "test"):
            rows = _rows(out / "targets" / t / f"{split}.parquet")
            meta = _rows(out / "meta" / "targets" / t / f"{split}.parquet")
            assert len(rows) == len(meta) == 10 and all(r["task"] == t for r in meta)
            assert all(json.loads(r["scene"])["kind"] == "audio" for r in meta)
    disk = json.loads((out / "skillworld.json").read_text())
    assert disk["modality"] == "audio" and disk["version"] == m["version"] and set(disk["skills"]) == set(AUDIO.skills)
    assert set(disk["tasks"]) == set(AUDIO.tasks) and disk["audio"]["sample_rate"] == SAMPLE_RATE
    assert "digit_split" not in disk and disk["counts"]["generic/train"] == 120
    assert m["splits"]["corpus"]["tasks"]["pitch_open"]["majority_baseline"] == 0.5
    # the generic mix is long-tailed as documented: rare tasks get a sliver
    gen = m["splits"]["generic/train"]["tasks"]
    assert gen["beep_count"]["rows"] > 5 * gen.get("longer_tone", {"rows": 0})["rows"]


def test_deterministic_and_seed_sensitive(tmp_path):
    cfg = SkillWorldConfig(**{**SMALL, "targets": ["count_clip"], "generic_size": 100})
    for name, c in (("a", cfg), ("b", cfg), ("c", cfg.model_copy(update={"seed": 1}))):
        generate_skillworld(c, tmp_path / name)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.parquet"))
    assert files and all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    assert all(_rows(tmp_path / "a" / f) != _rows(tmp_path / "c" / f) for f in files)
    # the scene alone re-creates its clip (the generator synthesises clips at write time)
    sample, key = _one("higher_tone", render=True)
    assert render_clip(json.loads(key["scene"])) == sample["audio"]


def test_answers_balanced_per_task():
    for name, task in AUDIO.tasks.items():
        samples, _ = generate_task(task, 12 * len(task.values), seed=3, split="t", render_audio=False)
        counts = Counter(s["answer"] for s in samples)
        assert len(counts) == (task.n_options if task.fmt == "mc" else len(task.values)), (name, counts)
        assert max(counts.values()) - min(counts.values()) <= 1, (name, counts)
        if task.fmt == "mc":  # the option *texts* are balanced too, not just the letters
            texts = Counter(s["options"]["ABCD".index(s["answer"])] for s in samples)
            assert max(texts.values()) - min(texts.values()) <= 1, (name, texts)


def test_registry_coverage_and_targets():
    corpus, targets = AUDIO.corpus_tasks, AUDIO.target_tasks
    assert len(corpus) >= 12 and len(AUDIO.skills) >= 5 and len(targets) >= 3
    per_skill = Counter(s for t in corpus for s in AUDIO.tasks[t].skills)
    assert set(per_skill) == set(AUDIO.skills)
    for skill in AUDIO.skills:  # >= 2 phrasings and >= 2 answer formats per skill
        tasks = [AUDIO.tasks[t] for t in corpus if skill in AUDIO.tasks[t].skills]
        assert len({t.question for t in tasks}) >= 2 and len({t.fmt for t in tasks}) >= 2, skill
    questions, chains = {AUDIO.tasks[t].question for t in corpus}, {AUDIO.tasks[t].chain for t in corpus}
    for t in targets:  # a known chain under a new phrasing/format
        assert AUDIO.tasks[t].question not in questions and AUDIO.tasks[t].chain in chains
    rare = [t for t in AUDIO.default_targets if AUDIO.tasks[t].rare]
    assert rare and len(rare) < len(AUDIO.default_targets)  # >= 1 rare-skill and >= 1 common-skill target
    weights = generic_weights("audio")
    assert set(weights) == set(corpus)
    assert max(weights[t] for t in corpus if AUDIO.tasks[t].rare) * 5 <= min(
        weights[t] for t in corpus if not AUDIO.tasks[t].rare)
    assert {s for t in corpus if AUDIO.tasks[t].rare for s in AUDIO.tasks[t].skills} >= AUDIO.rare_skills
    # phrases a teacher names must not collide with vision's
    assert len(set(ALL_SKILLS.values())) == len(ALL_SKILLS)
    assert resolve_targets(None, "audio") == list(AUDIO.default_targets)
    with pytest.raises(ValueError, match="count_clip"):
        resolve_targets(["count_grid"], "audio")  # a vision target is unknown to the audio family
    with pytest.raises(ValueError, match="vision"):
        family("smell")


def test_vision_registries_stay_vision_only():
    vision = family("vision")
    assert CORPUS_TASKS == vision.corpus_tasks and TARGET_TASKS == vision.target_tasks
    assert DEFAULT_TARGETS == vision.default_targets and RARE_SKILLS == vision.rare_skills
    assert SKILLS is vision.skills and STEPS is vision.steps and TASKS is vision.tasks
    assert not set(TASKS) & set(AUDIO.tasks) and not set(SKILLS) & set(AUDIO.skills)
    assert set(ALL_TASKS) == set(TASKS) | set(AUDIO.tasks)
    assert generic_weights() is generic_weights("vision") and set(generic_weights()) == set(CORPUS_TASKS)


# The content of a small vision generation, computed before the audio family existed
# (generator version 3) and again at version 4. Adding audio must not change it: a new failure here means the
# vision data changed, so GENERATOR_VERSION must be bumped (or a Pillow upgrade changed
# how shapes are drawn: images are part of the hash).
VISION_PIN = "0cfb6dacd55927464f1b2d43be510357eac8e1f5bfdec93a7e4afb26ff528d86"  # SkillWorld 4


def test_vision_output_unchanged(tmp_path):
    cfg = SkillWorldConfig(corpus_per_task=10, generic_size=100, generic_eval_per_task=8, val_size=10, test_size=10,
                           targets=list(TARGET_TASKS))
    assert cfg.modality == "vision"
    generate_skillworld(cfg, tmp_path)
    h = hashlib.sha256()
    for p in sorted(tmp_path.rglob("*.parquet")):
        h.update(str(p.relative_to(tmp_path)).encode())
        for r in _rows(p):
            h.update(repr(sorted(r.items())).encode())
    assert h.hexdigest() == VISION_PIN


def test_cache_key_changes_with_modality():
    from mmtune.data.catalog import skillworld_key

    vision, audio = (load_config(None, [f"data.skillworld.modality={m}"]) for m in ("vision", "audio"))
    assert skillworld_key(vision) != skillworld_key(audio)
    with pytest.raises(Exception, match="modality"):
        load_config(None, ["data.skillworld.modality=smell"])


# --------------------------------------------------------------------------- waveforms
def test_wav_decodes_to_length_and_rate(world):
    out, _ = world
    for r in _rows(out / "generic" / "eval.parquet")[::9]:
        x, sr = sf.read(io.BytesIO(r["audio"]), dtype="float32")
        info = sf.info(io.BytesIO(r["audio"]))
        assert sr == SAMPLE_RATE and x.ndim == 1 and len(x) == 2 * SAMPLE_RATE and info.subtype == "PCM_16"
        assert 0.05 < np.abs(x).max() <= 1.0
    s, _ = generate_task(AUDIO.tasks["longer_tone"], 3, seed=0, split="x", clip_seconds=MIN_CLIP_S)
    assert {len(sf.read(io.BytesIO(c["audio"]))[0]) for c in s} == {int(MIN_CLIP_S * SAMPLE_RATE)}


FRAME = SAMPLE_RATE // 100  # 10 ms


def _segments(x: np.ndarray) -> list[np.ndarray]:
    """Sound events by a plain energy detector: runs of 10 ms frames with RMS above 0.02."""
    frames = x[: len(x) // FRAME * FRAME].reshape(-1, FRAME)
    on = np.sqrt((frames ** 2).mean(axis=1)) > 0.02
    edges = np.flatnonzero(np.diff(np.r_[0, on.astype(int), 0]))
    return [x[a * FRAME:b * FRAME] for a, b in zip(edges[::2], edges[1::2])]


def _peak_hz(seg: np.ndarray) -> float:
    spec = np.abs(np.fft.rfft(seg * np.hanning(len(seg))))
    return float(np.argmax(spec)) * SAMPLE_RATE / len(seg)


def _heard(name: str, x: np.ndarray) -> str:
    """The answer a simple signal analysis gives for a clip of task ``name`` (open answers)."""
    segs = _segments(x)
    if name == "beep_count":
        return str(len(segs))
    assert len(segs) == {"pitch_open": 1, "sweep_dir": 1, "odd_tone": 3}.get(name, 2), name
    if name == "pitch_open":
        return "high" if _peak_hz(segs[0]) > 800 else "low"
    if name == "sweep_dir":
        q = len(segs[0]) // 4
        return "up" if _peak_hz(segs[0][-q:]) > _peak_hz(segs[0][:q]) else "down"
    if name == "odd_tone":
        high = [_peak_hz(s) > 800 for s in segs]
        return ORDINALS[next(i for i, h in enumerate(high) if high.count(h) == 1)]
    measure = {"higher_tone": _peak_hz, "longer_tone": len, "louder_tone": lambda s: float(np.sqrt((s ** 2).mean()))}
    a, b = (measure[name](s) for s in segs)
    return "first" if a > b else "second"


@pytest.mark.parametrize("name", ["beep_count", "pitch_open", "sweep_dir", "higher_tone", "longer_tone",
                                  "louder_tone", "odd_tone"])
def test_labels_are_true_in_the_waveform(name):
    samples, metas = generate_task(AUDIO.tasks[name], 10, seed=7, split="wave")
    for s, m in zip(samples, metas):
        x, _ = sf.read(io.BytesIO(s["audio"]), dtype="float32")
        heard = _heard(name, x)
        if name == "odd_tone":  # the question names the odd pitch; the detector finds the odd one out
            assert heard == s["answer"], m["scene"]
        else:
            assert heard == s["answer"], (name, m["scene"])


# --------------------------------------------------------------------------- verifier
_SWAPS = [("high", "low"), ("low", "high"), ("short", "long"), ("long", "short"), ("loud", "quiet"),
          ("quiet", "loud"), ("up", "down"), ("down", "up"), ("first", "second"), ("second", "first"),
          ("third", "first")]


def _corrupt(step: str) -> str:
    """Make the step false: bump its number, or swap its last fact word."""
    nums = re.findall(r"\d+", step)
    if nums:
        return step.replace(nums[-1], str(int(nums[-1]) + 1))
    words = step.rstrip(".").split(" ")
    for i in range(len(words) - 1, -1, -1):
        for a, b in _SWAPS:
            if words[i] == a:
                return " ".join(words[:i] + [b] + words[i + 1:]) + "."
    raise AssertionError(step)


@pytest.mark.parametrize("name", list(AUDIO.tasks))
def test_verifier_gold_and_corruptions(name):
    for seed in range(3):
        sample, key = _one(name, seed)
        steps, answer = sample["steps"], sample["answer"]
        assert first_wrong_step(key, steps, answer) is None
        assert first_wrong_step(key, steps + ["An extra step."], answer) is None
        assert first_wrong_step(key, steps, "zzz") == len(steps)
        assert first_wrong_step(key, steps[:-1], answer) == len(steps) - 1
        assert first_wrong_step(key, [], answer) == 0
        sloppy = ["  " + s.upper().rstrip(".").replace(" ", "  ") + " " for s in steps]
        assert first_wrong_step(key, sloppy, " " + answer.lower() + ".") is None
        for k in range(len(steps)):
            bad = list(steps)
            bad[k] = _corrupt(steps[k])
            assert first_wrong_step(key, bad, answer) == k, (name, k, bad[k])
            bad[k] = "I am not sure."
            assert first_wrong_step(key, bad, answer) == k


def test_verifier_judges_facts_not_strings():
    # a true statement about the wrong tone is wrong (subject slot)
    sample, key = _one("longer_tone")
    scene = json.loads(key["scene"])
    second = scene["events"][1]["length"]
    assert first_wrong_step(key, [f"The second tone is {second}."] + sample["steps"][1:]) == 0
    # "So the first tone is higher" must hold in the scene, not just parse
    sample, key = _one("higher_tone", seed=1)
    top = sample["steps"][-1].split()[2]
    steps = sample["steps"][:-1] + [f"So the {'second' if top == 'first' else 'first'} tone is higher."]
    assert first_wrong_step(key, steps) == 2
    # the odd tone: naming the right position for the other pitch is wrong
    sample, key = _one("odd_tone_mc", seed=2)
    scene = json.loads(key["scene"])
    other = "low" if scene["query"]["pitch"] == "high" else "high"
    assert first_wrong_step(key, [sample["steps"][0].replace(scene["query"]["pitch"], other, 1)]) == 0
    # multiple choice answers in several spellings; the scene as a dict works too
    sample, key = _one("louder_tone_mc", seed=4)
    text = sample["options"]["AB".index(sample["answer"])]
    for ans in (sample["answer"].lower(), f"({sample['answer']})", text.upper()):
        assert first_wrong_step(key, sample["steps"], ans) is None, ans
    assert first_wrong_step({"task": key["task"], "scene": scene}, []) == 0
    with pytest.raises(ValueError, match="beep_count"):
        first_wrong_step({"task": "nope", "scene": "{}"}, [])


# --------------------------------------------------------------------------- export and CLI
def test_llamafactory_export_round_trip(world):
    out, _ = world
    recs = json.loads((out / "llava" / "target_louder_tone_mc_val.json").read_text())
    assert len(recs) == 10
    for r in recs:
        user, assistant = r["messages"]
        assert user["role"] == "user" and user["content"].startswith("<audio>") and assistant["role"] == "assistant"
        assert r["audios"] == [f"audios/{r['id']}.wav"] and len(r["options"]) == 2
    assert (out / "llava" / "corpus.json").exists() and (out / "llava" / "generic_train.json").exists()
    from mmtune.data.readers import iter_samples

    orig = {r["id"]: r for r in _rows(out / "targets" / "louder_tone_mc" / "val.parquet")}
    got = [res.sample for res in iter_samples(out / "llava" / "target_louder_tone_mc_val.json")]
    assert len(got) == 10
    for s in got:
        want = orig[s["id"]]
        assert all(s[k] == want[k] for k in ("task", "audio", "instruction", "response", "steps", "answer",
                                             "options")), s["id"]
        assert s["image"] is None


def test_cli_modality_flag(tmp_path, capsys):
    from mmtune.cli import main

    args = ["data", "skillworld", "--out", str(tmp_path), "--modality", "audio", "data.skillworld.corpus_per_task=10",
            "data.skillworld.generic_size=100", "data.skillworld.generic_eval_per_task=8",
            "data.skillworld.val_size=10", "data.skillworld.test_size=10", "data.skillworld.targets=[count_clip]"]
    assert main(args) == 0
    manifest = json.loads((tmp_path / "skillworld.json").read_text())
    assert manifest["modality"] == "audio" and manifest["counts"]["targets/count_clip/val"] == 10
    assert "targets/count_clip/val" in capsys.readouterr().out


def test_synthesis_speed():
    t0 = time.process_time()
    n = sum(len(generate_task(AUDIO.tasks[t], 20, seed=0, split="speed")[0]) for t in AUDIO.corpus_tasks)
    assert n == 20 * len(AUDIO.corpus_tasks)
    assert time.process_time() - t0 < 3.0  # ~0.4 ms per 2 s clip; 30k clips take ~15 s of CPU
