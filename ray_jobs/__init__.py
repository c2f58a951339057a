"""Thin entry points for ``ray job submit -- python -m ray_jobs.<job> --config ...``.

Each script only forwards its arguments to the ``mmtune`` CLI, so a job submitted to a
cluster and a command typed on a laptop run the same code. Inside a Ray job, ``RAY_ADDRESS``
is set by the job supervisor and ``mmtune.runtime.init_ray`` joins that cluster.
"""
