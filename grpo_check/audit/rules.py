"""The audit rule registry: one small pure function per rule over the effective configuration values.

Every rule has a stable id (``GA`` + category digit + number), a severity (``error`` / ``warning`` /
``info``), the fields it reads, a plain-language reason, the source it rests on, and the fix. Its
``check`` takes an :class:`AuditContext` (effective values, which fields the user set, the TRL version,
facts only a live trainer knows) and returns ``None`` (silent) or one or more :class:`Hit`.

Categories:

- ``GA0xx`` batch and grouping consistency (what TRL checks late, or not at all)
- ``GA1xx`` objective: settings that silently change what is optimised
- ``GA2xx`` sampling: sampler vs trainer distribution (top-p/top-k, temperature, vLLM importance sampling)
- ``GA3xx`` ranges the GRPO literature recommends
- ``GA4xx`` TRL version awareness (changed defaults, unknown/removed fields)
- ``GA5xx`` facts of an instantiated ``GRPOTrainer`` (dropout really active, reference = policy, overrides)
- ``GA6xx`` advisories: numerical bugs that shipped in the TRL release audited against and were fixed later
  (one rule per entry of :data:`grpo_check.audit.advisories.ADVISORIES`)

The registry lives in :mod:`grpo_check.audit.registry`, the rules of each category in its own module
(``rules_batch``, ``rules_objective``, ``rules_sampling``, ``rules_ranges``, ``rules_version`` and
``rules_fields`` for ``GA4xx``, ``rules_live``, ``rules_advisories``); this module imports them in that order,
which is the order of :data:`RULES` and of ``grpo-check audit --list-rules``.

Example::

    >>> from grpo_check.audit.rules import RULES, AuditContext
    >>> ctx = AuditContext.from_values({"num_generations": 1, "per_device_train_batch_size": 8})
    >>> RULES["GA004"].run(ctx)[0].message.split(";")[0]
    'num_generations = 1 < 2'
"""

from __future__ import annotations

import difflib

from grpo_check.audit.registry import (
    CATEGORIES,
    MAPPING_FIELDS,
    RULES,
    SAMPLING_OVERRIDE_KEYS,
    SEVERITIES,
    TOKEN_SUM_LOSSES,
    AuditContext,
    CheckFn,
    Hit,
    Rule,
    Severity,
    effective_values,
    rule,
)

# The rules register on import, in this order (the order of RULES): the imports stay unsorted.
# isort: off
from grpo_check.audit import rules_batch  # noqa: F401
from grpo_check.audit import rules_objective  # noqa: F401
from grpo_check.audit import rules_sampling  # noqa: F401
from grpo_check.audit import rules_ranges  # noqa: F401
from grpo_check.audit import rules_version  # noqa: F401
from grpo_check.audit import rules_fields  # noqa: F401
from grpo_check.audit import rules_live  # noqa: F401
from grpo_check.audit import rules_advisories  # noqa: F401
# isort: on


def get_rule(rule_id: str) -> Rule:
    """The rule with that id (case-insensitive), else ``KeyError`` listing close ids."""
    key = rule_id.strip().upper()
    if key in RULES:
        return RULES[key]
    close = [r for r in RULES if r.startswith(key)][:3] or difflib.get_close_matches(key, list(RULES), n=3)
    raise KeyError(f"no audit rule {rule_id!r}" + (f"; did you mean {', '.join(close)}?" if close else ""))


__all__ = [
    "CATEGORIES",
    "MAPPING_FIELDS",
    "RULES",
    "SAMPLING_OVERRIDE_KEYS",
    "SEVERITIES",
    "TOKEN_SUM_LOSSES",
    "AuditContext",
    "CheckFn",
    "Hit",
    "Rule",
    "Severity",
    "effective_values",
    "get_rule",
    "rule",
]
