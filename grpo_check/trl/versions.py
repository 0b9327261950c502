"""Which TRL releases the adapter supports, and how each internal-API era of ``GRPOTrainer`` is hooked.

The adapter hooks TRL internals whose names, signatures and timing changed between releases. Every release
from 0.14.0 to :data:`NEWEST_TESTED` belongs to one *era* (:data:`ERAS`): the releases that share those
internals. An era says where a generation batch is built and scored, which method holds the loss and which
helper gives the per-token log-probs, when the old and reference log-probs are computed, and the algorithm
settings a release implies but does not name (0.14–0.16 have no ``loss_type``; 0.14–0.15 no
``scale_rewards``). :func:`era_for` looks one up; ``docs/trl-versions.md`` has the same table with the
releases the version matrix ran.

A release newer than :data:`NEWEST_TESTED` is attached with a warning naming the newest tested release (its
internals are checked structurally); a release older than 0.14 (no ``GRPOTrainer``) is refused.

Example::

    >>> from grpo_check.trl.versions import era_for, parse_version
    >>> parse_version("0.17.0")
    (0, 17, 0)
    >>> era_for("0.15.2").generation_method
    '_prepare_inputs'
    >>> era_for("0.16.1").implied["loss_type"]
    'bnpo'
    >>> era_for("1.16.0").loss_method
    '_compute_loss'
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from typing import Any

from grpo_check.findings import InputError

OLDEST_SUPPORTED = "0.14.0"
"""The first release with ``GRPOTrainer``."""

NEWEST_TESTED = "1.16.0"
"""The newest release the version matrix (``scripts/trl_matrix.py``) ran; newer ones attach with a warning."""

SUPPORTED_LINES = f"{OLDEST_SUPPORTED} to {NEWEST_TESTED} (every release line tested)"


def parse_version(text: str) -> tuple[int, int, int]:
    """``"1.16.0.dev0"`` -> ``(1, 16, 0)``; missing parts are 0."""
    parts = [int(p) for p in re.findall(r"\d+", text.split("+")[0])[:3]]
    while len(parts) < 3:
        parts.append(0)
    return parts[0], parts[1], parts[2]


@dataclasses.dataclass(frozen=True)
class Era:
    """The internals one range of TRL releases shares (first release inclusive, up to the next era).

    ``generation_method``: the trainer method that builds and scores a generation batch (``compute_loss`` in
    0.14, where one call generates, scores and computes the loss). ``loss_method``: the method whose inputs are
    the micro-batch as the loss used it. ``logps_method``: the per-token log-prob helper the loss calls (``""``
    where it is a local function: 0.14). ``rewards_method``: the method returning rewards per function
    (``""``: the reward functions are wrapped instead). ``implied``: settings the release applies without a
    config field for them (the spec reads every other setting from the trainer).
    """

    first: str
    generation_method: str
    loss_method: str
    logps_method: str
    rewards_method: str
    old_logps: str  # when old log-probs exist (else the loss uses logps.detach(): ratio 1)
    ref_logps: str  # when reference-model log-probs are computed
    scale_rewards: str  # the type of GRPOConfig.scale_rewards
    loss_type_default: str
    beta_default: float
    notes: str = ""
    implied: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def name(self) -> str:
        """``"0.14"`` style: the first release's line."""
        major, minor, _ = parse_version(self.first)
        return f"{major}.{minor}"

    @property
    def needs_frame_capture(self) -> bool:
        """The loss's tensors are locals of one method (0.14): captured from its frame as it returns."""
        return self.generation_method == self.loss_method


