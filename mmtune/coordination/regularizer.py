"""CoMMIT's auxiliary regulariser (METHODS.md §2).

**[paper]** A regulariser promotes larger update steps for the component that is learning
too little, which keeps its gradients from vanishing and makes κ easier to estimate.

**[ours]** The loss becomes::

    loss_total = loss − λ · Σ_{c ∈ {S, T}} w_c · min(D_c, τ)

* p_prev,c is the output distribution on the *current* batch of the model with component
  c's parameters reverted to their values before c's last update (the other component
  kept at its current values). When both components update every step, reverting the
  whole model would give p_prev,S = p_prev,T and make the weights meaningless; reverting
  one component measures what that component's last step did. Under coordinate descent,
  "last update" is the last step at which c actually moved. ``sg`` = stop-gradient: p_prev
  is computed under ``no_grad`` in eval mode (deterministic target; dropout still acts on
  p_now, so prefer ``lora.dropout = 0`` with the regulariser). Cost: one no-grad forward
  per component per step.
* D_c, variant ``output``: mean over response tokens (shifted as for causal LM) of
  KL(p_now ‖ sg[p_prev,c]) over the whole vocabulary.
* D_c, variant ``ground_truth``: mean over response tokens of
  (log p_now(y_i) − sg[log p_prev,c(y_i)])², y_i the gold token: the squared change of the
  gold tokens' log-probabilities only. Squared (not signed) so that, like the KL, it is 0
  with zero gradient when nothing moved and it rewards moving further in whichever
  direction c's last update went; a signed version would just rescale the NLL gradient.
* The cap τ applies to each component's mean divergence: min(D_c, τ); above τ the term is
  constant (no gradient), so the regulariser can never dominate the loss.
* Weights: w_S ∝ κ̄, w_T ∝ 1/κ̄, normalised to w_S + w_T = 2, i.e.
  w_S = 2κ̃²/(1 + κ̃²), w_T = 2/(1 + κ̃²), with κ̃ the clipped κ̄ the scheduler uses (κ̄ = 1
  gives w_S = w_T = 1, matching an unweighted sum of the two terms). κ > 1 means the LLM
  dominates, so the encoder's term is weighted up.
* Divergences are computed in float32 (logits are upcast); gradients flow to p_now only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from mmtune.coordination.balance import (
    GROUPS,
    ForwardFn,
    Snapshot,
    eval_mode,
    forward_logits,
    response_logits,
    response_mask,
    swapped_params,
)

VARIANTS = ("output", "ground_truth")


def select_response(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """([N, V] logits at the response positions, [N] gold tokens), shifted as for causal LM."""
    return response_logits(logits, labels), labels[:, 1:][response_mask(labels)]


def regularizer_weights(kappa_bar: float) -> dict[str, float]:
    """{"encoder": w_S, "llm": w_T} with w_S ∝ κ̄, w_T ∝ 1/κ̄, w_S + w_T = 2 [ours].

    Pass the already clipped κ̄ (``CoordinatedSchedule.kappa_bar``).
    """
    k2 = float(kappa_bar) ** 2
    return {"encoder": 2.0 * k2 / (1.0 + k2), "llm": 2.0 / (1.0 + k2)}


def output_divergence(now: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
    """Mean over rows of KL(softmax(now) ‖ sg[softmax(prev)]) for [N, V] logits."""
    lp = torch.log_softmax(now.float(), dim=-1)
    lq = torch.log_softmax(prev.detach().float(), dim=-1)
    return (lp.exp() * (lp - lq)).sum(-1).mean()


def ground_truth_divergence(now: torch.Tensor, prev: torch.Tensor, gold: torch.Tensor) -> torch.Tensor:
    """Mean over rows of (log p_now(gold) − sg[log p_prev(gold)])² for [N, V] logits."""
    idx = gold.long().unsqueeze(-1)
    ln = torch.log_softmax(now.float(), dim=-1).gather(-1, idx).squeeze(-1)
    lq = torch.log_softmax(prev.detach().float(), dim=-1).gather(-1, idx).squeeze(-1)
    return (ln - lq).pow(2).mean()


@dataclass
class RegularizerOutput:
    """``value`` = λ·Σ_c w_c·min(D_c, τ) (a scalar tensor; use ``loss − value``) and raw parts."""

    value: torch.Tensor
    divergence: dict[str, float] = field(default_factory=dict)  # raw D_c (before the cap)
    capped: dict[str, bool] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)
    variant: str = "output"

    def as_log(self, prefix: str = "reg/") -> dict[str, float]:
        out = {"value": float(self.value.detach())}
        for g in GROUPS:
            out[f"div_{g}"] = self.divergence.get(g, float("nan"))
            out[f"capped_{g}"] = float(self.capped.get(g, False))
            out[f"w_{g}"] = self.weights.get(g, float("nan"))
        return {prefix + k: v for k, v in out.items()}


def regularizer_term(now: torch.Tensor, prev: Mapping[str, torch.Tensor | None], gold: torch.Tensor | None,
                     weights: Mapping[str, float], *, tau: float, lam: float,
                     variant: str = "output") -> RegularizerOutput:
    """λ·Σ_c w_c·min(D_c(now, prev_c), τ), differentiable w.r.t. ``now`` only [ours].

    ``now`` and each ``prev[c]`` are [N, V] logits at the same N response positions
    (:func:`select_response`); ``gold`` the [N] gold tokens (needed by ``ground_truth``).
    Components missing from ``prev`` (no update recorded yet) contribute 0.
    """
    if variant not in VARIANTS:
        raise ValueError(f"regulariser variant {variant!r}; allowed: {', '.join(VARIANTS)}")
    if tau <= 0:
        raise ValueError(f"the cap τ must be > 0, got {tau}")
    total = now.new_zeros((), dtype=torch.float32)
    out = RegularizerOutput(total, variant=variant, weights=dict(weights))
    if now.shape[0] == 0:
        return out
    for c in GROUPS:
        p = prev.get(c)
        if p is None:
            continue
        if p.shape != now.shape:
            raise ValueError(f"p_prev[{c}] has shape {tuple(p.shape)}, p_now {tuple(now.shape)}")
        if variant == "output":
            d = output_divergence(now, p)
        else:
            if gold is None:
                raise ValueError("the ground_truth variant needs the gold tokens")
            d = ground_truth_divergence(now, p, gold)
        out.divergence[c] = float(d.detach())
        out.capped[c] = bool(d.detach() >= tau)
        total = total + float(weights[c]) * torch.clamp(d, max=tau)
    out.value = lam * total
    return out


class CommitRegularizer:
    """The state the train loop keeps for the regulariser: each component's parameters
    before its last update, and the constants from ``CoordinationConfig``.

    Per step: ``prev = reg.prev_logits(model, batch)`` *before* the training forward, then
    ``reg.term(now, prev, gold, kappa_bar)``; after ``optimizer.step()``,
    ``reg.record(params_before, model, step)``.
    """

    def __init__(self, tau: float, lam: float, variant: str = "output"):
        if variant not in VARIANTS:
            raise ValueError(f"regulariser variant {variant!r}; allowed: {', '.join(VARIANTS)}")
        self.tau, self.lam, self.variant = float(tau), float(lam), variant
        self.before: Snapshot = {}
        self.updated_at: dict[str, int | None] = {}

    @classmethod
    def from_config(cls, cfg: Any) -> "CommitRegularizer":
        return cls(tau=cfg.reg_tau, lam=cfg.reg_lambda, variant=cfg.reg_variant)

    def record(self, params_before: Snapshot, model: torch.nn.Module, step: int | None = None) -> list[str]:
        """Remember, for every group that this step changed, its values before the step.

        ``params_before`` is :func:`~mmtune.coordination.balance.snapshot_params` from just
        before ``optimizer.step()``; a group the step left bit-identical keeps its older
        record. Returns the groups recorded.
        """
        params = dict(model.named_parameters())
        moved = []
        for g, ps in params_before.items():
            if ps and any(not torch.equal(params[n].detach(), v) for n, v in ps.items()):
                self.before[g] = ps
                self.updated_at[g] = step
                moved.append(g)
        return moved

    @torch.no_grad()
    def prev_logits(self, model: torch.nn.Module, batch: Mapping[str, Any],
                    forward: ForwardFn = forward_logits) -> dict[str, torch.Tensor]:
        """{c: [N, V] response logits of the model with c reverted before its last update}.

        Call before the training forward (parameters are swapped in place and restored
        bit-exactly). Empty until a first update has been recorded.
        """
        labels = batch["labels"]
        out = {}
        with eval_mode(model):
            for g in GROUPS:
                if g in self.before:
                    with swapped_params(model, self.before[g]):
                        out[g] = response_logits(forward(model, batch), labels).detach()
        return out

    def term(self, now: torch.Tensor, prev: Mapping[str, torch.Tensor], gold: torch.Tensor | None,
             kappa_bar: float) -> RegularizerOutput:
        return regularizer_term(now, prev, gold, regularizer_weights(kappa_bar), tau=self.tau,
                                lam=self.lam, variant=self.variant)

    def state_dict(self) -> dict[str, Any]:
        return {"variant": self.variant, "updated_at": dict(self.updated_at),
                "before": {g: {n: t.detach().cpu().clone() for n, t in ps.items()}
                           for g, ps in self.before.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.updated_at = dict(state.get("updated_at", {}))
        self.before = {g: dict(ps) for g, ps in state.get("before", {}).items()}
