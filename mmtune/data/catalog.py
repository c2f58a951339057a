"""Where a run's datasets live: the embedded SkillWorld (generated once, cached by config
hash) or the user's own files. Stages ask the catalog for paths; nobody hard-codes them.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from mmtune.config import RunConfig, config_hash


@dataclass
class DataPaths:
    root: Path
    corpus: list[Path]
    generic_train: list[Path] = field(default_factory=list)
    generic_eval: list[Path] = field(default_factory=list)
    target_val: dict[str, list[Path]] = field(default_factory=dict)
    target_test: dict[str, list[Path]] = field(default_factory=dict)


def _shards(d: Path, pattern: str = "*.parquet") -> list[Path]:
    return sorted(d.glob(pattern))


# SkillWorldConfig fields the audio family added. They say nothing about vision data, so a
# vision key leaves them out and stays the one it was before them: every cached SkillWorld,
# generic student (whose key holds this one) and downstream cache still hits.
AUDIO_ONLY_FIELDS = ("modality", "clip_seconds")


def skillworld_key(cfg: RunConfig) -> str:
    """The generator's version is part of the key: a changed generator must not be served
    data an older one wrote under the same settings. Each SkillWorld family has its own
    version (``generator_version(modality)``), so an audio-generator change invalidates
    audio caches only; the vision family's version is ``GENERATOR_VERSION``, as before."""
    from mmtune.data.skillworld import generator_version

    sw = cfg.data.skillworld
    fields = sw.model_dump(mode="json")
    if sw.modality == "vision":
        fields = {k: v for k, v in fields.items() if k not in AUDIO_ONLY_FIELDS}
    return config_hash({"cfg": fields, "version": generator_version(sw.modality)})


def skillworld_dir(cfg: RunConfig) -> Path:
    return Path(cfg.run.cache_dir) / "skillworld" / skillworld_key(cfg)


def ensure_skillworld(cfg: RunConfig, progress=print) -> Path:
    """Generate SkillWorld into the cache unless an identical generation is already there.

    Generation writes to a temporary sibling and renames it into place, so an interrupted
    run never leaves a half-written dataset that a later run would trust.
    """
    from mmtune.data.skillworld import generate_skillworld

    out = skillworld_dir(cfg)
    if (out / "skillworld.json").is_file():
        progress(f"[data] SkillWorld cached at {out}")
        return out
    tmp = out.with_name(out.name + f".tmp{int(time.time())}")
    if tmp.exists():
        shutil.rmtree(tmp)
    t0 = time.time()
    progress(f"[data] generating SkillWorld (seed {cfg.data.skillworld.seed}) -> {out}")
    generate_skillworld(cfg.data.skillworld, tmp, progress=progress)
    if out.exists():  # a concurrent run finished first; keep theirs
        shutil.rmtree(tmp)
    else:
        tmp.rename(out)
    progress(f"[data] SkillWorld ready in {time.time() - t0:.1f}s")
    return out


def data_paths(cfg: RunConfig, progress=print) -> DataPaths:
    """Resolve every dataset a run uses (generating SkillWorld when that is the source)."""
    if cfg.data.source == "skillworld":
        root = ensure_skillworld(cfg, progress)
        targets = sorted(p.name for p in (root / "targets").iterdir() if p.is_dir())
        return DataPaths(
            root=root,
            corpus=_shards(root / "corpus"),
            generic_train=_shards(root / "generic", "train-*.parquet"),
            generic_eval=_shards(root / "generic", "eval*.parquet"),
            target_val={t: [root / "targets" / t / "val.parquet"] for t in targets},
            target_test={t: [root / "targets" / t / "test.parquet"] for t in targets},
        )
    dc = cfg.data
    if not dc.corpus:
        raise ValueError("data.source=files needs data.corpus (a path to your corpus)")
    corpus = ensure_imported(dc.corpus, dc.corpus_format, cfg, name="corpus", progress=progress)
    val, test = {}, {}
    for t in dc.targets:
        val[t.name] = ensure_imported(t.val, t.format, cfg, name=f"{t.name}-val", task=t.name,
                                      gold_answers=True, progress=progress)
        test[t.name] = ensure_imported(t.test, t.format, cfg, name=f"{t.name}-test", task=t.name,
                                       gold_answers=True, progress=progress)
    return DataPaths(root=corpus[0].parent, corpus=corpus, target_val=val, target_test=test)


# --------------------------------------------------------------------------- your own files
IMPORT_VERSION = 1  # bump when the importer's output for the same input changes
IMPORTS_DIR = "imports"


