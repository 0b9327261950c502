"""``compare_tensors`` (batched pass path) gives the findings ``compare_tensor`` (full path) gives.

The batched path summarises same-shaped comparisons together and sends anything that is not a clean pass
back through ``compare_tensor``; these tests hold both paths to the same verdict, figure, allowance, location
and message, on passing inputs and on inputs broken by an out-of-tolerance element, a NaN or an empty mask.
"""

from __future__ import annotations

import contextlib
import math

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings

from grpo_check.compare import tensor_diff as _diff
from grpo_check.compare.tensor_diff import Comparison, StepContext, compare_tensors
from grpo_check.compare.tolerances import Tolerance
from grpo_check.findings import Verdict

TOL = Tolerance(rtol=1e-5, atol=1e-6)


def _context(rows: int, tokens: int) -> StepContext:
    return StepContext(
        step=3,
        micro_batch=1,
        rank=0,
        group_index=torch.arange(rows) // 2,
        completion_ids=torch.arange(rows * tokens).reshape(rows, tokens),
        completion_mask=(torch.arange(tokens) < tokens - 1).expand(rows, tokens).clone(),
    )


def _assert_same(batched, full):
    assert batched.verdict is full.verdict
    assert batched.check_id == full.check_id
    assert batched.where == full.where
    assert batched.explanation == full.explanation
    assert batched.tolerance == full.tolerance
    assert batched.figure == full.figure
    mean_b, mean_f = batched.details.pop("mean_abs_error", None), full.details.pop("mean_abs_error", None)
    assert (mean_b is None) == (mean_f is None)
    if mean_b is not None:
        assert math.isclose(mean_b, mean_f, rel_tol=1e-12, abs_tol=1e-300)
    assert batched.details == full.details


_CORRUPTIONS = ("none", "beyond", "nan", "inf_padding", "empty_mask", "reference_inf", "both_inf")


@st.composite
def comparison_sets(draw):
    rows = draw(st.integers(1, 5)) * 2
    tokens = draw(st.integers(2, 7))
    seed = draw(st.integers(0, 2**16))
    generator = torch.Generator().manual_seed(seed)
    comparisons = []
    for index in range(draw(st.integers(1, 5))):
        shape = draw(st.sampled_from([(rows, tokens), (rows,), (), (1,), (rows, 1)]))
        dtype = draw(
            st.sampled_from([torch.float32, torch.float32, torch.float64, torch.float16, torch.bfloat16])
        )
        trainer = (torch.randn(shape, generator=generator, dtype=torch.float64) * 3).to(dtype)
        noise = (torch.rand(shape, generator=generator, dtype=torch.float64) - 0.5) * 1e-6
        reference = trainer.double() * (1 + noise)  # within tolerance of the trainer's own values
        if draw(st.booleans()) and len(shape) == 2:  # a row-constant reference, expanded (a strided view)
            reference = reference[:, :1].expand(shape)
            trainer = reference.to(dtype)
        corruption = draw(st.sampled_from(_CORRUPTIONS))
        mask = None
        if corruption == "beyond" and trainer.numel():
            trainer.reshape(-1)[draw(st.integers(0, trainer.numel() - 1))] += 0.5
        elif corruption == "nan" and trainer.numel():
            trainer.reshape(-1)[draw(st.integers(0, trainer.numel() - 1))] = float("nan")
        elif corruption == "inf_padding" and len(shape) == 2:
            trainer[:, -1] = float("inf")  # the context's completion mask leaves the last token out
        elif corruption == "empty_mask":
            mask = torch.zeros(shape, dtype=torch.bool)
        elif corruption in ("reference_inf", "both_inf") and reference.numel():
            at = draw(st.integers(0, reference.numel() - 1))
            reference.reshape(-1)[at] = float("inf")
            if corruption == "both_inf":
                trainer.reshape(-1)[at] = float("inf")
        comparisons.append(
            Comparison(
                check_id=f"test.quantity_{index}",
                stage="loss",
                name=f"quantity_{index}",
                trainer=trainer,
                reference=reference,
                tolerance=TOL,
                mask=mask,
                what=f"quantity {index}",
            )
        )
    return comparisons, _context(rows, tokens)


