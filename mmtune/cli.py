"""The ``mmtune`` command.

Every subcommand that takes ``--config`` also takes trailing ``a.b.c=value`` overrides;
the config is validated before any work starts.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict
from pathlib import Path

from mmtune.config import ConfigError, RunConfig, load_config


def _progress(msg: str) -> None:
    print(msg, flush=True)


def _cfg(args: argparse.Namespace) -> RunConfig:
    cfg = load_config(args.config, args.overrides)
    logging.basicConfig(level=cfg.run.log_level, format="%(levelname)s %(name)s: %(message)s")
    # faiss logs each CPU-feature import it tries at INFO, bm25s at DEBUG: noise, not news
    for name in ("faiss", "faiss.loader", "bm25s"):
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))
    return cfg


# --------------------------------------------------------------------------- config
def cmd_config_show(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    if args.json:
        print(json.dumps(cfg.to_dict(), indent=2))
    else:
        print(cfg.to_yaml(), end="")
    return 0


# --------------------------------------------------------------------------- data
def cmd_data_import(args: argparse.Namespace) -> int:
    from mmtune.data.importer import import_dataset

    report = import_dataset(
        args.src, args.format, args.out, image_root=args.image_root,
        max_text_chars=args.max_text_chars, audio_sampling_rate=args.audio_rate, shard_rows=args.shard_rows,
        progress=_progress,
        overwrite=args.overwrite)
    print(report.summary())
    return 0 if report.written else 1


def cmd_data_skillworld(args: argparse.Namespace) -> int:
    from mmtune.data.skillworld import generate_skillworld

    cfg = _cfg(args)
    if args.modality:  # the flag wins over the config's data.skillworld.modality
        cfg.data.skillworld.modality = args.modality
    t0 = time.time()
    manifest = generate_skillworld(cfg.data.skillworld, Path(args.out), llava_json=args.llava_json,
                                   progress=_progress)
    counts = manifest.get("counts", {})
    print(f"SkillWorld written to {args.out} in {time.time() - t0:.1f}s")
    for split, n in sorted(counts.items()):
        print(f"  {split:<40} {n:>7}")
    return 0


# --------------------------------------------------------------------------- student
def cmd_student_pretrain(args: argparse.Namespace) -> int:
    from mmtune.training.pretrain import ensure_generic_student

    cfg = _cfg(args)
    if cfg.student.name_or_path not in ("tiny-llava", "tiny-qwen2-audio"):
        raise ConfigError("student pretrain builds the 'tiny-llava' or 'tiny-qwen2-audio' preset; "
                          f"student.name_or_path is {cfg.student.name_or_path!r}, which is already pre-trained")
    out = ensure_generic_student(cfg, progress=_progress, force=args.force)
    print(out)
    return 0


# --------------------------------------------------------------------------- evaluate
def _eval_splits(cfg: RunConfig, which: str) -> dict[str, list[str]]:
    from mmtune.data.catalog import data_paths

    paths = data_paths(cfg, _progress)
    splits: dict[str, list[str]] = {}
    if which in ("test", "all"):
        splits.update({f"{t}/test": [str(p) for p in ps] for t, ps in paths.target_test.items()})
    if which in ("val", "all"):
        splits.update({f"{t}/val": [str(p) for p in ps] for t, ps in paths.target_val.items()})
    if which in ("generic", "all", "test") and paths.generic_eval:
        splits["corpus-tasks"] = [str(p) for p in paths.generic_eval]
    if not splits:
        raise ConfigError(f"no data to evaluate for --split {which}; configure data.targets")
    return splits


def cmd_evaluate(args: argparse.Namespace) -> int:
    from mmtune.runtime import init_ray
    from mmtune.training.evaluate import evaluate_splits, format_table
    from mmtune.training.pretrain import resolve_student

    cfg = _cfg(args)
    splits = _eval_splits(cfg, args.split)
    student = args.student or resolve_student(cfg, progress=_progress)
    init_ray(cfg.ray)
    out = Path(cfg.run.out_dir) / cfg.run.name / "eval" / args.split
    scores = evaluate_splits(cfg, student, splits, adapter_dir=args.adapter, out_dir=out,
                             progress=_progress)
    print(format_table(scores, title=f"student: {student}"))
    print(f"predictions and scores: {out}")
    return 0


# --------------------------------------------------------------------------- train
def cmd_train(args: argparse.Namespace) -> int:
    from mmtune.runtime import init_ray
    from mmtune.training.job import run_train_job, training_paths

    cfg = _cfg(args)
    paths = training_paths(cfg, args.data, progress=_progress)
    tasks = [t for t in (args.tasks or "").split(",") if t]
    init_ray(cfg.ray)
    outcome = run_train_job(cfg, paths, tasks=tasks or None, student=args.student, progress=_progress)
    if args.evaluate:
        from mmtune.training.evaluate import evaluate_splits, format_table
        from mmtune.training.pretrain import resolve_student

        if outcome.adapter_dir is None:
            raise ConfigError("--evaluate needs LoRA adapters (student.lora.enabled=true)")
        student = args.student or resolve_student(cfg, progress=_progress)
        out = Path(outcome.run_dir) / "eval"
        scores = evaluate_splits(cfg, student, _eval_splits(cfg, "test"), adapter_dir=outcome.adapter_dir,
                                 out_dir=out, progress=_progress)
        print(format_table(scores, title=f"tuned student: {outcome.adapter_dir}"))
    print(json.dumps({"run_dir": outcome.run_dir, "adapter": outcome.adapter_dir, "steps": outcome.steps,
                      "seconds": outcome.seconds, "final_loss": outcome.metrics.get("loss")}))
    return 0


# --------------------------------------------------------------------------- index
def _index_dir(cfg: RunConfig, out: str | None) -> Path:
    return Path(out) if out else Path(cfg.run.out_dir) / cfg.run.name / "index"


def cmd_index(args: argparse.Namespace) -> int:
    from mmtune.retrieval.corpus_index import build_corpus_index
    from mmtune.runtime import init_ray
    from mmtune.training.job import training_paths

    cfg = _cfg(args)
    files = training_paths(cfg, args.data, progress=_progress)
    init_ray(cfg.ray)
    state = build_corpus_index(cfg, files, _index_dir(cfg, args.out), rebuild=args.rebuild, progress=_progress)
    for q in args.query or []:
        _print_hits(cfg, _index_dir(cfg, args.out), q, args.k)
    print(json.dumps({k: state[k] for k in ("count", "dim", "index_type", "device", "vector_dir", "bm25_dir")}))
    return 0


def _print_hits(cfg: RunConfig, index_dir: Path, query: str, k: int) -> None:
    from mmtune.retrieval.corpus_index import load_corpus_index
    from mmtune.retrieval.embed import TextEmbedder

    vindex, bm25 = load_corpus_index(index_dir)
    if cfg.retrieval.text == "image":
        raise ConfigError("--query searches text; this index holds image embeddings")
    hits = vindex.search(TextEmbedder(cfg.retrieval.embedder)([query]), k)
    print(f"query: {query!r}")
    for rank, (sid, score) in enumerate(zip(hits.ids[0], hits.scores[0]), 1):
        print(f"  dense {rank:>2}. {sid}  {float(score):.3f}")
    if bm25 is not None:
        bh = bm25.search([query], k)
        for rank, (sid, score) in enumerate(zip(bh.ids[0], bh.scores[0]), 1):
            print(f"  bm25  {rank:>2}. {sid}  {float(score):.3f}")


# --------------------------------------------------------------------------- teacher
def cmd_teacher_train(args: argparse.Namespace) -> int:
    from mmtune.teacher.builtin import ensure_builtin_teacher

    cfg = _cfg(args)
    if cfg.teacher.backend != "builtin":
        raise ConfigError(f"`mmtune teacher train` trains the built-in teacher; teacher.backend is "
                          f"{cfg.teacher.backend!r} (set teacher.backend=builtin, or serve your model as is)")
    print(ensure_builtin_teacher(cfg, progress=_progress, force=args.force))
    return 0


def cmd_teacher_serve(args: argparse.Namespace) -> int:
    from mmtune.runtime import init_ray
    from mmtune.teacher.builtin import resolve_teacher
    from mmtune.teacher.serve import start_teacher

    cfg = _cfg(args)
    builtin_dir = resolve_teacher(cfg, progress=_progress)
    init_ray(cfg.ray)
    start_teacher(cfg, builtin_dir=builtin_dir, blocking=True)
    return 0


def _local_or_served_teacher(cfg: RunConfig, local: bool):
    """(teacher, concurrency): an in-process Teacher, or a factory of the Serve app's client
    (started when the student's errors are in, deleted after the analysis)."""
    import contextlib

    from mmtune.teacher.builtin import resolve_teacher

    builtin_dir = resolve_teacher(cfg, progress=_progress)
    if local:
        from mmtune.teacher import Teacher, make_backend

        return Teacher(make_backend(cfg.teacher, builtin_dir), cfg.teacher), 1

    @contextlib.contextmanager
    def served():
        from mmtune.teacher.serve import ServedTeacher, start_teacher, stop_teacher

        handle = start_teacher(cfg, builtin_dir=builtin_dir, blocking=False, progress=_progress)
        try:
            yield ServedTeacher(handle)
        finally:
            stop_teacher(cfg)

    return served, 4


def cmd_diagnose(args: argparse.Namespace) -> int:
    from mmtune.diagnosis import diagnose
    from mmtune.runtime import init_ray
    from mmtune.training.pretrain import resolve_student

    cfg = _cfg(args)
    student = args.student or resolve_student(cfg, progress=_progress)
    splits = _eval_splits(cfg, "val")
    if not splits:
        raise ConfigError("no validation splits: configure data.targets (or use data.source=skillworld)")
    out = Path(args.out) if args.out else Path(cfg.run.out_dir) / cfg.run.name / "diagnosis"
    init_ray(cfg.ray)
    teacher, concurrency = _local_or_served_teacher(cfg, args.local)
    summary = diagnose(cfg, student, splits, teacher, out, adapter_dir=args.adapter, locate=args.locate,
                       concurrency=concurrency, progress=_progress)
    print(json.dumps({k: summary[k] for k in ("path", "items", "wrong", "status", "skills")}, indent=2))
    return 0


def cmd_annotate(args: argparse.Namespace) -> int:
    from mmtune.runtime import init_ray
    from mmtune.teacher.annotate_job import annotate_corpus
    from mmtune.teacher.builtin import resolve_teacher
    from mmtune.training.job import training_paths

    cfg = _cfg(args)
    files = training_paths(cfg, args.data, progress=_progress)
    builtin_dir = resolve_teacher(cfg, progress=_progress)
    out = Path(args.out) if args.out else Path(cfg.run.out_dir) / cfg.run.name / "annotated"
    init_ray(cfg.ray)
    man = annotate_corpus(cfg, files, out, builtin_dir=builtin_dir, rebuild=args.rebuild, progress=_progress)
    print(json.dumps({"out": str(out), **{k: man[k] for k in ("rows", "unparsed", "seconds")}}))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from mmtune.pipeline import run_pipeline
    from mmtune.runtime import init_ray

    cfg = _cfg(args)
    init_ray(cfg.ray)
    summary = run_pipeline(cfg, resume=args.resume, progress=_progress)
    print(f"\nrun finished in {summary['seconds']:.0f}s; run directory: {summary['run_dir']}")
    print(f"report: {_write_report(Path(summary['run_dir'])).html}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from mmtune.compare import run_compare
    from mmtune.runtime import init_ray

    cfg = _cfg(args)
    init_ray(cfg.ray)
    result = run_compare(cfg, resume=args.resume, progress=_progress)
    root = Path(cfg.run.out_dir).resolve() / cfg.run.name
    print(f"\ncomparison finished in {result['seconds']:.0f}s: {root / 'compare.md'}")
    if not args.no_report:
        paths = _write_report(root)
        print(f"report: {paths.html}")
    return 0


def _write_report(run_dir: Path | str, out: str | None = None):
    from mmtune.report import write_report

    return write_report(run_dir, out, progress=_progress)


def cmd_report(args: argparse.Namespace) -> int:
    paths = _write_report(args.run_dir, args.out)
    print(f"report: {paths.html}\nmarkdown: {paths.markdown}")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    import yaml

    from mmtune.data.catalog import data_paths
    from mmtune.runtime import init_ray
    from mmtune.search import run_search
    from mmtune.training.job import training_paths

    cfg = _cfg(args)
    space = yaml.safe_load(Path(args.space).read_text()) if args.space else None
    if space is not None and not isinstance(space, dict):
        raise ConfigError(f"--space {args.space}: expected a mapping of dotted paths, got {type(space).__name__}")
    train = training_paths(cfg, args.data, progress=_progress)
    val = {name: [str(p) for p in paths] for name, paths in data_paths(cfg, _progress).target_val.items()}
    init_ray(cfg.ray)
    out = args.out or Path(cfg.run.out_dir) / cfg.run.name / "search"
    result = run_search(cfg, train, val, student=args.student, out_dir=out, space=space, progress=_progress)
    print(json.dumps(asdict(result), default=str))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The embedded default end to end: the whole loop on SkillWorld, from a fresh run
    directory (the caches of data, student, teacher, annotation and index are reused)."""
    import shutil

    from mmtune.pipeline import run_pipeline
    from mmtune.runtime import init_ray

    cfg = _cfg(args)
    run_dir = Path(cfg.run.out_dir) / cfg.run.name
    if run_dir.exists():
        _progress(f"[demo] replacing the previous demo run at {run_dir} (caches in {cfg.run.cache_dir} are kept)")
        shutil.rmtree(run_dir)
    init_ray(cfg.ray)
    summary = run_pipeline(cfg, progress=_progress)
    report = _write_report(Path(summary["run_dir"]))
    print(f"\ndemo finished in {summary['seconds']:.0f}s; run directory: {summary['run_dir']} "
          f"(summary.json, manifest.json, round_*/)\nreport: {report.html}")
    return 0


# --------------------------------------------------------------------------- parser
def _with_config(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--config", required=required, help="run config YAML, e.g. configs/demo.yaml")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. training.lr=1e-4")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="mmtune", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)

    cfg_p = sub.add_parser("config", help="inspect configuration").add_subparsers(dest="sub", required=True)
    show = cfg_p.add_parser("show", help="print the resolved config")
    show.add_argument("config", nargs="?", help="YAML file (defaults when omitted)")
    show.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_config_show)

    data_p = sub.add_parser("data", help="import datasets, generate SkillWorld").add_subparsers(dest="sub",
                                                                                                 required=True)
    imp = data_p.add_parser("import", help="convert LLaVA/ShareGPT/JSONL/parquet to Sample parquet shards")
    imp.add_argument("src", help="file, directory or glob")
    imp.add_argument("--format", default="auto", choices=["auto", "llava", "sharegpt", "jsonl", "parquet"])
    imp.add_argument("--image-root", default=None, help="directory relative image/audio paths resolve against")
    imp.add_argument("--out", required=True, help="output directory for parquet shards")
    imp.add_argument("--max-text-chars", type=int, default=8192)
    imp.add_argument("--audio-rate", type=int, default=None, metavar="HZ",
                     help="quarantine audio clips at another sampling rate (16000 for Qwen2-Audio / Whisper)")
    imp.add_argument("--shard-rows", type=int, default=4096)
    imp.add_argument("--overwrite", action="store_true", help="replace shards already in --out")
    imp.set_defaults(func=cmd_data_import)
    sw = data_p.add_parser("skillworld", help="generate the SkillWorld benchmark as parquet")
    sw.add_argument("--out", required=True)
    sw.add_argument("--llava-json", action="store_true",
                    help="also export LLaVA JSON + PNG files (audio: LLaMA-Factory JSON + WAV files)")
    sw.add_argument("--modality", choices=["vision", "audio"], default=None,
                    help="task family (default: the config's data.skillworld.modality, vision)")
    _with_config(sw, required=False)
    sw.set_defaults(func=cmd_data_skillworld)

    st_p = sub.add_parser("student", help="the student model").add_subparsers(dest="sub", required=True)
    pre = st_p.add_parser("pretrain", help="pre-train the generic tiny-llava / tiny-qwen2-audio student (cached)")
    pre.add_argument("--force", action="store_true", help="retrain even when cached")
    _with_config(pre)
    pre.set_defaults(func=cmd_student_pretrain)

    ev = sub.add_parser("evaluate", help="evaluate a student on the targets (Ray Data batch inference)")
    ev.add_argument("--split", default="test", choices=["test", "val", "generic", "all"])
    ev.add_argument("--student", default=None, help="student directory or hub id (default: from config)")
    ev.add_argument("--adapter", default=None, help="PEFT adapter directory to apply")
    _with_config(ev)
    ev.set_defaults(func=cmd_evaluate)

    tr = sub.add_parser("train", help="coordinated tuning of the student on Ray Train (LoRA + encoder)")
    tr.add_argument("--data", action="append", metavar="PATH",
                    help="Sample parquet file/dir/glob; repeat for several (default: the configured corpus)")
    tr.add_argument("--tasks", help="comma-separated task names to keep (the data's `task` column)")
    tr.add_argument("--student", help="student directory or hub id (default: from config)")
    tr.add_argument("--evaluate", action="store_true", help="evaluate the tuned student on the test splits")
    _with_config(tr)
    tr.set_defaults(func=cmd_train)

    ix = sub.add_parser("index", help="embed the corpus with Ray Data and build its FAISS + BM25 index")
    ix.add_argument("--data", action="append", metavar="PATH",
                    help="Sample parquet file/dir/glob; repeat for several (default: the configured corpus)")
    ix.add_argument("--out", help="index directory (default: runs/<run.name>/index)")
    ix.add_argument("--rebuild", action="store_true", help="discard existing embeddings and start over")
    ix.add_argument("--query", action="append", help="print the top hits for this text (repeatable)")
    ix.add_argument("-k", type=int, default=5, help="hits per --query")
    _with_config(ix)
    ix.set_defaults(func=cmd_index)

    te_p = sub.add_parser("teacher", help="the teacher model").add_subparsers(dest="sub", required=True)
    tt = te_p.add_parser("train", help="train the built-in teacher on corpus-task text (cached)")
    tt.add_argument("--force", action="store_true", help="retrain even when cached")
    _with_config(tt)
    tt.set_defaults(func=cmd_teacher_train)
    ts = te_p.add_parser("serve", help="serve the teacher with Ray Serve (HTTP + handle), until interrupted")
    _with_config(ts)
    ts.set_defaults(func=cmd_teacher_serve)

    dg = sub.add_parser("diagnose", help="find the student's mistake steps and missing skills on the val splits")
    dg.add_argument("--student", help="student directory or hub id (default: from config)")
    dg.add_argument("--adapter", help="PEFT adapter directory to apply")
    dg.add_argument("--out", help="output directory (default: runs/<run.name>/diagnosis)")
    dg.add_argument("--locate", default="switch", choices=["switch", "which_step", "random"],
                    help="how the mistake step is found (the paper's answer switch, or an ablation)")
    dg.add_argument("--local", action="store_true", help="run the teacher in-process instead of on Ray Serve")
    _with_config(dg)
    dg.set_defaults(func=cmd_diagnose)

    an = sub.add_parser("annotate", help="the teacher writes each corpus sample's skills (Ray Data actor pool)")
    an.add_argument("--data", action="append", metavar="PATH",
                    help="Sample parquet file/dir/glob; repeat for several (default: the configured corpus)")
    an.add_argument("--out", help="output directory (default: runs/<run.name>/annotated)")
    an.add_argument("--rebuild", action="store_true", help="discard an existing annotation and redo it")
    _with_config(an)
    an.set_defaults(func=cmd_annotate)

    rn = sub.add_parser("run", help="the error-driven loop: annotate, index, then rounds of diagnose, select, "
                                    "train, evaluate")
    rn.add_argument("--resume", action="store_true", help="continue runs/<run.name>, skipping finished stages")
    _with_config(rn)
    rn.set_defaults(func=cmd_run)

    cp = sub.add_parser("compare", help="every arm (ours, baselines, ablations, full, oracle) × budgets × seeds "
                                        "under the same student, steps and test set; writes compare.md/json")
    cp.add_argument("--resume", action="store_true", help="skip the cells already finished")
    cp.add_argument("--no-report", action="store_true", help="do not write the HTML report at the end")
    _with_config(cp)
    cp.set_defaults(func=cmd_compare)

    rp = sub.add_parser("report", help="an HTML page + markdown summary of a run or a comparison directory")
    rp.add_argument("run_dir", help="runs/<name> of mmtune run/demo, or of mmtune compare")
    rp.add_argument("--out", help="output directory (default: the run directory)")
    rp.set_defaults(func=cmd_report)

    se = sub.add_parser("search", help="Ray Tune (ASHA) over CoMMIT's constants, scored on the target val splits")
    se.add_argument("--data", action="append", metavar="PATH",
                    help="training parquet: file, directory or glob (repeatable; default: the configured corpus)")
    se.add_argument("--student", help="starting student directory or hub id (default: from config)")
    se.add_argument("--space", help="YAML mapping {dotted.path: {loguniform|uniform|choice: [...]}} "
                                    "(default: search.space, else the built-in space)")
    se.add_argument("--out", help="output directory (default: runs/<run.name>/search)")
    _with_config(se, required=False)
    se.set_defaults(func=cmd_search)

    demo = sub.add_parser("demo", help="run the embedded default end to end")
    _with_config(demo)
    demo.set_defaults(func=cmd_demo)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, FileExistsError, NotADirectoryError, ValueError) as e:
        # Problems with the user's inputs: one clear line, not a traceback.
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
