"""Ray Tune with ASHA over CoMMIT's constants: :func:`run_search`.

Each trial is one coordinated training run (the project's train loop under the CoMMIT
scheduler, on Ray Train V2; :mod:`mmtune.search.trial`) under the base config plus the
trial's values. It reports at ``rungs`` evenly spaced steps of its budget the accuracy
and loss on the **target validation split(s)** (never test; :mod:`mmtune.search.rungs`),
so ASHA can stop a poor trial at an early rung. The best trial's full config is written
back as YAML that :func:`mmtune.config.load_config` reads.

Outputs under ``out_dir``::

    best_config.yaml     the base config with the best trial's values (load_config reads it)
    trials.parquet/.csv  one row per trial: values, last-rung metrics, rungs, status, error
    rungs.parquet        one row per (trial, rung): step, val_accuracy, val_loss, train_loss, κ̄
    search.json          settings, space, resources, best trial, paths, seconds
    tune/                Ray Tune's experiment directory (per-trial result.json, progress.csv)
    train/               Ray Train's storage for the trials' runs (no checkpoints are kept)

Ray must be initialised by the caller (the CLI or ``ray_jobs/search_scheduler.py``).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

from mmtune.config import ConfigError, RunConfig
from mmtune.search.results import (
    BASE_COLUMNS,
    format_trials,
    pick_best,
    trial_status,
    write_table,
)
from mmtune.search.space import (
    DEFAULT_SPACE,
    Dim,
    apply_overrides,
    describe_space,
    parse_space,
    space_for_mode,
    validate_space,
)

# A trial's driver (the Tune trainable) only waits on its training run when the run has
# its own worker group; Tune refuses 0, so it holds a token share of a CPU.
DRIVER_CPUS = 0.01
# CPUs left free for Ray Data's read tasks (1 CPU each): with none free, trials wait forever
# for their training data (the same hang mmtune.training.trainer.check_cpu_headroom names).
READ_RESERVE_CPUS = 1.0
METRICS = ("val_accuracy", "val_loss", "train_loss")


@dataclass(frozen=True)
class SearchSettings:
    """ASHA and placement settings. These become ``search.*`` fields of the run config;
    :meth:`from_config` reads any that :class:`mmtune.config.SearchConfig` has and keeps
    these defaults for the rest."""

    rungs: int = 4  # evaluations per trial at its full budget (ASHA's max_t, in rungs)
    grace_period: int = 1  # rungs every trial trains before ASHA may stop it
    reduction_factor: float = 2.0  # ASHA keeps the top 1/reduction_factor at each rung
    placement: Literal["workers", "trial"] = "workers"
    cpus_per_worker: float | None = None  # None: fit max_concurrent_trials on the cluster
    max_val_items: int | None = 200  # items scored per validation split at each rung
    evaluate_base: bool = True  # trial 0 runs the base config's own values (Tune points_to_evaluate)
    stop_timeout_s: float = 120.0  # how long a stopped trial waits for its run to end

    @classmethod
    def from_config(cls, search: Any) -> SearchSettings:
        return cls(**{f.name: getattr(search, f.name) for f in fields(cls) if hasattr(search, f.name)})

    def check(self) -> None:
        def bad(name: str, got: Any, allowed: str) -> ConfigError:
            return ConfigError(f"search.{name}: got {got!r}; {allowed}")

        if self.rungs < 1:
            raise bad("rungs", self.rungs, "need ≥ 1")
        if not 1 <= self.grace_period <= self.rungs:
            raise bad("grace_period", self.grace_period, f"need 1 ≤ grace_period ≤ rungs ({self.rungs})")
        if self.reduction_factor <= 1:
            raise bad("reduction_factor", self.reduction_factor, "need > 1")
        if self.placement not in ("workers", "trial"):
            raise bad("placement", self.placement, "allowed: 'workers', 'trial'")
        if self.cpus_per_worker is not None and self.cpus_per_worker <= 0:
            raise bad("cpus_per_worker", self.cpus_per_worker, "need > 0 (or null to size from the cluster)")
        if self.max_val_items is not None and self.max_val_items < 1:
            raise bad("max_val_items", self.max_val_items, "need ≥ 1 (or null for every item)")


@dataclass
class SearchResult:
    best_overrides: dict[str, Any]
    best_metric: float
    metric: str
    mode: str
    best_trial: str
    best_config_path: str
    trials_path: str  # parquet; a CSV copy sits beside it
    rungs_path: str
    summary_path: str
    num_trials: int
    seconds: float


@dataclass(frozen=True)
class ResourcePlan:
    placement: str
    concurrency: int
    trial_resources: dict[str, float]  # the Tune trial actor's
    cpus_per_worker: float  # each Train worker's (the trial's own share under placement=trial)
    workers_per_trial: int
    use_gpu: bool
    torch_threads: int


def plan_resources(*, cluster_cpus: float, concurrency: int, num_workers: int, placement: str,
                   use_gpu: bool, cpus_per_worker: float | None, default_cpus_per_worker: float,
                   torch_threads: int | None) -> ResourcePlan:
    """Per-trial resources so that ``concurrency`` trials run at once and Ray Data keeps a CPU.

    On 2 CPUs with 2 concurrent trials of 1 worker: 0.49 CPU per worker (placement
    ``workers``; each trial's driver holds 0.01) or 0.5 CPU per trial (``trial``).
    """
    workers = num_workers if placement == "workers" else 1
    driver = DRIVER_CPUS if placement == "workers" else 0.0
    budget = cluster_cpus - READ_RESERVE_CPUS - concurrency * driver
    cpw = cpus_per_worker if cpus_per_worker is not None else min(
        default_cpus_per_worker, math.floor(100 * budget / (concurrency * workers)) / 100)
    need = concurrency * (workers * cpw + driver)
    if cpw < 0.05 or need > cluster_cpus - READ_RESERVE_CPUS + 1e-9:
        raise ConfigError(
            f"search.max_concurrent_trials={concurrency} × {workers} worker(s) × {cpw:g} CPU needs {need:g} CPUs; "
            f"the cluster has {cluster_cpus:g} and {READ_RESERVE_CPUS:g} stays free for Ray Data's reads. "
            "Lower search.max_concurrent_trials or training.num_workers, or set search.cpus_per_worker")
    gpu = {"GPU": 1.0} if use_gpu and placement == "trial" else {}
    trial = {"CPU": DRIVER_CPUS} if placement == "workers" else {"CPU": cpw, **gpu}
    return ResourcePlan(placement=placement, concurrency=concurrency, trial_resources=trial, cpus_per_worker=cpw,
                        workers_per_trial=workers, use_gpu=use_gpu,
                        torch_threads=torch_threads or max(1, int(cpw)))


def check_metric(metric: str, mode: str, splits: Sequence[str]) -> None:
    allowed = [*METRICS, *(f"val_accuracy/{s}" for s in splits), *(f"val_loss/{s}" for s in splits)]
    if metric not in allowed:
        raise ConfigError(f"search.metric: got {metric!r}; allowed: {', '.join(allowed)}")
    want = "max" if metric.startswith("val_accuracy") else "min"
    if mode != want:
        raise ConfigError(f"search.mode: got {mode!r} for search.metric={metric}; it should be {want!r}")


def base_values(cfg: RunConfig, paths: Sequence[str]) -> dict[str, Any]:
    """The base config's value at each dotted path (the search's trial 0 by default)."""
    out = {}
    for path in paths:
        node: Any = cfg.to_dict()
        for key in path.split("."):
            node = node[key]
        out[path] = node
    return out


def _abs(p: str | Path) -> str:
    """Local paths made absolute (Tune runs trials in their own directories); URIs kept."""
    s = str(p)
    return s if "://" in s else str(Path(s).resolve())


def _student_ref(p: str | Path) -> str:
    """A local student directory made absolute; a hub id (e.g. llava-hf/llava-1.5-7b-hf) kept."""
    return str(Path(p).resolve()) if Path(p).exists() else str(p)


def _trial_dirname(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


def _progress_callback(progress, metric: str):
    from ray import tune

    class Progress(tune.Callback):
        """One line per rung and per finished trial, on the driver."""

        def __init__(self, progress, metric: str) -> None:
            self._progress, self._metric = progress, metric

        def __getstate__(self) -> dict:
            # Tune pickles its run config into the experiment directory (for restore);
            # the progress function stays out of it (it need not be picklable).
            return {"metric": self._metric}

        def __setstate__(self, state: dict) -> None:
            self._progress, self._metric = (lambda *_: None), state["metric"]

        def on_trial_result(self, iteration, trials, trial, result, **info):
            nan = float("nan")
            shown = dict.fromkeys([self._metric, "val_accuracy", "val_loss", "train_loss"])
            figures = " ".join(f"{k} {result.get(k, nan):.4g}" for k in shown)
            self._progress(f"[search] {trial.trial_id} rung {result.get('rung')}/{result.get('rungs')} step "
                           f"{result.get('step')}/{result.get('total_steps')}: {figures} "
                           f"κ̄ {result.get('kappa_bar', nan):.3g}")

        def on_trial_complete(self, iteration, trials, trial, **info):
            last = trial.last_result or {}
            how = ("full budget" if last.get("rung") == last.get("rungs")
                   else f"stopped by ASHA at rung {last.get('rung')}")
            self._progress(f"[search] {trial.trial_id} finished: {how}")

        def on_trial_error(self, iteration, trials, trial, **info):
            self._progress(f"[search] {trial.trial_id} failed (see {trial.local_path}/error.txt)")

    return Progress(progress, metric)


def run_search(cfg: RunConfig, train_paths: Sequence[str], val_splits: Mapping[str, Sequence[str]], *,
               student: str | Path | None = None, out_dir: str | Path, progress=print,
               space: Mapping[str, Any] | None = None, settings: SearchSettings | None = None) -> SearchResult:
    """Search CoMMIT's constants with Ray Tune + ASHA; write the best config back as YAML.

    * ``train_paths``: Sample-schema parquet files every trial trains on.
    * ``val_splits``: ``{split name: parquet paths}`` of the target **validation** split(s);
      trials are scored on these at every rung (at most ``settings.max_val_items`` items
      each, the same items for every trial).
    * ``student``: the starting student (default: the config's, built on first use).
    * ``space``: ``{dotted path: Dim | {loguniform|uniform|choice: ...}}``; default
      ``search.space`` when the config has it, else :data:`~mmtune.search.space.DEFAULT_SPACE`.
    * ``settings``: ASHA/placement settings; default :meth:`SearchSettings.from_config`.

    ``cfg.search`` gives ``num_samples``, ``max_concurrent_trials``, ``metric``, ``mode``.
    """
    import ray
    import ray.data
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from mmtune.search.rungs import read_val_rows
    from mmtune.search.trial import CoordinatedTrial
    from mmtune.training.pretrain import resolve_student
    from mmtune.training.shards import COLUMNS
    from mmtune.training.trainer import resolve_use_gpu

    t0 = time.time()
    settings = settings or SearchSettings.from_config(cfg.search)
    settings.check()
    spec = space if space is not None else getattr(cfg.search, "space", None)
    dims: dict[str, Dim] = parse_space(spec) if spec else dict(DEFAULT_SPACE)
    dims = space_for_mode(dims, cfg.training.coordination.mode, progress)
    validate_space(dims, cfg)
    if not val_splits:
        raise ConfigError("no validation split to score trials on: configure data.targets (their val files)")
    check_metric(cfg.search.metric, cfg.search.mode, list(val_splits))
    if not train_paths:
        raise ConfigError("no training data: pass --data PATH (Sample parquet) or set data.corpus")
    if not ray.is_initialized():
        raise RuntimeError("Ray is not initialised: the entry point calls mmtune.runtime.init_ray(cfg.ray) first")

    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    student_path = _student_ref(student or resolve_student(cfg, progress=progress))
    concurrency = min(cfg.search.max_concurrent_trials, cfg.search.num_samples)
    plan = plan_resources(
        cluster_cpus=float(ray.cluster_resources().get("CPU", 0)), concurrency=concurrency,
        num_workers=cfg.training.num_workers, placement=settings.placement,
        use_gpu=resolve_use_gpu(cfg.training.use_gpu), cpus_per_worker=settings.cpus_per_worker,
        default_cpus_per_worker=cfg.training.cpus_per_worker, torch_threads=cfg.training.torch_threads)
    if plan.placement == "workers" and cfg.training.parallel == "fsdp":
        from mmtune.training.trainer import check_parallel

        check_parallel(cfg.training.parallel, plan.use_gpu, cfg.training.coordination.mode)

    val_rows = read_val_rows(val_splits, settings.max_val_items, cfg.run.seed)
    progress(f"[search] {cfg.search.num_samples} trial(s), {concurrency} at a time, ASHA over {settings.rungs} "
             f"rung(s) (grace {settings.grace_period}, reduction {settings.reduction_factor:g}); "
             f"{cfg.search.metric} ({cfg.search.mode}) on "
             + ", ".join(f"{k} ({len(v)} items)" for k, v in val_rows.items())
             + f"; placement {plan.placement}: {plan.workers_per_trial} worker(s) × {plan.cpus_per_worker:g} CPU "
             "per trial"
             + (" + GPU" if plan.use_gpu else "") + f"\n[search] space:\n{describe_space(dims)}")

    # Read the training data once: every trial iterates the same materialized blocks (the
    # object store spills to disk when it must), instead of each trial running its own
    # read tasks (measured on 2 CPUs: ~30 s per trial of reads waiting for a free CPU).
    t_read = time.time()
    train_ds = ray.data.read_parquet([_abs(p) for p in train_paths]).select_columns(COLUMNS).materialize()
    train_ids = train_ds.select_columns(["id"]).materialize()
    progress(f"[search] training data: {train_ds.count()} rows from {len(train_paths)} file(s), read once "
             f"in {time.time() - t_read:.1f}s")
    run = {"paths": list(dims), "placement": plan.placement, "train": train_ds, "train_ids": train_ids,
           "student_path": student_path, "use_gpu": plan.use_gpu, "cpus_per_worker": plan.cpus_per_worker,
           "torch_threads": plan.torch_threads, "rungs": settings.rungs, "val_rows": ray.put(val_rows),
           "train_storage": str(out / "train"), "stop_timeout_s": settings.stop_timeout_s}
    base_point = base_values(cfg, dims)
    trainable = tune.with_resources(tune.with_parameters(CoordinatedTrial, base=cfg.to_dict(), run=run),
                                    plan.trial_resources)
    scheduler = ASHAScheduler(time_attr="training_iteration", max_t=settings.rungs,
                              grace_period=settings.grace_period, reduction_factor=settings.reduction_factor)
    tuner = tune.Tuner(
        trainable,
        param_space={p: d.to_tune() for p, d in dims.items()},
        tune_config=tune.TuneConfig(
            metric=cfg.search.metric, mode=cfg.search.mode, scheduler=scheduler,
            # The concurrency cap lives on the generator: Tune ignores max_concurrent_trials
            # when given a SearchGenerator (it says so).
            search_alg=BasicVariantGenerator(random_state=cfg.run.seed, max_concurrent=concurrency,
                                             points_to_evaluate=[base_point] if settings.evaluate_base else None),
            num_samples=cfg.search.num_samples, reuse_actors=False, trial_dirname_creator=_trial_dirname),
        run_config=tune.RunConfig(
            name="tune", storage_path=str(out), verbose=0, callbacks=[_progress_callback(progress, cfg.search.metric)],
            failure_config=tune.FailureConfig(max_failures=0),
            checkpoint_config=tune.CheckpointConfig(checkpoint_at_end=False)),
    )
    grid = tuner.fit()

    rows, rung_rows = [], []
    for res in grid:
        last = dict(res.metrics or {})
        trial = str(last.get("trial_id") or Path(res.path).name.removeprefix("trial_"))
        error = None if res.error is None else f"{type(res.error).__name__}: {res.error}".splitlines()[0][:500]
        row = {"trial": trial, "status": trial_status(last, error), "rung": last.get("rung"),
               "rungs": last.get("rungs"), "step": last.get("step"), "total_steps": last.get("total_steps"),
               "metric": last.get(cfg.search.metric), "val_accuracy": last.get("val_accuracy"),
               "val_loss": last.get("val_loss"), "train_loss": last.get("train_loss"),
               "kappa_bar": last.get("kappa_bar"), "seconds": last.get("time_total_s"), "error": error,
               **{p: res.config.get(p) for p in dims}}
        rows.append(row)
        df = res.metrics_dataframe
        if df is not None and len(df):
            for rec in df.to_dict("records"):
                rung_rows.append({"trial": trial, **{k: rec.get(k) for k in (
                    "rung", "step", "val_accuracy", "val_loss", "train_loss", "kappa_bar", "lr_encoder", "lr_llm",
                    "elapsed_s")}})
    rows.sort(key=lambda r: r["trial"])
    # The tables first: when every trial failed, they hold the errors pick_best reports.
    trials_path, _ = write_table(rows, [*BASE_COLUMNS, *dims], out / "trials")
    rungs_path, _ = write_table(rung_rows, ["trial", "rung", "step", "val_accuracy", "val_loss", "train_loss",
                                            "kappa_bar", "lr_encoder", "lr_llm", "elapsed_s"], out / "rungs")
    best = pick_best(rows, "metric", cfg.search.mode)
    best_overrides = {p: best[p] for p in dims}
    best_cfg = apply_overrides(cfg, best_overrides)
    best_path = out / "best_config.yaml"
    best_path.write_text(f"# best of {len(rows)} search trial(s): trial {best['trial']}, {cfg.search.metric} "
                         f"{best['metric']:.4g} at rung {best['rung']}/{best['rungs']}\n" + best_cfg.to_yaml())
    seconds = round(time.time() - t0, 2)
    result = SearchResult(best_overrides=best_overrides, best_metric=float(best["metric"]),
                          metric=cfg.search.metric, mode=cfg.search.mode, best_trial=str(best["trial"]),
                          best_config_path=str(best_path), trials_path=str(trials_path), rungs_path=str(rungs_path),
                          summary_path=str(out / "search.json"), num_trials=len(rows), seconds=seconds)
    summary = {**asdict(result), "settings": asdict(settings), "resources": asdict(plan),
               "space": {p: d.describe() for p, d in dims.items()}, "val_splits": {k: list(map(str, v)) for k, v in
                                                                                  val_splits.items()},
               "val_items": {k: len(v) for k, v in val_rows.items()}, "train_paths": [_abs(p) for p in train_paths],
               "student": student_path, "trials": rows}
    (out / "search.json").write_text(json.dumps(summary, indent=2, default=str))
    progress(format_trials(rows, list(dims), cfg.search.metric, best=str(best["trial"])))
    progress(f"[search] best trial {best['trial']}: {cfg.search.metric} {best['metric']:.4g}; "
             f"config: {best_path}; trials: {trials_path} ({seconds:.0f}s)")
    return result


__all__ = ["ResourcePlan", "SearchResult", "SearchSettings", "base_values", "check_metric", "plan_resources",
           "run_search"]
