"""``mmtune train``: one worker on a local Ray, from parquet to a PEFT-loadable adapter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmtune.cli import main
from mmtune.training.job import expand_parquet

from .test_trainer import setup  # noqa: F401  (module fixture: tiny student + two parquet shards)


def test_expand_parquet_dirs_globs_and_errors(tmp_path):
    (tmp_path / "d").mkdir()
    for name in ("d/a.parquet", "d/b.parquet", "d/quarantine.parquet", "c.parquet"):
        (tmp_path / name).write_bytes(b"")
    assert expand_parquet([str(tmp_path / "d")]) == [str(tmp_path / "d/a.parquet"), str(tmp_path / "d/b.parquet")]
    assert expand_parquet([str(tmp_path / "*.parquet"), str(tmp_path / "c.parquet")]) == [str(tmp_path / "c.parquet")]
    with pytest.raises(FileNotFoundError, match="mmtune data import"):
        expand_parquet([str(tmp_path / "missing")])


@pytest.mark.ray
@pytest.mark.slow
def test_train_cli_writes_a_peft_adapter_and_summary(ray_local, setup, tmp_path, capsys):  # noqa: F811
    from peft import PeftModel

    from mmtune.config import StudentConfig
    from mmtune.models.student import load_student

    rc = main(["train", "--config", "configs/demo.yaml", "--student", str(setup / "student"),
               "--data", str(setup / "part-0.parquet"), "--data", str(setup / "part-1.parquet"),
               "--tasks", "colour",
               f"run.out_dir={tmp_path}", "run.name=t", "training.max_steps=3", "training.batch_size=4",
               "training.checkpoint_every=2", "training.num_workers=1", "training.torch_threads=1",
               "training.coordination.interval=2", "training.log_every=1", "student.lora.r=4",
               "student.lora.alpha=8", "student.dtype=float32"])
    assert rc == 0
    out = capsys.readouterr().out
    summary = json.loads(out.strip().splitlines()[-1])
    run = Path(summary["run_dir"])
    assert summary["steps"] == 3 and run == tmp_path / "t" / "train"
    history = [json.loads(x) for x in (run / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [1, 2, 3]
    saved = json.loads((run / "summary.json").read_text())
    assert saved["samples"] == 12 and saved["metrics"]["step"] == 3
    base, _ = load_student(setup / "student", StudentConfig(dtype="float32"))
    tuned = PeftModel.from_pretrained(base, summary["adapter"])
    assert any("lora_" in n for n, _ in tuned.named_parameters())


def test_train_cli_names_unknown_tasks(ray_local, setup, tmp_path, capsys):  # noqa: F811
    rc = main(["train", "--config", "configs/demo.yaml", "--student", str(setup / "student"),
               "--data", str(setup), "--tasks", "nope", f"run.out_dir={tmp_path}"])
    assert rc == 1
    assert "['nope'] not in the training data" in capsys.readouterr().err


def test_training_dataset_keeps_only_the_named_tasks(ray_local, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mmtune.training.job import training_dataset

    pq.write_table(pa.table({"id": [f"r{i}" for i in range(9)], "task": ["a", "b", "c"] * 3}), tmp_path / "d.parquet")
    ds = training_dataset([str(tmp_path / "d.parquet")], tasks=["a", "c"])
    assert sorted(r["id"] for r in ds.take_all()) == ["r0", "r2", "r3", "r5", "r6", "r8"]


def test_small_data_is_read_inline_and_large_or_remote_data_streams(tmp_path):
    """training.inline_data_mb: small local parquet is one Arrow table (no Ray Data), with
    --tasks applied; over the limit, remote or missing paths return None (Ray Data streams)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mmtune.training.shards import COLUMNS
    from mmtune.training.trainer import read_inline

    rows = {"id": [f"r{i}" for i in range(6)], "task": ["a", "b", "c"] * 2, "instruction": ["q"] * 6,
            "response": ["Answer: x"] * 6, "image": [b"\x89PNG"] * 6, "extra": [1] * 6}
    pq.write_table(pa.table(rows).slice(0, 3), tmp_path / "p0.parquet")
    pq.write_table(pa.table(rows).slice(3), tmp_path / "p1.parquet")
    files = [str(tmp_path / "p0.parquet"), str(tmp_path / "p1.parquet")]
    table = read_inline(files, 1.0)  # these files have no audio column: read as null
    assert table.column_names == COLUMNS and table.column("id").to_pylist() == rows["id"]
    assert table.column("audio").null_count == 6 and table.column("image").null_count == 0
    kept = read_inline(files, 1.0, tasks=["a", "c"])
    assert kept.column_names == COLUMNS and kept.column("id").to_pylist() == ["r0", "r2", "r3", "r5"]
    with pytest.raises(ValueError, match=r"\['nope'\] not in the training data; it has: \['a', 'b', 'c'\]"):
        read_inline(files, 1.0, tasks=["nope"])
    assert read_inline(files, 0.0) is None  # 0 = always stream
    assert read_inline(["s3://bucket/p0.parquet"], 1e6) is None
    assert read_inline([str(tmp_path / "missing.parquet")], 1e6) is None
