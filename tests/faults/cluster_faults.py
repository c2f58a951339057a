"""Driver: both cluster fault scenarios on one ``ray.cluster_utils.Cluster`` (issue F §4).

``python -m tests.faults.cluster_faults OUT.json``: a head and two worker nodes come up
once, and the scenarios run side by side (on 2 cores, most of their time is process
start-up and polling, which overlaps well):

1. the head starts; the uninterrupted Train run starts on the head's ``ref_slot``s, the
   Train run that will lose a node (``train_node_loss.fault``) asks for its slots, and
   the teacher app is deployed. Its replicas and ingress are placed while the head is
   the only node, so the node kill cannot take one (the ingress asks for no CPU and
   could otherwise land on a worker node);
2. the worker nodes join. They offer a train slot and no CPU, so only the node-loss
   run's workers ever land there (not a task, nor a replacement replica);
3. the teacher scenario streams its requests and kills a replica
   (``teacher_replica_loss.exercise``) under the load of both Train runs, while the
   node-loss run trains, loses its node and resumes.

Each scenario's measurements, or its traceback, go to OUT under its name.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _guarded(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    try:
        return fn()
    except Exception:  # noqa: BLE001 - the other scenario still runs; the test shows this
        return {"error": traceback.format_exc()[-4000:]}


def main(out: Path) -> None:
    from tests.faults import teacher_replica_loss as teacher
    from tests.faults import train_node_loss as train
    from tests.faults.inproc_cluster import add_workers, local_cluster

    t0 = time.time()
    report: dict[str, Any] = {}

    def mark(what: str) -> None:
        report.setdefault("timeline_s", {})[what] = round(time.time() - t0, 1)
        print(f"[faults] {what} at {time.time() - t0:.1f}s", file=sys.stderr, flush=True)

    def start(target: Callable[[], Any]) -> threading.Thread:
        th = threading.Thread(target=target, daemon=True)
        th.start()
        return th

    # the tiny models are built while the head starts
    made: dict[str, Any] = {}
    prep = start(lambda: made.update(train=train.prepare(out.parent / "train_node_loss"),
                                     teacher=teacher.prepare(out.parent / "teacher_replica_loss")))
    with local_cluster(train.HEAD, []) as (cluster, _):
        mark("head up")
        report["head_node"] = cluster.head_node.node_id
        prep.join()
        train_work = out.parent / "train_node_loss"
        ref: dict[str, Any] = {}
        ref_th = start(lambda: ref.update(_guarded(lambda: train.reference(train_work, made["train"]))))
        # The node-loss run starts now too: its worker group waits for a second train slot
        # (a worker node), and its node killer reads `nodes` only after a checkpoint.
        nodes: list[Any] = []
        fault: dict[str, Any] = {}
        fault_th = start(lambda: fault.update(_guarded(lambda: train.fault(cluster, nodes, train_work,
                                                                           made["train"]))))
        served = _guarded(lambda: teacher.deploy(made["teacher"]))
        mark("teacher replicas placed")
        nodes += add_workers(cluster, [train.WORKER] * 2)
        mark("worker nodes up")
        report["teacher"] = served if "error" in served else _guarded(lambda: teacher.exercise(served))
        mark("teacher done")
        ref_th.join()
        mark("train reference done")
        fault_th.join()
        mark("train fault done")
        report["train"] = {"ref": ref, **fault}
    report["total_s"] = round(time.time() - t0, 1)
    out.write_text(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    from tests.faults.inproc_cluster import standalone_env

    standalone_env()
    main(Path(sys.argv[1]).resolve())
