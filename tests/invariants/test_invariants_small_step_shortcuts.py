"""The batch, reward and advantage invariants give the same findings, field for field, whether they read
small tensors through numpy views and few groups' figures as Python floats or run the general tensor
operations (the shortcuts turned off), on correct and broken steps, in every dtype."""

from __future__ import annotations

import dataclasses
import math
import random
import re

import pytest
import torch
from invariants_builders import build_step, group_advantages, with_tensors

import grpo_check._step_cache as step_cache_module
import grpo_check.invariants._common as common
from grpo_check.compare.synthetic import make_step
from grpo_check.config import GRPOSpec
from grpo_check.findings import Verdict
from grpo_check.invariants import REGISTRY, run_invariants
from grpo_check.invariants._common import first_argmax, first_argmin, nan_max
from grpo_check.trace.model import TraceStep

_STAGES = ("batch", "rewards", "advantages")
_CHECKS = [check for check in REGISTRY.values() if check.stage in _STAGES]


def _variants() -> list[tuple[str, TraceStep, GRPOSpec | None]]:
    out: list[tuple[str, TraceStep, GRPOSpec | None]] = []
    for prompts, G in ((1, 8), (3, 4), (20, 2)):
        built = build_step(seed=prompts, prompts=prompts, G=G, T=6)
        out.append((f"correct_{prompts}x{G}", built.step, built.spec))
    built = build_step(seed=7, prompts=3, G=4, T=6)
    step, spec, G = built.step, built.spec, 4
    rewards, advantages = step["rewards"], step["advantages"]
    per_func, mask = step["rewards_per_func"], step["completion_mask"]
    nan_adv = advantages.clone()
    nan_adv[5] = float("nan")
    inf_adv = advantages.clone()
    inf_adv[1] = float("inf")
    constant_residue = advantages.clone()
    constant_residue[:G] = torch.tensor([1e-3, -2e-3, 1e-3, 0.0])
    nan_rewards = per_func.clone()
    nan_rewards[6] = float("nan")
    unscorable_adv = group_advantages(
        nan_rewards.nansum(1).masked_fill(nan_rewards.isnan().all(1), math.nan), G
    )
    holed = mask.clone()
    holed[2, 0] = 0
    soft = mask.float()
    soft[1, 1] = 0.5
    out += [
        ("interleaved", with_tensors(step, advantages=advantages.view(-1, G).t().reshape(-1)), spec),
        ("negated", with_tensors(step, advantages=-advantages), spec),
        ("huge_epsilon", with_tensors(step, advantages=group_advantages(rewards, G, 1e4)), spec),
        ("nan_advantage", with_tensors(step, advantages=nan_adv), spec),
        ("inf_advantage", with_tensors(step, advantages=inf_adv), spec),
        ("constant_residue", with_tensors(step, advantages=constant_residue), spec),
        ("overflowing_sums", with_tensors(step, advantages=advantages.double() * 1e308), spec),
        ("negative_zeros", with_tensors(step, advantages=advantages * 0.0 - 0.0), spec),
        (
            "unscorable_row",
            with_tensors(
                step,
                rewards_per_func=nan_rewards,
                rewards=nan_rewards.nansum(1).masked_fill(nan_rewards.isnan().all(1), math.nan),
                advantages=unscorable_adv,
            ),
            spec,
        ),
        ("weighted_sum_wrong", with_tensors(step, rewards=rewards * 1.5), spec),
        (
            "partial_group",
            with_tensors(step, **{k: v[:-1] for k, v in step.tensors.items() if v.dim()}),
            spec,
        ),
        ("mask_hole", with_tensors(step, completion_mask=holed), spec),
        ("labels_from_one", with_tensors(step, group_index=step["group_index"] + 1), spec),
        ("labels_skip", with_tensors(step, group_index=step["group_index"] * 2), spec),
        ("labels_reversed", with_tensors(step, group_index=step["group_index"].flip(0)), spec),
        ("labels_int32", with_tensors(step, group_index=step["group_index"].int()), spec),
        ("labels_column", with_tensors(step, group_index=step["group_index"].reshape(-1, 1)), spec),
        ("labels_merged", with_tensors(step, group_index=step["group_index"].clamp(max=1)), spec),
        ("soft_mask", with_tensors(step, completion_mask=soft), spec),
        ("no_spec", step, None),
        ("mask_two", with_tensors(step, completion_mask=mask.masked_fill(holed == 0, 2)), spec),
        ("mask_int32_negative", with_tensors(step, prompt_mask=-mask.int()), spec),
        ("mask_int8_binary", with_tensors(step, prompt_mask=mask.to(torch.int8)), spec),
        ("mask_uint8", with_tensors(step, completion_mask=(mask * 3).to(torch.uint8)), spec),
        ("mask_bool_holed", with_tensors(step, completion_mask=holed.bool()), spec),
        ("one_function", with_tensors(step, rewards_per_func=rewards.unsqueeze(1)), spec),
        ("one_function_flat", with_tensors(step, rewards_per_func=rewards.clone()), spec),
        (
            "three_functions",
            with_tensors(step, rewards_per_func=torch.cat([per_func, -per_func[:, :1] / 3], 1)),
            spec,
        ),
        (
            "signed_rewards",
            with_tensors(step, rewards_per_func=per_func * -0.7, rewards=rewards * -0.7),
            spec,
        ),
        (
            "zero_rewards",
            with_tensors(
                step,
                rewards_per_func=torch.where(per_func > 0, -0.0, 0.0),
                rewards=torch.zeros_like(rewards),
            ),
            spec,
        ),
        ("weights", with_tensors(step, reward_weights=torch.tensor([0.5, 2.0])), spec),
        ("weights_wrong", with_tensors(step, reward_weights=torch.tensor([0.5, 2.0]), rewards=rewards), spec),
        ("empty", with_tensors(step, **{k: v[:0] for k, v in step.tensors.items() if v.dim()}), spec),
        ("rloo", step, dataclasses.replace(spec, baseline="rloo")),
        ("population", step, dataclasses.replace(spec, std="population")),
        ("batch_scale", step, dataclasses.replace(spec, scale_rewards="batch")),
        ("no_scale", step, dataclasses.replace(spec, scale_rewards="none")),
        (
            "no_scale_negated",
            with_tensors(step, advantages=-advantages),
            dataclasses.replace(spec, scale_rewards="none"),
        ),
    ]
    for prompts in (1, 3):  # no all-equal group
        spec = GRPOSpec(num_generations=8, loss_type="dapo", beta=0.04, max_completion_length=6)
        made = make_step(spec, n_prompts=prompts, completion_length=6, vocab_size=50)
        adv = made["advantages"]
        swapped = adv.clone()
        swapped[[0, 1]] = adv[[1, 0]]
        out += [
            (f"synthetic_{prompts}", made, spec),
            (f"synthetic_{prompts}_negated", with_tensors(made, advantages=-adv), spec),
            (f"synthetic_{prompts}_swapped", with_tensors(made, advantages=swapped), spec),
            (f"synthetic_{prompts}_small", with_tensors(made, advantages=adv * 1e-9), spec),
            (f"synthetic_{prompts}_large", with_tensors(made, advantages=adv * 1e3), spec),
            (
                f"synthetic_{prompts}_partial",
                with_tensors(made, **{k: v[1:] for k, v in made.tensors.items() if v.dim()}),
                spec,
            ),
        ]
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        typed = {k: v.to(dtype) for k, v in step.tensors.items() if v.is_floating_point()}
        out.append((f"{dtype}", with_tensors(step, **typed), spec))
        out.append(
            (f"{dtype}_negated", with_tensors(step, **{**typed, "advantages": -typed["advantages"]}), spec)
        )
    return out


