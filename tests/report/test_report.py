"""The report: both kinds of directory, escaping, self-containment and missing pieces."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from mmtune.report import ReportPaths, write_report
from mmtune.report.collect import collect
from tests.report.fixtures import EVIL, build_compare_dir, build_run_dir

DPI = 50  # fast; the default is 200


def _report(src, out=None, **kw) -> tuple[ReportPaths, str, str, list[str]]:
    lines: list[str] = []
    paths = write_report(src, out, progress=lines.append, dpi=DPI, **kw)
    return paths, paths.html.read_text(), paths.markdown.read_text(), lines


def _self_contained(html: str) -> None:
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "http://" not in html and "https://" not in html
    assert "<script" not in html.lower()
    assert "<link" not in html.lower()


def test_run_report(tmp_path):
    run = build_run_dir(tmp_path / "run")
    paths, html, md, lines = _report(run)
    assert paths.html == run / "report.html" and paths.markdown == run / "report.md"
    assert len(paths.figures) == 4 and all(p.is_file() and p.read_bytes()[:4] == b"\x89PNG" for p in paths.figures)
    assert len(re.findall(r'src="data:image/png;base64,[A-Za-z0-9+/=]+"', html)) == 4
    _self_contained(html)
    # the tables' numbers: accuracy per round (scores(r) = 0.25 + 0.05 r + 0.1 i), stage times, rounds
    for x in ("0.250", "0.350", "0.300", "0.400", "0.450", "0.600", "0.580"):
        assert x in html and x in md
    assert "round 0 (generic student)" in html and "majority answer" in html
    assert "evaluate_0" in html and "12.5 s" in html and "cached (built in 61.5 s)" in html
    assert "9 ok, 1 unparsed" in html
    # diagnosis content is escaped: the model output never becomes markup
    assert EVIL not in html and EVIL not in md
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html
    assert "&lt;b&gt;1&lt;/b&gt;" in html and "<b>1</b>" not in md
    assert html.count('class="mistake"') == 8
    # markdown: the same table and links to the PNGs next to it
    assert re.search(r"^\| round 0 \(generic student\) \| 0\.250 \| 0\.350 \|", md, re.MULTILINE)
    assert "|---|---:|" in md
    for p in paths.figures:
        assert f"](report_files/{p.name})" in md
    assert "Notes" not in md  # nothing missing
    assert lines[-1].startswith("[report] html:") and len(lines) == 7


def test_compare_report(tmp_path):
    root = build_compare_dir(tmp_path / "cmp")
    out = tmp_path / "out"
    paths, html, md, _ = _report(root, out)
    assert paths.html.parent == out and (out / "report_files").is_dir()
    _self_contained(html)
    # the accuracy-vs-budget and forgetting figures, then the detailed dense run's four
    assert len(paths.figures) == 6
    assert html.count("data:image/png;base64,") == 6
    data = json.loads((root / "compare.json").read_text())
    row = next(r for r in data["table"] if r["arm"] == "bm25" and r["budget"] == 300 and r["task"] == "count_grid")
    cell = f"{row['mean']:.3f} ± {row['sd']:.3f}"
    assert cell in html and cell in md
    # the headline: arms × budgets of compare.json's "mean" rows (never shown as a task column)
    mean = next(r for r in data["table"] if r["arm"] == "dense" and r["budget"] == 300 and r["task"] == "mean")
    assert f"{mean['mean']:.3f} ± {mean['sd']:.3f}" in md
    assert "| arm | 100 (2.0%) | 300 (6.0%) | 1,000 (20.0%) |" in md
    assert "<th>mean</th>" not in html and "| mean |" not in md
    f = next(r for r in data["forgetting"] if r["arm"] == "random" and r["budget"] == 1000)
    assert f"{f['mean']:.3f} ± {f['sd']:.3f}" in html
    # the full corpus is one level at its own budget, repeated under every budget
    full = next(r for r in data["table"] if r["arm"] == "full" and r["task"] == "mean")
    assert re.search(r"^\| full corpus \(5,000\) \|" + r" [*]*{:.3f} ± {:.3f}[*]* \|".format(full["mean"], full["sd"]) * 3,
                     md, re.MULTILINE)
    # the best arm per budget is bold (ours), the oracle never is
    assert re.search(r"^\| ours \(dense\) \| \*\*[0-9.]+ ± [0-9.]+\*\* \|", md, re.MULTILINE)
    assert not re.search(r"^\| oracle[^\n]*\*\*", md, re.MULTILINE)
    assert "generic student" in html and "majority answer" in html
    assert "One run in detail: ours (dense), budget 1,000, seed 0" in html
    assert "25 of 26 cells have no run directory" in html
    assert "&lt;script&gt;" in html and EVIL not in html


def test_missing_pieces_become_notes(tmp_path):
    run = build_run_dir(tmp_path / "run")
    (run / "summary.json").unlink()
    (run / "round_1" / "diagnosis" / "diagnosis.parquet").unlink()
    (run / "round_2" / "train_data.parquet").unlink()
    (run / "round_2" / "selection.parquet").unlink()
    shutil.rmtree(run / "round_2" / "train")
    (run / "round_2" / "eval" / "scores.json").unlink()
    with (run / "round_1" / "train" / "history.jsonl").open("a") as fh:
        fh.write('{"step": 9, "loss": 0.1')  # cut off by a killed run
    _, html, md, _ = _report(run)
    assert "summary.json is missing" in html
    assert "round 1: no diagnosis.parquet" in html
    assert "round 2: no train_data.parquet" in html
    assert "round 2: no train/history.jsonl" in html
    assert "round 2: no evaluation scores" in html
    assert "1 unreadable line(s) skipped" in html
    assert "## Notes" in md
    assert html.count("data:image/png;base64,") >= 3


def test_a_figure_that_fails_is_a_note(tmp_path, monkeypatch):
    from mmtune.report import plots

    def boom(*a, **k):
        raise ValueError("no can do")

    monkeypatch.setattr(plots, "training", boom)
    paths, html, _, _ = _report(build_run_dir(tmp_path / "run", rounds=1))
    assert "The training figure could not be drawn (ValueError: no can do)" in html
    assert len(paths.figures) == 3


def test_bare_and_broken_directories(tmp_path):
    # only a manifest with a failed stage: timings and the error, no crash
    run = tmp_path / "failed"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({"stages": {"data": {"state": "failed", "seconds": 1.5,
                                                                       "error": "Traceback...\nValueError: <bad>"}}}))
    _, html, _, _ = _report(run)
    assert "failed: ValueError: &lt;bad&gt;" in html and "No evaluation scores" in html
    # a comparison whose cells' run directories are all gone, with no table: computed from the cells
    cmp = build_compare_dir(tmp_path / "cmp", detail_run=False)
    data = json.loads((cmp / "compare.json").read_text())
    data["table"] = []
    data["cells"].append({"arm": "full", "budget": 300, "seed": 0, "run_dir": None, "scores": None})
    (cmp / "compare.json").write_text(json.dumps(data))
    _, html, _, _ = _report(cmp)
    assert "computed from the cells" in html and "no run is shown in detail" in html
    # a broken compare.json
    (cmp / "compare.json").write_text("{not json")
    _, html, _, _ = _report(cmp)
    assert "compare.json could not be read" in html
    # a directory holding neither kind is an error, said plainly
    with pytest.raises(FileNotFoundError, match="neither a run"):
        write_report(tmp_path / "failed" / "..", tmp_path / "x", progress=lambda s: None)
    with pytest.raises(FileNotFoundError):
        collect(tmp_path / "nope")


def test_import_is_light():
    import subprocess
    import sys

    code = ("import sys, mmtune.report, mmtune.report.collect, mmtune.report.render; "
            "print('matplotlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_long_model_output_is_clipped():
    from mmtune.report.render import MAX_CHARS, _steps_cell

    steps = [f"step {i} " + "x" * 1000 for i in range(1, 31)]
    cell = _steps_cell(steps, 25)
    assert '<li value="25" class="mistake">step 25 ' in cell.html and "… 5 more step(s)" in cell.html
    assert "… 15 step(s)" in cell.md and "25. **step 25" in cell.md
    assert max(len(x) for x in cell.md.split("<br>")) < MAX_CHARS + 30
