"""Evaluation on a local Ray: a tiny LLaVA overfit on four items must score them all."""

import pyarrow.parquet as pq
import pytest
import torch

from mmtune.config import RunConfig
from mmtune.training.evaluate import (
    Predictor,
    evaluate_splits,
    format_table,
    score_rows,
)
from tests.tiny import make_overfit_student


@pytest.fixture(scope="module")
def overfit_student(tmp_path_factory):
    return make_overfit_student(tmp_path_factory.mktemp("student"))


def test_predictor_without_ray(overfit_student):
    student, _, samples = overfit_student
    cfg = RunConfig()
    pred = Predictor(str(student), cfg.student.model_dump(mode="json"), max_new_tokens=16)
    import numpy as np
    batch = {k: np.array([s[k] for s in samples], dtype=object) for k in
             ("id", "task", "image", "instruction", "answer", "options")}
    out = pred(batch)
    assert list(out["pred_answer"]) == ["red", "blue", "green", "yellow", "b"]
    assert out["correct"].all()


@pytest.mark.ray
def test_evaluate_splits_on_ray(ray_local, overfit_student, tmp_path):
    student, data, samples = overfit_student
    cfg = RunConfig.model_validate({"eval": {"batch_size": 2, "num_actors": 1},
                                    "student": {"max_new_tokens": 16}})
    scores = evaluate_splits(cfg, student, {"toy/test": [str(data)]}, out_dir=tmp_path, progress=lambda m: None)
    by_task = {s.task: s for s in scores}
    assert by_task["colour"].n == 4 and by_task["colour"].accuracy == 1.0
    assert by_task["colour"].majority == 0.25
    assert by_task["mc"].accuracy == 1.0
    assert {s.split for s in scores} == {"toy/test"}
    preds = pq.read_table(tmp_path / "predictions_toy__test.parquet").to_pylist()
    assert sorted(p["id"] for p in preds) == sorted(s["id"] for s in samples)
    assert (tmp_path / "scores.json").is_file()
    assert "colour" in format_table(scores)


def test_score_rows_counts_missing_answers():
    rows = [{"task": "t", "answer": "a", "correct": True, "pred_answer": "a"},
            {"task": "t", "answer": "b", "correct": False, "pred_answer": ""}]
    (s,) = score_rows("x", rows)
    assert (s.n, s.accuracy, s.majority, s.no_answer) == (2, 0.5, 0.5, 1)


@pytest.mark.gpu
def test_predictor_on_gpu_matches_cpu(overfit_student):
    """GPU path: the predictor moves to CUDA in bf16 and still reads the same answers."""
    import numpy as np

    student, _, samples = overfit_student
    cfg = RunConfig().student.model_dump(mode="json")
    batch = {k: np.array([s[k] for s in samples], dtype=object) for k in
             ("id", "task", "image", "instruction", "answer", "options")}
    gpu = Predictor(str(student), cfg, max_new_tokens=16, device="cuda")
    assert next(gpu.model.parameters()).is_cuda
    assert next(gpu.model.parameters()).dtype == torch.bfloat16
    cpu = Predictor(str(student), cfg, max_new_tokens=16, device="cpu")
    assert list(gpu(batch)["pred_answer"]) == list(cpu(batch)["pred_answer"])
