"""Ground-truth step verification for SkillWorld, and answer scoring.

``first_wrong_step`` judges a student's steps against the *scene*, not against the gold
text: each student step k is parsed with gold step k's template, then

- its *subject* slots (what the question is about, e.g. the shape whose colour is asked)
  must equal the gold step's, so a true but irrelevant statement does not pass;
- its *fact* slots are checked against the scene (e.g. the named cell really holds that
  colour; the listed cells are exactly the occupied ones, in any order; ``x is larger than
  y`` holds for the two digits shown; ``a plus b is s`` adds up).

Parsing tolerates case, repeated/around spaces and a missing or extra trailing period.
Steps beyond the gold chain are ignored. The audio family's checks live in
``verifier_audio.py`` and are merged into the tables here, so one verifier serves both.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any, Callable

from mmtune.data.answers import answers_match, majority_baseline  # noqa: F401 (re-exported)

from .scenes import COLORS, POSITIONS, SHAPES, SIZES
from .tasks import ALL_STEPS, ALL_TASKS, STEPS, gold
from .verifier_audio import AUDIO_CHECKS, AUDIO_SLOT_RE

_ALT = lambda words: "(" + "|".join(re.escape(w) for w in words) + ")"  # noqa: E731
_SLOT_RE = {
    "shape": _ALT(SHAPES), "color": _ALT(COLORS), "pos": _ALT(POSITIONS), "size": _ALT(SIZES),
    "parity": _ALT(("odd", "even")), "positions": "(.+?)",
    # the answer-format steps: an option's text or a finding can be any slot's value
    "value": "(.+?)", "letter": "([a-h])", "found": "(.+?)", "rel": "(is not|is)", "asked": "(.+?)",
}
_NUMBER_RE = r"(-?\d+)"  # every other slot (d, n, x, y, a, b, s) is an integer
assert not set(_SLOT_RE) & set(AUDIO_SLOT_RE), "audio slot names must differ from vision's"
_SLOT_RE.update(AUDIO_SLOT_RE)


def _norm(text: str) -> str:
    """Lower-case, single spaces, no trailing period."""
    return re.sub(r"\s+", " ", str(text)).strip().rstrip(".").strip().lower()


@lru_cache(maxsize=None)
def _step_regex(kind: str) -> tuple[re.Pattern, tuple[str, ...]]:
    parts = re.split(r"\{(\w+)\}", _norm(ALL_STEPS[kind].template))
    pattern, slots = "", []
    for i, part in enumerate(parts):
        if i % 2:
            slots.append(part)
            pattern += _SLOT_RE.get(part, _NUMBER_RE)
        else:
            pattern += re.escape(part).replace(r"\ ", " ")
    return re.compile(pattern), tuple(slots)


def parse_step(kind: str, text: str) -> dict[str, Any] | None:
    """Slot values of ``text`` read with step kind ``kind``'s template, or None."""
    rx, slots = _step_regex(kind)
    m = rx.fullmatch(_norm(text))
    if m is None:
        return None
    vals = dict(zip(slots, m.groups()))
    return {k: (v if k in _SLOT_RE else int(v)) for k, v in vals.items()}


# --------------------------------------------------------------------------- scene facts
def _cell(scene: dict, pos: str) -> dict | None:
    return scene["cells"][POSITIONS.index(pos)]


def _has(scene: dict, pos: str, **attrs) -> bool:
    o = _cell(scene, pos)
    return o is not None and all(o[k] == v for k, v in attrs.items())


def _listed_cells(scene: dict, text: str) -> bool:
    items = [p.strip() for p in re.split(r",|\band\b", text) if p.strip()]
    occupied = {p for p, o in zip(POSITIONS, scene["cells"]) if o is not None}
    return len(items) == len(set(items)) and set(items) == occupied


def _size_of(scene: dict, shape: str) -> str | None:
    return next((o["size"] for o in scene["cells"] if o is not None and o["shape"] == shape), None)


def _digits(scene: dict) -> list[int]:
    return [d["value"] for d in scene["digits"]]


def _is_option(scene: dict, letter: str, value: str) -> bool:
    """``letter`` (a-h, as parsed) labels the option ``value`` in the question."""
    options = [str(o).lower() for o in scene["query"].get("options") or []]
    k = "abcdefgh".index(letter)
    return k < len(options) and options[k] == value


