"""Import a corpus: read (streaming) -> validate -> Sample shards, with a quarantine file.

Nothing is dropped silently: every sample the readers produce is either written to a
shard or written to ``<out_dir>/quarantine.parquet`` with its reason, and the counts by
reason category are reported (and saved to ``<out_dir>/import_report.json``).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from mmtune.data.readers import iter_samples
from mmtune.data.records import ReadResult, record_json
from mmtune.data.validate import reason_category, validate_sample
from mmtune.data.writer import QUARANTINE_FILE, REPORT_FILE, QuarantineWriter, ShardWriter


@dataclass
class ImportReport:
    """What an import did. ``reasons`` counts quarantined samples by reason category."""

    src: str
    out_dir: str
    written: int = 0
    quarantined: int = 0
    reasons: Counter = field(default_factory=Counter)
    shards: list[str] = field(default_factory=list)
    quarantine_path: str = ""
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return self.written + self.quarantined

    def to_dict(self) -> dict:
        d = asdict(self)
        d["reasons"] = dict(self.reasons.most_common())
        return d

    def summary(self) -> str:
        lines = [f"imported {self.src} -> {self.out_dir} in {self.seconds:.1f}s",
                 f"  written:     {self.written} samples in {len(self.shards)} shard(s)",
                 f"  quarantined: {self.quarantined}"]
        if self.reasons:
            width = max(len(r) for r in self.reasons)
            lines.append(f"    {'reason'.ljust(width)}  count")
            lines += [f"    {r.ljust(width)}  {n}" for r, n in self.reasons.most_common()]
        lines.append(f"  quarantine file: {self.quarantine_path}")
        if self.quarantined:
            lines.append("  inspect it with: python -c \"import pyarrow.parquet as pq; "
                         f"t = pq.read_table('{self.quarantine_path}'); "
                         "[print(r) for r in t.select(['source', 'row', 'id', 'reason']).to_pylist()[:50]]\"")
        return "\n".join(lines)


def import_dataset(
    src: str | Path,
    fmt: str = "auto",
    out_dir: str | Path | None = None,
    *,
    image_root: str | Path | None = None,
    max_text_chars: int = 8192,
    audio_sampling_rate: int | None = None,
    shard_rows: int = 4096,
    chunk_rows: int = 1024,
    progress: Callable[[str], None] | None = print,
    progress_every: int = 10_000,
    overwrite: bool = False,
    task: str | None = None,
    gold_answers: bool = False,
) -> ImportReport:
    """Import ``src`` (file, directory or glob; see :func:`mmtune.data.readers.iter_samples`).

    Writes ``<out_dir>/part-NNNNN.parquet`` (SAMPLE_SCHEMA), ``<out_dir>/quarantine.parquet``
    (always, possibly empty) and ``<out_dir>/import_report.json``. Duplicate ids within the
    import are quarantined after the first (only the ids are kept in memory). ``progress``
    gets a line every ``progress_every`` samples; ``overwrite`` replaces earlier shards.

    ``task`` fills the task of samples whose source names none (a target's name).
    ``gold_answers`` is for evaluation data, where every item needs a gold answer: a sample
    whose response has no ``Answer: X`` line takes its response as the answer when that is
    one line (short-answer data such as "B" or "Yes"), and is quarantined otherwise
    (reason ``no answer``).
    """
    if out_dir is None:
        raise TypeError("import_dataset needs out_dir: the directory for the parquet shards")
    started = time.monotonic()
    results = iter_samples(src, fmt, image_root=image_root, chunk_rows=chunk_rows)  # raises early
    out = Path(out_dir)
    report = ImportReport(src=str(src), out_dir=str(out), quarantine_path=str(out / QUARANTINE_FILE))
    seen: set[str] = set()

    def quarantine(q: QuarantineWriter, record: dict) -> None:
        q.write(record)
        report.quarantined += 1
        report.reasons[reason_category(record["reason"])] += 1

    with ShardWriter(out, shard_rows=shard_rows, overwrite=overwrite) as shards, \
            QuarantineWriter(report.quarantine_path, row_group_rows=chunk_rows) as q:
        for result in results:
            if result.sample is not None:
                _fill(result.sample, task, gold_answers)
            reason = _check(result, seen, max_text_chars, gold_answers, audio_sampling_rate)
            if result.quarantine is not None:
                quarantine(q, result.quarantine)
            elif reason:
                s = result.sample
                quarantine(q, {"source": result.source, "row": result.row, "id": str(s.get("id")),
                               "reason": reason, "record": record_json(s)})
            else:
                shards.write(result.sample)
                report.written += 1
            if progress and report.total % progress_every == 0:
                rate = report.total / max(time.monotonic() - started, 1e-9)
                progress(f"import: {report.total} samples ({report.written} written, "
                         f"{report.quarantined} quarantined), {rate:.0f}/s")
    report.shards = shards.paths
    report.seconds = time.monotonic() - started
    (out / REPORT_FILE).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return report


def _fill(sample: dict, task: str | None, gold_answers: bool) -> None:
    """Defaults for a target file's samples: its task name, and a one-line response as the
    gold answer when there is no ``Answer:`` line (see :func:`import_dataset`)."""
    if task and not sample.get("task"):
        sample["task"] = task
    response = sample.get("response")
    if gold_answers and not sample.get("answer") and isinstance(response, str):
        lines = [ln.strip() for ln in response.splitlines() if ln.strip()]
        if len(lines) == 1:
            sample["answer"], sample["steps"] = lines[0], []


def _check(result: ReadResult, seen: set[str], max_text_chars: int, gold_answers: bool = False,
           audio_sampling_rate: int | None = None) -> str | None:
    """The reason to quarantine a reader's sample, or None; records written ids in ``seen``."""
    if result.sample is None:
        return None
    reason = validate_sample(result.sample, max_text_chars=max_text_chars, audio_sampling_rate=audio_sampling_rate)
    if reason:
        return reason
    if gold_answers and isinstance(result.sample.get("answer"), str) and not result.sample["answer"].strip():
        return ("no answer: an evaluation item needs a gold answer; end its response with a line "
                "'Answer: X' (or give a one-line response)")
    sid = result.sample["id"]
    if sid in seen:
        return f"duplicate id: {sid!r} was already imported"
    seen.add(sid)
    return None
