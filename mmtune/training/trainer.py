"""Ray Train (V2) adapter around the per-worker loop :func:`mmtune.training.loop.run_training`.

``TorchTrainer`` with ``ScalingConfig(num_workers, use_gpu)`` from ``training``, DDP through
``ray.train.torch.prepare_model`` (gloo on CPU, NCCL on GPU), ``FailureConfig(max_failures)``
and checkpoints under ``RunConfig(storage_path)``. Metrics go to ``ray.train.report``
every ``training.report_every`` steps and with every checkpoint; every step's go to Ray's
metrics (``mmtune.metrics``) and to the history kept in each checkpoint.

**Choices [ours]:**

* **Data sharding is done by the workers, not by Ray Data's split.** The parquet files are
  read with ``ray.data.read_parquet`` and passed twice with
  ``DataConfig(datasets_to_split=[])``: ``train_ids`` (the id column only) and ``train``.
  Each worker sorts every id, keeps ``rank::world_size``, then streams ``train`` once and
  spills its rows to a local memory-mapped Arrow file (:mod:`mmtune.training.shards`).
  Ray Data's streaming split assigns blocks dynamically, so a worker restarted after a
  failure may see other rows, which would break exact resume; the id-sorted stride is
  identical on every attempt. Memory holds ids only, so a corpus larger than memory
  trains; the cost is one extra id-only read and local disk for the worker's shard.
* **Small data skips Ray Data.** A selection of a few hundred samples (mmtune's usual
  round) is read once by the driver and handed to the workers through the object store
  (``training.inline_data_mb``). The two Ray Data executions per worker cost 5–30 s each
  on a 2-core machine, far more than the training steps of such a round; the workers then
  plan, shard and spill exactly as above, so both paths train on the same rows in the
  same order.
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

import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

from mmtune.training.shards import COLUMNS, MEDIA  # the columns a worker reads


def _scalar_metrics(m: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in m.items() if isinstance(v, (int, float))}


HISTORY_FILE = "history.jsonl"


def _write_history(ckpt_dir: Path, history: list[dict[str, float]]) -> None:
    with open(ckpt_dir / HISTORY_FILE, "w") as f:
        f.writelines(json.dumps(m) + "\n" for m in history)


def _load_history(ckpt_dir: str | Path | None) -> list[dict[str, float]]:
    """The per-step metrics up to a checkpoint (so a resumed run's curve is whole)."""
    if ckpt_dir is None or not (Path(ckpt_dir) / HISTORY_FILE).is_file():
        return []
    return [json.loads(line) for line in (Path(ckpt_dir) / HISTORY_FILE).read_text().splitlines() if line]


def read_history(ckpt_dir: str | Path) -> list[dict[str, float]]:
    """Every step's metrics (rank 0) up to the checkpoint ``ckpt_dir``."""
    return _load_history(ckpt_dir)


def _quiet_report_echo() -> None:
    """Ray Train V2 logs every ``ray.train.report`` call at INFO from the worker, the whole
    metrics dict on one line (2 KB each: 320 lines of a 24-cell comparison's log). The
    worker's own ``[train] step ...`` lines and the run's history carry the same numbers, so
    that module's logger (named by its file path) is set to WARNING in this worker."""
    import logging

    try:
        from ray.train.v2._internal.execution import context
    except ImportError:  # another Ray layout: its echo stays
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """The function each Ray Train worker runs; ``config`` is built by :func:`build_trainer`."""
    import ray.train
    import ray.train.torch
    import torch

    from mmtune.config import StudentConfig, TrainingConfig
    from mmtune.models.student import apply_lora, load_student
    from mmtune.training.checkpoint import read_state
    from mmtune.training.loop import run_training, total_steps_for

    _quiet_report_echo()
    tc = TrainingConfig.model_validate(config["training"])
    sc = StudentConfig.model_validate(config["student"])
    seed = int(config["seed"])
    if config.get("torch_threads"):
        torch.set_num_threads(int(config["torch_threads"]))
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()

    from mmtune.training.scratch import make_scratch, reap_stale
    from mmtune.training.shards import load_shard

    reaped = reap_stale()  # the scratch of workers killed earlier on this node (scratch.py)
    if reaped:
        print(f"[train] rank {rank}: removed {len(reaped)} scratch dir(s) of dead workers: "
              f"{', '.join(p.name for p in reaped[:3])}{' ...' if len(reaped) > 3 else ''}", flush=True)
    spill_dir = make_scratch(f"shard-r{rank}")
    t_load = time.time()
    if config.get("inline_data"):
        table = _resolve_inline(config["inline_data"][0])
        train_batches = (table.slice(i, 256) for i in range(0, table.num_rows, 256))
        id_batches = [table.select(["id"])]
    else:
        train_batches = ray.train.get_dataset_shard("train").iter_batches(batch_size=256, batch_format="pyarrow")
        id_batches = ray.train.get_dataset_shard("train_ids").iter_batches(batch_size=65536, batch_format="pyarrow")
    mine, probe_rows, probe_ids, n_total = load_shard(
        train_batches, id_batches, rank, world, config.get("probe_size") or tc.coordination.probe_size, seed,
        spill_dir)
    total = total_steps_for(math.ceil(n_total / world), tc)
    if rank == 0:
        print(f"[train] {n_total} samples over {world} worker(s): {len(mine)} on rank 0, spilled to "
              f"{spill_dir} in {time.time() - t_load:.1f}s; {total} steps", flush=True)

    model, processor = load_student(config["student_path"], sc)
    torch.manual_seed(seed)  # same LoRA init on every rank (DDP also broadcasts rank 0's)
    model = apply_lora(model, sc)
    wrapped = ray.train.torch.prepare_model(model, **parallel_kwargs(tc.parallel))
    inner = wrapped.module if hasattr(wrapped, "module") else wrapped

    resume_dir = None
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        resume_dir = ckpt.to_directory(str(make_scratch(f"resume-r{rank}")))
    local_root = make_scratch(f"ckpt-r{rank}")

    from mmtune.metrics import TrainMetrics

    gauges = TrainMetrics(run=str(config.get("run_name", "")), rank=rank, mode=tc.coordination.mode)

    history = _load_history(resume_dir)  # rank 0 keeps the loss curve inside each checkpoint
    log_every = max(1, int(config.get("log_every") or 10))
    report_every = max(1, int(tc.report_every))

    def report(metrics: dict[str, Any], path: Path | None) -> None:
        gauges.record(metrics)  # the dashboard / Prometheus copy of the same figures
        if rank == 0:
            history.append(_scalar_metrics(metrics))
            step = int(metrics["step"])
            if step % log_every == 0 or step == total:
                print(f"[train] step {step}/{total} loss {metrics['loss']:.4f} "
                      f"κ̄ {metrics['kappa_bar']:.3g} lr enc {metrics['lr_encoder']:.2e} llm "
                      f"{metrics['lr_llm']:.2e} {metrics['samples_per_s'] * world:.0f} samples/s", flush=True)
            if path is not None:
                _write_history(path, history)
        if path is None:
            # Ray Train V2 collects reports by polling workers (every 2 s by default) and a
            # worker holds one unread report, so reporting every step caps the loop at one
            # step per poll (bench/train_throughput.py). Every step still reaches the
            # gauges and history; Ray Train gets every report_every-th step (the same
            # steps on every rank) and every checkpoint.
            if int(metrics["step"]) % report_every == 0 or int(metrics["step"]) == total:
                ray.train.report(_scalar_metrics(metrics))
            return
        ray.train.report(_scalar_metrics(metrics), checkpoint=ray.train.Checkpoint.from_directory(str(path)),
                         checkpoint_dir_name=path.name)
        shutil.rmtree(path, ignore_errors=True)

    step_log = config.get("_step_log")  # tests: a JSONL line per step and rank, kept across restarts
    if step_log:
        logged_report = report
        started_at = read_state(resume_dir)["step"] if resume_dir is not None else 0
        node = ray.get_runtime_context().get_node_id()

        def report(metrics: dict[str, Any], path: Path | None) -> None:
            logged_report(metrics, path)  # first: a step whose report failed was not done
            line = {"rank": rank, "step": int(metrics["step"]), "loss": float(metrics["loss"]),
                    "resumed_from": started_at, "checkpoint": path is not None, "node": node,
                    "pid": os.getpid(), "t": time.time()}
            with open(step_log, "a") as f:  # one short line per write: appends do not interleave
                f.write(json.dumps(line) + "\n")

    try:
        run_training(inner, processor, mine, tc, seed=seed, total_steps=total, checkpoint_root=local_root,
                     resume_from=resume_dir, report=report, train_module=wrapped, rank=rank,
                     probe_pool=probe_rows, probe_ids=probe_ids, probe_size=config.get("probe_size"))
    finally:
        shutil.rmtree(local_root, ignore_errors=True)
        shutil.rmtree(spill_dir, ignore_errors=True)
        if resume_dir is not None:
            shutil.rmtree(resume_dir, ignore_errors=True)


def parallel_kwargs(parallel: str) -> dict[str, Any]:
    """``prepare_model`` arguments for ``training.parallel``.

    FSDP needs ``use_orig_params=True`` with LoRA: only the adapter (and projector)
    parameters are trainable, and FSDP's flattened parameters would otherwise mix frozen
    and trainable tensors in one flat buffer, which it refuses.
    """
    if parallel == "fsdp":
        return {"parallel_strategy": "fsdp", "parallel_strategy_kwargs": {"use_orig_params": True}}
    return {"parallel_strategy": "ddp"}


def check_parallel(parallel: str, use_gpu: bool, mode: str) -> None:
    """Refuse FSDP where it cannot work, before any worker starts."""
    if parallel != "fsdp":
        return
    if not use_gpu:
        raise ValueError("training.parallel=fsdp shards the model over GPU workers, but this run has no GPU "
                         "(training.use_gpu resolved to false); use training.parallel=ddp on CPU")
    if mode in ("commit", "commit_clr", "constant", "static"):
        # κ is measured by applying each group's update alone to full parameters; under
        # FSDP each rank holds a shard only. Not implemented yet: say so rather than
        # report a κ computed on shards.
        raise ValueError(f"training.parallel=fsdp with coordination.mode={mode!r} is not supported yet: "
                         "the κ probe needs full parameters on every rank. Use mode=feature_cd/language_cd, "
                         "or parallel=ddp (LoRA keeps the trainable state small)")


def resolve_use_gpu(use_gpu: Any) -> bool:
    """``training.use_gpu``: True/False, or "auto" = the Ray cluster has a GPU."""
    if use_gpu != "auto":
        return bool(use_gpu)
    import ray

    return ray.is_initialized() and ray.cluster_resources().get("GPU", 0) > 0


def _present(names: list[str]) -> list[str]:
    """:data:`COLUMNS` that ``names`` has; only a media column may be missing (the loop and
    the spill treat it as null), so a missing text column is left in to fail by name."""
    return [c for c in COLUMNS if c in names or c not in MEDIA]


def _resolve_inline(obj: Any) -> Any:
    import ray

    return ray.get(obj) if isinstance(obj, ray.ObjectRef) else obj


def _local_size_mb(paths: list[str]) -> float | None:
    """Total size of local files, or None when a path is remote (s3://, gs://) or missing."""
    total = 0
    for p in paths:
        if "://" in p or not os.path.isfile(p):
            return None
        total += os.path.getsize(p)
    return total / 2**20


def read_inline(paths: list[str], max_mb: float, tasks: list[str] | None = None) -> Any:
    """The training rows as one Arrow table when ``paths`` are local parquet files of at
    most ``max_mb`` MB in all, else None (the caller streams them with Ray Data).

    ``tasks`` keeps only rows of those tasks; a task the data does not have is an error
    that names the tasks it does have (as :func:`mmtune.training.job.training_dataset`).
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    size = _local_size_mb(paths)
    if not paths or size is None or size > max_mb:
        return None
    parts = []
    for p in paths:
        t = pq.read_table(p, columns=_present(pq.read_schema(p).names) + (["task"] if tasks else []))
        for m in MEDIA:  # a file without images (or audio) has them all null
            if m not in t.column_names:
                t = t.append_column(m, pa.nulls(t.num_rows, pa.binary()))
        parts.append(t.select(COLUMNS + (["task"] if tasks else [])))
    table = pa.concat_tables(parts, promote_options="default")
    if tasks:
        have = set(table.column("task").to_pylist())
        unknown = sorted(set(tasks) - have)
        if unknown:
            raise ValueError(f"--tasks {unknown} not in the training data; it has: {sorted(have)}")
        table = table.filter(pc.is_in(table.column("task"), pa.array(sorted(set(tasks))))).select(COLUMNS)
    return table


def build_trainer(training: Any, student: Any, student_path: str | Path, train_data: Any, *,
                  storage_path: str | Path, name: str, seed: int = 0, cpus_per_worker: float = 1.0,
                  torch_threads: int | None = None, probe_size: int | None = None,
                  extra_config: dict[str, Any] | None = None,
                  worker_resources: dict[str, float] | None = None):
    """A ``TorchTrainer`` for one tuning run.

    ``training``/``student`` are :class:`~mmtune.config.TrainingConfig` /
    :class:`~mmtune.config.StudentConfig`; ``student_path`` a directory
    :func:`~mmtune.models.student.load_student` reads; ``train_data`` parquet paths of the
    Sample schema (read inline when small, see :func:`read_inline`), a ``pyarrow.Table``
    (handed to the workers through the object store), or a ``ray.data.Dataset`` with at
    least the columns :data:`COLUMNS` (streamed). Checkpoints go to ``<storage_path>/<name>``.
    ``worker_resources``: custom resources each worker also asks for (e.g. a label
    resource that pins workers to a node group), beside ``cpus_per_worker`` CPUs.
    """
    import pyarrow as pa
    import ray.data
    import ray.train
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    ds = table = None
    if isinstance(train_data, ray.data.Dataset):
        ds = train_data.select_columns(_present(train_data.schema().names))
    elif isinstance(train_data, pa.Table):
        table = train_data.select(_present(train_data.column_names))
    else:
        paths = [str(train_data)] if isinstance(train_data, (str, Path)) else [str(p) for p in train_data]
        table = read_inline(paths, training.inline_data_mb)
        if table is None:
            ds = ray.data.read_parquet(paths)
            ds = ds.select_columns(_present(ds.schema().names))
    use_gpu = resolve_use_gpu(training.use_gpu)
    check_parallel(training.parallel, use_gpu, training.coordination.mode)
    if ds is not None:  # inline data needs no Ray Data read tasks, hence no spare CPU
        check_cpu_headroom(training.num_workers, cpus_per_worker, float(ray.cluster_resources().get("CPU", 0)))
    config = {"training": training.model_dump(mode="json"), "student": student.model_dump(mode="json"),
              "student_path": str(student_path), "seed": int(seed), "torch_threads": torch_threads,
              "probe_size": probe_size, "run_name": name, **(extra_config or {})}
    if table is not None:
        # In a list, so no layer of Ray resolves the ref early; the driver holds it for
        # the whole fit(), so restarted workers can fetch it again.
        config["inline_data"] = [ray.put(table)]
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=training.num_workers, use_gpu=use_gpu,
                                     resources_per_worker={**(worker_resources or {}), "CPU": cpus_per_worker}),
        run_config=RunConfig(name=name, storage_path=str(Path(storage_path).resolve()),
                             failure_config=FailureConfig(max_failures=training.max_failures)),
        # "train_ids" is the same data pruned to its id column: workers plan their shard
        # from it without reading any image bytes (mmtune.training.shards).
        datasets={} if ds is None else {"train": ds, "train_ids": ds.select_columns(["id"])},
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


__all__ = ["build_trainer", "check_cpu_headroom", "parallel_kwargs", "read_history", "resolve_use_gpu",
           "train_loop_per_worker"]
