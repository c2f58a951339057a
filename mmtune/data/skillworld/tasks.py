"""SkillWorld skills, step templates and the task registry.

A task is a question template, an answer format and a *chain* of step kinds. Each step
kind is a fixed sentence template that exercises one skill. Tasks build scenes
constructively: the generator first picks the answer (balanced), then ``build`` makes a
scene in which that answer is right and the question is well-posed (e.g. the queried
shape is unique). ``solve`` re-derives the gold steps and answer from a scene alone; the
generator and the verifier both use it, so the two can never disagree.

Corpus tasks form the supporting corpus (Vision-Flan-like: many related tasks, every
skill under >= 2 phrasings/formats). Target tasks are held-out templates: a known step
chain with a new instruction phrasing and/or answer format.

Families: this module registers the *vision* family. ``SKILLS``, ``STEPS``, ``TASKS``,
``CORPUS_TASKS``, ``TARGET_TASKS``, ``DEFAULT_TARGETS`` and ``RARE_SKILLS`` predate the
audio family and stay vision-only. Every family (``tasks_audio.py`` adds "audio") also
registers into the ``ALL_*`` lookups, keyed by names unique across families, so that
``gold``, the verifier and any task-name or skill lookup work for every family;
:func:`family` gives one family's registry.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable

from .scenes import COLORS, POSITIONS, SHAPES

SKILLS: dict[str, str] = {
    "shape": "recognising the shape of an object",
    "color": "recognising the colour of an object",
    "locate": "locating an object in the picture",
    "count": "counting the objects in a picture",
    "size": "comparing the sizes of objects",
    "digit": "reading a handwritten digit",
    "parity": "telling whether a number is odd or even",
    "compare": "comparing two numbers",
    "add": "adding two numbers",
    "choose": "matching an answer to its option letter",
    "verify": "checking a finding against the question",
}
# Skills of answering in a format (the steps that end multiple-choice and yes/no chains): each
# belongs to one answer format by definition, where every other skill appears under several.
FORMAT_SKILLS = frozenset({"choose", "verify"})
# Skills the generic student sees rarely (see GENERIC_WEIGHTS in generate.py).
RARE_SKILLS = frozenset({"size", "digit", "parity", "compare", "add"})

LETTERS = "ABCDEFGH"
YESNO = ("yes", "no")


@dataclass(frozen=True)
class StepKind:
    """One reasoning step: a fixed template (slots in braces) and the skill it exercises."""

    template: str
    skill: str


STEPS: dict[str, StepKind] = {
    "find_shape": StepKind("The {shape} is in the {pos} cell.", "locate"),
    "find_color": StepKind("The {color} object is in the {pos} cell.", "color"),
    "find_object": StepKind("The {color} {shape} is in the {pos} cell.", "locate"),
    "color_at": StepKind("The object in the {pos} cell is {color}.", "color"),
    "shape_at": StepKind("The object in the {pos} cell is a {shape}.", "shape"),
    "list_objects": StepKind("Objects are in: {positions}.", "locate"),
    "count": StepKind("That makes {n} in total.", "count"),
    "size_of": StepKind("The {shape} is {size}.", "size"),
    "larger": StepKind("So the {shape} is larger.", "size"),
    "digit": StepKind("The digit is {d}.", "digit"),
    "left_digit": StepKind("The left digit is {d}.", "digit"),
    "right_digit": StepKind("The right digit is {d}.", "digit"),
    "parity": StepKind("{d} is {parity}.", "parity"),
    "compare": StepKind("{x} is larger than {y}.", "compare"),
    "add": StepKind("{a} plus {b} is {s}.", "add"),
    # The answer-format steps that end a multiple-choice or yes/no chain (see _t).
    "option": StepKind("{value} is option {letter}.", "choose"),
    "check": StepKind("{found} {rel} {asked}.", "verify"),
}

# build(rng, value, ctx): ctx is the family's context: vision's digit picker
# ``pick(rng, d) -> sklearn index``, audio's clip length in seconds.
Build = Callable[[random.Random, str, Any], dict]
Solve = Callable[[dict], tuple[list[dict], str]]
Distract = Callable[[random.Random, str, dict], list[str]]


@dataclass(frozen=True)
class Task:
    """A question template over a step chain.

    ``values`` is the answer space the generator balances over: the open answer, yes/no,
    or (multiple choice) the correct option's text; for multiple choice the correct letter
    is balanced too. ``build(rng, value, pick_digit)`` returns a scene whose ``solve`` value
    is ``value``; ``pick_digit(rng, d)`` returns a sklearn digit index from the split's pool.
    """

    name: str
    kind: str  # "corpus" | "target"
    fmt: str  # "open" | "yesno" | "mc"
    chain: tuple[str, ...]
    question: str  # formatted with scene["query"]
    values: tuple[str, ...]
    build: Build
    solve: Solve
    n_options: int = 0  # multiple choice only
    distract: Distract | None = None  # mc: n_options - 1 wrong option texts
    modality: str = "vision"  # the family: "vision" (PNG image) or "audio" (WAV clip)

    @property
    def skills(self) -> tuple[str, ...]:
        """The chain's skills, unique, in first-use order."""
        return tuple(dict.fromkeys(ALL_STEPS[k].skill for k in self.chain))

    @property
    def reasoning_chain(self) -> tuple[str, ...]:
        """The chain less its answer-format step (``option``/``check``): what a target shares
        with the corpus tasks of its family whatever their answer formats."""
        return tuple(k for k in self.chain if ALL_STEPS[k].skill not in FORMAT_SKILLS)

    @property
    def rare(self) -> bool:
        return any(s in ALL_RARE_SKILLS for s in self.skills)

    @property
    def scene_kind(self) -> str:
        if self.modality == "audio":
            return "audio"
        return "digits" if "digit" in self.skills else "grid"


