"""Driver: kill a worker node in the middle of a Ray Train run (issue F §4).

mmtune's real trainer (``build_trainer``: 2 DDP workers, checkpoints every 2 steps,
``FailureConfig(max_failures=2)``) runs twice with the same seed on a
``ray.cluster_utils.Cluster`` (a head and two worker nodes; see ``HEAD``/``WORKER``):

1. ``reference``: uninterrupted, its workers on the head;
2. ``fault``: its workers on the train slots (one per worker node, one on the head). Once
   the Train controller has registered a checkpoint (its snapshot file in the run's
   storage dir names one: polled, no blind sleep), the worker node hosting rank 0 (rank
   1's, when rank 0 is on the head) is killed without a graceful shutdown. The two slots
   left fit the group, so the controller restarts it from the checkpoint.

Every step of every attempt is logged by the workers (``_step_log``: rank, step, loss,
the checkpoint step it resumed from, node, pid, time). The report holds both logs, both
runs' final histories (``history.jsonl`` in the final checkpoint) and the timings; the
tests assert on them. ``python -m tests.faults.train_node_loss OUT.json`` runs it alone;
``cluster_faults.py`` runs it beside the teacher scenario.
"""

from __future__ import annotations

import io
import json
import os
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any

MAX_STEPS = 10
CHECKPOINT_EVERY = 2
# Ray Train V2's controller polls its workers (reports, health) every 2 s by default, and a
# worker holds one unread report: at 0.5 s the runs and the failure detection are faster.
# After the checkpoint the kill waits for, 4 more are reported, one per poll at most: the
# run cannot end within ~1.5 s, and the kill lands within ~0.1 s.
POLL_S = "0.5"
SLOT = "train_slot"  # a custom resource: one Train worker per node


def _png(rgb) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), rgb).save(buf, format="PNG")
    return buf.getvalue()


def prepare(root: Path) -> tuple[Path, Any]:
    """The tiny LLaVA (saved under ``root``) and 12 colour rows of tests/training/test_trainer.py."""
    import pyarrow as pa
    import torch

    from mmtune.config import TinyLlavaPreset
    from mmtune.data.schema import SAMPLE_SCHEMA
    from mmtune.models.presets import build_tiny_llava

    root.mkdir(parents=True, exist_ok=True)
    colours = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200), "yellow": (220, 220, 40)}
    names = list(colours)
    rows = []
    for i in range(12):
        c = names[i % 4]
        rows.append({"id": f"s{i:03d}", "task": "colour", "source": "test", "image": _png(colours[c]), "audio": None,
                     "instruction": "What colour is the square?",
                     "response": f"The square fills the image.\nIt is {c}.\nAnswer: {c}",
                     "steps": ["The square fills the image.", f"It is {c}."], "answer": c, "options": None,
                     "skills": []})
    table = pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA)
    preset = TinyLlavaPreset(vision_hidden=32, vision_layers=1, vision_heads=2, text_hidden=32, text_layers=2,
                             text_heads=2, text_intermediate=64, vocab_size=400)
    torch.manual_seed(0)
    model, processor = build_tiny_llava(preset, [r["instruction"] + " " + r["response"] for r in rows] * 4,
                                        image_size=32)
    model.save_pretrained(root / "student")
    processor.save_pretrained(root / "student")
    return root / "student", table


def trainer(student: Path, table, store: Path, name: str, step_log: Path, slot: str, cpus: float):
    from mmtune.config import (
        CoordinationConfig,
        LoraSettings,
        StudentConfig,
        TrainingConfig,
    )
    from mmtune.training.trainer import build_trainer

    os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = POLL_S  # passed on to the Train controller
    tc = TrainingConfig(lr=3e-3, batch_size=2, max_steps=MAX_STEPS, warmup_ratio=0.0, num_workers=2, use_gpu=False,
                        checkpoint_every=CHECKPOINT_EVERY, max_failures=2, report_every=CHECKPOINT_EVERY,
                        coordination=CoordinationConfig(mode="commit", interval=2, reg_lambda=0.1))
    sc = StudentConfig(lora=LoraSettings(r=4, alpha=8, dropout=0.1), dtype="float32")
    # An Arrow table: build_trainer puts it in the object store from the driver, on the
    # head, so no block of it is lost with a worker node (a read task's output could be).
    return build_trainer(tc, sc, student, table, storage_path=store, name=name, seed=0, cpus_per_worker=cpus,
                         torch_threads=1, worker_resources={slot: 1}, extra_config={"_step_log": str(step_log)})


