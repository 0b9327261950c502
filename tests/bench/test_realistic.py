"""The realistic-size policy of `grpo-check bench --only overhead-realistic`, its figures and the demo's
above-floor figure: the builder, the figures' targets and the table (measurements stubbed: no timed
assertions)."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
from typer.testing import CliRunner

from grpo_check.bench import overhead, policy
from grpo_check.cli import app
from grpo_check.demo.model import CHARS
from grpo_check.demo.task import answer_for, make_prompts


# --------------------------------------------------------------------------------------------- the tokenizer
@pytest.fixture(scope="module")
def tokenizer():
    return policy.build_tokenizer()


def test_the_tokenizer_has_exactly_32k_entries_and_no_token_type_ids(tokenizer) -> None:
    assert len(tokenizer) == policy.VOCAB_SIZE == 32_000
    assert sorted(tokenizer.get_vocab().values()) == list(range(32_000))  # no gaps, no duplicates
    encoded = tokenizer(["rev:12=", "cpy:3141="], padding=True)
    assert set(encoded) == {"input_ids", "attention_mask"}
    assert tokenizer.padding_side == "left"
    assert encoded["attention_mask"][0][0] == 0 and encoded["input_ids"][0][0] == tokenizer.pad_token_id


def test_the_tasks_prompts_and_answers_round_trip_through_multi_character_tokens(tokenizer) -> None:
    prompts = make_prompts(200, seed=3)
    merged = 0
    for text in [*prompts, *(answer_for(p) for p in prompts)]:
        ids = tokenizer(text)["input_ids"]
        assert tokenizer.unk_token_id not in ids, text
        assert tokenizer.decode(ids) == text
        merged += len(ids) < len(text)
    assert merged > 200  # most strings are merged: a real BPE, not one token per character
    # every id decodes to text over the demo's characters (a sampled id gives up to three characters)
    assert set(tokenizer.decode(list(range(3, 32_000)))) <= set(CHARS)
    assert len(tokenizer.convert_ids_to_tokens(31_999)) == 3


def test_a_vocabulary_past_the_three_character_strings_merges_four(tokenizer) -> None:
    singles = 3 + len(CHARS)
    size = singles + len(CHARS) ** 2 + len(CHARS) ** 3 + 10  # ten four-character strings
    larger = policy.build_tokenizer(vocab_size=size)
    assert len(larger) == size
    assert larger.convert_ids_to_tokens(size - 1) == "000" + CHARS[9]
    assert larger.decode(larger("0000=")["input_ids"]) == "0000="
    assert larger("0000")["input_ids"] == [larger.convert_tokens_to_ids("0000")]


def test_a_vocabulary_smaller_than_the_characters_is_refused() -> None:
    with pytest.raises(ValueError, match="at least"):
        policy.build_tokenizer(vocab_size=10)


# -------------------------------------------------------------------------------------------- the policy
def test_the_parameter_formula_counts_a_built_model() -> None:
    tok = policy.build_tokenizer(vocab_size=500)
    sizes = {"hidden_size": 64, "num_layers": 2, "intermediate_size": 96, "num_heads": 8, "num_kv_heads": 2}
    model = policy.build_policy(tok, seed=1, **sizes)
    assert policy.parameter_count(model) == policy.llama_parameters(vocab_size=500, **sizes)
    assert model.config.vocab_size == 500 and model.config.tie_word_embeddings


@pytest.mark.slow
def test_the_realistic_policy_has_over_40m_parameters_and_the_tokenizers_vocabulary(tokenizer) -> None:
    import torch

    model = policy.build_policy(tokenizer, seed=0)
    assert policy.parameter_count(model) == policy.llama_parameters() >= 40_000_000
    assert model.config.vocab_size == len(tokenizer) == 32_000
    assert (model.config.hidden_size, model.config.num_hidden_layers) == (512, 8)
    ids = torch.tensor([tokenizer("rev:3141=")["input_ids"]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], 32_000) and torch.isfinite(logits).all()
    again = policy.build_policy(tokenizer, seed=0)  # the seed fixes the weights
    assert torch.equal(again.model.embed_tokens.weight, model.model.embed_tokens.weight)


@pytest.mark.slow
def test_trl_trains_the_realistic_policy_checked_every_step_without_a_failure(tmp_path) -> None:
    pytest.importorskip("trl")
    from grpo_check.findings import Verdict
    from grpo_check.trl import attach

    make = overhead.realistic_trainer_factory()
    trainer = make(tmp_path / "a")
    assert policy.parameter_count(trainer.model) == policy.llama_parameters()
    assert len(trainer.processing_class) == 32_000
    trainer.args.max_steps = 2
    attachment = attach(trainer, every=1, live=True)
    trainer.train()
    attachment.close()
    result = attachment.result()
    counts = result.counts()
    assert counts["pass"] > 0
    bad = [f for f in result.findings if f.verdict in (Verdict.FAIL, Verdict.WARN)]
    assert not bad, [f.explanation for f in bad]
    # the policy is saved once: the next trainer loads the same folder, which goes with the factory
    saved = trainer.model.name_or_path
    del trainer, attachment  # one 40M-parameter trainer in memory at a time
    gc.collect()
    second = make(tmp_path / "b")
    assert second.model.name_or_path == saved and Path(saved).is_dir() and (tmp_path / "b").exists()
    del second, make
    gc.collect()
    assert not Path(saved).exists()


# ------------------------------------------------------------------------------------------- the figures
def _fake_arms(monkeypatch, cost_per_round: dict[str, list[float]]) -> None:
    """Every arm's steps take the given seconds in each round (``off`` 1 s unless given)."""
    calls: dict[str, int] = {}

    def fake_timed_run(make_trainer, every, steps, background=False, *, forwards_only=False, **_):
        arm = "off" if every is None else f"every_{every}" + ("_floor" if forwards_only else "")
        arm += "_background" if background else ""
        index = calls.get(arm, 0)
        calls[arm] = index + 1
        costs = cost_per_round.get(arm)
        return overhead.TimedRun([costs[index] if costs else 1.0] * steps, 0.0)

    monkeypatch.setattr(overhead, "_timed_run", fake_timed_run)
    monkeypatch.setattr(overhead, "_warm_background_helper", lambda *_: None)


