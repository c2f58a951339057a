"""The answer switch: find the step where a wrong answer went astray. Pure; no model here.

[paper] The teacher reads the question (no image) with a hint that favours the gold
answer, and the student's steps are appended one at a time. After each prefix the
teacher's probability over the candidate answers is read: the option letters of a
multiple-choice question, or {gold, prediction} shown as A/B for an open question.
The mistake step is the first step k where P(pred) - P(gold) > δ and stays so for λ
consecutive steps.

[ours]
- δ = 0.1 and λ = 2 by default (``teacher.delta``, ``teacher.switch_patience``).
- "Stays so for λ steps" is cut short by the end of the chain: a switch at step k holds
  when the condition is true at every step from k to min(k + λ - 1, n). Without this, a
  switch at the last step (the usual case for short chains) could never be detected.
- When the answer never switches, the mistake step is the step with the largest drop in
  P(gold) from the prefix before it (ties: the earliest).
- The order of {gold, prediction} for open questions is fixed by a hash of the item id, so
  that the hinted letter is A for about half the items and reruns are identical.
- Probabilities are renormalised over the candidates only. Raw scores are kept in the
  trace so another definition can be computed later.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from mmtune.data.answers import answers_match, normalize_answer

from .prompts import Template, numbered

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
NO_ANSWER = "(no answer)"


@dataclass(frozen=True)
class Candidates:
    labels: list[str]
    texts: list[str]
    gold: int
    pred: int

    def block(self) -> str:
        return "\n".join(f"{lab}. {txt}" for lab, txt in zip(self.labels, self.texts))


def _flip(key: str) -> bool:
    return hashlib.sha256(key.encode()).digest()[0] % 2 == 1


def candidates_for(item_id: str, gold: str, prediction: str | None,
                   options: Sequence[str] | None) -> Candidates:
    """The candidate answers the teacher chooses between.

    Multiple choice (options given and the gold answer is a letter): all options, with the
    prediction matched by letter or by option text; an answer matching no option is added
    as an extra candidate so that its probability can still be read. Otherwise the
    {gold, prediction} pair as A/B in an id-seeded order.
    """
    pred = prediction if prediction else NO_ANSWER
    g = normalize_answer(gold)
    if options and len(g) == 1 and g.isalpha() and ord(g) - ord("a") < len(options):
        texts = [str(o) for o in options]
        labels = list(LETTERS[:len(texts)])
        gi = ord(g) - ord("a")
        pi = next((i for i, lab in enumerate(labels) if answers_match(pred, lab, texts)), None)
        if pi is None:
            texts.append(pred)
            labels.append(LETTERS[len(labels)])
            pi = len(texts) - 1
        return Candidates(labels, texts, gi, pi)
    pair = [str(gold), pred]
    if _flip(item_id):
        pair.reverse()
    return Candidates(["A", "B"], pair, pair.index(str(gold)), 1 - pair.index(str(gold)))


def switch_prompts(template: Template, question: str, cands: Candidates, steps: Sequence[str],
                   hint_probability: float) -> list[str]:
    """One prompt per prefix: k = 0 (no steps) .. n (all steps)."""
    return [template.render(question=question, candidates=cands.block(),
                            hint_label=cands.labels[cands.gold],
                            hint_percent=round(100 * hint_probability),
                            steps=numbered(list(steps[:k])))
            for k in range(len(steps) + 1)]


@dataclass
class SwitchResult:
    step: int | None  # 1-based mistake step; None when there are no steps
    method: str  # "switch" | "fallback" | "no_steps"
    p_gold: list[float] = field(default_factory=list)  # after prefix k = 0..n
    p_pred: list[float] = field(default_factory=list)
    raw: list[list[float]] = field(default_factory=list)  # the backend's log-probs per prefix


def find_switch(p_gold: Sequence[float], p_pred: Sequence[float], delta: float,
                patience: int) -> SwitchResult:
    """Apply δ and λ to a trace of probabilities after prefixes k = 0..n (see module doc)."""
    if len(p_gold) != len(p_pred):
        raise ValueError(f"trace lengths differ: {len(p_gold)} P(gold) vs {len(p_pred)} P(pred)")
    n = len(p_gold) - 1
    pg, pp = [float(x) for x in p_gold], [float(x) for x in p_pred]
    if n < 1:
        return SwitchResult(None, "no_steps", pg, pp)
    above = [pp[k] - pg[k] > delta for k in range(n + 1)]
    for k in range(1, n + 1):
        if all(above[k:min(k + patience, n + 1)]):
            return SwitchResult(k, "switch", pg, pp)
    drops = [pg[k - 1] - pg[k] for k in range(1, n + 1)]
    return SwitchResult(1 + drops.index(max(drops)), "fallback", pg, pp)
