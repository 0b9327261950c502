"""pytest plugin registered through the ``pytest11`` entry point (fixtures, marker, report option).

Loaded automatically in every pytest run once grpo-check is installed. It stays import-light (pytest and
the standard library only; torch and grpo-check's maths are imported inside the fixtures) and never fails
collection.

Fixtures:
    ``grpo_spec``: a :class:`~grpo_check.config.GRPOSpec` (``num_generations=4``, ``max_completion_length=6``,
        TRL defaults otherwise); override fields with the marker, ``@pytest.mark.grpo(loss_type="dr_grpo")``
        or ``@pytest.mark.grpo(spec=GRPOSpec(...))``, or override the fixture in your ``conftest.py``.
    ``grpo_batch``: a deterministic :class:`~grpo_check.testing.strategies.GRPOBatch` for ``grpo_spec``
        (2 prompts × G, ragged lengths, a zero-variance group, an unscorable row, an all-masked row).
    ``grpo_probe_advantages``, ``grpo_probe_advantages_pair``, ``grpo_probe_on_policy``, ``grpo_probe_clip``,
        ``grpo_probe_kl``, ``grpo_probe_aggregation``: probe tasks (closed-form answers) configured from
        ``grpo_spec``; ``grpo_probes``: all of them.
    ``grpo_result``: the test run's :class:`~grpo_check.findings.Result`; findings you add land in the report.

Marker: ``@pytest.mark.grpo`` tags a grpo-check test (its keyword arguments configure ``grpo_spec``).

Option: ``--grpo-report=PATH`` writes the test run's findings — every :class:`GRPOCheckError` a test raised,
plus one pass/fail row per ``grpo``-marked test — as a grpo-check result JSON at PATH and, when the
renderers are installed, Markdown next to it (``PATH`` with suffix ``.md``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

import pytest

_FINDING_KEY = "grpo_check_finding"
_MARKER_LINE = "grpo: grpo-check invariant test (keyword arguments configure the grpo_spec fixture)"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("grpo-check")
    group.addoption(
        "--grpo-report",
        action="store",
        dest="grpo_report",
        metavar="PATH",
        default=None,
        help="write the grpo-check report of this test run (findings raised as GRPOCheckError, one row per "
        "@pytest.mark.grpo test) as JSON to PATH, and Markdown next to it",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", _MARKER_LINE)
    _check_report_path(config.getoption("grpo_report", default=None))
    if not config.pluginmanager.has_plugin("grpo_check_reporter"):
        config.pluginmanager.register(_Reporter(config), "grpo_check_reporter")


def _check_report_path(path: str | None) -> None:
    """Refuse an unwritable ``--grpo-report`` before any test runs (not with a traceback after they all ran)."""
    if not path:
        return
    target = Path(path)
    if target.is_dir():
        raise pytest.UsageError(
            f"--grpo-report={path}: is a directory; give a file name such as {path}/grpo.json"
        )
    for parent in target.parents:
        if parent.exists():
            if not parent.is_dir():
                raise pytest.UsageError(f"--grpo-report={path}: {parent} is a file, not a directory")
            break
    json_path = target.with_suffix(".json") if target.suffix == ".md" else target
    for written in (json_path, json_path.with_suffix(".md")):
        problem = _not_a_report(Path(os.path.realpath(written)))
        if problem:
            raise pytest.UsageError(f"--grpo-report={path}: {written} {problem}; give a new file name")


def _not_a_report(path: Path) -> str | None:
    """Why the file at ``path`` must not be replaced by a report (None: absent, or an earlier report)."""
    if not path.exists():
        return None
    if not stat.S_ISREG(path.stat().st_mode):
        return "is not a regular file (a device or a pipe)"
    try:
        head = path.read_text(encoding="utf-8")[:4096]
    except (OSError, UnicodeDecodeError):
        return "exists and is not a grpo-check report"
    if '"grpo-check-result"' in head or head.startswith("# grpo-check"):  # an earlier run's JSON / Markdown
        return None
    return "exists and is not a grpo-check report (it would be overwritten)"


# ---------------------------------------------------------------- collecting findings


def _grpo_errors(exc: BaseException | None) -> list[Any]:
    """GRPOCheckError instances in ``exc`` (also inside exception groups and __cause__ chains)."""
    try:
        from grpo_check.findings import GRPOCheckError
    except Exception:
        return []
    found: list[Any] = []
    seen: set[int] = set()
    stack = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, GRPOCheckError):
            found.append(current)
        stack.extend(getattr(current, "exceptions", ()) or ())
        stack.append(current.__cause__)
    return found


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    outcome = yield
    try:
        if not item.config.getoption("grpo_report", default=None):
            return  # record only when a report was asked for (user_properties also land in JUnit XML)
        report = outcome.get_result()
        if call.excinfo is not None:
            for error in _grpo_errors(call.excinfo.value):
                report.user_properties.append(
                    (_FINDING_KEY, json.dumps(error.finding.to_dict(), default=str))
                )
        # the call's outcome, and an error in set-up or teardown (a broken fixture fails the test too)
        if item.get_closest_marker("grpo") is not None and (call.when == "call" or report.failed):
            report.user_properties.append(("grpo_check_marked", True))
    except Exception:  # never let report bookkeeping break a test run
        pass


def _crash_message(report: pytest.TestReport) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None and getattr(crash, "message", None):
        return str(crash.message)
    return str(report.longrepr)[:2000]


def build_result(records: list[dict[str, Any]]):  # -> grpo_check.findings.Result
    """The grpo-check :class:`Result` of a test run from the plugin's per-test records."""
    from grpo_check.findings import Finding, Result, Verdict

    result = Result(metadata={"source": "pytest", "tool": "grpo-check pytest plugin"})
    outcomes: dict[str, str] = {}  # marked test -> "failed" (in any phase), else its call's outcome
    for record in records:
        for raw in record["findings"]:
            finding = Finding.from_dict(json.loads(raw))
            finding.details = {**finding.details, "test": record["nodeid"]}
            result.add(finding)
        if record["marked"] and (record["when"] == "call" or record["outcome"] == "failed"):
            if outcomes.get(record["nodeid"]) != "failed":
                outcomes[record["nodeid"]] = record["outcome"]
            if record["when"] != "call" and record["message"]:
                record = {**record, "message": f"error in {record['when']}: {record['message']}"}
            if not record["findings"]:
                verdict = Verdict.PASS if record["outcome"] == "passed" else Verdict.FAIL
                if record["outcome"] == "skipped":
                    verdict = Verdict.INCONCLUSIVE
                result.add(
                    Finding(
                        check_id=f"pytest::{record['nodeid']}",
                        stage="run",
                        verdict=verdict,
                        explanation=record["message"] or f"test {record['outcome']}",
                        kind="test",
                        details={"test": record["nodeid"]},
                    )
                )
    counted = list(outcomes.values())
    result.metadata["tests"] = {
        "grpo_marked": len(counted),
        **{outcome: counted.count(outcome) for outcome in ("passed", "failed", "skipped")},
    }
    return result


