"""Ray Data adapter: stream the corpus through embedders into embedding shards.

``embed_corpus(cfg, files, out_dir)`` runs, over the corpus files not yet embedded:

1. **read + choose content**: one Ray Data task per (file, row group) reads only the
   columns needed and picks each row's text by ``retrieval.text``
   (:func:`~mmtune.retrieval.embed.text_of`) and a content key. Rows without usable content
   (no id, no skills annotated, empty text, no image) are quarantined with a reason,
   counted and written, never dropped. So are rows the read itself fails on: a row group
   that does not decode (a damaged page) and a value that does not convert (text that is
   not UTF-8) quarantine their rows, by id, instead of failing the task and the job
   (:mod:`mmtune.data.salvage`). Footers are read first, on the driver: a truncated file
   or a missing column is a clear error before any task runs;
2. **de-duplicate**: identical content is embedded once. Keys already embedded by an
   earlier run (the content cache) are skipped too;
3. **embed** the unique contents in an actor pool (``ActorPoolStrategy``): one actor per
   GPU with ``num_gpus`` and fp16 when the cluster has GPUs, else CPU actors sized from
   the cluster's CPUs, unless ``retrieval.embed_actors`` sets the pool. A batch the model
   raises on is retried item by item; the rows of a content that still fails are
   quarantined with the error (most contents failing is an error: the embedder's, not
   the data's);
4. **write** ``embeddings/part-*.parquet`` (``id``, ``vector``) for the new files, in file
   and row order whatever order the tasks finished in, and the texts
   (``texts/part-*.parquet``: ``id``, ``text``) that BM25 indexes.

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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mmtune.config import RunConfig
from mmtune.data.readers import open_parquet
from mmtune.data.salvage import decode_rows, each_or_reason, read_row_group, safe_value
from mmtune.data.validate import reason_category
from mmtune.metrics import Recorder, record_quarantine
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


def _content_table(ids: list, keys: list, texts: list, blobs: list, reasons: list) -> pa.Table:
    return pa.table({"id": pa.array(ids, pa.string()), "key": pa.array(keys, pa.string()),
                     "text": pa.array(texts, pa.string()), "blob": pa.array(blobs, pa.binary()),
                     "reason": pa.array(reasons, pa.string())})


def content_batch(batch: pa.Table, mode: str) -> pa.Table:
    """Per row: id, key, text (or blob for images), reason (null when usable).

    A row whose values do not decode (text that is not UTF-8, say) gets its reason rather
    than failing the batch, and with it the Ray Data task (:func:`decode_rows`)."""
    ids, keys, texts, blobs, reasons = [], [], [], [], []
    for i, r in enumerate(decode_rows(batch)):
        c, reason = None, None
        if isinstance(r, str):  # the row did not decode: r is why
            rid, reason = safe_value(batch, "id", i), r
        else:
            rid = r.get("id")
            try:
                c = text_of(r, mode)
            except Exception as e:  # noqa: BLE001 - a value of an unexpected type: this row only
                reason = f"no usable content: {type(e).__name__}: {str(e)[:300]}; fix the row, or drop it"
        if reason is not None:
            pass
        elif rid is None or str(rid) == "":
            reason = "missing id"
        elif c is None:
            reason = {"skills": "no skills annotated (run the teacher's annotation, or set retrieval.text)",
                      "image": "no image"}.get(mode, "empty text")
        ids.append(None if rid is None else str(rid))
        keys.append(content_key(c) if reason is None else None)
        texts.append(c if reason is None and isinstance(c, str) else None)
        blobs.append(c if reason is None and isinstance(c, bytes) else None)
        reasons.append(reason)
    return _content_table(ids, keys, texts, blobs, reasons)


def read_units(files: Sequence[str], mode: str) -> list[dict[str, Any]]:
    """The corpus as units of work, one per (file, row group), for the read tasks.

    Every file's footer is read here, on the driver, before any task runs: a truncated file
    (no footer) or one without the columns ``mode`` needs is a clear error naming the file
    and the fix, as in the importer, rather than a failed task."""
    units = []
    for fi, f in enumerate(files):
        pf = open_parquet(Path(f))
        try:
            _columns(mode, pf.schema_arrow.names)
        except ValueError as e:
            raise ValueError(f"{f}: {e}") from None
        first = 0
        md = pf.metadata
        for g in range(md.num_row_groups):
            n = md.row_group(g).num_rows
            if n:
                units.append({"path": f, "file": fi, "row_group": g, "first": first, "rows": n})
            first += n
    return units


def unit_contents(unit: Mapping[str, Any], mode: str) -> pa.Table:
    """Content rows (:func:`content_batch`, plus ``path``, ``file`` and ``row``) of one row
    group. A row group that does not decode (a damaged page) is not an error: each of its
    rows becomes a quarantine row with the reason, by id where the ids still read."""
    pf = pq.ParquetFile(unit["path"])
    first, n = int(unit["first"]), int(unit["rows"])
    table, reason, ids = read_row_group(pf, int(unit["row_group"]), _columns(mode, pf.schema_arrow.names))
    if table is not None:
        out = content_batch(table, mode)
    else:
        none = [None] * n
        out = _content_table([None if i is None else str(i) for i in ids], none, none, none, [reason] * n)
    return (out.append_column("path", pa.array([str(unit["path"])] * n, pa.string()))
            .append_column("file", pa.array([int(unit["file"])] * n, pa.int64()))
            .append_column("row", pa.array(range(first, first + n), pa.int64())))


class EmbedActor:
    """``map_batches`` callable: loads the embedder once per actor, embeds a batch of contents."""

    def __init__(self, name: str, mode: str, batch_size: int):
        from mmtune.retrieval.embed import make_embedder

        self.mode = mode
        self.embedder = make_embedder(name, mode, batch_size=batch_size)
        self.metrics = Recorder(["retrieval_embedded"], mode=mode)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        contents = list(batch["blob"] if self.mode == "image" else batch["text"])
        items = [bytes(c) for c in contents] if self.mode == "image" else [str(c) for c in contents]
        # A content the model cannot take (bytes that are no image) must not fail the task and
        # the whole job: the batch is retried item by item, a failing item keeps its error.
        vecs, errors = each_or_reason(self.embedder, items)
        dim = int(getattr(self.embedder, "dim", 0) or next((len(v) for v in vecs if v is not None), 0))
        out = np.stack([np.asarray(v, np.float32) if v is not None else np.zeros(dim, np.float32) for v in vecs]) \
            if vecs else np.zeros((0, dim), np.float32)
        self.metrics.inc("retrieval_embedded", sum(e is None for e in errors))
        # the actor's pid travels with its output, so the report can say how many worked
        return {"key": batch["key"], "vector": out, "error": np.array([e or "" for e in errors], dtype=object),
                "actor_pid": np.full(len(out), os.getpid())}


def _reasons(table: pa.Table) -> dict[str, int]:
    """Quarantined rows by reason category (the text before the first colon), so that
    per-row details (which byte, which row group) do not make one entry each."""
    out: dict[str, int] = {}
    for r in table.column("reason").drop_null().to_pylist():
        c = reason_category(r)
        out[c] = out.get(c, 0) + 1
    return out


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
    units = read_units(new, rc.text)  # footers and columns checked here: clear errors, before any task
    progress(f"[index] reading {len(new)} file(s) ({len(units)} row group(s)), content: {rc.text}")
    # One task per row group, reading it itself (not ray.data.read_parquet): a row group that
    # does not decode, or a row whose text is not UTF-8, is quarantined by that task with its
    # reason instead of failing the task and the job (mmtune/data/salvage.py).
    mode = rc.text
    contents = ray.data.from_items(units, override_num_blocks=max(1, len(units))).map_batches(
        lambda b: pa.concat_tables([unit_contents(u, mode) for u in b.to_pylist()]),
        batch_format="pyarrow", batch_size=1).materialize()
    parts = list(contents.iter_batches(batch_format="pyarrow", batch_size=None))
    if not parts or not sum(p.num_rows for p in parts):
        raise ValueError(f"no rows in {new}")
    # Tasks finish in any order: sort to (file, row) so shards are the same on every run.
    table = pa.concat_tables(parts).sort_by([("file", "ascending"), ("row", "ascending")])
    report.rows = table.num_rows

    good = table.filter(pc.invert(table.column("reason").is_valid()))
    if good.num_rows == 0:
        record_quarantine("index", "corpus", _reasons(table))  # counted even when the job stops here
        raise ValueError(f"every row of {len(new)} file(s) was quarantined ({_reasons(table)}); nothing to embed. "
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
    shard = int(man["shards"])
    cache = _load_cache(out)
    keys = good.column("key").to_pylist()
    uniq: dict[str, int] = {}
    for i, k in enumerate(keys):
        if k not in uniq:
            uniq[k] = i
    todo = [i for k, i in uniq.items() if k not in cache]
    report.unique_contents = len(uniq)
    report.embedded = len(todo)
    failed: dict[str, str] = {}  # content key -> why the embedder failed on it
    if todo:
        n_actors, gpus = _actor_plan(cfg)
        progress(f"[index] embedding {len(todo)} distinct content(s) of {good.num_rows} rows with "
                 f"{rc.embedder} on {n_actors} actor(s){f' × {gpus:g} GPU' if gpus else ' (CPU)'}")
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
            ok = np.array([not e for e in b["error"]], dtype=bool)
            failed.update((str(k), str(e)) for k, e in zip(b["key"], b["error"]) if e)
            got_keys.extend(str(k) for k in b["key"][ok])
            got_vecs.append(np.asarray(b["vector"], dtype=np.float32)[ok])
            pids.update(int(p) for p in b["actor_pid"])
        report.actors_used = len(pids)
        if failed and len(failed) * 2 > len(todo):
            # Most contents failing is the embedder's fault (out of memory, a broken model),
            # not the data's: quarantining the corpus would hide it.
            raise RuntimeError(f"the embedder {rc.embedder} failed on {len(failed)} of {len(todo)} contents, e.g. "
                               f"{next(iter(failed.values()))}; that is a problem of the embedder or the machine, "
                               "not of a few rows: fix it and re-run")
        if got_vecs and got_keys:
            vecs = np.concatenate(got_vecs)
            dim = vecs.shape[1]
            if man["dim"] not in (None, dim):
                raise ValueError(f"embedder returned dimension {dim}, earlier shards have {man['dim']}; --rebuild")
            man["dim"] = report.dim = dim
            (out / "cache").mkdir(exist_ok=True)
            pq.write_table(_vector_table(got_keys, vecs, "key", dim), out / "cache" / f"part-{shard:05d}.parquet")
            cache.update(zip(got_keys, vecs))
        report.embedded = len(got_keys)
    if failed:  # rows whose content the embedder could not take: quarantined, with its error
        why = [None if r is not None or k not in failed else
               f"embedder failed: {failed[k]}; fix or drop the row (the other rows were embedded)"
               for k, r in zip(table.column("key").to_pylist(), table.column("reason").to_pylist())]
        merged = pc.coalesce(table.column("reason"), pa.array(why, pa.string()))
        table = table.set_column(table.schema.get_field_index("reason"), "reason", merged)
        good = table.filter(pc.invert(table.column("reason").is_valid()))
        keys = good.column("key").to_pylist()
        if good.num_rows == 0:
            record_quarantine("index", "corpus", _reasons(table))
            raise ValueError(f"every row of {len(new)} file(s) was quarantined ({_reasons(table)}); nothing to embed")

    # quarantine: written beside the embeddings, counted by reason category, reported
    bad = table.filter(table.column("reason").is_valid())
    report.quarantined = bad.num_rows
    report.reasons = _reasons(table)
    record_quarantine("index", "corpus", report.reasons)  # Ray's metrics (mmtune/metrics.py)
    if bad.num_rows:
        qdir = out / "quarantine"
        qdir.mkdir(exist_ok=True)
        pq.write_table(pa.table({"id": bad.column("id"), "source_file": bad.column("path"),
                                 "reason": bad.column("reason")}, schema=QUARANTINE_SCHEMA),
                       qdir / f"part-{shard:05d}.parquet")
        progress(f"[index] quarantined {bad.num_rows} row(s) (written to {qdir}): "
                 + ", ".join(f"{k} ×{v}" for k, v in sorted(report.reasons.items())))
    if man["dim"] is None:
        raise ValueError("no content was embedded and no earlier shard gives the embedding dimension")
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
