"""Starting Ray, once, from an entry point (the CLI or a ``ray_jobs`` script).

Library functions never call ``ray.init`` themselves; they take what they need as
arguments and assume the entry point has connected.
"""

from __future__ import annotations

import json
import logging
import os
import sys

from mmtune.config import RayConfig

log = logging.getLogger(__name__)


def init_ray(cfg: RayConfig) -> dict[str, float]:
    """Connect to ``cfg.address`` (a running cluster) or start a local Ray; returns the
    cluster's resources so callers can discover GPUs instead of assuming them."""
    import ray

    if ray.is_initialized():
        return ray.cluster_resources()
    kwargs: dict = {"ignore_reinit_error": True, "log_to_driver": True}
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        kwargs["address"] = address
    else:
        kwargs["include_dashboard"] = cfg.include_dashboard
        if cfg.num_cpus:
            kwargs["num_cpus"] = cfg.num_cpus
        if cfg.object_store_memory_mb:
            kwargs["object_store_memory"] = cfg.object_store_memory_mb * 1024 * 1024
        if cfg.temp_dir:
            kwargs["_temp_dir"] = os.path.abspath(cfg.temp_dir)
        if not cfg.include_dashboard:
            kwargs["runtime_env"] = {"worker_process_setup_hook": "mmtune.runtime.quiet_train_cleaner"}
    ray.init(**kwargs)
    if not sys.stdout.isatty():
        # In a log file (ray job, CI, nohup) Ray Data's progress bars become hundreds of
        # redraw lines per dataset; mmtune prints its own progress for every long stage.
        import ray.data

        ray.data.DataContext.get_current().enable_progress_bars = False
    res = ray.cluster_resources()
    log.info("ray: %s CPUs, %s GPUs", res.get("CPU", 0), res.get("GPU", 0))
    return res


# Ray Train V2 starts a detached PlacementGroupCleaner per run that asks the State API every
# second whether the run's controller is alive. The State API is served by the dashboard, so
# on a local Ray without it every ask fails and logs a warning: 54 of the 317 lines of a
# `make demo` log, 1,343 lines of a `mmtune compare` log. Without the State API the cleaner
# can never see the controller die (it only matters when a controller is killed), so its
# warnings carry nothing; only local Rays that mmtune starts without the dashboard quiet them.
CLEANER_LOGGER = "ray.train.v2._internal.execution.controller.placement_group_cleaner"


def quiet_train_cleaner() -> None:
    """``worker_process_setup_hook`` of a local Ray without the dashboard (see above)."""
    logging.getLogger(CLEANER_LOGGER).setLevel(logging.ERROR)


def job_working_dir() -> str | None:
    """The directory this process runs in when it is the driver of a Ray job submitted with
    a ``working_dir`` (``ray job submit --runtime-env``/``--working-dir``); None otherwise.

    That directory is Ray's temporary copy of the uploaded code: one per code version under
    the head's session directory, garbage-collected once no job uses it. A relative output
    path resolves into it and is lost. The job supervisor describes the job's runtime_env to
    the driver in ``RAY_JOB_CONFIG_JSON_ENV_VAR`` and starts it in the copy.
    """
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not raw:
        return None
    try:
        runtime_env = json.loads(raw).get("runtime_env") or {}
    except (ValueError, AttributeError):
        return None
    return os.getcwd() if runtime_env.get("working_dir") else None
