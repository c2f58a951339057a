"""Kill a worker node during Ray Train (issue F §4): the run resumes from its last
checkpoint, with no lost or repeated steps, and ends where an uninterrupted run ends.

The scenario runs in a subprocess driver on a ``ray.cluster_utils.Cluster``
(``train_node_loss.py``, shared with the teacher scenario by ``cluster_faults.py``), so
the session's ``ray_local`` is never touched. Here we only read its report.

Tolerance: exact resume restores weights, AdamW moments, the lr schedule, the κ EMA, the
regulariser, each rank's RNG (LoRA dropout) and the data position; each worker runs one
torch thread and the 2-rank gloo all-reduce sums two tensors (a + b, commutative), so a
resumed step computes the same floats as the uninterrupted one. We expect bit-equality
(measured: max |Δloss| = 0.0 over all steps of both ranks) and allow 1e-6 absolute, room
for float32 reduction-order noise only: here one optimizer step moves the loss by
0.002–0.05, so a replayed, skipped or re-shuffled batch would show by orders of magnitude.
"""

from __future__ import annotations

from collections import Counter

import pytest

from tests.faults.inproc_cluster import cluster_faults_report
from tests.faults.train_node_loss import MAX_STEPS

LOSS_TOL = 1e-6


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    got = cluster_faults_report(tmp_path_factory.mktemp("cluster_faults"))["train"]
    assert "error" not in got or not isinstance(got["error"], str), got.get("error")
    return got


def _steps(lines, rank):
    return [r["step"] for r in lines if r["rank"] == rank]


@pytest.mark.ray
@pytest.mark.slow
def test_uninterrupted_run_is_one_clean_attempt(report):
    ref = report["ref"]
    assert ref["error"] is None
    assert [h["step"] for h in ref["history"]] == list(range(1, MAX_STEPS + 1))
    for rank in (0, 1):
        assert _steps(ref["log"], rank) == list(range(1, MAX_STEPS + 1))
    assert {r["resumed_from"] for r in ref["log"]} == {0}
    assert report["chaos"]["victim"] not in {r["node"] for r in ref["log"]}  # it ran beside the kill, untouched


@pytest.mark.ray
@pytest.mark.slow
def test_node_loss_resumes_from_the_last_checkpoint_without_lost_or_repeated_steps(report):
    chaos, fault = report["chaos"], report["fault"]
    assert "error" not in chaos, chaos
    assert fault["error"] is None, fault["error"]
    log = fault["log"]
    # the killed node hosted a rank of the first attempt, and none of the second
    first = [r for r in log if r["resumed_from"] == 0]
    assert chaos["victim"] in {r["node"] for r in first if r["rank"] == chaos["victim_rank"]}
    resumed = {r["resumed_from"] for r in log} - {0}
    assert len(resumed) == 1, f"expected one restart, got attempts resuming from {sorted(resumed)}"
    c = resumed.pop()
    second = [r for r in log if r["resumed_from"] == c]
    assert chaos["victim"] not in {r["node"] for r in second}
    # it resumed from the last checkpoint the first attempt completed: one both ranks
    # reported, and no older than any whose report the controller had taken (a worker
    # holds one unread report, so a rank's next report returning means it took this one)
    ckpts = [sorted(r["step"] for r in first if r["rank"] == rank and r["checkpoint"]) for rank in (0, 1)]
    assert c in ckpts[0] and c in ckpts[1] and c < MAX_STEPS
    taken = [k for k in ckpts[0] if all(any(j > k for j in ck) for ck in ckpts)]
    assert c >= max(taken, default=0) and c >= chaos["seen_checkpoint"], (c, ckpts, chaos)
    for rank in (0, 1):
        # the second attempt starts at checkpoint + 1 and runs each later step once
        assert _steps(second, rank) == list(range(c + 1, MAX_STEPS + 1)), rank
        # the final lineage: steps up to the checkpoint from attempt 1, the rest from attempt 2
        lineage = [s for s in _steps(first, rank) if s <= c] + _steps(second, rank)
        assert sorted(lineage) == list(range(1, MAX_STEPS + 1)) and max(Counter(lineage).values()) == 1
    # the final checkpoint's history is that lineage, step for step
    assert fault["checkpoint"] == f"checkpoint_{MAX_STEPS:08d}"
    assert [h["step"] for h in fault["history"]] == list(range(1, MAX_STEPS + 1))
    lineage0 = {r["step"]: r["loss"] for r in first if r["rank"] == 0 and r["step"] <= c}
    lineage0.update({r["step"]: r["loss"] for r in second if r["rank"] == 0})
    assert [h["loss"] for h in fault["history"]] == [lineage0[s] for s in range(1, MAX_STEPS + 1)]


@pytest.mark.ray
@pytest.mark.slow
def test_resumed_run_ends_where_the_uninterrupted_run_ends(report):
    ref, fault = report["ref"], report["fault"]
    assert fault["history"][-1]["loss"] == pytest.approx(ref["history"][-1]["loss"], abs=LOSS_TOL)
    for a, b in zip(ref["history"], fault["history"]):
        assert b["loss"] == pytest.approx(a["loss"], abs=LOSS_TOL), a["step"]
    # rank 1's losses too (its own shard, restored RNG)
    ref1 = {r["step"]: r["loss"] for r in ref["log"] if r["rank"] == 1}
    c = max(r["resumed_from"] for r in fault["log"])
    fault1 = {r["step"]: r["loss"] for r in fault["log"] if r["rank"] == 1 and (r["resumed_from"] == c or r["step"] <= c)}
    assert fault1.keys() == ref1.keys()
    assert all(fault1[s] == pytest.approx(ref1[s], abs=LOSS_TOL) for s in ref1)
