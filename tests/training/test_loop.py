"""The per-worker coordinated loop: learning, metrics, every mode, and exact resume."""

from __future__ import annotations

import io
import math

import pytest
import torch
from PIL import Image

from mmtune.config import CoordinationConfig, LoraSettings, StudentConfig, TinyLlavaPreset, TrainingConfig
from mmtune.coordination import MODES
from mmtune.models.presets import build_tiny_llava
from mmtune.models.student import apply_lora, load_student
from mmtune.training.checkpoint import latest_checkpoint, read_state
from mmtune.training.loop import METRIC_KEYS, DataPosition, EpochSampler, encode, run_training

PRESET = TinyLlavaPreset(vision_hidden=32, vision_layers=1, vision_heads=2, text_hidden=32,
                         text_layers=2, text_heads=2, text_intermediate=64, vocab_size=400)
COLOURS = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200), "yellow": (220, 220, 40)}


def _png(rgb) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), rgb).save(buf, format="PNG")
    return buf.getvalue()


def make_samples(n: int) -> list[dict]:
    names = list(COLOURS)
    out = []
    for i in range(n):
        c = names[i % len(names)]
        out.append({"id": f"s{i}", "instruction": "What colour is the square?",
                    "response": f"The square fills the image.\nIt is {c}.\nAnswer: {c}",
                    "image": _png(COLOURS[c])})
    return out


TEXTS = [s["instruction"] + " " + s["response"] for s in make_samples(8)] * 5


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    torch.manual_seed(0)
    model, processor = build_tiny_llava(PRESET, TEXTS, image_size=32)
    out = tmp_path_factory.mktemp("tiny_llava_base")
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


STUDENT = StudentConfig(lora=LoraSettings(r=4, alpha=8, dropout=0.1), dtype="float32")


def fresh_student(base_dir, seed: int = 123):
    """The base model from disk plus freshly (randomly) initialised LoRA."""
    model, processor = load_student(base_dir, STUDENT)
    torch.manual_seed(seed)
    return apply_lora(model, STUDENT), processor


def tcfg(mode="commit", **kw) -> TrainingConfig:
    coord = CoordinationConfig(mode=mode, interval=kw.pop("interval", 3), reg_lambda=kw.pop("reg_lambda", 0.1))
    base = dict(lr=3e-3, batch_size=4, max_steps=12, warmup_ratio=0.1, checkpoint_every=100)
    base.update(kw)
    return TrainingConfig(coordination=coord, **base)


def losses(res) -> torch.Tensor:
    return torch.tensor([m["loss"] for m in res.history], dtype=torch.float64)


# ------------------------------------------------------------------ data order
def test_sampler_visits_every_sample_once_per_epoch_and_resumes():
    s = EpochSampler(8, 3, seed=5)
    pos, seen = DataPosition(), []
    for _ in range(9):  # 3 epochs of batches 3, 3, 2
        idx, pos = s.next_batch(pos)
        seen.append(idx)
    assert [len(b) for b in seen] == [3, 3, 2] * 3
    for e in range(3):
        assert sorted(sum(seen[3 * e:3 * e + 3], [])) == list(range(8))
    assert pos == DataPosition(3, 0)
    assert seen[0:3] != seen[3:6]  # a fresh permutation per epoch
    # a brand-new sampler at a saved position continues the same sequence
    s2 = EpochSampler(8, 3, seed=5)
    assert s2.next_batch(DataPosition(1, 3))[0] == seen[4]
    assert s2.next_batch(DataPosition(2, 0))[0] == seen[6]


