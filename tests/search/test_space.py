"""The search space, overrides, rungs, resource plan and trial table: pure, no Ray."""

from __future__ import annotations

import math
import random
from types import SimpleNamespace

import pytest

from mmtune.config import ConfigError, RunConfig, SearchConfig
from mmtune.search.results import format_trials, pick_best, trial_status
from mmtune.search.rungs import rung_steps
from mmtune.search.space import (
    DEFAULT_SPACE,
    apply_overrides,
    choice,
    loguniform,
    parse_space,
    sample_space,
    space_for_mode,
    uniform,
    validate_space,
)
from mmtune.search.tune import SearchSettings, base_values, check_metric, plan_resources

COMMIT_CONSTANTS = {"training.lr", "training.coordination.interval", "training.coordination.ema_decay",
                    "training.coordination.reg_lambda", "training.coordination.reg_tau",
                    "training.coordination.ratio_clip"}


def test_default_space_covers_commits_constants_and_validates():
    assert set(DEFAULT_SPACE) == COMMIT_CONSTANTS
    validate_space(DEFAULT_SPACE, RunConfig())
    assert DEFAULT_SPACE["training.lr"].kind == "loguniform"
    assert DEFAULT_SPACE["training.coordination.interval"].kind == "choice"


def test_samples_stay_in_bounds_and_make_valid_configs():
    base = RunConfig()
    before = base.to_dict()
    rng = random.Random(0)
    for _ in range(50):
        point = sample_space(DEFAULT_SPACE, rng)
        cfg = apply_overrides(base, point)
        assert 1e-5 <= cfg.training.lr <= 1e-2
        assert 0.05 <= cfg.training.coordination.reg_tau <= 2.0
        assert cfg.training.coordination.interval in (5, 10, 20, 40)
        assert cfg.training.coordination.ema_decay in (0.5, 0.8, 0.9, 0.95)
        assert cfg.training.coordination.ratio_clip == point["training.coordination.ratio_clip"]
    assert base.to_dict() == before  # the base is never modified
    assert sample_space(DEFAULT_SPACE, random.Random(3)) == sample_space(DEFAULT_SPACE, random.Random(3))


@pytest.mark.parametrize("path,value,needle", [
    ("training.coordination.ema_decay", 1.5, "training.coordination.ema_decay: got 1.5"),
    ("training.coordination.interval", 0, "training.coordination.interval: got 0"),
    ("training.lr", -1e-3, "training.lr: got -0.001"),
    ("training.coordination.ratio_clip", 0.5, "training.coordination.ratio_clip: got 0.5"),
    ("training.coordination.emadecay", 0.9, "did you mean training.coordination.ema_decay"),
])
def test_bad_values_are_refused_with_the_field_named(path, value, needle):
    with pytest.raises(ConfigError) as e:
        apply_overrides(RunConfig(), {path: value})
    assert needle in str(e.value)


def test_space_edges_are_checked_before_any_trial():
    base = RunConfig()
    with pytest.raises(ConfigError, match=r"training\.coordination\.ema_decay = uniform\(0\.5, 1\).*1\.0"):
        validate_space({"training.coordination.ema_decay": uniform(0.5, 1.0)}, base)
    with pytest.raises(ConfigError, match=r"training\.coordination\.interval.*the value 0 is refused"):
        validate_space({"training.coordination.interval": choice(10, 0)}, base)
    with pytest.raises(ConfigError, match="loguniform needs 0 < low"):
        validate_space({"training.lr": loguniform(0.0, 1e-3)}, base)
    with pytest.raises(ConfigError, match="needs low < high"):
        validate_space({"training.lr": uniform(1e-3, 1e-3)}, base)
    with pytest.raises(ConfigError, match="unknown setting"):
        validate_space({"training.coordination.lambda": choice(0.1)}, base)


def test_parse_space_forms():
    dims = parse_space({"training.lr": {"loguniform": [1e-5, 1e-3]},
                        "training.coordination.interval": [10, 20],
                        "training.coordination.ratio_clip": 5.0,
                        "training.coordination.reg_tau": {"uniform": [0.1, 1.0]}})
    assert dims["training.lr"] == loguniform(1e-5, 1e-3)
    assert dims["training.coordination.interval"] == choice(10, 20)
    assert dims["training.coordination.ratio_clip"] == choice(5.0)
    assert dims["training.coordination.reg_tau"].kind == "uniform"
    with pytest.raises(ConfigError, match="unknown kind 'normal'"):
        parse_space({"training.lr": {"normal": [0, 1]}})
    with pytest.raises(ConfigError, match="empty"):
        parse_space({})


