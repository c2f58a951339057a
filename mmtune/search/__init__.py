"""Ray Tune over CoMMIT's scheduler constants (docs/search.md).

* :mod:`mmtune.search.space`: the search space as dotted config paths (pure);
* :mod:`mmtune.search.rungs`: what a trial measures at each ASHA rung (plain torch);
* :mod:`mmtune.search.trial`: one trial = one Ray Train V2 run, stopped gracefully at a rung;
* :mod:`mmtune.search.tune`: :func:`run_search` (Tuner + ASHA, best config YAML, trial table);
* :mod:`mmtune.search.results`: the trial table, the best trial, the printed summary (pure).

Importing this package does not import Ray.
"""

from mmtune.search.space import (
           DEFAULT_SPACE,
           Dim,
           apply_overrides,
           choice,
           loguniform,
           parse_space,
           uniform,
)
from mmtune.search.tune import SearchResult, SearchSettings, run_search

__all__ = ["DEFAULT_SPACE", "Dim", "SearchResult", "SearchSettings", "apply_overrides", "choice", "loguniform",
           "parse_space", "run_search", "uniform"]
