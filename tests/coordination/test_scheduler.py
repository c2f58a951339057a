import json
import math

import pytest
import torch

from mmtune.config import CoordinationConfig, TrainingConfig
from mmtune.coordination import (
    BalanceMeasurement,
    CoordinatedSchedule,
    base_lr_factor,
    commit_factors,
    optimizer_groups,
)


def _m(kappa, step=None):
    return BalanceMeasurement(d_s=1.0, d_t=kappa, kappa=kappa, n_tokens=5, step=step)


def _sched(mode, total=100, **coord):
    cfg = CoordinationConfig(mode=mode, **coord)
    tr = TrainingConfig(lr=1e-3, encoder_lr=1e-4, warmup_ratio=0.1)
    return CoordinatedSchedule(cfg, tr, total)


def test_warmup_then_cosine_shape():
    total, warm = 100, 10
    f = [base_lr_factor(s, total, warm) for s in range(total)]
    assert f[0] == pytest.approx(0.1) and f[0] > 0
    assert all(a < b for a, b in zip(f[:warm - 1], f[1:warm]))  # rising during warm-up
    assert f[warm - 1] == 1.0 and f[warm] == 1.0
    assert all(a > b for a, b in zip(f[warm:-1], f[warm + 1:]))  # strictly decaying
    mid = warm + (total - warm) // 2
    assert f[mid] == pytest.approx(0.5)
    assert 0 < f[-1] < 0.01 and base_lr_factor(total, total, warm) == 0.0
    assert base_lr_factor(0, 5, 0) == 1.0  # no warm-up
    with pytest.raises(ValueError):
        base_lr_factor(0, 0, 0)


def test_commit_factors_from_kappa_bar():
    assert commit_factors(1.0, 10.0) == (1.0, 1.0)
    es, et = commit_factors(4.0, 10.0)
    assert es > 1 > et and es / et == pytest.approx(4.0) and es + et == pytest.approx(2.0)
    es, et = commit_factors(0.25, 10.0)
    assert es < 1 < et and es / et == pytest.approx(0.25)
    # the ratio is clipped to [1/clip, clip]
    assert commit_factors(1e6, 10.0) == commit_factors(10.0, 10.0)
    es, et = commit_factors(1e-6, 3.0)
    assert es / et == pytest.approx(1 / 3)
    assert commit_factors(5.0, 1.0) == (1.0, 1.0)


def test_commit_updates_only_every_interval_and_follows_kappa():
    s = _sched("commit", interval=5)
    assert [t for t in range(20) if s.needs_balance(t)] == [4, 9, 14, 19]
    before = [s.lrs(t) for t in range(12)]
    assert all(l["encoder"] == l["llm"] for l in before)  # κ̄ = 1 before any measurement
    assert s.observe(_m(4.0), step=4)
    assert s.eta["encoder"] > 1 > s.eta["llm"]
    after = s.lrs(5)
    assert after["encoder"] / after["llm"] == pytest.approx(4.0)
    # between measurements the factors hold; only the base schedule moves
    r = [s.lrs(t)["encoder"] / s.lrs(t)["llm"] for t in range(5, 10)]
    assert r == pytest.approx([4.0] * 5)
    # an unusable measurement keeps the last factors
    eta = dict(s.eta)
    assert not s.observe(BalanceMeasurement(None, None, None, flags=("nonfinite",)), step=9)
    assert s.eta == eta and s.tracker.skipped == {"nonfinite": 1}
    # clip is enforced on the lrs
    s2 = _sched("commit_clr", interval=5, ratio_clip=2.0)
    s2.observe(_m(50.0))
    lr = s2.lrs(20)
    assert lr["encoder"] / lr["llm"] == pytest.approx(2.0)
    assert s2.kappa_bar == 2.0 and s2.tracker.kappa_bar == pytest.approx(50.0)


