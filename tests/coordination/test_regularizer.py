import pytest
import torch
from tests.coordination.coord_helpers import ToyMLLM, toy_batch

from mmtune.config import CoordinationConfig
from mmtune.coordination import (
    CommitRegularizer,
    regularizer_term,
    regularizer_weights,
    select_response,
    snapshot_params,
)
from mmtune.coordination.regularizer import ground_truth_divergence, output_divergence

VARIANTS = ("output", "ground_truth")


def _logits(seed, n=6, v=9):
    return torch.randn(n, v, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("variant", VARIANTS)
def test_zero_when_nothing_moved(variant):
    now = _logits(0).requires_grad_()
    gold = torch.arange(6) % 9
    out = regularizer_term(now, {"encoder": now.detach().clone(), "llm": now.detach().clone()}, gold,
                           regularizer_weights(3.0), tau=0.5, lam=0.1, variant=variant)
    assert float(out.value.detach()) == pytest.approx(0.0, abs=1e-7)
    out.value.backward()
    assert now.grad.abs().max() < 1e-6  # a minimum: no push at the fixed point


@pytest.mark.parametrize("variant", VARIANTS)
def test_cap_and_gradient_to_p_now_only(variant):
    gold = torch.arange(6) % 9
    now = _logits(0).requires_grad_()
    prev = (_logits(1) * 0.05).requires_grad_()  # a leaf that must receive no gradient
    w = {"encoder": 1.0, "llm": 1.0}
    raw = regularizer_term(now, {"encoder": prev}, gold, w, tau=1e6, lam=1.0, variant=variant)
    d = raw.divergence["encoder"]
    assert d > 0 and float(raw.value.detach()) == pytest.approx(d, rel=1e-6) and not raw.capped["encoder"]
    raw.value.backward()
    assert now.grad is not None and now.grad.abs().sum() > 0
    assert prev.grad is None
    # with τ below the divergence, the term equals τ and has no gradient
    now2 = now.detach().clone().requires_grad_()
    tau = d / 2
    capped = regularizer_term(now2, {"encoder": prev, "llm": prev}, gold, w, tau=tau, lam=0.1,
                              variant=variant)
    assert float(capped.value.detach()) == pytest.approx(0.1 * 2 * tau) and capped.capped == {"encoder": True, "llm": True}
    capped.value.backward()
    assert now2.grad.abs().max() == 0


def test_variant_definitions():
    now, prev = _logits(0), _logits(1)
    gold = torch.tensor([0, 1, 2, 3, 4, 5])
    lp, lq = torch.log_softmax(now, -1), torch.log_softmax(prev, -1)
    kl = (lp.exp() * (lp - lq)).sum(-1).mean()
    assert float(output_divergence(now, prev)) == pytest.approx(float(kl), rel=1e-6)
    gt = (lp[torch.arange(6), gold] - lq[torch.arange(6), gold]).pow(2).mean()
    assert float(ground_truth_divergence(now, prev, gold)) == pytest.approx(float(gt), rel=1e-6)
    # ground_truth ignores probability moved among non-gold tokens
    prev3 = now.clone()
    prev3[:, 7], prev3[:, 8] = now[:, 8], now[:, 7]  # swap two non-gold tokens: gold probs unchanged
    assert float(ground_truth_divergence(now, prev3, gold)) == pytest.approx(0.0, abs=1e-10)
    assert float(output_divergence(now, prev3)) > 0
    with pytest.raises(ValueError, match="variant"):
        regularizer_term(now, {}, gold, {}, tau=1, lam=1, variant="nope")


def test_weights_follow_kappa_bar():
    assert regularizer_weights(1.0) == {"encoder": 1.0, "llm": 1.0}
    w = regularizer_weights(4.0)
    assert w["encoder"] > 1 > w["llm"]
    assert w["encoder"] + w["llm"] == pytest.approx(2.0)
    assert w["encoder"] / w["llm"] == pytest.approx(16.0)  # w_S ∝ κ̄, w_T ∝ 1/κ̄
    w = regularizer_weights(0.5)
    assert w["encoder"] < w["llm"]
    now, prev = _logits(0).requires_grad_(), _logits(1)
    hi = regularizer_term(now, {"encoder": prev}, None, regularizer_weights(4.0), tau=100, lam=1)
    lo = regularizer_term(now, {"encoder": prev}, None, regularizer_weights(0.25), tau=100, lam=1)
    assert float(hi.value.detach()) > float(lo.value.detach())


def test_state_reverts_one_component_and_restores():
    model = ToyMLLM()
    model.drop.p = 0.0
    batch = toy_batch()
    groups = model.groups()
    reg = CommitRegularizer.from_config(CoordinationConfig(reg_lambda=0.1, reg_tau=0.5))
    assert reg.prev_logits(model, batch) == {}  # nothing recorded yet
    # step 1 moves both groups, step 2 only the llm (lr 0 for the encoder)
    b1 = snapshot_params(groups)
    with torch.no_grad():
        for _, p in groups["encoder"] + groups["llm"]:
            p.add_(0.05)
    assert reg.record(b1, model, step=0) == ["encoder", "llm"]
    b2 = snapshot_params(groups)
    with torch.no_grad():
        for _, p in groups["llm"]:
            p.add_(0.05)
    assert reg.record(b2, model, step=1) == ["llm"]
    assert reg.updated_at == {"encoder": 0, "llm": 1}
    entry = {n: p.detach().clone() for n, p in model.named_parameters()}
    prev = reg.prev_logits(model, batch)
    assert all(torch.equal(p, entry[n]) for n, p in model.named_parameters())
    # p_prev,S: encoder as in b1, llm current
    with torch.no_grad():
        expect_s, _ = select_response(_with(model, b1["encoder"], batch), batch["labels"])
        expect_t, _ = select_response(_with(model, b2["llm"], batch), batch["labels"])
    assert torch.equal(prev["encoder"], expect_s) and torch.equal(prev["llm"], expect_t)
    now, gold = select_response(model(**{k: v for k, v in batch.items() if k != "labels"}).logits,
                                batch["labels"])
    out = reg.term(now, prev, gold, kappa_bar=2.0)
    assert float(out.value.detach()) > 0 and out.weights["encoder"] > out.weights["llm"]
    out.value.backward()
    assert all(p.grad is not None for _, p in groups["llm"])
    # resume
    again = CommitRegularizer(0.5, 0.1)
    again.load_state_dict(reg.state_dict())
    prev2 = again.prev_logits(model, batch)
    assert all(torch.equal(prev[g], prev2[g]) for g in prev)


def _with(model, values, batch):
    params = dict(model.named_parameters())
    saved = {n: params[n].detach().clone() for n in values}
    for n, v in values.items():
        params[n].copy_(v)
    out = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    for n, v in saved.items():
        params[n].copy_(v)
    return out
