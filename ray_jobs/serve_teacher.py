"""Serve the teacher on a Ray cluster until the job is stopped.

    ray job submit --runtime-env cluster/runtime_env.yaml -- \\
        python -m ray_jobs.serve_teacher --config configs/demo.yaml [KEY=VALUE ...]

Same as ``mmtune teacher serve``: the app binds to ``teacher.host``:``teacher.port``
(127.0.0.1 unless the config says otherwise) and is deleted when the job stops
(``ray job stop`` sends SIGTERM). docs/serving.md has the HTTP API.
"""

import argparse
import sys

from mmtune.config import ConfigError, load_config
from mmtune.runtime import init_ray
from mmtune.teacher.serve import start_teacher
from ray_jobs._job import check_output_paths


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Serve the mmtune teacher with Ray Serve until stopped")
    ap.add_argument("--config", default=None, help="run config YAML (default: the built-in defaults)")
    ap.add_argument("overrides", nargs="*", help="KEY=VALUE overrides, e.g. teacher.port=8001")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        check_output_paths(cfg, fields=("run.cache_dir",))  # the built-in teacher is trained into the cache
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    init_ray(cfg.ray)
    start_teacher(cfg, blocking=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
