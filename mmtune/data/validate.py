"""Checks a Sample dict before it is written, so later stages can trust every row.

A failing sample is quarantined, not fixed: the reason tells the user what to change in
their data or config. Reasons are ``<category>`` or ``<category>: <detail>`` with a fixed
category (see :func:`reason_category`), so an import can count them by kind.
"""

from __future__ import annotations

import io
from typing import Any

from mmtune.data.schema import SAMPLE_FIELDS

_TEXT_FIELDS = ("id", "task", "source", "instruction", "response", "answer")
_LONG_FIELDS = ("instruction", "response")


def reason_category(reason: str) -> str:
    """The stable part of a reason: ``"text too long: response has ..."`` -> ``"text too long"``."""
    return reason.split(":", 1)[0].strip()


def _type_name(value: Any) -> str:
    return type(value).__name__


def _check_types(sample: dict[str, Any]) -> str | None:
    for name in _TEXT_FIELDS:
        if not isinstance(sample[name], str):
            return f"bad type: {name} must be a string, got {_type_name(sample[name])}"
    for name in ("image", "audio"):
        if sample[name] is not None and not isinstance(sample[name], bytes):
            return f"bad type: {name} must be encoded bytes or null, got {_type_name(sample[name])}"
    for name in ("steps", "options", "skills"):
        value = sample[name]
        if value is None and name == "options":
            continue
        if not isinstance(value, list):
            return f"bad type: {name} must be a list of strings, got {_type_name(value)}"
        bad = next((v for v in value if not isinstance(v, str)), None)
        if bad is not None:
            return f"bad type: {name} must be a list of strings, has a {_type_name(bad)}"
    return None


def _not_utf8(text: str) -> str | None:
    """Why ``text`` cannot be stored as UTF-8 (a lone surrogate: bytes that were not UTF-8
    in the source file, or an escaped half of a surrogate pair such as ``"\\ud800"``), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return f"{text[e.start]!r} at character {e.start}"
    return None


def _check_encoding(sample: dict[str, Any]) -> str | None:
    for name in _TEXT_FIELDS + ("steps", "options", "skills"):
        value = sample[name]
        for text in value if isinstance(value, list) else [] if value is None else [value]:
            why = _not_utf8(text)
            if why:
                return (f"bad encoding: {name} is not valid UTF-8 text ({why}); re-encode the source file "
                        "as UTF-8 (e.g. iconv -f latin1 -t utf-8)")
    return None


def check_image(data: bytes) -> str | None:
    """None if PIL can decode ``data`` fully, else ``undecodable image: ...``."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            # JPEG can decode at 1/8 scale: catches truncation at a fraction of the cost.
            im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))
            im.load()
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError, ...)
        return f"undecodable image: {e}"
    return None


def check_audio(data: bytes, sampling_rate: int | None = None) -> str | None:
    """None if soundfile can open ``data`` and read frames from it (at ``sampling_rate`` Hz,
    when given), else ``undecodable audio: ...`` or ``wrong sampling rate: ...``.

    The rate is checked here, at import, because the student's feature extractor refuses
    another rate (mmtune never resamples behind the user's back: models/inputs.py): a
    44.1 kHz clip found at training time would fail a run hours in."""
    import soundfile as sf

    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            if f.frames == 0:
                return "undecodable audio: no frames"
            f.read(frames=min(f.frames, 4096))
            rate = f.samplerate
    except Exception as e:  # soundfile raises LibsndfileError, RuntimeError, TypeError
        return f"undecodable audio: {e}"
    if sampling_rate is not None and rate != sampling_rate:
        return (f"wrong sampling rate: {rate} Hz, the student needs {sampling_rate} Hz "
                f"(data.audio_sampling_rate); resample the clip (e.g. `sox in.wav -r {sampling_rate} out.wav`) "
                "and import again")
    return None


def validate_sample(sample: dict[str, Any], *, max_text_chars: int,
                    audio_sampling_rate: int | None = None) -> str | None:
    """None if ``sample`` may be written, else a short reason (see module docstring).

    Checks run cheapest first, and decoding the media comes last, so a bad text field
    never costs an image decode.
    """
    missing = [f for f in SAMPLE_FIELDS if f not in sample]
    if missing:
        return f"missing field: {', '.join(missing)}"
    reason = _check_types(sample) or _check_encoding(sample)
    if reason:
        return reason
    for name in ("id", "instruction", "response"):
        if not sample[name].strip():
            return f"empty {name}"
    for name in _LONG_FIELDS:
        n = len(sample[name])
        if n > max_text_chars:
            return f"text too long: {name} has {n} chars > {max_text_chars} (raise data.max_text_chars)"
    if sample["image"] is not None:
        reason = check_image(sample["image"])
        if reason:
            return reason
    if sample["audio"] is not None:
        return check_audio(sample["audio"], audio_sampling_rate)
    return None
