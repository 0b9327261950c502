"""rewards.row_independence: a reward function that scores another row's completion fails; row-wise ones pass."""

from __future__ import annotations

import random
from types import SimpleNamespace
from typing import Any

import torch

from grpo_check.findings import Verdict
from grpo_check.probe.rewards import probe_reward_rows
from grpo_check.trl.reward_probe import probe_reward_functions

ROWS = {"completions": ["7", "3", "12", "5", "7", "9"], "answer": ["7", "3", "3", "5", "5", "9"]}


def row_wise(completions: list[str], answer: list[str], **_: Any) -> list[float]:
    return [float(c == a) + 0.1 * len(c) for c, a in zip(completions, answer, strict=True)]


def off_by_one(completions: list[str], answer: list[str], **_: Any) -> list[float]:
    return [float(completions[i - 1] == answer[i]) for i in range(len(completions))]


def caller(func: Any) -> Any:
    return lambda order: func(**{k: [v[i] for i in order] for k, v in ROWS.items()})


def test_row_wise_reward_passes() -> None:
    finding = probe_reward_rows(caller(row_wise), row_wise(**ROWS), name="row_wise", step=0)
    assert finding.verdict is Verdict.PASS, finding.explanation


def test_reward_reading_the_previous_row_fails_with_the_row() -> None:
    finding = probe_reward_rows(caller(off_by_one), off_by_one(**ROWS), name="off_by_one", step=3)
    assert finding.verdict is Verdict.FAIL
    assert finding.stage == "rewards" and finding.where.step == 3
    row = finding.where.row
    assert row is not None and row in finding.details["rows_changed"]
    assert "off_by_one" in finding.explanation and "reversed" in finding.explanation
    assert "off-by-one" in (finding.likely_cause or "")
    assert finding.figure is not None and finding.tolerance is not None
    assert finding.figure == 1.0 and finding.tolerance < 1e-5  # the largest reward change, against rtol


def test_non_deterministic_reward_is_inconclusive_not_a_failure() -> None:
    rng = random.Random(0)

    def noisy(completions: list[str], **_: Any) -> list[float]:
        return [rng.random() for _ in completions]

    finding = probe_reward_rows(caller(noisy), noisy(**ROWS), name="noisy")
    assert finding.verdict is Verdict.INCONCLUSIVE


def test_unscorable_rows_compare_equal() -> None:
    def partial(completions: list[str], **_: Any) -> list[float | None]:
        return [None if c == "7" else 1.0 for c in completions]

    assert probe_reward_rows(caller(partial), partial(**ROWS), name="partial").verdict is Verdict.PASS


def trainer_with(*funcs: Any) -> Any:
    return SimpleNamespace(
        reward_funcs=list(funcs), reward_func_names=[f.__name__ for f in funcs], state=None, environments=None
    )


def trl_batch() -> tuple[list[dict[str, Any]], list[str], list[str], list[list[int]]]:
    inputs = [{"prompt": f"q{i}", "answer": a} for i, a in enumerate(ROWS["answer"])]
    prompts = [row["prompt"] for row in inputs]
    completions = ROWS["completions"]
    return inputs, prompts, completions, [[ord(ch) for ch in c] for c in completions]


def test_trl_glue_probes_each_reward_function_as_trl_calls_it() -> None:
    inputs, prompts, completions, ids = trl_batch()
    rewards = torch.tensor(
        [row_wise(completions, ROWS["answer"]), off_by_one(completions, ROWS["answer"])]
    ).T  # (B, F)
    findings = probe_reward_functions(
        trainer_with(row_wise, off_by_one), inputs, prompts, completions, ids, rewards, step=0
    )
    verdicts = {f.where.reward_function: f.verdict for f in findings}
    assert verdicts == {"row_wise": Verdict.PASS, "off_by_one": Verdict.FAIL}


def test_trl_glue_leaves_the_random_streams_where_they_were() -> None:
    def draws(completions: list[str], **_: Any) -> list[float]:
        random.random()
        torch.rand(1)
        return [float(len(c)) for c in completions]

    inputs, prompts, completions, ids = trl_batch()
    rewards = torch.tensor([draws(completions)]).T
    random.seed(5)
    torch.manual_seed(5)
    findings = probe_reward_functions(trainer_with(draws), inputs, prompts, completions, ids, rewards)
    after = (random.random(), torch.rand(1).item())
    random.seed(5)
    torch.manual_seed(5)
    assert after == (random.random(), torch.rand(1).item())  # the probe's calls consumed nothing
    assert [f.verdict for f in findings] == [Verdict.PASS]


def test_trl_glue_reward_that_raises_when_called_again_is_inconclusive() -> None:
    calls: list[int] = []

    def once(completions: list[str], **_: Any) -> list[float]:
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("quota exceeded")
        return [1.0 for _ in completions]

    inputs, prompts, completions, ids = trl_batch()
    rewards = torch.tensor([once(completions)]).T
    (finding,) = probe_reward_functions(trainer_with(once), inputs, prompts, completions, ids, rewards)
    assert finding.verdict is Verdict.INCONCLUSIVE
    assert "quota exceeded" in finding.explanation and finding.where.reward_function == "once"


def test_trl_glue_skips_a_reward_declared_row_dependent() -> None:
    def by_position(completions: list[str], **_: Any) -> list[float]:
        return [float(i) for i in range(len(completions))]

    by_position.grpo_check_row_dependent = True  # type: ignore[attr-defined]
    inputs, prompts, completions, ids = trl_batch()
    rewards = torch.tensor([by_position(completions), off_by_one(completions, ROWS["answer"])]).T
    trainer = trainer_with(by_position, off_by_one)
    findings = probe_reward_functions(trainer, inputs, prompts, completions, ids, rewards)
    assert [(f.where.reward_function, f.verdict) for f in findings] == [("off_by_one", Verdict.FAIL)]
