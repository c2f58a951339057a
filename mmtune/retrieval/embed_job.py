"""Ray Data adapter: stream the corpus through embedders into embedding shards.

``embed_corpus(cfg, files, out_dir)`` runs, over the corpus files not yet embedded:

1. **read + choose content** (``ray.data.read_parquet`` with only the columns needed, then
   ``map_batches``): each row's text by ``retrieval.text`` (:func:`~mmtune.retrieval.embed.text_of`)
   and a content key. Rows without usable content (no id, no skills annotated, empty
   text, no image) are quarantined with a reason, counted and written, never dropped;
2. **de-duplicate**: identical content is embedded once. Keys already embedded by an
   earlier run (the content cache) are skipped too;
3. **embed** the unique contents in an actor pool (``ActorPoolStrategy``): one actor per
   GPU with ``num_gpus`` and fp16 when the cluster has GPUs, else CPU actors sized from
   the cluster's CPUs, unless ``retrieval.embed_actors`` sets the pool;
4. **write** ``embeddings/part-*.parquet`` (``id``, ``vector``) for the new files, and the
   texts (``texts/part-*.parquet``: ``id``, ``text``) that BM25 indexes.

``manifest.json`` records the embedder, the content mode and, per input file, its size,
mtime, rows, quarantined rows and output shard. A rerun with the same corpus and embedder
skips the work; new files are embedded and appended; a changed file or embedder is refused
with the fix (``--rebuild``) rather than mixed in.

Choices [ours]: dedup happens on the driver over (key, content) pairs, which is cheap for
skill phrases (thousands of distinct texts however large the corpus) and bounded by the
number of *distinct* contents otherwise; the image bytes of ``retrieval.text=image`` pass
through the driver the same way, so image mode is meant for corpora of up to ~1M small
images.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mmtune.config import RunConfig
from mmtune.retrieval.embed import content_key, text_of

MANIFEST = "manifest.json"
QUARANTINE_SCHEMA = pa.schema([("id", pa.string()), ("source_file", pa.string()), ("reason", pa.string())])


@dataclass
class EmbedReport:
    out_dir: str
    embedder: str
    mode: str
    dim: int
    files_new: int
    files_skipped: int
    rows: int = 0
    quarantined: int = 0
    unique_contents: int = 0
    embedded: int = 0  # contents actually run through the model (new, unique)
    actors_used: int = 0  # embedder actors that produced output
    seconds: float = 0.0
    reasons: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        if not self.files_new:
            return f"[index] embeddings up to date ({self.files_skipped} file(s)); nothing to embed"
        q = ", ".join(f"{k}: {v}" for k, v in sorted(self.reasons.items())) or "none"
        return (f"[index] embedded {self.rows} rows from {self.files_new} new file(s) "
                f"({self.files_skipped} already done): {self.unique_contents} distinct contents, "
                f"{self.embedded} run through {self.embedder} on {self.actors_used} actor(s), "
                f"{self.quarantined} quarantined ({q}), "
                f"{self.seconds:.1f}s")


def _columns(mode: str, available: Sequence[str]) -> list[str]:
    need = {"skills": ["id", "skills"], "instruction": ["id", "instruction"],
            "instruction_response": ["id", "instruction", "response"], "image": ["id", "image"]}[mode]
    missing = [c for c in need if c not in available]
    if missing:
        raise ValueError(f"retrieval.text={mode} needs column(s) {missing}, which the corpus lacks; "
                         "import it with `mmtune data import` to get the Sample schema")
    return need


def content_batch(batch: pa.Table, mode: str) -> pa.Table:
    """Per row: id, key, text (or blob for images), reason (null when usable)."""
    rows = batch.to_pylist()
    ids, keys, texts, blobs, reasons = [], [], [], [], []
    for r in rows:
        rid = r.get("id")
        c = text_of(r, mode)
        reason = None
        if rid is None or str(rid) == "":
            reason = "missing id"
        elif c is None:
            reason = {"skills": "no skills annotated (run the teacher's annotation, or set retrieval.text)",
                      "image": "no image"}.get(mode, "empty text")
        ids.append(None if rid is None else str(rid))
        keys.append(content_key(c) if reason is None else None)
        texts.append(c if reason is None and isinstance(c, str) else None)
        blobs.append(c if reason is None and isinstance(c, bytes) else None)
        reasons.append(reason)
    return pa.table({"id": pa.array(ids, pa.string()), "key": pa.array(keys, pa.string()),
                     "text": pa.array(texts, pa.string()), "blob": pa.array(blobs, pa.binary()),
                     "reason": pa.array(reasons, pa.string())})


class EmbedActor:
    """``map_batches`` callable: loads the embedder once per actor, embeds a batch of contents."""

    def __init__(self, name: str, mode: str, batch_size: int):
        from mmtune.retrieval.embed import make_embedder

        self.mode = mode
        self.embedder = make_embedder(name, mode, batch_size=batch_size)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        contents = list(batch["blob"] if self.mode == "image" else batch["text"])
        vecs = self.embedder([bytes(c) for c in contents] if self.mode == "image" else [str(c) for c in contents])
        # the actor's pid travels with its output, so the report can say how many worked
        return {"key": batch["key"], "vector": vecs, "actor_pid": np.full(len(vecs), os.getpid())}


def content_blocks(table: pa.Table, rows_per_block: int) -> list[pa.Table]:
    """``table`` cut into blocks of ``rows_per_block`` rows (zero-copy slices)."""
    return [table.slice(i, rows_per_block) for i in range(0, table.num_rows, max(1, rows_per_block))]


def _actor_plan(cfg: RunConfig) -> tuple[int, float]:
    import ray

    res = ray.cluster_resources()
    gpus, cpus = int(res.get("GPU", 0)), int(res.get("CPU", 1))
    rc = cfg.retrieval
    if gpus:
        return rc.embed_actors or max(1, int(gpus / rc.embed_gpus_per_actor)), rc.embed_gpus_per_actor
    # CPU: leave one CPU for the read/write tasks; each actor gets torch's threads
    return rc.embed_actors or max(1, min(4, cpus - 1)), 0.0


def _file_sig(path: str) -> dict[str, int]:
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _load_manifest(out: Path) -> dict[str, Any] | None:
    p = out / MANIFEST
    return json.loads(p.read_text()) if p.is_file() else None


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _load_cache(out: Path) -> dict[str, np.ndarray]:
    cache: dict[str, np.ndarray] = {}
    for f in sorted((out / "cache").glob("part-*.parquet")):
        t = pq.read_table(f)
        vecs = np.asarray(t.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False),
                          dtype=np.float32).reshape(t.num_rows, -1)
        for k, v in zip(t.column("key").to_pylist(), vecs):
            cache[k] = v
    return cache


def _vector_table(keys_or_ids: list[str], vecs: np.ndarray, name: str, dim: int) -> pa.Table:
    flat = pa.array(np.ascontiguousarray(vecs, dtype=np.float32).reshape(-1))
    return pa.table({name: pa.array(keys_or_ids, pa.string()),
                     "vector": pa.FixedSizeListArray.from_arrays(flat, dim)})


def embed_corpus(cfg: RunConfig, files: Sequence[str], out_dir: str | Path, *, rebuild: bool = False,
                 progress=print) -> EmbedReport:
    """Embed the corpus ``files`` (Sample parquet) into ``out_dir``; Ray must be initialised."""
    import ray

    rc = cfg.retrieval
    out = Path(out_dir)
    if rebuild and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    files = [str(Path(f).resolve()) for f in files]
    man = _load_manifest(out)
    if man is not None and (man["embedder"], man["mode"]) != (rc.embedder, rc.text):
        raise ValueError(f"{out} holds embeddings by {man['embedder']} of {man['mode']!r}; this run asks for "
                         f"{rc.embedder} of {rc.text!r}. Use another output directory, or --rebuild")
    man = man or {"embedder": rc.embedder, "mode": rc.text, "dim": None, "files": {}, "shards": 0}
    for f in files:
        old = man["files"].get(f)
        if old is not None and {k: old[k] for k in ("size", "mtime_ns")} != _file_sig(f):
            raise ValueError(f"{f} changed since it was embedded into {out}; its old vectors would be stale. "
                             "Re-run with --rebuild")
    new = [f for f in files if f not in man["files"]]
    report = EmbedReport(str(out), rc.embedder, rc.text, man["dim"] or 0, len(new), len(files) - len(new))
    if not new:
        return report

    t0 = time.time()
    cols = _columns(rc.text, pq.read_schema(new[0]).names)
    progress(f"[index] reading {len(new)} file(s), content: {rc.text}")
    ds = ray.data.read_parquet(new, include_paths=True).select_columns([*cols, "path"])
    contents = ds.map_batches(
        lambda b: content_batch(b, rc.text).append_column("path", b.column("path")),
        batch_format="pyarrow", batch_size=4096).materialize()
    table = pa.concat_tables(list(contents.iter_batches(batch_format="pyarrow", batch_size=None))) \
        if contents.count() else None
    if table is None:
        raise ValueError(f"no rows in {new}")
    report.rows = table.num_rows

    # quarantine: counted by reason, written beside the embeddings
    bad_mask = table.column("reason").is_valid()
    bad = table.filter(bad_mask)
    good = table.filter(pc.invert(bad_mask))
    report.quarantined = bad.num_rows
    for r in bad.column("reason").to_pylist():
        report.reasons[r] = report.reasons.get(r, 0) + 1
    shard = int(man["shards"])
    if bad.num_rows:
        qdir = out / "quarantine"
        qdir.mkdir(exist_ok=True)
        pq.write_table(pa.table({"id": bad.column("id"), "source_file": bad.column("path"),
                                 "reason": bad.column("reason")}, schema=QUARANTINE_SCHEMA),
                       qdir / f"part-{shard:05d}.parquet")
        progress(f"[index] quarantined {bad.num_rows} row(s): "
                 + ", ".join(f"{k} ×{v}" for k, v in sorted(report.reasons.items())))
    if good.num_rows == 0:
        raise ValueError(f"every row of {len(new)} file(s) was quarantined ({report.reasons}); nothing to embed. "
                         "For retrieval.text=skills annotate the corpus first, or set retrieval.text=instruction")
    dup = len(set(good.column("id").to_pylist())) != good.num_rows
    prior_ids = set()
    for f in sorted((out / "embeddings").glob("part-*.parquet")):
        prior_ids.update(pq.read_table(f, columns=["id"]).column("id").to_pylist())
    clash = prior_ids & set(good.column("id").to_pylist())
    if dup or clash:
        raise ValueError("sample ids repeat across the corpus files"
                         + (f" (e.g. {sorted(clash)[:3]} were embedded before)" if clash else "")
                         + "; ids must be unique corpus-wide (re-import with distinct ids)")

    # de-duplicate contents, skipping those embedded by earlier runs
    cache = _load_cache(out)
    keys = good.column("key").to_pylist()
    uniq: dict[str, int] = {}
    for i, k in enumerate(keys):
        if k not in uniq:
            uniq[k] = i
    todo = [i for k, i in uniq.items() if k not in cache]
    report.unique_contents = len(uniq)
    report.embedded = len(todo)
    if todo:
        n_actors, gpus = _actor_plan(cfg)
        progress(f"[index] embedding {len(todo)} distinct content(s) of {good.num_rows} rows with "
                 f"{rc.embedder} on {n_actors} actor(s){' × %g GPU' % gpus if gpus else ' (CPU)'}")
        todo_table = good.take(pa.array(todo)).select(["key", "text", "blob"])
        # One Arrow table is one block, and one block feeds one actor: cut the contents into
        # batch-sized blocks so every actor of the pool works and output streams early.
        vecs_ds = ray.data.from_arrow(content_blocks(todo_table, rc.embed_batch_size)).map_batches(
            EmbedActor, fn_constructor_kwargs={"name": rc.embedder, "mode": rc.text,
                                               "batch_size": rc.embed_batch_size},
            batch_size=rc.embed_batch_size, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=n_actors), num_gpus=gpus or None, num_cpus=1)
        got_keys, got_vecs, pids = [], [], set()
        for b in vecs_ds.iter_batches(batch_format="numpy", batch_size=None):
            got_keys.extend(str(k) for k in b["key"])
            got_vecs.append(np.asarray(b["vector"], dtype=np.float32))
            pids.update(int(p) for p in b["actor_pid"])
        report.actors_used = len(pids)
        vecs = np.concatenate(got_vecs)
        dim = vecs.shape[1]
        if man["dim"] not in (None, dim):
            raise ValueError(f"embedder returned dimension {dim}, earlier shards have {man['dim']}; --rebuild")
        man["dim"] = report.dim = dim
        (out / "cache").mkdir(exist_ok=True)
        pq.write_table(_vector_table(got_keys, vecs, "key", dim), out / "cache" / f"part-{shard:05d}.parquet")
        cache.update(zip(got_keys, vecs))
    dim = int(man["dim"])
    report.dim = dim

    # the embedding shard (id, vector) and the texts BM25 indexes
    (out / "embeddings").mkdir(exist_ok=True)
    ids = good.column("id").to_pylist()
    pq.write_table(_vector_table(ids, np.stack([cache[k] for k in keys]), "id", dim),
                   out / "embeddings" / f"part-{shard:05d}.parquet")
    if rc.text != "image":
        (out / "texts").mkdir(exist_ok=True)
        pq.write_table(pa.table({"id": good.column("id"), "text": good.column("text")}),
                       out / "texts" / f"part-{shard:05d}.parquet")
    counts_by_file: dict[str, tuple[int, int]] = {}
    for p, reason in zip(table.column("path").to_pylist(), table.column("reason").to_pylist()):
        n, q = counts_by_file.get(p, (0, 0))
        counts_by_file[p] = (n + 1, q + (reason is not None))
    for f in new:
        n, q = next((v for p, v in counts_by_file.items() if str(Path(p).resolve()) == f or p == f), (0, 0))
        man["files"][f] = {**_file_sig(f), "rows": n, "quarantined": q, "shard": shard}
    man["shards"] = shard + 1
    _write_atomic(out / MANIFEST, json.dumps(man, indent=2))
    report.seconds = round(time.time() - t0, 2)
    return report


def read_embeddings(out_dir: str | Path) -> tuple[list[str], np.ndarray]:
    """All ``(ids, vectors)`` written under ``out_dir``, in shard order."""
    ids: list[str] = []
    parts = []
    for f in sorted((Path(out_dir) / "embeddings").glob("part-*.parquet")):
        t = pq.read_table(f)
        ids.extend(t.column("id").to_pylist())
        parts.append(np.asarray(t.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False),
                                dtype=np.float32).reshape(t.num_rows, -1))
    if not parts:
        raise FileNotFoundError(f"no embedding shards under {out_dir}; run `mmtune index` first")
    return ids, np.concatenate(parts)


def read_texts(out_dir: str | Path) -> tuple[list[str], list[str]]:
    ids: list[str] = []
    texts: list[str] = []
    for f in sorted((Path(out_dir) / "texts").glob("part-*.parquet")):
        t = pq.read_table(f)
        ids.extend(t.column("id").to_pylist())
        texts.extend(t.column("text").to_pylist())
    return ids, texts


__all__ = ["EmbedActor", "EmbedReport", "content_batch", "embed_corpus", "read_embeddings", "read_texts"]
