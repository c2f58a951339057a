"""Per-group learning rates: CoMMIT's dynamic scheduler and its baselines (METHODS.md §2).

**[paper]** The scheduler adjusts the two components' learning rates from κ so that both
learn enough and neither oscillates; it updates only every L steps, from a moving average.
The baselines are a constant learning rate, Feature CD / Language CD (update one component
at a time), and CoMMIT-CLR (the scheduler without the regulariser).

**[ours]**

* Base schedule (every mode): linear warm-up then cosine decay to 0, see
  :func:`base_lr_factor`; ``warmup = ceil(warmup_ratio · total_steps)`` as in HF Trainer.
* CoMMIT factors from κ̄ = exp(EMA(log κ)) (:class:`~mmtune.coordination.balance.BalanceTracker`)::

      κ̃   = clip(κ̄, 1/ratio_clip, ratio_clip)
      η_S = 2·κ̃ / (1 + κ̃)        η_T = 2 / (1 + κ̃)

  so η_S/η_T = κ̃ (the clipped ratio), η_S + η_T = 2, and κ̄ = 1 gives both factors 1.
  lr_g(t) = η0 · base_lr_factor(t) · η_g, with η0 = ``training.lr`` for both groups.
  κ > 1 (the LLM moves the output more) raises the encoder's lr and lowers the LLM's.
* The factors change only when a measurement arrives (:meth:`CoordinatedSchedule.observe`),
  and measurements are taken every L = ``interval`` steps, at the last step of each window
  (``(step + 1) % L == 0``), so the new factors apply from the first step of the next
  window. The warm-up/cosine factor still moves every step. An unusable measurement leaves
  the factors as they were.
* Modes (``coordination.mode``):

  - ``constant``: lr = ``training.lr`` × base factor for both groups; κ is still measured
    (for logging: METHODS.md expects it to drift under a constant lr) but never used.
  - ``static``: encoder lr = ``training.encoder_lr``, llm lr = ``training.lr`` (LLaVA-1.5's
    projector/LLM split), both × base factor; κ measured for logging only.
  - ``feature_cd`` / ``language_cd``: coordinate descent. Windows of L steps alternate
    which group trains; ``feature_cd`` starts with the encoder, ``language_cd`` with the
    LLM. The active group gets ``training.lr`` × base factor, the other lr 0. κ is not
    measured (one group never moves within a step, so κ is undefined).
  - ``commit_clr``: the CoMMIT factors, no regulariser.
  - ``commit``: the CoMMIT factors plus the regulariser (:mod:`.regularizer`).

* Closed loop: κ is measured on the real update, which already carries η_S/η_T. With
  Adam-like steps and KL quadratic in the step, κ_measured ≈ c/κ̃² (c = κ at equal lrs), so
  κ̄ settles at c^(1/3), monotonically for ``ema_decay`` > 2/3, oscillating for 1/3–2/3,
  diverging to the clip below 1/3 (docs/coordination.md).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from mmtune.coordination.balance import GROUPS, BalanceMeasurement, BalanceTracker

MODES = ("constant", "static", "feature_cd", "language_cd", "commit_clr", "commit")
KAPPA_MODES = ("commit_clr", "commit")
CD_MODES = ("feature_cd", "language_cd")


def base_lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up then cosine decay, in [0, 1]; ``step`` counts optimizer steps from 0.

    Warm-up: (step + 1) / warmup for step < warmup, so the first step already trains and
    the factor reaches 1 at the last warm-up step. Then 0.5·(1 + cos(π·progress)) with
    progress = (step − warmup) / (total − warmup): 1 at ``step == warmup``, > 0 for every
    step < total, and 0 from ``total`` on. [ours: HF's cosine schedule shifted by one step
    so that no step runs at lr 0.]
    """
    if total < 1:
        raise ValueError(f"total steps must be ≥ 1, got {total}")
    if warmup < 0:
        raise ValueError(f"warm-up steps must be ≥ 0, got {warmup}")
    if step < 0:
        raise ValueError(f"step must be ≥ 0, got {step}")
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    if progress >= 1.0:
        return 0.0
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def commit_factors(kappa_bar: float, ratio_clip: float) -> tuple[float, float]:
    """(η_S, η_T) = (2κ̃/(1+κ̃), 2/(1+κ̃)) with κ̃ = κ̄ clipped to [1/clip, clip] [ours]."""
    k = clipped_kappa(kappa_bar, ratio_clip)
    return 2.0 * k / (1.0 + k), 2.0 / (1.0 + k)


def clipped_kappa(kappa_bar: float, ratio_clip: float) -> float:
    if ratio_clip < 1.0:
        raise ValueError(f"ratio_clip must be ≥ 1, got {ratio_clip}")
    if not math.isfinite(kappa_bar) or kappa_bar <= 0:
        raise ValueError(f"κ̄ must be finite and > 0, got {kappa_bar}")
    return min(max(kappa_bar, 1.0 / ratio_clip), ratio_clip)


