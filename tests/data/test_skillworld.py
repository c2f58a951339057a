"""SkillWorld generator, registry and verifier (small sizes: the whole file runs in seconds)."""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections import Counter

import pyarrow.parquet as pq
import pytest
from PIL import Image

from mmtune.config import SkillWorldConfig
from mmtune.data.schema import SAMPLE_SCHEMA
from mmtune.data.skillworld import (CORPUS_TASKS, DEFAULT_TARGETS, FORMAT_SKILLS, GENERIC_WEIGHTS, RARE_SKILLS, SKILLS, STEPS,
                                    TARGET_TASKS, TASKS, digit_pools, first_wrong_step, generate_skillworld,
                                    generate_task, majority_baseline, parse_step)

SMALL = dict(corpus_per_task=24, generic_size=300, generic_eval_per_task=8, val_size=12, test_size=16)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("sw")
    manifest = generate_skillworld(SkillWorldConfig(**SMALL), out, llava_json=True)
    return out, manifest


def _content_hash(root) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*.parquet")):
        rows = pq.read_table(p).to_pylist()
        h = hashlib.sha256()
        for r in rows:
            h.update(repr(sorted(r.items())).encode())
        out[str(p.relative_to(root))] = h.hexdigest()
    return out


# --------------------------------------------------------------------------- generation
def test_layout_schema_and_manifest(world):
    out, m = world
    assert pq.read_schema(next((out / "corpus").glob("part-*.parquet"))).equals(SAMPLE_SCHEMA)
    corpus = pq.read_table(out / "corpus").to_pylist()
    assert len(corpus) == SMALL["corpus_per_task"] * len(CORPUS_TASKS)
    assert all(r["skills"] == [] and r["source"] == "skillworld" for r in corpus)
    ids = [r["id"] for p in out.rglob("*.parquet") if "meta" not in p.parts for r in pq.read_table(p).to_pylist()]
    assert len(ids) == len(set(ids))
    for t in DEFAULT_TARGETS:
        for split, n in (("val", SMALL["val_size"]), ("test", SMALL["test_size"])):
            assert pq.read_table(out / "targets" / t / f"{split}.parquet").num_rows == n
            meta = pq.read_table(out / "meta" / "targets" / t / f"{split}.parquet").to_pylist()
            assert len(meta) == n and all(r["task"] == t for r in meta)
    assert sum(pq.read_table(p).num_rows for p in (out / "generic").glob("train-*.parquet")) == SMALL["generic_size"]
    assert pq.read_table(out / "generic" / "eval.parquet").num_rows == 8 * len(CORPUS_TASKS)
    disk = json.loads((out / "skillworld.json").read_text())
    assert disk["version"] == m["version"] and set(disk["skills"]) == set(SKILLS)
    assert m["counts"]["corpus"] == len(corpus) and m["counts"]["targets/count_grid/val"] == SMALL["val_size"]
    assert m["splits"]["corpus"]["tasks"]["parity_open"]["majority_baseline"] == 0.5
    # each row is self-consistent: response = steps + answer, mc answer is a letter of options
    for r in corpus:
        assert r["response"].splitlines() == [*r["steps"], f"Answer: {r['answer']}"]
        if r["options"]:
            assert r["answer"] in "ABCD"[:len(r["options"])] and "A. " in r["instruction"]
        assert "<image>" not in r["instruction"]


def test_deterministic_and_seed_sensitive(tmp_path):
    cfg = SkillWorldConfig(**SMALL)
    generate_skillworld(cfg, tmp_path / "a")
    generate_skillworld(cfg, tmp_path / "b")
    generate_skillworld(cfg.model_copy(update={"seed": 1}), tmp_path / "c")
    a, b, c = (_content_hash(tmp_path / x) for x in "abc")
    assert a == b
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.parquet"))
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    assert set(a) == set(c) and all(a[k] != c[k] for k in a)


def test_answers_balanced_per_task():
    for name, task in TASKS.items():
        n = 40 * len(task.values)
        samples, _ = generate_task(task, n, seed=3, split="t", pool="target" if task.kind == "target" else "corpus")
        counts = Counter(s["answer"] for s in samples)
        expected = len(task.values) if task.fmt != "mc" else task.n_options
        assert len(counts) == expected, (name, counts)
        assert max(counts.values()) / min(counts.values()) <= 1.5, (name, counts)
        if task.fmt == "mc":  # the option *texts* are balanced too, not just the letters
            texts = Counter(s["options"]["ABCD".index(s["answer"])] for s in samples)
            assert max(texts.values()) - min(texts.values()) <= 1, (name, texts)


