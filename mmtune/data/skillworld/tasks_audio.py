"""The audio SkillWorld family: skills, step templates and tasks over synthesised clips.

Built like the vision family (``tasks.py``): a task is a question template, an answer
format and a chain of step kinds; ``build(rng, value, clip_seconds)`` makes a scene whose
answer is ``value`` (the generator balances the values), and ``solve`` re-derives the gold
steps and answer from the scene alone. Scenes are described in ``audio.py``.

Names (skills, step kinds, tasks) are distinct from the vision family's, so that the
shared lookups in ``tasks.py`` (``ALL_TASKS``, ``ALL_STEPS``, ``ALL_SKILLS``) and a
teacher's skill phrases never mix the two up: vision counts *objects* ("count"), audio
counts *beeps* ("beep_count").
"""

from __future__ import annotations

import random

from .audio import (
    DIRECTIONS,
    LENGTHS,
    LEVELS,
    ORDINALS,
    PITCHES,
    audio_scene,
    beeps,
    sweep,
    tone,
)
from .tasks import YESNO, Family, StepKind, Task, register_family

AUDIO_SKILLS: dict[str, str] = {
    "beep_count": "counting the beeps in a sound clip",
    "pitch": "telling whether a tone is high or low",
    "direction": "hearing whether a sweep rises or falls",
    "duration": "comparing how long tones last",
    "loudness": "comparing how loud tones are",
    "order": "finding when a tone sounds in the clip",
}
# Skills the audio generic student sees rarely (see AUDIO_GENERIC_WEIGHTS in generate.py).
AUDIO_RARE_SKILLS = frozenset({"duration", "loudness", "order"})

AUDIO_STEPS: dict[str, StepKind] = {
    "count_beeps": StepKind("The number of beeps is {n}.", "beep_count"),
    "tone_pitch": StepKind("The tone is {pitch}.", "pitch"),
    "pitch_of": StepKind("The {nth} tone is {pitch}.", "pitch"),
    "higher": StepKind("So the {nth} tone is higher.", "pitch"),
    "sweep_dir": StepKind("The sweep goes {direction}.", "direction"),
    "length_of": StepKind("The {nth} tone is {length}.", "duration"),
    "longer": StepKind("So the {nth} tone is longer.", "duration"),
    "level_of": StepKind("The {nth} tone is {level}.", "loudness"),
    "louder": StepKind("So the {nth} tone is louder.", "loudness"),
    "tone_at": StepKind("The {pitch} tone is the {nth} one.", "order"),
}

# For each compared attribute: (the "more" category, the "less" one) and the conclusion step.
MORE_LESS = {"pitch": ("high", "low"), "length": ("long", "short"), "level": ("loud", "quiet")}
COUNTS = ("1", "2", "3", "4", "5")
PAIR = ("first", "second")
TRIPLE = ("first", "second", "third")


def _other(rng: random.Random, pool, value):
    return rng.choice([v for v in pool if v != value])


def _yn(b: bool) -> str:
    return "yes" if b else "no"


def _any_tone(rng: random.Random, pitch: str | None = None, length: str | None = None,
              level: str | None = None) -> dict:
    """A tone with the given categories; the others are random (the student must ignore them)."""
    return tone(rng, pitch or rng.choice(PITCHES), length or rng.choice(LENGTHS), level or rng.choice(LEVELS))


# --------------------------------------------------------------------------- counting beeps
def _b_count(rng, n, secs):
    return audio_scene(rng, beeps(rng, int(n)), secs)


def _s_count(sc):
    n = len(sc["events"])
    return [{"n": n}], str(n)


def _b_count_yn(rng, yn, secs):
    k = rng.randint(1, len(COUNTS))
    sc = _b_count(rng, str(k), secs)
    sc["query"]["n"] = k if yn == "yes" else _other(rng, range(1, len(COUNTS) + 1), k)
    return sc


def _s_count_yn(sc):
    steps, n = _s_count(sc)
    return steps, _yn(int(n) == sc["query"]["n"])


# --------------------------------------------------------------------------- pitch of one tone
def _b_pitch(rng, pitch, secs):
    return audio_scene(rng, [_any_tone(rng, pitch=pitch)], secs)


def _s_pitch(sc):
    p = sc["events"][0]["pitch"]
    return [{"pitch": p}], p


def _b_pitch_yn(rng, yn, secs):
    q = rng.choice(PITCHES)
    sc = _b_pitch(rng, q if yn == "yes" else _other(rng, PITCHES, q), secs)
    sc["query"]["pitch"] = q
    return sc


