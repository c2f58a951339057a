"""import_dataset and the parquet writers: counts, quarantine, shards, report."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from mmtune.data.importer import import_dataset
from mmtune.data.schema import QUARANTINE_SCHEMA, SAMPLE_SCHEMA, make_sample
from mmtune.data.writer import QuarantineWriter, ShardWriter, iter_sample_batches, read_sample_table


@pytest.fixture
def corpus(tmp_path, media, h):
    """A JSONL corpus with 6 good rows and one of each bad kind."""
    good = [{"id": f"g{i}", "instruction": f"q{i}", "response": f"step\nAnswer: {i}",
             "image": "media/red.png" if i % 2 else None} for i in range(6)]
    bad = [
        {"id": "g0", "instruction": "again", "response": "dup"},                  # duplicate id
        {"id": "long", "instruction": "x" * 300, "response": "r"},                # text too long
        {"id": "empty", "instruction": "<image>", "response": "r", "image": "media/red.png"},  # empty instruction
        {"id": "types", "instruction": "q", "response": "r", "steps": "not a list"},  # bad type
        {"id": "junk", "instruction": "q", "response": "r", "image": "junk.png"},  # undecodable image
        {"id": "gone", "instruction": "q", "response": "r", "image": "media/gone.png"},  # image not found
        "{not json",                                                             # invalid json
    ]
    (tmp_path / "junk.png").write_bytes(b"definitely not a png")
    return h.write_jsonl(tmp_path / "corpus.jsonl", good + bad)


def test_import_writes_good_rows_and_quarantines_each_bad_kind(tmp_path, corpus, media):
    out = tmp_path / "out"
    lines = []
    report = import_dataset(corpus, out_dir=out, max_text_chars=200, shard_rows=4, progress=lines.append,
                            progress_every=5)
    assert (report.written, report.quarantined) == (6, 7), report.summary()
    assert report.reasons == {"duplicate id": 1, "text too long": 1, "empty instruction": 1,
                              "bad type": 1, "undecodable image": 1, "image not found": 1,
                              "invalid json": 1}
    assert [p.rsplit("/", 1)[1] for p in report.shards] == ["part-00000.parquet", "part-00001.parquet"]
    assert [pq.ParquetFile(p).metadata.num_rows for p in report.shards] == [4, 2]

    table = read_sample_table(out)
    assert table.schema == SAMPLE_SCHEMA
    rows = table.to_pylist()
    assert [r["id"] for r in rows] == [f"g{i}" for i in range(6)]
    assert rows[1]["image"] == media["red.png"] and rows[0]["image"] is None
    assert rows[5]["answer"] == "5" and rows[5]["steps"] == ["step"]

    q = pq.read_table(report.quarantine_path)
    assert q.schema == QUARANTINE_SCHEMA
    by_id = {r["id"]: r for r in q.to_pylist()}
    assert by_id["g0"]["reason"] == "duplicate id: 'g0' was already imported"
    assert by_id["g0"]["row"] == 6 and by_id["g0"]["source"] == str(corpus)
    assert by_id["long"]["reason"] == "text too long: instruction has 300 chars > 200 (raise data.max_text_chars)"
    assert '"image": "<' in by_id["empty"]["record"]  # image bytes shown by size, not dumped

    assert lines and lines[0].startswith("import: 5 samples (")
    saved = json.loads((out / "import_report.json").read_text())
    assert saved["written"] == 6 and saved["reasons"]["invalid json"] == 1
    assert saved["shards"] == report.shards

    text = report.summary()
    for needle in ("written:     6 samples in 2 shard(s)", "quarantined: 7", "duplicate id",
                   "undecodable image", report.quarantine_path, "inspect it with"):
        assert needle in text


def test_duplicate_is_judged_after_validation(tmp_path, h):
    # The first "a" is invalid, so the second "a" is the one written.
    src = h.write_jsonl(tmp_path / "d.jsonl", [
        {"id": "a", "instruction": "", "response": "r"},
        {"id": "a", "instruction": "q", "response": "r"},
        {"id": "a", "instruction": "q2", "response": "r"}])
    report = import_dataset(src, out_dir=tmp_path / "out", progress=None)
    assert report.written == 1 and report.reasons == {"empty instruction": 1, "duplicate id": 1}
    assert read_sample_table(tmp_path / "out").column("instruction").to_pylist() == ["q"]


def test_llamafactory_import(tmp_path, h):
    report = import_dataset(h.llamafactory, "auto", tmp_path / "lf", progress=None)  # the CLI's call
    assert (report.written, report.quarantined) == (14, 1)
    assert report.reasons == {"audio not found": 1}
    rows = pq.read_table(report.quarantine_path).to_pylist()
    assert rows[0]["reason"].endswith("mllm_demo_data/1.mp3")


def test_missing_out_dir_is_a_clear_error(tmp_path, h):
    with pytest.raises(TypeError, match="needs out_dir"):
        import_dataset(h.llamafactory)


def test_clean_import_still_creates_an_empty_quarantine_file(tmp_path, h):
    src = h.write_json(tmp_path / "ok.json", [{"instruction": "q", "response": "r"}])
    report = import_dataset(src, out_dir=tmp_path / "out", progress=None)
    assert report.quarantined == 0 and "inspect it with" not in report.summary()
    q = pq.read_table(tmp_path / "out" / "quarantine.parquet")
    assert q.num_rows == 0 and q.schema == QUARANTINE_SCHEMA


def test_all_bad_import_leaves_one_empty_shard(tmp_path, h):
    src = h.write_json(tmp_path / "bad.json", [{"instruction": "", "response": "r"}])
    report = import_dataset(src, out_dir=tmp_path / "out", progress=None)
    assert report.written == 0 and len(report.shards) == 1
    table = read_sample_table(tmp_path / "out")
    assert table.num_rows == 0 and table.schema == SAMPLE_SCHEMA


def test_reimport_refuses_to_mix_with_old_shards_unless_overwrite(tmp_path, h):
    big = h.write_jsonl(tmp_path / "big.jsonl", [{"id": str(i), "instruction": "q", "response": "r"} for i in range(5)])
    small = h.write_jsonl(tmp_path / "small.jsonl", [{"id": "s", "instruction": "q", "response": "r"}])
    import_dataset(big, out_dir=tmp_path / "out", shard_rows=2, progress=None)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        import_dataset(small, out_dir=tmp_path / "out", progress=None)
    report = import_dataset(small, out_dir=tmp_path / "out", shard_rows=2, progress=None, overwrite=True)
    assert len(report.shards) == 1
    assert read_sample_table(tmp_path / "out").column("id").to_pylist() == ["s"]


def test_shard_writer_bounds_row_groups_and_shards(tmp_path):
    samples = [make_sample(id=str(i), instruction="q", response="r") for i in range(23)]
    with ShardWriter(tmp_path, shard_rows=10, row_group_rows=4) as w:
        w.write_many(samples)
    assert [pq.ParquetFile(p).metadata.num_rows for p in w.paths] == [10, 10, 3]
    groups = [pq.ParquetFile(w.paths[0]).metadata.row_group(i).num_rows
              for i in range(pq.ParquetFile(w.paths[0]).metadata.num_row_groups)]
    assert groups == [4, 4, 2]
    batches = list(iter_sample_batches(tmp_path, batch_rows=4))
    assert max(b.num_rows for b in batches) == 4 and sum(b.num_rows for b in batches) == 23
    assert [i for b in batches for i in b.column("id").to_pylist()] == [str(i) for i in range(23)]


def test_quarantine_writer_writes_rows(tmp_path):
    with QuarantineWriter(tmp_path / "q" / "quarantine.parquet", row_group_rows=2) as q:
        for i in range(3):
            q.write({"source": "f.json", "row": i, "id": str(i), "reason": "empty response", "record": "{}"})
    assert pq.read_table(q.path).column("row").to_pylist() == [0, 1, 2]


def test_reading_a_non_sample_parquet_says_to_import_first(tmp_path):
    with QuarantineWriter(tmp_path / "x.parquet"):
        pass
    with pytest.raises(ValueError, match="is not Sample parquet.*import_dataset"):
        read_sample_table(tmp_path / "x.parquet")
    (tmp_path / "nothing").mkdir()
    with pytest.raises(FileNotFoundError, match="no Sample parquet shards"):
        read_sample_table(tmp_path / "nothing")