def test_registry_coverage():
    assert len(CORPUS_TASKS) >= 16 and len(SKILLS) >= 8
    per_skill = Counter(s for t in CORPUS_TASKS for s in TASKS[t].skills)
    assert set(per_skill) == set(SKILLS) and min(per_skill.values()) >= 2, per_skill
    for skill in SKILLS:  # >= 2 phrasings and, across them, >= 2 answer formats (a format's own skill: 1)
        tasks = [TASKS[t] for t in CORPUS_TASKS if skill in TASKS[t].skills]
        assert len({t.question for t in tasks}) >= 2, skill
        assert len({t.fmt for t in tasks}) >= (1 if skill in FORMAT_SKILLS else 2), skill
    assert TASKS["count_mc"].reasoning_chain == TASKS["count_yesno"].reasoning_chain == TASKS["count_objects"].chain
    assert FORMAT_SKILLS < set(SKILLS) and not FORMAT_SKILLS & RARE_SKILLS
    corpus_questions = {TASKS[t].question for t in CORPUS_TASKS}
    # a chain less its answer-format step (option/check), which every format's tasks share
    corpus_chains = {TASKS[t].reasoning_chain for t in CORPUS_TASKS}
    corpus_steps = {k for t in CORPUS_TASKS for k in TASKS[t].chain}
    assert set(DEFAULT_TARGETS) <= set(TARGET_TASKS) and len(TARGET_TASKS) > len(DEFAULT_TARGETS)
    for t in TARGET_TASKS:
        task = TASKS[t]
        assert task.question not in corpus_questions
        assert task.reasoning_chain in corpus_chains and set(task.chain) <= corpus_steps  # known steps, new phrasing/format
        assert set(task.skills) <= set(per_skill)
    rare = [t for t in DEFAULT_TARGETS if TASKS[t].rare]
    assert len(rare) == 2 and len(DEFAULT_TARGETS) - len(rare) == 2


def test_unknown_target_lists_known(tmp_path):
    with pytest.raises(ValueError, match="parity_choice"):
        generate_skillworld(SkillWorldConfig(**SMALL, targets=["nope"]), tmp_path)
    m = generate_skillworld(SkillWorldConfig(**SMALL, targets=["size_check", "add_check"]), tmp_path)
    assert m["targets"] == ["size_check", "add_check"]
    assert (tmp_path / "targets" / "add_check" / "test.parquet").exists()


def test_digit_split_disjoint(world):
    pools = digit_pools()
    corpus = {i for v in pools["corpus"].values() for i in v}
    target = {i for v in pools["target"].values() for i in v}
    assert not corpus & target and len(corpus | target) == 1797
    assert 0.25 < len(target) / 1797 < 0.35
    from sklearn.datasets import load_digits  # our direct read of the bundled file is the same data

    from mmtune.data.skillworld.scenes import _load_digits
    images, labels = _load_digits()
    d = load_digits()
    assert (images == d.images).all() and (labels == d.target).all()
    out, _ = world

    def used(pattern):
        return {d["index"] for p in (out / "meta").glob(pattern) for r in pq.read_table(p).to_pylist()
                if (sc := json.loads(r["scene"]))["kind"] == "digits" for d in sc["digits"]}
    train = used("corpus/*.parquet") | used("generic/*.parquet")
    tgt = used("targets/*/*.parquet")
    assert train and tgt and train <= corpus and tgt <= target


def test_images_decode_to_size(tmp_path, world):
    out, _ = world
    for r in pq.read_table(out / "generic" / "eval.parquet").to_pylist()[::7]:
        im = Image.open(io.BytesIO(r["image"]))
        assert im.format == "PNG" and im.size == (32, 32) and im.mode == "RGB"
    s, _ = generate_task(TASKS["count_objects"], 2, seed=0, split="x", image_size=48)
    s2, _ = generate_task(TASKS["add_open"], 2, seed=0, split="x", image_size=48)
    assert {Image.open(io.BytesIO(x["image"])).size for x in s + s2} == {(48, 48)}


