"""Building the student: load any HF VLM, freeze, wrap with LoRA, and split parameter groups.

CoMMIT coordinates two components, so every student exposes two named parameter groups:

* ``encoder``: the projector, plus the vision tower when it is not frozen (CoMMIT's S);
* ``llm``: the LoRA adapters of the language model, or the whole LLM without LoRA (T).

Module names differ by architecture; :data:`ARCHITECTURES` holds the patterns for the
families we test (LLaVA, Qwen2-VL/Qwen2.5-VL) and a generic fallback that matches the
usual HF naming (``vision``/``visual`` towers, ``projector``/``merger`` connectors,
``language_model`` decoders).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, PreTrainedModel

from mmtune.config import LoraSettings, StudentConfig

log = logging.getLogger(__name__)

GROUPS = ("encoder", "llm")


@dataclass(frozen=True)
class ModulePatterns:
    """Regexes (``re.search`` over parameter names) locating an architecture's parts."""

    vision: str
    projector: str
    llm: str
    projector_module: str  # suffix PEFT's modules_to_save matches
    vision_module: str
    lora_target: str  # fullmatch regex over module names, PEFT's ``target_modules``
    projector_in_vision: bool = False


# LLaVA-1.5 tunes every linear layer of the LLM with LoRA; we default to the same.
_LLM_LINEAR = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"

ARCHITECTURES: dict[str, ModulePatterns] = {
    "llava": ModulePatterns(
        vision=r"(^|\.)vision_tower\.",
        projector=r"(^|\.)multi_modal_projector\.",
        llm=r"(^|\.)(language_model|lm_head)\.",
        projector_module="multi_modal_projector",
        vision_module="vision_tower",
        lora_target=_LLM_LINEAR,
    ),
    "qwen2_vl": ModulePatterns(
        vision=r"(^|\.)visual\.(?!merger)",
        projector=r"(^|\.)visual\.merger\.",
        llm=r"(^|\.)(language_model|lm_head)\.",
        projector_module="merger",
        vision_module="visual",
        lora_target=_LLM_LINEAR,
        projector_in_vision=True,
    ),
}
ARCHITECTURES["llava_next"] = ARCHITECTURES["llava"]
ARCHITECTURES["llava_onevision"] = ARCHITECTURES["llava"]
ARCHITECTURES["qwen2_5_vl"] = ARCHITECTURES["qwen2_vl"]
_GENERIC = ModulePatterns(
    vision=r"(^|\.)(vision_tower|vision_model|visual|image_encoder)\.(?!merger)",
    projector=r"(^|\.)(multi_modal_projector|mm_projector|merger|connector|aligner)\.",
    llm=r"(^|\.)(language_model|lm_head|text_model)\.",
    projector_module="multi_modal_projector",
    vision_module="vision_tower",
    lora_target=_LLM_LINEAR,
)


def patterns_for(model: PreTrainedModel) -> ModulePatterns:
    model_type = getattr(getattr(model, "config", None), "model_type", "")
    return ARCHITECTURES.get(model_type, _GENERIC)


def _torch_dtype(name: str) -> Any:
    return {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16,
            "float16": torch.float16}[name]


def load_student(name_or_path: str | Path, cfg: StudentConfig) -> tuple[PreTrainedModel, Any]:
    """Load a VLM and its processor by hub id or local directory.

    ``AutoModelForImageTextToText`` resolves LLaVA, Qwen2-VL and most HF VLMs from their
    config; a local directory written by :func:`save_student` loads the same way.
    """
    src = str(name_or_path)
    if src == "tiny-llava":
        raise ValueError(
            "'tiny-llava' is a preset, not a checkpoint: run `mmtune student pretrain --config ...` "
            "(or mmtune.training.pretrain.ensure_generic_student) to build it, then load its directory")
    try:
        processor = AutoProcessor.from_pretrained(src, trust_remote_code=cfg.trust_remote_code)
        model = AutoModelForImageTextToText.from_pretrained(
            src, dtype=_torch_dtype(cfg.dtype), trust_remote_code=cfg.trust_remote_code)
    except OSError as e:
        raise OSError(
            f"could not load student {src!r}: {e}\nPass a local directory holding config.json and "
            "the processor files, or a hub id (needs network; set HF_HUB_OFFLINE=0).") from e
    return model, processor


