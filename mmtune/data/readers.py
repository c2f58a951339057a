"""Streaming readers: files of any supported format to Sample dicts or quarantine rows.

Corpora have millions of rows, so nothing here loads a file whole: JSON arrays are
decoded element by element (:mod:`mmtune.data.jsonstream`), JSONL line by line, parquet
batch by batch. Each record becomes :class:`ReadResult` items (see
:mod:`mmtune.data.records` for how conversations become samples).

Formats (``fmt``):

=========  ===================================================================
auto       from the extension: ``.parquet``, ``.jsonl``, ``.json`` (an array, or
           JSON lines if it starts with ``{``); each record's shape from its keys
llava      JSON array of ``{id, image, conversations: [{from, value}]}``
sharegpt   JSON array of ``{messages: [{role, content}], images, audios}``
jsonl      one record per line, in Sample, LLaVA or ShareGPT shape
parquet    Sample-schema parquet (missing optional columns filled), or a
           parquet of conversation records (HF ``datasets`` image structs work)
=========  ===================================================================
"""

from __future__ import annotations

import glob
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mmtune.data.jsonstream import iter_json_lines, iter_json_values
from mmtune.data.records import ReadResult, SourceFile, convert_record, quarantined
from mmtune.data.salvage import decode_rows, row_group_reason
from mmtune.data.writer import QUARANTINE_FILE, REPORT_FILE

__all__ = ["FORMATS", "ReadResult", "iter_chunks", "iter_samples", "open_parquet", "resolve_inputs"]

FORMATS = ("auto", "llava", "sharegpt", "jsonl", "parquet")
SUFFIXES = (".json", ".jsonl", ".parquet")
# Written by import_dataset beside its shards; not data, so a directory read skips them.
SIDE_FILES = frozenset({QUARANTINE_FILE, REPORT_FILE})

_CONVERSATION_COLUMNS = {"messages", "conversations"}
_SAMPLE_COLUMNS = {"instruction", "response"}


def resolve_inputs(path: str | Path) -> list[Path]:
    """The data files behind ``path``: a file, a directory (its data files, sorted), or a glob."""
    text = str(path)
    p = Path(text).expanduser()
    if p.is_file():
        return [p]
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in SUFFIXES
                       and not f.name.startswith(".") and f.name not in SIDE_FILES)
        if not files:
            raise FileNotFoundError(f"no data files in directory {p}: expected *.json, *.jsonl "
                                    "or *.parquet files directly inside it")
        return files
    if any(c in text for c in "*?["):
        files = sorted(Path(f) for f in glob.glob(str(p), recursive=True) if Path(f).is_file())
        if not files:
            raise FileNotFoundError(f"glob {text!r} matched no files")
        return files
    raise FileNotFoundError(f"data path not found: {p}; expected a file, a directory of "
                            "*.json/*.jsonl/*.parquet files, or a glob such as 'data/*.jsonl'")


def _container(path: Path, fmt: str) -> str:
    """How to read the file: "parquet", "jsonl" (line by line) or "json" (streamed values)."""
    suffix = path.suffix.lower()
    if fmt == "parquet":
        if suffix in (".json", ".jsonl"):
            raise ValueError(f"{path}: format 'parquet' was asked for a {suffix} file; "
                             "use fmt='auto' or the file's JSON format")
        return "parquet"
    if fmt == "auto" and suffix == ".parquet":
        return "parquet"
    if suffix == ".parquet":
        raise ValueError(f"{path}: format {fmt!r} reads JSON but this is a parquet file; "
                         "use fmt='parquet' or 'auto'")
    if fmt == "jsonl" or suffix == ".jsonl":
        return "jsonl"
    if suffix == ".json" or fmt in ("llava", "sharegpt"):
        return "json"
    raise ValueError(f"{path}: cannot tell the format from the extension {suffix!r}; rename it "
                     f"to .json/.jsonl/.parquet or pass fmt (one of {', '.join(FORMATS[1:])})")


def open_parquet(path: Path) -> pq.ParquetFile:
    """``pq.ParquetFile(path)``, or a ValueError that names the file and the fix (a
    truncated or corrupt file has no readable footer)."""
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise ValueError(f"{path}: not a readable parquet file ({e}); it is truncated or corrupt "
                         "(an interrupted download or copy?): re-download or re-export it, or move it "
                         "out of the input") from None


