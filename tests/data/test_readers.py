"""Readers: formats, conversation splitting, media resolution, streaming JSON."""

from __future__ import annotations

import io
import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from PIL import Image

from mmtune.data.jsonstream import JSONStreamError, iter_json_values
from mmtune.data.readers import iter_chunks, iter_samples, resolve_inputs
from mmtune.data.records import strip_tags
from mmtune.data.schema import SAMPLE_FIELDS, SAMPLE_SCHEMA


def split(results):
    results = list(results)
    return [r.sample for r in results if r.ok], [r.quarantine for r in results if not r.ok]


# --------------------------------------------------------------------------- LLaMA-Factory files
def test_llamafactory_image_demo_gives_two_turns_per_conversation_all_with_images(h):
    samples, bad = split(iter_samples(h.llamafactory / "mllm_demo.json"))
    assert bad == []
    assert len(samples) == 12
    assert [s["id"] for s in samples[:2]] == ["mllm_demo-0_t0", "mllm_demo-0_t1"]
    for s in samples:
        assert set(s) == set(SAMPLE_FIELDS)
        assert s["image"] and "<image>" not in s["instruction"]
        Image.open(io.BytesIO(s["image"])).load()
        assert s["source"] == "mllm_demo.json" and s["audio"] is None
    # Conversation 1 has <image> only in its first turn: the second turn keeps the image.
    jpg2 = (h.llamafactory / "mllm_demo_data" / "2.jpg").read_bytes()
    assert samples[2]["image"] == samples[3]["image"] == jpg2
    assert samples[3]["instruction"] == "Why is he on the ground?"
    # Conversation 0 has a trailing tag in turn 2: removed, text tidy.
    assert samples[1]["instruction"] == "What are they doing?"
    assert samples[1]["response"] == "They are celebrating on the soccer field."
    assert samples[1]["steps"] == ["They are celebrating on the soccer field."] and samples[1]["answer"] == ""
    assert samples[6]["instruction"] == "他们是谁？"


def test_llamafactory_audio_demo_quarantines_missing_mp3_and_loads_wav_and_flac(h):
    samples, bad = split(iter_samples(h.llamafactory / "mllm_audio_demo.json"))
    assert len(bad) == 1
    missing = h.llamafactory / "mllm_demo_data" / "1.mp3"
    assert bad[0]["reason"] == f"audio not found: {missing.absolute()}"
    assert bad[0]["row"] == 0 and bad[0]["id"] == "mllm_audio_demo-0"
    assert "1.mp3" in bad[0]["record"]
    assert [s["instruction"] for s in samples] == ["What can you hear?", "What does the person say?"]
    for s in samples:
        data, rate = sf.read(io.BytesIO(s["audio"]))
        assert rate == 16000 and len(data) > 1000 and s["image"] is None


# --------------------------------------------------------------------------- llava / sharegpt
def test_llava_multiturn_with_answer_lines_and_relative_image(tmp_path, media, h):
    h.write_json(tmp_path / "llava.json", [
        {"id": "q1", "image": "media/red.png", "task": "color",
         "conversations": [
             {"from": "human", "value": "<image>\nWhat color is it?\nA. red\nB. blue"},
             {"from": "gpt", "value": "The square is red.\nAnswer: A"},
             {"from": "human", "value": "Is it   bright?"},
             {"from": "gpt", "value": "Yes."}]},
        {"id": 7, "conversations": [{"from": "human", "value": "Say hi"}, {"from": "gpt", "value": "hi"}]},
    ])
    samples, bad = split(iter_samples(tmp_path / "llava.json", "llava"))
    assert bad == []
    assert [s["id"] for s in samples] == ["q1_t0", "q1_t1", "7"]
    first = samples[0]
    assert first["instruction"] == "What color is it?\nA. red\nB. blue"
    assert first["steps"] == ["The square is red."] and first["answer"] == "A"
    assert first["image"] == media["red.png"] == samples[1]["image"]
    assert first["task"] == "color" and samples[2]["task"] == ""
    assert samples[1]["instruction"] == "Is it   bright?"  # only tags are tidied, not the text
    assert samples[2]["image"] is None


