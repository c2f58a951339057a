"""Tiny random *twins* of the recipe models, for smoke tests without GPUs or the hub.

A twin has the real model's architecture class, processor class, special tokens and chat
template, at a size a 2-core CPU runs in seconds, with random weights and a byte-level
BPE tokenizer trained locally. It is written with ``save_pretrained`` in the layout of the
hub checkpoint, so ``load_student``/``HFBackend`` read it through exactly the code path the
7B checkpoints take (``AutoProcessor``/``AutoModelForImageTextToText``/
``AutoModelForMultimodalLM``/``AutoTokenizer``/``AutoModelForCausalLM`` on a directory).

=====================  =====================================  ====================================
twin of                classes                                what is the real one's
=====================  =====================================  ====================================
llava-1.5-7b-hf        LlavaForConditionalGeneration (CLIP    llava-hf's chat template (no EOS after
                       vision + Llama), LlavaProcessor        the reply), ``<image>``, ``<pad>``, the
                       (CLIP image processor)                 penultimate vision layer, 'default'
                                                              feature selection (CLS dropped)
Qwen2-VL-7B-Instruct   Qwen2VLForConditionalGeneration,       the chat template, ``<|vision_start|>``
                       Qwen2VLProcessor (Qwen2-VL image       ``<|image_pad|>`` ``<|vision_end|>``
                       processor: dynamic resolution,         ``<|im_start|>`` ``<|im_end|>`` (EOS)
                       ``image_grid_thw``)                    ``<|endoftext|>`` (pad), M-RoPE
Qwen2.5-7B-Instruct    Qwen2ForCausalLM + ChatML tokenizer    ChatML template with the default system
(the teacher)                                                 prompt, EOS ``<|im_end|>``
Qwen2-Audio-7B-        Qwen2AudioForConditionalGeneration     the chat template (an audio part is
Instruct               (Whisper-style encoder + linear        recognised by its ``audio`` key),
                       projector + Qwen2), Qwen2AudioProcessor ``<|AUDIO|>`` ``<|audio_bos|>``
                       (WhisperFeatureExtractor)              ``<|audio_eos|>``, 128 mel bins, 30 s
                                                              chunks (1500 encoder positions, clips
                                                              padded and masked), sinusoidal positions
=====================  =====================================  ====================================

Not twinned: the weights (random), the tokenizers' vocabularies (trained on the given
texts), image resolution (28 px instead of 336 px / megapixels), widths and depths.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from mmtune.config import TinyLlavaPreset

# llava-hf/llava-1.5-7b-hf's chat_template, verbatim: the assistant's turn ends with a
# space and no </s> (mmtune.models.inputs.full_text appends EOS for training).
LLAVA15_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}"
    "{% endif %}{# Render all images first #}{% for content in message['content'] | selectattr('type', "
    "'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}{# Render all text next #}{% if message['role'] != "
    "'assistant' %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' '}}{% endfor %}{% else %}{% for content in message['content'] | "
    "selectattr('type', 'equalto', 'text') %}{% generation %}{{ content['text'] + ' '}}{% endgeneration %}"
    "{% endfor %}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

# Qwen/Qwen2-VL-7B-Instruct's chat_template, verbatim.
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in "
    "messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful "
    "assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}{% if "
    "content['type'] == 'image' or 'image' in content or 'image_url' in content %}{% set image_count.value = "
    "image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video {{ video_count.value }}: "
    "{% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content %}{{ content['text'] }}"
    "{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}"
)

# Qwen2.5-Instruct's ChatML template without its tool-calling branches (the teacher gets
# plain-text user turns only).
QWEN25_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\n' + messages[0]['content'] + "
    "'<|im_end|>\n' }}{%- else %}{{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a "
    "helpful assistant.<|im_end|>\n' }}{%- endif %}{%- for message in messages %}{%- if not "
    "(message.role == 'system' and loop.first) %}{{- '<|im_start|>' + message.role + '\n' + message.content + "
    "'<|im_end|>' + '\n' }}{%- endif %}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' "
    "}}{%- endif %}"
)

# Qwen2's pre-tokenizer split (digits one by one, letters with one leading non-letter).
_QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
               r"\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>",
                       "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>",
                       "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]


def qwen_tokenizer(texts: Iterable[str], vocab_size: int = 512, chat_template: str | None = None,
                   special_tokens: list[str] | None = None) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with Qwen2's split rule and special tokens (EOS
    ``<|im_end|>``, pad ``<|endoftext|>``, no BOS, as in Qwen2-VL-/Qwen2.5-Instruct);
    ``special_tokens`` replaces Qwen2-VL's list (it must hold those three)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_QWEN_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special_tokens or QWEN_SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(list(texts), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   model_max_length=32768, chat_template=chat_template)


def save_llava15_twin(out: str | Path, texts: Iterable[str], *, image_size: int = 28, seed: int = 0) -> Path:
    """A tiny ``llava-hf/llava-1.5-7b-hf``: CLIP (patch 14, penultimate layer, CLS dropped) +
    2-layer MLP projector + Llama, ``<image>`` expanded to (image_size / 14)^2 tokens."""
    from mmtune.models.presets import build_tiny_llava

    torch.manual_seed(seed)
    preset = TinyLlavaPreset(vision_hidden=32, vision_layers=2, vision_heads=2, patch_size=14, text_hidden=64,
                             text_layers=2, text_heads=2, text_intermediate=128, vocab_size=512)
    model, processor = build_tiny_llava(preset, list(texts), image_size=image_size)
    model.config.vision_feature_layer = -2  # LLaVA-1.5 reads the penultimate CLIP layer
    processor.chat_template = LLAVA15_CHAT_TEMPLATE
    processor.tokenizer.chat_template = LLAVA15_CHAT_TEMPLATE
    out = Path(out)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def save_qwen2_vl_twin(out: str | Path, texts: Iterable[str], *, min_pixels: int = 28 * 28,
                       max_pixels: int = 56 * 56, seed: int = 0) -> Path:
    """A tiny ``Qwen/Qwen2-VL-7B-Instruct``: Qwen2-VL vision tower (patch 14, 2x2 merger,
    temporal patch 2) + Qwen2 decoder with M-RoPE; images of at most ``max_pixels`` become
    at most max_pixels / 784 ``<|image_pad|>`` tokens.

    Saved as the hub repo is laid out: model, tokenizer, ``preprocessor_config.json`` naming
    ``Qwen2VLProcessor`` and the chat template (written part by part, because
    ``Qwen2VLProcessor.save_pretrained`` needs its torchvision video processor).
    """
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    torch.manual_seed(seed)
    tok = qwen_tokenizer(list(texts) + ["You are a helpful assistant.", "system user assistant"],
                         chat_template=QWEN2_VL_CHAT_TEMPLATE)
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    image_processor = Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels)
    config = Qwen2VLConfig(
        text_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, vocab_size=len(tok), max_position_embeddings=4096,
                         rope_scaling={"type": "mrope", "mrope_section": [4, 6, 6]},
                         bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                         pad_token_id=ids["<|endoftext|>"], tie_word_embeddings=False),
        vision_config=dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, in_channels=3),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    model = Qwen2VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.bos_token_id = ids["<|endoftext|>"]
    out = Path(out)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    image_processor.save_pretrained(out)
    pre = out / "preprocessor_config.json"
    pre.write_text(json.dumps({**json.loads(pre.read_text()), "processor_class": "Qwen2VLProcessor"}, indent=2))
    (out / "chat_template.jinja").write_text(QWEN2_VL_CHAT_TEMPLATE)
    return out


# Qwen/Qwen2-Audio-7B-Instruct's chat template: ChatML with the default system prompt; an audio
# part is recognised by an ``audio`` or ``audio_url`` key only (not by its type).
QWEN2_AUDIO_CHAT_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}{% for message in messages %}{% if loop.first and "
    "message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}{% if 'audio' in content or 'audio_url' in "
    "content %}{% set audio_count.value = audio_count.value + 1 %}Audio {{ audio_count.value }}: "
    "<|audio_bos|><|AUDIO|><|audio_eos|>\n{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% endif %}"
)


def save_qwen2_audio_twin(out: str | Path, texts: Iterable[str], *, seed: int = 0) -> Path:
    """A tiny ``Qwen/Qwen2-Audio-7B-Instruct``: Whisper-style audio encoder (128 mel bins, 30 s
    chunks = 3000 frames = 1500 positions, sinusoidal positions) + linear projector + Qwen2
    decoder; a clip of t seconds becomes about 25 * t ``<|AUDIO|>`` tokens (the padding up to
    30 s is masked out of the encoder's attention and the token count).

    Saved as the hub repo is laid out (model, tokenizer with the chat template,
    ``preprocessor_config.json`` naming ``Qwen2AudioProcessor``), so ``AutoProcessor`` and
    ``AutoModelForMultimodalLM`` load it.
    """
    from transformers import (
        Qwen2AudioConfig,
        Qwen2AudioForConditionalGeneration,
        Qwen2AudioProcessor,
        WhisperFeatureExtractor,
    )
    from transformers.models.whisper.modeling_whisper import sinusoids

    from mmtune.models.presets import AUDIO_TOKEN, QWEN2_AUDIO_SPECIAL_TOKENS

    torch.manual_seed(seed)
    tok = qwen_tokenizer(list(texts) + ["You are a helpful assistant.", "system user assistant Audio 1:"],
                         chat_template=QWEN2_AUDIO_CHAT_TEMPLATE, special_tokens=QWEN2_AUDIO_SPECIAL_TOKENS)
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN2_AUDIO_SPECIAL_TOKENS}
    extractor = WhisperFeatureExtractor(feature_size=128, sampling_rate=16000, hop_length=160, chunk_length=30,
                                        n_fft=400, padding_value=0.0, return_attention_mask=True)
    processor = Qwen2AudioProcessor(feature_extractor=extractor, tokenizer=tok, chat_template=QWEN2_AUDIO_CHAT_TEMPLATE)
    config = Qwen2AudioConfig(
        audio_config={"model_type": "qwen2_audio_encoder", "num_mel_bins": 128, "encoder_layers": 2,
                      "encoder_attention_heads": 2, "encoder_ffn_dim": 64, "d_model": 32,
                      "max_source_positions": 1500},
        text_config={"model_type": "qwen2", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": len(tok),
                     "max_position_embeddings": 8192, "bos_token_id": ids["<|endoftext|>"],
                     "eos_token_id": ids["<|im_end|>"], "pad_token_id": ids["<|endoftext|>"],
                     "tie_word_embeddings": False},
        audio_token_index=ids[AUDIO_TOKEN])
    model = Qwen2AudioForConditionalGeneration(config)
    with torch.no_grad():
        pos = model.model.audio_tower.embed_positions
        pos.weight.copy_(sinusoids(*pos.weight.shape))
    model.generation_config.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    out = Path(out)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def save_qwen25_instruct_twin(out: str | Path, texts: Iterable[str], *, seed: int = 0) -> Path:
    """A tiny ``Qwen/Qwen2.5-7B-Instruct`` (the recipes' hub teacher): Qwen2ForCausalLM and a
    ChatML tokenizer with its chat template, so the ``hf`` backend wraps prompts in it."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    tok = qwen_tokenizer(list(texts) + ["You are Qwen, created by Alibaba Cloud. You are a helpful assistant."],
                         chat_template=QWEN25_CHAT_TEMPLATE)
    config = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
                         bos_token_id=tok.convert_tokens_to_ids("<|endoftext|>"), eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, tie_word_embeddings=True)
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = [tok.eos_token_id, tok.convert_tokens_to_ids("<|endoftext|>")]
    model.generation_config.pad_token_id = tok.pad_token_id
    out = Path(out)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


__all__ = [
    "LLAVA15_CHAT_TEMPLATE",
    "QWEN2_AUDIO_CHAT_TEMPLATE",
    "QWEN2_VL_CHAT_TEMPLATE",
    "QWEN25_CHAT_TEMPLATE",
    "QWEN_SPECIAL_TOKENS",
    "qwen_tokenizer",
    "save_llava15_twin",
    "save_qwen2_audio_twin",
    "save_qwen2_vl_twin",
    "save_qwen25_instruct_twin",
]
