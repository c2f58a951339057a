"""Budgeted targeted selection, and the baselines behind the same interface. Pure: no Ray.

:func:`select` is METHODS.md §1 step 5: each query (a missing skill) retrieves corpus
samples; with budget B and Q queries, each query gets K = B // Q of its top hits
(at least 1), duplicates are removed globally, and the shortfall is filled round-robin
from the queries' next-ranked hits. The arms of a comparison go through it with different
searchers and queries:

============================  =====================================  ========================
arm                           queries                                searcher
============================  =====================================  ========================
dense (ours)                  missing-skill texts (+ ``embed_fn``)   VectorIndex over skills
bm25 (paper)                  missing-skill texts                    BM25Index over skills
instruction_similarity        target val instructions (+ embed_fn)   VectorIndex over corpus
                                                                     instructions
random                        —                                      :func:`select_random`
full                          —                                      :func:`select_full`
============================  =====================================  ========================

Every function returns a :class:`Selection`: a list of Selection rows (``round``, ``id``,
``query``, ``score``, ``method``) that also carries the counts: what was asked for, what
was selected, the shortfall and why. A shortfall is also logged as a warning; it is never
silent. Rows without a retrieval score (random, full, replay) have ``score`` None (null).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger(__name__)

SELECTION_SCHEMA = pa.schema([
    pa.field("round", pa.int32(), nullable=False),
    pa.field("id", pa.string(), nullable=False),
    pa.field("query", pa.string(), nullable=False),
    pa.field("score", pa.float32()),
    pa.field("method", pa.string(), nullable=False),
])
COLUMNS = tuple(SELECTION_SCHEMA.names)


class Selection(list):
    """Selection rows (dicts) in selection order, plus what happened.

    Attributes: ``budget`` (rows asked for), ``shortfall`` (budget − rows; > 0 only when
    the candidates ran out), ``reason`` (why there is a shortfall, else None),
    ``counts`` (rows per method), ``n_queries``, ``k_per_query``, ``searches`` (searcher
    calls), ``replay_requested``.
    """

    def __init__(self, rows: Iterable[dict[str, Any]] = (), *, budget: int, reason: str | None = None,
                 n_queries: int = 0, k_per_query: int = 0, searches: int = 0, replay_requested: int = 0):
        super().__init__(rows)
        self.budget = int(budget)
        self.reason = reason if len(self) < self.budget else None
        self.n_queries, self.k_per_query, self.searches = n_queries, k_per_query, searches
        self.replay_requested = replay_requested

    @property
    def shortfall(self) -> int:
        return max(0, self.budget - len(self))

    @property
    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self:
            out[r["method"]] = out.get(r["method"], 0) + 1
        return out

    def summary(self) -> dict[str, Any]:
        return {"budget": self.budget, "selected": len(self), "shortfall": self.shortfall, "reason": self.reason,
                "counts": self.counts, "n_queries": self.n_queries, "k_per_query": self.k_per_query,
                "searches": self.searches, "replay_requested": self.replay_requested}

    def table(self) -> pa.Table:
        return selection_table(self)

    def _report(self, what: str) -> "Selection":
        if self.shortfall:
            log.warning("%s: selected %d of budget %d (shortfall %d): %s", what, len(self), self.budget,
                        self.shortfall, self.reason)
        return self


def _row(round_: int, id_: str, query: str, score: float | None, method: str) -> dict[str, Any]:
    return {"round": int(round_), "id": id_, "query": query,
            "score": None if score is None else float(score), "method": method}


def _check_budget(budget: int, what: str) -> int:
    if isinstance(budget, bool) or int(budget) != budget or budget < 1:
        raise ValueError(f"{what}: budget must be an integer >= 1, got {budget!r} (retrieval.budget)")
    return int(budget)


def _unique(ids: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(ids))


# --------------------------------------------------------------------------- searcher plumbing
def _search_fn(searcher: Any) -> Callable[[Any, int], Any]:
    if hasattr(searcher, "search"):
        return searcher.search
    if callable(searcher):
        return searcher
    raise ValueError(f"select: searcher {type(searcher).__name__} has no search(queries, k) and is not "
                     "callable; pass a VectorIndex, a BM25Index, or a function (queries, k) -> (ids, scores)")


def _rows_of(result: Any, n: int) -> tuple[list[list[str]], list[Sequence[float]]]:
    ids, scores = result  # Hits or any (ids, scores) pair
    ids, scores = list(ids), list(scores)
    if len(ids) != n or len(scores) != n:
        raise ValueError(f"select: the searcher returned {len(ids)} id rows / {len(scores)} score rows for "
                         f"{n} queries; it must return one row per query")
    return [list(r) for r in ids], [np.asarray(s, dtype=np.float64) for s in scores]


@dataclass
class _Stream:
    """One query's hit list, searched ``k`` deep; ``cursor`` = next unscanned hit."""
    ids: list[str] = field(default_factory=list)
    scores: Any = None
    k: int = 0
    exhausted: bool = False
    cursor: int = 0


