"""The teacher's Ray Serve app over real HTTP on loopback, with a tiny random HF Llama.

Replies of a random model are garbage: the tests check shapes, statuses, HTTP codes,
error bodies and batching, not content. The pure helpers are tested without Ray first.
"""

from __future__ import annotations

import asyncio
import json
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
import yaml

from mmtune.config import load_config
from mmtune.teacher import serve as ts
from mmtune.teacher.backend import LOGPROB_FLOOR, TeacherError
from mmtune.teacher.teacher import Analysis

from .conftest import free_port, serve_overrides, serving, wrong_items

ROOT = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- pure helpers
def test_http_error_mapping_names_the_cause_without_traceback():
    class Wrapped(Exception):  # like RayTaskError: a traceback in str(), the original in .cause
        def __init__(self, cause):
            super().__init__("Traceback (most recent call last):\n  File x\nboom")
            self.cause = cause

    cases = [(TeacherError("upstream said 500"), 502, "backend"), (NotImplementedError("no logprobs"), 501, "no"),
             (ValueError("option '' encodes to no tokens"), 422, "refused"), (RuntimeError("oops"), 500, "internal")]
    for exc, code, word in cases:
        err = ts.http_error_for(Wrapped(exc))
        assert err.status == code and word in err.message and str(exc) in err.message
        assert "Traceback" not in err.message
        body = json.loads(err.response().body)
        assert body["error"]["message"] == err.message and body["error"]["type"]
    from ray.serve.exceptions import BackPressureError

    assert ts.http_error_for(BackPressureError(10, 10)).status == 503


def test_small_helpers():
    assert ts._apply_stop("abc\nStep 2", ["\n"]) == ("abc", True)
    assert ts._apply_stop("abc", "zz") == ("abc", False)
    assert ts.LOGPROB_FLOOR == LOGPROB_FLOOR  # serve.py keeps its own copy (no torch import in the ingress)
    assert ts._finite({"a": [float("-inf"), 1.0, float("nan")]}) == {"a": [LOGPROB_FLOOR, 1.0, None]}
    assert ts._split([1, 2, 3, 4, 5], [2, 0, 3]) == [[1, 2], [], [3, 4, 5]]
    names = ts.metric_names()
    assert "ray_mmtune_teacher_requests_total" in names and "ray_mmtune_teacher_latency_s_bucket" in names
    assert all(d.isascii() for _, _, d in ts.METRICS.values())  # Ray registers descriptions in C++
    cfg = load_config(None, ["teacher.port=8123", "teacher.serve.route_prefix=/t/"])
    assert ts.teacher_url(cfg) == "http://127.0.0.1:8123/t"
    assert ts.served_model_name(cfg.teacher) == ts.BUILTIN_MODEL_NAME


def test_builder_args_and_config_file_validate():
    with pytest.raises(Exception, match="extra"):
        ts.BuilderArgs.model_validate({"config": None, "overide": []})
    from ray.serve.schema import ServeDeploySchema

    spec = ServeDeploySchema.model_validate(yaml.safe_load((ROOT / "configs" / "serve_teacher.yaml").read_text()))
    app = spec.applications[0]
    assert app.import_path == "mmtune.teacher.serve:app_builder" and spec.http_options.host == "127.0.0.1"
    args = ts.BuilderArgs.model_validate(app.args)
    load_config(ROOT / args.config, args.overrides)  # the file's run config and overrides are valid
    with pytest.raises(ValueError, match="builtin_dir"):
        ts.build_app(load_config(None))  # builtin without its directory: says what to do


class _FakeBackend:
    """Counts calls; a prompt "bad" makes score_options fail (to test isolation)."""

    name = "fake"

    def score_options(self, prompts, options):
        if "bad" in prompts:
            raise ValueError("bad prompt")
        return [[-1.0 * (i + 1) for i, _ in enumerate(o)] for o in options]

    def generate(self, prompts, max_new_tokens=None, temperature=0.0):
        return [f"{p}|{max_new_tokens}|{temperature}" for p in prompts]


