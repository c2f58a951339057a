"""A worker's training shard, out of core: streamed once from Ray Data, spilled to a local
Arrow file, and read back by index through a memory map.

Why: exact resume needs random access by a seeded permutation (the (epoch, offset) data
position of :mod:`mmtune.training.loop`), but a corpus such as Vision-Flan (1.6M samples
with images) does not fit in a worker's memory. Spilling the worker's rows to an
uncompressed Arrow IPC file and memory-mapping it gives both: the loop indexes rows as if
they were a list, and the OS pages image bytes in and out as needed. Only the ids live in
Python memory.

How a worker gets its rows (all choices [ours]):

1. **Plan** from the ids alone (a column-pruned read, so no image bytes are read): sort
   every id, keep ``sorted_ids[rank::world]``. The assignment is identical on every
   attempt, whatever order Ray Data streams blocks in, so a restarted worker group resumes
   on exactly the rows it had. Duplicate ids are refused here, by name.
2. **Probe candidates** for κ: a seeded permutation of the sorted ids, first
   ``PROBE_CANDIDATES × probe_size`` of them; the same on every rank (all ranks measure
   κ on the same batch and keep the same learning rates).
3. **Spill**: stream the full rows once, append the kept ones (and the candidates) to the
   Arrow file batch by batch, and present them in sorted-id order.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import torch

COLUMNS = ["id", "instruction", "response", "image", "audio"]
SPILL_SCHEMA = pa.schema([("id", pa.string()), ("instruction", pa.string()), ("response", pa.string()),
                          ("image", pa.binary()), ("audio", pa.binary())])
# The media columns: a batch may lack one (rows built by hand, an image-only table); the spill
# file then lacks it too, so a row reads back exactly as it was given.
MEDIA = ("image", "audio")
# The probe is drawn media-first from this many times probe_size seeded candidates (D_S
# is 0 on text-only samples, so the probe wants images or audio when the data has them).
PROBE_CANDIDATES = 4


def probe_candidate_indices(n: int, size: int, seed: int) -> list[int]:
    """Indices (into the id-sorted pool of ``n``) of the seeded κ-probe candidates."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + 7_777_777)
    return torch.randperm(n, generator=g)[: PROBE_CANDIDATES * size].tolist()


def has_media(row: dict[str, Any]) -> bool:
    return any(row.get(m) is not None for m in MEDIA)


def media_first(rows: Sequence[dict[str, Any]], size: int) -> list[str]:
    """The first ``size`` ids of ``rows`` (candidate order), rows with an image or audio first (stable)."""
    order = sorted(range(len(rows)), key=lambda i: not has_media(rows[i]))
    return [str(rows[i]["id"]) for i in order[:size]]


image_first = media_first  # the pre-audio name (mmtune.training.loop imports it)


def plan_shard(ids: Iterable[str], rank: int, world: int, probe_size: int, seed: int
               ) -> tuple[list[str], list[str], int]:
    """(this rank's ids, probe candidate ids in candidate order, total row count)."""
    all_ids = sorted(str(i) for i in ids)
    if not all_ids:
        raise ValueError("the training set is empty")
    dup = next((a for a, b in zip(all_ids, all_ids[1:]) if a == b), None)
    if dup is not None:
        raise ValueError(f"sample id {dup!r} appears more than once in the training data; ids must be "
                         "unique (re-import the data, or deduplicate the selection)")
    cand = [all_ids[i] for i in probe_candidate_indices(len(all_ids), probe_size, seed)]
    return all_ids[rank::world], cand, len(all_ids)


class ArrowRows(Sequence):
    """Read-only rows of a memory-mapped Arrow IPC file, in the order of ``ids``.

    ``rows[i]`` is a dict with :data:`COLUMNS`; ``rows.ids`` the ids without touching the
    payload. Only what is indexed is read from disk.
    """

    def __init__(self, path: str | Path, ids: Sequence[str] | None = None):
        self.path = Path(path)
        self._table = pa.ipc.open_file(pa.memory_map(str(self.path), "r")).read_all()
        file_ids = self._table.column("id").to_pylist()
        where = {sid: j for j, sid in enumerate(file_ids)}
        wanted = list(file_ids) if ids is None else [str(i) for i in ids]
        missing = [i for i in wanted if i not in where]
        if missing:
            raise KeyError(f"{len(missing)} ids are not in {self.path} (first: {missing[:3]})")
        self.ids = wanted
        self._pos = [where[i] for i in wanted]

    def __len__(self) -> int:
        return len(self._pos)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return self._table.slice(self._pos[i], 1).to_pylist()[0]

    @property
    def nbytes(self) -> int:
        return self._table.nbytes


