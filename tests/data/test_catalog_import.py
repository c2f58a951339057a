"""``data.source: files`` with the user's own LLaVA / ShareGPT / JSONL files: imported once
into the cache (streamed, quarantine counted), reused while the files and settings are
unchanged, re-imported when either changes; Sample parquet used in place."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from mmtune.config import load_config
from mmtune.data.catalog import data_paths, ensure_imported, import_key


def _llava(h, d: Path) -> Path:
    (d / "img").mkdir(parents=True, exist_ok=True)
    (d / "img" / "a.png").write_bytes(h.image_bytes())
    rows = [{"id": "x", "image": "img/a.png", "conversations": [
                {"from": "human", "value": "<image>\nColour?"}, {"from": "gpt", "value": "Red.\nAnswer: red"},
                {"from": "human", "value": "Shape?"}, {"from": "gpt", "value": "square"}]},
            {"id": "gone", "image": "img/nope.png", "conversations": [
                {"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A"}]}]
    return h.write_json(d / "corpus.json", rows)


def _cfg(tmp: Path, corpus: Path, targets=(), **data):
    over = [f"run.cache_dir={tmp / 'cache'}", "data.source=files", f"data.corpus={corpus}",
            f"data.targets={json.dumps(list(targets))}"]
    over += [f"data.{k}={v}" for k, v in data.items()]
    return load_config(None, over)


def test_llava_json_corpus_is_imported_once_and_reused(h, tmp_path):
    corpus = _llava(h, tmp_path / "d")
    cfg = _cfg(tmp_path, corpus, corpus_format="llava")
    log: list[str] = []
    paths = data_paths(cfg, log.append)
    rows = pq.read_table(paths.corpus).to_pylist()
    assert [r["id"] for r in rows] == ["x_t0", "x_t1"] and all(r["image"] for r in rows)
    assert paths.corpus[0].parent.parent == tmp_path / "cache" / "imports"
    text = "\n".join(log)
    assert "written:     2 samples" in text and "quarantined: 1" in text and "image not found" in text
    report = json.loads((paths.corpus[0].parent / "import_report.json").read_text())
    assert report["quarantined"] == 1 and ".tmp" not in json.dumps(report)

    again: list[str] = []
    assert data_paths(cfg, again.append).corpus == paths.corpus
    assert any("imported earlier (2 samples, 1 quarantined)" in x for x in again)
    assert not any("importing" in x for x in again)


def test_changed_file_or_setting_imports_again(h, tmp_path):
    corpus = _llava(h, tmp_path / "d")
    cfg = _cfg(tmp_path, corpus)
    first = data_paths(cfg, lambda _: None).corpus
    st = corpus.stat()
    os.utime(corpus, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched: a new signature
    touched = data_paths(cfg, lambda _: None).corpus
    assert touched != first and first[0].is_file()
    other = data_paths(_cfg(tmp_path, corpus, max_text_chars=100), lambda _: None).corpus
    assert other not in (first, touched)
    assert import_key([corpus], "auto", cfg) == import_key([corpus], "auto", cfg)


def test_targets_take_their_name_and_need_a_gold_answer(h, tmp_path):
    d = tmp_path / "d"
    corpus = _llava(h, d)
    val = h.write_json(d / "val.json", [
        {"messages": [{"role": "user", "content": "<image>Colour?"}, {"role": "assistant", "content": "Red.\nAnswer: red"}],
         "images": ["img/a.png"]},
        {"messages": [{"role": "user", "content": "Yes or no?"}, {"role": "assistant", "content": "Yes"}]},
        {"messages": [{"role": "user", "content": "Why?"}, {"role": "assistant", "content": "Because.\nIt is."}]}])
    test = h.write_jsonl(d / "test.jsonl", [{"id": "t1", "instruction": "Colour?", "response": "Answer: red",
                                            "image": "img/a.png", "task": "own_task"}])
    cfg = _cfg(tmp_path, corpus, [{"name": "colours", "val": str(val), "test": str(test)}])
    log: list[str] = []
    paths = data_paths(cfg, log.append)
    rows = pq.read_table(paths.target_val["colours"]).to_pylist()
    assert [(r["task"], r["answer"], r["steps"]) for r in rows] == [("colours", "red", ["Red."]), ("colours", "Yes", [])]
    assert any("no answer" in x for x in log)  # the multi-line reply without "Answer:" is quarantined, counted
    [t] = pq.read_table(paths.target_test["colours"]).to_pylist()
    assert t["task"] == "own_task" and t["image"]  # a task the file names is kept


def test_sample_parquet_is_used_in_place_and_side_files_skipped(h, tmp_path):
    from mmtune.data.importer import import_dataset

    corpus = _llava(h, tmp_path / "d")
    out = tmp_path / "imported"
    import_dataset(corpus, "llava", out, progress=None)
    assert (out / "quarantine.parquet").is_file()
    cfg = _cfg(tmp_path, out)
    paths = data_paths(cfg, lambda _: None)
    assert paths.corpus == [out / "part-00000.parquet"]  # no copy, no quarantine file
    assert not (tmp_path / "cache" / "imports").exists()


def test_nothing_usable_is_an_error_naming_the_quarantine(h, tmp_path):
    bad = h.write_json(tmp_path / "bad.json", [{"id": "a", "image": "none.png", "conversations": [
        {"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A"}]}])
    cfg = _cfg(tmp_path, bad)
    with pytest.raises(ValueError, match="no usable sample.*image not found.*quarantine.parquet"):
        data_paths(cfg, lambda _: None)
    with pytest.raises(FileNotFoundError, match="data path not found"):
        ensure_imported(str(tmp_path / "missing.json"), "auto", cfg, name="corpus")


def test_standalone_commands_read_a_json_corpus_through_the_import(h, tmp_path):
    """mmtune train/index/annotate/search take their corpus from training_paths: a JSON
    corpus must reach them as the imported parquet, not fail as 'not parquet'."""
    from mmtune.training.job import training_paths

    corpus = _llava(h, tmp_path / "d")
    cfg = _cfg(tmp_path, corpus, corpus_format="llava")
    paths = training_paths(cfg, None, progress=lambda _: None)
    assert paths == [str(p) for p in data_paths(cfg, lambda _: None).corpus]
    assert pq.read_table(paths).num_rows == 2
