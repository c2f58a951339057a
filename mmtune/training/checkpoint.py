"""Training checkpoints that resume *exactly* (issue B: "resume must be exact").

A checkpoint is one directory, written atomically (into a temporary sibling, then
renamed), holding::

    adapter/           PEFT ``save_pretrained`` (safetensors): LoRA adapters plus the
                       trainable encoder parts (projector) in ``modules_to_save``; loads
                       with ``peft.PeftModel.from_pretrained``. Without PEFT (LoRA off):
    trainable.safetensors   the trainable parameters by ``named_parameters`` name.
    optimizer.pt       ``optimizer.state_dict()`` (AdamW moments, step counts, groups)
    schedule.json      ``CoordinatedSchedule.state_dict()`` (η_S/η_T, the κ EMA)
    regularizer.pt     ``CommitRegularizer.state_dict()`` (each group's params before its
                       last update; tensors)
    rng.pt / rng.json  torch CPU (and CUDA) RNG states / python and numpy RNG states;
                       worker rank r > 0 writes rng_rank<r>.pt / .json instead (and only
                       those: with Ray Train the workers' directories are merged)
    state.json         data position (epoch, offset), completed steps, total steps,
                       probe-batch sample ids, seed, mode

[ours] Everything a step depends on is in the directory, so a run stopped after step k
and resumed from its checkpoint replays steps k+1.. bit-for-bit on the same hardware
(LoRA dropout included, through the restored RNG state). Every file except the PEFT
adapter loads with ``torch.load(weights_only=True)`` or JSON: no pickled code.
"""

from __future__ import annotations

import json
import random
import shutil
import uuid
from pathlib import Path
from typing import Any, Mapping

import torch

STATE_FILE = "state.json"
ADAPTER_DIR = "adapter"
TRAINABLE_FILE = "trainable.safetensors"
CHECKPOINT_PREFIX = "checkpoint_"


# --------------------------------------------------------------------------- RNG
def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensor states for ``rng.pt``, JSON-able states for ``rng.json``)."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda{i}"] = s
    version, internal, gauss = random.getstate()
    js: dict[str, Any] = {"python": [version, list(internal), gauss]}
    try:
        import numpy as np

        name, keys, pos, has_gauss, cached = np.random.get_state()
        js["numpy"] = [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]
    except ImportError:  # pragma: no cover - numpy ships with torch here
        pass
    return tensors, js