def test_realistic_figures_carry_their_own_targets_and_no_background_arms(monkeypatch) -> None:
    _fake_arms(
        monkeypatch, {"every_1": [1.08, 1.08, 1.08], "every_10": [1.05] * 3, "every_1_floor": [1.04] * 3}
    )
    figures = overhead.measure_overhead(
        lambda work: None,
        rounds=3,
        label="realistic",
        background=False,
        targets=overhead.REALISTIC_TARGETS,
        policy="a policy",
    )
    by_name = {f.name: f for f in figures}
    assert set(by_name) == {
        "overhead_every_1_realistic",
        "overhead_every_10_realistic",
        "overhead_every_1_floor_realistic",
    }
    every_step, every_10 = by_name["overhead_every_1_realistic"], by_name["overhead_every_10_realistic"]
    assert every_step.target == "<= 1.1" and every_step.ok is True
    assert every_10.target == "<= 1.02" and every_10.ok is False  # 1.05 over 1.02
    assert every_step.details["above_floor"] == pytest.approx(0.04)
    assert by_name["overhead_every_1_floor_realistic"].target == overhead.FLOOR_TARGET
    assert all(f.details["policy"] == "a policy" for f in figures)


def test_the_demo_reports_the_checks_above_the_floor_against_its_target(monkeypatch) -> None:
    # rounds: every step 1.30, 1.32, 1.34 of off; the floor 1.25 each time: the checks add 0.05, 0.07, 0.09
    _fake_arms(monkeypatch, {"every_1": [1.30, 1.32, 1.34], "every_1_floor": [1.25] * 3})
    figures = overhead.measure_overhead(
        lambda work: None,
        rounds=3,
        label="demo",
        targets=overhead.DEMO_TARGETS,
        above_floor_target=overhead.TARGET_ABOVE_FLOOR_DEMO,
    )
    by_name = {f.name: f for f in figures}
    above = by_name["overhead_above_floor_demo"]
    assert above.value == pytest.approx(0.07) and above.target == "<= +0.05" and above.ok is False
    assert above.details["round_values"] == pytest.approx([0.05, 0.07, 0.09])
    # Student's t over three rounds: 0.07 ± 4.303 · 0.02 / √3 (by hand: ± 0.04969)
    low, high = above.details["ci95"]
    assert low == pytest.approx(0.07 - 0.04969, abs=1e-4) and high == pytest.approx(0.07 + 0.04969, abs=1e-4)
    assert above.details["target_verdict"] == "undecided" and above.details["rounds_to_decide"] > 3
    # the every-step target is retired on the demo: reported, judged by the figure above instead
    every_step = by_name["overhead_every_1_demo"]
    assert (
        every_step.ok is None and every_step.target == "none: the checks' cost is overhead_above_floor_demo"
    )
    assert by_name["overhead_every_1_background_demo"].ok is None  # retired in the background too
    assert by_name["overhead_every_1_background_demo"].target == "none"
    assert by_name["overhead_every_10_demo"].target == "<= 1.03"


