import pytest

from mmtune.config import TinyLlavaPreset
from mmtune.models.presets import build_tiny_llava

TEXTS = [
    "What colour is the circle?", "The circle is in the top left cell.",
    "The object in the top left cell is red.", "Answer: red", "How many objects are there?",
    "That makes 2 objects.", "Answer: 2", "Is the digit odd or even?", "The digit is 7.", "7 is odd.",
] * 5

PRESET = TinyLlavaPreset(vision_hidden=32, vision_layers=1, vision_heads=2, text_hidden=32,
                         text_layers=2, text_heads=2, text_intermediate=64, vocab_size=400)


@pytest.fixture(scope="module")
def tiny_llava_dir(tmp_path_factory):
    """A tiny LLaVA saved with save_pretrained, as a 7B checkpoint directory would be."""
    model, processor = build_tiny_llava(PRESET, TEXTS, image_size=32)
    out = tmp_path_factory.mktemp("tiny_llava")
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
