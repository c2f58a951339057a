"""What every ``ray_jobs`` script does before it hands over to mmtune: refuse output paths
that would be lost.

``ray job submit --runtime-env cluster/runtime_env.yaml`` runs the job in Ray's temporary
copy of the uploaded working_dir (``mmtune.runtime.job_working_dir``). A relative
``run.out_dir`` or ``run.cache_dir`` (the defaults, ``runs`` and ``runs/_cache``) would put
the run and its caches inside that copy: Ray garbage-collects it, the next submission with
edited code runs in another copy, so ``--resume`` finds nothing and the outputs are gone.
Failing in the first second with the fix beats losing hours of work, so such a job is
refused before it starts. Outside a Ray job, or in one without a working_dir (a KubeRay
``RayJob`` with the code in its image), relative paths keep their usual meaning.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

from mmtune.config import ConfigError, RunConfig, load_config
from mmtune.runtime import job_working_dir

# Config fields a job writes to; scripts that only fill caches check only run.cache_dir.
OUTPUTS = ("run.out_dir", "run.cache_dir")
_EXAMPLES = {"run.out_dir": "run.out_dir=/mnt/cluster_storage/runs",
             "run.cache_dir": "run.cache_dir=/mnt/cluster_storage/cache",
             "--out": "--out /mnt/cluster_storage/<dir>"}


def check_output_paths(cfg: RunConfig, fields: tuple[str, ...] = OUTPUTS,
                       extra: Mapping[str, str | None] | None = None) -> None:
    """Raise ConfigError naming each relative output path when this process is a Ray job
    running in a copy of its working_dir; ``extra`` adds command-line paths (``--out``)."""
    workdir = job_working_dir()
    if workdir is None:
        return
    paths = {f: _field(cfg, f) for f in fields}
    paths.update({k: v for k, v in (extra or {}).items() if v})
    relative = {k: v for k, v in paths.items() if not os.path.isabs(v)}
    if not relative:
        return
    named = ", ".join(f"{k}={v!r}" for k, v in relative.items())
    fix = " ".join(_EXAMPLES.get(k, f"{k}=/mnt/cluster_storage/...") for k in relative)
    raise ConfigError(
        f"relative output path(s) in a Ray job: {named}. This job was submitted with a working_dir, so it "
        f"runs in Ray's temporary copy of the code ({workdir}), which Ray deletes once unused and replaces "
        "with a new copy whenever the code changes: the outputs would be lost and --resume would never find "
        f"them. Pass absolute paths on storage every node sees, e.g. {fix} "
        "(docs/operations.md, section 3).")


def run_cli(command: list[str], argv: list[str] | None = None, fields: tuple[str, ...] = OUTPUTS) -> int:
    """``mmtune <command> <argv>``, after ``check_output_paths``; the exit code of the CLI,
    or 2 with one ``error:`` line (as the CLI reports a bad config) when refused."""
    from mmtune.cli import build_parser, main

    full = [*command, *(sys.argv[1:] if argv is None else argv)]
    try:
        args = build_parser().parse_args(full)
    except SystemExit as e:  # --help, or bad arguments: argparse has already said why
        return e.code if isinstance(e.code, int) else 2
    try:
        cfg = load_config(args.config, args.overrides)
        check_output_paths(cfg, fields, {"--out": getattr(args, "out", None)})
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return main(full)


def _field(cfg: RunConfig, dotted: str) -> str:
    node = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return str(node)