def _findings(step: TraceStep, spec: GRPOSpec | None) -> list[str]:
    shared = [repr(f) for f in run_invariants(step, spec, stages=_STAGES)]
    alone = [repr(f) for check in _CHECKS for f in check.run(step, spec)]
    overridden = [repr(f) for check in _CHECKS for f in check.run(step, spec, tolerance=1e-6)]
    return shared + alone + overridden


def test_shortcuts_give_the_general_findings(monkeypatch: pytest.MonkeyPatch) -> None:
    variants = _variants()
    fast = [_findings(step, spec) for _, step, spec in variants]
    fired = {
        f.check_id
        for _, step, spec in variants
        for f in run_invariants(step, spec, stages=_STAGES)
        if f.verdict in (Verdict.FAIL, Verdict.WARN)
    }
    monkeypatch.setattr(common, "FEW_GROUPS", -1)
    monkeypatch.setattr(step_cache_module, "HOST_ELEMENTS", -1)
    monkeypatch.setattr(common, "FEW_ROWS", -1)
    for (name, step, spec), expected in zip(variants, fast, strict=True):
        assert _findings(step, spec) == expected, name
    # the variants reach the failure branches, not only passes
    assert {
        "advantages.group_sum_zero",
        "advantages.epsilon_negligible",
        "advantages.constant_group_zero",
        "advantages.sign_follows_rewards",
        "advantages.bounded",
        "rewards.total_is_weighted_sum",
        "batch.mask_prefix",
        "batch.masks_binary",
    } <= fired