def _check_parquet(path: Path) -> pq.ParquetFile:
    pf = open_parquet(path)
    names = set(pf.schema_arrow.names)
    if not (names & _CONVERSATION_COLUMNS or _SAMPLE_COLUMNS <= names):
        raise ValueError(
            f"{path}: parquet columns {sorted(names)} match no known shape; expected Sample "
            "columns (id, instruction, response, image, ...) or conversation columns "
            "(messages or conversations, with images/audios)")
    return pf


def _iter_parquet(path: Path, chunk_rows: int) -> Iterator[tuple[int, Any, str | None]]:
    """Row group by row group, so damage stays local: a row group whose pages do not
    decode quarantines its (remaining) rows, a value that does not convert (text that is
    not UTF-8) quarantines its row, and the rest of the file still imports
    (:mod:`mmtune.data.salvage`)."""
    pf = _check_parquet(path)
    md = pf.metadata
    row = 0
    for g in range(md.num_row_groups):
        first, n = row, md.row_group(g).num_rows
        try:
            for batch in pf.iter_batches(batch_size=chunk_rows, row_groups=[g]):
                for rec in decode_rows(batch):
                    yield (row, None, rec) if isinstance(rec, str) else (row, rec, None)
                    row += 1
        except (pa.ArrowException, OSError) as e:
            reason = row_group_reason(g, md.num_row_groups, first, n, e)
            for _ in range(first + n - row):
                yield row, None, reason
                row += 1


def _iter_raw(path: Path, fmt: str, chunk_rows: int) -> Iterator[tuple[int, Any, str | None]]:
    """(row, record, parse error or None) for each record in one file."""
    kind = _container(path, fmt)
    if kind == "parquet":
        yield from _iter_parquet(path, chunk_rows)
    elif kind == "jsonl":
        with open(path, "rb") as f:
            yield from iter_json_lines(f)
    else:
        # Bytes that are not UTF-8 become lone surrogates, so one such record is quarantined
        # ("bad encoding", by validation) and the rest of the array still loads.
        with open(path, encoding="utf-8-sig", errors="surrogateescape") as f:
            for row, rec in enumerate(iter_json_values(f, name=str(path))):
                yield row, rec, None


def iter_samples(path: str | Path, fmt: str = "auto", *, image_root: str | Path | None = None,
                 chunk_rows: int = 1024) -> Iterator[ReadResult]:
    """Yield a :class:`ReadResult` for every sample the input holds, streaming.

    ``image_root``: directory that relative image/audio paths resolve against; by default
    each data file's own directory (what LLaMA-Factory does with its ``data`` dir).
    ``chunk_rows``: parquet batch size (bounded memory per read).
    Unusable inputs (missing path, unknown format) raise here, at the call; a corrupt
    JSON array raises while iterating. Bad records never raise: they come back as
    quarantine results.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    root = Path(image_root).expanduser() if image_root is not None else None
    if root is not None and not root.is_dir():
        raise FileNotFoundError(f"image_root {root} is not a directory; set data.image_root to "
                                "the folder your relative image/audio paths start from")
    files = resolve_inputs(path)
    for f in files:  # fail now, before any work, if a file's format cannot be told
        if _container(f, fmt) == "parquet":  # or a parquet file is truncated or of an unknown shape
            _check_parquet(f)
    return _generate(files, fmt, root, chunk_rows)


def _generate(files: list[Path], fmt: str, root: Path | None, chunk_rows: int) -> Iterator[ReadResult]:
    expect = "conversation" if fmt in ("llava", "sharegpt") else "auto"
    for path in files:
        src = SourceFile(path, root if root is not None else path.parent)
        for row, rec, error in _iter_raw(path, fmt, chunk_rows):
            if error:
                yield quarantined(src, row, f"{path.stem}-{row}", error, rec)
            else:
                yield from convert_record(rec, src, row, expect)


def iter_chunks(path: str | Path, fmt: str = "auto", *, image_root: str | Path | None = None,
                chunk_rows: int = 1024) -> Iterator[list[ReadResult]]:
    """:func:`iter_samples` in lists of ``chunk_rows`` results (the last may be shorter)."""
    return _chunked(iter_samples(path, fmt, image_root=image_root, chunk_rows=chunk_rows), chunk_rows)


def _chunked(results: Iterator[ReadResult], chunk_rows: int) -> Iterator[list[ReadResult]]:
    chunk: list[ReadResult] = []
    for result in results:
        chunk.append(result)
        if len(chunk) >= chunk_rows:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
