"""The embedding pipeline on a local Ray: content choice, dedup, quarantine, rerun and append."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mmtune.config import RunConfig
from mmtune.data.schema import SAMPLE_SCHEMA
from mmtune.retrieval.embed import TextEmbedder, content_key, text_of

SKILLS = [["reading a handwritten digit", "telling whether a number is odd or even"],
          ["counting the objects in a picture"], ["recognising the colour of an object"]]


def _png(rgb) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), rgb).save(buf, format="PNG")
    return buf.getvalue()


def _rows(start: int, n: int, unannotated: int = 0) -> list[dict]:
    out = []
    for i in range(start, start + n):
        skills = [] if i - start < unannotated else SKILLS[i % 3]
        out.append({"id": f"c{i:04d}", "task": f"t{i % 3}", "source": "test", "image": _png((i % 250, 10, 10)),
                    "audio": None, "instruction": f"Question number {i % 7}?", "response": "Step.\nAnswer: x",
                    "steps": ["Step."], "answer": "x", "options": None, "skills": skills})
    return out


def _write(path, rows):
    pq.write_table(pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA), path)
    return str(path)


def test_text_of_is_canonical_per_mode():
    r = {"id": "a", "skills": ["b skill", "a skill", "b skill "], "instruction": " Q? ", "response": "R",
         "image": b"\x89PNG"}
    assert text_of(r, "skills") == "a skill; b skill"
    assert text_of({**r, "skills": ["a skill", "b skill"]}, "skills") == text_of(r, "skills")
    assert text_of(r, "instruction") == "Q?"
    assert text_of(r, "instruction_response") == "Q?\nR"
    assert text_of(r, "image") == b"\x89PNG"
    assert text_of({**r, "skills": []}, "skills") is None
    assert content_key("x") == content_key("x") != content_key("y")
    with pytest.raises(ValueError, match="retrieval.text"):
        text_of(r, "pixels")


def test_bundled_embedder_is_offline_and_normalised():
    emb = TextEmbedder()
    v = emb(["counting objects", "counting the objects", "reading a digit"])
    assert v.shape == (3, 384) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2]  # a real model: paraphrases are closer


@pytest.mark.ray
def test_pipeline_dedups_quarantines_skips_and_appends(ray_local, tmp_path):
    from mmtune.retrieval.embed_job import embed_corpus, read_embeddings, read_texts

    cfg = RunConfig.model_validate({"retrieval": {"text": "skills", "embed_batch_size": 32, "embed_actors": 1}})
    a = _write(tmp_path / "a.parquet", _rows(0, 150, unannotated=4))
    b = _write(tmp_path / "b.parquet", _rows(150, 150))
    out = tmp_path / "index"
    r1 = embed_corpus(cfg, [a, b], out, progress=lambda m: None)
    assert (r1.rows, r1.quarantined) == (300, 4)
    assert r1.reasons == {"no skills annotated (run the teacher's annotation, or set retrieval.text)": 4}
    assert r1.unique_contents == 3 and r1.embedded == 3  # 296 rows, 3 distinct skill sets
    ids, vecs = read_embeddings(out)
    want = sorted(r["id"] for r in _rows(0, 150, 4)[4:] + _rows(150, 150))
    assert sorted(ids) == want and vecs.shape == (296, 384)
    q = pq.read_table(out / "quarantine" / "part-00000.parquet")
    assert sorted(q.column("id").to_pylist()) == ["c0000", "c0001", "c0002", "c0003"]
    by_id = dict(zip(ids, vecs))
    assert np.allclose(by_id["c0005"], by_id["c0008"])  # same skills → one vector, shared
    assert len(read_texts(out)[0]) == 296

    again = embed_corpus(cfg, [a, b], out, progress=lambda m: None)
    assert again.files_new == 0 and again.files_skipped == 2  # unchanged corpus: skipped

    c = _write(tmp_path / "c.parquet", _rows(300, 30))
    r3 = embed_corpus(cfg, [a, b, c], out, progress=lambda m: None)
    assert r3.files_new == 1 and r3.rows == 30 and r3.embedded == 0  # all 3 contents cached
    ids3, _ = read_embeddings(out)
    assert len(ids3) == 326 and ids3[:296] == ids

    other = RunConfig.model_validate({"retrieval": {"text": "instruction"}})
    with pytest.raises(ValueError, match="--rebuild"):
        embed_corpus(other, [a], out, progress=lambda m: None)


@pytest.mark.ray
def test_pipeline_embeds_images_with_a_local_clip(ray_local, tmp_path):
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    from mmtune.retrieval.embed_job import embed_corpus, read_embeddings

    clip = tmp_path / "tiny-clip"
    model = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=16,
        patch_size=8, projection_dim=24))
    model.save_pretrained(clip)
    CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}).save_pretrained(clip)
    rows = _rows(0, 40)
    rows[0]["image"] = None
    cfg = RunConfig.model_validate({"retrieval": {"text": "image", "embedder": str(clip), "embed_actors": 1,
                                                  "embed_batch_size": 16}})
    rep = embed_corpus(cfg, [_write(tmp_path / "a.parquet", rows)], tmp_path / "img", progress=lambda m: None)
    assert rep.quarantined == 1 and rep.reasons == {"no image": 1} and rep.dim == 24
    ids, vecs = read_embeddings(tmp_path / "img")
    assert len(ids) == 39 and np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-4)


@pytest.mark.ray
def test_contents_reach_ray_data_as_many_blocks(ray_local, tmp_path):
    """Regression: the distinct contents went to Ray Data as one table, i.e. one block, and
    one block feeds one actor, so the rest of the pool sat idle."""
    import ray

    from mmtune.retrieval.embed_job import content_blocks, embed_corpus

    table = pa.table({"key": [str(i) for i in range(100)]})
    blocks = content_blocks(table, 16)
    assert [b.num_rows for b in blocks] == [16] * 6 + [4]
    assert ray.data.from_arrow(blocks).materialize().num_blocks() == 7

    rows = _rows(0, 48)
    for i, r in enumerate(rows):
        r["instruction"] = f"question {i}"
    cfg = RunConfig.model_validate({"retrieval": {"text": "instruction", "embed_batch_size": 8,
                                                  "embed_actors": 2}})
    rep = embed_corpus(cfg, [_write(tmp_path / "a.parquet", rows)], tmp_path / "ix", progress=lambda m: None)
    assert rep.embedded == 48 and 1 <= rep.actors_used <= 2  # how many got work is a race
