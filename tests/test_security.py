"""Security defaults (issue F §6), one test each:

- Serve binds to 127.0.0.1 unless the config says otherwise;
- request bodies have size limits (413/422 naming the config key);
- checkpoints load as safetensors or with ``weights_only=True``: user artefacts are never
  unpickled (a source scan, and pickles planted where mmtune loads weights are refused);
- ``trust_remote_code`` is off unless the config turns it on;
- API keys come from the environment and stay out of configs, manifests, errors and logs.

Fast and Ray-free: Serve is not started here. The same limits over real HTTP are covered
by tests/teacher/test_serve.py::test_limits_and_validation_errors_are_json, and the key
sent as a bearer token by tests/teacher/test_openai_backend.py::test_api_key_is_sent_as_bearer_but_never_shown.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import json
import logging
import os
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest
import torch

from mmtune.config import (
    ConfigError,
    RunConfig,
    StudentConfig,
    TeacherConfig,
    load_config,
)

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "mmtune").rglob("*.py"))
RUN_CONFIGS = sorted(p for p in (ROOT / "configs").glob("*.yaml") if p.name != "serve_teacher.yaml")


def _calls(path: Path):
    """(call node, dotted callee name) for every call in a source file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def _kw(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


def _where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(ROOT)}:{node.lineno}"


# =========================================================================== binding
def test_serve_binds_loopback_unless_configured():
    assert TeacherConfig().host == "127.0.0.1"
    assert RunConfig().ray.include_dashboard is False  # a local Ray's dashboard stays off by default
    for path in RUN_CONFIGS:  # the shipped configs keep the default
        assert load_config(path).teacher.host == "127.0.0.1", path
    # (configs/serve_teacher.yaml's http_options: tests/teacher/test_serve.py::test_builder_args_and_config_file_validate)

    from mmtune.teacher import serve as ts

    def started(overrides):
        seen = {}
        with mock.patch.object(ts.serve, "start", side_effect=lambda **kw: seen.update(kw)), \
                mock.patch.object(ts.serve, "run"), mock.patch.object(ts, "build_app"), \
                mock.patch.object(ts, "wait_healthy", return_value={}), mock.patch.object(ts, "teacher_handle"):
            ts.start_teacher(load_config(None, overrides), builtin_dir="unused", progress=lambda m: None)
        return seen["http_options"]

    assert started([]) == {"host": "127.0.0.1", "port": 8000}
    assert started(["teacher.host=0.0.0.0", "teacher.port=8123"]) == {"host": "0.0.0.0", "port": 8123}
    # clients on the machine still dial loopback when the server listens on every interface
    assert ts.teacher_url(load_config(None, ["teacher.host=0.0.0.0"])).startswith("http://127.0.0.1:")

    for path in SOURCES:  # nothing in mmtune binds a wildcard address on its own
        for call, name in _calls(path):
            for k in call.keywords:
                if k.arg in ("host", "dashboard_host") and isinstance(k.value, ast.Constant):
                    assert k.value.value not in ("0.0.0.0", "::", ""), _where(path, call)


