"""The generic student and the built-in teacher of the embedded default, shipped with mmtune.

Training both on a 2-core CPU takes about ten minutes each (side by side: 16 min for a
first ``make demo``; docs/benchmarks.md). A user of a 7B student downloads its weights;
the embedded default's equivalent is this directory: the models the demo config builds,
saved with ``save_pretrained`` exactly as the cache holds them, named by their cache keys
(``tiny-llava-<student_key>``, ``builtin-<teacher_key>``) and listed in
``SHIPPED.json`` with the SHA-256 of every file and how they were built.

A run whose config resolves to a shipped key copies the model into its cache instead of
training it (``run.shipped_models``, default true). Any other config (another seed, preset
or SkillWorld setting) trains its own, as before. A shipped file that does not match its
checksum (a Git LFS pointer, a partial checkout) is refused with a warning, and the model
is trained instead. Shipping also makes the README's numbers reproducible across machines:
CPU training depends on the thread count and summation order, a copied file does not.

``python -m mmtune.models.shipped refresh --config configs/demo.yaml`` replaces the shipped
models with the ones the config's cache holds (build them first: ``make demo``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)

SHIPPED_DIR = Path(__file__).resolve().parent.parent / "assets" / "models"
MANIFEST = "SHIPPED.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def manifest(root: Path = SHIPPED_DIR) -> dict[str, dict]:
    """``{model directory name: {"files": {name: sha256}, ...}}``; empty when nothing is shipped."""
    path = root / MANIFEST
    return json.loads(path.read_text())["models"] if path.is_file() else {}


def verify(name: str, root: Path = SHIPPED_DIR, entry: dict | None = None) -> str | None:
    """None when the shipped model ``name`` is complete and matches its checksums, else why not.
    ``entry``: its manifest entry, when the caller has read the manifest already."""
    entry = entry if entry is not None else manifest(root).get(name)
    if entry is None:
        return f"no shipped model named {name}"
    src = root / name
    for file, digest in entry["files"].items():
        if not (src / file).is_file():
            return f"{src / file} is missing"
        if _sha256(src / file) != digest:
            return (f"{src / file} does not match its SHA-256 in {root / MANIFEST} (a Git LFS pointer or a partial "
                    "checkout?)")
    return None


def restore(out: Path, meta_file: str, *, enabled: bool = True, root: Path = SHIPPED_DIR,
            progress: Callable[[str], None] = print) -> bool:
    """Copy the shipped model named ``out.name`` into ``out``; True when ``out`` then holds
    a complete model (``meta_file`` written last, as a trained one). False, and ``out``
    untouched, when shipping is off, nothing of that name is shipped, or the copy fails
    its checksums (then the caller trains the model)."""
    entry = manifest(root).get(out.name) if enabled else None
    if entry is None:
        return False
    problem = verify(out.name, root, entry)
    if problem:
        progress(f"[shipped] not using the shipped {out.name}: {problem}; training it here instead")
        log.warning("shipped model %s refused: %s", out.name, problem)
        return False
    tmp = out.with_name(f"{out.name}.shipped-tmp{int(time.time() * 1000)}")
    shutil.copytree(root / out.name, tmp)
    if out.exists() and not (out / meta_file).is_file():
        shutil.rmtree(out)  # an unfinished model (no meta file): never used, replaced
    try:
        tmp.rename(out)
    except OSError:  # another process restored (or trained) it first
        shutil.rmtree(tmp, ignore_errors=True)
    if not (out / meta_file).is_file():
        return False
    progress(f"[shipped] {out.name}: copied the shipped model into {out} ({entry.get('built', '')}); "
             "run.shipped_models=false trains it here instead")
    return True


def refresh(config: str, overrides: list[str] | tuple[str, ...] = (), root: Path = SHIPPED_DIR) -> dict[str, dict]:
    """Ship the generic student and built-in teacher that ``config``'s cache holds,
    replacing what was shipped before."""
    from mmtune.config import load_config
    from mmtune.teacher.builtin import META_FILE as TEACHER_META
    from mmtune.teacher.builtin import teacher_dir
    from mmtune.training.pretrain import META_FILE as STUDENT_META
    from mmtune.training.pretrain import student_dir

    cfg = load_config(config, list(overrides))
    models = {}
    for src, meta in ((student_dir(cfg), STUDENT_META), (teacher_dir(cfg), TEACHER_META)):
        if not (src / meta).is_file():
            raise FileNotFoundError(f"{src} holds no finished model ({meta} is missing); build it first "
                                    f"(`mmtune run --config {config}` or `make demo`), then refresh")
        files = sorted(p.name for p in src.iterdir() if p.is_file())
        models[src.name] = {"files": {f: _sha256(src / f) for f in files},
                            "built": f"built by `mmtune run --config {config}`, "
                                     f"{time.strftime('%Y-%m-%d', time.gmtime((src / meta).stat().st_mtime))}"}
    root.mkdir(parents=True, exist_ok=True)
    for old in manifest(root):
        if old not in models:
            shutil.rmtree(root / old, ignore_errors=True)
    for name in models:
        if (root / name).exists():
            shutil.rmtree(root / name)
        src = student_dir(cfg) if name == student_dir(cfg).name else teacher_dir(cfg)
        shutil.copytree(src, root / name)
    (root / MANIFEST).write_text(json.dumps({"config": config, "models": models}, indent=1, sort_keys=True) + "\n")
    return models


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mmtune.models.shipped", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("refresh", help="ship the models a config's cache holds")
    r.add_argument("--config", default="configs/demo.yaml")
    r.add_argument("overrides", nargs="*")
    sub.add_parser("verify", help="check every shipped file against its SHA-256")
    args = p.parse_args(argv)
    if args.cmd == "refresh":
        for name in refresh(args.config, args.overrides):
            print(f"shipped {name}")
        return 0
    bad = {n: verify(n) for n in manifest()}
    for n, problem in bad.items():
        print(f"{n}: {problem or 'ok'}")
    return 1 if any(bad.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
