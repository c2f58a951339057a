"""`ray job submit --runtime-env cluster/runtime_env.yaml -- python -m ray_jobs.pretrain_student --config configs/demo.yaml`"""

import sys

from mmtune.cli import main

if __name__ == "__main__":
    sys.exit(main(["student", "pretrain", *sys.argv[1:]]))
