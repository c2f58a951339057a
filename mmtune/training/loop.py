"""The per-worker coordinated training loop (CoMMIT, METHODS.md §2 and §1 step 6), plain torch.

No Ray here: the Ray Train adapter (:mod:`mmtune.training.trainer`) calls
:func:`run_training` inside each worker and passes a ``report`` callback that forwards to
``ray.train.report``. The loop follows the step documented in ``docs/coordination.md``
("A train step") exactly::

    sched.apply(opt, step)                       # per-group lrs
    prev = reg.prev_logits(model, batch)         # commit only, BEFORE the forward
    out = model(**batch); now, gold = select_response(out.logits, labels)
    r = reg.term(now, prev, gold, sched.kappa_bar)
    (out.loss - r.value).backward()
    grad norms per group (before clipping); drop frozen groups' grads (CD); clip
    before = snapshot_params(groups); opt.step(); opt.zero_grad()
    reg.record(before, model, step)              # commit only
    if sched.needs_balance(step): measure_balance on the fixed probe batch; sched.observe

**Choices [ours]** (METHODS.md is silent on all of these):

* **Data order.** Each epoch visits a fresh permutation of the sample indices drawn from a
  generator seeded with ``(seed, epoch)`` only (:class:`EpochSampler`), so the position in
  the data is the pair (epoch, offset) and nothing else. An epoch's last batch holds the
  remaining samples (it may be smaller than ``batch_size``); batches never straddle epochs,
  and no sample is dropped or repeated. A checkpoint taken at an epoch's end stores
  (epoch + 1, 0), so resuming there starts the next epoch exactly once.
* **Total steps** = ``training.max_steps`` if set, else ceil(epochs × batches per epoch).
  The cosine schedule spans the total, so a resumed run must be given the same total
  (checked against the checkpoint).
* **Probe batch** for κ: ``probe_size`` samples from ``4 × probe_size`` candidates picked
  by a permutation seeded with ``seed`` (candidates with an image or audio first, as D_S is 0
  without them); their ids are stored in the checkpoint and the same samples are used
  after a resume.
* **Gradient clipping** at ``max_grad_norm`` (1.0, LLaVA-1.5's value) over all trainable
  parameters together; per-group norms are logged *before* clipping. Under coordinate
  descent the frozen group's gradients are dropped before clipping, so its AdamW moments
  do not move while it is frozen and it does not eat into the clipping budget.
* **Steps** in metrics count *completed* optimizer steps (1 after the first step); the
  schedule's step index is ``step - 1``. Checkpoints are written after steps that are
  multiples of ``training.checkpoint_every`` and after the last step.
* **Determinism.** ``torch.manual_seed(seed + rank)`` at the start of a fresh run; a resumed run
  restores the torch/python/numpy RNG states saved in the checkpoint, so LoRA dropout
  draws the same masks as the uninterrupted run.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from mmtune.coordination import (
    GROUPS,
    CommitRegularizer,
    CoordinatedSchedule,
    measure_balance,
    optimizer_groups,
    select_response,
    snapshot_params,
)
from mmtune.models.inputs import encode_for_training, move_to
from mmtune.models.student import param_groups
from mmtune.training import checkpoint as ckpt
from mmtune.training.shards import image_first, probe_candidate_indices

MAX_GRAD_NORM = 1.0
ReportFn = Callable[[dict[str, Any], "Path | None"], None]

# The metric keys every step reports (plus prefixed raw logs: sched/, reg/, balance/).
METRIC_KEYS = ("step", "epoch", "loss", "kappa", "d_s", "d_t", "kappa_bar", "lr_encoder", "lr_llm",
               "grad_norm_encoder", "grad_norm_llm", "samples_per_s", "reg", "measured", "batch_size")


# --------------------------------------------------------------------------- data order
@dataclass(frozen=True)
class DataPosition:
    """Where the next batch starts: ``offset`` samples into epoch ``epoch``'s permutation."""

    epoch: int = 0
    offset: int = 0


