"""bench/step_accuracy.py: the verdicts on generated texts and their per-task shares."""

from __future__ import annotations

import random

import pytest

from bench import step_accuracy as sa
from mmtune.data.skillworld import generate_task
from mmtune.data.skillworld.tasks import TASKS


def _rows(task: str, n: int = 4):
    samples, metas = generate_task(TASKS[task], n, seed=0, split="test-bench")
    return samples, {m["id"]: m["scene"] for m in metas}


def test_judge_tells_the_steps_from_the_answer():
    rows, scenes = _rows("count_mc")
    gold = [r["response"] for r in rows]
    assert [v["correct"] and v["steps_ok"] for v in sa.judge(rows, gold, scenes)] == [True] * 4

    # right steps, wrong letter: what the generic student does on count_mc
    def other_letter(r):
        return next(x for x in "ABCD" if x != r["answer"])
    wrong_letter = ["\n".join([*r["steps"], f"Answer: {other_letter(r)}"]) for r in rows]
    verdicts = sa.judge(rows, wrong_letter, scenes)
    assert all(v["steps_ok"] and not v["correct"] for v in verdicts)

    # a wrong count in the steps, the gold letter: steps wrong, answer right
    lucky = []
    for r in rows:
        n = int(r["steps"][1].split()[2])
        lucky.append("\n".join([r["steps"][0], f"That makes {n % 4 + 1} in total.", f"Answer: {r['answer']}"]))
    verdicts = sa.judge(rows, lucky, scenes)
    assert all(v["correct"] and not v["steps_ok"] for v in verdicts)

    # no answer line at all: neither counted right
    assert not any(v["correct"] for v in sa.judge(rows, [r["steps"][0] for r in rows], scenes))


def test_judge_needs_one_text_per_row():
    rows, scenes = _rows("color_at_pos", 2)
    with pytest.raises(ValueError):
        sa.judge(rows, ["Answer: red"], scenes)


def test_tally_shares_per_task():
    items = ([{"task": "a", "correct": True, "steps_ok": True}] * 2
             + [{"task": "a", "correct": False, "steps_ok": True}]
             + [{"task": "a", "correct": True, "steps_ok": False}]
             + [{"task": "b", "correct": False, "steps_ok": False}])
    random.Random(0).shuffle(items)
    t = sa.tally(items)
    assert list(t) == ["a", "b"]
    assert t["a"] == {"n": 4, "answer": 0.75, "steps": 0.75, "steps ok, answer wrong": 0.25,
                      "steps wrong, answer ok": 0.25}
    assert t["b"]["n"] == 1 and t["b"]["answer"] == t["b"]["steps"] == 0.0
    table = sa.format_table(t)
    assert table.splitlines()[2] == "| a | 4 | 0.750 | 0.750 | 0.250 | 0.250 |"
