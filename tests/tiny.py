"""Tiny real-architecture models for tests, saved with save_pretrained like a 7B checkpoint."""

import io
from pathlib import Path

import pyarrow.parquet as pq
import torch
from PIL import Image

from mmtune.config import TinyLlavaPreset
from mmtune.data.schema import make_sample, to_table
from mmtune.models.inputs import encode_for_training
from mmtune.models.presets import build_tiny_llava, train_tokenizer


def _png(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(buf, format="PNG")
    return buf.getvalue()


COLORS = {"red": (220, 20, 20), "blue": (20, 20, 220), "green": (20, 200, 20), "yellow": (230, 230, 20)}


def _samples():
    out = []
    for i, (name, rgb) in enumerate(COLORS.items()):
        out.append(make_sample(id=f"s{i}", task="colour", instruction="What colour is the picture?",
                               response=f"The picture is {name}.\nAnswer: {name}", image=_png(rgb)))
    out.append(make_sample(id="mc", task="mc", instruction="Which colour? A. red B. blue",
                           response="The picture is blue.\nAnswer: B", image=_png(COLORS["blue"]),
                           options=["red", "blue"]))
    return out


def make_overfit_student(root: Path):
    """A tiny LLaVA overfit on five colour items: (student dir, eval parquet, samples)."""
    torch.manual_seed(0)
    samples = _samples()
    texts = [s["instruction"] for s in samples] + [s["response"] for s in samples]
    preset = TinyLlavaPreset(vision_hidden=32, vision_layers=1, vision_heads=2, text_hidden=64,
                             text_layers=2, text_heads=2, text_intermediate=128, vocab_size=320)
    model, processor = build_tiny_llava(preset, texts * 4, image_size=32)
    batch = encode_for_training(processor, [s["instruction"] for s in samples],
                                [s["response"] for s in samples], [s["image"] for s in samples])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert loss.item() < 0.05, f"tiny model failed to overfit 5 items (loss {loss.item():.3f})"
    out = root / "student"
    model.save_pretrained(out)
    processor.save_pretrained(out)
    data = root / "eval.parquet"
    pq.write_table(to_table(samples), data)
    return out, data, samples


def make_tiny_llama(out: Path, texts: list[str], hidden: int = 32, layers: int = 2) -> Path:
    """A randomly initialised tiny Llama causal LM and its locally trained tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tok = train_tokenizer(texts, 400)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
                      max_position_embeddings=1024, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out