def _s_pitch_yn(sc):
    steps, p = _s_pitch(sc)
    return steps, _yn(p == sc["query"]["pitch"])


# --------------------------------------------------------------------------- comparing two tones
def _pair_scene(rng, attr: str, top: int, secs) -> dict:
    """Two tones that differ in ``attr``: the ``top``-th (0/1) has the "more" category."""
    more, less = MORE_LESS[attr]
    return audio_scene(rng, [_any_tone(rng, **{attr: more if i == top else less}) for i in range(2)], secs)


def _pair_steps(sc, attr: str) -> tuple[list[dict], str]:
    """One step per tone (in time order), then the conclusion naming the "more" tone."""
    evs = sc["events"]
    top = ORDINALS[next(i for i, e in enumerate(evs) if e[attr] == MORE_LESS[attr][0])]
    return [{"nth": ORDINALS[i], attr: e[attr]} for i, e in enumerate(evs)] + [{"nth": top}], top


def _compare(attr: str, less: bool = False):
    """(build, solve) of "which tone is more/less <attr>": the answer is the ordinal."""
    def build(rng, nth, secs):
        top = PAIR.index(nth)
        return _pair_scene(rng, attr, 1 - top if less else top, secs)

    def solve(sc):
        steps, top = _pair_steps(sc, attr)
        return steps, PAIR[1 - PAIR.index(top)] if less else top  # the conclusion names the "more" tone

    return build, solve


def _compare_yn(attr: str, first_is_less: bool):
    """(build, solve) of "is the first tone more (or less) <attr> than the second?"."""
    def build(rng, yn, secs):
        first_top = (yn == "yes") != first_is_less
        return _pair_scene(rng, attr, 0 if first_top else 1, secs)

    def solve(sc):
        steps, top = _pair_steps(sc, attr)
        return steps, _yn((top == "first") != first_is_less)

    return build, solve


# --------------------------------------------------------------------------- sweeps
def _b_sweep(rng, direction, secs):
    return audio_scene(rng, [sweep(rng, direction, rng.choice(LEVELS))], secs)


def _s_sweep(sc):
    d = sc["events"][0]["direction"]
    return [{"direction": d}], d


def _b_sweep_yn(rng, yn, secs):
    q = rng.choice(DIRECTIONS)
    sc = _b_sweep(rng, q if yn == "yes" else _other(rng, DIRECTIONS, q), secs)
    sc["query"]["direction"] = q
    return sc


def _s_sweep_yn(sc):
    steps, d = _s_sweep(sc)
    return steps, _yn(d == sc["query"]["direction"])


# --------------------------------------------------------------------------- order: the odd tone out
def _b_odd(rng, nth, secs):
    """Three short tones; the ``nth`` has the queried pitch, the other two the other pitch."""
    odd = rng.choice(PITCHES)
    k = TRIPLE.index(nth)
    evs = [_any_tone(rng, pitch=odd if i == k else _other(rng, PITCHES, odd), length="short") for i in range(3)]
    return audio_scene(rng, evs, secs, pitch=odd)


def _s_odd(sc):
    p = sc["query"]["pitch"]
    nth = ORDINALS[next(i for i, e in enumerate(sc["events"]) if e["pitch"] == p)]
    return [{"pitch": p, "nth": nth}], nth


def _b_odd_yn(rng, yn, secs):
    k = rng.choice(TRIPLE)
    sc = _b_odd(rng, k, secs)
    sc["query"]["nth"] = k if yn == "yes" else _other(rng, TRIPLE, k)
    return sc


def _s_odd_yn(sc):
    steps, nth = _s_odd(sc)
    return steps, _yn(nth == sc["query"]["nth"])


# --------------------------------------------------------------------------- distractors
def _d_sample(pool, k: int):
    return lambda rng, value, _sc: rng.sample([x for x in pool if x != value], k)


# --------------------------------------------------------------------------- registry
_PITCH2 = ("pitch_of", "pitch_of", "higher")
_LENGTH2 = ("length_of", "length_of", "longer")
_LEVEL2 = ("level_of", "level_of", "louder")


def _t(name, kind, fmt, chain, question, values, build_solve, n_options=0, distract=None) -> Task:
    build, solve = build_solve
    return Task(name, kind, fmt, tuple(chain), question, tuple(values), build, solve, n_options, distract,
                modality="audio")