def _as_table(batch: Any) -> pa.Table:
    if isinstance(batch, pa.Table):
        return batch
    if isinstance(batch, pa.RecordBatch):  # pq.ParquetFile.iter_batches
        return pa.Table.from_batches([batch])
    if isinstance(batch, dict):
        return pa.table(batch)
    return pa.Table.from_pandas(batch, preserve_index=False)  # pragma: no cover - pandas batches


def _spill_schema(first: pa.Table | None) -> pa.Schema:
    """:data:`SPILL_SCHEMA` less the media columns the first batch does not have."""
    names = [f.name for f in SPILL_SCHEMA
             if f.name not in MEDIA or first is None or f.name in first.column_names]
    return pa.schema([SPILL_SCHEMA.field(n) for n in names])


def _conform(t: pa.Table, schema: pa.Schema) -> pa.Table:
    """``t``'s columns in ``schema``; a media column the batch lacks is null, one the file lacks
    must be all null (refused otherwise: those bytes would be dropped)."""
    for m in MEDIA:
        if m in t.column_names and m not in schema.names and t.column(m).null_count != t.num_rows:
            raise ValueError(f"a later batch has a {m!r} column the first batch did not have; give every batch "
                             f"the same columns (the Sample schema has {', '.join(COLUMNS)})")
        if m not in t.column_names and m in schema.names:
            t = t.append_column(m, pa.nulls(t.num_rows, pa.binary()))
    return t.select(schema.names).cast(schema)


def spill(batches: Iterable[Any], keep: set[str], path: str | Path, progress=None) -> int:
    """Append the rows of ``batches`` whose id is in ``keep`` to an Arrow IPC file.

    ``batches`` are pyarrow tables (or column dicts) with :data:`COLUMNS` (a media column may be
    missing: see :data:`MEDIA`), e.g. ``iterator.iter_batches(batch_format="pyarrow")``. Returns
    the number of rows written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    keep_arr = pa.array(sorted(keep), type=pa.string())
    written = seen = 0
    writer = schema = None
    with pa.OSFile(str(path), "wb") as sink:
        try:
            for batch in batches:
                t = _as_table(batch)
                seen += t.num_rows
                if writer is None:  # the file's columns follow the first batch's media columns
                    schema = _spill_schema(t)
                    writer = pa.ipc.new_file(sink, schema)
                t = t.select([c for c in COLUMNS if c in t.column_names])
                ids = pc.cast(t.column("id"), pa.string())
                t = t.set_column(0, "id", ids).filter(pc.is_in(ids, value_set=keep_arr))
                if t.num_rows:
                    writer.write_table(_conform(t, schema))
                    written += t.num_rows
                if progress is not None:
                    progress(seen, written)
            if writer is None:
                writer = pa.ipc.new_file(sink, _spill_schema(None))
        finally:
            if writer is not None:
                writer.close()
    return written


def load_shard(train_batches: Iterable[Any], id_batches: Iterable[Any], rank: int, world: int,
               probe_size: int, seed: int, spill_dir: str | Path
               ) -> tuple[ArrowRows, list[dict[str, Any]], list[str], int]:
    """Plan, spill and open this rank's shard.

    Returns ``(rows, probe_rows, probe_ids, total)``: the rank's rows (sorted-id order,
    memory-mapped), the probe rows (a short list in memory), the probe ids, and the row
    count of the whole dataset (for the schedule length, the same on every rank).
    """
    ids = [i for b in id_batches for i in _as_table(b).column("id").to_pylist()]
    mine, cand, total = plan_shard(ids, rank, world, probe_size, seed)
    path = Path(spill_dir) / f"shard-rank{rank}.arrow"
    written = spill(train_batches, set(mine) | set(cand), path)
    expected = len(set(mine) | set(cand))
    if written != expected:
        raise RuntimeError(f"spilled {written} rows but planned {expected}: the training data changed "
                           "between the id pass and the row pass")
    rows = ArrowRows(path, mine)
    cand_rows = ArrowRows(path, cand)
    probe_rows = [cand_rows[i] for i in range(len(cand_rows))]
    return rows, probe_rows, media_first(probe_rows, probe_size), total


__all__ = [
    "COLUMNS",
    "MEDIA",
    "PROBE_CANDIDATES",
    "ArrowRows",
    "has_media",
    "image_first",
    "load_shard",
    "media_first",
    "plan_shard",
    "probe_candidate_indices",
    "spill",
]
