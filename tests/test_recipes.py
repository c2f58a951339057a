"""Smoke tests of the real-model recipes (configs/llava15_7b.yaml, configs/qwen2vl_7b.yaml,
configs/qwen2audio_7b.yaml).

Each recipe is loaded as written and only the model ids are pointed at tiny random *twins*
of the same architectures (mmtune.models.twins: saved with save_pretrained, loaded with
from_pretrained as the 7B checkpoints are), the data paths at small JSON files written
here (LLaVA JSON / ShareGPT JSON with PNG and JPEG images, ShareGPT JSON with WAV and FLAC
clips in an ``audios`` list), and the sizes at a 2-core CPU
(batch, steps, workers, device cpu, dtype float32). Then the real code paths run: the
import of the JSON corpus and targets, loading the student, LoRA + parameter groups, a
few CoMMIT steps (on Ray Train for LLaVA; the Ray Train workers' loop in process for the
Qwen twins, since Ray Train's adapter does not depend on the architecture), the saved
adapter through PEFT's own ``PeftModel.from_pretrained``, generation + evaluation (on Ray
Data for LLaVA; the same per-actor ``Predictor`` in process for the others), and the teacher's
``hf`` backend on a tiny Qwen2.5-Instruct twin (and the ``openai`` alternative's config).

What this cannot show: anything about the real weights (quality, memory, speed on GPUs).
"""

from __future__ import annotations

import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from PIL import Image

from mmtune.config import StudentConfig, load_config
from mmtune.models.twins import (
    save_llava15_twin,
    save_qwen2_audio_twin,
    save_qwen2_vl_twin,
    save_qwen25_instruct_twin,
)

ROOT = Path(__file__).resolve().parents[1]
LLAVA_RECIPE = ROOT / "configs" / "llava15_7b.yaml"
QWEN_RECIPE = ROOT / "configs" / "qwen2vl_7b.yaml"
AUDIO_RECIPE = ROOT / "configs" / "qwen2audio_7b.yaml"
LLAMAFACTORY = ROOT / "tests" / "fixtures" / "llamafactory"
COLOURS = {"red": (220, 20, 20), "blue": (20, 20, 220), "green": (20, 200, 20), "yellow": (230, 230, 20)}
TONES = {"low": 220.0, "mid": 440.0, "high": 1320.0}  # Hz
TEXTS = ["What colour is the picture?", "The picture is red.", "Answer: red", "Answer: blue", "Is it dark?",
         "Think step by step, then write 'Answer: X' on the last line.", "Who are they?", "yellow green"] * 4


# --------------------------------------------------------------------------- twins and data
@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    root = tmp_path_factory.mktemp("twins")
    return {"llava": save_llava15_twin(root / "llava-1.5-7b-hf", TEXTS),
            "qwen2vl": save_qwen2_vl_twin(root / "Qwen2-VL-7B-Instruct", TEXTS),
            "teacher": save_qwen25_instruct_twin(root / "Qwen2.5-7B-Instruct", TEXTS)}


@pytest.fixture(scope="module")
def audio_twin(tmp_path_factory):
    texts = TEXTS + [_tone_qa(n)[k] for n in TONES for k in (0, 1)]
    return save_qwen2_audio_twin(tmp_path_factory.mktemp("twins_audio") / "Qwen2-Audio-7B-Instruct", texts)


def _png(rgb, size=(32, 32)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, rgb).save(buf, format="PNG")
    return buf.getvalue()


def write_images(d: Path) -> None:
    d.mkdir(parents=True, exist_ok=True)
    for i, (name, rgb) in enumerate(COLOURS.items()):
        (d / f"{name}.png").write_bytes(_png(rgb, (32 + 8 * i, 32)))  # varied shapes


def _qa(name: str) -> tuple[str, str]:
    return ("What colour is the picture? Think step by step, then write 'Answer: X' on the last line.",
            f"The picture is {name}.\nAnswer: {name}")


