"""The loop end to end on a local Ray, at seconds' scale: stages, manifest, resume."""

import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from mmtune.config import load_config
from mmtune.pipeline import run_pipeline
from tests.training.test_pretrain import TINY

pytestmark = [pytest.mark.ray, pytest.mark.slow]

LOOP = [*TINY, "student.pretrain.steps=10", "student.max_new_tokens=24", "eval.batch_size=64", "eval.num_actors=1",
        "training.batch_size=4", "training.max_steps=3", "training.num_workers=1", "training.cpus_per_worker=0.5",
        "training.torch_threads=1", "training.coordination.interval=2", "training.coordination.probe_size=2",
        "retrieval.budget=12", "retrieval.rounds=2", "eval.max_items_per_task=4"]


@pytest.fixture(scope="module")
def random_run(ray_local, tmp_path_factory):
    # Relative run/cache paths, as in configs/demo.yaml: Ray Train workers run in another
    # working directory, so every path handed to them must have been made absolute.
    root = tmp_path_factory.mktemp("runs")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        cfg = load_config(None, [*LOOP, "retrieval.method=random", "run.out_dir=runs", "run.cache_dir=runs/_cache",
                                 "run.name=loop"])
        logs: list[str] = []
        summary = run_pipeline(cfg, progress=logs.append)
        yield cfg, summary, logs
    finally:
        os.chdir(cwd)


def test_loop_writes_every_stage(random_run):
    _, summary, logs = random_run
    root = summary["run_dir"]
    man = json.loads(Path(root, "manifest.json").read_text())
    want = ["data", "student", "evaluate_0", "select_1", "train_1", "evaluate_1", "select_2",
            "train_2", "evaluate_2"]
    assert [s for s in man["stages"]] == want
    assert all(man["stages"][s]["state"] == "done" and man["stages"][s]["key"] for s in want)
    sel1 = pq.read_table(f"{root}/round_1/selection.parquet").to_pylist()
    sel2 = pq.read_table(f"{root}/round_2/selection.parquet").to_pylist()
    assert len(sel1) == 6 and len(sel2) == 6  # budget 12 over 2 rounds
    assert not {r["id"] for r in sel1} & {r["id"] for r in sel2}  # a round never re-selects
    assert pq.read_table(f"{root}/round_2/train_data.parquet").num_rows == 12  # rounds accumulate
    assert [r["round"] for r in summary["rounds"]] == [0, 1, 2]
    tasks = {s["task"] for s in summary["rounds"][0]["scores"]}
    assert {"color_check", "count_grid"} <= tasks
    assert any("accuracy per round" in m for m in logs)


def test_resume_skips_finished_stages_and_redoes_interrupted_ones(random_run):
    cfg, summary, _ = random_run
    root = summary["run_dir"]
    with pytest.raises(FileExistsError, match="--resume"):
        run_pipeline(cfg, progress=lambda m: None)
    man = json.loads(Path(root, "manifest.json").read_text())
    man["stages"]["evaluate_2"]["state"] = "running"  # as a driver killed mid-stage leaves it
    Path(root, "manifest.json").write_text(json.dumps(man))
    logs: list[str] = []
    again = run_pipeline(cfg, resume=True, progress=logs.append)
    skipped = [m for m in logs if "unchanged, skipped" in m]
    assert len(skipped) == 8 and any(m == "[run] evaluate_2: running" for m in logs)
    assert again["rounds"][2]["scores"] == summary["rounds"][2]["scores"]  # deterministic