def read_log(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def registered_checkpoint(run_dir: Path) -> int:
    """The latest checkpoint step the Train controller has registered (0 if none): it
    writes its checkpoint manager's snapshot into the run's storage dir on registering."""
    snap = run_dir / "checkpoint_manager_snapshot.json"
    try:
        text = snap.read_text()
    except OSError:
        return 0
    return max((int(s) for s in re.findall(r"checkpoint_(\d+)", text)), default=0)


def fit(tr) -> dict[str, Any]:
    from mmtune.training.trainer import read_history

    t0 = time.time()
    result = tr.fit()
    out = {"fit_s": round(time.time() - t0, 1), "error": None if result.error is None else repr(result.error)}
    if result.checkpoint is not None:
        out["checkpoint"] = Path(result.checkpoint.path).name
        out["history"] = [{"step": int(m["step"]), "loss": m["loss"]} for m in read_history(result.checkpoint.path)]
    out["metrics"] = {k: v for k, v in (result.metrics or {}).items() if isinstance(v, (int, float))}
    return out


def reference(work: Path, prepared: tuple[Path, Any]) -> dict[str, Any]:
    """The uninterrupted run. Its workers ask for the head's ``REF_SLOT``s, so it can run
    beside the fault run without losing a worker to the node kill."""
    student, table = prepared
    report = fit(trainer(student, table, work / "store", "ref", work / "ref.jsonl", REF_SLOT, 0.5))
    report["log"] = read_log(work / "ref.jsonl")
    return report


def fault(cluster: Any, nodes: list[Any], work: Path, prepared: tuple[Path, Any]) -> dict[str, Any]:
    """The run that loses a worker node (see the module docstring). ``nodes``: the
    cluster's worker nodes, each with one train slot (the head has one too)."""
    import ray

    student, table = prepared
    store = work / "store"
    fault_log = work / "fault.jsonl"
    chaos: dict[str, Any] = {}

    def kill_a_worker_node() -> None:
        """Wait for a registered checkpoint, then kill the worker node hosting rank 0 (rank
        1's if rank 0 is on the head): the group's remaining slots still fit it."""
        try:
            deadline = time.time() + 300
            while True:  # a registered checkpoint, and both ranks' log lines (written after their report)
                log = read_log(fault_log)
                if registered_checkpoint(store / "fault") >= CHECKPOINT_EVERY and {r["rank"] for r in log} == {0, 1}:
                    break
                if time.time() > deadline:
                    chaos["error"] = "no checkpoint was registered within 300 s"
                    return
                time.sleep(0.05)
            chaos["seen_checkpoint"] = registered_checkpoint(store / "fault")
            chaos["steps_before_kill"] = max(r["step"] for r in log if r["rank"] == 0)
            by_id = {n.node_id: n for n in nodes}
            ranks = {r["rank"]: r["node"] for r in log}
            rank = 0 if ranks[0] in by_id else 1
            victim = by_id[ranks[rank]]
            chaos.update(victim=victim.node_id, victim_rank=rank, t_kill=time.time())
            cluster.remove_node(victim, allow_graceful=False)  # SIGKILL: raylet, workers, all
            chaos["t_removed"] = time.time()
        except Exception as e:  # noqa: BLE001 - reported to the test
            chaos["error"] = repr(e)

    th = threading.Thread(target=kill_a_worker_node, daemon=True)
    th.start()
    report: dict[str, Any] = {"fault": fit(trainer(student, table, store, "fault", fault_log, SLOT, 0.0))}
    th.join(timeout=30)
    report["fault"]["log"] = read_log(fault_log)
    report["chaos"] = chaos
    if "t_kill" in chaos:
        resumed = [r["t"] for r in report["fault"]["log"] if r["resumed_from"] > 0]
        report["recover_s"] = round(min(resumed) - chaos["t_kill"], 1) if resumed else None
    report["alive_nodes"] = sum(1 for n in ray.nodes() if n["Alive"])
    return report


def run(cluster: Any, nodes: list[Any], work: Path) -> dict[str, Any]:
    """Both runs, one after the other (``cluster_faults.py`` runs them side by side)."""
    prepared = prepare(work)
    return {"ref": reference(work, prepared), **fault(cluster, nodes, work, prepared)}


# The cluster: the head (driver, Train controllers, the reference run's workers on
# REF_SLOT, the teacher app) and two worker nodes. The fault run's workers ask
# for one SLOT, which each worker node and the head offer once (a group of 2 still fits
# after a node dies), and no CPU: the worker nodes offer none, so nothing else (a task, a
# teacher replica, the reference run) is ever placed on a node that may die.
REF_SLOT = "ref_slot"
HEAD = {"num_cpus": 4, "resources": {SLOT: 1, REF_SLOT: 2}}
WORKER = {"num_cpus": 0, "resources": {SLOT: 1}}


if __name__ == "__main__":  # standalone: python -m tests.faults.train_node_loss OUT.json
    from tests.faults.inproc_cluster import local_cluster, standalone_env

    standalone_env()
    out = Path(sys.argv[1]).resolve()
    with local_cluster(HEAD, [WORKER, WORKER]) as (c, ns):
        out.write_text(json.dumps(run(c, ns, out.parent / "train_node_loss"), indent=1))