ERAS: tuple[Era, ...] = (
    Era(
        first="0.14.0",
        generation_method="compute_loss",
        loss_method="compute_loss",
        logps_method="",
        rewards_method="",
        old_logps="never (ratio 1: one pass over each batch)",
        ref_logps="in the loss, per micro-batch",
        scale_rewards="none (always divided by the group std)",
        loss_type_default="grpo (implied)",
        beta_default=0.04,
        notes="compute_loss generates, scores and computes the loss in one call; log-probs from a local "
        "function; rewards are not gathered across processes (each process holds whole groups); no "
        "reward_weights",
        implied={"loss_type": "grpo", "scale_rewards": "group", "num_iterations": 1},
    ),
    Era(
        first="0.15.0",
        generation_method="_prepare_inputs",
        loss_method="compute_loss",
        logps_method="_get_per_token_logps",
        rewards_method="",
        old_logps="never (ratio 1)",
        ref_logps="at generation, per micro-batch",
        scale_rewards="none (always divided by the group std)",
        loss_type_default="grpo (implied)",
        beta_default=0.04,
        notes="_prepare_inputs generates and scores every micro-batch; rewards gathered, reward_weights",
        implied={"loss_type": "grpo", "scale_rewards": "group", "num_iterations": 1},
    ),
    Era(
        first="0.16.0",
        generation_method="_generate_and_score_completions",
        loss_method="compute_loss",
        logps_method="_get_per_token_logps",
        rewards_method="",
        old_logps="at generation when num_iterations > 1",
        ref_logps="at generation",
        scale_rewards="bool",
        loss_type_default="bnpo (implied)",
        beta_default=0.04,
        notes="generations buffered and reused num_iterations times; clipped ratio (epsilon, epsilon_high); "
        "token-level normaliser over the micro-batch",
        implied={"loss_type": "bnpo"},
    ),
    Era(
        first="0.17.0",
        generation_method="_generate_and_score_completions",
        loss_method="_compute_loss",
        logps_method="_get_per_token_logps",
        rewards_method="",
        old_logps="at generation when num_iterations > 1",
        ref_logps="at generation",
        scale_rewards="bool",
        loss_type_default="bnpo",
        beta_default=0.04,
        notes="loss_type (grpo, bnpo, dr_grpo); loss moved to _compute_loss; mask_truncated_completions",
    ),
    Era(
        first="0.18.0",
        generation_method="_generate_and_score_completions",
        loss_method="_compute_loss",
        logps_method="_get_per_token_logps",
        rewards_method="",
        old_logps="at generation when num_iterations > 1 or steps_per_generation > gradient_accumulation_steps",
        ref_logps="in the loss, per micro-batch (the same helper, called on the reference model)",
        scale_rewards="bool",
        loss_type_default="bnpo",
        beta_default=0.04,
        notes="generation_batch_size / steps_per_generation: one generation batch split over several "
        "micro-batches",
    ),
    Era(
        first="0.19.0",
        generation_method="_generate_and_score_completions",
        loss_method="_compute_loss",
        logps_method="_get_per_token_logps",
        rewards_method="_calculate_rewards",
        old_logps="at generation when num_iterations > 1 or steps_per_generation > gradient_accumulation_steps",
        ref_logps="at generation",
        scale_rewards="bool",
        loss_type_default="bnpo",
        beta_default=0.0,
        notes="_calculate_rewards (gathered rewards per function); beta default 0",
    ),
    Era(
        first="0.20.0",
        generation_method="_generate_and_score_completions",
        loss_method="_compute_loss",
        logps_method="_get_per_token_logps_and_entropies",
        rewards_method="_calculate_rewards",
        old_logps="at generation when gradient_accumulation_steps is not a multiple of "
        "steps_per_generation x num_iterations",
        ref_logps="at generation",
        scale_rewards="bool",
        loss_type_default="bnpo",
        beta_default=0.0,
        notes="_get_per_token_logps_and_entropies; importance_sampling_level (GSPO)",
    ),
    Era(
        first="0.22.0",
        generation_method="_generate_and_score_completions",
        loss_method="_compute_loss",
        logps_method="_get_per_token_logps_and_entropies",
        rewards_method="_calculate_rewards",
        old_logps="at generation when gradient_accumulation_steps is not a multiple of "
        "steps_per_generation x num_iterations",
        ref_logps="at generation",
        scale_rewards="str (group, batch, none)",
        loss_type_default="dapo",
        beta_default=0.0,
        notes="loss_type default dapo (global num_items_in_batch normaliser); scale_rewards as a string",
    ),
    Era(
        first="0.23.0",
        generation_method="_generate_and_score_completions",
        loss_method="_compute_loss",
        logps_method="_get_per_token_logps_and_entropies",
        rewards_method="_calculate_rewards",
        old_logps="at generation when gradient_accumulation_steps is not a multiple of "
        "steps_per_generation x num_iterations, or with sampler importance-sampling correction",
        ref_logps="at generation",
        scale_rewards="str (group, batch, none)",
        loss_type_default="dapo",
        beta_default=0.0,
        notes="sampler (vLLM) log-probs and importance-sampling correction",
    ),
    Era(
        first="0.26.0",
        generation_method="_generate_and_score_completions",
        loss_method="_compute_loss",
        logps_method="_get_per_token_logps_and_entropies",
        rewards_method="_calculate_rewards",
        old_logps="at generation when gradient_accumulation_steps is not a multiple of "
        "steps_per_generation x num_iterations, or with sampler importance-sampling correction",
        ref_logps="at generation",
        scale_rewards="str (group, batch, none)",
        loss_type_default="dapo",
        beta_default=0.0,
        notes="GRPOTrainer overrides training_step; tools (_tool_call_loop, tool_mask); use_bias_correction_kl",
    ),
    Era(
        first="1.0.0",
        generation_method="_generate_and_score_completions",
        loss_method="_compute_loss",
        logps_method="_get_per_token_logps_and_entropies",
        rewards_method="_calculate_rewards",
        old_logps="at generation when gradient_accumulation_steps is not a multiple of "
        "steps_per_generation x num_iterations, or with sampler importance-sampling correction",
        ref_logps="at generation",
        scale_rewards="str (group, batch, none)",
        loss_type_default="dapo",
        beta_default=0.0,
        notes="1.x line: more loss types (cispo, sapo, luspo, vespo); multi_objective_aggregation; TRL 1.15.0 "
        "computes log-probs with a Triton kernel and cannot train on a CPU-only torch",
    ),
)


