"""The zoo's registry: enough mutants, each declaring a catalog entry and a stage; selectors; one swap each."""

from __future__ import annotations

import inspect

import pytest

from grpo_check.findings import STAGES, InputError
from grpo_check.zoo.cases import all_cases, select_cases
from grpo_check.zoo.loop import GRPOLoop

# The entries of /work/shared/bug-catalog.md (S-entries and numbered ones).
CATALOG_IDS = {"S1", "S2", "S3", *(str(n) for n in range(1, 33))}


def test_at_least_25_mutants_and_some_controls():
    cases = all_cases()
    assert sum(c.is_mutant for c in cases) >= 25
    assert sum(not c.is_mutant for c in cases) >= 10


def test_every_mutant_declares_a_catalog_entry_or_keywords_and_a_stage():
    for case in all_cases():
        for bug in case.bugs:
            assert bug.stage in STAGES, case.id
            assert bug.catalog_id in CATALOG_IDS or (bug.catalog_id is None and bug.keywords), case.id
            assert set(bug.also) <= CATALOG_IDS, case.id
        assert case.pipeline in ("loop", "trl"), case.id


def test_skillsbench_scenarios_carry_s1_s2_s3_in_their_own_stages():
    seeds = [c for c in all_cases() if c.id in ("skillsbench-S1-S2-S3", "trl-skillsbench-S1-S2-S3")]
    assert len(seeds) == 2
    for case in seeds:
        assert {(b.catalog_id, b.stage) for b in case.bugs} == {
            ("S1", "logps"),
            ("S2", "advantages"),
            ("S3", "batch"),
        }
        assert case.first_stage == "batch"


def test_loop_mutants_swap_one_function():
    """A loop mutant overrides at most one method of the correct loop (the seed scenario combines three)."""
    from grpo_check.zoo import mutants_loop

    base_methods = {name for name, _ in inspect.getmembers(GRPOLoop, inspect.isfunction)}
    for _, cls in inspect.getmembers(mutants_loop, inspect.isclass):
        if not issubclass(cls, GRPOLoop) or cls is GRPOLoop:
            continue
        own = {name for name in vars(cls) if name in base_methods and name != "__init__"}
        limit = 3 if cls.__name__ == "_SkillsBenchScenario" else 1
        assert len(own) <= limit, (cls.__name__, own)


def test_select_by_id_catalog_id_and_group():
    assert [c.id for c in select_cases(["ctl-grpo"])] == ["ctl-grpo"]
    by_catalog = select_cases(["#6"])
    assert by_catalog and all(any(b.catalog_id == "6" for b in c.bugs) for c in by_catalog)
    assert all(not c.is_mutant for c in select_cases(["controls"]))
    assert all(c.is_mutant for c in select_cases(["mutants"]))


def test_unknown_selector_is_an_input_error():
    with pytest.raises(InputError, match="matches no zoo case"):
        select_cases(["no-such-case"])


def test_unknown_selector_suggests_close_ids():
    with pytest.raises(InputError, match="did you mean S1-logsoftmax-sign"):
        select_cases(["S1-logsoftmax-sing"])
