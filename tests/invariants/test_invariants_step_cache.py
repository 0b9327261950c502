"""The per-step cache that ``run_invariants`` shares between checks changes speed only, never a finding.

Each check run on its own (``Check.run``: no cache) must give exactly the findings it gives inside
``run_invariants`` (one cache per step, float64 copies / masks / ratios shared), on correct steps and on
steps broken in the ways the checks are built to catch.
"""

from __future__ import annotations

import dataclasses

import torch
from invariants_builders import build_step, with_tensors

from grpo_check._step_cache import cached, step_cache
from grpo_check.compare.synthetic import make_step
from grpo_check.config import GRPOSpec
from grpo_check.findings import Verdict
from grpo_check.invariants import REGISTRY, run_invariants
from grpo_check.trace.model import TraceStep


def _variants() -> list[tuple[str, TraceStep, GRPOSpec]]:
    """Correct and broken steps covering every check's pass and fail branches."""
    out: list[tuple[str, TraceStep, GRPOSpec]] = []
    for name, options in {
        "on_policy": {},
        "off_policy": {"off_policy": True},
        "off_policy_kl": {"off_policy": True, "beta": 0.04},
        "tool": {"off_policy": True, "tool_tokens": True},
        "clip_higher": {"off_policy": True, "epsilon_high": 0.28},
        "step0": {"step": 0, "beta": 0.04},
    }.items():
        built = build_step(seed=3, prompts=3, G=4, T=7, **options)
        out.append((name, built.step, built.spec))
    built = build_step(seed=5, off_policy=True, beta=0.04)
    step, spec = built.step, built.spec
    logps, grad, mask = step["logps"], step["logps_grad"], step["completion_mask"]
    nan_logps = logps.clone()
    nan_logps[0, 0] = float("nan")
    pad_nan = logps.clone().masked_fill(mask == 0, float("nan"))
    out += [
        ("nan_logps", with_tensors(step, logps=nan_logps), spec),
        ("pad_nan", with_tensors(step, logps=pad_nan), spec),
        ("positive_logps", with_tensors(step, logps=-logps), spec),
        ("bf16_logps", with_tensors(step, logps=logps.to(torch.bfloat16).float()), spec),
        ("fp16_logps", with_tensors(step, old_logps=step["old_logps"].half().float()), spec),
        ("bf16_stored", with_tensors(step, ref_logps=step["ref_logps"].bfloat16()), spec),
        (
            "float64",
            with_tensors(step, **{k: v.double() for k, v in step.tensors.items() if v.is_floating_point()}),
            spec,
        ),
        ("grad_sign_flip", with_tensors(step, logps_grad=-grad), spec),
        ("grad_leak", with_tensors(step, logps_grad=grad + (1 - mask) * 0.1), spec),
        ("negative_kl", with_tensors(step, kl=-step["kl"] - 0.01), spec),
        ("ratio_mismatch", with_tensors(step, ratio=step["ratio"] * 1.01), spec),
        ("ref_is_policy", with_tensors(step, ref_logps=logps.clone()), spec),
        ("no_ratio", with_tensors(step, ratio=None, clipped_ratio=None), spec),
        ("no_mask", with_tensors(step, completion_mask=None), spec),
        ("bias_correction", step, dataclasses.replace(spec, use_bias_correction_kl=True)),
        ("sequence_level", step, dataclasses.replace(spec, importance_sampling_level="sequence")),
        ("cispo", step, dataclasses.replace(spec, loss_type="cispo")),
    ]
    for estimator in ("k1", "k2"):
        other = with_tensors(step)
        other.meta["kl_estimator"] = estimator
        out.append((f"estimator_{estimator}", other, spec))
        out.append((f"estimator_{estimator}_flipped", with_tensors(other, logps_grad=-grad), spec))
    for spec in (
        GRPOSpec(num_generations=4, loss_type="dapo", beta=0.04, max_completion_length=9),
        GRPOSpec(num_generations=4, loss_type="grpo", beta=0.0, max_completion_length=9),
        GRPOSpec(
            num_generations=4,
            loss_type="dapo",
            beta=0.04,
            importance_sampling_level="sequence",
            max_completion_length=9,
        ),
    ):
        out.append((f"synthetic_{spec.loss_type}", make_step(spec, n_prompts=3, completion_length=9), spec))
    return out


