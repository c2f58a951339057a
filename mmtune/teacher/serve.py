"""The teacher as a Ray Serve application: a thin adapter over the pure :class:`Teacher`.

Two deployments:

- ``TeacherModel`` holds the backend (``make_backend``) and a :class:`Teacher`. The
  pipeline calls it through a ``DeploymentHandle`` (``analyse``, ``annotate``, ``score``,
  ``generate``, ``next_token_top``). With ``teacher.serve.batching`` (the default) the
  requests of many callers are fused by ``@serve.batch``: their lists are concatenated,
  the teacher is called ONCE, and the results are split back, so a replica runs one
  large forward pass instead of many small ones. ``batching: false`` calls the teacher
  once per request (the benchmark compares the two). It autoscales on
  ``teacher.autoscaling`` and asks for a GPU only where the cluster has one.
- ``TeacherIngress`` is the HTTP face (FastAPI): ``/health``, ``/v1/analyse``,
  ``/v1/annotate``, ``/v1/score`` and the OpenAI-compatible ``/v1/chat/completions``,
  ``/v1/completions`` and ``/v1/models``, with pydantic-validated requests, size limits
  (413/422) and JSON errors in OpenAI's shape (``{"error": {"message", "type", ...}}``).

``docs/serving.md`` is the user's guide; ``bench/teacher_serve.py`` measures batching.
"""

# No `from __future__ import annotations` here: FastAPI reads the route methods' request
# types from their annotations, and Serve's ingress wrapper leaves string annotations
# unresolved (the body then turns into a required query parameter).
import asyncio
import logging
import math
import os
import signal
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter as _Tally
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from mmtune.config import RunConfig, TeacherConfig, load_config
from mmtune.metrics import PREFIX, TEACHER, TeacherMetrics

if TYPE_CHECKING:
    from .teacher import Analysis

# The ingress imports this module too: the backend (and torch with it) is imported only
# where a model is, so an ingress replica stays light. Kept equal to backend.LOGPROB_FLOOR
# (a test checks it).
LOGPROB_FLOOR = -100.0

log = logging.getLogger(__name__)

MODEL_DEPLOYMENT = "TeacherModel"
INGRESS_DEPLOYMENT = "TeacherIngress"
ROUTES = ("analyse", "annotate", "score", "generate", "next_token_top")
BUILTIN_MODEL_NAME = "mmtune-builtin"
# The ingress only parses JSON and awaits the model, like Serve's own proxy (which reserves
# no CPU): a reserved fraction would only stop a model replica from packing on a small node.
INGRESS_CPUS = 0.0
MAX_TOP_LOGPROBS = 20  # vLLM's and OpenAI's limit; OpenAIBackend asks for 20


def served_model_name(t: TeacherConfig) -> str:
    """The model name the OpenAI routes report (``/v1/models``, ``model`` of replies)."""
    return t.name_or_path or BUILTIN_MODEL_NAME


# =========================================================================== metrics
# Declared with every other mmtune metric in mmtune/metrics.py (names, tags, descriptions,
# histogram boundaries); these aliases keep this module's public names.
METRIC_PREFIX = PREFIX + "teacher_"
# name -> (kind, tag keys, description)
METRICS: dict[str, tuple[str, tuple[str, ...], str]] = {n: (s.kind, s.tags, s.description) for n, s in TEACHER.items()}


def metric_names() -> list[str]:
    """The teacher's names as Prometheus shows them (``mmtune.metrics.metric_names`` has all)."""
    return sorted(p for n, s in TEACHER.items() for p in s.prometheus_names("teacher_" + n))


# =========================================================================== model deployment
class _CountingBackend:
    """The backend with a tally of its calls: the replica reports it so that tests and the
    benchmark can see how many backend calls N requests cost."""

    def __init__(self, inner: Any):
        self.inner = inner
        self.calls: _Tally[str] = _Tally()

    @property
    def name(self) -> str:
        return self.inner.name

    def score_options(self, prompts, options):
        self.calls["score_options"] += 1
        return self.inner.score_options(prompts, options)

    def generate(self, prompts, max_new_tokens=None, temperature=0.0):
        self.calls["generate"] += 1
        return self.inner.generate(prompts, max_new_tokens=max_new_tokens, temperature=temperature)

    def next_token_top(self, prompts, k):
        if not hasattr(self.inner, "next_token_top"):
            raise NotImplementedError(
                f"the {self.inner.name!r} backend cannot list next-token log-probabilities; OpenAI-style "
                "logprobs need teacher.backend=hf or builtin")
        self.calls["next_token_top"] += 1
        return self.inner.next_token_top(prompts, k)


class _Failed:
    """One request's exception inside a fused batch. ``@serve.batch`` would fail every
    request of the batch on a raised exception, so failures travel as values and are
    raised again for their own request only."""

    def __init__(self, exc: BaseException):
        self.exc = exc


def _split(flat: list, sizes: list[int]) -> list[list]:
    out, at = [], 0
    for n in sizes:
        out.append(flat[at:at + n])
        at += n
    return out


# Grouping keys (request index, request) -> group: only requests that the teacher would
# treat identically share a call.
def _key_any(i: int, r: tuple) -> Any:
    return 0


def _key_generate(i: int, r: tuple) -> Any:
    return (r[1], r[2])  # max_new_tokens, temperature


