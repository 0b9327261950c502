"""The assert_* forms are written out in grpo_check/invariants/asserts.py, one per registered check."""

from __future__ import annotations

import ast
import inspect

import pytest
import torch

import grpo_check.invariants as invariants
from grpo_check.findings import GRPOCheckError
from grpo_check.invariants import asserts
from grpo_check.invariants.registry import REGISTRY


def _defined_check_ids() -> dict[str, str]:
    """function name -> the check id its body runs, read from the source (not from the registry)."""
    tree = ast.parse(inspect.getsource(asserts))
    out: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name.startswith("assert_"):
            call = node.body[-1].value
            out[node.name] = call.args[0].value
    return out


def test_every_registered_check_has_its_function_and_every_function_its_check():
    defined = _defined_check_ids()
    expected = {f"assert_{check.stage}_{check.name}": check.id for check in REGISTRY.values()}
    assert defined == expected


def test_short_names_are_the_unique_ones_and_alias_the_long_functions():
    for name, check in invariants.ASSERTS.items():
        function = getattr(asserts, name)
        assert function.__name__ == f"assert_{check.stage}_{check.name}"
    assert sorted(asserts.__all__) == sorted(invariants.ASSERTS)


def test_the_package_exports_the_written_functions():
    assert invariants.assert_group_sum_zero is asserts.assert_advantages_group_sum_zero
    source = inspect.getsource(invariants)
    assert "globals()[" not in source


def test_an_assert_form_fires_on_a_broken_input_and_passes_a_correct_one():
    group = torch.tensor([0, 0])
    assert (
        asserts.assert_group_sum_zero(advantages=torch.tensor([1.0, -1.0]), group_index=group).verdict.value
        == "pass"
    )
    with pytest.raises(GRPOCheckError, match="group_sum_zero"):
        asserts.assert_group_sum_zero(advantages=torch.tensor([1.0, 1.0]), group_index=group)


def test_every_assertion_hides_its_frame_from_pytest_tracebacks():
    for name in asserts.__all__:
        code = getattr(asserts, name).__code__
        assert "__tracebackhide__" in code.co_varnames, name
