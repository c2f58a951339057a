"""What every benchmark shares: writing its marked section into docs/benchmarks.md."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"


def load_1min() -> float:
    """The 1-minute load average (NaN where the OS has none): recorded beside every row,
    since these machines are shared."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def code_version(paths: list[str]) -> str:
    """The commit measured, and whether ``paths`` had uncommitted changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", *paths], cwd=ROOT, capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return head + (f" + uncommitted changes in {' or '.join(paths)}" if dirty else "")


def uncommitted(path: Path) -> bool:
    """Whether git reports changes to ``path`` in the working tree (then --write leaves it alone)."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--", str(path)], cwd=ROOT, capture_output=True,
                             text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return bool(out.stdout.strip())


def write_section(mark: str, section: str, doc: Path = DOC) -> bool:
    """Replace ``<!-- mark --> … <!-- /mark -->`` in ``doc`` with ``section`` (which carries
    the markers), or append it. Refuses (returns False) while ``doc`` has uncommitted edits,
    so two benchmarks finishing together cannot overwrite each other's results."""
    if uncommitted(doc):
        print(f"not written: {doc} has uncommitted edits; commit or stash them, then rerun with --write, "
              "or paste the section above", file=sys.stderr)
        return False
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"<!-- {re.escape(mark)} -->.*?<!-- /{re.escape(mark)} -->", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section + "\n"
    doc.write_text(text)
    print(f"updated {doc}")
    return True