def test_generic_weights_long_tailed(world):
    assert set(GENERIC_WEIGHTS) == set(CORPUS_TASKS)
    rare = [GENERIC_WEIGHTS[t] for t in CORPUS_TASKS if TASKS[t].rare]
    common = [GENERIC_WEIGHTS[t] for t in CORPUS_TASKS if not TASKS[t].rare]
    assert rare and common and max(rare) * 5 <= min(common)
    assert {s for t in CORPUS_TASKS if TASKS[t].rare for s in TASKS[t].skills} & RARE_SKILLS == RARE_SKILLS
    _, m = world
    counts = m["splits"]["generic/train"]["tasks"]
    assert counts["parity_open"]["rows"] < counts["color_of_shape"]["rows"] / 5


def test_llava_export(world):
    out, _ = world
    recs = json.loads((out / "llava" / "target_parity_choice_val.json").read_text())
    assert len(recs) == SMALL["val_size"]
    for r in recs:
        assert {"id", "image", "conversations"} <= set(r) and r["task"] == "parity_choice" and len(r["options"]) == 2
        human, gpt = r["conversations"]
        assert human["from"] == "human" and human["value"].startswith("<image>\n")
        assert gpt["from"] == "gpt" and gpt["value"].splitlines()[-1].startswith("Answer: ")
        assert Image.open(out / "llava" / r["image"]).size == (32, 32)
    assert (out / "llava" / "corpus.json").exists() and (out / "llava" / "generic_train.json").exists()
    from mmtune.data.readers import iter_samples  # mmtune's own reader recovers the samples

    orig = {r["id"]: r for r in pq.read_table(out / "targets" / "parity_choice" / "val.parquet").to_pylist()}
    for res in iter_samples(out / "llava" / "target_parity_choice_val.json"):
        got, want = res.sample, orig[res.sample["id"]]
        assert all(got[k] == want[k] for k in ("task", "image", "instruction", "response", "steps", "answer", "options"))


def test_generation_speed():
    t0 = time.process_time()
    n = 0
    for name in CORPUS_TASKS:
        n += len(generate_task(TASKS[name], 100, seed=0, split="speed")[0])
    assert n == 100 * len(CORPUS_TASKS)
    assert time.process_time() - t0 < 5.0  # ~0.2 ms/sample; 60k samples well under a minute


# --------------------------------------------------------------------------- verifier
def _one(name: str, seed: int = 0):
    task = TASKS[name]
    s, m = generate_task(task, 1, seed=seed, split="v", pool="target" if task.kind == "target" else "corpus")
    return s[0], {"task": name, "scene": m[0]["scene"]}


@pytest.mark.parametrize("name", list(TASKS))
def test_verifier_gold_and_corruptions(name):
    for seed in range(3):
        sample, key = _one(name, seed)
        steps, answer = sample["steps"], sample["answer"]
        assert first_wrong_step(key, steps, answer) is None
        assert first_wrong_step(key, steps) is None
        assert first_wrong_step(key, steps + ["An extra step."], answer) is None
        assert first_wrong_step(key, steps, "zzz") == len(steps)
        assert first_wrong_step(key, steps[:-1], answer) == len(steps) - 1  # missing step
        assert first_wrong_step(key, [], answer) == 0
        # case, spacing and trailing period do not matter
        sloppy = ["  " + s.upper().rstrip(".").replace(" ", "  ") + " " for s in steps]
        assert first_wrong_step(key, sloppy, " " + answer.lower() + ".") is None
        for k in range(len(steps)):
            bad = list(steps)
            bad[k] = _corrupt(steps[k])
            assert first_wrong_step(key, bad, answer) == k, (name, k, bad[k])
            bad[k] = "I am not sure."
            assert first_wrong_step(key, bad, answer) == k


_SWAPS = [("circle", "square"), ("square", "triangle"), ("triangle", "circle"), ("red", "green"),
          ("green", "blue"), ("blue", "yellow"), ("yellow", "red"), ("small", "large"), ("large", "small"),
          ("odd", "even"), ("even", "odd"), ("top left", "bottom right"), ("top right", "bottom left"),
          ("bottom left", "top right"), ("bottom right", "top left")]


def _corrupt(step: str) -> str:
    """Change the step's first fact (a word or the last number) so it is false."""
    import re
    nums = re.findall(r"\d+", step)
    if nums:  # bump the last number: for "a plus b is s" that breaks the sum
        last = nums[-1]
        i = step.rfind(last)
        return step[:i] + str(int(last) + 1) + step[i + len(last):]
    if step.startswith("Objects are in:"):
        return step.rstrip(".") + ", top left, top left."  # duplicate cell: never right
    for a, b in _SWAPS:
        for word in (a, a.capitalize()):
            if word in step:
                return step.replace(word, b if word == a else b.capitalize(), 1)
    raise AssertionError(step)