def _key_analyse(i: int, r: tuple) -> Any:
    # locate=random draws its steps from one RNG over the call's items, so fusing would make
    # a request's random steps depend on its batch-mates: those requests are never fused.
    return (r[1], r[2], i if r[1] == "random" else -1)


@serve.deployment(name=MODEL_DEPLOYMENT)
class TeacherModel:
    """One replica: the backend, the Teacher, and the batching around them.

    Requests are tuples (one per caller); ``_run_fused`` groups the requests of a batch
    that can share one call (same ``locate``, same generation settings), concatenates
    their lists, calls the teacher once per group and splits the results back.
    """

    def __init__(self, teacher_cfg: dict[str, Any], builtin_dir: str | None = None):
        from .backend import make_backend
        from .teacher import Teacher

        self.cfg = TeacherConfig.model_validate(teacher_cfg)
        s = self.cfg.serve
        t0 = time.time()
        self.backend = _CountingBackend(make_backend(self.cfg, builtin_dir))
        self.teacher = Teacher(self.backend, self.cfg)
        self.load_s = time.time() - t0
        self.batching = s.batching
        # The decorators' sizes are placeholders: the configured ones are set here, per replica.
        for fn in (self._analyse_b, self._annotate_b, self._score_b, self._generate_b, self._top_b):
            fn.set_max_batch_size(s.max_batch_size)
            fn.set_batch_wait_timeout_s(s.batch_wait_timeout_s)
        # One backend call at a time per replica: the model is one device's worth of compute,
        # and concurrent forward passes would only contend for it (and for CPU threads).
        self._lock = asyncio.Lock()
        self.metrics = TeacherMetrics(("requests", "latency_s", "items", "batch_requests"))
        self.stats: dict[str, _Tally[str]] = {"requests": _Tally(), "errors": _Tally(), "items": _Tally(),
                                              "teacher_calls": _Tally()}
        self.max_fused: _Tally[str] = _Tally()
        try:
            ctx = serve.get_replica_context()
            self.replica = ctx.replica_id.unique_id
        except Exception:  # noqa: BLE001 - outside Serve (direct construction in a test)
            self.replica = f"local-{os.getpid()}"
        log.info("teacher replica %s: backend %s (%s) loaded in %.1fs, batching=%s", self.replica,
                 self.backend.name, served_model_name(self.cfg), self.load_s, self.batching)

    # ------------------------------------------------------------------ info
    async def info(self) -> dict[str, Any]:
        """What /health reports about this replica (the one that answered)."""
        import ray

        s = self.cfg.serve
        return {"replica": self.replica, "pid": os.getpid(),
                "node_id": ray.get_runtime_context().get_node_id() if ray.is_initialized() else None,
                "backend": self.backend.name, "model": served_model_name(self.cfg),
                "prompt_version": self.cfg.prompt_version, "device": str(getattr(self.backend.inner, "device", "")),
                "load_s": round(self.load_s, 2), "batching": self.batching, "max_batch_size": s.max_batch_size,
                "batch_wait_timeout_s": s.batch_wait_timeout_s, "stats": self.get_stats()}

    def get_stats(self) -> dict[str, Any]:
        """Counts since the replica started: requests, teacher calls (one per fused group),
        backend calls (score_options / generate / next_token_top), items, largest fusion."""
        return {k: dict(v) for k, v in self.stats.items()} | {
            "backend_calls": dict(self.backend.calls), "max_fused_requests": dict(self.max_fused)}

    async def stats_now(self) -> dict[str, Any]:
        return self.get_stats()

    # ------------------------------------------------------------------ public methods
    async def analyse(self, items: list[dict[str, Any]], locate: str = "switch", seed: int = 0) -> "list[Analysis]":
        if locate not in ("switch", "which_step", "random"):
            raise ValueError(f"unknown locate {locate!r}; use switch, which_step or random")
        return await self._serve("analyse", len(items), self._analyse_b, self._analyse_fused,
                                 (list(items), locate, int(seed)))

    async def annotate(self, samples: list[dict[str, Any]]) -> list[tuple[list[str], str]]:
        return await self._serve("annotate", len(samples), self._annotate_b, self._annotate_fused, (list(samples),))

    async def score(self, prompts: list[str], options: list[list[str]]) -> list[list[float]]:
        if len(prompts) != len(options):
            raise ValueError(f"{len(prompts)} prompts but {len(options)} option lists")
        return await self._serve("score", len(prompts), self._score_b, self._score_fused,
                                 (list(prompts), [list(o) for o in options]))

    async def generate(self, prompts: list[str], max_new_tokens: int | None = None,
                       temperature: float = 0.0) -> list[str]:
        return await self._serve("generate", len(prompts), self._generate_b, self._generate_fused,
                                 (list(prompts), max_new_tokens, float(temperature)))

    async def next_token_top(self, prompts: list[str], k: int) -> list[list[tuple[str, float]]]:
        if not hasattr(self.backend.inner, "next_token_top"):
            self.backend.next_token_top([], k)  # raises the NotImplementedError that explains it
        return await self._serve("next_token_top", len(prompts), self._top_b, self._top_fused,
                                 (list(prompts), max(1, int(k))))

    # ------------------------------------------------------------------ batched or not
    async def _serve(self, route: str, n_items: int, batched: Callable, fused: Callable, req: tuple) -> Any:
        t0 = time.perf_counter()
        status = "error"
        try:
            if self.batching:
                out = await batched(req)
            else:
                out = (await self._run_fused(route, [req], fused, _key_any))[0]
            if isinstance(out, _Failed):
                raise out.exc
            status = "ok"
            return out
        finally:
            self.stats["requests"][route] += 1
            self.stats["items"][route] += n_items
            if status != "ok":
                self.stats["errors"][route] += 1
            self.metrics.inc("requests", route=route, status=status)
            self.metrics.inc("items", n_items, route=route)
            self.metrics.observe("latency_s", time.perf_counter() - t0, route=route)

    async def _run_fused(self, route: str, reqs: list[tuple], fused: Callable[[list[tuple]], list],
                         key: Callable[[int, tuple], Any]) -> list:
        """Group ``reqs`` by ``key``, call ``fused`` once per group (in a thread, so the
        event loop keeps accepting requests and filling the next batch meanwhile), and
        return one result (or ``_Failed``) per request. A failing group is retried request
        by request, so one bad request cannot fail its batch-mates."""
        groups: dict[Any, list[int]] = defaultdict(list)
        for i, r in enumerate(reqs):
            groups[key(i, r)].append(i)
        out: list = [None] * len(reqs)
        async with self._lock:
            for idx in groups.values():
                sub = [reqs[i] for i in idx]
                self.max_fused[route] = max(self.max_fused[route], len(sub))
                self.metrics.observe("batch_requests", len(sub), route=route)
                try:
                    self.stats["teacher_calls"][route] += 1
                    res = await asyncio.to_thread(fused, sub)
                except Exception as e:  # noqa: BLE001 - isolated below, raised per request
                    if len(sub) == 1:
                        res = [_Failed(e)]
                    else:
                        res = []
                        for r in sub:
                            self.stats["teacher_calls"][route] += 1
                            try:
                                res.append((await asyncio.to_thread(fused, [r]))[0])
                            except Exception as e1:  # noqa: BLE001
                                res.append(_Failed(e1))
                for i, v in zip(idx, res):
                    out[i] = v
        return out

    # The fused bodies: plain functions over a list of requests, run in a worker thread.
    def _analyse_fused(self, reqs: list[tuple]) -> "list[list[Analysis]]":
        _, locate, seed = reqs[0]
        flat = [it for items, _, _ in reqs for it in items]
        return _split(self.teacher.analyse(flat, locate, seed) if flat else [], [len(r[0]) for r in reqs])

    def _annotate_fused(self, reqs: list[tuple]) -> list[list[tuple[list[str], str]]]:
        flat = [s for (samples,) in reqs for s in samples]
        return _split(self.teacher.annotate(flat) if flat else [], [len(r[0]) for r in reqs])

    def _score_fused(self, reqs: list[tuple]) -> list[list[list[float]]]:
        prompts = [p for ps, _ in reqs for p in ps]
        options = [o for _, os_ in reqs for o in os_]
        return _split(self.backend.score_options(prompts, options) if prompts else [], [len(r[0]) for r in reqs])

    def _generate_fused(self, reqs: list[tuple]) -> list[list[str]]:
        _, max_new, temp = reqs[0]
        flat = [p for ps, _, _ in reqs for p in ps]
        got = self.backend.generate(flat, max_new_tokens=max_new, temperature=temp) if flat else []
        return _split(got, [len(r[0]) for r in reqs])

    def _top_fused(self, reqs: list[tuple]) -> list[list[list[tuple[str, float]]]]:
        k = max(r[1] for r in reqs)
        flat = [p for ps, _ in reqs for p in ps]
        got = self.backend.next_token_top(flat, k) if flat else []
        return [[top[:kr] for top in part] for part, (_, kr) in zip(_split(got, [len(r[0]) for r in reqs]), reqs)]

    # ------------------------------------------------------------------ @serve.batch entry points
    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def _analyse_b(self, reqs: list[tuple]) -> list:
        return await self._run_fused("analyse", reqs, self._analyse_fused, _key_analyse)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def _annotate_b(self, reqs: list[tuple]) -> list:
        return await self._run_fused("annotate", reqs, self._annotate_fused, _key_any)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def _score_b(self, reqs: list[tuple]) -> list:
        return await self._run_fused("score", reqs, self._score_fused, _key_any)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def _generate_b(self, reqs: list[tuple]) -> list:
        return await self._run_fused("generate", reqs, self._generate_fused, _key_generate)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def _top_b(self, reqs: list[tuple]) -> list:
        return await self._run_fused("next_token_top", reqs, self._top_fused, _key_any)