def test_image_root_overrides_the_data_file_directory(tmp_path, media, h):
    (tmp_path / "data").mkdir()
    h.write_json(tmp_path / "data" / "d.json", [
        {"id": "a", "image": "red.png", "conversations": [
            {"from": "human", "value": "<image>What?"}, {"from": "gpt", "value": "red"}]}])
    _, bad = split(iter_samples(tmp_path / "data" / "d.json"))
    assert bad[0]["reason"] == f"image not found: {(tmp_path / 'data' / 'red.png').absolute()}"
    samples, bad = split(iter_samples(tmp_path / "data" / "d.json", image_root=tmp_path / "media"))
    assert bad == [] and samples[0]["image"] == media["red.png"]
    # Absolute paths are used as they are.
    h.write_json(tmp_path / "data" / "d.json", [
        {"id": "a", "image": str(tmp_path / "media" / "blue.jpg"), "conversations": [
            {"from": "human", "value": "<image>What?"}, {"from": "gpt", "value": "blue"}]}])
    samples, _ = split(iter_samples(tmp_path / "data" / "d.json"))
    assert samples[0]["image"] == media["blue.jpg"]


def test_sharegpt_system_prompt_kth_image_and_audio(tmp_path, media, h):
    h.write_json(tmp_path / "sg.json", [{
        "id": "conv",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "<image><audio>What is shown and heard?"},
            {"role": "assistant", "content": "A red square and a tone."},
            {"role": "user", "content": "And now? <image>"},
            {"role": "assistant", "content": "A blue square."},
            {"role": "user", "content": "Which was first?"},
            {"role": "assistant", "content": "red\nAnswer: red"}],
        "images": ["media/red.png", "media/blue.jpg"],
        "audios": ["media/tone.wav"]}])
    samples, bad = split(iter_samples(tmp_path / "sg.json"))
    assert bad == []
    assert [s["image"] for s in samples] == [media["red.png"], media["blue.jpg"], media["blue.jpg"]]
    assert [s["audio"] for s in samples] == [media["tone.wav"]] * 3
    assert samples[0]["instruction"] == "You are terse.\n\nWhat is shown and heard?"
    assert samples[1]["instruction"] == "You are terse.\n\nAnd now?"
    assert samples[2]["answer"] == "red"


def test_sharegpt_conversations_key_with_human_gpt_roles_and_top_level_system(tmp_path, media, h):
    h.write_jsonl(tmp_path / "c.jsonl", [{
        "system": "Be brief.", "images": ["media/red.png"],
        "conversations": [{"from": "human", "value": "<image>Color?"}, {"from": "gpt", "value": "Red."}]}])
    samples, bad = split(iter_samples(tmp_path / "c.jsonl"))
    assert bad == [] and samples[0]["instruction"] == "Be brief.\n\nColor?"
    assert samples[0]["id"] == "c-0" and samples[0]["image"] == media["red.png"]


def test_turn_with_two_image_tags_is_quarantined_alone(tmp_path, media, h):
    h.write_json(tmp_path / "two.json", [{
        "id": "x",
        "messages": [{"role": "user", "content": "Compare <image> and <image>."},
                     {"role": "assistant", "content": "Different."},
                     {"role": "user", "content": "Which is blue?"},
                     {"role": "assistant", "content": "The second."}],
        "images": ["media/red.png", "media/blue.jpg"]}])
    samples, bad = split(iter_samples(tmp_path / "two.json"))
    assert [q["id"] for q in bad] == ["x_t0"]
    assert bad[0]["reason"].startswith("multiple images in one turn: 2 <image> tags in turn 0")
    # The later turn keeps the most recent image.
    assert [s["id"] for s in samples] == ["x_t1"] and samples[0]["image"] == media["blue.jpg"]


def test_missing_image_quarantines_every_turn_that_uses_it(tmp_path, media, h):
    h.write_json(tmp_path / "m.json", [{
        "id": "m", "image": "media/nope.png",
        "conversations": [{"from": "human", "value": "<image>a"}, {"from": "gpt", "value": "b"},
                          {"from": "human", "value": "c"}, {"from": "gpt", "value": "d"}]}])
    samples, bad = split(iter_samples(tmp_path / "m.json"))
    assert samples == []
    assert [q["id"] for q in bad] == ["m_t0", "m_t1"]
    assert all(q["reason"] == f"image not found: {(tmp_path / 'media' / 'nope.png').absolute()}" for q in bad)


