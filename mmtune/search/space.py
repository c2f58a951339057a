"""The search space over CoMMIT's constants, as dotted config paths (no Ray here).

A trial's config is the base :class:`~mmtune.config.RunConfig` plus one value per path,
merged into the base's dict and validated by the same pydantic model as any config file,
so a value a field refuses fails with that field's name before any trial starts.

The default space (:data:`DEFAULT_SPACE`) covers the constants of METHODS.md §2:

=====================================  ==============================  ===================
path                                   default                         why this range
=====================================  ==============================  ===================
``training.lr`` (η0)                   loguniform(1e-5, 1e-2)          LoRA at 7B uses ~2e-4;
                                                                       tiny students want more
``training.coordination.interval`` (L) choice(5, 10, 20, 40)           METHODS: start near 20
``training.coordination.ema_decay``    choice(0.5, 0.8, 0.9, 0.95)     METHODS: start at 0.9
``training.coordination.reg_lambda``   choice(0.01, 0.03, 0.1)         the paper's {0.01, 0.1}
(λ)                                                                    and the point between
``training.coordination.reg_tau`` (τ)  loguniform(0.05, 2.0)           the cap on each KL term
``training.coordination.ratio_clip``   choice(2, 5, 10, 20)            METHODS clips at 10
=====================================  ==============================  ===================

Under ``coordination.mode=commit_clr`` (the scheduler without the regulariser) λ and τ do
nothing, so :func:`space_for_mode` drops them; other modes have no CoMMIT constants to
search and are refused.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from mmtune.config import ConfigError, RunConfig, _format_errors, _set_path

KINDS = ("loguniform", "uniform", "choice")


@dataclass(frozen=True)
class Dim:
    """One searched value: ``loguniform(low, high)``, ``uniform(low, high)`` or ``choice(*values)``."""

    kind: str
    args: tuple[Any, ...]

    def check(self, path: str) -> None:
        """The dimension itself is well formed (bounds ordered, log bounds positive, ...)."""
        where = f"search space {path}"
        if self.kind not in KINDS:
            raise ConfigError(f"{where}: unknown kind {self.kind!r}; allowed: {', '.join(KINDS)}")
        if self.kind == "choice":
            if not self.args:
                raise ConfigError(f"{where}: choice needs at least one value")
            return
        if len(self.args) != 2 or not all(isinstance(a, (int, float)) and not isinstance(a, bool)
                                           for a in self.args):
            raise ConfigError(f"{where}: {self.kind} needs two numbers [low, high], got {list(self.args)}")
        lo, hi = (float(a) for a in self.args)
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ConfigError(f"{where}: {self.kind} needs low < high, got [{lo:g}, {hi:g}]")
        if self.kind == "loguniform" and lo <= 0:
            raise ConfigError(f"{where}: loguniform needs 0 < low, got {lo:g} (use uniform for ranges with 0)")

    def edges(self) -> list[Any]:
        """The values a trial could get at the extremes (all of them for a choice)."""
        if self.kind == "choice":
            return list(self.args)
        return [float(self.args[0]), float(self.args[1])]

    def sample(self, rng: random.Random) -> Any:
        if self.kind == "choice":
            return rng.choice(list(self.args))
        lo, hi = (float(a) for a in self.args)
        if self.kind == "uniform":
            return rng.uniform(lo, hi)
        return math.exp(rng.uniform(math.log(lo), math.log(hi)))

    def to_tune(self) -> Any:
        from ray import tune

        if self.kind == "choice":
            return tune.choice(list(self.args))
        lo, hi = (float(a) for a in self.args)
        return tune.uniform(lo, hi) if self.kind == "uniform" else tune.loguniform(lo, hi)

    def describe(self) -> str:
        return f"{self.kind}({', '.join(f'{a:g}' if isinstance(a, float) else repr(a) for a in self.args)})"


def loguniform(low: float, high: float) -> Dim:
    return Dim("loguniform", (low, high))


def uniform(low: float, high: float) -> Dim:
    return Dim("uniform", (low, high))


def choice(*values: Any) -> Dim:
    return Dim("choice", tuple(values))


# The one place the default search space lives.
DEFAULT_SPACE: dict[str, Dim] = {
    "training.lr": loguniform(1e-5, 1e-2),
    "training.coordination.interval": choice(5, 10, 20, 40),
    "training.coordination.ema_decay": choice(0.5, 0.8, 0.9, 0.95),
    "training.coordination.reg_lambda": choice(0.01, 0.03, 0.1),
    "training.coordination.reg_tau": loguniform(0.05, 2.0),
    "training.coordination.ratio_clip": choice(2.0, 5.0, 10.0, 20.0),
}
REGULARISER_PATHS = ("training.coordination.reg_lambda", "training.coordination.reg_tau",
                     "training.coordination.reg_variant")
SEARCHABLE_MODES = ("commit", "commit_clr")


def parse_space(spec: Mapping[str, Any]) -> dict[str, Dim]:
    """A space from a YAML-style mapping: ``{path: {loguniform: [lo, hi]}}``,
    ``{path: {uniform: [lo, hi]}}``, ``{path: {choice: [a, b, ...]}}``, or a bare list
    (a choice). A path mapped to a single scalar is fixed (a choice of one)."""
    out: dict[str, Dim] = {}
    for path, value in spec.items():
        path = str(path)
        if isinstance(value, Dim):
            dim = value
        elif isinstance(value, Mapping):
            if len(value) != 1:
                raise ConfigError(f"search space {path}: expected one of {{loguniform|uniform|choice: ...}}, "
                                  f"got keys {sorted(value)}")
            kind, args = next(iter(value.items()))
            dim = Dim(str(kind), tuple(args) if isinstance(args, (list, tuple)) else (args,))
        elif isinstance(value, (list, tuple)):
            dim = choice(*value)
        else:
            dim = choice(value)
        dim.check(path)
        out[path] = dim
    if not out:
        raise ConfigError("the search space is empty: give at least one dotted path, e.g. training.lr")
    return out


def apply_overrides(base: RunConfig, overrides: Mapping[str, Any]) -> RunConfig:
    """``base`` with each dotted path set to its value, validated as a whole config.

    Raises :class:`ConfigError` naming the field, e.g. ``training.coordination.ema_decay:
    got 1.5; Input should be less than 1``. ``base`` is not modified.
    """
    tree = base.to_dict()
    for path, value in overrides.items():
        keys = str(path).split(".")
        if not all(keys):
            raise ConfigError(f"search space key {path!r}: must be a dotted path like training.lr")
        _set_path(tree, keys, value, f"{path}={value!r}")
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, RunConfig)) from None


def space_for_mode(space: Mapping[str, Dim], mode: str, progress=print) -> dict[str, Dim]:
    """The space that means something under ``training.coordination.mode``."""
    if mode not in SEARCHABLE_MODES:
        raise ConfigError(f"training.coordination.mode: got {mode!r}; the search tunes CoMMIT's constants, "
                          f"which only {' and '.join(SEARCHABLE_MODES)} use (set training.coordination.mode=commit)")
    if mode == "commit_clr":
        dropped = [p for p in space if p in REGULARISER_PATHS]
        if dropped:
            progress(f"[search] mode commit_clr has no regulariser: not searching {', '.join(dropped)}")
        space = {p: d for p, d in space.items() if p not in REGULARISER_PATHS}
        if not space:
            raise ConfigError("nothing left to search under mode commit_clr (the space held only λ/τ)")
    return dict(space)


def validate_space(space: Mapping[str, Dim], base: RunConfig) -> None:
    """Every path exists and every edge value is one its field accepts (checked on ``base``)."""
    for path, dim in space.items():
        dim.check(path)
        for value in dim.edges():
            try:
                apply_overrides(base, {path: value})
            except ConfigError as e:
                raise ConfigError(f"search space {path} = {dim.describe()}: the value {value!r} is refused:\n  "
                                  + str(e).removeprefix("invalid config:\n  ")) from None


def sample_space(space: Mapping[str, Dim], rng: random.Random) -> dict[str, Any]:
    """One point of the space (the pure-Python twin of Tune's sampling, for checks and tests)."""
    return {path: dim.sample(rng) for path, dim in space.items()}


def short_name(path: str) -> str:
    """``training.coordination.reg_tau`` -> ``reg_tau`` (for tables)."""
    return path.rsplit(".", 1)[-1]


def describe_space(space: Mapping[str, Dim]) -> str:
    return "\n".join(f"  {path:<36} {dim.describe()}" for path, dim in space.items())


__all__ = [
    "DEFAULT_SPACE",
    "REGULARISER_PATHS",
    "SEARCHABLE_MODES",
    "Dim",
    "apply_overrides",
    "choice",
    "describe_space",
    "loguniform",
    "parse_space",
    "sample_space",
    "short_name",
    "space_for_mode",
    "uniform",
    "validate_space",
]