def _uncached(step: TraceStep, spec: GRPOSpec) -> list[str]:
    return [repr(f) for check in REGISTRY.values() for f in check.run(step, spec)]


def test_cached_run_gives_the_same_findings_as_each_check_alone():
    fired = set()
    for name, step, spec in _variants():
        cached_findings = run_invariants(step, spec)
        assert [repr(f) for f in cached_findings] == _uncached(step, spec), name
        fired |= {f.check_id for f in cached_findings if f.verdict in (Verdict.FAIL, Verdict.WARN)}
    # the variants exercise the failure branches too, not only passes
    assert {
        "logps.finite",
        "logps.nonpositive",
        "logps.bf16_quantised",
        "grad.sign_matches_advantage",
        "grad.zero_outside_loss_mask",
        "kl.nonnegative",
        "ratio.matches_logps",
    } <= fired


def test_cache_is_per_step_and_off_outside_a_run():
    calls = []

    def compute():
        calls.append(1)
        return torch.zeros(1)

    tensor = torch.ones(3)
    cached(("probe", tensor), compute)
    cached(("probe", tensor), compute)
    assert len(calls) == 2  # no cache outside run_invariants
    with step_cache():
        first = cached(("probe", tensor), compute)
        assert cached(("probe", tensor), compute) is first
        tensor.add_(1)  # an in-place change invalidates the entry
        cached(("probe", tensor), compute)
    assert len(calls) == 4


def test_inference_mode_tensors_are_checked_like_any_other():
    """Tensors captured under torch.inference_mode() have no version counter: the cache must not choke."""
    built = build_step(seed=2, off_policy=True, beta=0.04)
    with torch.inference_mode():
        tensors = {name: value.clone() for name, value in built.step.tensors.items()}
    step = TraceStep(tensors=tensors, completion_text=built.step.completion_text, meta=dict(built.step.meta))
    findings = run_invariants(step, built.spec)
    assert [repr(f) for f in findings] == _uncached(step, built.spec)
    assert not [f for f in findings if "could not evaluate" in f.explanation]


def test_a_cache_opened_for_a_step_is_joined_for_that_step_only():
    first, second = TraceStep(tensors={}), TraceStep(tensors={})
    tensor = torch.ones(2)
    with step_cache(first):
        value = cached(("probe", tensor), lambda: torch.zeros(1))
        with step_cache(first):  # the same step: the open cache is reused
            assert cached(("probe", tensor), lambda: torch.ones(1)) is value
        with step_cache(second):  # another step: a fresh cache
            assert cached(("probe", tensor), lambda: torch.ones(1)) is not value
        with step_cache():  # no step named: a fresh cache
            assert cached(("probe", tensor), lambda: torch.ones(1)) is not value


def test_checking_a_captured_step_converts_each_tensor_to_float64_once(monkeypatch):
    """compare_step, the diagnoses and run_invariants share one cache per step: the findings are those of
    separate calls, and no step tensor is converted twice."""
    import grpo_check._step_cache as step_cache_module
    from grpo_check.compare import compare_step
    from grpo_check.trl.background import check_captured_step

    spec = GRPOSpec(num_generations=4, loss_type="dapo", beta=0.04)
    step = make_step(spec, n_prompts=2, completion_length=6)
    separate = compare_step(step, spec) + [
        f for f in run_invariants(step, spec) if f.verdict is not Verdict.NOT_CAPTURED
    ]
    converted: list[int] = []
    real_copy = step_cache_module._f64_copy

    def counting(tensor):
        converted.append(id(tensor))
        return real_copy(tensor)

    monkeypatch.setattr(step_cache_module, "_f64_copy", counting)
    shared, _ = check_captured_step(step, spec, model=None, ref_model=None, tolerances=None, invariants=True)
    assert [repr(f) for f in shared] == [repr(f) for f in separate]
    step_tensor_ids = {id(t) for t in step.tensors.values()}
    per_step_tensor = [i for i in converted if i in step_tensor_ids]
    assert per_step_tensor and len(per_step_tensor) == len(set(per_step_tensor))


