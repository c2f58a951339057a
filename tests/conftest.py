"""Test settings that must be in place before Ray or HF are imported (ENVIRONMENT.md)."""

import os

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # loopback-only test clusters
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may reach for the hub in tests
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Ray Train starts a PreemptionWatcher actor per run to follow node drains (spot clusters);
# on the one-node test Ray there is nothing to drain, and each actor is a Python process
# start (~2 s of a CI core). The cluster tests inherit this too: they kill nodes, which is
# not a drain, so the watcher would have nothing to report there either.
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")

import pytest

# Tests that start their own multi-node Ray (ray.cluster_utils.Cluster) or a real head and
# submit jobs to it: ~7 minutes together on 2 cores. `make test` leaves them out (CI's
# 20-minute budget); `make test-cluster` runs them (docs/architecture.md, "Reliability").
# Running them as a second pytest-xdist stream beside the rest was measured and gained
# nothing on 2 cores: both streams are CPU-bound (docs/benchmarks.md).
CLUSTER_TESTS = ("tests/faults/", "tests/cluster/test_job_submit.py")


def pytest_collection_modifyitems(config, items):
    for item in items:
        path = str(item.path.relative_to(config.rootpath)) if item.path.is_relative_to(config.rootpath) else ""
        if path.startswith(CLUSTER_TESTS):
            item.add_marker(pytest.mark.cluster)
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU; none is visible to torch here")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole session, sized for a 2-core machine."""
    import shutil
    import tempfile

    import ray

    # Short and private: Ray's unix socket paths must stay under 107 bytes, which a pytest
    # tmp dir (/tmp/pytest-of-<user>/pytest-<n>/...) reached here as root and can exceed.
    temp_dir = tempfile.mkdtemp(prefix="mmr")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=512 * 1024 * 1024, _temp_dir=temp_dir)
    yield ray
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)
