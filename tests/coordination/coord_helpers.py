"""Shared helpers (not a conftest, so names stay unique): a toy two-component model (fast unit tests) and a tiny LLaVA."""

import io
from types import SimpleNamespace

import torch
from PIL import Image

from mmtune.models.inputs import IGNORE_INDEX

VOCAB = 11


class ToyMLLM(torch.nn.Module):
    """logits = head(tanh(emb(ids) + enc(pixels))): an 'encoder' and an 'llm' component."""

    def __init__(self, feat=6, hidden=8, vocab=VOCAB, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.enc = torch.nn.Linear(feat, hidden)
        self.emb = torch.nn.Embedding(vocab, hidden)
        self.head = torch.nn.Linear(hidden, vocab, bias=False)
        self.drop = torch.nn.Dropout(0.5)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def forward(self, input_ids, pixel_values, attention_mask=None):
        h = self.emb(input_ids) + self.enc(pixel_values).unsqueeze(1)
        return SimpleNamespace(logits=self.head(self.drop(torch.tanh(h))))

    def groups(self):
        named = dict(self.named_parameters())
        return {"encoder": [(n, named[n]) for n in ("enc.weight", "enc.bias")],
                "llm": [(n, named[n]) for n in ("emb.weight", "head.weight")]}


def toy_batch(seed=1, b=3, t=7, feat=6):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (b, t), generator=g)
    labels = ids.clone()
    labels[:, :3] = IGNORE_INDEX  # the "prompt"
    labels[0, -1] = IGNORE_INDEX  # padding
    return {"input_ids": ids, "pixel_values": torch.randn(b, feat, generator=g),
            "attention_mask": torch.ones(b, t, dtype=torch.long), "labels": labels}


# The same small preset and texts as the model tests use.
from tests.models.conftest import PRESET, TEXTS  # noqa: E402,F401


def png(color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(buf, format="PNG")
    return buf.getvalue()
