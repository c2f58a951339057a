"""The error-driven loop, end to end: ``mmtune run`` / ``ray_jobs/run_pipeline.py``.

Stages (each recorded in ``runs/<name>/manifest.json``, see :mod:`mmtune.rundir`)::

    data → student → teacher → annotate → index            (once; cached across runs)
    round r = 1..R:  diagnose_r → select_r → train_r → evaluate_r
    evaluate_0: the generic student on the same test splits, the baseline row

Choices [ours]:
- **Rounds retrain from the generic student on the union of the selections so far**
  (round r trains on rounds 1..r's samples). Every round's student then differs from the
  generic one only by the data it was given, which keeps rounds comparable, and the
  budget B is split over rounds as B // R (the last round takes the remainder).
- **The teacher runs as a Serve app only during diagnosis**, and is deleted before
  training so its replicas do not hold CPUs/GPUs that Ray Train needs. Annotation, a
  bulk job, uses a Ray Data actor pool instead (``teacher/annotate_job.py``).
- **Annotation and the index live in the cache** (``<cache_dir>/annotated/<key>``,
  ``<cache_dir>/index/<key>``), keyed by the corpus and the teacher/embedder, so every run
  and every arm of a comparison shares them.
- **What selection may read:** the target's *validation* split (through the diagnosis)
  and the pool's text and annotations. The test split is read only by ``evaluate_*``, and
  SkillWorld's generator metadata never (see ``docs/fairness.md``).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mmtune.config import RunConfig, config_hash
from mmtune.fairness import SelectionView
from mmtune.metrics import PipelineMetrics
from mmtune.rundir import RunDir

Progress = Callable[[str], None]


# Teacher settings that change no output (throughput, placement, transport) stay out of
# stage keys, so that tuning them never re-annotates a corpus.
# ``locate`` changes only the diagnosis, whose own key names it.
_TEACHER_OPERATIONAL = {"serve", "autoscaling", "host", "port", "batch_size", "device", "timeout_s", "max_retries",
                        "locate"}


def _teacher_identity(cfg: RunConfig) -> dict[str, Any]:
    return cfg.teacher.model_dump(mode="json", exclude=_TEACHER_OPERATIONAL)


# What the corpus annotation depends on: the model and how it is prompted and decoded. Not
# the diagnosis-only settings (δ, λ, the hint, candidate scoring) nor settings added to the
# teacher section later: annotating a real corpus with a 72B teacher costs hours, and a
# sweep over δ, or an upgrade that adds a teacher field, must not redo it.
_ANNOTATION_FIELDS = ("backend", "name_or_path", "chat_template", "openai_api", "base_url", "max_new_tokens",
                      "dtype", "prompt_version", "parse_retries")


def annotation_key(cfg: RunConfig, corpus: list[str], teacher_dir: str | None) -> str:
    """The cache key of the corpus annotation (``<cache_dir>/annotated/<key>``): the corpus
    files (size, mtime), the teacher fields in ``_ANNOTATION_FIELDS`` and, for the built-in
    teacher, its model directory's name (itself a hash of what trained it)."""
    t = cfg.teacher
    return config_hash({"corpus": _sig(corpus), "teacher": {f: getattr(t, f) for f in _ANNOTATION_FIELDS},
                        "model": Path(teacher_dir).name if teacher_dir else None})


def _absolute(path: str) -> str:
    """Local paths made absolute: Ray Train workers, Serve replicas and Ray Data actors may
    run in other working directories (or on other nodes, with the same shared paths).
    Hub ids pass through."""
    return str(Path(path).resolve()) if Path(path).exists() else path


def _sig(files: list[str]) -> dict[str, list[int]]:
    """Input files by size and mtime: a changed file changes the stage key."""
    out = {}
    for f in files:
        st = Path(f).stat()
        out[str(Path(f).resolve())] = [st.st_size, st.st_mtime_ns]
    return out