# =========================================================================== HTTP schemas
class _Req(BaseModel):
    model_config = ConfigDict(extra="ignore")  # clients may send more (task, image, user, seed, ...)


class AnalyseItem(_Req):
    id: str | int
    question: str
    steps: list[str]
    prediction: str | None = None
    gold: str
    options: list[str] | None = None


class AnalyseRequest(_Req):
    items: list[AnalyseItem]
    locate: Literal["switch", "which_step", "random"] = "switch"
    seed: int = 0


class AnnotateSample(_Req):
    id: str | int
    instruction: str
    response: str


class AnnotateRequest(_Req):
    samples: list[AnnotateSample]


class ScoreRequest(_Req):
    prompts: list[str]
    options: list[list[str]]


class ChatMessage(_Req):
    role: str = "user"
    content: str | list[dict[str, Any]] | None = None


class _OpenAICommon(_Req):
    model: str | None = None
    max_tokens: int | None = Field(None, ge=1, le=4096)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    n: int = Field(1, ge=1)
    stream: bool = False
    stop: str | list[str] | None = None


class ChatRequest(_OpenAICommon):
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, le=4096)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)


class CompletionRequest(_OpenAICommon):
    prompt: str | list[str]
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    echo: bool = False


# =========================================================================== HTTP errors
class ApiError(Exception):
    """An HTTP error with an OpenAI-shaped JSON body."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def response(self) -> JSONResponse:
        return JSONResponse({"error": {"message": self.message, "type": self.type, "param": self.param,
                                       "code": self.code}}, status_code=self.status)


def _cause(e: BaseException) -> BaseException:
    """The replica's own exception behind a Ray wrapper (RayTaskError keeps it in .cause)."""
    seen = 0
    while getattr(e, "cause", None) is not None and seen < 5:
        e = e.cause  # type: ignore[assignment]
        seen += 1
    return e