def write_llava_data(d: Path) -> dict[str, Path]:
    """LLaVA JSON: a corpus (multi-turn, text-only and two bad rows) and a target's val/test."""
    write_images(d / "images")
    corpus = []
    for i, name in enumerate(COLOURS):
        q, a = _qa(name)
        corpus.append({"id": f"c{i}", "image": f"images/{name}.png", "conversations": [
            {"from": "human", "value": f"<image>\n{q}"}, {"from": "gpt", "value": a},
            {"from": "human", "value": "Is it dark?"}, {"from": "gpt", "value": "No, it is bright.\nAnswer: no"}]})
    corpus.append({"id": "text-only", "conversations": [
        {"from": "human", "value": "Name a colour."}, {"from": "gpt", "value": "Red is a colour.\nAnswer: red"}]})
    corpus.append({"id": "lost", "image": "images/missing.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A cat."}]})
    corpus.append({"id": "mute", "image": "images/red.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": ""}]})

    def target(names, extra):
        rows = []
        for i, name in enumerate(names):
            q, a = _qa(name)
            rows.append({"id": f"t{i}", "image": f"images/{name}.png", "conversations": [
                {"from": "human", "value": f"<image>\n{q}"}, {"from": "gpt", "value": a}]})
        return rows + extra

    one_line = {"id": "short", "image": "images/blue.png", "conversations": [
        {"from": "human", "value": "<image>\nColour? Reply with one word."}, {"from": "gpt", "value": "blue"}]}
    no_answer = {"id": "vague", "image": "images/red.png", "conversations": [
        {"from": "human", "value": "<image>\nDescribe it."}, {"from": "gpt", "value": "It is red.\nIt is square."}]}
    paths = {"corpus": d / "llava_mix.json", "val": d / "val.json", "test": d / "test.json"}
    paths["corpus"].write_text(json.dumps(corpus, indent=1))
    paths["val"].write_text(json.dumps(target(["red", "blue", "green"], [one_line, no_answer])))
    paths["test"].write_text(json.dumps(target(["yellow", "red", "blue"], [])))
    return paths


def _sharegpt_targets(names, qa, media: str, path: str) -> list[dict]:
    """Target rows in LLaMA-Factory's ShareGPT layout: one ``<image>``/``<audio>`` turn each,
    its file under ``images``/``audios``."""
    rows = []
    for name in names:
        q, a = qa(name)
        rows.append({"messages": [{"role": "user", "content": f"<{media}>{q}"}, {"role": "assistant", "content": a}],
                     f"{media}s": [path.format(name)]})
    return rows


def write_sharegpt_data(d: Path) -> dict[str, Path]:
    """ShareGPT / LLaMA-Factory JSON: LLaMA-Factory's mllm_demo (real JPEGs, 2 turns, images
    resolved against the file's directory) plus colour items; targets in the same format."""
    import shutil

    write_images(d / "images")
    shutil.copytree(LLAMAFACTORY / "mllm_demo_data", d / "mllm_demo_data")
    corpus = json.loads((LLAMAFACTORY / "mllm_demo.json").read_text())[:4]
    for name in COLOURS:
        q, a = _qa(name)
        corpus.append({"messages": [{"role": "user", "content": f"<image>{q}"},
                                    {"role": "assistant", "content": a}], "images": [f"images/{name}.png"]})
    corpus.append({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                                {"role": "assistant", "content": "Hello.\nAnswer: hello"}]})
    corpus.append({"messages": [{"role": "user", "content": "<image><image>Compare."},
                                {"role": "assistant", "content": "Same."}],
                   "images": ["images/red.png", "images/blue.png"]})  # two images in one turn: quarantined

    def target(names):
        return _sharegpt_targets(names, _qa, "image", "images/{}.png")

    paths = {"corpus": d / "corpus.json", "val": d / "val.json", "test": d / "test.json"}
    paths["corpus"].write_text(json.dumps(corpus, ensure_ascii=False, indent=1))
    paths["val"].write_text(json.dumps(target(["red", "blue", "green"])))
    paths["test"].write_text(json.dumps(target(["yellow", "red", "blue"])))
    return paths


def _wav(hz: float, seconds: float = 1.0, rate: int = 16000) -> bytes:
    import numpy as np
    import soundfile as sf

    t = np.arange(int(seconds * rate)) / rate
    buf = io.BytesIO()
    sf.write(buf, (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32), rate, format="WAV")
    return buf.getvalue()


def _tone_qa(name: str) -> tuple[str, str]:
    return ("Is the tone low, mid or high? Think step by step, then write 'Answer: X' on the last line.",
            f"The tone is {name}.\nAnswer: {name}")


