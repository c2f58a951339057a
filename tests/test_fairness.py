"""Selection's view of the data refuses test splits and generator metadata."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmtune.fairness import FairnessError, SelectionView


@pytest.fixture
def world(tmp_path):
    (tmp_path / "skillworld.json").write_text(json.dumps({}))
    for rel in ("corpus/part-0.parquet", "targets/t/val.parquet", "targets/t/test.parquet", "meta/corpus/part-0.parquet"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"id": [rel], "instruction": ["q?"]}), tmp_path / rel)
    return tmp_path


def test_a_proper_view_reads_pool_and_val(world):
    v = SelectionView([str(world / "corpus/part-0.parquet")], {"t": [str(world / "targets/t/val.parquet")]},
                      {"t": [str(world / "targets/t/test.parquet")]})
    assert v.pool_ids() == ["corpus/part-0.parquet"] and v.val_instructions() == ["q?"]
    with pytest.raises(FairnessError, match="no diagnosis"):
        v.diagnosis_rows()


@pytest.mark.parametrize("where", ["pool", "val"])
def test_test_split_is_refused(world, where):
    test = str(world / "targets/t/test.parquet")
    pool = [test] if where == "pool" else [str(world / "corpus/part-0.parquet")]
    val = {"t": [test if where == "val" else str(world / "targets/t/val.parquet")]}
    with pytest.raises(FairnessError, match="is a test split"):
        SelectionView(pool, val, {"t": [test]})


def test_generator_metadata_is_refused(world):
    with pytest.raises(FairnessError, match="generator metadata"):
        SelectionView([str(world / "meta/corpus/part-0.parquet")], {}, {})