@contextlib.contextmanager
def _summary_path(path: str):
    """Force the Python summary (a few elements), the numpy one (small steps) or the torch one (large steps)
    for the comparisons inside."""
    saved = _diff._NUMPY_ELEMENTS, _diff._PYTHON_ELEMENTS
    _diff._NUMPY_ELEMENTS = 0 if path == "torch" else 1 << 62
    _diff._PYTHON_ELEMENTS = 1 << 62 if path == "python" else 0
    try:
        yield
    finally:
        _diff._NUMPY_ELEMENTS, _diff._PYTHON_ELEMENTS = saved


@pytest.mark.parametrize("path", ["python", "numpy", "torch"])
@settings(max_examples=150, deadline=None)
@given(case=comparison_sets())
def test_batched_findings_equal_full_comparison(path, case):
    comparisons, ctx = case
    with _summary_path(path):
        batched = compare_tensors(comparisons, ctx)
    assert len(batched) == len(comparisons)
    for finding, comparison in zip(batched, comparisons, strict=True):
        _assert_same(finding, comparison.run(ctx))


def test_the_two_summary_paths_agree_value_for_value():
    """Same float64 arithmetic: every summary field is equal (the error sum up to summation order)."""
    generator = torch.Generator().manual_seed(0)
    got = [torch.randn(6, 5, generator=generator) for _ in range(3)]
    want = [g.double() + 1e-7 * torch.randn(6, 5, generator=generator, dtype=torch.float64) for g in got]
    want[1][2, 3] = float("nan")
    got[2][0, 1] = float("inf")
    compared = [torch.rand(6, 5, generator=generator) > 0.2 for _ in range(3)]
    tolerances = [TOL, Tolerance(rtol=1e-3, atol=0.0), TOL]
    with _summary_path("numpy"):
        numpy_summaries = _diff._summarise(got, want, compared, tolerances)
    with _summary_path("python"):  # the same float64 table summed by the same reduction: equal, repr for repr
        assert repr(_diff._summarise(got, want, compared, tolerances)) == repr(numpy_summaries)
    with _summary_path("torch"):
        torch_summaries = _diff._summarise(got, want, compared, tolerances)
    for a, b in zip(numpy_summaries, torch_summaries, strict=True):
        for field, x, y in zip(a._fields, a, b, strict=True):
            if field == "error_sum":
                assert math.isclose(x, y, rel_tol=1e-12) or (math.isnan(x) and math.isnan(y))
            else:
                assert x == y or (math.isnan(x) and math.isnan(y)), field


def test_only_failures_take_the_full_path(monkeypatch):
    ctx = _context(4, 3)
    reference = torch.randn(4, 3, dtype=torch.float64)
    good = Comparison("test.good", "loss", "good", reference.float(), reference, TOL)
    broken_trainer = reference.float().clone()
    broken_trainer[2, 1] += 1.0
    bad = Comparison("test.bad", "loss", "bad", broken_trainer, reference, TOL)
    full_calls: list[str] = []
    real = _diff.compare_tensor

    def counting(**kwargs):
        full_calls.append(kwargs["check_id"])
        return real(**kwargs)

    monkeypatch.setattr(_diff, "compare_tensor", counting)
    findings = compare_tensors([good, bad], ctx)
    assert [f.verdict for f in findings] == [Verdict.PASS, Verdict.FAIL]
    assert full_calls == [
        "test.bad"
    ]  # the pass was summarised in the batch; the failure got full diagnostics
    assert (findings[1].where.row, findings[1].where.token) == (2, 1)


