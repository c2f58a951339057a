"""Diagnosis: the student answers the validation set step by step (Ray Data), and the
teacher finds each wrong answer's mistake step and missing skill. See docs/teacher.md."""

from .diagnose import (
                       DIAGNOSIS_SCHEMA,
                       NoErrors,
                       analyse_all,
                       collect_errors,
                       diagnose,
                       read_diagnosis,
                       require_errors,
                       write_diagnosis,
)

__all__ = ["DIAGNOSIS_SCHEMA", "NoErrors", "analyse_all", "collect_errors", "diagnose", "read_diagnosis",
           "require_errors", "write_diagnosis"]
