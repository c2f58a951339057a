"""Pre-training the demo's *generic* student: a plain torch loop, cached by config hash.

This builds the stand-in for "LLaVA-1.5 before adaptation": the ``tiny-llava`` preset
trained from random initialisation (all parameters) on SkillWorld's long-tail generic mix.
It is not the coordinated tuning of later rounds (that is Ray Train + CoMMIT); it only
has to produce a reasonable generic model once, so a second ``make demo`` reuses it.
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import torch
from transformers import get_cosine_schedule_with_warmup

from mmtune.config import RunConfig, config_hash
from mmtune.data.catalog import DataPaths, data_paths, skillworld_key
from mmtune.models.inputs import encode_for_training
from mmtune.models.presets import build_tiny_llava
from mmtune.models.student import save_student

META_FILE = "mmtune_student.json"


def student_key(cfg: RunConfig) -> str:
    """Everything that determines the generic student's weights."""
    return config_hash({
        "data": skillworld_key(cfg),
        "preset": cfg.student.preset.model_dump(mode="json"),
        "pretrain": cfg.student.pretrain.model_dump(mode="json", exclude={"log_every", "threads"}),
        "seed": cfg.run.shared_seed,
    })


def student_dir(cfg: RunConfig) -> Path:
    return Path(cfg.run.cache_dir) / "students" / f"tiny-llava-{student_key(cfg)}"


def resolve_student(cfg: RunConfig, progress=print) -> Path | str:
    """The student a run starts from: the cached generic student for the preset (built on
    first use), else the user's hub id or directory as given."""
    if cfg.student.name_or_path == "tiny-llava":
        return ensure_generic_student(cfg, progress=progress)
    return cfg.student.name_or_path


def ensure_generic_student(cfg: RunConfig, progress=print, force: bool = False) -> Path:
    out = student_dir(cfg)
    if (out / META_FILE).is_file() and not force:
        progress(f"[student] generic student cached at {out}")
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


def pretrain_student(cfg: RunConfig, paths: DataPaths, out_dir: Path, progress=print) -> dict[str, Any]:
    pc = cfg.student.pretrain
    if pc.threads:
        torch.set_num_threads(pc.threads)
    torch.manual_seed(cfg.run.shared_seed)
    if not paths.generic_train:
        raise ValueError(f"no generic training shards under {paths.root}; regenerate SkillWorld")
    train = _read_texts(paths.generic_train, ["instruction", "response", "image"])
    corpus_text = _read_texts(paths.corpus, ["instruction", "response"])
    texts = (train["instruction"] + train["response"] + corpus_text["instruction"]
             + corpus_text["response"])
    model, processor = build_tiny_llava(cfg.student.preset, texts, cfg.data.skillworld.image_size)
    model.train()
    n = len(train["instruction"])
    n_params = sum(p.numel() for p in model.parameters())
    progress(f"[student] pre-training tiny-llava ({n_params / 1e6:.2f}M params) on {n} generic "
             f"samples for {pc.steps} steps × batch {pc.batch_size} "
             f"(~{pc.steps * pc.batch_size / n:.1f} epochs)")

    decay = [p for nme, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for nme, p in model.named_parameters() if p.ndim < 2]
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
        batch = encode_for_training(processor, [train["instruction"][i] for i in idx],
                                    [train["response"][i] for i in idx],
                                    [train["image"][i] for i in idx])
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
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
        "config": {"preset": cfg.student.preset.model_dump(mode="json"),
                   "pretrain": pc.model_dump(mode="json"),
                   "skillworld": cfg.data.skillworld.model_dump(mode="json")},
    }
    model.eval()
    save_student(model, processor, out_dir, meta=stats)
    return stats