@pytest.mark.parametrize("name", [t for t in TASKS if TASKS[t].fmt in ("mc", "yesno")])
def test_answer_format_steps(name):
    """Multiple-choice chains end with the option step, yes/no chains (but two) with the check
    step; the verifier judges the mapping itself, not the words."""
    task = TASKS[name]
    for seed in range(4):
        sample, key = _one(name, seed)
        scene, steps, answer = json.loads(key["scene"]), list(sample["steps"]), sample["answer"]
        last = steps[-1]
        if task.fmt == "mc":
            letter = answer
            value = scene["query"]["options"]["ABCDEFGH".index(letter)]
            assert task.chain[-1] == "option" and last == f"{value} is option {letter}."
            wrong = next(x for x in "ABCDEFGH"[:len(scene["query"]["options"])] if x != letter)
            steps[-1] = f"{value} is option {wrong}."
            assert first_wrong_step(key, steps, answer) == len(steps) - 1
            steps[-1] = f"{value.upper()} is option {letter.lower()}"  # case and the period do not matter
            assert first_wrong_step(key, steps, answer) is None
        elif task.chain[-1] == "check":
            found, rel, asked = parse_step("check", last).values()
            assert (rel == "is") == (answer == "yes") and (found == asked) == (answer == "yes")
            steps[-1] = f"{found} {'is not' if rel == 'is' else 'is'} {asked}."  # the wrong relation
            assert first_wrong_step(key, steps, answer) == len(steps) - 1
        else:
            assert name in ("compare_yesno", "size_check"), "a yes/no chain without the check step"


def test_verifier_judges_facts_not_strings():
    sample, key = _one("count_objects")
    scene = json.loads(key["scene"])
    occupied = [p for p, o in zip(("top left", "top right", "bottom left", "bottom right"), scene["cells"]) if o]
    steps = list(sample["steps"])
    steps[0] = "objects are in: " + " and ".join(reversed(occupied))  # other order, 'and', no period
    assert first_wrong_step(key, steps, sample["answer"]) is None
    sample, key = _one("compare_larger")
    a, b = (d["value"] for d in json.loads(key["scene"])["digits"])
    steps = list(sample["steps"])
    steps[2] = f"{min(a, b)} is larger than {max(a, b)}."  # parses, but false
    assert first_wrong_step(key, steps) == 2
    sample, key = _one("add_open", seed=5)
    a, b = (d["value"] for d in json.loads(key["scene"])["digits"])
    steps = list(sample["steps"])
    steps[2] = f"{b} plus {a} is {a + b}"  # operands swapped is still right
    assert first_wrong_step(key, steps, sample["answer"]) is None
    # a true statement about the wrong subject is wrong
    sample, key = _one("color_of_shape")
    scene = json.loads(key["scene"])
    others = [(p, o) for p, o in zip(("top left", "top right", "bottom left", "bottom right"), scene["cells"])
              if o and o["shape"] != scene["query"]["shape"]]
    if others:
        p, o = others[0]
        assert first_wrong_step(key, [f"The {o['shape']} is in the {p} cell."] + sample["steps"][1:]) == 0
    # multiple choice accepts the letter in several spellings, or the option text
    sample, key = _one("color_of_shape_mc")
    letter = sample["answer"]
    text = sample["options"]["ABCD".index(letter)]
    for ans in (letter, letter.lower(), f"({letter})", f"{letter}. {text}", text.upper()):
        assert first_wrong_step(key, sample["steps"], ans) is None, ans
    wrong = next(x for x in "ABCD" if x != letter)
    assert first_wrong_step(key, sample["steps"], wrong) == len(sample["steps"])
    # scene as a dict works too
    assert first_wrong_step({"task": key["task"], "scene": json.loads(key["scene"])}, sample["steps"]) is None


def test_parse_step_and_majority():
    assert parse_step("add", " 3 PLUS 4 is 7 ") == {"a": 3, "b": 4, "s": 7}
    assert parse_step("color_at", "The object in the top left cell is purple.") is None
    assert set(STEPS) >= {k for t in TASKS.values() for k in t.chain}
    assert majority_baseline(["a", "b", "a", "c"]) == 0.5
