"""Building the student: load any HF VLM or audio LLM, freeze, wrap with LoRA, and split parameter groups.

CoMMIT coordinates two components, so every student exposes two named parameter groups:

* ``encoder``: the projector, plus the encoder tower (vision or audio) when it is not
  frozen (CoMMIT's S);
* ``llm``: the LoRA adapters of the language model, or the whole LLM without LoRA (T).

Module names differ by architecture; :data:`ARCHITECTURES` holds the patterns for the
families we test (LLaVA, Qwen2-VL/Qwen2.5-VL, Qwen2-Audio) and generic fallbacks that match
the usual HF naming (``vision``/``visual``/``audio`` towers, ``projector``/``merger``
connectors, ``language_model`` decoders).

Freeze flags map onto the tower by its modality: ``student.freeze_vision_tower`` freezes a
vision tower (LLaVA's ``vision_tower``, Qwen2-VL's ``visual``), ``student.freeze_audio_tower``
an audio tower (Qwen2-Audio's ``audio_tower``); ``freeze_projector`` and ``freeze_llm`` mean
the same for both.
"""

from __future__ import annotations

import json
import logging
import pickle
import re
from collections.abc import Iterator
from contextlib import contextmanager
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
    """Regexes (``re.search`` over parameter names) locating an architecture's parts.

    ``tower`` is the modality encoder (a vision tower, or an audio tower when ``modality`` is
    "audio"); its freeze flag is ``student.freeze_<modality>_tower``.
    """

    tower: str
    projector: str
    llm: str
    projector_module: str  # suffix PEFT's modules_to_save matches
    tower_module: str
    lora_target: str  # fullmatch regex over module names, PEFT's ``target_modules``
    projector_in_tower: bool = False
    modality: str = "vision"


# LLaVA-1.5 tunes every linear layer of the LLM with LoRA; we default to the same.
_LLM_LINEAR = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"

ARCHITECTURES: dict[str, ModulePatterns] = {
    "llava": ModulePatterns(
        tower=r"(^|\.)vision_tower\.",
        projector=r"(^|\.)multi_modal_projector\.",
        llm=r"(^|\.)(language_model|lm_head)\.",
        projector_module="multi_modal_projector",
        tower_module="vision_tower",
        lora_target=_LLM_LINEAR,
    ),
    "qwen2_vl": ModulePatterns(
        tower=r"(^|\.)visual\.(?!merger)",
        projector=r"(^|\.)visual\.merger\.",
        llm=r"(^|\.)(language_model|lm_head)\.",
        projector_module="merger",
        tower_module="visual",
        lora_target=_LLM_LINEAR,
        projector_in_tower=True,
    ),
    # Qwen2-Audio: model.audio_tower (Whisper-style encoder, whose attention also has q/k/v
    # projections: the LoRA regex must stay inside language_model), model.multi_modal_projector
    # (one Linear), model.language_model (Qwen2), lm_head.
    "qwen2_audio": ModulePatterns(
        tower=r"(^|\.)audio_tower\.",
        projector=r"(^|\.)multi_modal_projector\.",
        llm=r"(^|\.)(language_model|lm_head)\.",
        projector_module="multi_modal_projector",
        tower_module="audio_tower",
        lora_target=_LLM_LINEAR,
        modality="audio",
    ),
}
ARCHITECTURES["llava_next"] = ARCHITECTURES["llava"]
ARCHITECTURES["llava_onevision"] = ARCHITECTURES["llava"]
ARCHITECTURES["qwen2_5_vl"] = ARCHITECTURES["qwen2_vl"]
_GENERIC = ModulePatterns(
    tower=r"(^|\.)(vision_tower|vision_model|visual|image_encoder)\.(?!merger)",
    projector=r"(^|\.)(multi_modal_projector|mm_projector|merger|connector|aligner)\.",
    llm=r"(^|\.)(language_model|lm_head|text_model)\.",
    projector_module="multi_modal_projector",
    tower_module="vision_tower",
    lora_target=_LLM_LINEAR,
)
# A model whose config has an audio_config and no vision_config (Voxtral and most HF audio LLMs
# name their parts this way).
_GENERIC_AUDIO = ModulePatterns(
    tower=r"(^|\.)(audio_tower|audio_encoder|audio_model|speech_encoder)\.",
    projector=r"(^|\.)(multi_modal_projector|audio_projector|mm_projector|projector|connector)\.",
    llm=r"(^|\.)(language_model|lm_head|text_model)\.",
    projector_module="multi_modal_projector",
    tower_module="audio_tower",
    lora_target=_LLM_LINEAR,
    modality="audio",
)


