"""OpenAIBackend against our own teacher app's OpenAI routes (both API families), and its
retry, refusal and API-key behaviour against a tiny scripted HTTP server on loopback."""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from mmtune.config import load_config
from mmtune.teacher.backend import (
    LOGPROB_FLOOR,
    OpenAIBackend,
    TeacherError,
    make_backend,
)

PROMPTS = ["Question: Which is right?\nCandidates:\nA. 3\nB. 4\nAnswer:", "Step 1. There are 3.\nStep:"]


# --------------------------------------------------------------------------- against the app
@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.parametrize("api", ["chat", "completions"])
def test_openai_backend_against_our_app(served, api):
    b = OpenAIBackend(f"{served.url}/v1", "tiny", api=api, timeout_s=60, max_retries=0)
    scores = b.score_options(PROMPTS, [["A", "B"], ["1", "2", "3"]])
    assert [len(s) for s in scores] == [2, 3]
    assert all(isinstance(v, float) and LOGPROB_FLOOR <= v <= 0 for s in scores for v in s)
    texts = b.generate(PROMPTS, max_new_tokens=3)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)

    # An option that IS among the top tokens gets its real log-probability, not the floor.
    r = requests.post(f"{served.url}/v1/completions", json={"prompt": PROMPTS[0], "max_tokens": 1, "logprobs": 20},
                      timeout=60).json()
    top = r["choices"][0]["logprobs"]["top_logprobs"][0]
    tok, lp = next((t, v) for t, v in top.items() if t.strip())
    got = b.score_options([PROMPTS[0]], [[tok.strip()]])[0][0]
    assert LOGPROB_FLOOR < got <= 0 and got >= lp - 1e-4  # log-sum-exp over the spellings that match


@pytest.mark.ray
@pytest.mark.slow
def test_make_backend_openai_talks_to_our_app(served):
    cfg = load_config(None, ["teacher.backend=openai", f"teacher.base_url={served.url}/v1",
                             "teacher.name_or_path=tiny", "teacher.openai_api=completions", "teacher.max_retries=0"])
    b = make_backend(cfg.teacher)
    assert isinstance(b, OpenAIBackend) and b.api == "completions"
    assert [len(s) for s in b.score_options(PROMPTS[:1], [["A", "B"]])] == [2]


@pytest.mark.ray
@pytest.mark.slow
def test_official_openai_client_if_installed(served):
    import openai  # in the test extra; not a dependency of mmtune itself
    client = openai.OpenAI(base_url=f"{served.url}/v1", api_key="unused", max_retries=0)
    chat = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": PROMPTS[0]}],
                                          max_tokens=1, logprobs=True, top_logprobs=3)
    assert isinstance(chat.choices[0].message.content, str)
    assert len(chat.choices[0].logprobs.content[0].top_logprobs) == 3
    comp = client.completions.create(model="tiny", prompt=PROMPTS[1], max_tokens=2, logprobs=3)
    assert isinstance(comp.choices[0].text, str)
    assert [m.id for m in client.models.list().data]


# --------------------------------------------------------------------------- scripted server
CHAT_REPLY = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "B"},
                           "logprobs": {"content": [{"token": "B", "logprob": -0.1,
                                                     "top_logprobs": [{"token": "B", "logprob": -0.1},
                                                                      {"token": " A", "logprob": -2.5}]}]}}]}


class Scripted:
    """A loopback HTTP server answering POSTs with a scripted list of (status, body); the
    last entry repeats. It records each request's path and headers."""

    def __init__(self, script: list[tuple[int, dict]]):
        self.script = list(script)
        self.seen: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                n = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(n) or b"{}")
                outer.seen.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                status, reply = outer.script[min(len(outer.seen), len(outer.script)) - 1]
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):  # keep test output clean
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_retries_with_backoff_after_503_then_succeeds(caplog):
    with Scripted([(503, {"error": {"message": "warming up"}}), (200, CHAT_REPLY)]) as srv, \
            caplog.at_level(logging.WARNING, logger="mmtune.teacher.backend"):
        b = OpenAIBackend(srv.url, "m", max_retries=3, timeout_s=10)
        scores = b.score_options(["Answer:"], [["A", "B", "C"]])
    assert len(srv.seen) == 2 and srv.seen[0]["path"] == "/v1/chat/completions"
    assert srv.seen[0]["body"]["logprobs"] is True and srv.seen[0]["body"]["top_logprobs"] == OpenAIBackend.TOP_LOGPROBS
    assert scores[0][0] == pytest.approx(-2.5) and scores[0][1] == pytest.approx(-0.1)
    assert scores[0][2] == LOGPROB_FLOOR  # not in the top list
    assert any("503" in r.getMessage() and "retry 1/3" in r.getMessage() for r in caplog.records)


def test_gives_up_after_max_retries():
    with Scripted([(503, {"error": "busy"})]) as srv:
        b = OpenAIBackend(srv.url, "m", max_retries=1, timeout_s=10)
        with pytest.raises(TeacherError, match="after 2 attempts"):
            b.generate(["x"])
    assert len(srv.seen) == 2


def test_400_is_not_retried():
    with Scripted([(400, {"error": {"message": "bad request"}}), (200, CHAT_REPLY)]) as srv:
        b = OpenAIBackend(srv.url, "m", max_retries=3, timeout_s=10)
        with pytest.raises(TeacherError, match="not retried"):
            b.generate(["x"])
    assert len(srv.seen) == 1


def test_api_key_is_sent_as_bearer_but_never_shown(monkeypatch, caplog):
    secret = "sk-test-abc123-never-log-me"
    monkeypatch.setenv("MMTUNE_TEST_TEACHER_KEY", secret)
    with Scripted([(503, {}), (401, {"error": {"message": "nope"}})]) as srv, \
            caplog.at_level(logging.DEBUG):
        b = OpenAIBackend(srv.url, "m", api_key_env="MMTUNE_TEST_TEACHER_KEY", max_retries=2, timeout_s=10)
        with pytest.raises(TeacherError) as ei:
            b.generate(["x"])
    assert [s["auth"] for s in srv.seen] == [f"Bearer {secret}"] * 2
    assert secret not in repr(b) and secret not in str(b)
    assert secret not in str(ei.value) and "MMTUNE_TEST_TEACHER_KEY" in str(ei.value)  # names the variable
    assert caplog.records and secret not in caplog.text