def _short(e: BaseException, limit: int = 500) -> str:
    """A one-paragraph message: never a traceback (Ray's wrappers put one in str())."""
    text = str(e).strip()
    if "Traceback (most recent call last)" in text:
        text = text.split("Traceback (most recent call last)")[0].strip() or type(e).__name__
    lines = [ln for ln in text.splitlines() if ln.strip()]
    text = lines[-1] if lines else type(e).__name__
    return text[:limit]


def http_error_for(e: BaseException) -> ApiError:
    """Map a failure of a model call to an HTTP status (docs/serving.md lists them)."""
    from ray.exceptions import RayActorError
    from ray.serve.exceptions import (
        BackPressureError,
        DeploymentUnavailableError,
        ReplicaUnavailableError,
    )

    unavailable = (BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError, RayActorError)
    from .backend import TeacherError

    c = _cause(e)
    msg = _short(c)
    if isinstance(c, TeacherError):  # the teacher's own upstream (an OpenAI-compatible server) failed
        return ApiError(502, f"the teacher's backend failed: {msg}", "upstream_error", code="backend_failed")
    if isinstance(c, NotImplementedError):
        return ApiError(501, msg, "not_implemented", code="not_supported_by_backend")
    if isinstance(c, unavailable) or isinstance(e, unavailable):
        return ApiError(503, f"the teacher is overloaded or restarting, retry later: {msg}", "overloaded",
                        code="unavailable")
    if isinstance(c, ValueError):
        return ApiError(422, f"the teacher refused the input: {msg}", code="invalid_input")
    return ApiError(500, f"internal error in the teacher ({type(c).__name__}): {msg}", "internal_error",
                    code="internal_error")


api = FastAPI(title="mmtune teacher", version="1",
              description="The mmtune teacher: answer switch, skill analysis, annotation; OpenAI-compatible "
                          "completions. See docs/serving.md.")


@api.exception_handler(ApiError)
async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return exc.response()


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    parts = []
    for err in exc.errors()[:10]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{loc or 'body'}: {err.get('msg', 'invalid')}")
    first = exc.errors()[0] if exc.errors() else {}
    param = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
    return ApiError(422, "invalid request: " + "; ".join(parts), param=param, code="invalid_request").response()