# --------------------------------------------------------------------------- grid helpers
def _obj(rng: random.Random, shape: str | None = None, color: str | None = None,
         size: str | None = None) -> dict:
    return {"shape": shape or rng.choice(SHAPES), "color": color or rng.choice(COLORS),
            "size": size or rng.choice(("small", "large"))}


def _grid(rng: random.Random, fixed: dict[int, dict], ok: Callable[[dict], bool] = lambda o: True,
          p_empty: float = 0.4, near: dict | None = None) -> list[dict | None]:
    """Fixed objects plus random distractors that pass ``ok`` (rejection keeps queries unique).

    With ``near`` given, distractors often share the shape or the colour of that object, so
    answering needs both attributes rather than one.
    """
    cells: list[dict | None] = [None] * 4
    for i in range(4):
        if i in fixed:
            cells[i] = fixed[i]
        elif rng.random() >= p_empty:
            while True:
                r = rng.random()
                o = _obj(rng, shape=near["shape"] if near and r < 0.3 else None,
                         color=near["color"] if near and 0.3 <= r < 0.6 else None)
                if ok(o):
                    cells[i] = o
                    break
    return cells


def _scene(cells: list[dict | None], **query) -> dict:
    return {"kind": "grid", "cells": cells, "query": query}


def _where(scene: dict, **attrs) -> str:
    """The position of the (unique) object with these attributes."""
    for pos, o in zip(POSITIONS, scene["cells"]):
        if o is not None and all(o[k] == v for k, v in attrs.items()):
            return pos
    raise ValueError(f"no object with {attrs} in scene")


def _at(scene: dict, pos: str) -> dict:
    return scene["cells"][POSITIONS.index(pos)]


def _other(rng: random.Random, pool, value):
    return rng.choice([v for v in pool if v != value])


def _yn(b: bool) -> str:
    return "yes" if b else "no"


# --------------------------------------------------------------------------- grid tasks
def _b_color_of_shape(rng, color, _pick):
    s, p = rng.choice(SHAPES), rng.randrange(4)
    return _scene(_grid(rng, {p: _obj(rng, s, color)}, ok=lambda o: o["shape"] != s), shape=s)


def _s_color_of_shape(sc):
    s = sc["query"]["shape"]
    pos = _where(sc, shape=s)
    c = _at(sc, pos)["color"]
    return [{"shape": s, "pos": pos}, {"pos": pos, "color": c}], c


def _b_color_check(rng, yn, _pick):
    s, p, c = rng.choice(SHAPES), rng.randrange(4), rng.choice(COLORS)
    actual = c if yn == "yes" else _other(rng, COLORS, c)
    return _scene(_grid(rng, {p: _obj(rng, s, actual)}, ok=lambda o: o["shape"] != s), shape=s, color=c)


