"""One raw record (a dict from JSON, JSONL or parquet) to Sample dicts or quarantine rows.

The record's shape is told by its keys, so one file (or one JSONL stream) may mix them:

* **conversation**: LLaVA ``{id, image, conversations: [{from: human|gpt, value}]}`` and
  ShareGPT / LLaMA-Factory ``{messages: [{role: user|assistant|system, content}],
  images: [...], audios: [...], system?}``. Either message key style is accepted.
* **sample**: already Sample-shaped, ``{id?, instruction, response, image?, audio?, ...}``.

A conversation gives one sample per (user, assistant) pair, because the Sample holds one
turn. Every turn keeps the image: LLaMA-Factory's demo puts ``<image>`` in the first user
turn only, yet the second turn asks about the same picture. With several images, the turn
holding the k-th ``<image>`` tag gets ``images[k]`` and later turns keep the latest one;
a turn with two tags cannot fit one Sample and is quarantined. Audio works the same way.

Media entries may be a path (relative paths resolve against ``base_dir``), raw bytes, or
an HF ``datasets`` struct ``{"bytes", "path"}``. Files are read as bytes, not decoded:
decoding is validation's job (:mod:`mmtune.data.validate`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmtune.data.schema import make_sample

IMAGE_TAG = "<image>"
AUDIO_TAG = "<audio>"
RECORD_JSON_CHARS = 2000  # raw record kept in a quarantine row, so the file stays small

_ROLES = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant",
          "system": "system"}


@dataclass(frozen=True)
class ReadResult:
    """What a reader yields for each sample it tried to make: exactly one of the two.

    ``sample`` is a dict with every Sample field; ``quarantine`` is a dict with the fields
    of ``QUARANTINE_SCHEMA``. ``source`` (the file path) and ``row`` (the record's 0-based
    position in it) are kept on both, so later stages can quarantine with provenance.
    """

    source: str
    row: int
    sample: dict[str, Any] | None = None
    quarantine: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.sample is not None


@dataclass(frozen=True)
class SourceFile:
    """The file a record came from, and where its relative media paths point."""

    path: Path
    base_dir: Path

    @property
    def name(self) -> str:
        return self.path.name


class RecordError(ValueError):
    """A record (or one of its turns) that cannot become a Sample; the message is the reason."""


def _jsonable(o: Any) -> Any:
    if isinstance(o, (bytes, bytearray, memoryview)):
        return f"<{len(o)} bytes>"
    return repr(o)


def record_json(obj: Any, limit: int = RECORD_JSON_CHARS) -> str:
    """``obj`` as JSON for a quarantine row: bytes shown by size, cut at ``limit`` chars."""
    text = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False, default=_jsonable)
    return text if len(text) <= limit else text[:limit] + f"...<{len(text) - limit} more chars>"


def quarantined(src: SourceFile, row: int, id: str, reason: str, raw: Any) -> ReadResult:
    return ReadResult(str(src.path), row, quarantine={
        "source": str(src.path), "row": row, "id": id, "reason": reason, "record": record_json(raw)})


# --------------------------------------------------------------------------- helpers
def strip_tags(text: str, *tags: str) -> str:
    """Remove placeholder tags and tidy the whitespace around them, nothing else.

    A tag at either end disappears with its surrounding whitespace; one in the middle
    becomes a single space (or a newline if it stood on its own line), so the rest of the
    text (code indentation, paragraphs) is left as written.
    """
    if not any(t in text for t in tags):  # the common case, ~10x faster than the regex
        return text.strip()
    pattern = re.compile(r"\s*(?:" + "|".join(re.escape(t) for t in tags) + r")\s*")
    return pattern.sub(_tag_gap, text).strip()


def _tag_gap(m: re.Match[str]) -> str:
    if m.start() == 0 or m.end() == len(m.string):
        return ""
    return "\n" if "\n" in m.group() else " "


class _Media:
    """Loads image/audio entries for one record; the cache avoids re-reading per turn."""

    def __init__(self, base_dir: Path):
        self.base_dir = base_dir
        self.cache: dict[Path, bytes | RecordError] = {}

    def load(self, entry: Any, kind: str) -> bytes | None:
        if entry is None:
            return None
        if isinstance(entry, (bytes, bytearray, memoryview)):
            return bytes(entry)
        if isinstance(entry, dict):  # HF datasets Image()/Audio() feature: {bytes, path}
            if entry.get("bytes"):
                return bytes(entry["bytes"])
            entry = entry.get("path")
            if not entry:
                raise RecordError(f"bad type: {kind} struct has neither bytes nor path")
        if not isinstance(entry, str):
            raise RecordError(f"bad type: {kind} must be a path or bytes, got {type(entry).__name__}")
        path = Path(entry).expanduser()
        if not path.is_absolute():
            path = self.base_dir / path
        if path not in self.cache:  # failures are cached too: every turn reports them
            try:
                self.cache[path] = path.read_bytes()
            except FileNotFoundError:
                self.cache[path] = RecordError(f"{kind} not found: {path.absolute()}")
            except (OSError, ValueError) as e:  # ValueError: a NUL byte in the path
                self.cache[path] = RecordError(f"{kind} unreadable: {path}: {getattr(e, 'strerror', None) or e}")
        data = self.cache[path]
        if isinstance(data, RecordError):
            raise data
        return data


def _entries(rec: dict[str, Any], plural: str, singular: str) -> list[Any]:
    value = rec.get(plural)
    if value is None:
        value = rec.get(singular)
    if value is None:
        return []
    if isinstance(value, (str, bytes, dict)):
        return [value]
    if isinstance(value, list):
        return value
    raise RecordError(f"bad type: {plural} must be a list of paths, got {type(value).__name__}")


def _record_id(rec: dict[str, Any], src: SourceFile, row: int) -> str:
    value = rec.get("id")
    if value is None or value == "":
        return f"{src.path.stem}-{row}"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise RecordError(f"bad type: id must be a string, got {type(value).__name__}")
    return value


def _turns(rec: dict[str, Any]) -> tuple[str, list[tuple[str, str | None]]]:
    """(system text, [(user text, assistant text or None if unanswered), ...])."""
    msgs = rec.get("messages", rec.get("conversations"))
    if not isinstance(msgs, list):
        raise RecordError(f"bad type: messages must be a list, got {type(msgs).__name__}")
    system = rec.get("system") or ""
    if not isinstance(system, str):
        raise RecordError(f"bad type: system must be a string, got {type(system).__name__}")
    pairs: list[tuple[str, str | None]] = []
    user: str | None = None
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise RecordError(f"bad type: message {i} must be an object, got {type(m).__name__}")
        raw_role = m.get("role", m.get("from"))
        text = m.get("content", m.get("value"))
        role = _ROLES.get(str(raw_role).lower())
        if role is None:
            raise RecordError(f"unsupported role: {raw_role!r} in message {i} "
                              "(expected user/human, assistant/gpt or system)")
        if not isinstance(text, str):
            raise RecordError(f"bad type: message {i} content must be a string, got {type(text).__name__}")
        if role == "system":
            if pairs or user is not None:
                raise RecordError(f"bad conversation: system message {i} comes after the first user turn")
            system = f"{system}\n\n{text}".strip() if system else text
        elif role == "user":
            if user is not None:
                raise RecordError(f"bad conversation: two user messages in a row (message {i})")
            user = text
        else:
            if user is None:
                raise RecordError(f"bad conversation: assistant message {i} does not answer a user message")
            pairs.append((user, text))
            user = None
    if user is not None:
        pairs.append((user, None))
    if not pairs:
        raise RecordError("bad conversation: no user/assistant turns")
    return system, pairs


def _assign(user_texts: list[str], entries: list[Any], tag: str, kind: str) -> list[tuple[int | None, str | None]]:
    """For each turn: (index into ``entries`` or None, per-turn error or None)."""
    counts = [t.count(tag) for t in user_texts]
    total = sum(counts)
    if total == 0:
        if len(entries) > 1:
            raise RecordError(f"{kind} count mismatch: {len(entries)} {kind}s but no {tag} tag")
        # One untagged image: every turn is about it (LLaVA data without the tag).
        return [(0 if entries else None, None)] * len(counts)
    if total != len(entries):
        raise RecordError(f"{kind} count mismatch: {total} {tag} tags but {len(entries)} {kind}s")
    out: list[tuple[int | None, str | None]] = []
    seen, current = 0, None
    for k, n in enumerate(counts):
        if n:
            seen += n
            current = seen - 1
        error = (f"multiple {kind}s in one turn: {n} {tag} tags in turn {k} "
                 f"(a Sample holds one {kind})") if n > 1 else None
        out.append((current, error))
    return out


# --------------------------------------------------------------------------- shapes
def _from_conversation(rec: dict[str, Any], src: SourceFile, row: int, rid: str) -> list[ReadResult]:
    if rec.get("videos") or rec.get("video"):
        raise RecordError("unsupported modality: video (a Sample holds one image and one audio)")
    system, pairs = _turns(rec)
    users = [u for u, _ in pairs]
    images = _entries(rec, "images", "image")
    audios = _entries(rec, "audios", "audio")
    img_of = _assign(users, images, IMAGE_TAG, "image")
    aud_of = _assign(users, audios, AUDIO_TAG, "audio")
    media = _Media(src.base_dir)
    results = []
    for k, (user, answer) in enumerate(pairs):
        sid = f"{rid}_t{k}" if len(pairs) > 1 else rid
        try:
            if answer is None:
                raise RecordError(f"bad conversation: user turn {k} has no assistant reply")
            for _, error in (img_of[k], aud_of[k]):
                if error:
                    raise RecordError(error)
            instruction = strip_tags(user, IMAGE_TAG, AUDIO_TAG)
            if system:
                instruction = f"{system}\n\n{instruction}"
            sample = make_sample(
                id=sid, instruction=instruction, response=strip_tags(answer, IMAGE_TAG, AUDIO_TAG),
                task=rec.get("task") or "", source=src.name,
                image=None if img_of[k][0] is None else media.load(images[img_of[k][0]], "image"),
                audio=None if aud_of[k][0] is None else media.load(audios[aud_of[k][0]], "audio"))
            _set_raw_lists(sample, rec, ("options", "skills"))
            results.append(ReadResult(str(src.path), row, sample=sample))
        except RecordError as e:
            results.append(quarantined(src, row, sid, str(e), rec))
    return results


def _from_sample(rec: dict[str, Any], src: SourceFile, row: int, rid: str) -> list[ReadResult]:
    media = _Media(src.base_dir)
    instruction, response = rec.get("instruction"), rec.get("response")
    if isinstance(instruction, str):
        instruction = strip_tags(instruction, IMAGE_TAG, AUDIO_TAG)
    # split_response needs a str; a non-str response is left for validation to report.
    parse = isinstance(response, str)
    sample = make_sample(
        id=rid, instruction=instruction, response=response, task=rec.get("task") or "",
        source=rec.get("source") or src.name,
        image=media.load(rec.get("image"), "image"), audio=media.load(rec.get("audio"), "audio"),
        steps=None if parse else [], answer=rec.get("answer") if parse else "")
    _set_raw_lists(sample, rec, ("steps", "options", "skills"))
    return [ReadResult(str(src.path), row, sample=sample)]


def _set_raw_lists(sample: dict[str, Any], rec: dict[str, Any], names: tuple[str, ...]) -> None:
    """The record's own list fields win over those derived from its response, and go in
    as they are: validation should see, and name, a bad type."""
    for name in names:
        if rec.get(name) is not None:
            sample[name] = rec[name]


def record_shape(rec: Any) -> str | None:
    """"conversation", "sample", or None when the keys match neither."""
    if not isinstance(rec, dict):
        return None
    if "messages" in rec or "conversations" in rec:
        return "conversation"
    if "instruction" in rec or "response" in rec:
        return "sample"
    return None


def convert_record(rec: Any, src: SourceFile, row: int, expect: str = "auto") -> list[ReadResult]:
    """All the samples (and quarantine rows) one record yields. Never raises for bad data.

    ``expect`` is "auto" (shape from the keys), or "conversation" when the caller was told
    the format is llava/sharegpt, so a record of another shape is quarantined.
    """
    shape = record_shape(rec)
    rid = f"{src.path.stem}-{row}"
    try:
        if not isinstance(rec, dict):
            raise RecordError(f"bad record: expected a JSON object, got {type(rec).__name__}")
        rid = _record_id(rec, src, row)
        if shape is None or (expect != "auto" and shape != expect):
            wanted = ("'conversations' (LLaVA) or 'messages' (ShareGPT)" if expect == "conversation"
                      else "'conversations' (LLaVA), 'messages' (ShareGPT) or 'instruction'+'response' (Sample)")
            raise RecordError(f"unrecognized record: expected {wanted}; got keys {sorted(rec)[:12]}")
        if shape == "conversation":
            return _from_conversation(rec, src, row, rid)
        return _from_sample(rec, src, row, rid)
    except RecordError as e:
        return [quarantined(src, row, rid, str(e), rec)]
