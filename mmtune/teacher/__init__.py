"""The teacher: answer switch, skill analysis and corpus annotation over pluggable backends,
served with Ray Serve (``serve.py``). See docs/teacher.md."""

from .backend import (
           LOGPROB_FLOOR,
           HFBackend,
           OpenAIBackend,
           TeacherBackend,
           TeacherError,
           make_backend,
)
from .teacher import Analysis, Teacher

__all__ = [
           "LOGPROB_FLOOR",
           "Analysis",
           "HFBackend",
           "OpenAIBackend",
           "Teacher",
           "TeacherBackend",
           "TeacherError",
           "make_backend",
]