def source_signature(files: list[Path]) -> list[list]:
    """(absolute path, size, mtime in ns) of each input file: a changed file re-imports."""
    out = []
    for f in files:
        st = f.stat()
        out.append([str(f.resolve()), st.st_size, st.st_mtime_ns])
    return out


def is_sample_parquet(files: list[Path], fmt: str) -> bool:
    """Parquet files that already hold every Sample column (``mmtune data import`` output,
    SkillWorld): used in place, never copied."""
    from mmtune.data.readers import open_parquet
    from mmtune.data.schema import SAMPLE_FIELDS

    if fmt not in ("auto", "parquet") or not files or any(f.suffix.lower() != ".parquet" for f in files):
        return False
    # open_parquet: a truncated file is a clear error here, not a bare ArrowInvalid
    return all(set(SAMPLE_FIELDS) <= set(open_parquet(f).schema_arrow.names) for f in files)


def import_key(files: list[Path], fmt: str, cfg: RunConfig, *, task: str | None = None,
               gold_answers: bool = False) -> str:
    """What an import's output depends on: the input files' signatures and the settings."""
    dc = cfg.data
    root = str(Path(dc.image_root).expanduser().resolve()) if dc.image_root else None
    return config_hash({"files": source_signature(files), "format": fmt, "image_root": root,
                        "max_text_chars": dc.max_text_chars, "shard_rows": dc.shard_rows, "task": task,
                        "audio_sampling_rate": dc.audio_sampling_rate,
                        "gold_answers": gold_answers, "version": IMPORT_VERSION})


def ensure_imported(spec: str, fmt: str, cfg: RunConfig, *, name: str, task: str | None = None,
                    gold_answers: bool = False, progress=print) -> list[Path]:
    """The Sample parquet shards for ``spec`` (a file, directory or glob of LLaVA JSON,
    ShareGPT JSON, JSONL or parquet), importing it into the cache on first use.

    Sample-schema parquet is used in place. Anything else is streamed through
    :func:`mmtune.data.importer.import_dataset` (validation, quarantine) once, into
    ``<cache_dir>/imports/<name>-<key>``, where the key hashes the input files' (path, size,
    mtime) and the data settings: a second run reuses the import; an edited file or a
    changed setting imports again. The import is written to a temporary sibling and
    renamed into place, so an interrupted one is never reused. Media files referenced by
    the records are not part of the key (re-import after replacing images in place by
    touching the JSON file).
    """
    from mmtune.data.importer import import_dataset
    from mmtune.data.readers import resolve_inputs
    from mmtune.data.writer import QUARANTINE_FILE, REPORT_FILE
    from mmtune.metrics import record_quarantine

    files = resolve_inputs(spec)
    if is_sample_parquet(files, fmt):
        return files
    key = import_key(files, fmt, cfg, task=task, gold_answers=gold_answers)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    out = Path(cfg.run.cache_dir) / IMPORTS_DIR / f"{safe}-{key}"
    if (out / REPORT_FILE).is_file():
        import json

        rep = json.loads((out / REPORT_FILE).read_text())
        progress(f"[data] {name}: imported earlier ({rep['written']} samples, {rep['quarantined']} "
                 f"quarantined) at {out}")
        return _shards(out, "part-*.parquet")
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    progress(f"[data] {name}: importing {spec} ({len(files)} file(s), format {fmt}) -> {out}")
    dc = cfg.data
    report = import_dataset(spec, fmt, tmp, image_root=dc.image_root, max_text_chars=dc.max_text_chars,
                            audio_sampling_rate=dc.audio_sampling_rate, shard_rows=dc.shard_rows,
                            chunk_rows=dc.read_chunk_rows, task=task, gold_answers=gold_answers,
                            progress=lambda line: progress(f"[data] {name}: {line}"))
    record_quarantine("import", name, report.reasons)  # Ray's metrics (mmtune/metrics.py); inert without Ray
    if report.written == 0:
        keep = out.with_name(f"{out.name}.failed")
        if keep.exists():
            shutil.rmtree(keep)
        tmp.rename(keep)
        raise ValueError(f"data {name} ({spec}): no usable sample; every row was quarantined "
                         f"({dict(report.reasons.most_common())}); see {keep / QUARANTINE_FILE}")
    rep_file = tmp / REPORT_FILE  # the report names the final directory, not the temporary one
    rep_file.write_text(rep_file.read_text().replace(str(tmp), str(out)))
    if out.exists():  # a concurrent run finished the same import first; keep theirs
        shutil.rmtree(tmp)
    else:
        tmp.rename(out)
    summary = report.summary().replace(str(tmp), str(out))
    for line in summary.splitlines():
        progress(f"[data] {name}: {line.strip()}" if line.startswith("  ") else f"[data] {line}")
    return _shards(out, "part-*.parquet")