def save_student(model: PreTrainedModel, processor: Any, out_dir: str | Path,
                 meta: dict[str, Any] | None = None) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    if meta is not None:
        (out / "mmtune_student.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    return out


def apply_freeze(model: PreTrainedModel, cfg: StudentConfig) -> None:
    """Set ``requires_grad`` from the freeze flags (before LoRA wraps the model).

    With LoRA enabled the base LLM is always frozen; ``freeze_llm`` then means "no
    adapters either".
    """
    pat = patterns_for(model)
    vision, proj, llm = re.compile(pat.vision), re.compile(pat.projector), re.compile(pat.llm)
    for name, p in model.named_parameters():
        if proj.search(name):
            p.requires_grad_(not cfg.freeze_projector)
        elif vision.search(name):
            p.requires_grad_(not cfg.freeze_vision_tower)
        elif llm.search(name):
            p.requires_grad_(not cfg.freeze_llm and not cfg.lora.enabled)
        else:
            p.requires_grad_(False)


def apply_lora(model: PreTrainedModel, cfg: StudentConfig) -> PreTrainedModel:
    """Freeze per ``cfg`` and, when enabled, wrap the LLM with PEFT LoRA adapters.

    The trainable encoder parts (projector, and the vision tower if unfrozen) go into
    PEFT's ``modules_to_save`` so that ``PeftModel.save_pretrained`` writes them beside
    the adapters and ``PeftModel.from_pretrained`` restores the whole tuned student.
    """
    apply_freeze(model, cfg)
    if not cfg.lora.enabled or cfg.freeze_llm:
        return model
    from peft import LoraConfig, get_peft_model

    pat = patterns_for(model)
    target = lora_target(model, cfg.lora)
    to_save = []
    if not cfg.freeze_vision_tower:
        to_save.append(pat.vision_module)
    # Qwen2-VL's merger lives inside ``visual``: saving the tower already saves it.
    if not cfg.freeze_projector and not (to_save and pat.projector_in_vision):
        to_save.append(pat.projector_module)
    lcfg = LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=target,
        modules_to_save=to_save or None,
        task_type=None,
    )
    return get_peft_model(model, lcfg)


def lora_target(model: PreTrainedModel, lora: LoraSettings) -> str:
    """The LoRA target regex, checked to hit at least one module (and no vision module)."""
    regex = lora.target_regex or patterns_for(model).lora_target
    rx = re.compile(regex)
    hits = [n for n, _ in model.named_modules() if rx.fullmatch(n)]
    if not hits:
        raise ValueError(
            f"student.lora.target_regex {regex!r} matches no module of this "
            f"{type(model).__name__}; module names look like "
            f"{[n for n, _ in model.named_modules()][-3:]}")
    return regex


def param_groups(model: torch.nn.Module) -> dict[str, list[tuple[str, torch.nn.Parameter]]]:
    """Trainable parameters split into CoMMIT's ``encoder`` and ``llm`` groups.

    Raises if a trainable parameter belongs to neither, so nothing trains unnoticed
    outside the coordinated schedule.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    pat = patterns_for(base)
    enc = re.compile(f"{pat.vision}|{pat.projector}")
    llm = re.compile(pat.llm)
    groups: dict[str, list[tuple[str, torch.nn.Parameter]]] = {g: [] for g in GROUPS}
    stray = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if enc.search(name):
            groups["encoder"].append((name, p))
        elif llm.search(name):
            groups["llm"].append((name, p))
        else:
            stray.append(name)
    if stray:
        raise ValueError(
            f"{len(stray)} trainable parameters belong to neither the encoder nor the llm group "
            f"(first: {stray[:3]}); freeze them or extend mmtune.models.student.ARCHITECTURES")
    return groups


def group_sizes(model: torch.nn.Module) -> dict[str, int]:
    return {g: sum(p.numel() for _, p in ps) for g, ps in param_groups(model).items()}


def save_adapter(model: torch.nn.Module, out_dir: str | Path) -> Path:
    """Save LoRA adapters plus the trainable encoder parts (PEFT format, safetensors)."""
    if not hasattr(model, "peft_config"):
        raise TypeError("save_adapter needs a PEFT model; with LoRA disabled use save_student")
    out = Path(out_dir)
    model.save_pretrained(out, safe_serialization=True)
    return out


def load_adapter(base: PreTrainedModel, adapter_dir: str | Path, *, trainable: bool = False):
    """Attach saved adapters (and saved projector) to a freshly loaded base student."""
    from peft import PeftModel

    return PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=trainable)
