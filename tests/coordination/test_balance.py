import json
import math

import pytest
import torch
from tests.coordination.coord_helpers import ToyMLLM, toy_batch

from mmtune.coordination import (
    BalanceMeasurement,
    BalanceTracker,
    kappa_from_divergences,
    mean_response_kl,
    measure_balance,
    snapshot_params,
)
from mmtune.models.inputs import IGNORE_INDEX


def _moved(before, scale_enc=1.0, scale_llm=1.0, seed=3):
    """A hand-built 'after' snapshot: before + fixed random directions, scaled per group."""
    g = torch.Generator().manual_seed(seed)
    scale = {"encoder": scale_enc, "llm": scale_llm}
    return {grp: {n: t + 1e-3 * scale[grp] * torch.randn(t.shape, generator=g) for n, t in ps.items()}
            for grp, ps in before.items()}


def _state(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_kl_uses_shifted_response_tokens_only():
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 4, 5]])
    a = torch.zeros(1, 4, 6)
    b = torch.zeros(1, 4, 6)
    b[0, 3] = torch.randn(6)  # the last position predicts nothing: must not count
    b[0, 0] = torch.randn(6)  # predicts a prompt token: must not count
    d, n = mean_response_kl(a, b, labels)
    assert n == 2 and d == 0.0
    b[0, 1, 0] = 3.0  # position 1 predicts label 2 (a response token)
    d, _ = mean_response_kl(a, b, labels)
    assert d > 0


def test_kappa_follows_the_group_that_moves_the_output_more():
    model = ToyMLLM()
    batch = toy_batch()
    before = snapshot_params(model.groups())
    base = measure_balance(model, batch, before, _moved(before))
    big_enc = measure_balance(model, batch, before, _moved(before, scale_enc=10.0))
    big_llm = measure_balance(model, batch, before, _moved(before, scale_llm=10.0))
    for m in (base, big_enc, big_llm):
        assert m.kappa is not None and m.kappa > 0 and math.isfinite(m.kappa) and m.usable
        assert m.kappa == pytest.approx(m.d_t / m.d_s)
        assert m.n_tokens == int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    # ×10 on the encoder's update: D_S grows ~100× (KL is quadratic for small steps)
    assert big_enc.d_s == pytest.approx(100 * base.d_s, rel=0.1)
    assert big_enc.d_t == pytest.approx(base.d_t, rel=1e-9)
    assert big_enc.kappa < base.kappa / 50
    assert big_llm.kappa > base.kappa * 50
    assert big_enc.update_norm["encoder"] == pytest.approx(10 * base.update_norm["encoder"], rel=1e-4)


def test_parameters_and_modes_restored_bit_exactly():
    model = ToyMLLM()
    model.train()
    model.drop.eval()  # a submodule deliberately in another mode
    batch = toy_batch()
    before = snapshot_params(model.groups())
    after = _moved(before, 5.0, 5.0)
    # the model currently holds a third state: neither 'before' nor 'after'
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.123)
    entry = _state(model)
    m = measure_balance(model, batch, before, after)
    assert m.usable
    for n, p in model.named_parameters():
        assert torch.equal(p, entry[n]), n
    assert model.training and model.enc.training and not model.drop.training


def test_default_after_is_the_current_model_and_eval_mode_is_used():
    model = ToyMLLM()
    model.train()  # dropout 0.5 active: eval mode inside the measurement makes it deterministic
    batch = toy_batch()
    before = snapshot_params(model.groups())
    after = _moved(before)
    with torch.no_grad():
        for g in after.values():
            for n, t in g.items():
                dict(model.named_parameters())[n].copy_(t)
    a = measure_balance(model, batch, before)
    b = measure_balance(model, batch, before, after)
    assert a.d_s == b.d_s and a.d_t == b.d_t and a.kappa == b.kappa


