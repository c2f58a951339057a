"""Benchmark: CoMMIT's coordination modes side by side on SkillWorld.

    python -m bench.coordination [--modality vision|audio] [--student DIR] [--targets parity_choice,count_grid]
        [--modes constant,...] [--seeds 3] [--steps 150] [--batch-size 16] [--train-size 512]
        [--data-seed 0] [--loss-target 0.12] [--eval-items 256] [--cpus N] [--threads 1]
        [--no-untuned] [--quick] [--out runs/bench/coordination.json] [--loss-png PNG]
        [--kappa-png PNG] [--no-plots] [--config configs/demo.yaml] [--write] [KEY=VALUE ...]

Starting from the generic tiny student (``--student DIR``, else the cached one built by
:func:`mmtune.training.pretrain.ensure_generic_student`, ~10 minutes on first use), every
(mode, seed) pair tunes LoRA + projector with :func:`mmtune.training.loop.run_training`
(the per-worker loop of the pipeline, plain torch) on the same training set, then answers
the targets' test items greedily. The (mode, seed) runs are Ray tasks of one CPU each
(``--cpus`` of them at a time, ``--threads`` torch threads each).

**Training set** [ours]: for each target, the corpus samples of the corpus tasks whose
step chain equals the target's (``mmtune.data.skillworld.ALL_TASKS[name].reasoning_chain``), i.e.
the samples a perfect skill retriever would return; this benchmark may use the generator's
metadata, the pipeline may not. ``--train-size`` samples in all, split evenly over the
targets, drawn with a fixed seed (``--data-seed``): every mode and seed sees the same set,
so only the mode and the training seed (LoRA init, data order, dropout) vary. The same
training seed gives every mode the same LoRA init and data order (paired runs).

**Per mode** (mean ± sd over seeds):

* *steps to target*: the first step whose trailing 10-step mean of the training loss is
  ≤ ``--loss-target`` (only full windows count); seeds that never get there are counted
  and shown as ``>steps``. The default target, 0.12, is ~14% below where the generic
  student starts on these chains (0.139 over the first 10 steps, default targets, data
  and config); in a calibration run `constant` at the config lr (2e-4) reached it at step
  60 of 150 (final loss 0.124; at lr 1e-3, step 32), so the default leaves room both for
  faster and for slower modes. Pass ``--loss-target`` for another student or lr.
* *final loss*: the mean loss of the last 10 steps.
* *accuracy* per target on ``--eval-items`` test items (a fixed seeded subset), greedy,
  with the subset's majority-answer baseline, and the untuned student's accuracy as a
  reference row.
* *log κ*: mean and sd of log κ over the run's usable κ measurements (every
  ``training.coordination.interval`` steps; those with D_S or D_T below ε = 1e-12, where
  κ is a clamping artefact, e.g. exactly 1 at the schedule's last step, are left out);
  measured in ``constant``/``static`` for logging, used by ``commit_clr``/``commit``;
  undefined under coordinate descent ("–").

**Audio** (``--modality audio``, or ``data.skillworld.modality: audio`` in the config): the
same benchmark on the audio SkillWorld family with the audio preset (``tiny-qwen2-audio``,
chosen when the config names the vision preset), default targets ``louder_tone_mc`` (rare)
and ``count_clip`` (common), the counterparts of ``parity_choice`` and ``count_grid``. Its
own section marker (``bench:coordination_audio``), JSON and PNG names, so the vision table
stays. The 0.12 loss target was calibrated on the vision student; for audio, unless
``--loss-target`` is given, the target is ``RELATIVE_TARGET`` × the mean loss of every
run's first ``WINDOW`` steps (0.86: the vision target's distance below its start).

Plots: the moving-average loss per mode against step (mean over seeds), and κ per mode
against step (geometric mean over seeds, log scale). Raw per-run histories go to ``--out``
(JSON, NaN written as null). With ``--write`` the section between the
``bench:coordination`` markers in docs/benchmarks.md is replaced by this run's (machine,
date and command included; appended when the markers are missing).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.report import write_section

ROOT = Path(__file__).resolve().parents[1]
MARK = "bench:coordination"
WINDOW = 10  # moving-average window of the loss, and the "final loss" tail
DEFAULT_LOSS_TARGET = 0.12  # vision (calibrated on the tiny-llava generic student)
RELATIVE_TARGET = 0.86  # other modalities: this × the mean loss of the runs' first WINDOW steps
DEFAULT_TARGETS = ("parity_choice", "count_grid")
MODALITY_TARGETS = {"vision": DEFAULT_TARGETS, "audio": ("louder_tone_mc", "count_clip")}
# Both media columns: every Sample parquet has them (null where the family has no such media).
TRAIN_COLUMNS = ["id", "task", "instruction", "response", "image", "audio"]
EVAL_COLUMNS = ["id", "task", "instruction", "image", "audio", "answer", "options"]
# Config defaults of this benchmark (before the command line's KEY=VALUE, which win):
# κ every 10 steps, so a 150-step run measures it 15 times.
BENCH_DEFAULTS = ("training.coordination.interval=10",)
QUICK = {"modes": ("constant", "commit"), "seeds": 1, "steps": 10, "eval_items": 32}


def machine() -> str:
    import torch

    return (f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
            f"Python {platform.python_version()}")


# --------------------------------------------------------------------------- data
def select_training_rows(corpus: Sequence[str | Path], targets: Sequence[str], size: int,
                         seed: int = 0) -> list[dict[str, Any]]:
    """``size`` corpus samples whose task's step chain equals one of the targets' chains,
    split evenly over the targets (the first targets get the remainder), seeded."""
    import pyarrow.parquet as pq

    # Task names are unique across the vision and audio families, so ALL_TASKS serves both.
    from mmtune.data.skillworld import ALL_TASKS as TASKS

    unknown = [t for t in targets if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown SkillWorld task(s) {unknown}")
    table = pq.read_table([str(p) for p in corpus], columns=_present(corpus, TRAIN_COLUMNS))
    rows = table.to_pylist()
    by_task: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_task.setdefault(r["task"], []).append(r)
    rng = random.Random(seed)
    chosen: list[dict[str, Any]] = []
    seen: set[str] = set()
    for k, t in enumerate(targets):
        chain = TASKS[t].reasoning_chain  # whatever the answer format (its option/check step)
        tasks = sorted(n for n in by_task
                       if n in TASKS and TASKS[n].kind == "corpus" and TASKS[n].reasoning_chain == chain)
        if not tasks:
            raise ValueError(f"no corpus task shares target {t!r}'s step chain {chain}")
        pool = [r for n in tasks for r in by_task[n] if r["id"] not in seen]
        want = size // len(targets) + (1 if k < size % len(targets) else 0)
        if len(pool) < want:
            raise ValueError(f"target {t!r}: {len(pool)} corpus samples with its chain ({', '.join(tasks)}), "
                             f"fewer than the {want} asked for; lower --train-size")
        pick = rng.sample(pool, want)
        seen.update(r["id"] for r in pick)
        chosen.extend(pick)
    rng.shuffle(chosen)
    return chosen


def _present(paths: Sequence[str | Path], columns: list[str]) -> list[str]:
    """``columns`` less a media column the files lack (a hand-made or older parquet without
    ``audio``): the rows then carry no such key, and ``r.get`` reads it as None."""
    import pyarrow.parquet as pq

    names = set(pq.read_schema(str(paths[0])).names) if paths else set(columns)
    return [c for c in columns if c in names or c not in ("image", "audio")]


def load_eval_rows(paths: Sequence[str | Path], n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Up to ``n`` test items (a seeded subset when the split is larger, in file order)."""
    import pyarrow.parquet as pq

    rows = pq.read_table([str(p) for p in paths], columns=_present(paths, EVAL_COLUMNS)).to_pylist()
    if n < len(rows):
        keep = sorted(random.Random(seed).sample(range(len(rows)), n))
        rows = [rows[i] for i in keep]
    return rows


