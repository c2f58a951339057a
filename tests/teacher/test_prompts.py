"""Prompt templates are versioned files with strict slots."""

import pytest

from mmtune.teacher.prompts import NAMES, PROMPT_DIR, load_template


def test_every_template_exists_and_hides_comments():
    for name in NAMES:
        t = load_template(name, "v1")
        assert t.id == f"{name}.v1"
        assert "#" not in t.text.splitlines()[0]
        assert (PROMPT_DIR / f"{name}.v1.txt").is_file()


def test_render_refuses_missing_and_unknown_slots():
    t = load_template("annotate")
    assert "Instruction: hi" in t.render(instruction="hi", response="there")
    with pytest.raises(KeyError, match="missing slots"):
        t.render(instruction="hi")
    with pytest.raises(KeyError, match="unknown slots"):
        t.render(instruction="hi", response="x", extra=1)


def test_unknown_version_names_the_available_ones():
    with pytest.raises(FileNotFoundError, match="annotate.v1.txt"):
        load_template("annotate", "v9")
