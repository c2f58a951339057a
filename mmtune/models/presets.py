"""The embedded presets: transformers' real multimodal classes at a size a laptop CPU trains.

Nothing here is a toy re-implementation.

* ``tiny-llava`` (vision) is a ``LlavaForConditionalGeneration`` (CLIP vision tower + MLP
  projector + Llama decoder) and a ``LlavaProcessor`` (CLIP image processor + a fast BPE
  tokenizer trained locally with ``tokenizers``).
* ``tiny-qwen2-audio`` (audio) is a ``Qwen2AudioForConditionalGeneration`` (Whisper-style
  audio encoder + linear projector + Qwen2 decoder) and a ``Qwen2AudioProcessor``
  (``WhisperFeatureExtractor`` + a locally trained BPE tokenizer with Qwen2's split rule and
  the ``<|AUDIO|>`` tokens).

Both are written with ``save_pretrained`` and read back with ``from_pretrained``, the path a
7B checkpoint takes, so every later stage exercises the same loading code users hit with
``llava-hf/...`` or ``Qwen/Qwen2-Audio-7B-Instruct``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from mmtune.config import TinyLlavaPreset, TinyQwen2AudioPreset

PRESETS = ("tiny-llava", "tiny-qwen2-audio")  # names student.name_or_path may give instead of a model

IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", IMAGE_TOKEN]

# LLaVA-1.5's conversation format ("USER: <image>\n... ASSISTANT: ..."), written as a
# standard HF chat template over the structured message format (content lists with
# {"type": "image"} / {"type": "text"} parts), so the same prompting code drives this
# preset, llava-hf checkpoints and Qwen2-VL.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}"
    "{{ message['content'][0]['text'] if message['content'] is not string else message['content'] }}\n"
    "{% elif message['role'] == 'user' %}USER: "
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>\n{% endif %}{% endfor %}"
    "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}"
    "{% endif %} "
    "{% else %}ASSISTANT: "
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}"
    "{% endif %}</s>"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

# CLIP's normalisation constants, as in openai/clip-vit-large-patch14.
_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts``.

    Byte-level so that any text (including phrasings never seen in training) encodes
    without ``<unk>``; BPE so that frequent corpus words become single tokens, which keeps
    sequences short and training fast on a CPU.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": IMAGE_TOKEN},
        model_max_length=4096,
    )


def build_tiny_llava(
    preset: TinyLlavaPreset, texts: Iterable[str], image_size: int
) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """A randomly initialised tiny LLaVA and its processor (tokenizer trained on ``texts``)."""
    if image_size % preset.patch_size:
        raise ValueError(
            f"image size {image_size} is not a multiple of student.preset.patch_size "
            f"({preset.patch_size}); change one of them")
    tokenizer = train_tokenizer(texts, preset.vocab_size)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_mean=_CLIP_MEAN,
        image_std=_CLIP_STD,
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=preset.patch_size,
        # "default" drops CLIP's CLS token, so an image is (size/patch)^2 tokens; the
        # processor must agree with the model's config or the token counts mismatch.
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=preset.vision_hidden,
            intermediate_size=preset.vision_hidden * 2,
            num_hidden_layers=preset.vision_layers,
            num_attention_heads=preset.vision_heads,
            image_size=image_size,
            patch_size=preset.patch_size,
        ),
        text_config=LlamaConfig(
            hidden_size=preset.text_hidden,
            intermediate_size=preset.text_intermediate,
            num_hidden_layers=preset.text_layers,
            num_attention_heads=preset.text_heads,
            num_key_value_heads=preset.text_heads,
            vocab_size=len(tokenizer),
            max_position_embeddings=preset.max_position,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            tie_word_embeddings=False,
        ),
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        projector_hidden_act="gelu",
    )
    model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model, processor


# --------------------------------------------------------------------------- tiny-qwen2-audio
AUDIO_TOKEN = "<|AUDIO|>"
AUDIO_BOS = "<|audio_bos|>"
AUDIO_EOS = "<|audio_eos|>"
QWEN2_AUDIO_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", AUDIO_TOKEN, AUDIO_BOS, AUDIO_EOS]
# Whisper's front end, which Qwen2-Audio keeps: 16 kHz, 25 ms window, 10 ms hop.
SAMPLING_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160
# Qwen2-Audio's encoder: conv2 halves the mel frames, the average pool halves them again.
FRAMES_PER_POSITION = 2

# Qwen2-Audio-Instruct's ChatML conversation ("Audio 1: <|audio_bos|><|AUDIO|><|audio_eos|>" before
# the text) without its default system prompt: ten tokens a sample that a model trained from
# scratch never needs. An audio part is recognised by its type, or, as the hub template does, by
# an ``audio`` key (mmtune.models.inputs sends both).
TINY_QWEN2_AUDIO_CHAT_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'audio' or 'audio' in content or 'audio_url' in content %}"
    "{% set audio_count.value = audio_count.value + 1 %}"
    "Audio {{ audio_count.value }}: <|audio_bos|><|AUDIO|><|audio_eos|>\n"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def audio_chunk_seconds(clip_seconds: float) -> int:
    """The feature extractor's chunk: the clip length rounded up to whole seconds.

    ``WhisperFeatureExtractor`` computes ``n_samples = chunk_length * sampling_rate`` and pads
    (or truncates) every clip to it, so a whole number of seconds keeps ``n_samples`` an integer;
    a 1.5 s clip in a 2 s chunk is padded, and the processor's ``feature_attention_mask`` keeps
    the padding out of the encoder's attention and out of the audio token count.
    """
    return max(1, math.ceil(float(clip_seconds) - 1e-9))


def encoder_positions(chunk_seconds: int) -> int:
    """The Qwen2-Audio encoder's ``max_source_positions`` for a chunk: it requires exactly
    ``2 * max_source_positions`` mel frames (``chunk * 16000 / 160``)."""
    return chunk_seconds * SAMPLING_RATE // HOP_LENGTH // FRAMES_PER_POSITION


def audio_tokens_per_chunk(chunk_seconds: int) -> int:
    """``<|AUDIO|>`` tokens a full chunk becomes (Qwen2AudioProcessor's formula on the mel length)."""
    frames = chunk_seconds * SAMPLING_RATE // HOP_LENGTH
    return (((frames - 1) // 2 + 1) - 2) // 2 + 1


def build_tiny_qwen2_audio(preset: TinyQwen2AudioPreset, texts: Iterable[str], clip_seconds: float):
    """A randomly initialised tiny Qwen2-Audio and its processor (tokenizer trained on ``texts``).

    The feature extractor's chunk is ``clip_seconds`` rounded up (:func:`audio_chunk_seconds`)
    instead of Whisper's 30 s, the encoder's ``max_source_positions`` matches it, and the
    extractor and the encoder share ``num_mel_bins``. A 2 s clip is 200 mel frames, 100
    encoder positions and 50 ``<|AUDIO|>`` tokens (40 ms each).
    """
    from transformers import (
        Qwen2AudioConfig,
        Qwen2AudioEncoderConfig,
        Qwen2AudioForConditionalGeneration,
        Qwen2AudioProcessor,
        Qwen2Config,
        WhisperFeatureExtractor,
    )
    from transformers.models.whisper.modeling_whisper import sinusoids

    from mmtune.models.twins import qwen_tokenizer

    chunk = audio_chunk_seconds(clip_seconds)
    tokenizer = qwen_tokenizer(texts, preset.vocab_size, chat_template=TINY_QWEN2_AUDIO_CHAT_TEMPLATE,
                               special_tokens=QWEN2_AUDIO_SPECIAL_TOKENS)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN2_AUDIO_SPECIAL_TOKENS}
    extractor = WhisperFeatureExtractor(feature_size=preset.num_mel_bins, sampling_rate=SAMPLING_RATE,
                                        hop_length=HOP_LENGTH, chunk_length=chunk, n_fft=N_FFT,
                                        return_attention_mask=True)
    processor = Qwen2AudioProcessor(feature_extractor=extractor, tokenizer=tokenizer,
                                    chat_template=TINY_QWEN2_AUDIO_CHAT_TEMPLATE)
    config = Qwen2AudioConfig(
        audio_config=Qwen2AudioEncoderConfig(
            num_mel_bins=preset.num_mel_bins, encoder_layers=preset.audio_layers,
            encoder_attention_heads=preset.audio_heads, encoder_ffn_dim=preset.audio_ffn,
            d_model=preset.audio_hidden, max_source_positions=encoder_positions(chunk)),
        text_config=Qwen2Config(
            hidden_size=preset.text_hidden, intermediate_size=preset.text_intermediate,
            num_hidden_layers=preset.text_layers, num_attention_heads=preset.text_heads,
            num_key_value_heads=preset.text_kv_heads, vocab_size=len(tokenizer),
            max_position_embeddings=preset.max_position, bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"], tie_word_embeddings=False),
        audio_token_index=ids[AUDIO_TOKEN],
    )
    model = Qwen2AudioForConditionalGeneration(config)
    # Whisper's positions are fixed sinusoids (the encoder freezes embed_positions); Qwen2-Audio's
    # random init would leave a from-scratch encoder with near-zero position signal, and "which
    # tone came first" needs it.
    with torch.no_grad():
        pos = model.model.audio_tower.embed_positions
        pos.weight.copy_(sinusoids(*pos.weight.shape))
    model.generation_config.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.bos_token_id = ids["<|endoftext|>"]
    return model, processor


def build_preset(name: str, preset_cfg, texts: Iterable[str], *, image_size: int = 32, clip_seconds: float = 2.0):
    """Build the preset ``name`` (one of :data:`PRESETS`)."""
    if name == "tiny-llava":
        return build_tiny_llava(preset_cfg, texts, image_size)
    if name == "tiny-qwen2-audio":
        return build_tiny_qwen2_audio(preset_cfg, texts, clip_seconds)
    raise ValueError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
