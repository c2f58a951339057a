"""The fair comparison (every arm × budgets × seeds) as a Ray job.

    ray job submit --runtime-env cluster/runtime_env.yaml -- \\
        python -m ray_jobs.compare --config configs/demo.yaml [--resume] [KEY=VALUE ...]

Same arguments as ``mmtune compare``; inside a job, Ray connects to the job's cluster.
"""

import sys

from mmtune.cli import main

if __name__ == "__main__":
    sys.exit(main(["compare", *sys.argv[1:]]))
