"""Driver: both cluster fault scenarios on one ``ray.cluster_utils.Cluster`` (issue F §4).

``python -m tests.faults.cluster_faults OUT.json``: a head and two worker nodes come up
once (starting raylets is the expensive part on a small machine). The teacher scenario
(``teacher_replica_loss``) runs beside the uninterrupted Train run; then the Train run
with a node killed (``train_node_loss``), which leaves the cluster one worker node short.
Each scenario's measurements, or its traceback, go to OUT under its name.
"""

from __future__ import annotations

import json
import os
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
    from tests.faults import teacher_replica_loss, train_node_loss
    from tests.faults.inproc_cluster import local_cluster

    work = out.parent
    t0 = time.time()
    report: dict[str, Any] = {}

    def mark(what: str) -> None:
        report.setdefault("timeline_s", {})[what] = round(time.time() - t0, 1)
        print(f"[faults] {what} at {time.time() - t0:.1f}s", file=sys.stderr, flush=True)

    with local_cluster(train_node_loss.HEAD, [train_node_loss.WORKER] * 2) as (cluster, nodes):
        mark("cluster up")
        # The uninterrupted Train run needs no fault, so it runs beside the teacher
        # scenario (which then streams under real load); the node kill comes after both.
        ref: dict[str, Any] = {}
        th = threading.Thread(target=lambda: ref.update(_guarded(
            lambda: train_node_loss.reference(work / "train_node_loss"))), daemon=True)
        th.start()
        report["teacher"] = _guarded(lambda: teacher_replica_loss.run(work / "teacher_replica_loss"))
        mark("teacher done")
        th.join()
        mark("train reference done")
        report["train"] = _guarded(lambda: train_node_loss.run(cluster, nodes, work / "train_node_loss", ref=ref))
        mark("train fault done")
    report["total_s"] = round(time.time() - t0, 1)
    out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    from tests.faults.inproc_cluster import ENV

    for k, v in ENV.items():
        os.environ.setdefault(k, v)
    main(Path(sys.argv[1]).resolve())