@api.exception_handler(StarletteHTTPException)
async def _http_exception(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    if isinstance(exc, _BodyTooLarge):
        return exc.error.response()
    return ApiError(exc.status_code, str(exc.detail), "invalid_request_error").response()


# --------------------------------------------------------------------------- body size limit
# Item counts and text lengths are checked after the JSON is parsed; the raw body is capped
# before that, so one huge request cannot fill an ingress replica's memory. The limit is
# teacher.serve.max_body_bytes where the config has that key, else this default.
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
_BODY_LIMIT = {"bytes": DEFAULT_MAX_BODY_BYTES}


def max_body_bytes(t: TeacherConfig) -> int:
    return int(getattr(t.serve, "max_body_bytes", None) or DEFAULT_MAX_BODY_BYTES)


def body_too_large(n: int, limit: int, streamed: bool = False) -> ApiError:
    got = f"more than {limit} bytes (read {n} so far)" if streamed else f"{n} bytes"
    return ApiError(413, f"the request body has {got}; at most {limit} bytes per request "
                         f"(teacher.serve.max_body_bytes): split the request", code="body_too_large")


class _BodyTooLarge(StarletteHTTPException):
    """Raised while FastAPI reads a streamed body (it re-raises HTTP exceptions as they are)."""

    def __init__(self, error: ApiError):
        super().__init__(error.status, error.message)
        self.error = error


class BodySizeLimit:
    """ASGI middleware: a body over the limit is refused with 413 before it is read, by its
    Content-Length, or as soon as a body sent without one passes the limit."""

    def __init__(self, app: Any, limit: int | None = None):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit if self.limit is not None else _BODY_LIMIT["bytes"]
        for name, value in scope.get("headers") or []:
            if name.lower() == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > limit:
                    await body_too_large(declared, limit).response()(scope, receive, send)
                    return
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            message = await receive()
            if message.get("type") == "http.request":
                seen += len(message.get("body") or b"")
                if seen > limit:
                    raise _BodyTooLarge(body_too_large(seen, limit, streamed=True))
            return message

        await self.app(scope, limited, send)


api.add_middleware(BodySizeLimit)


_HTTP_METRICS: TeacherMetrics | None = None


@api.middleware("http")
async def _count_http(request: Request, call_next):
    global _HTTP_METRICS
    if _HTTP_METRICS is None:
        _HTTP_METRICS = TeacherMetrics(("http_requests",))
    try:
        response = await call_next(request)
    except Exception as e:
        log.exception("teacher ingress: unhandled error on %s", request.url.path)
        response = ApiError(500, f"internal error in the teacher ingress ({type(e).__name__}): {_short(e)}",
                            "internal_error", code="internal_error").response()
    route = request.scope.get("route")
    path = getattr(route, "path", None) or "other"  # the route template: bounded label values
    _HTTP_METRICS.inc("http_requests", path=path, code=str(response.status_code))
    return response


# =========================================================================== ingress
def _message_text(m: ChatMessage, i: int) -> str:
    if m.content is None:
        return ""
    if isinstance(m.content, str):
        return m.content
    texts = []
    for j, part in enumerate(m.content):
        if part.get("type") != "text":
            raise ApiError(400, f"messages.{i}.content.{j}: only text parts are supported (the teacher reads "
                                f"text only), got type {part.get('type')!r}", param=f"messages.{i}.content.{j}")
        texts.append(str(part.get("text", "")))
    return "".join(texts)


def _apply_stop(text: str, stop: str | list[str] | None) -> tuple[str, bool]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    cut = min((text.find(s) for s in stops if s and s in text), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def _finite(x: Any) -> Any:
    """JSON has no inf/NaN: -inf is LOGPROB_FLOOR ("very unlikely"), the rest null."""
    if isinstance(x, float) and not math.isfinite(x):
        return LOGPROB_FLOOR if x == float("-inf") else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


@serve.deployment(name=INGRESS_DEPLOYMENT)
@serve.ingress(api)
class TeacherIngress:
    def __init__(self, teacher_cfg: dict[str, Any], model: DeploymentHandle, app_name: str = ""):
        self.cfg = TeacherConfig.model_validate(teacher_cfg)
        self.model = model
        self.app_name = app_name
        self.limits = self.cfg.serve
        _BODY_LIMIT["bytes"] = max_body_bytes(self.cfg)  # this replica's process serves this app only

    # ------------------------------------------------------------------ limits
    def _count(self, n: int, what: str) -> None:
        lim = self.limits.max_items_per_request
        if n > lim:
            raise ApiError(413, f"{what} has {n} entries; at most {lim} per request "
                                f"(teacher.serve.max_items_per_request): split the request",
                           param=what, code="too_many_items")

    def _text(self, value: str | None, field: str) -> None:
        lim = self.limits.max_text_chars
        if value is not None and len(value) > lim:
            raise ApiError(422, f"{field} has {len(value)} characters; at most {lim} "
                                f"(teacher.serve.max_text_chars)", param=field, code="text_too_long")

    async def _call(self, method: str, *args: Any) -> Any:
        try:
            return await getattr(self.model, method).remote(*args)
        except ApiError:
            raise
        except Exception as e:  # noqa: BLE001 - mapped to a JSON status
            err = http_error_for(e)
            log.warning("teacher %s failed: HTTP %d %s", method, err.status, err.message)
            raise err from None

    # ------------------------------------------------------------------ routes
    @api.get("/health")
    async def health(self) -> dict[str, Any]:
        info = await self._call("info")
        return {"status": "ok", "app": self.app_name, "backend": info["backend"], "model": info["model"],
                "prompt_version": info["prompt_version"], "replica": info,
                "limits": {"max_items_per_request": self.limits.max_items_per_request,
                           "max_text_chars": self.limits.max_text_chars,
                           "max_body_bytes": _BODY_LIMIT["bytes"]}}

    @api.post("/v1/analyse")
    async def analyse(self, req: AnalyseRequest) -> dict[str, Any]:
        self._count(len(req.items), "items")
        for i, it in enumerate(req.items):
            self._count(len(it.steps), f"items.{i}.steps")
            self._count(len(it.options or []), f"items.{i}.options")
            for name in ("question", "gold", "prediction"):
                self._text(getattr(it, name), f"items.{i}.{name}")
            self._text(str(it.id), f"items.{i}.id")
            for j, s in enumerate(it.steps):
                self._text(s, f"items.{i}.steps.{j}")
            for j, o in enumerate(it.options or []):
                self._text(o, f"items.{i}.options.{j}")
        items = [it.model_dump() | {"id": str(it.id)} for it in req.items]
        got = await self._call("analyse", items, req.locate, req.seed) if items else []
        return {"analyses": [_finite(a.to_dict()) for a in got]}

    @api.post("/v1/annotate")
    async def annotate(self, req: AnnotateRequest) -> dict[str, Any]:
        self._count(len(req.samples), "samples")
        for i, s in enumerate(req.samples):
            for name in ("instruction", "response"):
                self._text(getattr(s, name), f"samples.{i}.{name}")
            self._text(str(s.id), f"samples.{i}.id")
        samples = [s.model_dump() | {"id": str(s.id)} for s in req.samples]
        got = await self._call("annotate", samples) if samples else []
        return {"annotations": [{"id": s["id"], "skills": skills, "raw": raw}
                                for s, (skills, raw) in zip(samples, got)]}

    @api.post("/v1/score")
    async def score(self, req: ScoreRequest) -> dict[str, Any]:
        self._count(len(req.prompts), "prompts")
        if len(req.options) != len(req.prompts):
            raise ApiError(422, f"{len(req.prompts)} prompts but {len(req.options)} option lists: give one list "
                                "of options per prompt", param="options", code="invalid_request")
        for i, (p, opts) in enumerate(zip(req.prompts, req.options)):
            self._text(p, f"prompts.{i}")
            self._count(len(opts), f"options.{i}")
            if not opts:
                raise ApiError(422, f"options.{i} is empty: each prompt needs at least one option",
                               param=f"options.{i}", code="invalid_request")
            for j, o in enumerate(opts):
                self._text(o, f"options.{i}.{j}")
        got = await self._call("score", req.prompts, req.options) if req.prompts else []
        return {"logprobs": _finite(got)}

    @api.get("/v1/models")
    async def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [{"id": served_model_name(self.cfg), "object": "model",
                                            "created": 0, "owned_by": "mmtune"}]}

    def _openai_checks(self, req: _OpenAICommon) -> None:
        if req.stream:
            raise ApiError(400, "stream=true is not supported by the mmtune teacher", param="stream",
                           code="unsupported")
        if req.n != 1:
            raise ApiError(400, "n > 1 is not supported by the mmtune teacher", param="n", code="unsupported")
        stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        self._count(len(stops), "stop")
        for j, s in enumerate(stops):
            self._text(s, f"stop.{j}")

    async def _complete(self, prompts: list[str], max_tokens: int | None, temperature: float,
                        k: int | None) -> tuple[list[str], list[list[tuple[str, float]]] | None]:
        """Texts and, when ``k`` is not None, the first generated token's top-k list.

        A request for one token at temperature 0 with logprobs (what ``OpenAIBackend``
        sends to score options) is answered from the top list alone: the greedy token IS
        its first entry, so no generate call is needed."""
        tops = await self._call("next_token_top", prompts, max(k, 1)) if k is not None else None
        if tops is not None and max_tokens == 1 and temperature == 0.0:
            return [t[0][0] if t else "" for t in tops], tops
        texts = await self._call("generate", prompts, max_tokens, temperature)
        return texts, tops

    @api.post("/v1/chat/completions")
    async def chat_completions(self, req: ChatRequest) -> dict[str, Any]:
        self._openai_checks(req)
        self._count(len(req.messages), "messages")
        texts = [_message_text(m, i) for i, m in enumerate(req.messages)]
        for i, t in enumerate(texts):
            self._text(t, f"messages.{i}.content")
        # The teacher protocol sends one user message; several are joined as plain text (the
        # backend wraps the result in the model's chat template itself).
        prompt = "\n\n".join(t for t in texts if t)
        max_tokens = req.max_completion_tokens or req.max_tokens
        k = (req.top_logprobs or 0) if req.logprobs else None
        out, tops = await self._complete([prompt], max_tokens, req.temperature, k)
        text, _ = _apply_stop(out[0], req.stop)
        logprobs = None
        if tops is not None:
            top = tops[0]
            first = top[0] if top else ("", LOGPROB_FLOOR)
            # Log-probabilities cover the first generated token only (what scoring needs).
            logprobs = {"content": [{"token": first[0], "logprob": first[1], "bytes": list(first[0].encode()),
                                     "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode())}
                                                      for t, lp in top[:k]]}]}
        return _finite({
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
            "model": served_model_name(self.cfg),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "logprobs": logprobs, "finish_reason": "stop"}]})

    @api.post("/v1/completions")
    async def completions(self, req: CompletionRequest) -> dict[str, Any]:
        self._openai_checks(req)
        if req.echo:
            raise ApiError(400, "echo=true is not supported by the mmtune teacher", param="echo", code="unsupported")
        prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
        self._count(len(prompts), "prompt")
        for i, p in enumerate(prompts):
            self._text(p, "prompt" if isinstance(req.prompt, str) else f"prompt.{i}")
        k = req.logprobs
        out, tops = await self._complete(prompts, req.max_tokens, req.temperature, k)
        choices = []
        for i, text in enumerate(out):
            text, _ = _apply_stop(text, req.stop)
            lp = None
            if tops is not None:
                top = tops[i]
                first = top[0] if top else ("", LOGPROB_FLOOR)
                lp = {"tokens": [first[0]], "token_logprobs": [first[1]],
                      "top_logprobs": [{t: v for t, v in top[:k]}], "text_offset": [0]}
            choices.append({"index": i, "text": text, "logprobs": lp, "finish_reason": "stop"})
        return _finite({"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion",
                        "created": int(time.time()), "model": served_model_name(self.cfg), "choices": choices})