@pytest.mark.parametrize("shape", [(4, 3), (4,), ()])
def test_boundary_element_exactly_at_the_allowance_passes_in_both_paths(shape):
    ctx = _context(4, 3)
    reference = torch.full(shape, 2.0, dtype=torch.float64)
    allowed = TOL.atol + TOL.rtol * 2.0
    at_boundary = Comparison("test.edge", "loss", "edge", reference + allowed, reference, TOL)
    just_beyond = Comparison("test.edge", "loss", "edge", reference + 1.01 * allowed, reference, TOL)
    for comparison in (at_boundary, just_beyond):
        (batched,) = compare_tensors([comparison], ctx)
        _assert_same(batched, comparison.run(ctx))
    assert compare_tensors([at_boundary], ctx)[0].verdict is Verdict.PASS
    assert compare_tensors([just_beyond], ctx)[0].verdict is Verdict.FAIL


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
def test_end_to_end_findings_repeated_from_the_isolated_pass_equal_fresh_comparisons(monkeypatch, loss_type):
    """With the isolated reference reused, the e2e per-token loss, loss and gradient findings are the isolated
    ones relabelled; comparing afresh gives the same findings."""
    from grpo_check.compare import compare_step, end_to_end
    from grpo_check.compare.synthetic import make_step
    from grpo_check.config import GRPOSpec

    spec = GRPOSpec(num_generations=4, loss_type=loss_type, beta=0.04)
    step = make_step(spec)
    repeated = [f for f in compare_step(step, spec) if f.check_id.startswith("e2e.")]
    monkeypatch.setattr(end_to_end, "repeat_isolated", lambda comparison, isolated: None)
    fresh = [f for f in compare_step(step, spec) if f.check_id.startswith("e2e.")]
    assert (
        [f.check_id for f in repeated]
        == [f.check_id for f in fresh]
        == [
            "e2e.per_token_loss",
            "e2e.loss",
            "e2e.logps_grad",
        ]
    )
    assert all(f.details["reused_isolated_reference"] for f in repeated)
    for a, b in zip(repeated, fresh, strict=True):
        _assert_same(a, b)


def test_a_failing_isolated_comparison_is_not_repeated_but_compared_afresh():
    from grpo_check.compare import compare_step
    from grpo_check.compare.synthetic import make_step
    from grpo_check.config import GRPOSpec

    spec = GRPOSpec(num_generations=4, loss_type="grpo", beta=0.04)
    step = make_step(spec)
    step.tensors["per_token_loss"] = step["per_token_loss"] * 1.5  # the loss stage is wrong, upstream is not
    findings = {f.check_id: f for f in compare_step(step, spec)}
    assert findings["loss.per_token"].verdict is Verdict.FAIL
    assert findings["e2e.per_token_loss"].verdict is Verdict.FAIL
    assert findings["e2e.per_token_loss"].explanation.startswith("end-to-end per-token loss differs")


def test_set_training_flips_every_module_and_defers_to_a_custom_train():
    from grpo_check.compare.stages import set_training

    plain = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5))
    set_training(plain, False)
    assert not any(module.training for module in plain.modules())
    set_training(plain, True)
    assert all(module.training for module in plain.modules())

    calls: list[bool] = []

    class Custom(torch.nn.Module):  # a train() with side effects must be called, not bypassed
        def train(self, mode: bool = True):
            calls.append(mode)
            return super().train(mode)

    tree = torch.nn.Sequential(Custom(), torch.nn.Dropout(0.5))
    set_training(tree, False)
    assert calls == [False] and not any(module.training for module in tree.modules())


def test_a_repeated_isolated_finding_keeps_every_field_but_its_label():
    """repeat_isolated copies the isolated finding field by field: a field added to Finding must travel too."""
    import dataclasses

    from grpo_check.compare.end_to_end import repeat_isolated
    from grpo_check.compare.stage_findings import ISOLATED_LOSS_CHECKS
    from grpo_check.findings import Finding, Where

    isolated_id, label = ISOLATED_LOSS_CHECKS["loss"]
    isolated = Finding(
        check_id=isolated_id,
        stage="loss",
        verdict=Verdict.PASS,
        figure=1e-9,
        tolerance=2e-6,
        where=Where(step=3, row=1),
        explanation=f"{label} matches the reference: max |error| 1e-09",
        likely_cause="cause",
        fix="fix",
        catalog_id="7",
        kind="compare",
        details={"tolerance": TOL.to_dict(), "n": 1},
    )
    comparison = Comparison("e2e.loss", "loss", "loss", 0.0, 0.0, TOL, what="end-to-end loss")
    repeated = repeat_isolated(comparison, {isolated_id: isolated})
    relabelled = {"check_id", "stage", "explanation", "details"}
    for field in dataclasses.fields(Finding):
        if field.name not in relabelled:
            assert getattr(repeated, field.name) == getattr(isolated, field.name), field.name
    assert (repeated.check_id, repeated.explanation) == (
        "e2e.loss",
        "end-to-end loss matches the reference: max |error| 1e-09",
    )
    assert repeated.details == isolated.details and repeated.details is not isolated.details
    other_tolerance = dataclasses.replace(comparison, tolerance=dataclasses.replace(TOL, atol=1.0))
    assert repeat_isolated(other_tolerance, {isolated_id: isolated}) is None  # not under the same tolerance