def _s_color_check(sc):
    steps, c = _s_color_of_shape(sc)
    return steps, _yn(c == sc["query"]["color"])


def _b_color_at_pos(rng, color, _pick):
    p = rng.randrange(4)
    return _scene(_grid(rng, {p: _obj(rng, color=color)}), pos=POSITIONS[p])


def _s_color_at_pos(sc):
    pos = sc["query"]["pos"]
    c = _at(sc, pos)["color"]
    return [{"pos": pos, "color": c}], c


def _b_shape_of_color(rng, shape, _pick):
    c, p = rng.choice(COLORS), rng.randrange(4)
    return _scene(_grid(rng, {p: _obj(rng, shape, c)}, ok=lambda o: o["color"] != c), color=c)


def _s_shape_of_color(sc):
    c = sc["query"]["color"]
    pos = _where(sc, color=c)
    s = _at(sc, pos)["shape"]
    return [{"color": c, "pos": pos}, {"pos": pos, "shape": s}], s


def _b_shape_at_pos(rng, shape, _pick):
    p = rng.randrange(4)
    return _scene(_grid(rng, {p: _obj(rng, shape)}), pos=POSITIONS[p])


def _s_shape_at_pos(sc):
    pos = sc["query"]["pos"]
    s = _at(sc, pos)["shape"]
    return [{"pos": pos, "shape": s}], s


def _b_shape_at_pos_yn(rng, yn, _pick):
    p, q = rng.randrange(4), rng.choice(SHAPES)
    actual = q if yn == "yes" else _other(rng, SHAPES, q)
    return _scene(_grid(rng, {p: _obj(rng, actual)}), pos=POSITIONS[p], shape=q)


def _s_shape_at_pos_yn(sc):
    steps, s = _s_shape_at_pos(sc)
    return steps, _yn(s == sc["query"]["shape"])


def _b_where_is(rng, pos, _pick):
    target = _obj(rng)
    same = lambda o: o["shape"] == target["shape"] and o["color"] == target["color"]  # noqa: E731
    cells = _grid(rng, {POSITIONS.index(pos): target}, ok=lambda o: not same(o), near=target)
    return _scene(cells, color=target["color"], shape=target["shape"])


def _s_where_is(sc):
    c, s = sc["query"]["color"], sc["query"]["shape"]
    pos = _where(sc, color=c, shape=s)
    return [{"color": c, "shape": s, "pos": pos}], pos


def _b_object_at_pos_yn(rng, yn, _pick):
    p = rng.randrange(4)
    sc = _b_where_is(rng, POSITIONS[p], _pick)
    sc["query"]["pos"] = POSITIONS[p] if yn == "yes" else _other(rng, POSITIONS, POSITIONS[p])
    return sc


def _s_object_at_pos_yn(sc):
    steps, pos = _s_where_is(sc)
    return steps, _yn(pos == sc["query"]["pos"])


def _b_count(rng, n, _pick):
    occupied = set(rng.sample(range(4), int(n)))
    return _scene([_obj(rng) if i in occupied else None for i in range(4)])


def _s_count(sc):
    where = [p for p, o in zip(POSITIONS, sc["cells"]) if o is not None]
    return [{"positions": ", ".join(where)}, {"n": len(where)}], str(len(where))


def _b_count_yn(rng, yn, _pick):
    k = rng.randint(1, 4)
    sc = _b_count(rng, str(k), _pick)
    sc["query"]["n"] = k if yn == "yes" else _other(rng, range(1, 5), k)
    return sc


def _s_count_yn(sc):
    steps, n = _s_count(sc)
    return steps, _yn(int(n) == sc["query"]["n"])


def _size_scene(rng, large: str, small: str) -> dict:
    pl, ps = rng.sample(range(4), 2)
    cells: list[dict | None] = [None] * 4
    cells[pl], cells[ps] = _obj(rng, large, size="large"), _obj(rng, small, size="small")
    return _scene(cells)


def _size_steps(sc, shapes) -> tuple[list[dict], str]:
    size = {o["shape"]: o["size"] for o in sc["cells"] if o is not None}
    larger = next(s for s in shapes if size[s] == "large")
    return [{"shape": s, "size": size[s]} for s in shapes] + [{"shape": larger}], larger