# =========================================================================== request limits
async def _asgi(app, body: bytes, headers: list[tuple[bytes, bytes]], chunks: int = 1) -> tuple[int, dict]:
    """One POST /v1/analyse through an ASGI app, the body in ``chunks`` messages."""
    step = max(1, -(-len(body) // chunks))
    parts = [body[i:i + step] for i in range(0, len(body), step)] or [b""]
    inbox = [{"type": "http.request", "body": p, "more_body": i < len(parts) - 1} for i, p in enumerate(parts)]
    sent: list[dict] = []

    async def receive():
        return inbox.pop(0) if inbox else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/analyse", "raw_path": b"/v1/analyse", "root_path": "", "query_string": b"",
             "headers": [(b"content-type", b"application/json"), *headers], "server": ("127.0.0.1", 8000),
             "client": ("127.0.0.1", 50000)}
    await app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, json.loads(b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"))


def test_request_bodies_have_size_limits(monkeypatch):
    from mmtune.teacher import serve as ts

    cfg = load_config(None)
    s = cfg.teacher.serve
    assert (s.max_items_per_request, s.max_text_chars) == (256, 16384)
    assert ts.max_body_bytes(cfg.teacher) == ts.DEFAULT_MAX_BODY_BYTES == 16 * 1024 * 1024

    # parsed requests: too many items -> 413, too long a text -> 422; each names its key
    ingress = SimpleNamespace(limits=s)
    with pytest.raises(ts.ApiError) as e:
        ts.TeacherIngress.func_or_class._count(ingress, 257, "items")
    assert e.value.status == 413 and "teacher.serve.max_items_per_request" in e.value.message
    with pytest.raises(ts.ApiError) as e:
        ts.TeacherIngress.func_or_class._text(ingress, "x" * 16385, "items.0.question")
    assert e.value.status == 422 and "teacher.serve.max_text_chars" in e.value.message
    ts.TeacherIngress.func_or_class._count(ingress, 256, "items")  # the limits are inclusive
    ts.TeacherIngress.func_or_class._text(ingress, "x" * 16384, "items.0.question")

    # raw bodies: refused before they are parsed, by Content-Length or while streaming
    monkeypatch.setitem(ts._BODY_LIMIT, "bytes", 1000)
    body = json.dumps({"items": [{"id": "a", "question": "q" * 5000, "steps": [], "gold": "b"}]}).encode()
    for headers, chunks in (([(b"content-length", str(len(body)).encode())], 1), ([], 4)):
        status, reply = asyncio.run(_asgi(ts.api, body, headers, chunks))
        err = reply["error"]
        assert status == 413 and err["code"] == "body_too_large", reply
        assert "teacher.serve.max_body_bytes" in err["message"] and "1000" in err["message"]
        assert "Traceback" not in err["message"]


# =========================================================================== safe loading
def test_checkpoints_load_as_safetensors_or_weights_only_by_source():
    """Every torch.load passes weights_only=True; nothing unpickles; every model load either
    passes weights_only=True or relies on a library whose default is safe (checked below)."""
    from peft.utils.save_and_load import torch_load
    from transformers import PreTrainedModel

    # the libraries' own defaults, which the remaining loads rely on
    assert inspect.signature(PreTrainedModel.from_pretrained).parameters["weights_only"].default is True
    assert inspect.signature(torch_load).parameters["weights_only"].default is True  # PEFT adapters (.bin)

    explicit = {"mmtune/models/student.py", "mmtune/teacher/backend.py"}  # the user's student and teacher
    unsafe_modules = {"cloudpickle", "dill", "joblib", "marshal", "shelve"}  # pickle: only its error class
    model_loads = 0
    for path in SOURCES:
        rel = str(path.relative_to(ROOT))
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                assert not [n for n in names if n.split(".")[0] in unsafe_modules], _where(path, node)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "pickle":
                assert node.attr == "UnpicklingError", f"{_where(path, node)}: pickle.{node.attr}"
        for call, name in _calls(path):
            where = _where(path, call)
            for k in ("weights_only", "use_safetensors", "safe_serialization"):
                v = _kw(call, k)
                assert not (isinstance(v, ast.Constant) and v.value is False), f"{where}: {k}=False"
            v = _kw(call, "allow_pickle")
            assert not (isinstance(v, ast.Constant) and v.value is True), f"{where}: allow_pickle=True"
            assert not name.startswith("pickle.") or name == "pickle.UnpicklingError", f"{where}: {name}"
            assert name not in ("torch.jit.load", "torch.package.PackageImporter"), where
            if name == "torch.load":
                v = _kw(call, "weights_only")
                assert isinstance(v, ast.Constant) and v.value is True, f"{where}: torch.load without weights_only=True"
            if name.endswith(".from_pretrained") and "Model" in name.split(".")[-2] and "Peft" not in name:
                model_loads += 1
                if rel in explicit:
                    v = _kw(call, "weights_only")
                    assert isinstance(v, ast.Constant) and v.value is True, f"{where}: pass weights_only=True"
    assert model_loads >= 3  # the scan found the student's, the teacher's (two classes each) and CLIP's loads


class _Evil:
    """A pickle that runs a command when loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickled_weights_planted_where_mmtune_loads_them_are_refused(tmp_path):
    from mmtune.models.student import (
        apply_lora,
        load_adapter,
        load_student,
        save_adapter,
    )
    from mmtune.teacher.backend import HFBackend
    from mmtune.training.checkpoint import load_checkpoint, save_weights
    from tests.test_bad_input import tiny_llava

    marker = tmp_path / "PWNED"
    evil = {"model.embed_tokens.weight": _Evil(marker)}

    # a student (or teacher) directory whose weights are a .bin pickle, no safetensors
    good = tiny_llava(tmp_path, 32)
    bad = tmp_path / "student-bin"
    shutil.copytree(good, bad)
    for f in bad.glob("*.safetensors"):
        f.unlink()
    torch.save(evil, bad / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"refused to load .*pickle.*safetensors"):
        load_student(bad, StudentConfig())
    with pytest.raises(ValueError, match=r"refused to load .*never runs pickled code"):
        HFBackend(bad, device="cpu")

    # an adapter saved as a .bin pickle
    sc = StudentConfig()
    model, _ = load_student(good, sc)
    save_adapter(apply_lora(model, sc), tmp_path / "adapter")
    (tmp_path / "adapter" / "adapter_model.safetensors").unlink()
    torch.save(evil, tmp_path / "adapter" / "adapter_model.bin")
    base, _ = load_student(good, sc)
    with pytest.raises(ValueError, match="refused to load"):
        load_adapter(base, tmp_path / "adapter")

    # a training checkpoint whose optimizer state is a pickle with code in it
    lin = torch.nn.Linear(2, 2)
    ck = tmp_path / "checkpoint_00000001"
    ck.mkdir()
    save_weights(lin, ck)
    (ck / "state.json").write_text(json.dumps({"step": 1}))
    torch.save({"state": _Evil(marker)}, ck / "optimizer.pt")
    with pytest.raises(ValueError, match="refused to load .*optimizer.pt"):
        load_checkpoint(ck, model=lin, optimizer=torch.optim.SGD(lin.parameters(), lr=0.1), schedule=None,
                        regularizer=None)
    assert not marker.exists(), "a planted pickle ran"


# =========================================================================== remote code
def test_trust_remote_code_is_off_unless_the_config_turns_it_on(tmp_path):
    assert StudentConfig().trust_remote_code is False and load_config(None).student.trust_remote_code is False
    assert "trust_remote_code" not in TeacherConfig.model_fields  # the teacher never runs hub code
    for path in RUN_CONFIGS:
        assert load_config(path).student.trust_remote_code is False, path

    for path in SOURCES:  # never a literal True; every parameter of that name defaults to False
        tree = ast.parse(path.read_text())
        for call, _ in _calls(path):
            v = _kw(call, "trust_remote_code")
            assert not (isinstance(v, ast.Constant) and v.value is True), _where(path, call)
        for fn in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
            args = fn.args.args + fn.args.kwonlyargs
            defaults = [None] * (len(fn.args.args) - len(fn.args.defaults)) + fn.args.defaults + fn.args.kw_defaults
            for a, d in zip(args, defaults):
                if a.arg == "trust_remote_code" and d is not None:  # (no default: passed through from a caller)
                    assert isinstance(d, ast.Constant) and d.value is False, _where(path, fn)

    # load_student hands the config's setting to transformers, and nothing else
    import mmtune.models.student as st

    (tmp_path / "m").mkdir()
    # a LLaVA config: load_student picks the Auto class from config.json's model_type
    (tmp_path / "m" / "config.json").write_text('{"model_type": "llava"}')
    for on in (False, True):
        with mock.patch.object(st, "load_processor", return_value=object()) as proc, \
                mock.patch.object(st.AutoModelForImageTextToText, "from_pretrained", return_value=object()) as model:
            st.load_student(tmp_path / "m", StudentConfig(trust_remote_code=on))
        assert proc.call_args.kwargs["trust_remote_code"] is on
        assert model.call_args.kwargs["trust_remote_code"] is on and model.call_args.kwargs["weights_only"] is True


# =========================================================================== API keys
class _EchoServer:
    """Answers every POST with an error that echoes the Authorization header, as a careless
    upstream might: first 503 (retried, logged), then 401."""

    def __init__(self):
        self.codes = [503, 401]
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                code = outer.codes.pop(0) if len(outer.codes) > 1 else outer.codes[0]
                body = json.dumps({"error": {"message": f"bad credentials {self.headers.get('Authorization')}"}})
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *a):
                pass

        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.srv.server_address[1]}/v1"

    def __enter__(self):
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.srv.shutdown()
        self.srv.server_close()


def test_api_keys_come_from_the_environment_and_are_redacted(tmp_path, monkeypatch, caplog, capsys):
    from mmtune.rundir import MANIFEST, RunDir
    from mmtune.teacher.backend import OpenAIBackend, TeacherError, make_backend

    # no config field holds a secret: only the *name* of the variable that does
    def fields(model, prefix=""):
        for name, f in model.model_fields.items():
            ann = f.annotation
            if isinstance(ann, type) and hasattr(ann, "model_fields"):
                yield from fields(ann, f"{prefix}{name}.")
            else:
                yield f"{prefix}{name}"
    words = {"key", "token", "secret", "password", "credential", "apikey"}
    secretish = [f for f in fields(RunConfig) if words & set(f.split(".")[-1].split("_"))]
    assert secretish == ["teacher.api_key_env"], secretish
    with pytest.raises(ConfigError, match="unknown setting"):
        load_config(None, ["teacher.api_key=sk-inline"])  # a key cannot be put in a config at all

    secret = "sk-mmtune-test-9f8e7d6c5b4a"
    monkeypatch.setenv("MMTUNE_TEST_TEACHER_KEY", secret)
    with _EchoServer() as srv, caplog.at_level(logging.DEBUG):
        cfg = load_config(None, ["teacher.backend=openai", f"teacher.base_url={srv.url}", "teacher.name_or_path=m",
                                 "teacher.api_key_env=MMTUNE_TEST_TEACHER_KEY", "teacher.max_retries=1",
                                 f"run.out_dir={tmp_path / 'runs'}", "run.name=sec"])
        backend = make_backend(cfg.teacher)
        assert isinstance(backend, OpenAIBackend) and backend._session.headers["Authorization"] == f"Bearer {secret}"
        run = RunDir(cfg, progress=print)
        with pytest.raises(TeacherError) as err:
            run.stage("diagnose", cfg.teacher.model_dump(mode="json"), {}, lambda: {"x": backend.generate(["q"])})
    outputs = {
        "repr(config)": repr(cfg), "config.to_dict()": json.dumps(cfg.to_dict()), "config.to_yaml()": cfg.to_yaml(),
        "repr(backend)": repr(backend), "error": str(err.value), "manifest": (run.root / MANIFEST).read_text(),
        "logs": caplog.text, "printed": "".join(capsys.readouterr()),
    }
    for what, text in outputs.items():
        assert secret not in text, f"the API key leaked into {what}"
    assert "MMTUNE_TEST_TEACHER_KEY" in outputs["error"] and "401" in outputs["manifest"]  # the fix is still named
    assert "503" in outputs["logs"]  # the retry was logged, redacted
