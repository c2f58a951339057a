"""The corpus index a run retrieves from: embeddings (Ray Data) → FAISS + BM25, on disk.

``build_corpus_index(cfg, files, out_dir)`` embeds what is new (:func:`embed_corpus`
skips files already embedded) and, when anything changed, rebuilds::

    <out_dir>/
      manifest.json  embeddings/  texts/  cache/  quarantine/   (embed_job)
      vector/        index.faiss, ids, meta.json                  (VectorIndex)
      bm25/          the bm25s model, ids, meta.json               (BM25Index, text modes)

The FAISS index is rebuilt from all embedding shards rather than appended to, so an IVF
index's coarse quantiser is trained on the whole corpus [ours]; embedding is the costly
part and it is incremental. ``load_corpus_index`` opens both for search.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

from mmtune.config import RunConfig, config_hash
from mmtune.retrieval.embed_job import embed_corpus, read_embeddings, read_texts
from mmtune.retrieval.index import BM25Index, VectorIndex

STATE = "index_state.json"


def build_corpus_index(cfg: RunConfig, files: Sequence[str], out_dir: str | Path, *, rebuild: bool = False,
                       progress=print) -> dict[str, Any]:
    """Embed (incrementally) and index the corpus; returns a summary dict. Ray must be up."""
    out = Path(out_dir)
    rep = embed_corpus(cfg, files, out, rebuild=rebuild, progress=progress)
    progress(rep.summary())
    rc = cfg.retrieval
    key = config_hash({"index_type": rc.index_type, "embedder": rc.embedder, "text": rc.text,
                       "manifest": json.loads((out / "manifest.json").read_text())["files"]})
    state_path = out / STATE
    if state_path.is_file() and json.loads(state_path.read_text()).get("key") == key and not rebuild:
        state = json.loads(state_path.read_text())
        progress(f"[index] index up to date: {state['count']} vectors ({state['index_type']}) in {out}")
        return state
    t0 = time.time()
    ids, vecs = read_embeddings(out)
    meta = {"embedder": rc.embedder, "text": rc.text, "config_hash": key}
    vindex = VectorIndex.build(vecs, ids, rc.index_type, metadata=meta, seed=cfg.run.shared_seed)
    vindex.save(out / "vector")
    state: dict[str, Any] = {"key": key, "count": len(vindex), "dim": vindex.dim, "index_type": vindex.index_type,
                             "device": vindex.device, "vector_dir": str(out / "vector"), "bm25_dir": None,
                             "quarantined": sum(f.get("quarantined", 0) for f in
                                                json.loads((out / "manifest.json").read_text())["files"].values())}
    if rc.text != "image":
        tids, texts = read_texts(out)
        BM25Index.build(texts, tids).save(out / "bm25")
        state["bm25_dir"] = str(out / "bm25")
    state["seconds"] = round(time.time() - t0, 2)
    state_path.write_text(json.dumps(state, indent=2))
    progress(f"[index] built {vindex.index_type} index of {len(vindex)} × {vindex.dim} ({vindex.device})"
             + (" + BM25" if state["bm25_dir"] else "") + f" in {state['seconds']:.1f}s → {out}")
    return state


def load_corpus_index(out_dir: str | Path) -> tuple[VectorIndex, BM25Index | None]:
    out = Path(out_dir)
    if not (out / STATE).is_file():
        raise FileNotFoundError(f"no corpus index at {out}; build it with `mmtune index --config ...`")
    state = json.loads((out / STATE).read_text())
    vindex = VectorIndex.load(state["vector_dir"])
    bm25 = BM25Index.load(state["bm25_dir"]) if state.get("bm25_dir") else None
    return vindex, bm25


__all__ = ["build_corpus_index", "load_corpus_index"]
