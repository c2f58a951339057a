"""Parsing teacher replies into skill phrases and step numbers.

Real LLMs answer with preambles ("Sure! The skill is:"), quotes, markdown, numbering and
several lines. The parser only *extracts* text: nothing in a reply is ever executed or
used as an instruction, so a corpus sample that says "ignore previous instructions" can
at worst become an odd phrase, which the length and character limits below also catch.
"""

from __future__ import annotations

import re

MAX_WORDS = 12
MAX_CHARS = 100

_PREAMBLE = re.compile(
    r"^(?:(?:sure|okay|ok|certainly|of course|here(?:'s| is| are)?|answer|response|output|final answer)"
    r"\b[^:\n]*?[:!.,]\s*)+", re.IGNORECASE)
_LEAD_IN = re.compile(
    r"^(?:the\s+)?(?:(?:one|single|main|key|missing|lacking|required|needed|general|core)\s+)*"
    r"(?:skills?|capabilit(?:y|ies)|abilit(?:y|ies))(?:\s+(?:is|are|was|needed|required|exercised|lacking|lacked"
    r"|missing|the student lacked|that the student lacked|would be))*\s*[:\-–—]?\s*", re.IGNORECASE)
_BULLET = re.compile(r"^\s*(?:[-*•·>]+|\(?\d+[.)]|\(?[a-zA-Z][.)](?=\s))\s*")
_MARKUP = re.compile(r"[*_`#]+")
_ALLOWED = re.compile(r"^[a-z0-9][a-z0-9 ,'\-/()]*$")
_WORDS = {w: i for i, w in enumerate(
    ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"])}


def _clean(fragment: str) -> str | None:
    t = _MARKUP.sub("", fragment).strip()
    t = _BULLET.sub("", t)
    t = _PREAMBLE.sub("", t)
    t = _LEAD_IN.sub("", t)
    t = t.strip().strip("\"'“”‘’«»").strip()
    # A phrase ends at the first sentence break: "counting objects. This is because..."
    t = re.split(r"(?<=[a-z0-9)])[.!?](?:\s|$)|\s[-–—]\s|\bbecause\b", t, maxsplit=1)[0]
    t = " ".join(t.lower().rstrip(" .;:!?,").split())
    if not t or len(t) > MAX_CHARS or len(t.split()) > MAX_WORDS or not _ALLOWED.match(t):
        return None
    if t in {"none", "n/a", "unknown", "skill", "skills", "the skill", "i don't know"}:
        return None
    return t


def _lines(text: str) -> list[str]:
    return [ln for ln in (text or "").replace("\r", "\n").split("\n") if ln.strip()]


def parse_skill(text: str) -> str | None:
    """The one skill phrase of a skill-analysis reply, or None when there is none.

    The first line that yields a clean phrase wins, so a lone preamble line ("Here is the
    skill:") is skipped and an explanation after the phrase is ignored.
    """
    for line in _lines(text):
        phrase = _clean(line)
        if phrase:
            return phrase
    return None


def parse_skills(text: str, limit: int = 8) -> list[str]:
    """Skill phrases of an annotation reply: split on semicolons, lines and bullets."""
    out: list[str] = []
    for line in _lines(text):
        line = _PREAMBLE.sub("", _MARKUP.sub("", line).strip())
        line = _LEAD_IN.sub("", line)
        for part in re.split(r";|\s\|\s", line):
            phrase = _clean(part)
            if phrase and phrase not in out:
                out.append(phrase)
    return out[:limit]


def parse_step_number(text: str, n_steps: int) -> int | None:
    """The first step number in 1..n_steps named in a reply ("3", "Step 2.", "step two")."""
    for tok in re.findall(r"\d+|[a-z]+", (text or "").lower()):
        v = int(tok) if tok.isdigit() else _WORDS.get(tok)
        if v is not None and 1 <= v <= n_steps:
            return v
    return None
