"""Test settings that must be in place before Ray or HF are imported (ENVIRONMENT.md)."""

import os

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # loopback-only test clusters
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may reach for the hub in tests
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest

# Tests that start their own multi-node Ray (ray.cluster_utils.Cluster) or a real head and
# submit jobs to it: minutes each on 2 cores, most of it spent waiting (node and replica
# deaths to be noticed, processes to start, jobs to be polled). `make test` runs them with
# pytest-xdist as a second stream beside the rest of the suite (`-n 2 --dist loadgroup`,
# scheduled by `pytest_xdist_make_scheduler` below), so each stream keeps its order and its
# module fixtures; each worker has its own `ray_local`. The cluster tests share nothing with
# it: their own temp dirs, free ports, subprocess drivers.
# `make test-cluster` (marker `cluster`) runs them alone.
CLUSTER_TESTS = ("tests/faults/", "tests/cluster/test_job_submit.py")
# The second stream also takes Ray tests that never start Serve (whose HTTP port the main
# stream's pipelines hold), so that the two streams take about as long as each other.
SECOND_STREAM = (*CLUSTER_TESTS, "tests/training/", "tests/search/")


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_make_scheduler(config, log):
    """Under ``--dist loadgroup``: two streams (``SECOND_STREAM`` and the rest), each whole
    on one worker, in collection order. (xdist's own loadgroup reads `xdist_group` marks
    into node ids, which pytest 9.2's node ids no longer take, so the groups are drawn
    here from the paths.)"""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class TwoStreams(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "second" if nodeid.startswith(SECOND_STREAM) else "main"

    return TwoStreams(config, log)


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
    # tmp dir under pytest-xdist (/tmp/pytest-of-<user>/pytest-<n>/popen-gw0/...) can exceed.
    temp_dir = tempfile.mkdtemp(prefix="mmr")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=512 * 1024 * 1024, _temp_dir=temp_dir)
    yield ray
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)
