"""Which TRL versions the adapter supports, and a clear message for the others.

The adapter hooks TRL internals (``_generate_and_score_completions``, ``_calculate_rewards``,
``compute_loss``/``_compute_loss`` and the per-token log-prob helper), whose names and structure changed
between release lines. Two lines are supported:

* ``1.x`` (tested on 1.16): ``_get_per_token_logps_and_entropies``, loss in ``_compute_loss``, default
  ``loss_type="dapo"``, ``beta=0``.
* ``0.17``–``0.19``: the 0.x line many runs still pin; per-token log-probs from
  ``_get_per_token_logps`` (0.17) or ``_get_per_token_logps_and_entropies`` (0.18+), loss in
  ``compute_loss``, default ``loss_type="bnpo"``, ``beta=0.04``.

Example::

    >>> from grpo_check.trl.versions import parse_version
    >>> parse_version("0.17.0")
    (0, 17, 0)
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from grpo_check.findings import InputError

SUPPORTED_LINES = "1.x (tested 1.16) and 0.17-0.19"


def parse_version(text: str) -> tuple[int, int, int]:
    """``"1.16.0.dev0"`` -> ``(1, 16, 0)``; missing parts are 0."""
    parts = [int(p) for p in re.findall(r"\d+", text.split("+")[0])[:3]]
    while len(parts) < 3:
        parts.append(0)
    return parts[0], parts[1], parts[2]


@dataclasses.dataclass(frozen=True)
class TRLSupport:
    """What the adapter knows about the installed TRL: its version, its line, and the hook names."""

    version: str
    line: str  # "1.x" or "0.x"
    logps_method: str  # name of the per-token log-prob helper the loss calls
    loss_method: str  # method whose inputs are the micro-batch as used in the loss
    rewards_method: str = ""  # method returning rewards per function (1.x); "" = wrap the reward functions


def installed_trl_version() -> str:
    try:
        import trl
    except ImportError as exc:  # pragma: no cover - trl is a dependency
        raise InputError("TRL is not installed: pip install 'trl>=0.17'") from exc
    return str(trl.__version__)


def check_trainer_support(trainer: Any, version: str | None = None) -> TRLSupport:
    """Return how to hook ``trainer``, or raise :class:`InputError` naming what is missing.

    The check is structural (the methods the hooks need must exist) plus a version line check, so a
    subclassed trainer works as long as it keeps TRL's method names.
    """
    version = version or installed_trl_version()
    major, minor, _ = parse_version(version)
    if major == 0 and minor < 17:
        raise InputError(
            f"TRL {version} is older than the oldest supported line ({SUPPORTED_LINES}); "
            "upgrade with pip install 'trl>=0.17'"
        )
    if major >= 2:
        raise InputError(
            f"TRL {version} is newer than the supported lines ({SUPPORTED_LINES}); its GRPOTrainer internals "
            "may have changed. Use grpo_check.Recorder to record your batches, or pin trl<2"
        )
    line = "1.x" if major >= 1 else "0.x"
    if hasattr(trainer, "_get_per_token_logps_and_entropies"):
        logps_method = "_get_per_token_logps_and_entropies"
    elif hasattr(trainer, "_get_per_token_logps"):
        logps_method = "_get_per_token_logps"
    else:
        logps_method = ""
    loss_method = "_compute_loss" if hasattr(trainer, "_compute_loss") else "compute_loss"
    rewards_method = "_calculate_rewards" if callable(getattr(trainer, "_calculate_rewards", None)) else ""
    needed = ["_generate_and_score_completions", "compute_loss", "training_step"]
    if line == "1.x":
        needed.append("_calculate_rewards")
    missing = [name for name in needed if not callable(getattr(trainer, name, None))]
    if not logps_method:
        missing.append("_get_per_token_logps_and_entropies (or _get_per_token_logps)")
    if missing:
        raise InputError(
            f"{type(trainer).__name__} (TRL {version}) lacks the methods grpo-check hooks: {', '.join(missing)}. "
            f"Supported TRL lines: {SUPPORTED_LINES}. For another trainer, record batches with grpo_check.Recorder"
        )
    return TRLSupport(
        version=version,
        line=line,
        logps_method=logps_method,
        loss_method=loss_method,
        rewards_method=rewards_method,
    )


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape the numbers (for the trace manifest and the report)."""
    import importlib.metadata as md

    out: dict[str, str] = {}
    for name in ("grpo-check", "trl", "transformers", "torch", "accelerate", "datasets", "tokenizers"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    return out
