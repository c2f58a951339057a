"""bench/teacher_serve.py at a tiny size: two apps (batched, unbatched) over a random
2-layer Llama, a few requests per cell, no --write."""

from __future__ import annotations

import math

import pytest

from bench import teacher_serve as tsb


def test_percentile_and_payloads():
    assert tsb.percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert tsb.percentile([1.0, 2.0], 99) == pytest.approx(1.99)
    assert math.isnan(tsb.percentile([], 50))
    an = tsb.payloads("analyse", 5, 2)
    assert len(an) == 5 and all(len(b["items"]) == 2 and b["locate"] == "switch" for b in an)
    ids = [it["id"] for b in an for it in b["items"]]
    assert len(set(ids)) == 10  # distinct wrong items
    assert all(it["prediction"] != it["gold"] and it["steps"] for b in an for it in b["items"])
    sc = tsb.payloads("score", 3, 1)
    assert all(len(b["prompts"]) == 1 and b["prompts"][0].endswith("Answer:") and b["options"][0] for b in sc)
    assert all(o in ("A", "B", "C", "D", "E") for b in sc for o in b["options"][0])
    tx = tsb.payloads("score", 3, 1, by_text=True)  # teacher.score_candidates=text
    assert [b["options"] for b in tx] != [b["options"] for b in sc] and "answer itself" in tx[0]["prompts"][0]


def test_ratios_and_table_from_cells():
    cells = [tsb.Cell("batched", 8, 10, 10, 0, 2.0, 50.0, 90.0, 55.0, 3, 9, 1.0),
             tsb.Cell("unbatched", 8, 10, 10, 0, 5.0, 120.0, 300.0, 130.0, 10, 30, 1.0)]
    rat = tsb.ratios(cells)
    assert rat == {8: pytest.approx(2.5)}
    table = "\n".join(tsb.format_table(cells, rat))
    assert "| 8 | batched | 10 / 0 | 5.00 |" in table and "2.50×" in table and "3.33" in table
    assert "2.50× the throughput" in tsb.interpret(cells, rat)[0]


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.bench_run
def test_tiny_run_measures_both_modes(ray_local, tmp_path):
    from ray import serve

    model = tsb.tiny_model(tmp_path / "tiny")
    n = 6
    try:
        res = tsb.run_bench(None, ["teacher.max_new_tokens=4", "teacher.parse_retries=0",
                                   "teacher.serve.batch_wait_timeout_s=0.05"], str(model), requests=n,
                            concurrencies=[1, 4], replica_cpus=0.25, warmup=2, progress=lambda s: None)
    finally:
        serve.shutdown()
    cells = res["cells"]
    assert [(c.mode, c.concurrency) for c in cells] == [("batched", 1), ("unbatched", 1), ("batched", 4),
                                                        ("unbatched", 4)]
    for c in cells:
        assert c.requests == n and c.ok == n and c.errors == 0
        assert c.wall_s > 0 and c.rps == pytest.approx(n / c.wall_s)
        assert 0 < c.p50_ms <= c.p99_ms and c.backend_calls >= c.teacher_calls > 0
        if c.mode == "unbatched":
            assert c.teacher_calls == n  # one teacher call per request
        else:
            assert c.teacher_calls <= n
    by = {(c.mode, c.concurrency): c for c in cells}
    for k in (1, 4):
        assert res["ratios"][k] == pytest.approx(by[("batched", k)].rps / by[("unbatched", k)].rps)
    table = "\n".join(tsb.format_table(cells, res["ratios"]))
    assert table.count("\n") == 5 and f"{res['ratios'][4]:.2f}×" in table
    assert res["health"]["batched"]["replica"]["batching"] is True
    assert res["health"]["unbatched"]["replica"]["batching"] is False
