"""The shipped generic student and built-in teacher: current, intact, restored into a cache
and loaded with from_pretrained; refused (and trained instead) when a file is damaged."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mmtune.config import load_config
from mmtune.models import shipped
from mmtune.teacher.builtin import META_FILE as TEACHER_META
from mmtune.teacher.builtin import ensure_builtin_teacher, teacher_dir
from mmtune.training.pretrain import META_FILE as STUDENT_META
from mmtune.training.pretrain import ensure_generic_student, student_dir

ROOT = Path(__file__).resolve().parents[2]
DEMO = str(ROOT / "configs" / "demo.yaml")


def demo(tmp_path: Path, *overrides: str):
    return load_config(DEMO, [f"run.cache_dir={tmp_path / 'cache'}", *overrides])


def test_the_demo_config_resolves_to_the_shipped_models(tmp_path):
    cfg = demo(tmp_path)
    names = set(shipped.manifest())
    stale = {student_dir(cfg).name, teacher_dir(cfg).name} - names
    assert not stale, (f"configs/demo.yaml now resolves to {sorted(stale)}, which is not shipped (shipped: "
                       f"{sorted(names)}): the keys moved. Build them (`make demo`), then run "
                       "`python -m mmtune.models.shipped refresh --config configs/demo.yaml`")


def test_every_shipped_file_matches_its_checksum():
    assert shipped.manifest(), "nothing is shipped"
    assert {n: shipped.verify(n) for n in shipped.manifest()} == {n: None for n in shipped.manifest()}


def test_restored_models_load_with_from_pretrained(tmp_path):
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    cfg = demo(tmp_path)
    lines: list[str] = []
    # restored, not trained (which would take minutes): checked first so a failure is quick
    assert shipped.restore(student_dir(cfg), STUDENT_META, progress=lines.append)
    student = ensure_generic_student(cfg, progress=lines.append)
    teacher = ensure_builtin_teacher(cfg, progress=lines.append)
    assert (student / STUDENT_META).is_file() and (teacher / TEACHER_META).is_file()
    assert sum("[shipped]" in x for x in lines) == 2 and "cached" in lines[1], lines
    for path, cls in ((student, AutoModelForImageTextToText), (teacher, AutoModelForCausalLM)):
        model = cls.from_pretrained(path)
        saved = load_file(str(path / "model.safetensors"))
        name, tensor = next(iter(sorted(saved.items())))
        state = model.state_dict()
        # the loaded weights are the shipped ones (not a fresh random init)
        assert any(torch.equal(v, tensor) for k, v in state.items() if k.endswith(name.split(".", 1)[-1]))
    # a second call finds them cached
    lines.clear()
    assert ensure_generic_student(cfg, progress=lines.append) == student and "cached" in lines[0]


def test_shipping_off_or_another_key_trains_instead(tmp_path):
    cfg = demo(tmp_path, "run.shipped_models=false")
    out = student_dir(cfg)
    assert not shipped.restore(out, STUDENT_META, enabled=cfg.run.shipped_models) and not out.exists()
    other = student_dir(demo(tmp_path, "run.seed=7"))
    assert other.name not in shipped.manifest()
    assert not shipped.restore(other, STUDENT_META) and not other.exists()


def test_a_damaged_shipped_file_is_refused(tmp_path):
    root = tmp_path / "assets"
    shutil.copytree(shipped.SHIPPED_DIR, root)
    name = next(n for n in shipped.manifest(root) if n.startswith("tiny-llava"))
    weights = root / name / "model.safetensors"
    weights.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 3\n")  # an LFS pointer
    assert "SHA-256" in shipped.verify(name, root)
    lines: list[str] = []
    out = tmp_path / "cache" / "students" / name
    assert not shipped.restore(out, STUDENT_META, root=root, progress=lines.append)
    assert not out.exists() and "training it here instead" in lines[0]
    assert shipped.main(["verify"]) == 0  # the real shipped files are untouched


def test_refresh_ships_what_the_cache_holds(tmp_path):
    cfg = demo(tmp_path)
    ensure_generic_student(cfg, progress=lambda _: None)
    ensure_builtin_teacher(cfg, progress=lambda _: None)
    root = tmp_path / "ship"
    (root / "old-model").mkdir(parents=True)
    (root / shipped.MANIFEST).write_text('{"models": {"old-model": {"files": {}}}}')
    models = shipped.refresh(DEMO, [f"run.cache_dir={tmp_path / 'cache'}"], root=root)
    assert set(models) == {student_dir(cfg).name, teacher_dir(cfg).name} == set(shipped.manifest(root))
    assert not (root / "old-model").exists()
    assert all(shipped.verify(n, root) is None for n in models)
    with pytest.raises(FileNotFoundError, match="build it first"):
        shipped.refresh(DEMO, [f"run.cache_dir={tmp_path / 'empty'}"], root=tmp_path / "ship2")
