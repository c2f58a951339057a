"""Out-of-core worker shards: planning from ids, spilling to a memory-mapped Arrow file,
and training from it exactly as from an in-memory list."""

from __future__ import annotations

import random

import pyarrow as pa
import pytest
import torch

from mmtune.training.loop import pick_probe_ids, run_training
from mmtune.training.shards import ArrowRows, image_first, load_shard, plan_shard, spill

from .test_loop import base_dir, fresh_student, losses, make_samples, tcfg  # noqa: F401  (fixture)


def _batches(rows, size, shuffle_seed=None):
    rows = list(rows)
    if shuffle_seed is not None:  # Ray Data may stream blocks in any order
        random.Random(shuffle_seed).shuffle(rows)
    for i in range(0, len(rows), size):
        yield pa.Table.from_pylist(rows[i:i + size])


def test_plan_is_a_sorted_stride_whatever_the_input_order():
    ids = [f"x{i:02d}" for i in range(10)]
    a = plan_shard(ids, 1, 3, probe_size=2, seed=0)
    b = plan_shard(list(reversed(ids)), 1, 3, probe_size=2, seed=0)
    assert a == b
    mine, cand, total = a
    assert mine == ["x01", "x04", "x07"] and total == 10
    assert len(cand) == 8 and len(set(cand)) == 8
    shards = [plan_shard(ids, r, 3, 2, 0)[0] for r in range(3)]
    assert sorted(sum(shards, [])) == ids  # every row on exactly one rank


def test_plan_refuses_duplicates_and_empty_data():
    with pytest.raises(ValueError, match="'a' appears more than once"):
        plan_shard(["a", "b", "a"], 0, 1, 2, 0)
    with pytest.raises(ValueError, match="empty"):
        plan_shard([], 0, 1, 2, 0)


def test_spill_keeps_only_planned_rows_and_reads_back_by_id(tmp_path):
    rows = make_samples(20)
    rows[3]["image"] = None
    keep = {r["id"] for r in rows[::2]} | {"s3"}
    n = spill(_batches(rows, 6, shuffle_seed=1), keep, tmp_path / "s.arrow")
    assert n == len(keep)
    want = sorted(keep)
    view = ArrowRows(tmp_path / "s.arrow", want)
    assert len(view) == len(keep) and view.ids == want
    by_id = {r["id"]: r for r in rows}
    for i, sid in enumerate(want):
        assert view[i] == by_id[sid]
    assert view[-1] == by_id[want[-1]] and view[1:3] == [by_id[want[1]], by_id[want[2]]]
    with pytest.raises(KeyError, match="not in"):
        ArrowRows(tmp_path / "s.arrow", ["nope"])


def test_load_shard_matches_the_in_memory_choice(tmp_path):
    rows = make_samples(30)
    for r in rows[:5]:
        r["image"] = None
    got = [load_shard(_batches(rows, 7, shuffle_seed=r), _batches([{"id": x["id"]} for x in rows], 9), r, 2,
                      probe_size=3, seed=4, spill_dir=tmp_path / f"r{r}") for r in range(2)]
    (rows0, probe0, ids0, total0), (rows1, probe1, ids1, total1) = got
    assert total0 == total1 == 30
    assert ids0 == ids1 and len(ids0) == 3  # every rank measures κ on the same probe
    assert all(p["image"] is not None for p in probe0 if p["id"] in ids0)
    assert sorted(rows0.ids + rows1.ids) == sorted(r["id"] for r in rows)
    # the in-memory path (run_training without Ray) picks the same probe from sorted rows
    ordered = sorted(rows, key=lambda r: r["id"])
    assert pick_probe_ids(ordered, 3, seed=4) == ids0
    assert image_first([{"id": "a", "image": None}, {"id": "b", "image": b"x"}], 1) == ["b"]


def test_training_from_a_spilled_shard_equals_training_from_a_list(base_dir, tmp_path):  # noqa: F811
    samples = sorted(make_samples(12), key=lambda r: r["id"])
    spill(_batches(samples, 5), {r["id"] for r in samples}, tmp_path / "all.arrow")
    view = ArrowRows(tmp_path / "all.arrow", [r["id"] for r in samples])
    cfg = tcfg("commit", max_steps=6)
    m1, p1 = fresh_student(base_dir)
    a = run_training(m1, p1, samples, cfg, seed=3)
    m2, p2 = fresh_student(base_dir)
    b = run_training(m2, p2, view, cfg, seed=3)
    assert torch.allclose(losses(a), losses(b), rtol=0, atol=0)