def test_checks_within_their_share_of_the_floor_meet_the_target(monkeypatch) -> None:
    _fake_arms(monkeypatch, {"every_1": [1.275, 1.28, 1.285], "every_1_floor": [1.25] * 3})
    figures = overhead.measure_overhead(
        lambda work: None, rounds=3, background=False, targets={}, above_floor_target=0.05
    )
    above = figures[-1]
    assert above.name == "overhead_above_floor_demo" and above.value == pytest.approx(0.03)
    assert above.ok is True and above.details["target_verdict"] == "met"


def test_an_above_floor_figure_from_a_slowed_off_arm_is_disturbed(monkeypatch) -> None:
    _fake_arms(monkeypatch, {"off": [5.0], "every_1": [1.2], "every_1_floor": [1.0]})
    (above,) = [
        f
        for f in overhead.measure_overhead(
            lambda work: None, rounds=1, background=False, above_floor_target=0.05
        )
        if f.name.startswith("overhead_above_floor")
    ]
    assert above.ok is None and above.details["target_verdict"] == "disturbed"
    assert above.details["ci95"] is None  # one round: no interval


# -------------------------------------------------------------------------------------------- the command
def _invoke(*args: str):
    return CliRunner().invoke(app, ["bench", *args], env={"COLUMNS": "220"})


def test_overhead_realistic_measures_the_realistic_policy_inline_and_prints_its_targets(monkeypatch) -> None:
    _fake_arms(monkeypatch, {"every_1": [1.3, 1.3], "every_10": [1.01, 1.01], "every_1_floor": [1.2, 1.2]})
    built = []
    monkeypatch.setattr(overhead, "realistic_trainer_factory", lambda: built.append(1) or (lambda work: None))
    result = _invoke("--only", "overhead-realistic", "--rounds", "2")
    assert result.exit_code == 0, result.output
    assert built == [1]
    assert "round 2/2: every_1 1.30x, every_10 1.01x, every_1_floor 1.20x" in result.output
    assert "background" not in result.output.split("round 1/2")[1]  # no background arms at this size
    for name, target in (
        ("overhead_every_1_realistic", "<= 1.1"),
        ("overhead_every_10_realistic", "<= 1.02"),
        ("overhead_every_1_floor_realistic", "none: capture"),
    ):
        line = next(line for line in result.output.splitlines() if name in line)
        assert target in line, line
    assert "checks: +0.100 over the floor" in result.output
    assert f"overhead_*_realistic: {policy.describe()}; a step without checking 1.00 s" in result.output
    assert "41.7M parameters" in policy.describe()


def test_the_demo_table_prints_the_above_floor_figure_with_its_target(monkeypatch) -> None:
    _fake_arms(monkeypatch, {"every_1": [1.30, 1.32, 1.34], "every_1_floor": [1.25] * 3})
    monkeypatch.setattr(overhead, "demo_trainer_factory", lambda: lambda work: None)
    result = _invoke("--only", "overhead")
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if "│ overhead_above_floor_demo" in line)
    assert "+0.070" in line and "<= +0.05" in line and "no" in line
    assert "95 %: +0.020–+0.120" in result.output and "(rounds +0.05–+0.09)" in result.output
    every_step = next(line for line in result.output.splitlines() if "│ overhead_every_1_demo " in line)
    assert "<= 1.25" not in every_step


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--only", "overhead-realistic", "--steps", "13"), "whole tens"),
        (("--only", "realistic"), "overhead-realistic"),
        (("--only", "overhead-realistic", "--trainer", "x.py:build"), "--only overhead"),
        (("--only", "overhead-realistic", "--rounds", "0"), "--rounds"),
    ],
)
def test_usage_errors_exit_2_before_measuring(monkeypatch, args, message) -> None:
    import grpo_check.cli.bench as bench_cli

    measured = []
    monkeypatch.setattr(bench_cli, "_measure", lambda selected, **kwargs: measured.append(1) or [])
    result = _invoke(*args)
    assert result.exit_code == 2 and message in result.output, result.output
    assert "Traceback" not in result.output and measured == []


def test_help_teaches_the_realistic_figure() -> None:
    result = _invoke("--help")
    assert result.exit_code == 0
    assert "overhead-realistic" in result.output
    assert f"{policy.llama_parameters() / 1e6:.1f}M-parameter" in result.output  # the formula's number
