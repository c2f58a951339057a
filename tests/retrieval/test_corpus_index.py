"""`mmtune index`: embeddings → FAISS + BM25 on disk, searchable, and skipped when up to date."""

from __future__ import annotations

import json

import pytest

from mmtune.cli import main

from .test_embed import _rows, _write

QUESTIONS = ["How many apples are on the table?", "What colour is the car?", "Which digit is written here?"]


def _corpus(tmp_path):
    rows = _rows(0, 60)
    for i, r in enumerate(rows):
        r["instruction"] = QUESTIONS[i % 3]
    return _write(tmp_path / "corpus.parquet", rows)


@pytest.mark.ray
def test_index_cli_builds_searches_and_skips_when_up_to_date(ray_local, tmp_path, capsys):
    from mmtune.retrieval.corpus_index import load_corpus_index
    from mmtune.retrieval.embed import TextEmbedder

    corpus = _corpus(tmp_path)
    args = ["index", "--config", "configs/demo.yaml", "--data", corpus, "--out", str(tmp_path / "ix"),
            "retrieval.text=instruction", "retrieval.embed_actors=1"]
    assert main([*args, "--query", "count the apples", "-k", "2"]) == 0
    out = capsys.readouterr().out
    state = json.loads(out.strip().splitlines()[-1])
    assert state["count"] == 60 and state["dim"] == 384 and state["index_type"] == "flat"
    assert "dense  1." in out and "bm25   1." in out

    vindex, bm25 = load_corpus_index(tmp_path / "ix")
    q = TextEmbedder()(["count the apples"])
    ids = vindex.search(q, 5).ids[0]
    assert {int(i[1:]) % 3 for i in ids} == {0}  # all hits are the apple-counting question
    assert {int(i[1:]) % 3 for i in bm25.search(["apples"], 5).ids[0]} == {0}

    assert main(args) == 0
    assert "index up to date" in capsys.readouterr().out


def test_index_cli_explains_an_unannotated_corpus(ray_local, tmp_path, capsys):
    rows = _rows(0, 10, unannotated=10)
    corpus = _write(tmp_path / "c.parquet", rows)
    rc = main(["index", "--config", "configs/demo.yaml", "--data", corpus, "--out", str(tmp_path / "ix"),
               "retrieval.embed_actors=1"])  # retrieval.text defaults to skills
    assert rc == 1
    assert "set retrieval.text=instruction" in capsys.readouterr().err