# =========================================================================== building and running
def _cluster_gpus() -> float:
    import ray

    if not ray.is_initialized():
        log.warning("Ray is not initialised while building the teacher app: assuming no GPUs")
        return 0.0
    return float(ray.cluster_resources().get("GPU", 0.0))


def _absolute_if_local(p: str | None) -> str | None:
    """Replicas may start in another working directory: a local path is made absolute,
    a hub id is left alone."""
    if p and Path(p).expanduser().exists():
        return str(Path(p).expanduser().resolve())
    return p


def build_app(cfg: RunConfig, builtin_dir: str | Path | None = None) -> serve.Application:
    """The teacher application (ingress bound to the model deployment), not yet running.

    ``builtin_dir`` is the trained built-in teacher's directory, needed when
    ``teacher.backend=builtin`` (``start_teacher`` and ``app_builder`` make it).
    """
    t = cfg.teacher
    if t.backend == "builtin" and builtin_dir is None:
        raise ValueError("teacher.backend=builtin needs the built-in teacher's directory: pass builtin_dir "
                         "(mmtune.teacher.builtin.ensure_builtin_teacher(cfg) makes it), or use start_teacher / "
                         "app_builder, which make it for you")
    tdict = t.model_dump(mode="json")
    if t.backend == "hf":
        tdict["name_or_path"] = _absolute_if_local(t.name_or_path)
    s, a = t.serve, t.autoscaling
    actor: dict[str, Any] = {"num_cpus": s.num_cpus_per_replica}
    gpus = _cluster_gpus()
    if gpus > 0 and s.num_gpus_per_replica > 0 and t.backend != "openai":
        actor["num_gpus"] = s.num_gpus_per_replica  # only where Ray reports GPUs: CPU clusters still schedule
    # A replica must accept a full batch while the previous one runs, or @serve.batch never fills.
    max_ongoing = max(2 * s.max_batch_size, 8)
    scaling: dict[str, Any] = (
        {"num_replicas": a.min_replicas} if a.min_replicas == a.max_replicas else
        {"autoscaling_config": {"min_replicas": a.min_replicas, "max_replicas": a.max_replicas,
                                "target_ongoing_requests": a.target_ongoing_requests}})
    # A stopping replica polls for its in-flight requests every wait-loop period (Serve's
    # default 2 s), so even an idle app took seconds to delete: stop_teacher frees the
    # teacher's devices before training, where those seconds are pure waiting.
    drain = {"graceful_shutdown_wait_loop_s": 0.25}
    model = TeacherModel.options(ray_actor_options=actor, max_ongoing_requests=max_ongoing, **drain,
                                 **scaling).bind(tdict, str(Path(builtin_dir).resolve()) if builtin_dir else None)
    ingress = TeacherIngress.options(ray_actor_options={"num_cpus": INGRESS_CPUS}, num_replicas=1, **drain,
                                     max_ongoing_requests=max(64, 4 * max_ongoing * a.max_replicas))
    return ingress.bind(tdict, model, s.app_name)