def student_beside_teacher(cfg: RunConfig, cpus: int | None = None) -> RunConfig:
    """The config the generic student pre-trains with while the built-in teacher trains in a
    1-CPU Ray task: the student takes the other cores, not torch's default of all of them
    (oversubscribed; on 2 cores 1 thread even ran faster than 2 alone: docs/benchmarks.md).
    A thread count the user set is kept. Threads are not part of the student's cache key."""
    if cfg.student.pretrain.threads is not None:
        return cfg
    out = cfg.model_copy(deep=True)
    out.student.pretrain.threads = max(1, (cpus or os.cpu_count() or 2) - 1)
    return out


@dataclass
class RoundResult:
    round: int
    scores: list[dict[str, Any]]
    wrong: int
    selected: int
    skills: dict[str, int]


def _materialise(corpus_files: list[str], ids: list[str], out: Path) -> Path:
    """The selected rows of the corpus as one parquet file, in selection order."""
    from mmtune.data.salvage import row_groups

    want = pa.array(ids, pa.string())
    parts = []
    for f in corpus_files:
        # Row group by row group: one that does not decode had its rows quarantined by the
        # index build (never selected), and must not fail the round (mmtune/data/salvage.py).
        parts += [t.filter(pc.is_in(t.column("id"), value_set=want)) for _, t, _, _ in row_groups(f) if t is not None]
    table = pa.concat_tables(parts)
    order = {x: i for i, x in enumerate(ids)}
    table = table.take(pa.array(sorted(range(table.num_rows), key=lambda i: order[table.column("id")[i].as_py()]),
                                pa.int64()))
    missing = len(set(ids)) - table.num_rows
    if missing:
        raise ValueError(f"{missing} selected ids are not in the corpus files (or lie in a row group that does "
                         "not decode); the index is stale — rebuild it (delete its cache directory)")
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out)
    return out


