"""The `mmtune` command as a user types it (subprocesses, real files)."""

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "llamafactory"


def mmtune(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "mmtune.cli", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=300)


def test_data_import_reports_written_and_quarantined(tmp_path):
    r = mmtune("data", "import", FIXTURES / "mllm_audio_demo.json", "--format", "sharegpt", "--out", tmp_path / "a")
    assert r.returncode == 0, r.stderr
    assert "written:     2" in r.stdout and "quarantined: 1" in r.stdout
    assert "audio not found" in r.stdout
    q = pq.read_table(tmp_path / "a" / "quarantine.parquet").to_pylist()
    assert len(q) == 1 and "1.mp3" in q[0]["reason"]
    # a second import into the same folder refuses to mix shards, with a clear error
    again = mmtune("data", "import", FIXTURES / "mllm_audio_demo.json", "--out", tmp_path / "a")
    assert again.returncode == 1 and "error:" in again.stderr and "Traceback" not in again.stderr


def test_data_import_missing_source_is_one_line(tmp_path):
    r = mmtune("data", "import", tmp_path / "nope.json", "--out", tmp_path / "b")
    assert r.returncode == 1
    assert r.stderr.startswith("error:") and "Traceback" not in r.stderr


def test_skillworld_export_with_llava_json(tmp_path):
    out = tmp_path / "sw"
    r = mmtune("data", "skillworld", "--out", out, "--llava-json",
               "data.skillworld.corpus_per_task=10", "data.skillworld.generic_size=100",
               "data.skillworld.generic_eval_per_task=8", "data.skillworld.val_size=10",
               "data.skillworld.test_size=12")
    assert r.returncode == 0, r.stderr
    manifest = json.loads((out / "skillworld.json").read_text())
    assert len([t for t in manifest["tasks"].values() if t["kind"] == "corpus"]) >= 16
    assert pq.read_table(out / "targets" / "parity_choice" / "test.parquet").num_rows == 12
    # the LLaVA export round-trips through our own LLaVA reader
    llava = sorted((out / "llava").glob("*.json"))
    assert llava
    imp = mmtune("data", "import", llava[0], "--format", "llava", "--out", tmp_path / "imp")
    assert imp.returncode == 0, imp.stderr
    assert "quarantined: 0" in imp.stdout
