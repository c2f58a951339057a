"""Teacher backends behind one interface.

Every backend offers two calls, both batched over prompts:

- ``score_options(prompts, options)``: for each prompt, the log-probability of each option
  string as the model's continuation (``LOGPROB_FLOOR`` when an API does not report it);
- ``generate(prompts, max_new_tokens=None, temperature=0.0)``: the continuations.

``hf`` runs any HF causal LM (or the text side of a VLM) through transformers; the
``builtin`` teacher is an HF directory that mmtune trains itself, so it goes through the
same class. ``openai`` talks to any OpenAI-compatible server (vLLM, ``ray.serve.llm``,
hosted APIs, or mmtune's own teacher app).
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import torch

from mmtune.config import TeacherConfig

log = logging.getLogger(__name__)

LOGPROB_FLOOR = -100.0  # an option the API's top list left out: "very unlikely", JSON-safe


class TeacherBackend(Protocol):
    name: str

    def score_options(self, prompts: Sequence[str], options: Sequence[Sequence[str]]) -> list[list[float]]: ...

    def generate(self, prompts: Sequence[str], max_new_tokens: int | None = None,
                 temperature: float = 0.0) -> list[str]: ...


class TeacherError(RuntimeError):
    """A teacher call that failed after its retries (network, HTTP status, bad reply)."""


# --------------------------------------------------------------------------- hf
def _dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


class HFBackend:
    """Any HF causal LM by hub id or path; option scores come from the logits.

    Prompts are wrapped in the tokenizer's chat template when ``chat_template`` says so
    (``auto``: when the tokenizer has one), so instruct models see the format they were
    tuned on. Without a chat template an option is scored as the continuation
    ``" " + option`` (the prompt ends with ``Answer:``); with one, as the start of the
    assistant's reply.
    """

    name = "hf"

    def __init__(self, name_or_path: str | Path, *, batch_size: int = 16, max_new_tokens: int = 32,
                 device: str = "auto", dtype: str = "auto", chat_template: str = "auto",
                 trust_remote_code: bool = False):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = torch.device("cuda" if device == "auto" and torch.cuda.is_available()
                                   else ("cpu" if device == "auto" else device))
        from mmtune.models.student import missing_local_model, refuse_pickle

        missing = missing_local_model(name_or_path, "teacher.name_or_path")
        if missing:
            raise FileNotFoundError(missing)
        try:
            self.tok = AutoTokenizer.from_pretrained(str(name_or_path), trust_remote_code=trust_remote_code)
        except OSError as e:
            raise OSError(f"could not load the teacher {str(name_or_path)!r}: {e}\nSet teacher.name_or_path to a "
                          "local HF directory (config.json, tokenizer, weights) or a hub id (needs network; "
                          "HF_HUB_OFFLINE=0)") from e
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        # Weights load as safetensors, or from a .bin with weights_only=True (never unpickled code).
        with refuse_pickle(name_or_path):
            try:
                model = AutoModelForCausalLM.from_pretrained(
                    str(name_or_path), dtype=_dtype(dtype, self.device), trust_remote_code=trust_remote_code,
                    weights_only=True)
            except ValueError:  # a VLM without a causal-LM mapping: use its text side through the VLM class
                from transformers import AutoModelForImageTextToText

                model = AutoModelForImageTextToText.from_pretrained(
                    str(name_or_path), dtype=_dtype(dtype, self.device), trust_remote_code=trust_remote_code,
                    weights_only=True)
        self.model = model.to(self.device).eval()
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        has_template = bool(getattr(self.tok, "chat_template", None))
        if chat_template == "always" and not has_template:
            raise ValueError(f"teacher.chat_template=always but {name_or_path} has no chat template; "
                             "use 'auto' or 'never'")
        self.use_chat = chat_template == "always" or (chat_template == "auto" and has_template)
        self.name_or_path = str(name_or_path)

    def _render(self, prompt: str) -> str:
        if not self.use_chat:
            return prompt
        return self.tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                            add_generation_prompt=True)

    def _ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def _context_ids(self, prompt: str) -> list[int]:
        ids = self._ids(self._render(prompt))
        bos = self.tok.bos_token_id
        if not self.use_chat and bos is not None and (not ids or ids[0] != bos):
            ids = [bos] + ids
        return ids

    @torch.no_grad()
    def _forward(self, seqs: list[list[int]]) -> torch.Tensor:
        """Log-softmax logits of right-padded sequences: [batch, max_len, vocab] (float32)."""
        width = max(len(s) for s in seqs)
        pad = self.tok.pad_token_id
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, :len(s)] = torch.tensor(s)
            mask[i, :len(s)] = 1
        out = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device))
        return torch.log_softmax(out.logits.float(), dim=-1)

    def score_options(self, prompts: Sequence[str], options: Sequence[Sequence[str]]) -> list[list[float]]:
        if len(prompts) != len(options):
            raise ValueError(f"{len(prompts)} prompts but {len(options)} option lists")
        sep = "" if self.use_chat else " "
        pairs: list[tuple[int, list[int], list[int]]] = []  # (prompt index, context ids, continuation ids)
        for i, (p, opts) in enumerate(zip(prompts, options)):
            ctx = self._context_ids(p)
            for o in opts:
                cont = self._ids(sep + str(o))
                if not cont:
                    raise ValueError(f"option {o!r} encodes to no tokens")
                pairs.append((i, ctx, cont))
        scores: list[float] = []
        for b in range(0, len(pairs), self.batch_size):
            chunk = pairs[b:b + self.batch_size]
            logp = self._forward([ctx + cont for _, ctx, cont in chunk])
            for row, (_, ctx, cont) in enumerate(chunk):
                pos = torch.arange(len(ctx) - 1, len(ctx) + len(cont) - 1)
                tgt = torch.tensor(cont)
                scores.append(float(logp[row, pos, tgt].sum()))
        out: list[list[float]] = [[] for _ in prompts]
        for (i, _, _), s in zip(pairs, scores):
            out[i].append(s)
        return out

    def next_token_top(self, prompts: Sequence[str], k: int) -> list[list[tuple[str, float]]]:
        """The ``k`` most likely next tokens (decoded text, log-prob) after each prompt: what
        an OpenAI-compatible route reports as ``top_logprobs``."""
        out: list[list[tuple[str, float]]] = []
        for b in range(0, len(prompts), self.batch_size):
            ctxs = [self._context_ids(p) for p in prompts[b:b + self.batch_size]]
            logp = self._forward(ctxs)
            for row, c in enumerate(ctxs):
                vals, idx = logp[row, len(c) - 1].topk(min(k, logp.shape[-1]))
                out.append([(self.tok.decode([int(i)]), float(v)) for v, i in zip(vals, idx)])
        return out

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], max_new_tokens: int | None = None,
                 temperature: float = 0.0) -> list[str]:
        texts: list[str] = []
        for b in range(0, len(prompts), self.batch_size):
            ctxs = [self._context_ids(p) for p in prompts[b:b + self.batch_size]]
            width = max(len(c) for c in ctxs)
            pad = self.tok.pad_token_id
            ids = torch.tensor([[pad] * (width - len(c)) + c for c in ctxs])  # left padding
            mask = torch.tensor([[0] * (width - len(c)) + [1] * len(c) for c in ctxs])
            kw: dict[str, Any] = {"max_new_tokens": max_new_tokens or self.max_new_tokens, "pad_token_id": pad,
                                  "eos_token_id": self.tok.eos_token_id, "do_sample": temperature > 0}
            if temperature > 0:
                kw.update(temperature=temperature, top_k=0, top_p=1.0)
            out = self.model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device), **kw)
            texts += self.tok.batch_decode(out[:, width:], skip_special_tokens=True)
        return texts


# --------------------------------------------------------------------------- openai
class OpenAIBackend:
    """Any OpenAI-compatible server. Option scores come from the first generated token's
    ``top_logprobs`` (chat) or ``logprobs`` (completions); an option's score is the
    log-sum-exp over the top tokens that spell it (``"A"``, ``" A"``), and
    ``LOGPROB_FLOOR`` when none does.

    The API key is read from the environment variable the config names, kept out of
    ``repr`` and logs, and never written anywhere.
    """

    name = "openai"
    TOP_LOGPROBS = 20

    def __init__(self, base_url: str, model: str, *, api_key_env: str = "OPENAI_API_KEY",
                 api: str = "chat", timeout_s: float = 60.0, max_retries: int = 3,
                 max_new_tokens: int = 32, concurrency: int = 8):
        import requests

        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api = api
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.max_new_tokens = max_new_tokens
        self.concurrency = concurrency
        self._session = requests.Session()
        key = os.environ.get(api_key_env)
        if key:
            self._session.headers["Authorization"] = f"Bearer {key}"
        self._key = key or ""
        self.api_key_env = api_key_env

    def _redact(self, text: str) -> str:
        """``text`` without the API key: a server may echo it in an error body, and errors
        reach logs, the run manifest and reports."""
        return text.replace(self._key, f"<${self.api_key_env}>") if len(self._key) >= 4 else text

    def __repr__(self) -> str:  # never the key
        return f"OpenAIBackend(base_url={self.base_url!r}, model={self.model!r}, api={self.api!r})"

    def _post(self, route: str, body: dict[str, Any]) -> dict[str, Any]:
        import requests

        url = f"{self.base_url}/{route}"
        delay = 0.5
        for attempt in range(self.max_retries + 1):
            try:
                r = self._session.post(url, json=body, timeout=self.timeout_s)
            except (requests.ConnectionError, requests.Timeout) as e:
                err = self._redact(f"{type(e).__name__}: {e}")
            else:
                if r.status_code == 200:
                    try:
                        return r.json()
                    except ValueError:
                        raise TeacherError(self._redact(
                            f"{url}: HTTP 200 but the body is not JSON ({r.text[:200]!r}); teacher.base_url must "
                            "be an OpenAI-compatible endpoint, e.g. http://host:8000/v1")) from None
                err = self._redact(f"HTTP {r.status_code}: {r.text[:300]}")
                if r.status_code == 401:
                    raise TeacherError(f"{url}: {err} — set the API key in ${self.api_key_env}")
                if r.status_code not in (408, 409, 429) and r.status_code < 500:
                    raise TeacherError(f"{url}: {err} (not retried: the request itself was refused)")
            if attempt < self.max_retries:
                log.warning("teacher %s failed (%s); retry %d/%d in %.1fs", url, err, attempt + 1,
                            self.max_retries, delay)
                time.sleep(delay * (1 + random.random() * 0.25))
                delay = min(delay * 2, 30.0)
        raise TeacherError(f"{url}: {err} after {self.max_retries + 1} attempts "
                           f"(timeout {self.timeout_s}s; raise teacher.timeout_s or teacher.max_retries)")

    def _body(self, prompt: str, max_tokens: int, temperature: float, top_logprobs: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "max_tokens": max_tokens, "temperature": temperature}
        if self.api == "chat":
            body["messages"] = [{"role": "user", "content": prompt}]
            if top_logprobs:
                body.update(logprobs=True, top_logprobs=self.TOP_LOGPROBS)
        else:
            body["prompt"] = prompt
            if top_logprobs:
                body["logprobs"] = self.TOP_LOGPROBS
        return body

    def _route(self) -> str:
        return "chat/completions" if self.api == "chat" else "completions"

    def _top(self, reply: dict[str, Any]) -> dict[str, float]:
        try:
            choice = reply["choices"][0]
            if self.api == "chat":
                first = choice["logprobs"]["content"][0]
                return {t["token"]: float(t["logprob"]) for t in first["top_logprobs"]}
            return {k: float(v) for k, v in choice["logprobs"]["top_logprobs"][0].items()}
        except (KeyError, IndexError, TypeError) as e:
            raise TeacherError(f"the server's reply has no top log-probabilities ({e!r}); it must support "
                               f"{'logprobs/top_logprobs' if self.api == 'chat' else 'logprobs'} "
                               f"(vLLM and OpenAI do)") from e

    @staticmethod
    def _option_score(top: dict[str, float], option: str) -> float:
        want = option.strip().lower()
        hits = [lp for tok, lp in top.items() if tok.strip().lower() == want]
        if not hits:
            return LOGPROB_FLOOR
        m = max(hits)
        return m + math.log(sum(math.exp(h - m) for h in hits))

    def _map(self, fn, items):
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(fn, items))

    def score_options(self, prompts: Sequence[str], options: Sequence[Sequence[str]]) -> list[list[float]]:
        def one(args):
            prompt, opts = args
            top = self._top(self._post(self._route(), self._body(prompt, 1, 0.0, True)))
            return [self._option_score(top, str(o)) for o in opts]

        return self._map(one, list(zip(prompts, options)))

    def generate(self, prompts: Sequence[str], max_new_tokens: int | None = None,
                 temperature: float = 0.0) -> list[str]:
        def one(prompt):
            reply = self._post(self._route(), self._body(prompt, max_new_tokens or self.max_new_tokens,
                                                         temperature, False))
            try:
                c = reply["choices"][0]
                return c["message"]["content"] if self.api == "chat" else c["text"]
            except (KeyError, IndexError, TypeError) as e:
                raise TeacherError(self._redact(
                    f"unexpected reply shape from {self.base_url}: {str(reply)[:300]}")) from e

        return self._map(one, list(prompts))


# --------------------------------------------------------------------------- factory
def make_backend(cfg: TeacherConfig, builtin_dir: str | Path | None = None) -> TeacherBackend:
    """The configured backend. ``builtin`` needs the directory of the trained built-in
    teacher (``mmtune.teacher.builtin.ensure_builtin_teacher`` makes it)."""
    if cfg.backend == "openai":
        return OpenAIBackend(cfg.base_url or "", cfg.name_or_path or "", api_key_env=cfg.api_key_env,
                             api=cfg.openai_api, timeout_s=cfg.timeout_s, max_retries=cfg.max_retries,
                             max_new_tokens=cfg.max_new_tokens)
    path = builtin_dir if cfg.backend == "builtin" else cfg.name_or_path
    if path is None:
        raise ValueError("the builtin teacher's directory is needed: run `mmtune teacher train --config ...`")
    return HFBackend(path, batch_size=cfg.batch_size, max_new_tokens=cfg.max_new_tokens, device=cfg.device,
                     dtype=cfg.dtype, chat_template="never" if cfg.backend == "builtin" else cfg.chat_template)
