"""Issue F §4: kill the pipeline driver in the middle of a stage, then ``mmtune run --resume``.

On a ``ray.cluster_utils.Cluster`` (a head and 2 worker nodes, 1 logical CPU each), two
``mmtune run`` drivers run the same tiny config (one round, random selection):

* the reference runs uninterrupted;
* the other is SIGKILLed while ``train_1`` is running (we watch its ``manifest.json`` and
  Ray Train's storage rather than sleeping blindly), then resumed with ``--resume``.

The resumed run must skip the stages that finished, redo the interrupted one and what
follows, and end with **deterministic outputs identical to the reference's**, compared by
content hash:

* ``round_1/selection.parquet`` (the seeded random selection),
* ``round_1/train_data.parquet`` (the selected corpus rows the student was tuned on),
* the adapter's tensors (``round_1/train/adapter/*.safetensors``) and the train stage's
  steps, samples and final loss,
* the per-step loss curve (``history.jsonl``, loss and schedule only),
* the evaluation: ``evaluate_0`` and ``evaluate_1`` scores and every predictions parquet,
* every stage's key in the manifest.

Not compared, because they are not deterministic by nature: wall times (``seconds``,
``started``, samples/s), paths that contain the run's name, and Ray's own logs.

Determinism needs ``training.torch_threads`` pinned (torch CPU kernels reduce in a
thread-count-dependent order) and every RNG seeded from the config; the run's workers
may land on different nodes each time, which must not matter.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.faults.driver_cluster import shared_cluster
from tests.teacher.conftest import free_port
from tests.test_pipeline import LOOP

pytestmark = [pytest.mark.ray, pytest.mark.slow]

CONFIG = [*LOOP, "retrieval.method=random", "retrieval.rounds=1", "retrieval.budget=8",
          "eval.max_items_per_task=4", "eval.forgetting=false", "run.seed=3",
          # its own port: the session's ray_local may still hold a Serve on 8000
          f"teacher.port={free_port()}"]
# One-line outputs of the loss curve that depend on wall time, not on the computation.
TIMING_KEYS = {"samples_per_s", "seconds", "time", "t", "elapsed", "steps_per_s"}


@pytest.fixture(scope="module")
def mmtune_cluster(request):
    yield from shared_cluster(request)


def _driver(cluster: dict, tmp: Path, name: str, *extra: str) -> tuple[subprocess.Popen, Path]:
    """``mmtune run`` as its own driver process, connected to the cluster."""
    cfg = tmp / "run.yaml"
    cfg.write_text("{}\n")
    log = tmp / f"{name}{'-resume' if extra else ''}.log"
    args = [sys.executable, "-m", "mmtune.cli", "run", *extra, "--config", str(cfg), *CONFIG,
            f"ray.address={cluster['address']}", f"run.name={name}", f"run.out_dir={tmp / 'runs'}",
            f"run.cache_dir={tmp / 'cache'}"]
    with open(log, "w") as f:
        return subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, env=cluster["env"], cwd=tmp), log


def _finish(driver: tuple[subprocess.Popen, Path], timeout: float = 240) -> str:
    p, log = driver
    try:
        rc = p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        raise AssertionError(f"mmtune run did not finish in {timeout}s:\n{log.read_text()[-4000:]}") from None
    out = log.read_text()
    assert rc == 0, f"mmtune run exited {rc}:\n{out[-4000:]}"
    return out


def _manifest(run: Path) -> dict:
    try:
        return json.loads((run / "manifest.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):  # not written yet
        return {"stages": {}}


def _table_hash(path: Path) -> str:
    """The parquet file's content (schema + rows, in order), not its bytes: the writer's
    metadata is not part of what a stage computed."""
    t = pq.read_table(path)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, t.schema) as w:
        w.write_table(t)
    return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()


def _tensors_hash(path: Path) -> str:
    from safetensors.numpy import load_file

    h = hashlib.sha256()
    for k, v in sorted(load_file(str(path)).items()):
        h.update(k.encode())
        h.update(str(v.dtype).encode() + str(v.shape).encode())
        h.update(v.tobytes())
    return h.hexdigest()


def fingerprint(run: Path) -> dict[str, object]:
    """Every deterministic output of the run, by content hash or value."""
    man = _manifest(run)["stages"]
    out: dict[str, object] = {f"key:{s}": st["key"] for s, st in man.items()}
    for f in [run / "round_1" / "selection.parquet", run / "round_1" / "train_data.parquet",
              *sorted(run.glob("round_*/eval/predictions_*.parquet"))]:
        out[str(f.relative_to(run))] = _table_hash(f)
    adapters = sorted((run / "round_1" / "train" / "adapter").glob("*.safetensors"))
    assert adapters, f"no adapter tensors under {run / 'round_1/train/adapter'}"
    for f in adapters:
        out[str(f.relative_to(run))] = _tensors_hash(f)
    curve = [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS}
             for line in (run / "round_1" / "train" / "history.jsonl").read_text().splitlines() if line]
    out["history"] = curve
    tr = man["train_1"]["outputs"]
    out["train_1"] = {k: tr[k] for k in ("steps", "samples", "loss")}
    for s in ("evaluate_0", "evaluate_1"):
        out[s] = man[s]["outputs"]["scores"]
    return out


def _wait(proc: subprocess.Popen, log: Path, what: str, done, timeout: float = 240) -> None:
    """Poll ``done()`` (the run dir, not the clock) while ``proc`` is alive."""
    deadline = time.time() + timeout
    while not done():
        assert proc.poll() is None, f"the driver ended before {what}:\n{log.read_text()[-3000:]}"
        assert time.time() < deadline, f"no {what} after {timeout}s:\n{log.read_text()[-3000:]}"
        time.sleep(0.2)


def _state(run: Path, stage: str) -> str | None:
    return _manifest(run)["stages"].get(stage, {}).get("state")


def test_driver_killed_mid_stage_resumes_to_identical_outputs(mmtune_cluster, tmp_path):
    runs = tmp_path / "runs"
    ref, ref_log = _driver(mmtune_cluster, tmp_path, "ref")
    # The second driver starts once the reference has filled the shared cache (SkillWorld,
    # the generic student, the generic student's evaluation), and then runs beside it: on
    # 3 logical CPUs both fit, and the test takes about one run's time instead of two.
    _wait(ref, ref_log, "evaluate_0 done", lambda: _state(runs / "ref", "evaluate_0") == "done")

    victim, victim_log = _driver(mmtune_cluster, tmp_path, "killed")
    run = runs / "killed"
    # Mid-stage: train_1 is running and Ray Train has started (its storage exists), so the
    # kill lands inside a Ray Train fit, with the controller and a worker alive.
    _wait(victim, victim_log, "train_1 in Ray Train",
          lambda: _state(run, "train_1") == "running" and (run / "round_1" / "train" / "ray").exists())
    os.kill(victim.pid, signal.SIGKILL)
    assert victim.wait(timeout=30) == -signal.SIGKILL
    stages = _manifest(run)["stages"]
    assert stages["train_1"]["state"] == "running"  # what a killed driver leaves behind
    assert "evaluate_1" not in stages and not (run / "summary.json").exists()

    log = _finish(_driver(mmtune_cluster, tmp_path, "killed", "--resume"))
    _finish((ref, ref_log))
    for s in ("data", "student", "evaluate_0", "select_1"):
        assert f"[run] {s}: unchanged, skipped" in log, log[-3000:]
    assert "[run] train_1: running" in log and "[run] evaluate_1: running" in log
    assert all(st["state"] == "done" for st in _manifest(run)["stages"].values())

    # Compared as JSON text: NaN (κ before its first measurement) equals itself there.
    want, got = ({k: json.dumps(v, sort_keys=True) for k, v in fingerprint(r).items()} for r in (runs / "ref", run))
    assert got.keys() == want.keys()
    preds = [k for k in want if "predictions_" in k]
    assert len(preds) >= 4 and any(k.startswith("round_1/train/adapter/") for k in want), sorted(want)  # not vacuous
    diff = [k for k in want if got[k] != want[k]]
    assert not diff, f"outputs differ after kill + resume: {diff}"
