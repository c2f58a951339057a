"""The audio loop end to end (issue G): ``configs/demo_audio.yaml`` shrunk to seconds' scale through
``mmtune run``'s stages on a local Ray (audio SkillWorld → generic tiny-qwen2-audio student →
evaluation → selection → Ray Train → evaluation), then the report.

The random arm keeps it cheap, as tests/test_pipeline.py's loop does: the teacher's stages
(diagnosis, annotation, index) read only text, whatever the modality, and took ~6 of the 9 min
of a dense tiny audio loop on a loaded machine. The full-size dense run and the comparison are
measured in docs/benchmarks.md ("Audio loop end to end").
"""

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from mmtune.config import load_config
from mmtune.pipeline import run_pipeline
from tests.training.test_pretrain_audio import TINY_AUDIO

pytestmark = [pytest.mark.ray, pytest.mark.slow]

TARGETS = {"shorter_tone", "louder_tone_mc", "count_clip", "sweep_choice"}  # the audio default targets

# The demo config's own settings with tiny sizes: the student from test_pretrain_audio, the loop
# from tests/test_pipeline.py (1 round, 3 steps, 3 test items per task).
AUDIO_LOOP = [
    *TINY_AUDIO, "student.pretrain.steps=10",
    "eval.batch_size=64", "eval.num_actors=1", "eval.max_items_per_task=3",
    "training.batch_size=4", "training.max_steps=3", "training.num_workers=1", "training.cpus_per_worker=0.5",
    "training.coordination.interval=2", "training.coordination.probe_size=2",
    "retrieval.method=random", "retrieval.budget=8", "retrieval.rounds=1",
]


def test_audio_loop_runs_end_to_end(ray_local, tmp_path):
    from mmtune.report import write_report

    cfg = load_config("configs/demo_audio.yaml", [*AUDIO_LOOP, f"run.out_dir={tmp_path / 'runs'}",
                                                  f"run.cache_dir={tmp_path / 'cache'}"])
    logs: list[str] = []
    summary = run_pipeline(cfg, progress=logs.append)
    root = Path(summary["run_dir"])
    man = json.loads((root / "manifest.json").read_text())
    want = ["data", "student", "evaluate_0", "select_1", "train_1", "evaluate_1"]
    assert list(man["stages"]) == want
    assert all(man["stages"][s]["state"] == "done" for s in want)
    assert man["config"]["data"]["skillworld"]["modality"] == "audio"
    assert Path(man["stages"]["student"]["outputs"]["path"]).name.startswith("tiny-qwen2-audio-")

    # the round trained on clips from the audio pool (no images), and moved the weights
    train = pq.read_table(root / "round_1" / "train_data.parquet", columns=["id", "audio", "image"]).to_pylist()
    assert len(train) == 8 and all(r["audio"][:4] == b"RIFF" and r["image"] is None for r in train)
    assert summary["rounds"][1]["train"]["steps"] == 3 and summary["rounds"][1]["train"]["adapter"]

    # every audio target and the corpus tasks scored in both rounds (3 items each), predictions on disk
    for r in (0, 1):
        scores = summary["rounds"][r]["scores"]
        assert {s["task"] for s in scores if s["split"] != "corpus-tasks"} == TARGETS
        assert all(s["n"] == 3 for s in scores) and any(s["split"] == "corpus-tasks" for s in scores)
        for t in TARGETS:
            preds = pq.read_table(root / f"round_{r}" / "eval" / f"predictions_{t}__test.parquet").to_pylist()
            assert len(preds) == 3 and all(isinstance(p["prediction"], str) for p in preds)

    # the report names the modality (it shows no media: no image cells to break)
    md = write_report(root, progress=logs.append).markdown.read_text()
    assert "student tiny-qwen2-audio · data SkillWorld (audio)" in md
    assert "| round 1 |" in md and "![Figure 1]" in md
