"""Parquet writers and readers for Sample shards and quarantine files.

Writers buffer at most one row group, so a corpus of any size streams through in bounded
memory. Shards are named ``<prefix>-00000.parquet``, ``<prefix>-00001.parquet``, ... so a
directory of them is read in order by :func:`iter_sample_batches` and by Ray Data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from mmtune.data.schema import QUARANTINE_SCHEMA, SAMPLE_SCHEMA

QUARANTINE_FILE = "quarantine.parquet"
REPORT_FILE = "import_report.json"
ROW_GROUP_ROWS = 1024


class ShardWriter:
    """Writes Sample dicts to ``<out_dir>/<prefix>-NNNNN.parquet`` shards of ``shard_rows`` rows.

    Use as a context manager; :attr:`paths` (also returned by :meth:`close`) lists the
    shards. A writer that received no rows still leaves one empty shard, so a reader of
    the directory finds the schema instead of failing on "no files". Existing shards with
    the same prefix would mix stale rows into the output, so they are an error unless
    ``overwrite=True`` removes them.
    """

    def __init__(self, out_dir: str | Path, prefix: str = "part", shard_rows: int = 4096, *,
                 row_group_rows: int = ROW_GROUP_ROWS, overwrite: bool = False):
        if shard_rows < 1 or row_group_rows < 1:
            raise ValueError(f"shard_rows and row_group_rows must be >= 1, got {shard_rows}, {row_group_rows}")
        self.out_dir = Path(out_dir)
        self.prefix, self.shard_rows = prefix, shard_rows
        self.row_group_rows = min(row_group_rows, shard_rows)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        stale = sorted(self.out_dir.glob(f"{prefix}-*.parquet"))
        if stale and not overwrite:
            raise FileExistsError(f"{self.out_dir} already holds {len(stale)} {prefix}-*.parquet shards; "
                                  "write to an empty directory or pass overwrite=True")
        for path in stale:
            path.unlink()
        self.paths: list[str] = []
        self.rows = 0
        self._writer: pq.ParquetWriter | None = None
        self._in_shard = 0
        self._buffer: list[dict[str, Any]] = []

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def write(self, sample: dict[str, Any]) -> None:
        self._buffer.append(sample)
        self.rows += 1
        # Flush at a row-group boundary, or where the current shard becomes full.
        if len(self._buffer) >= min(self.row_group_rows, self.shard_rows - self._in_shard):
            self._flush()

    def write_many(self, samples: Iterable[dict[str, Any]]) -> None:
        for sample in samples:
            self.write(sample)

    def _open_shard(self) -> None:
        path = self.out_dir / f"{self.prefix}-{len(self.paths):05d}.parquet"
        self._writer = pq.ParquetWriter(path, SAMPLE_SCHEMA)
        self.paths.append(str(path))
        self._in_shard = 0

    def _flush(self) -> None:
        if not self._buffer:
            return
        if self._writer is None:
            self._open_shard()
        self._writer.write_table(pa.Table.from_pylist(self._buffer, schema=SAMPLE_SCHEMA))
        self._in_shard += len(self._buffer)
        self._buffer = []
        if self._in_shard >= self.shard_rows:
            self._writer.close()
            self._writer = None

    def close(self) -> list[str]:
        self._flush()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if not self.paths:
            self._open_shard()
            self._writer.close()
            self._writer = None
        return self.paths


def _storable(value: Any) -> Any:
    """A string parquet can store: lone surrogates become backslash escapes."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", errors="backslashreplace").decode("utf-8")
    return value


class QuarantineWriter:
    """Writes quarantine rows (QUARANTINE_SCHEMA dicts) to one parquet file.

    The file is created at once and always exists after :meth:`close`, even with 0 rows,
    so downstream code and users can open it without checking.
    """

    def __init__(self, path: str | Path, *, row_group_rows: int = ROW_GROUP_ROWS):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.row_group_rows = row_group_rows
        self.rows = 0
        self._buffer: list[dict[str, Any]] = []
        self._writer: pq.ParquetWriter | None = pq.ParquetWriter(self.path, QUARANTINE_SCHEMA)

    def __enter__(self) -> "QuarantineWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def write(self, record: dict[str, Any]) -> None:
        # A row quarantined for bad encoding carries its lone surrogates into the id and
        # record: written as escapes ("\\udce9"), so the row is kept, not lost to the writer.
        self._buffer.append({k: _storable(v) for k, v in record.items()})
        self.rows += 1
        if len(self._buffer) >= self.row_group_rows:
            self._flush()

    def _flush(self) -> None:
        if self._buffer and self._writer is not None:
            self._writer.write_table(pa.Table.from_pylist(self._buffer, schema=QUARANTINE_SCHEMA))
            self._buffer = []

    def close(self) -> str:
        self._flush()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        return str(self.path)


# --------------------------------------------------------------------------- reading
def sample_files(paths_or_dir: str | Path | Iterable[str | Path]) -> list[Path]:
    """Sample parquet files: a directory's ``*.parquet`` (sorted, minus the quarantine
    file), a single file, or a list of files."""
    if isinstance(paths_or_dir, (str, Path)):
        p = Path(paths_or_dir)
        if p.is_dir():
            files = sorted(f for f in p.glob("*.parquet") if f.name != QUARANTINE_FILE)
            if not files:
                raise FileNotFoundError(f"no Sample parquet shards in {p}; run the import first")
            return files
        candidates = [p]
    else:
        candidates = [Path(x) for x in paths_or_dir]
    missing = [str(f) for f in candidates if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"Sample parquet not found: {', '.join(missing)}")
    return candidates


def _as_samples(table_or_batch: pa.Table | pa.RecordBatch, path: Path) -> pa.Table:
    names = set(table_or_batch.schema.names)
    missing = [f for f in SAMPLE_SCHEMA.names if f not in names]
    if missing:
        raise ValueError(f"{path} is not Sample parquet (missing columns {missing}); "
                         "import raw data with mmtune.data.importer.import_dataset first")
    table = pa.Table.from_batches([table_or_batch]) if isinstance(table_or_batch, pa.RecordBatch) else table_or_batch
    return table.select(SAMPLE_SCHEMA.names).cast(SAMPLE_SCHEMA)


def read_sample_table(paths_or_dir: str | Path | Iterable[str | Path]) -> pa.Table:
    """All Sample rows as one table; for small data (a validation set, tests)."""
    tables = [_as_samples(pq.read_table(f), f) for f in sample_files(paths_or_dir)]
    return pa.concat_tables(tables)


def iter_sample_batches(paths_or_dir: str | Path | Iterable[str | Path],
                        batch_rows: int = 1024) -> Iterator[pa.Table]:
    """Sample rows in tables of at most ``batch_rows`` rows, streaming file by file."""
    for f in sample_files(paths_or_dir):
        for batch in pq.ParquetFile(f).iter_batches(batch_size=batch_rows):
            yield _as_samples(batch, f)
