"""The trial table, the choice of the best trial, and the printed summary (no Ray here)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mmtune.search.space import short_name

# Columns every trial row has (the searched paths follow, one column each).
BASE_COLUMNS = ("trial", "status", "rung", "rungs", "step", "total_steps", "metric", "val_accuracy", "val_loss",
                "train_loss", "kappa_bar", "seconds", "error")


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def trial_status(last: Mapping[str, Any], error: str | None) -> str:
    """``error``, ``completed`` (reported its last rung) or ``stopped`` (ASHA ended it early)."""
    if error:
        return "error"
    if last.get("rung") and last.get("rung") == last.get("rungs"):
        return "completed"
    return "stopped"


def pick_best(rows: Sequence[Mapping[str, Any]], metric: str, mode: str) -> Mapping[str, Any]:
    """The best trial: among the trials that reached the highest rung (ASHA's survivors,
    trained the longest), the best ``metric`` at their last rung; ties go to the lower
    ``val_loss``, then to the earlier trial. A trial stopped at an early rung is never
    preferred to one that trained longer: ASHA already compared them at that rung."""
    ok = [r for r in rows if r.get("status") != "error" and _finite(r.get(metric))]
    if not ok:
        errors = "; ".join(f"{r.get('trial')}: {r.get('error')}" for r in rows if r.get("error"))
        raise RuntimeError(f"no trial reported a finite {metric!r}" + (f" (errors: {errors})" if errors else ""))
    sign = -1.0 if mode == "max" else 1.0

    def key(item: tuple[int, Mapping[str, Any]]) -> tuple[float, float, float, int]:
        i, r = item
        loss = r.get("val_loss")
        return (-float(r.get("rung") or 0), sign * float(r[metric]), float(loss) if _finite(loss) else math.inf, i)

    return min(enumerate(ok), key=key)[1]


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return "-" if v is None else str(v)
    if isinstance(v, float):
        return "nan" if not math.isfinite(v) else f"{v:.3g}"
    return str(v)


def format_trials(rows: Sequence[Mapping[str, Any]], paths: Sequence[str], metric: str,
                  best: str | None = None) -> str:
    """A fixed-width table: trial, the searched values, ``metric`` (the rows' ``metric``
    column), val_loss, rungs, status."""
    extra = [] if metric == "val_loss" else ["val_loss"]
    head = ["trial", *(short_name(p) for p in paths), metric, *extra, "rungs", "status"]
    body = []
    for r in rows:
        mark = " *" if best is not None and r["trial"] == best else ""
        body.append([f"{r['trial']}{mark}", *(_fmt(r.get(p)) for p in paths), _fmt(r.get("metric")),
                     *(_fmt(r.get(c)) for c in extra), f"{r.get('rung') or 0}/{r.get('rungs') or '?'}",
                     str(r.get("status"))])
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths)) for b in body]
    if best is not None:
        lines.append("* best trial")
    return "\n".join(lines)


def write_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], out: Path) -> tuple[Path, Path]:
    """``out.parquet`` and ``out.csv`` with ``columns`` in that order."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    data = {c: [r.get(c) for r in rows] for c in columns}
    table = pa.table(data)
    pq.write_table(table, out.with_suffix(".parquet"))
    pacsv.write_csv(table, out.with_suffix(".csv"))
    return out.with_suffix(".parquet"), out.with_suffix(".csv")


__all__ = ["BASE_COLUMNS", "format_trials", "pick_best", "trial_status", "write_table"]
