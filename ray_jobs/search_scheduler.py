"""Search CoMMIT's scheduler constants with Ray Tune + ASHA, as a Ray job.

    ray job submit --runtime-env cluster/runtime_env.yaml -- \\
        python -m ray_jobs.search_scheduler --config configs/demo.yaml \\
        [--data PATH ...] [--student DIR] [--space space.yaml] [--out DIR] [KEY=VALUE ...]

Trains on ``--data`` (Sample parquet; default: the configured corpus) and scores trials
on the targets' validation splits (never test). Writes ``best_config.yaml`` and the
trial table under ``--out`` (default ``<run.out_dir>/<run.name>/search``); docs/search.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

import yaml

from mmtune.config import ConfigError, load_config


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ray_jobs.search_scheduler", description=__doc__.splitlines()[0])
    ap.add_argument("--config", help="run config YAML (default: built-in defaults)")
    ap.add_argument("--data", action="append", help="training parquet: file, directory or glob (repeatable)")
    ap.add_argument("--student", help="starting student directory or hub id (default: the config's)")
    ap.add_argument("--space", help="YAML mapping {dotted.path: {loguniform|uniform|choice: [...]}} "
                                    "(default: search.space, else the built-in space)")
    ap.add_argument("--out", help="output directory (default: <run.out_dir>/<run.name>/search)")
    ap.add_argument("overrides", nargs="*", help="KEY=VALUE config overrides, e.g. search.num_samples=16")
    args = ap.parse_args(argv)
    try:
        from mmtune.data.catalog import data_paths
        from mmtune.runtime import init_ray
        from mmtune.search import run_search
        from mmtune.training.job import training_paths

        cfg = load_config(args.config, args.overrides)
        space = yaml.safe_load(Path(args.space).read_text()) if args.space else None
        if space is not None and not isinstance(space, dict):
            raise ConfigError(f"--space {args.space}: expected a mapping of dotted paths, got {type(space).__name__}")
        train = training_paths(cfg, args.data)
        val = {name: [str(p) for p in paths] for name, paths in data_paths(cfg).target_val.items()}
        init_ray(cfg.ray)
        out = args.out or Path(cfg.run.out_dir) / cfg.run.name / "search"
        result = run_search(cfg, train, val, student=args.student, out_dir=out, space=space)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(asdict(result), default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
