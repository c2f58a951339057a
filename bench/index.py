"""Benchmark: FAISS index types on clustered vectors (build time, memory, QPS, recall@10).

    python -m bench.index [--sizes 100000,1000000] [--quick] [--types flat,ivf_flat,ivf_pq,hnsw] [--write]

Data: ``n`` × 384-d vectors from a two-level mixture on the unit sphere: 1000 Gaussian
clusters whose centres sit around 50 super-centres, cluster weights from a Dirichlet, and
every point L2-normalised. Queries (1000) are fresh draws from the same mixture. On
i.i.d. Gaussian data every point is about equally far from every other and recall means
nothing; here, as with sentence embeddings, a query's neighbours are its cluster's points
and near-misses are the sibling clusters'.

For each size and index type: build time (:meth:`VectorIndex.build`: training, adding,
normalising), index size (``len(faiss.serialize_index(index))``), the process RSS growth
over the build, QPS of one batch search of the 1000 queries (k = 10), and recall@10
against the Flat index's exact top-10. With faiss-gpu and a GPU, Flat and IVF are also
searched on the GPU. With ``--write`` the section between the ``bench:index`` markers in
docs/benchmarks.md is replaced (appended when missing), machine, date and command included;
it is not written while git shows uncommitted edits to that file.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from bench.report import write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MARK = "bench:index"
DIM = 384
CLUSTERS = 1000
SUPER = 50
CHUNK = 100_000


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def rss() -> int:
    """Process RSS, after handing freed heap back to the OS (glibc), so deltas mean growth."""
    import ctypes

    import psutil

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    return psutil.Process().memory_info().rss


def machine() -> str:
    import faiss

    from mmtune.retrieval.index import gpu_count

    gpus = gpu_count()
    return (f"{platform.machine()}, {os.cpu_count()} CPUs (faiss OpenMP threads {faiss.omp_get_max_threads()}), "
            f"faiss {faiss.__version__} ({'GPU build, %d GPU(s)' % gpus if gpus else 'CPU only'}), "
            f"numpy {np.__version__}, Python {platform.python_version()}")


def clustered(n: int, n_queries: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(corpus, queries): the two-level clustered mixture described in the module docstring."""
    rng = np.random.default_rng(seed)

    def unit(x: np.ndarray) -> np.ndarray:
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x

    scale = np.float32(1 / np.sqrt(dim))
    supers = unit(rng.standard_normal((SUPER, dim), dtype=np.float32))
    centres = unit(supers[np.arange(CLUSTERS) % SUPER] + rng.standard_normal((CLUSTERS, dim), dtype=np.float32) * scale)
    weights = rng.dirichlet(np.ones(CLUSTERS))

    def draw(m: int) -> np.ndarray:
        out = np.empty((m, dim), dtype=np.float32)
        for s in range(0, m, CHUNK):
            e = min(m, s + CHUNK)
            lab = rng.choice(CLUSTERS, size=e - s, p=weights)
            out[s:e] = unit(centres[lab] + rng.standard_normal((e - s, dim), dtype=np.float32) * scale)
        return out

    return draw(n), draw(n_queries)


def params_for(kind: str, n: int, args: argparse.Namespace) -> dict:
    """Build parameters for one row: the library's defaults unless this bench's flags say otherwise."""
    p: dict = {}
    if kind in ("ivf_flat", "ivf_pq"):
        if args.nlist:
            p["nlist"] = args.nlist
        elif n > args.big:
            p["nlist"] = args.big_nlist  # 4·√n (4000 at 1M) k-means does not fit the time budget on 2 cores
        if args.train_per_list:
            from mmtune.retrieval.index import default_nlist

            p["train_size"] = args.train_per_list * p.get("nlist", default_nlist(n))
    if kind == "hnsw":
        p.update({k: v for k, v in (("hnsw_m", args.hnsw_m), ("ef_construction", args.ef_construction)) if v})
    return p