def test_step_all_finite_decides_from_the_checked_tensors(monkeypatch) -> None:
    import grpo_check.invariants._common as common
    from grpo_check.invariants._common import step_all_finite

    built = build_step(seed=3, prompts=2, G=4, T=5)
    assert step_all_finite(built.step)
    logps = built.step["logps"].clone()
    logps[1, 2] = float("inf")
    broken = with_tensors(built.step, logps=logps)
    assert not step_all_finite(broken)
    finding = REGISTRY["logps.finite"].run(broken, built.spec)[0]
    assert finding.verdict in (Verdict.FAIL, Verdict.WARN)
    # finite values whose sum overflows: numpy's isfinite tells them finite (exact); a bfloat16 step (no numpy
    # dtype) is summed instead, and a sum that overflows sends the checks to their general path
    huge = with_tensors(built.step, rewards=torch.full_like(built.step["rewards"], 3e38))
    assert step_all_finite(huge)
    halves = {name: t.bfloat16() for name, t in huge.tensors.items() if t.is_floating_point()}
    huge_halves = with_tensors(huge, **halves)
    assert torch.isinf(huge_halves["rewards"].sum()) and not step_all_finite(huge_halves)
    for step in (huge, huge_halves):
        assert REGISTRY["rewards.finite"].run(step, built.spec)[0].verdict is Verdict.PASS
    fast = [[repr(f) for f in run_invariants(step, built.spec)] for step in (huge, huge_halves)]
    monkeypatch.setattr(common, "_finite_sources", lambda step: {})
    assert [[repr(f) for f in run_invariants(step, built.spec)] for step in (huge, huge_halves)] == fast


def test_small_step_shortcuts_give_the_general_findings(monkeypatch):
    """Known-finite masks, group sizes and scalars read with tolist (small steps) change no finding: the same
    variants with those shortcuts turned off give the same findings, field for field."""
    import grpo_check.invariants._common as common

    variants = _variants()
    with_shortcuts = [[repr(f) for f in run_invariants(step, spec)] for _, step, spec in variants]
    monkeypatch.setattr(common, "_finite_sources", lambda step: {})
    monkeypatch.setattr(common, "_FEW", -1)
    for (name, step, spec), expected in zip(variants, with_shortcuts, strict=True):
        assert [repr(f) for f in run_invariants(step, spec)] == expected, name


def test_a_tensor_changed_in_place_is_not_known_finite():
    from grpo_check.invariants._common import known_finite, step_all_finite

    built = build_step(seed=3, prompts=2, G=4, T=5)
    step = built.step
    with step_cache(step):
        assert known_finite(step, "logps") and step_all_finite(step)
        with torch.no_grad():
            step["logps"][0, 0] = float("nan")  # in place: the version counter moves
        assert not known_finite(step, "logps") and not step_all_finite(step)
        finding = REGISTRY["logps.finite"].run(step, built.spec)[0]
        assert finding.verdict in (Verdict.FAIL, Verdict.WARN)