def test_modes_without_commit_constants_are_refused():
    clr = space_for_mode(DEFAULT_SPACE, "commit_clr", progress=lambda *_: None)
    assert "training.coordination.reg_lambda" not in clr and "training.coordination.reg_tau" not in clr
    assert "training.lr" in clr
    with pytest.raises(ConfigError, match="training.coordination.mode: got 'constant'"):
        space_for_mode(DEFAULT_SPACE, "constant")


def test_rung_steps():
    assert rung_steps(10, 4) == [3, 5, 8, 10]
    assert rung_steps(4, 2) == [2, 4]
    assert rung_steps(2, 4) == [1, 2]  # fewer steps than rungs: one rung per step
    assert rung_steps(1, 1) == [1]
    with pytest.raises(ValueError):
        rung_steps(0, 2)


def _row(trial, metric, rung, rungs=3, val_loss=0.5, status=None, error=None):
    last = {"rung": rung, "rungs": rungs}
    return {"trial": trial, "metric": metric, "val_loss": val_loss, "rung": rung, "rungs": rungs,
            "status": status or trial_status(last, error), "error": error, "training.lr": 1e-3}


def test_best_trial_is_the_best_survivor_of_the_top_rung():
    rows = [_row("a", 0.9, 1), _row("b", 0.6, 3, val_loss=0.4), _row("c", 0.6, 3, val_loss=0.3),
            _row("d", 0.2, 3), _row("e", float("nan"), 3), _row("f", 1.0, 3, error="boom")]
    assert [r["status"] for r in rows] == ["stopped", "completed", "completed", "completed", "completed", "error"]
    # "a" scored higher, but only at rung 1; "f" failed; "b"/"c" tie on the metric: lower val_loss wins
    assert pick_best(rows, "metric", "max")["trial"] == "c"
    assert pick_best(rows, "metric", "min")["trial"] == "d"
    with pytest.raises(RuntimeError, match="no trial reported a finite 'metric'.*boom"):
        pick_best([_row("x", float("nan"), 3), _row("y", 1.0, 3, error="boom")], "metric", "max")


def test_trial_table_marks_the_best():
    rows = [_row("t0", 0.8, 3), _row("t1", 0.4, 1)]
    text = format_trials(rows, ["training.lr"], "val_accuracy", best="t0")
    head = text.splitlines()[0].split()
    assert head == ["trial", "lr", "val_accuracy", "val_loss", "rungs", "status"]
    assert "t0 *" in text and "3/3" in text and "stopped" in text and text.endswith("* best trial")
    assert math.isclose(float(text.splitlines()[2].split()[3]), 0.8)


def test_resources_fit_two_trials_on_two_cpus():
    kw = {"cluster_cpus": 2.0, "concurrency": 2, "num_workers": 1, "use_gpu": False, "cpus_per_worker": None,
          "default_cpus_per_worker": 1.0, "torch_threads": None}
    workers = plan_resources(placement="workers", **kw)
    assert workers.cpus_per_worker == 0.49 and workers.trial_resources == {"CPU": 0.01}
    assert workers.torch_threads == 1
    trial = plan_resources(placement="trial", **kw)
    assert trial.cpus_per_worker == 0.5 and trial.trial_resources == {"CPU": 0.5}
    big = plan_resources(placement="workers", **{**kw, "cluster_cpus": 64.0, "concurrency": 4})
    assert big.cpus_per_worker == 1.0  # capped at training.cpus_per_worker
    with pytest.raises(ConfigError, match="search.max_concurrent_trials=2 .* 1 stays free for Ray Data"):
        plan_resources(placement="workers", **{**kw, "cpus_per_worker": 1.0})


def test_metric_and_settings_are_checked():
    check_metric("val_accuracy", "max", ["a"])
    check_metric("val_loss/a", "min", ["a"])
    with pytest.raises(ConfigError, match="search.metric: got 'accuracy'"):
        check_metric("accuracy", "max", ["a"])
    with pytest.raises(ConfigError, match="search.mode: got 'max' for search.metric=val_loss"):
        check_metric("val_loss", "max", ["a"])
    with pytest.raises(ConfigError, match="search.grace_period"):
        SearchSettings(rungs=2, grace_period=3).check()
    with pytest.raises(ConfigError, match="search.placement"):
        SearchSettings(placement="driver").check()
    # Fields SearchConfig does not have (yet) keep their defaults; those it has are read.
    assert SearchSettings.from_config(SearchConfig()) == SearchSettings()
    assert SearchSettings.from_config(SimpleNamespace(rungs=3, placement="trial")) == SearchSettings(
        rungs=3, placement="trial")


def test_base_values_read_the_config():
    cfg = RunConfig()
    assert base_values(cfg, list(DEFAULT_SPACE)) == {
        "training.lr": cfg.training.lr, "training.coordination.interval": 20,
        "training.coordination.ema_decay": 0.9, "training.coordination.reg_lambda": 0.01,
        "training.coordination.reg_tau": 0.5, "training.coordination.ratio_clip": 10.0}
