import io
import re
import warnings

import pytest
import torch
from PIL import Image

from mmtune.config import StudentConfig
from mmtune.models.inputs import IGNORE_INDEX, encode_for_training
from mmtune.models.student import (
    apply_lora,
    group_sizes,
    load_adapter,
    load_student,
    lora_target,
    param_groups,
    save_adapter,
)


def _png(color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(buf, format="PNG")
    return buf.getvalue()


def _batch(processor):
    return encode_for_training(processor, ["What colour is the circle?", "How many objects are there?"],
                               ["The circle is in the top left cell.\nAnswer: red", "Answer: 2"],
                               [_png(), _png((0, 0, 200))])


def test_roundtrip_through_from_pretrained(tiny_llava_dir, tmp_path):
    model, processor = load_student(tiny_llava_dir, StudentConfig())
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    batch = _batch(processor)
    with torch.no_grad():
        before = model(**batch).logits
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    again, _ = load_student(tmp_path, StudentConfig())
    with torch.no_grad():
        after = again(**batch).logits
    torch.testing.assert_close(before, after)


def test_tiny_llava_is_not_a_checkpoint():
    with pytest.raises(ValueError, match="student pretrain"):
        load_student("tiny-llava", StudentConfig())


def test_labels_cover_only_the_response(tiny_llava_dir):
    _, processor = load_student(tiny_llava_dir, StudentConfig())
    batch = _batch(processor)
    tok = processor.tokenizer
    for row in range(2):
        labels = batch["labels"][row]
        kept = labels[labels != IGNORE_INDEX]
        text = tok.decode(kept, skip_special_tokens=True)
        assert text.strip() == ["The circle is in the top left cell.\nAnswer: red", "Answer: 2"][row]
        # the image placeholder tokens (16 of them for 32px / patch 8) are never supervised
        image_id = tok.convert_tokens_to_ids("<image>")
        assert (batch["input_ids"][row] == image_id).sum() == 16
        assert not (kept == image_id).any()


def test_lora_targets_llm_only_and_groups(tiny_llava_dir):
    model, _ = load_student(tiny_llava_dir, StudentConfig())
    cfg = StudentConfig()  # freeze_vision_tower=True, projector trainable, LoRA on
    peft_model = apply_lora(model, cfg)
    lora_modules = [n for n, _ in peft_model.named_modules() if n.endswith("lora_A")]
    assert lora_modules and all("language_model" in n for n in lora_modules)
    assert not any("vision_tower" in n for n in lora_modules)
    groups = param_groups(peft_model)
    assert all("lora_" in n for n, _ in groups["llm"])
    assert groups["encoder"] and all("multi_modal_projector" in n for n, _ in groups["encoder"])
    # the frozen vision tower and base LLM weights are not trainable
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert not any("vision_tower" in n for n in trainable)
    assert not any(re.search(r"q_proj\.base_layer", n) for n in trainable)


def test_freeze_flags_change_groups(tiny_llava_dir):
    model, _ = load_student(tiny_llava_dir, StudentConfig())
    cfg = StudentConfig(freeze_vision_tower=False, freeze_projector=True,
                        lora={"enabled": False})
    peft_free = apply_lora(model, cfg)
    groups = param_groups(peft_free)
    assert any("vision_tower" in n for n, _ in groups["encoder"])
    assert not any("multi_modal_projector" in n for n, _ in groups["encoder"])
    # without LoRA the whole LLM is the llm group
    assert any(n.endswith("embed_tokens.weight") for n, _ in groups["llm"])
    sizes = group_sizes(peft_free)
    assert sizes["encoder"] > 0 and sizes["llm"] > 0


def test_bad_lora_regex_is_reported(tiny_llava_dir):
    model, _ = load_student(tiny_llava_dir, StudentConfig())
    with pytest.raises(ValueError, match="matches no module"):
        lora_target(model, StudentConfig(lora={"target_regex": r".*nonexistent_proj"}).lora)


def test_adapter_roundtrip_with_peft_from_pretrained(tiny_llava_dir, tmp_path):
    from peft import PeftModel

    model, processor = load_student(tiny_llava_dir, StudentConfig())
    peft_model = apply_lora(model, StudentConfig())
    # move the adapters and the projector away from their initial values
    with torch.no_grad():
        for _, p in param_groups(peft_model)["llm"] + param_groups(peft_model)["encoder"]:
            p.add_(torch.randn_like(p) * 0.05)
    batch = _batch(processor)
    peft_model.eval()
    with torch.no_grad():
        tuned = peft_model(**batch).logits
    save_adapter(peft_model, tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()

    base, _ = load_student(tiny_llava_dir, StudentConfig())
    with torch.no_grad():
        untuned = base(**batch).logits
    restored = PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()
    with torch.no_grad():
        got = restored(**batch).logits
    assert not torch.allclose(untuned, tuned)
    torch.testing.assert_close(got, tuned)

    base2, _ = load_student(tiny_llava_dir, StudentConfig())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        via_helper = load_adapter(base2, tmp_path / "adapter").eval()
    # PEFT's read of transformers' deprecated is_gradient_checkpointing stays out of users' logs
    assert not [w for w in caught if "is_gradient_checkpointing" in str(w.message)]
    with torch.no_grad():
        torch.testing.assert_close(via_helper(**batch).logits, tuned)


def test_qwen2_vl_groups_and_lora_targets():
    """Qwen2-VL names its parts differently (model.visual, visual.merger); the default
    regexes must still split encoder/LLM correctly. A tiny random config, no hub."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    cfg = Qwen2VLConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, vocab_size=300,
                         rope_scaling={"type": "mrope", "mrope_section": [2, 2, 4]},
                         bos_token_id=1, eos_token_id=2),
        vision_config=dict(depth=1, embed_dim=16, hidden_size=32, num_heads=2, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, in_channels=3),
        image_token_id=299, video_token_id=298, vision_start_token_id=297, vision_end_token_id=296)
    model = Qwen2VLForConditionalGeneration(cfg)
    peft_model = apply_lora(model, StudentConfig())
    lora_modules = [n for n, _ in peft_model.named_modules() if n.endswith("lora_A")]
    assert lora_modules and all("language_model" in n for n in lora_modules)
    groups = param_groups(peft_model)
    assert groups["encoder"] and all("merger" in n for n, _ in groups["encoder"])
    assert not any("visual.blocks" in n for n, _ in groups["encoder"])  # tower frozen by default
    unfrozen = apply_lora(Qwen2VLForConditionalGeneration(cfg),
                          StudentConfig(freeze_vision_tower=False))
    # PEFT wraps the whole tower (merger included) in modules_to_save
    assert any(".blocks." in n for n, _ in param_groups(unfrozen)["encoder"])
