"""mmtune's metrics: declared once (mmtune/metrics.py), recorded by the real code paths,
scraped from the node's Prometheus endpoint over HTTP, and in step with the Grafana
dashboard (cluster/grafana/mmtune.json) and docs/operations.md.

The Ray test drives real code in the driver: the data stage of a real ``Pipeline``
imports JSONL target files with bad rows (quarantine at import), its select stages draw
two rounds, and a BM25 selection is counted the way the select stage counts it. The
other processes' metrics are scraped where those processes are tested already: the
teacher's Serve replicas in tests/teacher/test_serve.py (its app is up there), the Train
workers' in tests/training/test_trainer.py.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmtune import metrics as M

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "cluster" / "grafana" / "mmtune.json"
OPERATIONS = ROOT / "docs" / "operations.md"


# --------------------------------------------------------------------------- declarations
def test_every_metric_is_declared_once_with_a_valid_name_and_ascii_description():
    names = M.metric_names()
    assert len(names) == len(set(names))
    assert all(re.fullmatch(r"ray_mmtune_[a-z0-9_]+", n) for n in names)
    for name, spec in M.SPECS.items():
        assert spec.kind in ("gauge", "counter", "histogram"), name
        assert spec.description.isascii() and spec.description, name  # Ray registers it in C++
        assert spec.tags and len(spec.tags) == len(set(spec.tags)), name
        assert bool(spec.boundaries) == (spec.kind == "histogram"), name
        assert list(spec.boundaries) == sorted(spec.boundaries), name
        # Ray's exporter appends _total to counters: a declared name ending so would double it
        assert not name.endswith("_total"), name
    families = {n.split("_")[0] for n in M.SPECS}
    assert families == {"train", "pipeline", "teacher", "retrieval"}
    # the teacher module's names are the registry's
    from mmtune.teacher import serve as ts

    assert set(ts.metric_names()) <= set(names) and "ray_mmtune_teacher_latency_s_bucket" in names
    assert ts.METRICS["requests"] == ("counter", M.SPECS["teacher_requests"].tags,
                                      M.SPECS["teacher_requests"].description)


def test_quarantine_reasons_map_to_a_bounded_set_of_classes():
    from mmtune.data.validate import validate_sample

    cases = {
        "text too long: response has 9000 chars > 8192 (raise data.max_text_chars)": "text_too_long",
        "invalid json: Expecting value: line 1 column 1 (char 0)": "invalid_json",
        "duplicate id: 'a' was already imported": "duplicate_id",
        "image not found: /x/y.png": "image_not_found",
        "no skills annotated (run the teacher's annotation, or set retrieval.text)": "no_skills_annotated",
        "empty instruction": "empty_instruction",
        "undecodable image: cannot identify image file": "undecodable_image",
        "unreadable row group: row group 2 of 3 (rows 10-19) does not decode": "unreadable_row_group",
        "embedder failed: CUDA out of memory; fix or drop the row": "embedder_failed",
        "something nobody declared": "other",
        "": "other",
    }
    for reason, cls in cases.items():
        assert M.reason_class(reason) == cls, reason
    # a real validation reason maps to its class, not to "other"
    bad = {"id": "x", "task": "", "source": "", "image": b"not a png", "audio": None, "instruction": "q",
           "response": "r", "steps": [], "answer": "", "options": None, "skills": []}
    assert M.reason_class(validate_sample(bad, max_text_chars=100)) == "undecodable_image"


def test_recorders_are_inert_outside_ray():
    code = ("import ray; from mmtune import metrics as M; assert not ray.is_initialized();"
            "p = M.PipelineMetrics('x', rounds=1, planned=3); t = M.TeacherMetrics(); r = M.TrainMetrics('x');"
            "assert not (p.active or t.active or r.active);"
            "p.wrap_stage(lambda n, c, i, fn, *a: ('k', fn()))('select_1', {}, {}, lambda: {});"
            "t.inc('requests', route='score', status='ok'); r.record({'loss': 1.0});"
            "M.record_quarantine('import', 'corpus', {'bad type': 2}); print('inert')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0 and "inert" in out.stdout, out.stderr[-2000:]


def test_planned_stages_match_the_stage_lists_of_run_all(tmp_path):
    from mmtune.config import load_config
    from mmtune.pipeline import Pipeline

    # the stage lists tests/test_pipeline.py checks for `random`, and the teacher methods' layout
    per_method = {"random": 3 + 2 * 3, "instruction_similarity": 4 + 2 * 3, "dense": 6 + 2 * 4, "bm25": 6 + 2 * 4}
    for method, n in per_method.items():
        cfg = load_config(None, [f"run.out_dir={tmp_path}", f"run.name={method}", f"retrieval.method={method}",
                                 "retrieval.rounds=2"])
        assert Pipeline(cfg, progress=lambda _: None).planned_stages() == n, method


# --------------------------------------------------------------------------- the Grafana dashboard
def _exprs(obj) -> list[str]:
    out = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in ("expr", "query", "definition") and isinstance(v, str):
                out.append(v)
            else:
                out += _exprs(v)
    elif isinstance(obj, list):
        for v in obj:
            out += _exprs(v)
    return out


def test_grafana_dashboard_is_importable_and_uses_only_declared_metrics():
    d = json.loads(DASHBOARD.read_text())
    assert d["title"] and d["uid"] and isinstance(d["schemaVersion"], int) and d.get("id") is None
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    panels = [p for p in d["panels"] if p["type"] != "row"]
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    for p in panels:
        assert p["datasource"]["uid"] == "${datasource}" and p["targets"], p["title"]
        assert all(t["expr"] and t["refId"] for t in p["targets"]), p["title"]
        assert {"x", "y", "w", "h"} <= set(p["gridPos"]), p["title"]

    declared = set(M.metric_names())
    used = {m for e in _exprs(d) for m in re.findall(r"\bray_mmtune_[a-z0-9_]+", e)}
    assert used and used <= declared, sorted(used - declared)
    # every family has panels: training kappa/lrs/loss/throughput, pipeline progress and
    # quarantine, teacher rate and latency percentiles, retrieval counts
    for must in ("ray_mmtune_train_kappa_bar", "ray_mmtune_train_lr_encoder", "ray_mmtune_train_lr_llm",
                 "ray_mmtune_train_loss", "ray_mmtune_train_samples_per_s", "ray_mmtune_pipeline_stages_done",
                 "ray_mmtune_pipeline_stages_planned", "ray_mmtune_pipeline_rows_quarantined_total",
                 "ray_mmtune_teacher_requests_total", "ray_mmtune_teacher_latency_s_bucket",
                 "ray_mmtune_retrieval_selected_total", "ray_mmtune_retrieval_queries_total"):
        assert must in used, must
    quantiles = [e for e in _exprs(d) if "histogram_quantile" in e]
    assert quantiles and all("_bucket" in e and "le" in e for e in quantiles)
    # a panel plots a counter as a rate or an increase, never as a raw cumulative value
    for e in (t["expr"] for p in panels for t in p["targets"]):
        for m in re.findall(r"\bray_mmtune_[a-z0-9_]+_total\b", e):
            assert re.search(rf"(rate|increase)\(\s*{m}", e), e


def test_operations_doc_lists_every_metric():
    text = OPERATIONS.read_text()
    section = text[text.index("## 7. Metrics"):]
    section = section[:section.index("\n## ", 5)]
    for name, spec in M.SPECS.items():
        base = f"ray_mmtune_{name}"
        shown = base + ("_total" if spec.kind == "counter" else "")
        assert f"`{shown}" in section, shown
        row = next(ln for ln in section.splitlines() if ln.startswith(f"| `{shown}"))
        assert spec.kind in row and all(f"`{t}`" in row for t in spec.tags), row
    assert "cluster/grafana/mmtune.json" in section and "prometheus.yml" in section


# --------------------------------------------------------------------------- the real thing, over HTTP
TOPICS = ["How many apples are on the table?", "What colour is the car?", "Which digit is written here?"]


def _write_inputs(d: Path) -> tuple[Path, Path, Path]:
    """A Sample-parquet corpus (used in place), and JSONL target files whose val split has
    three bad rows among three good ones."""
    from mmtune.data.schema import SAMPLE_SCHEMA

    rows = [{"id": f"c{i:03d}", "task": "generic", "source": "mx", "image": None, "audio": None,
             "instruction": TOPICS[i % 3], "response": "Look.\nAnswer: 1", "steps": ["Look."], "answer": "1",
             "options": None, "skills": []} for i in range(24)]
    corpus = d / "corpus.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA), corpus)
    val = [json.dumps({"id": f"v{i}", "instruction": q, "response": "Answer: 1"}) for i, q in enumerate(TOPICS)]
    val += ["{not json",  # invalid_json
            json.dumps({"id": "v9", "instruction": "  ", "response": "Answer: 2"}),  # empty_instruction
            json.dumps({"id": "v0", "instruction": "again", "response": "Answer: 3"})]  # duplicate_id
    (d / "val.jsonl").write_text("\n".join(val) + "\n")
    (d / "test.jsonl").write_text(json.dumps({"id": "t0", "instruction": "Count.", "response": "Answer: 1"}) + "\n")
    return corpus, d / "val.jsonl", d / "test.jsonl"


def _wait_for(port: int, checks: dict, deadline_s: float) -> dict:
    """Scrape until every check passes (Ray exports every report interval, 10 s by
    default) or the deadline."""
    deadline = time.time() + deadline_s
    while True:
        got = M.scrape(f"http://127.0.0.1:{port}/metrics")
        failed = [k for k, ok in checks.items() if not ok(got)]
        if not failed or time.time() > deadline:
            return {"metrics": got, "failed": failed}
        time.sleep(1.0)


def _series(got: dict, name: str, **labels: str) -> list[tuple[dict, float]]:
    return [(lb, v) for lb, v in got.get(name, []) if all(lb.get(k) == v for k, v in labels.items())]


def _total(got: dict, name: str, **labels: str) -> float:
    return sum(v for _, v in _series(got, name, **labels))


@pytest.mark.ray
@pytest.mark.slow
def test_pipeline_and_retrieval_metrics_reach_prometheus(ray_local, tmp_path):
    """What the pipeline driver records, on the node's Prometheus endpoint over HTTP."""
    from mmtune.config import load_config
    from mmtune.data.catalog import data_paths
    from mmtune.pipeline import Pipeline
    from mmtune.retrieval.index import BM25Index
    from mmtune.retrieval.select import select_bm25

    tag = uuid.uuid4().hex[:6]  # counters live as long as the session's Ray: this test's series carry a tag
    run, target = f"mx-{tag}", f"mx{tag}"
    corpus, val, test = _write_inputs(tmp_path)
    targets = json.dumps([{"name": target, "val": str(val), "test": str(test)}])
    cfg = load_config(None, [f"run.name={run}", f"run.out_dir={tmp_path / 'runs'}",
                             f"run.cache_dir={tmp_path / 'cache'}", "data.source=files", f"data.corpus={corpus}",
                             f"data.targets={targets}", "retrieval.method=random", "retrieval.budget=6",
                             "retrieval.rounds=2"])
    # the data stage (import with quarantine) and two select stages of a real Pipeline
    p = Pipeline(cfg, progress=lambda _: None)
    kd, p.data = p.run.stage("data", {}, {}, lambda: p._data(data_paths))
    p.keys, p.pool_files = {"data": kd, "student": "none"}, p.data["corpus"]
    taken: list[str] = []
    for rnd in (1, 2):
        _, sel = p.select(rnd, None, taken, {"previous": kd})
        taken += [row["id"] for row in pq.read_table(sel["path"]).to_pylist()]
    assert len(taken) == len(set(taken)) == 6
    # a retrieval by two queries over BM25, counted the way the select stage counts it
    bm25 = BM25Index.build(TOPICS * 4, [f"c{i:03d}" for i in range(12)])
    s = select_bm25(["count the apples", "colour of the car"], 4, bm25, round=1)
    p.metrics.selection(3, "bm25", s.summary())

    node = ray_local.nodes()[0]["MetricsExportPort"]
    checks = {
        "stages done": lambda g: _total(g, "ray_mmtune_pipeline_stages_done", run=run) == 3,
        "import quarantine": lambda g: _total(g, "ray_mmtune_pipeline_rows_quarantined_total",
                                              stage="import", source=f"{target}-val") == 3,
        "selected": lambda g: _total(g, "ray_mmtune_retrieval_selected_total", run=run) == 6 + 4,
        "queries": lambda g: _total(g, "ray_mmtune_retrieval_queries_total", run=run) == 2,
        "round 3": lambda g: _total(g, "ray_mmtune_retrieval_round_selected", run=run, round="3") == 4,
    }
    res = _wait_for(node, checks, deadline_s=45)
    got = res["metrics"]
    assert not res["failed"], (res["failed"], {k: v for k, v in got.items() if "pipeline" in k or "retrieval" in k})

    # pipeline progress: 3 stages of the 9 a random run has, round 2 last, seconds recorded
    one = {k: [v for _, v in _series(got, f"ray_mmtune_pipeline_{k}", run=run)] for k in
           ("stages_planned", "stages_done", "rounds", "round")}
    assert one == {"stages_planned": [9], "stages_done": [3], "rounds": [2], "round": [2]}, one
    secs = {lb["stage"]: v for lb, v in _series(got, "ray_mmtune_pipeline_stage_seconds", run=run)}
    assert set(secs) == {"data", "select_1", "select_2"} and all(0 < v < 60 for v in secs.values())
    assert all(v == 0 for _, v in _series(got, "ray_mmtune_pipeline_stage_running", run=run))
    outcomes = {(lb["stage"], lb["outcome"]): v for lb, v in _series(got, "ray_mmtune_pipeline_stages_total", run=run)}
    assert outcomes == {(st, "done"): 1 for st in secs}
    # quarantine: one series per reason class, the three bad val rows by what was wrong
    q = {lb["reason"]: v for lb, v in _series(got, "ray_mmtune_pipeline_rows_quarantined_total", stage="import",
                                              source=f"{target}-val")}
    assert q == {"invalid_json": 1, "empty_instruction": 1, "duplicate_id": 1}
    # retrieval: per round budget 3, selected 3, no shortfall; the BM25 round took 4 for 2 queries
    for name, want in (("budget", 3), ("selected", 3), ("queries", 0), ("shortfall", 0)):
        per_round = {lb["round"]: v for lb, v in _series(got, f"ray_mmtune_retrieval_round_{name}", run=run)}
        assert per_round == {"1": want, "2": want, "3": {"budget": 4, "selected": 4, "queries": 2}.get(name, 0)}, name
    by_method = {lb["method"]: v for lb, v in _series(got, "ray_mmtune_retrieval_selected_total", run=run)}
    assert by_method == {"random": 6, "bm25": 4}
    assert _total(got, "ray_mmtune_retrieval_searches_total", run=run, method="bm25") >= 1
    # every mmtune series Ray exported is one that metric_names() declares
    assert {k for k in got if k.startswith("ray_mmtune_")} <= set(M.metric_names())
