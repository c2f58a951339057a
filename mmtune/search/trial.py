"""One Tune trial = one coordinated training run on Ray Train V2, stopped gracefully by ASHA.

Three pieces:

* :class:`RungGate`, a tiny async actor per trial (0 CPUs): rank 0 of the training run
  ``put``s each rung's metrics into it; after a rung every rank ``wait``s on it for Tune's
  verdict (continue or stop).
* :func:`trial_loop_per_worker`, the Ray Train worker function: the project's train loop
  (:func:`mmtune.training.loop.run_training`, the same shard/probe/LoRA/DDP set-up as
  :mod:`mmtune.training.trainer`, without checkpoints), scoring the target validation
  split(s) on rank 0 at each rung step (:mod:`mmtune.search.rungs`).
* :class:`CoordinatedTrial`, a class ``tune.Trainable``: ``setup`` starts a
  ``TorchTrainer.fit()`` in a thread; each ``step`` releases the previous rung and returns
  the next rung's metrics (one Tune iteration per rung); ``cleanup`` tells the gate to
  stop, so the workers leave the loop at the rung they are waiting on and ``fit()``
  returns normally, then waits for it.

**Why not a function trainable with ``TuneReportCallback`` (the documented Train V2 +
Tune pattern)?** Measured on Ray 2.60 with the dashboard off (our tests and the demo
config): when Tune stops a function trial (ASHA, or ``max_t`` reached) it ends the trial
actor while ``fit()`` is still running; the Train controller it owns dies with it, and
the worker group's placement group is left reserved, because Train's
``PlacementGroupCleaner`` asks the State API (served by the dashboard) whether the
controller is alive. Each stopped trial leaked its workers' CPUs (and a detached cleaner
process) until the driver exited, and a 6-trial ASHA run with 2 concurrent trials on 2
CPUs hung (ray-project/ray#54305 is the same symptom). Ending the Train run from inside,
at a rung, shuts the worker group down the normal way whatever the dashboard does.

**Placement** (``SearchSettings.placement``): ``workers`` runs each trial as a real
Train worker group (``training.num_workers`` workers with their own placement group, DDP
when > 1, GPUs when the cluster has them); ``trial`` runs Train V2's local mode
(``ScalingConfig(num_workers=0)``) inside the Tune trial actor, which then holds the CPU
(or GPU) itself: the same loop without a controller and worker processes, ~25 s less per
trial on a 2-core machine (docs/search.md).
"""

from __future__ import annotations

import asyncio
import math
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from ray import tune


class RungGate:
    """The per-trial rendezvous between the training run and the Tune trainable.

    ``released`` is the highest rung Tune let the run go past; ``stopped`` is set once,
    by ``cleanup``. A rung's verdict is the same for every rank: Tune releases rung r only
    by asking for the next result, which it never does after stopping.
    """

    def __init__(self) -> None:
        self._results: asyncio.Queue = asyncio.Queue()
        self._released = -1
        self._stopped = False
        self._cond = asyncio.Condition()

    async def put(self, metrics: dict[str, Any]) -> None:
        await self._results.put(metrics)

    async def next_result(self) -> dict[str, Any]:
        return await self._results.get()

    async def release(self, rung: int) -> None:
        async with self._cond:
            self._released = max(self._released, rung)
            self._cond.notify_all()

    async def stop(self) -> None:
        async with self._cond:
            self._stopped = True
            self._cond.notify_all()

    async def wait(self, rung: int) -> bool:
        """True: go on past ``rung``; False: the trial was stopped."""
        async with self._cond:
            await self._cond.wait_for(lambda: self._released >= rung or self._stopped)
            return self._released >= rung


class _StopTrial(Exception):
    """Raised inside the loop's report callback to leave training at a rung."""


def trial_loop_per_worker(config: dict[str, Any]) -> None:
    """The Ray Train worker function of a search trial (``config`` from :class:`CoordinatedTrial`)."""
    import ray
    import ray.train
    import torch

    from mmtune.config import StudentConfig, TrainingConfig
    from mmtune.models.student import apply_lora, load_student
    from mmtune.search.rungs import rung_steps, val_metrics
    from mmtune.training.loop import run_training, total_steps_for
    from mmtune.training.shards import load_shard
    from mmtune.training.trainer import parallel_kwargs

    tc = TrainingConfig.model_validate(config["training"])
    sc = StudentConfig.model_validate(config["student"])
    seed = int(config["seed"])
    if config.get("torch_threads"):
        torch.set_num_threads(int(config["torch_threads"]))
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    gate = config["gate"]

    spill_dir = Path(tempfile.mkdtemp(prefix=f"mmtune-search-r{rank}-"))
    try:
        mine, probe_rows, probe_ids, n_total = load_shard(
            ray.train.get_dataset_shard("train").iter_batches(batch_size=256, batch_format="pyarrow"),
            ray.train.get_dataset_shard("train_ids").iter_batches(batch_size=65536, batch_format="pyarrow"),
            rank, world, tc.coordination.probe_size, seed, spill_dir)
        total = total_steps_for(math.ceil(n_total / world), tc)
        steps = rung_steps(total, int(config["rungs"]))
        rung_of = {s: i for i, s in enumerate(steps)}

        model, processor = load_student(config["student_path"], sc)
        torch.manual_seed(seed)  # the same LoRA init on every rank and in every trial
        model = apply_lora(model, sc)
        if config["distributed"]:
            import ray.train.torch

            wrapped = ray.train.torch.prepare_model(model, **parallel_kwargs(tc.parallel))
            inner = wrapped.module if hasattr(wrapped, "module") else wrapped
        else:  # Train V2 local mode: this process is the only worker
            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
            wrapped = inner = model.to(device)
        val = ray.get(config["val_rows"]) if rank == 0 else None
        window: list[float] = []
        t_start = time.time()

        def report(metrics: dict[str, Any], path: Any) -> None:
            window.append(float(metrics["loss"]))
            step = int(metrics["step"])
            if step not in rung_of:
                return
            r = rung_of[step]
            if rank == 0:
                vm = val_metrics(inner, processor, val, max_new_tokens=int(config["max_new_tokens"]),
                                 batch_size=int(config["eval_batch_size"]))
                ray.get(gate.put.remote({
                    "rung": r + 1, "rungs": len(steps), "step": step, "total_steps": total,
                    "train_loss": sum(window) / len(window), "last_loss": float(metrics["loss"]),
                    "kappa_bar": float(metrics["kappa_bar"]), "lr_encoder": float(metrics["lr_encoder"]),
                    "lr_llm": float(metrics["lr_llm"]), "elapsed_s": time.time() - t_start,
                    **vm, "done": r == len(steps) - 1}))
            window.clear()
            if r < len(steps) - 1:
                try:
                    go = ray.get(gate.wait.remote(r))
                except ray.exceptions.RayActorError:  # the trial actor (the gate's owner) is gone
                    go = False
                if not go:
                    raise _StopTrial(step)

        try:
            run_training(inner, processor, mine, tc, seed=seed, total_steps=total, checkpoint_root=None,
                         report=report, train_module=wrapped, rank=rank, probe_pool=probe_rows,
                         probe_ids=probe_ids, probe_size=tc.coordination.probe_size)
        except _StopTrial:
            pass  # every rank stops at the same rung: no collective is left waiting
    finally:
        shutil.rmtree(spill_dir, ignore_errors=True)


