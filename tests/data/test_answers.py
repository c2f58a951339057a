import pytest

from mmtune.data.answers import answers_match, extract_answer, majority_baseline, normalize_answer


@pytest.mark.parametrize("text,expected", [
    ("The digit is 7.\n7 is odd.\nAnswer: odd", "odd"),
    ("answer:ODD", "odd"),
    ("ANSWER :  Top Left.", "top left"),
    ("Answer: 2\nAnswer: 3", "3"),  # the last marker wins
    ("The answer is: B", "b"),
    ("Answer：yes", "yes"),  # full-width colon
    ("I think it is red", None),
    ("Answer:   ", None),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_normalize():
    assert normalize_answer('  "Top   Left."  ') == "top left"


@pytest.mark.parametrize("pred,gold,options,ok", [
    ("odd", "odd", None, True),
    ("even", "odd", None, False),
    ("b", "B", ["circle", "square", "triangle"], True),
    ("(b)", "B", ["circle", "square", "triangle"], True),
    ("b. square", "B", ["circle", "square", "triangle"], True),
    ("square", "B", ["circle", "square", "triangle"], True),
    ("circle", "B", ["circle", "square", "triangle"], False),
    ("bee", "B", ["circle", "square", "triangle"], False),
    (None, "odd", None, False),
])
def test_answers_match(pred, gold, options, ok):
    assert answers_match(pred, gold, options) is ok


def test_majority_baseline():
    assert majority_baseline(["a", "b", "a", "A "]) == 0.75
    assert majority_baseline(["x"]) == 1.0
