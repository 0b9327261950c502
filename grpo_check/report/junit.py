"""JUnit XML for CI: one ``<testcase>`` per check per step, ``<failure>`` carrying the finding's message.

Mapping: ``fail`` → ``<failure>``; ``warn`` → ``<failure>`` only with ``strict=True``, otherwise a passing
testcase whose ``<system-out>`` holds the message; ``not_captured`` and ``inconclusive`` → ``<skipped>``;
``pass`` and ``convention`` → passing testcases. Test-case ``classname`` is ``grpo_check.<stage>``, ``name``
is ``<check_id>[step=..,mb=..,rank=..]``.

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
from grpo_check.report._common import ordered_findings


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
    skipped = sum(1 for f in findings if f.verdict in (Verdict.NOT_CAPTURED, Verdict.INCONCLUSIVE))
    root = ET.Element(
        "testsuites", name=suite_name, tests=str(len(findings)), failures=str(failures), errors="0"
    )
    suite = ET.SubElement(
        root,
        "testsuite",
        name=suite_name,
        tests=str(len(findings)),
        failures=str(failures),
        errors="0",
        skipped=str(skipped),
    )
    source = result.metadata.get("source")
    if source:
        properties = ET.SubElement(suite, "properties")
        ET.SubElement(properties, "property", name="source", value=_xml_text(str(source)))
    for finding in findings:
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
        elif finding.verdict in (Verdict.NOT_CAPTURED, Verdict.INCONCLUSIVE):
            ET.SubElement(case, "skipped", message=_first_line(finding))
        elif finding.verdict in (Verdict.WARN, Verdict.CONVENTION):
            ET.SubElement(case, "system-out").text = message
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
