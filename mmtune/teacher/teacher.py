"""The teacher protocol over any backend: answer switch, skill analysis, annotation.

``Teacher`` is plain Python: the Serve deployment, the Ray Data annotation actors and the
tests all wrap the same object. Items are dicts:

- wrong item: ``id``, ``question``, ``steps`` (the student's), ``prediction`` (the
  student's extracted answer or None), ``gold``, ``options`` (None unless multiple choice);
- corpus sample: ``id``, ``instruction``, ``response``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from mmtune.config import TeacherConfig

from .backend import TeacherBackend, TeacherError
from .parse import parse_skill, parse_skills, parse_step_number
from .prompts import load_template, numbered
from .switch import (
    Candidates,
    SwitchResult,
    candidates_for,
    find_switch,
    switch_prompts,
)

RETRY_TEMPERATURE = 0.7  # re-asks after an unparseable reply sample, so they can differ


def normalise(logprobs: Sequence[float]) -> list[float]:
    """Softmax over the candidates' log-probabilities (uniform when every one is -inf)."""
    m = max(logprobs)
    if m == float("-inf"):
        return [1.0 / len(logprobs)] * len(logprobs)
    e = [math.exp(x - m) for x in logprobs]
    z = sum(e)
    return [x / z for x in e]


@dataclass
class Analysis:
    """One wrong item's analysis: the Diagnosis columns the teacher fills."""

    id: str
    mistake_step: int | None
    switch_method: str
    switch_trace: dict[str, Any]
    missing_skill: str | None
    teacher_raw: str
    status: str  # ok | unparsed | skipped
    reason: str = ""
    prompts: dict[str, str] = field(default_factory=dict)  # template ids used

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _backend_name(backend: Any) -> str:
    return str(getattr(backend, "name", type(backend).__name__))


def _sized(x: Any) -> bool:
    """A list, tuple or array of values (not a string)."""
    return hasattr(x, "__len__") and hasattr(x, "__iter__") and not isinstance(x, (str, bytes, dict))


def check_scores(scores: Any, labels: Sequence[Sequence[str]], backend: Any) -> list[list[float]]:
    """The backend's option scores, or TeacherError when they are not one list of numbers
    (log-probabilities: finite or -inf) per prompt and option. Garbage never reaches the
    answer switch, where it would turn into a wrong mistake step."""
    where = f"the teacher backend {_backend_name(backend)!r}"
    fix = "check the teacher's model or server (teacher.backend, teacher.name_or_path, teacher.base_url)"
    if not _sized(scores) or len(scores) != len(labels):
        n = len(scores) if _sized(scores) else type(scores).__name__
        raise TeacherError(f"{where} returned {n} option-score lists for {len(labels)} prompts; {fix}")
    out = []
    for i, (s, opts) in enumerate(zip(scores, labels)):
        if not _sized(s) or len(s) != len(opts):
            raise TeacherError(f"{where} returned {str(s)[:80]} as the scores of prompt {i}'s {len(opts)} options; "
                               f"{fix}")
        try:
            vals = [float(v) for v in s]
        except (TypeError, ValueError):
            raise TeacherError(f"{where} returned non-numeric scores {str(s)[:80]} for prompt {i}; {fix}") from None
        if any(math.isnan(v) or v == float("inf") for v in vals):
            raise TeacherError(f"{where} returned invalid log-probabilities {vals} for prompt {i} "
                               f"(NaN or +inf); {fix}")
        out.append(vals)
    return out


def check_replies(replies: Any, n: int, backend: Any) -> list[str]:
    """The backend's generated texts, or TeacherError when they are not ``n`` strings.
    (An unparseable *string* is not an error: the item is recorded with its raw reply.)"""
    where = f"the teacher backend {_backend_name(backend)!r}"
    if not _sized(replies) or len(replies) != n:
        got = len(replies) if _sized(replies) else type(replies).__name__
        raise TeacherError(f"{where} returned {got} replies for {n} prompts; check the teacher's model or server")
    bad = [type(r).__name__ for r in replies if not isinstance(r, str)]
    if bad:
        raise TeacherError(f"{where} returned a {bad[0]} where a text reply belongs; check the "
                           "teacher's model or server")
    return list(replies)


