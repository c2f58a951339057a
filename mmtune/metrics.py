"""mmtune's figures in Ray's metrics system (dashboard, Prometheus endpoint, Grafana).

The one place where every mmtune metric is declared: its name, kind, tags and
description (``SPECS``). Ray exports custom metrics with a ``ray_`` prefix, ``_total`` on
counters and ``_bucket``/``_sum``/``_count`` for histograms, so Prometheus sees e.g.
``ray_mmtune_train_kappa{run="demo",rank="0"}``; :func:`metric_names` lists those names,
``docs/operations.md`` explains each one and ``cluster/grafana/mmtune.json`` plots them
(tests check that the three agree).

Four families:

- ``train_*``: per-step figures of each Ray Train worker (:class:`TrainMetrics`);
- ``pipeline_*``: stage progress of the pipeline driver and rows quarantined by the data
  import and the index build (:class:`PipelineMetrics`, :func:`record_quarantine`);
- ``teacher_*``: requests, errors and latency of the teacher's Serve deployments
  (:class:`TeacherMetrics`);
- ``retrieval_*``: queries, searches and selected samples per round (driver), and
  contents embedded (the Ray Data embedder actors).

The pure core never imports this module: the Ray adapters (the Train worker, the Serve
deployments, the pipeline driver, Ray Data actors) create a recorder and feed it numbers
the core already returns. Outside a Ray process (``ray.is_initialized()`` false) the
recorders are inert, so library code and plain-torch benchmarks call them
unconditionally. A recording error (a tag missing) is logged, never raised: a metric must
not fail a run.

Measured on Ray 2.60: a metric recorded by the driver, a Serve replica or a Data/Train
worker reaches the node's endpoint (``ray.nodes()[i]["MetricsExportPort"]``, dashboard
or not) within one report interval (10 s by default); a gauge not set again for two
intervals disappears from it (hence ``keep_gauges``); descriptions must be ASCII (Ray
registers them in C++); a histogram's ``_sum`` is approximate (Ray adds each bucket's
midpoint, not the observed value), so read latencies from the buckets.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

PREFIX = "mmtune_"


@dataclass(frozen=True)
class MetricSpec:
    kind: str  # "gauge" | "counter" | "histogram"
    tags: tuple[str, ...]
    description: str  # ASCII only: Ray registers it in C++
    boundaries: tuple[float, ...] = ()  # histograms only

    def prometheus_names(self, name: str) -> list[str]:
        full = f"ray_{PREFIX}{name}"
        if self.kind == "counter":
            return [full + "_total"]
        if self.kind == "histogram":
            return [full + s for s in ("_bucket", "_sum", "_count")]
        return [full]


# ----------------------------------------------------------------------------- training
# name (without the prefix) -> (metric key in the training loop's report, description)
TRAIN_GAUGES: dict[str, tuple[str, str]] = {
    "train_loss": ("loss", "training loss of the last step (this worker's batch)"),
    "train_kappa": ("kappa", "CoMMIT balance coefficient kappa = D_T/D_S at the last probe"),
    "train_kappa_bar": ("kappa_bar", "EMA of kappa (exp of the EMA of log kappa) the scheduler follows"),
    "train_d_s": ("d_s", "D_S: output change from the encoder group's update alone (KL)"),
    "train_d_t": ("d_t", "D_T: output change from the LLM group's update alone (KL)"),
    "train_lr_encoder": ("lr_encoder", "eta_S: learning rate of the encoder group"),
    "train_lr_llm": ("lr_llm", "eta_T: learning rate of the LLM group"),
    "train_grad_norm_encoder": ("grad_norm_encoder", "gradient norm of the encoder group, before clipping"),
    "train_grad_norm_llm": ("grad_norm_llm", "gradient norm of the LLM group, before clipping"),
    "train_samples_per_s": ("samples_per_s", "this worker's training throughput over the last step"),
    "train_step": ("step", "completed optimizer steps"),
    "train_epoch": ("epoch", "current epoch"),
}
TRAIN_COUNTERS: dict[str, tuple[str, str]] = {
    "train_steps": ("", "optimizer steps completed (1 per report)"),
    "train_samples": ("batch_size", "training samples consumed"),
}
TRAIN_TAGS = ("run", "rank", "mode")

# ----------------------------------------------------------------------------- teacher
# Seconds: a tiny CPU model answers in milliseconds, a 7B teacher fusing a batch of 16
# long prompts in tens of seconds; two minutes is the HTTP client's patience.
LATENCY_BOUNDARIES = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
BATCH_BOUNDARIES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
# Every teacher series names its Serve application and deployment (Serve's own metrics use
# the same tag names, so Grafana can join them).
_SERVE_TAGS = ("application", "deployment")

# ----------------------------------------------------------------------------- all of them
SPECS: dict[str, MetricSpec] = {
    **{n: MetricSpec("gauge", TRAIN_TAGS, d) for n, (_, d) in TRAIN_GAUGES.items()},
    **{n: MetricSpec("counter", TRAIN_TAGS, d) for n, (_, d) in TRAIN_COUNTERS.items()},
    # pipeline driver (mmtune/pipeline.py); `stage` is the manifest's stage name
    "pipeline_round": MetricSpec("gauge", ("run",), "round of the stage that ran last (0 = shared stages, "
                                                    "generic student's evaluation)"),
    "pipeline_rounds": MetricSpec("gauge", ("run",), "rounds the run is configured for (retrieval.rounds)"),
    "pipeline_stages_planned": MetricSpec("gauge", ("run",), "stages the whole run goes through"),
    "pipeline_stages_done": MetricSpec("gauge", ("run",), "stages finished by this driver (run or skipped as "
                                                          "unchanged on --resume)"),
    "pipeline_stage_running": MetricSpec("gauge", ("run", "stage"), "1 while the stage runs, 0 after"),
    "pipeline_stage_seconds": MetricSpec("gauge", ("run", "stage"), "wall seconds of the stage's last execution"),
    "pipeline_stages": MetricSpec("counter", ("run", "stage", "outcome"),
                                  "stage executions by outcome: done, skipped (unchanged) or failed"),
    "pipeline_rows_quarantined": MetricSpec("counter", ("stage", "source", "reason"),
                                            "rows set aside with a reason instead of used: stage import or index, "
                                            "source the dataset, reason a fixed class (other when unknown)"),
    # teacher Serve app (mmtune/teacher/serve.py)
    "teacher_requests": MetricSpec("counter", ("route", "status", *_SERVE_TAGS),
                                   "teacher requests served by a model replica (status ok or error)"),
    "teacher_latency_s": MetricSpec("histogram", ("route", *_SERVE_TAGS),
                                    "seconds from a request reaching the model replica to its result, batching "
                                    "wait included", LATENCY_BOUNDARIES),
    "teacher_items": MetricSpec("counter", ("route", *_SERVE_TAGS),
                                "items, samples or prompts the teacher processed"),
    "teacher_batch_requests": MetricSpec("histogram", ("route", *_SERVE_TAGS),
                                         "requests fused into one teacher call (1 when batching is off)",
                                         BATCH_BOUNDARIES),
    "teacher_http_requests": MetricSpec("counter", ("path", "code", *_SERVE_TAGS),
                                        "HTTP requests answered by the teacher ingress (path = route template)"),
    # retrieval: selection (pipeline driver) and embedding (Ray Data actors)
    "retrieval_queries": MetricSpec("counter", ("run", "method"), "retrieval queries issued by selection"),
    "retrieval_searches": MetricSpec("counter", ("run", "method"), "searcher calls made by selection (deepening "
                                                                   "searches count again)"),
    "retrieval_selected": MetricSpec("counter", ("run", "method"), "samples selected for training, by how "
                                                                   "(dense, bm25, replay, random, ...)"),
    "retrieval_round_budget": MetricSpec("gauge", ("run", "round"), "samples the round's selection may take"),
    "retrieval_round_selected": MetricSpec("gauge", ("run", "round"), "samples the round's selection took"),
    "retrieval_round_queries": MetricSpec("gauge", ("run", "round"), "queries the round's selection issued"),
    "retrieval_round_shortfall": MetricSpec("gauge", ("run", "round"), "budget minus selected: the candidates "
                                                                       "ran out"),
    "retrieval_embedded": MetricSpec("counter", ("mode",), "distinct contents run through the embedder by the index "
                                                           "build (mode = retrieval.text)"),
}
TEACHER = {n[len("teacher_"):]: s for n, s in SPECS.items() if n.startswith("teacher_")}
PIPELINE_NAMES = tuple(n for n in SPECS if n.startswith(("pipeline_", "retrieval_")) and n != "retrieval_embedded")


def metric_names() -> list[str]:
    """Every name as Prometheus shows it: Ray's exporter adds ``ray_``, ``_total`` to
    counters and ``_bucket``/``_sum``/``_count`` to histograms (Ray 2.60, OpenTelemetry)."""
    return sorted(p for n, s in SPECS.items() for p in s.prometheus_names(n))


def _ray_ready() -> bool:
    try:
        import ray
    except ImportError:  # pragma: no cover - ray is a hard dependency
        return False
    return ray.is_initialized()


# Ray 2.60's metrics agent drops a gauge series that was not set again within two report
# intervals (~20 s; measured: a gauge set once is on the endpoint from ~10 s to ~30 s, then
# gone). Per-step training gauges are set every step; the pipeline's (stages planned, a
# stage's seconds, a round's budget) are set once, so a recorder made with
# ``keep_gauges=True`` has its last gauge values set again by one daemon thread until the
# process exits.
_KEEP: weakref.WeakSet[Recorder] = weakref.WeakSet()
_KEEP_LOCK = threading.Lock()
_REFRESHER: list[threading.Thread] = []


def _refresh_period_s() -> float:
    try:
        import ray

        return max(0.5, min(5.0, ray._config.metrics_report_interval_ms() / 2000.0))
    except Exception:  # noqa: BLE001 - private API; the default interval is 10 s
        return 5.0


def _refresh_forever() -> None:
    period = _refresh_period_s()
    while True:
        time.sleep(period)
        if not _ray_ready():
            continue
        with _KEEP_LOCK:
            recorders = list(_KEEP)
        for rec in recorders:
            rec._refresh()


def _keep(rec: Recorder) -> None:
    with _KEEP_LOCK:
        _KEEP.add(rec)
        if not _REFRESHER:
            t = threading.Thread(target=_refresh_forever, name="mmtune-metrics-refresh", daemon=True)
            _REFRESHER.append(t)
            t.start()


class Recorder:
    """Recorders for some of ``SPECS`` (names without the prefix), with constant tags that
    apply to every metric declaring them; inert outside a Ray process. With
    ``keep_gauges`` the last value of each gauge series stays on the endpoint for as long
    as the process lives (see ``_KEEP``)."""

    def __init__(self, names: Iterable[str], *, keep_gauges: bool = False, **const_tags: Any):
        self.tags = {k: str(v) for k, v in const_tags.items()}
        self._m: dict[str, Any] = {}
        self._warned: set[str] = set()
        self._gauges: dict[tuple[str, tuple[tuple[str, str], ...]], float] | None = {} if keep_gauges else None
        self._lock = threading.Lock()
        if not _ray_ready():
            return
        if keep_gauges:
            _keep(self)
        from ray.util.metrics import Counter, Gauge, Histogram

        for name in names:
            s = SPECS[name]
            full = PREFIX + name
            if s.kind == "counter":
                self._m[name] = Counter(full, description=s.description, tag_keys=s.tags)
            elif s.kind == "gauge":
                self._m[name] = Gauge(full, description=s.description, tag_keys=s.tags)
            else:
                self._m[name] = Histogram(full, description=s.description, boundaries=list(s.boundaries),
                                          tag_keys=s.tags)

    @property
    def active(self) -> bool:
        return bool(self._m)

    def _record(self, name: str, method: str, value: float, tags: Mapping[str, Any]) -> None:
        m = self._m.get(name)
        if m is None:
            return
        keys = SPECS[name].tags
        final = {k: str(v) for k, v in {**self.tags, **tags}.items() if k in keys}
        try:
            missing = [k for k in keys if k not in final]
            if missing:
                raise ValueError(f"missing tag(s) {missing}")
            getattr(m, method)(float(value), tags=final)
        except Exception as e:  # noqa: BLE001 - a metric must never fail the run
            if name not in self._warned:
                self._warned.add(name)
                log.warning("metric %s%s not recorded: %s", PREFIX, name, e)

    def inc(self, name: str, value: float = 1.0, **tags: Any) -> None:
        if value > 0:
            self._record(name, "inc", value, tags)

    def set(self, name: str, value: float | None, **tags: Any) -> None:
        if isinstance(value, (int, float)) and not math.isnan(float(value)):
            self._record(name, "set", value, tags)
            if self._gauges is not None and name in self._m:
                with self._lock:
                    self._gauges[(name, tuple(sorted((k, str(v)) for k, v in tags.items())))] = float(value)

    def _refresh(self) -> None:
        if self._gauges is None:
            return
        with self._lock:
            last = list(self._gauges.items())
        for (name, tags), value in last:
            self._record(name, "set", value, dict(tags))

    def observe(self, name: str, value: float, **tags: Any) -> None:
        self._record(name, "observe", value, tags)


class TrainMetrics(Recorder):
    """Per-step training figures of one Ray Train worker, tagged ``run``, ``rank``, ``mode``."""

    def __init__(self, run: str, rank: int = 0, mode: str = ""):
        super().__init__([*TRAIN_GAUGES, *TRAIN_COUNTERS], run=run, rank=rank, mode=mode)

    def record(self, values: Mapping[str, Any]) -> None:
        """Set every gauge whose key is in ``values`` (NaN/None are skipped: a step that
        did not probe κ keeps the last κ on the dashboard); bump the counters."""
        for name, (key, _) in TRAIN_GAUGES.items():
            self.set(name, values.get(key))
        for name, (key, _) in TRAIN_COUNTERS.items():
            v = values.get(key, 1) if key else 1
            if isinstance(v, (int, float)):
                self.inc(name, v)


class TeacherMetrics(Recorder):
    """The teacher deployments' metrics under their short names (``requests``,
    ``latency_s``, ...), tagged with the Serve application and deployment of the replica
    that records them (``none`` outside a replica)."""

    def __init__(self, names: Iterable[str] = tuple(TEACHER)):
        app = dep = "none"
        if _ray_ready():  # (importing Serve costs seconds: not outside Ray)
            try:
                from ray import serve

                ctx = serve.get_replica_context()
                app, dep = ctx.app_name or "none", ctx.deployment
            except Exception as e:  # noqa: BLE001 - not inside a Serve replica
                log.debug("teacher metrics outside a Serve replica: %s", e)
        super().__init__(["teacher_" + n for n in names], application=app, deployment=dep)

    def inc(self, name: str, value: float = 1.0, **tags: Any) -> None:
        super().inc("teacher_" + name, value, **tags)

    def observe(self, name: str, value: float, **tags: Any) -> None:
        super().observe("teacher_" + name, value, **tags)


# ----------------------------------------------------------------------------- quarantine
# The reason classes a quarantined row is counted under: the categories of
# mmtune/data/validate.py, records.py, jsonstream.py and salvage.py (import), and of
# embed_job.py (index).
# A reason outside the list counts as "other", so a free-text message can never explode
# the series count.
REASON_CLASSES = frozenset({
    "missing_field", "bad_type", "bad_encoding", "empty_id", "empty_instruction", "empty_response",
    "text_too_long", "undecodable_image", "undecodable_audio", "no_answer", "duplicate_id",
    "image_not_found", "audio_not_found", "image_unreadable", "audio_unreadable", "unsupported_role",
    "bad_conversation", "image_count_mismatch", "audio_count_mismatch", "unsupported_modality",
    "bad_record", "unrecognized_record", "invalid_json",
    "unreadable_value", "unreadable_row", "unreadable_row_group",
    "missing_id", "no_skills_annotated", "no_image", "empty_text", "embedder_failed",
})


def reason_class(reason: str) -> str:
    """``"text too long: response has ..."`` -> ``"text_too_long"``; unknown -> ``"other"``."""
    head = re.split(r"[:(]", str(reason), maxsplit=1)[0].strip().lower()
    slug = re.sub(r"[^a-z0-9]+", "_", head).strip("_")
    return slug if slug in REASON_CLASSES else "other"


def record_quarantine(stage: str, source: str, reasons: Mapping[str, int]) -> None:
    """Count quarantined rows (``reasons``: reason or reason category -> rows)."""
    if not reasons or not _ray_ready():
        return
    by_class: dict[str, int] = {}
    for reason, n in reasons.items():
        c = reason_class(reason)
        by_class[c] = by_class.get(c, 0) + int(n)
    rec = Recorder(["pipeline_rows_quarantined"], stage=stage, source=source)
    for c, n in sorted(by_class.items()):
        rec.inc("pipeline_rows_quarantined", n, reason=c)


# ----------------------------------------------------------------------------- pipeline
_ROUND = re.compile(r"_(\d+)$")


class PipelineMetrics(Recorder):
    """The pipeline driver's progress and selection figures, tagged ``run``."""

    def __init__(self, run: str, *, rounds: int, planned: int):
        super().__init__(PIPELINE_NAMES, keep_gauges=True, run=run)
        self.done = 0
        self.set("pipeline_rounds", rounds)
        self.set("pipeline_stages_planned", planned)
        self.set("pipeline_stages_done", 0)
        self.set("pipeline_round", 0)

    def wrap_stage(self, stage: Callable[..., tuple[str, dict[str, Any]]]) -> Callable[..., tuple[str, dict]]:
        """``RunDir.stage`` with progress metrics around it: running/seconds/outcome per
        stage, stages done, the current round (from the ``_<r>`` suffix of the name)."""

        def staged(name: str, config: Any, inputs: dict[str, str | None], fn: Callable[[], dict[str, Any]],
                   *args: Any, **kw: Any) -> tuple[str, dict[str, Any]]:
            ran = []
            m = _ROUND.search(name)
            if m:
                self.set("pipeline_round", int(m.group(1)))

            def timed() -> dict[str, Any]:
                ran.append(True)
                self.set("pipeline_stage_running", 1, stage=name)
                t0 = time.monotonic()
                try:
                    return fn()
                except BaseException:
                    self.inc("pipeline_stages", stage=name, outcome="failed")
                    raise
                finally:
                    self.set("pipeline_stage_running", 0, stage=name)
                    self.set("pipeline_stage_seconds", time.monotonic() - t0, stage=name)

            out = stage(name, config, inputs, timed, *args, **kw)
            self.inc("pipeline_stages", stage=name, outcome="done" if ran else "skipped")
            self.done += 1
            self.set("pipeline_stages_done", self.done)
            return out

        return staged

    def selection(self, round_: int, arm: str, summary: Mapping[str, Any]) -> None:
        """One round's selection (``Selection.summary()``)."""
        r = str(round_)
        self.set("retrieval_round_budget", summary.get("budget"), round=r)
        self.set("retrieval_round_selected", summary.get("selected"), round=r)
        self.set("retrieval_round_queries", summary.get("n_queries"), round=r)
        self.set("retrieval_round_shortfall", summary.get("shortfall"), round=r)
        self.inc("retrieval_queries", summary.get("n_queries") or 0, method=arm)
        self.inc("retrieval_searches", summary.get("searches") or 0, method=arm)
        for how, n in sorted((summary.get("counts") or {}).items()):
            self.inc("retrieval_selected", n, method=how)


def scrape(url: str, timeout: float = 5.0) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Read a Prometheus text endpoint: ``{name: [(labels, value), ...]}`` for mmtune's metrics."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(url, timeout=timeout).read().decode()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if PREFIX in s.name:
                out.setdefault(s.name, []).append((dict(s.labels), float(s.value)))
    return out


__all__ = [
    "BATCH_BOUNDARIES", "LATENCY_BOUNDARIES", "PREFIX", "REASON_CLASSES", "SPECS", "TEACHER", "TRAIN_COUNTERS",
    "TRAIN_GAUGES", "MetricSpec", "PipelineMetrics", "Recorder", "TeacherMetrics", "TrainMetrics", "metric_names",
    "reason_class", "record_quarantine", "scrape",
]
