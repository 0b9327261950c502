"""Inputs: YAML, JSON, nested recipes, refusal of pickles, malformed files (with the line)."""

from __future__ import annotations

import json
import pickle
import sys

import pytest

from grpo_check.audit import audit
from grpo_check.audit.loader import find_config_mapping, load_file, load_source
from grpo_check.findings import InputError


def test_flat_yaml_values_and_lines(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("# comment\nlearning_rate: 1.0e-6\nnum_generations: 8\nloss_type: grpo\n")
    loaded = load_file(path)
    assert loaded.values == {"learning_rate": 1e-6, "num_generations": 8, "loss_type": "grpo"}
    assert loaded.lines == {"learning_rate": 2, "num_generations": 3, "loss_type": 4}
    assert loaded.key_path == ""
    finding = audit(path, trl_version="1.16", rules=["GA101"]).findings[0]
    assert finding.details["line"] == 4 and finding.details["file"] == str(path)


def test_json_values_and_lines(tmp_path):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"output_dir": "x", "beta": 0.5, "num_generations": 8}, indent=2))
    loaded = load_file(path)
    assert loaded.values["beta"] == 0.5
    assert loaded.lines["beta"] == 3
    assert audit(path, trl_version="1.16", rules=["GA303"]).findings[0].details["line"] == 3


def test_nested_recipe_found_and_reported(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(
        "model:\n  name: m\n  dtype: bfloat16\n"
        "rl:\n  trainer:\n    num_generations: 8\n    beta: 0.0\n    loss_type: grpo\n    per_device_train_batch_size: 8\n"
    )
    loaded = load_file(path)
    assert loaded.key_path == "rl.trainer"
    assert loaded.values["loss_type"] == "grpo"
    assert loaded.lines["loss_type"] == 8
    result = audit(path, trl_version="1.16")
    assert result.metadata["key_path"] == "rl.trainer"
    assert any(f.check_id == "GA101" and f.details["line"] == 8 for f in result)


def test_nested_json_recipe_lines(tmp_path):
    path = tmp_path / "recipe.json"
    path.write_text(
        json.dumps(
            {"model": {"beta": "n/a"}, "args": {"num_generations": 4, "beta": 0.3, "epsilon": 0.2}}, indent=1
        )
    )
    loaded = load_file(path)
    assert loaded.key_path == "args"
    assert loaded.values["beta"] == 0.3
    assert path.read_text().splitlines()[loaded.lines["beta"] - 1].strip().startswith('"beta": 0.3')


def test_find_config_mapping_prefers_most_grpo_keys():
    data = {
        "training": {"learning_rate": 1e-6},
        "grpo": {"num_generations": 8, "beta": 0.0, "loss_type": "dapo"},
    }
    assert find_config_mapping(data)[0] == ("grpo",)


@pytest.mark.parametrize("suffix", [".bin", ".pt", ".pkl", ".pth", ".pickle"])
def test_pickle_suffix_refused_without_reading(tmp_path, suffix):
    path = tmp_path / f"training_args{suffix}"
    path.write_bytes(pickle.dumps({"num_generations": 8}))
    with pytest.raises(InputError, match=r"json\.dump") as info:
        load_file(path)
    assert str(path) in str(info.value)


def test_pickle_content_refused_even_with_yaml_suffix(tmp_path):
    path = tmp_path / "sneaky.yaml"
    path.write_bytes(pickle.dumps({"num_generations": 8}))
    loaded_pickle_modules = set(sys.modules)
    with pytest.raises(InputError, match="refusing to unpickle"):
        load_file(path)
    assert set(sys.modules) == loaded_pickle_modules


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("num_generations: 8\nbeta: [0.1\nloss_type: dapo\n")
    with pytest.raises(InputError) as info:
        load_file(path)
    message = str(info.value)
    assert str(path) in message and "line" in message and "invalid YAML" in message


def test_malformed_json_names_file_and_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{\n  "num_generations": 8,\n  "beta": ,\n}\n')
    with pytest.raises(InputError, match=r"line 3") as info:
        load_file(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        ("", "empty"),
        ("- a\n- b\n", "expected a mapping"),
        ("services:\n  web:\n    image: nginx\n", "no GRPOConfig"),
    ],
)
def test_unusable_files(tmp_path, content, pattern):
    path = tmp_path / "x.yaml"
    path.write_text(content)
    with pytest.raises(InputError, match=pattern):
        load_file(path)


def test_non_utf8_refused(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_bytes(b"beta: \xff\xfe\n")
    with pytest.raises(InputError, match="UTF-8"):
        load_file(path)


def test_unsupported_object():
    with pytest.raises(InputError, match="cannot audit"):
        load_source(42)


def test_reward_funcs_and_num_processes_from_file():
    loaded = load_source({"reward_funcs": ["a", "b"], "num_processes": 4, "num_generations": 8})
    assert loaded.facts == {
        "num_reward_funcs": 2,
        "num_processes": 4,
        "num_processes_source": "num_processes",
    }
    assert "reward_funcs" not in loaded.values


def test_file_audit_does_not_import_trl(tmp_path):
    import subprocess

    path = tmp_path / "cfg.yaml"
    path.write_text("num_generations: 8\n")
    code = (
        "import sys; from grpo_check.audit import audit; "
        f"audit({str(path)!r}); audit({str(path)!r}, trl_version='0.19'); "
        "assert 'trl' not in sys.modules and 'torch' not in sys.modules, sorted(m for m in sys.modules if m in ('trl', 'torch'))"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
