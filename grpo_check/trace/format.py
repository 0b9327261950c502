"""The trace format's names: format and file names, the tensor-shape families, the manifest a trace
starts with, the file stem of a step, and the JSON conversion of metadata (``reference/trace-format.md``)."""

from __future__ import annotations

import datetime as _dt
import math
import os
import sys
from collections.abc import Mapping
from typing import Any

from grpo_check.trace.model import TENSOR_STAGE

FORMAT_NAME = "grpo-check-trace"


STEP_FORMAT_NAME = "grpo-check-trace-step"


FORMAT_VERSION = 1


MANIFEST_FILE = "manifest.json"


STEPS_DIR = "steps"


# --- tensor-name rules (shape letters: B rows, T completion tokens, P prompt tokens, F reward functions) ---
ID_TENSORS: frozenset[str] = frozenset({"prompt_ids", "completion_ids", "group_index"})


MASK_TENSORS: frozenset[str] = frozenset(
    {"prompt_mask", "completion_mask", "tool_mask", "truncated", "is_low_clipped", "is_high_clipped"}
)


FLOAT_TENSORS: frozenset[str] = frozenset(TENSOR_STAGE) - ID_TENSORS - MASK_TENSORS


BT_TENSORS: frozenset[str] = frozenset(
    {
        "completion_ids",
        "completion_mask",
        "tool_mask",
        "logps",
        "old_logps",
        "ref_logps",
        "sampler_logps",
        "entropies",
        "kl",
        "per_token_loss",
        "logps_grad",
        "is_low_clipped",
        "is_high_clipped",
    }
)


BT_OR_B1_TENSORS: frozenset[str] = frozenset({"ratio", "clipped_ratio", "sampler_is_ratio"})


BP_TENSORS: frozenset[str] = frozenset({"prompt_ids", "prompt_mask"})


B_TENSORS: frozenset[str] = frozenset({"group_index", "truncated", "rewards"})


SCALAR_TENSORS: frozenset[str] = frozenset({"loss", "loss_normalizer"})


# ------------------------------------------------------------------------------------------ JSON helpers
def to_jsonable(value: Any) -> Any:
    """Best-effort conversion of metadata to JSON: tensors/arrays to lists, non-finite floats to strings.

    >>> import torch
    >>> to_jsonable({"n": torch.tensor(3), "x": float("nan"), "ids": (1, 2)})
    {'n': 3, 'x': 'nan', 'ids': [1, 2]}
    """
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "tolist"):  # torch.Tensor, numpy arrays and scalars
        return to_jsonable(value.tolist())
    if hasattr(value, "to_dict"):  # GRPOSpec, dataclass-likes
        return to_jsonable(value.to_dict())
    if hasattr(value, "__dataclass_fields__"):
        import dataclasses

        return to_jsonable(dataclasses.asdict(value))
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)


def library_versions() -> dict[str, str | None]:
    """Versions of python, torch, transformers, trl and grpo-check (``None`` where not installed).

    Reads package metadata only, so it does not import transformers or trl.
    """
    from importlib import metadata

    def version_of(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    torch_module = sys.modules.get("torch")
    return {
        "python": sys.version.split()[0],
        "torch": getattr(torch_module, "__version__", None) or version_of("torch"),
        "transformers": version_of("transformers"),
        "trl": version_of("trl"),
        "grpo-check": version_of("grpo-check") or _own_version(),
    }


def _own_version() -> str | None:
    try:
        from grpo_check import __version__

        return __version__
    except ImportError:  # pragma: no cover
        return None


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def build_manifest(
    *,
    trainer: str = "custom",
    spec: Any = None,
    trainer_config: Mapping[str, Any] | None = None,
    seeds: Any = None,
    dtypes: Mapping[str, str] | None = None,
    notes: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A fresh manifest dict (format name and version, versions, created time filled in)."""
    if spec is None:
        config: dict[str, Any] = {}
    elif isinstance(spec, Mapping):
        config = dict(spec)
    else:
        config = spec.to_dict()
    manifest: dict[str, Any] = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "trainer": trainer,
        "config": to_jsonable(config),
        "trainer_config": to_jsonable(dict(trainer_config)) if trainer_config is not None else None,
        "versions": library_versions(),
        "dtypes": dict(dtypes or {}),
        "seeds": to_jsonable(seeds),
        "created": utc_now(),
        "notes": notes,
    }
    if extra:
        manifest.update(to_jsonable(dict(extra)))
    return manifest


# ------------------------------------------------------------------------------------------------ writing
def step_entry_name(meta: Mapping[str, Any], index: int) -> str:
    """File stem of one step: ``<step:06d>-mb<micro_batch:02d>-r<rank>`` (``index`` when step is unknown).

    >>> step_entry_name({"step": 3, "micro_batch": 1, "rank": 0}, index=7)
    '000003-mb01-r0'
    """
    step = meta.get("step")
    step_number = int(step) if isinstance(step, int) else index
    micro_batch = meta.get("micro_batch")
    micro_batch = int(micro_batch) if isinstance(micro_batch, int) else 0
    rank = meta.get("rank")
    rank = int(rank) if isinstance(rank, int) else 0
    return f"{step_number:06d}-mb{micro_batch:02d}-r{rank}"


def _dtype_name(dtype: Any) -> str:
    return str(dtype).removeprefix("torch.")
