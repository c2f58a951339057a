import subprocess
import sys
from pathlib import Path

import pytest

from mmtune.config import ConfigError, RunConfig, config_hash, load_config, parse_override

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo.yaml"


def test_demo_config_loads_and_matches_defaults_where_unset():
    cfg = load_config(DEMO)
    assert cfg.data.source == "skillworld"
    assert cfg.student.name_or_path == "tiny-llava"
    assert cfg.teacher.host == "127.0.0.1"  # never bind publicly by default


def test_overrides_parse_yaml_values():
    cfg = load_config(DEMO, ["student.lora.r=32", "training.coordination.mode=static",
                             "data.skillworld.targets=[parity_choice, count_grid]", "ray.address=null"])
    assert cfg.student.lora.r == 32
    assert cfg.training.coordination.mode == "static"
    assert cfg.data.skillworld.targets == ["parity_choice", "count_grid"]
    assert cfg.ray.address is None


@pytest.mark.parametrize("override,needles", [
    ("training.coordination.mode=comit", ["training.coordination.mode", "'comit'", "'commit'"]),
    ("student.lora.r=0", ["student.lora.r", "got 0", "greater than or equal to 1"]),
    ("student.lora.rank=8", ["student.lora.rank", "unknown setting", "did you mean student.lora.r"]),
    ("retrieval.budget=lots", ["retrieval.budget", "'lots'", "integer"]),
    ("teacher.autoscaling.min_replicas=5", ["teacher.autoscaling", "min_replicas (5) > max_replicas (1)"]),
    ("student.preset.text_hidden=130", ["text_hidden (130) must be divisible by text_heads (4)"]),
    ("data.source=files", ["data.corpus"]),
])
def test_invalid_values_name_field_value_and_allowed(override, needles):
    with pytest.raises(ConfigError) as e:
        load_config(DEMO, [override])
    for n in needles:
        assert n in str(e.value), f"{n!r} missing from: {e.value}"


@pytest.mark.parametrize("item,msg", [("nokeyvalue", "KEY=VALUE"), ("=3", "dotted path"),
                                      ("a..b=1", "dotted path")])
def test_malformed_overrides(item, msg):
    with pytest.raises(ConfigError, match=msg):
        parse_override(item)


def test_override_into_a_value_is_an_error():
    with pytest.raises(ConfigError, match="is a value, not a section"):
        load_config(DEMO, ["run.name.x=1"])


def test_missing_and_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)


def test_hash_is_stable_and_sensitive():
    a, b = load_config(DEMO), load_config(DEMO)
    assert config_hash(a) == config_hash(b)
    assert config_hash(a.data.skillworld) != config_hash(load_config(DEMO, ["data.skillworld.seed=1"]).data.skillworld)


def test_roundtrip_through_yaml(tmp_path):
    cfg = load_config(DEMO, ["training.lr=1e-4"])
    p = tmp_path / "c.yaml"
    p.write_text(cfg.to_yaml())
    assert load_config(p) == cfg
    assert isinstance(cfg, RunConfig)


def test_cli_config_show_and_error_exit_code():
    ok = subprocess.run([sys.executable, "-m", "mmtune.cli", "config", "show", str(DEMO), "student.lora.r=64"],
                        capture_output=True, text=True, cwd=ROOT)
    assert ok.returncode == 0, ok.stderr
    assert "r: 64" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "mmtune.cli", "config", "show", str(DEMO), "training.lr=-1"],
                         capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2
    assert "training.lr: got -1" in bad.stderr


def test_audio_demo_config_is_the_audio_family_with_the_audio_student():
    cfg = load_config(ROOT / "configs" / "demo_audio.yaml")
    assert cfg.data.skillworld.modality == "audio" and cfg.student.name_or_path == "tiny-qwen2-audio"
    assert cfg.teacher.backend == "builtin" and cfg.run.name == "demo_audio"