@pytest.mark.parametrize("record, reason", [
    ({"messages": [{"role": "user", "content": "<image>a"}, {"role": "assistant", "content": "b"}]},
     "image count mismatch: 1 <image> tags but 0 images"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
      "images": ["media/red.png", "media/blue.jpg"]}, "image count mismatch: 2 images but no <image> tag"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]},
     "bad conversation: two user messages in a row (message 1)"),
    ({"messages": [{"role": "assistant", "content": "a"}]},
     "bad conversation: assistant message 0 does not answer a user message"),
    ({"messages": [{"role": "function_call", "content": "a"}]}, "unsupported role: 'function_call'"),
    ({"messages": [{"role": "user", "content": ["a"]}]}, "bad type: message 0 content must be a string"),
    ({"messages": []}, "bad conversation: no user/assistant turns"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
      "videos": ["v.mp4"]}, "unsupported modality: video"),
    ({"id": ["x"], "instruction": "a", "response": "b"}, "bad type: id must be a string"),
    ({"question": "a", "answer": "b"}, "unrecognized record: expected"),
    (["not", "an", "object"], "bad record: expected a JSON object, got list"),
])
def test_bad_records_are_quarantined_with_reason(tmp_path, media, h, record, reason):
    h.write_json(tmp_path / "bad.json", [record])
    samples, bad = split(iter_samples(tmp_path / "bad.json"))
    assert samples == [] and len(bad) == 1
    assert bad[0]["reason"].startswith(reason), bad[0]["reason"]
    assert bad[0]["source"] == str(tmp_path / "bad.json") and bad[0]["row"] == 0