def patterns_for(model: PreTrainedModel) -> ModulePatterns:
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", "")
    if model_type in ARCHITECTURES:
        return ARCHITECTURES[model_type]
    if getattr(config, "audio_config", None) is not None and getattr(config, "vision_config", None) is None:
        return _GENERIC_AUDIO
    return _GENERIC


def tower_frozen(cfg: StudentConfig, pat: ModulePatterns) -> bool:
    """The freeze flag of ``pat``'s tower: ``freeze_audio_tower`` for audio, else ``freeze_vision_tower``."""
    return cfg.freeze_audio_tower if pat.modality == "audio" else cfg.freeze_vision_tower


def _torch_dtype(name: str) -> Any:
    return {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16,
            "float16": torch.float16}[name]


def missing_local_model(name_or_path: str | Path, key: str) -> str | None:
    """A message naming the problem and the fix when ``name_or_path`` is a local path with no
    model there (``key`` is the config setting it came from), else None. Hub ids
    (``name`` or ``org/name``) are left to ``from_pretrained``."""
    src = str(name_or_path)
    p = Path(src).expanduser()
    local = isinstance(name_or_path, Path) or src.startswith(("/", "~", ".")) or src.count("/") > 1
    fix = (f"point {key} at a local HF model directory (config.json and weights, as save_pretrained writes "
           "them) or at a hub id (org/name)")
    if local and not p.exists():
        return f"{key} {src!r} does not exist: there is no model at that path; {fix}"
    if p.is_dir() and not (p / "config.json").is_file():
        return f"{key} {src!r} is a directory without config.json, so not an HF model directory; {fix}"
    return None


@contextmanager
def refuse_pickle(src: str | Path) -> Iterator[None]:
    """Turn torch's refusal of a pickle that holds more than tensors (``weights_only=True``)
    into a clear error: mmtune never unpickles code from a user's checkpoint."""
    try:
        yield
    except pickle.UnpicklingError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        why = next((ln for ln in lines if "GLOBAL" in ln), lines[0] if lines else type(e).__name__)
        raise ValueError(
            f"refused to load {str(src)!r}: its weights are a pickle that holds more than tensors ({why}). mmtune "
            "loads checkpoints only as safetensors or with torch.load(weights_only=True) and never runs pickled "
            "code. Use a safetensors release of the model, or convert it where you trust it: "
            "model.save_pretrained(dir, safe_serialization=True)") from None


def auto_model_class(src: str, trust_remote_code: bool = False) -> type:
    """The Auto class that loads ``src``: ``AutoModelForImageTextToText`` for VLMs (LLaVA,
    Qwen2-VL, ...), ``AutoModelForMultimodalLM`` for audio LLMs it does not map (Qwen2-Audio,
    Voxtral, ...), chosen by the config's ``model_type``."""
    from transformers import AutoConfig, AutoModelForMultimodalLM
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
        MODEL_FOR_MULTIMODAL_LM_MAPPING_NAMES,
    )

    model_type = AutoConfig.from_pretrained(src, trust_remote_code=trust_remote_code).model_type
    if (model_type not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES
            and model_type in MODEL_FOR_MULTIMODAL_LM_MAPPING_NAMES):
        return AutoModelForMultimodalLM
    return AutoModelForImageTextToText