_TASK_LIST = [
    # ---- corpus: common skills (beep_count, pitch, direction)
    _t("beep_count", "corpus", "open", ["count_beeps"], "How many beeps do you hear?",
       COUNTS, (_b_count, _s_count)),
    _t("beep_count_mc", "corpus", "mc", ["count_beeps"], "How many times does the tone sound?",
       COUNTS, (_b_count, _s_count), 4, _d_sample(COUNTS, 3)),
    _t("beep_count_yesno", "corpus", "yesno", ["count_beeps"], "Is the number of beeps in the clip {n}?",
       YESNO, (_b_count_yn, _s_count_yn)),
    _t("pitch_open", "corpus", "open", ["tone_pitch"], "Is the tone high or low?",
       PITCHES, (_b_pitch, _s_pitch)),
    _t("pitch_yesno", "corpus", "yesno", ["tone_pitch"], "Is this a {pitch} tone?",
       YESNO, (_b_pitch_yn, _s_pitch_yn)),
    _t("higher_tone", "corpus", "open", _PITCH2, "Which tone is higher, the first or the second?",
       PAIR, _compare("pitch")),
    _t("higher_tone_yesno", "corpus", "yesno", _PITCH2, "Is the first tone higher than the second?",
       YESNO, _compare_yn("pitch", first_is_less=False)),
    _t("sweep_dir", "corpus", "open", ["sweep_dir"], "Does the sound go up or down?",
       DIRECTIONS, (_b_sweep, _s_sweep)),
    _t("sweep_dir_yesno", "corpus", "yesno", ["sweep_dir"], "Does the pitch go {direction}?",
       YESNO, (_b_sweep_yn, _s_sweep_yn)),
    # ---- corpus: rare skills (duration, loudness, order)
    _t("longer_tone", "corpus", "open", _LENGTH2, "Which tone lasts longer, the first or the second?",
       PAIR, _compare("length")),
    _t("shorter_tone_mc", "corpus", "mc", _LENGTH2, "Which tone is shorter?",
       PAIR, _compare("length", less=True), 2, _d_sample(PAIR, 1)),
    _t("louder_tone", "corpus", "open", _LEVEL2, "Which tone is louder, the first or the second?",
       PAIR, _compare("level")),
    _t("quieter_tone_yesno", "corpus", "yesno", _LEVEL2, "Is the first tone quieter than the second?",
       YESNO, _compare_yn("level", first_is_less=True)),
    _t("odd_tone", "corpus", "open", ["tone_at"], "Which tone is the {pitch} one: the first, the second or the third?",
       TRIPLE, (_b_odd, _s_odd)),
    _t("odd_tone_mc", "corpus", "mc", ["tone_at"], "When does the {pitch} tone sound?",
       TRIPLE, (_b_odd, _s_odd), 3, _d_sample(TRIPLE, 2)),
    # ---- targets: a corpus step chain under a new phrasing and/or answer format
    _t("shorter_tone", "target", "open", _LENGTH2, "Which tone is shorter, the first or the second one?",
       PAIR, _compare("length", less=True)),
    _t("louder_tone_mc", "target", "mc", _LEVEL2, "Which tone sounds louder?",
       PAIR, _compare("level"), 2, _d_sample(PAIR, 1)),
    _t("count_clip", "target", "open", ["count_beeps"], "Count the beeps in the clip.",
       COUNTS, (_b_count, _s_count)),
    _t("sweep_choice", "target", "mc", ["sweep_dir"], "Which way does the pitch move?",
       DIRECTIONS, (_b_sweep, _s_sweep), 2, _d_sample(DIRECTIONS, 1)),
    # non-default targets
    _t("odd_tone_check", "target", "yesno", ["tone_at"], "Is the {pitch} tone the {nth} one?",
       YESNO, (_b_odd_yn, _s_odd_yn)),
    _t("lower_tone", "target", "open", _PITCH2, "Which tone is lower, the first or the second one?",
       PAIR, _compare("pitch", less=True)),
]

AUDIO_TASKS: dict[str, Task] = {t.name: t for t in _TASK_LIST}
# Two targets that need a rare skill of the audio generic mix, two that need only common skills.
AUDIO_DEFAULT_TARGETS: tuple[str, ...] = ("shorter_tone", "louder_tone_mc", "count_clip", "sweep_choice")

AUDIO = register_family(Family("audio", AUDIO_SKILLS, AUDIO_RARE_SKILLS, AUDIO_STEPS, AUDIO_TASKS,
                               AUDIO_DEFAULT_TARGETS))
AUDIO_CORPUS_TASKS: tuple[str, ...] = AUDIO.corpus_tasks
AUDIO_TARGET_TASKS: tuple[str, ...] = AUDIO.target_tasks