def test_inference_tensors_are_known_finite_without_a_version_and_give_the_general_findings(monkeypatch):
    """A step of inference tensors (no version counter) is known finite as a normal one is; its findings,
    correct and broken, are those of the general per-tensor path."""
    import grpo_check.invariants._common as common
    from grpo_check.invariants._common import finite_outcome, known_finite, step_all_finite

    built = build_step(seed=3, prompts=2, G=4, T=5)
    with torch.inference_mode():
        frozen = with_tensors(built.step, **{name: t.clone() for name, t in built.step.tensors.items()})
        nan_logps = frozen["logps"].clone()
        nan_logps[1, 2] = float("nan")
    broken = with_tensors(frozen, logps=nan_logps)
    names = ("logps", "old_logps", "ref_logps", "advantages")
    with step_cache(frozen):
        assert frozen["logps"].is_inference() and known_finite(frozen, *names) and step_all_finite(frozen)
        assert common._is_known_finite(common.finite_sources(frozen), frozen["logps"])
    with step_cache(broken):
        assert not known_finite(broken, "logps") and not step_all_finite(broken)
    fast = [[repr(f) for f in run_invariants(step, built.spec)] for step in (frozen, broken)]
    fast_outcomes = [repr(finite_outcome(step, names)) for step in (frozen, broken)]
    monkeypatch.setattr(common, "_finite_sources", lambda step: {})
    assert [[repr(f) for f in run_invariants(step, built.spec)] for step in (frozen, broken)] == fast
    assert [repr(finite_outcome(step, names)) for step in (frozen, broken)] == fast_outcomes


def test_every_shape_of_key_is_memoised_by_tensor_identity_and_version():
    """A (name, tensor) key, a longer key, a key with a tensor first and one without tensors: each is a hit
    for the same tensor at the same version, a miss after an in-place change, and keyed as f64 keys it."""
    from grpo_check._step_cache import f64

    calls: list[str] = []

    def compute(name: str):
        return lambda: calls.append(name) or name

    x = torch.ones(3)
    with step_cache():
        for key in [("one", x), ("three", 1, x), (x, "first"), ("none", 7), ("two", x, x.dtype)]:
            assert cached(key, compute(str(key[0]))) == cached(key, compute("again"))
        assert "again" not in calls and len(calls) == 5
        copy = f64(x)
        assert cached(("f64", x), compute("f64")) is copy  # the inlined key of f64 is the general one
        with torch.no_grad():
            x.add_(1)
        cached(("one", x), compute("one after"))
        cached(("three", 1, x), compute("three after"))
        cached(("none", 7), compute("none after"))
        assert calls[-2:] == ["one after", "three after"]
        assert f64(x) is not copy and float(f64(x)[0]) == 2.0
        parameter = torch.nn.Parameter(torch.ones(2))  # a Tensor subclass is keyed as a tensor
        assert cached(("p", parameter), compute("p")) == cached(("p", parameter), compute("p again"))
        assert "p again" not in calls
    with torch.inference_mode():
        frozen = torch.ones(2)  # no version counter
        with step_cache():
            assert cached(("i", frozen), compute("i")) == cached(("i", frozen), compute("i again"))


def test_entries_record_the_versions_of_every_tensor_of_their_key():
    """An entry keyed by several tensors is a miss once any of them changed in place, a hit while none did
    (inference tensors, without a version counter, alike); f64 copies keep pointing at their source and a
    changed float64 tensor is its own source again."""
    from grpo_check._step_cache import f64, finite_mask
    from grpo_check.invariants._common import any_true, valid_finite

    calls: list[str] = []

    def compute(name: str):
        return lambda: calls.append(name) or name

    x, y = torch.ones(3), torch.zeros(3)
    with torch.inference_mode():
        frozen = torch.ones(3)
    with step_cache():
        assert cached(("pair", x, y, 1), compute("a")) == "a"
        assert cached(("pair", x, y, 1), compute("b")) == "a"
        assert cached(("pair", x, frozen), compute("c")) == cached(("pair", x, frozen), compute("d")) == "c"
        with torch.no_grad():
            y.add_(1)
        assert cached(("pair", x, y, 1), compute("e")) == "e"  # y moved: computed again, then a hit
        assert cached(("pair", x, y, 1), compute("f")) == "e"
        with torch.no_grad():
            x.add_(1)
        assert cached(("pair", x, frozen), compute("g")) == "g"
        assert calls == ["a", "c", "e", "g"]
        parameter = torch.nn.Parameter(torch.ones(2))  # subclasses are tensors in every key shape
        for key in [
            ("two", x, y),
            ("left", x, 5),
            ("right", 5, y),
            ("sub", parameter, y),
            ("size", x, x.shape),
        ]:
            assert cached(key, compute(key[0])) == cached(key, compute("again")) == key[0]
        with torch.no_grad():
            y.add_(1)
        assert cached(("two", x, y), compute("two after")) == "two after"
        assert cached(("right", 5, y), compute("right after")) == "right after"
        assert cached(("left", x, 5), compute("left again")) == "left"
        assert cached(("sub", parameter, y), compute("sub after")) == "sub after"
        assert "again" not in calls
        half = torch.tensor([1.0, float("nan")], dtype=torch.float16)
        copy = f64(half)
        assert finite_mask(copy) is finite_mask(half)  # the copy's mask is its source's
        doubles = torch.tensor([1.0, 2.0], dtype=torch.float64)
        assert f64(doubles) is doubles and finite_mask(doubles).all()
        with torch.no_grad():
            doubles[0] = float("inf")
        assert f64(doubles) is doubles and finite_mask(doubles).tolist() == [False, True]
        mask = torch.tensor([True, False])
        assert any_true(mask)
        with torch.no_grad():
            mask.zero_()
        assert not any_true(mask)
        step = TraceStep(tensors={"logps": torch.tensor([[-1.0, float("nan")]])})
        assert valid_finite(step, f64(step["logps"])).tolist() == [[True, False]]
        with torch.no_grad():
            step["logps"][0, 1] = -2.0
        assert valid_finite(step, f64(step["logps"])).tolist() == [[True, True]]