def era_for(version: str) -> Era:
    """The era ``version`` belongs to; :class:`InputError` for a release older than 0.14."""
    parsed = parse_version(version)
    if parsed < parse_version(OLDEST_SUPPORTED):
        raise InputError(
            f"TRL {version} is older than {OLDEST_SUPPORTED}, the first release with GRPOTrainer; "
            f"grpo-check supports TRL {SUPPORTED_LINES}: pip install 'trl>={OLDEST_SUPPORTED}'"
        )
    chosen = ERAS[0]
    for era in ERAS:
        if parse_version(era.first) <= parsed:
            chosen = era
    return chosen


def newer_than_tested(version: str) -> str | None:
    """The warning for a release newer than :data:`NEWEST_TESTED` (``None`` for a tested one)."""
    if parse_version(version) <= parse_version(NEWEST_TESTED):
        return None
    return (
        f"TRL {version} is newer than {NEWEST_TESTED}, the newest release grpo-check was tested on; its "
        f"GRPOTrainer is hooked as {NEWEST_TESTED}'s (the methods it needs are there). If a check fails "
        "where training is correct, record your batches with grpo_check.Recorder instead"
    )


@dataclasses.dataclass(frozen=True)
class TRLSupport:
    """What the adapter knows about the installed TRL: its version, its era and the hook names."""

    version: str
    line: str  # "1.x" or "0.x"
    logps_method: str  # name of the per-token log-prob helper the loss calls ("" on 0.14: frame capture)
    loss_method: str  # method whose inputs are the micro-batch as used in the loss
    rewards_method: str = ""  # method returning rewards per function; "" = wrap the reward functions
    generation_method: str = "_generate_and_score_completions"
    era: str = ""  # the era's first release line, e.g. "0.16"
    warning: str | None = None  # e.g. newer than the newest tested release