class Teacher:
    def __init__(self, backend: TeacherBackend, cfg: TeacherConfig):
        self.backend = backend
        self.cfg = cfg
        v = cfg.prompt_version
        self.by_text = cfg.score_candidates == "text"
        self.t_switch = load_template("answer_switch_text" if self.by_text else "answer_switch", v)
        self.t_skill = load_template("skill_analysis", v)
        self.t_annotate = load_template("annotate", v)
        self.t_which = load_template("which_step", v)

    # ------------------------------------------------------------------ answer switch
    def answer_switch(self, items: Sequence[dict[str, Any]]) -> list[tuple[SwitchResult, Candidates]]:
        """All prefixes of all items go to the backend as one batch of scoring calls."""
        cands = [candidates_for(str(it["id"]), str(it["gold"]), it.get("prediction"), it.get("options"))
                 for it in items]
        prompts, labels, owner = [], [], []
        for i, (it, c) in enumerate(zip(items, cands)):
            for p in switch_prompts(self.t_switch, str(it["question"]), c, list(it["steps"]),
                                    self.cfg.hint_probability):
                prompts.append(p)
                labels.append(c.texts if self.by_text else c.labels)
                owner.append(i)
        scores = check_scores(self.backend.score_options(prompts, labels), labels, self.backend) if prompts else []
        traces: list[list[list[float]]] = [[] for _ in items]
        for i, s in zip(owner, scores):
            traces[i].append(s)
        out = []
        for c, tr in zip(cands, traces):
            probs = [normalise(s) for s in tr]
            res = find_switch([p[c.gold] for p in probs], [p[c.pred] for p in probs],
                              self.cfg.delta, self.cfg.switch_patience)
            res.raw = tr
            out.append((res, c))
        return out

    # ------------------------------------------------------------------ generation with re-asks
    def _ask(self, prompts: list[str], parse) -> list[tuple[Any, str, int]]:
        """(parsed or None, raw reply of the last attempt, attempts) per prompt. Unparseable
        replies are re-asked up to ``parse_retries`` times, sampling at RETRY_TEMPERATURE."""
        results: list[tuple[Any, str, int]] = [(None, "", 0)] * len(prompts)
        todo = list(range(len(prompts)))
        for attempt in range(self.cfg.parse_retries + 1):
            if not todo:
                break
            temp = 0.0 if attempt == 0 else RETRY_TEMPERATURE
            replies = check_replies(self.backend.generate([prompts[i] for i in todo], temperature=temp),
                                    len(todo), self.backend)
            still = []
            for i, raw in zip(todo, replies):
                val = parse(raw)
                results[i] = (val, raw, attempt + 1)
                if not val:
                    still.append(i)
            todo = still
        return results

    def skill_prompt(self, item: dict[str, Any], step: int) -> str:
        steps = list(item["steps"])
        return self.t_skill.render(question=item["question"], steps=numbered(steps), mistake_index=step,
                                   mistake_step=steps[step - 1], gold=item["gold"],
                                   prediction=item.get("prediction") or "(no answer)")

    def skills_for_steps(self, items: Sequence[dict[str, Any]],
                         steps: Sequence[int]) -> list[tuple[str | None, str, int]]:
        return self._ask([self.skill_prompt(it, s) for it, s in zip(items, steps)], parse_skill)

    # ------------------------------------------------------------------ the whole analysis
    def analyse(self, items: Sequence[dict[str, Any]], locate: str = "switch", seed: int = 0) -> list[Analysis]:
        """Mistake step (``locate``: switch | which_step | random) and missing skill per item."""
        ids = {"locate": self.t_switch.id if locate == "switch" else self.t_which.id if locate == "which_step"
               else "random", "skill": self.t_skill.id}
        out: list[Analysis | None] = [None] * len(items)
        live = []
        for i, it in enumerate(items):
            if not list(it["steps"]):
                out[i] = Analysis(str(it["id"]), None, "no_steps", {}, None, "", "skipped",
                                  "the student wrote no reasoning steps, so there is no step to blame", ids)
            else:
                live.append(i)
        sub = [items[i] for i in live]
        steps, methods, traces = self.locate(sub, locate, seed)
        located = [j for j, s in enumerate(steps) if s is not None]
        asked = self.skills_for_steps([sub[j] for j in located], [steps[j] for j in located]) if located else []
        skills: list[tuple[str | None, str, int]] = [(None, traces[j].get("raw", ""), 0) for j in range(len(sub))]
        for j, got in zip(located, asked):
            skills[j] = got
        for i, step, method, trace, (skill, raw, tries) in zip(live, steps, methods, traces, skills):
            ok = skill is not None
            out[i] = Analysis(str(items[i]["id"]), step, method, trace, skill, raw,
                              "ok" if ok else "unparsed",
                              "" if ok else f"no skill phrase in the reply after {tries} attempt(s)" if step
                              else "no step number in the teacher's reply", ids)
        return [a for a in out if a is not None]

    def locate(self, items: Sequence[dict[str, Any]], how: str = "switch",
               seed: int = 0) -> tuple[list[int | None], list[str], list[dict[str, Any]]]:
        """The mistake step of each item by one of three methods (the localisation benchmark
        compares them): the answer switch, asking the teacher, or a random step. Asking can
        give None (no step number in the reply), which the benchmark counts as wrong."""
        if how == "switch":
            res = self.answer_switch(items)
            return ([r.step for r, _ in res], [r.method for r, _ in res],
                    [{"labels": c.labels, "candidates": c.texts, "gold": c.gold, "pred": c.pred,
                      "p_gold": r.p_gold, "p_pred": r.p_pred, "logprobs": r.raw} for r, c in res])
        if how == "which_step":
            prompts = [self.t_which.render(question=it["question"], steps=numbered(list(it["steps"])),
                                           gold=it["gold"], prediction=it.get("prediction") or "(no answer)",
                                           n_steps=len(it["steps"])) for it in items]
            got = self._ask(prompts, lambda raw, n=None: raw)  # parse below, per item's n
            steps, methods, traces = [], [], []
            for it, (_, raw, _) in zip(items, got):
                k = parse_step_number(raw, len(it["steps"]))
                steps.append(k)
                methods.append("asked" if k is not None else "asked_unparsed")
                traces.append({"raw": raw})
            return steps, methods, traces
        if how == "random":
            rng = random.Random(seed)
            return ([rng.randint(1, len(it["steps"])) for it in items], ["random"] * len(items),
                    [{} for _ in items])
        raise ValueError(f"unknown localisation method {how!r}; use switch, which_step or random")

    # ------------------------------------------------------------------ corpus annotation
    def annotate(self, samples: Sequence[dict[str, Any]]) -> list[tuple[list[str], str]]:
        """(skill phrases, raw reply) per corpus sample; an empty list means unparsed."""
        prompts = [self.t_annotate.render(instruction=s["instruction"], response=s["response"]) for s in samples]
        return [(val or [], raw) for val, raw, _ in self._ask(prompts, parse_skills)]
