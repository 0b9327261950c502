"""The era table of TRL's GRPOTrainer internals and the support decision (no TRL needed: fast)."""

from __future__ import annotations

import warnings

import pytest

from grpo_check.findings import InputError
from grpo_check.trl.versions import (
    ERAS,
    NEWEST_TESTED,
    check_trainer_support,
    era_for,
    era_table,
    implied_settings,
    newer_than_tested,
    parse_version,
)

_METHODS = (
    "_prepare_inputs",
    "_generate_and_score_completions",
    "_calculate_rewards",
    "compute_loss",
    "_compute_loss",
    "training_step",
    "_get_per_token_logps",
    "_get_per_token_logps_and_entropies",
)


def _trainer(*names: str):
    """A stand-in trainer class with exactly these methods."""
    return type("Trainer", (), {name: (lambda self, *a, **k: None) for name in names})()


@pytest.mark.parametrize(
    ("version", "era"),
    [
        ("0.14.0", "0.14"),
        ("0.15.2", "0.15"),
        ("0.16.1", "0.16"),
        ("0.17.0", "0.17"),
        ("0.18.2", "0.18"),
        ("0.19.1", "0.19"),
        ("0.21.0", "0.20"),
        ("0.22.2", "0.22"),
        ("0.25.1", "0.23"),
        ("0.29.1", "0.26"),
        ("1.0.0", "1.0"),
        ("1.16.0", "1.0"),
        ("1.16.0.dev0", "1.0"),
        ("2.3.0", "1.0"),
    ],
)
def test_each_release_falls_in_its_era(version, era):
    assert era_for(version).name == era


def test_the_eras_are_ordered_and_each_names_its_hooks():
    firsts = [parse_version(era.first) for era in ERAS]
    assert firsts == sorted(firsts) and len(set(firsts)) == len(firsts)
    assert ERAS[0].first == "0.14.0"
    for era in ERAS:
        assert era.generation_method and era.loss_method
    assert [row["releases"].split()[0] for row in era_table()] == [era.first for era in ERAS]
    assert era_table()[-1]["releases"].endswith("and later")


def test_a_release_older_than_grpo_trainer_is_refused_in_one_line():
    with pytest.raises(InputError, match=r"older than 0\.14\.0, the first release with GRPOTrainer") as info:
        era_for("0.13.0")
    assert "\n" not in str(info.value)
    with pytest.raises(InputError, match=r"older than 0\.14\.0"):
        check_trainer_support(_trainer(*_METHODS), version="0.12.2")


def test_a_newer_release_is_attached_with_a_warning_naming_the_newest_tested():
    trainer = _trainer(*_METHODS)
    with pytest.warns(UserWarning, match="newest release grpo-check was tested on") as record:
        support = check_trainer_support(trainer, version="1.17.0")
    assert NEWEST_TESTED in str(record[0].message) and "1.17.0" in str(record[0].message)
    assert support.warning is not None and support.loss_method == "_compute_loss"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tested = check_trainer_support(trainer, version=NEWEST_TESTED)
    assert tested.warning is None and newer_than_tested(NEWEST_TESTED) is None


@pytest.mark.parametrize(
    ("version", "methods", "expected"),
    [
        (
            "1.16.0",
            _METHODS,
            ("_generate_and_score_completions", "_compute_loss", "_get_per_token_logps_and_entropies",
             "_calculate_rewards"),
        ),
        (
            "0.19.1",
            tuple(m for m in _METHODS if m != "_get_per_token_logps_and_entropies"),
            ("_generate_and_score_completions", "_compute_loss", "_get_per_token_logps", "_calculate_rewards"),
        ),
        (
            "0.17.0",
            ("_prepare_inputs", "_generate_and_score_completions", "compute_loss", "_compute_loss",
             "training_step", "_get_per_token_logps"),
            ("_generate_and_score_completions", "_compute_loss", "_get_per_token_logps", ""),
        ),
        (
            "0.16.1",
            ("_prepare_inputs", "_generate_and_score_completions", "compute_loss", "training_step",
             "_get_per_token_logps"),
            ("_generate_and_score_completions", "compute_loss", "_get_per_token_logps", ""),
        ),
    ],
)  # fmt: skip
def test_the_hooks_are_the_eras(version, methods, expected):
    support = check_trainer_support(_trainer(*methods), version=version)
    got = (support.generation_method, support.loss_method, support.logps_method, support.rewards_method)
    assert got == expected
    assert support.line == ("1.x" if version.startswith("1.") else "0.x")


def test_a_trainer_missing_a_hooked_method_is_refused_naming_it():
    methods = tuple(m for m in _METHODS if m != "_calculate_rewards")
    with pytest.raises(InputError, match="lacks the methods grpo-check hooks: _calculate_rewards"):
        check_trainer_support(_trainer(*methods), version="0.20.0")
    with pytest.raises(InputError, match="_generate_and_score_completions"):
        check_trainer_support(
            _trainer("compute_loss", "training_step", "_get_per_token_logps"), version="0.16.1"
        )


def test_settings_a_release_applies_without_a_field_are_implied():
    assert implied_settings("0.14.0") == {"loss_type": "grpo", "scale_rewards": "group", "num_iterations": 1}
    assert implied_settings("0.15.2")["loss_type"] == "grpo"  # per-sequence token mean, then batch mean
    assert implied_settings("0.16.1") == {"loss_type": "bnpo"}  # token sum over the micro-batch's tokens
    assert implied_settings("0.17.0") == {} and implied_settings("1.16.0") == {}
