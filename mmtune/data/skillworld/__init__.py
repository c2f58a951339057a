"""SkillWorld: the embedded benchmark, a seeded multimodal instruction world (docs/skillworld.md)."""

from .generate import (GENERATOR_VERSION, GENERIC_WEIGHTS, META_SCHEMA, allocate, generate_skillworld,
                       generate_task)
from .scenes import (COLORS, POSITIONS, SHAPES, SIZES, digit_pools, encode_png, render_digits, render_grid,
                     render_scene)
from .tasks import (CORPUS_TASKS, DEFAULT_TARGETS, RARE_SKILLS, SKILLS, STEPS, TARGET_TASKS, TASKS, StepKind,
                    Task, format_instruction, gold, resolve_targets)
from .verifier import answer_ok, first_wrong_step, majority_baseline, parse_step, step_ok

__all__ = [
    "GENERATOR_VERSION", "GENERIC_WEIGHTS", "META_SCHEMA", "allocate", "generate_skillworld", "generate_task",
    "COLORS", "POSITIONS", "SHAPES", "SIZES", "digit_pools", "encode_png", "render_digits", "render_grid",
    "render_scene", "CORPUS_TASKS", "DEFAULT_TARGETS", "RARE_SKILLS", "SKILLS", "STEPS", "TARGET_TASKS",
    "TASKS", "StepKind", "Task", "format_instruction", "gold", "resolve_targets", "answer_ok",
    "first_wrong_step", "majority_baseline", "parse_step", "step_ok",
]