def test_compare_end_to_end(random_run):
    """One arm (the oracle) × 1 seed at a tiny budget, on the loop test's cached data and
    student. The random arm is the loop fixture itself; equal steps across arms and the
    aggregate are unit-tested in tests/test_compare.py (one cell less saves ~1 min of CI)."""
    import pyarrow.parquet as pq

    from mmtune.compare import run_compare

    cache = Path(random_run[1]["run_dir"]).parent / "_cache"
    out = cache.parent.parent / "cmp-runs"
    cfg = load_config(None, [*LOOP, f"run.cache_dir={cache}", f"run.out_dir={out}", "run.name=cmp",
                             "compare.arms=[oracle]", "compare.budgets=[8]", "compare.seeds=[0]",
                             "compare.epochs=1", "compare.rounds=1"])
    logs: list[str] = []
    result = run_compare(cfg, progress=logs.append)
    assert [(c["arm"], c["budget"], c["seed"], c["steps"]) for c in result["cells"]] == [
        ("oracle", 8, 0, 2)]
    saved = json.loads((out / "cmp" / "compare.json").read_text())
    assert saved["cells"] == result["cells"] and saved["baseline"]["scores"]
    for c in result["cells"]:
        targets = [s for s in c["scores"] if s["split"] != "corpus-tasks"]
        assert targets and all(s["n"] == 4 for s in targets)  # eval.max_items_per_task
        assert any(s["split"] == "corpus-tasks" for s in c["scores"])
    oracle_train = out / "cmp" / "oracle-b8-s0" / "round_1" / "train_data.parquet"
    ids = pq.read_table(oracle_train, columns=["id"]).column("id").to_pylist()
    assert len(ids) == 8 and all("-val-" in i for i in ids)  # the targets' val samples
    assert any("evaluation: reusing" in m for m in logs)  # the generic student was scored once, by the loop
    assert "| oracle (target val) |" in (out / "cmp" / "compare.md").read_text()
    with pytest.raises(FileExistsError, match="--resume"):
        run_compare(cfg, progress=logs.append)
    again = run_compare(cfg, resume=True, progress=logs.append)
    assert [c["scores"] for c in again["cells"]] == [c["scores"] for c in result["cells"]]


def test_annotation_key_ignores_diagnosis_settings_and_follows_the_model(tmp_path):
    """Annotating a real corpus costs hours of a 72B teacher: a δ sweep or a serving change
    must find the same annotation; another model, prompt or corpus file must not."""
    from mmtune.pipeline import annotation_key

    corpus = tmp_path / "part-0.parquet"
    corpus.write_bytes(b"x" * 10)

    def key(*overrides, tdir="/c/teachers/builtin-aaa"):
        return annotation_key(load_config(None, list(overrides)), [str(corpus)], tdir)

    base = key()
    for same in (["teacher.delta=0.3"], ["teacher.switch_patience=3"], ["teacher.hint_probability=0.7"],
                 ["teacher.score_candidates=text"], ["teacher.batch_size=64"], ["teacher.port=9001"],
                 ["teacher.locate=random"]):
        assert key(*same) == base, same
    for other in (["teacher.prompt_version=v2"], ["teacher.max_new_tokens=64"],
                  ["teacher.backend=hf", "teacher.name_or_path=Qwen/Qwen2.5-72B-Instruct"]):
        assert key(*other) != base, other
    assert key(tdir="/c/teachers/builtin-bbb") != base  # another built-in teacher model
    corpus.write_bytes(b"y" * 11)
    assert key() != base  # the corpus changed


def test_the_student_leaves_the_teachers_core_when_both_train_at_once():
    from mmtune.pipeline import student_beside_teacher
    from mmtune.training.pretrain import student_key

    demo = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"  # the module's fixture may chdir
    cfg = load_config(demo, [])
    assert cfg.student.pretrain.threads is None
    two, many = student_beside_teacher(cfg, cpus=2), student_beside_teacher(cfg, cpus=16)
    assert (two.student.pretrain.threads, many.student.pretrain.threads) == (1, 15)
    assert cfg.student.pretrain.threads is None  # the run's own config is not changed
    assert student_key(two) == student_key(cfg)  # the same cached student
    mine = load_config(demo, ["student.pretrain.threads=3"])
    assert student_beside_teacher(mine, cpus=2).student.pretrain.threads == 3  # the user's choice stays


def test_summary_table_names_the_method_and_the_rerank():
    from mmtune.pipeline import summary_table

    scores = [{"split": "a/test", "task": "a", "accuracy": 0.5, "majority": 0.25}]
    rounds = [{"round": 0, "scores": scores}, {"round": 1, "scores": [{**scores[0], "accuracy": 0.75}]}]
    table = summary_table({"method": "dense", "context_rerank": True, "rounds": rounds})
    assert table.splitlines()[0] == "accuracy per round (dense + context rerank; r0 = generic student)"
    assert table.splitlines()[-1].split() == ["a/test", "a", "0.250", "0.500", "0.750"]
    assert "(random;" in summary_table({"method": "random", "rounds": rounds})  # older summaries lack the key
