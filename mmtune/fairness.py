"""What selection may read, enforced: the target's validation split, the pool's text and
annotations, and the diagnosis. Never a test split, never SkillWorld's generator metadata.

The selection stage gets a :class:`SelectionView` and nothing else. The view is built
from the run's data paths and refuses, at construction, any file that is a test split or
lies in a generator-metadata directory (``meta/`` beside a ``skillworld.json``), so a
misconfigured run (a test file given as the pool or as validation data) fails with the
reason instead of leaking the test set into selection. docs/fairness.md has the rules.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

POOL_COLUMNS = ("id", "task", "instruction", "response", "skills", "options")  # no answers needed, no meta


class FairnessError(ValueError):
    """Selection was about to read data it must not see."""


def _resolved(paths: Iterable[str | Path]) -> set[Path]:
    return {Path(p).resolve() for p in paths}


def _is_generator_meta(path: Path) -> bool:
    return any(parent.name == "meta" and (parent.parent / "skillworld.json").is_file() for parent in path.parents)


class SelectionView:
    def __init__(self, pool: list[str], val: dict[str, list[str]], test: dict[str, list[str]],
                 diagnosis: str | None = None):
        tests = _resolved(p for ps in test.values() for p in ps)
        for what, paths in (("pool", pool), ("validation", [p for ps in val.values() for p in ps]),
                            ("diagnosis", [diagnosis] if diagnosis else [])):
            for p in _resolved(paths):
                if p in tests:
                    raise FairnessError(f"{p} is a test split but was given to selection as {what} data; the test "
                                        "split is for the final evaluation only (docs/fairness.md)")
                if _is_generator_meta(p):
                    raise FairnessError(f"{p} is SkillWorld generator metadata; the pipeline may not read it "
                                        "(docs/fairness.md)")
        self._pool, self._val, self._diag = list(pool), {k: list(v) for k, v in val.items()}, diagnosis

    def pool_ids(self) -> list[str]:
        return [x for f in self._pool for x in pq.read_table(f, columns=["id"]).column("id").to_pylist()]

    def pool_files(self) -> list[str]:
        return list(self._pool)

    def val_files(self) -> list[str]:
        return [f for ps in self._val.values() for f in ps]

    def val_ids(self) -> list[str]:
        """The targets' own validation samples: the oracle arm trains on them (an upper bound)."""
        return [x for f in self.val_files() for x in pq.read_table(f, columns=["id"]).column("id").to_pylist()]

    def val_instructions(self, with_targets: bool = False) -> list[str] | list[tuple[str, str]]:
        """The targets' val instructions (with ``with_targets``: as (target, instruction))."""
        out = [(t, q) for t, ps in self._val.items() for f in ps
               for q in pq.read_table(f, columns=["instruction"]).column("instruction").to_pylist()]
        return out if with_targets else [q for _, q in out]

    def diagnosis_rows(self) -> list[dict[str, Any]]:
        if self._diag is None:
            raise FairnessError("this selection has no diagnosis (methods random, full and instruction similarity "
                                "do not use one)")
        from mmtune.diagnosis import read_diagnosis

        return read_diagnosis(self._diag)
