"""Reading what can be read of a damaged input, and naming what cannot. Pure: no Ray.

A corpus shard can be bad in ways no validator sees, because the damage stops the read
itself: a data page that fails to decompress (a flipped bit, a half-copied file whose
footer survived), or text bytes that are not UTF-8 behind a ``string`` column (a writer
that did not check). One such row used to fail a whole batch, and with it the Ray Data
task and the run. Here the failure is narrowed down instead:

* :func:`read_row_group` / :func:`row_groups` read a parquet file one row group at a
  time; a row group that does
  not decode comes back as a reason, with the ids of its rows when the id column still
  reads, so each of its rows can be quarantined by id;
* :func:`decode_rows` turns a batch into Python rows, and when the batch fails, retries it
  row by row: only the rows that still fail become reasons;
* :func:`each_or_reason` does the same for any batch function (an embedder): the batch at
  once, else item by item, a failing item's reason being the exception's text.

Reasons start with a category (``"bad encoding"``, ``"unreadable row group"``), then say
what failed and what to do, like every quarantine reason (:mod:`mmtune.data.validate`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

T = TypeVar("T")
R = TypeVar("R")

REEXPORT = "the file is damaged: re-export it (or restore it from its source) and re-run"


def _exc(e: BaseException) -> str:
    """The exception as one printable line (Arrow's messages carry newlines and raw bytes)."""
    text = " ".join("".join(c if c.isprintable() else " " for c in str(e)).split())
    return f"{type(e).__name__}: {text[:300]}"


def value_reason(column: str, e: BaseException) -> str:
    """Why one value of ``column`` could not be read."""
    if isinstance(e, UnicodeDecodeError):
        return (f"bad encoding: {column} is not valid UTF-8 ({_exc(e)}); re-export the file with UTF-8 text, "
                "or drop the row")
    return f"unreadable value: {column} failed to decode ({_exc(e)}); {REEXPORT}"


def _row_reason(batch: pa.Table | pa.RecordBatch, i: int, e: BaseException) -> str:
    """Name the column that fails on row ``i`` (the first, when several do)."""
    for name in batch.schema.names:
        try:
            batch.column(name)[i].as_py()
        except Exception as ce:  # noqa: BLE001 - any decode failure is the reason we report
            return value_reason(name, ce)
    return f"unreadable row: {_exc(e)}; {REEXPORT}"


def decode_rows(batch: pa.Table | pa.RecordBatch) -> list[dict[str, Any] | str]:
    """``batch.to_pylist()``, except that a row which does not convert is its reason (a str)
    instead of failing the batch. The fast path is one call; only a failing batch is
    retried row by row."""
    try:
        return batch.to_pylist()
    except Exception:  # noqa: BLE001 - narrowed down below, row by row
        out: list[dict[str, Any] | str] = []
        for i in range(batch.num_rows):
            try:
                out.append(batch.slice(i, 1).to_pylist()[0])
            except Exception as e:  # noqa: BLE001
                out.append(_row_reason(batch, i, e))
        return out


def safe_value(batch: pa.Table | pa.RecordBatch, column: str, i: int) -> Any:
    """One value, or None when it does not decode (an id for a quarantine row, say)."""
    try:
        return batch.column(column)[i].as_py()
    except Exception:  # noqa: BLE001
        return None


def row_group_reason(g: int, groups: int, first: int, n: int, e: BaseException) -> str:
    """Why the rows ``first .. first + n - 1`` of row group ``g`` (0-based) were not read."""
    return (f"unreadable row group: row group {g + 1} of {groups} (rows {first}-{first + n - 1}) "
            f"does not decode ({_exc(e)}); {REEXPORT}")


def read_row_group(pf: pq.ParquetFile, g: int, columns: Sequence[str] | None = None,
                   ) -> tuple[pa.Table | None, str | None, list[Any]]:
    """Row group ``g`` of an open parquet file: ``(table, None, [])`` when it reads, else
    ``(None, reason, ids)`` with one id per row where the ``id`` column still decodes
    (Nones otherwise), so that each of its rows can be quarantined."""
    md = pf.metadata
    try:
        return pf.read_row_group(g, columns=list(columns) if columns is not None else None), None, []
    except Exception as e:  # noqa: BLE001 - a damaged page: quarantine its rows, keep the rest
        n = md.row_group(g).num_rows
        first = sum(md.row_group(i).num_rows for i in range(g))
        ids: list[Any] = [None] * n
        if "id" in pf.schema_arrow.names:
            with contextlib.suppress(Exception):  # the ids are damaged too: rows by position only
                ids = pf.read_row_group(g, columns=["id"]).column("id").to_pylist()
        return None, row_group_reason(g, md.num_row_groups, first, n, e), ids


def row_groups(path: str | Path, columns: Sequence[str] | None = None,
               ) -> Iterator[tuple[int, pa.Table | None, str | None, list[Any]]]:
    """``(first_row, table, reason, ids)`` for each row group of a parquet file whose footer
    reads (open it with :func:`mmtune.data.readers.open_parquet` first, for a clear error
    on a truncated file); see :func:`read_row_group`."""
    pf = pq.ParquetFile(path)
    first = 0
    for g in range(pf.metadata.num_row_groups):
        yield (first, *read_row_group(pf, g, columns))
        first += pf.metadata.row_group(g).num_rows


def each_or_reason(fn: Callable[[list[T]], Sequence[R]], items: Sequence[T]) -> tuple[list[R | None], list[str | None]]:
    """``fn(items)`` as a batch; if the batch raises, ``fn([item])`` for each item, so one
    bad item costs only itself. Returns (results, reasons): a failing item has result None
    and its exception's text as the reason."""
    try:
        out = list(fn(list(items)))
        return out, [None] * len(out)
    except Exception:  # noqa: BLE001 - narrowed down below, item by item
        results: list[R | None] = []
        reasons: list[str | None] = []
        for item in items:
            try:
                results.append(next(iter(fn([item]))))
                reasons.append(None)
            except Exception as e:  # noqa: BLE001
                results.append(None)
                reasons.append(_exc(e))
        return results, reasons


__all__ = ["REEXPORT", "decode_rows", "each_or_reason", "read_row_group", "row_group_reason", "row_groups",
           "safe_value", "value_reason"]
