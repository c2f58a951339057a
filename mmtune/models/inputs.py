"""Turning Samples into model inputs, through the processor's own chat template.

Prompts are built with ``processor.apply_chat_template`` over HF's structured message
format, so the same code serves the tiny preset, ``llava-hf`` checkpoints and Qwen2-VL:
each model formats its own conversation and expands its own image placeholders.
Training labels cover the response tokens only (the prompt is masked with -100).
"""

from __future__ import annotations

import io
from typing import Any, Sequence

import torch
from PIL import Image

IGNORE_INDEX = -100


def decode_image(data: bytes | None) -> Image.Image | None:
    if data is None:
        return None
    return Image.open(io.BytesIO(data)).convert("RGB")


def user_message(instruction: str, has_image: bool) -> dict[str, Any]:
    content: list[dict[str, Any]] = [{"type": "image"}] if has_image else []
    content.append({"type": "text", "text": instruction})
    return {"role": "user", "content": content}


def prompt_text(processor: Any, instruction: str, has_image: bool) -> str:
    return processor.apply_chat_template(
        [user_message(instruction, has_image)], add_generation_prompt=True, tokenize=False)


def full_text(processor: Any, instruction: str, response: str, has_image: bool) -> str:
    """The whole conversation, ending in the tokenizer's EOS token.

    Some templates close the assistant's turn with EOS (the tiny preset) or with an
    end-of-turn token that is EOS (Qwen2-VL-Instruct's ``<|im_end|>``); llava-hf's LLaVA-1.5
    template ends the turn with a space and no ``</s>``. Trained on that, a student never
    learns to stop and decodes until ``max_new_tokens``. So EOS is appended when the
    rendered conversation does not already end with it (LLaVA's own training appends
    ``</s>`` after every reply).
    """
    msgs = [user_message(instruction, has_image),
            {"role": "assistant", "content": [{"type": "text", "text": response}]}]
    text = processor.apply_chat_template(msgs, tokenize=False)
    eos = getattr(_tokenizer(processor), "eos_token", None)
    if eos and not text.rstrip().endswith(eos):
        text += eos
    return text


def _tokenizer(processor: Any) -> Any:
    return getattr(processor, "tokenizer", processor)


def _encode(processor: Any, texts: list[str], images: list[Image.Image], padding_side: str) -> dict:
    tok = _tokenizer(processor)
    old = tok.padding_side
    tok.padding_side = padding_side
    try:
        return processor(text=texts, images=images or None, return_tensors="pt", padding=True)
    finally:
        tok.padding_side = old


def encode_for_generation(processor: Any, instructions: Sequence[str],
                          images: Sequence[bytes | None]) -> dict[str, torch.Tensor]:
    """Left-padded prompts (decoder-only generation needs the padding on the left)."""
    pil = [decode_image(b) for b in images]
    texts = [prompt_text(processor, ins, im is not None) for ins, im in zip(instructions, pil)]
    return dict(_encode(processor, texts, [im for im in pil if im is not None], "left"))


def encode_for_training(processor: Any, instructions: Sequence[str], responses: Sequence[str],
                        images: Sequence[bytes | None]) -> dict[str, torch.Tensor]:
    """Right-padded prompt+response with labels on the response tokens only."""
    pil = [decode_image(b) for b in images]
    present = [im for im in pil if im is not None]
    fulls, prompts = [], []
    for ins, resp, im in zip(instructions, responses, pil):
        p = prompt_text(processor, ins, im is not None)
        f = full_text(processor, ins, resp, im is not None)
        if not f.startswith(p):
            # A template that renders the assistant turn differently from its generation
            # prompt would mask the wrong tokens; fail loudly rather than mistrain.
            raise ValueError("chat template: the generation prompt is not a prefix of the full "
                             f"conversation ({p[-40:]!r} vs {f[len(p) - 40:len(p)]!r})")
        prompts.append(p)
        fulls.append(f)
    batch = dict(_encode(processor, fulls, present, "right"))
    prompt_lens = _encode(processor, prompts, present, "right")["attention_mask"].sum(dim=1)
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