def _b_size_larger(rng, shape, _pick):
    small = _other(rng, SHAPES, shape)
    sc = _size_scene(rng, shape, small)
    s1, s2 = rng.sample([shape, small], 2)  # question order is independent of the answer
    sc["query"].update(shape1=s1, shape2=s2)
    return sc


def _s_size_larger(sc):
    return _size_steps(sc, [sc["query"]["shape1"], sc["query"]["shape2"]])


def _b_size_smaller(rng, shape, _pick):
    return _size_scene(rng, _other(rng, SHAPES, shape), shape)


def _s_size_smaller(sc):
    shapes = sc["query"]["options"]  # steps follow the options' order
    steps, larger = _size_steps(sc, shapes)
    return steps, next(s for s in shapes if s != larger)


def _b_size_check(rng, yn, _pick):
    a, b = rng.sample(SHAPES, 2)
    sc = _size_scene(rng, b, a) if yn == "yes" else _size_scene(rng, a, b)
    sc["query"].update(shape1=a, shape2=b)
    return sc


def _s_size_check(sc):
    steps, larger = _s_size_larger(sc)
    return steps, _yn(larger == sc["query"]["shape2"])


def _d_other_present_shape(rng, value, sc):
    return [o["shape"] for o in sc["cells"] if o is not None and o["shape"] != value]


# --------------------------------------------------------------------------- digit tasks
def _dscene(pick, rng, *values: int, **query) -> dict:
    return {"kind": "digits", "digits": [{"value": v, "index": pick(rng, v)} for v in values],
            "query": query}


def _parity(d: int) -> str:
    return "even" if d % 2 == 0 else "odd"


def _b_digit(rng, d, pick):
    return _dscene(pick, rng, int(d))


def _s_digit(sc):
    d = sc["digits"][0]["value"]
    return [{"d": d}], str(d)


def _b_parity(rng, par, pick):
    return _dscene(pick, rng, rng.choice([d for d in range(10) if _parity(d) == par]))


def _s_parity(sc):
    d = sc["digits"][0]["value"]
    return [{"d": d}, {"d": d, "parity": _parity(d)}], _parity(d)


def _b_parity_yn(rng, yn, pick):
    q = rng.choice(("odd", "even"))
    sc = _b_parity(rng, q if yn == "yes" else _other(rng, ("odd", "even"), q), pick)
    sc["query"]["parity"] = q
    return sc


def _s_parity_yn(sc):
    steps, par = _s_parity(sc)
    return steps, _yn(par == sc["query"]["parity"])


def _pair_steps(sc) -> tuple[list[dict], int, int]:
    a, b = (d["value"] for d in sc["digits"])
    return [{"d": a}, {"d": b}], a, b


def _b_compare(rng, side, pick):
    hi, lo = sorted(rng.sample(range(10), 2), reverse=True)
    return _dscene(pick, rng, *((hi, lo) if side == "left" else (lo, hi)))


def _s_compare(sc, smaller: bool = False):
    steps, a, b = _pair_steps(sc)
    steps.append({"x": max(a, b), "y": min(a, b)})
    return steps, ("left" if (a < b) == smaller else "right")


def _b_compare_yn(rng, yn, pick):  # "Is the left number smaller than the right number?"
    return _b_compare(rng, "right" if yn == "yes" else "left", pick)


def _s_compare_yn(sc):
    steps, larger_side = _s_compare(sc)
    return steps, _yn(larger_side == "right")


def _b_add(rng, s, pick):
    s = int(s)
    a = rng.randint(max(0, s - 9), min(9, s))
    return _dscene(pick, rng, a, s - a)


def _s_add(sc):
    steps, a, b = _pair_steps(sc)
    steps.append({"a": a, "b": b, "s": a + b})
    return steps, str(a + b)


def _b_add_yn(rng, yn, pick):
    a, b = rng.randrange(10), rng.randrange(10)
    sc = _dscene(pick, rng, a, b)
    near = [v for v in range(a + b - 2, a + b + 3) if 0 <= v <= 18 and v != a + b]
    sc["query"]["s"] = a + b if yn == "yes" else rng.choice(near)  # near misses: must really add
    return sc


def _s_add_yn(sc):
    steps, s = _s_add(sc)
    return steps, _yn(int(s) == sc["query"]["s"])


