"""Real recipes: a problem in one key is a finding on that key, never a refusal of the whole file; launcher
settings are read; a rule that needs the number of processes says what it assumed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from grpo_check.audit import audit
from grpo_check.findings import InputError

ROOT = Path(__file__).resolve().parents[2]

# An open-r1-style recipe (model, data and GRPO keys in one flat file, with the project's own keys).
RECIPE = """\
# Model arguments
model_name_or_path: Qwen/Qwen2.5-1.5B-Instruct
torch_dtype: bfloat16
# Data training arguments
dataset_name: open-r1/OpenR1-Math-220k
system_prompt: "Think, then answer."
# GRPO trainer config
bf16: true
use_vllm: true
do_eval: false
gradient_accumulation_steps: 4
learning_rate: 1.0e-06
num_generations: 16
per_device_train_batch_size: 16
per_device_eval_batch_size: 16
reward_funcs:
- accuracy
- format
reward_weights:
- 1.0
- 1.0
do_eval: false
"""


def _write(tmp_path: Path, text: str, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _ids(result, rule_id: str) -> list:
    return [f for f in result if f.check_id == rule_id]


def test_duplicate_key_in_a_recipe_is_a_warning_on_its_line(tmp_path):
    result = audit(_write(tmp_path, RECIPE), trl_version="1.16")
    [finding] = _ids(result, "GA413")
    assert finding.details["line"] == 22 and finding.details["fields"] == ["do_eval"]
    assert "lines 10, 22" in finding.explanation and "both say 'false'" in finding.explanation
    assert not _ids(
        audit(_write(tmp_path, RECIPE.replace("do_eval: false\n", "", 1)), trl_version="1.16"), "GA413"
    )


def test_duplicate_key_with_different_values_names_the_value_kept(tmp_path):
    text = "num_generations: 8\nbeta: 0.0\ntraining_extra:\n  a: 1\n  a: 2\nbeta: 0.04\n"
    result = audit(_write(tmp_path, text), trl_version="1.16")
    messages = {f.details["fields"][0]: f.explanation for f in _ids(result, "GA413")}
    assert set(messages) == {"beta", "a"}  # a nested mapping's duplicate is found too
    assert "'0.0' then '0.04'" in messages["beta"] and "keep '0.04'" in messages["beta"]
    assert result.metadata["config"]["beta"] == 0.04


def test_json_duplicate_key_is_a_finding(tmp_path):
    path = _write(tmp_path, '{"num_generations": 8,\n "beta": 0.0,\n "beta": 0.1}', "cfg.json")
    [finding] = _ids(audit(path, trl_version="1.16"), "GA413")
    assert finding.details["line"] == 3 and "0.0 then 0.1" in finding.explanation
    assert not _ids(audit(_write(tmp_path, '{"beta": 0.1}', "ok.json"), trl_version="1.16"), "GA413")


def test_a_line_that_is_not_yaml_is_an_error_on_that_line_and_the_rest_is_audited(tmp_path):
    text = "hub_base: &base org/model\nhub_model_id: *base*version\nnum_generations: 6\nper_device_train_batch_size: 4\n"
    result = audit(_write(tmp_path, text), trl_version="1.16", num_processes=1)
    [finding] = _ids(result, "GA414")
    assert finding.details["severity"] == "error" and finding.details["line"] == 2
    assert finding.details["fields"] == ["hub_model_id"]
    assert _ids(result, "GA001")  # 4 completions per step, groups of 6: found despite the broken line
    fixed = audit(_write(tmp_path, text.replace("*base*version", "org/model-v1")), trl_version="1.16")
    assert not _ids(fixed, "GA414")


def test_a_file_that_is_not_yaml_at_all_is_still_refused(tmp_path):
    with pytest.raises(InputError, match="invalid YAML"):
        audit(_write(tmp_path, 'num_generations: 8\nbeta: "unterminated\n'))
    many = "".join(f"k{i}: *missing{i}\n" for i in range(10))
    with pytest.raises(InputError, match="invalid YAML"):
        audit(_write(tmp_path, "num_generations: 8\n" + many))


@pytest.mark.parametrize(
    ("launcher", "processes", "source"),
    [
        ("num_processes: 4\n", 4, "num_processes"),
        ("accelerate:\n  nproc_per_node: 2\n  nnodes: 2\n", 4, "nproc_per_node × nnodes"),
        ("world_size: 4\n", 4, "world_size"),
    ],
)
def test_launcher_settings_give_the_number_of_processes(tmp_path, launcher, processes, source):
    text = "num_generations: 8\nper_device_train_batch_size: 2\n"  # 2 per device: whole groups on 4 processes
    alone = audit(_write(tmp_path, text), trl_version="1.16")
    [assumed] = _ids(alone, "GA001")
    assert "[assumed num_processes = 1: the file does not say" in assumed.explanation
    assert assumed.details["assumed"] == {"num_processes": 1}
    assert alone.metadata["assumptions"]
    launched = audit(_write(tmp_path, text + launcher), trl_version="1.16")
    assert launched.metadata["num_processes"] == processes
    assert launched.metadata["num_processes_source"] == source and not launched.metadata["assumptions"]
    assert not _ids(launched, "GA001")
    assert not [f for f in launched if f.check_id in ("GA404", "GA411") and "nproc" in f.explanation]


def test_the_command_line_overrides_the_file_and_assumes_nothing(tmp_path):
    path = _write(tmp_path, "num_generations: 8\nper_device_train_batch_size: 2\nnum_processes: 4\n")
    result = audit(path, trl_version="1.16", num_processes=3)
    assert (
        result.metadata["num_processes"] == 3 and result.metadata["num_processes_source"] == "--num-processes"
    )
    [finding] = _ids(result, "GA001")
    assert "assumed" not in finding.explanation


def test_open_r1_keys_are_info_not_typos(tmp_path):
    result = audit(_write(tmp_path, RECIPE), trl_version="1.16")
    assert [f.details["fields"] for f in _ids(result, "GA415")] == [["system_prompt"]]
    assert not [f for f in result if f.check_id in ("GA404", "GA411")]


# ---------------------------------------------------------------------- the corpus of real recipes

CORPUS = Path(os.environ.get("GRPO_CHECK_RECIPES") or Path.home() / ".cache" / "grpo-check" / "audit-recipes")


def _corpus() -> list[dict]:
    manifest = CORPUS / "MANIFEST.json"
    if not manifest.is_file():
        return []
    return json.loads(manifest.read_text())


@pytest.mark.skipif(
    not _corpus(),
    reason=f"no recipe corpus at {CORPUS} (build it: python scripts/audit_recipes.py collect …)",
)
def test_every_real_recipe_is_audited_fully():
    """Each recipe collected from public repositories' histories gets a full audit: no whole-file refusal."""
    entries = _corpus()
    refused = []
    for entry in entries:
        try:
            result = audit(CORPUS / entry["file"], trl_version="1.16")
        except InputError as exc:
            refused.append(f"{entry['repo']}:{entry['path']} ({entry['blob'][:10]}): {exc}")
            continue
        assert result.metadata["rules_run"]
        assert entry["licence"] in ("Apache-2.0", "MIT", "BSD-2-Clause", "BSD-3-Clause")
    assert not refused, "\n".join(refused[:10])
    assert len(entries) >= 300


def test_the_notice_names_every_source_repository_of_the_corpus():
    notice = (ROOT / "tests" / "audit" / "recipes" / "NOTICE.md").read_text()
    for entry in _corpus():
        assert f"`{entry['repo']}`" in notice, entry["repo"]


def test_a_field_of_another_trainer_is_a_finding_on_that_field(tmp_path):
    text = "num_generations: 8\nper_device_train_batch_size: 8\nmax_seq_length: 2048\npacking: true\n"
    result = audit(_write(tmp_path, text), trl_version="1.16")
    found = {f.details["fields"][0]: f for f in _ids(result, "GA417")}
    assert set(found) == {"max_seq_length", "packing"}
    assert found["max_seq_length"].details["line"] == 3 and "SFTConfig" in found["max_seq_length"].explanation
    assert not [f for f in result if f.check_id in ("GA404", "GA411")]


def test_a_recipe_of_another_trainer_only_is_audited_not_refused(tmp_path):
    result = audit(_write(tmp_path, "max_seq_length: 2048\ndataset_text_field: text\n"), trl_version="1.16")
    assert len(_ids(result, "GA417")) == 2
