"""Pre-training the ``tiny-llava`` vision tower on labelled pictures: its stand-in for CLIP.

A real LLaVA starts from a CLIP tower that already tells a circle from a square; LLaVA-1.5
then keeps that tower frozen while the projector and the LLM learn. Trained from scratch
through the language-model loss alone, the tiny tower never learns shape: a linear probe
reads shape from it no better than from a randomly initialised tower (0.75 vs 0.77), even
after 5,000 steps or with dense captions, and every shape and locate task sits at its
majority answer (docs/benchmarks.md, "Reading the picture or writing the answer?").

So the generic student is built the way its real counterpart was, in two stages:

1. this module: a short supervised stage that teaches the tower *what is where* on the
   generic mix's own training pictures (the object in each grid cell, the value of each
   handwritten digit), as a ViT is pre-trained on ImageNet classes;
2. :mod:`mmtune.training.pretrain`: the language-model pre-training on the generic mix,
   with this tower frozen.

The labels come from the generator's scenes of the generic **training** split only. They
build the stand-in for a model someone else pre-trained; no stage of the pipeline reads
them (docs/fairness.md). Size is deliberately not a label: it is one of SkillWorld's rare
skills, which the generic student should have to learn from text.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from mmtune.data.skillworld.scenes import COLORS, SHAPES

# What the tower is taught to tell apart, per region of a picture.
LABELS: tuple[str, ...] = ("empty", *(f"{c} {s}" for c in COLORS for s in SHAPES),
                           *(f"digit {d}" for d in range(10)))
_INDEX = {name: i for i, name in enumerate(LABELS)}

# Regions as fractions of the picture: (top, bottom, left, right). Grid cells in SkillWorld's
# reading order (top left, top right, bottom left, bottom right); digits one or two, left first.
_CELLS = ((0.0, 0.5, 0.0, 0.5), (0.0, 0.5, 0.5, 1.0), (0.5, 1.0, 0.0, 0.5), (0.5, 1.0, 0.5, 1.0))
_DIGIT_BOXES = {1: ((0.0, 1.0, 0.0, 1.0),), 2: ((0.0, 1.0, 0.0, 0.5), (0.0, 1.0, 0.5, 1.0))}

# Share of each batch drawn from digit pictures. They are ~3 % of the generic mix (digits are a
# rare skill there); at their natural share the tower would see one or two per batch and not
# learn them, while a real CLIP reads digits. 1/8 keeps them visible without making the stage
# about digits.
DIGIT_SHARE = 0.125
HELD_OUT = 0.05  # share of pictures kept aside to report the tower's accuracy


Box = tuple[float, float, float, float]


def region_labels(scene: dict[str, Any]) -> list[tuple[Box, int]]:
    """The regions of a SkillWorld scene and the index in :data:`LABELS` of what each holds."""
    if scene["kind"] == "grid":
        return [(box, _INDEX[f"{c['color']} {c['shape']}"] if c else _INDEX["empty"])
                for box, c in zip(_CELLS, scene["cells"], strict=True)]
    if scene["kind"] == "digits":
        digits = scene["digits"]
        if len(digits) not in _DIGIT_BOXES:
            raise ValueError(f"a digit scene holds one or two digits, got {len(digits)}")
        return [(box, _INDEX[f"digit {d['value']}"]) for box, d in zip(_DIGIT_BOXES[len(digits)], digits)]
    raise ValueError(f"unknown SkillWorld scene kind {scene['kind']!r} (expected 'grid' or 'digits')")


def pool_region(patches: torch.Tensor, box: Box) -> torch.Tensor:
    """Mean of the patch features inside ``box``; ``patches`` is (rows, cols, hidden)."""
    rows, cols = patches.shape[:2]
    top, bottom, left, right = box
    r0, r1 = round(top * rows), max(round(bottom * rows), round(top * rows) + 1)
    c0, c1 = round(left * cols), max(round(right * cols), round(left * cols) + 1)
    return patches[r0:r1, c0:c1].mean(dim=(0, 1))


def _patch_grid(tower: torch.nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """(batch, rows, cols, hidden) patch features; CLIP's first token is the class token."""
    hidden = tower(pixel_values=pixel_values).last_hidden_state[:, 1:]
    side = int(round(hidden.shape[1] ** 0.5))
    if side * side != hidden.shape[1]:
        raise ValueError(f"expected a square grid of patches, got {hidden.shape[1]} tokens")
    return hidden.reshape(hidden.shape[0], side, side, hidden.shape[-1])