def load_student(name_or_path: str | Path, cfg: StudentConfig) -> tuple[PreTrainedModel, Any]:
    """Load a VLM or audio LLM and its processor by hub id or local directory.

    ``AutoModelForImageTextToText`` resolves LLaVA, Qwen2-VL and most HF VLMs from their
    config, ``AutoModelForMultimodalLM`` Qwen2-Audio and other audio LLMs
    (:func:`auto_model_class`); a local directory written by :func:`save_student` loads the
    same way. ``trust_remote_code`` stays off unless ``student.trust_remote_code`` is set.
    """
    from mmtune.models.presets import PRESETS

    src = str(name_or_path)
    if src in PRESETS:
        raise ValueError(
            f"{src!r} is a preset, not a checkpoint: run `mmtune student pretrain --config ...` "
            "(or mmtune.training.pretrain.ensure_generic_student) to build it, then load its directory")
    missing = missing_local_model(name_or_path, "student.name_or_path")
    if missing:
        raise FileNotFoundError(missing)
    try:
        processor = load_processor(src, trust_remote_code=cfg.trust_remote_code)
        # Weights load as safetensors, or from a .bin with weights_only=True (never unpickled code).
        with refuse_pickle(src):
            model = auto_model_class(src, cfg.trust_remote_code).from_pretrained(
                src, dtype=_torch_dtype(cfg.dtype), trust_remote_code=cfg.trust_remote_code, weights_only=True)
    except OSError as e:
        raise OSError(
            f"could not load student {src!r}: {e}\nPass a local directory holding config.json and "
            "the processor files, or a hub id (needs network; set HF_HUB_OFFLINE=0).") from e
    if cfg.image_max_pixels is not None:
        cap_image_pixels(processor, cfg.image_max_pixels)
    return model, processor


def load_processor(src: str, *, trust_remote_code: bool = False) -> Any:
    """``AutoProcessor.from_pretrained``, or an image-only processor where that fails for want
    of torchvision.

    Transformers 5 builds the *video* processor of Qwen2-VL/Qwen2.5-VL (and other VLMs that
    also take video) with torchvision, and ``AutoProcessor`` raises ``ImportError`` without it,
    although mmtune never passes a video. torchvision is not an mmtune dependency (its wheels
    are pinned to one torch build), so we then build the same processor class from the
    checkpoint's tokenizer, image processor (PIL backend) and chat template, with no video
    processor. Text and image handling (chat template, ``<|image_pad|>`` expansion,
    ``pixel_values``/``image_grid_thw``) is the processor class's own code either way.
    """
    try:
        return AutoProcessor.from_pretrained(src, trust_remote_code=trust_remote_code)
    except ImportError as e:
        if "torchvision" not in str(e).lower():
            raise
        try:
            processor = _image_only_processor(src, trust_remote_code)
        except Exception as inner:
            raise ImportError(f"{e}\nmmtune could not build an image-only processor either ({inner}); "
                              "install torchvision matching your torch build") from inner
        log.info("loaded %s's processor without its video processor (torchvision is not installed)", src)
        return processor


def _image_only_processor(src: str, trust_remote_code: bool) -> Any:
    import transformers
    from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    model_type = AutoConfig.from_pretrained(src, trust_remote_code=trust_remote_code).model_type
    name = PROCESSOR_MAPPING_NAMES.get(model_type)
    cls = getattr(transformers, name, None) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f"no processor class is registered for model type {model_type!r}")

    ImageOnly = _image_only_class(cls)
    parts = {"image_processor": lambda: AutoImageProcessor.from_pretrained(src, trust_remote_code=trust_remote_code),
             "tokenizer": lambda: AutoTokenizer.from_pretrained(src, trust_remote_code=trust_remote_code),
             "video_processor": lambda: None}
    attrs = ImageOnly.get_attributes()
    unknown = [a for a in attrs if a not in parts]
    if unknown:
        raise ValueError(f"{cls.__name__} also needs {unknown}")
    processor_dict, kwargs = ImageOnly.get_processor_dict(src)
    return ImageOnly.from_args_and_dict([parts[a]() for a in attrs], processor_dict, **kwargs)


def _image_only_class(cls: type) -> type:
    """``cls`` that accepts a missing video processor; registered in this module by a unique
    qualified name so that its instances pickle, and named like ``cls`` so that
    ``save_pretrained`` records the real processor class."""
    key = f"_ImageOnly{cls.__name__}"
    sub = globals().get(key)
    if sub is None:
        def check_argument_for_proper_class(self, argument_name, argument):
            if argument is None and argument_name == "video_processor":
                return None
            return cls.check_argument_for_proper_class(self, argument_name, argument)

        sub = type(cls.__name__, (cls,), {"check_argument_for_proper_class": check_argument_for_proper_class,
                                          "__module__": __name__, "__qualname__": key})
        globals()[key] = sub
    return sub