class BuilderArgs(BaseModel):
    """``args:`` of the application in a Serve config file (configs/serve_teacher.yaml)."""

    model_config = ConfigDict(extra="forbid")
    config: str | None = Field(None, description="mmtune run config (YAML); null = the defaults")
    overrides: list[str] = Field(default_factory=list, description="KEY=VALUE overrides, as on the command line")
    builtin_dir: str | None = Field(None, description="an already trained built-in teacher; default: trained/cached")


def app_builder(args: dict[str, Any]) -> serve.Application:
    """Application builder for ``serve run`` / ``serve deploy`` config files
    (``import_path: mmtune.teacher.serve:app_builder``)."""
    b = BuilderArgs.model_validate(dict(args or {}))
    cfg = load_config(b.config, b.overrides)
    builtin_dir = b.builtin_dir
    if cfg.teacher.backend == "builtin" and builtin_dir is None:
        from .builtin import ensure_builtin_teacher

        builtin_dir = str(ensure_builtin_teacher(cfg))
    return build_app(cfg, builtin_dir)


def teacher_url(cfg: RunConfig) -> str:
    """The app's base URL as a client on this machine reaches it."""
    t = cfg.teacher
    host = "127.0.0.1" if t.host in ("0.0.0.0", "::", "") else t.host
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{t.port}{t.serve.route_prefix.rstrip('/')}"


def wait_healthy(url: str, timeout_s: float = 120.0) -> dict[str, Any]:
    """GET ``url``/health until it answers 200; its JSON, or TimeoutError."""
    import json

    deadline = time.time() + timeout_s
    last = "no answer"
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=10) as r:
                if r.status == 200:
                    return json.loads(r.read())
                last = f"HTTP {r.status}"
        except urllib.error.HTTPError as e:
            last = f"HTTP {e.code}: {e.read()[:200]!r}"
        except (urllib.error.URLError, OSError) as e:
            last = str(e)
        time.sleep(0.5)
    raise TimeoutError(f"the teacher at {url} was not healthy after {timeout_s:.0f}s ({last}). If Serve was already "
                       "running on this cluster with other http_options, they were kept (they are fixed at the "
                       "first serve.start): run `serve shutdown` or use the port it listens on")


