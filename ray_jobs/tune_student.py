"""Coordinated tuning as a Ray job.

    ray job submit --runtime-env cluster/runtime_env.yaml -- \\
        python -m ray_jobs.tune_student --config configs/demo.yaml [--data PATH ...] [KEY=VALUE ...]

Same arguments as ``mmtune train``; inside a job, Ray connects to the job's cluster.
"""

import sys

from ray_jobs._job import run_cli

if __name__ == "__main__":
    sys.exit(run_cli(["train"]))
