"""CoMMIT's coordination of the encoder (S) and the LLM (T), in plain torch (METHODS.md §2).

* :mod:`.balance`: the balance coefficient κ = D_T / D_S and its EMA tracker;
* :mod:`.scheduler`: per-group learning rates (CoMMIT and the baselines);
* :mod:`.regularizer`: the capped auxiliary regulariser.

See ``docs/coordination.md`` for every definition, marked [paper] / [ours].
"""

from mmtune.coordination.balance import (
    GROUPS,
    KAPPA_EPS,
    BalanceMeasurement,
    BalanceTracker,
    forward_logits,
    kappa_from_divergences,
    kl_per_token,
    mean_response_kl,
    measure_balance,
    response_logits,
    response_mask,
    snapshot_params,
    swapped_params,
)
from mmtune.coordination.regularizer import (
    CommitRegularizer,
    RegularizerOutput,
    ground_truth_divergence,
    output_divergence,
    regularizer_term,
    regularizer_weights,
    select_response,
)
from mmtune.coordination.scheduler import (
    MODES,
    CoordinatedSchedule,
    base_lr_factor,
    clipped_kappa,
    commit_factors,
    optimizer_groups,
)

__all__ = [
    "GROUPS", "KAPPA_EPS", "MODES",
    "BalanceMeasurement", "BalanceTracker", "CommitRegularizer", "CoordinatedSchedule",
    "RegularizerOutput",
    "base_lr_factor", "clipped_kappa", "commit_factors", "forward_logits",
    "ground_truth_divergence", "kappa_from_divergences", "kl_per_token", "mean_response_kl",
    "measure_balance", "optimizer_groups", "output_divergence", "regularizer_term",
    "regularizer_weights", "response_logits", "response_mask", "select_response",
    "snapshot_params", "swapped_params",
]