def test_unanswered_last_turn_is_quarantined_but_earlier_turns_load(tmp_path, h):
    h.write_json(tmp_path / "u.json", [{"id": "u", "messages": [
        {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"}]}])
    samples, bad = split(iter_samples(tmp_path / "u.json"))
    assert [s["id"] for s in samples] == ["u_t0"]
    assert bad[0]["id"] == "u_t1" and bad[0]["reason"].startswith("bad conversation: user turn 1 has no")


def test_single_untagged_image_applies_to_every_turn(tmp_path, media, h):
    h.write_json(tmp_path / "n.json", [{"id": "n", "image": "media/red.png", "conversations": [
        {"from": "human", "value": "a"}, {"from": "gpt", "value": "b"},
        {"from": "human", "value": "c"}, {"from": "gpt", "value": "d"}]}])
    samples, _ = split(iter_samples(tmp_path / "n.json"))
    assert [s["image"] for s in samples] == [media["red.png"]] * 2


def test_record_list_fields_keep_their_type_for_validation(tmp_path, h):
    # make_sample would turn "abc" into ["a", "b", "c"]; the reader must not hide the bad type.
    h.write_jsonl(tmp_path / "t.jsonl", [
        {"instruction": "q", "response": "r", "skills": "abc", "steps": "s"},
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "r"}],
         "options": "ab"},
        {"instruction": "q", "response": None, "skills": 5, "options": 7}])
    samples, _ = split(iter_samples(tmp_path / "t.jsonl"))
    assert samples[0]["skills"] == "abc" and samples[0]["steps"] == "s" and samples[1]["options"] == "ab"
    assert (samples[2]["response"], samples[2]["skills"], samples[2]["options"]) == (None, 5, 7)


def test_forced_llava_format_quarantines_sample_shaped_records(tmp_path, h):
    h.write_json(tmp_path / "s.json", [{"instruction": "a", "response": "b"}])
    assert len(split(iter_samples(tmp_path / "s.json"))[0]) == 1
    samples, bad = split(iter_samples(tmp_path / "s.json", "llava"))
    assert samples == [] and bad[0]["reason"].startswith("unrecognized record: expected 'conversations'")


# --------------------------------------------------------------------------- jsonl / parquet
def test_jsonl_detects_shape_per_record_and_quarantines_bad_lines(tmp_path, media, h):
    h.write_jsonl(tmp_path / "mix.jsonl", [
        {"id": "s1", "instruction": "<image> Name the color.", "response": "It is red.\nAnswer: red",
         "image": "media/red.png", "options": ["red", "blue"], "task": "t"},
        {"id": "l1", "image": "media/blue.jpg",
         "conversations": [{"from": "human", "value": "<image>\nColor?"}, {"from": "gpt", "value": "blue"}]},
        "",
        '{"id": "broken", "instruction": ',
        {"id": "g1", "messages": [{"role": "user", "content": "<audio>Hear?"},
                                  {"role": "assistant", "content": "a tone"}], "audios": ["media/tone.wav"]},
    ])
    results = list(iter_samples(tmp_path / "mix.jsonl"))
    samples, bad = split(results)
    assert [s["id"] for s in samples] == ["s1", "l1", "g1"]
    s1 = samples[0]
    assert s1["instruction"] == "Name the color." and s1["answer"] == "red" and s1["steps"] == ["It is red."]
    assert s1["options"] == ["red", "blue"] and s1["image"] == media["red.png"] and s1["task"] == "t"
    assert samples[1]["image"] == media["blue.jpg"] and samples[2]["audio"] == media["tone.wav"]
    assert len(bad) == 1 and bad[0]["reason"].startswith("invalid json:")
    assert bad[0]["row"] == 3 and bad[0]["record"] == '{"id": "broken", "instruction": '
    assert [r.row for r in results] == [0, 1, 3, 4]  # line index, blank line counted


def test_parquet_with_only_required_columns_gets_defaults(tmp_path):
    pq.write_table(pa.table({"instruction": ["q1", "q2"], "response": ["x\nAnswer: 1", "y"]}),
                   tmp_path / "min.parquet")
    samples, bad = split(iter_samples(tmp_path / "min.parquet", chunk_rows=1))
    assert bad == []
    assert samples[0] == {"id": "min-0", "task": "", "source": "min.parquet", "image": None, "audio": None,
                          "instruction": "q1", "response": "x\nAnswer: 1", "steps": ["x"], "answer": "1",
                          "options": None, "skills": []}
    assert samples[1]["id"] == "min-1"
    assert pa.Table.from_pylist(samples, schema=SAMPLE_SCHEMA).num_rows == 2


def test_parquet_hf_image_struct_column_with_bytes_or_path(tmp_path, media, h):
    png = media["red.png"]
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({
        "id": ["a", "b", "c"],
        "instruction": ["q", "q", "q"],
        "response": ["r", "r", "r"],
        "image": pa.array([{"bytes": png, "path": "red.png"},
                           {"bytes": None, "path": str(tmp_path / "media" / "blue.jpg")},
                           None], type=image_type),
    })
    pq.write_table(table, tmp_path / "hf.parquet")
    samples, bad = split(iter_samples(tmp_path / "hf.parquet"))
    assert bad == []
    assert [s["image"] for s in samples] == [png, media["blue.jpg"], None]


def test_parquet_of_conversation_records_with_embedded_images(tmp_path, media):
    image_type = pa.list_(pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    table = pa.table({
        "messages": [[{"role": "user", "content": "<image>What?"}, {"role": "assistant", "content": "red"}]],
        "images": pa.array([[{"bytes": media["red.png"], "path": None}]], type=image_type),
    })
    pq.write_table(table, tmp_path / "conv.parquet")
    samples, bad = split(iter_samples(tmp_path / "conv.parquet"))
    assert bad == [] and samples[0]["image"] == media["red.png"] and samples[0]["instruction"] == "What?"


def test_parquet_with_unknown_columns_is_rejected_with_a_fix(tmp_path):
    pq.write_table(pa.table({"question": ["a"]}), tmp_path / "q.parquet")
    with pytest.raises(ValueError, match="match no known shape; expected Sample columns"):
        list(iter_samples(tmp_path / "q.parquet"))


# --------------------------------------------------------------------------- inputs
def test_directory_and_glob_inputs(tmp_path, h):
    d = tmp_path / "corpus"
    d.mkdir()
    h.write_jsonl(d / "b.jsonl", [{"id": "b", "instruction": "q", "response": "r"}])
    h.write_json(d / "a.json", [{"id": "a", "instruction": "q", "response": "r"}])
    pq.write_table(pa.table({"id": ["c"], "instruction": ["q"], "response": ["r"]}), d / "c.parquet")
    (d / "notes.txt").write_text("not data")
    (d / "quarantine.parquet").write_bytes(b"skipped by name")
    assert [p.name for p in resolve_inputs(d)] == ["a.json", "b.jsonl", "c.parquet"]
    assert [s["id"] for s in split(iter_samples(d))[0]] == ["a", "b", "c"]
    assert [s["id"] for s in split(iter_samples(str(d / "*.json*")))[0]] == ["a", "b"]
    assert [s["source"] for s in split(iter_samples(d))[0]] == ["a.json", "b.jsonl", "c.parquet"]


def test_unusable_inputs_raise_clear_errors_at_call_time(tmp_path, h):
    with pytest.raises(FileNotFoundError, match="data path not found.*expected a file, a directory"):
        iter_samples(tmp_path / "nope.json")
    with pytest.raises(FileNotFoundError, match="matched no files"):
        iter_samples(str(tmp_path / "*.jsonl"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no data files in directory"):
        iter_samples(tmp_path / "empty")
    f = h.write_json(tmp_path / "ok.json", [])
    with pytest.raises(ValueError, match="unknown format 'csv'; expected one of auto, llava"):
        iter_samples(f, "csv")
    (tmp_path / "data.txt").write_text("[]")
    with pytest.raises(ValueError, match="cannot tell the format from the extension '.txt'"):
        iter_samples(tmp_path / "data.txt")
    assert list(iter_samples(tmp_path / "data.txt", "sharegpt")) == []
    with pytest.raises(ValueError, match="format 'parquet' was asked for a .json file"):
        iter_samples(f, "parquet")
    with pytest.raises(FileNotFoundError, match="image_root .* is not a directory"):
        iter_samples(f, image_root=tmp_path / "missing")


def test_llamafactory_directory_copy_reads_both_files(tmp_path, h):
    shutil.copytree(h.llamafactory, tmp_path / "lf")
    samples, bad = split(iter_samples(tmp_path / "lf"))
    assert len(samples) == 14 and len(bad) == 1


# --------------------------------------------------------------------------- streaming
class CountingReader(io.StringIO):
    """A text stream that records how many characters were read from it."""

    read_chars = 0

    def read(self, n=-1):
        data = super().read(n)
        self.read_chars += len(data)
        return data


def test_json_array_is_streamed_not_loaded_whole(tmp_path, h):
    records = [{"id": f"r{i}", "instruction": f"question {i} [x] \"y\"", "response": "ok"} for i in range(5000)]
    text = json.dumps(records)
    stream = CountingReader(text)
    first = next(iter_json_values(stream, buf_chars=4096))
    assert first == records[0]
    assert stream.read_chars <= 2 * 4096 < len(text)

    path = tmp_path / "big.json"
    path.write_text(text)
    chunks = list(iter_chunks(path, chunk_rows=512))
    assert [len(c) for c in chunks] == [512] * 9 + [392]
    assert [r.sample["id"] for c in chunks for r in c] == [r["id"] for r in records]


NASTY = [
    {"s": "brackets ] [ } { , inside", "q": "escaped \" quote and \\\\ backslash \\\" tricky"},
    {"u": "unicode é 中文 \u2028 emoji 😀", "n": [1, -2.5e3, None, True, False, [[], {}]]},
    {},
    [],
    "a plain string, with ] and ,",
    12345678901234567890,
    -0.5,
    None,
]


@pytest.mark.parametrize("buf_chars", [1, 2, 3, 7, 64, 1 << 20])
@pytest.mark.parametrize("sep", [",", " ,\n\t ", "\n,\n"])
def test_incremental_parser_matches_json_loads_across_buffer_boundaries(buf_chars, sep):
    text = "\n  [ " + sep.join(json.dumps(v, ensure_ascii=False) for v in NASTY) + "  ]\n "
    assert list(iter_json_values(io.StringIO(text), buf_chars=buf_chars)) == json.loads(text)


@pytest.mark.parametrize("buf_chars", [1, 5, 1 << 16])
def test_incremental_parser_reads_concatenated_values_and_empty_arrays(buf_chars):
    assert list(iter_json_values(io.StringIO(" [ ] "), buf_chars=buf_chars)) == []
    assert list(iter_json_values(io.StringIO(""), buf_chars=buf_chars)) == []
    stream = '{"a": 1}\n{"b": [2, "]"]}\n\n  {\n "c": 3\n}\n'
    assert list(iter_json_values(io.StringIO(stream), buf_chars=buf_chars)) == [{"a": 1}, {"b": [2, "]"]}, {"c": 3}]


@pytest.mark.parametrize("text, message", [
    ('[{"a": 1}, {"b": 2', "invalid JSON in record 1"),
    ('[{"a": 1}, ', "file ends inside the JSON array after 1 records"),
    ('[{"a": 1} {"b": 2}]', "expected ',' or ']' after record 0"),
    ('[{"a": 1}] trailing', "unexpected data after the closing ']'"),
    ('[{"a": 1},]', "invalid JSON in record 1"),
])
def test_incremental_parser_reports_corrupt_files(text, message):
    with pytest.raises(JSONStreamError, match=message):
        list(iter_json_values(io.StringIO(text), buf_chars=3, name="f.json"))


def test_json_file_with_bom_and_jsonl_content(tmp_path):
    path = tmp_path / "lines.json"
    path.write_bytes("\ufeff".encode() + b'{"instruction": "a", "response": "b"}\n{"instruction": "c", "response": "d"}\n')
    samples, _ = split(iter_samples(path))
    assert [s["instruction"] for s in samples] == ["a", "c"]


def test_strip_tags_removes_placeholders_and_tidies_only_around_them():
    assert strip_tags("<image>\nWhat is it?", "<image>") == "What is it?"
    assert strip_tags("Look <image> here", "<image>") == "Look here"
    assert strip_tags("Look\n<image>\nhere", "<image>") == "Look\nhere"
    assert strip_tags("code:\n    x = 1\n<audio>", "<image>", "<audio>") == "code:\n    x = 1"
    assert strip_tags("<image><audio> hi", "<image>", "<audio>") == "hi"