def test_zero_divergence_is_clamped_and_flagged():
    model = ToyMLLM()
    batch = toy_batch()
    batch["pixel_values"] = torch.zeros_like(batch["pixel_values"])  # "no image": enc.weight is inert
    groups = model.groups()
    groups["encoder"] = [(n, p) for n, p in groups["encoder"] if n == "enc.weight"]
    before = snapshot_params(groups)
    m = measure_balance(model, batch, before, _moved(before))
    assert m.d_s == 0.0 and m.d_t > 0
    assert "d_s_zero" in m.flags and m.kappa == pytest.approx(m.d_t / 1e-12) and not m.usable
    tr = BalanceTracker(0.9)
    assert tr.update(m) is False and tr.kappa_bar == 1.0 and tr.skipped == {"d_s_zero": 1}
    assert kappa_from_divergences(0.0, 0.0) == (1.0, ("d_s_zero", "d_t_zero"))
    # below resolution (the tail of a cosine schedule): flagged, so never folded into κ̄
    k, flags = kappa_from_divergences(5e-14, 2e-13)
    assert flags == ("d_s_zero", "d_t_zero")
    assert kappa_from_divergences(5e-14, 2e-3)[1] == ("d_s_zero",)
    assert kappa_from_divergences(3e-9, 2e-8) == (pytest.approx(2e-8 / 3e-9), ())
    k, flags = kappa_from_divergences(0.3, 0.0)
    assert flags == ("d_t_zero",) and k == pytest.approx(1e-12 / 0.3)


def test_empty_and_frozen_groups_give_no_kappa():
    model = ToyMLLM()
    batch = toy_batch()
    groups = model.groups()
    empty = snapshot_params({"encoder": [], "llm": groups["llm"]})
    m = measure_balance(model, batch, empty, _moved(empty))
    assert m.kappa is None and "empty_group" in m.flags
    before = snapshot_params(groups)
    after = _moved(before)
    after["encoder"] = {n: t.clone() for n, t in before["encoder"].items()}  # lr 0 for the encoder
    m = measure_balance(model, batch, before, after)
    assert m.kappa is None and "frozen_group" in m.flags and m.d_s == 0.0 and m.d_t > 0
    tr = BalanceTracker(0.9)
    tr.update(BalanceMeasurement(1.0, 4.0, 4.0))
    kb = tr.kappa_bar
    assert tr.update(m) is False and tr.kappa_bar == kb  # the scheduler keeps its last value
    assert tr.skipped == {"frozen_group": 1}


def test_nonfinite_update_is_skipped_and_counted():
    model = ToyMLLM()
    batch = toy_batch()
    before = snapshot_params(model.groups())
    after = _moved(before)
    after["llm"]["head.weight"][0, 0] = float("nan")
    m = measure_balance(model, batch, before, after)
    assert m.kappa is None and "nonfinite" in m.flags
    assert math.isnan(m.as_log()["balance/kappa"]) and m.as_log()["balance/flag_nonfinite"] == 1.0
    tr = BalanceTracker(0.9)
    assert tr.update(m) is False and tr.n == 0 and tr.skipped == {"nonfinite": 1}
    assert tr.update_kappa(float("inf")) is False and tr.skipped == {"nonfinite": 2}
    assert not any(torch.isnan(p).any() for p in model.parameters())  # restored


def test_ema_of_log_kappa_is_the_bias_corrected_weighted_mean():
    decay = 0.8
    kappas = [2.0, 0.5, 8.0, 3.0]
    tr = BalanceTracker(decay)
    assert tr.kappa_bar == 1.0
    for i, k in enumerate(kappas, 1):
        assert tr.update_kappa(k)
        w = [decay ** (i - j) for j in range(1, i + 1)]
        expect = sum(wj * math.log(kj) for wj, kj in zip(w, kappas[:i])) / sum(w)
        assert tr.log_kappa_bar == pytest.approx(expect, rel=1e-12)
    one = BalanceTracker(0.9)
    one.update_kappa(5.0)
    assert one.kappa_bar == pytest.approx(5.0)  # first measurement counts fully
    log = tr.as_log()
    assert log["balance/n_measured"] == 4 and log["balance/kappa_bar"] == pytest.approx(tr.kappa_bar)


def test_tracker_state_dict_resume_is_exact():
    a = BalanceTracker(0.9)
    for k in (1.7, 0.3, None, 2.2):
        a.update_kappa(k)
    state = json.loads(json.dumps(a.state_dict()))  # survives a JSON checkpoint
    b = BalanceTracker(0.9)
    b.load_state_dict(state)
    for k in (4.0, 0.7, 1.1):
        a.update_kappa(k)
        b.update_kappa(k)
        assert a.kappa_bar == b.kappa_bar and a.ema_raw == b.ema_raw
    assert a.state_dict() == b.state_dict()
