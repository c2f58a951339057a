"""Diagnosis on a local Ray: a student that makes errors, one that makes none, bad splits."""

import json

import pyarrow.parquet as pq
import pytest

from mmtune.config import RunConfig
from mmtune.diagnosis import (
    DIAGNOSIS_SCHEMA,
    NoErrors,
    analyse_all,
    diagnose,
    read_diagnosis,
    require_errors,
)
from mmtune.teacher import HFBackend, Teacher
from tests.teacher.test_backend_hf import TEXTS
from tests.tiny import make_overfit_student, make_tiny_llama

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("diag")
    student, data, _ = make_overfit_student(root)
    # The same pictures with other gold answers: the (overfit) student gets every one wrong.
    flipped = pq.read_table(data).to_pylist()
    swap = {"red": "blue", "blue": "green", "green": "yellow", "yellow": "red", "B": "A"}
    for r in flipped:
        r["answer"] = swap[r["answer"]]
    pq.write_table(pq.read_table(data).schema.empty_table().from_pylist(flipped, pq.read_table(data).schema),
                   root / "flipped.parquet")
    cfg = RunConfig.model_validate({"eval": {"batch_size": 8, "num_actors": 1}, "student": {"max_new_tokens": 16},
                                    "teacher": {"parse_retries": 1}})
    teacher = Teacher(HFBackend(make_tiny_llama(root / "teacher", TEXTS), max_new_tokens=6), cfg.teacher)
    return cfg, student, data, root / "flipped.parquet", teacher


def test_student_with_errors(ray_local, setup, tmp_path):
    cfg, student, _, flipped, teacher = setup
    msgs = []
    summary = diagnose(cfg, student, {"toy/val": [str(flipped)]}, teacher, tmp_path, round_=1, progress=msgs.append)
    rows = read_diagnosis(tmp_path / "diagnosis.parquet")
    assert pq.read_schema(tmp_path / "diagnosis.parquet").equals(DIAGNOSIS_SCHEMA)
    assert len(rows) == 5 and summary["wrong"] == 5 and not summary["no_errors"]
    for r in rows:
        assert r["round"] == 1
        assert r["student_steps"] and r["student_answer"] and r["student_answer"] != r["gold"].lower()
        assert 1 <= r["mistake_step"] <= len(r["student_steps"])
        assert len(r["switch_trace"]["p_gold"]) == len(r["student_steps"]) + 1
        assert r["status"] in ("ok", "unparsed")
        if r["status"] == "unparsed":
            assert r["missing_skill"] is None and r["reason"]
        assert json.loads(r["prompts"])["locate"] == "answer_switch.v1"
    assert sum(summary["status"].values()) == 5
    assert any("wrong of 5" in m for m in msgs)
    assert json.loads((tmp_path / "diagnosis.json").read_text())["wrong"] == 5


def test_student_without_errors(ray_local, setup, tmp_path):
    cfg, student, data, _, teacher = setup
    msgs = []
    summary = diagnose(cfg, student, {"toy/val": [str(data)]}, teacher, tmp_path, progress=msgs.append)
    assert summary["no_errors"] and summary["wrong"] == 0
    assert pq.read_table(tmp_path / "diagnosis.parquet").num_rows == 0
    assert any("no errors to diagnose" in m for m in msgs)
    with pytest.raises(NoErrors, match="no errors on 5 validation items"):
        require_errors(summary)


def test_empty_validation_split_is_refused(ray_local, setup, tmp_path):
    cfg, student, data, _, teacher = setup
    empty = tmp_path / "empty.parquet"
    pq.write_table(pq.read_table(data).slice(0, 0), empty)
    with pytest.raises(ValueError, match="has no rows"):
        diagnose(cfg, student, {"toy/val": [str(empty)]}, teacher, tmp_path / "out")


class FlakyTeacher:
    """A teacher whose first call fails (as a dying replica's would), then works."""

    def __init__(self, inner, failures):
        self.inner, self.failures = inner, failures

    def analyse(self, items, locate="switch", seed=0):
        if self.failures:
            self.failures -= 1
            raise ConnectionError("replica died")
        return self.inner.analyse(items, locate=locate, seed=seed)


def test_failed_teacher_calls_are_retried_then_recorded(setup):
    *_, teacher = setup
    items = [{"id": f"i{k}", "question": "q?", "steps": ["s."], "prediction": "a", "gold": "b", "options": None}
             for k in range(5)]
    got = analyse_all(FlakyTeacher(teacher, 1), items, chunk=2, retries=2, progress=lambda m: None)
    assert [a["id"] for a in got] == [it["id"] for it in items]
    assert all(a["status"] != "skipped" for a in got)
    got = analyse_all(FlakyTeacher(teacher, 99), items, chunk=5, retries=1, progress=lambda m: None)
    assert len(got) == 5 and {a["status"] for a in got} == {"skipped"}
    assert "replica died" in got[0]["reason"] and "2 attempts" in got[0]["reason"]


def test_diagnose_cli_local(ray_local, setup, tmp_path, capsys):
    """`mmtune diagnose` on the user's own files: a YAML config naming the val split."""
    from mmtune.cli import main

    _, student, data, flipped, teacher = setup
    conf = tmp_path / "run.yaml"
    conf.write_text(f"""
data:
  source: files
  corpus: {data}
  targets: [{{name: toy, val: {flipped}, test: {data}}}]
teacher: {{backend: hf, name_or_path: {teacher.backend.name_or_path}, max_new_tokens: 6, parse_retries: 0}}
student: {{max_new_tokens: 16}}
eval: {{batch_size: 8, num_actors: 1}}
""")
    assert main(["diagnose", "--config", str(conf), "--student", str(student), "--local",
                 "--out", str(tmp_path / "d")]) == 0
    printed = capsys.readouterr().out
    assert json.loads(printed[printed.rindex("\n{") + 1:])["wrong"] == 5
    rows = read_diagnosis(tmp_path / "d" / "diagnosis.parquet")
    assert len(rows) == 5 and {r["task"] for r in rows} == {"colour", "mc"}


def test_progress_lines_are_whole_and_throttled(setup, monkeypatch):
    """Chunks finish on several threads: each progress line is whole, counts only grow, the
    last says all are done, and a fast run does not print a line per chunk."""
    import importlib
    import re

    dmod = importlib.import_module("mmtune.diagnosis.diagnose")  # the package re-exports a function of that name

    *_, teacher = setup
    items = [{"id": f"i{k}", "question": "q?", "steps": ["s."], "prediction": "a", "gold": "b", "options": None}
             for k in range(9)]
    for every, most in ((3600.0, 1), (0.0, 9)):  # throttled: only the final line; unthrottled: one per chunk
        monkeypatch.setattr(dmod, "PROGRESS_EVERY_S", every)
        msgs = []
        got = analyse_all(teacher, items, chunk=1, concurrency=4, progress=msgs.append)
        assert len(got) == 9
        counts = [int(re.fullmatch(r"\[diagnose\] analysed (\d+)/9 wrong items \(\d+\.\ds\)", m).group(1))
                  for m in msgs]
        assert counts == sorted(counts) and counts[-1] == 9 and len(msgs) <= most
