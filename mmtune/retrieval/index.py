"""Search indexes for retrieval: FAISS over embeddings, BM25 over texts. Pure: no Ray.

Both indexes answer ``search(queries, k) -> Hits``: per query, the ids of the real hits,
best first, and their scores. Nothing is padded: a query with fewer than ``k`` hits gets a
shorter row. A row shorter than ``min(k, len(index))`` means the index holds nothing more
for that query (see :meth:`VectorIndex.search`), which :func:`mmtune.retrieval.select.select`
relies on to know when deeper search is pointless.

**VectorIndex.** Vectors are L2-normalised on the way in (queries too), and every index
uses inner product, so a score is the cosine similarity (approximated by IVF-PQ). Types:

- ``flat``: ``IndexFlatIP``, exact brute force.
- ``ivf_flat``: ``IndexIVFFlat``; ``nlist`` ≈ 4·√n inverted lists trained by spherical
  k-means on a seeded sample, ``nprobe`` lists scanned per query.
- ``ivf_pq``: ``IndexIVFPQ``; as IVF-Flat, but each vector is stored as ``pq_m`` one-byte
  codes (``pq_m`` divides the dimension; about 8 dimensions per code by default).
- ``hnsw``: ``IndexHNSWFlat`` with ``METRIC_INNER_PRODUCT``; ``hnsw_m`` links per node,
  ``ef_construction``, ``ef_search``. CPU only (faiss has no GPU HNSW).

``auto`` picks from the corpus size with :func:`choose_index_type` (thresholds below).

**GPU.** With a faiss build that has GPU support and ``faiss.get_num_gpus() > 0``, Flat and
IVF indexes are copied to all GPUs for search (``index_cpu_to_all_gpus``); the CPU form is
what is saved, and searches faiss's GPU code cannot run (k or nprobe above 2048) use it.
``meta["device"]`` says where searches run. CPU-only machines never fail.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger(__name__)

INDEX_TYPES = ("flat", "ivf_flat", "ivf_pq", "hnsw")

# ``auto`` thresholds (number of vectors). Why these:
# - Below FLAT_MAX_VECTORS exact search is cheap: 1,000 queries against 50k × 384-d vectors
#   is ~40 GFLOP of BLAS (well under a second on a few cores), there is nothing to train,
#   and results are exact. IVF's k-means would cost more than it saves.
# - Up to IVF_FLAT_MAX_VECTORS, IVF-Flat keeps exact scores (full vectors) and reaches
#   recall@10 near 1 scanning a few % of the lists, with cheap deep searches (select()
#   searches hundreds to thousands deep). Memory is that of Flat (1.5 GB at 1M × 384-d).
#   Building is k-means on a sample plus one assignment pass, and it runs on faiss-gpu.
# - Up to HNSW_MAX_VECTORS (the paper's 1.55M-sample corpus is here), HNSW: search cost
#   grows ~log n rather than with n/nlist, and recall stays high: recall@10 0.89-0.95 at
#   1M × 384-d clustered vectors with these defaults (M 32, efConstruction 80, efSearch
#   128; two builds, faiss's threaded HNSW build is not deterministic), where IVF-PQ, the
#   alternative, loses most of the exact top-10 to near-ties (recall@10 0.24 at 1M, 0.44
#   at 100k, 48 one-byte codes per 384-d vector; bench:index in docs/benchmarks.md).
#   Selection quality is the point of the method, so recall wins. Its costs: full vectors
#   plus a graph (~1.2x Flat: ~2.6 GB at 1.55M × 384-d), a build by graph insertion
#   (8.5 min for 1M on 2 cores; a cheaper graph, M 16 / efConstruction 40, builds 3x
#   faster but falls to 0.41 recall@10 at 1M), no GPU version, and deep searches raise
#   efSearch to k. On the bench's data IVF-Flat is still better at 1M (recall 1.0 at
#   nprobe 8, 40 s build), but its lists match the synthetic clusters; with memory to
#   spare, raising IVF_FLAT_MAX_VECTORS is the alternative to HNSW.
# - Above it, the full vectors alone pass 30 GB at 384-d: IVF-PQ (48 B per 384-d vector,
#   32x less than float32, and GPU-capable) is the index that still fits, at the price of
#   approximate scores.
FLAT_MAX_VECTORS = 50_000
IVF_FLAT_MAX_VECTORS = 1_000_000
HNSW_MAX_VECTORS = 20_000_000

# IVF: nlist ≈ NLIST_PER_SQRT_N · √n, clipped so each list has ≥ MIN_POINTS_PER_LIST
# training points (faiss's k-means warns below 39) and at most MAX_NLIST lists.
NLIST_PER_SQRT_N = 4.0
MIN_POINTS_PER_LIST = 39
MAX_NLIST = 65_536
# Training sample: this many points per list (faiss itself subsamples above 256 per list).
TRAIN_POINTS_PER_LIST = 64
# Default nprobe: 1/NPROBE_DIVISOR of the lists, at least MIN_NPROBE (never above nlist).
NPROBE_DIVISOR = 32
MIN_NPROBE = 16
# IVF-PQ: about this many dimensions per one-byte code. 8 rather than 4: faiss trains 4-d
# sub-quantizers several times slower (63-82 s vs 2-12 s for 20k × 384-d on one core)
# for a recall@10 gain of roughly 0.45 -> 0.8; pass pq_m=dim // 4 to buy the recall.
PQ_DIMS_PER_CODE = 8
# HNSW defaults (faiss's own are M=32, efConstruction=40, efSearch=16).
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 128
# faiss-gpu limits on k and nprobe for a GPU search.
GPU_MAX_K = 2048
# Rows copied, checked and normalised at a time (bounds the extra memory of build/add).
CHUNK_ROWS = 65_536

INDEX_FILE, IDS_FILE, META_FILE = "index.faiss", "ids.parquet", "meta.json"
BM25_DIR = "bm25"
FORMAT_VERSION = 1


# --------------------------------------------------------------------------- hits
class Hits:
    """Search results for a batch of queries: per query the real hits, best first.

    ``ids, scores = hits`` unpacks into ``ids: list[list[str]]`` and
    ``scores: list[np.ndarray]`` (float32, row i as long as ``ids[i]``). Rows are ragged:
    nothing is padded. ``positions`` holds the same hits as row numbers in the index.
    """

    __slots__ = ("positions", "scores", "_table")

    def __init__(self, positions: list[np.ndarray], scores: list[np.ndarray], table: Sequence[str]):
        if len(positions) != len(scores):
            raise ValueError(f"Hits: {len(positions)} position rows but {len(scores)} score rows")
        self.positions = positions
        self.scores = scores
        self._table = table

    @property
    def ids(self) -> list[list[str]]:
        table = self._table
        return [[table[p] for p in row.tolist()] for row in self.positions]

    def __len__(self) -> int:
        return len(self.positions)

    def __iter__(self) -> Iterator[Any]:
        yield self.ids
        yield self.scores

    def counts(self) -> np.ndarray:
        """Number of hits per query."""
        return np.array([len(r) for r in self.positions], dtype=np.int64)

    def __repr__(self) -> str:
        return f"Hits({len(self)} queries, {int(self.counts().sum())} hits)"


# --------------------------------------------------------------------------- choosers
def choose_index_type(n: int) -> str:
    """The index type ``auto`` builds for ``n`` vectors (thresholds and reasons above)."""
    if n < 0:
        raise ValueError(f"choose_index_type: n must be >= 0, got {n}")
    if n < FLAT_MAX_VECTORS:
        return "flat"
    if n <= IVF_FLAT_MAX_VECTORS:
        return "ivf_flat"
    if n <= HNSW_MAX_VECTORS:
        return "hnsw"
    return "ivf_pq"


def default_nlist(n: int) -> int:
    """≈ 4·√n, with at least MIN_POINTS_PER_LIST vectors per list, within [1, MAX_NLIST]."""
    nlist = int(round(NLIST_PER_SQRT_N * math.sqrt(max(n, 1))))
    return int(max(1, min(nlist, n // MIN_POINTS_PER_LIST, MAX_NLIST)))


def default_nprobe(nlist: int) -> int:
    return int(min(nlist, max(MIN_NPROBE, nlist // NPROBE_DIVISOR)))


def default_pq_m(dim: int) -> int:
    """The divisor of ``dim`` closest to dim / PQ_DIMS_PER_CODE (the larger one on a tie)."""
    target = dim / PQ_DIMS_PER_CODE
    divisors = [m for m in range(1, dim + 1) if dim % m == 0]
    return min(divisors, key=lambda m: (abs(m - target), -m))


def default_pq_nbits(n_train: int) -> int:
    """8 bits per code when there are enough training points (39 per centroid), else fewer."""
    return int(max(1, min(8, math.floor(math.log2(max(n_train, 2) / MIN_POINTS_PER_LIST)))))


def gpu_count() -> int:
    """GPUs faiss can use: 0 with faiss-cpu, or when the GPU build sees none."""
    if not hasattr(faiss_module(), "StandardGpuResources"):
        return 0
    try:
        return int(faiss_module().get_num_gpus())
    except Exception:  # noqa: BLE001 - a broken CUDA setup means "no GPU", not a crash
        return 0


def faiss_module():
    import faiss

    return faiss


# --------------------------------------------------------------------------- validation
def _check_ids(ids: Iterable[Any], n: int, what: str) -> list[str]:
    out = list(ids)
    if len(out) != n:
        raise ValueError(f"{what}: {n} vectors but {len(out)} ids; pass exactly one id per vector row")
    for i, x in enumerate(out):
        if not isinstance(x, str) or not x:
            raise ValueError(f"{what}: id at row {i} is {x!r}; ids must be non-empty strings "
                             "(the Sample/Embedding `id` column)")
    if len(set(out)) != len(out):
        seen: set[str] = set()
        dup = next(x for x in out if x in seen or seen.add(x))
        raise ValueError(f"{what}: id {dup!r} occurs more than once; each id may be indexed once "
                         "(deduplicate the embeddings first)")
    return [str(x) for x in out]


def _as_matrix(x: Any, what: str, dim: int | None = None) -> np.ndarray:
    """A 2-D numeric array view (not copied, not normalised); raises on wrong shape/dim."""
    try:
        arr = np.asarray(x)
    except Exception as exc:  # ragged lists etc.
        raise ValueError(f"{what}: cannot read the vectors as a 2-D array ({exc}); "
                         "pass an (n, dim) float array") from exc
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{what}: vectors have dtype {arr.dtype}; pass an (n, dim) float32 array "
                         "(texts must be embedded first, or searched with BM25Index)")
    if arr.ndim != 2:
        hint = " (a single vector: use v.reshape(1, -1))" if arr.ndim == 1 else ""
        raise ValueError(f"{what}: expected a 2-D (n, dim) array, got shape {arr.shape}{hint}")
    if arr.shape[0] == 0:
        raise ValueError(f"{what}: no vectors (shape {arr.shape}); pass at least one row")
    if arr.shape[1] == 0:
        raise ValueError(f"{what}: vectors have dimension 0; pass embeddings with dim >= 1")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(f"{what}: vectors have dimension {arr.shape[1]} but the index holds {dim}-d "
                         "vectors; embed with the same embedder the index was built with, or rebuild "
                         "the index")
    return arr


def _normalised_chunk(arr: np.ndarray, start: int, stop: int, what: str,
                      ids: Sequence[str] | None = None) -> np.ndarray:
    """Rows [start, stop) as a fresh C-contiguous float32 array, checked and L2-normalised."""
    x = np.array(arr[start:stop], dtype=np.float32, order="C", copy=True)
    finite = np.isfinite(x).all(axis=1)
    if not finite.all():
        row = start + int(np.argmin(finite))
        name = f"id {ids[row]!r} (row {row})" if ids is not None else f"row {row}"
        raise ValueError(f"{what}: {name} has non-finite values (NaN/inf); fix or drop that embedding "
                         "(re-embed its text) before indexing")
    norms = np.linalg.norm(x, axis=1)
    if not (norms > 0).all():
        row = start + int(np.argmin(norms > 0))
        name = f"id {ids[row]!r} (row {row})" if ids is not None else f"row {row}"
        raise ValueError(f"{what}: {name} is the zero vector, which has no direction for cosine "
                         "similarity; drop it or re-embed its text")
    x /= norms[:, None]
    return x


def _check_all(arr: np.ndarray, what: str, ids: Sequence[str] | None = None) -> None:
    for start in range(0, arr.shape[0], CHUNK_ROWS):
        _normalised_chunk(arr, start, min(start + CHUNK_ROWS, arr.shape[0]), what, ids)


def _write_atomic_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _write_ids(path: Path, ids: Sequence[str]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(pa.table({"id": pa.array(list(ids), pa.string())}), tmp)
    os.replace(tmp, path)


def _read_ids(path: Path) -> list[str]:
    table = pq.read_table(path)
    if "id" not in table.column_names:
        raise ValueError(f"{path}: no `id` column; the index directory is damaged, rebuild the index")
    return table.column("id").to_pylist()


def _check_kind(d: Path, kind: str, cls_name: str) -> None:
    """A directory holding the other kind of index gets a clear error before any file check."""
    meta_path = d / META_FILE
    if meta_path.exists():
        found = json.loads(meta_path.read_text()).get("kind")
        if found != kind:
            raise ValueError(f"{d}: meta.json describes a {found!r} index, not a {kind} index; "
                             f"load it with load_index(dir) or the matching class, not {cls_name}")


def _open_saved(d: Path, kind: str, cls_name: str, files: tuple[str, ...]) -> dict[str, Any]:
    """Check a saved index directory (kind, every file present) and return its meta."""
    _check_kind(d, kind, cls_name)
    missing = [f for f in (META_FILE, *files) if not (d / f).exists()]
    if missing:
        raise FileNotFoundError(f"{d}: missing {', '.join(missing)}; not a saved {cls_name} "
                                f"(build one with {cls_name}.build(...).save(dir))")
    return json.loads((d / META_FILE).read_text())


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------- VectorIndex
class VectorIndex:
    """A FAISS index over L2-normalised float32 vectors (cosine scores) with its id map.

    Build with :meth:`build`, append shards with :meth:`add`, query with :meth:`search`,
    persist with :meth:`save` / :meth:`load`. ``meta`` records the embedder, dim, count,
    index type and its parameters, the config hash, the faiss version, creation time and
    the search device.
    """

    def __init__(self, index: Any, ids: Sequence[str], meta: dict[str, Any], *, use_gpu: bool | str = "auto"):
        if index.ntotal != len(ids):
            raise ValueError(f"VectorIndex: the faiss index holds {index.ntotal} vectors but {len(ids)} ids "
                             "were given; rebuild the index")
        self.index = index  # the CPU form: what is saved and what add() appends to
        self._ids: list[str] = list(ids)
        self._id_set: set[str] | None = None
        self.meta = dict(meta)
        self.meta["count"] = int(index.ntotal)
        self.meta["dim"] = int(index.d)
        self._use_gpu = use_gpu
        self._gpu_index: Any = None
        self._gpu_stale = True
        self._ngpu = self._gpus_to_use()
        self.meta["device"] = f"gpu x{self._ngpu}" if self._ngpu else "cpu"

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(cls, vectors: Any, ids: Sequence[str], index_type: str = "auto", *,
              metadata: dict[str, Any] | None = None, expected_count: int | None = None,
              nlist: int | None = None, nprobe: int | None = None, pq_m: int | None = None,
              pq_nbits: int | None = None, hnsw_m: int = HNSW_M, ef_construction: int = HNSW_EF_CONSTRUCTION,
              ef_search: int = HNSW_EF_SEARCH, train_size: int | None = None, kmeans_iters: int | None = None,
              seed: int = 0, use_gpu: bool | str = "auto") -> "VectorIndex":
        """Build an index from ``vectors`` (n, dim) and their ``ids`` (one string per row).

        ``index_type``: ``auto`` | ``flat`` | ``ivf_flat`` | ``ivf_pq`` | ``hnsw``.
        ``expected_count``: the final size when more shards will be :meth:`add`-ed; ``auto``
        and the default ``nlist`` use it instead of ``len(vectors)`` (IVF is then trained
        on this first shard, which should be a fair sample of the corpus).
        ``metadata``: extra keys for ``meta`` (``embedder``, ``config_hash``, ...).
        ``train_size``: IVF/PQ training sample (default TRAIN_POINTS_PER_LIST per list),
        drawn without replacement with ``seed``.
        """
        faiss = faiss_module()
        arr = _as_matrix(vectors, "VectorIndex.build")
        ids = _check_ids(ids, arr.shape[0], "VectorIndex.build")
        n, dim = arr.shape
        size = int(expected_count) if expected_count is not None else n
        if size < n:
            raise ValueError(f"VectorIndex.build: expected_count={expected_count} is below the {n} vectors given; "
                             "pass the final corpus size, or leave it unset")
        if index_type == "auto":
            index_type = choose_index_type(size)
        if index_type not in INDEX_TYPES:
            raise ValueError(f"VectorIndex.build: unknown index_type {index_type!r}; "
                             f"use one of auto, {', '.join(INDEX_TYPES)} (retrieval.index_type)")
        _check_all(arr, "VectorIndex.build", ids)  # fail before any expensive training
        params: dict[str, Any] = {}
        if index_type == "flat":
            index = faiss.IndexFlatIP(dim)
        elif index_type == "hnsw":
            if hnsw_m < 2 or ef_construction < 1 or ef_search < 1:
                raise ValueError("VectorIndex.build: need hnsw_m >= 2, ef_construction >= 1, ef_search >= 1")
            index = faiss.IndexHNSWFlat(dim, int(hnsw_m), faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = int(ef_construction)
            index.hnsw.efSearch = int(ef_search)
            params.update(hnsw_m=int(hnsw_m), ef_construction=int(ef_construction))
        else:
            nlist = int(nlist) if nlist is not None else default_nlist(size)
            if not 1 <= nlist <= n:
                raise ValueError(f"VectorIndex.build: nlist={nlist} needs 1 <= nlist <= {n} (the vectors "
                                 "available for training); lower nlist or use index_type='flat'")
            n_train = int(train_size) if train_size is not None else nlist * TRAIN_POINTS_PER_LIST
            if index_type == "ivf_pq":
                n_train = max(n_train, 256 * MIN_POINTS_PER_LIST)  # PQ codebooks need their own points
            n_train = min(n, max(n_train, nlist))
            quantizer = faiss.IndexFlatIP(dim)
            if index_type == "ivf_flat":
                index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
            else:
                m = int(pq_m) if pq_m is not None else default_pq_m(dim)
                if m < 1 or dim % m:
                    raise ValueError(f"VectorIndex.build: pq_m={m} must divide the dimension {dim}; "
                                     f"try {default_pq_m(dim)}")
                nbits = int(pq_nbits) if pq_nbits is not None else default_pq_nbits(n_train)
                index = faiss.IndexIVFPQ(quantizer, dim, nlist, m, nbits, faiss.METRIC_INNER_PRODUCT)
                params.update(pq_m=m, pq_nbits=nbits)
                if kmeans_iters is not None:
                    index.pq.cp.niter = int(kmeans_iters)
            index.cp.seed = int(seed)
            if kmeans_iters is not None:
                index.cp.niter = int(kmeans_iters)
            rng = np.random.default_rng(seed)
            rows = np.sort(rng.choice(n, size=n_train, replace=False)) if n_train < n else np.arange(n)
            train = np.concatenate([_normalised_chunk(np.asarray(arr[rows[s:s + CHUNK_ROWS]]), 0,
                                                      len(rows[s:s + CHUNK_ROWS]), "VectorIndex.build")
                                    for s in range(0, n_train, CHUNK_ROWS)])
            index.train(train)
            del train
            params.update(nlist=nlist, train_size=int(n_train), seed=int(seed),
                          kmeans_iters=int(index.cp.niter))
        meta = {
            "format": FORMAT_VERSION,
            "kind": "vector",
            "embedder": None,
            "config_hash": None,
            **(metadata or {}),
            "index_type": index_type,
            "metric": "inner_product (cosine on L2-normalised vectors)",
            "params": params,
            "faiss_version": faiss.__version__,
            "created": _now(),
        }
        for start in range(0, n, CHUNK_ROWS):
            index.add(_normalised_chunk(arr, start, min(start + CHUNK_ROWS, n), "VectorIndex.build", ids))
        out = cls(index, ids, meta, use_gpu=use_gpu)
        if index_type in ("ivf_flat", "ivf_pq"):
            out.nprobe = nprobe if nprobe is not None else default_nprobe(index.nlist)
        if index_type == "hnsw":
            out.ef_search = ef_search
        return out

    def add(self, vectors: Any, ids: Sequence[str]) -> None:
        """Append a shard. Refuses ids already in the index (naming one) before adding any."""
        arr = _as_matrix(vectors, "VectorIndex.add", self.dim)
        new = _check_ids(ids, arr.shape[0], "VectorIndex.add")
        if self._id_set is None:
            self._id_set = set(self._ids)
        clash = next((x for x in new if x in self._id_set), None)
        if clash is not None:
            raise ValueError(f"VectorIndex.add: id {clash!r} is already in the index; each id may be indexed "
                             "once (drop the shard's ids that were added before, or rebuild)")
        _check_all(arr, "VectorIndex.add", new)
        for start in range(0, arr.shape[0], CHUNK_ROWS):
            self.index.add(_normalised_chunk(arr, start, min(start + CHUNK_ROWS, arr.shape[0]), "VectorIndex.add", new))
        self._ids.extend(new)
        self._id_set.update(new)
        self.meta["count"] = int(self.index.ntotal)
        self._gpu_stale = True

    # ------------------------------------------------------------------ properties
    def __len__(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def ids(self) -> list[str]:
        """The id of each row (a copy)."""
        return list(self._ids)

    @property
    def index_type(self) -> str:
        return self.meta["index_type"]

    @property
    def device(self) -> str:
        return self.meta["device"]

    @property
    def nprobe(self) -> int | None:
        """IVF lists scanned per query (None for flat/hnsw). Settable."""
        return int(self.index.nprobe) if hasattr(self.index, "nprobe") else None

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        if not hasattr(self.index, "nprobe"):
            raise ValueError(f"nprobe applies to IVF indexes; this one is {self.index_type}")
        value = int(value)
        if not 1 <= value <= self.index.nlist:
            raise ValueError(f"nprobe={value} must be within [1, nlist={self.index.nlist}]")
        self.index.nprobe = value
        self.meta.setdefault("params", {})["nprobe"] = value
        if self._gpu_index is not None and not self._gpu_stale:
            try:  # set it on the GPU copy rather than copying the index again
                faiss_module().GpuParameterSpace().set_index_parameter(self._gpu_index, "nprobe", value)
            except Exception:  # noqa: BLE001
                self._gpu_stale = True

    @property
    def ef_search(self) -> int | None:
        """HNSW candidate list size at search time (None for other types). Settable."""
        return int(self.index.hnsw.efSearch) if self.index_type == "hnsw" else None

    @ef_search.setter
    def ef_search(self, value: int) -> None:
        if self.index_type != "hnsw":
            raise ValueError(f"ef_search applies to HNSW indexes; this one is {self.index_type}")
        if int(value) < 1:
            raise ValueError(f"ef_search must be >= 1, got {value}")
        self.index.hnsw.efSearch = int(value)
        self.meta.setdefault("params", {})["ef_search"] = int(value)

    # ------------------------------------------------------------------ GPU
    def _gpus_to_use(self) -> int:
        if self._use_gpu is False or self.meta.get("index_type") == "hnsw":
            return 0
        n = gpu_count()
        if n == 0 and self._use_gpu is True:
            log.warning("VectorIndex: use_gpu=True but faiss sees no GPU (faiss-cpu build or no device); "
                        "searching on CPU. Install faiss-gpu (pip install '.[gpu]') to use one.")
        return n

    def _gpu(self) -> Any:
        """The GPU copy, (re)made after build/add/nprobe changes; None when not on GPU."""
        if not self._ngpu:
            return None
        if self._gpu_stale or self._gpu_index is None:
            faiss = faiss_module()
            try:
                co = faiss.GpuMultipleClonerOptions()
                if self.index_type == "ivf_pq":
                    co.useFloat16 = True  # float16 lookup tables: needed for many sub-quantizers
                self._gpu_index = faiss.index_cpu_to_all_gpus(self.index, co=co)
                if hasattr(self.index, "nprobe"):
                    faiss.GpuParameterSpace().set_index_parameter(self._gpu_index, "nprobe", int(self.index.nprobe))
            except Exception as exc:  # noqa: BLE001 - fall back to CPU, never fail for lack of GPU
                log.warning("VectorIndex: could not move the %s index to GPU (%s); searching on CPU",
                            self.index_type, exc)
                self._ngpu = 0
                self.meta["device"] = "cpu"
                self._gpu_index = None
                return None
            self._gpu_stale = False
        return self._gpu_index

    # ------------------------------------------------------------------ search
    def search(self, queries: Any, k: int, *, batch_size: int = 4096) -> Hits:
        """Top-``k`` ids and cosine scores per query row, best first, ``batch_size`` queries at a time.

        Rows hold only real hits: at most ``min(k, len(self))``, and fewer only when the index
        has nothing more for the query (for IVF, a row the probed lists cannot fill is
        searched again over all lists; for HNSW, efSearch is raised to ``k``).
        """
        faiss = faiss_module()
        if int(k) < 1:
            raise ValueError(f"VectorIndex.search: k must be >= 1, got {k}")
        if batch_size < 1:
            raise ValueError(f"VectorIndex.search: batch_size must be >= 1, got {batch_size}")
        arr = _as_matrix(queries, "VectorIndex.search", self.dim)
        k_eff = min(int(k), len(self))
        is_ivf = hasattr(self.index, "nprobe")
        params = None
        if self.index_type == "hnsw":
            params = faiss.SearchParametersHNSW(efSearch=max(int(self.index.hnsw.efSearch), k_eff))
        gpu = self._gpu() if k_eff <= GPU_MAX_K and (not is_ivf or self.index.nprobe <= GPU_MAX_K) else None
        positions: list[np.ndarray] = []
        scores: list[np.ndarray] = []
        for start in range(0, arr.shape[0], batch_size):
            x = _normalised_chunk(arr, start, min(start + batch_size, arr.shape[0]), "VectorIndex.search")
            if gpu is not None:
                D, I = gpu.search(x, k_eff)
            else:
                D, I = self.index.search(x, k_eff, params=params)
            if is_ivf and self.index.nprobe < self.index.nlist:
                short = np.flatnonzero((I < 0).any(axis=1))
                if len(short):  # the probed lists held fewer than k: scan them all for these rows
                    D2, I2 = self.index.search(x[short], k_eff,
                                               params=faiss.SearchParametersIVF(nprobe=int(self.index.nlist)))
                    D[short], I[short] = D2, I2
            for d_row, i_row in zip(D, I):
                keep = i_row >= 0
                positions.append(i_row[keep].astype(np.int64, copy=False))
                scores.append(d_row[keep].astype(np.float32, copy=False))
        return Hits(positions, scores, self._ids)

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | Path) -> Path:
        """Write ``index.faiss`` (CPU form), ``ids.parquet`` and ``meta.json`` (last)."""
        faiss = faiss_module()
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        _write_atomic_bytes(d / INDEX_FILE, faiss.serialize_index(self.index).tobytes())
        _write_ids(d / IDS_FILE, self._ids)
        meta = {**self.meta, "count": len(self), "dim": self.dim, "files": [INDEX_FILE, IDS_FILE]}
        _write_atomic_bytes(d / META_FILE, json.dumps(meta, indent=1, default=str).encode())
        return d

    @classmethod
    def load(cls, directory: str | Path, *, use_gpu: bool | str = "auto") -> "VectorIndex":
        """Read an index :meth:`save` wrote; counts and dimension must agree across the files."""
        faiss = faiss_module()
        d = Path(directory)
        meta = _open_saved(d, "vector", "VectorIndex", (INDEX_FILE, IDS_FILE))
        index = faiss.read_index(str(d / INDEX_FILE))
        ids = _read_ids(d / IDS_FILE)
        if not (index.ntotal == len(ids) == meta.get("count")):
            raise ValueError(f"{d}: counts disagree: index.faiss holds {index.ntotal} vectors, ids.parquet "
                             f"{len(ids)} ids, meta.json says {meta.get('count')}; the directory is from "
                             "different builds or an interrupted save, rebuild the index")
        if index.d != meta.get("dim"):
            raise ValueError(f"{d}: index.faiss has dimension {index.d} but meta.json says {meta.get('dim')}; "
                             "rebuild the index")
        meta.pop("files", None)
        out = cls(index, ids, meta, use_gpu=use_gpu)
        if meta.get("index_type") == "hnsw" and "ef_search" in meta.get("params", {}):
            out.ef_search = meta["params"]["ef_search"]
        return out


# --------------------------------------------------------------------------- BM25
class BM25Index:
    """BM25 over texts with the ``bm25s`` package (Lucene variant, English stop words, no stemming).

    Scores are bm25s's; a document scores only if it shares a (non-stop-word) term with
    the query, so a query with no known terms (or an empty one) gets an empty row.
    """

    STOPWORDS = "en"

    def __init__(self, model: Any, ids: Sequence[str], meta: dict[str, Any]):
        self.model = model
        self._ids = list(ids)
        self.meta = dict(meta)
        self.meta["count"] = len(self._ids)

    @staticmethod
    def _doc_text(t: Any) -> str:
        if t is None:
            return ""
        if isinstance(t, str):
            return t
        if isinstance(t, (list, tuple)):  # e.g. a Sample's `skills` list
            return " ; ".join(str(s) for s in t if s)
        raise ValueError(f"BM25Index: a document is {type(t).__name__}; pass texts (str or list of str)")

    @classmethod
    def build(cls, texts: Sequence[Any], ids: Sequence[str], *, k1: float = 1.5, b: float = 0.75,
              method: str = "lucene", metadata: dict[str, Any] | None = None) -> "BM25Index":
        """Index ``texts`` (a str, or a list of str such as a skills list, per document)."""
        import bm25s

        docs = [cls._doc_text(t) for t in texts]
        if not docs:
            raise ValueError("BM25Index.build: no texts; pass at least one document")
        ids = _check_ids(ids, len(docs), "BM25Index.build")
        tokens = bm25s.tokenize(docs, stopwords=cls.STOPWORDS, show_progress=False)
        empty = sum(1 for t in tokens.ids if not t)
        if empty == len(docs):  # bm25s itself fails here with "max() arg is an empty sequence"
            raise ValueError(
                f"BM25Index.build: none of the {len(docs)} documents has a word to index (all empty or "
                f"stopwords, e.g. {docs[0]!r}); if these are the teacher's skill annotations, the teacher "
                "wrote no usable skills: check <annotated>/unparsed.parquet and the teacher model, or index "
                "another text (retrieval.text=instruction)")
        model = bm25s.BM25(k1=k1, b=b, method=method)
        model.index(tokens, show_progress=False)
        if empty:
            log.info("BM25Index: %d of %d documents have no indexable terms; they are never retrieved",
                     empty, len(docs))
        meta = {"format": FORMAT_VERSION, "kind": "bm25", **(metadata or {}), "index_type": "bm25",
                "params": {"k1": k1, "b": b, "method": method, "stopwords": cls.STOPWORDS, "stemmer": None},
                "empty_documents": empty, "bm25s_version": bm25s.__version__, "created": _now()}
        return cls(model, ids, meta)

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def ids(self) -> list[str]:
        return list(self._ids)

    def _query_token_ids(self, text: str) -> list[int]:
        import bm25s

        vocab = self.model.vocab_dict
        toks = bm25s.tokenize([text or ""], stopwords=self.STOPWORDS, show_progress=False, return_ids=False)[0]
        return sorted({vocab[t] for t in toks if t and t in vocab})

    def search(self, queries: Sequence[str], k: int, **_: Any) -> Hits:
        """Top-``k`` documents per query text by BM25 score; ties go to the earlier document."""
        if int(k) < 1:
            raise ValueError(f"BM25Index.search: k must be >= 1, got {k}")
        if isinstance(queries, str):
            raise ValueError("BM25Index.search: pass a list of query texts, e.g. [text]")
        queries = list(queries)
        if not queries:
            raise ValueError("BM25Index.search: no queries; pass at least one query text")
        positions: list[np.ndarray] = []
        scores: list[np.ndarray] = []
        for q in queries:
            if q is not None and not isinstance(q, str):
                raise ValueError(f"BM25Index.search: query {q!r} is not text; BM25 searches query texts")
            tok = self._query_token_ids(q or "")
            if not tok:
                positions.append(np.zeros(0, np.int64))
                scores.append(np.zeros(0, np.float32))
                continue
            s = np.asarray(self.model.get_scores_from_ids(tok), dtype=np.float32)
            cand = np.flatnonzero(s > 0)
            if len(cand) > k:
                part = np.argpartition(-s[cand], k - 1)[:k]
                kth = s[cand[part]].min()
                cand = cand[s[cand] >= kth]  # keep ties at the boundary, cut after sorting
            order = np.lexsort((cand, -s[cand]))[:k]
            positions.append(cand[order].astype(np.int64))
            scores.append(s[cand[order]])
        return Hits(positions, scores, self._ids)

    def save(self, directory: str | Path) -> Path:
        """Write bm25s's files under ``bm25/``, then ``ids.parquet`` and ``meta.json`` (last)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.model.save(str(d / BM25_DIR), show_progress=False)
        _write_ids(d / IDS_FILE, self._ids)
        meta = {**self.meta, "count": len(self), "files": [BM25_DIR, IDS_FILE]}
        _write_atomic_bytes(d / META_FILE, json.dumps(meta, indent=1, default=str).encode())
        return d

    @classmethod
    def load(cls, directory: str | Path) -> "BM25Index":
        import bm25s

        d = Path(directory)
        meta = _open_saved(d, "bm25", "BM25Index", (BM25_DIR, IDS_FILE))
        model = bm25s.BM25.load(str(d / BM25_DIR), show_progress=False)
        ids = _read_ids(d / IDS_FILE)
        n_docs = int(model.scores["num_docs"])
        if not (n_docs == len(ids) == meta.get("count")):
            raise ValueError(f"{d}: counts disagree: bm25 holds {n_docs} documents, ids.parquet {len(ids)} "
                             f"ids, meta.json says {meta.get('count')}; rebuild the index")
        meta.pop("files", None)
        return cls(model, ids, meta)


def load_index(directory: str | Path, **kw: Any) -> VectorIndex | BM25Index:
    """Load whichever index ``directory`` holds (by ``meta.json``'s ``kind``)."""
    meta_path = Path(directory) / META_FILE
    if not meta_path.exists():
        raise FileNotFoundError(f"{directory}: no {META_FILE}; not a saved index")
    kind = json.loads(meta_path.read_text()).get("kind")
    if kind == "bm25":
        return BM25Index.load(directory)
    return VectorIndex.load(directory, **kw)
