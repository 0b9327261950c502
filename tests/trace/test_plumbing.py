"""The shared plumbing every check goes through: step-cache keys, Finding/Where construction, TraceStep.has."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch

from grpo_check._step_cache import cached, step_cache
from grpo_check.findings import Finding, Verdict, Where
from grpo_check.trace.model import TraceStep


def test_cached_keys_without_tensors_hit_and_miss_by_value() -> None:
    calls: list[str] = []
    with step_cache():
        first = cached(("name", 1), lambda: calls.append("a") or "a")
        again = cached(("name", 1), lambda: calls.append("b") or "b")
        other = cached(("name", 2), lambda: calls.append("c") or "c")
    assert (first, again, other) == ("a", "a", "c")
    assert calls == ["a", "c"]


def test_cached_tensor_keys_miss_after_an_in_place_change_and_for_another_tensor() -> None:
    tensor, twin = torch.ones(3), torch.ones(3)
    calls: list[int] = []
    with step_cache():
        for _ in range(2):
            cached(("sum", tensor, "x"), lambda: calls.append(1))
        cached(("sum", twin, "x"), lambda: calls.append(2))
        tensor.add_(1.0)
        cached(("sum", tensor, "x"), lambda: calls.append(3))
        cached(("sum", tensor, "y"), lambda: calls.append(4))
    assert calls == [1, 2, 3, 4]


def test_cached_identifies_tensor_subclasses_and_inference_tensors() -> None:
    parameter = torch.nn.Parameter(torch.ones(2))
    with torch.inference_mode():
        frozen = torch.ones(2)
    calls: list[str] = []
    with step_cache():
        for _ in range(2):
            cached(("p", parameter), lambda: calls.append("p"))
            cached(("i", frozen), lambda: calls.append("i"))
    assert calls == ["p", "i"]


def test_cached_computes_every_time_outside_a_cache() -> None:
    calls: list[int] = []
    cached(("k", 1), lambda: calls.append(1))
    cached(("k", 1), lambda: calls.append(1))
    assert len(calls) == 2


def test_finding_defaults_are_fresh_details_and_empty_coordinates() -> None:
    one = Finding("a.b", "loss", Verdict.PASS)
    two = Finding("a.b", "loss", Verdict.PASS)
    one.details["x"] = 1
    assert two.details == {}
    assert one.where == Where() and one.where.describe() == "-"
    assert one.explanation == "" and one.kind == "invariant" and one.figure is None


@pytest.mark.parametrize("cls", [Finding, Where])
def test_the_written_out_constructors_take_every_field_in_order_with_its_default(cls) -> None:
    """A field added to the dataclass without its constructor parameter (or with another default) fails here."""
    parameters = list(inspect.signature(cls.__init__).parameters.values())[1:]
    fields = dataclasses.fields(cls)
    assert [p.name for p in parameters] == [f.name for f in fields]
    for parameter, field in zip(parameters, fields, strict=True):
        if field.default is not dataclasses.MISSING:
            assert parameter.default == field.default, field.name
        elif field.default_factory is not dataclasses.MISSING:  # details: a fresh dict per instance
            assert getattr(cls("a.b", "loss", Verdict.PASS), field.name) == field.default_factory()
        else:
            assert parameter.default is inspect.Parameter.empty, field.name


def test_finding_coerces_a_verdict_string_and_a_where_dict() -> None:
    finding = Finding("a.b", "loss", "fail", where={"row": 2, "token": 1})
    assert finding.verdict is Verdict.FAIL
    assert finding.where == Where(row=2, token=1)
    assert Finding.from_dict(finding.to_dict()) == finding
    assert dataclasses.replace(finding, figure=1.0).figure == 1.0


def test_where_stays_frozen_hashable_and_positional() -> None:
    where = Where(3, 0, 1, 2)
    assert (where.step, where.micro_batch, where.rank, where.prompt) == (3, 0, 1, 2)
    assert hash(where) == hash(Where(step=3, micro_batch=0, rank=1, prompt=2))
    assert where.to_dict() == {"step": 3, "micro_batch": 0, "rank": 1, "prompt": 2}
    with pytest.raises(dataclasses.FrozenInstanceError):
        where.row = 4  # type: ignore[misc]
    with pytest.raises(TypeError):
        Where(unknown=1)  # type: ignore[call-arg]


def test_trace_step_has_every_named_tensor() -> None:
    step = TraceStep(tensors={"logps": torch.zeros(1), "loss": torch.zeros(())})
    assert step.has("logps") and step.has("logps", "loss") and step.has()
    assert not step.has("ratio") and not step.has("logps", "ratio")
