"""An in-process ``ray.cluster_utils.Cluster`` for the scenarios that kill nodes, and the
subprocess runner for their drivers.

A scenario that removes a node needs the ``Cluster`` object itself, so the cluster lives in
the driver's own process (unlike ``driver_cluster.py``, which holds one for drivers that
only connect to it). Each driver runs as ``python -m tests.faults.<driver> OUT.json``:
the pytest session's shared local Ray (``ray_local``) never sees this cluster, and the
``Cluster``'s process-global state (GCS accessor, internal KV reset at shutdown) dies
with the driver. The driver writes its measurements as JSON; the test asserts on them.

``RAY_TMPDIR`` points at a private, short directory: Ray's unix socket paths must stay
under ~107 bytes, and the ``ray_current_cluster`` address file must not land in the
machine's shared ``/tmp/ray``, where another Ray's ``ray.init(address="auto")`` would
find it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]

# What tests/conftest.py sets before Ray is imported (the drivers also run standalone).
ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1",
       "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


def standalone_env() -> None:
    """For a driver run by hand: the test settings, and a private Ray temp dir (left in
    place, with the session logs) unless ``RAY_TMPDIR`` is set. Call before importing Ray."""
    for k, v in ENV.items():
        os.environ.setdefault(k, v)
    if "RAY_TMPDIR" not in os.environ:
        os.environ["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="mmf")
        print(f"Ray temp dir (logs): {os.environ['RAY_TMPDIR']}", file=sys.stderr)


@contextmanager
def local_cluster(head: dict[str, Any], workers: list[dict[str, Any]]) -> Iterator[tuple[Any, list[Any]]]:
    """A head plus one raylet per entry of ``workers`` (``Cluster.add_node`` arguments) on
    this machine, the driver connected to the head; all shut down on exit.
    Yields (cluster, worker nodes). ``RAY_TMPDIR`` must be set before Ray is imported."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        "include_dashboard": False, "object_store_memory": 200 * 1024 * 1024, **head})
    try:
        nodes = add_workers(cluster, workers)
        ray.init(address=cluster.address, log_to_driver=False)
        yield cluster, nodes
    finally:
        ray.shutdown()
        cluster.shutdown()


def add_workers(cluster: Any, workers: list[dict[str, Any]]) -> list[Any]:
    """Add one worker node per entry of ``workers`` and wait until all are registered."""
    # wait=False: the raylets start side by side; wait_for_nodes then waits for all
    nodes = [cluster.add_node(wait=False, object_store_memory=150 * 1024 * 1024, **w) for w in workers]
    cluster.wait_for_nodes(timeout=120)
    return nodes


def run_driver(module: str, out: Path, *args: str, timeout_s: float) -> dict[str, Any]:
    """Run ``python -m tests.faults.<module> OUT args...`` in a private Ray temp dir and
    return the JSON it wrote to OUT; on failure, the driver's output tail is the message."""
    tmp = tempfile.mkdtemp(prefix="mmf")  # short: see the module docstring
    # TMPDIR too: a worker killed with its node never runs its cleanup (shard spill and
    # checkpoint staging dirs), and this dir goes away with the driver.
    env = {**os.environ, **ENV, "RAY_TMPDIR": tmp, "TMPDIR": tmp,
           # Ray workers import the test helpers too (the tiny models)
           "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    env.pop("RAY_ADDRESS", None)
    try:
        p = subprocess.run([sys.executable, "-m", f"tests.faults.{module}", str(out), *args], check=False, cwd=ROOT,
                           env=env, capture_output=True, text=True, timeout=timeout_s)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    tail = (p.stdout + p.stderr)[-8000:]
    assert p.returncode == 0 and out.is_file(), f"driver {module} failed (exit {p.returncode}):\n{tail}"
    return json.loads(out.read_text())


_REPORTS: dict[str, Any] = {}


def cluster_faults_report(tmp_root: Path, timeout_s: float = 480) -> dict[str, Any]:
    """The report of ``cluster_faults`` (both scenarios on one cluster), run once per test
    session: the two test modules share it and the cluster starts once. A failed driver
    fails both tests with its output, without running again."""
    if "report" not in _REPORTS:
        try:
            _REPORTS["report"] = run_driver("cluster_faults", tmp_root / "cluster_faults.json", timeout_s=timeout_s)
        except (AssertionError, subprocess.TimeoutExpired) as e:
            _REPORTS["report"] = e
    got = _REPORTS["report"]
    if isinstance(got, BaseException):
        raise AssertionError(f"the cluster fault driver failed: {got}")  # noqa: TRY004 - a test failure
    return got
