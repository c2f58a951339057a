"""Context reranking of a missing skill's hits [ours]. Pure: no Ray.

The paper retrieves by the missing skill alone: for "reading a handwritten digit" every
corpus sample annotated with digit reading ties, whatever it asks. On SkillWorld 4 that
spends nearly half the budget on one perception task the tuning cannot move
(docs/benchmarks.md, headline_v5), while the nearest-instruction baseline wins by fetching
the targets' sibling tasks. Reranking keeps the skill as the filter and adds the context
of the error: among a query's ``depth × k`` best skill hits, samples whose *instruction*
is nearest the validation question that went wrong come first.

The two rankings are fused by reciprocal rank fusion (Cormack, Clarke and Büttcher,
SIGIR 2009): ``score = 1/(60 + rank_skill) + 1/(60 + rank_context)``, ranks from 1. It
has no weight to tune against the test split, and ties (many samples carry the very same
skill phrase, cosine 1.0) share their best rank instead of falling in index order.

Both inputs are what selection may read (docs/fairness.md): the question comes from the
diagnosis of the *validation* split, the instructions from the pool's own text.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

RRF_K = 60  # the constant of Cormack et al.; ranks beyond ~60 fade out smoothly
TIE_TOL = 1e-5  # skill scores this close to the cut-off score are ties (float32 cosine)
TIE_DECIMALS = 5  # scores are ranked rounded to this many decimals (float32 noise is ~1e-7)
TIE_CAP = 8192  # most skill hits one query reranks, ties included


def competition_ranks(scores: Any) -> np.ndarray:
    """1-based ranks, best (highest) first; equal scores share the best rank of their group
    ("1224" ranking)."""
    s = np.asarray(scores, dtype=np.float64)
    if s.size == 0:
        return np.zeros(0, dtype=np.int64)
    return np.searchsorted(np.sort(-s), -s, side="left") + 1


def reciprocal_rank_fusion(*score_rows: Any, k: int = RRF_K) -> np.ndarray:
    """Σ 1 / (k + rank) over the given score rows (one score per item in each row)."""
    if not score_rows:
        raise ValueError("reciprocal_rank_fusion: give at least one row of scores")
    n = len(score_rows[0])
    if any(len(r) != n for r in score_rows):
        raise ValueError(f"reciprocal_rank_fusion: score rows of lengths {[len(r) for r in score_rows]}; "
                         "each row must score the same items")
    return sum(1.0 / (k + competition_ranks(r)) for r in score_rows)


def _unit(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(n > 0, n, 1.0)


class ContextReranked:
    """A searcher for :func:`mmtune.retrieval.select.select` that reranks a skill index's
    hits by the context of each error.

    Each query row is ``[skill vector | context vector]`` (``2 × dim`` wide): the embedded
    missing skill and the embedded validation question it was diagnosed on.
    ``search(queries, k)`` searches ``skill_index`` ``depth × k`` deep with the skill half
    (further while hits tie with the last one: :meth:`_candidates`), scores every hit's
    instruction vector (``context_ids`` / ``context_vectors``: the corpus's instruction
    embeddings) against the context half, fuses the two rankings
    (:func:`reciprocal_rank_fusion`) and returns the top ``k`` by fused score, best first.
    A hit with no instruction vector (quarantined by the instruction embedding) ranks last
    on context.

    Searched deeper, the candidate pool grows, so a deeper list is not always an extension
    of a shallower one; :func:`select` takes the next unused id of the latest list, which
    keeps the selection deterministic and duplicate-free.
    """

    def __init__(self, skill_index: Any, context_ids: Sequence[str], context_vectors: Any, *, depth: int = 64):
        if depth < 1:
            raise ValueError(f"ContextReranked: depth must be >= 1, got {depth} (retrieval.context_depth)")
        vecs = np.asarray(context_vectors, dtype=np.float32)
        if vecs.ndim != 2 or vecs.shape[0] != len(context_ids):
            raise ValueError(f"ContextReranked: {len(context_ids)} context ids but vectors of shape {vecs.shape}; "
                             "give one instruction vector per id")
        if vecs.shape[1] != skill_index.dim:
            raise ValueError(f"ContextReranked: instruction vectors have dim {vecs.shape[1]}, the skill index "
                             f"{skill_index.dim}; embed both with the same retrieval.embedder")
        self.skill_index, self.depth = skill_index, int(depth)
        self.dim = int(skill_index.dim)
        self._table = skill_index.ids  # index position -> id
        row = {x: i for i, x in enumerate(context_ids)}
        # index position -> row of its instruction vector (-1: none), so that candidates are
        # looked up as arrays, not id by id
        self._ctx_row = np.array([row.get(x, -1) for x in self._table], dtype=np.int64)
        self._vecs = _unit(vecs)
        # (skill vector, depth) -> candidates: select() re-searches a query each time it runs
        # dry, and many queries share a skill; the index does not change under a searcher.
        self._memo: dict[tuple[bytes, int], tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.skill_index)

    def search(self, queries: Any, k: int) -> tuple[list[list[str]], list[np.ndarray]]:
        q = np.asarray(queries, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != 2 * self.dim:
            raise ValueError(f"ContextReranked.search: queries of shape {q.shape}; each row must be a skill "
                             f"vector and a context vector side by side ({2 * self.dim} wide)")
        skills, context = q[:, :self.dim], _unit(q[:, self.dim:])
        # Errors share skills (193 of 415 named the same one in headline_v5): search each
        # distinct skill once.
        distinct, which = np.unique(skills, axis=0, return_inverse=True)
        positions, scores = self._candidates(distinct, min(len(self), max(1, int(k)) * self.depth))
        out_ids, out_scores = [], []
        for u, c in zip(np.asarray(which).reshape(-1), context):
            pos, sc = positions[u], scores[u]
            rows = self._ctx_row[pos]
            ctx = np.full(len(pos), -np.inf)
            known = rows >= 0
            ctx[known] = self._vecs[rows[known]] @ c
            # Ranks on scores rounded to the tie tolerance: equal texts embed to equal vectors
            # only up to float noise, which must not order them.
            fused = reciprocal_rank_fusion(np.round(sc, TIE_DECIMALS), np.round(ctx, TIE_DECIMALS))
            # Full ties fall back to the index's storage order, whatever order FAISS returned
            # them in (it differs between a batched and a single search).
            top = np.lexsort((pos, -fused))[:k]
            out_ids.append([self._table[p] for p in pos[top]])
            out_scores.append(fused[top].astype(np.float32))
        return out_ids, out_scores

    def _candidates(self, skills: np.ndarray, depth: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Each query's ``depth`` best skill hits (index positions and scores), plus every hit
        tied with the last of them.

        Many samples carry the very same skill phrase (cosine 1.0), and the index returns
        tied hits in storage order: cut at ``depth``, the pool would hold whichever task was
        written first. Searching on until the tie is passed (up to :data:`TIE_CAP` hits)
        lets the context, not the file order, choose among them."""
        n = len(self)
        keys = [(row.tobytes(), depth) for row in skills]
        todo, d = [i for i, key in enumerate(keys) if key not in self._memo], depth
        while todo:
            hits = self.skill_index.search(skills[todo], d)
            again = []
            for i, pos, sc in zip(todo, hits.positions, hits.scores):
                pos, sc = np.asarray(pos, dtype=np.int64), np.asarray(sc)
                cut = sc[depth - 1] - TIE_TOL if len(sc) >= depth else -np.inf
                keep = sc >= cut
                self._memo[keys[i]] = (pos[keep], sc[keep])
                if keep.all() and len(sc) == d and d < min(n, TIE_CAP):
                    again.append(i)  # the tie may go on past this depth
            todo, d = again, min(n, TIE_CAP, 2 * d)
        return [self._memo[key][0] for key in keys], [self._memo[key][1] for key in keys]


__all__ = ["ContextReranked", "RRF_K", "competition_ranks", "reciprocal_rank_fusion"]
