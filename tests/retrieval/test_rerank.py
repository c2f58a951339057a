"""Context reranking: rank fusion, ties resolved by context, not by storage order; through select()."""

from __future__ import annotations

import numpy as np
import pytest

from mmtune.retrieval.index import VectorIndex
from mmtune.retrieval.rerank import ContextReranked, competition_ranks, reciprocal_rank_fusion
from mmtune.retrieval.select import select


def unit(*xs: float) -> np.ndarray:
    v = np.asarray(xs, dtype=np.float32)
    return v / np.linalg.norm(v)


def test_competition_ranks_share_the_best_rank_of_a_tie():
    assert competition_ranks([0.9, 1.0, 1.0, 0.5]).tolist() == [3, 1, 1, 4]
    assert competition_ranks([]).tolist() == []


def test_rank_fusion_rewards_agreement_and_checks_lengths():
    fused = reciprocal_rank_fusion([3.0, 2.0, 1.0], [1.0, 3.0, 2.0], k=60)
    # item 1 is 2nd and 1st, item 0 is 1st and 3rd, item 2 is 3rd and 2nd
    assert np.argsort(-fused).tolist() == [1, 0, 2]
    with pytest.raises(ValueError, match="same items"):
        reciprocal_rank_fusion([1.0, 2.0], [1.0])


# Six corpus samples. s0..s3 carry the same skill (skill vector e0, a tie at cosine 1.0),
# stored first to last; s4, s5 carry other skills. Their instructions (context vectors)
# differ: s3's is the one nearest the failed question (e2).
SKILLS = np.stack([unit(1, 0, 0, 0)] * 4 + [unit(0.6, 0.8, 0, 0), unit(0, 0, 0, 1)])
INSTR = np.stack([unit(0, 1, 0, 0), unit(0, 1, 0.1, 0), unit(0, 0.9, 0.4, 0), unit(0, 0, 1, 0),
                  unit(0, 0, 1, 0.05), unit(1, 0, 0, 0)])
IDS = [f"s{i}" for i in range(6)]


@pytest.fixture()
def reranked() -> ContextReranked:
    return ContextReranked(VectorIndex.build(SKILLS, IDS, "flat"), IDS, INSTR, depth=1)


def test_context_picks_within_a_skill_tie_whatever_the_storage_order(reranked):
    query = np.hstack([unit(1, 0, 0, 0), unit(0, 0, 1, 0)])[None]
    ids, scores = reranked.search(query, 1)
    # depth 1 would cut the tie at s0 (first stored); the tie is searched through and the
    # context (nearest instruction to e2) chooses s3
    assert ids == [["s3"]]
    ids, scores = reranked.search(query, 3)
    assert ids[0][0] == "s3" and set(ids[0]) <= {"s0", "s1", "s2", "s3", "s4"}
    assert np.all(np.diff(scores[0]) <= 0)  # best first


def test_without_a_tie_the_skill_still_filters(reranked):
    # the context points at s5's instruction, but s5 does not exercise the skill: with depth
    # 1 and no tie past the first hit, only the skill's own hits are candidates
    query = np.hstack([unit(0.6, 0.8, 0, 0), unit(1, 0, 0, 0)])[None]
    ids, _ = reranked.search(query, 1)
    assert ids == [["s4"]]


def test_a_hit_without_an_instruction_vector_ranks_last_on_context():
    r = ContextReranked(VectorIndex.build(SKILLS, IDS, "flat"), IDS[:3] + IDS[4:], np.delete(INSTR, 3, 0), depth=1)
    ids, _ = r.search(np.hstack([unit(1, 0, 0, 0), unit(0, 0, 1, 0)])[None], 4)
    assert ids[0][-1] == "s3" and ids[0][0] == "s2"


def test_select_through_the_reranker_meets_the_budget_without_duplicates(reranked):
    q = np.stack([np.hstack([unit(1, 0, 0, 0), unit(0, 0, 1, 0)]), np.hstack([unit(1, 0, 0, 0), unit(0, 1, 0, 0)])])
    s = select(q, 5, reranked, query_texts=["skill", "skill"], method="dense_context")
    ids = [r["id"] for r in s]
    assert len(ids) == 5 == len(set(ids)) and s.shortfall == 0
    # K = 2 per query, in query order: each query's context picks its own samples from the tie
    assert ids[:4] == ["s3", "s2", "s0", "s1"]


def test_bad_shapes_name_the_fix(reranked):
    with pytest.raises(ValueError, match="side by side"):
        reranked.search(np.zeros((1, 4), np.float32), 1)
    with pytest.raises(ValueError, match="same retrieval.embedder"):
        ContextReranked(VectorIndex.build(SKILLS, IDS, "flat"), IDS, np.zeros((6, 3), np.float32))
    with pytest.raises(ValueError, match="one instruction vector per id"):
        ContextReranked(VectorIndex.build(SKILLS, IDS, "flat"), IDS[:2], INSTR)
    with pytest.raises(ValueError, match="context_depth"):
        ContextReranked(VectorIndex.build(SKILLS, IDS, "flat"), IDS, INSTR, depth=0)


def test_batched_and_single_searches_agree_and_share_work(reranked):
    rng = np.random.default_rng(0)
    q = np.stack([np.hstack([unit(1, 0, 0, 0), unit(*rng.normal(size=4))]) for _ in range(5)]
                 + [np.hstack([unit(0.6, 0.8, 0, 0), unit(0, 0, 1, 0)])])
    batched = reranked.search(q, 2)
    alone = [reranked.search(row[None], 2) for row in q]
    assert batched[0] == [a[0][0] for a in alone]
    # full ties (same skill, same instruction) fall back to storage order, not FAISS's
    same = np.stack([np.hstack([unit(0, 0, 0, 1), unit(1, 0, 0, 0)])])
    r = ContextReranked(VectorIndex.build(SKILLS[[5, 5, 5]], ["c", "a", "b"], "flat"), ["c", "a", "b"],
                        INSTR[[0, 0, 0]], depth=1)
    assert r.search(same, 3)[0] == [["c", "a", "b"]]
    # five queries with one skill searched the index once per depth
    calls = []
    searcher = ContextReranked(VectorIndex.build(SKILLS, IDS, "flat"), IDS, INSTR, depth=1)
    inner = searcher.skill_index.search
    searcher.skill_index.search = lambda x, k: calls.append(len(x)) or inner(x, k)
    searcher.search(q[:5], 1)
    searcher.search(q[:5], 1)
    # depths 1, 2, 4 while the tie of four lasts, then 6 (the whole index) to see it end;
    # the second call, and the other four queries, come from the memo
    assert calls == [1, 1, 1, 1]
