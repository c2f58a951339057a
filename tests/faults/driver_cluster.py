"""A ``ray.cluster_utils.Cluster`` (a head plus worker nodes on this machine) in a process of
its own, for the fault-tolerance tests (issue F §4).

Why a separate process: the rest of the suite shares one in-process local Ray
(``ray_local``). ``Cluster`` keeps global state in the process that creates it (its GCS
accessor; at shutdown it resets Ray's internal KV and deletes the "current cluster" address
file), which would break that shared Ray. Here the cluster lives and dies in its own
process, and tests hand its address to subprocess drivers (``ray.address=...``).

``RAY_TMPDIR`` points at a private directory, so the session files and the
``ray_current_cluster`` address file never touch the machine's shared ``/tmp/ray`` (where
another Ray's ``ray.init(address="auto")`` would find them).

Run as a script, it prints one JSON line ``{"address": ..., "nodes": ...}`` once every node
is up, then holds the cluster until its stdin closes (the test ends, or dies).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_env(tmp: str) -> dict[str, str]:
    """The environment of the cluster's processes and of the drivers: the test settings of
    tests/conftest.py (no auth on loopback, offline HF, one thread), a private temp dir."""
    env = dict(os.environ)
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", RAY_TMPDIR=tmp,
               # TMPDIR too: the Train workers of a killed driver die without their cleanup
               # (shard spill, checkpoint scratch); their leftovers go with the cluster's dir.
               TMPDIR=tmp,
               PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    env.pop("RAY_ADDRESS", None)  # drivers get the address explicitly
    return env


@contextlib.contextmanager
def cluster(workers: int = 2, cpus: float = 1, head_cpus: float = 1, timeout: float = 120) -> Iterator[dict]:
    """Start the cluster in a child process; yields ``{"address", "nodes", "env"}`` where
    ``env`` is the environment for subprocess drivers. Shuts it down on exit."""
    # Short and private: Ray's unix socket paths must stay under ~107 characters.
    tmp = tempfile.mkdtemp(prefix="mmc")
    env = test_env(tmp)
    with open(Path(tmp) / "cluster.log", "w") as log:
        proc = subprocess.Popen([sys.executable, __file__, "--workers", str(workers), "--cpus", str(cpus),
                                 "--head-cpus", str(head_cpus)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=log, text=True, env=env, cwd=ROOT)
    try:
        t0 = time.time()
        line = proc.stdout.readline()  # blocks until the cluster is up (or the helper died)
        if not line:
            raise RuntimeError(f"the test cluster did not start (exit {proc.wait()}); see {tmp}/cluster.log:\n"
                               + (Path(tmp) / "cluster.log").read_text()[-3000:])
        info = json.loads(line)
        info.update(env=env, tmp=tmp, start_s=round(time.time() - t0, 1))
        yield info
    finally:
        with contextlib.suppress(Exception):
            proc.stdin.close()  # the helper's cue to shut the cluster down
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()  # Ray's reaper processes take the nodes down with it
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


_SHARED: dict[str, object] = {}


def shared_cluster(request) -> Iterator[dict]:
    """Body of a module-scoped fixture: one cluster for every test module that asks for it
    in a row. It starts on first use and stops after the last module of the session that
    uses this fixture (name ``request.fixturename``), so modules run alone still clean up,
    and a cluster (seconds to start on 2 cores) is not started twice for neighbours."""
    if "info" not in _SHARED:
        cm = cluster()
        _SHARED.update(cm=cm, info=cm.__enter__())
    yield _SHARED["info"]
    items = request.session.items
    last = max(i for i, it in enumerate(items) if it.module is request.module)
    if not any(request.fixturename in it.fixturenames for it in items[last + 1:]):
        cm = _SHARED.pop("cm")
        _SHARED.clear()
        cm.__exit__(None, None, None)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cpus", type=float, default=1)
    ap.add_argument("--head-cpus", type=float, default=1)
    a = ap.parse_args()
    from ray.cluster_utils import Cluster

    node = {"include_dashboard": False, "object_store_memory": 200 * 1024 * 1024}
    # Ray gives a raylet 30 s to register, a limit a loaded 2-core CI machine can miss:
    # one more try before the test fails.
    for attempt in (1, 2):
        try:
            c = Cluster(initialize_head=True, connect=False, head_node_args={**node, "num_cpus": a.head_cpus})
            break
        except Exception as e:  # Ray raises a bare Exception on this timeout
            if attempt == 2:
                raise
            print(f"head node start failed ({e}); retrying", file=sys.stderr, flush=True)
    try:
        for _ in range(a.workers):
            c.add_node(**node, num_cpus=a.cpus)
        c.wait_for_nodes()
        print(json.dumps({"address": c.address, "nodes": 1 + a.workers}), flush=True)
        sys.stdin.read()  # hold the cluster until the test closes our stdin
    finally:
        c.shutdown()


if __name__ == "__main__":
    main()