def _model(batching: bool):
    """TeacherModel's class built outside Serve, over the fake backend. (@serve.batch itself
    only runs inside a replica: the HTTP tests below cover it.)"""
    cfg = load_config(None, ["teacher.backend=openai", "teacher.base_url=http://127.0.0.1:9/v1",
                             "teacher.name_or_path=fake", f"teacher.serve.batching={batching}"])
    m = ts.TeacherModel.func_or_class(cfg.teacher.model_dump(mode="json"))
    m.backend = ts._CountingBackend(_FakeBackend())
    m.teacher.backend = m.backend
    return m


def test_fused_call_splits_results_and_isolates_a_failing_request():
    reqs = [(["p1", "p2"], [["A", "B"], ["A"]]), (["bad"], [["A"]]), (["p3"], [["A", "B", "C"]])]
    m = _model(batching=True)
    got = asyncio.run(m._run_fused("score", reqs, m._score_fused, ts._key_any))
    assert got[0] == [[-1.0, -2.0], [-1.0]] and got[2] == [[-1.0, -2.0, -3.0]]
    assert isinstance(got[1], ts._Failed) and "bad prompt" in str(got[1].exc)
    st = m.get_stats()
    # the fused call failed, then each request ran alone: 1 + 3 calls for 3 requests
    assert st["teacher_calls"]["score"] == 4 and st["backend_calls"]["score_options"] == 4
    assert st["max_fused_requests"]["score"] == 3


def test_unbatched_path_calls_once_per_request_and_raises_per_request():
    async def go(m):
        return await asyncio.gather(m.score(["p1"], [["A", "B"]]), m.score(["bad"], [["A"]]),
                                    m.generate(["a", "b"], 4, 0.0), return_exceptions=True)

    m = _model(batching=False)
    got = asyncio.run(go(m))
    assert got[0] == [[-1.0, -2.0]] and isinstance(got[1], ValueError) and got[2] == ["a|4|0.0", "b|4|0.0"]
    st = m.get_stats()
    assert st["requests"] == {"score": 2, "generate": 1} and st["errors"] == {"score": 1}
    assert st["teacher_calls"] == {"score": 2, "generate": 1} and st["max_fused_requests"]["score"] == 1
    with pytest.raises(NotImplementedError, match="backend=hf"):
        asyncio.run(m.next_token_top(["a"], 3))
    with pytest.raises(ValueError, match="2 prompts but 1"):
        asyncio.run(m.score(["a", "b"], [["A"]]))


def test_generate_groups_only_requests_with_the_same_settings():
    m = _model(batching=True)
    reqs = [(["a"], 4, 0.0), (["b", "c"], 4, 0.0), (["d"], 8, 0.0)]
    got = asyncio.run(m._run_fused("generate", reqs, m._generate_fused, ts._key_generate))
    assert got == [["a|4|0.0"], ["b|4|0.0", "c|4|0.0"], ["d|8|0.0"]]
    assert m.get_stats()["backend_calls"]["generate"] == 2  # (4, 0.0) fused; (8, 0.0) alone
    keys = [ts._key_analyse(i, r) for i, r in enumerate([([], "switch", 0), ([], "switch", 0), ([], "random", 0),
                                                         ([], "random", 0)])]
    assert keys[0] == keys[1] and keys[2] != keys[3]  # random requests are never fused


# --------------------------------------------------------------------------- over HTTP
DEAD_PORT = free_port()  # nothing listens there: the upstream of the "dead" app


def _side_apps(port: int, model_dir: Path) -> list[list[str]]:
    """Two more apps beside the main one: the same model unbatched, and an OpenAI backend
    whose server is down."""
    return [[*serve_overrides(model_dir, port), "teacher.serve.batching=false",
             "teacher.serve.app_name=teacher-unbatched", "teacher.serve.route_prefix=/unbatched"],
            ["teacher.backend=openai", f"teacher.base_url=http://127.0.0.1:{DEAD_PORT}/v1",
             "teacher.name_or_path=remote", "teacher.max_retries=0", "teacher.timeout_s=2", f"teacher.port={port}",
             "teacher.serve.num_cpus_per_replica=0.1", "teacher.serve.app_name=teacher-dead",
             "teacher.serve.route_prefix=/dead"]]


