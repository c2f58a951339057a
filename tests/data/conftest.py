"""Shared data-test fixtures: real media made with PIL/soundfile, fixture-file writers.

Helpers are handed out as fixtures (not imported) so the tests work whatever the test
package layout becomes.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

LLAMAFACTORY = Path(__file__).resolve().parents[1] / "fixtures" / "llamafactory"


def _image_bytes(fmt: str = "PNG", color: tuple[int, int, int] = (200, 30, 30), size: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format=fmt)
    return buf.getvalue()


def _wav_bytes(seconds: float = 0.1, rate: int = 8000) -> bytes:
    buf = io.BytesIO()
    t = np.arange(int(seconds * rate)) / rate
    sf.write(buf, (0.3 * np.sin(2 * np.pi * 440 * t)).astype("float32"), rate, format="WAV")
    return buf.getvalue()


def _write_json(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=1))
    return path


def _write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


@pytest.fixture
def h():
    """Helpers: image_bytes, wav_bytes, write_json, write_jsonl, llamafactory (dir)."""
    return SimpleNamespace(image_bytes=_image_bytes, wav_bytes=_wav_bytes, write_json=_write_json,
                           write_jsonl=_write_jsonl, llamafactory=LLAMAFACTORY)


@pytest.fixture
def media(tmp_path: Path) -> dict[str, bytes]:
    """Writes red.png, blue.jpg and tone.wav under tmp_path/media; returns name -> bytes."""
    files = {"red.png": _image_bytes("PNG"), "blue.jpg": _image_bytes("JPEG", (20, 40, 220)),
             "tone.wav": _wav_bytes()}
    (tmp_path / "media").mkdir()
    for name, data in files.items():
        (tmp_path / "media" / name).write_bytes(data)
    return files
