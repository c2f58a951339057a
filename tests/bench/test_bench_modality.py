"""The benchmarks on either SkillWorld family (issue G): bench/coordination.py's --modality
plumbing (config, preset student, default targets, section markers and files, loss target),
its training-set selection and one tuning run on audio rows with a tiny Qwen2-Audio student,
and bench/teacher_quality.py's section marker. The vision defaults are pinned unchanged."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from bench import coordination as cb
from bench import teacher_quality as tq
from mmtune.config import (
    CoordinationConfig,
    LoraSettings,
    StudentConfig,
    TinyQwen2AudioPreset,
    TrainingConfig,
    load_config,
)
from mmtune.data.skillworld import family, generate_task

AUDIO = family("audio")
DEMO = "configs/demo.yaml"


# --------------------------------------------------------------------------- configuration
def test_vision_defaults_are_unchanged():
    cfg = cb.bench_config(DEMO, [])
    assert cfg == load_config(DEMO, [])  # no --modality on a vision config: nothing changes
    names = cb.artefact_names("vision")
    assert names["mark"] == "bench:coordination" == cb.MARK
    assert names["out"].endswith("runs/bench/coordination.json")
    assert names["loss_png"].endswith("docs/img/coordination_loss.png")
    assert names["kappa_png"].endswith("docs/img/coordination_kappa.png")
    assert cb.MODALITY_TARGETS["vision"] == cb.DEFAULT_TARGETS == ("parity_choice", "count_grid")
    assert cb.default_loss_target("vision", []) == cb.DEFAULT_LOSS_TARGET == 0.12
    assert tq.mark("vision") == "bench:teacher_quality"


def test_modality_audio_swaps_in_the_audio_preset():
    cfg = cb.bench_config(DEMO, ["training.lr=1e-3"], "audio")
    assert cfg.data.skillworld.modality == "audio" and cfg.student.name_or_path == "tiny-qwen2-audio"
    assert cfg.training.lr == 1e-3  # the other overrides stay
    # the config's own modality (an override here) is enough, without the flag
    assert cb.bench_config(DEMO, ["data.skillworld.modality=audio"]).student.name_or_path == "tiny-qwen2-audio"
    # the flag wins over the config; back to vision swaps the vision preset back in
    back = cb.bench_config(DEMO, ["data.skillworld.modality=audio", "student.name_or_path=tiny-qwen2-audio"],
                           "vision")
    assert back.data.skillworld.modality == "vision"
    assert back.student.name_or_path == "tiny-qwen2-audio"  # given on the command line: kept
    assert cb.bench_config(DEMO, ["student.name_or_path=/models/my-audio-llm"], "audio").student.name_or_path \
        == "/models/my-audio-llm"  # a model by path is the user's choice
    names = cb.artefact_names("audio")
    assert names["mark"] == "bench:coordination_audio" and names["out"].endswith("coordination_audio.json")
    assert names["loss_png"].endswith("coordination_audio_loss.png")
    assert tq.mark("audio") == "bench:teacher_quality_audio"
    for t in cb.MODALITY_TARGETS["audio"]:
        assert t in AUDIO.target_tasks


def test_audio_loss_target_is_relative_to_the_start():
    runs = [{"history": [{"loss": 1.0}] * 10 + [{"loss": 0.1}] * 5}, {"history": [{"loss": 2.0}] * 12}]
    assert cb.default_loss_target("audio", runs, window=10) == pytest.approx(cb.RELATIVE_TARGET * 1.5)
    with pytest.raises(ValueError, match="--loss-target"):
        cb.default_loss_target("audio", [])


def test_teacher_quality_section_is_marked_by_family():
    loc = {"wrong": 3, "scored": 2, "answer_only": 1, "no_steps": 0,
           "methods": {h: {"accuracy": 0.5, "skill_match": 0.5, "switch_share": 1.0, "seconds": 0.1,
                           "per_task": {"count_clip": (0.5, 2)}} for h in tq.METHODS}}
    ann = {"rows": 2, "exact": 1.0, "precision": 1.0, "recall": 1.0, "unparsed": 0, "rows_per_s": 9.0}
    meta = {k: "x" for k in ("date", "machine", "load", "command", "code", "teacher", "student")}
    audio = tq.render(loc, ann, meta, "audio")
    assert audio.startswith("<!-- bench:teacher_quality_audio -->") and "audio family" in audio
    assert audio.rstrip().endswith("<!-- /bench:teacher_quality_audio -->")
    assert tq.render(loc, ann, meta).startswith("<!-- bench:teacher_quality -->\n### Teacher quality on SkillWorld (issue D)")


# --------------------------------------------------------------------------- audio data and one run
def _audio_rows(task: str, n: int, split: str, render: bool = True) -> list[dict]:
    samples, _ = generate_task(AUDIO.tasks[task], n, seed=0, split=split, clip_seconds=1.5, render_audio=render)
    return [{k: s[k] for k in ("id", "task", "instruction", "response", "answer", "options", "image", "audio")}
            for s in samples]


def test_audio_training_rows_share_the_targets_chain(tmp_path):
    tasks = ["louder_tone", "quieter_tone_yesno", "beep_count", "beep_count_mc", "pitch_open", "odd_tone"]
    rows = [r for t in tasks for r in _audio_rows(t, 6, "corpus", render=False)]
    for r in rows:
        r["audio"] = f"wav-{r['id']}".encode()  # the column is read through, whatever it holds
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "corpus.parquet")
    got = cb.select_training_rows([tmp_path / "corpus.parquet"], list(cb.MODALITY_TARGETS["audio"]), 12, seed=0)
    by_task = {t: sum(r["task"] == t for r in got) for t in tasks}
    assert by_task["pitch_open"] == by_task["odd_tone"] == 0  # other chains never
    assert by_task["louder_tone"] + by_task["quieter_tone_yesno"] == 6
    assert by_task["beep_count"] + by_task["beep_count_mc"] == 6
    assert all(r["audio"] == f"wav-{r['id']}".encode() and r["image"] is None for r in got)
    ev = cb.load_eval_rows([tmp_path / "corpus.parquet"], 5, seed=0)
    assert len(ev) == 5 and all(r["audio"] for r in ev)


PRESET = TinyQwen2AudioPreset(num_mel_bins=16, audio_hidden=32, audio_layers=1, audio_heads=2, audio_ffn=64,
                              text_hidden=32, text_layers=1, text_heads=2, text_kv_heads=1, text_intermediate=64,
                              vocab_size=400)


def test_one_coordinated_run_on_audio(tmp_path):
    """run_one as each Ray task of the benchmark runs it: a tiny Qwen2-Audio student tuned
    with CoMMIT on audio rows (κ measured over the audio tower + projector vs the LLM's
    LoRA), then answering audio test items greedily."""
    from mmtune.models.presets import build_tiny_qwen2_audio
    from mmtune.models.student import save_student

    train = _audio_rows("beep_count", 4, "corpus") + _audio_rows("louder_tone", 4, "corpus")
    evals = {"count_clip": _audio_rows("count_clip", 3, "test")}
    torch.manual_seed(0)
    model, processor = build_tiny_qwen2_audio(PRESET, [r["instruction"] + " " + r["response"] for r in train] * 3,
                                              clip_seconds=1.5)
    sdir = save_student(model, processor, tmp_path / "student")
    student = StudentConfig(lora=LoraSettings(r=4, alpha=8, dropout=0.0), dtype="float32", max_new_tokens=6)
    training = TrainingConfig(lr=3e-3, coordination=CoordinationConfig(interval=2, probe_size=4))
    settings = cb.Settings(student_dir=str(sdir), student_cfg=student.model_dump(mode="json"),
                           training_cfg=training.model_dump(mode="json"), steps=4, batch_size=4,
                           max_new_tokens=6, eval_batch=4, threads=1)
    r = cb.run_one("commit", 0, train, evals, settings)
    assert len(r["history"]) == 4 and all(torch.isfinite(torch.tensor(m["loss"])) for m in r["history"])
    assert cb.log_kappas(r["history"]), "κ was never measured on the audio student"
    assert r["eval"]["count_clip"]["n"] == 3 and 0.0 <= r["eval"]["count_clip"]["accuracy"] <= 1.0
    (s,) = cb.summarize([r], ["commit"], loss_target=1e9, window=2)
    assert s.steps_to_target == [2] and s.log_kappa_mean
    # evaluation hands each row's clip to the student: an undecodable one is named
    from mmtune.models.student import load_student

    model, processor = load_student(sdir, student)
    bad = dict(evals["count_clip"][0], id="broken-clip", audio=b"not a wav")
    with pytest.raises(ValueError, match="broken-clip.*does not decode"):
        cb.evaluate_model(model, processor, [bad], max_new_tokens=2)