@pytest.fixture(scope="module")
def served(ray_local, tiny_teacher_dir):
    """The main app plus the two side apps, all started in parallel."""
    with serving(tiny_teacher_dir, lambda port: _side_apps(port, tiny_teacher_dir)) as s:
        yield s
@pytest.mark.ray
@pytest.mark.slow
def test_health_reports_backend_model_and_replica(served):
    cfg, url = served.cfg, served.url
    r = requests.get(f"{url}/health", timeout=30)
    assert r.status_code == 200
    h = r.json()
    assert h["status"] == "ok" and h["backend"] == "hf" and h["prompt_version"] == "v1"
    assert h["model"] == str(Path(cfg.teacher.name_or_path).resolve())
    rep = h["replica"]
    assert rep["replica"] and rep["pid"] > 0 and rep["batching"] is True and rep["device"] == "cpu"
    assert rep["max_batch_size"] == cfg.teacher.serve.max_batch_size
    assert h["limits"]["max_items_per_request"] == 8
    assert requests.get(f"{url}/v1/models", timeout=30).json()["data"][0]["id"] == h["model"]


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.parametrize("locate", ["switch", "which_step", "random"])
def test_analyse_over_http(served, locate):
    url = served.url
    items = wrong_items(3)
    r = requests.post(f"{url}/v1/analyse", json={"items": items, "locate": locate}, timeout=60)
    assert r.status_code == 200, r.text
    got = r.json()["analyses"]
    assert [a["id"] for a in got] == [it["id"] for it in items]
    assert got[1]["status"] == "skipped" and got[1]["switch_method"] == "no_steps"  # no steps to blame
    for a in (got[0], got[2]):
        assert a["status"] in ("ok", "unparsed") and (a["status"] == "ok") == (a["missing_skill"] is not None)
        assert a["prompts"]["skill"] == "skill_analysis.v1"
        if locate == "switch":
            assert a["switch_method"] in ("switch", "fallback") and 1 <= a["mistake_step"] <= 2
            tr = a["switch_trace"]
            assert len(tr["p_gold"]) == 3 and all(0 <= p <= 1 for p in tr["p_gold"])  # prefixes k = 0..2
            assert len(tr["logprobs"]) == 3 and len(tr["logprobs"][0]) == len(tr["labels"])


@pytest.mark.ray
@pytest.mark.slow
def test_annotate_and_score_over_http(served):
    url = served.url
    samples = [{"id": i, "instruction": f"Count the dots ({i}).", "response": "There are 3 dots.\nAnswer: 3"}
               for i in range(3)]
    r = requests.post(f"{url}/v1/annotate", json={"samples": samples}, timeout=60)
    assert r.status_code == 200, r.text
    ann = r.json()["annotations"]
    assert [a["id"] for a in ann] == ["0", "1", "2"]
    assert all(isinstance(a["skills"], list) and isinstance(a["raw"], str) for a in ann)

    r = requests.post(f"{url}/v1/score", json={"prompts": ["Answer:", "Q? Answer:"],
                                               "options": [["A", "B"], ["A", "B", "C"]]}, timeout=60)
    assert r.status_code == 200, r.text
    lp = r.json()["logprobs"]
    assert [len(x) for x in lp] == [2, 3] and all(math.isfinite(v) and v < 0 for x in lp for v in x)
    assert requests.post(f"{url}/v1/score", json={"prompts": [], "options": []}, timeout=30).json() == {"logprobs": []}


