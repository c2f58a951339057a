"""CoMMIT's multimodal balance coefficient κ, measured on a probe batch (METHODS.md §2).

**[paper]** κ is a ratio of two KL divergences between the model's output distributions:
how far an update of one component moves the output, relative to the other.

**[ours]** Everything concrete below:

* At step t, with the encoder's (S) update Δφ and the LLM's (T) update Δθ::

      D_S = mean over response tokens of KL( p(φ+Δφ, θ) ‖ p(φ, θ) )
      D_T = mean over response tokens of KL( p(φ, θ+Δθ) ‖ p(φ, θ) )
      κ   = D_T / D_S          (κ > 1: the LLM moves the output more; κ < 1: the encoder)

* "Response tokens" are the positions whose label is not ``IGNORE_INDEX``, shifted as for
  causal LM training: the logits at position i predict the label at position i + 1. The
  mean is over all response tokens of the probe batch pooled (token-weighted, not
  per-sample).
* **The proposed update is the real one.** The caller snapshots the trainable parameters
  (:func:`snapshot_params`) before ``optimizer.step()`` and passes that snapshot, plus the
  state after the step (default: the model's current values), to :func:`measure_balance`.
  Δ = after − before is then exactly what the optimizer did (AdamW moments, weight decay,
  gradient clipping and per-group learning rates included), with no deep copy of the
  optimizer and no second ``step()``. The base point p(φ, θ) is the model *before* the
  step.
* The KLs are estimated on a fixed probe batch with three no-grad forward passes (base,
  encoder update alone, LLM update alone), with the model in eval mode (no dropout noise)
  and the parameters restored bit-exactly afterwards (originals are cloned, then copied
  back). The probe batch must contain images, or D_S is 0 by construction.
* KLs are computed in float64 from the (float32/bf16) logits of the response positions,
  and each per-token KL is clamped at ≥ 0 against rounding.
* Edge cases: a group with no trainable parameters ("empty_group"), or whose update is
  exactly zero this step ("frozen_group", e.g. lr 0 under coordinate descent), makes κ
  undefined: ``kappa is None``. If D_S or D_T is 0 (below ε = 1e-12, numerically no
  change) while both groups moved, κ is computed as max(D_T, ε) / max(D_S, ε) and flagged
  ("d_s_zero"/"d_t_zero"). A NaN/inf divergence
  gives ``kappa is None`` and the flag "nonfinite".
* :class:`BalanceTracker` keeps an exponential moving average of log κ with bias correction
  (weights ∝ decay^(n−i), summing to 1), so κ̄ = exp(EMA) is the exponentially weighted
  geometric mean of the measured κ's; κ̄ = 1 before the first measurement. Measurements
  with κ undefined, non-finite, or flagged as a zero divergence are *not* folded into the
  EMA; they are counted in ``skipped`` by reason, and the scheduler keeps its last κ̄.

Every raw quantity (D_S, D_T, κ, update norms, token count, flags) is in
:meth:`BalanceMeasurement.as_log`, so another definition of κ can be computed from logs.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch

from mmtune.models.inputs import IGNORE_INDEX

GROUPS = ("encoder", "llm")
KAPPA_EPS = 1e-12

# group -> parameter name -> tensor (a detached clone, or the live parameter)
Snapshot = dict[str, dict[str, torch.Tensor]]
GroupParams = Mapping[str, Sequence[tuple[str, torch.nn.Parameter]]]
ForwardFn = Callable[[torch.nn.Module, Mapping[str, Any]], torch.Tensor]


# --------------------------------------------------------------------------- helpers
def forward_logits(model: torch.nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
    """The model's logits on ``batch`` (labels are dropped so no loss is computed)."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    return model(**inputs).logits


def snapshot_params(groups: GroupParams) -> Snapshot:
    """Detached clones of every parameter of each group, keyed by group and name.

    ``groups`` is :func:`mmtune.models.student.param_groups`' output (or any mapping of
    group -> [(name, param)] whose names match ``model.named_parameters()``).
    """
    return {g: {n: p.detach().clone() for n, p in ps} for g, ps in groups.items()}


