"""mmtune's figures in Ray's metrics system (dashboard, Prometheus endpoint).

A thin adapter over ``ray.util.metrics``: each ``*Metrics`` class declares its Gauges
and Counters once, under ``mmtune_``-prefixed names, and ``record`` pushes one report.
Ray exports custom metrics with a ``ray_`` prefix, so Prometheus sees e.g.
``ray_mmtune_train_kappa{run="demo",rank="0"}``. ``docs/operations.md`` lists them all.

The pure core never imports this module: the Ray adapters (the Train worker, the Serve
deployments, the pipeline driver) create a metrics object and feed it the dicts the core
already returns. Outside a Ray process (``ray.is_initialized()`` false) the objects are
inert, so library code and plain-torch benchmarks can call ``record`` unconditionally.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

PREFIX = "mmtune_"

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


def _ray_ready() -> bool:
    try:
        import ray
    except ImportError:  # pragma: no cover - ray is a hard dependency
        return False
    return ray.is_initialized()


# Ray's metric registration is C++ and takes ASCII only (a Greek kappa raises
# UnicodeEncodeError), so descriptions spell the symbols out.


class _MetricSet:
    """Gauges/counters sharing a set of constant tags (run name, rank, ...)."""

    def __init__(self, gauges: Mapping[str, tuple[str, str]], counters: Mapping[str, tuple[str, str]],
                 tags: Mapping[str, str]):
        self.tags = {k: str(v) for k, v in tags.items()}
        self._gauges: dict[str, tuple[str, Any]] = {}
        self._counters: dict[str, tuple[str, Any]] = {}
        if not _ray_ready():
            return
        from ray.util.metrics import Counter, Gauge

        keys = tuple(self.tags)
        for name, (key, desc) in gauges.items():
            g = Gauge(PREFIX + name, description=desc, tag_keys=keys)
            g.set_default_tags(self.tags)
            self._gauges[name] = (key, g)
        for name, (key, desc) in counters.items():
            c = Counter(PREFIX + name, description=desc, tag_keys=keys)
            c.set_default_tags(self.tags)
            self._counters[name] = (key, c)

    @property
    def active(self) -> bool:
        return bool(self._gauges or self._counters)

    def record(self, values: Mapping[str, Any]) -> None:
        """Set every gauge whose key is in ``values`` (NaN/None are skipped: a step that
        did not probe κ keeps the last κ on the dashboard); bump the counters."""
        for key, g in self._gauges.values():
            v = values.get(key)
            if isinstance(v, (int, float)) and not math.isnan(float(v)):
                g.set(float(v))
        for key, c in self._counters.values():
            v = values.get(key, 1) if key else 1
            if isinstance(v, (int, float)) and v > 0:
                c.inc(float(v))


class TrainMetrics(_MetricSet):
    """Per-step training figures of one Ray Train worker, tagged ``run`` and ``rank``."""

    def __init__(self, run: str, rank: int = 0, mode: str = ""):
        super().__init__(TRAIN_GAUGES, TRAIN_COUNTERS, {"run": run, "rank": str(rank), "mode": mode})


def metric_names() -> list[str]:
    """Every name as Prometheus shows it: Ray's exporter adds ``ray_``, and ``_total`` to
    counters (measured on Ray 2.60's OpenTelemetry exporter)."""
    return sorted([f"ray_{PREFIX}{n}" for n in TRAIN_GAUGES] + [f"ray_{PREFIX}{n}_total" for n in TRAIN_COUNTERS])


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


__all__ = ["PREFIX", "TRAIN_COUNTERS", "TRAIN_GAUGES", "TrainMetrics", "metric_names", "scrape"]