def cap_image_pixels(processor: Any, max_pixels: int) -> None:
    """Cap the pixels per image of a dynamic-resolution image processor (Qwen2-VL style:
    ``size = {shortest_edge: min pixels, longest_edge: max pixels}``, tokens ≈ pixels / 784).

    A fixed-size processor (LLaVA-1.5's CLIP, 336x336) has nothing to cap: logged, ignored.
    """
    ip = getattr(processor, "image_processor", None)
    size = getattr(ip, "size", None)
    get = (lambda k: size.get(k)) if hasattr(size, "get") else (lambda k: getattr(size, k, None))
    if ip is None or getattr(ip, "merge_size", None) is None or size is None or get("longest_edge") is None:
        log.warning("student.image_max_pixels=%d ignored: %s resizes to a fixed size", max_pixels,
                    type(ip).__name__)
        return
    shortest = get("shortest_edge")
    if shortest is not None and max_pixels < shortest:
        raise ValueError(f"student.image_max_pixels={max_pixels} is below the processor's minimum "
                         f"({shortest} pixels)")
    new = {"shortest_edge": shortest, "longest_edge": int(max_pixels)}
    ip.size = new if isinstance(size, dict) else type(size)(**new)


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
    adapters either". The tower follows ``freeze_vision_tower`` or ``freeze_audio_tower``
    by its modality (:func:`tower_frozen`).
    """
    pat = patterns_for(model)
    tower, proj, llm = re.compile(pat.tower), re.compile(pat.projector), re.compile(pat.llm)
    fixed = fixed_tower_params(model)
    frozen = tower_frozen(cfg, pat)
    for name, p in model.named_parameters():
        if proj.search(name):
            p.requires_grad_(not cfg.freeze_projector)
        elif tower.search(name):
            p.requires_grad_(not frozen and not (fixed and fixed.search(name)))
        elif llm.search(name):
            p.requires_grad_(not cfg.freeze_llm and not cfg.lora.enabled)
        else:
            p.requires_grad_(False)


def fixed_tower_params(model: PreTrainedModel) -> re.Pattern | None:
    """Tower parameters that stay frozen when the tower is unfrozen.

    * LLaVA-style models never use the vision encoder layers after ``vision_feature_layer``
      or the final layernorm (LLaVA-1.5 reads the penultimate CLIP layer's hidden states).
      They get no gradient, and DDP refuses trainable parameters that take no part in the loss.
    * Qwen2-Audio's ``embed_positions`` are Whisper's fixed sinusoids (the encoder builds them
      with ``requires_grad_(False)``); unfreezing the tower must not start training them.
    """
    if patterns_for(model) is ARCHITECTURES["qwen2_audio"]:
        return re.compile(r"(^|\.)audio_tower\.(.*\.)?embed_positions\.")
    if patterns_for(model) is not ARCHITECTURES["llava"]:
        return None
    layer = getattr(model.config, "vision_feature_layer", None)
    n = getattr(getattr(model.config, "vision_config", None), "num_hidden_layers", None)
    if not isinstance(layer, int) or not isinstance(n, int):
        return None  # several feature layers (or an unknown tower): leave everything trainable
    first_unused = layer % (n + 1)  # hidden_states[k] is the output of encoder layer k - 1
    parts = [r"post_layernorm\."]
    if first_unused < n:
        parts.append(r"encoder\.layers\.(" + "|".join(str(i) for i in range(first_unused, n)) + r")\.")
    return re.compile(r"(^|\.)vision_tower\.(.*\.)?(" + "|".join(parts) + ")")


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
    if not tower_frozen(cfg, pat):
        to_save.append(pat.tower_module)
    # Qwen2-VL's merger lives inside ``visual``: saving the tower already saves it.
    if not cfg.freeze_projector and not (to_save and pat.projector_in_tower):
        to_save.append(pat.projector_module)
    lcfg = LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=target,
        modules_to_save=to_save or None,
        task_type=None,
    )
    base_dtype = next(model.parameters()).dtype
    fixed = fixed_tower_params(model)
    with _quiet_peft():
        peft_model = get_peft_model(model, lcfg)
    if fixed is not None:  # PEFT made every parameter of the tower's trainable copy trainable
        for name, p in peft_model.named_parameters():
            if fixed.search(name):
                p.requires_grad_(False)
    upcast_saved_modules(peft_model, base_dtype)
    return peft_model


def upcast_saved_modules(model: torch.nn.Module, base_dtype: torch.dtype) -> None:
    """Keep the trainable copies of ``modules_to_save`` (the projector) in float32 when the
    base model is bf16/fp16.

    PEFT already keeps LoRA weights in float32 over a half-precision base
    (``autocast_adapter_dtype``), but copies ``modules_to_save`` in the base's dtype. AdamW on
    bf16 weights loses every update below half a bf16 step of the weight (~1/512 of it): at
    a 7B recipe's projector lr of 2e-5, about 70% of a 0.02-scale weight matrix never
    moves, so CoMMIT's encoder group would barely train (and its measured κ would be off).
    The copy is cast to float32 and wrapped with hooks that cast its inputs to float32 and
    its outputs back to the base dtype, so the rest of the model is unchanged.
    """
    if base_dtype not in (torch.bfloat16, torch.float16):
        return
    from peft.utils.other import ModulesToSaveWrapper

    for module in model.modules():
        if not isinstance(module, ModulesToSaveWrapper):
            continue
        for copy in module.modules_to_save.values():
            copy.float()
            copy.register_forward_pre_hook(_cast_inputs_to(torch.float32), with_kwargs=True)
            copy.register_forward_hook(_cast_output_to(base_dtype))


def _cast_floats(obj: Any, dtype: torch.dtype) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(dtype) if obj.is_floating_point() and obj.dtype != dtype else obj
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
        return type(obj)(*(_cast_floats(v, dtype) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cast_floats(v, dtype) for v in obj)
    if isinstance(obj, dict):  # includes transformers' ModelOutput
        for k in list(obj.keys()):
            obj[k] = _cast_floats(obj[k], dtype)
        return obj
    return obj


def _cast_inputs_to(dtype: torch.dtype):
    def hook(module, args, kwargs):
        return _cast_floats(args, dtype), _cast_floats(kwargs, dtype)
    return hook


def _cast_output_to(dtype: torch.dtype):
    def hook(module, args, output):
        return _cast_floats(output, dtype)
    return hook


def lora_target(model: PreTrainedModel, lora: LoraSettings) -> str:
    """The LoRA target regex, checked to hit at least one module (and no tower module)."""
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
    enc = re.compile(f"{pat.tower}|{pat.projector}")
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


@contextmanager
def _quiet_peft() -> Iterator[None]:
    """PEFT 0.21's PeftModel reads transformers 5's deprecated ``is_gradient_checkpointing``, which
    warns (FutureWarning) on every adapter attached: in every evaluation actor's log, and nothing
    a user can act on. Only that warning is silenced."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def load_adapter(base: PreTrainedModel, adapter_dir: str | Path, *, trainable: bool = False):
    """Attach saved adapters (and saved projector) to a freshly loaded base student."""
    from peft import PeftModel

    d = Path(adapter_dir)
    conf = d / "adapter_config.json"
    if not conf.is_file():
        raise FileNotFoundError(f"{d} is not a saved adapter (no adapter_config.json); pass the adapter directory "
                                "a training run wrote (its adapter/ folder)")
    # PEFT loads adapter_model.safetensors, or a .bin with torch.load(weights_only=True).
    try:
        with refuse_pickle(d), _quiet_peft():
            return PeftModel.from_pretrained(base, str(d), is_trainable=trainable)
    except RuntimeError as e:
        if "size mismatch" not in str(e) and "Error(s) in loading state_dict" not in str(e):
            raise
        raise ValueError(adapter_mismatch(d, base, e)) from None


def adapter_mismatch(adapter_dir: str | Path, base: Any, err: BaseException) -> str:
    """The message for adapter weights that do not fit ``base``: trained on another model."""
    trained_on = None
    try:
        trained_on = json.loads((Path(adapter_dir) / "adapter_config.json").read_text()).get("base_model_name_or_path")
    except (OSError, ValueError):
        pass
    base_name = getattr(getattr(base, "config", None), "_name_or_path", None) or type(base).__name__
    first = next((ln.strip() for ln in str(err).splitlines() if "size mismatch" in ln), str(err).splitlines()[0])
    return (f"the adapter in {adapter_dir} was trained on a different model ({trained_on or 'unknown base'}) and "
            f"does not fit {base_name} ({first[:300]}); load it onto the student it was trained from, or train a "
            "new adapter for this one")


unused_vision_params = fixed_tower_params  # the pre-audio name
