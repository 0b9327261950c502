"""Self-contained HTML report: inline CSS, plots embedded as base64 PNG, no external URL.

Plots (see :mod:`grpo_check.report.plots` for the ``details`` keys they read): the per-stage error bars for
the whole run, and for each fail/warn finding its per-token error map and value distribution. With
``plots=False`` (or matplotlib missing) the page is rendered without images.
"""

from __future__ import annotations

import base64
import html
import json
from typing import Any

from grpo_check.coverage import coverage_lines
from grpo_check.findings import Finding, Result, Verdict
from grpo_check.report._common import (
    OCCURRENCE_ROWS,
    VERDICT_SYMBOL,
    CheckGroup,
    fmt_number,
    headline,
    metadata_items,
    ordered_findings,
    reasons_text,
    report_sections,
    stage_summary,
)

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1150px;
       color: #212121; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; border-bottom: 1px solid #ddd; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .5em 0 1.5em; font-size: .9em; }
th, td { border: 1px solid #ddd; padding: .3em .6em; text-align: left; vertical-align: top; }
th { background: #f5f5f5; } td.num { text-align: right; font-family: monospace; }
code, .mono { font-family: "SFMono-Regular", Consolas, monospace; font-size: .92em; }
.v { font-weight: bold; white-space: nowrap; }
.v-fail { color: #c62828; } .v-warn { color: #ef6c00; } .v-pass { color: #2e7d32; }
.v-convention { color: #1565c0; } .v-not_captured { color: #757575; } .v-inconclusive { color: #6a1b9a; }
.headline { font-size: 1.15em; padding: .6em 1em; border-radius: 4px; }
.h-fail { background: #ffebee; } .h-warn { background: #fff3e0; } .h-ok { background: #e8f5e9; }
.finding { border-left: 4px solid #ccc; padding: .2em 1em; margin: 1em 0; background: #fafafa; }
.finding.fail, .group.fail > .finding { border-color: #c62828; } .finding.warn { border-color: #ef6c00; }
.group { margin: 1.2em 0; } .group > .finding { margin-top: .3em; }
summary { cursor: pointer; color: #1565c0; }
.finding dl { display: grid; grid-template-columns: 9em 1fr; margin: .3em 0; }
.finding dt { font-weight: bold; } .finding dd { margin: 0 0 .2em 0; }
figure { margin: .6em 0; } figcaption { font-size: .85em; color: #555; }
img { max-width: 100%; }
pre { background: #f5f5f5; padding: .6em; overflow-x: auto; font-size: .85em; }
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def render_html(
    result: Result, *, title: str = "grpo-check report", plots: bool = True, max_plots: int = 12
) -> str:
    """Render ``result`` as one self-contained HTML page."""
    plot_module = None
    if plots:
        try:
            from grpo_check.report import plots as plot_module
        except ImportError:  # pragma: no cover - matplotlib is a dependency
            plot_module = None

    worst = result.worst()
    headline_class = {Verdict.FAIL: "h-fail", Verdict.WARN: "h-warn"}.get(worst, "h-ok")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(title)}</title>",
        f"<style>{_CSS}</style>",
        "</head><body>",
        f"<h1>{_e(title)}</h1>",
        f'<p class="headline {headline_class}">{_e(headline(result))}</p>',
    ]
    source = result.metadata.get("source")
    if source:
        parts.append(f"<p>Checked: <code>{_e(source)}</code></p>")
    if result.metadata.get("incomplete"):
        parts.append(f'<p class="headline h-warn">Incomplete: {_e(str(result.metadata["incomplete"]))}</p>')
    coverage = coverage_lines(result.metadata.get("coverage"))
    if coverage:
        parts += [
            "<h2>Coverage</h2>",
            "<ul>",
            *(f"<li><code>{_e(line)}</code></li>" for line in coverage),
            "</ul>",
        ]

    sections = report_sections(result)
    first = sections.first
    budget = [max_plots]
    if first is not None:
        parts += [
            '<section id="first-divergence"><h2>First divergence</h2>',
            _finding_section(first, plot_module, budget, heatmap_id="divergence-heatmap"),
            *_token_picture(result, first, plot_module, budget),
            "</section>",
        ]

    rows = stage_summary(result)
    if rows:
        parts += [
            '<section id="per-stage"><h2>Per stage</h2>',
            "<table><tr><th>stage</th><th>fail</th><th>warn</th><th>pass</th><th>other</th><th>worst</th>"
            "<th>worst figure/tolerance</th></tr>",
        ]
        for row in rows:
            other = row.total - row.counts["fail"] - row.counts["warn"] - row.counts["pass"]
            parts.append(
                f"<tr><td>{_e(row.stage)}</td><td class=num>{row.counts['fail']}</td>"
                f"<td class=num>{row.counts['warn']}</td><td class=num>{row.counts['pass']}</td>"
                f"<td class=num>{other}</td><td class='v v-{row.worst.value}'>{VERDICT_SYMBOL[row.worst.value]}</td>"
                f"<td class=num>{fmt_number(row.worst_ratio)}</td></tr>"
            )
        parts.append("</table>")
        if plot_module is not None:
            png = plot_module.stage_error_plot(result)
            if png is not None:
                parts.append(
                    f"<figure>{_img(png, 'per-stage error relative to tolerance')}<figcaption>Worst "
                    "figure/tolerance per stage (log scale; dashed line = at tolerance; no bar where the "
                    "figure is 0).</figcaption></figure>"
                )
        parts.append("</section>")

    if not result.findings:
        parts.append("<p>No findings.</p>")
    if sections.serious:
        total = sum(group.count for group in sections.serious)
        parts.append(
            f'<section id="failures"><h2>Failures and warnings ({total} in {len(sections.serious)} check(s))</h2>'
        )
        parts += [_group_section(group, first, plot_module, budget) for group in sections.serious]
        parts.append("</section>")
    if plot_module is not None:
        shown = {id(first)} | {id(g.first) for g in sections.serious}
        parts += _distribution_section(ordered_findings(result), shown, plot_module, budget)
    if sections.passed:
        total = sum(group.count for group in sections.passed)
        parts += [
            f'<section id="passed"><h2>Passed ({total} in {len(sections.passed)} check(s))</h2>',
            "<table><tr><th>check</th><th>stage</th><th>passed</th><th>steps</th><th>worst figure</th>"
            "<th>tolerance</th><th>worst/tolerance</th><th>worst at</th></tr>",
        ]
        for group in sections.passed:
            worst = group.worst
            parts.append(
                f"<tr><td><code>{_e(group.check_id)}</code></td><td>{_e(group.stage)}</td>"
                f"<td class=num>{group.count}</td><td>{_e(group.steps())}</td>"
                f"<td class=num>{fmt_number(worst.figure)}</td><td class=num>{fmt_number(worst.tolerance)}</td>"
                f"<td class=num>{fmt_number(group.worst_ratio)}</td><td>{_e(worst.where.describe())}</td></tr>"
            )
        parts.append("</table></section>")
    if sections.conventions:
        parts += [
            '<section id="conventions"><h2>Declared conventions (not failures)</h2>',
            "<table><tr><th>check</th><th>stage</th><th>count</th><th>steps</th><th>explanation</th></tr>",
        ]
        for group in sections.conventions:
            parts.append(
                f"<tr><td><code>{_e(group.check_id)}</code></td><td>{_e(group.stage)}</td>"
                f"<td class=num>{group.count}</td><td>{_e(group.steps())}</td>"
                f"<td>{_e(group.first.explanation)}</td></tr>"
            )
        parts.append("</table></section>")
    if sections.undecided:
        parts += [
            '<section id="undecided"><h2>Inconclusive and not captured</h2>',
            "<table><tr><th>verdict</th><th>check</th><th>stage</th><th>count</th><th>steps</th>"
            "<th>reason</th></tr>",
        ]
        for group in sections.undecided:
            verdict = group.verdict.value
            parts.append(
                f"<tr><td class='v v-{verdict}'>{VERDICT_SYMBOL[verdict]}</td><td><code>{_e(group.check_id)}"
                f"</code></td><td>{_e(group.stage)}</td><td class=num>{group.count}</td>"
                f"<td>{_e(group.steps())}</td><td>{_e(reasons_text(group))}</td></tr>"
            )
        parts.append("</table></section>")

    items = metadata_items(result)
    if items:
        parts.append("<h2>Run metadata</h2>")
        for key, value in items:
            if isinstance(value, (dict, list)):
                parts.append(
                    f"<details><summary>{_e(key)}</summary><pre>{_e(json.dumps(value, indent=2, default=str))}"
                    "</pre></details>"
                )
            else:
                parts.append(f"<p><b>{_e(key)}</b>: <code>{_e(value)}</code></p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _distribution_section(
    findings: list[Finding], shown_elsewhere: set[int], plot_module: Any, budget: list[int]
) -> list[str]:
    """One distribution plot per check (its first finding carrying ``histogram``/``values``), ratio and
    advantages first; findings that get their own Details section are plotted there instead."""
    chosen: dict[str, Finding] = {}
    for finding in findings:
        if id(finding) in shown_elsewhere or finding.check_id in chosen:
            continue
        if "histogram" in finding.details or "values" in finding.details:
            chosen[finding.check_id] = finding
    ordered = sorted(
        chosen.values(), key=lambda f: (f.stage not in ("ratio", "advantages"), f.stage, f.check_id)
    )
    figures = []
    for finding in ordered:
        if budget[0] <= 0:
            break
        png = plot_module.distribution_plot(finding)
        if png is None:
            continue
        budget[0] -= 1
        caption = f"{finding.check_id} ({finding.where.describe()}): {finding.details.get('values_label', finding.stage)}"
        figures.append(f"<figure>{_img(png, caption)}<figcaption>{_e(caption)}</figcaption></figure>")
    return ["<h2>Distributions</h2>", *figures] if figures else []


def token_picture_source(result: Result, first: Finding) -> Finding | None:
    """The finding whose per-token error map shows the first divergence token by token: the first divergence
    itself when it carries one; else (a per-row quantity such as the advantages) the first failing finding of
    the same step, micro-batch and rank that carries one (the per-token loss or gradient it flows into)."""
    if "token_error_map" in first.details:
        return None  # drawn in the first divergence's own section
    same_place = [
        f
        for f in ordered_findings(result)
        if f.verdict is Verdict.FAIL
        and "token_error_map" in f.details
        and (f.where.step, f.where.micro_batch, f.where.rank)
        == (first.where.step, first.where.micro_batch, first.where.rank)
    ]
    return same_place[0] if same_place else None


def _token_picture(result: Result, first: Finding, plot_module: Any, budget: list[int]) -> list[str]:
    source = token_picture_source(result, first)
    if source is None or plot_module is None or budget[0] <= 0:
        return []
    png = plot_module.token_error_heatmap(source)
    if png is None:
        return []
    budget[0] -= 1
    caption = (
        f"Where it lands, token by token: {source.check_id} ({source.where.describe()}), |trainer − reference| "
        "per (row, token), rows grouped by prompt, masked tokens grey, worst circled"
    )
    return [
        f"<figure class='heatmap' id=\"divergence-heatmap\">{_img(png, caption)}"
        f"<figcaption>{_e(caption)}</figcaption></figure>"
    ]


def _group_section(group: CheckGroup, first: Finding | None, plot_module: Any, budget: list[int]) -> str:
    """One failing or warning check: its first occurrence in full (with plots), its worst, every occurrence."""
    verdict = group.verdict.value
    head = (
        f"<h3><span class='v v-{verdict}'>{VERDICT_SYMBOL[verdict]}</span> <code>{_e(group.check_id)}</code> "
        f"({_e(group.stage)}): {_e(group.occurrences())}</h3>"
    )
    if group.first is first:
        body = "<p>First occurrence: the first divergence, above.</p>"
    else:
        body = _finding_section(group.first, plot_module, budget, heading=False)
    worst = group.worst
    if group.count > 1 and worst is not group.first:
        body += (
            f"<p><b>worst</b>: {fmt_number(worst.figure)} (allowed {_e(fmt_number(worst.tolerance))}) at "
            f"{_e(worst.where.describe())}</p>"
        )
    if group.count > 1:
        rows = "".join(
            f"<tr><td>{_e(f.where.describe())}</td><td class=num>{fmt_number(f.figure)}</td>"
            f"<td class=num>{fmt_number(f.tolerance)}</td><td>{_e(f.explanation)}</td></tr>"
            for f in group.findings[:OCCURRENCE_ROWS]
        )
        more = (
            f"<p>… and {group.count - OCCURRENCE_ROWS} more occurrence(s) in <code>result.json</code>.</p>"
            if group.count > OCCURRENCE_ROWS
            else ""
        )
        body += (
            "<details><summary>every occurrence</summary><table><tr><th>where</th><th>figure</th>"
            f"<th>tolerance</th><th>explanation</th></tr>{rows}</table>{more}</details>"
        )
    return f"<div class='group {verdict}'>{head}{body}</div>"


def _finding_section(
    finding: Finding,
    plot_module: Any,
    budget: list[int],
    *,
    heading: bool = True,
    heatmap_id: str | None = None,
) -> str:
    verdict = finding.verdict.value
    rows = [("what", _e(finding.explanation)), ("where", _e(finding.where.describe()))]
    if finding.figure is not None:
        rows.append(
            ("measured", f"{fmt_number(finding.figure)} (allowed {_e(fmt_number(finding.tolerance))})")
        )
    if finding.likely_cause:
        catalog = f" (bug-catalog {_e(finding.catalog_id)})" if finding.catalog_id else ""
        rows.append(("likely cause", _e(finding.likely_cause) + catalog))
    if finding.fix:
        rows.append(("fix", _e(finding.fix)))
    body = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows)
    figures = ""
    if plot_module is not None and budget[0] > 0:
        for kind, caption, png in plot_module.finding_plots(finding):
            if budget[0] <= 0:
                break
            budget[0] -= 1
            ident = f' id="{heatmap_id}"' if kind == "heatmap" and heatmap_id else ""
            figures += f"<figure class='{kind}'{ident}>{_img(png, caption)}<figcaption>{_e(caption)}</figcaption></figure>"
    title = (
        f"<h3><span class='v v-{verdict}'>{VERDICT_SYMBOL[verdict]}</span> "
        f"<code>{_e(finding.check_id)}</code> ({_e(finding.stage)})</h3>"
        if heading
        else ""
    )
    return f"<div class='finding {verdict}'>{title}<dl>{body}</dl>{figures}</div>"