def _d_digits(rng, value, _sc):
    return [str(d) for d in rng.sample([d for d in range(10) if str(d) != value], 3)]


def _d_sums(rng, value, _sc):
    v = int(value)
    return [str(x) for x in rng.sample([x for x in range(max(0, v - 4), min(18, v + 4) + 1) if x != v], 3)]


def _d_pool(pool):
    return lambda rng, value, _sc: [x for x in pool if x != value]


# --------------------------------------------------------------------------- registry
_DIGITS = tuple(str(d) for d in range(10))
_SUMS = tuple(str(s) for s in range(19))
_CTR = ("list_objects", "count")
_PAIR = ("left_digit", "right_digit")


def _t(name, kind, fmt, chain, question, values, build, solve, n_options=0, distract=None, check=None) -> Task:
    """A vision task. Its chain ends with the step that maps the finding to the answer format:
    every multiple-choice chain with ``option`` ("red is option B."), and a yes/no chain that
    names ``check=(slot of the last step, slot of the question)`` with ``check`` ("2 is not 3.").

    Why (SkillWorld 4): without these steps the answer token itself had to compare the finding
    with the question or find its letter among the options. The tiny student then read and
    wrote what it saw but answered yes/no and option letters at chance in two builds of three
    (docs/benchmarks.md, "Two builds of one key"); with the step written out it learns both.
    ``compare_yesno`` and ``size_check`` keep their chains: their last step already states the
    relation the question asks about.
    """
    chain = list(chain)
    if fmt == "mc":
        chain.append("option")
        solve = _with_option(solve)
    if check is not None:
        assert fmt == "yesno", name
        chain.append("check")
        solve = _with_check(solve, *check)
    return Task(name, kind, fmt, tuple(chain), question, tuple(values), build, solve, n_options, distract)


def _with_option(solve: Solve) -> Solve:
    def solve_mc(sc):
        values, ans = solve(sc)
        return [*values, {"value": ans, "letter": LETTERS[sc["query"]["options"].index(ans)]}], ans
    return solve_mc


def _with_check(solve: Solve, found_slot: str, asked_slot: str) -> Solve:
    def solve_yn(sc):
        values, ans = solve(sc)
        found, asked = str(values[-1][found_slot]), str(sc["query"][asked_slot])
        assert (found == asked) == (ans == "yes"), (found, asked, ans)
        return [*values, {"found": found, "rel": "is" if found == asked else "is not", "asked": asked}], ans
    return solve_yn


