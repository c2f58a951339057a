"""Ray Train adapter: two CPU workers (DDP on gloo), checkpoints, metrics (recovery: tests/faults)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from mmtune.config import CoordinationConfig, LoraSettings, StudentConfig, TinyLlavaPreset, TrainingConfig
from mmtune.data.schema import SAMPLE_SCHEMA
from mmtune.models.presets import build_tiny_llava

PRESET = TinyLlavaPreset(vision_hidden=32, vision_layers=1, vision_heads=2, text_hidden=32,
                         text_layers=2, text_heads=2, text_intermediate=64, vocab_size=400)
COLOURS = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200), "yellow": (220, 220, 40)}
STUDENT = StudentConfig(lora=LoraSettings(r=4, alpha=8, dropout=0.1), dtype="float32")


def _png(rgb) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), rgb).save(buf, format="PNG")
    return buf.getvalue()


def _rows(n):
    names = list(COLOURS)
    out = []
    for i in range(n):
        c = names[i % 4]
        resp = f"The square fills the image.\nIt is {c}.\nAnswer: {c}"
        out.append({"id": f"s{i:03d}", "task": "colour", "source": "test", "image": _png(COLOURS[c]),
                    "audio": None, "instruction": "What colour is the square?", "response": resp,
                    "steps": ["The square fills the image.", f"It is {c}."], "answer": c, "options": None,
                    "skills": []})
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("trainer")
    rows = _rows(12)
    torch.manual_seed(0)
    texts = [r["instruction"] + " " + r["response"] for r in rows] * 4
    model, processor = build_tiny_llava(PRESET, texts, image_size=32)
    model.save_pretrained(root / "student")
    processor.save_pretrained(root / "student")
    pq.write_table(pa.Table.from_pylist(rows[:6], schema=SAMPLE_SCHEMA), root / "part-0.parquet")
    pq.write_table(pa.Table.from_pylist(rows[6:], schema=SAMPLE_SCHEMA), root / "part-1.parquet")
    return root


def _trainer(setup, tmp_path, name, extra=None):
    import ray.data

    from mmtune.training.trainer import build_trainer

    tc = TrainingConfig(lr=3e-3, batch_size=2, max_steps=4, warmup_ratio=0.0, num_workers=2, use_gpu=False,
                        checkpoint_every=2, max_failures=1,
                        coordination=CoordinationConfig(mode="commit", interval=2, reg_lambda=0.1))
    # materialized up front: on 2 CPUs, each worker re-running the parquet read costs ~10 s
    ds = ray.data.read_parquet([str(setup / "part-0.parquet"), str(setup / "part-1.parquet")]).materialize()
    # 2 workers × 0.5 CPU: on the 2-CPU test Ray, 2 × 1 CPU leaves Ray Data no CPU for the
    # ingest and it waits forever (ResourceBudget backpressure).
    return build_trainer(tc, STUDENT, setup / "student", ds, storage_path=tmp_path / "store", name=name,
                         seed=0, cpus_per_worker=0.5, torch_threads=1, extra_config=extra)


def _check_result(result):
    from mmtune.training.checkpoint import read_state

    assert result.error is None
    m = result.metrics
    assert m["step"] == 4
    for k in ("loss", "kappa_bar", "lr_encoder", "lr_llm", "grad_norm_encoder", "grad_norm_llm", "samples_per_s"):
        assert math.isfinite(m[k]), k
    ck = Path(result.checkpoint.path)
    for f in ("adapter/adapter_model.safetensors", "optimizer.pt", "schedule.json", "state.json",
              "rng.pt", "rng_rank1.pt"):  # rank 1's RNG state merged into rank 0's directory
        assert (ck / f).is_file(), f
    st = read_state(ck)
    assert st["step"] == 4 and st["n_samples"] == 6  # 12 rows over 2 workers
    assert st["epoch"] == 1 and st["offset"] == 2  # 3 batches of 2 per epoch: step 4 = epoch 1, 1 batch in


@pytest.mark.ray
@pytest.mark.slow
def test_two_workers_train_and_checkpoint(ray_local, setup, tmp_path):
    result = _trainer(setup, tmp_path, "t2").fit()
    _check_result(result)
    _check_dashboard_metrics(ray_local, "t2", result.metrics)


def _check_dashboard_metrics(ray, run, last):
    """κ and the learning rates reach the node's Prometheus endpoint, tagged by run/rank."""
    import time

    from mmtune.metrics import scrape

    port = ray.nodes()[0]["MetricsExportPort"]
    want = {"ray_mmtune_train_kappa_bar", "ray_mmtune_train_lr_encoder", "ray_mmtune_train_lr_llm",
            "ray_mmtune_train_loss", "ray_mmtune_train_steps_total"}
    deadline = time.time() + 60  # Ray exports custom metrics every few seconds
    while True:
        got = {k: [(lb, v) for lb, v in vs if lb.get("run") == run] for k, vs in
               scrape(f"http://127.0.0.1:{port}/metrics").items()}
        got = {k: v for k, v in got.items() if v}
        steps = sum(v for _, v in got.get("ray_mmtune_train_steps_total", []))
        if want <= set(got) and steps >= 8 or time.time() > deadline:
            break
        time.sleep(2)
    assert want <= set(got), sorted(got)
    assert {lb["rank"] for lb, _ in got["ray_mmtune_train_loss"]} == {"0", "1"}
    assert steps == 8  # 4 steps on each of 2 workers
    rank0 = {k: v for k, vals in got.items() for lb, v in vals if lb["rank"] == "0"}
    assert rank0["ray_mmtune_train_lr_llm"] == pytest.approx(last["lr_llm"], rel=1e-6)
    assert rank0["ray_mmtune_train_kappa_bar"] == pytest.approx(last["kappa_bar"], rel=1e-6)


# Recovery from a failure mid-run (a worker node killed, resume from the last checkpoint,
# every step exactly once, the same final loss) is tested on a 3-node cluster in
# tests/faults/test_train_node_loss.py.


def test_worker_group_that_starves_ray_data_is_refused():
    from mmtune.training.trainer import check_cpu_headroom

    check_cpu_headroom(2, 0.5, 2.0)  # leaves 1 CPU for reads: fine
    with pytest.raises(ValueError, match="leaving none for Ray Data"):
        check_cpu_headroom(2, 1.0, 2.0)


def test_the_report_echo_of_ray_train_is_quieted_in_the_worker():
    import logging

    from ray.train.v2._internal.execution import context

    from mmtune.training.trainer import _quiet_report_echo

    _quiet_report_echo()
    # the logger that writes "Reporting training result N: TrainingReport(...)" per report
    assert context.logger is logging.getLogger(context.__file__)
    assert not context.logger.isEnabledFor(logging.INFO)
