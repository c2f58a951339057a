"""Fixtures of the teacher tests: a tiny random HF Llama, and the Serve app over it.

The model is random, so its replies are garbage: the tests check shapes, statuses, HTTP
codes and batching, and the ``unparsed`` path, never content. The built-in teacher
(``ensure_builtin_teacher``) trains for minutes and is never used here.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest

from mmtune.teacher.prompts import NAMES, load_template

TINY_PROMPTS = [
    "Question: How many red circles are in the image?\nCandidates:\nA. 3\nB. 4\nAnswer: A",
    "Steps:\n1. There are 3 red circles.\n2. So the answer is 3.\nSkill: counting objects of a given colour",
    "Instruction: Read the digit.\nResponse: The digit is 7.\nSkills: reading digits; recognising shapes",
    "Which step (1 to 3) is the first wrong one? Reply with its number only.\nStep: 2",
]


def make_tiny_teacher(out: Path) -> Path:
    """A 2-layer, 32-wide random Llama and a locally trained tokenizer, saved as an HF
    directory that ``HFBackend`` loads like any hub model."""
    from tests.tiny import make_tiny_llama

    out.mkdir(parents=True, exist_ok=True)
    return make_tiny_llama(out, (TINY_PROMPTS + [load_template(n).text for n in NAMES]) * 4)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wrong_items(n: int, steps: int = 2) -> list[dict]:
    """Wrong student answers: multiple choice and open, with one item without steps."""
    out = []
    for i in range(n):
        mc = i % 2 == 0
        out.append({"id": f"w{i}", "question": f"How many red circles are there? ({i})",
                    "steps": [f"There are {i % 5} red circles." for _ in range(steps)] if i != 1 else [],
                    "prediction": "B" if mc else str(i % 5), "gold": "A" if mc else str(i % 5 + 1),
                    "options": ["3", "4", "5"] if mc else None})
    return out


def serve_overrides(model_dir: Path, port: int, *extra: str) -> list[str]:
    return ["teacher.backend=hf", f"teacher.name_or_path={model_dir}", f"teacher.port={port}",
            "teacher.max_new_tokens=4", "teacher.parse_retries=1", "teacher.batch_size=64",
            "teacher.serve.num_cpus_per_replica=0.25", "teacher.serve.batch_wait_timeout_s=0.2",
            "teacher.serve.max_items_per_request=8", "teacher.serve.max_text_chars=2000",
            "run.log_level=WARNING", *extra]


@contextmanager
def serving(model_dir: Path, extras: Callable[[int], list[list[str]]] = lambda port: []):
    """The teacher app over ``model_dir`` on a free loopback port, started with
    ``start_teacher``; ``extras(port)`` gives override lists of more apps on the same Serve,
    deployed first without waiting, so that all replicas start in parallel. Serve is shut
    down on exit so that later test modules get their CPUs back."""
    from ray import serve

    from mmtune.config import load_config
    from mmtune.teacher.serve import build_app, start_teacher, teacher_url

    port = free_port()
    cfg = load_config(None, serve_overrides(model_dir, port))
    others = [load_config(None, o) for o in extras(port)]
    lines: list[str] = []
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        if others:
            serve.run_many([serve.RunTarget(build_app(c), name=c.teacher.serve.app_name,
                                            route_prefix=c.teacher.serve.route_prefix,
                                            logging_config={"enable_access_log": False}) for c in others],
                           wait_for_applications_running=False)
        handle = start_teacher(cfg, access_log=False, progress=lines.append, health_timeout_s=180)
        yield SimpleNamespace(cfg=cfg, url=teacher_url(cfg), handle=handle, lines=lines,
                              others={c.teacher.serve.app_name: c for c in others})
    finally:
        serve.shutdown()


@pytest.fixture(scope="session")
def tiny_teacher_dir(tmp_path_factory) -> Path:
    return make_tiny_teacher(tmp_path_factory.mktemp("tiny-teacher"))


@pytest.fixture(scope="module")
def served(ray_local, tiny_teacher_dir):
    """The teacher app: ``.cfg``, ``.url`` (base URL), ``.handle`` (model deployment)."""
    with serving(tiny_teacher_dir) as s:
        yield s