def write_audio_sharegpt_data(d: Path) -> dict[str, Path]:
    """LLaMA-Factory audio JSON (``audios`` list): LLaMA-Factory's mllm_audio_demo (a real
    16 kHz WAV and FLAC; its mp3 is absent) plus tone items, a two-turn two-clip
    conversation, a text-only row and an undecodable clip; targets in the same format."""
    import shutil

    (d / "clips").mkdir(parents=True, exist_ok=True)
    for i, (name, hz) in enumerate(TONES.items()):
        (d / "clips" / f"{name}.wav").write_bytes(_wav(hz, 0.8 + 0.2 * i))  # varied lengths
    (d / "clips" / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot audio at all")
    shutil.copytree(LLAMAFACTORY / "mllm_demo_data", d / "mllm_demo_data")
    corpus = json.loads((LLAMAFACTORY / "mllm_audio_demo.json").read_text())
    for name in TONES:
        q, a = _tone_qa(name)
        corpus.append({"messages": [{"role": "user", "content": f"<audio>{q}"},
                                    {"role": "assistant", "content": a}], "audios": [f"clips/{name}.wav"]})
    corpus.append({"messages": [{"role": "user", "content": "<audio>Is it low?"},
                                {"role": "assistant", "content": "Yes.\nAnswer: yes"},
                                {"role": "user", "content": "<audio>And this one?"},
                                {"role": "assistant", "content": "No, it is high.\nAnswer: no"}],
                   "audios": ["clips/low.wav", "clips/high.wav"]})
    corpus.append({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                                {"role": "assistant", "content": "Hello.\nAnswer: hello"}]})
    corpus.append({"messages": [{"role": "user", "content": "<audio>What is it?"},
                                {"role": "assistant", "content": "Noise."}], "audios": ["clips/broken.wav"]})

    def target(names):
        return _sharegpt_targets(names, _tone_qa, "audio", "clips/{}.wav")

    paths = {"corpus": d / "corpus.json", "val": d / "val.json", "test": d / "test.json"}
    paths["corpus"].write_text(json.dumps(corpus, indent=1))
    paths["val"].write_text(json.dumps(target(["low", "mid", "high"])))
    paths["test"].write_text(json.dumps(target(["high", "low", "mid"])))
    return paths


def recipe(path: Path, tmp: Path, student: Path, teacher: Path, data: dict[str, Path], fmt: str,
           image_root: Path | None, extra: tuple[str, ...] = (), task: str = "colours"):
    """The recipe with only model ids, data paths and sizes overridden."""
    targets = [{"name": task, "val": str(data["val"]), "test": str(data["test"]), "format": fmt}]
    return load_config(path, [
        f"student.name_or_path={student}", f"teacher.name_or_path={teacher}",
        f"data.corpus={data['corpus']}", f"data.image_root={image_root if image_root else 'null'}",
        f"data.targets={json.dumps(targets)}",
        f"run.out_dir={tmp / 'runs'}", f"run.cache_dir={tmp / 'cache'}",
        # sizes for a 2-core CPU
        "student.dtype=float32", "student.max_new_tokens=12", "teacher.device=cpu", "teacher.dtype=float32",
        "teacher.batch_size=4", "teacher.max_new_tokens=8", "teacher.parse_retries=0",
        "training.batch_size=2", "training.max_steps=3", "training.num_workers=1", "training.use_gpu=false",
        "training.cpus_per_worker=0.5", "training.torch_threads=1", "training.checkpoint_every=2",
        "training.coordination.interval=2", "training.coordination.probe_size=2", "training.log_every=1",
        "eval.batch_size=4", "eval.num_actors=1", *extra])


# --------------------------------------------------------------------------- the recipes as written
def test_recipes_validate_as_written():
    llava, qwen, audio = load_config(LLAVA_RECIPE), load_config(QWEN_RECIPE), load_config(AUDIO_RECIPE)
    assert llava.student.name_or_path == "llava-hf/llava-1.5-7b-hf" and llava.data.corpus_format == "llava"
    assert qwen.student.name_or_path == "Qwen/Qwen2-VL-7B-Instruct" and qwen.data.corpus_format == "sharegpt"
    assert audio.student.name_or_path == "Qwen/Qwen2-Audio-7B-Instruct" and audio.data.corpus_format == "sharegpt"
    assert audio.student.freeze_audio_tower and not audio.student.freeze_projector
    for cfg in (llava, qwen, audio):
        assert cfg.data.source == "files" and cfg.data.targets and cfg.student.dtype == "bfloat16"
        assert cfg.teacher.backend == "hf" and cfg.teacher.serve.num_gpus_per_replica >= 1
        assert cfg.training.use_gpu is True and cfg.training.num_workers >= 1