def majority(rows: Sequence[Mapping[str, Any]]) -> float:
    from mmtune.data.answers import majority_baseline

    return majority_baseline([str(r["answer"]) for r in rows])


# --------------------------------------------------------------------------- one run
@dataclass(frozen=True)
class Settings:
    """What every (mode, seed) run shares."""

    student_dir: str
    student_cfg: dict[str, Any]  # StudentConfig as JSON
    training_cfg: dict[str, Any]  # TrainingConfig as JSON (mode, steps, batch set per run)
    steps: int
    batch_size: int
    max_new_tokens: int = 48
    eval_batch: int = 64
    threads: int = 1


def training_config(settings: Settings, mode: str) -> Any:
    from mmtune.config import TrainingConfig

    tc = TrainingConfig.model_validate(settings.training_cfg)
    coord = tc.coordination.model_copy(update={"mode": mode})
    return tc.model_copy(update={"max_steps": settings.steps, "batch_size": settings.batch_size,
                                 "checkpoint_every": settings.steps + 1, "num_workers": 1,
                                 "coordination": coord})


def evaluate_model(model: Any, processor: Any, rows: Sequence[Mapping[str, Any]], max_new_tokens: int,
                   batch: int = 64) -> dict[str, Any]:
    """Greedy answers of an in-memory model, scored as :class:`~mmtune.training.evaluate.Predictor` does."""
    from mmtune.data.answers import answers_match, extract_answer
    from mmtune.training.evaluate import generate

    was_training = model.training
    model.eval()
    correct = no_answer = 0
    for i in range(0, len(rows), batch):
        part = rows[i:i + batch]
        texts = generate(model, processor, [r["instruction"] for r in part], [r.get("image") for r in part],
                         max_new_tokens, audios=[r.get("audio") for r in part], ids=[r.get("id") for r in part])
        for r, text in zip(part, texts):
            pred = extract_answer(text)
            opts = None if r.get("options") is None else [str(o) for o in r["options"]]
            no_answer += pred is None
            correct += bool(answers_match(pred, str(r["answer"]), opts))
    if was_training:
        model.train()
    n = len(rows)
    return {"n": n, "accuracy": correct / n if n else float("nan"), "no_answer": no_answer}


