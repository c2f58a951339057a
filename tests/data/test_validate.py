"""validate_sample: one stable reason category per kind of bad row."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from mmtune.data.schema import make_sample
from mmtune.data.validate import check_audio, check_image, reason_category, validate_sample


@pytest.fixture
def good(h):
    return make_sample(id="s1", instruction="What color?", response="Red.\nAnswer: red",
                       image=h.image_bytes("PNG"), audio=h.wav_bytes(), options=["red", "blue"])


def test_a_complete_sample_with_image_and_audio_passes(good, h):
    assert validate_sample(good, max_text_chars=100) is None
    assert validate_sample({**good, "image": h.image_bytes("JPEG"), "audio": None}, max_text_chars=100) is None


@pytest.mark.parametrize("change, reason", [
    ({"instruction": "  \n"}, "empty instruction"),
    ({"response": ""}, "empty response"),
    ({"id": " "}, "empty id"),
    ({"id": 3}, "bad type: id must be a string, got int"),
    ({"instruction": None}, "bad type: instruction must be a string, got NoneType"),
    ({"task": None}, "bad type: task must be a string, got NoneType"),
    ({"steps": "one step"}, "bad type: steps must be a list of strings, got str"),
    ({"steps": ["ok", 2]}, "bad type: steps must be a list of strings, has a int"),
    ({"options": "red"}, "bad type: options must be a list of strings, got str"),
    ({"skills": None}, "bad type: skills must be a list of strings, got NoneType"),
    ({"image": "path/to/img.png"}, "bad type: image must be encoded bytes or null, got str"),
    ({"image": b"not an image at all"}, "undecodable image: cannot identify image file"),
    ({"image": b""}, "undecodable image: cannot identify image file"),
    ({"audio": b"RIFF....WAVEjunk"}, "undecodable audio: "),
])
def test_bad_samples_get_a_reason(good, change, reason):
    got = validate_sample({**good, **change}, max_text_chars=100)
    assert got is not None and got.startswith(reason), got


def test_missing_field_is_named(good):
    sample = dict(good)
    del sample["skills"]
    assert validate_sample(sample, max_text_chars=100) == "missing field: skills"


def test_text_length_limit_is_inclusive_and_names_the_field_and_fix(good):
    assert validate_sample({**good, "response": "x" * 100}, max_text_chars=100) is None
    assert validate_sample({**good, "response": "x" * 101}, max_text_chars=100) == (
        "text too long: response has 101 chars > 100 (raise data.max_text_chars)")
    assert validate_sample({**good, "instruction": "x" * 9000}, max_text_chars=8192).startswith(
        "text too long: instruction has 9000 chars > 8192")


def test_truncated_images_are_undecodable(h):
    for fmt in ("PNG", "JPEG"):
        data = h.image_bytes(fmt, size=64)
        assert check_image(data) is None
        assert check_image(data[: len(data) // 2]).startswith("undecodable image"), fmt


def test_audio_check_decodes_real_audio_and_rejects_garbage(h):
    assert check_audio(h.wav_bytes()) is None
    assert check_audio(h.wav_bytes()[:40]).startswith("undecodable audio")
    assert check_audio(b"\x00" * 100).startswith("undecodable audio")


def test_audio_at_another_sampling_rate_is_refused_with_the_fix(h, good):
    clip = h.wav_bytes(rate=8000)
    assert check_audio(clip, 8000) is None and check_audio(clip) is None  # no rate asked: any rate
    reason = check_audio(clip, 16000)
    assert reason_category(reason) == "wrong sampling rate"
    assert "8000 Hz" in reason and "16000 Hz" in reason and "resample" in reason
    assert validate_sample({**good, "image": None, "audio": clip}, max_text_chars=100,
                           audio_sampling_rate=16000) == reason


def test_import_quarantines_clips_at_another_rate(h, tmp_path):
    from mmtune.data.importer import import_dataset

    clips = tmp_path / "clips"
    clips.mkdir()
    (clips / "ok.wav").write_bytes(h.wav_bytes(rate=16000))
    (clips / "cd.wav").write_bytes(h.wav_bytes(rate=44100))
    rows = [{"messages": [{"role": "user", "content": "<audio>What is it?"},
                          {"role": "assistant", "content": "A tone.\nAnswer: tone"}], "audios": [f"clips/{n}.wav"]}
            for n in ("ok", "cd")]
    src = h.write_json(tmp_path / "a.json", rows)
    rep = import_dataset(src, "sharegpt", tmp_path / "out", audio_sampling_rate=16000, progress=None)
    assert rep.written == 1 and rep.reasons == {"wrong sampling rate": 1}
    assert "44100 Hz" in "".join(pq.read_table(rep.quarantine_path).column("reason").to_pylist())


def test_checks_stop_at_the_first_problem_cheapest_first(good):
    # An empty instruction is reported even though the image is also bad.
    assert validate_sample({**good, "instruction": "", "image": b"junk"}, max_text_chars=100) == "empty instruction"


def test_reason_category_is_the_text_before_the_colon():
    assert reason_category("text too long: response has 9 chars > 8") == "text too long"
    assert reason_category("empty instruction") == "empty instruction"
    assert reason_category("image not found: /a:b.png") == "image not found"
