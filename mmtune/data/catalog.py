"""Where a run's datasets live: the embedded SkillWorld (generated once, cached by config
hash) or the user's own files. Stages ask the catalog for paths; nobody hard-codes them.
"""

from __future__ import annotations

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


def skillworld_key(cfg: RunConfig) -> str:
    """The generator's version is part of the key: a changed generator must not be served
    data an older one wrote under the same settings."""
    from mmtune.data.skillworld import GENERATOR_VERSION

    return config_hash({"cfg": cfg.data.skillworld.model_dump(mode="json"), "version": GENERATOR_VERSION})


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
    corpus = Path(cfg.data.corpus or "")
    shards = _shards(corpus) if corpus.is_dir() else [corpus]
    not_parquet = [p for p in shards if p.suffix != ".parquet"]
    if not shards or not_parquet:
        raise ValueError(
            f"data.corpus={str(corpus)!r} must be parquet shards (got {not_parquet[:2] or 'none'}); "
            "convert your data first: mmtune data import SRC --format llava|sharegpt|jsonl --out DIR")
    return DataPaths(
        root=corpus.parent,
        corpus=shards,
        target_val={t.name: [Path(t.val)] for t in cfg.data.targets},
        target_test={t.name: [Path(t.test)] for t in cfg.data.targets},
    )