def start_teacher(cfg: RunConfig, builtin_dir: str | Path | None = None, blocking: bool = False, *,
                  access_log: bool = True, health_timeout_s: float = 300.0,
                  progress: Callable[[str], None] = print) -> DeploymentHandle:
    """Start Serve (bound to ``teacher.host``:``teacher.port``; 127.0.0.1 by default), run
    the app under ``teacher.serve.app_name`` / ``route_prefix``, wait until /health answers,
    print the URL, and return the model deployment's handle (for :class:`ServedTeacher`).

    ``blocking=True`` then serves until Ctrl-C or SIGTERM, and deletes the app on the way out.
    Ray must be initialised by the caller (``mmtune.runtime.init_ray``).
    """
    t = cfg.teacher
    if t.backend == "builtin" and builtin_dir is None:
        from .builtin import ensure_builtin_teacher

        builtin_dir = ensure_builtin_teacher(cfg, progress=progress)
    serve.start(http_options={"host": t.host, "port": t.port})
    t0 = time.time()
    serve.run(build_app(cfg, builtin_dir), name=t.serve.app_name, route_prefix=t.serve.route_prefix,
              logging_config={"log_level": cfg.run.log_level, "enable_access_log": access_log})
    url = teacher_url(cfg)
    health = wait_healthy(url, health_timeout_s)
    rep = health.get("replica", {})
    progress(f"[teacher] serving {health.get('backend')} teacher {health.get('model')} at {url} "
             f"(app {t.serve.app_name!r}, ready in {time.time() - t0:.1f}s, batching={rep.get('batching')}; "
             f"bound to {t.host}:{t.port})")
    handle = teacher_handle(cfg)
    if blocking:
        _serve_forever(cfg, progress)
    return handle


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _serve_forever(cfg: RunConfig, progress: Callable[[str], None]) -> None:
    if threading.current_thread() is threading.main_thread():
        # `ray job stop` and container runtimes send SIGTERM: treat it like Ctrl-C.
        signal.signal(signal.SIGTERM, _interrupt)
    progress("[teacher] Ctrl-C stops it")
    try:
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        progress("[teacher] stopping")
        stop_teacher(cfg)


def teacher_handle(cfg: RunConfig) -> DeploymentHandle:
    """The model deployment's handle in the running app ``teacher.serve.app_name``."""
    return serve.get_deployment_handle(MODEL_DEPLOYMENT, app_name=cfg.teacher.serve.app_name)


def stop_teacher(cfg: RunConfig) -> None:
    """Delete the teacher app (the pipeline frees the teacher's resources while it trains).
    Serve itself (controller, proxies) stays up; ``serve.shutdown()`` stops those too."""
    try:
        serve.delete(cfg.teacher.serve.app_name)
    except Exception as e:  # noqa: BLE001 - nothing to stop is not an error
        log.info("stop_teacher: %s", e)


# =========================================================================== synchronous client
class ServedTeacher:
    """The pipeline's teacher when it runs on Serve: the :class:`Teacher` calls, synchronous.

    Long lists are cut into requests of ``chunk_size`` that are all sent at once, so that
    replicas fuse them into large batches and an autoscaled deployment can spread them.
    Results come back in order.
    """

    def __init__(self, handle: DeploymentHandle, chunk_size: int = 16, timeout_s: float | None = None):
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.handle = handle
        self.chunk_size = chunk_size
        self.timeout_s = timeout_s

    @classmethod
    def from_config(cls, cfg: RunConfig, **kw: Any) -> "ServedTeacher":
        return cls(teacher_handle(cfg), **kw)

    def _map(self, method: str, lists: Sequence[Sequence[Any]], *extra: Any) -> list:
        n = len(lists[0])
        calls = [getattr(self.handle, method).remote(*[list(x[i:i + self.chunk_size]) for x in lists], *extra)
                 for i in range(0, n, self.chunk_size)]
        out: list = []
        for c in calls:
            out += c.result(timeout_s=self.timeout_s)
        return out

    def analyse(self, items: Sequence[dict[str, Any]], locate: str = "switch", seed: int = 0) -> "list[Analysis]":
        return self._map("analyse", [items], locate, seed)

    def annotate(self, samples: Sequence[dict[str, Any]]) -> list[tuple[list[str], str]]:
        return [(list(s), r) for s, r in self._map("annotate", [samples])]

    def score_options(self, prompts: Sequence[str], options: Sequence[Sequence[str]]) -> list[list[float]]:
        if len(prompts) != len(options):
            raise ValueError(f"{len(prompts)} prompts but {len(options)} option lists")
        return self._map("score", [prompts, [list(o) for o in options]])

    def generate(self, prompts: Sequence[str], max_new_tokens: int | None = None,
                 temperature: float = 0.0) -> list[str]:
        return self._map("generate", [prompts], max_new_tokens, temperature)

    def stats(self) -> dict[str, Any]:
        """Counts of the replica that answers (one of them when there are several)."""
        return self.handle.stats_now.remote().result(timeout_s=self.timeout_s)


__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "INGRESS_DEPLOYMENT",
    "METRICS",
    "MODEL_DEPLOYMENT",
    "ApiError",
    "BodySizeLimit",
    "BuilderArgs",
    "ServedTeacher",
    "TeacherIngress",
    "TeacherMetrics",
    "TeacherModel",
    "app_builder",
    "build_app",
    "http_error_for",
    "metric_names",
    "served_model_name",
    "start_teacher",
    "stop_teacher",
    "teacher_handle",
    "teacher_url",
    "wait_healthy",
]
