"""Ray Data adapter: the teacher writes each corpus sample's skill phrases.

``annotate_corpus(cfg, files, out_dir, teacher_dir)`` streams the corpus (Sample parquet)
through an actor pool of teachers (``ActorPoolStrategy``; one actor per GPU with
``num_gpus`` when the cluster has GPUs, else CPU actors) that fill the ``skills`` column,
and writes:

- ``corpus/part-*.parquet``: the same rows, Sample schema, ``skills`` filled; this is what
  the index (issue C, ``retrieval.text=skills``) reads;
- ``unparsed.parquet``: ``id``, ``raw`` for every sample whose reply had no skill phrase
  after the teacher's re-asks. Those rows stay in the corpus with empty ``skills``
  (the index quarantines and counts them), so nothing is lost silently;
- ``manifest.json``: the teacher, prompt version, row counts and timing.

The output order is the input order (``preserve_order``), so reruns are byte-identical.
An actor pool rather than the Serve app: annotation is a bulk, throughput-bound batch job
over the whole corpus, done once and cached, which is what Ray Data's actor pools are for;
the Serve app serves the latency-bound, bursty diagnosis calls.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mmtune.config import RunConfig, TeacherConfig
from mmtune.data.schema import SAMPLE_SCHEMA

MANIFEST = "manifest.json"
RAW_COL = "_annotation_raw"


class Annotator:
    """A ``map_batches`` callable: loads the teacher once per actor and fills ``skills``."""

    def __init__(self, teacher_cfg: dict[str, Any], builtin_dir: str | None, threads: int | None = None):
        import torch

        from .backend import make_backend
        from .teacher import Teacher

        if threads:
            torch.set_num_threads(threads)
        cfg = TeacherConfig.model_validate(teacher_cfg)
        self.teacher = Teacher(make_backend(cfg, builtin_dir), cfg)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.select(["id", "instruction", "response"]).to_pylist()
        got = self.teacher.annotate(rows)
        skills = pa.array([s for s, _ in got], pa.list_(pa.string()))
        raw = pa.array([None if s else r for s, r in got], pa.string())
        batch = batch.set_column(batch.schema.get_field_index("skills"), "skills", skills)
        return batch.append_column(RAW_COL, raw)


def _norm(ident: dict[str, Any]) -> dict[str, Any]:
    """An annotation's identity with a local model path made absolute, so that the same
    teacher named by a relative and an absolute path is recognised as the same."""
    model = ident.get("model")
    if model and Path(model).exists():
        ident = {**ident, "model": str(Path(model).resolve())}
    return ident


def _actor_plan(cfg: RunConfig) -> tuple[int, float, int]:
    import ray

    res = ray.cluster_resources()
    gpus, cpus = int(res.get("GPU", 0)), int(res.get("CPU", 1))
    if gpus:
        n = max(1, int(gpus / cfg.teacher.serve.num_gpus_per_replica or 1))
        return n, cfg.teacher.serve.num_gpus_per_replica, max(1, cpus // n)
    n = max(1, min(4, cpus - 1)) if cpus > 2 else 1
    return n, 0.0, max(1, cpus // n)


def annotate_corpus(cfg: RunConfig, files: Sequence[str | Path], out_dir: str | Path, *,
                    builtin_dir: str | Path | None = None, rebuild: bool = False,
                    progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Annotate ``files`` into ``out_dir`` (see the module doc); Ray must be initialised.

    A finished ``out_dir`` for the same inputs and teacher is reused; anything else there
    is refused with the fix (``rebuild``) rather than mixed in."""
    import ray

    out = Path(out_dir)
    files = [str(Path(f).resolve()) for f in files]
    ident = {"files": {f: Path(f).stat().st_size for f in files}, "teacher": cfg.teacher.backend,
             "model": str(builtin_dir or cfg.teacher.name_or_path), "prompts": cfg.teacher.prompt_version}
    man_path = out / MANIFEST
    if man_path.is_file() and not rebuild:
        man = json.loads(man_path.read_text())
        if _norm(man.get("ident") or {}) == _norm(ident):
            progress(f"[annotate] corpus already annotated at {out} ({man['rows']} rows, {man['unparsed']} unparsed)")
            return man
        raise ValueError(f"{out} holds an annotation of other inputs or by another teacher; use another output "
                         "directory or rebuild (--rebuild)")
    if out.exists():
        shutil.rmtree(out)
    (out / "corpus").mkdir(parents=True)
    n_actors, gpus, threads = _actor_plan(cfg)
    total = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    progress(f"[annotate] {total} corpus rows, {n_actors} teacher actor(s){' on GPU' if gpus else ''}")
    ctx = ray.data.DataContext.get_current()
    keep = (ctx.execution_options.preserve_order, ctx.target_max_block_size)
    ctx.execution_options.preserve_order = True  # deterministic shards
    # Blocks of ~1/200 of the corpus (1 MiB .. 128 MiB): the default 128 MiB blocks would hold
    # a small corpus whole, and the driver would see no result (and print no progress)
    # until the very end.
    nbytes = sum(Path(f).stat().st_size for f in files)
    ctx.target_max_block_size = int(min(max(nbytes // 200, 1 << 20), 128 << 20))
    try:
        return _run(cfg, files, out, ident, builtin_dir, total, n_actors, gpus, threads, progress)
    finally:
        ctx.execution_options.preserve_order, ctx.target_max_block_size = keep


def _run(cfg: RunConfig, files: list[str], out: Path, ident: dict[str, Any], builtin_dir, total: int,
         n_actors: int, gpus: float, threads: int, progress: Callable[[str], None]) -> dict[str, Any]:
    import ray

    man_path = out / MANIFEST
    ds = ray.data.read_parquet(files).map_batches(
        Annotator, fn_constructor_kwargs={"teacher_cfg": cfg.teacher.model_dump(mode="json"),
                                          "builtin_dir": str(builtin_dir) if builtin_dir else None,
                                          "threads": threads},
        batch_size=cfg.teacher.batch_size * 4, batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=n_actors), num_gpus=gpus or None, num_cpus=1)
    t0, done, shard, unparsed = time.time(), 0, 0, []
    pending: pa.Table | None = None

    def write(table: pa.Table) -> None:
        nonlocal shard
        pq.write_table(table, out / "corpus" / f"part-{shard:05d}.parquet")
        shard += 1

    last = 0.0
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        raw = batch.column(RAW_COL).to_pylist()
        ids = batch.column("id").to_pylist()
        unparsed += [{"id": i, "raw": r} for i, r in zip(ids, raw) if r is not None]
        rows = batch.drop_columns([RAW_COL]).select(SAMPLE_SCHEMA.names).cast(SAMPLE_SCHEMA)
        pending = rows if pending is None else pa.concat_tables([pending, rows])
        # Shards of exactly shard_rows rows whatever Ray Data's block sizes were, so a
        # rerun writes byte-identical files.
        while pending.num_rows >= cfg.data.shard_rows:
            write(pending.slice(0, cfg.data.shard_rows))
            pending = pending.slice(cfg.data.shard_rows)
        done += batch.num_rows
        if time.time() - last > 10 or done == total:
            last = time.time()
            rate = done / max(time.time() - t0, 1e-9)
            progress(f"[annotate] {done}/{total} rows ({rate:.0f} rows/s, eta {(total - done) / max(rate, 1e-9):.0f}s, "
                     f"{len(unparsed)} unparsed)")
    if pending is not None and pending.num_rows:
        write(pending)
    pq.write_table(pa.Table.from_pylist(unparsed, schema=pa.schema([("id", pa.string()), ("raw", pa.string())])),
                   out / "unparsed.parquet")
    man = {"ident": ident, "rows": done, "unparsed": len(unparsed), "shards": shard, "actors": n_actors,
           "seconds": round(time.time() - t0, 1), "rows_per_s": round(done / max(time.time() - t0, 1e-9), 1)}
    tmp = man_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(man, indent=2))
    tmp.replace(man_path)  # written last: a crashed run leaves no manifest and is redone
    if unparsed:
        progress(f"[annotate] {len(unparsed)} rows got no skill phrase; kept with empty skills, raw replies in "
                 f"{out / 'unparsed.parquet'}")
    return man


def annotated_files(out_dir: str | Path) -> list[Path]:
    return sorted((Path(out_dir) / "corpus").glob("part-*.parquet"))
