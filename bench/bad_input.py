"""Benchmark: the bad-input suite (issue F §5): cases tried, cases handled, rows lost.

    python -m bench.bad_input [--write]

Runs every case of the registry in ``tests/test_bad_input.py`` (the same functions the
tests run) in a scratch directory and prints a markdown section: per row of §5's table, the
cases, how each was handled (a clear error naming the problem and the fix, a quarantine
with a reason, the teacher's item recorded with its raw reply or error, or hostile text
left inert), and the rows read, written, quarantined and lost. A case is *handled* when
it met every requirement and lost no row; rows lost must be 0.

Nothing here starts Ray or trains; it takes seconds. ``--write`` replaces the
``bench:bad_input`` section of docs/benchmarks.md.
"""

from __future__ import annotations

import os

# as in tests/conftest.py: nothing may reach for the hub, and quiet tokenizers
for _k, _v in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
               "RAY_USAGE_STATS_ENABLED": "0"}.items():
    os.environ.setdefault(_k, _v)

import argparse
import datetime as dt
import logging
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

from bench.report import code_version, load_1min, write_section

MARK = "bench:bad_input"


def run() -> tuple[list[dict], dict]:
    from tests.test_bad_input import CASES, ROWS, run_case

    results = []
    with tempfile.TemporaryDirectory(prefix="mmtune-bad-input-") as tmp:
        for c in CASES:
            t0 = time.perf_counter()
            out = run_case(c, Path(tmp) / c.id)
            results.append({"id": c.id, "row": c.row, "label": ROWS[c.row], "how": out.how, "handled": out.handled,
                            "read": out.read, "written": out.written, "quarantined": out.quarantined,
                            "lost": out.lost, "problems": out.problems, "seconds": time.perf_counter() - t0})
    totals = {"tried": len(results), "handled": sum(r["handled"] for r in results),
              "rows_read": sum(r["read"] for r in results), "rows_lost": sum(r["lost"] for r in results),
              "table_rows": len(ROWS), "table_rows_covered": len({r["row"] for r in results})}
    return results, totals


def render(results: list[dict], totals: dict, seconds: float) -> str:
    from tests.test_bad_input import ROWS

    lines = [f"<!-- {MARK} -->", "### Bad input (issue F §5)", "",
             (f"`python -m bench.bad_input`, {dt.date.today().isoformat()}, {platform.machine()} "
             f"({os.cpu_count()} cores, load {load_1min():.1f}), "
             f"code {code_version(['mmtune', 'tests/test_bad_input.py'])}; "
             f"{seconds:.0f} s in all, no Ray, no training."), "",
             (f"**{totals['tried']} cases tried, {totals['handled']} handled, {totals['rows_lost']} rows lost** "
             f"(of {totals['rows_read']} rows read; {totals['table_rows_covered']} of the table's "
             f"{totals['table_rows']} rows covered)."), "",
             "| bad input | cases | handled | how | rows read | written | quarantined | lost |",
             "|---|---:|---:|---|---:|---:|---:|---:|"]
    for key, label in ROWS.items():
        rs = [r for r in results if r["row"] == key]
        hows = ", ".join(sorted({r["how"] for r in rs}))
        lines.append(f"| {label} | {len(rs)} | {sum(r['handled'] for r in rs)} | {hows} | "
                     f"{sum(r['read'] for r in rs)} | {sum(r['written'] for r in rs)} | "
                     f"{sum(r['quarantined'] for r in rs)} | {sum(r['lost'] for r in rs)} |")
    lines += ["", ("*how*: `error` = a clear error that names the problem and the fix (asserted on the message); "
              "`quarantine` = rows set aside with a reason, written + quarantined = read; `recorded` = the "
              "teacher's items kept with the raw reply or the error (status unparsed/skipped); `inert` = "
              "injected corpus text only ever became bounded skill phrases. Cases: `tests/test_bad_input.py`.")]
    failed = [r for r in results if not r["handled"]]
    if failed:
        lines += ["", "Not handled:"] + [f"- `{r['id']}`: {'; '.join(r['problems'])[:300]}" for r in failed]
    lines.append(f"<!-- /{MARK} -->")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--write", action="store_true", help="replace the section in docs/benchmarks.md")
    args = ap.parse_args(argv)
    logging.disable(logging.WARNING)  # the cases provoke warnings on purpose (retries, bad rows)
    warnings.simplefilter("ignore")
    t0 = time.perf_counter()
    results, totals = run()
    section = render(results, totals, time.perf_counter() - t0)
    print(section)
    for r in results:
        print(f"  {r['id']:<40} {'ok ' if r['handled'] else 'NOT'} {r['how']:<10} {r['seconds']:.2f}s",
              file=sys.stderr)
    if args.write:
        write_section(MARK, section)
    return 0 if totals["handled"] == totals["tried"] and totals["rows_lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