def test_constant_ignores_kappa_and_static_uses_two_lrs():
    c = _sched("constant", interval=5)
    c.observe(_m(8.0))
    assert c.tracker.kappa_bar == pytest.approx(8.0)  # measured for logging...
    for t in range(0, 100, 7):
        l = c.lrs(t)
        assert l["encoder"] == l["llm"] == pytest.approx(1e-3 * base_lr_factor(t, 100, 10))
    assert c.needs_balance(4) and not c.uses_regularizer
    s = _sched("static", interval=5)
    s.observe(_m(8.0))
    for t in (0, 10, 50):
        f = base_lr_factor(t, 100, 10)
        assert s.lrs(t) == pytest.approx({"encoder": 1e-4 * f, "llm": 1e-3 * f})
    nolog = CoordinatedSchedule(CoordinationConfig(mode="constant", interval=5),
                                TrainingConfig(), 100, measure_baselines=False)
    assert not any(nolog.needs_balance(t) for t in range(20))


@pytest.mark.parametrize("mode,first", [("feature_cd", "encoder"), ("language_cd", "llm")])
def test_coordinate_descent_alternates_and_zeroes_the_other_group(mode, first):
    s = _sched(mode, interval=3)
    other = "llm" if first == "encoder" else "encoder"
    active = [s.active_groups(t)[0] for t in range(12)]
    assert active == [first] * 3 + [other] * 3 + [first] * 3 + [other] * 3
    for t in range(12):
        l = s.lrs(t)
        on = active[t]
        off = other if on == first else first
        assert l[off] == 0.0 and l[on] == pytest.approx(1e-3 * base_lr_factor(t, 100, 10))
        assert s.frozen_groups(t) == (off,)
    assert not any(s.needs_balance(t) for t in range(12))


def test_apply_sets_named_optimizer_groups():
    enc, llm = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.AdamW(optimizer_groups({"encoder": [("e", enc)], "llm": [("l", llm)]}, 0.01), lr=1.0)
    s = _sched("static")
    lrs = s.apply(opt, 20)
    assert {g["name"]: g["lr"] for g in opt.param_groups} == lrs
    assert all(g["weight_decay"] == 0.01 for g in opt.param_groups)
    # empty groups are left out of the optimizer
    assert [g["name"] for g in optimizer_groups({"encoder": [], "llm": [("l", llm)]})] == ["llm"]
    bad = torch.optim.AdamW([enc], lr=1.0)
    with pytest.raises(KeyError, match="encoder"):
        s.apply(bad, 0)


def test_schedule_state_dict_resume_is_exact():
    a = _sched("commit", interval=2)
    for t, k in ((1, 3.0), (3, 0.5), (5, 6.0)):
        a.observe(_m(k), step=t)
    state = json.loads(json.dumps(a.state_dict()))
    b = _sched("commit", interval=2)
    b.load_state_dict(state)
    for t, k in ((7, 2.0), (9, 0.9)):
        a.observe(_m(k), step=t)
        b.observe(_m(k), step=t)
        for u in range(t, t + 3):
            assert a.lrs(u) == b.lrs(u)
    assert a.state_dict() == b.state_dict()
    with pytest.raises(ValueError, match="mode"):
        _sched("constant").load_state_dict(state)
    assert math.isfinite(a.as_log(3)["sched/lr_encoder"])


def test_closed_loop_with_adam_like_steps_settles_at_cube_root():
    """κ is measured on the real update, which already carries η_S/η_T. With Adam-like steps
    (step ∝ lr) and KL quadratic in the step, κ_measured = c·(η_T/η_S)² = c/κ̃², so the EMA
    settles at κ̄ = c^(1/3) (log-imbalance cut to a third) when decay > 1/3 (see docs)."""
    s = _sched("commit", interval=1, ema_decay=0.9, ratio_clip=100.0)
    c = 27.0
    for t in range(200):
        ratio = s.eta["encoder"] / s.eta["llm"]
        s.observe(_m(c / ratio ** 2), step=t)
    assert s.tracker.kappa_bar == pytest.approx(3.0, rel=1e-6)