def test_host_view_is_a_view_of_small_cpu_tensors_only(monkeypatch):
    import grpo_check._step_cache as step_cache_module
    from grpo_check._step_cache import host_view

    x = torch.arange(6.0).reshape(2, 3)
    view = host_view(x)
    assert view is not None and view.shape == (2, 3) and view[1, 2] == 5.0
    x[0, 0] = 9.0
    assert view[0, 0] == 9.0  # shared memory
    assert host_view(x.bfloat16()) is None  # no numpy dtype
    assert host_view(torch.ones(2, requires_grad=True)) is None
    assert host_view(torch.ones(2, device="meta")) is None
    assert host_view(torch.ones(2, dtype=torch.bool)).dtype == bool
    monkeypatch.setattr(step_cache_module, "HOST_ELEMENTS", 5)
    assert host_view(x) is None and host_view(x[0]) is not None


def test_inference_guard_enters_and_leaves_inference_mode_as_torch_inference_mode_does():
    from grpo_check._step_cache import f64, inference_guard

    assert not torch.is_inference_mode_enabled()
    with inference_guard(True):
        assert torch.is_inference_mode_enabled()
        with step_cache():
            copy = f64(torch.ones(2, dtype=torch.float32))
        assert not copy.is_inference()  # usable in an autograd graph outside inference mode
        with inference_guard(False):
            assert not torch.is_inference_mode_enabled()
        assert torch.is_inference_mode_enabled()
    assert not torch.is_inference_mode_enabled()
    try:
        with inference_guard(True):
            raise ValueError("inside")
    except ValueError:
        pass
    assert not torch.is_inference_mode_enabled()
    built = build_step(seed=1, prompts=2, G=4, T=5)
    run_invariants(built.step, built.spec)
    assert not torch.is_inference_mode_enabled()


def test_shared_groups_and_flags_are_the_general_cache_entries():
    from grpo_check.invariants._common import any_true, groups_of

    index = torch.tensor([3, 3, 1])
    mask = torch.tensor([False, True])
    with step_cache():
        groups = groups_of(index)
        assert groups is groups_of(index) and cached(("groups", index), lambda: None) is groups
        assert any_true(mask) is True and cached(("any", mask), lambda: None) is True
        with torch.no_grad():
            mask.zero_()
        assert any_true(mask) is False  # changed in place: computed again
    assert groups_of(index) is not groups  # no cache open: a new one each time


