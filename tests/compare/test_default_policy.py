"""A step compared without a declared tolerance policy is held to the default policy, exactly as with one."""

from __future__ import annotations

import dataclasses

from grpo_check.compare import TolerancePolicy, compare_step, engine
from grpo_check.compare.synthetic import make_step
from grpo_check.config import GRPOSpec


def test_compare_step_without_a_policy_equals_the_default_policy() -> None:
    for loss_type, beta in (("dapo", 0.04), ("grpo", 0.0)):
        spec = GRPOSpec(num_generations=4, loss_type=loss_type, beta=beta)
        for step in (make_step(spec), make_step(spec, seed=1)):
            step.tensors["loss"] = step["loss"] * 2 if beta == 0.0 else step["loss"]  # a failing one too
            implicit = [dataclasses.asdict(f) for f in compare_step(step, spec)]
            explicit = [dataclasses.asdict(f) for f in compare_step(step, spec, tolerances=TolerancePolicy())]
            assert repr(implicit) == repr(explicit)
    assert TolerancePolicy() == engine._DEFAULT_POLICY and not engine._DEFAULT_POLICY.overrides
