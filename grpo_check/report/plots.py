"""Plots for the HTML report (matplotlib, Agg backend, PNG bytes). Every plot degrades to ``None``.

Which ``Finding.details`` keys the plots read (the contract checks and comparisons fill in):

=========================  ====================================================================================
key                        meaning / shape
=========================  ====================================================================================
``token_error_map``        (B, T) nested list of floats: per-token |trainer − reference| (0 or ``null`` on
                           masked tokens; ``inf``/``"inf"`` for NaN/Inf disagreements). Drawn as a heatmap,
                           rows = completions, columns = completion tokens, the worst cell (``where.row``,
                           ``where.token``) circled.
``token_error_map_label``  optional colour-bar label (default ``"|trainer − reference|"``).
``histogram``              ``{"edges": [n+1 floats], "counts": [n numbers], "label": str}`` or a list of such
                           dicts (overlaid): a pre-binned distribution (e.g. of the ratio or advantages).
``values``                 list of floats: raw values (e.g. ratios, advantages, d = logps − sampler_logps);
                           histogrammed here (at most the first 100 000 are used).
``reference_values``       list of floats: the reference side of ``values``, overlaid when present.
``values_label``           optional x-axis label for ``values`` (default: the finding's stage).
=========================  ====================================================================================

Run-level plot: :func:`stage_error_plot` draws, per stage, the worst ``figure / tolerance`` among findings that
carry both numbers (1 = at the tolerance; see ``grpo_check.report._common.figure_ratio`` for which figures
count), coloured by the worst verdict among them.

Missing or malformed details give ``None`` (no plot), never an exception.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

from grpo_check.findings import STAGES, Finding, Result, Verdict, severity

VERDICT_COLOURS = {
    "pass": "#2e7d32",
    "convention": "#1565c0",
    "not_captured": "#757575",
    "inconclusive": "#6a1b9a",
    "warn": "#ef6c00",
    "fail": "#c62828",
}
MAX_VALUES = 100_000


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _to_png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    _pyplot().close(fig)
    return buffer.getvalue()


PLOT_LIMIT = (
    1e100  # larger magnitudes are drawn as off-scale (like inf): matplotlib overflows on ±1e308 ranges
)


def _as_float(value: Any) -> float:
    if value is None:
        return math.nan
    try:
        number = float(value)  # also parses "inf", "nan", "-inf"
    except (TypeError, ValueError, OverflowError):
        return math.nan
    return math.copysign(math.inf, number) if abs(number) > PLOT_LIMIT else number


def _text(value: Any) -> str:
    """Text for a plot label; characters a font cannot take (lone surrogates) as their escapes."""
    return str(value).encode("utf-8", "backslashreplace").decode("utf-8")


def stage_error_plot(result: Result) -> bytes | None:
    """Per stage: the worst ``figure / tolerance`` (log scale, dashed line at 1), or ``None``."""
    from grpo_check.report._common import figure_ratio

    worst: dict[str, tuple[float, Verdict]] = {}
    for finding in result.findings:
        ratio = figure_ratio(finding)
        if ratio is None:
            continue
        previous = worst.get(finding.stage)
        verdict = finding.verdict
        if previous is not None:
            ratio = max(ratio, previous[0])
            verdict = max(previous[1], verdict, key=severity)
        worst[finding.stage] = (ratio, verdict)
    if not worst:
        return None
    order = [s for s in ("config", *STAGES, "run") if s in worst] + sorted(
        s for s in worst if s not in ("config", *STAGES, "run")
    )
    worst = {stage: (_as_float(ratio), verdict) for stage, (ratio, verdict) in worst.items()}
    finite = [r for r, _ in worst.values() if math.isfinite(r) and r > 0]
    ceiling = max(finite) * 10 if finite else 10.0
    floor = min(finite) / 10 if finite else 1e-3
    heights = []
    for stage in order:
        ratio = worst[stage][0]
        heights.append(ceiling if not math.isfinite(ratio) else max(ratio, floor))
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(order) + 1.5), 3.0))
    colours = [VERDICT_COLOURS[worst[s][1].value] for s in order]
    ax.bar([_text(s) for s in order], heights, color=colours)
    ax.axhline(1.0, color="black", linestyle="--", linewidth=1)
    ax.set_yscale("log")
    ax.set_ylabel("worst figure / tolerance")
    ax.set_title("Error relative to tolerance, per stage (dashed: at tolerance)")
    for label in ax.get_xticklabels():
        label.set_rotation(30)
    return _to_png(fig)


def token_error_heatmap(finding: Finding, *, max_rows: int = 64, max_tokens: int = 128) -> bytes | None:
    """Heatmap of ``details["token_error_map"]`` (rows × tokens), or ``None`` when absent/malformed."""
    grid = finding.details.get("token_error_map")
    if not _is_list(grid) or not grid or not all(_is_list(r) for r in grid):
        return None
    rows = [[_as_float(v) for v in row[:max_tokens]] for row in list(grid)[:max_rows]]
    width = max((len(r) for r in rows), default=0)
    if width == 0:
        return None
    rows = [r + [math.nan] * (width - len(r)) for r in rows]
    import numpy as np

    data = np.array(rows, dtype=float)
    nonfinite = np.isinf(data)
    finite_max = np.nanmax(np.where(nonfinite, np.nan, data)) if np.isfinite(data).any() else 1.0
    if not np.isfinite(finite_max) or finite_max <= 0:
        finite_max = 1.0
    shown = np.where(nonfinite, finite_max, data)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(min(12.0, 2.0 + 0.12 * width), min(8.0, 1.5 + 0.18 * len(rows))))
    image = ax.imshow(shown, aspect="auto", cmap="viridis", interpolation="nearest", vmin=0, vmax=finite_max)
    if nonfinite.any():
        ys, xs = np.nonzero(nonfinite)
        ax.scatter(xs, ys, marker="x", color="red", s=12, label="NaN/Inf")
        ax.legend(loc="upper right", fontsize=7)
    row, token = finding.where.row, finding.where.token
    if row is not None and token is not None and row < len(rows) and token < width:
        ax.scatter([token], [row], s=120, facecolors="none", edgecolors="red", linewidths=1.5)
    ax.set_xlabel("completion token")
    ax.set_ylabel("row (completion)")
    ax.set_title(_text(f"{finding.check_id}: per-token error"))
    fig.colorbar(
        image, ax=ax, label=_text(finding.details.get("token_error_map_label", "|trainer − reference|"))
    )
    return _to_png(fig)


def _is_list(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes))


def _histograms(details: dict[str, Any]) -> list[tuple[list[float], list[float], str]]:
    spec = details.get("histogram")
    items = spec if isinstance(spec, list) else [spec] if isinstance(spec, dict) else []
    out = []
    for item in items:
        if not isinstance(item, dict):
            continue
        edges, counts = item.get("edges"), item.get("counts")
        if (
            not isinstance(edges, Sequence)
            or not isinstance(counts, Sequence)
            or len(edges) != len(counts) + 1
        ):
            continue
        edges_f, counts_f = [_as_float(e) for e in edges], [_as_float(c) for c in counts]
        if not counts_f or any(math.isnan(v) or math.isinf(v) for v in edges_f + counts_f):
            continue
        out.append((edges_f, counts_f, _text(item.get("label", ""))))
    return out


def _finite_values(raw: Any) -> list[float]:
    if not _is_list(raw):
        return []
    values = (_as_float(v) for v in list(raw)[:MAX_VALUES])
    return [v for v in values if math.isfinite(v)]


def distribution_plot(finding: Finding) -> bytes | None:
    """Histogram from ``details["histogram"]`` or ``details["values"]`` (+ ``reference_values``), or ``None``."""
    details = finding.details
    histograms = _histograms(details)
    values = _finite_values(details.get("values"))
    reference_values = _finite_values(details.get("reference_values"))
    if not histograms and not values:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.0, 3.0))
    label = _text(details.get("values_label", finding.stage))
    for edges, counts, hist_label in histograms:
        ax.stairs(counts, edges, fill=True, alpha=0.5, label=hist_label or None)
    if values:
        bins = 50 if len(values) > 50 else max(5, len(values) // 2)
        low = min(values + reference_values)
        high = max(values + reference_values)
        if low == high:
            low, high = low - 0.5, high + 0.5
        ax.hist(values, bins=bins, range=(low, high), alpha=0.6, label="trainer")
        if reference_values:
            ax.hist(reference_values, bins=bins, range=(low, high), alpha=0.5, label="reference")
    if reference_values or any(h[2] for h in histograms):
        ax.legend(fontsize=8)
    ax.set_xlabel(label)
    ax.set_ylabel("count")
    ax.set_title(_text(f"{finding.check_id}: distribution"))
    return _to_png(fig)


def finding_plots(finding: Finding) -> list[tuple[str, bytes]]:
    """Every plot one finding's details support, as ``(caption, png)`` pairs."""
    plots: list[tuple[str, bytes]] = []
    heatmap = token_error_heatmap(finding)
    if heatmap is not None:
        plots.append((f"Per-token error map ({finding.where.describe()})", heatmap))
    distribution = distribution_plot(finding)
    if distribution is not None:
        plots.append((f"Distribution ({finding.details.get('values_label', finding.stage)})", distribution))
    return plots
