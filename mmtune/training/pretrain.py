"""Pre-training the demo's *generic* student: a plain torch loop, cached by config hash.

This builds the stand-in for "LLaVA-1.5 before adaptation" (or "Qwen2-Audio before
adaptation"): the ``tiny-llava`` preset on the vision SkillWorld, or the ``tiny-qwen2-audio``
preset on the audio SkillWorld, trained from random initialisation on the long-tail generic
mix. The vision preset goes in LLaVA's order: its tower is first pre-trained on labelled
pictures (``student.pretrain.vision_steps``, :mod:`mmtune.training.vision_pretrain`, the
stand-in for CLIP) and then frozen while the projector and the LLM learn; with
``vision_steps=0``, and for the audio preset, all parameters train together.

It is not the coordinated tuning of later rounds (that is Ray Train +
CoMMIT); it only has to produce a reasonable generic model once, so a second ``make demo``
reuses it.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import torch
from transformers import get_cosine_schedule_with_warmup

from mmtune.config import VISION_PRETRAIN_FIELDS, RunConfig, config_hash
from mmtune.data.catalog import DataPaths, data_paths, skillworld_key
from mmtune.models.inputs import decode_image, encode_for_training
from mmtune.models.presets import PRESETS, build_preset
from mmtune.models.student import save_student

META_FILE = "mmtune_student.json"
AUDIO_PRESET = "tiny-qwen2-audio"
PRESET_MODALITY = {"tiny-llava": "vision", AUDIO_PRESET: "audio"}


def preset_name(cfg: RunConfig) -> str:
    """The preset ``student.name_or_path`` names (``tiny-llava`` when it names a model)."""
    name = cfg.student.name_or_path
    return name if name in PRESETS else "tiny-llava"


def student_key(cfg: RunConfig) -> str:
    """Everything that determines the generic student's weights.

    The vision preset's key is the one it always had (its sizes live in ``student.preset``);
    the audio preset's adds its name and hashes ``student.audio_preset`` instead.
    """
    if preset_name(cfg) == AUDIO_PRESET:
        return config_hash({
            "student": AUDIO_PRESET,
            "data": skillworld_key(cfg),
            "preset": cfg.student.audio_preset.model_dump(mode="json"),
            "pretrain": cfg.student.pretrain.model_dump(
                mode="json", exclude={"log_every", "threads", *VISION_PRETRAIN_FIELDS}),
            "seed": cfg.run.shared_seed,
        })
    return config_hash({
        "data": skillworld_key(cfg),
        "preset": cfg.student.preset.model_dump(mode="json"),
        "pretrain": cfg.student.pretrain.model_dump(mode="json", exclude={"log_every", "threads"}),
        "seed": cfg.run.shared_seed,
    })


def student_dir(cfg: RunConfig) -> Path:
    return Path(cfg.run.cache_dir) / "students" / f"{preset_name(cfg)}-{student_key(cfg)}"


def resolve_student(cfg: RunConfig, progress=print) -> Path | str:
    """The student a run starts from: the cached generic student for the preset (built on
    first use), else the user's hub id or directory as given."""
    if cfg.student.name_or_path in PRESETS:
        return ensure_generic_student(cfg, progress=progress)
    return cfg.student.name_or_path


def ensure_generic_student(cfg: RunConfig, progress=print, force: bool = False) -> Path:
    from mmtune.models.shipped import restore

    out = student_dir(cfg)
    if (out / META_FILE).is_file() and not force:
        progress(f"[student] generic student cached at {out}")
        return out
    if not force and restore(out, META_FILE, enabled=cfg.run.shipped_models, progress=progress):
        return out
    paths = data_paths(cfg, progress)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    pretrain_student(cfg, paths, tmp, progress=progress)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    progress(f"[student] saved generic student to {out}")
    return out


def _read_texts(paths: list[Path], columns: list[str]) -> dict[str, list[Any]]:
    cols: dict[str, list[Any]] = {c: [] for c in columns}
    for p in paths:
        t = pq.read_table(p, columns=columns)
        for c in columns:
            cols[c].extend(t.column(c).to_pylist())
    return cols


def check_modality(cfg: RunConfig) -> None:
    """The preset must match the SkillWorld family it is pre-trained on."""
    name, sw = preset_name(cfg), cfg.data.skillworld
    want = PRESET_MODALITY[name]
    if cfg.data.source == "skillworld" and sw.modality != want:
        other = next(p for p, m in PRESET_MODALITY.items() if m == sw.modality)
        raise ValueError(f"student.name_or_path={name} takes {want} data but data.skillworld.modality is "
                         f"{sw.modality!r}; set data.skillworld.modality={want}, or student.name_or_path={other}")


