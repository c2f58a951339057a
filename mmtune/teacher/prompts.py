"""Versioned prompt templates: ``prompts/<name>.<version>.txt``.

Prompts live in files, not strings in code, so that a change of wording is a new version
that shows up in every record it produced (``Template.id``, e.g. ``answer_switch.v1``).
Lines starting with ``#`` are comments for maintainers and are not sent to the teacher.
Slots are ``{name}``; rendering fails loudly on a missing or unknown slot.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from functools import cache
from pathlib import Path

PROMPT_DIR = Path(__file__).parent / "prompts"
NAMES = ("answer_switch", "answer_switch_text", "skill_analysis", "annotate", "which_step")


@dataclass(frozen=True)
class Template:
    name: str
    version: str
    text: str

    @property
    def id(self) -> str:
        return f"{self.name}.{self.version}"

    @property
    def slots(self) -> frozenset[str]:
        return frozenset(f for _, f, _, _ in string.Formatter().parse(self.text) if f)

    def render(self, **values: object) -> str:
        missing = self.slots - values.keys()
        extra = values.keys() - self.slots
        if missing or extra:
            raise KeyError(f"prompt {self.id}: missing slots {sorted(missing)}, unknown slots {sorted(extra)}")
        return self.text.format(**values)


@cache
def load_template(name: str, version: str = "v1") -> Template:
    path = PROMPT_DIR / f"{name}.{version}.txt"
    if not path.is_file():
        have = sorted(p.name for p in PROMPT_DIR.glob(f"{name}.*.txt"))
        raise FileNotFoundError(f"no prompt template {path.name} in {PROMPT_DIR}; available: {have} "
                                f"(set teacher.prompt_version to one of them)")
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if not ln.startswith("#")]
    # The final newline is dropped so that a prompt ends right after "Answer:" / "Skill:".
    return Template(name, version, "\n".join(lines).rstrip("\n"))


def numbered(steps: list[str]) -> str:
    """Steps as ``1. ...`` lines; ``(none yet)`` for an empty prefix."""
    return "\n".join(f"{i}. {s}" for i, s in enumerate(steps, 1)) if steps else "(none yet)"
