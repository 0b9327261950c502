"""Registry-level behaviour: silent on correct steps, NOT_CAPTURED when inputs are missing, assert forms."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from invariants_builders import bad, build_step, only, with_tensors

import grpo_check.invariants as invariants
from grpo_check.config import GRPOSpec
from grpo_check.findings import STAGES, GRPOCheckError, InputError, Verdict
from grpo_check.invariants import REGISTRY, get, run_invariants
from grpo_check.trace.model import TENSOR_STAGE, Trace, TraceStep


def test_ids_are_stage_qualified_and_declare_inputs():
    for check_id, check in REGISTRY.items():
        stage, name = check_id.split(".", 1)
        assert stage == check.stage and stage in STAGES and name
        for alternative in check.requires:
            for needed in alternative:
                assert needed in TENSOR_STAGE or needed == "completion_text" or needed.startswith("meta."), (
                    needed
                )
        assert check.description and check.likely_cause and check.fix


def test_registry_follows_pipeline_order():
    order = [STAGES.index(c.stage) for c in REGISTRY.values()]
    assert order == sorted(order)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"beta": 0.04},
        {"off_policy": True},
        {"off_policy": True, "beta": 0.04, "seed": 3},
        {"off_policy": True, "tool_tokens": True},
        {"off_policy": True, "epsilon_high": 0.28, "seed": 5},
        {"loss_type": "grpo", "G": 8, "prompts": 2, "seed": 7},
    ],
)
def test_silent_on_correct_steps(options):
    built = build_step(**options)
    findings = run_invariants(built.step, built.spec)
    assert len(findings) >= len(REGISTRY)
    assert bad(findings) == []
    assert not [f for f in findings if f.verdict is Verdict.FAIL]


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    G=st.integers(2, 6),
    prompts=st.integers(1, 4),
    T=st.integers(1, 8),
    beta=st.sampled_from([0.0, 0.04]),
    off_policy=st.booleans(),
)
def test_silent_on_generated_valid_batches(seed, G, prompts, T, beta, off_policy):
    built = build_step(seed=seed, G=G, prompts=prompts, T=T, beta=beta, off_policy=off_policy)
    assert bad(run_invariants(built.step, built.spec)) == []


def test_empty_step_is_not_captured_everywhere():
    findings = run_invariants(TraceStep())
    assert {f.verdict for f in findings} == {Verdict.NOT_CAPTURED}
    assert {f.check_id for f in findings} == set(REGISTRY)


def test_missing_tensor_names_what_is_missing():
    built = build_step()
    step = with_tensors(built.step, group_index=None)
    finding = only(
        run_invariants(step, built.spec, checks=["advantages.group_sum_zero"]), "advantages.group_sum_zero"
    )
    assert finding.verdict is Verdict.NOT_CAPTURED
    assert finding.details["missing"] == ["group_index"]


def test_selection_by_prefix_and_stage():
    built = build_step()
    ids = {f.check_id for f in run_invariants(built.step, built.spec, checks=["grad."])}
    assert ids == {c for c in REGISTRY if c.startswith("grad.")}
    ids = {f.check_id for f in run_invariants(built.step, built.spec, stages=["kl"])}
    assert ids == {c for c in REGISTRY if c.startswith("kl.")}
    with pytest.raises(KeyError, match="unknown invariant"):
        run_invariants(built.step, checks=["advantages.nope"])


def test_trace_uses_its_spec_and_every_step():
    built = build_step(G=4)
    trace = Trace(manifest={"config": built.spec.to_dict()}, steps=[built.step, built.step])
    findings = run_invariants(trace, checks=["batch.group_sizes"])
    assert [f.verdict for f in findings] == [Verdict.PASS, Verdict.PASS]
    # with a spec claiming G=3 the same trace fails: the trace's spec was used above
    wrong = Trace(manifest={"config": GRPOSpec(num_generations=3).to_dict()}, steps=[built.step])
    assert run_invariants(wrong, checks=["batch.group_sizes"])[0].verdict is Verdict.FAIL


def test_shape_errors_are_inconclusive_not_crashes():
    step = TraceStep(tensors={"advantages": torch.ones(4), "group_index": torch.zeros(3, dtype=torch.long)})
    finding = run_invariants(step, checks=["advantages.group_sum_zero"])[0]
    assert finding.verdict is Verdict.INCONCLUSIVE
    assert "group_index has 3 rows, advantages 4" in finding.explanation


def test_an_assertion_on_malformed_inputs_raises_instead_of_returning_inconclusive():
    with pytest.raises(InputError, match="group_index has 3 rows, advantages 4"):
        invariants.assert_group_sum_zero(advantages=torch.ones(4), group_index=torch.tensor([0, 0, 1]))
    with pytest.raises(InputError, match=r"completion_ids \(2, 3\) and completion_mask \(2, 5\) differ"):
        invariants.assert_mask_prefix_eos(
            completion_ids=torch.ones(2, 3, dtype=torch.long),
            completion_mask=torch.ones(2, 5),
            eos_token_ids=[1],
        )


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"group_idx": [0, 0]}, "unknown input 'group_idx' \\(did you mean 'group_index'\\?\\)"),
        ({"group_index": [0, 0], "tolerence": 1.0}, "did you mean 'tolerance'"),
        ({"group_index": [0, 0], "tolerance": -1.0}, "tolerance must be a number >= 0"),
        ({"group_index": [0, 0], "tolerance": "big"}, "tolerance must be a number >= 0"),
    ],
)
def test_an_assertion_refuses_misspelt_inputs_and_bad_tolerances(inputs, message):
    with pytest.raises(InputError, match=message):
        invariants.assert_group_sum_zero(advantages=torch.tensor([1.0, -1.0]), **inputs)
    ok = invariants.assert_group_sum_zero(
        advantages=torch.tensor([1.0, -1.0]), group_index=[0, 0], my_note="x"
    )
    assert ok.verdict is Verdict.PASS  # a meta key of the user's own, far from every known name, is kept


def test_an_assertion_refuses_a_tensor_in_the_place_of_the_step():
    with pytest.raises(InputError, match="the positional argument is a TraceStep"):
        invariants.assert_group_sum_zero(torch.ones(4))


def test_run_invariants_refuses_typos_instead_of_running_nothing():
    step = TraceStep(tensors={"advantages": torch.tensor([1.0, -1.0]), "group_index": torch.tensor([0, 0])})
    with pytest.raises(InputError, match="unknown stage\\(s\\) 'advantage'"):
        run_invariants(step, stages=["advantage"])
    with pytest.raises(InputError, match=r"did you mean 'advantages\.group_sum_zero'"):
        run_invariants(step, tolerances={"advantages.group_sum_zer": 1e-3})
    with pytest.raises(InputError, match="must be a number >= 0"):
        run_invariants(step, tolerances={"advantages.group_sum_zero": -1})
    with pytest.raises(InputError, match="takes a TraceStep, a Trace or a list of TraceSteps, got dict"):
        run_invariants({"advantages": torch.ones(2)})
    one = run_invariants(step, checks="advantages.group_sum_zero")  # one id as a string, not its letters
    assert [f.check_id for f in one] == ["advantages.group_sum_zero"]
    assert run_invariants(step, stages="advantages") and run_invariants([]) == []


@pytest.mark.parametrize("bad_id", ["losss.thing", "thing3", "loss.", "loss.my-check"])
def test_register_refuses_ids_that_are_not_stage_dot_name(bad_id):
    with pytest.raises(ValueError, match=r"an invariant id is '<stage>\.<name>'"):
        invariants.register(
            bad_id, requires=("loss",), description="d", tolerance="t", likely_cause="c", fix="f"
        )


def test_assert_form_on_plain_tensors_raises_with_coordinates():
    advantages = torch.tensor([1.0, -1.0, 0.9, 0.9, -0.9, 0.3])
    group_index = torch.tensor([0, 0, 1, 1, 1, 1])
    with pytest.raises(GRPOCheckError) as error:
        invariants.assert_group_sum_zero(advantages=advantages, group_index=group_index.tolist(), step=4)
    finding = error.value.finding
    assert finding.check_id == "advantages.group_sum_zero"
    assert (finding.where.step, finding.where.prompt, finding.where.generation) == (4, 1, 0)
    message = str(error.value)
    assert "advantages.group_sum_zero" in message and "measured" in message and "allowed" in message
    assert "likely cause" in message and "fix" in message
    ok = invariants.assert_group_sum_zero(
        advantages=torch.tensor([1.0, -1.0]), group_index=torch.tensor([0, 0])
    )
    assert ok.verdict is Verdict.PASS


def test_assert_form_on_a_step_and_missing_inputs():
    built = build_step()
    assert invariants.assert_logps_nonpositive(built.step).verdict is Verdict.PASS
    assert invariants.assert_advantages_bounded(built.step, spec=built.spec).verdict is Verdict.PASS
    with pytest.raises(InputError, match="group_index"):
        invariants.assert_group_sum_zero(advantages=torch.zeros(4))


def test_assert_strict_raises_on_warn():
    step = TraceStep(tensors={"group_index": torch.tensor([0, 0, 1])})
    assert invariants.assert_group_sizes(step, spec=GRPOSpec(num_generations=2)).verdict is Verdict.WARN
    with pytest.raises(GRPOCheckError):
        invariants.assert_group_sizes(step, spec=GRPOSpec(num_generations=2), strict=True)


def test_assert_invariants_lists_all_failures():
    built = build_step()
    broken = with_tensors(built.step, logps=-built.step["logps"], advantages=built.step["advantages"] * 1000)
    with pytest.raises(GRPOCheckError) as error:
        invariants.assert_invariants(broken, built.spec)
    assert "logps.nonpositive" in str(error.value) and "advantages.bounded" in str(error.value)


def test_every_check_has_assert_forms():
    for check in REGISTRY.values():
        assert callable(getattr(invariants, f"assert_{check.stage}_{check.name}"))
    assert get("advantages.group_sum_zero") is invariants.ASSERTS["assert_group_sum_zero"]


def test_not_captured_is_reported_once_per_trace_and_only_where_nothing_ran():
    built = build_step()
    advantages_only = TraceStep(
        tensors={"advantages": built.step["advantages"], "group_index": built.step["group_index"]}
    )
    gradients_only = TraceStep(tensors={"logps_grad": built.step["logps_grad"]}, meta={"step": 3})
    findings = run_invariants([advantages_only, gradients_only, gradients_only], built.spec)
    by_check = {}
    for finding in findings:
        by_check.setdefault(finding.check_id, []).append(finding.verdict)
    assert Verdict.NOT_CAPTURED not in by_check["advantages.group_sum_zero"]  # ran on the first step
    assert Verdict.NOT_CAPTURED not in by_check["grad.finite"]  # ran on the others
    assert by_check["kl.finite"] == [Verdict.NOT_CAPTURED]  # ran nowhere: reported once


def test_coordinates_use_extra_group_index_of_micro_batches():
    """Adapters keep a micro-batch's (partial) group ids under extra.group_index: coordinates still name the prompt."""
    logps = torch.full((4, 3), -1.0)
    logps[3, 1] = 2.0
    step = TraceStep(
        tensors={
            "logps": logps,
            "extra.group_index": torch.tensor([5, 5, 6, 6]),
            "completion_ids": torch.arange(12).view(4, 3),
        },
        meta={"step": 2, "micro_batch": 1},
    )
    finding = run_invariants(step, checks=["logps.nonpositive"])[0]
    where = finding.where
    assert (
        where.step,
        where.micro_batch,
        where.prompt,
        where.generation,
        where.row,
        where.token,
        where.token_id,
    ) == (
        2,
        1,
        6,
        1,
        3,
        1,
        10,
    )


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    dropped=st.sets(
        st.sampled_from(
            [
                "completion_ids",
                "completion_mask",
                "group_index",
                "truncated",
                "rewards_per_func",
                "rewards",
                "advantages",
                "logps",
                "old_logps",
                "ref_logps",
                "entropies",
                "ratio",
                "clipped_ratio",
                "is_low_clipped",
                "is_high_clipped",
                "kl",
                "per_token_loss",
                "loss",
                "loss_normalizer",
                "logps_grad",
            ]
        )
    ),
    drop_text=st.booleans(),
    drop_meta=st.sets(
        st.sampled_from(["step", "eos_token_ids", "pad_token_id", "optimizer_steps_since_old_logps"])
    ),
    options=st.sampled_from([{}, {"off_policy": True}, {"off_policy": True, "beta": 0.04}]),
)
def test_any_subset_of_a_correct_capture_never_fails(dropped, drop_text, drop_meta, options):
    """Capturing less never turns a correct step into a failure: missing inputs are not_captured/inconclusive."""
    built = build_step(seed=11, **options)
    step = with_tensors(built.step, **dict.fromkeys(dropped))
    if drop_text:
        step.completion_text = None
    for key in drop_meta:
        step.meta.pop(key, None)
    assert [(f.check_id, f.explanation) for f in bad(run_invariants(step, built.spec))] == []


def test_not_captured_names_a_tensor_held_under_a_misspelt_name():
    step = TraceStep(tensors={"advantage": torch.ones(2), "group_index": torch.tensor([0, 0])})
    (finding,) = run_invariants(step, checks=["advantages.group_sum_zero"])
    assert finding.verdict is Verdict.NOT_CAPTURED
    assert "the step holds 'advantage': did you mean 'advantages'?" in finding.explanation
    (plain,) = run_invariants(
        TraceStep(tensors={"group_index": torch.tensor([0, 0])}), checks=["advantages.group_sum_zero"]
    )
    assert "did you mean" not in plain.explanation
