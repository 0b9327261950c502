"""Merge several results (e.g. one per rank of a distributed run) into one.

Each finding is copied and tagged: ``where.rank`` is filled from the result's ``metadata["rank"]`` when the
finding does not name one, and ``details["source"]`` names the result it came from. The merged metadata
keeps each input's metadata under ``"sources"``; keys every input agrees on (e.g. ``tolerances``) are kept at
the top level.

Example::

    >>> from grpo_check.findings import Finding, Result
    >>> r0 = Result([Finding("loss.finite", "loss", "pass")], metadata={"rank": 0, "source": "rank0.json"})
    >>> r1 = Result([Finding("loss.finite", "loss", "fail")], metadata={"rank": 1, "source": "rank1.json"})
    >>> merged = merge_results([r0, r1])
    >>> [(f.where.rank, f.details["source"]) for f in merged]
    [(0, 'rank0.json'), (1, 'rank1.json')]
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Sequence
from typing import Any

from grpo_check.findings import Result


def merge_results(results: Sequence[Result], sources: Sequence[str] | None = None) -> Result:
    """One :class:`Result` holding every finding of ``results``, each tagged with its source and rank."""
    if sources is not None and len(sources) != len(results):
        raise ValueError(f"{len(sources)} source names for {len(results)} results")
    merged = Result()
    metadatas: list[dict[str, Any]] = []
    for index, result in enumerate(results):
        name = (
            (sources[index] if sources is not None else None)
            or result.metadata.get("source")
            or f"result{index}"
        )
        rank = result.metadata.get("rank")
        for finding in result.findings:
            tagged = copy.deepcopy(finding)
            if tagged.where.rank is None and isinstance(rank, int):
                tagged.where = dataclasses.replace(tagged.where, rank=rank)
            tagged.details = {**tagged.details, "source": str(name)}
            merged.add(tagged)
        metadatas.append({**result.metadata, "source": str(name)})
    merged.metadata = _common_metadata(metadatas)
    merged.metadata["sources"] = metadatas
    merged.metadata["source"] = ", ".join(m["source"] for m in metadatas)
    from grpo_check.coverage import merge_coverage

    coverage = merge_coverage(m.get("coverage") for m in metadatas)
    if coverage is not None:
        merged.metadata["coverage"] = coverage
    incomplete = [f"{m['source']}: {m['incomplete']}" for m in metadatas if m.get("incomplete")]
    if incomplete:
        merged.metadata["incomplete"] = "; ".join(incomplete)
    return merged


def _common_metadata(metadatas: list[dict[str, Any]]) -> dict[str, Any]:
    if not metadatas:
        return {}
    common: dict[str, Any] = {}
    for key, value in metadatas[0].items():
        if key in ("source", "rank", "sources"):
            continue
        canonical = json.dumps(value, sort_keys=True, default=str)
        if all(
            key in other and json.dumps(other[key], sort_keys=True, default=str) == canonical
            for other in metadatas[1:]
        ):
            common[key] = value
    return common