def _atomic_write(path: Path, text: str) -> None:
    path = Path(os.path.realpath(path))  # through a symlink to its target, not over the link
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_session_report(records: list[dict[str, Any]], path: str | os.PathLike[str]) -> list[Path]:
    """Write the test run's result as JSON (``path``, or ``path`` with ``.json`` when it ends in ``.md``) and,
    when :mod:`grpo_check.report` is available, as Markdown (suffix ``.md``). Returns the paths written."""
    result = build_result(records)
    target = Path(path)
    json_path = target.with_suffix(".json") if target.suffix == ".md" else target
    written = [json_path]
    _atomic_write(json_path, result.to_json())
    try:
        from grpo_check.report import render
    except Exception:
        return written
    md_path = json_path.with_suffix(".md") if json_path.suffix != ".md" else json_path
    if md_path == json_path:
        md_path = json_path.with_name(json_path.name + ".md")
    try:
        _atomic_write(md_path, render(result, "md"))
        written.append(md_path)
    except Exception:  # Markdown is a convenience; the JSON is the report
        pass
    return written


class _Reporter:
    """Per-config collector of findings (a plugin object, so nested pytester runs keep separate records)."""

    def __init__(self, config: pytest.Config):
        self.config = config
        self.records: list[dict[str, Any]] = []
        self.written: list[Path] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        keys = {key for key, _ in report.user_properties}
        findings = [value for key, value in report.user_properties if key == _FINDING_KEY]
        marked = "grpo_check_marked" in keys
        if not findings and not (marked and (report.when == "call" or report.failed)):
            return
        self.records.append(
            {
                "nodeid": report.nodeid,
                "when": report.when,
                "outcome": report.outcome,
                "marked": marked,
                "findings": findings,
                "message": _crash_message(report) if report.failed and not findings else None,
            }
        )

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        path = self.config.getoption("grpo_report", default=None)
        if not path or hasattr(self.config, "workerinput"):  # xdist workers: the controller writes
            return
        try:
            self.written = write_session_report(self.records, path)
        except OSError as exc:  # e.g. disk full: say so, and keep pytest's own result and exit status
            self.write_error = f"grpo-check report: could not write {path}: {exc.strerror or exc}"

    def pytest_terminal_summary(self, terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
        if self.written:
            terminalreporter.write_line("grpo-check report: " + ", ".join(str(p) for p in self.written))
        if getattr(self, "write_error", None):
            terminalreporter.write_line(self.write_error, red=True)


def _reporter(config: pytest.Config) -> _Reporter | None:
    plugin = config.pluginmanager.get_plugin("grpo_check_reporter")
    return plugin if isinstance(plugin, _Reporter) else None


# ---------------------------------------------------------------- fixtures


@pytest.fixture
def grpo_spec(request: pytest.FixtureRequest):
    """GRPOSpec for this test: defaults (G=4, L_max=6), overridden by ``@pytest.mark.grpo(**fields)``."""
    from grpo_check.config import GRPOSpec
    from grpo_check.findings import InputError

    marker = request.node.get_closest_marker("grpo")
    if marker is not None and marker.args:
        raise InputError(
            f"@pytest.mark.grpo takes keyword arguments only (GRPOSpec fields, or spec=...), got {marker.args!r}; "
            'e.g. @pytest.mark.grpo(loss_type="dapo")'
        )
    kwargs = dict(marker.kwargs) if marker is not None else {}
    base = kwargs.pop("spec", None) or GRPOSpec(num_generations=4, max_completion_length=6)
    if not kwargs:
        return base
    unknown = sorted(set(kwargs) - {field.name for field in dataclasses.fields(GRPOSpec)})
    if unknown:
        raise InputError(f"@pytest.mark.grpo: unknown GRPOSpec field(s) {', '.join(unknown)}")
    return base.replace(**kwargs)


@pytest.fixture
def grpo_batch(grpo_spec):
    """A deterministic GRPOBatch (canonical tensor names) drawn for ``grpo_spec``."""
    from grpo_check.testing.strategies import make_batch

    return make_batch(
        spec=grpo_spec,
        num_generations=grpo_spec.num_generations,
        max_length=grpo_spec.max_completion_length or 6,
    )


@pytest.fixture
def grpo_probe_advantages(grpo_spec):
    """Advantage probe (G=4: binary, zero-variance and NaN-reward groups) for ``grpo_spec``'s std and ε."""
    from grpo_check.testing.probes import advantage_probe

    return advantage_probe(grpo_spec)


@pytest.fixture
def grpo_probe_advantages_pair(grpo_spec):
    """Advantage probe G=2, rewards [0, 1 | 5, 5]: ∓1/√2 (sample std) and exactly 0."""
    from grpo_check.testing.probes import advantage_pair_probe

    return advantage_pair_probe(grpo_spec)


def _clipped_loss_type(spec) -> str:
    return spec.loss_type if spec.loss_type in ("grpo", "bnpo", "dr_grpo", "dapo", "luspo") else "grpo"


@pytest.fixture
def grpo_probe_on_policy(grpo_spec):
    """On-policy probe: ratio 1, clip fraction 0, loss exactly 0 but gradient −A·w."""
    from grpo_check.testing.probes import on_policy_probe

    return on_policy_probe(_clipped_loss_type(grpo_spec))


@pytest.fixture
def grpo_probe_clip(grpo_spec):
    """Clipping probe (ε = 0.2): ratios 1, 1.5, 0.5 under A = ±1; clipped tokens get zero gradient."""
    from grpo_check.testing.probes import clip_probe

    return clip_probe(_clipped_loss_type(grpo_spec))


@pytest.fixture
def grpo_probe_kl(grpo_spec):
    """KL probe for ``grpo_spec.kl_estimator`` with π_ref/π ∈ {1, 2, ½}."""
    from grpo_check.testing.probes import kl_probe

    return kl_probe(grpo_spec.kl_estimator)


@pytest.fixture
def grpo_probe_aggregation(grpo_spec):
    """Aggregation probe for ``grpo_spec.loss_type``: rows of lengths 1 and 3."""
    from grpo_check.testing.probes import aggregation_probe

    return aggregation_probe(grpo_spec.loss_type)


@pytest.fixture
def grpo_probes(grpo_spec):
    """Every probe, configured from ``grpo_spec``."""
    from grpo_check.testing.probes import all_probes

    return all_probes(grpo_spec)


@pytest.fixture
def grpo_result(request: pytest.FixtureRequest):
    """The test run's grpo-check Result: add findings here to include them in ``--grpo-report``."""
    from grpo_check.findings import Result

    reporter = _reporter(request.config)
    result = Result()
    yield result
    if reporter is not None and result.findings:
        reporter.records.append(
            {
                "nodeid": request.node.nodeid,
                "when": "fixture",
                "outcome": "recorded",
                "marked": False,
                "findings": [json.dumps(f.to_dict(), default=str) for f in result.findings],
                "message": None,
            }
        )
