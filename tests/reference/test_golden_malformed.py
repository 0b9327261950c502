"""A malformed golden vector file is a usage error (exit 2, "malformed golden case <id> in <file>: <what>"),
never a FAIL blamed on the reference (exit 1), and never silently accepted."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from grpo_check.cli import app
from grpo_check.findings import InputError
from grpo_check.reference.golden import FORMAT, PACKAGE_DIR, load_cases

Case = dict[str, Any]


def _valid_case() -> Case:
    doc = json.loads((PACKAGE_DIR / "advantages.json").read_text(encoding="utf-8"))
    return copy.deepcopy(doc["cases"][0])


def _write(directory: Path, cases: list[Case], name: str = "x.json") -> Path:
    path = directory / name
    path.write_text(json.dumps({"format": FORMAT, "cases": cases}), encoding="utf-8")
    return path


def _set(*keys: str, value: Any) -> Callable[[Case], None]:
    def mutate(case: Case) -> None:
        target = case
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value

    return mutate


def _drop(key: str) -> Callable[[Case], None]:
    return lambda case: case.pop(key)


MUTATIONS: dict[str, tuple[Callable[[Case], None], str]] = {
    "unknown function": (_set("function", value="no_such_fn"), "unknown function 'no_such_fn'"),
    "unknown dtype": (
        _set("inputs", "rewards_per_func", "dtype", value="complex999"),
        "inputs.rewards_per_func: unknown dtype 'complex999'",
    ),
    "no inputs": (_drop("inputs"), "'inputs' is missing"),
    "missing required input": (
        lambda case: case["inputs"].pop("rewards_per_func"),
        "'inputs' lacks rewards_per_func",
    ),
    "unknown input": (
        _set("inputs", "rewardz", value={"dtype": "float64", "data": [1.0]}),
        "unknown 'inputs' key(s) rewardz",
    ),
    "ragged data": (
        _set("inputs", "rewards_per_func", "data", value=[[1.0], [2.0, 3.0]]),
        "inputs.rewards_per_func: ragged data",
    ),
    "input given as a string": (_set("inputs", "rewards_per_func", value="hello"), "must be a tensor"),
    "word in float data": (
        _set("expected", "rewards", "data", value=[1.0, "one", 0.0, 1.0]),
        "expected.rewards: 'one' is not a float64 value",
    ),
    "bad spec": (_set("spec", "num_generations", value="four"), "bad 'spec': field 'num_generations'"),
    "unknown spec field": (_set("spec", "num_generationz", value=4), "unknown GRPOSpec fields"),
    "unknown kwarg": (_set("kwargs", "bogus_kw", value=1), "unknown 'kwargs' key(s) bogus_kw"),
    "no expected outputs": (_set("expected", value={}), "'expected' lists no outputs"),
    "negative tolerance": (_set("rtol", value=-1.0), "'rtol' must be a number ≥ 0"),
}


def _selfcheck(directory: Path):
    return CliRunner().invoke(app, ["selfcheck", "--golden-dir", str(directory)])


def test_the_unmodified_case_passes(tmp_path):
    _write(tmp_path, [_valid_case()])
    result = _selfcheck(tmp_path)
    assert result.exit_code == 0, result.output
    assert "1/1 golden cases pass" in result.output


@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_malformed_case_is_a_usage_error(tmp_path, mutation):
    mutate, what = MUTATIONS[mutation]
    case = _valid_case()
    mutate(case)
    path = _write(tmp_path, [case])
    result = _selfcheck(tmp_path)
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert f"malformed golden case {case['id']} in {path}: " in result.output
    assert what in result.output
    assert "FAIL" not in result.output and "disagrees with the specification" not in result.output


def test_kwargs_of_the_function_are_accepted(tmp_path):
    """The kwarg check knows each function's keywords: per_token_kl's estimator is fine."""
    doc = json.loads((PACKAGE_DIR / "kl.json").read_text(encoding="utf-8"))
    with_kwargs = [c for c in doc["cases"] if c.get("kwargs")]
    assert with_kwargs
    _write(tmp_path, with_kwargs)
    assert _selfcheck(tmp_path).exit_code == 0


def test_duplicate_ids_are_refused(tmp_path):
    case = _valid_case()
    path = _write(tmp_path, [case, copy.deepcopy(case)])
    result = _selfcheck(tmp_path)
    assert result.exit_code == 2, result.output
    assert f"malformed golden case {case['id']} in {path}: duplicate case id" in result.output


def test_duplicate_ids_across_files_name_both(tmp_path):
    case = _valid_case()
    first = _write(tmp_path, [case], "a.json")
    second = _write(tmp_path, [copy.deepcopy(case)], "b.json")
    with pytest.raises(InputError, match="duplicate case id") as caught:
        load_cases(tmp_path)
    assert str(second) in str(caught.value) and f"also in {first}" in str(caught.value)


def test_wrong_expected_value_is_still_a_failure_not_an_input_error(tmp_path):
    """A well-formed case whose expected value the reference does not reproduce stays exit 1."""
    case = _valid_case()
    case["expected"]["advantages"]["data"][0] = 99.0
    _write(tmp_path, [case])
    result = _selfcheck(tmp_path)
    assert result.exit_code == 1, result.output
    assert "FAIL" in result.output and "malformed" not in result.output


def test_packaged_and_repository_vectors_are_well_formed():
    assert len(load_cases(PACKAGE_DIR)) >= 40
    repository = Path(__file__).resolve().parents[2] / "reference" / "golden"
    if repository.is_dir():
        assert len(load_cases(repository)) == len(load_cases(PACKAGE_DIR))
