"""Plots for the HTML report (matplotlib, Agg backend, PNG bytes). Every plot degrades to ``None``.

Which ``Finding.details`` keys the plots read (the contract checks and comparisons fill in):

============================  ====================================================================================
key                           meaning / shape
============================  ====================================================================================
``token_error_map``           (B, T) nested list of floats: per-token |trainer − reference| (``null`` on masked,
                              not compared tokens; ``inf``/``"inf"`` for NaN/Inf disagreements). Drawn as a
                              heatmap, rows = completions, columns = completion tokens, masked tokens grey, the
                              worst cell (``where.row``, ``where.token``) circled.
``token_error_map_prompts``   optional list (B): the prompt (group index) of each row; rows are then drawn
                              grouped by prompt, with a line between prompts.
``token_error_map_label``     optional colour-bar label (default ``"|trainer − reference|"``).
``histogram``                 ``{"edges": [n+1 floats], "counts": [n numbers], "label": str}`` or a list of such
                              dicts (overlaid): a pre-binned distribution (e.g. of the ratio or advantages).
``values``                    list of floats: raw values (e.g. ratios, advantages, d = logps − sampler_logps);
                              histogrammed here (at most the first 100 000 are used).
``reference_values``          list of floats: the reference side of ``values``, overlaid when present.
``values_label``              optional x-axis label for ``values`` (default: the finding's stage).
============================  ====================================================================================

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

from grpo_check.findings import Finding, Result, Verdict, severity

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


def stage_bars(result: Result) -> list[tuple[str, float, Verdict]]:
    """Per stage (pipeline order): the worst ``figure / tolerance`` and the worst verdict among the findings
    that carry both numbers. A stage whose worst figure is 0 keeps its entry (drawn as no bar)."""
    from grpo_check.report._common import figure_ratio, stage_rank

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
    order = sorted(worst, key=lambda stage: (stage_rank(stage), stage))
    return [(stage, *worst[stage]) for stage in order]


def stage_error_plot(result: Result) -> bytes | None:
    """Per stage: the worst ``figure / tolerance`` (log scale, dashed line at 1), or ``None``.

    A figure of exactly 0 draws no bar (the stage is labelled ``0`` at the foot of the axis); an infinite one
    reaches the top of the axis and is labelled ``inf``.
    """
    bars = stage_bars(result)
    if not bars:
        return None
    bars = [(stage, _as_float(ratio), verdict) for stage, ratio, verdict in bars]  # ±1e308: off-scale
    finite = [ratio for _, ratio, _ in bars if math.isfinite(ratio) and ratio > 0]
    ceiling = max([*finite, 1.0]) * 10
    floor = min([*finite, 1.0]) / 10
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(bars) + 1.5), 3.0))
    names = [_text(stage) for stage, _, _ in bars]
    heights = [ceiling if math.isinf(ratio) else (ratio if ratio > 0 else 0.0) for _, ratio, _ in bars]
    colours = [VERDICT_COLOURS[verdict.value] for _, _, verdict in bars]
    drawn = [i for i, height in enumerate(heights) if height > 0]
    ax.bar(drawn, [heights[i] for i in drawn], color=[colours[i] for i in drawn])  # at the stage's own slot
    ax.set_xticks(range(len(names)), names)
    ax.set_yscale("log")
    ax.set_ylim(floor, ceiling * 1.5)
    for i, (_, ratio, _) in enumerate(bars):
        if ratio == 0 or math.isinf(ratio):
            label, y = ("0", floor * 1.3) if ratio == 0 else ("inf", ceiling)
            ax.text(i, y, label, ha="center", va="bottom", fontsize=8, color=colours[i])
    ax.axhline(1.0, color="black", linestyle="--", linewidth=1)
    ax.set_ylabel("worst figure / tolerance")
    ax.set_title("Error relative to tolerance, per stage (dashed: at tolerance)")
    for label in ax.get_xticklabels():
        label.set_rotation(30)
    return _to_png(fig)


def heatmap_layout(finding: Finding, *, max_rows: int = 64, max_tokens: int = 128) -> dict[str, Any] | None:
    """The grid a heatmap draws from ``details["token_error_map"]``, rows ordered by prompt; ``None`` when absent
    or malformed.

    Returns ``values`` (rows × tokens; ``nan`` = masked / not compared, ``inf`` = NaN/Inf disagreement),
    ``rows`` (the batch row of each drawn row), ``prompts`` (its prompt, or ``None`` when unknown) and
    ``worst`` (drawn (row, token) of ``where``, or ``None``).

    >>> from grpo_check.findings import Where
    >>> f = Finding("logps.values", "logps", "fail", where=Where(row=1, token=0),
    ...             details={"token_error_map": [[0.1, None], [0.5, 0.2], [0.0, 0.0]],
    ...                      "token_error_map_prompts": [1, 0, 1]})
    >>> layout = heatmap_layout(f)
    >>> layout["rows"], layout["prompts"], layout["worst"], layout["values"][1]
    ([1, 0, 2], [0, 1, 1], (0, 0), [0.1, nan])
    """
    grid = finding.details.get("token_error_map")
    if not _is_list(grid) or not grid or not all(_is_list(r) for r in grid):
        return None
    values = [[_as_float(v) for v in row[:max_tokens]] for row in list(grid)[:max_rows]]
    width = max((len(r) for r in values), default=0)
    if width == 0:
        return None
    values = [r + [math.nan] * (width - len(r)) for r in values]
    raw_prompts = finding.details.get("token_error_map_prompts")
    prompts: list[int | None] = [None] * len(values)
    if _is_list(raw_prompts) and len(raw_prompts) >= len(values):
        try:
            prompts = [int(p) for p in list(raw_prompts)[: len(values)]]
        except (TypeError, ValueError):
            prompts = [None] * len(values)
    order = list(range(len(values)))
    if all(p is not None for p in prompts):
        order.sort(key=lambda r: prompts[r])  # stable: generations keep their order inside a prompt
    row, token = finding.where.row, finding.where.token
    worst = None
    if row is not None and token is not None and row in order and token < width:
        worst = (order.index(row), token)
    return {
        "values": [values[r] for r in order],
        "rows": order,
        "prompts": [prompts[r] for r in order],
        "worst": worst,
    }


def token_error_heatmap(finding: Finding, *, max_rows: int = 64, max_tokens: int = 128) -> bytes | None:
    """Heatmap of ``details["token_error_map"]`` (rows × tokens), rows grouped by prompt (a line between
    prompts), masked tokens in grey, NaN/Inf disagreements as red crosses, the worst cell circled; ``None``
    when the map is absent or malformed."""
    layout = heatmap_layout(finding, max_rows=max_rows, max_tokens=max_tokens)
    if layout is None:
        return None
    import numpy as np

    data = np.array(layout["values"], dtype=float)
    nonfinite = np.isinf(data)
    masked = np.isnan(data)
    finite = data[np.isfinite(data)]
    finite_max = float(finite.max()) if finite.size else 1.0
    if not math.isfinite(finite_max) or finite_max <= 0:
        finite_max = 1.0
    shown = np.ma.masked_where(masked, np.where(nonfinite, finite_max, data))
    plt = _pyplot()
    from matplotlib.patches import Patch

    n_rows, width = data.shape
    fig, ax = plt.subplots(
        figsize=(min(12.0, 3.0 + 0.12 * width), min(8.0, 2.2 + 0.2 * n_rows)), layout="constrained"
    )
    cmap = plt.get_cmap("viridis").with_extremes(bad="#d0d0d0")
    image = ax.imshow(shown, aspect="auto", cmap=cmap, interpolation="nearest", vmin=0, vmax=finite_max)
    handles = []
    if masked.any():
        handles.append(Patch(facecolor="#d0d0d0", edgecolor="#999999", label="masked (not compared)"))
    if nonfinite.any():
        ys, xs = np.nonzero(nonfinite)
        handles.append(ax.scatter(xs, ys, marker="x", color="red", s=12, label="NaN/Inf"))
    if layout["worst"] is not None:
        y, x = layout["worst"]
        handles.append(
            ax.scatter([x], [y], s=120, facecolors="none", edgecolors="red", linewidths=1.5, label="worst")
        )
    prompts = layout["prompts"]
    if all(p is not None for p in prompts):
        starts = [i for i in range(n_rows) if i == 0 or prompts[i] != prompts[i - 1]]
        for start in starts[1:]:
            ax.axhline(start - 0.5, color="white", linewidth=1.5)
        ends = [*starts[1:], n_rows]
        ax.set_yticks(
            [(s + e - 1) / 2 for s, e in zip(starts, ends, strict=True)],
            [f"prompt {prompts[s]}" for s in starts],
        )
        ax.set_ylabel("completions, grouped by prompt")
    else:
        ax.set_ylabel("row (completion)")
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncol=3, fontsize=7, frameon=False)
    ax.set_xlabel("completion token")
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


def finding_plots(finding: Finding) -> list[tuple[str, str, bytes]]:
    """Every plot one finding's details support, as ``(kind, caption, png)``; kind is ``"heatmap"`` or
    ``"distribution"``."""
    plots: list[tuple[str, str, bytes]] = []
    heatmap = token_error_heatmap(finding)
    if heatmap is not None:
        caption = (
            f"|trainer − reference| per (row, token), rows grouped by prompt, masked tokens grey "
            f"(worst circled: {finding.where.describe()})"
        )
        plots.append(("heatmap", caption, heatmap))
    distribution = distribution_plot(finding)
    if distribution is not None:
        label = finding.details.get("values_label", finding.stage)
        plots.append(("distribution", f"Distribution ({label})", distribution))
    return plots
