"""Ray Train (V2) adapter around the per-worker loop :func:`mmtune.training.loop.run_training`.

``TorchTrainer`` with ``ScalingConfig(num_workers, use_gpu)`` from ``training``, DDP through
``ray.train.torch.prepare_model`` (gloo on CPU, NCCL on GPU), ``FailureConfig(max_failures)``
and checkpoints under ``RunConfig(storage_path)``. Each step's metrics go to
``ray.train.report``; the steps that checkpoint attach the checkpoint directory.

**Choices [ours]:**

* **Data sharding is done by the workers, not by Ray Data's split.** The parquet files are
  read with ``ray.data.read_parquet`` and passed as the ``train`` dataset with
  ``DataConfig(datasets_to_split=[])``: every worker iterates the whole (column-pruned)
  dataset from ``get_dataset_shard("train")``, sorts it by sample id and keeps rows
  ``rank::world_size``. Ray Data's streaming split assigns blocks dynamically, so a worker
  restarted after a failure may see other rows, which would break exact resume; the
  id-sorted stride is identical on every attempt. Cost: each worker holds its shard in
  memory (the tuning subset, not the corpus) and reads the whole dataset once.
* **Same κ on every rank.** The probe batch is drawn from the whole dataset (every worker
  has it), so all ranks measure the same κ on the same all-reduced update and keep the
  same per-group learning rates. Reported metrics are rank 0's (its local loss).
* **Schedule length** = ``total_steps_for(ceil(n / world_size))``, the same on every rank.
* **Checkpoints:** every worker reports a checkpoint directory of the same name; rank 0's
  holds the weights/optimizer/schedule/regulariser/state, rank r > 0's only its RNG
  states; Ray merges them into one directory. A restarted worker group resumes from
  ``ray.train.get_checkpoint()``.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

COLUMNS = ["id", "instruction", "response", "image"]


def _row(r: Any) -> dict[str, Any]:
    img = r.get("image")
    return {"id": str(r["id"]), "instruction": str(r["instruction"]), "response": str(r["response"]),
            "image": bytes(img) if img is not None else None}


def _scalar_metrics(m: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in m.items() if isinstance(v, (int, float))}


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """The function each Ray Train worker runs; ``config`` is built by :func:`build_trainer`."""
    import ray.train
    import ray.train.torch
    import torch

    from mmtune.config import StudentConfig, TrainingConfig
    from mmtune.models.student import apply_lora, load_student
    from mmtune.training.loop import run_training, total_steps_for

    tc = TrainingConfig.model_validate(config["training"])
    sc = StudentConfig.model_validate(config["student"])
    seed = int(config["seed"])
    if config.get("torch_threads"):
        torch.set_num_threads(int(config["torch_threads"]))
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()

    rows = sorted((_row(r) for r in ray.train.get_dataset_shard("train").iter_rows()), key=lambda r: r["id"])
    mine = rows[rank::world]
    total = total_steps_for(math.ceil(len(rows) / world), tc)

    model, processor = load_student(config["student_path"], sc)
    torch.manual_seed(seed)  # same LoRA init on every rank (DDP also broadcasts rank 0's)
    model = apply_lora(model, sc)
    wrapped = ray.train.torch.prepare_model(model)
    inner = wrapped.module if hasattr(wrapped, "module") else wrapped

    resume_dir = None
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        resume_dir = ckpt.to_directory(tempfile.mkdtemp(prefix="mmtune-resume-"))
    local_root = Path(tempfile.mkdtemp(prefix=f"mmtune-ckpt-r{rank}-"))

    from mmtune.metrics import TrainMetrics

    gauges = TrainMetrics(run=str(config.get("run_name", "")), rank=rank, mode=tc.coordination.mode)

    def report(metrics: dict[str, Any], path: Path | None) -> None:
        gauges.record(metrics)  # the dashboard / Prometheus copy of the same figures
        if path is None:
            ray.train.report(_scalar_metrics(metrics))
            return
        ray.train.report(_scalar_metrics(metrics), checkpoint=ray.train.Checkpoint.from_directory(str(path)),
                         checkpoint_dir_name=path.name)
        shutil.rmtree(path, ignore_errors=True)

    fail_marker = config.get("_fail_once_after")  # tests: crash once after step k
    if fail_marker:
        step_k, marker = int(fail_marker[0]), Path(fail_marker[1])
        inner_report = report

        def report(metrics: dict[str, Any], path: Path | None) -> None:  # noqa: F811
            inner_report(metrics, path)
            if rank == 0 and metrics["step"] == step_k and not marker.exists():
                marker.write_text("failed once")
                raise RuntimeError(f"injected failure after step {step_k}")

    try:
        run_training(inner, processor, mine, tc, seed=seed, total_steps=total, checkpoint_root=local_root,
                     resume_from=resume_dir, report=report, train_module=wrapped, rank=rank,
                     probe_pool=rows, probe_size=config.get("probe_size"))
    finally:
        shutil.rmtree(local_root, ignore_errors=True)
        if resume_dir is not None:
            shutil.rmtree(resume_dir, ignore_errors=True)


def resolve_use_gpu(use_gpu: Any) -> bool:
    """``training.use_gpu``: True/False, or "auto" = the Ray cluster has a GPU."""
    if use_gpu != "auto":
        return bool(use_gpu)
    import ray

    return ray.is_initialized() and ray.cluster_resources().get("GPU", 0) > 0


def build_trainer(training: Any, student: Any, student_path: str | Path, train_data: Any, *,
                  storage_path: str | Path, name: str, seed: int = 0, cpus_per_worker: float = 1.0,
                  torch_threads: int | None = None, probe_size: int | None = None,
                  extra_config: dict[str, Any] | None = None):
    """A ``TorchTrainer`` for one tuning run.

    ``training``/``student`` are :class:`~mmtune.config.TrainingConfig` /
    :class:`~mmtune.config.StudentConfig`; ``student_path`` a directory
    :func:`~mmtune.models.student.load_student` reads; ``train_data`` parquet paths of the
    Sample schema, or a ``ray.data.Dataset`` with at least the columns :data:`COLUMNS`
    (e.g. already materialized). Checkpoints go to ``<storage_path>/<name>``.
    """
    import ray.data
    import ray.train
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if isinstance(train_data, ray.data.Dataset):
        ds = train_data.select_columns(COLUMNS)
    else:
        paths = [str(train_data)] if isinstance(train_data, (str, Path)) else [str(p) for p in train_data]
        ds = ray.data.read_parquet(paths).select_columns(COLUMNS)
    use_gpu = resolve_use_gpu(training.use_gpu)
    check_cpu_headroom(training.num_workers, cpus_per_worker, float(ray.cluster_resources().get("CPU", 0)))
    config = {"training": training.model_dump(mode="json"), "student": student.model_dump(mode="json"),
              "student_path": str(student_path), "seed": int(seed), "torch_threads": torch_threads,
              "probe_size": probe_size, "run_name": name, **(extra_config or {})}
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=training.num_workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cpus_per_worker}),
        run_config=RunConfig(name=name, storage_path=str(Path(storage_path).resolve()),
                             failure_config=FailureConfig(max_failures=training.max_failures)),
        datasets={"train": ds},
        dataset_config=ray.train.DataConfig(datasets_to_split=[]),
    )


def check_cpu_headroom(num_workers: int, cpus_per_worker: float, cluster_cpus: float) -> None:
    """Refuse a worker group that leaves Ray Data no CPU to read with.

    Measured on a 2-CPU machine: 2 workers × 1 CPU start, then wait forever for parquet
    read tasks that can never be scheduled, with no error. Failing here names the fix.
    (On an autoscaling cluster the total may grow; we only check what exists now.)
    """
    need = num_workers * cpus_per_worker
    if cluster_cpus and need >= cluster_cpus:
        raise ValueError(
            f"training.num_workers={num_workers} × {cpus_per_worker} CPU = {need:g} CPUs would take all "
            f"{cluster_cpus:g} CPUs of the cluster, leaving none for Ray Data to read the training data "
            "(the run would hang). Use fewer workers, or pass cpus_per_worker=0.5 on a small machine.")


__all__ = ["build_trainer", "check_cpu_headroom", "train_loop_per_worker", "resolve_use_gpu"]
