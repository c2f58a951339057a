"""The audio student: the tiny-qwen2-audio preset and a Qwen2-Audio twin through the same loading,
LoRA, parameter-group, input, training, coordination and generation code as the VLMs (tiny sizes)."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from mmtune.config import LoraSettings, StudentConfig, TinyQwen2AudioPreset
from mmtune.coordination import MODES
from mmtune.data.skillworld import family, generate_task
from mmtune.models.inputs import (
    IGNORE_INDEX,
    encode_for_generation,
    encode_for_training,
)
from mmtune.models.presets import (
    AUDIO_TOKEN,
    audio_chunk_seconds,
    audio_tokens_per_chunk,
    build_tiny_qwen2_audio,
    encoder_positions,
)
from mmtune.models.student import (
    apply_lora,
    auto_model_class,
    load_adapter,
    load_student,
    param_groups,
    patterns_for,
    save_adapter,
)
from mmtune.models.twins import save_qwen2_audio_twin
from mmtune.training.evaluate import generate
from mmtune.training.loop import run_training
from mmtune.training.shards import media_first

AUDIO = family("audio")
PRESET = TinyQwen2AudioPreset(num_mel_bins=16, audio_hidden=32, audio_layers=1, audio_heads=2, audio_ffn=64,
                              text_hidden=32, text_layers=1, text_heads=2, text_kv_heads=1, text_intermediate=64,
                              vocab_size=400)
STUDENT = StudentConfig(lora=LoraSettings(r=4, alpha=8, dropout=0.0), dtype="float32")


def _samples() -> list[dict]:
    out = []
    for task in ("beep_count", "pitch_open", "sweep_dir", "louder_tone"):
        s, _ = generate_task(AUDIO.tasks[task], 2, seed=0, split="t")
        out += [{k: r[k] for k in ("id", "task", "instruction", "response", "answer", "options", "audio")}
                | {"image": None} for r in s]
    return out


SAMPLES = _samples()
TEXTS = [s["instruction"] for s in SAMPLES] + [s["response"] for s in SAMPLES]


def _wav(seconds: float, rate: int = 16000, channels: int = 1) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    x = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, np.stack([x] * channels, axis=1) if channels > 1 else x, rate, format="WAV")
    return buf.getvalue()


@pytest.fixture(scope="module")
def preset_dir(tmp_path_factory):
    torch.manual_seed(0)
    model, processor = build_tiny_qwen2_audio(PRESET, TEXTS, clip_seconds=2.0)
    out = tmp_path_factory.mktemp("tiny_qwen2_audio")
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def twin_dir(tmp_path_factory):
    return save_qwen2_audio_twin(tmp_path_factory.mktemp("qwen2_audio_twin"), TEXTS)


def _batch(processor, rows=SAMPLES[:3]):
    return encode_for_training(processor, [r["instruction"] for r in rows], [r["response"] for r in rows],
                               [None] * len(rows), [r["audio"] for r in rows], ids=[r["id"] for r in rows])


# --------------------------------------------------------------------------- the preset
def test_preset_matches_the_clip_length_and_reloads(preset_dir):
    assert (audio_chunk_seconds(2.0), audio_chunk_seconds(1.5), audio_chunk_seconds(3.2)) == (2, 2, 4)
    model, processor = load_student(preset_dir, STUDENT)
    assert type(model).__name__ == "Qwen2AudioForConditionalGeneration"
    assert type(processor).__name__ == "Qwen2AudioProcessor"
    fe, enc = processor.feature_extractor, model.config.audio_config
    # 2 s chunks, not Whisper's 30 s; the encoder needs exactly 2 * max_source_positions mel frames
    assert (fe.chunk_length, fe.n_samples, fe.nb_max_frames) == (2, 32000, 200)
    assert enc.max_source_positions == encoder_positions(2) == 100
    assert fe.feature_size == enc.num_mel_bins == 16
    # Whisper's sinusoidal positions, saved with the weights (Qwen2-Audio's own init is random)
    from transformers.models.whisper.modeling_whisper import sinusoids

    torch.testing.assert_close(model.model.audio_tower.embed_positions.weight.detach(), sinusoids(100, 32))

    batch = _batch(processor)
    assert batch["input_features"].shape == (3, 16, 200)
    n_audio = (batch["input_ids"] == model.config.audio_token_id).sum(dim=1)
    assert n_audio.tolist() == [audio_tokens_per_chunk(2)] * 3 == [50] * 3
    with torch.no_grad():
        before = model(**batch).logits
    model.save_pretrained(preset_dir / "again")
    processor.save_pretrained(preset_dir / "again")
    again, _ = load_student(preset_dir / "again", STUDENT)
    with torch.no_grad():
        torch.testing.assert_close(again(**batch).logits, before)


def test_short_clips_are_padded_and_masked(preset_dir):
    """A 1.5 s clip in a 2 s chunk: 150 valid mel frames, 37 audio tokens, and the padding changes
    nothing (the same clip padded with more zeros gives the same logits)."""
    model, processor = load_student(preset_dir, STUDENT)
    short = _wav(1.5)
    batch = encode_for_training(processor, ["Is the tone high or low?"] * 2, ["Answer: low"] * 2, [None, None],
                                [short, SAMPLES[0]["audio"]])
    assert batch["feature_attention_mask"].sum(dim=1).tolist() == [150, 200]
    assert (batch["input_ids"] == model.config.audio_token_id).sum(dim=1).tolist() == [37, 50]
    alone = encode_for_training(processor, ["Is the tone high or low?"], ["Answer: low"], [None], [short])
    with torch.no_grad():
        a = model(**alone).logits[0]
        b = model(**batch).logits[0, : a.shape[0]]
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_labels_cover_only_the_response(preset_dir):
    _, processor = load_student(preset_dir, STUDENT)
    batch = _batch(processor)
    for row, s in enumerate(SAMPLES[:3]):
        kept = batch["labels"][row][batch["labels"][row] != IGNORE_INDEX]
        assert processor.tokenizer.decode(kept, skip_special_tokens=True).strip() == s["response"]
    prompt = processor.tokenizer.decode(batch["input_ids"][0])
    assert "Audio 1: <|audio_bos|>" + AUDIO_TOKEN in prompt and prompt.startswith("<|im_start|>user\n")


def test_bad_audio_is_named(preset_dir, tiny_llava_dir):
    _, processor = load_student(preset_dir, STUDENT)
    with pytest.raises(ValueError, match=r"sample 'bad-1'.*does not decode.*mmtune data import"):
        encode_for_training(processor, ["q"], ["a"], [None], [b"RIFF not a wave"], ids=["bad-1"])
    with pytest.raises(ValueError, match=r"sample 'sr-8k'.*8000 Hz.*expects 16000 Hz"):
        encode_for_generation(processor, ["q"], [None], [_wav(1.0, rate=8000)], ids=["sr-8k"])
    stereo = encode_for_generation(processor, ["q"], [None], [_wav(1.0, channels=2)])  # averaged to mono
    assert stereo["input_features"].shape[0] == 1
    _, vision = load_student(tiny_llava_dir, StudentConfig())
    with pytest.raises(ValueError, match=r"sample 'a-1' carries audio.*LlavaProcessor.*tiny-qwen2-audio"):
        encode_for_training(vision, ["q"], ["a"], [None], [SAMPLES[0]["audio"]], ids=["a-1"])


# --------------------------------------------------------------------------- the twin (real-model path)
def test_twin_loads_through_the_hub_path(twin_dir):
    from transformers import AutoModelForMultimodalLM

    assert auto_model_class(str(twin_dir)) is AutoModelForMultimodalLM
    model, processor = load_student(twin_dir, StudentConfig())
    assert type(model).__name__ == "Qwen2AudioForConditionalGeneration"
    fe = processor.feature_extractor
    assert (fe.chunk_length, fe.feature_size, model.config.audio_config.max_source_positions) == (30, 128, 1500)
    rendered = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "audio", "audio": ""}, {"type": "text", "text": "hi"}]}],
        add_generation_prompt=True, tokenize=False)
    assert rendered.startswith("<|im_start|>system\nYou are a helpful assistant.")  # the hub template
    rows = SAMPLES[:2]
    batch = _batch(processor, rows)
    # 2 s of a 30 s chunk: 200 of 3000 frames are real, 50 audio tokens, the rest masked
    assert batch["input_features"].shape == (2, 128, 3000)
    assert batch["feature_attention_mask"].sum(dim=1).tolist() == [200, 200]
    assert (batch["input_ids"] == model.config.audio_token_id).sum(dim=1).tolist() == [50, 50]
    out = model(**batch)
    assert torch.isfinite(out.loss)
    texts = generate(model, processor, [r["instruction"] for r in rows], [None] * 2, 4,
                     audios=[r["audio"] for r in rows])
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)


# --------------------------------------------------------------------------- groups, freezing, LoRA
def test_param_groups_lora_targets_and_freeze_flags(preset_dir):
    model, _ = load_student(preset_dir, STUDENT)
    assert patterns_for(model).modality == "audio"
    tuned = apply_lora(model, STUDENT)
    groups = param_groups(tuned)
    enc = [n for n, _ in groups["encoder"]]
    assert enc and all("multi_modal_projector" in n for n in enc)  # tower frozen by default
    assert groups["llm"] and all("lora_" in n for n, _ in groups["llm"])
    lora = {n.split(".")[-4] for n, _ in tuned.named_parameters() if ".lora_A." in n}
    assert lora == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert not any("audio_tower" in n and "lora_" in n for n, _ in tuned.named_parameters())

    # freeze_vision_tower says nothing about an audio tower
    model, _ = load_student(preset_dir, STUDENT)
    assert not any("audio_tower" in n for n, _ in param_groups(apply_lora(
        model, STUDENT.model_copy(update={"freeze_vision_tower": False})))["encoder"])
    model, _ = load_student(preset_dir, STUDENT)
    unfrozen = param_groups(apply_lora(model, STUDENT.model_copy(update={"freeze_audio_tower": False})))
    tower = [n for n, _ in unfrozen["encoder"] if "audio_tower" in n]
    assert any("layers.0.self_attn.q_proj" in n for n in tower) and any("conv1" in n for n in tower)
    assert not any("embed_positions" in n for n in tower)  # Whisper's fixed sinusoids stay fixed


def test_adapter_reloads_with_peft(preset_dir, tmp_path):
    from peft import PeftModel

    model, processor = load_student(preset_dir, STUDENT)
    tuned = apply_lora(model, STUDENT)
    run_training(tuned, processor, SAMPLES, _tcfg("commit", max_steps=2), seed=0)
    save_adapter(tuned, tmp_path / "adapter")
    batch = _batch(processor)
    tuned.eval()
    with torch.no_grad():
        want = tuned(**batch).logits
    base, _ = load_student(preset_dir, STUDENT)
    with torch.no_grad():
        untouched = base(**batch).logits
        got = PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()(**batch).logits
    torch.testing.assert_close(got, want)
    assert not torch.allclose(got, untouched)
    fresh, _ = load_student(preset_dir, STUDENT)
    with torch.no_grad():
        torch.testing.assert_close(load_adapter(fresh, tmp_path / "adapter").eval()(**batch).logits, want)


# --------------------------------------------------------------------------- training and coordination
def _tcfg(mode: str, **kw):
    from mmtune.config import CoordinationConfig, TrainingConfig

    coord = CoordinationConfig(mode=mode, interval=kw.pop("interval", 2), reg_lambda=0.1, probe_size=4)
    return TrainingConfig(coordination=coord, **{"lr": 3e-2, "batch_size": 4, "max_steps": 4, "warmup_ratio": 0.1,
                                                 "checkpoint_every": 100, **kw})


def test_loss_drops_and_kappa_measures_the_audio_encoder(preset_dir):
    # eight counting clips (one response template, counts 1-5): a random tiny base learns the
    # template within a few LoRA steps; four different tasks would need many more
    rows, _ = generate_task(AUDIO.tasks["beep_count"], 8, seed=0, split="t")
    rows = [{k: r[k] for k in ("id", "instruction", "response", "audio")} | {"image": None} for r in rows]
    model, processor = load_student(preset_dir, STUDENT)
    torch.manual_seed(1)
    res = run_training(apply_lora(model, STUDENT), processor, rows, _tcfg("commit", max_steps=16, interval=4),
                       seed=0)
    ls = [m["loss"] for m in res.history]
    assert np.mean(ls[-4:]) < np.mean(ls[:4]) - 0.1, ls
    measured = [m for m in res.history if m["measured"]]
    assert len(measured) == 4
    for m in measured:  # the projector's update moves the output, through the audio tokens
        assert math.isfinite(m["kappa"]) and m["d_s"] > 1e-10 and m["d_t"] > 1e-10, m
    assert media_first([{"id": "t", "image": None}, {"id": "a", "audio": b"x", "image": None}], 1) == ["a"]


def test_d_s_comes_from_the_audio(preset_dir):
    """The same encoder-group update moves the output on audio samples and not at all on their
    text alone: D_S measures the audio path."""
    from mmtune.coordination import measure_balance, snapshot_params

    model, processor = load_student(preset_dir, STUDENT)
    tuned = apply_lora(model, STUDENT)
    groups = param_groups(tuned)
    rows = SAMPLES[:4]
    audio = _batch(processor, rows)
    text = encode_for_training(processor, [r["instruction"] for r in rows], [r["response"] for r in rows],
                               [None] * 4)
    tuned(**audio).loss.backward()
    before = snapshot_params(groups)
    with torch.no_grad():
        for ps in groups.values():
            for _, p in ps:
                p -= 0.5 * p.grad
    with_audio = measure_balance(tuned, audio, before)
    text_only = measure_balance(tuned, text, before)
    assert with_audio.d_s > 1e-10 and with_audio.d_t > 0 and math.isfinite(with_audio.kappa)
    assert text_only.d_s == 0.0 and text_only.d_t > 0


@pytest.mark.parametrize("mode", [m for m in MODES if m != "commit"])
def test_every_mode_runs_on_audio(preset_dir, mode):
    model, processor = load_student(preset_dir, STUDENT)
    res = run_training(apply_lora(model, STUDENT), processor, SAMPLES, _tcfg(mode, max_steps=2, interval=1), seed=1)
    assert len(res.history) == 2 and all(math.isfinite(m["loss"]) for m in res.history)
    if mode == "feature_cd":
        assert res.history[0]["lr_llm"] == 0.0 and res.history[0]["lr_encoder"] > 0
    if mode == "language_cd":
        assert res.history[0]["lr_encoder"] == 0.0 and res.history[0]["lr_llm"] > 0
    if mode in ("commit_clr", "constant", "static"):
        assert math.isfinite(res.history[0]["kappa"]) and res.history[0]["d_s"] > 0


def test_resume_from_a_checkpoint_is_exact_with_the_tower_unfrozen(preset_dir, tmp_path):
    """Checkpoints carry the audio student's trainable parts (LoRA, projector, and the audio tower
    when unfrozen): a resumed run continues the uninterrupted one's losses."""
    from mmtune.training.checkpoint import latest_checkpoint

    cfg, student = _tcfg("commit", max_steps=4), STUDENT.model_copy(update={"freeze_audio_tower": False})

    def fresh():
        model, processor = load_student(preset_dir, student)
        torch.manual_seed(5)
        return apply_lora(model, student), processor

    ref_model, processor = fresh()
    ref = run_training(ref_model, processor, SAMPLES, cfg, seed=2)
    base, _ = load_student(preset_dir, student)
    conv = dict(ref_model.named_parameters())["base_model.model.model.audio_tower.modules_to_save.default.conv1.weight"]
    assert not torch.equal(conv, base.model.audio_tower.conv1.weight)  # the tower trained: restoring it matters
    run_training(*fresh(), SAMPLES, cfg.model_copy(update={"checkpoint_every": 2}), seed=2,
                 checkpoint_root=tmp_path / "ck", stop_after=2)
    model, processor = load_student(preset_dir, student)
    torch.manual_seed(99)
    rest = run_training(apply_lora(model, student), processor, SAMPLES, cfg, seed=2,
                        resume_from=latest_checkpoint(tmp_path / "ck"))
    torch.testing.assert_close(torch.tensor([m["loss"] for m in rest.history]),
                               torch.tensor([m["loss"] for m in ref.history[2:]]), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- generation
def test_generation_is_independent_of_the_batch(preset_dir):
    """Left-padded batched generation equals one-by-one generation (padding and masks are right)."""
    model, processor = load_student(preset_dir, STUDENT)
    rows = [SAMPLES[0], SAMPLES[6]]  # prompts of different lengths
    audios = [rows[0]["audio"], _wav(1.5)]  # and clips of different lengths
    together = generate(model, processor, [r["instruction"] for r in rows], [None, None], 6, audios=audios)
    alone = [generate(model, processor, [r["instruction"]], [None], 6, audios=[a])[0]
             for r, a in zip(rows, audios)]
    assert together == alone and all(t for t in together)


def test_tune_rungs_score_audio_rows_with_their_audio(preset_dir):
    """Ray Tune's rung metric (mmtune.search.rungs.score_rows) feeds each row's clip to the
    model: the same rows without their audio give another loss."""
    import math

    from mmtune.search.rungs import score_rows

    model, processor = load_student(preset_dir, STUDENT)
    rows = SAMPLES[:4]
    heard = score_rows(model, processor, rows, max_new_tokens=4, batch_size=2)
    deaf = score_rows(model, processor, [{**r, "audio": None} for r in rows], max_new_tokens=4, batch_size=2)
    assert math.isfinite(heard["loss"]) and heard["loss"] != pytest.approx(deaf["loss"], rel=1e-4)
