"""Answer extraction and matching: ``Answer: X`` robust to case, spacing and punctuation."""

from __future__ import annotations

import re
from typing import Sequence

_ANSWER = re.compile(r"answer\s*(?:is)?\s*[:：]\s*([^\n]*)", re.IGNORECASE)
_LETTER = re.compile(r"^\(?([A-Za-z])\)?(?:[.):]|\s|$)")


def normalize_answer(text: str) -> str:
    """Lower-case, collapse whitespace, strip quotes and trailing punctuation."""
    t = " ".join(text.strip().split()).lower()
    t = t.strip("\"'`*")
    return t.rstrip(" .!;,")


def extract_answer(text: str) -> str | None:
    """The answer after the *last* ``Answer:`` marker, or None when there is none.

    The last one wins because step-by-step outputs sometimes restate intermediate
    answers; a model that never writes the marker gets None (scored wrong), not a guess.
    """
    matches = _ANSWER.findall(text)
    if not matches:
        return None
    ans = normalize_answer(matches[-1])
    return ans or None


def answers_match(pred: str | None, gold: str, options: Sequence[str] | None = None) -> bool:
    """Compare a prediction with the gold answer.

    For multiple choice (``options`` given and the gold answer is a letter) a prediction
    may be the letter ("B", "(B)", "B. circle") or the option's text ("circle").
    """
    if pred is None:
        return False
    p, g = normalize_answer(pred), normalize_answer(gold)
    if p == g:
        return True
    if options and len(g) == 1 and g.isalpha():
        m = _LETTER.match(p)
        if m and m.group(1).lower() == g:
            return True
        idx = ord(g) - ord("a")
        if 0 <= idx < len(options) and p == normalize_answer(options[idx]):
            return True
    return False


def majority_baseline(answers: Sequence[str]) -> float:
    """Accuracy of always answering the most frequent gold answer of the split."""
    if not answers:
        return float("nan")
    counts: dict[str, int] = {}
    for a in answers:
        k = normalize_answer(a)
        counts[k] = counts.get(k, 0) + 1
    return max(counts.values()) / len(answers)