def search_settings(vi, args: argparse.Namespace) -> list[tuple[str, int | None]]:
    """The search-time knob values to time for one built index (no rebuild between them)."""
    if vi.index_type in ("ivf_flat", "ivf_pq"):
        default = vi.nprobe
        return [("nprobe", v) for v in sorted({max(1, default // 4), default} | set(args.nprobes))]
    if vi.index_type == "hnsw":
        return [("ef_search", v) for v in sorted({vi.ef_search} | set(args.ef_searches))]
    return [("", None)]


def describe(vi) -> str:
    p = dict(vi.meta.get("params", {}))
    if vi.index_type in ("ivf_flat", "ivf_pq"):
        s = f"nlist {p['nlist']}, nprobe {vi.nprobe}, train {p['train_size'] // 1000}k"
        return s + (f", m {p['pq_m']}×{p['pq_nbits']}b" if vi.index_type == "ivf_pq" else "")
    if vi.index_type == "hnsw":
        return f"M {p['hnsw_m']}, efC {p['ef_construction']}, efS {vi.ef_search}"
    return "exact"


def run_size(n: int, args: argparse.Namespace, types: list[str]) -> list[dict]:
    import faiss

    from mmtune.retrieval.index import VectorIndex, gpu_count

    t0 = time.time()
    x, q = clustered(n, args.queries, args.dim, args.seed)
    ids = [f"v{i}" for i in range(n)]
    log(f"n={n:,}: data {x.nbytes / 2**20:.0f} MiB generated in {time.time() - t0:.0f} s")
    rows: list[dict] = []
    truth: list[set[int]] = []
    true_score = float("nan")
    gpus = gpu_count()
    for kind in types:
        r0 = rss()
        t = time.time()
        vi = VectorIndex.build(x, ids, kind, seed=args.seed, use_gpu=False, **params_for(kind, n, args))
        build_s = time.time() - t
        r1 = rss()
        size = len(faiss.serialize_index(vi.index))
        devices = [vi]
        if gpus and kind != "hnsw":
            devices.append(VectorIndex(vi.index, vi.ids, vi.meta, use_gpu=True))
        for index in devices:
            for knob, value in search_settings(vi, args):
                if knob:
                    setattr(index, knob, value)
                index.search(q[:10], 10)  # warm-up (GPU copy, caches)
                t = time.time()
                hits = index.search(q, 10)
                search_s = time.time() - t
                # exact cosine of what was found (IVF-PQ's own scores are approximations)
                found = [np.sort(x[p] @ q[i])[::-1] for i, p in enumerate(hits.positions)]
                if kind == "flat" and index.device == "cpu":
                    truth = [set(p.tolist()) for p in hits.positions]
                    true_score = float(np.mean([f.mean() for f in found]))
                rec = float(np.mean([len(set(p.tolist()) & t_) / len(t_) for p, t_ in zip(hits.positions, truth)]))
                ratio = float(np.mean([f.mean() for f in found])) / true_score
                rows.append({"n": n, "index": kind, "params": describe(index), "device": index.device,
                             "build_s": build_s, "bytes": size, "rss": r1 - r0, "qps": len(q) / search_s,
                             "recall": rec, "ratio": ratio})
                log(f"n={n:,} {kind:8s} {describe(index)} [{index.device}]: build {build_s:.1f} s, "
                    f"{size / 2**20:.0f} MiB, {len(q) / search_s:,.0f} QPS, recall@10 {rec:.3f}, ratio {ratio:.4f}")
        del vi, devices, index, hits
    del x, q
    gc.collect()
    return rows


def table(rows: list[dict]) -> str:
    out = ["| vectors | index | parameters | search device | build (s) | index size (MiB) | RSS growth (MiB) "
           "| QPS (1000 queries, k=10) | recall@10 vs Flat | top-10 score ratio |",
           "|---:|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['n']:,} | {r['index']} | {r['params']} | {r['device']} | {r['build_s']:.1f} | "
                   f"{r['bytes'] / 2**20:,.0f} | {r['rss'] / 2**20:,.0f} | {r['qps']:,.0f} | {r['recall']:.3f} | "
                   f"{r['ratio']:.4f} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100000,1000000", help="comma-separated corpus sizes")
    ap.add_argument("--quick", action="store_true", help="20k vectors only")
    ap.add_argument("--types", default="flat,ivf_flat,ivf_pq,hnsw", help="Flat must come first (it is the truth)")
    ap.add_argument("--dim", type=int, default=DIM)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--nlist", type=int, default=0, help="IVF lists (0: library default 4·√n, or --big-nlist)")
    ap.add_argument("--nprobes", default="", help="extra IVF nprobe values to time (default and default/4 always)")
    ap.add_argument("--train-per-list", type=int, default=0, help="IVF training points per list (0: library default)")
    ap.add_argument("--big", type=int, default=200_000, help="sizes above this use --big-nlist")
    ap.add_argument("--big-nlist", type=int, default=1024)
    ap.add_argument("--hnsw-m", type=int, default=0, help="0: library default")
    ap.add_argument("--ef-construction", type=int, default=0, help="0: library default")
    ap.add_argument("--ef-searches", default="64,512", help="HNSW efSearch values to time besides the default")
    ap.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = ap.parse_args(argv)
    args.nprobes = [int(v) for v in args.nprobes.split(",") if v.strip()]
    args.ef_searches = [int(v) for v in args.ef_searches.split(",") if v.strip()]

    sizes = [20_000] if args.quick else [int(s) for s in args.sizes.split(",") if s.strip()]
    types = [t.strip() for t in args.types.split(",") if t.strip()]
    if not types or types[0] != "flat":
        ap.error("--types must start with flat: it is the exact reference for recall")
    load0 = os.getloadavg()
    t_all = time.time()
    rows: list[dict] = []
    for n in sizes:
        rows += run_size(n, args, types)
    wall = time.time() - t_all
    load1 = os.getloadavg()

    cmd = "python -m bench.index " + " ".join(sys.argv[1:] if argv is None else argv)
    from mmtune.retrieval.index import gpu_count

    gpus = gpu_count()
    lines = [
        f"<!-- {MARK} -->",
        "### Vector index types (retrieval)",
        "",
        f"- date: {dt.date.today().isoformat()}; machine: {machine()}",
        f"- command: `{cmd.strip()}`; wall time {wall / 60:.1f} min; 1-min load average "
        f"{load0[0]:.1f} at start, {load1[0]:.1f} at the end (the CPUs were shared, so times are upper bounds)",
        f"- data: {args.dim}-d, L2-normalised, {CLUSTERS} Gaussian clusters around {SUPER} super-centres on the "
        f"unit sphere (Dirichlet weights); {args.queries} queries drawn from the same mixture; cosine = inner product",
        "- build: `VectorIndex.build` (validation, normalisation, IVF/PQ training on a seeded sample, add); "
        "index size: `len(faiss.serialize_index(index))`; RSS growth: process RSS after minus before the build; "
        "QPS: one batch search of all queries, k = 10, after a 10-query warm-up",
        f"- parameters: library defaults (`mmtune/retrieval/index.py`), except IVF above {args.big:,} vectors: "
        f"nlist {args.big_nlist} (the default 4·√n = 4000 at 1M makes k-means too slow for this 2-core budget); "
        "each built index is timed at several search settings (IVF nprobe, HNSW efSearch) without rebuilding",
        "- top-10 score ratio: mean exact cosine of the 10 ids found / that of the true top-10 (1 = as similar as "
        "the exact answer; it shows whether misses are near-ties)",
        "- GPU: " + (f"Flat and IVF also searched on {gpus} GPU(s)" if gpus
                     else "none (faiss-cpu); GPU rows appear when faiss-gpu sees a GPU"),
        "",
        table(rows),
        f"<!-- /{MARK} -->",
    ]
    section = "\n".join(lines)
    print(section)
    if args.write:
        if not write_section(MARK, section):
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
