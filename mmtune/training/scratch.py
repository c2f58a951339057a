"""Node-local scratch directories of Ray Train workers, and the reaping of dead workers' ones.

A worker spills its data shard (a worker's share of the corpus, image bytes included: GBs
for a Vision-Flan-size corpus), stages checkpoints and unpacks the checkpoint it resumes
from under the node's temp dir, and removes all three when its training function returns.
A worker that is killed (its node lost, OOM, SIGKILL, a preempted spot instance) never
returns, and its directories would stay until the node is recycled, which on a long-lived
node is never. So every directory carries its owner's pid, and each new worker first
removes the directories of owners that no longer run on this node.

Only a pid that does not exist is reaped: a live pid, even one reused by an unrelated
process, keeps its directories (the safe mistake). Directories are looked for in one temp
dir (``tempfile.gettempdir()``: ``TMPDIR`` or ``/tmp``), the one this node's workers use.
That dir must not be shared with processes in another pid namespace (containers mounting
one host ``/tmp`` together): their live pids look dead from here. Give such workers their
own ``TMPDIR``.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

PREFIX = "mmtune-"
# mmtune-<kind>-p<pid>-<mkdtemp suffix>; kind is e.g. "shard-r0", "ckpt-r1", "resume"
_NAME = re.compile(rf"^{re.escape(PREFIX)}[a-z0-9-]+?-p(\d+)-[A-Za-z0-9_]+$")


def make_scratch(kind: str, root: str | Path | None = None) -> Path:
    """A fresh directory ``mmtune-<kind>-p<pid>-<random>`` in ``root`` (default: the temp dir)."""
    return Path(tempfile.mkdtemp(prefix=f"{PREFIX}{kind}-p{os.getpid()}-", dir=root))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def reap_stale(root: str | Path | None = None) -> list[Path]:
    """Remove the scratch directories in ``root`` whose owner process is gone; returns them."""
    root = Path(root or tempfile.gettempdir())
    reaped = []
    try:
        entries = list(root.iterdir())
    except OSError:
        return reaped
    for p in entries:
        m = _NAME.match(p.name)
        if m and int(m.group(1)) != os.getpid() and p.is_dir() and not _alive(int(m.group(1))):
            shutil.rmtree(p, ignore_errors=True)
            reaped.append(p)
    return reaped


__all__ = ["PREFIX", "make_scratch", "reap_stale"]