class _Retriever:
    """Per-query hit lists, searched deeper (k doubling, batched) on demand."""

    def __init__(self, inputs: Any, search: Callable[[Any, int], Any], size: int | None, k_max: int | None):
        self.inputs, self.search = inputs, search
        self.n = len(inputs)
        self.cap = min(x for x in (size, k_max) if x is not None) if (size is not None or k_max is not None) else None
        self.streams = [_Stream() for _ in range(self.n)]
        self.searches = 0

    def _subset(self, idx: list[int]) -> Any:
        if isinstance(self.inputs, np.ndarray):
            return self.inputs[idx]
        return [self.inputs[i] for i in idx]

    def deepen(self, idx: Iterable[int], at_least: int = 1) -> None:
        """Search the queries ``idx`` to depth max(2·k, at_least), capped; batched by depth."""
        by_k: dict[int, list[int]] = {}
        for i in idx:
            s = self.streams[i]
            if s.exhausted:
                continue
            k = max(2 * s.k, at_least, 1)
            if self.cap is not None:
                k = min(k, self.cap)
            if k <= s.k:
                s.exhausted = True
                continue
            by_k.setdefault(k, []).append(i)
        for k, members in sorted(by_k.items()):
            ids, scores = _rows_of(self.search(self._subset(members), k), len(members))
            self.searches += 1
            for i, row_ids, row_scores in zip(members, ids, scores):
                s = self.streams[i]
                s.ids, s.scores, s.k, s.cursor = row_ids, row_scores, k, 0
                s.exhausted = len(row_ids) < k or (self.cap is not None and k >= self.cap)


def interleave(items: Sequence[Any], keys: Sequence[str]) -> list[Any]:
    """``items`` reordered so that any prefix holds each key's items in proportion to its
    count (the j-th item of a key with n items sorts at (j + 0.5) / n; ties keep the keys'
    first-seen order), each key's items in their given order. [ours]

    :func:`select` serves queries *in order*: when there are more queries than budget (a
    round with 484 diagnosed errors and a budget of 210), the first queries in the file
    would take everything. Interleaving gives each missing skill (or target) its share of
    the budget, proportional to its errors: the paper's top-k per error, scaled down."""
    if len(items) != len(keys):
        raise ValueError(f"interleave: {len(items)} items but {len(keys)} keys")
    count: dict[str, int] = {}
    for k in keys:
        count[k] = count.get(k, 0) + 1
    first = {k: i for i, k in reversed(list(enumerate(keys)))}
    seen: dict[str, int] = {}
    ranked = []
    for i, (item, k) in enumerate(zip(items, keys)):
        j = seen.get(k, 0)
        seen[k] = j + 1
        ranked.append(((j + 0.5) / count[k], first[k], i, item))
    return [r[3] for r in sorted(ranked)]


