"""Issue F §4: a Ray Data task fails on a poisoned corpus shard; its rows are quarantined
with a reason (written, counted, reported), the other shards are processed, the run
completes.

The poison (tests/faults/poison_corpus.py) is not a row the validator would catch: it
breaks the read. One row group of the shard has a corrupt page header (the footer reads,
so it is not a truncated file), and two rows of the other row group hold text that is not
UTF-8. A plain ``read_parquet`` + ``map_batches`` task raises on either (checked below), and
the task's failure failed the whole embedding job.

What the index build does instead (mmtune/retrieval/embed_job.py over
mmtune/data/salvage.py): each row group is a task that reads itself; a row group that does
not decode quarantines its rows by id with the reason, a batch that fails to convert is
retried row by row and only the failing rows are quarantined, and an embedder batch that
raises is retried item by item. The fast tests below check those pieces without Ray; the
last one runs ``mmtune index`` as a driver on a ``ray.cluster_utils.Cluster`` (a head and
2 worker nodes).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmtune.data.salvage import decode_rows, each_or_reason, row_groups
from mmtune.data.validate import reason_category
from tests.faults.driver_cluster import shared_cluster
from tests.faults.poison_corpus import poisoned_corpus, sample_rows, write_shard


@pytest.fixture(scope="module")
def mmtune_cluster(request):
    yield from shared_cluster(request)


def test_the_poison_breaks_a_plain_read(tmp_path):
    """The shard really is poisoned for Ray Data's read + map_batches path."""
    p = poisoned_corpus(tmp_path).poisoned
    with pytest.raises(OSError, match="thrift"):
        pq.read_table(p)  # what a read_parquet task does with the damaged row group
    second = pq.ParquetFile(p).read_row_group(1)
    with pytest.raises(UnicodeDecodeError):
        second.to_pylist()  # what content_batch did with the batch holding the bad text


def test_salvage_narrows_failures_to_rows_and_row_groups(tmp_path):
    p = poisoned_corpus(tmp_path).poisoned
    groups = list(row_groups(p, ["id", "instruction"]))
    assert [(first, t is None) for first, t, _, _ in groups] == [(0, True), (10, False)]
    _, _, reason, ids = groups[0]
    assert ids == [f"p-{i:03d}" for i in range(10)]  # the id column still reads: rows by id
    assert reason_category(reason) == "unreadable row group" and "re-export" in reason and "\n" not in reason
    rows = decode_rows(groups[1][1])
    bad = {i: r for i, r in enumerate(rows) if isinstance(r, str)}
    assert sorted(bad) == [3, 7]  # rows 13 and 17 of the file; the other 8 decode
    assert all(reason_category(r) == "bad encoding" and "instruction" in r and "UTF-8" in r for r in bad.values())
    assert rows[0]["id"] == "p-010"

    def embed(items):
        if any(x < 0 for x in items):
            raise ValueError(f"negative: {items}")
        return [x * 2 for x in items]

    assert each_or_reason(embed, [1, 2]) == ([2, 4], [None, None])
    out, why = each_or_reason(embed, [1, -1, 3])
    assert out == [2, None, 6] and why[1] == "ValueError: negative: [-1]" and why[0] is why[2] is None


def test_index_units_quarantine_and_keep_the_rest(tmp_path):
    from mmtune.retrieval.embed_job import read_units, unit_contents

    p = poisoned_corpus(tmp_path)
    units = read_units([str(f) for f in p.files], "instruction")
    assert len(units) == 4  # 2 clean shards + the 2 row groups of the poisoned one
    table = pa.concat_tables([unit_contents(u, "instruction") for u in units])
    bad = table.filter(table.column("reason").is_valid())
    got = {r["id"]: reason_category(r["reason"]) for r in bad.to_pylist()}
    assert got == p.bad_ids and set(bad.column("path").to_pylist()) == {str(p.poisoned)}
    assert sorted(table.filter(table.column("reason").is_null()).column("id").to_pylist()) == p.good_ids

    trunc = tmp_path / "t.parquet"
    trunc.write_bytes(p.files[0].read_bytes()[:-200])  # no footer: refused with the fix, before any task
    with pytest.raises(ValueError, match="t.parquet.*truncated or corrupt.*re-download or re-export"):
        read_units([str(trunc)], "instruction")
    pq.write_table(pa.table({"id": ["a"], "question": ["q"]}), tmp_path / "w.parquet")
    with pytest.raises(ValueError, match="w.parquet.*needs column"):
        read_units([str(p.files[0]), str(tmp_path / "w.parquet")], "instruction")


def test_import_of_the_poisoned_shard_quarantines_and_keeps_the_rest(tmp_path):
    """`mmtune data import` streams parquet with the same salvage: no bare traceback."""
    from mmtune.data.importer import import_dataset

    p = poisoned_corpus(tmp_path / "c")
    rep = import_dataset(p.poisoned, "auto", tmp_path / "out", progress=None)
    q = pq.read_table(rep.quarantine_path).to_pylist()
    assert (rep.total, rep.written, rep.quarantined) == (20, 8, 12)  # none lost
    assert Counter(reason_category(r["reason"]) for r in q) == Counter(p.bad_ids.values())
    assert sorted(r["row"] for r in q) == [*range(10), 13, 17]
    written = pq.read_table(rep.shards[0]).column("id").to_pylist()
    assert sorted(written) == sorted(i for i in p.good_ids if i.startswith("p-"))