@pytest.mark.parametrize("path", ["python", "numpy", "torch"])
def test_infinite_operands_summarise_without_warnings(path, recwarn):
    """inf − inf and inf·0 (an infinite reference under rtol 0) are NaN in both summaries, silently."""
    ctx = _context(4, 3)
    reference = torch.randn(4, 3, dtype=torch.float64)
    reference[1, 1] = float("inf")
    trainer = reference.float()  # the same inf on both sides at [1, 1]
    comparisons = [
        Comparison("test.inf", "loss", "inf", trainer, reference, tolerance)
        for tolerance in (TOL, Tolerance(rtol=0.0, atol=1e-6))
    ]
    with _summary_path(path):
        batched = compare_tensors(comparisons, ctx)
    assert [f.verdict for f in batched] == [Verdict.FAIL, Verdict.FAIL]  # a compared NaN/Inf fails
    for finding, comparison in zip(batched, comparisons, strict=True):
        _assert_same(finding, comparison.run(ctx))
    assert not [w for w in recwarn.list if issubclass(w.category, RuntimeWarning)]


_SPECIAL = (math.nan, math.inf, -math.inf, 0.0, -0.0, 6e4)


@settings(max_examples=300, deadline=None)
@given(
    rows=st.integers(1, 5),
    shape=st.sampled_from([(1,), (8,), (3, 4), (2, 3, 2), (4, 1)]),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16]),
    seed=st.integers(0, 2**16),
    specials=st.lists(st.tuples(st.booleans(), st.integers(0, 23), st.sampled_from(_SPECIAL)), max_size=4),
    keep=st.sampled_from([0.0, 0.5, 1.0]),
    expanded=st.booleans(),
)
def test_python_summary_equals_the_numpy_summary(rows, shape, dtype, seed, specials, keep, expanded):
    """Every field equal, repr for repr (NaN/Inf/±0 on either side, masked or not, low precision, views)."""
    generator = torch.Generator().manual_seed(seed)
    got, want, compared, tolerances = [], [], [], []
    for row in range(rows):
        reference = torch.randn(shape, generator=generator, dtype=torch.float64) * 3
        trainer = (reference * (1 + 1e-6 * torch.randn(shape, generator=generator, dtype=torch.float64))).to(
            dtype
        )
        for on_trainer, at, value in specials:
            (trainer if on_trainer else reference).reshape(-1)[at % reference.numel()] = value
        if expanded and len(shape) == 2:
            reference = reference[:, :1].expand(shape)
        got.append(trainer)
        want.append(reference)
        compared.append(torch.rand(shape, generator=generator) < keep)
        tolerances.append((TOL, Tolerance(rtol=0.0, atol=0.0), Tolerance(rtol=1e-3, atol=0.0))[row % 3])
    python = _diff._summarise_python(got, want, compared, tolerances)
    assert repr(python) == repr(_diff._summarise_numpy(got, want, compared, tolerances))
    assert all(type(field) in (int, float) for summary in python for field in summary)