def _alternative_teacher(path: Path) -> dict:
    """The commented-out OpenAI teacher section of a recipe, uncommented and parsed."""
    import yaml

    text = path.read_text()
    block = text[text.index("# --- alternative teacher"):text.index("# --- end alternative teacher")]
    block = block[block.index("# teacher:"):]
    lines = [ln[2:] for ln in block.splitlines() if ln.startswith(("# teacher:", "#   "))]
    return yaml.safe_load("\n".join(lines))["teacher"]


class _FakeOpenAI(BaseHTTPRequestHandler):
    """Answers /v1/chat/completions like vLLM, recording the Authorization header."""

    seen: ClassVar[list[dict]] = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append({"auth": self.headers.get("Authorization"), "path": self.path, "body": body})
        if body.get("logprobs"):
            top = [{"token": "A", "logprob": -0.2}, {"token": "B", "logprob": -1.8}]
            choice = {"message": {"content": "A"}, "logprobs": {"content": [{"token": "A", "top_logprobs": top}]}}
        else:
            choice = {"message": {"content": "counting objects of a given colour"}}
        data = json.dumps({"choices": [choice]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("path", [LLAVA_RECIPE, QWEN_RECIPE, AUDIO_RECIPE], ids=["llava15", "qwen2vl", "qwen2audio"])
def test_openai_teacher_alternative_is_a_valid_config_that_talks_to_a_server(path, monkeypatch):
    from mmtune.config import RunConfig
    from mmtune.teacher.backend import OpenAIBackend, make_backend
    from mmtune.teacher.teacher import Teacher

    alt = _alternative_teacher(path)
    assert alt["backend"] == "openai" and alt["base_url"].endswith("/v1") and "api_key" not in alt
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeOpenAI)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        tree = load_config(path).to_dict()
        tree["teacher"] = {**alt, "base_url": f"http://127.0.0.1:{server.server_port}/v1", "max_retries": 0}
        cfg = RunConfig.model_validate(tree)
        monkeypatch.setenv(cfg.teacher.api_key_env, "sk-test-not-a-real-key")
        backend = make_backend(cfg.teacher)
        assert isinstance(backend, OpenAIBackend) and "sk-test" not in repr(backend)
        _FakeOpenAI.seen.clear()
        [res] = Teacher(backend, cfg.teacher).analyse([{
            "id": "x", "question": "Which colour? A. red B. blue", "steps": ["The picture is red.", "So red."],
            "prediction": "A", "gold": "B", "options": ["red", "blue"]}])
        assert res.status in ("ok", "unparsed") and res.mistake_step is not None
        assert {s["auth"] for s in _FakeOpenAI.seen} == {"Bearer sk-test-not-a-real-key"}
        assert {s["body"]["model"] for s in _FakeOpenAI.seen} == {alt["name_or_path"]}
    finally:
        server.shutdown()


# --------------------------------------------------------------------------- fast model checks
def test_llava15_twin_labels_end_with_eos_under_llava_hf_template(twins):
    """llava-hf's template ends the reply with a space and no </s>: without the EOS that
    inputs.full_text appends, a tuned student would never learn to stop."""
    from mmtune.models.inputs import encode_for_training
    from mmtune.models.student import load_student

    model, processor = load_student(twins["llava"], StudentConfig(dtype="float32"))
    assert "</s>" not in processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "text", "text": "q"}]},
         {"role": "assistant", "content": [{"type": "text", "text": "a"}]}], tokenize=False)
    batch = encode_for_training(processor, ["What colour?"], ["The picture is red.\nAnswer: red"],
                                [_png(COLOURS["red"], (50, 30))])
    labels = batch["labels"][0][batch["labels"][0] != -100]
    assert labels[-1].item() == processor.tokenizer.eos_token_id
    assert processor.tokenizer.decode(labels, skip_special_tokens=True).strip() == "The picture is red.\nAnswer: red"
    n_image = (batch["input_ids"] == model.config.image_token_index).sum().item()
    assert n_image == (28 // 14) ** 2 and batch["pixel_values"].shape[-2:] == (28, 28)
    assert model(**batch).loss.isfinite()


def test_qwen2vl_twin_image_tokens_grid_and_masking(twins):
    """Qwen2-VL: <|image_pad|> expanded to grid_t*grid_h*grid_w/4 tokens per image,
    flattened patches in pixel_values, image_grid_thw, a text-only row in the same batch,
    labels on the reply and its <|im_end|> only, and the image_max_pixels cap."""
    from mmtune.models.inputs import encode_for_generation, encode_for_training
    from mmtune.models.student import load_student

    cfg = StudentConfig(dtype="float32", image_max_pixels=28 * 28 * 6)
    model, processor = load_student(twins["qwen2vl"], cfg)
    big, small = _png(COLOURS["red"], (400, 300)), _png(COLOURS["blue"], (40, 60))
    batch = encode_for_training(processor, ["What colour?", "Say hi.", "And this?"],
                                ["The picture is red.\nAnswer: red", "Hello.\nAnswer: hi", "Blue.\nAnswer: blue"],
                                [big, None, small])
    grid = batch["image_grid_thw"]
    assert grid.shape == (2, 3) and (grid[:, 0] == 1).all()
    assert (grid[:, 1] * grid[:, 2]).max().item() * 14 * 14 <= 28 * 28 * 6  # the cap held for the big image
    assert batch["pixel_values"].shape == (int(grid.prod(dim=1).sum()), 3 * 2 * 14 * 14)
    pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    per_row = (batch["input_ids"] == pad).sum(dim=1).tolist()
    assert per_row == [int(grid[0].prod()) // 4, 0, int(grid[1].prod()) // 4]
    end = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    for row in range(3):
        kept = batch["labels"][row][batch["labels"][row] != -100].tolist()
        assert end in kept and pad not in kept
    loss = model(**batch).loss
    loss.backward()
    assert loss.isfinite()
    gen = encode_for_generation(processor, ["What colour?", "Say hi."], [small, None])
    assert all(torch.equal(m, m.sort().values) for m in gen["attention_mask"])  # padding on the left
    out = model.generate(**gen, max_new_tokens=3, do_sample=False, pad_token_id=processor.tokenizer.pad_token_id)
    assert out.shape[0] == 2


def test_bf16_student_trains_its_projector_in_float32(twins):
    """Over a bf16 base, PEFT keeps LoRA in float32 but copied the projector in bf16, where
    AdamW drops updates below half a bf16 step: at lr 2e-5 most weights would not move."""
    from mmtune.models.inputs import encode_for_training
    from mmtune.models.student import apply_lora, load_student, param_groups

    cfg = StudentConfig(dtype="bfloat16")
    model, processor = load_student(twins["llava"], cfg)
    model = apply_lora(model, cfg)
    groups = param_groups(model)
    assert {p.dtype for _, ps in groups.items() for _, p in ps} == {torch.float32}
    assert any("multi_modal_projector" in n for n, _ in groups["encoder"])
    batch = encode_for_training(processor, ["What colour?"], ["red\nAnswer: red"], [_png(COLOURS["red"])])
    out = model(**batch)
    assert out.logits.dtype == torch.bfloat16
    before = [p.detach().clone() for _, p in groups["encoder"]]
    opt = torch.optim.AdamW([p for _, p in groups["encoder"]], lr=2e-5)
    out.loss.backward()
    opt.step()
    assert all(not torch.equal(b, p.detach()) for b, (_, p) in zip(before, groups["encoder"]))


@pytest.mark.parametrize("arch", ["llava", "qwen2vl"])
def test_unfrozen_vision_tower_has_no_trainable_parameter_without_gradient(twins, arch):
    """DDP (training.num_workers > 1) fails on a trainable parameter that takes no part in
    the loss. LLaVA-1.5 reads the penultimate CLIP layer, so the last layer and the final
    layernorm never get a gradient: they stay frozen when the tower is unfrozen."""
    from mmtune.models.inputs import encode_for_training
    from mmtune.models.student import apply_lora, load_student, param_groups

    cfg = StudentConfig(dtype="float32", freeze_vision_tower=False)
    model, processor = load_student(twins[arch], cfg)
    model = apply_lora(model, cfg)
    groups = param_groups(model)
    assert any(".layers.0." in n or ".blocks.0." in n for n, _ in groups["encoder"])
    batch = encode_for_training(processor, ["What colour?"], ["Red.\nAnswer: red"], [_png(COLOURS["red"])])
    model(**batch).loss.backward()
    missing = [n for g in groups.values() for n, p in g if p.grad is None]
    assert missing == []


def test_a_vlm_checkpoint_also_serves_as_hf_teacher(twins):
    """teacher.backend=hf with a VLM id (e.g. Qwen2-VL-72B-Instruct on a multi-GPU box): no
    causal-LM class, so the backend reads its text side through the VLM class."""
    from mmtune.teacher.backend import HFBackend

    backend = HFBackend(twins["qwen2vl"], device="cpu", dtype="float32", max_new_tokens=3)
    assert type(backend.model).__name__ == "Qwen2VLForConditionalGeneration" and backend.use_chat
    [scores] = backend.score_options(["Which? A. red B. blue"], [["A", "B"]])
    assert len(scores) == 2 and all(s < 0 for s in scores)
    assert len(backend.generate(["Hello"])) == 1


# --------------------------------------------------------------------------- end to end on Ray
def _train_in_process(cfg, student_dir: Path, corpus: list[Path], out: Path):
    """The training loop each Ray Train worker runs (``mmtune.training.loop.run_training``),
    called in this process: the same model code, LoRA, CoMMIT steps and adapter save."""
    import pyarrow.parquet as pq

    from mmtune.models.student import apply_lora, load_student
    from mmtune.training.checkpoint import ADAPTER_DIR
    from mmtune.training.loop import run_training

    model, processor = load_student(student_dir, cfg.student)
    torch.manual_seed(cfg.run.seed)
    model = apply_lora(model, cfg.student)
    rows = [r for p in corpus for r in pq.read_table(p).to_pylist()]
    res = run_training(model, processor, rows, cfg.training, seed=cfg.run.seed, checkpoint_root=out)
    assert res.step == cfg.training.max_steps and all(h["loss"] == h["loss"] for h in res.history)
    adapter = res.checkpoints[-1] / ADAPTER_DIR
    assert (adapter / "adapter_config.json").is_file()
    return adapter


def _train_evaluate_and_reload(cfg, student_dir: Path, progress, ray_data_eval: bool = True, task: str = "colours",
                               probe: tuple[bytes | None, bytes | None] | None = None, ray_train: bool = True):
    """Import → load → LoRA targets → Ray Train → adapter via PEFT → evaluation: through
    Ray Data (``evaluate_splits``), or its per-actor ``Predictor`` alone (the same
    generation code, ~15 s less on a loaded 2-core machine). ``probe``: the (image, audio)
    of the sample on which the adapter must change the logits (default: a red picture).

    ``ray_train=False`` runs the workers' training loop in this process instead: Ray Train's
    adapter does not depend on the architecture (one recipe covers it, and
    tests/training/test_trainer.py and tests/faults the rest), and a Ray Train run costs
    ~20 s of process start-up on a 2-core CI machine."""
    from peft import PeftModel

    from mmtune.data.catalog import data_paths
    from mmtune.models.student import apply_lora, load_student, param_groups
    from mmtune.training.evaluate import (
        EVAL_COLUMNS,
        Predictor,
        evaluate_splits,
        score_rows,
    )
    from mmtune.training.job import run_train_job

    paths = data_paths(cfg, progress)
    assert paths.corpus and paths.target_val[task] and paths.target_test[task]

    model, _ = load_student(cfg.student.name_or_path, cfg.student)
    tuned = apply_lora(model, cfg.student)
    # "...language_model.layers.0.self_attn.q_proj.lora_A.default.weight": the layer is the 4th part from the end
    targets = {n.split(".")[-4] for n, _ in tuned.named_parameters() if ".lora_A." in n}
    assert targets == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    towers = ("vision", "visual", "audio_tower")
    assert not any(any(t in n for t in towers) and "lora_" in n for n, _ in tuned.named_parameters())
    groups = param_groups(tuned)
    assert groups["encoder"] and groups["llm"]

    if ray_train:
        out = run_train_job(cfg, [str(p) for p in paths.corpus], student=student_dir, name="smoke",
                            progress=progress)
        assert out.steps == cfg.training.max_steps and out.adapter_dir
        history = [json.loads(x) for x in (Path(out.run_dir) / "history.jsonl").read_text().splitlines()]
        assert [h["step"] for h in history] == [1, 2, 3] and all(h["loss"] == h["loss"] for h in history)
        adapter_dir, run_dir = out.adapter_dir, Path(out.run_dir)
    else:
        run_dir = Path(cfg.run.out_dir) / "smoke"
        adapter_dir = _train_in_process(cfg, student_dir, list(paths.corpus), run_dir / "ckpt")

    # The adapter loads with PEFT's own API on a fresh base, and is not a no-op.
    base, processor = load_student(student_dir, cfg.student)
    untouched, _ = load_student(student_dir, cfg.student)
    peft_model = PeftModel.from_pretrained(base, adapter_dir).eval()
    lora_b = [p for n, p in peft_model.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)
    from mmtune.models.inputs import encode_for_training

    image, audio = probe or (_png(COLOURS["red"]), None)
    batch = encode_for_training(processor, ["What is it?"], ["Answer: red"], [image], [audio])
    with torch.no_grad():
        assert not torch.allclose(peft_model(**batch).logits, untouched.eval()(**batch).logits)

    split = f"{task}/test"
    splits = {split: [str(p) for p in paths.target_test[task]]}
    if ray_data_eval:
        scores = evaluate_splits(cfg, student_dir, splits, adapter_dir=adapter_dir,
                                 out_dir=run_dir / "eval", progress=progress)
    else:
        import pyarrow.parquet as pq

        predictor = Predictor(str(student_dir), cfg.student.model_dump(mode="json"), adapter_dir=str(adapter_dir),
                              max_new_tokens=cfg.student.max_new_tokens, device="cpu")
        table = pq.read_table(splits[split]).select(EVAL_COLUMNS)
        pred = predictor({c: table.column(c).to_numpy(zero_copy_only=False) for c in EVAL_COLUMNS})
        assert all(isinstance(t, str) for t in pred["prediction"])
        scores = score_rows(split, [dict(zip(pred, vals)) for vals in zip(*pred.values())])
    assert [(s.split, s.task, s.n) for s in scores] == [(split, task, 3)]
    assert 0.0 <= scores[0].accuracy <= 1.0
    return paths, adapter_dir


def _hf_teacher_diagnoses_and_annotates(cfg):
    from mmtune.teacher.backend import HFBackend, make_backend
    from mmtune.teacher.teacher import Teacher

    backend = make_backend(cfg.teacher)
    assert isinstance(backend, HFBackend) and backend.use_chat  # the twin's ChatML template is used
    rendered = backend._render("Question?")
    assert rendered.startswith("<|im_start|>system\n") and rendered.endswith("<|im_start|>assistant\n")
    teacher = Teacher(backend, cfg.teacher)
    [res] = teacher.analyse([{"id": "v0", "question": "What colour is the picture?",
                              "steps": ["The picture is red.", "Red is warm."], "prediction": "red", "gold": "blue",
                              "options": None}])
    assert res.status in ("ok", "unparsed") and res.mistake_step in (1, 2)
    [(skills, raw)] = teacher.annotate([{"id": "c0", "instruction": "What colour is the picture?",
                                         "response": "The picture is red.\nAnswer: red"}])
    assert isinstance(skills, list) and isinstance(raw, str)


@pytest.mark.ray
@pytest.mark.slow
def test_llava15_recipe_end_to_end_on_tiny_twins(ray_local, twins, tmp_path):
    data = write_llava_data(tmp_path / "data")
    cfg = recipe(LLAVA_RECIPE, tmp_path, twins["llava"], twins["teacher"], data, "llava", tmp_path / "data")
    assert cfg.student.lora.r == 128 and cfg.training.coordination.mode == "commit"  # the recipe's own values
    lines: list[str] = []
    paths, _ = _train_evaluate_and_reload(cfg, twins["llava"], lines.append)
    log = "\n".join(lines)
    # corpus: 4 two-turn conversations + 1 text-only = 9 samples; "lost" (image not found)
    # and "mute" (empty response) are quarantined and counted
    assert "written:     9 samples" in log and "quarantined: 2" in log and "image not found" in log
    # val: 3 "Answer:" items + the one-line reply; the multi-line reply without an answer is quarantined
    assert "no answer" in log
    import pyarrow.parquet as pq

    val = pq.read_table(paths.target_val["colours"]).to_pylist()
    assert sorted(r["answer"] for r in val) == ["blue", "blue", "green", "red"]
    assert {r["task"] for r in val} == {"colours"}
    # a second resolution reuses the imports
    again: list[str] = []
    from mmtune.data.catalog import data_paths

    assert data_paths(cfg, again.append).corpus == paths.corpus
    assert sum("imported earlier" in x for x in again) == 3 and not any("importing" in x for x in again)
    _hf_teacher_diagnoses_and_annotates(cfg)


@pytest.mark.ray
@pytest.mark.slow
def test_qwen2vl_recipe_end_to_end_on_tiny_twins(ray_local, twins, tmp_path):
    data = write_sharegpt_data(tmp_path / "data")
    cfg = recipe(QWEN_RECIPE, tmp_path, twins["qwen2vl"], twins["teacher"], data, "sharegpt", None)
    assert cfg.student.image_max_pixels == 262144 and cfg.data.image_root is None
    lines: list[str] = []
    paths, _ = _train_evaluate_and_reload(cfg, twins["qwen2vl"], lines.append, ray_data_eval=False,
                                          ray_train=False)
    log = "\n".join(lines)
    # 4 LLaMA-Factory conversations x 2 turns + 4 colour items + 1 text-only (with system);
    # the two-images-in-one-turn row is quarantined
    assert "written:     13 samples" in log and "quarantined: 1" in log and "multiple images in one turn" in log
    import pyarrow.parquet as pq

    corpus = pq.read_table(paths.corpus).to_pylist()
    assert sum(r["image"] is not None for r in corpus) == 12
    assert any(r["instruction"].startswith("Be brief.") for r in corpus)
    _hf_teacher_diagnoses_and_annotates(cfg)


@pytest.mark.ray
@pytest.mark.slow
def test_qwen2audio_recipe_end_to_end_on_tiny_twins(ray_local, twins, audio_twin, tmp_path):
    """The audio recipe as written, on a Qwen2-Audio twin: the ``audios`` JSON imported (WAV
    and FLAC, a missing and an undecodable clip quarantined), LoRA on the Qwen2 decoder
    only, CoMMIT steps (the Ray Train workers' loop, in process) with the projector as the encoder group, the adapter
    through PEFT on an audio probe, and generation from the clips."""
    data = write_audio_sharegpt_data(tmp_path / "data")
    cfg = recipe(AUDIO_RECIPE, tmp_path, audio_twin, twins["teacher"], data, "sharegpt", None, task="tones")
    assert cfg.student.freeze_audio_tower and cfg.training.coordination.mode == "commit"  # the recipe's own values
    from mmtune.models.student import apply_lora, load_student, param_groups

    # the projector is the whole encoder group while the tower is frozen
    model, _ = load_student(audio_twin, cfg.student)
    assert type(model).__name__ == "Qwen2AudioForConditionalGeneration"
    encoder = [n for n, _ in param_groups(apply_lora(model, cfg.student))["encoder"]]
    assert encoder and all("multi_modal_projector" in n for n in encoder)

    lines: list[str] = []
    paths, _ = _train_evaluate_and_reload(cfg, audio_twin, lines.append, ray_data_eval=False, ray_train=False,
                                          task="tones",
                                          probe=(None, _wav(TONES["high"])))
    log = "\n".join(lines)
    # corpus: 2 demo clips (WAV, FLAC) + 3 tones + a 2-turn conversation + 1 text-only = 8;
    # the demo's absent mp3 and the broken WAV are quarantined
    assert "written:     8 samples" in log and "quarantined: 2" in log
    assert "audio not found" in log and "undecodable audio" in log
    import pyarrow.parquet as pq

    corpus = {r["id"]: r for r in pq.read_table(paths.corpus).to_pylist()}
    assert sum(r["audio"] is not None for r in corpus.values()) == 7
    assert all(r["image"] is None for r in corpus.values())
    two_turns = sorted((r for r in corpus.values() if r["instruction"] in ("Is it low?", "And this one?")),
                       key=lambda r: r["instruction"], reverse=True)
    assert [r["audio"] for r in two_turns] == [_wav(TONES["low"], 0.8), _wav(TONES["high"], 1.2)]
