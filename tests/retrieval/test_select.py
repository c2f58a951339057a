"""Budgeted selection and baselines: exact budgets, dedup, round-robin fill, shortfalls, parquet."""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmtune.retrieval.index import BM25Index, VectorIndex
from mmtune.retrieval.select import (
    SELECTION_SCHEMA, Selection, read_selection, select, select_bm25, select_full,
    select_instruction_similarity, select_random, write_selection,
)


class Ranked:
    """A searcher with fixed rankings per query text; records the k of each call."""

    def __init__(self, lists: dict[str, list[str]]):
        self.lists = lists
        self.calls: list[tuple[int, int]] = []
        self.size = len({x for v in lists.values() for x in v})

    def __len__(self) -> int:
        return self.size

    def search(self, queries, k):
        self.calls.append((len(queries), k))
        ids = [self.lists[q][:k] for q in queries]
        return ids, [np.linspace(1, 0, len(r)) for r in ids]


def corpus(n=200, d=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x, [f"c{i:04d}" for i in range(n)]


def ids(sel):
    return [r["id"] for r in sel]


def test_budget_exact_no_duplicates_in_query_order():
    x, names = corpus()
    vi = VectorIndex.build(x, names, "flat")
    q = np.random.default_rng(1).standard_normal((7, 16)).astype(np.float32)
    sel = select(q, 50, vi, query_texts=[f"skill {i}" for i in range(7)], round=2)
    assert isinstance(sel, Selection) and len(sel) == 50 and sel.shortfall == 0 and sel.reason is None
    assert len(set(ids(sel))) == 50
    assert sel.k_per_query == 7 and sel.n_queries == 7
    assert {r["round"] for r in sel} == {2} and {r["method"] for r in sel} == {"dense"}
    # phase 1: query 0's first hits are its own top-7, in rank order
    top0 = vi.search(q[:1], 7).ids[0]
    assert ids(sel)[: len(top0)] == top0 and all(r["query"] == "skill 0" for r in sel[:7])
    assert all(isinstance(r["score"], float) for r in sel)


def test_round_robin_fill_when_top_k_overlap():
    s = Ranked({"q0": list("abcdefghij"), "q1": list("abcxyzuvw")})
    sel = select(["q0", "q1"], 6, s, method="dense")
    # K = 3: q0 takes a b c; q1's top-3 are the same ids, so it takes nothing in phase 1;
    # the 3 missing slots go round-robin from the next-ranked hits: q0 d, q1 x, q0 e.
    assert ids(sel) == list("abcdxe")
    assert [r["query"] for r in sel] == ["q0"] * 4 + ["q1", "q0"]
    assert len(sel) == 6 and sel.shortfall == 0


def test_identical_queries_on_a_real_index_take_turns_down_one_ranking():
    x, names = corpus(300)
    vi = VectorIndex.build(x, names, "flat")
    q = np.repeat(x[5:6], 2, axis=0)
    sel = select(q, 10, vi, query_texts=["a", "b"])
    assert ids(sel) == vi.search(q[:1], 10).ids[0]  # the one ranking, no duplicates
    assert [r["query"] for r in sel] == ["a"] * 5 + ["a", "b", "a", "b", "a"]


def test_searches_deeper_until_the_budget_is_met():
    ranking = [f"x{i}" for i in range(100)]
    s = Ranked({"q0": ranking, "q1": ranking, "q2": ranking})
    sel = select(["q0", "q1", "q2"], 60, s)
    assert len(sel) == 60 and ids(sel) == ranking[:60]
    ks = [k for _, k in s.calls]
    assert ks[0] == 20 and ks == sorted(ks) and max(ks) <= 100  # K first, then doubling
    assert sel.searches == len(s.calls)


def test_shortfall_is_reported_when_the_index_is_too_small(caplog):
    x, names = corpus(10)
    vi = VectorIndex.build(x, names, "flat")
    with caplog.at_level(logging.WARNING, logger="mmtune.retrieval.select"):
        sel = select(x[:3], 25, vi, query_texts=["a", "b", "c"])
    assert len(sel) == 10 and set(ids(sel)) == set(names)
    assert sel.shortfall == 15 and "reached only 10 distinct" in sel.reason
    assert sel.summary()["shortfall"] == 15
    assert "shortfall 15" in caplog.text


def test_exclude_ids_never_selected_and_budget_still_exact():
    x, names = corpus()
    vi = VectorIndex.build(x, names, "flat")
    q = x[:4]
    top = set(vi.search(q, 10).ids[0]) | set(vi.search(q, 10).ids[1])
    sel = select(q, 40, vi, query_texts=list("abcd"), exclude_ids=top)
    assert len(sel) == 40 and not (set(ids(sel)) & top)
    # K counts eligible hits: query 0 still gets its 10 best non-excluded ids
    eligible0 = [i for i in vi.search(q[:1], 200).ids[0] if i not in top][:10]
    assert ids(sel)[:10] == eligible0
    everything_but_5 = names[5:]
    sel = select(q, 40, vi, query_texts=list("abcd"), exclude_ids=everything_but_5)
    assert sorted(ids(sel)) == names[:5] and sel.shortfall == 35


def test_more_queries_than_budget_takes_one_each_in_query_order():
    s = Ranked({f"q{i}": [f"q{i}-{j}" for j in range(5)] for i in range(8)})
    sel = select([f"q{i}" for i in range(8)], 5, s)
    assert ids(sel) == [f"q{i}-0" for i in range(5)] and sel.k_per_query == 1


def test_replay_fraction_split_and_seeded():
    x, names = corpus()
    vi = VectorIndex.build(x[:100], names[:100], "flat")
    pool = names[100:] + names[:20]  # overlaps the index: replay never repeats a retrieved id
    kw = dict(query_texts=list("ab"), replay_pool=pool, replay_fraction=0.25, exclude_ids=["c0150"])
    a = select(x[:2], 40, vi, seed=3, **kw)
    assert len(a) == 40 and a.counts == {"dense": 30, "replay": 10} and a.replay_requested == 10
    rep = [r for r in a if r["method"] == "replay"]
    assert all(r["query"] == "" and r["score"] is None for r in rep)
    assert len(set(ids(a))) == 40 and "c0150" not in ids(a)
    assert a == select(x[:2], 40, vi, seed=3, **kw)  # seeded: identical
    assert ids(a) != ids(select(x[:2], 40, vi, seed=4, **kw))
    # a replay pool that runs short: retrieval fills the missing replay slots
    b = select(x[:2], 40, vi, query_texts=list("ab"), replay_pool=["c0100", "c0101"], replay_fraction=0.25)
    assert len(b) == 40 and b.counts == {"dense": 38, "replay": 2}
    with pytest.raises(ValueError, match="replay_pool"):
        select(x[:2], 40, vi, query_texts=list("ab"), replay_fraction=0.1)


def test_dense_texts_are_embedded_once_and_bm25_goes_through_the_same_function():
    x, names = corpus(50, 8)
    vi = VectorIndex.build(x, names, "flat")
    calls = []

    def embed(texts):
        calls.append(list(texts))
        return x[[int(t[1:]) for t in texts]]

    sel = select(["c0003", "c0007"], 30, vi, embed_fn=embed, method="dense")
    assert calls == [["c0003", "c0007"]] and len(sel) == 30 and ids(sel)[0] == "c0003"
    assert sel[0]["query"] == "c0003"
    inst = select_instruction_similarity(["c0001"], 5, vi, embed_fn=embed, round=1)
    assert inst.counts == {"instruction_similarity": 5} and ids(inst)[0] == "c0001"

    bm = BM25Index.build(["counting red cubes", "counting", "reading digits", "clock digits", "grid"],
                         list("abcde"))
    b = select_bm25(["counting cubes", "", "digits"], 4, bm)
    # "" has no terms: its slot goes round-robin to the others; no match beyond 4 docs
    assert ids(b) == ["a", "c", "b", "d"] and {r["method"] for r in b} == {"bm25"}
    short = select_bm25(["counting", "zebra"], 5, bm)
    assert ids(short) == ["b", "a"] and short.shortfall == 3


def test_vector_queries_need_labels_and_no_queries_is_a_shortfall():
    x, names = corpus(20, 8)
    vi = VectorIndex.build(x, names, "flat")
    with pytest.raises(ValueError, match="query_texts"):
        select(x[:2], 5, vi)
    empty = select([], 5, vi)
    assert len(empty) == 0 and empty.shortfall == 5 and "no queries" in empty.reason
    with pytest.raises(ValueError, match="budget"):
        select(["a"], 0, vi)


# --------------------------------------------------------------------------- baselines
def test_random_baseline_exact_and_seeded():
    pool = [f"p{i}" for i in range(1000)]
    a = select_random(pool, 100, seed=1, round=1)
    assert len(a) == 100 and len(set(ids(a))) == 100 and set(ids(a)) <= set(pool)
    assert a == select_random(pool, 100, seed=1, round=1)
    assert set(ids(a)) != set(ids(select_random(pool, 100, seed=2, round=1)))
    assert {r["method"] for r in a} == {"random"} and all(r["score"] is None for r in a)
    ex = select_random(pool, 100, seed=1, exclude_ids=ids(a))
    assert len(ex) == 100 and not set(ids(ex)) & set(ids(a))
    small = select_random(pool[:30] + pool[:5], 50, seed=0)  # duplicates in the pool count once
    assert len(small) == 30 and small.shortfall == 20 and "only 30" in small.reason


def test_full_baseline_is_everything_once():
    sel = select_full(["a", "b", "a", "c"], round=0, exclude_ids=["c"])
    assert ids(sel) == ["a", "b"] and sel.shortfall == 0 and sel.counts == {"full": 2}


# --------------------------------------------------------------------------- parquet
def test_selection_parquet_round_trip_exact_schema(tmp_path):
    s = Ranked({"q0": list("abc"), "q1": list("cde")})
    rows = list(select(["q0", "q1"], 4, s, round=1)) + list(select_random(["x", "y"], 2, seed=0, round=1))
    path = write_selection(rows, tmp_path / "sel" / "selection.parquet")
    assert pq.read_schema(path).remove_metadata() == SELECTION_SCHEMA
    assert [(f.name, str(f.type)) for f in SELECTION_SCHEMA] == [
        ("round", "int32"), ("id", "string"), ("query", "string"), ("score", "float"), ("method", "string")]
    back = read_selection(path)
    assert [{k: r[k] for k in ("round", "id", "query", "method")} for r in back] == \
        [{k: r[k] for k in ("round", "id", "query", "method")} for r in rows]
    assert [r["score"] for r in back][-2:] == [None, None]
    np.testing.assert_allclose([r["score"] for r in back][:4], [r["score"] for r in rows][:4], rtol=1e-6)
    with pytest.raises(ValueError, match="'a' twice in round 1"):
        write_selection(rows + rows[:1], tmp_path / "dup.parquet")
    pq.write_table(pa.table({"id": ["a"]}), tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="lacks columns"):
        read_selection(tmp_path / "bad.parquet")


def reference(lists: list[list[str]], budget: int, exclude: set[str]) -> list[str]:
    """The selection rule written the slow, obvious way over complete rankings."""
    elig = [[x for x in r if x not in exclude] for r in lists]
    k = max(1, budget // len(lists))
    out: list[str] = []
    for r in elig:
        for x in r[:k]:
            if len(out) < budget and x not in out:
                out.append(x)
    pos = [k] * len(lists)
    while len(out) < budget:
        moved = False
        for i, r in enumerate(elig):
            while pos[i] < len(r) and r[pos[i]] in out:
                pos[i] += 1
            if pos[i] < len(r) and len(out) < budget:
                out.append(r[pos[i]])
                pos[i] += 1
                moved = True
        if not moved:
            break
    return out


@pytest.mark.parametrize("seed", range(12))
def test_matches_the_reference_rule_on_random_overlapping_rankings(seed):
    rng = np.random.default_rng(seed)
    universe = [f"u{i}" for i in range(int(rng.integers(5, 120)))]
    nq = int(rng.integers(1, 9))
    # every ranking is a permutation of one small universe, so the top hits overlap heavily
    lists = {f"q{i}": list(rng.permutation(universe)[: int(rng.integers(1, len(universe) + 1))]) for i in range(nq)}
    exclude = set(rng.choice(universe, size=int(rng.integers(0, len(universe) // 3 + 1)), replace=False))
    budget = int(rng.integers(1, len(universe) + 10))
    s = Ranked(lists)
    sel = select(list(lists), budget, s, exclude_ids=exclude)
    want = reference(list(lists.values()), budget, exclude)
    assert ids(sel) == want
    assert sel.shortfall == budget - len(want)


def test_interleave_gives_each_key_its_share_of_any_prefix():
    from mmtune.retrieval.select import interleave

    keys = ["digit"] * 6 + ["count"] * 3 + ["parity"]  # in diagnosis-file order
    out = interleave(list(range(10)), keys)
    assert sorted(out) == list(range(10))
    first5 = [keys[i] for i in out[:5]]
    assert first5.count("digit") == 3 and first5.count("count") == 2  # ~ 6:3:1 of 5, not the first five digits
    assert [i for i in out if keys[i] == "digit"] == list(range(6))  # each key keeps its order
    with pytest.raises(ValueError, match="keys"):
        interleave([1, 2], ["a"])


def test_queries_are_interleaved_by_skill():
    from mmtune.pipeline import queries

    rows = [{"status": "ok", "missing_skill": s, "mistake_step": 1, "student_steps": ["x"]}
            for s in ["locating"] * 4 + ["digits"] * 4]
    assert queries(rows, "skill")[:2] == ["locating", "digits"]
