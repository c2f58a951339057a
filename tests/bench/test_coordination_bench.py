"""bench/coordination.py at a tiny size: one run per mode in-process (no Ray), the summary,
the markdown table, the plots, and the training-set selection by step chain."""

from __future__ import annotations

import io
import math

import pytest
import torch
from PIL import Image

from bench import coordination as cb
from mmtune.config import CoordinationConfig, LoraSettings, StudentConfig, TinyLlavaPreset, TrainingConfig

PRESET = TinyLlavaPreset(vision_hidden=32, vision_layers=1, vision_heads=2, text_hidden=32,
                         text_layers=1, text_heads=2, text_intermediate=64, vocab_size=400)
COLOURS = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200), "yellow": (220, 220, 40)}
MODES = ("constant", "feature_cd")
STEPS = 6


def _png(rgb) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), rgb).save(buf, format="PNG")
    return buf.getvalue()


def make_rows(n: int, prefix: str = "s") -> list[dict]:
    names = list(COLOURS)
    return [{"id": f"{prefix}{i}", "task": "colour", "instruction": "What colour is the square?",
             "response": f"The square fills the image.\nAnswer: {names[i % 4]}", "image": _png(COLOURS[names[i % 4]]),
             "answer": names[i % 4], "options": None} for i in range(n)]


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    from mmtune.models.presets import build_tiny_llava
    from mmtune.models.student import save_student

    torch.manual_seed(0)
    rows = make_rows(8)
    model, processor = build_tiny_llava(PRESET, [r["instruction"] + " " + r["response"] for r in rows] * 5, 32)
    sdir = save_student(model, processor, tmp_path_factory.mktemp("tiny_student"))
    student = StudentConfig(lora=LoraSettings(r=4, alpha=8, dropout=0.0), dtype="float32", max_new_tokens=8)
    training = TrainingConfig(lr=3e-3, coordination=CoordinationConfig(interval=3, probe_size=4))
    return cb.Settings(student_dir=str(sdir), student_cfg=student.model_dump(mode="json"),
                       training_cfg=training.model_dump(mode="json"), steps=STEPS, batch_size=4,
                       max_new_tokens=8, eval_batch=4, threads=1)


@pytest.fixture(scope="module")
def runs(settings):
    train, evals = make_rows(8), {"colour": make_rows(6, "e"), "colour2": make_rows(3, "f")}
    return [cb.run_one(mode, 0, train, evals, settings) for mode in MODES]


def test_runs_and_summary(runs):
    for r in runs:
        assert len(r["history"]) == STEPS and set(r["eval"]) == {"colour", "colour2"}
        assert r["eval"]["colour"]["n"] == 6
    # a loose target is reached at the first full window, a tight one never
    for target in (1e9, 1e-9):
        summaries = cb.summarize(runs, MODES, loss_target=target, window=3)
        assert [s.mode for s in summaries] == list(MODES)
        for s in summaries:
            assert len(s.steps_to_target) == 1
            v = s.steps_to_target[0]
            if target > 1:
                assert isinstance(v, int) and v == 3  # the first full 3-step window
            else:
                assert v is None
            assert all(math.isfinite(x) for x in s.final_loss)
            for accs in s.accuracy.values():
                assert all(0.0 <= a <= 1.0 for a in accs)
    by_mode = {s.mode: s for s in cb.summarize(runs, MODES, loss_target=1.0)}
    assert len(by_mode["constant"].log_kappa_mean) == 1  # κ measured (logging only) at steps 3 and 6
    assert by_mode["feature_cd"].log_kappa_mean == []  # coordinate descent: κ undefined

    table = cb.render_table(list(by_mode.values()), loss_target=1.0, total_steps=STEPS,
                            majority={"colour": 0.5, "colour2": 1 / 3}, untuned={"colour": 0.0, "colour2": 0.0})
    lines = table.splitlines()
    assert lines[0].startswith("| mode |") and set(lines[1]) <= set("|-:")
    assert len(lines) == 2 + 1 + len(MODES)
    for mode in MODES:
        assert any(line.startswith(f"| `{mode}` |") for line in lines)
    assert all(line.count("|") == lines[0].count("|") for line in lines)
    fcd = next(line for line in lines if line.startswith("| `feature_cd` |"))
    assert fcd.rstrip(" |").split(" | ")[-3:-1] == ["–", "–"]  # no log κ under coordinate descent


def test_plots(runs, tmp_path):
    pytest.importorskip("matplotlib")
    written = cb.plot_curves(runs, MODES, tmp_path / "loss.png", tmp_path / "kappa.png", loss_target=1.0)
    assert written == [tmp_path / "loss.png", tmp_path / "kappa.png"]
    assert all(p.stat().st_size > 1000 for p in written)


def test_steps_to_target_and_formatting():
    losses = [5.0] * 10 + [0.1] * 10
    assert cb.moving_average([1.0, 3.0, 5.0], 2) == [1.0, 2.0, 4.0]
    assert cb.steps_to_target(losses, 0.5) == 20  # the mean of steps 10..19 is 0.59, of 11..20 0.1
    assert cb.steps_to_target(losses, 0.05) is None
    assert cb.steps_to_target([0.0] * 5, 1.0) is None  # no full window yet
    assert cb.format_steps([10, 20, None], 150) == "15 ± 7; 1/3 >150"
    assert cb.format_steps([None, None], 150) == ">150 (all 2)"
    assert cb.format_steps([None], 150) == ">150"


def test_log_kappa_leaves_out_clamped_measurements():
    def m(step, d_s, d_t, usable=1.0):
        return {"step": step, "measured": 1.0, "balance/usable": usable, "balance/d_s": d_s, "balance/d_t": d_t,
                "balance/log_kappa": math.log(max(d_t, 1e-12) / max(d_s, 1e-12))}

    hist = [m(10, 1e-6, 4e-6), {"step": 11, "measured": 0.0, "balance/log_kappa": None}, m(20, 2e-6, 1e-6),
            m(30, 1e-6, 1e-6, usable=0.0), m(150, 5e-14, 2e-13)]  # the last: both below ε, κ = 1 exactly
    assert cb.log_kappas(hist) == [(10, pytest.approx(math.log(4))), (20, pytest.approx(math.log(0.5)))]
    assert cb.below_eps(hist) == 1


def test_training_rows_share_the_targets_chain(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    tasks = ["parity_open", "parity_yesno", "count_objects", "digit_read", "add_open"]
    rows = [{"id": f"{t}-{i}", "task": t, "instruction": "q", "response": "a", "image": None}
            for t in tasks for i in range(10)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "corpus.parquet")
    got = cb.select_training_rows([tmp_path / "corpus.parquet"], ["parity_choice", "count_grid"], 15, seed=1)
    assert len(got) == 15 and len({r["id"] for r in got}) == 15
    by_task = {t: sum(r["task"] == t for r in got) for t in tasks}
    assert by_task["digit_read"] == by_task["add_open"] == 0  # other chains never
    assert by_task["parity_open"] + by_task["parity_yesno"] == 8 and by_task["count_objects"] == 7
    assert got == cb.select_training_rows([tmp_path / "corpus.parquet"], ["parity_choice", "count_grid"], 15, seed=1)
    with pytest.raises(ValueError, match="fewer"):
        cb.select_training_rows([tmp_path / "corpus.parquet"], ["count_grid"], 11)