def installed_trl_version() -> str:
    try:
        import trl
    except ImportError as exc:  # pragma: no cover - trl is a dependency
        raise InputError(f"TRL is not installed: pip install 'trl>={OLDEST_SUPPORTED}'") from exc
    return str(trl.__version__)


def _pick(trainer: Any, preferred: str, fallbacks: tuple[str, ...]) -> str:
    """``preferred`` when the trainer has it, else the first fallback it has (a subclass may rename), else ''."""
    for name in (preferred, *fallbacks):
        if name and callable(getattr(trainer, name, None)):
            return name
    return ""


def check_trainer_support(trainer: Any, version: str | None = None) -> TRLSupport:
    """Return how to hook ``trainer``, or raise :class:`InputError` naming what is missing.

    The era comes from the version; the check is structural too (the methods the hooks need must exist),
    so a subclassed trainer works as long as it keeps TRL's method names. A release newer than
    :data:`NEWEST_TESTED` is attached with a :class:`UserWarning` (also in ``TRLSupport.warning``).
    """
    version = version or installed_trl_version()
    era = era_for(version)
    major = parse_version(version)[0]
    logps_method = era.logps_method
    if logps_method:
        logps_method = _pick(
            trainer, logps_method, ("_get_per_token_logps_and_entropies", "_get_per_token_logps")
        )
    loss_method = _pick(trainer, era.loss_method, ("compute_loss",))
    rewards_method = _pick(trainer, era.rewards_method, ()) if era.rewards_method else ""
    needed = [era.generation_method, "compute_loss", "training_step"]
    if era.rewards_method:
        needed.append(era.rewards_method)
    missing = [name for name in needed if not callable(getattr(trainer, name, None))]
    if era.logps_method and not logps_method:
        missing.append(f"{era.logps_method} (or _get_per_token_logps)")
    if missing:
        raise InputError(
            f"{type(trainer).__name__} (TRL {version}) lacks the methods grpo-check hooks: {', '.join(missing)}. "
            f"Supported TRL releases: {SUPPORTED_LINES}. For another trainer, record batches with "
            "grpo_check.Recorder"
        )
    warning = newer_than_tested(version)
    if warning is not None:
        warnings.warn(warning, UserWarning, stacklevel=3)
    return TRLSupport(
        version=version,
        line="1.x" if major >= 1 else "0.x",
        logps_method=logps_method,
        loss_method=loss_method,
        rewards_method=rewards_method,
        generation_method=era.generation_method,
        era=era.name,
        warning=warning,
    )


def implied_settings(version: str) -> dict[str, Any]:
    """Algorithm settings ``version`` applies without a config field for them (``{}`` from 0.17 on)."""
    return dict(era_for(version).implied)


def era_table() -> list[dict[str, str]]:
    """The eras as rows (first release, hooks, timing, defaults, notes) for docs and reports."""
    lines = [(0, minor) for minor in range(14, 30)] + [(1, minor) for minor in range(0, 17)]
    rows = []
    for index, era in enumerate(ERAS):
        if index + 1 == len(ERAS):
            span = f"{era.first} and later"
        else:
            before = parse_version(ERAS[index + 1].first)[:2]
            major, minor = max(line for line in lines if line < before)
            span = f"{era.first} – {major}.{minor}.x"
        rows.append(
            {
                "releases": span,
                "generation": era.generation_method,
                "loss": era.loss_method,
                "log-probs": era.logps_method or "(local function: frame capture)",
                "rewards": era.rewards_method or "reward functions wrapped",
                "old log-probs": era.old_logps,
                "reference log-probs": era.ref_logps,
                "scale_rewards": era.scale_rewards,
                "loss_type default": era.loss_type_default,
                "beta default": f"{era.beta_default:g}",
                "notes": era.notes,
            }
        )
    return rows


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
