"""Submit with

    ray job submit --runtime-env cluster/runtime_env.yaml -- \\
        python -m ray_jobs.evaluate --config configs/demo.yaml [KEY=VALUE ...]
"""

import sys

from ray_jobs._job import run_cli

if __name__ == "__main__":
    sys.exit(run_cli(["evaluate"]))