_TASK_LIST = [
    # ---- corpus: common skills (shape, color, locate, count, digit)
    _t("color_of_shape", "corpus", "open", ["find_shape", "color_at"], "What colour is the {shape}?",
       COLORS, _b_color_of_shape, _s_color_of_shape),
    _t("color_of_shape_mc", "corpus", "mc", ["find_shape", "color_at"], "Which colour does the {shape} have?",
       COLORS, _b_color_of_shape, _s_color_of_shape, 4, _d_pool(COLORS)),
    _t("color_at_pos", "corpus", "open", ["color_at"], "What colour is the object in the {pos} cell?",
       COLORS, _b_color_at_pos, _s_color_at_pos),
    _t("shape_of_color", "corpus", "open", ["find_color", "shape_at"], "What shape is the {color} object?",
       SHAPES, _b_shape_of_color, _s_shape_of_color),
    _t("shape_at_pos_mc", "corpus", "mc", ["shape_at"], "Which shape is in the {pos} cell?",
       SHAPES, _b_shape_at_pos, _s_shape_at_pos, 3, _d_pool(SHAPES)),
    _t("shape_at_pos_yesno", "corpus", "yesno", ["shape_at"], "Is the object in the {pos} cell a {shape}?",
       YESNO, _b_shape_at_pos_yn, _s_shape_at_pos_yn, check=("shape", "shape")),
    _t("where_is", "corpus", "open", ["find_object"], "Where is the {color} {shape}?",
       POSITIONS, _b_where_is, _s_where_is),
    _t("object_at_pos_yesno", "corpus", "yesno", ["find_object"], "Is the {color} {shape} in the {pos} cell?",
       YESNO, _b_object_at_pos_yn, _s_object_at_pos_yn, check=("pos", "pos")),
    _t("count_objects", "corpus", "open", _CTR, "How many objects are in the picture?",
       ("1", "2", "3", "4"), _b_count, _s_count),
    _t("count_mc", "corpus", "mc", _CTR, "How many shapes can you see?",
       ("1", "2", "3", "4"), _b_count, _s_count, 4, _d_pool(("1", "2", "3", "4"))),
    _t("count_yesno", "corpus", "yesno", _CTR, "Is the number of objects in the picture {n}?",
       YESNO, _b_count_yn, _s_count_yn, check=("n", "n")),
    _t("digit_read", "corpus", "open", ["digit"], "Which digit is written in the picture?",
       _DIGITS, _b_digit, _s_digit),
    _t("digit_mc", "corpus", "mc", ["digit"], "What number is shown?",
       _DIGITS, _b_digit, _s_digit, 4, _d_digits),
    # ---- corpus: rare skills (size, parity, compare, add)
    _t("size_larger", "corpus", "open", ["size_of", "size_of", "larger"],
       "Which is larger, the {shape1} or the {shape2}?", SHAPES, _b_size_larger, _s_size_larger),
    _t("size_smaller_mc", "corpus", "mc", ["size_of", "size_of", "larger"], "Which object is smaller?",
       SHAPES, _b_size_smaller, _s_size_smaller, 2, _d_other_present_shape),
    _t("parity_open", "corpus", "open", ["digit", "parity"], "Is the digit odd or even?",
       ("odd", "even"), _b_parity, _s_parity),
    _t("parity_yesno", "corpus", "yesno", ["digit", "parity"], "Is the number in the picture {parity}?",
       YESNO, _b_parity_yn, _s_parity_yn, check=("parity", "parity")),
    _t("compare_larger", "corpus", "open", [*_PAIR, "compare"],
       "Which digit is larger, the left or the right one?", ("left", "right"), _b_compare, _s_compare),
    _t("compare_yesno", "corpus", "yesno", [*_PAIR, "compare"],
       "Is the left number smaller than the right number?", YESNO, _b_compare_yn, _s_compare_yn),
    _t("add_open", "corpus", "open", [*_PAIR, "add"], "What is the sum of the two digits?",
       _SUMS, _b_add, _s_add),
    _t("add_mc", "corpus", "mc", [*_PAIR, "add"], "What do the two numbers add up to?",
       _SUMS, _b_add, _s_add, 4, _d_sums),
    # ---- targets: a corpus step chain under a new phrasing and/or answer format
    _t("parity_choice", "target", "mc", ["digit", "parity"], "Is the handwritten number even or odd?",
       ("odd", "even"), _b_parity, _s_parity, 2, _d_pool(("odd", "even"))),
    _t("smaller_digit", "target", "open", [*_PAIR, "compare"],
       "Which digit is smaller, the left or the right one?", ("left", "right"),
       lambda rng, side, pick: _b_compare(rng, "right" if side == "left" else "left", pick),
       lambda sc: _s_compare(sc, smaller=True)),
    _t("color_check", "target", "yesno", ["find_shape", "color_at"], "Is the {shape} {color}?",
       YESNO, _b_color_check, _s_color_check, check=("color", "color")),
    _t("count_grid", "target", "open", _CTR, "Count the objects in the picture.",
       ("1", "2", "3", "4"), _b_count, _s_count),
    # non-default targets
    _t("size_check", "target", "yesno", ["size_of", "size_of", "larger"],
       "Is the {shape1} smaller than the {shape2}?", YESNO, _b_size_check, _s_size_check),
    _t("add_check", "target", "yesno", [*_PAIR, "add"], "Do the two digits add up to {s}?",
       YESNO, _b_add_yn, _s_add_yn, check=("s", "s")),
    _t("shape_of_color_mc", "target", "mc", ["find_color", "shape_at"], "Which shape is {color}?",
       SHAPES, _b_shape_of_color, _s_shape_of_color, 3, _d_pool(SHAPES)),
]

TASKS: dict[str, Task] = {t.name: t for t in _TASK_LIST}
CORPUS_TASKS: tuple[str, ...] = tuple(t.name for t in _TASK_LIST if t.kind == "corpus")
TARGET_TASKS: tuple[str, ...] = tuple(t.name for t in _TASK_LIST if t.kind == "target")
# Two targets that need a rare skill of the generic mix, two that need only common skills.
DEFAULT_TARGETS: tuple[str, ...] = ("parity_choice", "smaller_digit", "color_check", "count_grid")


