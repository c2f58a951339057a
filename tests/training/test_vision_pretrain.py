"""The vision tower's supervised stage (the tiny student's stand-in for CLIP pre-training)."""

import random

import numpy as np
import pytest
import torch
from transformers import CLIPVisionConfig, CLIPVisionModel

from mmtune.data.skillworld.scenes import COLORS, SHAPES, render_grid
from mmtune.models.inputs import decode_image
from mmtune.training.vision_pretrain import LABELS, pool_region, pretrain_vision_tower, region_labels


def test_region_labels_name_each_cell_and_digit():
    grid = {"kind": "grid", "cells": [{"color": "red", "shape": "circle", "size": "small"}, None,
                                      None, {"color": "blue", "shape": "triangle", "size": "large"}]}
    got = [(box, LABELS[i]) for box, i in region_labels(grid)]
    assert got == [((0.0, 0.5, 0.0, 0.5), "red circle"), ((0.0, 0.5, 0.5, 1.0), "empty"),
                   ((0.5, 1.0, 0.0, 0.5), "empty"), ((0.5, 1.0, 0.5, 1.0), "blue triangle")]
    pair = {"kind": "digits", "digits": [{"value": 3, "index": 0}, {"value": 8, "index": 1}]}
    assert [(b[2:], LABELS[i]) for b, i in region_labels(pair)] == [((0.0, 0.5), "digit 3"), ((0.5, 1.0), "digit 8")]
    one = {"kind": "digits", "digits": [{"value": 0, "index": 0}]}
    assert [LABELS[i] for _, i in region_labels(one)] == ["digit 0"]
    # size is a rare skill of the generic mix: it is not a label
    assert not any("small" in label or "large" in label for label in LABELS)
    with pytest.raises(ValueError, match="unknown SkillWorld scene kind 'tones'"):
        region_labels({"kind": "tones"})


def test_pool_region_averages_the_patches_inside_the_box():
    patches = torch.arange(16, dtype=torch.float).reshape(4, 4, 1)  # row-major 0..15
    assert pool_region(patches, (0.0, 0.5, 0.0, 0.5)).item() == pytest.approx((0 + 1 + 4 + 5) / 4)
    assert pool_region(patches, (0.5, 1.0, 0.5, 1.0)).item() == pytest.approx((10 + 11 + 14 + 15) / 4)
    assert pool_region(patches, (0.0, 1.0, 0.5, 1.0)).item() == pytest.approx(sum(
        r * 4 + c for r in range(4) for c in (2, 3)) / 8)
    # a 2x2 grid (patch 16 at 32 px): a cell is one patch
    assert pool_region(patches[:2, :2], (0.5, 1.0, 0.0, 0.5)).item() == 4.0


def test_the_tower_learns_what_is_in_each_cell():
    """Real SkillWorld pictures, a real (tiny) CLIP tower: held-out accuracy on the object in
    each occupied cell rises well above chance (1 in 12) within a few hundred small steps."""
    torch.manual_seed(0)
    rng = random.Random(0)
    scenes = []
    for _ in range(320):
        cells = [None if rng.random() < 0.25 else
                 {"color": rng.choice(COLORS), "shape": rng.choice(SHAPES), "size": rng.choice(["small", "large"])}
                 for _ in range(4)]
        scenes.append({"kind": "grid", "cells": cells})
    mean, std = torch.tensor([0.5, 0.5, 0.5]).view(3, 1, 1), torch.tensor([0.25, 0.25, 0.25]).view(3, 1, 1)
    pixels = torch.stack([(torch.from_numpy(np.array(decode_image(render_grid(s["cells"], rng)))).permute(2, 0, 1)
                           / 255 - mean) / std for s in scenes])
    tower = CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                             num_attention_heads=2, image_size=32, patch_size=8))
    logs = []
    stats = pretrain_vision_tower(tower, pixels, scenes, steps=300, batch_size=16, lr=3e-3, seed=0,
                                  log_every=100, progress=logs.append)
    # above 1/3, the most that colour alone can give (4 colours x 3 shapes): shape is learnt too
    assert stats["held_out_accuracy"]["objects"] > 0.4, stats
    assert "digits" not in stats["held_out_accuracy"]  # none in this set
    assert sum("vision tower step" in m for m in logs) == 3 and not tower.training
    with pytest.raises(ValueError, match="3 scenes for 320 pictures"):
        pretrain_vision_tower(tower, pixels, scenes[:3], steps=1, batch_size=2, lr=1e-3, seed=0)
    with pytest.raises(ValueError, match="steps >= 1.*vision_steps=0"):
        pretrain_vision_tower(tower, pixels, scenes, steps=0, batch_size=2, lr=1e-3, seed=0)
