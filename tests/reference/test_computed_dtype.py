"""The precision each captured tensor was computed in (what its comparison's tolerance follows)."""

from __future__ import annotations

import pytest
import torch

from grpo_check._step_cache import step_cache
from grpo_check.stepref.inputs import computed_dtype
from grpo_check.trace.model import TraceStep


def _step(meta=None, **dtypes: torch.dtype) -> TraceStep:
    return TraceStep(
        tensors={name: torch.zeros(2, 3, dtype=d) for name, d in dtypes.items()}, meta=meta or {}
    )


@pytest.mark.parametrize(
    ("step", "name", "want"),
    [
        (_step(logps=torch.float32), "logps", "float32"),
        (_step(logps=torch.float64), "logps", "float64"),
        (_step(), "logps", "float32"),  # not captured
        (_step({"compute_dtype": "bfloat16"}, logps=torch.float32), "logps", "bfloat16"),  # model output
        (_step({"compute_dtype": "bfloat16"}, advantages=torch.float32), "advantages", "float32"),
        (_step({"compute_dtype": "float32"}, logps=torch.float16), "logps", "float16"),
        (_step(loss=torch.float64, logps=torch.bfloat16), "loss", "bfloat16"),  # from a bf16 input
        (_step(loss=torch.float32, logps=torch.float16, advantages=torch.bfloat16), "loss", "bfloat16"),
        (_step(loss=torch.float32, logps=torch.bfloat16, advantages=torch.float16), "loss", "bfloat16"),
        (_step(kl=torch.float32, ref_logps=torch.float16), "kl", "float16"),
        (_step(kl=torch.float32, advantages=torch.float16), "kl", "float32"),  # not an input of kl
        (_step(ratio=torch.float32, logps=torch.int64), "ratio", "float32"),  # not a float
        (_step(rewards=torch.float16), "rewards", "float16"),
    ],
)
def test_computed_dtype(step: TraceStep, name: str, want: str) -> None:
    assert computed_dtype(step, name) == want
    with step_cache(step):
        assert computed_dtype(step, name) == want
        assert computed_dtype(step, name) == want  # from the step's table


def test_computed_dtype_table_is_per_step() -> None:
    low, full = _step(loss=torch.float32, logps=torch.float16), _step(loss=torch.float32, logps=torch.float32)
    with step_cache():
        assert computed_dtype(low, "loss") == "float16"
        assert computed_dtype(full, "loss") == "float32"
        assert computed_dtype(low, "logps") == "float16"


def test_full_precision_shortcut_equals_the_rule_name_by_name() -> None:
    """Steps with and without low-precision tensors or compute dtype: every name's answer from the step's
    table (the shortcut where nothing is low precision) equals the rule applied to that name alone."""
    from grpo_check.stepref.inputs import _computed_dtype

    names = (
        "logps",
        "old_logps",
        "ref_logps",
        "ratio",
        "kl",
        "per_token_loss",
        "loss",
        "logps_grad",
        "rewards",
    )
    steps = [
        _step(logps=torch.float32, ratio=torch.float32, loss=torch.float64, advantages=torch.float32),
        _step({"compute_dtype": "bfloat16"}, logps=torch.float32, ratio=torch.float32),
        _step(logps=torch.float32, ref_logps=torch.float16, kl=torch.float32),
        _step({"compute_dtype": "float32"}, loss=torch.bfloat16, per_token_loss=torch.float32),
        _step(logps=torch.int64, ratio=torch.float64),
    ]
    for step in steps:
        with step_cache(step):
            for name in names:
                assert computed_dtype(step, name) == _computed_dtype(step, name), (step.meta, name)
