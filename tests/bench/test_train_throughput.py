"""bench/train_throughput.py at a tiny size: the measurement functions and their result structure."""

from __future__ import annotations

import math

import pytest

from bench import train_throughput as tp
from mmtune.config import LoraSettings, StudentConfig, TinyLlavaPreset, load_config

PRESET = TinyLlavaPreset(vision_hidden=32, vision_layers=1, vision_heads=2, text_hidden=32,
                         text_layers=1, text_heads=2, text_intermediate=64, vocab_size=400)
STEPS, WARMUP, BATCH = 4, 1, 4


@pytest.fixture(scope="module")
def cfg():
    # a tiny run: Ray Train must report every step for a steady window within 4 steps
    c = load_config(str(tp.ROOT / "configs" / "demo.yaml"), ["training.report_every=1"])
    c.student = StudentConfig(preset=PRESET, lora=LoraSettings(r=4, alpha=8), dtype="float32")
    return c


@pytest.fixture(scope="module")
def setup(cfg, tmp_path_factory):
    return tp.prepare(cfg, tmp_path_factory.mktemp("tp"), 24, progress=lambda s: None)


def _check(row: tp.Row, run: str, workers: int) -> None:
    assert row.run == run and row.workers == workers and row.steps == STEPS
    assert row.global_batch == BATCH * workers
    for v in (row.steady_samples_per_s, row.instep_samples_per_s, row.steady_window_s, row.end_to_end_s):
        assert math.isfinite(v) and v > 0


def test_steady_rate_leaves_out_warmup_and_last_step():
    stamps = [(1, 10.0), (2, 11.0), (3, 12.0), (4, 13.0), (5, 100.0)]  # step 5 checkpoints: left out
    assert tp.steady_rate(stamps, 8, warmup=2) == (16 / 2.0, 2.0)
    with pytest.raises(ValueError):
        tp.steady_rate(stamps[:3], 8, warmup=2)
    # Ray Train reports every report_every steps: the window runs between reports
    sparse = [(10, 5.0), (20, 7.0), (30, 9.0), (40, 50.0)]
    assert tp.steady_rate(sparse, 16, warmup=5) == (20 * 16 / 4.0, 4.0)


def test_peak_table():
    assert tp.peak_bf16("NVIDIA H100 80GB HBM3") == 989e12
    assert tp.peak_bf16("NVIDIA H100 PCIe") == 756e12
    assert tp.peak_bf16("NVIDIA H200") == 989e12
    assert tp.peak_bf16("Some Future GPU") is None


def test_plain_loop_measurement(cfg, setup):
    assert setup.n_samples == 24 and setup.student_dir.is_dir() and setup.train_parquet.is_file()
    rows = tp.measure_all(cfg, setup, modes=["constant"], steps=STEPS, batch=BATCH, warmup=WARMUP, threads=1,
                          workers=(), progress=lambda s: None)
    assert len(rows) == 1
    _check(rows[0], "plain", 1)
    assert rows[0].poll_s is None and rows[0].cpus_per_worker is None


def test_gpu_section_code_path_on_cpu(cfg, setup):
    """The GPU measurement (full fine-tuning, tokens/s, MFU) run on the CPU in bf16 at a tiny size."""
    g = tp.measure_gpu(cfg, setup, steps=STEPS, batch=BATCH, warmup=WARMUP, device="cpu",
                       preset=PRESET.model_dump(), dtype="bfloat16")
    assert g["steady_samples_per_s"] > 0 and g["tokens_per_s"] > g["steady_samples_per_s"]
    assert g["params"] > 0 and g["mfu"] is None and g["peak_flops"] is None
    assert "unknown peak" in tp.format_gpu(g, None)[0]


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.bench_run
def test_plain_and_one_ray_worker(ray_local, cfg, setup):
    rows = tp.measure_all(cfg, setup, modes=["constant"], steps=STEPS, batch=BATCH, warmup=WARMUP, threads=1,
                          workers=(1,), poll_s=tp.RAY_DEFAULT_POLL_S, progress=lambda s: None)
    assert [r.run for r in rows] == ["plain", "ray-1"]
    _check(rows[0], "plain", 1)
    _check(rows[1], "ray-1", 1)
    assert rows[1].cpus_per_worker == 1.0  # 1 worker on the 2-CPU test Ray leaves 1 CPU for Ray Data
    (rat,) = tp.ratios(rows)
    assert rat["mode"] == "constant" and rat["overhead_steady"] > 0 and "scaling_steady" not in rat
    table = "\n".join(tp.format_rows(rows) + tp.format_ratios([rat]))
    assert "| constant | ray-1 | 2 |" in table
