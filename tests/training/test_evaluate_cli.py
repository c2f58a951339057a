"""`mmtune evaluate` end to end on a tiny pre-trained student (in-process, shared Ray)."""

import json

import pytest

from mmtune.cli import main
from tests.training.test_pretrain import TINY


@pytest.mark.ray
def test_evaluate_command_writes_scores_per_split(ray_local, tmp_path, capsys):
    overrides = [*TINY, f"run.cache_dir={tmp_path / 'cache'}", f"run.out_dir={tmp_path / 'runs'}",
                 "run.name=t", "eval.batch_size=16", "student.max_new_tokens=24"]
    assert main(["student", "pretrain", "--config", "configs/demo.yaml", *overrides]) == 0
    assert main(["evaluate", "--config", "configs/demo.yaml", "--split", "val", *overrides]) == 0
    out = capsys.readouterr().out
    assert "parity_choice/val" in out
    scores = json.loads((tmp_path / "runs" / "t" / "eval" / "val" / "scores.json").read_text())
    assert {s["split"] for s in scores} == {f"{t}/val" for t in
                                           ("color_check", "count_grid", "parity_choice", "smaller_digit")}
    assert all(s["n"] == 10 for s in scores)
    assert (tmp_path / "runs" / "t" / "eval" / "val" / "predictions_parity_choice__val.parquet").is_file()
