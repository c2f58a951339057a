"""Ray Tune + ASHA over a tiny LLaVA: trials on Ray Train V2, the best config back as YAML.

The student is tests/tiny.py's overfit LLaVA; its 5-item parquet is both the training
data and the 'validation split' (a search never sees test data).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from mmtune.config import load_config
from tests.tiny import make_overfit_student


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_overfit_student(tmp_path_factory.mktemp("search"))


def _cfg(root: Path, *extra: str):
    return load_config("configs/demo.yaml", [
        f"run.out_dir={root}", "training.max_steps=4", "training.batch_size=2", "training.lr=1e-4",
        "training.coordination.interval=2", "training.coordination.probe_size=2", "student.lora.r=4",
        "student.lora.alpha=8", "student.dtype=float32", "student.max_new_tokens=16", *extra])


def _wait_for_all_cpus(ray, want: float = 2.0, timeout: float = 20.0) -> float:
    deadline = time.time() + timeout
    while (cpus := ray.available_resources().get("CPU", 0.0)) < want and time.time() < deadline:
        time.sleep(0.5)
    return cpus


def test_val_metrics_score_the_overfit_student(tiny):
    from mmtune.config import StudentConfig
    from mmtune.models.student import load_student
    from mmtune.search.rungs import read_val_rows, val_metrics

    student, data, _ = tiny
    rows = read_val_rows({"colour": [str(data)]}, max_items=3, seed=0)
    assert len(rows["colour"]) == 3 and rows == read_val_rows({"colour": [str(data)]}, max_items=3, seed=0)
    model, processor = load_student(student, StudentConfig(dtype="float32"))
    model.train()
    m = val_metrics(model, processor, read_val_rows({"colour": [str(data)]}), max_new_tokens=16, batch_size=2)
    assert model.training  # put back in the mode it was in
    assert m["val_accuracy"] == 1.0 and m["val_items"] == 5 and m["val_no_answer"] == 0
    assert 0 < m["val_loss"] < 0.1 and m["val_accuracy/colour"] == 1.0


@pytest.mark.ray
def test_rung_gate_gives_every_rank_the_same_verdict(ray_local):
    from mmtune.search.trial import RungGate

    gate = ray_local.remote(num_cpus=0)(RungGate).remote()
    ray_local.get(gate.put.remote({"rung": 1}))
    assert ray_local.get(gate.next_result.remote()) == {"rung": 1}
    waiting = [gate.wait.remote(0), gate.wait.remote(0)]
    assert ray_local.wait(waiting, timeout=0.5)[0] == []  # nobody passes a rung Tune has not released
    ray_local.get(gate.release.remote(0))
    assert ray_local.get(waiting) == [True, True]
    later = gate.wait.remote(1)
    ray_local.get(gate.stop.remote())
    assert ray_local.get(later) is False and ray_local.get(gate.wait.remote(0)) is True
    ray_local.kill(gate)


@pytest.mark.ray
@pytest.mark.slow
def test_asha_search_on_ray_train_workers_stops_a_poor_trial_and_writes_the_best_config(ray_local, tiny, tmp_path):
    """One search, two trials, each a real Train worker group (one Tune run costs ~30 s
    here, so everything is checked on this one). One trial at a time, so ASHA's decision
    does not depend on which trial reports first: trial 0 is the base config (lr 1e-4),
    trial 1 the space's only point (lr 0.05), which wrecks the overfit student by the
    first rung."""
    from mmtune.search import SearchSettings, run_search
    from mmtune.search.results import pick_best

    student, data, _ = tiny
    cfg = _cfg(tmp_path, "search.num_samples=2", "search.max_concurrent_trials=1", "search.metric=val_loss",
               "search.mode=min")
    lines: list[str] = []
    result = run_search(cfg, [str(data)], {"colour": [str(data)]}, student=student, out_dir=tmp_path / "search",
                        progress=lines.append, space={"training.lr": [0.05]},
                        settings=SearchSettings(rungs=2, placement="workers"))

    assert result.num_trials == 2 and result.metric == "val_loss" and result.mode == "min"
    table = pq.read_table(result.trials_path).to_pylist()
    assert len(table) == 2 and Path(result.trials_path).with_suffix(".csv").is_file()
    for row in table:
        assert row["error"] is None and row["rungs"] == 2 and row["step"] == 2 * row["rung"]
        assert math.isfinite(row["val_accuracy"]) and math.isfinite(row["val_loss"])
        assert row["metric"] == row["val_loss"]
    # ASHA: the poor trial stops at the first rung, the good one runs to the last
    rows = {r["training.lr"]: r for r in table}
    assert rows[1e-4]["status"] == "completed" and rows[1e-4]["rung"] == 2
    assert rows[0.05]["status"] == "stopped" and rows[0.05]["rung"] == 1
    assert rows[0.05]["val_loss"] > 10 * rows[1e-4]["val_loss"]
    best = pick_best(table, "metric", "min")
    assert result.best_trial == best["trial"] and result.best_metric == best["metric"]
    assert result.best_overrides == {"training.lr": 1e-4}

    loaded = load_config(result.best_config_path)  # the pipeline reads it as any config
    assert loaded.training.lr == 1e-4
    for p in ("interval", "ema_decay", "reg_lambda", "reg_tau", "ratio_clip"):
        assert getattr(loaded.training.coordination, p) == getattr(cfg.training.coordination, p)
    assert loaded.student.lora.r == 4 and loaded.training.max_steps == 4  # the rest is the base config

    rungs = pq.read_table(result.rungs_path).to_pylist()
    assert len(rungs) == sum(r["rung"] for r in table) == 3
    summary = "\n".join(lines)
    assert "trial" in summary and "* best trial" in summary and "rung 1/2" in summary
    assert _wait_for_all_cpus(ray_local) == 2.0  # every trial's worker group was released


def test_search_job_names_config_errors(tmp_path, capsys):
    from ray_jobs.search_scheduler import main

    assert main(["--config", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "space.yaml").write_text("- training.lr\n")
    assert main(["--space", str(tmp_path / "space.yaml"), "data.source=files", f"data.corpus={tmp_path}"]) == 2
    assert "expected a mapping of dotted paths" in capsys.readouterr().err