class CoordinatedTrial(tune.Trainable):
    """A Tune trial: one coordinated training run under the trial's config, one rung per step."""

    def setup(self, config: dict[str, Any], *, base: dict[str, Any], run: dict[str, Any]) -> None:
        import ray
        import ray.train
        from ray.train import FailureConfig, ScalingConfig
        from ray.train.torch import TorchTrainer

        from mmtune.config import RunConfig
        from mmtune.search.space import apply_overrides

        self._overrides = {p: config[p] for p in run["paths"]}
        cfg = apply_overrides(RunConfig.model_validate(base), self._overrides)
        tc = cfg.training
        self._gate = ray.remote(num_cpus=0)(RungGate).remote()
        local = run["placement"] == "trial"
        scaling = (ScalingConfig(num_workers=0) if local else
                   ScalingConfig(num_workers=tc.num_workers, use_gpu=run["use_gpu"],
                                 resources_per_worker={"CPU": run["cpus_per_worker"]}))
        trainer = TorchTrainer(
            trial_loop_per_worker,
            train_loop_config={
                "training": tc.model_dump(mode="json"), "student": cfg.student.model_dump(mode="json"),
                "student_path": run["student_path"], "seed": cfg.run.seed, "torch_threads": run["torch_threads"],
                "rungs": run["rungs"], "gate": self._gate, "val_rows": run["val_rows"],
                "max_new_tokens": cfg.student.max_new_tokens, "eval_batch_size": cfg.eval.batch_size,
                "distributed": not local},
            scaling_config=scaling,
            # One attempt: a restarted worker group would replay rungs Tune already saw.
            # A failed trial is recorded as such and the search goes on.
            run_config=ray.train.RunConfig(name=f"{self.trial_id}", storage_path=run["train_storage"],
                                           failure_config=FailureConfig(max_failures=0)),
            datasets={"train": run["train"], "train_ids": run["train_ids"]},  # materialized once by run_search
            dataset_config=ray.train.DataConfig(datasets_to_split=[]),
        )
        self._error: BaseException | None = None
        self._next = None
        self._rungs_done = 0
        self._stop_timeout_s = float(run["stop_timeout_s"])

        def fit() -> None:
            try:
                trainer.fit()
            except BaseException as e:  # noqa: BLE001 - reported by step()
                self._error = e

        self._thread = threading.Thread(target=fit, name=f"fit-{self.trial_id}", daemon=True)
        self._thread.start()

    def step(self) -> dict[str, Any]:
        import ray

        if self._rungs_done:
            self._gate.release.remote(self._rungs_done - 1)  # Tune wants more: go past the last rung
        if self._next is None:
            self._next = self._gate.next_result.remote()
        while True:
            ready, _ = ray.wait([self._next], timeout=1.0)
            if not ready and not self._thread.is_alive():
                ready, _ = ray.wait([self._next], timeout=5.0)  # a last report may still be in flight
            if ready:
                result = ray.get(self._next)
                self._next = None
                self._rungs_done += 1
                return result
            if not self._thread.is_alive():
                if self._error is not None:
                    raise RuntimeError(f"the trial's training run failed: {self._error}") from self._error
                raise RuntimeError("the trial's training run ended without reporting its next rung")

    def cleanup(self) -> None:
        import ray

        try:
            ray.get(self._gate.stop.remote(), timeout=30)
        except Exception as e:  # noqa: BLE001 - the run then ends with this trial's actor
            print(f"[search] trial {self.trial_id}: could not signal the stop ({e})", flush=True)
        self._thread.join(timeout=self._stop_timeout_s)
        if self._thread.is_alive():
            print(f"[search] trial {self.trial_id}: the training run did not stop within "
                  f"{self._stop_timeout_s:.0f}s of Tune's stop; it ends with this trial's actor", flush=True)
        ray.kill(self._gate)


__all__ = ["CoordinatedTrial", "RungGate", "trial_loop_per_worker"]