@pytest.mark.parametrize("got_dtype", [torch.float16, torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("want_dtype", [torch.float16, torch.float32, torch.float64])
def test_numpy_summary_widens_both_sides_exactly(got_dtype, want_dtype):
    """Trainer rows of any float dtype against references of any float dtype (trace against trace): the numpy
    summary, which widens the trainer's rows only in the subtraction, equals the Python one (float64
    throughout) field for field, on finite, NaN and ±inf values."""
    generator = torch.Generator().manual_seed(1)
    want = [
        (torch.randn(6, 5, generator=generator, dtype=torch.float64) * 3).to(want_dtype) for _ in range(3)
    ]
    got = [(w.double() + 1e-3 * torch.randn(6, 5, generator=generator, dtype=torch.float64)).to(got_dtype)
           for w in want]  # fmt: skip
    got[0][1, 2], got[1][0, 0], want[2][3, 4] = float("nan"), float("-inf"), float("inf")
    compared = [torch.rand(6, 5, generator=generator) > 0.2 for _ in range(3)]
    tolerances = [TOL, Tolerance(rtol=1e-3, atol=0.0), TOL]
    with _summary_path("numpy"):
        numpy_summaries = _diff._summarise(got, want, compared, tolerances)
    with _summary_path("python"):
        assert repr(_diff._summarise(got, want, compared, tolerances)) == repr(numpy_summaries)


def test_summary_bounds_are_rebuilt_for_other_tolerance_objects_of_the_same_ids(monkeypatch):
    tensor_diff = _diff

    monkeypatch.setattr(tensor_diff, "_BOUNDS", {})
    first = [Tolerance(rtol=1e-5, atol=1e-6), Tolerance(rtol=2e-5, atol=0.0)]
    assert [column.tolist() for column in tensor_diff._bounds(first)[:2]] == [
        [[1e-5], [2e-5]],
        [[1e-6], [0.0]],
    ]
    assert tensor_diff._bounds(list(first)) is tensor_diff._bounds(first)  # the same objects: built once
    key = tuple(map(id, first))
    other = [Tolerance(rtol=0.5, atol=0.25), Tolerance(rtol=0.0, atol=1.0)]
    tensor_diff._BOUNDS[key] = (other, tensor_diff._BOUNDS[key][1])  # as if the ids now named other objects
    assert [column.tolist() for column in tensor_diff._bounds(first)[:2]] == [
        [[1e-5], [2e-5]],
        [[1e-6], [0.0]],
    ]
    assert tensor_diff._BOUNDS[key][0] == first
    # a failing and a passing comparison summarised with cached bounds judge as with fresh ones
    got = [torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.5])]
    want = [torch.tensor([1.0, 2.0], dtype=torch.float64)] * 2
    tolerances = [Tolerance(rtol=0.0, atol=0.1)] * 2
    masks = [torch.ones(2, dtype=torch.bool)] * 2
    once = tensor_diff._summarise_numpy(got, want, masks, tolerances)
    again = tensor_diff._summarise_numpy(got, want, masks, tolerances)
    assert repr(once) == repr(again)
    assert [s.beyond for s in once] == [0, 1]


@pytest.mark.parametrize(
    "tolerance",
    [
        Tolerance(rtol=1e-5, atol=1e-6),
        Tolerance(rtol=0.0, atol=-0.0),
        Tolerance(rtol=-1e-3, atol=0.0),  # negative allowances: an element not compared must not count
        Tolerance(rtol=0.0, atol=-2.0),
        Tolerance(rtol=math.nan, atol=0.0),
        Tolerance(rtol=0.0, atol=math.inf),
    ],
)
@pytest.mark.parametrize("seed", range(3))
def test_numpy_summary_counts_only_compared_elements_beyond_any_tolerance(tolerance, seed):
    """The numpy summary's count beyond tolerance equals the Python summary's (the compared elements only),
    whether or not every allowance is ≥ 0, with large errors and NaN/Inf outside the mask."""
    generator = torch.Generator().manual_seed(seed)
    got, want, compared = [], [], []
    for _ in range(3):
        reference = torch.randn(4, 5, generator=generator, dtype=torch.float64)
        trainer = (reference + 1e-7 * torch.randn(4, 5, generator=generator, dtype=torch.float64)).float()
        mask = torch.rand(4, 5, generator=generator) > 0.4
        trainer[~mask] = torch.tensor([5.0, math.nan, math.inf, -3.0]).repeat(20)[: int((~mask).sum())]
        got.append(trainer)
        want.append(reference)
        compared.append(mask)
    tolerances = [tolerance, TOL, tolerance]
    numpy_summary = _diff._summarise_numpy(got, want, compared, tolerances)
    assert repr(numpy_summary) == repr(_diff._summarise_python(got, want, compared, tolerances))
    assert _diff._bounds(tolerances)[2] is (tolerance.rtol >= 0 and tolerance.atol >= 0)