def select(queries: Sequence[str] | np.ndarray, budget: int, searcher: Any, *, round: int = 0,
           method: str = "dense", exclude_ids: Iterable[str] = (), k_max: int | None = None,
           embed_fn: Callable[[list[str]], Any] | None = None, query_texts: Sequence[str] | None = None,
           replay_pool: Sequence[str] | None = None, replay_fraction: float = 0.0, seed: int = 0) -> Selection:
    """Select ``budget`` distinct ids for ``queries`` from ``searcher``.

    ``queries``: query texts, or an (n, dim) array of query vectors (then ``query_texts``
    names them in the ``query`` column). With ``embed_fn`` the texts are embedded once
    (``embed_fn(texts) -> (n, dim)``) and the vectors searched; without it the texts go to
    the searcher as they are (BM25).

    ``searcher``: an object with ``search(queries, k)`` (VectorIndex, BM25Index) or a
    callable ``(queries, k)``, returning one row of ids and one of scores per query, best
    first; a row shorter than ``k`` means the searcher has nothing more for that query.
    ``len(searcher)``, when defined, caps how deep it is searched; so does ``k_max``.

    Order of selection (deterministic):

    1. K = B_r // Q (at least 1), where B_r is the retrieval share of the budget. Query by
       query, in the given order, each takes its top-K hits that are not excluded, skipping
       ids an earlier query took (when Q > B_r, K = 1 and queries take their top hit in
       order until B_r rows are taken).
    2. Shortfall (the remainder B_r − Q·K, plus slots lost to duplicates): round-robin over
       the queries in order, each taking its next-ranked hit not yet taken or excluded.
       Queries are searched deeper (k doubling) as needed, until the budget is met or every
       query is exhausted (its row came back short, or k reached ``len(searcher)`` /
       ``k_max``). The result is exactly B_r rows whenever the searcher can reach that many
       distinct, non-excluded ids.
    3. Replay: with ``replay_fraction`` f > 0, R = floor(f·B) rows are drawn uniformly
       (``seed``) from ``replay_pool`` minus the ids already taken and ``exclude_ids``, with
       method ``replay``, empty query and null score; B_r = B − R. If the pool has fewer
       than R such ids, retrieval continues round-robin for the missing replay slots.

    ``exclude_ids`` (ids of earlier rounds, the target's own val items, ...) are never
    selected. A shortfall is reported in the returned :class:`Selection` and logged.
    """
    budget = _check_budget(budget, "select")
    if not 0.0 <= replay_fraction < 1.0:
        raise ValueError(f"select: replay_fraction must be in [0, 1), got {replay_fraction} "
                         "(retrieval.replay_fraction)")
    if replay_fraction > 0 and replay_pool is None:
        raise ValueError("select: replay_fraction > 0 needs replay_pool= (the generic ids to replay); "
                         "pass it or set replay_fraction=0")
    if k_max is not None and k_max < 1:
        raise ValueError(f"select: k_max must be >= 1 or None, got {k_max}")
    search = _search_fn(searcher)
    exclude = set(exclude_ids)

    if isinstance(queries, str):
        raise ValueError("select: queries must be a list of query texts (or an array of vectors), not one str")
    if isinstance(queries, np.ndarray) and queries.dtype != object and queries.ndim == 2:
        inputs: Any = queries
        if query_texts is None:
            raise ValueError("select: queries are vectors; pass query_texts= (one per row) for the Selection's "
                             "`query` column, or pass the texts with embed_fn=")
        labels = [str(t) for t in query_texts]
    else:
        labels = ["" if q is None else str(q) for q in queries]
        inputs = labels
        if query_texts is not None:
            labels = [str(t) for t in query_texts]
        if embed_fn is not None and labels:
            inputs = np.asarray(embed_fn(list(inputs)), dtype=np.float32)
            if inputs.ndim != 2 or inputs.shape[0] != len(labels):
                raise ValueError(f"select: embed_fn returned shape {inputs.shape} for {len(labels)} texts; "
                                 "it must return one vector per text, (n, dim)")
    nq = len(labels)
    if len(inputs) != nq:
        raise ValueError(f"select: {len(inputs)} queries but {nq} query_texts; pass one text per query")

    n_replay = int(math.floor(replay_fraction * budget)) if replay_fraction > 0 else 0
    n_retr = budget - n_replay
    rows: list[dict[str, Any]] = []
    if nq == 0:
        k_per = 0
        retr = None
    else:
        k_per = max(1, n_retr // nq)
        try:
            size = len(searcher)
        except TypeError:
            size = None
        retr = _Retriever(inputs, search, size, k_max)
    chosen: set[str] = set()

    def take(i: int, id_: str, score: float) -> None:
        chosen.add(id_)
        rows.append(_row(round, id_, labels[i], score, method))

    # ---- phase 1: top-K per query, in query order
    if retr is not None:
        need = list(range(nq))
        retr.deepen(need, at_least=k_per)
        while True:  # until each query has K eligible hits or is exhausted
            short = [i for i in range(nq) if not retr.streams[i].exhausted
                     and sum(1 for x in retr.streams[i].ids if x not in exclude) < k_per]
            if not short:
                break
            retr.deepen(short)
        for i in range(nq):
            if len(rows) >= n_retr:
                break
            s = retr.streams[i]
            eligible = 0
            while s.cursor < len(s.ids) and eligible < k_per and len(rows) < n_retr:
                x = s.ids[s.cursor]
                if x not in exclude:
                    eligible += 1
                    if x not in chosen:
                        take(i, x, s.scores[s.cursor])
                s.cursor += 1

    def round_robin(target: int) -> None:
        """Phase 2: one next-ranked unused hit per query per cycle until ``target`` rows."""
        if retr is None:
            return
        active = [i for i in range(nq)]
        streams = retr.streams

        def refill(i: int) -> None:
            # Query i ran out. Queries that overlap it are about to run out too, so search
            # deeper, in one batch to one depth, every active query past half its list.
            group = [i] + [j for j in active if j != i and not streams[j].exhausted
                           and 2 * (len(streams[j].ids) - streams[j].cursor) < len(streams[j].ids)]
            retr.deepen(group, at_least=max(2 * streams[j].k for j in group))

        while len(rows) < target and active:
            still = []
            for i in active:
                if len(rows) >= target:
                    still.append(i)
                    continue
                s = streams[i]
                while True:
                    while s.cursor < len(s.ids) and (s.ids[s.cursor] in chosen or s.ids[s.cursor] in exclude):
                        s.cursor += 1
                    if s.cursor < len(s.ids) or s.exhausted:
                        break
                    refill(i)
                if s.cursor < len(s.ids):
                    take(i, s.ids[s.cursor], s.scores[s.cursor])
                    s.cursor += 1
                    still.append(i)
            active = still

    round_robin(n_retr)

    # ---- replay
    if n_replay:
        pool = [x for x in _unique(replay_pool or ()) if x not in chosen and x not in exclude]
        rng = np.random.default_rng(seed)
        pick = rng.choice(len(pool), size=min(n_replay, len(pool)), replace=False) if pool else []
        for j in sorted(int(p) for p in pick):
            chosen.add(pool[j])
            rows.append(_row(round, pool[j], "", None, "replay"))
        if len(pool) < n_replay:  # the pool ran short: retrieval takes the remaining slots
            before = len(rows)
            round_robin(budget)
            log.info("select: replay pool had %d usable ids for %d replay slots; retrieval filled %d",
                     len(pool), n_replay, len(rows) - before)

    reason = None
    if len(rows) < budget:
        if nq == 0:
            reason = "no queries (nothing to retrieve for)"
        else:
            reached = len({x for s in retr.streams for x in s.ids} - exclude)  # type: ignore[union-attr]
            reason = (f"the searcher reached only {reached} distinct non-excluded ids for {nq} queries "
                      f"({len(exclude)} ids excluded" + (f", k_max={k_max}" if k_max else "") + ")")
        if n_replay:
            reason += f"; replay pool gave {sum(1 for r in rows if r['method'] == 'replay')} of {n_replay}"
    out = Selection(rows, budget=budget, reason=reason, n_queries=nq, k_per_query=k_per,
                    searches=retr.searches if retr else 0, replay_requested=n_replay)
    return out._report(f"select(method={method}, round={round})")


# --------------------------------------------------------------------------- baselines
def select_random(pool_ids: Sequence[str], budget: int, seed: int, round: int = 0, *,
                  exclude_ids: Iterable[str] = ()) -> Selection:
    """``budget`` ids drawn uniformly without replacement (seeded) from ``pool_ids`` minus
    ``exclude_ids``; exact unless the pool is smaller. Method ``random``, rows in pool order."""
    budget = _check_budget(budget, "select_random")
    exclude = set(exclude_ids)
    pool = [x for x in _unique(pool_ids) if x not in exclude]
    rng = np.random.default_rng(seed)
    pick = sorted(int(p) for p in rng.choice(len(pool), size=min(budget, len(pool)), replace=False)) if pool else []
    rows = [_row(round, pool[j], "", None, "random") for j in pick]
    reason = f"the pool has only {len(pool)} distinct non-excluded ids" if len(rows) < budget else None
    return Selection(rows, budget=budget, reason=reason)._report(f"select_random(round={round})")


def select_instruction_similarity(val_instructions: Sequence[str], budget: int, index: Any, *,
                                  embed_fn: Callable[[list[str]], Any] | None = None, round: int = 0,
                                  exclude_ids: Iterable[str] = (), k_max: int | None = None) -> Selection:
    """The INSTA baseline: corpus samples whose instructions are nearest the target's
    validation instructions.

    It is :func:`select` with different inputs: the queries are the target's val
    instructions (embedded by ``embed_fn``), and ``index`` is a VectorIndex over the
    corpus *instruction* embeddings (``retrieval.text=instruction``), not the skills.
    Budget split, dedup and round-robin fill are identical, so the arms compare fairly.
    """
    return select(val_instructions, budget, index, round=round, method="instruction_similarity",
                  exclude_ids=exclude_ids, k_max=k_max, embed_fn=embed_fn)


def select_bm25(queries: Sequence[str], budget: int, index: Any, *, round: int = 0,
                exclude_ids: Iterable[str] = (), k_max: int | None = None, **kw: Any) -> Selection:
    """The paper's retrieval: :func:`select` over a BM25Index of the corpus skill texts,
    queried with the missing-skill texts."""
    return select(queries, budget, index, round=round, method="bm25", exclude_ids=exclude_ids, k_max=k_max, **kw)


def select_full(pool_ids: Sequence[str], round: int = 0, *, exclude_ids: Iterable[str] = ()) -> Selection:
    """Every distinct id of ``pool_ids`` (minus ``exclude_ids``), in pool order; method ``full``."""
    exclude = set(exclude_ids)
    rows = [_row(round, x, "", None, "full") for x in _unique(pool_ids) if x not in exclude]
    return Selection(rows, budget=len(rows))


# --------------------------------------------------------------------------- parquet
def selection_table(rows: Iterable[dict[str, Any]] | pa.Table) -> pa.Table:
    """Selection rows as a table with exactly :data:`SELECTION_SCHEMA`; checks columns and ids."""
    if isinstance(rows, pa.Table):
        table = rows
    else:
        rows = list(rows)
        missing = sorted({c for r in rows for c in COLUMNS if c not in r})
        if missing:
            raise ValueError(f"Selection rows lack {missing}; each row needs {list(COLUMNS)}")
        table = pa.Table.from_pylist([{c: r[c] for c in COLUMNS} for r in rows], schema=SELECTION_SCHEMA)
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"Selection table lacks columns {missing}; it needs {list(COLUMNS)}")
    table = table.select(list(COLUMNS))
    try:
        table = table.cast(SELECTION_SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError) as exc:
        raise ValueError(f"Selection table does not fit the schema {SELECTION_SCHEMA} ({exc})") from exc
    keys = list(zip(table.column("round").to_pylist(), table.column("id").to_pylist()))
    if len(set(keys)) != len(keys):
        seen: set[Any] = set()
        dup = next(k for k in keys if k in seen or seen.add(k))
        raise ValueError(f"Selection has id {dup[1]!r} twice in round {dup[0]}; an id is selected once per round")
    return table


def write_selection(rows: Iterable[dict[str, Any]] | pa.Table, path: str | Path) -> Path:
    """Write Selection parquet (``round:int32, id:string, query:string, score:float32,
    method:string``), atomically."""
    table = selection_table(rows)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return path


def read_selection(path: str | Path) -> list[dict[str, Any]]:
    """Read Selection parquet back as rows; a file without the Selection columns is an error."""
    return selection_table(pq.read_table(path)).to_pylist()
