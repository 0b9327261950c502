"""SARIF 2.1.0 output for audit results, so findings show up in code-scanning UIs (GitHub, VS Code).

One run; ``runs[0].tool.driver.rules`` lists every rule that was run (id, name, descriptions, default
level, help); each finding becomes a result with ``ruleId``/``ruleIndex``, ``level`` (error / warning /
note), ``message.text`` and, for files, a physical location: the config file's URI and the line of the
field where it is known.

Example::

    >>> from grpo_check.audit import audit
    >>> from grpo_check.audit.sarif import to_sarif
    >>> log = to_sarif(audit({"num_generations": 1}, trl_version="1.16"))
    >>> log["version"], log["runs"][0]["results"][0]["ruleId"]
    ('2.1.0', 'GA004')
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from grpo_check.audit.rules import RULES
from grpo_check.findings import Result

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
SARIF_VERSION = "2.1.0"
_LEVEL = {"error": "error", "warning": "warning", "info": "note"}


def _rule_name(title: str) -> str:
    """SARIF ``name``: a PascalCase identifier from the rule title."""
    words = "".join(ch if ch.isalnum() else " " for ch in title).split()
    return "".join(word[:1].upper() + word[1:] for word in words)


def artifact_uri(path: str) -> str:
    """A relative path stays relative (forward slashes, for ``%SRCROOT%``); an absolute one becomes ``file://``."""
    if os.path.isabs(path):
        return Path(path).resolve().as_uri()
    return Path(path).as_posix()


def _artifact_location(path: str, *, index: int | None = None) -> dict[str, Any]:
    location: dict[str, Any] = {"uri": artifact_uri(path)}
    if not os.path.isabs(path):
        location["uriBaseId"] = "%SRCROOT%"  # relative to the checkout root, as code-scanning UIs expect
    if index is not None:
        location["index"] = index
    return location


def to_sarif(result: Result, *, tool_version: str | None = None) -> dict[str, Any]:
    """The SARIF 2.1.0 log (a JSON-able dict) for an audit :class:`Result`."""
    if tool_version is None:
        from grpo_check import __version__ as tool_version
    rule_ids = list(result.metadata.get("rules_run") or RULES)
    for finding in result:
        if finding.check_id not in rule_ids and finding.check_id in RULES:
            rule_ids.append(finding.check_id)
    index = {rule_id: i for i, rule_id in enumerate(rule_ids)}
    driver_rules = []
    for rule_id in rule_ids:
        current = RULES[rule_id]
        driver_rules.append(
            {
                "id": current.id,
                "name": _rule_name(current.title),
                "shortDescription": {"text": current.title},
                "fullDescription": {"text": current.reason},
                "help": {
                    "text": f"{current.fix}\n\nSource: {current.source}",
                    "markdown": f"**Fix:** {current.fix}\n\n**Source:** {current.source}",
                },
                "defaultConfiguration": {"level": _LEVEL[current.severity]},
                "properties": {
                    "category": current.category,
                    "fields": list(current.fields),
                    "tags": ["grpo", "trl", current.category],
                },
            }
        )
    source = result.metadata.get("source")
    is_file = result.metadata.get("source_kind") == "file" and isinstance(source, str)
    results = []
    for finding in result:
        severity = finding.details.get("severity", "warning")
        entry: dict[str, Any] = {
            "ruleId": finding.check_id,
            "level": _LEVEL.get(severity, "warning"),
            "message": {
                "text": f"{finding.explanation}. Fix: {finding.fix}" if finding.fix else finding.explanation
            },
            "properties": {
                "fields": finding.details.get("fields", []),
                "values": finding.details.get("values", {}),
                "trlVersion": finding.details.get("trl_version"),
            },
        }
        if finding.check_id in index:
            entry["ruleIndex"] = index[finding.check_id]
        fields = finding.details.get("fields") or []
        logical = [{"name": field, "kind": "member"} for field in fields[:1]]
        key_path = finding.details.get("key_path")
        if logical and key_path:
            logical[0]["fullyQualifiedName"] = f"{key_path}.{logical[0]['name']}"
        location: dict[str, Any] = {}
        if is_file:
            physical: dict[str, Any] = {"artifactLocation": _artifact_location(source, index=0)}
            line = finding.details.get("line")
            if isinstance(line, int) and line >= 1:
                physical["region"] = {"startLine": line}
            location["physicalLocation"] = physical
        if logical:
            location["logicalLocations"] = logical
        if location:
            entry["locations"] = [location]
        results.append(entry)
    run: dict[str, Any] = {
        "tool": {
            "driver": {
                "name": "grpo-check",
                "version": tool_version,
                "rules": driver_rules,
            }
        },
        "results": results,
        "properties": {
            "trlVersion": result.metadata.get("trl_version"),
            "keyPath": result.metadata.get("key_path"),
        },
    }
    if is_file:
        run["artifacts"] = [{"location": _artifact_location(source)}]
    return {"$schema": SARIF_SCHEMA, "version": SARIF_VERSION, "runs": [run]}


def to_sarif_json(result: Result, *, indent: int | None = 2) -> str:
    """:func:`to_sarif` as a JSON string."""
    from grpo_check.findings import json_safe

    # JSON has no NaN/Infinity literal (GitHub code scanning rejects the file): a config value such as
    # ``learning_rate: .nan`` is written as the string "nan".
    return json.dumps(json_safe(to_sarif(result)), indent=indent, ensure_ascii=False, allow_nan=False)
