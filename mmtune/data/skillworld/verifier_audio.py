"""Step checks of the audio family, merged into ``verifier.py``'s tables.

As for vision, a step's *subject* slots (which tone the question is about) must equal the
gold step's, and its *fact* slots are judged against the scene's events (see ``audio.py``):
the named tone really has that pitch, length or loudness; "So the second tone is higher"
holds only if that tone is high and every other one low; the number of beeps is the number
of events.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from .audio import DIRECTIONS, LENGTHS, LEVELS, ORDINALS, PITCHES
from .tasks_audio import AUDIO_STEPS, MORE_LESS



def _ALT(words):  # noqa: N802 - reads as a regex constructor in the table below
    return "(" + "|".join(re.escape(w) for w in words) + ")"


# slot name -> regex; slot names are distinct from the vision family's (``n`` is an integer there too)
AUDIO_SLOT_RE = {"nth": _ALT(ORDINALS), "pitch": _ALT(PITCHES), "length": _ALT(LENGTHS), "level": _ALT(LEVELS),
                 "direction": _ALT(DIRECTIONS)}


def _event(scene: dict, nth: str) -> dict | None:
    k = ORDINALS.index(nth)
    return scene["events"][k] if k < len(scene["events"]) else None


def _is(scene: dict, nth: str, attr: str, value: str) -> bool:
    e = _event(scene, nth)
    return e is not None and e.get(attr) == value


def _most(attr: str) -> Callable[[dict, dict], bool]:
    """"So the <nth> tone is <more>": that tone has the "more" category, every other the "less"."""
    more, less = MORE_LESS[attr]

    def check(v: dict, sc: dict) -> bool:
        k = ORDINALS.index(v["nth"])
        return k < len(sc["events"]) and all(e.get(attr) == (more if i == k else less)
                                             for i, e in enumerate(sc["events"]))
    return check


def _only_at(v: dict, sc: dict) -> bool:
    """"The <pitch> tone is the <nth> one": exactly one tone has that pitch, and it is the nth."""
    where = [i for i, e in enumerate(sc["events"]) if e.get("pitch") == v["pitch"]]
    return where == [ORDINALS.index(v["nth"])]


def _tone_pitch(v: dict, sc: dict) -> bool:
    return len(sc["events"]) == 1 and sc["events"][0].get("pitch") == v["pitch"]


def _sweep_dir(v: dict, sc: dict) -> bool:
    sweeps = [e for e in sc["events"] if e["type"] == "sweep"]
    return len(sweeps) == 1 and sweeps[0]["direction"] == v["direction"]


# kind -> (subject slots that must equal gold, fact predicate over (values, scene))
AUDIO_CHECKS: dict[str, tuple[tuple[str, ...], Callable[[dict, dict], bool]]] = {
    "count_beeps": ((), lambda v, sc: v["n"] == len(sc["events"])),
    "tone_pitch": ((), _tone_pitch),
    "pitch_of": (("nth",), lambda v, sc: _is(sc, v["nth"], "pitch", v["pitch"])),
    "higher": ((), _most("pitch")),
    "sweep_dir": ((), _sweep_dir),
    "length_of": (("nth",), lambda v, sc: _is(sc, v["nth"], "length", v["length"])),
    "longer": ((), _most("length")),
    "level_of": (("nth",), lambda v, sc: _is(sc, v["nth"], "level", v["level"])),
    "louder": ((), _most("level")),
    "tone_at": (("pitch",), _only_at),
}
assert set(AUDIO_CHECKS) == set(AUDIO_STEPS), "every audio step kind needs a check"
