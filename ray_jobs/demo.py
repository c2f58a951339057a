"""`ray job submit --runtime-env cluster/runtime_env.yaml -- python -m ray_jobs.demo --config configs/demo.yaml [KEY=VALUE ...]`"""

import sys

from mmtune.cli import main

if __name__ == "__main__":
    sys.exit(main(["demo", *sys.argv[1:]]))