def _clean(x: Any) -> Any:
    """JSON-safe: NaN/inf to None, tensors/numpy scalars to Python numbers."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if hasattr(x, "item") and not isinstance(x, (str, bytes)):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def run_one(mode: str, seed: int, train_rows: Sequence[Mapping[str, Any]],
            eval_sets: Mapping[str, Sequence[Mapping[str, Any]]], settings: Settings) -> dict[str, Any]:
    """Tune the student once (``mode``, ``seed``) and score it; no Ray in here.

    ``mode = None`` only evaluates the untuned student (the reference row).
    Returns ``{"mode", "seed", "history", "eval": {target: {n, accuracy, no_answer}},
    "train_s", "eval_s"}``; ``history`` is the loop's per-step metrics, JSON-safe.
    """
    import torch

    from mmtune.config import StudentConfig
    from mmtune.models.student import apply_lora, load_student
    from mmtune.training.loop import run_training

    torch.set_num_threads(settings.threads)
    try:  # no "Loading weights" bars from every Ray task
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass
    scfg = StudentConfig.model_validate(settings.student_cfg)
    model, processor = load_student(settings.student_dir, scfg)
    history: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    if mode is not None:
        torch.manual_seed(seed)  # the LoRA init: the same for every mode at this seed
        model = apply_lora(model, scfg)
        res = run_training(model, processor, list(train_rows), training_config(settings, mode), seed=seed,
                           total_steps=settings.steps)
        history = [_clean(m) for m in res.history]
    train_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    scores = {t: evaluate_model(model, processor, rows, settings.max_new_tokens, settings.eval_batch)
              for t, rows in eval_sets.items()}
    return {"mode": mode, "seed": seed, "history": history, "eval": scores, "train_s": train_s,
            "eval_s": time.perf_counter() - t1}


# --------------------------------------------------------------------------- summary
def moving_average(xs: Sequence[float], window: int = WINDOW) -> list[float]:
    """Trailing mean over up to ``window`` values (fewer at the start)."""
    out, acc = [], 0.0
    for i, x in enumerate(xs):
        acc += x
        if i >= window:
            acc -= xs[i - window]
        out.append(acc / min(i + 1, window))
    return out


def steps_to_target(losses: Sequence[float], target: float, window: int = WINDOW) -> int | None:
    """First step (1-based) whose trailing ``window``-step mean loss is ≤ ``target``; full
    windows only. None when never reached."""
    ma = moving_average(losses, window)
    for i in range(window - 1, len(ma)):
        if ma[i] <= target:
            return i + 1
    return None


def _below_eps(m: Mapping[str, Any]) -> bool:
    from mmtune.coordination import KAPPA_EPS

    return any(m.get(k) is not None and m[k] < KAPPA_EPS for k in ("balance/d_s", "balance/d_t"))


def log_kappas(history: Sequence[Mapping[str, Any]]) -> list[tuple[int, float]]:
    """(step, log κ) of a run's usable κ measurements (the ones that entered κ̄), except those
    with D_S or D_T below ``KAPPA_EPS``: κ = max(D_T, ε) / max(D_S, ε) is then a clamping
    artefact (both below ε gives exactly κ = 1, as at the last step of a cosine schedule,
    where the lr factor is ~1e-4), not a measured ratio. :func:`below_eps` counts them."""
    out = []
    for m in history:
        lk = m.get("balance/log_kappa")
        if (m.get("measured") and m.get("balance/usable") and lk is not None and math.isfinite(lk)
                and not _below_eps(m)):
            out.append((int(m["step"]), float(lk)))
    return out


def below_eps(history: Sequence[Mapping[str, Any]]) -> int:
    """Usable κ measurements left out of :func:`log_kappas` because a divergence was below ε."""
    return sum(1 for m in history if m.get("measured") and m.get("balance/usable") and _below_eps(m))


@dataclass
class ModeSummary:
    mode: str
    seeds: list[int]
    steps_to_target: list[int | None]
    final_loss: list[float]
    accuracy: dict[str, list[float]]
    log_kappa_mean: list[float] = field(default_factory=list)  # per seed; empty: κ not measured
    log_kappa_sd: list[float] = field(default_factory=list)
    kappa_below_eps: int = 0  # measurements left out of log κ (D_S or D_T < ε), all seeds
    seconds: list[float] = field(default_factory=list)


def summarize(runs: Sequence[Mapping[str, Any]], modes: Sequence[str], loss_target: float,
              window: int = WINDOW) -> list[ModeSummary]:
    """One :class:`ModeSummary` per mode in ``modes`` (the order given), from ``run_one`` results."""
    out = []
    for mode in modes:
        rs = sorted((r for r in runs if r["mode"] == mode), key=lambda r: r["seed"])
        if not rs:
            continue
        targets = list(rs[0]["eval"])
        s = ModeSummary(mode, [r["seed"] for r in rs], [], [], {t: [] for t in targets})
        for r in rs:
            losses = [float(m["loss"]) for m in r["history"]]
            s.steps_to_target.append(steps_to_target(losses, loss_target, window))
            s.final_loss.append(statistics.fmean(losses[-window:]) if losses else float("nan"))
            for t in targets:
                s.accuracy[t].append(float(r["eval"][t]["accuracy"]))
            lk = [v for _, v in log_kappas(r["history"])]
            if lk:
                s.log_kappa_mean.append(statistics.fmean(lk))
                s.log_kappa_sd.append(statistics.pstdev(lk))
            s.kappa_below_eps += below_eps(r["history"])
            s.seconds.append(float(r["train_s"]) + float(r["eval_s"]))
        out.append(s)
    return out


def mean_sd(xs: Sequence[float], fmt: str = ".3f") -> str:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    if not xs:
        return "–"
    if len(xs) == 1:
        return format(xs[0], fmt)
    return f"{format(statistics.fmean(xs), fmt)} ± {format(statistics.stdev(xs), fmt)}"


def format_steps(values: Sequence[int | None], total: int) -> str:
    """``mean ± sd`` over the seeds that reached the target, and how many did not (``>total``)."""
    reached = [v for v in values if v is not None]
    missed = len(values) - len(reached)
    if not reached:
        return f">{total}" + (f" (all {missed})" if missed > 1 else "")
    text = mean_sd([float(v) for v in reached], ".0f")
    return text + (f"; {missed}/{len(values)} >{total}" if missed else "")


def render_table(summaries: Sequence[ModeSummary], *, loss_target: float, total_steps: int,
                 majority: Mapping[str, float], untuned: Mapping[str, float] | None = None) -> str:
    """The markdown table: one row per mode (plus the untuned student when given)."""
    targets = list(majority)
    head = (["mode", f"steps to MA{WINDOW} loss ≤ {loss_target:g}", f"final loss (last {WINDOW})"]
            + [f"{t} acc (majority {majority[t]:.3f})" for t in targets]
            + ["mean acc", "mean log κ", "sd log κ", "s / run"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" + "---:|" * (len(head) - 1)]
    if untuned is not None:
        cells = ["untuned student", "–", "–"] + [f"{untuned[t]:.3f}" for t in targets]
        cells += [f"{statistics.fmean(untuned[t] for t in targets):.3f}", "–", "–", "–"]
        lines.append("| " + " | ".join(cells) + " |")
    for s in summaries:
        per_seed_mean = [statistics.fmean(s.accuracy[t][i] for t in targets) for i in range(len(s.seeds))]
        cells = [f"`{s.mode}`", format_steps(s.steps_to_target, total_steps), mean_sd(s.final_loss)]
        cells += [mean_sd(s.accuracy[t]) for t in targets]
        cells += [mean_sd(per_seed_mean), mean_sd(s.log_kappa_mean, "+.2f"), mean_sd(s.log_kappa_sd, ".2f"),
                  mean_sd(s.seconds, ".0f")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- plots
def plot_curves(runs: Sequence[Mapping[str, Any]], modes: Sequence[str], loss_png: Path, kappa_png: Path,
                *, loss_target: float, window: int = WINDOW) -> list[Path]:
    """The two PNGs; returns the paths written (κ's only when some mode measured κ)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    written = []
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for mode in modes:
        curves = [moving_average([float(m["loss"]) for m in r["history"]], window)
                  for r in runs if r["mode"] == mode and r["history"]]
        if not curves:
            continue
        n = min(len(c) for c in curves)
        mean = np.mean([c[:n] for c in curves], axis=0)
        ax.plot(np.arange(1, n + 1), mean, label=f"{mode} (n={len(curves)})")
    ax.axhline(loss_target, color="grey", ls="--", lw=1, label=f"target {loss_target:g}")
    ax.set_xlabel("step")
    ax.set_ylabel(f"training loss, {window}-step moving average")
    ax.set_title("Tuning loss per coordination mode (mean over seeds)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    loss_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(loss_png, dpi=120)
    plt.close(fig)
    written.append(loss_png)

    fig, ax = plt.subplots(figsize=(7, 4.2))
    any_kappa = False
    for mode in modes:
        per_step: dict[int, list[float]] = {}
        for r in runs:
            if r["mode"] == mode:
                for step, lk in log_kappas(r["history"]):
                    per_step.setdefault(step, []).append(lk)
        if not per_step:
            continue
        any_kappa = True
        steps = sorted(per_step)
        ax.plot(steps, [math.exp(statistics.fmean(per_step[s])) for s in steps], marker="o", ms=3, label=mode)
    if any_kappa:
        ax.axhline(1.0, color="grey", ls="--", lw=1)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("κ = D_T / D_S (geometric mean over seeds)")
        ax.set_title("Balance coefficient κ per mode (> 1: the LLM moves the output more)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, which="both")
        fig.tight_layout()
        kappa_png.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(kappa_png, dpi=120)
        written.append(kappa_png)
    plt.close(fig)
    return written


# --------------------------------------------------------------------------- modality
def bench_config(config: str | Path | None, overrides: Sequence[str], modality: str | None = None) -> Any:
    """The run config of a benchmark on one SkillWorld family.

    ``modality`` (None: the config's ``data.skillworld.modality``, overrides included) sets
    the family, and wins over the config. The config's preset student of the other family
    (``tiny-llava`` for audio) is swapped for this family's preset, so ``--modality audio``
    on configs/demo.yaml just works; a student given on the command line, or by hub id or
    path, is kept (a mismatched preset then fails with the pipeline's own message).
    """
    from mmtune.config import load_config
    from mmtune.training.pretrain import PRESET_MODALITY

    cfg = load_config(config, list(overrides))
    modality = modality or cfg.data.skillworld.modality
    extra = [f"data.skillworld.modality={modality}"]
    given = {o.split("=", 1)[0].strip() for o in overrides}
    if "student.name_or_path" not in given and PRESET_MODALITY.get(cfg.student.name_or_path, modality) != modality:
        extra.append("student.name_or_path=" + next(p for p, m in PRESET_MODALITY.items() if m == modality))
    return load_config(config, [*overrides, *extra])


def artefact_names(modality: str) -> dict[str, str]:
    """Section marker, JSON and PNG paths: the vision ones as before, audio's beside them."""
    tag = "" if modality == "vision" else f"_{modality}"
    return {"mark": MARK + tag, "out": str(ROOT / "runs" / "bench" / f"coordination{tag}.json"),
            "loss_png": str(ROOT / "docs" / "img" / f"coordination{tag}_loss.png"),
            "kappa_png": str(ROOT / "docs" / "img" / f"coordination{tag}_kappa.png")}


def default_loss_target(modality: str, runs: Sequence[Mapping[str, Any]], window: int = WINDOW) -> float:
    """Vision: the calibrated 0.12. Otherwise ``RELATIVE_TARGET`` × the mean loss of the runs'
    first ``window`` steps (every mode starts from the same student, so this is where the
    untuned student stands on the training set), rounded to 3 significant digits."""
    if modality == "vision":
        return DEFAULT_LOSS_TARGET
    heads = [float(m["loss"]) for r in runs for m in r["history"][:window]]
    if not heads:
        raise ValueError("no training losses to derive a loss target from; pass --loss-target")
    return float(f"{RELATIVE_TARGET * statistics.fmean(heads):.3g}")


# --------------------------------------------------------------------------- driver
def _shown(path: Path) -> str:
    """A path as the docs show it: relative to the repository when inside it."""
    p = path.resolve()
    return os.path.relpath(p, ROOT) if p.is_relative_to(ROOT) else str(p)


def run_all(jobs: Sequence[tuple[str | None, int]], train_rows: list[dict[str, Any]],
            eval_sets: dict[str, list[dict[str, Any]]], settings: Settings,
            progress: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Every (mode, seed) job as a one-CPU Ray task; results in completion order."""
    import ray

    remote = ray.remote(num_cpus=1)(run_one)
    train_ref, eval_ref = ray.put(train_rows), ray.put(eval_sets)
    pending = {remote.remote(mode, seed, train_ref, eval_ref, settings): (mode, seed) for mode, seed in jobs}
    results = []
    t0 = time.time()
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            pending.pop(ref)
            r = ray.get(ref)
            results.append(r)
            accs = " ".join(f"{t}={e['accuracy']:.3f}" for t, e in r["eval"].items())
            if r["mode"] is None:
                progress(f"[run] untuned student: {accs} ({r['eval_s']:.0f} s)")
            else:
                losses = [m["loss"] for m in r["history"]]
                progress(f"[run] {r['mode']:<12} seed {r['seed']}: {len(losses)} steps, final loss "
                         f"{statistics.fmean(losses[-WINDOW:]):.4f}, {accs}, {r['train_s']:.0f}+{r['eval_s']:.0f} s "
                         f"[{len(results)}/{len(jobs)} done, {time.time() - t0:.0f} s]")
    return results


def main(argv: list[str] | None = None) -> int:
    from mmtune.coordination import MODES

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    ap.add_argument("--modality", choices=sorted(MODALITY_TARGETS),
                    help="SkillWorld family (default: the config's data.skillworld.modality)")
    ap.add_argument("--student", help="student directory (default: the cached generic student, built if missing)")
    ap.add_argument("--targets", help="comma-separated SkillWorld targets (default: vision "
                    f"{','.join(MODALITY_TARGETS['vision'])}; audio {','.join(MODALITY_TARGETS['audio'])})")
    ap.add_argument("--modes", default=",".join(MODES), help="comma-separated coordination modes")
    ap.add_argument("--seeds", type=int, default=3, help="training seeds 0..N-1 per mode")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--train-size", type=int, default=512)
    ap.add_argument("--data-seed", type=int, default=0, help="seed of the training-set and eval-subset draws")
    ap.add_argument("--loss-target", type=float,
                    help=f"training-loss target on the {WINDOW}-step moving average (default: vision "
                    f"{DEFAULT_LOSS_TARGET:g}; audio {RELATIVE_TARGET:g} × the runs' mean loss over their first "
                    f"{WINDOW} steps)")
    ap.add_argument("--eval-items", type=int, default=256, help="test items per target")
    ap.add_argument("--cpus", type=int, default=os.cpu_count(), help="Ray CPUs: runs at a time")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--no-untuned", action="store_true", help="skip scoring the untuned student")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: modes constant,commit, 1 seed, 10 steps, 32 eval items")
    ap.add_argument("--out", help="raw results (default runs/bench/coordination[_audio].json)")
    ap.add_argument("--loss-png", help="default docs/img/coordination[_audio]_loss.png")
    ap.add_argument("--kappa-png", help="default docs/img/coordination[_audio]_kappa.png")
    ap.add_argument("--no-plots", action="store_true", help="skip the PNGs (no matplotlib needed)")
    ap.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    ap.add_argument("overrides", nargs="*", help="config overrides KEY=VALUE (e.g. run.cache_dir=... training.lr=...)")
    args = ap.parse_args(argv)
    if args.quick:
        args.modes = ",".join(QUICK["modes"])
        args.seeds, args.steps, args.eval_items = QUICK["seeds"], QUICK["steps"], QUICK["eval_items"]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad:
        ap.error(f"unknown mode(s) {bad}; allowed: {', '.join(MODES)}")
    if args.seeds < 1 or args.steps < 1 or args.eval_items < 1 or args.train_size < 1:
        ap.error("--seeds, --steps, --eval-items and --train-size must be ≥ 1")
    if not args.no_plots:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            ap.error("the plots need matplotlib: pip install -e '.[bench]' (or pass --no-plots)")

    from mmtune.data.catalog import data_paths
    from mmtune.runtime import init_ray
    from mmtune.training.pretrain import META_FILE, ensure_generic_student

    cfg = bench_config(args.config, [*BENCH_DEFAULTS, *args.overrides], args.modality)
    modality = cfg.data.skillworld.modality
    names = artefact_names(modality)
    args.out, args.loss_png, args.kappa_png = (args.out or names["out"], args.loss_png or names["loss_png"],
                                               args.kappa_png or names["kappa_png"])
    targets = [t.strip() for t in (args.targets or ",".join(MODALITY_TARGETS[modality])).split(",") if t.strip()]
    paths = data_paths(cfg)
    missing = [t for t in targets if t not in paths.target_test]
    if missing:
        ap.error(f"target(s) {missing} not generated; SkillWorld has {sorted(paths.target_test)} "
                 "(set data.skillworld.targets=[...])")
    # absolute: the Ray tasks need not share this process's working directory
    sdir = (Path(args.student) if args.student else ensure_generic_student(cfg)).resolve()
    meta_file = sdir / META_FILE
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}

    t0 = time.time()
    train_rows = select_training_rows(paths.corpus, targets, args.train_size, args.data_seed)
    eval_sets = {t: load_eval_rows(paths.target_test[t], args.eval_items, args.data_seed) for t in targets}
    maj = {t: majority(rows) for t, rows in eval_sets.items()}
    by_task: dict[str, int] = {}
    for r in train_rows:
        by_task[r["task"]] = by_task.get(r["task"], 0) + 1
    print(f"[data] {len(train_rows)} training samples ({', '.join(f'{k} {v}' for k, v in sorted(by_task.items()))}); "
          f"eval {', '.join(f'{t} {len(r)}' for t, r in eval_sets.items())} items ({time.time() - t0:.1f} s)")

    settings = Settings(student_dir=str(sdir), student_cfg=cfg.student.model_dump(mode="json"),
                        training_cfg=cfg.training.model_dump(mode="json"), steps=args.steps,
                        batch_size=args.batch_size, max_new_tokens=cfg.student.max_new_tokens,
                        eval_batch=cfg.eval.batch_size, threads=args.threads)
    jobs: list[tuple[str | None, int]] = [] if args.no_untuned else [(None, 0)]
    jobs += [(m, s) for s in range(args.seeds) for m in modes]
    init_ray(cfg.ray.model_copy(update={"num_cpus": args.cpus}))
    t0 = time.time()
    results = run_all(jobs, train_rows, eval_sets, settings)
    wall = time.time() - t0
    runs = [r for r in results if r["mode"] is not None]
    base = next((r for r in results if r["mode"] is None), None)
    untuned = {t: e["accuracy"] for t, e in base["eval"].items()} if base else None

    if args.loss_target is None:
        args.loss_target = default_loss_target(modality, runs)
    summaries = summarize(runs, modes, args.loss_target)
    n_eps = sum(s.kappa_below_eps for s in summaries)
    table = render_table(summaries, loss_target=args.loss_target, total_steps=args.steps, majority=maj,
                         untuned=untuned)
    pngs = ([] if args.no_plots else
            plot_curves(runs, modes, Path(args.loss_png), Path(args.kappa_png), loss_target=args.loss_target))

    tc = cfg.training
    cmd = "python -m bench.coordination " + " ".join(sys.argv[1:] if argv is None else argv)
    settings_line = (
        f"targets {', '.join(targets)}; {len(train_rows)} training samples "
        f"({', '.join(f'{k} {v}' for k, v in sorted(by_task.items()))}; data seed {args.data_seed}); "
        f"{args.steps} steps × batch {args.batch_size}; lr {tc.lr:g} (encoder_lr {tc.encoder_lr:g} in `static`), "
        f"warm-up ratio {tc.warmup_ratio:g} + cosine, κ every {tc.coordination.interval} steps (probe "
        f"{tc.coordination.probe_size}, EMA {tc.coordination.ema_decay:g}, clip {tc.coordination.ratio_clip:g}), "
        f"λ {tc.coordination.reg_lambda:g} / τ {tc.coordination.reg_tau:g} ({tc.coordination.reg_variant}); "
        f"LoRA r {cfg.student.lora.r}, dropout {cfg.student.lora.dropout:g}; "
        f"{'seed 0' if args.seeds == 1 else f'seeds 0–{args.seeds - 1}'}; "
        f"eval {args.eval_items} test items per target, greedy, max {cfg.student.max_new_tokens} new tokens")
    student_line = f"`{_shown(sdir)}`"
    if meta:
        # "student" names the preset in newer metas; older ones were all tiny-llava
        student_line += (f" ({meta.get('student') or 'tiny-llava'}, {meta['params'] / 1e6:.2f}M "
                         f"parameters, {meta['steps']} pre-training steps)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(_clean({
        "command": cmd.strip(), "date": dt.datetime.now().isoformat(timespec="seconds"), "machine": machine(),
        "modality": modality, "student": str(sdir), "targets": targets, "modes": modes, "seeds": args.seeds,
        "steps": args.steps,
        "batch_size": args.batch_size, "loss_target": args.loss_target, "window": WINDOW,
        "train_size": len(train_rows), "train_tasks": by_task, "eval_items": args.eval_items,
        "majority": maj, "untuned": untuned, "training": tc.model_dump(mode="json"), "wall_s": wall,
        "summary": [asdict(s) for s in summaries], "runs": runs,
    }), indent=1))

    docs = ROOT / "docs"
    links = " · ".join(f"[{p.stem}]({os.path.relpath(p.resolve(), docs)})" for p in pngs)
    lines = [
        f"<!-- {names['mark']} -->",
        "### Coordination modes (CoMMIT and its baselines)" + ("" if modality == "vision" else f", {modality}"),
        "",
        f"- date: {dt.date.today().isoformat()}; machine: {machine()}",
        f"- command: `{cmd.strip()}`",
        f"- student: {student_line}",
        f"- settings: {settings_line}",
        (f"- {len(runs)} runs as 1-CPU Ray tasks ({args.cpus} at a time, {args.threads} torch thread(s) each) "
         f"in {wall:.0f} s; raw histories in `{_shown(out)}`"),
        (f"- steps to target: first step whose {WINDOW}-step moving-average training loss is ≤ "
         f"{args.loss_target:g} (mean ± sd over the seeds that got there; `>N`: never within the run); "
         f"accuracy: mean ± sd over seeds; log κ: per-run mean and sd over the usable κ measurements, "
         f"then mean ± sd over seeds (– : κ not measured); "
         f"{n_eps} measurement(s) with D_S or D_T below ε = 1e-12 left out (κ is a clamping artefact there)"),
        "",
        table,
        "",
        f"Plots: {links or '– (--no-plots)'}",
        f"<!-- /{names['mark']} -->",
    ]
    section = "\n".join(lines)
    print("\n" + section)
    print(f"\nwrote {out}" + "".join(f", {p}" for p in pngs))
    if args.write and not write_section(names["mark"], section):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