# --------------------------------------------------------------------------- families
@dataclass(frozen=True)
class Family:
    """One modality's registry: its skills (id -> phrase), step kinds and tasks."""

    modality: str
    skills: dict[str, str]
    rare_skills: frozenset[str]
    steps: dict[str, StepKind]
    tasks: dict[str, Task]
    default_targets: tuple[str, ...]

    @property
    def corpus_tasks(self) -> tuple[str, ...]:
        return tuple(n for n, t in self.tasks.items() if t.kind == "corpus")

    @property
    def target_tasks(self) -> tuple[str, ...]:
        return tuple(n for n, t in self.tasks.items() if t.kind == "target")


FAMILIES: dict[str, Family] = {}
# Lookups over every family. Names are unique across families (register_family checks),
# so a task name, step kind or skill id alone says which family it belongs to.
ALL_SKILLS: dict[str, str] = {}
ALL_RARE_SKILLS: set[str] = set()
ALL_STEPS: dict[str, StepKind] = {}
ALL_TASKS: dict[str, Task] = {}


def register_family(fam: Family) -> Family:
    for mine, everyone in ((fam.skills, ALL_SKILLS), (fam.steps, ALL_STEPS), (fam.tasks, ALL_TASKS)):
        clash = set(mine) & set(everyone)
        if clash:
            raise ValueError(f"SkillWorld family {fam.modality!r} reuses names of another family: {sorted(clash)}")
    assert all(t.modality == fam.modality for t in fam.tasks.values()), fam.modality
    assert {s.skill for s in fam.steps.values()} <= set(fam.skills) and fam.rare_skills <= set(fam.skills)
    assert set(fam.default_targets) <= set(fam.target_tasks), fam.default_targets
    FAMILIES[fam.modality] = fam
    ALL_SKILLS.update(fam.skills)
    ALL_RARE_SKILLS.update(fam.rare_skills)
    ALL_STEPS.update(fam.steps)
    ALL_TASKS.update(fam.tasks)
    return fam


def family(modality: str) -> Family:
    """The registry of one modality ("vision" or "audio")."""
    if modality not in FAMILIES:
        raise ValueError(f"unknown SkillWorld modality {modality!r}; known: {list(FAMILIES)}")
    return FAMILIES[modality]


VISION = register_family(Family("vision", SKILLS, RARE_SKILLS, STEPS, TASKS, DEFAULT_TARGETS))


def resolve_targets(names: list[str] | None, modality: str = "vision") -> list[str]:
    """Target names to generate (None = the family's default targets); unknown names raise ValueError."""
    fam = family(modality)
    if names is None:
        return list(fam.default_targets)
    unknown = [n for n in names if n not in fam.target_tasks]
    if unknown:
        raise ValueError(f"unknown SkillWorld {modality} target(s) {unknown}; known: {list(fam.target_tasks)}")
    return list(dict.fromkeys(names))


# Answer-format prompts, as LLaVA-1.5's instruction data words them (and Vision-Flan's
# tasks state theirs). Without them a tiny student has no cue for the format of a phrasing
# it has never seen (measured: an unseen "Count the objects" was answered with option
# letters, 0% accuracy, although its reasoning steps were right).
FORMAT_PROMPTS = {
    "open": "Answer the question using a single word or phrase.",
    "yesno": "Answer yes or no.",
    "mc": "Answer with the option's letter from the given choices directly.",
}


def format_instruction(task: Task, scene: dict) -> str:
    """The question, ``A. x B. y ...`` for multiple choice, then the answer-format prompt."""
    text = task.question.format(**scene["query"])
    if task.fmt == "mc":
        opts = scene["query"]["options"]
        text += "\n" + " ".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(opts))
    return f"{text}\n{FORMAT_PROMPTS[task.fmt]}"


def gold(task: Task, scene: dict) -> tuple[list[str], list[dict], str]:
    """(gold step texts, their slot values, gold answer) for a scene; mc answers are letters."""
    values, ans = task.solve(scene)
    steps = [ALL_STEPS[k].template.format(**v) for k, v in zip(task.chain, values)]
    if task.fmt == "mc":
        ans = LETTERS[scene["query"]["options"].index(ans)]
    return steps, values, ans
