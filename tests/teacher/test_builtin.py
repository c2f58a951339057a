"""The built-in teacher: trained by `mmtune teacher train` on corpus tasks only, saved as an
HF directory, loaded through the hf backend, cached by config."""

import json

import pytest

from mmtune.cli import main
from mmtune.config import load_config
from mmtune.data.skillworld import CORPUS_TASKS, TARGET_TASKS
from mmtune.teacher import HFBackend, Teacher, make_backend
from mmtune.teacher.builtin import _teacher_items, build_examples, teacher_dir

TINY = ["teacher.builtin.samples_per_task=10", "teacher.builtin.steps=4", "teacher.builtin.batch_size=4",
        "teacher.builtin.hidden=32", "teacher.builtin.layers=1", "teacher.builtin.heads=2",
        "teacher.builtin.intermediate=64", "teacher.builtin.vocab_size=400"]


@pytest.fixture(scope="module")
def cfg_args(tmp_path_factory):
    return ["--config", "configs/demo.yaml", f"run.cache_dir={tmp_path_factory.mktemp('cache')}", *TINY]


def test_examples_never_show_targets_and_use_the_prompt_files(cfg_args):
    cfg = load_config(cfg_args[1], cfg_args[2:])
    items = _teacher_items(cfg)
    assert {it["task"] for it in items} == set(CORPUS_TASKS)
    assert not {it["task"] for it in items} & set(TARGET_TASKS)
    assert all(it["id"].startswith("sw-teacher-") for it in items)  # its own split, not the pool's rows
    ex = build_examples(cfg, items, 400, seed=0)
    kinds = {"Reasoning so far:": 0, "Mistake at step": 0, "List the general skills": 0, "first wrong one": 0}
    for prompt, target in ex:
        for k in kinds:
            kinds[k] += k in prompt
        assert target.startswith(" ")
    assert all(v > 0 for v in kinds.values()), kinds
    assert build_examples(cfg, items, 50, seed=0) == ex[:50]  # deterministic


def test_skill_examples_over_off_task_chains_keep_the_questions_skill(cfg_args):
    """A student that answers a counting question with a digit step lacks counting: off-task
    examples pair another task's step with the skill the question needs at that step."""
    import re

    cfg = load_config(cfg_args[1], [*cfg_args[2:], "teacher.builtin.offtask_fraction=1"])
    items = _teacher_items(cfg)
    by_question = {it["question"].splitlines()[0]: it for it in items}  # one task per question wording
    checked = off = 0
    for prompt, target in build_examples(cfg, items, 400, seed=1):
        if "Mistake at step" not in prompt:
            continue
        question = re.search(r"^Question: (.*)$", prompt, re.M).group(1)
        step = re.search(r"^Mistake at step (\d+): (.*)$", prompt, re.M)
        it = by_question[question]
        own = {s for o in items if o["task"] == it["task"] for s in o["steps"]}
        off += step.group(2) not in own  # another task's step (tasks may share a step kind)
        assert target == " " + it["skills"][int(step.group(1)) - 1]  # target: this question's skill
        checked += 1
    assert checked > 40 and off > checked / 2


def test_teacher_train_cli_saves_a_loadable_hf_model(cfg_args, capsys):
    assert main(["teacher", "train", *cfg_args]) == 0
    cfg = load_config(cfg_args[1], cfg_args[2:])
    out = teacher_dir(cfg)
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()
    meta = json.loads((out / "mmtune_teacher.json").read_text())
    assert meta["items"] == 10 * len(CORPUS_TASKS) and meta["prompt_version"] == "v1"
    backend = make_backend(cfg.teacher, out)
    assert isinstance(backend, HFBackend) and not backend.use_chat
    (scores,) = backend.score_options(["Answer:"], [["yes", "no"]])
    assert len(scores) == 2
    assert Teacher(backend, cfg.teacher).annotate([{"id": "x", "instruction": "q", "response": "r"}])
    capsys.readouterr()
    assert main(["teacher", "train", *cfg_args]) == 0
    assert "cached" in capsys.readouterr().out


def test_teacher_train_refuses_other_backends(cfg_args, capsys):
    assert main(["teacher", "train", *cfg_args, "teacher.backend=hf", "teacher.name_or_path=x"]) == 2
    assert "trains the built-in teacher" in capsys.readouterr().err


def test_backend_config_errors(capsys):
    assert main(["config", "show", "configs/demo.yaml", "teacher.backend=openai"]) == 2
    assert "teacher.base_url" in capsys.readouterr().err
