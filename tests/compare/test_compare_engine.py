"""The compare engine: stage isolation, end-to-end pass, tolerance policy, conventions, distribution metrics,
trace-vs-trace. Broken inputs FAIL, correct inputs PASS."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from grpo_check.compare import TolerancePolicy, check, compare, compare_step
from grpo_check.compare.distribution import sampler_metrics, trend
from grpo_check.compare.synthetic import make_step, make_trace
from grpo_check.config import GRPOSpec
from grpo_check.diagnose.conventions import classify_advantage_scale
from grpo_check.findings import InputError, Verdict

SPEC = GRPOSpec(num_generations=4, loss_type="grpo", beta=0.04, max_completion_length=6)


def by_id(findings, check_id):
    return [f for f in findings if f.check_id == check_id]


def test_correct_trace_passes_every_stage_and_declares_tolerances():
    result = compare(make_trace(SPEC, steps=2))
    compared = [f for f in result if f.kind == "compare"]
    assert {f.check_id for f in compared} >= {
        "rewards.total", "advantages.values", "ratio.values", "kl.values", "loss.per_token", "loss.value",
        "grad.logps_grad", "e2e.loss", "e2e.logps_grad", "logps.sampler",
    }  # fmt: skip
    assert all(f.verdict is Verdict.PASS for f in compared), [
        f.message() for f in compared if f.verdict is not Verdict.PASS
    ]
    assert result.exit_code() == 0
    tolerances = result.metadata["tolerances"]
    assert tolerances["reference_dtype"] == "float64"
    assert set(tolerances["per_dtype"]) == {"float64", "float32", "bfloat16", "float16"}
    assert result.metadata["config"]["loss_type"] == "grpo"
    assert "torch" in result.metadata["versions"]


def test_stage_isolation_puts_a_kl_bug_in_the_kl_stage_only():
    step = make_step(SPEC)
    kl = step["kl"].clone()
    kl[3, 2] += 0.01
    step.tensors["kl"] = kl
    findings = compare_step(step, SPEC)
    failing = {f.check_id for f in findings if f.kind == "compare" and f.verdict is Verdict.FAIL}
    assert failing == {"kl.values"}
    (finding,) = by_id(findings, "kl.values")
    assert (finding.where.row, finding.where.token, finding.where.prompt, finding.where.generation) == (
        3,
        2,
        0,
        3,
    )
    assert finding.where.token_id == int(step["completion_ids"][3, 2])
    assert finding.figure == pytest.approx(0.01, rel=1e-3)
    assert "token_error_map" in finding.details


def test_advantage_bug_shows_in_advantages_and_end_to_end_only():
    step = make_step(SPEC)
    step.tensors["advantages"] = (
        step["advantages"] * 1.5
    )  # trainer's loss/grad were computed from *correct* A
    findings = compare_step(step, SPEC, diagnose=False)
    failing = {f.check_id for f in findings if f.verdict is Verdict.FAIL}
    assert "advantages.values" in failing
    assert not failing & {"ratio.values", "kl.values"}
    assert "loss.per_token" in failing  # the trainer's loss does not follow from its own advantages


def test_end_to_end_is_separate_from_stage_isolated():
    step = make_step(SPEC)
    from diagnose_mutants import regrouped

    step = regrouped(SPEC)
    findings = compare_step(step, SPEC, diagnose=False)
    failing = {f.check_id for f in findings if f.verdict is Verdict.FAIL}
    assert failing == {"advantages.values", "e2e.per_token_loss", "e2e.loss", "e2e.logps_grad"}
    assert all(f.details.get("end_to_end") for f in findings if f.check_id.startswith("e2e."))


def test_missing_tensors_are_not_captured_not_failures():
    step = make_step(SPEC)
    for name in ("ref_logps",):
        step.tensors.pop(name)
    findings = compare_step(step, SPEC)
    assert {f.verdict for f in by_id(findings, "kl.values")} == {Verdict.NOT_CAPTURED}
    assert not [f for f in findings if f.verdict is Verdict.FAIL]


def test_nan_location_checked_before_tolerance():
    step = make_step(SPEC)
    loss = step["per_token_loss"].clone()
    loss[1, 0] = float("nan")
    step.tensors["per_token_loss"] = loss
    (finding,) = by_id(compare_step(step, SPEC, diagnose=False), "loss.per_token")
    assert finding.verdict is Verdict.FAIL
    assert finding.details["nonfinite_elements"] == 1
    assert (finding.where.row, finding.where.token) == (1, 0)


def test_nan_in_padding_is_ignored():
    step = make_step(SPEC)
    mask = step["completion_mask"].bool()
    loss = step["per_token_loss"].clone()
    loss[~mask] = float("nan")
    step.tensors["per_token_loss"] = loss
    (finding,) = by_id(compare_step(step, SPEC), "loss.per_token")
    assert finding.verdict is Verdict.PASS


def test_tolerance_override_per_check():
    step = make_step(SPEC)
    step.tensors["loss"] = step["loss"] * (1 + 1e-3)
    strict = by_id(compare_step(step, SPEC, diagnose=False), "loss.value")[0]
    assert strict.verdict is Verdict.FAIL
    policy = TolerancePolicy(overrides={"loss.value": (1e-2, 0.0)})
    loose = by_id(compare_step(step, SPEC, tolerances=policy, diagnose=False), "loss.value")[0]
    assert loose.verdict is Verdict.PASS
    assert loose.details["tolerance"]["source"] == "override loss.value"


def test_a_misspelt_tolerance_override_is_reported_not_silently_ignored():
    trace = make_trace(SPEC, steps=1)
    typo = compare(trace, tolerances={"loss.valeu": (1e-2, 0.0)})
    (unused,) = by_id(list(typo), "run.tolerance_override_unused")
    assert unused.verdict is Verdict.WARN and "did you mean 'loss.value'?" in unused.explanation
    assert typo.exit_code() == 0 and typo.exit_code(strict=True) == 1
    used = compare(
        trace, tolerances={"loss.value": (1e-2, 0.0), "logps": (1e-3, 1e-3)}
    )  # a check id, a quantity
    assert not by_id(list(used), "run.tolerance_override_unused")


def test_compare_takes_a_trace_directory_and_refuses_what_is_not_a_trace(tmp_path):
    from grpo_check.trace.io import save_trace

    path = save_trace(make_trace(SPEC, steps=1), tmp_path / "t")
    assert compare(str(path)).exit_code() == 0 and check(path).exit_code() == 0
    trace = make_trace(SPEC, steps=1)
    with pytest.raises(InputError, match="got TraceStep \\(that is one step: use compare_step"):
        compare(trace.steps[0])
    with pytest.raises(InputError, match="trace must be a grpo_check Trace"):
        check(None)
    with pytest.raises(InputError, match="model must be a model"):
        compare(trace, model="gpt2")
    with pytest.raises(InputError, match=r"tolerances must be a grpo_check\.compare\.TolerancePolicy"):
        compare(trace, tolerances="tight")
    with pytest.raises(InputError, match="step must be a grpo_check TraceStep"):
        compare_step(dict(trace.steps[0].tensors), SPEC)
    assert compare_step(trace.steps[0], SPEC.to_dict())  # a dict of the spec's fields is taken


def test_a_step_with_no_rows_is_compared_without_a_crash():
    step = make_step(SPEC)
    empty = type(step)(
        tensors={k: v[:0] if v.dim() else v for k, v in step.tensors.items()}, meta=dict(step.meta)
    )
    findings = compare_step(empty, SPEC)
    assert findings and any(f.verdict is Verdict.INCONCLUSIVE for f in findings)
    no_tokens = type(step)(
        tensors={
            k: v[:, :0] if v.dim() == 2 and not k.startswith(("prompt", "rewards_per_func")) else v
            for k, v in step.tensors.items()
        },
        meta=dict(step.meta),
    )
    assert compare_step(no_tokens, SPEC)


def test_not_captured_is_reported_once_over_a_trace_and_only_where_nothing_ran():
    trace = make_trace(SPEC, steps=2)
    trace.steps[1].tensors.pop("ref_logps")  # kl.values runs on step 0 only: not "not captured"
    for step in trace.steps:
        step.tensors.pop("entropies", None)  # on no step: reported once
    result = compare(trace)
    assert not [f for f in result if f.check_id == "kl.values" and f.verdict is Verdict.NOT_CAPTURED]
    missing = [f for f in result if f.verdict is Verdict.NOT_CAPTURED]
    assert len({f.check_id for f in missing}) == len(missing)


def test_tolerance_policy_parsing_and_validation():
    assert TolerancePolicy.parse_override("logps=1e-3,0") == ("logps", (1e-3, 0.0))
    for bad in ("logps", "logps=1", "logps=a,b", "=1,2", "logps=-1,0"):
        with pytest.raises(InputError):
            TolerancePolicy.parse_override(bad)
    with pytest.raises(InputError):
        TolerancePolicy(overrides={"x": (1.0,)})


def test_low_precision_held_to_k_times_same_precision_error():
    bf16 = make_step(SPEC, dtype=torch.bfloat16)
    assert not [f for f in compare_step(bf16, SPEC) if f.verdict in (Verdict.FAIL, Verdict.WARN)]
    policy = TolerancePolicy()
    tol = policy.for_check("loss.per_token", "per_token_loss", "bfloat16")
    assert tol.k == policy.k and tol.outlier_fraction == policy.low_precision_outlier_fraction
    broken = make_step(SPEC, dtype=torch.bfloat16)
    broken.tensors["logps_grad"] = broken["logps_grad"] * 1.25
    (finding,) = by_id(compare_step(broken, SPEC, diagnose=False), "grad.logps_grad")
    assert finding.verdict is Verdict.FAIL
    assert "same_precision_max_error" in finding.details


def test_outlier_budget_turns_rare_outliers_into_a_warning():
    step = make_step(SPEC, n_prompts=8)
    loss = step["per_token_loss"].clone()
    loss[0, 0] += 1.0
    step.tensors["per_token_loss"] = loss
    policy = TolerancePolicy(outlier_fraction=0.05)
    (finding,) = by_id(compare_step(step, SPEC, tolerances=policy, diagnose=False), "loss.per_token")
    assert finding.verdict is Verdict.WARN
    (strict,) = by_id(compare_step(step, SPEC, diagnose=False), "loss.per_token")
    assert strict.verdict is Verdict.FAIL


def test_logps_recomputed_by_model_forward():
    from grpo_check.compare.synthetic import TinyLM

    model = TinyLM()
    spec = SPEC.replace(temperature=0.8)
    step = make_step(spec, model=model)
    (ok,) = by_id(compare_step(step, spec, model=model), "logps.model")
    assert ok.verdict is Verdict.PASS
    step.tensors["logps"] = step["logps"] + 0.01
    (bad,) = by_id(compare_step(step, spec, model=model, diagnose=False), "logps.model")
    assert bad.verdict is Verdict.FAIL


def test_ref_model_forward():
    from grpo_check.compare.synthetic import TinyLM

    model = TinyLM(seed=3)
    step = make_step(SPEC, model=model)
    step.tensors["ref_logps"] = step["logps"]
    (ok,) = by_id(compare_step(step, SPEC, ref_model=model), "logps.ref_model")
    assert ok.verdict is Verdict.PASS
    (bad,) = by_id(compare_step(step, SPEC, ref_model=TinyLM(seed=4), diagnose=False), "logps.ref_model")
    assert bad.verdict is Verdict.FAIL


def test_check_runs_invariants_only():
    result = check(make_trace(SPEC, steps=1))
    assert result.metadata["mode"] == "check"
    assert all(f.kind != "compare" for f in result)


# ---------------------------------------------------------------------------------------- conventions


def _adv(rewards, group_index, unbiased, eps):
    out = torch.empty_like(rewards)
    for g in group_index.unique():
        r = rewards[group_index == g]
        out[group_index == g] = (r - r.mean()) / (r.std(unbiased=unbiased) + eps)
    return out


REWARDS = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.2, 0.9, 0.1, 0.3, 0.3, 0.8, 0.0], dtype=torch.float64)
GROUPS = torch.arange(12) // 4


@pytest.mark.parametrize(
    ("unbiased", "eps", "std", "convention"),
    [(False, 1e-4, "population", True), (True, 1e-8, "sample", True), (True, 1e-6, "sample", True),
     (True, 1e4, "sample", False), (True, 1.0, "sample", False), (False, 1e3, "population", False)],
)  # fmt: skip
def test_classify_advantage_scale(unbiased, eps, std, convention):
    ref = _adv(REWARDS, GROUPS, True, 1e-4)
    match = classify_advantage_scale(
        _adv(REWARDS, GROUPS, unbiased, eps), ref, REWARDS, GROUPS, "sample", 1e-4
    )
    assert match is not None
    assert match.is_convention is convention
    if convention:  # with ε ≫ σ the std convention is not identifiable (and does not matter: it is a bug)
        assert match.std == std
    assert match.epsilon == pytest.approx(eps, rel=1e-2, abs=1e-6)


def test_classify_ignores_non_scale_differences():
    ref = _adv(REWARDS, GROUPS, True, 1e-4)
    noisy = ref + 0.01 * torch.randn(12, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert classify_advantage_scale(noisy, ref, REWARDS, GROUPS, "sample", 1e-4) is None
    assert classify_advantage_scale(ref, ref, REWARDS, GROUPS, "sample", 1e-4) is None


# --------------------------------------------------------------------------------------- distribution


def test_sampler_metrics():
    logps = torch.log(torch.tensor([[0.5, 0.25, 0.9, 0.1]]))
    mask = torch.tensor([[1, 1, 1, 0]])
    same = sampler_metrics(logps, logps, mask)
    assert same["max_abs_d"] == 0 and same["k3"] == 0 and same["frac_ratio_outside"] == 0
    far = sampler_metrics(logps, logps - torch.tensor([[0.0, 1.0, 0.0, 5.0]]), mask)
    assert far["max_abs_d"] == pytest.approx(1.0)
    assert far["frac_ratio_outside"] == pytest.approx(1 / 3)
    assert far["k3"] == pytest.approx((math.exp(1) - 2) / 3)
    assert (far["worst_row"], far["worst_token"]) == (0, 1)


def test_sampler_mismatch_fails_and_locates_worst_token():
    step = make_step(SPEC)
    sampler = step["sampler_logps"].clone()
    sampler[5, 1] -= 2.0
    sampler[6, 0] -= 1.0
    step.tensors["sampler_logps"] = sampler
    (finding,) = by_id(compare_step(step, SPEC), "logps.sampler")
    assert finding.verdict is Verdict.FAIL
    assert (finding.where.row, finding.where.token) == (5, 1)
    assert finding.details["values"] and finding.details["metrics"]["max_abs_d"] == pytest.approx(
        2.0, rel=1e-3
    )


def test_trend_over_steps():
    assert trend([0.0, 1.0, 2.0]) == pytest.approx(1.0)
    assert trend([1.0]) == 0.0
    trace = make_trace(SPEC, steps=4)
    for i, step in enumerate(trace.steps):
        step.tensors["sampler_logps"] = step["old_logps"] - 0.05 * (i + 1) ** 2
    (finding,) = by_id(compare(trace), "logps.sampler_trend")
    assert finding.verdict is Verdict.WARN and finding.catalog_id == "1"
    steady = make_trace(SPEC, steps=4)
    assert by_id(compare(steady), "logps.sampler_trend")[0].verdict is Verdict.PASS


# ------------------------------------------------------------------------------------- trace vs trace


def test_trace_against_itself_passes():
    result = compare(make_trace(SPEC, steps=2), against=make_trace(SPEC, steps=2))
    assert result.exit_code() == 0 and result.metadata["mode"] == "trace-vs-trace"


def test_trace_against_other_finds_constant_factor():
    a, b = make_trace(SPEC, steps=2), make_trace(SPEC, steps=2)
    b.steps[1].tensors["logps_grad"] = b.steps[1]["logps_grad"] * 2
    result = compare(a, against=b)
    (finding,) = result.failures
    assert finding.check_id == "trace.logps_grad" and finding.where.step == 2
    assert finding.details["constant_factor"] == pytest.approx(0.5) and finding.catalog_id == "4"


def test_trace_against_other_reports_missing_steps():
    result = compare(make_trace(SPEC, steps=2), against=make_trace(SPEC, steps=1))
    assert [f.verdict for f in result if f.check_id == "trace.step_missing"] == [Verdict.WARN]


def test_model_per_step_callable():
    from grpo_check.compare.synthetic import TinyLM
    from grpo_check.trace.model import Trace

    models = {1: TinyLM(seed=1), 2: TinyLM(seed=2)}
    steps = [make_step(SPEC, model=models[i], step_index=i, seed=i) for i in (1, 2)]
    trace = Trace(manifest={"config": SPEC.to_dict()}, steps=steps)
    result = compare(trace, model=lambda step: models[step.meta["step"]])
    checked = [f for f in result if f.check_id == "logps.model"]
    assert [f.verdict for f in checked] == [Verdict.PASS, Verdict.PASS]
    wrong = compare(trace, model=models[1], diagnose=False)  # one model for both steps: step 2 diverges
    assert [f.verdict for f in wrong if f.check_id == "logps.model"] == [Verdict.PASS, Verdict.FAIL]


def test_mixed_precision_logps_held_to_compute_dtype():
    """Under bf16 autocast a trainer stores float32 log-probs that are only bf16-precise: with
    ``meta["compute_dtype"] = "bfloat16"`` they are held to bf16 tolerances; without it, to float32 ones.
    A real bug (an error far above bf16 rounding) still fails under bf16."""
    from grpo_check.compare.synthetic import TinyLM

    model = TinyLM()
    step = make_step(SPEC, model=model)
    exact = step["logps"].double()
    step.tensors["logps"] = exact.to(torch.bfloat16).to(torch.float32)  # bf16 compute, float32 storage
    (strict,) = by_id(compare_step(step, SPEC, model=model, diagnose=False), "logps.model")
    assert strict.verdict is Verdict.FAIL
    step.meta["compute_dtype"] = "bfloat16"
    (mixed,) = by_id(compare_step(step, SPEC, model=model, diagnose=False), "logps.model")
    assert mixed.verdict is Verdict.PASS
    step.tensors["logps"] = (exact + 0.5).to(torch.float32)
    (bug,) = by_id(compare_step(step, SPEC, model=model, diagnose=False), "logps.model")
    assert bug.verdict is Verdict.FAIL


def test_check_reports_not_captured_once_per_trace():
    trace = make_trace(steps=3)
    for step in trace.steps:
        step.tensors.pop("kl", None)
    result = check(trace)
    kl_missing = [f for f in result if f.check_id == "kl.nonnegative"]
    assert [f.verdict for f in kl_missing] == [Verdict.NOT_CAPTURED]
    # a check whose inputs every step holds still reports once per step
    assert len([f for f in result if f.check_id == "logps.nonpositive"]) == 3


def test_end_to_end_reuses_the_isolated_reference_only_when_upstream_matched():
    step = make_step(SPEC)
    e2e = [f for f in compare_step(step, SPEC, diagnose=False) if f.check_id.startswith("e2e.")]
    assert e2e and all(f.verdict is Verdict.PASS and f.details["reused_isolated_reference"] for f in e2e)
    # advantages off (and the trainer's loss computed from them): the isolated loss stage still passes, the
    # end-to-end pass recomputes from the reference's own advantages and fails
    broken = make_step(SPEC)
    broken.tensors["advantages"] = broken["advantages"] * 2.0
    from grpo_check.compare.stages import reference_downstream

    down = reference_downstream(broken, SPEC)
    for name in ("per_token_loss", "loss", "logps_grad"):
        broken.tensors[name] = down[name].to(torch.float32)
    findings = compare_step(broken, SPEC, diagnose=False)
    (isolated,) = by_id(findings, "loss.value")
    (end_to_end,) = by_id(findings, "e2e.loss")
    assert isolated.verdict is Verdict.PASS
    assert end_to_end.verdict is Verdict.FAIL and end_to_end.details["reused_isolated_reference"] is False


@pytest.mark.parametrize(
    ("sampler_shift", "expected"),
    [("equal_constant", 1.0), ("other_constant", None), ("noisy", "high")],
)
def test_sampler_pearson_is_defined_only_for_varying_log_probs(sampler_shift, expected):
    mask = torch.ones(2, 50, dtype=torch.bool)
    if sampler_shift == "noisy":
        logps = -torch.rand(2, 50, generator=torch.Generator().manual_seed(0)) * 3
        sampler = logps + 0.01 * torch.randn(2, 50, generator=torch.Generator().manual_seed(1))
    else:
        logps = torch.full((2, 50), -1.0)
        sampler = logps.clone() if sampler_shift == "equal_constant" else torch.full((2, 50), -1.5)
    pearson = sampler_metrics(logps, sampler, mask)["pearson"]
    if expected == "high":
        assert pearson > 0.99
    else:
        assert pearson == expected


@pytest.mark.parametrize("seed", range(5))
def test_sampler_metrics_equal_the_same_formulas_in_torch(seed):
    # the metrics run in numpy for speed; here they are recomputed with torch (corrcoef for Pearson)
    generator = torch.Generator().manual_seed(seed)
    logps = -torch.rand(4, 9, generator=generator, dtype=torch.float64) * 4
    sampler = logps + 0.3 * torch.randn(4, 9, generator=generator, dtype=torch.float64)
    mask = torch.rand(4, 9, generator=generator) > 0.3
    sampler[0, 0] = float("nan")  # a non-finite sampler value is left out like a masked one
    got = sampler_metrics(logps, sampler, mask)
    selected = mask & torch.isfinite(sampler)
    d = (logps - sampler)[selected]
    assert got["tokens"] == int(selected.sum())
    assert got["mean_d"] == pytest.approx(float(d.mean()), rel=1e-12)
    assert got["max_abs_d"] == pytest.approx(float(d.abs().max()), rel=1e-12)
    assert got["k3"] == pytest.approx(float((d.exp() - 1 - d).mean()), rel=1e-12)
    pearson = torch.corrcoef(torch.stack([logps[selected], sampler[selected]]))[0, 1]
    assert got["pearson"] == pytest.approx(float(pearson), rel=1e-12)
    assert got["frac_ratio_outside"] == pytest.approx(
        float(((d.exp() < 0.5) | (d.exp() > 2)).double().mean())
    )
    worst = torch.where(selected, (logps - sampler).abs(), -1.0).argmax()
    assert (got["worst_row"], got["worst_token"]) == divmod(int(worst), 9)


def test_a_tensor_only_one_of_two_traces_holds_is_not_captured_not_silently_skipped():
    trace, other = make_trace(SPEC, steps=2), make_trace(SPEC, steps=2)
    for step in other.steps:
        step.tensors.pop("logps_grad", None)
    result = compare(trace, against=other)
    missing = [f for f in result if f.verdict is Verdict.NOT_CAPTURED]
    assert [f.check_id for f in missing] == ["trace.logps_grad"]  # once over the trace, not per step
    assert "captured only in this trace" in missing[0].explanation
    assert not [
        f for f in compare(trace, against=make_trace(SPEC, steps=2)) if f.verdict is Verdict.NOT_CAPTURED
    ]


def test_a_trace_with_nothing_to_check_says_so_instead_of_ok():
    from grpo_check.trace.model import Trace, TraceStep

    empty = Trace(manifest={"config": SPEC.to_dict()}, steps=[TraceStep(meta={"step": 0})])
    for result in (check(empty), compare(empty)):
        (nothing,) = [f for f in result if f.check_id == "run.nothing_checked"]
        assert nothing.verdict is Verdict.WARN and result.exit_code(strict=True) == 1
    assert not [f for f in compare(make_trace(SPEC, steps=1)) if f.check_id == "run.nothing_checked"]


def test_against_pairs_a_generation_step_and_micro_batch_0_by_scope():
    """A TRL trace holds its generation step under the same (step, micro-batch, rank) as micro-batch 0."""
    trace = make_trace(SPEC, steps=1)
    micro_batch = trace.steps[0]
    micro_batch.meta.update(step=0, micro_batch=0, rank=0, scope="micro_batch")
    generation = type(micro_batch)(
        tensors={"advantages": torch.cat([micro_batch["advantages"]] * 2)},
        meta={"step": 0, "micro_batch": 0, "rank": 0, "scope": "generation"},
    )
    trace.steps.insert(0, generation)
    result = compare(trace, against=trace)
    assert result.exit_code() == 0, [f.message() for f in result.failures]


@pytest.mark.parametrize("seed", range(12))
def test_sampler_metrics_worst_token_and_values_follow_the_masked_difference(seed):
    """The worst token is the first largest |logps − sampler_logps| over the finite masked elements (ties,
    infinite padding and masked-out rows included), and the values are that difference in flat order."""
    generator = torch.Generator().manual_seed(seed)
    logps = -torch.rand(4, 5, generator=generator, dtype=torch.float64).round(decimals=1)  # ties likely
    sampler = -torch.rand(4, 5, generator=generator, dtype=torch.float64).round(decimals=1)
    logps[0, 4] = sampler[0, 4] = -math.inf  # padding: -inf on both sides
    sampler[seed % 4, 2] = math.nan
    mask = torch.rand(4, 5, generator=generator) > 0.3
    mask[0, 4] = True
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no floating-point warning from the masked-out -inf − -inf
        metrics = sampler_metrics(logps, sampler, mask)
    kept = mask & torch.isfinite(logps) & torch.isfinite(sampler)
    d = (logps - sampler)[kept]
    assert metrics["values"] == d.tolist()
    masked = torch.where(kept, (logps - sampler).abs(), torch.tensor(-1.0, dtype=torch.float64)).reshape(-1)
    first_largest = int(torch.nonzero(masked == masked.max())[0])
    assert (metrics["worst_row"], metrics["worst_token"]) == divmod(first_largest, 5)