def test_host_view_is_shared_within_a_step_per_tensor_and_version():
    from grpo_check._step_cache import host_view
    from grpo_check.invariants._common import count_true

    x = torch.arange(6.0).reshape(2, 3)
    assert host_view(x) is not host_view(x)  # no cache open: a new view each time
    with step_cache():
        view = host_view(x)
        assert host_view(x) is view and view[1, 2] == 5.0
        assert host_view(x.clone()) is not view  # another tensor, another view
        x.add_(1)  # changed in place: viewed again (and the data is the new data)
        again = host_view(x)
        assert again is not view and again[1, 2] == 6.0
        mask = torch.tensor([True, False, True])
        assert count_true(mask) == 2 and host_view(mask) is host_view(mask)
        with torch.inference_mode():
            frozen = torch.ones(4)
        assert host_view(frozen) is host_view(frozen)  # no version counter: keyed by identity
        assert host_view(x.bfloat16()) is None
        leaf = torch.ones(3)
        assert host_view(leaf) is not None
        leaf.requires_grad_()  # part of a graph since it was viewed: no view (the torch path)
        assert host_view(leaf) is None
        assert host_view(torch.ones(2, device="meta")) is None
    assert count_true(torch.tensor([True, True])) == 2


def test_machine_eps_is_finfo_eps_of_floating_dtypes_and_float32_else():
    from grpo_check.invariants._common import machine_eps

    for dtype in (torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.bool):
        expected = torch.finfo(dtype if dtype.is_floating_point else torch.float32).eps
        assert machine_eps(dtype) == expected and machine_eps(dtype) == expected  # made, then memoised
        assert type(machine_eps(dtype)) is float


def test_outcome_keeps_its_dataclass_fields_with_a_new_details_dict_each():
    from grpo_check.invariants._common import Outcome, passed

    first, second = Outcome(Verdict.PASS, "a"), Outcome(Verdict.PASS, "a")
    assert first == second and first.details == {} and first.details is not second.details
    assert not hasattr(first, "__dict__")  # slots
    assert [f.name for f in dataclasses.fields(Outcome)] == [
        *("verdict", "explanation", "figure", "tolerance", "row", "token"),
        *("details", "catalog_id", "likely_cause", "fix"),
    ]
    full = Outcome(Verdict.FAIL, "b", 1.0, 0.5, 2, 3, {"k": 1}, "S1", "cause", "fix it")
    assert repr(full) == (
        "Outcome(verdict=<Verdict.FAIL: 'fail'>, explanation='b', figure=1.0, tolerance=0.5, row=2, token=3, "
        "details={'k': 1}, catalog_id='S1', likely_cause='cause', fix='fix it')"
    )
    assert dataclasses.replace(full, row=None).row is None
    assert passed("ok", 0.0, x=1).details == {"x": 1}


def test_steps_holding_the_same_names_share_one_set_of_present_names():
    from grpo_check.invariants.registry import _collect_present_names

    built = build_step(seed=4, off_policy=True, beta=0.04)
    other = with_tensors(built.step)
    assert _collect_present_names(built.step) is _collect_present_names(other)
    fewer = with_tensors(built.step, kl=None)
    assert _collect_present_names(fewer) == _collect_present_names(built.step) - {"kl"}
    # the same names listed in another order are the same set; a meta key named like a tensor is its meta
    # name, a None meta value is absent, text is completion_text
    shuffled = TraceStep(
        tensors=dict(reversed(list(built.step.tensors.items()))),
        meta=dict(built.step.meta),
        completion_text=built.step.completion_text,
    )
    assert _collect_present_names(shuffled) is _collect_present_names(built.step)
    named = TraceStep(tensors={"kl": torch.zeros(1)}, meta={"logps": 1, "step": None, 3: "x"})
    assert _collect_present_names(named) == {"kl", "meta.logps", "meta.3"}
    texts = TraceStep(tensors={"kl": torch.zeros(1)}, meta={"logps": 1}, completion_text=["a"])
    assert _collect_present_names(texts) == {"kl", "meta.logps", "completion_text"}
    swapped = TraceStep(tensors={"logps": torch.zeros(1)}, meta={"kl": 1})
    assert _collect_present_names(swapped) == {"logps", "meta.kl"}
    # a check not captured on one step runs on the next that holds its inputs (memo by present names)
    kl_check = REGISTRY["kl.nonnegative"]
    assert run_invariants(fewer, built.spec, ["kl.nonnegative"])[0].verdict is Verdict.NOT_CAPTURED
    assert run_invariants(other, built.spec, ["kl.nonnegative"])[0].verdict is not Verdict.NOT_CAPTURED
    assert kl_check.run(fewer, built.spec)[0].verdict is Verdict.NOT_CAPTURED


