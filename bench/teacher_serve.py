"""Benchmark: what dynamic batching buys the teacher on Ray Serve, over real HTTP.

    python -m bench.teacher_serve [--model DIR|HUB_ID|tiny] [--requests 128]
        [--concurrency 1,8,32] [--route analyse|score] [--items-per-request 1]
        [--cpus N] [--replica-cpus 1] [--write] [KEY=VALUE ...]

Two teacher apps run side by side in one Serve instance on a loopback port, identical but
for ``teacher.serve.batching``:

- **batched** (``/batched``): ``@serve.batch`` fuses concurrent requests into one teacher
  call (``teacher.serve.max_batch_size``, ``batch_wait_timeout_s``);
- **unbatched** (``/unbatched``): one teacher call per request, one at a time per replica.

For each concurrency (1, 8 and 32 by default), ``--requests`` POSTs go to ``/v1/analyse``
(the answer switch and skill analysis of wrong SkillWorld target items, ``--route
analyse``) or ``/v1/score`` (option scoring only, ``--route score``) from that many client
threads, each with its own keep-alive HTTP session; the two apps are measured alternately
(batched, then unbatched, per concurrency) after a warm-up of each. Reported per cell:
throughput (requests/s over the wall time of the cell), p50/p99 client latency, and the
teacher calls and backend calls the replica made (from ``/health``); and per concurrency
the batched/unbatched throughput ratio.

Model: the built-in teacher by default (``ensure_builtin_teacher`` with ``run.cache_dir``
= ``--cache-dir``; trained once, minutes on a CPU), any HF directory or hub id with
``--model`` (on a GPU machine a bigger model: each app's replica then takes half the GPU),
or ``--model tiny`` (a 2-layer random Llama: a smoke check of the machinery, not of a
teacher). With ``--write`` the section between the ``bench:teacher_serve`` markers in
docs/benchmarks.md is replaced by this run's (appended when missing).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.report import code_version, load_1min, write_section

ROOT = Path(__file__).resolve().parents[1]
MARK = "bench:teacher_serve"
MODES = ("batched", "unbatched")
CODE = ["mmtune/teacher/serve.py", "mmtune/teacher/backend.py", "mmtune/teacher/teacher.py"]


# --------------------------------------------------------------------------- results
@dataclass
class Cell:
    """One (mode, concurrency) measurement."""

    mode: str  # batched | unbatched
    concurrency: int
    requests: int
    ok: int
    errors: int
    wall_s: float
    p50_ms: float
    p99_ms: float
    mean_ms: float
    teacher_calls: int  # fused teacher calls the replica made in this cell
    backend_calls: int  # score_options / generate / next_token_top calls
    load_1min: float

    @property
    def rps(self) -> float:
        return self.ok / self.wall_s if self.wall_s > 0 else float("nan")

    @property
    def requests_per_teacher_call(self) -> float:
        return self.ok / self.teacher_calls if self.teacher_calls else float("nan")


def percentile(xs: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100); NaN for no data."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    pos = (len(s) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def machine(load: float) -> str:
    import torch

    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"
    return (f"{platform.machine()}, {os.cpu_count()} CPUs{gpu}, torch {torch.__version__}, "
            f"Python {platform.python_version()}, 1-minute load average {load:.1f} at start")


# --------------------------------------------------------------------------- inputs
def tiny_model(out: Path) -> Path:
    """A 2-layer, 32-wide random Llama with a tokenizer trained on the prompt templates."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from mmtune.models.presets import train_tokenizer
    from mmtune.teacher.prompts import NAMES, load_template

    tok = train_tokenizer([load_template(n).text for n in NAMES] * 8, 400)
    torch.manual_seed(0)
    mcfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=2048,
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    out.mkdir(parents=True, exist_ok=True)
    LlamaForCausalLM(mcfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def wrong_items(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` wrong answers to SkillWorld's default target tasks (split ``bench``): the
    gold steps with a wrong final answer, cycling over the tasks."""
    import random

    from mmtune.data.skillworld import DEFAULT_TARGETS, TASKS, generate_task

    rng = random.Random(seed)
    per = math.ceil(n / len(DEFAULT_TARGETS))
    pools = []
    for name in DEFAULT_TARGETS:
        task = TASKS[name]
        samples, _ = generate_task(task, per, seed=seed, split="bench", pool="target", image_size=16)
        pools.append((task, samples))
    items = []
    for i in range(per):
        for task, samples in pools:
            s = samples[i]
            if s["options"]:
                letters = [chr(ord("A") + j) for j in range(len(s["options"]))]
                pred = rng.choice([x for x in letters if x != s["answer"]])
            else:
                pred = rng.choice([v for v in task.values if v != s["answer"]])
            items.append({"id": s["id"], "question": s["instruction"], "steps": list(s["steps"]),
                          "prediction": pred, "gold": s["answer"], "options": s["options"]})
    return items[:n]


def payloads(route: str, n: int, items_per_request: int, seed: int = 0,
             by_text: bool = False) -> list[dict[str, Any]]:
    """The request bodies: ``n`` requests of ``items_per_request`` distinct items each.
    ``by_text`` (``teacher.score_candidates=text``): score prompts read the candidates'
    texts, as the Teacher's answer switch then does."""
    from mmtune.teacher.prompts import load_template
    from mmtune.teacher.switch import candidates_for, switch_prompts

    items = wrong_items(n * items_per_request, seed)
    chunks = [items[i:i + items_per_request] for i in range(0, len(items), items_per_request)]
    if route == "analyse":
        return [{"items": c, "locate": "switch"} for c in chunks]
    if route == "score":  # the answer-switch prompt after all steps: one scoring prompt per item
        t = load_template("answer_switch_text" if by_text else "answer_switch")
        out = []
        for c in chunks:
            prompts, options = [], []
            for it in c:
                cand = candidates_for(it["id"], it["gold"], it["prediction"], it["options"])
                prompts.append(switch_prompts(t, it["question"], cand, it["steps"], 0.6)[-1])
                options.append(cand.texts if by_text else cand.labels)
            out.append({"prompts": prompts, "options": options})
        return out
    raise ValueError(f"unknown route {route!r}; use analyse or score")


# --------------------------------------------------------------------------- load
def load_loop(url: str, bodies: Sequence[dict[str, Any]], concurrency: int,
              timeout_s: float = 300.0) -> tuple[list[float], int, float]:
    """POST every body once from ``concurrency`` threads (a keep-alive session each):
    (latencies in seconds of the successful requests, errors, wall seconds)."""
    import threading

    import requests

    local = threading.local()

    def one(body: dict[str, Any]) -> float | None:
        s = getattr(local, "s", None)
        if s is None:
            s = local.s = requests.Session()
        t0 = time.perf_counter()
        try:
            r = s.post(url, json=body, timeout=timeout_s)
        except requests.RequestException:
            return None
        return time.perf_counter() - t0 if r.status_code == 200 else None

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        got = list(pool.map(one, bodies))
    wall = time.perf_counter() - t0
    lat = [x for x in got if x is not None]
    return lat, len(got) - len(lat), wall


def replica_stats(base: str) -> dict[str, Any]:
    with __import__("urllib.request").request.urlopen(f"{base}/health", timeout=60) as r:
        return json.loads(r.read())["replica"]["stats"]


def _total(stats: dict[str, Any], key: str) -> int:
    return int(sum(stats.get(key, {}).values()))


def measure(base: str, mode: str, route: str, bodies: Sequence[dict[str, Any]], concurrency: int) -> Cell:
    load = load_1min()
    before = replica_stats(base)
    lat, errors, wall = load_loop(f"{base}/v1/{route}", bodies, concurrency)
    after = replica_stats(base)
    ms = [x * 1000 for x in lat]
    return Cell(mode, concurrency, len(bodies), len(lat), errors, wall, percentile(ms, 50), percentile(ms, 99),
                sum(ms) / len(ms) if ms else float("nan"),
                _total(after, "teacher_calls") - _total(before, "teacher_calls"),
                _total(after, "backend_calls") - _total(before, "backend_calls"), load)


def ratios(cells: Sequence[Cell]) -> dict[int, float]:
    """Batched over unbatched throughput, per concurrency."""
    by = {(c.mode, c.concurrency): c for c in cells}
    return {n: by[("batched", n)].rps / by[("unbatched", n)].rps
            for (m, n) in by if m == "batched" and ("unbatched", n) in by and by[("unbatched", n)].rps > 0}


def _f(x: float, fmt: str = ".1f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def format_table(cells: Sequence[Cell], rat: dict[int, float]) -> list[str]:
    out = [("| concurrency | mode | requests (ok / errors) | req/s | p50 ms | p99 ms | teacher calls | "
           "requests per teacher call | backend calls | batched ÷ unbatched req/s | load |"),
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in sorted(cells, key=lambda c: (c.concurrency, MODES.index(c.mode))):
        r = _f(rat[c.concurrency], ".2f") + "×" if c.mode == "batched" and c.concurrency in rat else ""
        out.append(f"| {c.concurrency} | {c.mode} | {c.ok} / {c.errors} | {_f(c.rps, '.2f')} | {_f(c.p50_ms)} | "
                   f"{_f(c.p99_ms)} | {c.teacher_calls} | {_f(c.requests_per_teacher_call, '.2f')} | "
                   f"{c.backend_calls} | {r} | {_f(c.load_1min)} |")
    return out


def interpret(cells: Sequence[Cell], rat: dict[int, float]) -> list[str]:
    out = []
    for n, r in sorted(rat.items()):
        b = next(c for c in cells if c.mode == "batched" and c.concurrency == n)
        u = next(c for c in cells if c.mode == "unbatched" and c.concurrency == n)
        out.append(f"At concurrency {n} batching gives {r:.2f}× the throughput ({b.rps:.1f} vs {u.rps:.1f} req/s) "
                   f"with {_f(b.requests_per_teacher_call, '.1f')} requests per teacher call; p99 latency "
                   f"{_f(b.p99_ms, '.0f')} vs {_f(u.p99_ms, '.0f')} ms.")
    bad = [c for c in cells if c.errors]
    if bad:
        out.append("Errors: " + ", ".join(f"{c.mode}@{c.concurrency}: {c.errors}" for c in bad) + ".")
    return out


# --------------------------------------------------------------------------- the run
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def app_overrides(model: str, port: int, replica_cpus: float, replica_gpus: float) -> list[str]:
    """Overrides shared by both apps; ``model`` is an HF dir/id, or "builtin"."""
    base = [f"teacher.port={port}", "teacher.host=127.0.0.1", f"teacher.serve.num_cpus_per_replica={replica_cpus}",
            f"teacher.serve.num_gpus_per_replica={replica_gpus}", "teacher.autoscaling.min_replicas=1",
            "teacher.autoscaling.max_replicas=1"]
    return base + (["teacher.backend=builtin"] if model == "builtin" else
                   ["teacher.backend=hf", f"teacher.name_or_path={model}"])


def run_bench(cfg_path: str | None, overrides: list[str], model: str, *, builtin_dir: str | Path | None = None,
              requests: int, concurrencies: Sequence[int], route: str = "analyse", items_per_request: int = 1,
              replica_cpus: float = 1.0, port: int | None = None, warmup: int = 8,
              progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Deploy the two apps on the running Ray, measure every cell, remove the apps.
    Serve is shut down at the end if this call started it."""
    import ray
    from ray import serve

    from mmtune.config import load_config
    from mmtune.teacher.serve import build_app, teacher_url, wait_healthy

    gpus = float(ray.cluster_resources().get("GPU", 0.0))
    replica_gpus = 0.5 if gpus >= 1 else 0.0  # two apps share one GPU
    # Serve's HTTP options are fixed when it first starts: join a running Serve on its port.
    client = serve.context._get_global_client(raise_if_no_controller_running=False)
    started_serve = client is None
    if client is not None:
        port = client.http_config.port
    port = port or free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    shared = app_overrides(model, port, replica_cpus, replica_gpus)
    apps: dict[str, Any] = {}
    t0 = time.time()
    try:
        for mode in MODES:
            apps[mode] = load_config(cfg_path, [*overrides, *shared, f"teacher.serve.batching={mode == 'batched'}",
                                                f"teacher.serve.app_name=teacher-{mode}",
                                                f"teacher.serve.route_prefix=/{mode}"])
        # Both apps in one deployment call, so that their replicas start in parallel.
        serve.run_many([serve.RunTarget(build_app(c, builtin_dir), name=c.teacher.serve.app_name,
                                        route_prefix=c.teacher.serve.route_prefix,
                                        logging_config={"log_level": "WARNING", "enable_access_log": False})
                        for c in apps.values()])
        health = {m: wait_healthy(teacher_url(c), 300) for m, c in apps.items()}
        deploy_s = time.time() - t0
        s = apps["batched"].teacher.serve
        progress(f"[serve] two apps ready in {deploy_s:.1f}s on 127.0.0.1:{port}: {health['batched']['backend']} "
                 f"{health['batched']['model']}, max_batch_size {s.max_batch_size}, batch_wait_timeout_s "
                 f"{s.batch_wait_timeout_s}, replica num_cpus {replica_cpus}, num_gpus {replica_gpus}")
        bodies = payloads(route, requests, items_per_request,
                          by_text=apps["batched"].teacher.score_candidates == "text")
        for mode, cfg in apps.items():  # warm-up: first batches, lazy queues, allocator
            load_loop(f"{teacher_url(cfg)}/v1/{route}", bodies[:warmup], min(warmup, 8))
        cells: list[Cell] = []
        for n in concurrencies:
            for mode in MODES:
                cells.append(measure(teacher_url(apps[mode]), mode, route, bodies, n))
                c = cells[-1]
                progress(f"[{mode}@{n}] {c.rps:.2f} req/s, p50 {c.p50_ms:.0f} ms, p99 {c.p99_ms:.0f} ms, "
                         f"{c.teacher_calls} teacher calls, {c.backend_calls} backend calls, {c.errors} errors")
        return {"cells": cells, "ratios": ratios(cells), "deploy_s": deploy_s, "port": port,
                "replica_gpus": replica_gpus, "health": health, "max_batch_size": s.max_batch_size,
                "batch_wait_timeout_s": s.batch_wait_timeout_s, "teacher": apps["batched"].teacher}
    finally:
        for cfg in apps.values():
            try:
                serve.delete(cfg.teacher.serve.app_name)
            except Exception as e:  # noqa: BLE001 - cleanup must not hide the run's own error
                progress(f"[serve] could not delete {cfg.teacher.serve.app_name}: {e}")
        if started_serve:
            serve.shutdown()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    ap.add_argument("--cache-dir", default="/tmp/teacherbench_cache", help="run.cache_dir (built-in teacher)")
    ap.add_argument("--model", default=None, help="HF directory or hub id; 'tiny' = a random 2-layer Llama; "
                                                  "default: the built-in teacher")
    ap.add_argument("--requests", type=int, default=128, help="requests per cell")
    ap.add_argument("--concurrency", default="1,8,32", help="comma-separated client concurrencies")
    ap.add_argument("--route", choices=("analyse", "score"), default="analyse")
    ap.add_argument("--items-per-request", type=int, default=1)
    ap.add_argument("--cpus", type=int, default=None, help="ray.init(num_cpus=...); default os.cpu_count()")
    ap.add_argument("--replica-cpus", type=float, default=1.0, help="num_cpus of each app's model replica")
    ap.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import ray

    from mmtune.config import load_config

    concurrencies = [int(x) for x in args.concurrency.split(",") if x.strip()]
    overrides = [f"run.cache_dir={args.cache_dir}", *args.overrides]
    load0 = load_1min()
    t_all = time.time()
    code = code_version(CODE)
    with tempfile.TemporaryDirectory(prefix="mmtune-bench-teacher-") as tmp:
        builtin_dir = None
        if args.model is None:
            from mmtune.teacher.builtin import ensure_builtin_teacher

            builtin_dir = ensure_builtin_teacher(load_config(args.config, overrides))
            model, model_desc = "builtin", f"the built-in teacher ({builtin_dir})"
        elif args.model == "tiny":
            model, model_desc = str(tiny_model(Path(tmp) / "tiny")), "a random 2-layer, 32-wide Llama (smoke check)"
        else:
            model, model_desc = args.model, args.model
        cpus = args.cpus or os.cpu_count() or 1
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False,
                 object_store_memory=512 * 1024 * 1024, _temp_dir=str(Path(tmp) / "ray"))
        try:
            res = run_bench(args.config, overrides, model, builtin_dir=builtin_dir, requests=args.requests,
                            concurrencies=concurrencies, route=args.route, items_per_request=args.items_per_request,
                            replica_cpus=args.replica_cpus)
        finally:
            ray.shutdown()
    total_s = time.time() - t_all
    cells: list[Cell] = res["cells"]
    rat = res["ratios"]
    t = res["teacher"]
    cmd = "python -m bench.teacher_serve " + " ".join(sys.argv[1:] if argv is None else argv)
    lines = [
        f"<!-- {MARK} -->",
        "### The teacher on Ray Serve: dynamic batching on and off, over HTTP (one run)",
        "",
        f"- date: {dt.date.today().isoformat()}; machine: {machine(load0)}; code: {code}",
        (f"- command: `{cmd.strip()}` (whole benchmark {total_s:.0f} s; the two apps deployed in "
        f"{res['deploy_s']:.1f} s, not in the rows)"),
        (f"- model: {model_desc}; `teacher.max_new_tokens={t.max_new_tokens}`, `parse_retries={t.parse_retries}`, "
        f"`batch_size={t.batch_size}` (prompts per forward pass)"),
        f"- route: `POST /v1/{args.route}` with {args.items_per_request} wrong SkillWorld target item(s) per request"
        + (" (`locate=switch`: answer switch, then skill analysis)" if args.route == "analyse" else
           " (the answer-switch prompt after all steps, scored over the candidates, "
           f"`teacher.score_candidates={t.score_candidates}`)"),
        (f"- apps: two, side by side on one Serve (`ray.init(num_cpus={cpus})`), one model replica each with "
        f"`num_cpus={args.replica_cpus}`, `num_gpus={res['replica_gpus']}`; batched = `@serve.batch(max_batch_size="
        f"{res['max_batch_size']}, batch_wait_timeout_s={res['batch_wait_timeout_s']})`; unbatched = one teacher "
        "call per request; both run one teacher call at a time per replica"),
        (f"- load: {args.requests} requests per cell from N client threads (keep-alive sessions) on the same "
        "machine; the modes alternate per concurrency after a warm-up of each app; req/s = successful requests ÷ "
        "cell wall time; latency = client-side; teacher/backend calls = the replica's counters (`/health`) over "
        "the cell; load = 1-minute load average when the cell started"),
        "",
        *format_table(cells, rat),
        "",
        *[f"- {s}" for s in interpret(cells, rat)],
        f"<!-- /{MARK} -->",
    ]
    section = "\n".join(lines)
    print("\n" + section)
    print("\n" + json.dumps({"cells": [asdict(c) | {"rps": c.rps} for c in cells],
                             "ratios": {str(k): v for k, v in rat.items()}}, default=str))
    if args.write and not write_section(MARK, section):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
