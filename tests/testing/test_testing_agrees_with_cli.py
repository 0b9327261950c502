"""The testing API and the CLI give the same verdict on the same tensors: each ``assert_<stage>_close``
raises exactly when ``compare_step`` (what ``grpo-check compare`` runs) fails that stage's check, on correct
steps and on steps broken in several ways."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch

from grpo_check.compare import compare_step
from grpo_check.compare.synthetic import make_step
from grpo_check.config import GRPOSpec
from grpo_check.findings import GRPOCheckError, Verdict
from grpo_check.testing import (
    assert_advantages_close,
    assert_grad_close,
    assert_kl_close,
    assert_loss_close,
    assert_ratio_close,
)
from grpo_check.trace.model import TraceStep

ASSERTIONS: dict[str, tuple[Callable[..., None], str]] = {
    "advantages": (assert_advantages_close, "advantages.values"),
    "ratio": (assert_ratio_close, "ratio.values"),
    "kl": (assert_kl_close, "kl.values"),
    "loss": (assert_loss_close, "loss.value"),
    "grad": (assert_grad_close, "grad.logps_grad"),
}


def _set(name: str, make: Callable[[TraceStep], torch.Tensor]) -> Callable[[TraceStep], None]:
    def mutate(step: TraceStep) -> None:
        step.tensors[name] = make(step)

    return mutate


def _at(name: str, row: int, token: int, value: float) -> Callable[[TraceStep], None]:
    def make(step: TraceStep) -> torch.Tensor:
        changed = step[name].clone()
        changed[row, token] = value
        return changed

    return _set(name, make)


BREAKS: dict[str, Callable[[TraceStep], None]] = {
    "correct": lambda step: None,
    "negated_grad": _set("logps_grad", lambda s: -s["logps_grad"]),
    "negated_advantages": _set("advantages", lambda s: -s["advantages"]),
    "scaled_ratio": _set("ratio", lambda s: s["ratio"] * 1.5),
    "k1_for_k3": _set("kl", lambda s: s["logps"] - s["ref_logps"]),
    "infinite_logp": _at("logps", 1, 2, float("inf")),
    "positive_logps": _set("logps", lambda s: s["logps"].abs()),
    "doubled_loss": _set("loss", lambda s: s["loss"] * 2),
}


@pytest.mark.parametrize("loss_type", ["grpo", "dapo"])
@pytest.mark.parametrize("broken", list(BREAKS))
def test_assertions_and_compare_step_agree(loss_type: str, broken: str) -> None:
    spec = GRPOSpec(num_generations=4, loss_type=loss_type, beta=0.04, max_completion_length=7)
    step = make_step(spec, n_prompts=3, completion_length=7, vocab_size=20, seed=1)
    BREAKS[broken](step)
    cli = {f.check_id: f for f in compare_step(copy.deepcopy(step), spec) if f.kind == "compare"}
    raised_any = False
    for stage, (assertion, check_id) in ASSERTIONS.items():
        try:
            assertion(copy.deepcopy(step), spec=spec)
            raised = False
        except GRPOCheckError as error:
            raised = True
            assert error.finding.check_id == check_id
        raised_any |= raised
        assert raised == (cli[check_id].verdict is Verdict.FAIL), (stage, cli[check_id].explanation)
    assert raised_any == (broken != "correct")  # silent on the correct step, firing on every broken one