def test_a_live_step_run_gives_run_invariants_findings_with_not_captured_ones_as_ids():
    from grpo_check.invariants.registry import run_step_into
    from grpo_check.trl.background import check_captured_step

    seen_not_captured = set()
    for name, step, spec in _variants():
        expected = run_invariants(step, spec)
        findings: list = []
        not_captured: list[str] = []
        run_step_into(findings, not_captured, step, spec)
        assert [repr(f) for f in findings] == [
            repr(f) for f in expected if f.verdict is not Verdict.NOT_CAPTURED
        ], name
        assert not_captured == [f.check_id for f in expected if f.verdict is Verdict.NOT_CAPTURED], name
        seen_not_captured |= set(not_captured)
        live, live_not_captured = check_captured_step(
            step, spec, model=None, ref_model=None, tolerances=None, invariants=True
        )
        assert live_not_captured == not_captured
        assert [repr(f) for f in live[len(live) - len(findings) :]] == [repr(f) for f in findings], name
    # both kinds: absent declared inputs, and a check that finds its inputs absent itself
    assert {"ratio.clip_metrics_in_unit_interval", "batch.text_faithful"} <= seen_not_captured


def test_a_pass_at_the_step_coordinates_is_the_finding_the_general_conversion_makes():
    """The registry's inlined conversion of a pass gives what ``Check._finding`` gives, field for field;
    every other outcome (located passes, warnings, failures) still goes through ``_finding``."""
    from grpo_check.invariants._common import Outcome
    from grpo_check.invariants.registry import _present_names, _step_where

    passes = 0
    for name, step, spec in _variants():
        base = _step_where(step)
        for check in REGISTRY.values():
            if check.missing(step):
                continue
            with step_cache(step):
                outcome = check.function(step, spec, tolerance=None)
            outcomes = outcome if isinstance(outcome, list) else [outcome]
            expected = [repr(check._finding(step, o, base)) for o in outcomes]
            for live in (None, []):
                findings: list = []
                check._run_into(findings, step, spec, None, _present_names(step), base, live)
                got = [repr(f) for f in findings] + [f"not captured {i}" for i in live or []]
                if live is not None:  # the live run counts a NOT_CAPTURED outcome instead of reporting it
                    expected_here = [
                        e if "NOT_CAPTURED" not in e else f"not captured {check.id}" for e in expected
                    ]
                    assert sorted(got) == sorted(expected_here), (name, check.id)
                else:
                    assert got == expected, (name, check.id)
            passes += sum(
                type(o) is Outcome and o.verdict is Verdict.PASS and o.row is None and o.token is None
                for o in outcomes
            )
    assert passes > 100


def test_a_check_that_raises_is_inconclusive_alike_in_a_step_run_and_alone(monkeypatch):
    from grpo_check.invariants.registry import run_step_into

    built = build_step(seed=5, off_policy=True, beta=0.04)
    check = REGISTRY["kl.nonnegative"]

    def raises(step, spec, *, tolerance=None):
        raise ValueError("shapes (8, 6) and (8, 5) do not match")

    check = dataclasses.replace(check, function=raises)
    monkeypatch.setitem(REGISTRY, check.id, check)
    alone = [repr(f) for f in check.run(built.step, built.spec)]
    in_step = [repr(f) for f in run_invariants(built.step, built.spec) if f.check_id == check.id]
    findings: list = []
    run_step_into(findings, [], built.step, built.spec)
    live = [repr(f) for f in findings if f.check_id == check.id]
    assert alone == in_step == live and len(alone) == 1
    assert "could not evaluate (ValueError: shapes (8, 6)" in alone[0] and "INCONCLUSIVE" in alone[0]
