"""Benchmark: what Ray Train costs over the plain per-worker loop, measured side by side.

    python -m bench.train_throughput [--steps 45] [--batch 16] [--warmup 5] [--samples 320]
        [--threads 1] [--modes constant[,commit]] [--ray-poll default[,0.1]] [--no-gpu] [--write]
        [KEY=VALUE ...]

One run, one model, one batch size, one data set, per coordination mode:

1. **plain**: :func:`mmtune.training.loop.run_training` in this process, before Ray is
   started (no Ray process at all), and once more after Ray is shut down (**plain-after**)
   to show how much the shared machine's speed drifted during the run;
2. **Ray 1 worker**: ``build_trainer(...).fit()`` with one worker;
3. **Ray 2 workers**: the same with two workers (DDP over gloo).

Threads: plain and 1 worker use ``--threads`` torch threads, 2 workers ``threads // 2``
each but at least 1. The default is 1: on a busy 2-core machine two intra-op threads stall
on each other (the same loop measured 9 to 49 samples/s with 2 threads, 60 to 90 with 1),
so 1 thread per process is what gives repeatable ratios; the scaling ratio is then 2 workers
on 2 cores against 1 worker on 1 core. Ray reserves ``min(1, CPUs / (2 × workers))`` CPUs
per worker (0.5 for 2 workers on 2 CPUs), so Ray Data keeps CPUs to read with
(:func:`mmtune.training.trainer.check_cpu_headroom`). ``training.batch_size`` is *per
worker* in the trainer, so 2 workers process twice as many samples per step; samples/s
always counts all workers' samples.

Two throughputs per row:

* **steady samples/s**: samples of steps ``warmup+1 .. steps-1`` over the wall time between
  the reports of steps ``warmup`` and ``steps-1`` (the last step is left out because the
  trainer checkpoints there). For plain the time stamps are taken in the report callback;
  for Ray by a ``ray.train.UserCallback`` on the Train controller, so they include every
  per-step cost Ray adds (``ray.train.report``'s cross-worker barrier, the hand-off of each
  report to the controller, DDP all-reduce).
* **in-step samples/s**: the loop's own ``samples_per_s`` metric (encode + forward +
  backward + optimizer step, timed inside the worker, rank 0, times the worker count):
  what the step itself costs, without whatever happens between steps.

Ray Train V2's controller collects reports by polling the workers every
``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S`` (2 s by default) and a worker holds one unconsumed
report, so a loop that reports every step cannot run faster than one step per poll.
``--ray-poll default,0.1`` measures the Ray rows again with a restarted Ray whose
processes inherit a 0.1 s poll, to separate that cap from the rest of Ray's cost.

**to step 1 s** is from the start of a row to the end of step 1 (for Ray rows, which report
every ``training.report_every`` steps, extrapolated back from the first report) and **end-to-end s** the
wall time of the whole row: for plain, loading the student, reading the parquet, applying
LoRA and training; for Ray, ``build_trainer`` + ``fit()`` (Ray Data read, worker group start,
model load in each worker, training, the final checkpoint). ``ray.init`` is reported
separately.

The student is a randomly initialised ``tiny-llava`` with the config's preset (saved with
``save_student`` like a real checkpoint); the data is a small SkillWorld corpus generated
into a temporary cache (never the repository's ``runs/_cache``). With a CUDA GPU a bf16
full-fine-tuning run of a larger LLaVA-architecture preset adds samples/s, tokens/s and
MFU. With ``--write`` the section between the ``bench:train_throughput`` markers in
docs/benchmarks.md is replaced by this run's (machine, date, code version and command
included).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import random
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from bench.report import code_version, load_1min, write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MARK = "bench:train_throughput"
# Ray Train V2's controller polls its workers for reported results every this many seconds
# (Ray's default 2.0), and a worker's result queue holds one report: a worker that reports
# every step waits for the next poll once it is a report ahead.
POLL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
RAY_DEFAULT_POLL_S = 2.0

# Dense bf16 peak FLOP/s by device name (substring match, first hit wins; no sparsity).
PEAK_BF16 = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM (e.g. "NVIDIA H100 80GB HBM3")
    ("H200", 989e12),  # also matches GH200
    ("A100", 312e12),
)

# A larger LLaVA-architecture preset for the GPU section: ~110M parameters.
GPU_PRESET = dict(vision_hidden=512, vision_layers=4, vision_heads=8, patch_size=8, text_hidden=1024,
                  text_layers=8, text_heads=16, text_intermediate=2816, vocab_size=512, max_position=512)


# --------------------------------------------------------------------------- results
@dataclass
class Row:
    """One measurement."""

    mode: str
    run: str  # "plain", "ray-1", "ray-2", "plain-after"
    workers: int
    threads_per_worker: int
    cpus_per_worker: float | None  # Ray's CPU reservation per worker (None for plain)
    batch_per_worker: int
    steps: int
    steady_samples_per_s: float
    instep_samples_per_s: float
    steady_window_s: float
    end_to_end_s: float
    startup_s: float  # from the start of the measurement to step 1's report (step 1 included)
    load_1min: float  # the machine's 1-minute load average when the measurement started
    poll_s: float | None = None  # the Train controller's poll interval (None for plain)

    @property
    def global_batch(self) -> int:
        return self.batch_per_worker * self.workers


@dataclass
class Setup:
    workdir: Path
    student_dir: Path
    train_parquet: Path
    n_samples: int
    params: int
    trainable: int
    preset: dict[str, Any]
    skillworld_s: float
    rows: list[dict[str, Any]] = field(repr=False, default_factory=list)


def machine() -> str:
    import torch

    return (f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
            f"Python {platform.python_version()}")


def steady_rate(stamps: Sequence[tuple[int, float]], samples_per_step: int, warmup: int) -> tuple[float, float]:
    """(samples/s, window seconds) between the first report at or after step ``warmup`` and
    the last report before the final step (which checkpoints); ``stamps`` are (completed
    step, time) pairs, one per report. Ray Train reports every ``training.report_every``
    steps, the plain loop every step."""
    t = dict(stamps)
    final = max(t) if t else 0
    after = sorted(s for s in t if s >= warmup and s < final)
    if warmup < 1 or len(after) < 2:
        raise ValueError(f"need two reports between step {warmup} and the last step {final} "
                         "(more steps, or a smaller training.report_every)")
    first, last = after[0], after[-1]
    window = t[last] - t[first]
    return (last - first) * samples_per_step / window, window


def startup_time(stamps: Sequence[tuple[int, float]], t0: float, seconds_per_step: float) -> float:
    """Seconds from ``t0`` to step 1's end. Ray Train reports every ``report_every``
    steps, so step 1 is extrapolated back from the first report at the steady step time."""
    first = min(dict(stamps))
    return dict(stamps)[first] - t0 - (first - 1) * seconds_per_step


def instep_rate(history: Sequence[dict[str, Any]], warmup: int, workers: int = 1) -> float:
    """Samples over summed in-step time for steps after ``warmup`` (rank 0's step times)."""
    h = [m for m in history if m["step"] > warmup and m["samples_per_s"] > 0]
    secs = sum(m["batch_size"] / m["samples_per_s"] for m in h)
    return workers * sum(m["batch_size"] for m in h) / secs if secs else float("nan")


# --------------------------------------------------------------------------- setup
def prepare(cfg: Any, workdir: Path, n_samples: int, progress: Callable[[str], None] = print) -> Setup:
    """A small SkillWorld corpus in a temporary cache, ``n_samples`` rows of it in one
    parquet file, and a random tiny-llava (the config's preset) saved as a checkpoint."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from mmtune.data.catalog import data_paths
    from mmtune.data.schema import SAMPLE_SCHEMA
    from mmtune.models.presets import build_tiny_llava
    from mmtune.models.student import apply_lora, save_student

    small = cfg.model_copy(deep=True)
    small.run.cache_dir = str(workdir / "cache")
    small.data.skillworld = cfg.data.skillworld.model_copy(update=dict(
        corpus_per_task=max(10, math.ceil(n_samples / 20)), generic_size=100, generic_eval_per_task=8,
        val_size=10, test_size=10))
    t0 = time.time()
    paths = data_paths(small, progress=lambda s: None)
    sw_s = time.time() - t0
    table = pq.read_table(paths.corpus)
    rows = table.to_pylist()
    random.Random(cfg.run.seed).shuffle(rows)
    rows = rows[:n_samples]
    if len(rows) < n_samples:
        raise ValueError(f"SkillWorld gave {len(rows)} corpus rows, fewer than --samples {n_samples}")
    train = workdir / "train.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA), train)

    torch.manual_seed(cfg.run.seed)
    texts = [r["instruction"] for r in rows] + [r["response"] for r in rows]
    model, processor = build_tiny_llava(cfg.student.preset, texts, cfg.data.skillworld.image_size)
    params = sum(p.numel() for p in model.parameters())
    sdir = save_student(model, processor, workdir / "student")
    tuned = apply_lora(model, cfg.student)
    trainable = sum(p.numel() for p in tuned.parameters() if p.requires_grad)
    progress(f"[setup] SkillWorld ({len(rows)} corpus rows) in {sw_s:.1f}s; tiny-llava "
             f"{params / 1e6:.2f}M params, {trainable / 1e3:.0f}k trainable (LoRA r={cfg.student.lora.r} "
             f"+ projector)")
    return Setup(workdir, sdir, train, len(rows), params, trainable, cfg.student.preset.model_dump(), sw_s,
                 rows)


def training_config(cfg: Any, mode: str, steps: int, batch: int, workers: int) -> Any:
    coord = cfg.training.coordination.model_copy(update={"mode": mode})
    return cfg.training.model_copy(update={
        "max_steps": steps, "batch_size": batch, "num_workers": workers, "use_gpu": False,
        "checkpoint_every": steps, "max_failures": 0, "coordination": coord})


# --------------------------------------------------------------------------- measurements
def measure_plain(cfg: Any, setup: Setup, mode: str, *, steps: int, batch: int, warmup: int,
                  threads: int) -> Row:
    """run_training in this process: the loop every Ray Train worker runs, without Ray."""
    import pyarrow.parquet as pq
    import torch

    from mmtune.models.student import apply_lora, load_student
    from mmtune.training.loop import run_training

    tc = training_config(cfg, mode, steps, batch, 1)
    load = load_1min()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        t0 = time.time()
        rows = pq.read_table(setup.train_parquet, columns=["id", "instruction", "response", "image"]).to_pylist()
        rows.sort(key=lambda r: r["id"])  # what the Ray worker does with its shard
        model, processor = load_student(setup.student_dir, cfg.student)
        torch.manual_seed(cfg.run.seed)
        model = apply_lora(model, cfg.student)
        stamps: list[tuple[int, float]] = []
        result = run_training(model, processor, rows, tc, seed=cfg.run.seed,
                              report=lambda m, _p: stamps.append((m["step"], time.time())))
        e2e = time.time() - t0
    finally:
        torch.set_num_threads(before)
    steady, window = steady_rate(stamps, batch, warmup)
    return Row(mode, "plain", 1, threads, None, batch, steps, steady, instep_rate(result.history, warmup),
               window, e2e, startup_time(stamps, t0, batch / steady), load)


def _stamp_callback(path: Path):
    """A Ray Train UserCallback (runs in the Train controller) that appends, per report,
    the wall time and every worker's metrics to ``path`` as JSON lines."""
    from ray.train import UserCallback

    class StampCallback(UserCallback):
        def __init__(self, out: str):
            self.out = out

        def after_report(self, run_context, metrics, checkpoint):
            with open(self.out, "a") as f:
                f.write(json.dumps({"t": time.time(), "metrics": metrics}) + "\n")

    return StampCallback(str(path))


def cpus_per_worker_for(workers: int, cluster_cpus: float) -> float:
    """Ray's CPU reservation per worker: at most half the cluster in all, so Ray Data
    keeps CPUs to read with (:func:`mmtune.training.trainer.check_cpu_headroom`); 1 CPU
    per worker when the cluster has room."""
    return min(1.0, cluster_cpus / (2 * workers))


def measure_ray(cfg: Any, setup: Setup, mode: str, *, workers: int, steps: int, batch: int, warmup: int,
                threads: int, name: str | None = None, poll_s: float | None = None) -> Row:
    """build_trainer(...).fit() with ``workers`` workers of ``threads`` torch threads each.

    ``poll_s`` only labels the row: the poll interval is fixed when Ray starts (the
    ``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S`` environment its processes inherit)."""
    import ray

    from mmtune.training.trainer import build_trainer

    tc = training_config(cfg, mode, steps, batch, workers)
    cpw = cpus_per_worker_for(workers, float(ray.cluster_resources().get("CPU", 0)))
    name = name or f"tp-{mode}-{workers}w-{int(time.time() * 1000)}"
    log = setup.workdir / f"{name}.jsonl"
    load = load_1min()
    t0 = time.time()
    trainer = build_trainer(tc, cfg.student, setup.student_dir, [str(setup.train_parquet)],
                            storage_path=setup.workdir / "ray_store", name=name, seed=cfg.run.seed,
                            cpus_per_worker=cpw, torch_threads=threads)
    trainer.run_config.callbacks = [*(trainer.run_config.callbacks or []), _stamp_callback(log)]
    result = trainer.fit()
    e2e = time.time() - t0
    if result.error is not None:
        raise RuntimeError(f"Ray Train run {name} failed: {result.error}")
    reports = [json.loads(line) for line in log.read_text().splitlines()]
    stamps = [(int(r["metrics"][0]["step"]), r["t"]) for r in reports]
    steady, window = steady_rate(stamps, batch * workers, warmup)
    history = [r["metrics"][0] for r in reports]  # rank 0's in-step times
    return Row(mode, f"ray-{workers}", workers, threads, cpw, batch, steps, steady,
               instep_rate(history, warmup, workers), window, e2e,
               startup_time(stamps, t0, batch * workers / steady), load, poll_s)


def measure_all(cfg: Any, setup: Setup, *, modes: Sequence[str], steps: int, batch: int, warmup: int,
                threads: int, workers: Sequence[int] = (1, 2), plain: bool = True,
                poll_s: float | None = None, progress: Callable[[str], None] = print) -> list[Row]:
    """The core measurement: per mode, plain (unless ``plain`` is False) then Ray with each
    worker count in ``workers``.

    Ray must already be initialised when ``workers`` is non-empty (``poll_s`` labels its
    rows with the controller's poll interval). 2+ workers get ``threads // workers`` torch
    threads each (at least 1)."""
    rows: list[Row] = []
    for mode in modes:
        if plain:
            progress(f"[{mode}] plain loop, {threads} threads, {steps} steps × batch {batch} ...")
            r = measure_plain(cfg, setup, mode, steps=steps, batch=batch, warmup=warmup, threads=threads)
            progress(f"[{mode}]   {r.steady_samples_per_s:.1f} samples/s steady, {r.end_to_end_s:.1f}s end to end")
            rows.append(r)
        for w in workers:
            t = max(1, threads // w)
            progress(f"[{mode}] Ray Train (poll {poll_s if poll_s is not None else '?'} s), {w} worker(s) × "
                     f"{t} threads, {steps} steps × batch {batch} per worker ...")
            r = measure_ray(cfg, setup, mode, workers=w, steps=steps, batch=batch, warmup=warmup, threads=t,
                            poll_s=poll_s)
            progress(f"[{mode}]   {r.steady_samples_per_s:.1f} samples/s steady "
                     f"({r.instep_samples_per_s:.1f} in-step), {r.end_to_end_s:.1f}s end to end")
            rows.append(r)
    return rows


def ratios(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """Per mode and Ray poll interval: Ray 1 worker / plain and Ray 2 workers / Ray 1
    worker, for steady samples/s, in-step samples/s and end-to-end time. "plain" is the
    mean of the plain rows (before and after Ray); ``plain_drift`` = after / before."""
    out: list[dict[str, Any]] = []
    polls = list(dict.fromkeys(r.poll_s for r in rows if r.run.startswith("ray"))) or [None]
    for mode in dict.fromkeys(r.mode for r in rows):
        plains = [r for r in rows if r.mode == mode and r.run.startswith("plain")]
        plain = None
        if plains:  # before and after Ray: their mean, so a drifting machine speed partly cancels
            n = len(plains)
            plain = replace(plains[0], steady_samples_per_s=sum(r.steady_samples_per_s for r in plains) / n,
                            instep_samples_per_s=sum(r.instep_samples_per_s for r in plains) / n,
                            end_to_end_s=sum(r.end_to_end_s for r in plains) / n)
        for poll in polls:
            by = {r.run: r for r in rows if r.mode == mode and r.poll_s == poll and r.run.startswith("ray")}
            d: dict[str, Any] = {"mode": mode, "poll_s": poll}
            if len(plains) == 2:
                d["plain_drift"] = plains[1].steady_samples_per_s / plains[0].steady_samples_per_s
            one, two = by.get("ray-1"), by.get("ray-2")
            if plain is not None and one is not None:
                d["overhead_steady"] = one.steady_samples_per_s / plain.steady_samples_per_s
                d["overhead_instep"] = one.instep_samples_per_s / plain.instep_samples_per_s
                d["overhead_e2e_time"] = one.end_to_end_s / plain.end_to_end_s
            if one is not None and two is not None:
                d["scaling_steady"] = two.steady_samples_per_s / one.steady_samples_per_s
                d["scaling_instep"] = two.instep_samples_per_s / one.instep_samples_per_s
            out.append(d)
    return out


# --------------------------------------------------------------------------- GPU section
def peak_bf16(device_name: str) -> float | None:
    for key, flops in PEAK_BF16:
        if key.lower() in device_name.lower():
            return flops
    return None


def measure_gpu(cfg: Any, setup: Setup, *, steps: int, batch: int, warmup: int, device: str = "cuda",
                preset: dict[str, Any] | None = None, dtype: str = "bfloat16") -> dict[str, Any]:
    """Full fine-tuning (no LoRA, nothing frozen) of a larger LLaVA-architecture preset in
    ``dtype`` on ``device`` with run_training; samples/s, tokens/s and MFU = 6 × params ×
    tokens/s / peak (tokens = padded input_ids, image tokens included)."""
    import torch

    from mmtune.config import LoraSettings, TinyLlavaPreset
    from mmtune.models.presets import build_tiny_llava
    from mmtune.models.student import apply_lora
    from mmtune.training.loop import DataPosition, EpochSampler, encode, run_training

    pre = TinyLlavaPreset(**(preset or GPU_PRESET))
    sc = cfg.student.model_copy(update={"lora": LoraSettings(enabled=False), "freeze_vision_tower": False,
                                        "freeze_projector": False, "freeze_llm": False, "dtype": dtype})
    torch.manual_seed(cfg.run.seed)
    texts = [r["instruction"] for r in setup.rows] + [r["response"] for r in setup.rows]
    model, processor = build_tiny_llava(pre, texts, cfg.data.skillworld.image_size)
    model = apply_lora(model, sc).to(device=device, dtype=getattr(torch, dtype))
    params = sum(p.numel() for p in model.parameters())
    rows = sorted(setup.rows, key=lambda r: r["id"])
    tc = training_config(cfg, "constant", steps, batch, 1)
    # tokens per step: replay the loop's data order (EpochSampler is seeded, deterministic)
    sampler, pos, tokens = EpochSampler(len(rows), batch, cfg.run.seed), DataPosition(), []
    for _ in range(steps):
        idx, pos = sampler.next_batch(pos)
        tokens.append(int(encode(processor, [rows[j] for j in idx], torch.device("cpu"))["input_ids"].numel()))
    stamps: list[tuple[int, float]] = []

    def report(m, _p):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        stamps.append((m["step"], time.time()))

    result = run_training(model, processor, rows, tc, seed=cfg.run.seed, report=report)
    sps, window = steady_rate(stamps, batch, warmup)
    t = dict(stamps)
    last = max(t) - 1
    tok_s = sum(tokens[warmup:last]) / window  # steps warmup+1 .. last
    name = torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor() or "cpu"
    peak = peak_bf16(name) if device.startswith("cuda") else None
    return {"device": name, "dtype": dtype, "preset": pre.model_dump(), "params": params, "steps": steps,
            "batch": batch, "steady_samples_per_s": sps, "tokens_per_s": tok_s,
            "tokens_per_sample": sum(tokens) / (steps * batch),
            "instep_samples_per_s": instep_rate(result.history, warmup),
            "achieved_flops": 6 * params * tok_s, "peak_flops": peak,
            "mfu": 6 * params * tok_s / peak if peak else None}


# --------------------------------------------------------------------------- report
def _poll(p: float | None) -> str:
    return "–" if p is None else f"{p:g}"


def format_rows(rows: Sequence[Row]) -> list[str]:
    lines = ["| mode | run | poll s | workers × torch threads | Ray CPUs/worker | samples/step | "
             "steady samples/s | in-step samples/s | steady window s | to step 1 s | end-to-end s | load |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        cpw = "–" if r.cpus_per_worker is None else f"{r.cpus_per_worker:g}"
        lines.append(f"| {r.mode} | {r.run} | {_poll(r.poll_s)} | {r.workers} × {r.threads_per_worker} | {cpw} | "
                     f"{r.global_batch} | {r.steady_samples_per_s:.1f} | {r.instep_samples_per_s:.1f} | "
                     f"{r.steady_window_s:.1f} | {r.startup_s:.1f} | {r.end_to_end_s:.1f} | {r.load_1min:.1f} |")
    return lines


def format_ratios(rat: Sequence[dict[str, Any]]) -> list[str]:
    lines = ["| mode | poll s | Ray 1 worker / plain: steady samples/s | in-step samples/s | end-to-end time | "
             "Ray 2 workers / 1 worker: steady samples/s | in-step samples/s | plain after / before |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    f = lambda d, k: f"{d[k]:.2f}" if k in d else "–"  # noqa: E731
    for d in rat:
        lines.append(f"| {d['mode']} | {_poll(d['poll_s'])} | {f(d, 'overhead_steady')} | "
                     f"{f(d, 'overhead_instep')} | {f(d, 'overhead_e2e_time')} | {f(d, 'scaling_steady')} | "
                     f"{f(d, 'scaling_instep')} | {f(d, 'plain_drift')} |")
    return lines


def format_gpu(g: dict[str, Any] | None, why_not: str | None) -> list[str]:
    if g is None:
        return [f"- GPU section skipped: {why_not}"]
    p = g["preset"]
    mfu = f"**{g['mfu'] * 100:.1f}%** of {g['peak_flops'] / 1e12:.0f} TFLOP/s" if g["mfu"] is not None \
        else "unknown peak for this device"
    return [f"- GPU ({g['device']}, {g['dtype']}): LLaVA-architecture preset, text {p['text_hidden']} × "
            f"{p['text_layers']} layers, vision {p['vision_hidden']} × {p['vision_layers']}, "
            f"{g['params'] / 1e6:.1f}M params, full fine-tuning, {g['steps']} steps × batch {g['batch']} "
            f"({g['tokens_per_sample']:.0f} tokens/sample): **{g['steady_samples_per_s']:.0f} samples/s**, "
            f"{g['tokens_per_s']:.0f} tokens/s, {g['achieved_flops'] / 1e12:.1f} TFLOP/s (6 × params × tokens/s), "
            f"MFU {mfu}"]


_ENV_POLL = os.environ.get(POLL_ENV)  # the caller's own setting, if any


def _start_ray(cfg: Any, tmp: Path, poll: str) -> tuple[float, float]:
    """Start a local Ray whose processes inherit the Train controller poll interval
    ``poll`` ("default" = the caller's environment, else Ray's 2 s); returns
    (effective poll seconds, seconds ray.init took)."""
    import ray

    if poll != "default":
        os.environ[POLL_ENV] = str(float(poll))
    elif _ENV_POLL is None:
        os.environ.pop(POLL_ENV, None)
    else:
        os.environ[POLL_ENV] = _ENV_POLL
    effective = float(os.environ.get(POLL_ENV, RAY_DEFAULT_POLL_S))
    t0 = time.time()
    ray.init(num_cpus=cfg.ray.num_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=False,
             object_store_memory=512 * 1024 * 1024, _temp_dir=str(tmp / "ray"))
    return effective, time.time() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    ap.add_argument("--steps", type=int, default=45, help="steps per measurement")
    ap.add_argument("--batch", type=int, default=16, help="batch size per worker")
    ap.add_argument("--warmup", type=int, default=5, help="steps left out of the steady-state window")
    ap.add_argument("--samples", type=int, default=320, help="SkillWorld corpus rows to train on")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads of plain and of 1 worker; 2 workers get half each (at least 1)")
    ap.add_argument("--modes", default="constant", help="comma-separated coordination modes")
    ap.add_argument("--ray-poll", default="default",
                    help=f"comma-separated Ray Train controller poll intervals in seconds ({POLL_ENV}); "
                         "'default' = Ray's 2 s; each further value restarts Ray and re-measures the Ray rows")
    ap.add_argument("--no-gpu", action="store_true", help="skip the GPU section even when CUDA is there")
    ap.add_argument("--gpu-steps", type=int, default=40)
    ap.add_argument("--gpu-batch", type=int, default=64)
    ap.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    if args.steps < args.warmup + 2:
        ap.error(f"--steps must be ≥ --warmup + 2 (got {args.steps} and {args.warmup})")
    polls = [p.strip() for p in args.ray_poll.split(",") if p.strip()] or ["default"]
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import ray
    import torch

    from mmtune.config import load_config

    cfg = load_config(args.config, args.overrides)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    t_all = time.time()
    code = code_version(["mmtune/training", "mmtune/models"])
    rows: list[Row] = []
    ray_init: list[str] = []
    kw = dict(modes=modes, steps=args.steps, batch=args.batch, warmup=args.warmup, threads=args.threads)
    with tempfile.TemporaryDirectory(prefix="mmtune-bench-tp-") as tmp:
        setup = prepare(cfg, Path(tmp), args.samples)
        rows += measure_all(cfg, setup, workers=(), **kw)  # before Ray starts: no Ray process at all
        if ray.is_initialized():
            if len(polls) > 1:
                print("[ray] already initialised: measuring its own poll interval only")
            polls = polls[:1]
        for k, poll in enumerate(polls):
            started = not ray.is_initialized()
            if started:
                poll_s, init_s = _start_ray(cfg, Path(tmp) / f"r{k}", poll)
                ray_init.append(f"{init_s:.1f} s")
            else:
                poll_s = float(os.environ.get(POLL_ENV, RAY_DEFAULT_POLL_S))
            print(f"[ray] {'started' if started else 'joined'} ({ray.cluster_resources().get('CPU', 0):g} CPUs, "
                  f"Train controller poll {poll_s:g} s)")
            try:
                rows += measure_all(cfg, setup, plain=False, poll_s=poll_s, **kw)
            finally:
                if started:
                    ray.shutdown()
        print("[plain] again, after Ray, to see how much the machine's speed drifted ...")
        rows += [replace(r, run="plain-after") for r in measure_all(cfg, setup, workers=(), **kw)]
        gpu, why_not = None, None
        if args.no_gpu:
            why_not = "--no-gpu was given"
        elif not torch.cuda.is_available():
            why_not = f"torch.cuda.is_available() is False (torch {torch.__version__}, no CUDA GPU visible)"
        else:
            print(f"[gpu] bf16 full fine-tuning on {torch.cuda.get_device_name()} ...")
            gpu = measure_gpu(cfg, setup, steps=args.gpu_steps, batch=args.gpu_batch, warmup=args.warmup)
        if why_not:
            print(f"[gpu] skipped: {why_not}")
    total_s = time.time() - t_all
    rat = ratios(rows)

    cmd = "python -m bench.train_throughput " + " ".join(sys.argv[1:] if argv is None else argv)
    p = setup.preset
    lines = [
        f"<!-- {MARK} -->",
        "### What Ray Train costs: throughput side by side (one run)",
        "",
        f"- date: {dt.date.today().isoformat()}; machine: {machine()}; code: {code}",
        f"- command: `{cmd.strip()}` (whole benchmark {total_s:.0f} s)",
        f"- student: random tiny-llava (vision {p['vision_hidden']} × {p['vision_layers']} frozen, text "
        f"{p['text_hidden']} × {p['text_layers']}), {setup.params / 1e6:.2f}M params, "
        f"{setup.trainable / 1e3:.0f}k trainable (LoRA r={cfg.student.lora.r} + projector), float32, CPU",
        f"- data: {setup.n_samples} SkillWorld corpus rows in one parquet file; {args.steps} steps × batch "
        f"{args.batch} per worker; steady window = steps {args.warmup + 1}–{args.steps - 1}",
        f"- threads: plain and Ray 1 worker {args.threads} torch thread(s); Ray 2 workers "
        f"{max(1, args.threads // 2)} each (Ray CPUs per worker in the table); plain runs before Ray starts "
        "and again after it stops (plain-after; the ratios use their mean); `ray.init` took "
        f"{', '.join(ray_init) or '– (joined a running Ray)'} (not in the rows); load = 1-minute load "
        "average when the row started; to step 1 = from the start of the row to step 1's report (for Ray: "
        "Ray Data read, worker group start, model load, first step)",
        "",
        *format_rows(rows),
        "",
        "Ratios (the numbers to compare; absolute speeds on a shared machine are noise):",
        "",
        *format_ratios(rat),
        "",
        *format_gpu(gpu, why_not),
        f"<!-- /{MARK} -->",
    ]
    section = "\n".join(lines)
    print("\n" + section)
    print("\n" + json.dumps({"rows": [asdict(r) for r in rows], "ratios": rat, "gpu": gpu}, default=str))
    if args.write:
        if not write_section(MARK, section):
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
