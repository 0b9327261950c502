"""The TRL default history table and its helpers."""

from __future__ import annotations

import pytest

from grpo_check.audit import versions as V


@pytest.mark.parametrize(
    ("given", "resolved"),
    [
        ("0.19.1", "0.19.0"),
        ("1.16", "1.16.0"),
        ("1.11.2", "1.10.0"),
        ("v0.22.0.dev0", "0.22.0"),
        ("9.0", V.LATEST),
    ],
)
def test_resolve_version(given, resolved):
    assert V.resolve_version(given) == resolved


def test_parse_version_rejects_garbage():
    with pytest.raises(ValueError):
        V.parse_version("banana")


@pytest.mark.parametrize(
    ("field", "old", "new", "old_value", "new_value"),
    [
        ("beta", "0.18", "0.19", 0.04, 0.0),
        ("loss_type", "0.21", "0.22", "bnpo", "dapo"),
        ("use_bias_correction_kl", "1.8", "1.10", False, True),
        ("temperature", "0.17", "0.18", 0.9, 1.0),
        ("max_completion_length", "1.8", "1.10", 256, 512),
        ("loss_type", "0.16", "0.17", "grpo", "bnpo"),  # 0.16 had no field: the implicit per-sequence loss
    ],
)
def test_changed_defaults(field, old, new, old_value, new_value):
    assert V.defaults_for(old)[field] == old_value
    assert V.defaults_for(new)[field] == new_value
    assert V.changed_default(field)


def test_field_lifetimes():
    assert V.introduced_in("steps_per_generation") == "0.18.0"
    assert V.removed_in("max_prompt_length") == "0.28.0"
    assert V.removed_in("beta") is None
    assert "max_prompt_length" in V.known_fields("0.27") and "max_prompt_length" not in V.known_fields("1.16")
    assert not V.changed_default("scale_rewards")  # True and "group" are the same setting
    assert not V.changed_default("num_generations")


def test_trl_0_14_batch_defaults():
    defaults = V.defaults_for("0.14")
    assert (defaults["per_device_train_batch_size"], defaults["gradient_accumulation_steps"]) == (1, 8)
    later = V.defaults_for("0.15")
    assert (later["per_device_train_batch_size"], later["gradient_accumulation_steps"]) == (8, 1)
