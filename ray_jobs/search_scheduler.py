"""Search CoMMIT's scheduler constants with Ray Tune + ASHA, as a Ray job.

    ray job submit --runtime-env cluster/runtime_env.yaml -- \\
        python -m ray_jobs.search_scheduler --config configs/demo.yaml \\
        [--data PATH ...] [--student DIR] [--space space.yaml] [--out DIR] [KEY=VALUE ...]

Same arguments as ``mmtune search``. Trains on ``--data`` (Sample parquet; default: the
configured corpus) and scores trials on the targets' validation splits (never test).
Writes ``best_config.yaml`` and the trial table under ``--out`` (default
``<run.out_dir>/<run.name>/search``); docs/search.md.
"""

import sys

from ray_jobs._job import run_cli


def main(argv: list[str] | None = None) -> int:
    return run_cli(["search"], argv)


if __name__ == "__main__":
    sys.exit(main())