class CoordinatedSchedule:
    """Learning rates of the ``encoder`` and ``llm`` groups at every step, for every mode.

    ``cfg`` is a :class:`mmtune.config.CoordinationConfig`, ``training`` a
    :class:`mmtune.config.TrainingConfig`; ``mode`` overrides ``cfg.mode``. The schedule
    owns the :class:`BalanceTracker` (``self.tracker``); feed it with :meth:`observe`.
    """

    def __init__(self, cfg: Any, training: Any, total_steps: int, *, mode: str | None = None,
                 warmup_steps: int | None = None, measure_baselines: bool = True):
        self.mode = mode or cfg.mode
        if self.mode not in MODES:
            raise ValueError(f"coordination mode {self.mode!r}; allowed: {', '.join(MODES)}")
        if total_steps < 1:
            raise ValueError(f"total_steps must be ≥ 1, got {total_steps}")
        self.cfg = cfg
        self.training = training
        self.total_steps = int(total_steps)
        self.warmup_steps = (int(warmup_steps) if warmup_steps is not None
                             else math.ceil(training.warmup_ratio * total_steps))
        self.interval = int(cfg.interval)
        self.ratio_clip = float(cfg.ratio_clip)
        self.measure_baselines = measure_baselines
        self.tracker = BalanceTracker.from_config(cfg)
        self.eta = {"encoder": 1.0, "llm": 1.0}
        self.refreshed_at: int | None = None  # step of the measurement behind self.eta

    # ------------------------------------------------------------------ queries
    @property
    def uses_kappa(self) -> bool:
        return self.mode in KAPPA_MODES

    @property
    def uses_regularizer(self) -> bool:
        return self.mode == "commit" and self.cfg.reg_lambda > 0

    @property
    def kappa_bar(self) -> float:
        """κ̄ clipped to [1/clip, clip]: what the factors and the regulariser weights use."""
        return clipped_kappa(self.tracker.kappa_bar, self.ratio_clip)

    def active_groups(self, step: int) -> tuple[str, ...]:
        """Groups that train at ``step`` (both, except under coordinate descent)."""
        if self.mode not in CD_MODES:
            return GROUPS
        phase = (step // self.interval) % 2
        first = "encoder" if self.mode == "feature_cd" else "llm"
        other = "llm" if first == "encoder" else "encoder"
        return (first,) if phase == 0 else (other,)

    def frozen_groups(self, step: int) -> tuple[str, ...]:
        act = self.active_groups(step)
        return tuple(g for g in GROUPS if g not in act)

    def needs_balance(self, step: int) -> bool:
        """Whether to measure κ after this step's optimizer step (last step of each window).

        Always in the CoMMIT modes; in ``constant``/``static`` only for logging (turn off
        with ``measure_baselines=False``); never under coordinate descent (κ undefined).
        """
        if (step + 1) % self.interval != 0:
            return False
        if self.uses_kappa:
            return True
        return self.measure_baselines and self.mode in ("constant", "static")

    def base_factor(self, step: int) -> float:
        return base_lr_factor(step, self.total_steps, self.warmup_steps)

    def lrs(self, step: int) -> dict[str, float]:
        """{"encoder": lr, "llm": lr} for the optimizer step with index ``step`` (from 0)."""
        f = self.base_factor(step)
        lr = float(self.training.lr)
        if self.mode == "constant":
            return {"encoder": lr * f, "llm": lr * f}
        if self.mode == "static":
            return {"encoder": float(self.training.encoder_lr) * f, "llm": lr * f}
        if self.mode in CD_MODES:
            act = self.active_groups(step)
            return {g: (lr * f if g in act else 0.0) for g in GROUPS}
        return {g: lr * f * self.eta[g] for g in GROUPS}

    # ------------------------------------------------------------------ updates
    def observe(self, m: BalanceMeasurement, step: int | None = None) -> bool:
        """Fold a κ measurement into the tracker and, in the CoMMIT modes, refresh η_S/η_T.

        Returns whether the measurement was used. An unusable one changes no factor.
        """
        used = self.tracker.update(m)
        if used and self.uses_kappa:
            es, et = commit_factors(self.tracker.kappa_bar, self.ratio_clip)
            self.eta = {"encoder": es, "llm": et}
            self.refreshed_at = step if step is not None else m.step
        return used

    def apply(self, optimizer: Any, step: int) -> dict[str, float]:
        """Set each optimizer param group's ``lr`` from its ``name`` ("encoder"/"llm")."""
        lrs = self.lrs(step)
        for group in optimizer.param_groups:
            name = group.get("name")
            if name not in lrs:
                raise KeyError(f"optimizer param group named {name!r}; the coordinated schedule "
                               "needs every group named 'encoder' or 'llm' "
                               "(see mmtune.coordination.optimizer_groups)")
            group["lr"] = lrs[name]
        return lrs

    def as_log(self, step: int, prefix: str = "sched/") -> dict[str, float]:
        lrs = self.lrs(step)
        out = {"lr_encoder": lrs["encoder"], "lr_llm": lrs["llm"], "base_factor": self.base_factor(step),
               "eta_s": self.eta["encoder"], "eta_t": self.eta["llm"],
               "kappa_bar_clipped": self.kappa_bar}
        if self.mode in CD_MODES:
            out["cd_encoder_active"] = float("encoder" in self.active_groups(step))
        return {prefix + k: v for k, v in out.items()}

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "total_steps": self.total_steps, "warmup_steps": self.warmup_steps,
                "interval": self.interval, "eta": dict(self.eta), "refreshed_at": self.refreshed_at,
                "tracker": self.tracker.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state["mode"] != self.mode:
            raise ValueError(f"checkpoint was written under coordination mode {state['mode']!r}, "
                             f"this run uses {self.mode!r}")
        self.eta = {g: float(state["eta"][g]) for g in GROUPS}
        self.refreshed_at = state.get("refreshed_at")
        self.tracker.load_state_dict(state["tracker"])


def optimizer_groups(groups: Mapping[str, Any], weight_decay: float = 0.0) -> list[dict[str, Any]]:
    """Param-group dicts named "encoder"/"llm" for ``torch.optim.AdamW`` (empty groups left out).

    ``groups`` is :func:`mmtune.models.student.param_groups`' output.
    """
    out = []
    for g in GROUPS:
        ps = [p for _, p in groups.get(g, [])]
        if ps:
            out.append({"params": ps, "name": g, "weight_decay": weight_decay})
    return out
