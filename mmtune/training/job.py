"""One coordinated tuning run as a job: ``mmtune train`` and ``ray_jobs/tune_student.py``.

Resolves the training data and the starting student from the run config, runs the Ray
Train trainer (:mod:`mmtune.training.trainer`), and leaves a self-contained result in the
run directory::

    runs/<name>/train/
      ray/                  Ray Train's storage: every checkpoint (adapter, optimizer,
                            schedule, coordination state, RNG, data position, history)
      adapter/              the final adapter, loadable by peft.PeftModel.from_pretrained
      history.jsonl         every step's metrics (rank 0)
      summary.json          data, student, steps, time, last metrics, paths

Ray must be initialised by the caller (the CLI / job script does it once).
"""

from __future__ import annotations

import glob
import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from mmtune.config import ConfigError, RunConfig


@dataclass
class TrainOutcome:
    run_dir: str
    adapter_dir: str | None
    checkpoint: str
    steps: int
    samples: int
    seconds: float
    metrics: dict[str, float]


def expand_parquet(specs: Sequence[str]) -> list[str]:
    """Files, directories (searched recursively) and globs → sorted parquet paths."""
    out: list[str] = []
    for spec in specs:
        p = Path(spec)
        if p.is_dir():
            found = sorted(str(f) for f in p.rglob("*.parquet") if f.name != "quarantine.parquet")
        elif p.is_file():
            found = [str(p)]
        else:
            found = sorted(glob.glob(spec, recursive=True))
        if not found:
            raise FileNotFoundError(
                f"no parquet files at {spec!r}. Training reads Sample-schema parquet: convert other "
                "formats first with `mmtune data import SRC --format llava|sharegpt|jsonl --out DIR`")
        out.extend(found)
    return list(dict.fromkeys(out))


def training_paths(cfg: RunConfig, data: Sequence[str] | None, progress=print) -> list[str]:
    """``--data`` if given, else the configured corpus (SkillWorld's, or ``data.corpus``)."""
    if data:
        return expand_parquet(data)
    if cfg.data.source == "skillworld" or cfg.data.corpus:
        from mmtune.data.catalog import data_paths

        # data_paths imports a LLaVA/ShareGPT/JSONL corpus once (cached) into Sample parquet.
        return [str(p) for p in data_paths(cfg, progress).corpus]
    raise ConfigError("no training data: pass --data PATH (Sample parquet) or set data.corpus")


def training_dataset(paths: Sequence[str], tasks: Sequence[str] | None = None):
    """A Ray Dataset over ``paths``, optionally only rows whose ``task`` is in ``tasks``."""
    import ray.data

    ds = ray.data.read_parquet(list(paths))
    if tasks:
        wanted = set(tasks)
        have = set(ray.data.read_parquet(list(paths)).select_columns(["task"]).unique("task"))
        unknown = sorted(wanted - have)
        if unknown:
            raise ValueError(f"--tasks {unknown} not in the training data; it has: {sorted(have)}")
        from ray.data.expressions import col

        ds = ds.filter(expr=col("task").is_in(sorted(wanted)))  # vectorised, not a row-by-row lambda
    return ds


def run_train_job(cfg: RunConfig, paths: Sequence[str], *, tasks: Sequence[str] | None = None,
                  student: str | Path | None = None, name: str = "train", progress=print) -> TrainOutcome:
    """Tune ``student`` (default: the config's, the generic tiny student built on first use)."""
    from mmtune.training.pretrain import resolve_student
    from mmtune.training.trainer import HISTORY_FILE, build_trainer, read_history

    student_path = student or resolve_student(cfg, progress=progress)
    if Path(student_path).exists():
        # Ray Train workers run in their own working directory: a relative path would not
        # resolve there (or would resolve to something else).
        student_path = Path(student_path).resolve()
    run_dir = Path(cfg.run.out_dir).resolve() / cfg.run.name / name
    if run_dir.exists():
        shutil.rmtree(run_dir)  # a train job starts fresh; Ray Train resumes within one fit()
    run_dir.mkdir(parents=True)
    tc = cfg.training
    from mmtune.training.trainer import read_inline

    # Small data (a round's selection) goes to the workers through the object store;
    # large data streams through Ray Data (training.inline_data_mb, mmtune/training/trainer.py).
    ds = read_inline(list(paths), tc.inline_data_mb, list(tasks) if tasks else None)
    if ds is None:
        ds = training_dataset(paths, tasks)
    progress(f"[train] student {student_path}; data {len(paths)} file(s)"
             + (f", tasks {list(tasks)}" if tasks else "")
             + f"; mode {tc.coordination.mode}, {tc.num_workers} worker(s), batch {tc.batch_size}")
    t0 = time.time()
    trainer = build_trainer(tc, cfg.student, student_path, ds, storage_path=run_dir / "ray", name=name,
                            seed=cfg.run.seed, cpus_per_worker=tc.cpus_per_worker,
                            torch_threads=tc.torch_threads, extra_config={"log_every": tc.log_every})
    try:
        result = trainer.fit()  # Ray 2.60 (Train V2) raises the training error itself
    except Exception as e:
        raise RuntimeError(f"training failed after {tc.max_failures} retries (training.max_failures): "
                           f"{type(e).__name__}: {e}; checkpoints and logs are under {run_dir / 'ray'}") from e
    seconds = time.time() - t0
    if result.error is not None:  # older Ray Train versions return it instead
        raise RuntimeError(f"training failed after {tc.max_failures} retries: {result.error}")
    ckpt = Path(result.checkpoint.path)
    adapter = None
    if (ckpt / "adapter").is_dir():
        adapter = run_dir / "adapter"
        shutil.copytree(ckpt / "adapter", adapter)
    history = read_history(ckpt)
    shutil.copy(ckpt / HISTORY_FILE, run_dir / HISTORY_FILE)
    from mmtune.training.checkpoint import read_state

    state = read_state(ckpt)
    outcome = TrainOutcome(run_dir=str(run_dir), adapter_dir=str(adapter) if adapter else None,
                           checkpoint=str(ckpt), steps=int(state["step"]),
                           samples=ds.num_rows if hasattr(ds, "num_rows") else ds.count(),
                           seconds=round(seconds, 2), metrics=history[-1] if history else {})
    summary = {**asdict(outcome), "student": str(student_path), "data": list(paths),
               "tasks": list(tasks) if tasks else None, "config": cfg.to_dict()}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    progress(f"[train] done: {outcome.steps} steps in {seconds:.0f}s, final loss "
             f"{outcome.metrics.get('loss', float('nan')):.4f}; "
             f"adapter: {adapter or '(LoRA disabled: see checkpoint)'}")
    return outcome


__all__ = ["TrainOutcome", "expand_parquet", "run_train_job", "training_dataset", "training_paths"]