class EpochSampler:
    """Per-epoch seeded permutations of ``range(n)``, cut into batches (see module docstring)."""

    def __init__(self, n: int, batch_size: int, seed: int):
        if n < 1:
            raise ValueError("the training set is empty")
        if batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
        self.n, self.batch_size, self.seed = int(n), int(batch_size), int(seed)
        self._cache: tuple[int, list[int]] | None = None

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def order(self, epoch: int) -> list[int]:
        if self._cache is None or self._cache[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._cache = (epoch, torch.randperm(self.n, generator=g).tolist())
        return self._cache[1]

    def next_batch(self, pos: DataPosition) -> tuple[list[int], DataPosition]:
        """(sample indices of the batch at ``pos``, the position after it)."""
        if not 0 <= pos.offset < self.n:
            raise ValueError(f"data offset {pos.offset} out of range for {self.n} samples")
        end = min(pos.offset + self.batch_size, self.n)
        idx = self.order(pos.epoch)[pos.offset:end]
        nxt = DataPosition(pos.epoch + 1, 0) if end == self.n else DataPosition(pos.epoch, end)
        return idx, nxt


def total_steps_for(n_samples: int, cfg: Any) -> int:
    """``training.max_steps`` or ceil(epochs × ceil(n / batch_size)) [ours]."""
    if cfg.max_steps is not None:
        return int(cfg.max_steps)
    return max(1, math.ceil(cfg.epochs * math.ceil(n_samples / cfg.batch_size)))


def pick_probe_ids(samples: Sequence[Mapping[str, Any]], size: int, seed: int) -> list[str]:
    """``size`` sample ids for the fixed κ probe batch [ours]: seeded candidates, those with an
    image or audio first (see :mod:`mmtune.training.shards`, which makes the same choice out of core)."""
    cand = [samples[i] for i in probe_candidate_indices(len(samples), size, seed)]
    return image_first(cand, size)


def encode(processor: Any, rows: Sequence[Mapping[str, Any]], device: torch.device) -> dict[str, Any]:
    batch = encode_for_training(processor, [r["instruction"] for r in rows], [r["response"] for r in rows],
                                [r.get("image") for r in rows], [r.get("audio") for r in rows],
                                ids=[r.get("id") for r in rows])
    return move_to(batch, device)


def _group_grad_norm(params: Sequence[tuple[str, torch.nn.Parameter]]) -> float:
    sq = [p.grad.detach().float().pow(2).sum() for _, p in params if p.grad is not None]
    return float(torch.stack(sq).sum().sqrt()) if sq else 0.0


# --------------------------------------------------------------------------- the loop
@dataclass
class TrainResult:
    history: list[dict[str, Any]]
    checkpoints: list[Path]
    step: int
    position: DataPosition
    total_steps: int


def run_training(model: torch.nn.Module, processor: Any, samples: Sequence[Mapping[str, Any]], cfg: Any, *,
                 seed: int = 0, total_steps: int | None = None, checkpoint_root: str | Path | None = None,
                 resume_from: str | Path | None = None, report: ReportFn | None = None,
                 stop_after: int | None = None, probe_size: int | None = None,
                 max_grad_norm: float | None = None,
                 train_module: torch.nn.Module | None = None, rank: int = 0,
                 probe_pool: Sequence[Mapping[str, Any]] | None = None,
                 probe_ids: Sequence[str] | None = None) -> TrainResult:
    """Train ``model`` (a student after :func:`~mmtune.models.student.apply_lora`) on ``samples``.

    * ``samples``: indexable rows of the Sample schema (``id``, ``instruction``,
      ``response``, ``image`` and/or ``audio`` bytes or None); a worker's whole shard.
    * ``cfg``: :class:`mmtune.config.TrainingConfig` (lr, batch_size, epochs/max_steps,
      warmup_ratio, weight_decay, checkpoint_every, coordination).
    * ``total_steps``: the schedule's length; default :func:`total_steps_for`.
    * ``checkpoint_root``: where checkpoints ``checkpoint_<step>`` go (none if None).
    * ``resume_from``: a checkpoint directory; training continues after its step.
    * ``report(metrics, checkpoint_dir_or_None)``: called after every step.
    * ``stop_after``: stop once this many steps are done (to simulate an interruption;
      the schedule still spans ``total_steps``; no extra checkpoint is written there).
    * ``train_module``: the module for the training forward (e.g. the DDP wrapper around
      ``model``); the no-grad probe/regulariser forwards use ``model`` itself.
    * ``rank``: this data-parallel worker's rank (rank > 0 checkpoints its RNG state only).
    * ``probe_pool``: the rows the κ probe batch is drawn from (default ``samples``). Under
      data parallelism pass the same pool on every worker, so all ranks measure the same κ
      and keep the same learning rates.
    * ``probe_ids``: the probe batch's ids (in ``probe_pool``), when the caller chose them
      (the Ray worker picks them over the whole dataset); default :func:`pick_probe_ids`.
      A resumed run always uses the ids stored in its checkpoint.

    Returns the per-step metrics (see :data:`METRIC_KEYS`) and the checkpoints written.
    """
    probe_size = probe_size if probe_size is not None else getattr(
        getattr(cfg, "coordination", None), "probe_size", 8)
    max_grad_norm = max_grad_norm if max_grad_norm is not None else getattr(cfg, "max_grad_norm", MAX_GRAD_NORM)
    tc = cfg
    cc = cfg.coordination
    fwd_model = train_module if train_module is not None else model
    device = next(model.parameters()).device
    ids = getattr(samples, "ids", None)  # ArrowRows: ids without reading the payload
    ids = [str(i) for i in ids] if ids is not None else [str(r["id"]) for r in samples]
    if len(set(ids)) != len(samples):
        raise ValueError("sample ids must be unique within the training set")
    sampler = EpochSampler(len(samples), tc.batch_size, seed)
    total = int(total_steps) if total_steps is not None else total_steps_for(len(samples), tc)

    groups = param_groups(model)
    sched = CoordinatedSchedule(cc, tc, total)
    reg = CommitRegularizer.from_config(cc) if sched.uses_regularizer else None
    opt = torch.optim.AdamW(optimizer_groups(groups, tc.weight_decay), lr=tc.lr)

    if resume_from is not None:
        state = ckpt.load_checkpoint(resume_from, model=model, optimizer=opt, schedule=sched, regularizer=reg,
                                     rank=rank)
        if int(state["total_steps"]) != total:
            raise ValueError(f"checkpoint {resume_from} was written for {state['total_steps']} total steps, "
                             f"this run has {total}; the lr schedule would differ (keep epochs/max_steps/"
                             "batch_size and the data unchanged to resume)")
        if int(state["n_samples"]) != len(samples) or int(state["seed"]) != seed:
            raise ValueError(f"checkpoint {resume_from}: written for {state['n_samples']} samples and seed "
                             f"{state['seed']}, this run has {len(samples)} and {seed}; the data order would differ")
        step = int(state["step"])
        pos = DataPosition(int(state["epoch"]), int(state["offset"]))
        probe_ids = list(state["probe_ids"])
    else:
        torch.manual_seed(seed + rank)  # rank 0: the seed itself; other ranks draw other dropout masks
        random.seed(seed + rank)
        step, pos = 0, DataPosition()
        pool0 = probe_pool if probe_pool is not None else samples
        probe_ids = (list(probe_ids) if probe_ids is not None
                     else pick_probe_ids(pool0, min(probe_size, len(pool0)), seed))
    pool = probe_pool if probe_pool is not None else samples
    pool_ids = ({sid: i for i, sid in enumerate(ids)} if pool is samples
                else {str(r["id"]): i for i, r in enumerate(pool)})
    missing = [i for i in probe_ids if i not in pool_ids]
    if missing:
        raise ValueError(f"probe sample ids {missing[:3]} are not in the probe pool")
    probe = encode(processor, [pool[pool_ids[i]] for i in probe_ids], device)

    history: list[dict[str, Any]] = []
    written: list[Path] = []
    end = total if stop_after is None else min(total, int(stop_after))
    model.train()
    while step < end:
        i = step  # the schedule's 0-based index of this optimizer step
        t0 = time.perf_counter()
        idx, nxt = sampler.next_batch(pos)
        batch = encode(processor, [samples[j] for j in idx], device)
        lrs = sched.apply(opt, i)

        prev = reg.prev_logits(model, batch) if reg is not None else {}
        out = fwd_model(**batch)
        if reg is not None:
            now, gold = select_response(out.logits, batch["labels"])
            r = reg.term(now, prev, gold, sched.kappa_bar)
            total_loss = out.loss - r.value
        else:
            r, total_loss = None, out.loss
        total_loss.backward()

        gnorm = {g: _group_grad_norm(groups.get(g, [])) for g in GROUPS}
        for g in sched.frozen_groups(i):
            for _, p in groups.get(g, []):
                p.grad = None
        trainable = [p for g in GROUPS for _, p in groups.get(g, []) if p.grad is not None]
        if trainable and max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm)
        before = snapshot_params(groups)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if reg is not None:
            reg.record(before, model, i)
        m = None
        if sched.needs_balance(i):
            m = measure_balance(model, probe, before, step=i)
            sched.observe(m, i)
        step += 1
        pos = nxt
        dt = time.perf_counter() - t0

        nan = float("nan")
        metrics: dict[str, Any] = {
            "step": step, "epoch": pos.epoch if pos.offset else pos.epoch - 1,
            "loss": float(out.loss.detach()),
            "kappa": nan if m is None or m.kappa is None else float(m.kappa),
            "d_s": nan if m is None or m.d_s is None else float(m.d_s),
            "d_t": nan if m is None or m.d_t is None else float(m.d_t),
            "kappa_bar": sched.tracker.kappa_bar,
            "lr_encoder": lrs["encoder"], "lr_llm": lrs["llm"],
            "grad_norm_encoder": gnorm["encoder"], "grad_norm_llm": gnorm["llm"],
            "samples_per_s": len(idx) / dt if dt > 0 else nan,
            "reg": float(r.value.detach()) if r is not None else 0.0,
            "measured": float(m is not None), "batch_size": len(idx),
        }
        metrics.update(sched.as_log(i))
        metrics.update(sched.tracker.as_log())
        if r is not None:
            metrics.update(r.as_log())
        if m is not None:
            metrics.update(m.as_log())

        path = None
        if checkpoint_root is not None and (step % tc.checkpoint_every == 0 or step == total):
            state = {"step": step, "epoch": pos.epoch, "offset": pos.offset, "total_steps": total,
                     "n_samples": len(samples), "seed": seed, "probe_ids": probe_ids,
                     "mode": sched.mode, "batch_size": tc.batch_size}
            path = ckpt.save_checkpoint(Path(checkpoint_root) / ckpt.checkpoint_name(step), model=model,
                                        optimizer=opt, schedule=sched, regularizer=reg, state=state,
                                        rank=rank)
            written.append(path)
        history.append(metrics)
        if report is not None:
            report(metrics, path)
    return TrainResult(history, written, step, pos, total)


__all__ = ["DataPosition", "EpochSampler", "METRIC_KEYS", "TrainResult", "pick_probe_ids", "run_training",
           "total_steps_for"]
