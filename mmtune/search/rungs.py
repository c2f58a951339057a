"""What a trial measures at each ASHA rung: plain torch, no Ray.

A trial trains its whole budget (``training.max_steps`` or ``epochs``) and stops at
``rungs`` evenly spaced steps to score the student on the target validation split(s):

* ``val_accuracy``: greedy step-by-step decoding and answer matching, exactly as
  :class:`mmtune.training.evaluate.Predictor` scores (the pipeline's accuracy);
* ``val_loss``: the teacher-forced loss on the gold responses (token-weighted). With a
  small validation set accuracy moves in coarse steps; the loss breaks ties and is a
  metric of its own (``search.metric=val_loss``, ``search.mode=min``).

Both are also given per split (``val_accuracy/<split>``); the headline figures are the
mean over splits, so each target counts the same whatever its size.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from mmtune.data.answers import answers_match, extract_answer
from mmtune.models.inputs import encode_for_training, move_to

VAL_COLUMNS = ["id", "task", "image", "audio", "instruction", "response", "answer", "options"]
OPTIONAL_COLUMNS = {"audio"}  # parquet written by hand may have no audio column: read as null


def rung_steps(total_steps: int, rungs: int) -> list[int]:
    """The steps after which a trial reports: ``ceil(total·k/rungs)`` for k = 1..rungs,
    without repeats (fewer than ``rungs`` when the budget has fewer steps); the last is
    always ``total_steps``."""
    if total_steps < 1 or rungs < 1:
        raise ValueError(f"need total_steps ≥ 1 and rungs ≥ 1, got {total_steps} and {rungs}")
    return sorted({max(1, math.ceil(total_steps * k / rungs)) for k in range(1, rungs + 1)})


def read_val_rows(splits: Mapping[str, Sequence[str]], max_items: int | None = None,
                  seed: int = 0) -> dict[str, list[dict[str, Any]]]:
    """Each split's rows (:data:`VAL_COLUMNS`), at most ``max_items`` per split chosen by a
    permutation seeded with ``seed`` (so every trial is scored on the same items)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out: dict[str, list[dict[str, Any]]] = {}
    for name, paths in splits.items():
        if not paths:
            raise ValueError(f"validation split {name!r} has no files")
        tables = []
        for p in paths:
            t = pq.read_table(str(p))
            for c in OPTIONAL_COLUMNS - set(t.column_names):
                t = t.append_column(c, pa.nulls(t.num_rows, pa.binary()))
            missing = [c for c in VAL_COLUMNS if c not in t.column_names]
            if missing:
                raise ValueError(f"validation split {name!r}: {p} lacks columns {missing} (Sample schema expected)")
            tables.append(t.select(VAL_COLUMNS))
        rows = pa.concat_tables(tables).to_pylist()
        if not rows:
            raise ValueError(f"validation split {name!r} is empty")
        if max_items is not None and len(rows) > max_items:
            keep = sorted(random.Random(seed).sample(range(len(rows)), max_items))
            rows = [rows[i] for i in keep]
        out[name] = rows
    return out


@torch.no_grad()
def score_rows(model: Any, processor: Any, rows: Sequence[Mapping[str, Any]], *, max_new_tokens: int,
               batch_size: int) -> dict[str, float]:
    """Accuracy (greedy decoding), teacher-forced loss, and counts over ``rows``."""
    from mmtune.training.evaluate import generate

    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    correct = no_answer = 0
    loss_sum = tokens = 0.0
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        images = [None if r.get("image") is None else bytes(r["image"]) for r in chunk]
        audios = [None if r.get("audio") is None else bytes(r["audio"]) for r in chunk]
        ids = [r.get("id") for r in chunk]
        texts = generate(model, processor, [r["instruction"] for r in chunk], images, max_new_tokens,
                         audios=audios, ids=ids)
        for r, text in zip(chunk, texts):
            pred = extract_answer(text)
            no_answer += pred is None
            opts = [str(o) for o in r["options"]] if r.get("options") is not None else None
            correct += answers_match(pred, str(r["answer"]), opts)
        batch = move_to(encode_for_training(processor, [r["instruction"] for r in chunk],
                                            [r["response"] for r in chunk], images, audios, ids=ids), device)
        for k in ("pixel_values", "input_features"):  # floats follow the model's dtype (bf16 on GPU)
            if k in batch:
                batch[k] = batch[k].to(dtype)
        n_tok = float((batch["labels"][:, 1:] != -100).sum())  # positions the causal-LM loss averages over
        if n_tok:
            loss_sum += float(model(**batch).loss) * n_tok
            tokens += n_tok
    n = len(rows)
    return {"accuracy": correct / n if n else float("nan"), "loss": loss_sum / tokens if tokens else float("nan"),
            "n": float(n), "no_answer": float(no_answer)}


def val_metrics(model: torch.nn.Module, processor: Any, splits: Mapping[str, Sequence[Mapping[str, Any]]], *,
                max_new_tokens: int, batch_size: int) -> dict[str, float]:
    """``val_accuracy``, ``val_loss`` (means over splits), per-split figures, ``val_items``.

    The model is scored in eval mode and put back in the mode it was in (dropout and all).
    """
    was_training = model.training
    model.eval()
    try:
        per = {name: score_rows(model, processor, rows, max_new_tokens=max_new_tokens, batch_size=batch_size)
               for name, rows in splits.items()}
    finally:
        model.train(was_training)
    out: dict[str, float] = {
        "val_accuracy": sum(s["accuracy"] for s in per.values()) / len(per),
        "val_loss": sum(s["loss"] for s in per.values()) / len(per),
        "val_items": sum(s["n"] for s in per.values()),
        "val_no_answer": sum(s["no_answer"] for s in per.values()),
    }
    for name, s in per.items():
        out[f"val_accuracy/{name}"] = s["accuracy"]
        out[f"val_loss/{name}"] = s["loss"]
    return out


__all__ = ["VAL_COLUMNS", "read_val_rows", "rung_steps", "score_rows", "val_metrics"]
