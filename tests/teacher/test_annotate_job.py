"""Corpus annotation with Ray Data teacher actors: order, schema, nothing lost, caching."""

import json
import shutil

import pyarrow.parquet as pq
import pytest

from mmtune.config import RunConfig
from mmtune.data.schema import SAMPLE_SCHEMA, to_table
from mmtune.data.skillworld import TASKS, generate_task
from mmtune.teacher.annotate_job import annotate_corpus, annotated_files
from tests.teacher.test_backend_hf import TEXTS
from tests.tiny import make_tiny_llama

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("ann")
    files = []
    for i, name in enumerate(("count_objects", "digit_read")):
        samples, _ = generate_task(TASKS[name], 12, seed=0, split="corpus", image_size=16)
        files.append(root / f"part-{i}.parquet")
        pq.write_table(to_table(samples), files[-1])
    cfg = RunConfig.model_validate({"teacher": {"backend": "hf", "name_or_path": str(make_tiny_llama(root / "t", TEXTS)),
                                                "max_new_tokens": 6, "parse_retries": 0, "batch_size": 4},
                                    "data": {"shard_rows": 10}})
    return cfg, files


@pytest.fixture(scope="module")
def annotated(ray_local, corpus, tmp_path_factory):
    """One annotation run for the module (each costs a Ray Data actor pool start)."""
    cfg, files = corpus
    out = tmp_path_factory.mktemp("annotated")
    return out, annotate_corpus(cfg, files, out, progress=lambda m: None)


def test_annotation_keeps_every_row_in_order(corpus, annotated):
    cfg, files = corpus
    tmp_path, man = annotated
    shards = annotated_files(tmp_path)
    assert len(shards) == 3  # 24 rows in shards of 10
    rows = [r for f in shards for r in pq.read_table(f).to_pylist()]
    want = [r for f in files for r in pq.read_table(f).to_pylist()]
    assert [r["id"] for r in rows] == [r["id"] for r in want]
    assert all(pq.read_schema(f).equals(SAMPLE_SCHEMA) for f in shards)
    assert [r["image"] for r in rows] == [r["image"] for r in want]
    unparsed = pq.read_table(tmp_path / "unparsed.parquet").to_pylist()
    assert man["rows"] == 24 and man["unparsed"] == len(unparsed)
    assert {u["id"] for u in unparsed} == {r["id"] for r in rows if not r["skills"]}  # none lost silently


def test_annotation_is_cached_and_guards_its_inputs(corpus, annotated, tmp_path):
    cfg, files = corpus
    tmp_path = tmp_path / "copy"
    shutil.copytree(annotated[0], tmp_path)  # the cache is the directory: a copy is found as annotated
    msgs = []
    annotate_corpus(cfg, files, tmp_path, progress=msgs.append)
    assert any("already annotated" in m for m in msgs)
    with pytest.raises(ValueError, match="another teacher"):
        annotate_corpus(cfg, files[:1], tmp_path, progress=lambda m: None)
    man = annotate_corpus(cfg, files[:1], tmp_path, rebuild=True, progress=lambda m: None)
    assert man["rows"] == 12 and json.loads((tmp_path / "manifest.json").read_text())["rows"] == 12
