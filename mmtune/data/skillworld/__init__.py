"""SkillWorld: the embedded benchmark, a seeded multimodal instruction world (docs/skillworld.md)."""

from .generate import (GENERATOR_VERSION, GENERIC_WEIGHTS, META_SCHEMA, allocate, generate_skillworld,
                       generate_task)
from .scenes import (COLORS, POSITIONS, SHAPES, SIZES, digit_pools, encode_png, render_digits, render_grid,
                     render_scene)
from .tasks import (CORPUS_TASKS, DEFAULT_TARGETS, FORMAT_SKILLS, RARE_SKILLS, SKILLS, STEPS, TARGET_TASKS, TASKS,
                    StepKind, Task, format_instruction, gold, resolve_targets)
from .verifier import answer_ok, first_wrong_step, majority_baseline, parse_step, step_ok

# Families: the names above are the vision family's (they predate audio); family("audio")
# or the AUDIO_* names give the audio family, ALL_* look up a name of either family.
from .audio import SAMPLE_RATE, render_clip
from .generate import AUDIO_GENERATOR_VERSION, AUDIO_GENERIC_WEIGHTS, generator_version, generic_weights
from .tasks import ALL_SKILLS, ALL_STEPS, ALL_TASKS, FAMILIES, Family, family
from .tasks_audio import (AUDIO_CORPUS_TASKS, AUDIO_DEFAULT_TARGETS, AUDIO_RARE_SKILLS, AUDIO_SKILLS, AUDIO_STEPS,
                          AUDIO_TARGET_TASKS, AUDIO_TASKS)

__all__ = [
    "GENERATOR_VERSION", "GENERIC_WEIGHTS", "META_SCHEMA", "allocate", "generate_skillworld", "generate_task",
    "COLORS", "POSITIONS", "SHAPES", "SIZES", "digit_pools", "encode_png", "render_digits", "render_grid",
    "render_scene", "CORPUS_TASKS", "DEFAULT_TARGETS", "FORMAT_SKILLS", "RARE_SKILLS", "SKILLS", "STEPS",
    "TARGET_TASKS", "TASKS", "StepKind", "Task", "format_instruction", "gold", "resolve_targets", "answer_ok",
    "first_wrong_step", "majority_baseline", "parse_step", "step_ok",
    "SAMPLE_RATE", "render_clip", "AUDIO_GENERATOR_VERSION", "AUDIO_GENERIC_WEIGHTS", "generator_version",
    "generic_weights", "ALL_SKILLS", "ALL_STEPS", "ALL_TASKS", "FAMILIES", "Family", "family", "AUDIO_CORPUS_TASKS",
    "AUDIO_DEFAULT_TARGETS", "AUDIO_RARE_SKILLS", "AUDIO_SKILLS", "AUDIO_STEPS", "AUDIO_TARGET_TASKS", "AUDIO_TASKS",
]
