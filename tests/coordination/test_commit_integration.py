"""Ten AdamW steps of a tiny LLaVA under mode=commit, wired the way a train loop would."""

import math

import torch
from tests.coordination.coord_helpers import PRESET, TEXTS, png

from mmtune.config import CoordinationConfig, StudentConfig, TrainingConfig
from mmtune.coordination import (
    CommitRegularizer,
    CoordinatedSchedule,
    measure_balance,
    optimizer_groups,
    select_response,
    snapshot_params,
)
from mmtune.models.inputs import encode_for_training
from mmtune.models.presets import build_tiny_llava
from mmtune.models.student import apply_lora, param_groups


def test_commit_trains_a_tiny_llava():
    torch.manual_seed(0)
    model, processor = build_tiny_llava(PRESET, TEXTS, image_size=32)
    model = apply_lora(model, StudentConfig(lora={"r": 4, "alpha": 8, "dropout": 0.0}))
    groups = param_groups(model)
    assert groups["encoder"] and groups["llm"]
    batch = encode_for_training(
        processor, ["What colour is the circle?", "How many objects are there?"],
        ["The circle is in the top left cell.\nAnswer: red", "That makes 2 objects.\nAnswer: 2"],
        [png(), png((0, 0, 200))])
    probe = encode_for_training(
        processor, ["Is the digit odd or even?"], ["The digit is 7.\n7 is odd.\nAnswer: odd"],
        [png((20, 160, 20))])

    steps = 10
    coord = CoordinationConfig(mode="commit", interval=2, ema_decay=0.5, reg_lambda=0.01, reg_tau=0.5)
    training = TrainingConfig(lr=3e-3, warmup_ratio=0.0, coordination=coord)
    sched = CoordinatedSchedule(coord, training, steps)
    reg = CommitRegularizer.from_config(coord)
    opt = torch.optim.AdamW(optimizer_groups(groups, training.weight_decay), lr=training.lr)
    model.train()

    losses, measured, lr_log = [], [], []
    for step in range(steps):
        lr_log.append(sched.apply(opt, step))
        prev = reg.prev_logits(model, batch) if sched.uses_regularizer else {}
        out = model(**batch)
        now, gold = select_response(out.logits, batch["labels"])
        r = reg.term(now, prev, gold, sched.kappa_bar)
        (out.loss - r.value).backward()
        before = snapshot_params(groups)
        opt.step()
        opt.zero_grad(set_to_none=True)
        reg.record(before, model, step)
        if sched.needs_balance(step):
            m = measure_balance(model, probe, before, step=step)
            sched.observe(m, step)
            measured.append(m)
        losses.append(float(out.loss.detach()))

    assert losses[-1] < losses[0]
    assert [m.step for m in measured] == [1, 3, 5, 7, 9]
    for m in measured:
        assert m.usable and math.isfinite(m.kappa) and m.kappa > 0, m
        assert m.d_s > 0 and m.d_t > 0
    assert sched.tracker.n == 5 and sched.tracker.kappa_bar != 1.0
    # κ̄ = 1 until the first measurement, then the two groups' lrs differ
    assert lr_log[0]["encoder"] == lr_log[0]["llm"] and lr_log[1]["encoder"] == lr_log[1]["llm"]
    for lrs in lr_log[2:]:
        assert lrs["encoder"] != lrs["llm"]
    ratio = lr_log[-1]["encoder"] / lr_log[-1]["llm"]
    assert 1 / coord.ratio_clip <= ratio <= coord.ratio_clip