# ------------------------------------------------------------------ learning + metrics
def test_commit_loss_decreases_and_metrics_are_complete(base_dir):
    model, proc = fresh_student(base_dir)
    reported = []
    res = run_training(model, proc, make_samples(8), tcfg(max_steps=20, interval=4, lr=3e-2), seed=0,
                       report=lambda m, p: reported.append((m, p)))
    assert len(res.history) == 20 and len(reported) == 20
    ls = losses(res)
    assert ls[-4:].mean() < ls[:4].mean() - 0.2, ls  # random base, LoRA + projector only
    for m in res.history:
        for k in METRIC_KEYS:
            assert k in m, k
            if k not in ("kappa", "d_s", "d_t"):
                assert math.isfinite(m[k]), (k, m[k])
        if m["measured"]:
            assert all(math.isfinite(m[k]) and m[k] >= 0 for k in ("kappa", "d_s", "d_t")), m
    assert [m["step"] for m in res.history] == list(range(1, 21))
    assert sum(m["measured"] for m in res.history) == 5  # every L = 4 steps
    assert res.history[-1]["balance/n_measured"] >= 1
    assert any(m["reg"] != 0.0 for m in res.history)
    assert all(m["grad_norm_encoder"] > 0 and m["grad_norm_llm"] > 0 for m in res.history)
    # η_S/η_T moved away from 1 once κ was observed, and lr follows warm-up + cosine
    assert res.history[-1]["lr_encoder"] < res.history[10]["lr_encoder"]


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_runs(base_dir, mode):
    model, proc = fresh_student(base_dir)
    res = run_training(model, proc, make_samples(8), tcfg(mode, max_steps=4, interval=2), seed=1)
    assert len(res.history) == 4 and all(math.isfinite(m["loss"]) for m in res.history)
    if mode == "feature_cd":
        assert res.history[0]["lr_llm"] == 0.0 and res.history[0]["lr_encoder"] > 0
        assert res.history[0]["grad_norm_llm"] > 0  # logged before the frozen grads are dropped
        assert res.history[2]["lr_encoder"] == 0.0 and res.history[2]["lr_llm"] > 0
    if mode == "language_cd":
        assert res.history[0]["lr_encoder"] == 0.0 and res.history[0]["lr_llm"] > 0
    if mode in ("commit_clr", "commit", "constant", "static"):
        assert res.history[1]["measured"] == 1.0 and math.isfinite(res.history[1]["kappa"])
    if mode != "commit":
        assert all(m["reg"] == 0.0 for m in res.history)


# ------------------------------------------------------------------ exact resume
@pytest.mark.parametrize("stop,batch", [(7, 3), (6, 3), (4, 4)],
                         ids=["mid-epoch", "epoch-boundary-partial-batch", "epoch-boundary"])
def test_resume_is_exact(base_dir, tmp_path, stop, batch):
    """8 samples: batch 3 gives epochs of 3+3+2 (step 7 is mid-epoch, step 6 ends epoch 2);
    batch 4 gives 2 steps per epoch (step 4 ends epoch 2)."""
    samples = make_samples(8)
    cfg = tcfg("commit", batch_size=batch, max_steps=12, checkpoint_every=stop, interval=3)
    ref_model, proc = fresh_student(base_dir)
    ref = run_training(ref_model, proc, samples, cfg, seed=3)

    m1, proc1 = fresh_student(base_dir)
    part = run_training(m1, proc1, samples, cfg, seed=3, checkpoint_root=tmp_path / "ck", stop_after=stop)
    assert part.step == stop and len(part.checkpoints) == 1
    ck = latest_checkpoint(tmp_path / "ck")
    st = read_state(ck)
    assert st["step"] == stop
    n_batches = -(-8 // batch)
    done_epochs, in_epoch = divmod(stop, n_batches)
    assert (st["epoch"], st["offset"]) == (done_epochs, in_epoch * batch)  # boundary -> (e+1, 0)
    torch.testing.assert_close(losses(part), losses(ref)[:stop], rtol=1e-5, atol=1e-7)

    # burn RNG and rebuild everything from scratch (different LoRA init) before resuming
    torch.manual_seed(999)
    torch.rand(1000)
    m2, proc2 = fresh_student(base_dir, seed=77)
    rest = run_training(m2, proc2, samples, cfg, seed=3, resume_from=ck, checkpoint_root=tmp_path / "ck")
    assert [m["step"] for m in rest.history] == list(range(stop + 1, 13))
    torch.testing.assert_close(losses(rest), losses(ref)[stop:], rtol=1e-5, atol=1e-7)
    for a, b in zip(rest.history, ref.history[stop:]):
        for k in ("kappa_bar", "lr_encoder", "lr_llm", "reg"):
            assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-9), k
    assert rest.history[-1]["epoch"] == ref.history[-1]["epoch"]
    # final weights match too
    ref_sd = {n: p for n, p in ref_model.named_parameters() if p.requires_grad}
    for n, p in m2.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p, ref_sd[n], rtol=1e-5, atol=1e-6)


