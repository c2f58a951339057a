"""bench/embed_throughput.py at a tiny size: the measurement functions on 64 SkillWorld texts."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench import embed_throughput as et
from mmtune.config import load_config

N, BATCH = 64, 16


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    cfg = load_config(str(et.ROOT / "configs" / "demo.yaml"),
                      [f"run.cache_dir={tmp_path_factory.mktemp('embcache')}", "data.skillworld.corpus_per_task=10",
                       "data.skillworld.generic_size=100", "data.skillworld.generic_eval_per_task=8",
                       "data.skillworld.val_size=10", "data.skillworld.test_size=10"])
    t, info = et.load_texts(cfg, N, progress=lambda s: None)
    assert len(t) == N and info["distinct"] <= N and all(isinstance(x, str) and "\n" in x for x in t)
    return t


@pytest.fixture(scope="module")
def plain(texts):
    return et.measure_plain(texts, batch_size=BATCH, threads=1, keep_vectors=True)


def test_steady_rate_skips_the_first_batches():
    stamps = [(10, 5.0), (10, 6.0), (10, 7.0), (4, 8.0)]
    assert et.steady_rate(stamps, 1) == (24 / 3.0, 3.0)
    assert et.steady_rate(stamps, 2) == (14 / 2.0, 2.0)
    assert all(math.isnan(x) for x in et.steady_rate(stamps[:2], 2))


def test_plain_loop_measurement(plain):
    assert plain.run == "plain" and plain.layout == "loop" and plain.rows == N and plain.output_batches == N // BATCH
    for v in (plain.steady_rows_per_s, plain.end_to_end_rows_per_s, plain.steady_window_s, plain.end_to_end_s):
        assert math.isfinite(v) and v > 0
    assert plain.vectors.shape == (N, 384)
    np.testing.assert_allclose(np.linalg.norm(plain.vectors, axis=1), 1.0, atol=1e-5)


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.bench_run
def test_one_actor_pipeline_matches_the_plain_loop(ray_local, texts, plain):
    r = et.measure_ray(texts, batch_size=BATCH, actors=1, keep_vectors=True)
    assert r.run == "ray-1" and r.rows == N and r.input_blocks == N // BATCH
    assert r.output_batches == N // BATCH  # one output batch per input block
    assert len(r.keys) == N and sorted(r.keys, key=int) == [str(i) for i in range(N)]  # every row exactly once
    assert math.isfinite(r.steady_rows_per_s) and r.steady_rows_per_s > 0 and r.end_to_end_s > 0
    assert r.vectors.shape == (N, 384)  # back in the order of the texts
    np.testing.assert_allclose(np.linalg.norm(r.vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(r.vectors, plain.vectors, atol=1e-5)
    rows = [plain, r]
    et.compare([r], plain)
    assert r.max_abs_diff < 1e-5
    rat = et.ratios(rows)
    assert rat["ray-1"]["steady_vs_plain"] > 0 and rat["ray-1"]["scaling_steady"] == pytest.approx(1.0)
    table = "\n".join(et.format_table(rows, rat))
    assert "| ray-1 | cpu | batch blocks (4) | 1 × ? |" in table