def _features(tower: torch.nn.Module, pixel_values: torch.Tensor,
              regions: Sequence[list[tuple[Box, int]]]) -> tuple[torch.Tensor, torch.Tensor]:
    grid = _patch_grid(tower, pixel_values)
    feats = [pool_region(grid[i], box) for i, regs in enumerate(regions) for box, _ in regs]
    labels = [label for regs in regions for _, label in regs]
    return torch.stack(feats), torch.tensor(labels)


def pretrain_vision_tower(tower: torch.nn.Module, pixel_values: torch.Tensor, scenes: Sequence[dict[str, Any]],
                          *, steps: int, batch_size: int, lr: float, seed: int, log_every: int = 200,
                          progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Train ``tower`` (a ``CLIPVisionModel``-like module) to name what each region holds.

    A linear head over the mean patch feature of each region (grid cell or digit), cross
    entropy over :data:`LABELS`. The head is thrown away afterwards: what stays is the tower.
    Returns the held-out region accuracy per kind of picture, for the student's metadata.
    """
    if len(scenes) != len(pixel_values):
        raise ValueError(f"{len(scenes)} scenes for {len(pixel_values)} pictures")
    if steps < 1 or batch_size < 1:
        raise ValueError(f"vision tower pre-training needs steps >= 1 and batch_size >= 1, got steps={steps}, "
                         f"batch_size={batch_size}; to skip the stage, set student.pretrain.vision_steps=0")
    regions = [region_labels(s) for s in scenes]
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(scenes), generator=gen)
    n_held = max(1, int(len(scenes) * HELD_OUT))
    held, train = order[:n_held], order[n_held:]
    digit = torch.tensor([scenes[i]["kind"] == "digits" for i in train.tolist()])
    # sampling weights: digit pictures take DIGIT_SHARE of a batch when there are any
    weights = torch.ones(len(train), dtype=torch.float)
    if digit.any() and (~digit).any():
        weights[digit] = DIGIT_SHARE / digit.sum()
        weights[~digit] = (1 - DIGIT_SHARE) / (~digit).sum()

    head = torch.nn.Linear(tower.config.hidden_size, len(LABELS))
    opt = torch.optim.AdamW([*tower.parameters(), *head.parameters()], lr=lr)
    tower.train()
    t0 = time.time()
    progress(f"[student] vision tower: {steps} supervised steps × batch {batch_size} on "
             f"{len(train)} labelled pictures ({len(LABELS)} region labels)")
    for step in range(1, steps + 1):
        idx = train[torch.multinomial(weights, batch_size, replacement=True, generator=gen)].tolist()
        feats, labels = _features(tower, pixel_values[idx], [regions[i] for i in idx])
        per_region = torch.nn.functional.cross_entropy(head(feats), labels, reduction="none")
        # each kind of picture weighs the same in the loss: a grid has 4 regions and is 7 in 8
        # pictures, so a plain mean would leave digits ~5 % of the gradient
        kinds = torch.tensor([scenes[i]["kind"] == "digits" for i in idx for _ in regions[i]])
        loss = torch.stack([per_region[kinds == k].mean() for k in (False, True) if (kinds == k).any()]).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % log_every == 0 or step == steps:
            acc = _accuracy(tower, head, pixel_values, scenes, regions, held.tolist())
            progress(f"[student] vision tower step {step}/{steps} loss {loss.item():.3f} held-out "
                     + ", ".join(f"{k} {v:.3f}" for k, v in acc.items())
                     + f" ({time.time() - t0:.0f}s)")
    tower.eval()
    return {"steps": steps, "batch_size": batch_size, "lr": lr, "seconds": round(time.time() - t0, 2),
            "held_out_accuracy": acc, "labels": len(LABELS)}


@torch.no_grad()
def _accuracy(tower, head, pixel_values, scenes, regions, idx: list[int]) -> dict[str, float]:
    """Held-out accuracy on occupied grid cells (what the object is) and on digits."""
    was_training = tower.training
    tower.eval()
    feats, labels = _features(tower, pixel_values[idx], [regions[i] for i in idx])
    tower.train(was_training)
    right = head(feats).argmax(-1) == labels
    kinds = [scenes[i]["kind"] for i in idx for _ in regions[i]]
    out = {}
    for name, keep in (("objects", [k == "grid" and lab != _INDEX["empty"] for k, lab in zip(kinds, labels.tolist())]),
                       ("digits", [k == "digits" for k in kinds])):
        mask = torch.tensor(keep)
        if mask.any():
            out[name] = round(right[mask].float().mean().item(), 3)
    return out