# kind -> (subject slots that must equal gold, fact predicate over (values, scene))
_CHECKS: dict[str, tuple[tuple[str, ...], Callable[[dict, dict], bool]]] = {
    "find_shape": (("shape",), lambda v, sc: _has(sc, v["pos"], shape=v["shape"])),
    "find_color": (("color",), lambda v, sc: _has(sc, v["pos"], color=v["color"])),
    "find_object": (("color", "shape"), lambda v, sc: _has(sc, v["pos"], color=v["color"], shape=v["shape"])),
    "color_at": (("pos",), lambda v, sc: _has(sc, v["pos"], color=v["color"])),
    "shape_at": (("pos",), lambda v, sc: _has(sc, v["pos"], shape=v["shape"])),
    "list_objects": ((), lambda v, sc: _listed_cells(sc, v["positions"])),
    "count": ((), lambda v, sc: v["n"] == sum(o is not None for o in sc["cells"])),
    "size_of": (("shape",), lambda v, sc: _size_of(sc, v["shape"]) == v["size"]),
    "larger": ((), lambda v, sc: _size_of(sc, v["shape"]) == "large"
               and all(o["size"] == "small" for o in sc["cells"] if o is not None and o["shape"] != v["shape"])),
    "digit": ((), lambda v, sc: v["d"] == _digits(sc)[0]),
    "left_digit": ((), lambda v, sc: v["d"] == _digits(sc)[0]),
    "right_digit": ((), lambda v, sc: v["d"] == _digits(sc)[1]),
    "parity": (("d",), lambda v, sc: v["parity"] == ("even" if v["d"] % 2 == 0 else "odd")),
    "compare": ((), lambda v, sc: sorted((v["x"], v["y"])) == sorted(_digits(sc)) and v["x"] > v["y"]),
    "add": ((), lambda v, sc: sorted((v["a"], v["b"])) == sorted(_digits(sc)) and v["s"] == v["a"] + v["b"]),
    # the finding is checked by the earlier steps; these check the mapping to the answer format
    "option": (("value",), lambda v, sc: _is_option(sc, v["letter"], v["value"])),
    "check": (("found", "asked"), lambda v, sc: (v["rel"] == "is") == (v["found"] == v["asked"])),
}
assert set(_CHECKS) == set(STEPS), "every step kind needs a check"
_CHECKS.update(AUDIO_CHECKS)
assert set(_CHECKS) == set(ALL_STEPS), "every family's step kinds need checks"


def step_ok(kind: str, text: str, gold_values: dict, scene: dict) -> bool:
    """Whether ``text`` is a correct step of kind ``kind`` for this scene."""
    vals = parse_step(kind, text)
    if vals is None:
        return False
    subject, fact = _CHECKS[kind]
    return all(_same(vals[s], gold_values[s]) for s in subject) and fact(vals, scene)


def _same(parsed: Any, gold_value: Any) -> bool:
    # parsed text is lower-cased (_norm); a free-text slot's gold value may not be
    return parsed == gold_value or (isinstance(parsed, str) and parsed == str(gold_value).lower())


def answer_ok(answer: str, gold_answer: str, options: list[str] | None = None) -> bool:
    """Whether a final answer matches the gold one: the same rule evaluation uses
    (case/space/period tolerant; for multiple choice ``B``, ``(b)``, ``B. odd`` and the
    option text all count as choosing B)."""
    return answers_match(answer, gold_answer, options)


def _scene_of(sample: dict) -> dict:
    scene = sample["scene"]
    return json.loads(scene) if isinstance(scene, (str, bytes)) else scene


def first_wrong_step(sample: dict, steps: list[str], answer: str | None = None) -> int | None:
    """0-based index of the student's first wrong step, or None if all is right.

    ``sample`` needs two keys: ``task`` (a SkillWorld task name) and ``scene`` (the meta
    table's scene, as a JSON string or a dict; it includes the question's parameters and
    multiple-choice options). A missing or unparseable step counts as wrong. If every gold
    step is matched and ``answer`` is given but wrong, returns ``len(gold steps)``.
    """
    if sample["task"] not in ALL_TASKS:
        raise ValueError(f"not a SkillWorld task: {sample['task']!r}; known: {list(ALL_TASKS)}")
    task = ALL_TASKS[sample["task"]]
    scene = _scene_of(sample)
    _, gold_values, gold_answer = gold(task, scene)
    for k, (kind, gv) in enumerate(zip(task.chain, gold_values)):
        if k >= len(steps) or not step_ok(kind, steps[k], gv, scene):
            return k
    if answer is not None and not answer_ok(answer, gold_answer, scene["query"].get("options")):
        return len(task.chain)
    return None
