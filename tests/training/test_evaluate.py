"""Evaluation on a local Ray: a tiny LLaVA overfit on four items must score them all."""

import io

import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from mmtune.config import RunConfig, TinyLlavaPreset
from mmtune.data.schema import make_sample, to_table
from mmtune.models.inputs import encode_for_training
from mmtune.models.presets import build_tiny_llava
from mmtune.training.evaluate import Predictor, evaluate_splits, format_table, score_rows


def _png(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(buf, format="PNG")
    return buf.getvalue()


COLORS = {"red": (220, 20, 20), "blue": (20, 20, 220), "green": (20, 200, 20), "yellow": (230, 230, 20)}


def _samples():
    out = []
    for i, (name, rgb) in enumerate(COLORS.items()):
        out.append(make_sample(id=f"s{i}", task="colour", instruction="What colour is the picture?",
                               response=f"The picture is {name}.\nAnswer: {name}", image=_png(rgb)))
    out.append(make_sample(id="mc", task="mc", instruction="Which colour? A. red B. blue",
                           response="The picture is blue.\nAnswer: B", image=_png(COLORS["blue"]),
                           options=["red", "blue"]))
    return out


@pytest.fixture(scope="module")
def overfit_student(tmp_path_factory):
    torch.manual_seed(0)
    samples = _samples()
    texts = [s["instruction"] for s in samples] + [s["response"] for s in samples]
    preset = TinyLlavaPreset(vision_hidden=32, vision_layers=1, vision_heads=2, text_hidden=64,
                             text_layers=2, text_heads=2, text_intermediate=128, vocab_size=320)
    model, processor = build_tiny_llava(preset, texts * 4, image_size=32)
    batch = encode_for_training(processor, [s["instruction"] for s in samples],
                                [s["response"] for s in samples], [s["image"] for s in samples])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert loss.item() < 0.05, f"tiny model failed to overfit 5 items (loss {loss.item():.3f})"
    out = tmp_path_factory.mktemp("student")
    model.save_pretrained(out)
    processor.save_pretrained(out)
    data = tmp_path_factory.mktemp("data") / "eval.parquet"
    pq.write_table(to_table(samples), data)
    return out, data, samples


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