def test_a_round_reads_the_selection_around_the_damage(tmp_path):
    """The train stage materialises the selected rows from the corpus files: the damaged
    row group (whose rows the index quarantined, so never selected) must not fail it."""
    from mmtune.pipeline import _materialise

    p = poisoned_corpus(tmp_path / "c")
    ids = ["p-012", "g1-005", "p-019"]
    out = _materialise([str(f) for f in p.files], ids, tmp_path / "train_data.parquet")
    assert pq.read_table(out).column("id").to_pylist() == ids
    with pytest.raises(ValueError, match="row group that does not decode"):
        _materialise([str(f) for f in p.files], ["p-003"], tmp_path / "x.parquet")


def test_embedder_failure_quarantines_only_that_content(tmp_path):
    """Bytes that are no image make the CLIP embedder raise inside the actor; the batch is
    retried item by item and only that content comes back with an error."""
    from PIL import Image
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    from mmtune.retrieval.embed_job import EmbedActor

    clip = tmp_path / "tiny-clip"
    CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=16,
        patch_size=8, projection_dim=24)).save_pretrained(clip)
    CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}).save_pretrained(clip)

    def png(v: int) -> bytes:
        buf = io.BytesIO()
        Image.new("RGB", (16, 16), (v, 0, 0)).save(buf, format="PNG")
        return buf.getvalue()

    blobs = [png(10), b"\x89PNG not really", png(200)]
    actor = EmbedActor(str(clip), "image", batch_size=8)
    out = actor({"key": np.array(["a", "b", "c"]), "blob": np.array(blobs, dtype=object), "text": np.array([None] * 3)})
    assert [bool(e) for e in out["error"]] == [False, True, False]
    assert "UnidentifiedImageError" in out["error"][1]
    assert out["vector"].shape == (3, 24)
    assert np.allclose(np.linalg.norm(out["vector"][[0, 2]], axis=1), 1, atol=1e-4)
    alone = actor({"key": np.array(["a"]), "blob": np.array(blobs[:1], dtype=object), "text": np.array([None])})
    assert np.allclose(alone["vector"][0], out["vector"][0], atol=1e-5)  # the retry changed no result


@pytest.mark.ray
@pytest.mark.slow
def test_index_run_on_a_cluster_quarantines_the_poisoned_shard(mmtune_cluster, tmp_path):
    p = poisoned_corpus(tmp_path / "corpus")
    extra = write_shard(tmp_path / "corpus" / "h.parquet", sample_rows("h-", 5))  # after p: order is by file
    cfg = tmp_path / "index.yaml"
    cfg.write_text("{}\n")
    out = tmp_path / "ix"
    cmd = [sys.executable, "-m", "mmtune.cli", "index", "--config", str(cfg), "--data", str(tmp_path / "corpus"),
           "--out", str(out), "--query", "How many apples", "-k", "3", "retrieval.text=instruction",
           "retrieval.embed_actors=1", "retrieval.embed_batch_size=16", "retrieval.index_type=flat",
           f"ray.address={mmtune_cluster['address']}"]
    r = subprocess.run(cmd, env=mmtune_cluster["env"], cwd=tmp_path, capture_output=True, text=True, timeout=240,
                       check=False)
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-5000:]  # the run completes

    good = sorted([*p.good_ids, *(f"h-{i:03d}" for i in range(5))])
    # written: one quarantine row per poisoned row, by id, with the file and the reason
    q = pq.read_table(next((out / "quarantine").glob("part-*.parquet"))).to_pylist()
    assert {row["id"]: reason_category(row["reason"]) for row in q} == p.bad_ids
    assert {row["source_file"] for row in q} == {str(p.poisoned.resolve())}
    assert all("re-export" in row["reason"] for row in q)
    # the other shards (and the poisoned shard's good rows) embedded and indexed; none lost
    emb = pq.read_table(next((out / "embeddings").glob("part-*.parquet")), columns=["id"]).column("id").to_pylist()
    assert sorted(emb) == good and len(emb) + len(q) == 2 * 40 + 20 + 5
    # counted: per file in the embed manifest and in the index state
    man = json.loads((out / "manifest.json").read_text())["files"]
    assert {Path(f).name: (v["rows"], v["quarantined"]) for f, v in man.items()} == {
        "g0.parquet": (40, 0), "g1.parquet": (40, 0), "p.parquet": (20, 12), "h.parquet": (5, 0)}
    state = json.loads(log[log.rindex('{"count"'):].splitlines()[0])
    assert state["count"] == len(good)
    assert json.loads((out / "index_state.json").read_text())["quarantined"] == 12
    # reported: the count by reason in the run's output, and the search works
    assert "quarantined 12 row(s)" in log and "bad encoding ×2" in log and "unreadable row group ×10" in log, log
    assert "How many apples" in log
    assert str(extra.name) in json.dumps(man)
    assert Counter(reason_category(row["reason"]) for row in q) == Counter(p.bad_ids.values())