def set_rng_state(tensors: Mapping[str, torch.Tensor], js: Mapping[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda"))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
    if "python" in js:
        version, internal, gauss = js["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in js:
        import numpy as np

        name, keys, pos, has_gauss, cached = js["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


# --------------------------------------------------------------------------- weights
def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model under a DDP/FSDP-style ``.module`` wrapper."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    return model


def _is_peft(model: torch.nn.Module) -> bool:
    return hasattr(model, "peft_config")


def save_weights(model: torch.nn.Module, out_dir: Path) -> None:
    from safetensors.torch import save_file

    model = _unwrap(model)
    if _is_peft(model):
        model.save_pretrained(out_dir / ADAPTER_DIR, safe_serialization=True)
    else:
        tr = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
        save_file(tr, str(out_dir / TRAINABLE_FILE))


def load_weights(model: torch.nn.Module, ckpt_dir: Path) -> None:
    """Copy the checkpoint's trainable weights into ``model`` (same architecture/config).

    Raises if any trainable parameter of ``model`` is missing from the checkpoint, so a
    changed LoRA/freeze config cannot resume silently from partial weights.
    """
    from safetensors.torch import load_file

    model = _unwrap(model)
    if _is_peft(model):
        from peft import set_peft_model_state_dict

        path = ckpt_dir / ADAPTER_DIR / "adapter_model.safetensors"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not a PEFT checkpoint written by mmtune")
        sd = load_file(str(path))
        try:
            res = set_peft_model_state_dict(model, sd)
        except RuntimeError as e:  # torch's "size mismatch for ..." list: a checkpoint of another model
            first = next((ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln),
                         str(e).splitlines()[0] if str(e) else type(e).__name__)
            raise ValueError(f"checkpoint {ckpt_dir} is from a different model: its adapter tensors do not fit "
                             f"this one ({first[:300]}); resume with the student and LoRA settings it was "
                             "written with (student.name_or_path, student.lora), or start a fresh run") from None
        unexpected = list(getattr(res, "unexpected_keys", []) or [])
        if unexpected:
            raise ValueError(f"checkpoint {ckpt_dir}: {len(unexpected)} adapter tensors do not fit "
                             f"this model (first: {unexpected[:3]}); was the LoRA config changed?")
        # PEFT reports missing keys loosely (base weights are "missing" by design); check
        # the trainable ones ourselves.
        from peft import get_peft_model_state_dict

        want = set(get_peft_model_state_dict(model))
        missing = sorted(want - set(sd))
        if missing:
            raise ValueError(f"checkpoint {ckpt_dir}: missing {len(missing)} adapter tensors "
                             f"(first: {missing[:3]})")
    else:
        sd = load_file(str(ckpt_dir / TRAINABLE_FILE))
        params = dict(model.named_parameters())
        missing = [n for n, p in params.items() if p.requires_grad and n not in sd]
        extra = [n for n in sd if n not in params]
        if missing or extra:
            raise ValueError(f"checkpoint {ckpt_dir}: trainable parameters do not match this model "
                             f"(missing {missing[:3]}, unexpected {extra[:3]})")
        shapes = [f"{n}: {tuple(v.shape)} in the checkpoint, {tuple(params[n].shape)} here"
                  for n, v in sd.items() if tuple(v.shape) != tuple(params[n].shape)]
        if shapes:
            raise ValueError(f"checkpoint {ckpt_dir} is from a different model: {len(shapes)} tensors have other "
                             f"shapes (first: {shapes[0]}); resume with the student it was written with "
                             "(student.name_or_path), or start a fresh run")
        with torch.no_grad():
            for n, v in sd.items():
                params[n].copy_(v)


# --------------------------------------------------------------------------- save / load
def _torch_load(path: Path, **kw: Any) -> Any:
    """``torch.load(weights_only=True)``: a file that holds pickled code is refused clearly."""
    import pickle

    try:
        return torch.load(path, weights_only=True, **kw)
    except pickle.UnpicklingError as e:
        why = next((ln.strip() for ln in str(e).splitlines() if "GLOBAL" in ln), type(e).__name__)
        raise ValueError(f"refused to load {path}: it holds more than tensors ({why}); mmtune loads checkpoint "
                         "files with torch.load(weights_only=True) and never runs pickled code. Was it written "
                         "by mmtune? Start a fresh run, or resume from a checkpoint mmtune wrote") from None


def _rng_names(rank: int) -> tuple[str, str]:
    return ("rng.pt", "rng.json") if rank == 0 else (f"rng_rank{rank}.pt", f"rng_rank{rank}.json")


def save_checkpoint(out_dir: str | Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    schedule: Any, regularizer: Any | None, state: Mapping[str, Any], rank: int = 0) -> Path:
    """Write a checkpoint directory atomically; returns its path.

    ``state`` is the JSON-able loop state (data position, step, probe ids, ...). The RNG
    states are captured here, so call this at the point where the resumed run continues.
    An existing directory of the same name is replaced. ``rank`` > 0 (another data-parallel
    worker, whose weights/optimizer equal rank 0's) writes its RNG states only.
    """
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".tmp-{out.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        tensors, js = rng_state()
        rng_pt, rng_js = _rng_names(rank)
        torch.save(tensors, tmp / rng_pt)
        (tmp / rng_js).write_text(json.dumps(js))
        if rank == 0:
            save_weights(model, tmp)
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            (tmp / "schedule.json").write_text(json.dumps(schedule.state_dict(), indent=1, sort_keys=True))
            if regularizer is not None:
                torch.save(regularizer.state_dict(), tmp / "regularizer.pt")
            (tmp / STATE_FILE).write_text(json.dumps(dict(state), indent=1, sort_keys=True))
        if out.exists():
            old = out.parent / f".old-{out.name}-{uuid.uuid4().hex[:8]}"
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_state(ckpt_dir: str | Path) -> dict[str, Any]:
    p = Path(ckpt_dir) / STATE_FILE
    if not p.is_file():
        raise FileNotFoundError(f"{ckpt_dir} is not a training checkpoint (no {STATE_FILE})")
    return json.loads(p.read_text())


def load_checkpoint(ckpt_dir: str | Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    schedule: Any, regularizer: Any | None, restore_rng: bool = True,
                    rank: int = 0) -> dict[str, Any]:
    """Restore weights, optimizer, schedule, regulariser and RNG; returns the loop state.

    ``model``/``optimizer``/``schedule``/``regularizer`` must be built exactly as for the
    original run (same config); the optimizer over the same parameter groups.
    """
    d = Path(ckpt_dir)
    state = read_state(d)
    load_weights(model, d)
    optimizer.load_state_dict(_torch_load(d / "optimizer.pt", map_location="cpu"))
    schedule.load_state_dict(json.loads((d / "schedule.json").read_text()))
    if regularizer is not None and (d / "regularizer.pt").is_file():
        device = next(_unwrap(model).parameters()).device
        rs = _torch_load(d / "regularizer.pt", map_location=device)
        regularizer.load_state_dict(rs)
    if restore_rng:
        rng_pt, rng_js = _rng_names(rank)
        if not (d / rng_pt).is_file():
            raise FileNotFoundError(f"checkpoint {d} has no RNG state for worker rank {rank} ({rng_pt}); "
                                    "was it written with a different number of workers?")
        set_rng_state(_torch_load(d / rng_pt), json.loads((d / rng_js).read_text()))
    return state


def checkpoint_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:08d}"


def latest_checkpoint(root: str | Path) -> Path | None:
    """The complete checkpoint with the most steps under ``root`` (temp dirs ignored)."""
    r = Path(root)
    if not r.is_dir():
        return None
    done = [p for p in r.iterdir()
            if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX) and (p / STATE_FILE).is_file()]
    return max(done, key=lambda p: read_state(p)["step"], default=None)


__all__ = ["save_checkpoint", "load_checkpoint", "read_state", "latest_checkpoint", "checkpoint_name",
           "rng_state", "set_rng_state", "save_weights", "load_weights"]