def _torch_reduction(values: list[float], name: str) -> float:
    tensor = torch.tensor(values, dtype=torch.float64)
    if name == "max":
        return float(tensor.max())
    return int(getattr(torch, name)(tensor))


def test_list_reductions_are_torchs() -> None:
    generator = random.Random(3)
    pool = [0.0, -0.0, 1.0, -1.0, 2.5, math.inf, -math.inf, math.nan, 1e-300, -1e308]
    for _ in range(3000):
        values = [generator.choice(pool) for _ in range(generator.randint(1, 6))]
        assert first_argmax(values) == _torch_reduction(values, "argmax"), values
        assert first_argmin(values) == _torch_reduction(values, "argmin"), values
        no_negative_zero = [abs(v) if v == 0 else v for v in values]
        assert repr(nan_max(no_negative_zero)) == repr(_torch_reduction(no_negative_zero, "max")), values


def test_groups_are_torch_unique_of_the_flat_int64_index() -> None:
    for ids in (
        torch.tensor([0, 0, 0, 1, 1, 2]),
        torch.tensor([0]),
        torch.tensor([[0], [1], [1]]),
        torch.tensor([0, 1, 1, 0]),
        torch.tensor([0, 2, 2]),
        torch.tensor([1, 1, 2]),
        torch.tensor([0, 0, -1]),
        torch.arange(80) // 4,
        torch.tensor([0, 0, 1, 1], dtype=torch.int16),
        torch.tensor([7, 7, 3, 3, 9, 7]),
        torch.tensor([[2], [0], [2]]),
        torch.tensor([5, 1, 5], dtype=torch.int32),
        torch.tensor([1.0, 0.0, 1.0]),
        torch.tensor([], dtype=torch.int64),
    ):
        groups = common.Groups(ids)
        values, inverse, count = torch.unique(ids.reshape(-1).long(), return_inverse=True, return_counts=True)
        assert groups.sizes() == count.tolist() and groups.largest == max(count.tolist(), default=1)
        assert groups.count_of_size(2) == int((count == 2).sum())
        assert torch.equal(groups.count_f64(torch.device("cpu")), count.double())
        assert groups.values.dtype == torch.int64 and torch.equal(groups.values, values)
        assert groups.inverse.dtype == torch.int64 and torch.equal(groups.inverse, inverse)
        assert groups.count.dtype == torch.int64 and torch.equal(groups.count, count)
        assert groups.num_groups == values.numel() and groups.row_groups == inverse.tolist()
        assert groups.all_of_size(2) == bool((count == 2).all())


