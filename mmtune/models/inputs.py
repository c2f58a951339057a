"""Turning Samples into model inputs, through the processor's own chat template.

Prompts are built with ``processor.apply_chat_template`` over HF's structured message
format, so the same code serves the tiny presets, ``llava-hf`` checkpoints, Qwen2-VL and
Qwen2-Audio: each model formats its own conversation and expands its own image or audio
placeholders. A sample's media decide the parts of its user turn: ``image`` bytes (PNG,
JPEG, ...) become an image part and go to the processor's image processor; ``audio`` bytes
(WAV, FLAC, ...) become an audio part and go to its feature extractor as a mono waveform at
the extractor's sampling rate. Training labels cover the response tokens only (the prompt is
masked with -100).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

IGNORE_INDEX = -100
log = logging.getLogger(__name__)


def decode_image(data: bytes | None) -> Image.Image | None:
    if data is None:
        return None
    return Image.open(io.BytesIO(data)).convert("RGB")


def _name(ids: Sequence[Any] | None, i: int) -> str:
    return f"sample {str(ids[i])!r}" if ids is not None else f"sample #{i} of the batch"


def decode_audio(data: bytes | None, sampling_rate: int | None = None, name: str = "sample") -> np.ndarray | None:
    """WAV/FLAC/OGG bytes -> a float32 mono waveform (channels averaged), or None.

    The waveform must already be at ``sampling_rate`` (the feature extractor's): mmtune does
    not resample behind the user's back, because a silently resampled clip would train on other
    data than the user reviewed. Errors name the sample and the fix.
    """
    if data is None:
        return None
    import soundfile as sf

    try:
        wav, sr = sf.read(io.BytesIO(bytes(data)), dtype="float32", always_2d=True)
    except (RuntimeError, TypeError, ValueError) as e:  # soundfile: LibsndfileError is a RuntimeError
        raise ValueError(f"{name}: its audio does not decode ({type(e).__name__}: {e}); re-import the data with "
                         "`mmtune data import` (it quarantines undecodable audio) or fix the file") from None
    if wav.shape[0] == 0:
        raise ValueError(f"{name}: its audio is empty (0 samples); re-import the data with `mmtune data import`")
    if sampling_rate is not None and sr != sampling_rate:
        raise ValueError(f"{name}: its audio is sampled at {sr} Hz but the student's feature extractor expects "
                         f"{sampling_rate} Hz; resample the clips to {sampling_rate} Hz (e.g. with soundfile and "
                         "scipy.signal.resample_poly, or `sox in.wav -r 16000 out.wav`) and re-import them")
    return wav.mean(axis=1) if wav.shape[1] > 1 else wav[:, 0]


def user_message(instruction: str, has_image: bool, has_audio: bool = False) -> dict[str, Any]:
    content: list[dict[str, Any]] = [{"type": "image"}] if has_image else []
    if has_audio:
        # The "audio" key is there for Qwen2-Audio-Instruct's hub template, which recognises an
        # audio part by that key only; the waveform itself goes to the processor separately.
        content.append({"type": "audio", "audio": ""})
    content.append({"type": "text", "text": instruction})
    return {"role": "user", "content": content}


def prompt_text(processor: Any, instruction: str, has_image: bool, has_audio: bool = False) -> str:
    return processor.apply_chat_template(
        [user_message(instruction, has_image, has_audio)], add_generation_prompt=True, tokenize=False)


def full_text(processor: Any, instruction: str, response: str, has_image: bool, has_audio: bool = False) -> str:
    """The whole conversation, ending in the tokenizer's EOS token.

    Some templates close the assistant's turn with EOS (the tiny preset) or with an
    end-of-turn token that is EOS (Qwen2-VL-Instruct's ``<|im_end|>``); llava-hf's LLaVA-1.5
    template ends the turn with a space and no ``</s>``. Trained on that, a student never
    learns to stop and decodes until ``max_new_tokens``. So EOS is appended when the
    rendered conversation does not already end with it (LLaVA's own training appends
    ``</s>`` after every reply).
    """
    msgs = [user_message(instruction, has_image, has_audio),
            {"role": "assistant", "content": [{"type": "text", "text": response}]}]
    text = processor.apply_chat_template(msgs, tokenize=False)
    eos = getattr(_tokenizer(processor), "eos_token", None)
    if eos and not text.rstrip().endswith(eos):
        text += eos
    return text


def _tokenizer(processor: Any) -> Any:
    return getattr(processor, "tokenizer", processor)


class _Media:
    """A batch's decoded media: per-sample flags, and the present items in sample order."""

    def __init__(self, processor: Any, images: Sequence[bytes | None], audios: Sequence[bytes | None] | None,
                 ids: Sequence[Any] | None):
        n = len(images)
        audios = [None] * n if audios is None else list(audios)
        if len(audios) != n:
            raise ValueError(f"{n} images but {len(audios)} audio entries: pass one (or None) per sample")
        if any(b is not None for b in images) and getattr(processor, "image_processor", None) is None:
            i = next(i for i, b in enumerate(images) if b is not None)
            raise ValueError(f"{_name(ids, i)} carries an image but the student's {type(processor).__name__} takes "
                             "no images; use a vision student for image data (student.name_or_path)")
        fe = getattr(processor, "feature_extractor", None) if any(b is not None for b in audios) else None
        if any(b is not None for b in audios) and fe is None:
            i = next(i for i, b in enumerate(audios) if b is not None)
            raise ValueError(f"{_name(ids, i)} carries audio but the student's {type(processor).__name__} takes no "
                             "audio; use an audio student for audio data (student.name_or_path=tiny-qwen2-audio, "
                             "or an audio LLM such as Qwen/Qwen2-Audio-7B-Instruct)")
        self.sampling_rate = getattr(fe, "sampling_rate", None)
        self.pil = [decode_image(b) for b in images]
        self.wav = [decode_audio(b, self.sampling_rate, _name(ids, i)) for i, b in enumerate(audios)]
        limit = getattr(fe, "n_samples", None)
        long = [i for i, w in enumerate(self.wav) if w is not None and limit and len(w) > limit]
        if long:  # the extractor truncates to its chunk; say so rather than drop audio silently
            log.warning("%d clip(s) are longer than the feature extractor's %.1f s chunk and are truncated to it "
                        "(first: %s, %.2f s)", len(long), limit / self.sampling_rate, _name(ids, long[0]),
                        len(self.wav[long[0]]) / self.sampling_rate)

    def flags(self, i: int) -> tuple[bool, bool]:
        return self.pil[i] is not None, self.wav[i] is not None

    @property
    def images(self) -> list[Image.Image]:
        return [im for im in self.pil if im is not None]

    @property
    def audios(self) -> list[np.ndarray]:
        return [w for w in self.wav if w is not None]


def _encode(processor: Any, texts: list[str], media: _Media | None, padding_side: str) -> dict:
    """The processor on ``texts`` and ``media`` (None: the tokenizer alone, placeholders unexpanded)."""
    tok = _tokenizer(processor)
    old = tok.padding_side
    tok.padding_side = padding_side
    try:
        if media is None:
            return tok(texts, return_tensors="pt", padding=True)
        audios = media.audios
        if not audios:  # exactly the call image/text-only students always got
            return processor(text=texts, images=media.images or None, return_tensors="pt", padding=True)
        kwargs: dict[str, Any] = {"images": media.images} if media.images else {}
        return processor(text=texts, audio=audios, sampling_rate=media.sampling_rate, return_tensors="pt",
                         padding=True, **kwargs)
    finally:
        tok.padding_side = old


def _prompt_lengths(processor: Any, fulls: list[str], prompts: list[str], media: _Media,
                    full_mask: torch.Tensor) -> torch.Tensor:
    """Tokens of each prompt as the processor expands it.

    With audio, a second pass over the prompts would compute every clip's log-mel features
    again (half the cost of encoding a batch). All of a sample's audio sits in its prompt, so
    the expansion adds the same number of tokens to the prompt as to the whole conversation:
    prompt = prompt_text_only + (full - full_text_only), from two tokenizer-only passes.
    """
    if not media.audios or media.images:
        return _encode(processor, prompts, media, "right")["attention_mask"].sum(dim=1)
    full_plain = _encode(processor, fulls, None, "right")["attention_mask"].sum(dim=1)
    prompt_plain = _encode(processor, prompts, None, "right")["attention_mask"].sum(dim=1)
    return prompt_plain + (full_mask.sum(dim=1) - full_plain)


def encode_for_generation(processor: Any, instructions: Sequence[str], images: Sequence[bytes | None],
                          audios: Sequence[bytes | None] | None = None, *,
                          ids: Sequence[Any] | None = None) -> dict[str, torch.Tensor]:
    """Left-padded prompts (decoder-only generation needs the padding on the left).

    ``images``/``audios``: one entry (bytes or None) per instruction; ``ids`` name the samples
    in errors (an undecodable clip, a clip at the wrong sampling rate).
    """
    media = _Media(processor, images, audios, ids)
    texts = [prompt_text(processor, ins, *media.flags(i)) for i, ins in enumerate(instructions)]
    return dict(_encode(processor, texts, media, "left"))


def encode_for_training(processor: Any, instructions: Sequence[str], responses: Sequence[str],
                        images: Sequence[bytes | None], audios: Sequence[bytes | None] | None = None, *,
                        ids: Sequence[Any] | None = None) -> dict[str, torch.Tensor]:
    """Right-padded prompt+response with labels on the response tokens only."""
    media = _Media(processor, images, audios, ids)
    fulls, prompts = [], []
    for i, (ins, resp) in enumerate(zip(instructions, responses)):
        p = prompt_text(processor, ins, *media.flags(i))
        f = full_text(processor, ins, resp, *media.flags(i))
        if not f.startswith(p):
            # A template that renders the assistant turn differently from its generation
            # prompt would mask the wrong tokens; fail loudly rather than mistrain.
            raise ValueError("chat template: the generation prompt is not a prefix of the full "
                             f"conversation ({p[-40:]!r} vs {f[len(p) - 40:len(p)]!r})")
        prompts.append(p)
        fulls.append(f)
    batch = dict(_encode(processor, fulls, media, "right"))
    prompt_lens = _prompt_lengths(processor, fulls, prompts, media, batch["attention_mask"])
    labels = batch["input_ids"].clone()
    positions = torch.arange(labels.shape[1]).unsqueeze(0)
    labels[positions < prompt_lens.unsqueeze(1)] = IGNORE_INDEX
    labels[batch["attention_mask"] == 0] = IGNORE_INDEX
    batch["labels"] = labels
    return batch


def move_to(batch: dict[str, Any], device: torch.device | str, dtype: torch.dtype | None = None) -> dict:
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            v = v.to(device)
            if dtype is not None and v.is_floating_point():
                v = v.to(dtype)
        out[k] = v
    return out
