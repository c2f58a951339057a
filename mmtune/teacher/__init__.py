"""The teacher: answer switch, skill analysis and corpus annotation over pluggable backends,
served with Ray Serve (``serve.py``). See docs/teacher.md.

Names are imported lazily: the Serve ingress replica imports ``mmtune.teacher.serve`` and
must not pay for torch and transformers, which only the model replicas need.
"""

from importlib import import_module
from typing import Any

_WHERE = {
    "LOGPROB_FLOOR": "backend", "HFBackend": "backend", "OpenAIBackend": "backend", "TeacherBackend": "backend",
    "TeacherError": "backend", "make_backend": "backend", "Analysis": "teacher", "Teacher": "teacher",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
