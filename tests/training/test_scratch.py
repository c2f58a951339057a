"""Scratch dirs of Ray Train workers: a killed worker's are removed by the next worker."""

from __future__ import annotations

import os
import subprocess
import sys

from mmtune.training.scratch import make_scratch, reap_stale


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid  # reaped by wait(): no process has this pid now (until the kernel reuses it)


def test_only_dead_owners_scratch_is_reaped(tmp_path):
    mine = make_scratch("shard-r0", tmp_path)
    assert mine.name.startswith(f"mmtune-shard-r0-p{os.getpid()}-") and mine.is_dir()
    dead = tmp_path / f"mmtune-ckpt-r1-p{_dead_pid()}-abc123"
    (dead / "checkpoint_00000002").mkdir(parents=True)
    (dead / "checkpoint_00000002" / "model.safetensors").write_bytes(b"x" * 1024)
    parent = tmp_path / f"mmtune-resume-r0-p{os.getppid()}-zz9"  # alive: kept
    parent.mkdir()
    other = [tmp_path / "mmtune-notes", tmp_path / "someone-else-p1-x"]  # not ours by name: kept
    for p in other:
        p.mkdir()
    (tmp_path / f"mmtune-shard-r2-p{_dead_pid()}-file").write_text("a file, not a dir")  # kept
    assert reap_stale(tmp_path) == [dead]
    assert not dead.exists() and mine.is_dir() and parent.is_dir() and all(p.is_dir() for p in other)
    assert reap_stale(tmp_path) == []  # nothing left to reap
    assert reap_stale(tmp_path / "missing") == []  # no temp dir: nothing to do, no error
