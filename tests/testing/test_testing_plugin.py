"""The pytest plugin: fixtures available, marker registered and configuring grpo_spec, --grpo-report writes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# Inline pytester runs drop the modules they imported when they finish; a C extension such as torch cannot be
# imported twice in one process, so import everything the inner runs use here, in the outer process, first.
import grpo_check.report
import grpo_check.testing.assertions
import grpo_check.testing.probes
import grpo_check.testing.strategies  # noqa: F401

pytest_plugins = ["pytester"]


def test_fixtures_are_available_and_marker_configures_the_spec(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest
        from grpo_check.testing.probes import Probe
        from grpo_check.testing.strategies import GRPOBatch

        def test_default_spec(grpo_spec, grpo_batch):
            assert grpo_spec.num_generations == 4
            assert isinstance(grpo_batch, GRPOBatch)
            assert grpo_batch.num_generations == grpo_spec.num_generations

        @pytest.mark.grpo(loss_type="dr_grpo", std="population")
        def test_marker_kwargs(grpo_spec, grpo_probe_aggregation, grpo_probe_advantages):
            assert grpo_spec.loss_type == "dr_grpo" and grpo_spec.std == "population"
            assert grpo_probe_aggregation.spec.loss_type == "dr_grpo"
            assert grpo_probe_advantages.spec.std == "population"

        def test_all_probes(grpo_probes, grpo_probe_clip, grpo_probe_kl, grpo_probe_on_policy,
                            grpo_probe_advantages_pair):
            assert all(isinstance(p, Probe) for p in grpo_probes)
            assert len(grpo_probes) == 6
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "--strict-markers")
    result.assert_outcomes(passed=3)


def test_marker_is_registered(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.grpo*"])


def test_help_shows_the_report_option(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines(["*--grpo-report=PATH*"])


def test_grpo_report_collects_findings(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest, torch
        from grpo_check.testing import assert_advantages_close

        @pytest.mark.grpo
        def test_good():
            assert_advantages_close(torch.tensor([-0.7070, 0.7070]), rewards=torch.tensor([0.0, 1.0]),
                                    num_generations=2, rtol=1e-3)

        @pytest.mark.grpo
        def test_bad():
            assert_advantages_close(torch.tensor([0.7070, -0.7070]), rewards=torch.tensor([0.0, 1.0]),
                                    num_generations=2)

        @pytest.mark.grpo
        def test_other_failure():
            assert 1 == 2

        def test_unmarked():
            pass
        """
    )
    report = pytester.path / "out" / "grpo.json"
    result = pytester.runpytest("-p", "no:cacheprovider", f"--grpo-report={report}")
    result.assert_outcomes(passed=2, failed=2)
    result.stdout.fnmatch_lines(["grpo-check report: *grpo.json*"])
    data = json.loads(report.read_text())
    assert data["format"] == "grpo-check-result"
    by_test = {f["details"]["test"].split("::")[-1]: f for f in data["findings"]}
    assert by_test["test_bad"]["check_id"] == "advantages.values"
    assert by_test["test_bad"]["verdict"] == "fail"
    assert by_test["test_bad"]["where"]["prompt"] == 0
    assert by_test["test_good"]["verdict"] == "pass"
    assert by_test["test_other_failure"]["verdict"] == "fail"
    assert "test_unmarked" not in by_test
    assert data["metadata"]["tests"] == {"grpo_marked": 3, "passed": 1, "failed": 2, "skipped": 0}
    markdown = report.with_suffix(".md")
    assert markdown.exists() and "advantages.values" in markdown.read_text()


def test_no_report_without_the_option(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert not list(pytester.path.rglob("*.json"))


def test_grpo_result_fixture_adds_findings(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        from grpo_check.findings import Finding

        def test_manual(grpo_result):
            grpo_result.add(Finding("loss.custom", "loss", "warn", explanation="custom"))
        """
    )
    report = pytester.path / "r.json"
    pytester.runpytest("-p", "no:cacheprovider", f"--grpo-report={report}").assert_outcomes(passed=1)
    data = json.loads(report.read_text())
    assert [f["check_id"] for f in data["findings"]] == ["loss.custom"]


def test_plugin_import_is_light() -> None:
    code = (
        "import sys, grpo_check.testing.plugin; "
        "heavy = [m for m in ('torch', 'hypothesis', 'numpy') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


@pytest.mark.parametrize("where", ["directory", "under_a_file"])
def test_unwritable_report_path_is_refused_before_tests_run(pytester: pytest.Pytester, where: str) -> None:
    """An unwritable --grpo-report used to crash with a traceback at session end, after every test ran."""
    pytester.makepyfile(test_a="def test_x():\n    raise SystemExit('must not run')\n")
    target = pytester.path if where == "directory" else pytester.path / "test_a.py" / "r.json"
    result = pytester.runpytest("-p", "no:cacheprovider", f"--grpo-report={target}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*--grpo-report={target}:*"])
    assert "Traceback" not in result.stdout.str() + result.stderr.str()


def test_a_marked_test_that_errors_in_setup_counts_as_failed(pytester: pytest.Pytester) -> None:
    """A broken fixture (here: a marker naming an unknown loss type) fails the test in set-up, before any
    call: the report must not say OK."""
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.grpo(loss_type="bogus")
        def test_bad_marker(grpo_spec):
            pass

        @pytest.mark.grpo
        def test_ok():
            pass

        @pytest.mark.grpo
        def test_skipped():
            pytest.skip("not today")
        """
    )
    report = pytester.path / "grpo.json"
    result = pytester.runpytest("-p", "no:cacheprovider", f"--grpo-report={report}")
    result.assert_outcomes(passed=1, errors=1, skipped=1)
    data = json.loads(report.read_text())
    assert data["metadata"]["tests"] == {"grpo_marked": 3, "passed": 1, "failed": 1, "skipped": 1}
    by_test = {f["details"]["test"].split("::")[-1]: f for f in data["findings"]}
    assert by_test["test_bad_marker"]["verdict"] == "fail"
    assert by_test["test_bad_marker"]["explanation"].startswith("error in setup: ")
    assert by_test["test_ok"]["verdict"] == "pass"
    assert data["counts"]["fail"] == 1


def test_a_report_path_that_would_overwrite_another_file_or_a_pipe_is_refused(
    pytester: pytest.Pytester,
) -> None:
    import os

    pytester.makepyfile(test_victim="import pytest\n\n@pytest.mark.grpo\ndef test_ok():\n    pass\n")
    victim = pytester.path / "test_victim.py"
    before = victim.read_text()
    result = pytester.runpytest("-p", "no:cacheprovider", f"--grpo-report={victim}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR and victim.read_text() == before
    result.stderr.fnmatch_lines(["*is not a grpo-check report*"])
    pipe = pytester.path / "pipe.json"
    os.mkfifo(pipe)
    result = pytester.runpytest("-p", "no:cacheprovider", f"--grpo-report={pipe}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    report = pytester.path / "grpo.json"
    for _ in range(2):  # an earlier run's report is replaced
        assert pytester.runpytest("-p", "no:cacheprovider", f"--grpo-report={report}").ret == 0
    assert json.loads(report.read_text())["format"] == "grpo-check-result"