class Pipeline:
    def __init__(self, cfg: RunConfig, *, resume: bool = False, progress: Progress = print):
        self.cfg = cfg
        self.progress = progress
        self.run = RunDir(cfg, resume=resume, progress=progress)
        self.root = self.run.root
        # Stage progress and selection counts on Ray's metrics (inert without Ray; mmtune/metrics.py)
        self.metrics = PipelineMetrics(cfg.run.name, rounds=cfg.retrieval.rounds, planned=self.planned_stages())
        self.run.stage = self.metrics.wrap_stage(self.run.stage)  # type: ignore[method-assign]

    # ---------------------------------------------------------------- shared stages
    def prepare(self) -> dict[str, Any]:
        from mmtune.data.catalog import data_paths
        from mmtune.teacher.builtin import resolve_teacher
        from mmtune.training.pretrain import resolve_student

        cfg = self.cfg
        key: dict[str, Any] = cfg.data.model_dump(mode="json")
        if cfg.data.source == "files":
            # The user's files can change under the same config: key the stage by what they
            # resolve to (import directories are named by the files' signatures) and by the
            # resolved files' own signatures (Sample parquet is used in place).
            resolved = self._data(data_paths)
            files = resolved["corpus"] + [p for split in ("val", "test") for ps in resolved[split].values() for p in ps]
            key["resolved"] = _sig(files)
        kd, data = self.run.stage("data", key, {}, lambda: self._data(data_paths))
        pending = self._train_teacher_alongside()
        scfg = cfg if pending is None else student_beside_teacher(cfg)
        ks, student = self.run.stage(
            "student", cfg.student.model_dump(mode="json", exclude={"max_new_tokens"}), {"data": kd},
            lambda: {"path": str(resolve_student(scfg, progress=self.progress))}, lambda o: [o["path"]])
        self.keys = {"data": kd, "student": ks}
        self.data, self.student, self.teacher_dir = data, _absolute(student["path"]), None
        if self.needs_teacher():  # random, full and instruction similarity never ask a teacher
            def teacher_stage() -> dict[str, Any]:
                if pending is not None:
                    import ray

                    ray.get(pending)
                return {"path": str(resolve_teacher(cfg, progress=self.progress) or "")}

            kt, teacher = self.run.stage(
                "teacher", _teacher_identity(cfg),
                {"data": kd}, teacher_stage)
            self.keys["teacher"], self.teacher_dir = kt, _absolute(teacher["path"]) if teacher["path"] else None
        return data

    def _train_teacher_alongside(self):
        """When both the generic student and the built-in teacher must be trained (a fresh
        machine), train the teacher in a 1-CPU Ray task while the driver pre-trains the
        student: on 2 cores that nearly halves the first run's wall time."""
        from mmtune.models.shipped import restore
        from mmtune.teacher.builtin import META_FILE, teacher_dir
        from mmtune.training.pretrain import META_FILE as STUDENT_META
        from mmtune.training.pretrain import PRESET_MODALITY, student_dir

        cfg = self.cfg

        def ready(out: Path, meta: str) -> bool:  # cached, or shipped and copied in now
            return (out / meta).is_file() or restore(out, meta, enabled=cfg.run.shipped_models, progress=self.progress)

        if (not self.needs_teacher() or cfg.teacher.backend != "builtin"
                or cfg.student.name_or_path not in PRESET_MODALITY  # any preset: vision or audio
                or ready(teacher_dir(cfg), META_FILE) or ready(student_dir(cfg), STUDENT_META)):
            return None
        import ray

        from mmtune.teacher.builtin import ensure_builtin_teacher

        self.progress("[run] training the built-in teacher in a Ray task while the student pre-trains")
        cfg1 = cfg.model_copy(deep=True)
        cfg1.teacher.builtin.threads = 1
        return ray.remote(num_cpus=1)(ensure_builtin_teacher).remote(cfg1)

    def _data(self, data_paths) -> dict[str, Any]:
        p = data_paths(self.cfg, self.progress)
        return {"corpus": [_absolute(x) for x in p.corpus], "generic_eval": [_absolute(x) for x in p.generic_eval],
                "val": {t: [_absolute(x) for x in ps] for t, ps in p.target_val.items()},
                "test": {t: [_absolute(x) for x in ps] for t, ps in p.target_test.items()}}

    def needs_teacher(self) -> bool:
        return self.cfg.retrieval.method in ("dense", "bm25")

    def planned_stages(self) -> int:
        """How many stages ``run_all`` goes through (the progress gauge's total): data,
        student, evaluate_0; teacher and annotate when a teacher is needed; index unless
        the method reads no index (and the context index with ``context_rerank``); per
        round diagnose (with a teacher), select, train, evaluate."""
        t = int(self.needs_teacher())
        rc = self.cfg.retrieval
        index = int(rc.method not in ("random", "full", "oracle")) + int(rc.method == "dense" and rc.context_rerank)
        return 3 + 2 * t + index + rc.rounds * (3 + t)

    def annotate_and_index(self) -> None:
        """Annotate the corpus (skills) and index it, both cached by content."""
        from mmtune.teacher.annotate_job import annotate_corpus, annotated_files

        cfg, rc = self.cfg, self.cfg.retrieval
        corpus = self.data["corpus"]
        self.pool_files = corpus
        self.context_index_dir: Path | None = None
        if rc.method in ("random", "full", "oracle"):
            return
        if self.needs_teacher():
            adir = Path(cfg.run.cache_dir) / "annotated" / annotation_key(cfg, corpus, self.teacher_dir)
            ka, _ = self.run.stage("annotate", {"dir": str(adir)}, {"teacher": self.keys["teacher"]},
                                   lambda: annotate_corpus(cfg, corpus, adir, builtin_dir=self.teacher_dir,
                                                           progress=self.progress),
                                   lambda o: [str(adir / "manifest.json")])
            self.pool_files = [str(p) for p in annotated_files(adir)]
            self.keys["annotate"] = ka
            icfg = cfg
        else:  # instruction similarity: the corpus's instructions, no teacher
            icfg = self._instruction_cfg()
        self.index_cfg = icfg
        self.index_dir, self.keys["index"] = self._index("index", icfg, self.pool_files,
                                                         {k: v for k, v in self.keys.items() if k == "annotate"})
        if rc.method == "dense" and rc.context_rerank:
            # The corpus's instruction embeddings, for reranking by context: the same cache
            # entry as the instruction-similarity arm's index (same files, same key).
            self.context_index_dir, self.keys["context_index"] = self._index(
                "context_index", self._instruction_cfg(), corpus, {})

    def _instruction_cfg(self) -> RunConfig:
        rc = self.cfg.retrieval
        return self.cfg.model_copy(update={"retrieval": rc.model_copy(update={"text": "instruction"})})

    def _index(self, stage: str, icfg: RunConfig, files: list[str], deps: dict[str, str]) -> tuple[Path, str]:
        """Embed ``files`` by ``icfg.retrieval.text`` and index them, cached by content."""
        from mmtune.retrieval.corpus_index import build_corpus_index

        ikey = config_hash({"pool": _sig(files), "embedder": icfg.retrieval.embedder,
                            "text": icfg.retrieval.text, "index_type": icfg.retrieval.index_type})
        idir = Path(self.cfg.run.cache_dir) / "index" / ikey
        key, _ = self.run.stage(stage, {"dir": str(idir)}, deps,
                                lambda: build_corpus_index(icfg, files, idir, progress=self.progress),
                                lambda o: [str(idir)])
        return idir, key

    # ---------------------------------------------------------------- per round
    def diagnose(self, r: int, adapter: str | None, prev_key: str) -> tuple[str, dict[str, Any]]:
        from mmtune.diagnosis import diagnose

        cfg = self.cfg
        out = self.root / f"round_{r}" / "diagnosis"

        @contextlib.contextmanager
        def served() -> Any:
            from mmtune.teacher.serve import ServedTeacher, start_teacher, stop_teacher

            handle = start_teacher(cfg, builtin_dir=self.teacher_dir, blocking=False, progress=self.progress)
            try:
                yield ServedTeacher(handle)
            finally:
                stop_teacher(cfg)  # the replicas must not hold resources while Ray Train runs

        def work() -> dict[str, Any]:
            return diagnose(cfg, self.student, {f"{t}/val": ps for t, ps in self.data["val"].items()},
                            served, out, round_=r, adapter_dir=adapter, locate=cfg.teacher.locate, concurrency=4,
                            progress=self.progress)

        key = {"teacher": self.keys["teacher"], "delta": cfg.teacher.delta, "patience": cfg.teacher.switch_patience,
               "locate": cfg.teacher.locate, "max_new_tokens": cfg.student.max_new_tokens, "seed": cfg.run.seed}
        if adapter is None:  # the generic student's diagnosis is the same for every run and arm
            work = self._shared("diagnosis", {**key, "student": self.keys["student"], "val": self.data["val"],
                                              "val_sig": _sig([p for ps in self.data["val"].values() for p in ps])},
                                out, work)
        return self.run.stage(f"diagnose_{r}", key, {"previous": prev_key}, work, lambda o: [o["path"]])

    def _shared(self, kind: str, key: dict[str, Any], out: Path, work: Callable[[], dict[str, Any]]):
        """``work`` wrapped in a cache shared by every run (``<cache_dir>/<kind>/<key>``): the
        generic student's diagnosis and evaluation are the same for every arm and seed of a
        comparison, so they run once. A hit copies the cached directory into ``out``."""
        import shutil

        cache = Path(self.cfg.run.cache_dir).resolve() / kind / config_hash(key)

        def cached() -> dict[str, Any]:
            if (cache / "result.json").is_file():
                if out.exists():
                    shutil.rmtree(out)
                shutil.copytree(cache / "out", out)
                self.progress(f"[run] {kind}: reusing {cache}")
                return json.loads((cache / "result.json").read_text().replace("{OUT}", str(out)))
            result = work()
            # One temporary directory per process: two runs (say, two comparisons) may
            # compute the same entry at once; the first rename wins, the other is dropped.
            tmp = cache.with_name(f"{cache.name}.tmp-{os.getpid()}")
            if tmp.exists():
                shutil.rmtree(tmp)
            shutil.copytree(out, tmp / "out")
            (tmp / "result.json").write_text(json.dumps(result, default=str).replace(str(out), "{OUT}"))
            try:
                tmp.rename(cache)
            except OSError:  # another run got there first: its entry is the same
                shutil.rmtree(tmp)
            return result

        return cached

    def budget(self, r: int) -> int:
        rc = self.cfg.retrieval
        share = rc.budget // rc.rounds
        return share + (rc.budget - share * rc.rounds if r == rc.rounds else 0)

    def select(self, r: int, diag: dict[str, Any] | None, taken: list[str], inputs: dict[str, str]) -> tuple[str, dict]:
        from mmtune.retrieval import select as sel

        cfg, rc = self.cfg, self.cfg.retrieval
        out = self.root / f"round_{r}" / "selection.parquet"
        budget = self.budget(r)

        # Selection reads only through this view: the test splits and generator metadata are
        # refused by construction (mmtune/fairness.py).
        view = SelectionView(self.pool_files, self.data["val"], self.data["test"], diag["path"] if diag else None)

        def work() -> dict[str, Any]:
            if rc.method == "random":
                s = sel.select_random(view.pool_ids(), budget, seed=cfg.run.seed + r, round=r, exclude_ids=taken)
            elif rc.method == "oracle":
                s = sel.select_random(view.val_ids(), budget, seed=cfg.run.seed + r, round=r, exclude_ids=taken)
            elif rc.method == "full":
                s = sel.select_full(view.pool_ids(), round=r, exclude_ids=taken)
            else:
                from mmtune.retrieval.corpus_index import load_corpus_index
                from mmtune.retrieval.embed import TextEmbedder

                vindex, bm25 = load_corpus_index(self.index_dir)
                if rc.method == "instruction_similarity":
                    pairs = view.val_instructions(with_targets=True)  # every target its share
                    qs = sel.interleave([q for _, q in pairs], [t for t, _ in pairs])
                    s = sel.select_instruction_similarity(qs, budget, vindex, embed_fn=TextEmbedder(rc.embedder),
                                                          round=r, exclude_ids=taken)
                else:
                    pairs = query_pairs(view.diagnosis_rows(), rc.query)
                    qs = [q for q, _ in pairs]
                    if not qs:
                        raise ValueError(f"round {r}: no diagnosed errors with a {rc.query} to retrieve for "
                                         f"({diag['status']}); see {diag['path']}")
                    if rc.method == "bm25":
                        if rc.context_rerank:
                            self.progress("[select] retrieval.context_rerank applies to dense retrieval only; "
                                          "bm25 retrieves by the skill alone")
                        if bm25 is None:
                            raise ValueError("retrieval.method=bm25 needs a text index; this one holds images")
                        s = sel.select_bm25(qs, budget, bm25, round=r, exclude_ids=taken)
                    elif self.context_index_dir is not None:
                        s = self._select_in_context(pairs, budget, vindex, r, taken)
                    else:
                        s = sel.select(qs, budget, vindex, round=r, method="dense", exclude_ids=taken,
                                       embed_fn=TextEmbedder(rc.embedder))
            sel.write_selection(s, out)
            self.metrics.selection(r, rc.method, s.summary())
            return {"path": str(out), **s.summary()}

        return self.run.stage(f"select_{r}", {"retrieval": rc.model_dump(mode="json"), "budget": budget},
                              inputs, work, lambda o: [o["path"]])

    def _select_in_context(self, pairs: list[tuple[str, str]], budget: int, vindex: Any, r: int,
                           taken: list[str]) -> Any:
        """Dense retrieval by skill, reranked by each error's question (``retrieval.context_rerank``)."""
        import numpy as np

        from mmtune.retrieval import select as sel
        from mmtune.retrieval.embed import TextEmbedder
        from mmtune.retrieval.embed_job import read_embeddings
        from mmtune.retrieval.rerank import ContextReranked

        embed = TextEmbedder(self.cfg.retrieval.embedder)
        skills = np.asarray(embed([q for q, _ in pairs]), dtype=np.float32)
        questions = np.asarray(embed([c for _, c in pairs]), dtype=np.float32)
        ids, vecs = read_embeddings(self.context_index_dir)
        searcher = ContextReranked(vindex, ids, vecs, depth=self.cfg.retrieval.context_depth)
        return sel.select(np.hstack([skills, questions]), budget, searcher, round=r, method="dense_context",
                          exclude_ids=taken, query_texts=[q for q, _ in pairs])

    def train_files(self) -> list[str]:
        """Where the selected ids live: the pool, or for the oracle the targets' val splits."""
        if self.cfg.retrieval.method == "oracle":
            return [p for ps in self.data["val"].values() for p in ps]
        return self.pool_files

    def train(self, r: int, ids: list[str], inputs: dict[str, str]) -> tuple[str, dict[str, Any]]:
        from mmtune.training.job import run_train_job

        cfg = self.cfg
        data = self.root / f"round_{r}" / "train_data.parquet"

        def work() -> dict[str, Any]:
            _materialise(self.train_files(), ids, data)
            o = run_train_job(cfg, [str(data)], student=self.student, name=f"round_{r}/train", progress=self.progress)
            return {"adapter": o.adapter_dir, "steps": o.steps, "samples": o.samples, "seconds": o.seconds,
                    "loss": o.metrics.get("loss"), "run_dir": o.run_dir}

        return self.run.stage(f"train_{r}", {"training": cfg.training.model_dump(mode="json"),
                                             "student": cfg.student.model_dump(mode="json")},
                              inputs, work, lambda o: [o["adapter"]] if o.get("adapter") else [])

    def evaluate(self, r: int, adapter: str | None, inputs: dict[str, str]) -> tuple[str, dict[str, Any]]:
        from dataclasses import asdict

        from mmtune.training.evaluate import evaluate_splits

        cfg = self.cfg
        out = self.root / f"round_{r}" / "eval"
        splits: dict[str, list[str]] = {f"{t}/test": ps for t, ps in self.data["test"].items()}
        if self.data.get("generic_eval") and cfg.eval.forgetting:
            splits["corpus-tasks"] = self.data["generic_eval"]  # forgetting check

        def work() -> dict[str, Any]:
            scores = evaluate_splits(cfg, self.student, splits, adapter_dir=adapter, out_dir=out,
                                     progress=self.progress, max_per_task=cfg.eval.max_items_per_task)
            return {"scores": [asdict(s) for s in scores], "path": str(out / "scores.json")}

        key = {"max_per_task": cfg.eval.max_items_per_task, "forgetting": cfg.eval.forgetting,
               "max_new_tokens": cfg.student.max_new_tokens}
        if adapter is None:  # the generic student's scores are the same for every run and arm
            work = self._shared("evaluation", {**key, "student": self.keys["student"], "splits": splits,
                                               "sig": _sig([p for ps in splits.values() for p in ps])}, out, work)
        return self.run.stage(f"evaluate_{r}", key, inputs, work, lambda o: [o["path"]])

    # ---------------------------------------------------------------- the loop
    def run_all(self) -> dict[str, Any]:
        t0 = time.time()
        self.prepare()
        self.annotate_and_index()
        _, ev0 = self.evaluate(0, None, {"student": self.keys["student"]})
        rounds = [{"round": 0, "scores": ev0["scores"]}]
        adapter, prev, taken, sel_keys = None, self.keys["student"], [], []
        for r in range(1, self.cfg.retrieval.rounds + 1):
            diag = None
            inputs = {"previous": prev, **{k: self.keys[k] for k in ("index", "context_index") if k in self.keys}}
            if self.needs_teacher():
                kdg, diag = self.diagnose(r, adapter, prev)
                inputs["diagnose"] = kdg
            ksel, sel = self.select(r, diag, taken, inputs)
            from mmtune.retrieval.select import read_selection

            taken = taken + [row["id"] for row in read_selection(sel["path"])]
            sel_keys.append(ksel)
            ktr, tr = self.train(r, taken, {"selections": config_hash(sel_keys), "student": self.keys["student"]})
            _, ev = self.evaluate(r, tr.get("adapter"), {"train": ktr})
            adapter, prev = tr.get("adapter"), ktr
            rounds.append({"round": r, "scores": ev["scores"], "selected": len(taken),
                           "wrong": diag["wrong"] if diag else None,
                           "skills": diag["skills"] if diag else {}, "train": tr})
        rc = self.cfg.retrieval
        summary = {"run_dir": str(self.root), "method": rc.method,
                   "context_rerank": rc.method == "dense" and rc.context_rerank, "rounds": rounds,
                   "seconds": round(time.time() - t0, 1)}
        (self.root / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        self.progress("\n" + summary_table(summary))
        return summary


def query_pairs(diagnosis: list[dict[str, Any]], query: str) -> list[tuple[str, str]]:
    """What dense/bm25 retrieve with, one per diagnosed error, as (query, question): the
    missing-skill phrase, or (the 'no skill analysis' ablation) the text of the step the
    teacher located; with the validation question it was diagnosed on (the context that
    ``retrieval.context_rerank`` ranks by). Interleaved
    (:func:`mmtune.retrieval.select.interleave`)."""
    from mmtune.retrieval.select import interleave

    out, keys = [], []
    for d in diagnosis:
        if d["status"] != "ok":
            continue
        question = d.get("question") or ""
        if query == "skill":
            if d["missing_skill"]:
                out.append((d["missing_skill"], question))
                keys.append(d["missing_skill"])
        else:
            k, steps = d.get("mistake_step"), d.get("student_steps") or []
            if k and 1 <= k <= len(steps) and steps[k - 1].strip():
                out.append((steps[k - 1], question))
                keys.append(str(d.get("task", "")))
    # Each missing skill (each target, for step texts) gets a share of the budget in
    # proportion to its errors, whatever order the diagnosis lists them in.
    return interleave(out, keys)


def queries(diagnosis: list[dict[str, Any]], query: str) -> list[str]:
    """The query texts of :func:`query_pairs`, without their questions."""
    return [q for q, _ in query_pairs(diagnosis, query)]


def summary_table(summary: dict[str, Any]) -> str:
    """Per-round accuracy on each split with its majority baseline; round 0 = generic student."""
    rounds = summary["rounds"]
    splits = [(s["split"], s["task"]) for s in rounds[0]["scores"]]
    head = f"{'split':<20} {'task':<20} {'majority':>8} " + " ".join(f"{'r' + str(r['round']):>7}" for r in rounds)
    method = summary["method"] + (" + context rerank" if summary.get("context_rerank") else "")
    lines = [f"accuracy per round ({method}; r0 = generic student)", head, "-" * len(head)]
    by = [{(s["split"], s["task"]): s for s in r["scores"]} for r in rounds]
    for key in splits:
        maj = by[0][key]["majority"]
        lines.append(f"{key[0]:<20} {key[1]:<20} {maj:>8.3f} "
                     + " ".join(f"{b[key]['accuracy']:>7.3f}" if key in b else f"{'-':>7}" for b in by))
    return "\n".join(lines)


def run_pipeline(cfg: RunConfig, *, resume: bool = False, progress: Progress = print) -> dict[str, Any]:
    """Run (or resume) the loop; Ray must be initialised by the caller."""
    return Pipeline(cfg, resume=resume, progress=progress).run_all()