class _AudioRows:
    """The generic mix's columns, with the WAV bytes in a memory-mapped Arrow file.

    12,000 two-second clips are 0.77 GB of WAV; read into Python they would sit in the driver
    for the whole pre-training. Spilled once (mmtune.training.shards, the Ray workers' out-of-core
    format), a batch reads only its own clips.
    """

    def __init__(self, paths: list[Path], spill_dir: Path):
        from mmtune.training.shards import ArrowRows, spill

        cols = ["id", "instruction", "response", "audio"]
        ids = _read_texts(paths, ["id"])["id"]
        batches = (b for p in paths for b in pq.ParquetFile(p).iter_batches(batch_size=256, columns=cols))
        spill(batches, set(map(str, ids)), spill_dir / "generic.arrow")
        self.rows = ArrowRows(spill_dir / "generic.arrow", [str(i) for i in ids])
        texts = _read_texts(paths, ["instruction", "response"])
        self.instruction, self.response = texts["instruction"], texts["response"]

    def __getitem__(self, key: str) -> Any:
        if key == "audio":
            return _Column(self.rows, "audio")
        if key == "image":
            return _Column(None, "image")
        return {"instruction": self.instruction, "response": self.response}[key]


class _Column:
    def __init__(self, rows: Any, name: str):
        self.rows, self.name = rows, name

    def __getitem__(self, i: int) -> Any:
        return None if self.rows is None else self.rows[i][self.name]


def pretrain_student(cfg: RunConfig, paths: DataPaths, out_dir: Path, progress=print) -> dict[str, Any]:
    check_modality(cfg)
    if preset_name(cfg) == AUDIO_PRESET:
        if not paths.generic_train:
            raise ValueError(f"no generic training shards under {paths.root}; regenerate SkillWorld")
        # inside the build directory: an interrupted build's spill goes with it (ensure_generic_student
        # removes a stale build directory before it starts again)
        spill_dir = out_dir / "_spill"
        try:
            return _pretrain(cfg, paths, out_dir, progress, _AudioRows(paths.generic_train, spill_dir))
        finally:
            shutil.rmtree(spill_dir, ignore_errors=True)
    return _pretrain(cfg, paths, out_dir, progress, None)


