"""The numpy paths the gradient, ratio, log-prob and KL invariants take on small CPU steps give exactly the
findings of their torch paths (every field, by repr), on correct and broken steps."""

from __future__ import annotations

import copy
import dataclasses
import itertools
from collections.abc import Callable

import pytest
import torch

from grpo_check.compare.synthetic import make_step
from grpo_check.config import GRPOSpec
from grpo_check.findings import Verdict
from grpo_check.invariants import grad, kl, logps, ratio, run_invariants
from grpo_check.trace.model import TraceStep

_MODULES = (grad, ratio, logps, kl)
_PREFIXES = ("grad.", "ratio.", "logps.", "kl.", "loss.")


def _records(step: TraceStep, spec: GRPOSpec, tolerances: dict[str, float] | None = None) -> list[str]:
    """Every field of every finding of the invariants with a numpy path, by repr."""
    findings = run_invariants(step, spec, checks=list(_PREFIXES), tolerances=tolerances)
    return [
        repr({field.name: getattr(finding, field.name) for field in dataclasses.fields(finding)})
        for finding in findings
    ]


def _verdicts(step: TraceStep, spec: GRPOSpec) -> set[Verdict]:
    return {finding.verdict for finding in run_invariants(step, spec, checks=list(_PREFIXES))}


def _torch_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every numpy view refused: the path large or GPU tensors take."""
    for module in _MODULES:
        if hasattr(module, "host_view"):
            monkeypatch.setattr(module, "host_view", lambda tensor: None)


def _assert_same(monkeypatch: pytest.MonkeyPatch, step: TraceStep, spec: GRPOSpec, **kwargs) -> None:
    fast = _records(step, spec, **kwargs)
    with monkeypatch.context() as patch:
        _torch_only(patch)
        general = _records(step, spec, **kwargs)
    assert fast == general


def _set(name: str, make: Callable[[TraceStep], torch.Tensor]) -> Callable[[TraceStep], None]:
    def mutate(step: TraceStep) -> None:
        if step.has(name):
            step.tensors[name] = make(step)

    return mutate


def _at(name: str, row: int, token: int, value: float) -> Callable[[TraceStep], None]:
    def make(step: TraceStep) -> torch.Tensor:
        changed = step[name].clone()
        changed[row, min(token, changed.shape[1] - 1)] = value
        return changed

    return _set(name, make)


def _extreme(step: TraceStep) -> None:
    """Finite inputs whose intermediates are not: ρ = 0 and exp(ref − logp) = inf at one token (0·inf),
    ρ at float32's largest value at another."""
    for name, value in (("ratio", 0.0), ("logps", -800.0), ("ref_logps", 0.0), ("old_logps", 0.0)):
        _at(name, 0, 0, value)(step)
    _at("ratio", 1, 0, torch.finfo(torch.float32).max)(step)


def _on_policy(step: TraceStep) -> None:
    """old_logps = logps and ρ ≡ 1: every token ties in ratio.matches_logps' excess (first position wins)."""
    _set("old_logps", lambda s: s["logps"].clone())(step)
    _set("ratio", lambda s: torch.ones_like(s["ratio"]))(step)


_BREAKS: dict[str, Callable[[TraceStep], None]] = {
    "correct": lambda step: None,
    "negated_grad": _set("logps_grad", lambda s: -s["logps_grad"]),
    "zero_grad": _set("logps_grad", lambda s: torch.zeros_like(s["logps_grad"])),
    "one_zero_grad": _at("logps_grad", 0, 0, 0.0),
    "nan_grad": _at("logps_grad", 1, 1, float("nan")),
    "grad_in_padding": _set("logps_grad", lambda s: s["logps_grad"] + 1e-3 * (1 - s["completion_mask"])),
    "negated_advantages": _set("advantages", lambda s: -s["advantages"]),
    "zero_advantages": _set("advantages", lambda s: torch.zeros_like(s["advantages"])),
    "infinite_logp": _at("logps", 1, 2, float("inf")),
    "positive_logps": _set("logps", lambda s: s["logps"].abs()),
    "quantised_logps": _set("logps", lambda s: s["logps"].to(torch.bfloat16).to(s["logps"].dtype)),
    "half_grid_logps": _set("old_logps", lambda s: s["old_logps"].to(torch.float16).to(s["old_logps"].dtype)),
    "ref_is_policy": _set("ref_logps", lambda s: s["logps"].clone()),
    "ratio_off": _set("ratio", lambda s: s["ratio"] * 1.01),
    "nan_ratio": _at("ratio", 0, 1, float("nan")),
    "negative_kl": _set("kl", lambda s: -s["kl"] - 1e-3),
    "zero_logp": _at("logps", 0, 0, 0.0),
    "negative_zero_logp": _at("old_logps", 1, 0, -0.0),
    "zero_kl": _set("kl", lambda s: torch.zeros_like(s["kl"])),
    "signed_zero_kl": _set(
        "kl", lambda s: torch.where(s["completion_mask"] > 0, -0.0, 0.0).to(s["kl"].dtype)
    ),
    "one_negative_kl": _at("kl", 1, 2, -0.5),
    "mask_hole": _at("completion_mask", 0, 1, 0),
    "empty_mask": _set("completion_mask", lambda s: torch.zeros_like(s["completion_mask"])),
    "sampler_zero": _set("sampler_is_ratio", lambda s: torch.zeros_like(s["sampler_is_ratio"])),
    "extreme_values": _extreme,
    "column_advantages": _set("advantages", lambda s: s["advantages"].unsqueeze(1)),
    "token_advantages": _set(
        "advantages", lambda s: s["advantages"].unsqueeze(1).expand_as(s["logps"]).contiguous()
    ),
    "on_policy": _on_policy,
    # a float64 gradient of the right sign whose product with A underflows to −0.0 (and one that is 0.0)
    "underflowing_grad": _set(
        "logps_grad",
        lambda s: -torch.sign(s["advantages"].double()).reshape(-1, 1).expand_as(s["logps"]) * 5e-324,
    ),
}


