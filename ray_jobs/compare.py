"""The fair comparison (every arm × budgets × seeds) as a Ray job.

    ray job submit --runtime-env cluster/runtime_env.yaml -- \\
        python -m ray_jobs.compare --config configs/demo.yaml [--resume] [KEY=VALUE ...]

Same arguments as ``mmtune compare``; inside a job, Ray connects to the job's cluster.
"""

import sys

from ray_jobs._job import run_cli

if __name__ == "__main__":
    sys.exit(run_cli(["compare"]))