@pytest.mark.ray
@pytest.mark.slow
def test_limits_and_validation_errors_are_json(served):
    url = served.url
    r = requests.post(f"{url}/v1/analyse", json={"items": wrong_items(9)}, timeout=30)
    assert r.status_code == 413
    msg = r.json()["error"]["message"]
    assert "teacher.serve.max_items_per_request" in msg and "8" in msg and "9" in msg

    items = wrong_items(2)
    items[0]["steps"][1] = "x" * 2001
    r = requests.post(f"{url}/v1/analyse", json={"items": items}, timeout=30)
    assert r.status_code == 422 and r.json()["error"]["param"] == "items.0.steps.1"
    assert "teacher.serve.max_text_chars" in r.json()["error"]["message"]

    r = requests.post(f"{url}/v1/annotate", json={"samples": [{"id": 1, "instruction": "i", "response": "r" * 3000}]},
                      timeout=30)
    assert r.status_code == 422 and r.json()["error"]["param"] == "samples.0.response"

    r = requests.post(f"{url}/v1/analyse", json={"items": [{"id": "a", "question": "q", "steps": []}]}, timeout=30)
    assert r.status_code == 422 and "gold" in r.json()["error"]["message"]  # pydantic names the missing field
    r = requests.post(f"{url}/v1/analyse", json={"items": [], "locate": "guess"}, timeout=30)
    assert r.status_code == 422 and "locate" in r.json()["error"]["message"]
    r = requests.post(f"{url}/v1/score", json={"prompts": ["a", "b"], "options": [["A"]]}, timeout=30)
    assert r.status_code == 422 and r.json()["error"]["param"] == "options"
    r = requests.post(f"{url}/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}],
                                                          "stream": True}, timeout=30)
    assert r.status_code == 400 and "stream" in r.json()["error"]["message"]
    r = requests.post(f"{url}/v1/chat/completions",
                      json={"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
                      timeout=30)
    assert r.status_code == 400 and "text" in r.json()["error"]["message"]
    r = requests.get(f"{url}/v1/nothing", timeout=30)
    assert r.status_code == 404 and "error" in r.json()
    for resp in (r,):
        assert "Traceback" not in resp.text


@pytest.mark.ray
@pytest.mark.slow
def test_openai_routes_shapes(served):
    url = served.url
    chat = {"model": "whatever", "messages": [{"role": "system", "content": "Be brief."},
                                              {"role": "user", "content": "Which candidate? Answer:"}]}
    r = requests.post(f"{url}/v1/chat/completions", json=chat | {"max_tokens": 1, "logprobs": True,
                                                                 "top_logprobs": 5}, timeout=60)
    assert r.status_code == 200, r.text
    c = r.json()["choices"][0]
    assert r.json()["object"] == "chat.completion" and c["message"]["role"] == "assistant"
    top = c["logprobs"]["content"][0]["top_logprobs"]
    assert len(top) == 5 and all(set(t) >= {"token", "logprob"} for t in top)
    assert [t["logprob"] for t in top] == sorted((t["logprob"] for t in top), reverse=True)
    assert c["message"]["content"] == top[0]["token"]  # one greedy token: the top entry

    r = requests.post(f"{url}/v1/chat/completions", json=chat | {"max_tokens": 3}, timeout=60)
    assert r.status_code == 200 and isinstance(r.json()["choices"][0]["message"]["content"], str)
    assert r.json()["choices"][0]["logprobs"] is None

    r = requests.post(f"{url}/v1/completions", json={"model": "m", "prompt": ["Answer:", "Step:"], "max_tokens": 2,
                                                     "logprobs": 4}, timeout=60)
    assert r.status_code == 200, r.text
    ch = r.json()["choices"]
    assert r.json()["object"] == "text_completion" and [x["index"] for x in ch] == [0, 1]
    assert all(isinstance(x["text"], str) and len(x["logprobs"]["top_logprobs"][0]) <= 4 for x in ch)


@pytest.mark.ray
@pytest.mark.slow
def test_concurrent_requests_are_fused_into_fewer_backend_calls(served):
    url, handle = served.url, served.handle
    client = ts.ServedTeacher(handle)
    before = client.stats()
    n = 12
    body = {"prompts": ["Q? Answer:"], "options": [["A", "B"]]}
    with ThreadPoolExecutor(max_workers=n) as pool:
        codes = list(pool.map(lambda _: requests.post(f"{url}/v1/score", json=body, timeout=60).status_code,
                              range(n)))
    assert codes == [200] * n
    after = client.stats()
    reqs = after["requests"]["score"] - before["requests"].get("score", 0)
    calls = after["backend_calls"]["score_options"] - before["backend_calls"].get("score_options", 0)
    assert reqs == n and calls < n, (reqs, calls)  # the batching wait (0.2 s) gathers concurrent requests
    assert after["max_fused_requests"]["score"] > 1


@pytest.mark.ray
@pytest.mark.slow
def test_served_teacher_client_matches_the_teacher_interface(served):
    handle = served.handle
    client = ts.ServedTeacher(handle, chunk_size=2)
    items = wrong_items(5)
    got = client.analyse(items, "random", seed=3)
    assert [a.id for a in got] == [it["id"] for it in items] and all(isinstance(a, Analysis) for a in got)
    again = client.analyse(items, "random", seed=3)  # random steps do not depend on batch-mates
    assert [(a.id, a.mistake_step) for a in got] == [(a.id, a.mistake_step) for a in again]
    ann = client.annotate([{"id": str(i), "instruction": "Read it.", "response": "It says 7."} for i in range(3)])
    assert len(ann) == 3 and all(isinstance(s, list) and isinstance(raw, str) for s, raw in ann)
    sc = client.score_options(["Answer:"] * 3, [["A", "B"], ["A"], ["A", "B", "C"]])
    assert [len(x) for x in sc] == [2, 1, 3]
    assert len(client.generate(["a", "b", "c"], max_new_tokens=2)) == 3
    top = handle.next_token_top.remote(["Answer:"], 3).result()
    assert len(top) == 1 and len(top[0]) == 3 and isinstance(top[0][0][0], str)


@pytest.mark.ray
@pytest.mark.slow
def test_start_teacher_printed_the_url(served):
    assert any(served.url in line and "127.0.0.1" in line for line in served.lines), served.lines


@pytest.mark.ray
@pytest.mark.slow
def test_unbatched_app_side_by_side_calls_once_per_request(served):
    cfg2 = served.others["teacher-unbatched"]
    url = ts.teacher_url(cfg2)
    assert url.endswith("/unbatched") and ts.wait_healthy(url, 120)["replica"]["batching"] is False
    client = ts.ServedTeacher(ts.teacher_handle(cfg2))
    before = client.stats()
    n = 6
    body = {"prompts": ["Q? Answer:"], "options": [["A", "B"]]}
    with ThreadPoolExecutor(max_workers=n) as pool:
        codes = list(pool.map(lambda _: requests.post(f"{url}/v1/score", json=body, timeout=60).status_code,
                              range(n)))
    assert codes == [200] * n
    after = client.stats()
    calls = after["backend_calls"]["score_options"] - before["backend_calls"].get("score_options", 0)
    assert calls == n and after["max_fused_requests"]["score"] == 1  # one backend call per request


@pytest.mark.ray
@pytest.mark.slow
def test_backend_failures_become_json_502_and_501_then_app_stops(served):
    """The app over an OpenAI backend whose server is down: 502 with a clear message; the
    logprobs routes need an HF backend: 501. stop_teacher removes only that app."""
    from ray import serve

    cfg3 = served.others["teacher-dead"]
    url = ts.teacher_url(cfg3)
    assert ts.wait_healthy(url, 120)["backend"] == "openai"
    r = requests.post(f"{url}/v1/annotate", json={"samples": [{"id": 1, "instruction": "i", "response": "r"}]},
                      timeout=60)
    assert r.status_code == 502, r.text
    err = r.json()["error"]
    assert err["code"] == "backend_failed" and str(DEAD_PORT) in err["message"] and "Traceback" not in r.text
    r = requests.post(f"{url}/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}],
                                                          "max_tokens": 1, "logprobs": True}, timeout=60)
    assert r.status_code == 501 and "backend=hf" in r.json()["error"]["message"]
    ts.stop_teacher(cfg3)
    apps = serve.status().applications
    assert "teacher-dead" not in apps and served.cfg.teacher.serve.app_name in apps