def _pretrain(cfg: RunConfig, paths: DataPaths, out_dir: Path, progress, train: Any) -> dict[str, Any]:
    pc = cfg.student.pretrain
    name = preset_name(cfg)
    audio = name == AUDIO_PRESET
    if pc.threads:
        torch.set_num_threads(pc.threads)
    torch.manual_seed(cfg.run.shared_seed)
    if not paths.generic_train:
        raise ValueError(f"no generic training shards under {paths.root}; regenerate SkillWorld")
    if train is None:
        train = _read_texts(paths.generic_train, ["id", "instruction", "response", "image"])
    corpus_text = _read_texts(paths.corpus, ["instruction", "response"])
    texts = (train["instruction"] + train["response"] + corpus_text["instruction"]
             + corpus_text["response"])
    preset = cfg.student.audio_preset if audio else cfg.student.preset
    model, processor = build_preset(name, preset, texts, image_size=cfg.data.skillworld.image_size,
                                    clip_seconds=cfg.data.skillworld.clip_seconds)
    vision_stats = None
    if not audio and pc.vision_steps:
        vision_stats = _pretrain_tower(cfg, paths, model, processor, train, progress)
    model.train()
    n = len(train["instruction"])
    n_params = sum(p.numel() for p in model.parameters())
    progress(f"[student] pre-training {name} ({n_params / 1e6:.2f}M params) on {n} generic "
             f"samples for {pc.steps} steps × batch {pc.batch_size} "
             f"(~{pc.steps * pc.batch_size / n:.1f} epochs)")

    trainable = [p for p in model.parameters() if p.requires_grad]  # a pre-trained tower stays frozen
    decay = [p for p in trainable if p.ndim >= 2]
    no_decay = [p for p in trainable if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": pc.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=pc.lr)
    sched = get_cosine_schedule_with_warmup(opt, math.ceil(pc.warmup_ratio * pc.steps), pc.steps)
    gen = torch.Generator().manual_seed(cfg.run.shared_seed)
    order = torch.randperm(n, generator=gen).tolist()
    cursor = 0
    t0 = time.time()
    window_loss, window_n, losses = 0.0, 0, []
    for step in range(1, pc.steps + 1):
        if cursor + pc.batch_size > n:  # next epoch: a fresh deterministic permutation
            order = torch.randperm(n, generator=gen).tolist()
            cursor = 0
        idx = order[cursor:cursor + pc.batch_size]
        cursor += pc.batch_size
        if audio:
            batch = encode_for_training(processor, [train["instruction"][i] for i in idx],
                                        [train["response"][i] for i in idx], [None] * len(idx),
                                        [train["audio"][i] for i in idx])
        else:
            batch = encode_for_training(processor, [train["instruction"][i] for i in idx],
                                        [train["response"][i] for i in idx],
                                        [train["image"][i] for i in idx])
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        window_loss += loss.item()
        window_n += 1
        if step % pc.log_every == 0 or step == pc.steps:
            el = time.time() - t0
            sps = step * pc.batch_size / el
            losses.append((step, window_loss / window_n))
            progress(f"[student] step {step}/{pc.steps} loss {window_loss / window_n:.4f} "
                     f"lr {sched.get_last_lr()[0]:.2e} {sps:.0f} samples/s "
                     f"eta {(pc.steps - step) * pc.batch_size / sps:.0f}s")
            window_loss, window_n = 0.0, 0
    elapsed = time.time() - t0
    stats = {
        "key": student_key(cfg),
        "params": n_params,
        "train_samples": n,
        "steps": pc.steps,
        "batch_size": pc.batch_size,
        "seconds": round(elapsed, 2),
        "samples_per_s": round(pc.steps * pc.batch_size / elapsed, 1),
        "loss_curve": losses,
        "torch_threads": torch.get_num_threads(),
        "vision_tower": vision_stats,
        "student": name,
        "config": {"preset": preset.model_dump(mode="json"),
                   "pretrain": pc.model_dump(mode="json"),
                   "skillworld": cfg.data.skillworld.model_dump(mode="json")},
    }
    model.eval()
    model.requires_grad_(True)  # frozen only for this loop; a loaded student is whole either way
    save_student(model, processor, out_dir, meta=stats)
    return stats


def _pretrain_tower(cfg: RunConfig, paths: DataPaths, model: Any, processor: Any, rows: dict[str, list[Any]],
                    progress) -> dict[str, Any]:
    """Stage 1 of the vision preset: the tower learns what is where, then is frozen.

    ``rows`` is the generic mix already read for stage 2 (``id`` and ``image`` columns).
    """
    from mmtune.training.vision_pretrain import pretrain_vision_tower

    pc = cfg.student.pretrain
    scenes = _scenes(paths)
    missing = [i for i in rows["id"] if i not in scenes]
    if missing:
        raise ValueError(f"{len(missing)} generic training pictures have no scene under {paths.root / 'meta'} "
                         f"(first: {missing[0]!r}); regenerate SkillWorld, or set student.pretrain.vision_steps=0")
    # The pictures are tiny (32 px by default): 12,000 of them are ~150 MB as float pixels, so they
    # are processed once rather than decoded again for every batch.
    images = [decode_image(b) for b in rows["image"]]
    pixel_values = torch.cat([processor.image_processor(images[i:i + 512], return_tensors="pt")["pixel_values"]
                              for i in range(0, len(images), 512)])
    tower = model.model.vision_tower
    stats = pretrain_vision_tower(tower, pixel_values, [scenes[i] for i in rows["id"]], steps=pc.vision_steps,
                                  batch_size=pc.vision_batch_size, lr=pc.vision_lr, seed=cfg.run.shared_seed,
                                  log_every=max(1, pc.vision_steps // 10), progress=progress)
    tower.requires_grad_(False)
    return stats


def _scenes(paths: DataPaths) -> dict[str, dict]:
    """SkillWorld's scene of every generic training picture, by sample id (from ``meta/``)."""
    out: dict[str, dict] = {}
    for shard in paths.generic_train:
        meta = paths.root / "meta" / shard.relative_to(paths.root)
        if not meta.is_file():
            raise ValueError(f"no scene metadata {meta} for {shard}; student.pretrain.vision_steps needs "
                             "SkillWorld's scenes: regenerate SkillWorld, or set student.pretrain.vision_steps=0")
        t = pq.read_table(meta, columns=["id", "scene"])
        out.update(zip(t.column("id").to_pylist(), map(json.loads, t.column("scene").to_pylist())))
    return out