def _spec(**changes) -> GRPOSpec:
    return GRPOSpec(num_generations=4, max_completion_length=7, **changes)


_SPECS = [
    _spec(loss_type=loss_type, beta=beta, kl_estimator=estimator, use_bias_correction_kl=bias)
    for loss_type, beta, estimator, bias in itertools.product(
        ("grpo", "dapo", "cispo"), (0.0, 0.04), ("k1", "k2", "k3"), (True, False)
    )
    if beta != 0.0 or (estimator == "k3" and bias)
] + [
    _spec(loss_type="dapo", epsilon_high=0.28, beta=0.04),
    _spec(loss_type="grpo", delta=1.3, beta=0.0),
    _spec(loss_type="bnpo", dual_clip=3.0, beta=0.04, kl_estimator="k2"),
    _spec(loss_type="grpo", importance_sampling_level="sequence", beta=0.04),
    _spec(loss_type="grpo", importance_sampling_level="sequence", beta=0.04, use_bias_correction_kl=False),
    _spec(loss_type="dapo", beta=0.04, sampler_is_correction=True, sampler_is_mode="token_truncate"),
    _spec(loss_type="dapo", beta=-0.04, use_bias_correction_kl=False),
]


@pytest.mark.filterwarnings("error")  # numpy's warnings on NaN and overflow would be errors
@pytest.mark.parametrize("spec", _SPECS)
def test_numpy_paths_equal_torch_paths_on_correct_and_broken_steps(
    monkeypatch: pytest.MonkeyPatch, spec: GRPOSpec
) -> None:
    step = make_step(spec, n_prompts=2, completion_length=7, vocab_size=20, seed=3)
    verdicts: set[Verdict] = set()
    for mutate in _BREAKS.values():
        broken = copy.deepcopy(step)
        mutate(broken)
        _assert_same(monkeypatch, broken, spec)
        verdicts |= _verdicts(broken, spec)
    assert {Verdict.PASS, Verdict.FAIL} <= verdicts  # the cases reach both outcomes


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    "break_name", ["correct", "negated_grad", "quantised_logps", "negative_kl", "ratio_off"]
)
def test_numpy_paths_equal_torch_paths_in_every_dtype(
    monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype, break_name: str
) -> None:
    spec = _spec(loss_type="dapo", beta=0.04)
    step = make_step(spec, n_prompts=2, completion_length=7, vocab_size=20, seed=5, dtype=dtype)
    _BREAKS[break_name](step)
    _assert_same(monkeypatch, step, spec)


def test_numpy_paths_equal_torch_paths_with_tolerances_and_edge_shapes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = _spec(loss_type="dapo", beta=0.04)
    step = make_step(spec, n_prompts=2, completion_length=7, vocab_size=20, seed=7)
    tolerances = {
        "grad.zero_outside_loss_mask": 1e-2,
        "grad.kl_sign_where_kl_dominates": 1e-3,
        "ratio.matches_logps": 1e-9,
        "kl.nonnegative": 0.0,
        "logps.nonpositive": 0.5,
        "logps.bf16_quantised": 0.0,
    }
    for mutate in _BREAKS.values():
        broken = copy.deepcopy(step)
        mutate(broken)
        _assert_same(monkeypatch, broken, spec, tolerances=tolerances)
    empty = copy.deepcopy(step)
    for name, tensor in list(empty.tensors.items()):
        if tensor.dim() == 2 and tensor.shape[1] == 7:
            empty.tensors[name] = tensor[:, :0]
    _assert_same(monkeypatch, empty, spec)
    no_mask = copy.deepcopy(step)
    del no_mask.tensors["completion_mask"]
    _assert_same(monkeypatch, no_mask, spec)