def test_contiguous_labels_skip_torch_unique(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("torch.unique called")

    monkeypatch.setattr(common, "_unique", refuse)
    groups = common.Groups(torch.tensor([0, 0, 1, 1, 1, 2]))
    assert groups.sizes() == [2, 3, 1] and groups.row_groups == [0, 0, 1, 1, 1, 2]
    assert groups.values.tolist() == [0, 1, 2] and groups.count.tolist() == [2, 3, 1]
    with pytest.raises(AssertionError, match=r"torch\.unique"):
        common.Groups(torch.tensor([1, 1, 0]))


def test_argmax_2d_is_torchs_argmax() -> None:
    generator = torch.Generator().manual_seed(4)
    pool = torch.tensor([0.0, -0.0, 1.0, -1.0, math.inf, -math.inf, math.nan, 2.0])
    for shape in ((7,), (3, 5), (1, 1), (4, 0), (0,)):
        for _ in range(40):
            picks = torch.randint(0, len(pool), shape, generator=generator)
            for dtype in (torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int8):
                score = (
                    pool[picks].nan_to_num(0.0, 3.0, -3.0).to(dtype) if dtype is torch.int8 else pool[picks]
                )
                score = score.to(dtype)
                try:
                    flat = int(torch.argmax(score.reshape(-1)))
                except (RuntimeError, IndexError) as error:  # an empty score: torch's error
                    with pytest.raises(type(error), match=re.escape(str(error))):
                        common.argmax_2d(score)
                    continue
                expected = (flat, None) if score.dim() < 2 else (flat // shape[1], flat % shape[1])
                assert common.argmax_2d(score) == expected, (score, dtype)


def test_finite_sources_see_a_non_finite_value_in_any_tensor_shape() -> None:
    built = build_step(seed=2, prompts=2, G=4, T=5)
    step = built.step
    step.tensors["loss"] = torch.tensor(0.5)
    assert common.step_all_finite(step)
    for name, index in (("loss", ()), ("rewards", (1,)), ("rewards_per_func", (0, 1)), ("logps", (1, 2))):
        for bad in (math.nan, math.inf, -math.inf):
            changed = step[name].clone()
            changed[index] = bad
            broken = with_tensors(step, **{name: changed})
            assert not common.step_all_finite(broken), (name, bad)
            assert not common.known_finite(broken, name)
    on_meta = with_tensors(step, loss=torch.tensor(0.5, device="meta"))
    assert not common.step_all_finite(on_meta)  # spread over devices: not decided this way


def test_finite_sources_flatten_any_mix_of_dtypes_layouts_and_graphs(monkeypatch: pytest.MonkeyPatch) -> None:
    parts = [
        torch.ones(2, 3, dtype=torch.bfloat16),
        torch.tensor(2.5),
        torch.ones(3, dtype=torch.float16),
        torch.ones(0, 2, dtype=torch.float64),
        torch.arange(12.0).reshape(4, 3)[:, ::2],
    ]
    assert torch.equal(common._flatten_dense(parts), common._flatten_all(parts))
    built = build_step(seed=3, prompts=2, G=3, T=4)
    step = built.step
    step.tensors["loss"] = torch.tensor(0.5, requires_grad=True)
    step.tensors["logps"] = step["logps"].double().t().contiguous().t()  # non-contiguous, float64
    for flatten in (common._flatten_dense, common._flatten_all):
        monkeypatch.setattr(common, "_flatten_dense", flatten)
        assert common.step_all_finite(step)
        for name in ("loss", "logps", "advantages"):
            changed = step[name].detach().clone()
            changed[(-1,) * changed.dim()] = math.nan
            assert not common.step_all_finite(with_tensors(step, **{name: changed})), (flatten, name)


def test_passed_and_scalar_like_build_what_their_keyword_forms_build() -> None:
    from grpo_check.invariants._common import Outcome, passed, scalar_like

    outcome = passed("fine", 1.5, 2.0, groups=3)
    assert outcome == Outcome(Verdict.PASS, "fine", figure=1.5, tolerance=2.0, details={"groups": 3})
    assert passed("fine").details == {} and passed("fine").details is not passed("fine").details
    like = torch.ones(2, dtype=torch.float32)
    constant = scalar_like(0.25, like)
    assert constant is scalar_like(0.25, like) and constant.device == like.device
    assert constant.dtype == torch.float32 and float(constant) == 0.25
    on_meta = scalar_like(0.25, torch.ones(2, device="meta"))
    assert on_meta.device.type == "meta" and on_meta is not constant


def _random_step(generator: random.Random) -> tuple[TraceStep, GRPOSpec]:
    """A step of random group structure whose rewards and advantages mix equal values, tiny and huge ones,
    NaN and ±inf, in a random dtype."""
    prompts, G = generator.randint(1, 4), generator.randint(1, 5)
    rows = prompts * G
    pool = [0.0, 1.0, -1.0, 0.5, 1e-9, 1e30, 3.0]
    rewards_per_func = torch.tensor([[generator.choice(pool) for _ in range(2)] for _ in range(rows)])
    if generator.random() < 0.3:
        rewards_per_func[generator.randrange(rows), :] = math.nan
    rewards = rewards_per_func.nansum(1).masked_fill(rewards_per_func.isnan().all(1), math.nan)
    advantages = group_advantages(rewards, G, generator.choice([1e-4, 1e4]))
    if generator.random() < 0.3:
        advantages = advantages * generator.choice([-1.0, 1e-12, 1e3])
    if generator.random() < 0.2:
        advantages[generator.randrange(rows)] = generator.choice([math.nan, math.inf, -math.inf, 0.0])
    group_index = torch.arange(prompts).repeat_interleave(G)
    if generator.random() < 0.2:
        group_index = group_index[torch.randperm(rows, generator=torch.Generator().manual_seed(rows))]
    keep = rows if generator.random() < 0.7 else generator.randint(1, rows)
    dtype = generator.choice([torch.float32, torch.float64, torch.float16, torch.bfloat16])
    tensors = {
        "rewards_per_func": rewards_per_func[:keep].to(dtype),
        "rewards": rewards[:keep].to(dtype),
        "advantages": advantages[:keep].to(dtype),
        "group_index": group_index[:keep],
    }
    if generator.random() < 0.2:
        del tensors["rewards"]
    if generator.random() < 0.2:
        tensors["reward_weights"] = torch.tensor([generator.choice([0.5, 1.0, 2.0]), 1.0])
    T = generator.randint(1, 4)
    lengths = torch.tensor([generator.randint(0, T) for _ in range(keep)])
    mask = torch.arange(T).expand(keep, T) < lengths.unsqueeze(1)
    if generator.random() < 0.2 and T > 1:
        mask[generator.randrange(keep), 0] = False  # a hole when the row goes on
    tensors["completion_mask"] = mask.to(
        generator.choice([torch.bool, torch.int64, torch.int32, torch.float32])
    )
    if generator.random() < 0.3:  # (B, T) advantages, constant along each row's tokens
        tensors["advantages"] = tensors["advantages"].unsqueeze(1).expand(keep, T).clone()
    step = TraceStep(tensors=tensors)
    spec = GRPOSpec(
        num_generations=G,
        scale_rewards=generator.choice(["group", "batch", "none"]),
        baseline=generator.choice(["mean", "rloo"]),
        std=generator.choice(["sample", "population"]),
    )
    return step, spec


def test_random_steps_give_the_general_findings(monkeypatch: pytest.MonkeyPatch) -> None:
    generator = random.Random(11)
    cases = [_random_step(generator) for _ in range(80)]
    fast = [_findings(step, spec) for step, spec in cases]
    monkeypatch.setattr(common, "FEW_GROUPS", -1)
    monkeypatch.setattr(common, "FEW_ROWS", -1)
    monkeypatch.setattr(step_cache_module, "HOST_ELEMENTS", -1)
    monkeypatch.setattr(common, "_finite_sources", lambda step: {})  # nothing known finite in advance
    for index, ((step, spec), expected) in enumerate(zip(cases, fast, strict=True)):
        assert _findings(step, spec) == expected, index


def test_python_group_sums_give_the_tensor_path_findings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the per-group sums of a few rows as Python floats turned off: the same findings."""
    import grpo_check.invariants.advantages as advantages_module

    variants = _variants()
    fast = [_findings(step, spec) for _, step, spec in variants]
    monkeypatch.setattr(advantages_module, "FEW_ROWS", -1)
    for (name, step, spec), expected in zip(variants, fast, strict=True):
        assert _findings(step, spec) == expected, name


def test_group_sum_list_is_groups_sum() -> None:
    generator = random.Random(5)
    pool = [0.0, -0.0, 1.0, -1.0, 0.1, 1e-300, -1e308, 1e308, 3.3e16, -2.2e-16, math.inf, -math.inf, math.nan]
    for _ in range(2000):
        rows = generator.randint(1, 12)
        labels = [generator.randint(0, 3) for _ in range(rows)]
        if generator.random() < 0.5:
            labels.sort()
        values = [generator.choice(pool) * generator.choice((1.0, 0.5, 7.0)) for _ in range(rows)]
        groups = common.Groups(torch.tensor(labels))
        expected = groups.sum(torch.tensor(values, dtype=torch.float64)).tolist()
        assert repr(groups.sum_list(values)) == repr(expected), (labels, values)
