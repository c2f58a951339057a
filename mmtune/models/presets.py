"""The ``tiny-llava`` preset: transformers' real LLaVA classes at a size a laptop CPU trains.

Nothing here is a toy re-implementation. The preset is a ``LlavaForConditionalGeneration``
(CLIP vision tower + MLP projector + Llama decoder) and a ``LlavaProcessor`` (CLIP image
processor + a fast BPE tokenizer trained locally with ``tokenizers``). It is written with
``save_pretrained`` and read back with ``from_pretrained``, the path a 7B checkpoint takes,
so every later stage exercises the same loading code users hit with ``llava-hf/...``.
"""

from __future__ import annotations

from typing import Iterable

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

from mmtune.config import TinyLlavaPreset

IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", IMAGE_TOKEN]

# LLaVA-1.5's conversation format ("USER: <image>\n... ASSISTANT: ..."), written as a
# standard HF chat template over the structured message format (content lists with
# {"type": "image"} / {"type": "text"} parts), so the same prompting code drives this
# preset, llava-hf checkpoints and Qwen2-VL.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'][0]['text'] if message['content'] is not string else message['content'] }}\n"
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
