"""Embed the corpus and build its index as a Ray job.

    ray job submit --runtime-env cluster/runtime_env.yaml -- \\
        python -m ray_jobs.embed_corpus --config configs/demo.yaml [--data PATH ...] [KEY=VALUE ...]

Same arguments as ``mmtune index``. On a cluster with GPUs the embedders run one actor per
GPU in fp16 (``retrieval.embed_gpus_per_actor``).
"""

import sys

from ray_jobs._job import run_cli

if __name__ == "__main__":
    sys.exit(run_cli(["index"]))