def test_kl_nonnegative_decides_a_clean_step_in_numpy() -> None:
    """The numpy extremes are taken (not a path that always defers) and are the torch path's figures."""
    spec = _spec(loss_type="dapo", beta=0.04)
    step = make_step(spec, n_prompts=2, completion_length=7, vocab_size=20, seed=3)
    values, valid = step["kl"], step["completion_mask"].bool()
    extremes = kl._host_extremes(values, valid)
    assert extremes is not None
    assert extremes == (
        float(torch.where(valid, values.abs(), 0.0).max()),
        -float(torch.where(valid, -values, -torch.inf).max()),
    )
    assert kl._host_extremes(torch.zeros_like(values), valid) is None  # a zero minimum: torch decides
    assert kl._host_extremes(values.bfloat16(), valid) is None  # no numpy view
    # the minimum and maximum give the torch figures whichever sign and dtype holds the largest |value|
    flipped = values.clone()
    flipped[0, 0] = -5.0
    for case in (values, -values - 1.0, flipped, values.double(), flipped.double(), values + 1.0):
        for mask in (valid, torch.ones_like(valid), torch.zeros_like(valid)):
            expected = (
                float(torch.where(mask, case.abs(), 0.0).max()),
                -float(torch.where(mask, -case, -torch.inf).max()),
            )
            assert kl._host_extremes(case, mask) == expected, (case, mask)
    with_nan = values.clone()
    with_nan[0, 0] = float("nan")
    assert kl._host_extremes(with_nan, torch.ones_like(valid)) is None  # a NaN: the torch path decides


def test_logps_nonpositive_takes_the_tops_of_a_clean_stack_in_numpy() -> None:
    """The numpy maxima are taken on a clean step and are the torch path's; a zero maximum defers."""
    from grpo_check._step_cache import step_cache

    spec = _spec(loss_type="dapo", beta=0.04)
    step = make_step(spec, n_prompts=2, completion_length=7, vocab_size=20, seed=3)
    with step_cache():
        stack = logps._logp_stack(step)
        tops = logps._stack_tops_host(stack)
        expected = torch.where(stack.valid, stack.values, -torch.inf).amax(dim=(1, 2)).tolist()
    assert tops is not None and tops == expected
    step.tensors["logps"] = step["logps"].clone()
    step.tensors["logps"][0, 0] = 0.0
    with step_cache():
        assert logps._stack_tops_host(logps._logp_stack(step)) is None


def test_logp_stack_refuses_what_it_cannot_stack_and_changes_no_finding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The stack holds the step's 2-D float32/float64 log-prob tensors of one shape and dtype (two or more);
    with it or without it (per tensor), the log-prob checks find the same."""
    from grpo_check._step_cache import step_cache

    spec = _spec(loss_type="dapo", beta=0.04)
    step = make_step(spec, n_prompts=2, completion_length=7, vocab_size=20, seed=3)
    mixed_dtype = copy.deepcopy(step)
    mixed_dtype.tensors["ref_logps"] = step["ref_logps"].double()
    mixed_shape = copy.deepcopy(step)
    mixed_shape.tensors["sampler_logps"] = step["sampler_logps"][:, :-1]
    alone = TraceStep(tensors={"logps": step["logps"], "completion_mask": step["completion_mask"]})
    halves = copy.deepcopy(step)
    for name in logps.LOGP_NAMES:
        halves.tensors[name] = step[name].half()
    positive = copy.deepcopy(step)
    positive.tensors["old_logps"] = step["old_logps"].abs()
    with step_cache():
        stack = logps._logp_stack(step)
        assert stack is not None and stack.names == list(logps.LOGP_NAMES)
        assert torch.equal(stack.values, torch.stack([step[name] for name in logps.LOGP_NAMES]))
        for refused in (mixed_dtype, mixed_shape, alone, halves):
            assert logps._logp_stack(refused) is None
    cases = (step, mixed_dtype, mixed_shape, alone, halves, positive)
    checks = ["logps.nonpositive", "logps.bf16_quantised"]
    stacked = [[repr(f) for f in run_invariants(case, spec, checks=checks)] for case in cases]
    monkeypatch.setattr(logps, "_logp_stack", lambda step: None)
    assert [[repr(f) for f in run_invariants(case, spec, checks=checks)] for case in cases] == stacked