def response_mask(labels: torch.Tensor) -> torch.Tensor:
    """Boolean [B, T-1] mask of the shifted response positions (logits[:, i] → labels[:, i+1])."""
    return labels[:, 1:] != IGNORE_INDEX


def response_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[N, V] logits at the N response positions (shifted as for causal LM)."""
    if logits.shape[:2] != labels.shape[:2]:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} disagree "
                         "on batch/sequence size")
    return logits[:, :-1][response_mask(labels)]


def kl_per_token(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) per row of two [N, V] logit tensors (natural log), computed in float64."""
    lp = torch.log_softmax(logits_p.detach().double(), dim=-1)
    lq = torch.log_softmax(logits_q.detach().double(), dim=-1)
    return (lp.exp() * (lp - lq)).sum(-1).clamp_min(0.0)


def mean_response_kl(logits_new: torch.Tensor, logits_old: torch.Tensor,
                     labels: torch.Tensor) -> tuple[float, int]:
    """(mean over response tokens of KL(p_new ‖ p_old), number of response tokens)."""
    a = response_logits(logits_new, labels)
    b = response_logits(logits_old, labels)
    n = a.shape[0]
    if n == 0:
        return float("nan"), 0
    return float(kl_per_token(a, b).mean()), n


@contextlib.contextmanager
def swapped_params(model: torch.nn.Module, values: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """Temporarily set the named parameters to ``values``; restore them bit-exactly after.

    Must not be used while an autograd graph still needs the parameters (do it before the
    training forward or after ``backward``).
    """
    params = dict(model.named_parameters())
    missing = [n for n in values if n not in params]
    if missing:
        raise KeyError(f"{len(missing)} snapshot names are not parameters of the model "
                       f"(first: {missing[:3]}); was the snapshot taken from another model?")
    saved = {n: params[n].detach().clone() for n in values}
    try:
        with torch.no_grad():
            for n, v in values.items():
                params[n].copy_(v)
        yield
    finally:
        with torch.no_grad():
            for n, v in saved.items():
                params[n].copy_(v)


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode for every submodule, then each module's own previous mode back."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, t in modes:
            m.training = t


def _current(model: torch.nn.Module, like: Snapshot) -> Snapshot:
    params = dict(model.named_parameters())
    return {g: {n: params[n].detach() for n in ps} for g, ps in like.items()}


def _delta_norms(before: Mapping[str, torch.Tensor], after: Mapping[str, torch.Tensor]) -> tuple[float, float]:
    d2 = sum(float((after[n].double() - b.double()).pow(2).sum()) for n, b in before.items())
    w2 = sum(float(b.double().pow(2).sum()) for b in before.values())
    return math.sqrt(d2), math.sqrt(w2)


# --------------------------------------------------------------------------- measurement
@dataclass
class BalanceMeasurement:
    """One κ estimate and the raw quantities behind it."""

    d_s: float | None
    d_t: float | None
    kappa: float | None
    n_tokens: int = 0
    flags: tuple[str, ...] = ()
    update_norm: dict[str, float] = field(default_factory=dict)  # ‖Δ‖ per group
    param_norm: dict[str, float] = field(default_factory=dict)   # ‖params before‖ per group
    step: int | None = None

    @property
    def usable(self) -> bool:
        """Whether the tracker folds this κ into its EMA (defined, finite, no zero divergence)."""
        return (self.kappa is not None and math.isfinite(self.kappa) and self.kappa > 0
                and not ({"d_s_zero", "d_t_zero"} & set(self.flags)))

    @property
    def log_kappa(self) -> float | None:
        return math.log(self.kappa) if self.kappa is not None and self.kappa > 0 else None

    def as_log(self, prefix: str = "balance/") -> dict[str, float]:
        """Flat float dict for loggers; undefined values are NaN, flags are 0/1."""
        nan = float("nan")
        out = {
            "d_s": nan if self.d_s is None else self.d_s,
            "d_t": nan if self.d_t is None else self.d_t,
            "kappa": nan if self.kappa is None else self.kappa,
            "log_kappa": nan if self.log_kappa is None else self.log_kappa,
            "n_tokens": float(self.n_tokens),
            "usable": float(self.usable),
        }
        for g in GROUPS:
            out[f"update_norm_{g}"] = self.update_norm.get(g, nan)
            out[f"param_norm_{g}"] = self.param_norm.get(g, nan)
        for f in ("empty_group", "frozen_group", "d_s_zero", "d_t_zero", "nonfinite", "no_tokens"):
            out[f"flag_{f}"] = float(f in self.flags)
        if self.step is not None:
            out["step"] = float(self.step)
        return {prefix + k: v for k, v in out.items()}


def kappa_from_divergences(d_s: float, d_t: float, eps: float = KAPPA_EPS) -> tuple[float | None, tuple[str, ...]]:
    """κ = D_T / D_S with the edge cases of the module docstring; returns (κ, flags)."""
    if not (math.isfinite(d_s) and math.isfinite(d_t)):
        return None, ("nonfinite",)
    flags = []
    # Below ε a divergence is numerically no change (float32 logits round at ~1e-7, so
    # KL noise is ~1e-14): e.g. the last steps of a cosine schedule. Clamping both to ε
    # would give κ = 1 and pull κ̄ toward 1, so such a measurement is flagged, not used.
    if d_s < eps:
        flags.append("d_s_zero")
    if d_t < eps:
        flags.append("d_t_zero")
    kappa = max(d_t, eps) / max(d_s, eps)
    if not math.isfinite(kappa):
        return None, tuple(flags) + ("nonfinite",)
    return kappa, tuple(flags)


def measure_balance(model: torch.nn.Module, probe_batch: Mapping[str, Any], params_before: Snapshot,
                    params_after: Snapshot | None = None, *, eps: float = KAPPA_EPS,
                    forward: ForwardFn = forward_logits, step: int | None = None) -> BalanceMeasurement:
    """Estimate D_S, D_T and κ for the update ``params_before`` → ``params_after`` [ours].

    ``params_before`` is :func:`snapshot_params` taken just before ``optimizer.step()``;
    ``params_after`` defaults to the model's current values (i.e. call this right after the
    step). Runs three no-grad forward passes on ``probe_batch`` (base, encoder update only,
    LLM update only) in eval mode, then restores every parameter bit-exactly to the value
    it had on entry. ``probe_batch`` needs ``labels`` (response positions) plus the model's
    inputs; ``forward(model, batch) -> logits`` can be replaced for non-HF models.
    """
    if "labels" not in probe_batch:
        raise KeyError("the probe batch needs 'labels' to locate the response tokens")
    after = params_after if params_after is not None else _current(model, params_before)
    labels = probe_batch["labels"]
    norms, wnorms, flags = {}, {}, []
    for g in GROUPS:
        ps = params_before.get(g, {})
        if not ps:
            flags.append("empty_group")
            continue
        norms[g], wnorms[g] = _delta_norms(ps, after[g])
    if "empty_group" in flags:
        return BalanceMeasurement(None, None, None, 0, tuple(flags), norms, wnorms, step)
    if any(all(torch.equal(after[g][n], b) for n, b in params_before[g].items()) for g in GROUPS):
        flags.append("frozen_group")

    def values(enc: Snapshot, llm: Snapshot) -> dict[str, torch.Tensor]:
        return {**enc["encoder"], **llm["llm"]}

    with torch.no_grad(), eval_mode(model):
        with swapped_params(model, values(params_before, params_before)):
            base = forward(model, probe_batch)
        with swapped_params(model, values(after, params_before)):
            moved_s = forward(model, probe_batch)
        with swapped_params(model, values(params_before, after)):
            moved_t = forward(model, probe_batch)
    d_s, n = mean_response_kl(moved_s, base, labels)
    d_t, _ = mean_response_kl(moved_t, base, labels)
    if n == 0:
        return BalanceMeasurement(None, None, None, 0, tuple(flags) + ("no_tokens",), norms, wnorms, step)
    if "frozen_group" in flags:
        nonfinite = () if math.isfinite(d_s) and math.isfinite(d_t) else ("nonfinite",)
        return BalanceMeasurement(d_s, d_t, None, n, tuple(flags) + nonfinite, norms, wnorms, step)
    kappa, kflags = kappa_from_divergences(d_s, d_t, eps)
    return BalanceMeasurement(d_s, d_t, kappa, n, tuple(flags) + kflags, norms, wnorms, step)


# --------------------------------------------------------------------------- tracker
class BalanceTracker:
    """EMA of log κ with bias correction; κ̄ = exp(EMA) [ours, METHODS.md §2].

    ``ema_raw ← decay·ema_raw + (1 − decay)·log κ`` on each usable measurement, and
    ``log κ̄ = ema_raw / (1 − decay^n)`` (n usable measurements), so κ̄ is the weighted
    geometric mean of the κ's with weights ∝ decay^(n−i). Before any usable measurement
    κ̄ = 1. Unusable measurements are counted in ``skipped`` by reason and change nothing
    else, so the scheduler keeps its last κ̄.
    """

    def __init__(self, decay: float = 0.9):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.ema_raw = 0.0
        self.n = 0
        self.n_seen = 0
        self.skipped: dict[str, int] = {}
        self.last: dict[str, Any] = {}

    @classmethod
    def from_config(cls, cfg: Any) -> "BalanceTracker":
        return cls(decay=cfg.ema_decay)

    @property
    def log_kappa_bar(self) -> float:
        if self.n == 0:
            return 0.0
        return self.ema_raw / (1.0 - self.decay ** self.n)

    @property
    def kappa_bar(self) -> float:
        return math.exp(self.log_kappa_bar)

    def update(self, m: BalanceMeasurement) -> bool:
        """Fold one measurement in; returns whether it was used."""
        self.n_seen += 1
        self.last = {"d_s": m.d_s, "d_t": m.d_t, "kappa": m.kappa, "flags": list(m.flags),
                     "step": m.step}
        if not m.usable:
            reason = ("nonfinite" if "nonfinite" in m.flags else
                      next((f for f in ("empty_group", "frozen_group", "no_tokens", "d_s_zero", "d_t_zero")
                            if f in m.flags), "undefined"))
            self.skipped[reason] = self.skipped.get(reason, 0) + 1
            return False
        self.ema_raw = self.decay * self.ema_raw + (1.0 - self.decay) * math.log(m.kappa)
        self.n += 1
        return True

    def update_kappa(self, kappa: float | None) -> bool:
        """Convenience: fold in a bare κ (None/NaN/inf/≤0 are skipped and counted)."""
        if kappa is None:
            return self.update(BalanceMeasurement(None, None, None, flags=("undefined",)))
        flags = () if math.isfinite(kappa) and kappa > 0 else ("nonfinite",)
        return self.update(BalanceMeasurement(None, None, kappa if not flags else None, flags=flags))

    def as_log(self, prefix: str = "balance/") -> dict[str, float]:
        out = {"kappa_bar": self.kappa_bar, "log_kappa_bar": self.log_kappa_bar,
               "ema_raw": self.ema_raw, "n_measured": float(self.n), "n_seen": float(self.n_seen),
               "n_skipped": float(sum(self.skipped.values()))}
        for k, v in self.skipped.items():
            out[f"skipped_{k}"] = float(v)
        return {prefix + k: v for k, v in out.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "ema_raw": self.ema_raw, "n": self.n, "n_seen": self.n_seen,
                "skipped": dict(self.skipped), "last": dict(self.last)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore exactly; the decay of the current config is kept (a changed decay is logged
        by the caller, not silently adopted from the checkpoint)."""
        self.ema_raw = float(state["ema_raw"])
        self.n = int(state["n"])
        self.n_seen = int(state.get("n_seen", self.n))
        self.skipped = {str(k): int(v) for k, v in state.get("skipped", {}).items()}
        self.last = dict(state.get("last", {}))
