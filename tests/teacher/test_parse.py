"""Parsing against a corpus of messy, realistic teacher replies (tests/fixtures/teacher_replies.jsonl)."""

import json
from pathlib import Path

import pytest

from mmtune.teacher.parse import MAX_WORDS, parse_skill, parse_skills, parse_step_number

CASES = [json.loads(line) for line in
         (Path(__file__).parents[1] / "fixtures" / "teacher_replies.jsonl").read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("case", CASES, ids=[f"{c['kind']}-{i}" for i, c in enumerate(CASES)])
def test_reply_corpus(case):
    if case["kind"] == "skill":
        got = parse_skill(case["reply"])
    elif case["kind"] == "skills":
        got = parse_skills(case["reply"])
    else:
        got = parse_step_number(case["reply"], case["n"])
    assert got == case["expect"]


def test_corpus_covers_every_kind():
    kinds = {c["kind"] for c in CASES}
    assert kinds == {"skill", "skills", "step"}
    assert sum(c["expect"] is None for c in CASES if c["kind"] == "skill") >= 4  # refusals are tested too


def test_phrases_are_bounded_and_inert():
    long = " ".join(["word"] * (MAX_WORDS + 1))
    assert parse_skill(long) is None
    assert parse_skill("counting objects\nrm -rf /") == "counting objects"  # later lines never reach the caller
    assert parse_skills("a; b; c; d; e; f; g; h; i; j") == list("abcdefgh")  # capped at 8
