"""JUnit XML for CI: one ``<testcase>`` per failing or warning check per step, one per check for the rest.

Mapping: ``fail`` → ``<failure>``; ``warn`` → ``<failure>`` only with ``strict=True``, otherwise a passing
testcase whose ``<system-out>`` holds the message. Those get one testcase per occurrence, named
``<check_id>[step=..,mb=..,rank=..]``. The other verdicts are aggregated per check, so that a run of 1,000
steps stays a file a CI page can show: ``pass`` → one passing testcase named ``<check_id>`` whose
``<system-out>`` says how many occurrences passed and the worst figure; ``convention`` → one passing
testcase ``<check_id>[convention]``; ``not_captured`` and ``inconclusive`` → one ``<skipped>`` testcase
``<check_id>[not_captured]`` / ``<check_id>[inconclusive]`` whose message gives the count and the reasons.
Test-case ``classname`` is ``grpo_check.<stage>``.

Example::

    >>> from grpo_check.findings import Finding, Result, Where
    >>> xml = render_junit(Result([Finding("loss.finite", "loss", "fail", where=Where(step=2))]))
    >>> 'failures="1"' in xml
    True
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from grpo_check.findings import Finding, Result, Verdict
from grpo_check.report._common import CheckGroup, fmt_number, group_by_check, ordered_findings, reasons_text

_AGGREGATED = (Verdict.PASS, Verdict.CONVENTION, Verdict.NOT_CAPTURED, Verdict.INCONCLUSIVE)


def testcase_name(finding: Finding) -> str:
    """``check_id[step=2,mb=0,rank=1]`` (only the coordinates that are set)."""
    where = finding.where
    coords = [
        f"{label}={value}"
        for label, value in (("step", where.step), ("mb", where.micro_batch), ("rank", where.rank))
        if value is not None
    ]
    source = finding.details.get("source") if isinstance(finding.details, dict) else None
    if source:
        coords.append(f"source={source}")
    return f"{finding.check_id}[{','.join(coords)}]" if coords else finding.check_id


def render_junit(result: Result, *, suite_name: str = "grpo-check", strict: bool = False) -> str:
    """Render ``result`` as a JUnit XML document (a ``<testsuites>`` with one ``<testsuite>``)."""
    findings = ordered_findings(result)
    failures = sum(1 for f in findings if _is_failure(f, strict))
    skipped = len(group_by_check(findings, (Verdict.NOT_CAPTURED, Verdict.INCONCLUSIVE)))
    tests = sum(1 for f in findings if f.verdict not in _AGGREGATED) + len(
        group_by_check(findings, _AGGREGATED)
    )
    root = ET.Element("testsuites", name=suite_name, tests=str(tests), failures=str(failures), errors="0")
    suite = ET.SubElement(
        root,
        "testsuite",
        name=suite_name,
        tests=str(tests),
        failures=str(failures),
        errors="0",
        skipped=str(skipped),
    )
    source = result.metadata.get("source")
    if source:
        properties = ET.SubElement(suite, "properties")
        ET.SubElement(properties, "property", name="source", value=_xml_text(str(source)))
    aggregated = {id(f) for f in findings if f.verdict in _AGGREGATED}
    for finding in findings:
        if id(finding) in aggregated:
            continue
        case = ET.SubElement(
            suite,
            "testcase",
            classname=_xml_text(f"grpo_check.{finding.stage}"),
            name=_xml_text(testcase_name(finding)),
            time="0",
        )
        message = _xml_text(finding.message())
        if _is_failure(finding, strict):
            element = ET.SubElement(case, "failure", message=_first_line(finding), type=finding.verdict.value)
            element.text = message
        elif finding.verdict is Verdict.WARN:
            ET.SubElement(case, "system-out").text = message
    for group in group_by_check(findings, _AGGREGATED):
        label = "" if group.verdict is Verdict.PASS else f"[{group.verdict.value}]"
        case = ET.SubElement(
            suite,
            "testcase",
            classname=_xml_text(f"grpo_check.{group.stage}"),
            name=_xml_text(group.check_id + label),
            time="0",
        )
        if group.verdict in (Verdict.NOT_CAPTURED, Verdict.INCONCLUSIVE):
            reason = f"{group.verdict.value.replace('_', ' ')}, {group.occurrences()}: {reasons_text(group)}"
            ET.SubElement(case, "skipped", message=_xml_text(reason[:500]))
        else:
            ET.SubElement(case, "system-out").text = _xml_text(_group_summary(group))
    for family in (result.metadata.get("coverage") or {}).get(
        "families", []
    ):  # one testcase per check family
        case = ET.SubElement(suite, "testcase", classname="grpo_check.coverage", name=family["id"], time="0")
        reason = _xml_text(f"{family['title']}: {family.get('reason')}")
        if family.get("gap") and not result.metadata.get("allow_partial"):
            ET.SubElement(case, "failure", message=reason, type="incomplete").text = reason
            failures += 1
        elif family["status"] != "ran":
            ET.SubElement(case, "skipped", message=reason)
            skipped += 1
    tests = len(suite.findall("testcase"))
    for element in (root, suite):
        element.set("tests", str(tests))
        element.set("failures", str(failures))
    suite.set("skipped", str(skipped))
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _xml_text(text: str) -> str:
    """Drop characters XML 1.0 cannot hold (control characters from decoded completions, say)."""
    return _XML_INVALID.sub("\ufffd", text)


def _is_failure(finding: Finding, strict: bool) -> bool:
    return finding.verdict is Verdict.FAIL or (strict and finding.verdict is Verdict.WARN)


def _first_line(finding: Finding) -> str:
    return _xml_text(f"{finding.check_id}: {finding.explanation}"[:500])


def _group_summary(group: CheckGroup) -> str:
    """``passed 8000 occurrence(s), steps 0-999; worst figure 3e-07 (allowed 1e-05) at step 12, ...``."""
    if group.verdict is Verdict.CONVENTION:
        return f"declared convention, {group.occurrences()}: {group.first.explanation}"
    worst = group.worst
    text = f"passed {group.occurrences()}"
    if worst.figure is not None:
        text += (
            f"; worst figure {fmt_number(worst.figure)} (allowed {fmt_number(worst.tolerance)}) at "
            f"{worst.where.describe()}"
        )
    return text
