"""The built-in teacher of the embedded default: a small causal LM trained on text only.

It stands in for a 72B teacher. It is trained once (cached by config hash) on SkillWorld
*corpus* tasks of the configured family (vision or audio; the teacher reads their text only)
that mmtune generates for it under its own seed stream (split "teacher"),
never on target tasks and never on the pool's own rows or metadata. It learns, in the
exact prompt formats of ``prompts/*.v1.txt``:

- question + candidates + hint + a prefix of the reasoning -> the answer letter. The hint
  points to the right candidate with ``teacher.hint_probability``, so on an uninformative
  prefix the teacher follows the hint and on a decisive one it follows the reasoning;
- question + steps + a mistaken step -> the skill phrase of that step (the skill names of
  the configured SkillWorld family, ``family(data.skillworld.modality).skills``, which a
  large teacher would know);
- instruction + response -> the sample's skill phrases;
- question + a chain whose tail was swapped for another item's -> the first changed step
  (the "ask the teacher which step is wrong" baseline, so that it is not a strawman).

It is saved with ``save_pretrained`` as an ordinary HF directory (Llama architecture and a
locally trained tokenizer) and loaded through the ``hf`` backend like any hub model.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from mmtune.config import RunConfig, config_hash

from .prompts import load_template, numbered
from .switch import candidates_for

META_FILE = "mmtune_teacher.json"
SPLIT = "teacher"


def teacher_key(cfg: RunConfig) -> str:
    """Everything the built-in teacher's weights depend on. The SkillWorld family and its
    generator version are in it, so an audio teacher never serves a vision run (or one
    trained on an older audio generator). The vision key is the one it had before the audio
    family existed (no ``modality`` entry), so existing caches still hit."""
    from mmtune.data.skillworld import generator_version

    modality = cfg.data.skillworld.modality
    key = {"builtin": cfg.teacher.builtin.model_dump(mode="json", exclude={"threads"}),
           "skillworld_seed": cfg.data.skillworld.seed, "generator": generator_version(modality),
           "hint": cfg.teacher.hint_probability, "prompts": cfg.teacher.prompt_version,
           "score_candidates": cfg.teacher.score_candidates,
           "seed": cfg.run.shared_seed}
    if modality != "vision":
        key["modality"] = modality
    return config_hash(key)


def teacher_dir(cfg: RunConfig) -> Path:
    return Path(cfg.run.cache_dir) / "teachers" / f"builtin-{teacher_key(cfg)}"


def ensure_builtin_teacher(cfg: RunConfig, progress: Callable[[str], None] = print, force: bool = False) -> Path:
    from mmtune.models.shipped import restore

    out = teacher_dir(cfg)
    if (out / META_FILE).is_file() and not force:
        progress(f"[teacher] built-in teacher cached at {out}")
        return out
    if not force and restore(out, META_FILE, enabled=cfg.run.shipped_models, progress=progress):
        return out
    tmp = out.with_name(out.name + f".tmp{int(time.time())}")
    train_builtin_teacher(cfg, tmp, progress=progress)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    progress(f"[teacher] saved built-in teacher to {out}")
    return out


# --------------------------------------------------------------------------- examples
def _teacher_items(cfg: RunConfig) -> list[dict[str, Any]]:
    """Corpus-task samples of the teacher's own split, with their step skills, from the
    configured SkillWorld family (``data.skillworld.modality``). The teacher reads text
    only, so audio clips are never synthesised here (most of an audio item's cost)."""
    from mmtune.data.skillworld import family, generate_task

    fam = family(cfg.data.skillworld.modality)
    items = []
    for name in fam.corpus_tasks:
        task = fam.tasks[name]
        samples, metas = generate_task(task, cfg.teacher.builtin.samples_per_task, seed=cfg.data.skillworld.seed,
                                       split=SPLIT, pool="corpus", image_size=16, render_audio=False)
        for s, m in zip(samples, metas):
            items.append({"id": s["id"], "task": name, "question": s["instruction"], "steps": list(s["steps"]),
                          "answer": s["answer"], "options": s["options"], "values": list(task.values),
                          "skills": [fam.skills[k] for k in m["step_skills"]], "response": s["response"]})
    return items


def _wrong_value(rng: random.Random, it: dict[str, Any]) -> str:
    if it["options"]:
        letters = [chr(ord("A") + i) for i in range(len(it["options"]))]
        return rng.choice([x for x in letters if x != it["answer"]])
    return rng.choice([v for v in it["values"] if v != it["answer"]])


def build_examples(cfg: RunConfig, items: list[dict[str, Any]], n: int, seed: int) -> list[tuple[str, str]]:
    """(prompt, target) pairs in the mix 55% answer, 20% skill (``offtask_fraction`` of them over
    another task's chain), 15% annotate, 10% which-step."""
    rng = random.Random(seed)
    v = cfg.teacher.prompt_version
    by_text = cfg.teacher.score_candidates == "text"
    t_sw = load_template("answer_switch_text" if by_text else "answer_switch", v)
    t_sk = load_template("skill_analysis", v)
    t_an, t_wh = load_template("annotate", v), load_template("which_step", v)
    by_task: dict[str, list[dict[str, Any]]] = {}
    for it in items:
        by_task.setdefault(it["task"], []).append(it)
    hint_p = cfg.teacher.hint_probability
    offtask = cfg.teacher.builtin.offtask_fraction
    out: list[tuple[str, str]] = []
    for _ in range(n):
        it = rng.choice(items)
        r = rng.random()
        if r < 0.55:  # answer given a prefix of a (right) chain, with a 60%-right hint
            wrong = _wrong_value(rng, it)
            c = candidates_for(f"{it['id']}/{rng.random()}", it["answer"], wrong, it["options"])
            hinted = c.gold if rng.random() < hint_p else rng.choice([i for i in range(len(c.labels)) if i != c.gold])
            k = rng.randint(0, len(it["steps"]))
            prompt = t_sw.render(question=it["question"], candidates=c.block(), hint_label=c.labels[hinted],
                                 hint_percent=round(100 * hint_p), steps=numbered(it["steps"][:k]))
            # The target is always the true answer: since the hint is right with
            # probability hint_p, a prefix that does not decide the answer teaches
            # P(hinted) = hint_p, and one that does teaches to follow the reasoning.
            out.append((prompt, " " + (c.texts[c.gold] if by_text else c.labels[c.gold])))
        elif r < 0.75:  # skill of a step
            steps = it["steps"]
            if rng.random() < offtask:
                # An off-task chain: a student that answers a counting question with "The digit
                # is 3." lacks counting, not digit reading. Without these examples the teacher
                # learns to name the skill of whatever step it is shown.
                other = rng.choice(items)
                while other["task"] == it["task"] and len(by_task) > 1:
                    other = rng.choice(items)
                steps = other["steps"]
            m = rng.randrange(min(len(steps), len(it["steps"])))
            out.append((t_sk.render(question=it["question"], steps=numbered(steps), mistake_index=m + 1,
                                    mistake_step=steps[m], gold=it["answer"],
                                    prediction=_wrong_value(rng, it)), " " + it["skills"][m]))
        elif r < 0.90:  # annotation
            out.append((t_an.render(instruction=it["question"], response=it["response"]),
                        " " + "; ".join(dict.fromkeys(it["skills"]))))
        else:  # which step: the tail swapped for another item's chain of the same task
            other = rng.choice([o for o in by_task[it["task"]] if o["answer"] != it["answer"]] or [it])
            j = rng.randrange(len(it["steps"]))
            steps = it["steps"][:j] + other["steps"][j:]
            first = next((i for i, (a, b) in enumerate(zip(steps, it["steps"])) if a != b), len(steps) - 1)
            out.append((t_wh.render(question=it["question"], steps=numbered(steps), gold=it["answer"],
                                    prediction=other["answer"], n_steps=len(steps)), f" {first + 1}"))
    return out


# --------------------------------------------------------------------------- model and training
def build_model(cfg: RunConfig, texts: list[str]):
    from transformers import LlamaConfig, LlamaForCausalLM

    from mmtune.models.presets import train_tokenizer

    b = cfg.teacher.builtin
    tok = train_tokenizer(texts, b.vocab_size)
    mcfg = LlamaConfig(vocab_size=len(tok), hidden_size=b.hidden, intermediate_size=b.intermediate,
                       num_hidden_layers=b.layers, num_attention_heads=b.heads, num_key_value_heads=b.heads,
                       max_position_embeddings=1024, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                       pad_token_id=tok.pad_token_id, tie_word_embeddings=True)
    return LlamaForCausalLM(mcfg), tok


def _batch(tok, pairs: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
    """Right-padded input ids with the loss on the target (and its EOS) only."""
    seqs, labels = [], []
    for prompt, target in pairs:
        p = [tok.bos_token_id] + tok(prompt, add_special_tokens=False)["input_ids"]
        t = tok(target, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        seqs.append(p + t)
        labels.append([-100] * len(p) + t)
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), tok.pad_token_id)
    lab = torch.full((len(seqs), width), -100)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, (s, lb) in enumerate(zip(seqs, labels)):
        ids[i, :len(s)], lab[i, :len(s)], mask[i, :len(s)] = torch.tensor(s), torch.tensor(lb), 1
    return {"input_ids": ids, "attention_mask": mask, "labels": lab}


def train_builtin_teacher(cfg: RunConfig, out_dir: Path, progress: Callable[[str], None] = print) -> dict[str, Any]:
    from transformers import get_cosine_schedule_with_warmup

    b = cfg.teacher.builtin
    if b.threads:
        torch.set_num_threads(b.threads)
    torch.manual_seed(cfg.run.shared_seed)
    t0 = time.time()
    items = _teacher_items(cfg)
    examples = build_examples(cfg, items, b.steps * b.batch_size, seed=cfg.run.shared_seed)
    model, tok = build_model(cfg, [p + t for p, t in examples[:20000]])
    n_params = sum(p.numel() for p in model.parameters())
    progress(f"[teacher] training the built-in teacher ({n_params / 1e6:.2f}M params, Llama) on "
             f"{len(items)} corpus-task items ({len(examples)} examples), {b.steps} steps × batch {b.batch_size}")
    opt = torch.optim.AdamW(model.parameters(), lr=b.lr, weight_decay=0.01)
    sched = get_cosine_schedule_with_warmup(opt, math.ceil(0.03 * b.steps), b.steps)
    model.train()
    t1, window, losses = time.time(), [], []
    for step in range(1, b.steps + 1):
        batch = _batch(tok, examples[(step - 1) * b.batch_size: step * b.batch_size])
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        window.append(loss.item())
        if step % 100 == 0 or step == b.steps:
            sps = step * b.batch_size / (time.time() - t1)
            losses.append((step, sum(window) / len(window)))
            progress(f"[teacher] step {step}/{b.steps} loss {losses[-1][1]:.4f} {sps:.0f} examples/s "
                     f"eta {(b.steps - step) * b.batch_size / sps:.0f}s")
            window = []
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    stats = {"key": teacher_key(cfg), "params": n_params, "items": len(items), "examples": len(examples),
             "seconds": round(time.time() - t0, 1), "loss_curve": losses,
             "prompt_version": cfg.teacher.prompt_version,
             "config": cfg.teacher.builtin.model_dump(mode="json")}
    (out_dir / META_FILE).write_text(json.dumps(stats, indent=2))
    return stats


def resolve_teacher(cfg: RunConfig, progress: Callable[[str], None] = print) -> Path | None:
    """The built-in teacher's directory (trained on first use) when ``teacher.backend`` is
    builtin; None for hf/openai, whose models come from ``teacher.name_or_path``."""
    return ensure_builtin_teacher(cfg, progress=progress) if cfg.teacher.backend == "builtin" else None
