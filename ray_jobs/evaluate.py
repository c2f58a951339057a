"""`ray job submit --runtime-env cluster/runtime_env.yaml -- python -m ray_jobs.evaluate --config configs/demo.yaml [KEY=VALUE ...]`"""

import sys

from mmtune.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