@pytest.mark.ray
@pytest.mark.slow
def test_requests_errors_and_latency_reach_prometheus(served, ray_local):
    """The replicas' metrics (mmtune/metrics.py) on the node's Prometheus endpoint over
    HTTP, tagged by route, Serve application and deployment. Counters hold the whole
    module's traffic, so the checks are on what this test adds (the pipeline's and
    retrieval's metrics: tests/test_metrics.py)."""
    import time

    from mmtune.metrics import LATENCY_BOUNDARIES, scrape

    app, url = served.cfg.teacher.serve.app_name, served.url
    endpoint = f"http://127.0.0.1:{ray_local.nodes()[0]['MetricsExportPort']}/metrics"

    def series(got, name, **labels):
        return [(lb, v) for lb, v in got.get(name, []) if all(lb.get(k) == x for k, x in {"application": app,
                                                                                        **labels}.items())]

    def total(got, name, **labels):
        return sum(v for _, v in series(got, name, **labels))

    want = {("ray_mmtune_teacher_requests_total", ("route", "score"), ("status", "ok")): 3,
            ("ray_mmtune_teacher_requests_total", ("route", "analyse"), ("status", "error")): 1,
            ("ray_mmtune_teacher_latency_s_count", ("route", "score")): 3,
            ("ray_mmtune_teacher_items_total", ("route", "score")): 6,
            ("ray_mmtune_teacher_http_requests_total", ("path", "/v1/score"), ("code", "200")): 3,
            ("ray_mmtune_teacher_http_requests_total", ("path", "/v1/score"), ("code", "422")): 1}
    before = scrape(endpoint)  # may lag the module's last requests: the deltas below are lower bounds
    for _ in range(3):
        r = requests.post(f"{url}/v1/score", json={"prompts": ["Q? Answer:", "A?"], "options": [["A", "B"], ["C"]]},
                          timeout=60)
        assert r.status_code == 200, r.text
    r = requests.post(f"{url}/v1/score", json={"prompts": ["a", "b"], "options": [["A"]]}, timeout=30)
    assert r.status_code == 422  # refused by the ingress: no model call
    with pytest.raises(Exception, match="steps"):  # the handle path (the pipeline's) has no pydantic
        served.handle.analyse.remote([{"id": "broken"}]).result(timeout_s=60)

    deadline = time.time() + 45  # Ray exports every report interval (10 s by default)
    while True:
        got = scrape(endpoint)
        short = {k: total(got, k[0], **dict(k[1:])) - total(before, k[0], **dict(k[1:])) for k in want}
        short = {k: d for k, d in short.items() if d < want[k]}
        if not short or time.time() > deadline:
            break
        time.sleep(1.0)
    assert not short, short
    reqs = series(got, "ray_mmtune_teacher_requests_total")
    assert {lb["deployment"] for lb, _ in reqs} == {ts.MODEL_DEPLOYMENT}
    assert {lb["route"] for lb, _ in reqs} <= set(ts.ROUTES) and {lb["status"] for lb, _ in reqs} <= {"ok", "error"}
    buckets = sorted((float(lb["le"]), v) for lb, v in series(got, "ray_mmtune_teacher_latency_s_bucket",
                                                                route="score"))
    assert [le for le, _ in buckets] == [*LATENCY_BOUNDARIES, float("inf")]
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)  # cumulative
    assert buckets[-1][1] == total(got, "ray_mmtune_teacher_latency_s_count", route="score")
    fused = series(got, "ray_mmtune_teacher_batch_requests_count", route="score")
    assert fused and 0 < total(got, "ray_mmtune_teacher_batch_requests_count", route="score") \
        <= total(got, "ray_mmtune_teacher_requests_total", route="score")  # one observation per teacher call
    http = series(got, "ray_mmtune_teacher_http_requests_total")
    assert {lb["deployment"] for lb, _ in http} == {ts.INGRESS_DEPLOYMENT}
    assert all(lb["path"].startswith("/") or lb["path"] == "other" for lb, _ in http)  # route templates only


@pytest.mark.ray
def test_metrics_register_in_a_ray_process(ray_local):
    m = ts.TeacherMetrics()
    assert m.active
    m.inc("requests", route="analyse", status="ok")
    m.observe("latency_s", 0.3, route="analyse")
    m.observe("batch_requests", 4, route="analyse")
    m.inc("http_requests", path="/v1/analyse", code="200")


@pytest.mark.ray
def test_app_builder_builds_from_config_args(ray_local, tiny_teacher_dir):
    from ray import serve

    app = ts.app_builder({"config": str(ROOT / "configs" / "demo.yaml"),
                          "overrides": ["teacher.backend=hf", f"teacher.name_or_path={tiny_teacher_dir}"]})
    assert isinstance(app, serve.Application)
