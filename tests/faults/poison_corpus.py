"""Corpus shards poisoned in ways no row validator sees, because they break the read itself.

* :func:`corrupt_page` overwrites the first page header of one column chunk: the footer
  still reads (so the file is not "truncated"), but decoding that row group raises
  ``OSError: Couldn't deserialize thrift`` (a flipped bit, a half-rewritten file);
* :func:`write_shard` with ``not_utf8`` puts bytes that are not UTF-8 behind the
  ``instruction`` string column (a writer that did not validate): parquet reads them, and
  converting the batch to Python raises ``UnicodeDecodeError``.

Either one, met by ``ray.data.read_parquet`` + ``map_batches``, fails the Ray Data task and,
with it, the job. :func:`poisoned_corpus` builds a directory of good shards and one
poisoned shard holding both kinds, and says what must come out of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from mmtune.data.schema import SAMPLE_SCHEMA


def sample_rows(prefix: str, n: int) -> list[dict]:
    return [{"id": f"{prefix}{i:03d}", "task": "count", "source": "poison-test", "image": None, "audio": None,
             "instruction": f"How many {['apples', 'pears', 'cups', 'dots'][i % 4]} are in row {prefix}{i}?",
             "response": "Count them.\nAnswer: 3", "steps": ["Count them."], "answer": "3", "options": None,
             "skills": ["counting the objects in a picture"]} for i in range(n)]


def write_shard(path: Path, rows: list[dict], *, not_utf8: set[int] = frozenset(), row_group_size: int | None = None
                ) -> Path:
    """Sample parquet; rows whose index is in ``not_utf8`` get an instruction that is not UTF-8."""
    table = pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA)
    if not_utf8:
        raw = [(b"caf\xe9 \xff\xfe " + r["instruction"].encode()) if i in not_utf8 else r["instruction"].encode()
               for i, r in enumerate(rows)]
        col = pa.array(raw, pa.binary()).view(pa.string())  # no validation: what a careless writer leaves
        i = table.schema.get_field_index("instruction")
        table = table.set_column(i, table.schema.field(i), col)  # same field (not null), only bad bytes
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def corrupt_page(path: Path, row_group: int, column: str) -> None:
    """Overwrite the first page header of ``column`` in ``row_group`` with 0xFF bytes."""
    md = pq.ParquetFile(path).metadata
    names = [md.schema.column(i).path for i in range(md.num_columns)]
    chunk = md.row_group(row_group).column(names.index(column))
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    raw = bytearray(path.read_bytes())
    raw[start:start + 12] = b"\xff" * 12
    path.write_bytes(bytes(raw))


@dataclass
class Poisoned:
    files: list[Path]
    poisoned: Path
    good_ids: list[str]  # every id that must be embedded
    bad_ids: dict[str, str] = field(default_factory=dict)  # id -> reason category


def poisoned_corpus(root: Path, good_shards: int = 2, rows: int = 40) -> Poisoned:
    """``good_shards`` clean shards of ``rows`` rows, and ``p.parquet``: 20 rows in two row
    groups of 10; row group 1's instruction page is corrupt, and 2 rows of row group 2 are
    not UTF-8. The other 8 rows of the poisoned shard are fine and must be kept."""
    root.mkdir(parents=True, exist_ok=True)
    files, good = [], []
    for s in range(good_shards):
        rs = sample_rows(f"g{s}-", rows)
        files.append(write_shard(root / f"g{s}.parquet", rs))
        good += [r["id"] for r in rs]
    prs = sample_rows("p-", 20)
    bad_text = {13, 17}
    p = write_shard(root / "p.parquet", prs, not_utf8=bad_text, row_group_size=10)
    corrupt_page(p, 0, "instruction")
    bad = {r["id"]: "unreadable row group" for r in prs[:10]}
    bad.update({prs[i]["id"]: "bad encoding" for i in bad_text})
    good += [r["id"] for r in prs if r["id"] not in bad]
    return Poisoned(files=[*files, p], poisoned=p, good_ids=sorted(good), bad_ids=bad)
