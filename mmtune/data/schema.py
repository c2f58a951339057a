"""The Sample contract: the one Arrow schema every stage reads and writes.

A *sample* is one instruction/response turn, optionally grounded in one image and/or one
audio clip. Multi-turn conversations are split into one sample per (user, assistant) turn
pair by the readers (see :mod:`mmtune.data.readers`), each keeping the conversation's
image; earlier turns are not copied into ``instruction`` (that would multiply text length
and the corpus' size on disk for long chats).

Fields (see ARCHITECTURE.md, "Data contracts"):

=============  ==========================  ================================================
field          type                        meaning
=============  ==========================  ================================================
id             string, not null            unique within a dataset
task           string, not null            task name ("" when the source has none)
source         string, not null            where the row came from (file name, generator)
image          binary, nullable            encoded image bytes (PNG/JPEG/...), not pixels
audio          binary, nullable            encoded audio bytes (WAV/FLAC/...)
instruction    string, not null            the user's text, without image placeholders
response       string, not null            full target text: steps, then ``Answer: X``
steps          list<string>, not null      the response's reasoning steps (may be empty)
answer         string, not null            the final answer ("" when the source has none)
options        list<string>, nullable      candidate answers for multiple choice
skills         list<string>, not null      skill phrases; filled in by annotation
=============  ==========================  ================================================
"""

from __future__ import annotations

import re
from typing import Any, Iterable

import pyarrow as pa

SAMPLE_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("task", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("image", pa.binary(), nullable=True),
        pa.field("audio", pa.binary(), nullable=True),
        pa.field("instruction", pa.string(), nullable=False),
        pa.field("response", pa.string(), nullable=False),
        pa.field("steps", pa.list_(pa.string()), nullable=False),
        pa.field("answer", pa.string(), nullable=False),
        pa.field("options", pa.list_(pa.string()), nullable=True),
        pa.field("skills", pa.list_(pa.string()), nullable=False),
    ]
)

SAMPLE_FIELDS: tuple[str, ...] = tuple(SAMPLE_SCHEMA.names)

QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("source", pa.string()),
        pa.field("row", pa.int64()),  # position of the record in its source, 0-based
        pa.field("id", pa.string()),
        pa.field("reason", pa.string()),
        pa.field("record", pa.string()),  # the offending record as JSON (truncated)
    ]
)

_ANSWER_RE = re.compile(r"^\s*answer\s*[:：]\s*(.*?)\s*$", re.IGNORECASE)


def split_response(response: str) -> tuple[list[str], str]:
    """Split a response into (steps, answer).

    Steps are the non-empty lines before the last ``Answer: X`` line. A response without
    an ``Answer:`` line is all steps and an empty answer (real corpora often have no
    explicit answer line; the caller decides whether that is acceptable).
    """
    lines = [ln.strip() for ln in response.splitlines() if ln.strip()]
    for i in range(len(lines) - 1, -1, -1):
        m = _ANSWER_RE.match(lines[i])
        if m:
            return lines[:i], m.group(1)
    return lines, ""


def join_response(steps: Iterable[str], answer: str) -> str:
    """The canonical response text: one step per line, then ``Answer: X``."""
    return "\n".join([*steps, f"Answer: {answer}"])


def make_sample(
    *,
    id: str,
    instruction: str,
    response: str,
    task: str = "",
    source: str = "",
    image: bytes | None = None,
    audio: bytes | None = None,
    steps: list[str] | None = None,
    answer: str | None = None,
    options: list[str] | None = None,
    skills: list[str] | None = None,
) -> dict[str, Any]:
    """Build a Sample dict, deriving ``steps``/``answer`` from ``response`` if not given."""
    if steps is None or answer is None:
        parsed_steps, parsed_answer = split_response(response)
        steps = parsed_steps if steps is None else steps
        answer = parsed_answer if answer is None else answer
    return {
        "id": id,
        "task": task,
        "source": source,
        "image": image,
        "audio": audio,
        "instruction": instruction,
        "response": response,
        # Passed through as given: validation reports a wrong type (e.g. a string where a
        # list belongs) instead of this helper silently turning "abc" into ["a","b","c"].
        "steps": steps,
        "answer": answer,
        "options": options,
        "skills": skills if skills is not None else [],
    }


def to_table(samples: list[dict[str, Any]]) -> pa.Table:
    """Samples (dicts with every Sample field) to an Arrow table with SAMPLE_SCHEMA."""
    return pa.Table.from_pylist(samples, schema=SAMPLE_SCHEMA)