def test_resume_rejects_a_changed_schedule(base_dir, tmp_path):
    samples = make_samples(8)
    m1, proc = fresh_student(base_dir)
    run_training(m1, proc, samples, tcfg(max_steps=4, checkpoint_every=2), seed=0,
                 checkpoint_root=tmp_path, stop_after=2)
    m2, proc = fresh_student(base_dir)
    with pytest.raises(ValueError, match="total steps"):
        run_training(m2, proc, samples, tcfg(max_steps=6), seed=0, resume_from=latest_checkpoint(tmp_path))


# ------------------------------------------------------------------ checkpoint contents
def test_checkpoint_adapter_loads_with_peft(base_dir, tmp_path):
    from peft import PeftModel

    samples = make_samples(8)
    model, proc = fresh_student(base_dir)
    res = run_training(model, proc, samples, tcfg(max_steps=3, checkpoint_every=3), seed=0,
                       checkpoint_root=tmp_path)
    ck = res.checkpoints[-1]
    for f in ("adapter/adapter_model.safetensors", "adapter/adapter_config.json", "optimizer.pt",
              "schedule.json", "regularizer.pt", "rng.pt", "rng.json", "state.json"):
        assert (ck / f).is_file(), f
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left
    assert read_state(ck)["probe_ids"]
    base, _ = load_student(base_dir, STUDENT)
    loaded = PeftModel.from_pretrained(base, str(ck / "adapter"))
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    got = dict(loaded.named_parameters())
    assert any("multi_modal_projector" in n for n in trained)  # the projector is saved too
    for n, p in trained.items():
        torch.testing.assert_close(got[n], p)
    batch = {k: v for k, v in encode(proc, samples[:2], torch.device("cpu")).items() if k != "labels"}
    model.eval()
    loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits)


def test_resume_is_exact_without_lora_and_ground_truth_regulariser(base_dir, tmp_path):
    """Full-LLM tuning (no PEFT: trainable.safetensors) and the ground_truth variant."""
    student = StudentConfig(lora=LoraSettings(enabled=False), dtype="float32")
    samples = make_samples(8)
    cfg = tcfg("commit", batch_size=3, max_steps=6, checkpoint_every=4, interval=2)
    cfg.coordination.reg_variant = "ground_truth"

    def fresh():
        model, proc = load_student(base_dir, student)
        return apply_lora(model, student), proc

    ref = run_training(*fresh(), samples, cfg, seed=4)
    part = run_training(*fresh(), samples, cfg, seed=4, checkpoint_root=tmp_path, stop_after=4)
    ck = part.checkpoints[-1]
    assert (ck / "trainable.safetensors").is_file() and not (ck / "adapter").exists()
    rest = run_training(*fresh(), samples, cfg, seed=4, resume_from=ck)
    torch.testing.assert_close(losses(part), losses(ref)[:4], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(losses(rest), losses(ref)[4:], rtol=1e-5, atol=1e-7)
    assert any(m["reg"] != 0.0 for m in ref.history)


def test_resumed_losses_are_bitwise_equal_on_cpu(base_dir, tmp_path):
    """Stronger than the tolerance above: same process, same CPU kernels -> identical floats."""
    samples = make_samples(8)
    cfg = tcfg("commit_clr", max_steps=5, checkpoint_every=2, interval=2)
    ref = run_training(*fresh_student(base_dir), samples, cfg, seed=9)
    run_training(*fresh_student(base_dir), samples, cfg, seed=9, checkpoint_root=tmp_path, stop_after=2)
    rest = run_training(*fresh_student(base_dir, seed=5), samples, cfg, seed=9,
                        resume_from=latest_checkpoint(tmp_path))
    assert [m["loss"] for m in rest.history] == [m["loss"] for m in ref.history[2:]]
