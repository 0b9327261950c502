"""Reports stay readable on long runs: failures in full, passes aggregated per check, undecided grouped with
their reason; the first divergence is drawn as a (row, token) heatmap grouped by prompt; zero figures draw no
bar."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET

import pytest
import torch

from grpo_check.findings import Finding, Result, Verdict, Where
from grpo_check.report import plots as report_plots
from grpo_check.report import render
from grpo_check.report._common import OCCURRENCE_ROWS, group_by_check


def long_run(steps: int = 50, micro_batches: int = 4, failing_from: int = 30) -> Result:
    """Every check passing on every micro-batch, one check failing from ``failing_from`` on, one not captured."""
    findings = []
    for step in range(steps):
        for mb in range(micro_batches):
            where = Where(step=step, micro_batch=mb, rank=0, row=mb, token=step % 5)
            figure = 1e-7 * (1 + (step * micro_batches + mb) % 97)
            for check in ("logps.values", "ratio.values", "loss.values"):
                findings.append(
                    Finding(
                        check, check.split(".")[0], Verdict.PASS, figure=figure, tolerance=1e-5, where=where
                    )
                )
            bad = step >= failing_from
            findings.append(
                Finding(
                    "advantages.values",
                    "advantages",
                    Verdict.FAIL if bad else Verdict.PASS,
                    figure=0.5 + step if bad else 0.0,
                    tolerance=1e-6,
                    where=where,
                    explanation=f"advantages differ at step {step}",
                    fix="group rows with repeat_interleave(G)" if bad else None,
                )
            )
            findings.append(
                Finding(
                    "kl.values",
                    "kl",
                    Verdict.NOT_CAPTURED,
                    where=where,
                    explanation="kl was not recorded",
                    details={"missing": ["kl"]},
                )
            )
    return Result(findings, metadata={"source": "synthetic"})


def test_passes_are_one_row_per_check_with_the_worst_figure() -> None:
    result = long_run()
    groups = {g.check_id: g for g in group_by_check(result.findings, (Verdict.PASS,))}
    assert set(groups) == {"logps.values", "ratio.values", "loss.values", "advantages.values"}
    logps = groups["logps.values"]
    assert logps.count == 200 and logps.steps() == "0-49"
    assert logps.worst.figure == pytest.approx(97e-7)  # (step * 4 + mb) % 97 == 96 first at step 24, mb 0
    assert (logps.worst.where.step, logps.worst.where.micro_batch) == (24, 0)
    md = render(result, "md")
    assert "| `logps.values` | logps | 200 | 0-49 | 9.7e-06 | 1e-05 | 0.97 | step 24, micro-batch 0" in md
    assert "| `advantages.values` | advantages | 120 | 0-29 | 0 | 1e-06 | 0 |" in md


def test_failures_come_first_and_keep_every_detail_up_to_a_bound() -> None:
    result = long_run()
    md = render(result, "md")
    assert md.index("## Failures and warnings") < md.index("## Passed")
    assert "### FAIL `advantages.values` (advantages): 80 occurrences, steps 30-49" in md
    assert "- **worst**: 49.5 (allowed 1e-06) at step 49" in md
    occurrence_rows = re.findall(r"^\| step \d+, micro-batch \d+.*advantages differ", md, flags=re.M)
    assert len(occurrence_rows) == OCCURRENCE_ROWS
    assert f"… and {80 - OCCURRENCE_ROWS} more occurrence(s) in `result.json`." in md
    # undecided: one row per check, with its reason
    assert "| NOT CAPTURED | `kl.values` | kl | 200 | 0-49 | kl was not recorded (record kl) |" in md
    # nothing is lost: result.json keeps every finding
    assert render(result, "json").count('"check_id"') == len(result.findings)


def test_report_size_does_not_grow_with_passing_steps() -> None:
    short = {fmt: len(render(long_run(steps=40, failing_from=30), fmt)) for fmt in ("md", "junit")}
    long = {fmt: len(render(long_run(steps=400, failing_from=390), fmt)) for fmt in ("md", "junit")}
    assert long["md"] < 1.1 * short["md"], (short, long)
    # JUnit: a testcase per failing occurrence, one per check for passes and for skips (with the count)
    assert long["junit"] < 1.5 * short["junit"], (short, long)
    root = ET.fromstring(render(long_run(steps=400, failing_from=390), "junit"))
    names = [case.get("name") for case in root.iter("testcase")]
    assert names.count("logps.values") == 1 and not any(n.startswith("logps.values[") for n in names)
    assert sum(1 for n in names if n.startswith("advantages.values[step=")) == 40
    (skip,) = root.iter("skipped")
    assert (
        skip.get("message") == "not captured, 1600 occurrences, steps 0-399: kl was not recorded (record kl)"
    )


def test_a_bug_free_long_run_has_no_failure_section() -> None:
    result = long_run(failing_from=10**6)
    md = render(result, "md")
    assert "## Failures and warnings" not in md and "## First divergence" not in md
    assert md.startswith("# grpo-check report\n\n**grpo-check: OK")


def _finding_with_map(**details) -> Finding:
    return Finding(
        "logps.values",
        "logps",
        Verdict.FAIL,
        figure=0.5,
        tolerance=1e-5,
        where=Where(step=0, row=2, token=1),
        details={"token_error_map": [[0.0, 0.1, None], [0.2, None, None], [0.1, 0.5, 0.0]], **details},
    )


def test_heatmap_groups_rows_by_prompt_and_keeps_masked_tokens_apart() -> None:
    layout = report_plots.heatmap_layout(_finding_with_map(token_error_map_prompts=[1, 0, 1]))
    assert layout["rows"] == [1, 0, 2] and layout["prompts"] == [0, 1, 1]
    assert layout["worst"] == (2, 1)  # row 2 is drawn third
    assert math.isnan(layout["values"][0][1]) and layout["values"][1][1] == 0.1
    # without prompts: batch order, nothing regrouped
    assert report_plots.heatmap_layout(_finding_with_map())["rows"] == [0, 1, 2]
    # prompts that do not cover the rows are ignored, not trusted
    assert (
        report_plots.heatmap_layout(_finding_with_map(token_error_map_prompts=[1]))["prompts"] == [None] * 3
    )
    assert report_plots.token_error_heatmap(_finding_with_map(token_error_map_prompts=[1, 0, 1])).startswith(
        b"\x89PNG"
    )


def test_compare_keeps_the_error_map_with_masked_tokens_and_prompts() -> None:
    from grpo_check.compare import compare_step
    from grpo_check.compare.synthetic import make_step
    from grpo_check.config import GRPOSpec

    spec = GRPOSpec(num_generations=4, loss_type="grpo", beta=0.04, max_completion_length=6)
    step = make_step(spec, n_prompts=2)
    step.tensors["kl"] = step["kl"] + 0.01 * step["completion_mask"]
    (finding,) = [f for f in compare_step(step, spec, diagnose=False) if f.check_id == "kl.values"]
    assert finding.verdict is Verdict.FAIL
    grid, mask = finding.details["token_error_map"], step["completion_mask"].bool()
    assert [[v is not None for v in row] for row in grid] == mask.tolist()
    assert finding.details["token_error_map_prompts"] == step["group_index"].tolist()
    assert all(v == pytest.approx(0.01, rel=1e-3) for row in grid for v in row if v is not None)
    assert bool((~mask).any()), "the synthetic step must mask some tokens for this test to mean anything"


def _bar_heights(result: Result, monkeypatch: pytest.MonkeyPatch) -> dict[str, float]:
    drawn = {}

    def capture(fig):
        (ax,) = fig.axes
        names = [t.get_text() for t in ax.get_xticklabels()]
        for patch in ax.patches:
            drawn[names[round(patch.get_x() + patch.get_width() / 2)]] = patch.get_height()
        return b"png"

    monkeypatch.setattr(report_plots, "_to_png", capture)
    assert report_plots.stage_error_plot(result) == b"png"
    return drawn


def test_stage_plot_draws_no_bar_for_a_zero_figure(monkeypatch: pytest.MonkeyPatch) -> None:
    result = Result(
        [
            Finding("batch.finite", "batch", Verdict.PASS, figure=0.0, tolerance=1e-6),
            Finding("loss.finite", "loss", Verdict.PASS, figure=0.0, tolerance=1e-6),
            Finding("kl.values", "kl", Verdict.PASS, figure=2e-7, tolerance=1e-6),
            Finding("logps.values", "logps", Verdict.FAIL, figure=0.3, tolerance=1e-5),
        ]
    )
    heights = _bar_heights(result, monkeypatch)
    assert set(heights) == {"kl", "logps"}
    assert heights["kl"] == pytest.approx(0.2) and heights["logps"] == pytest.approx(3e4)
    assert [(s, r) for s, r, _ in report_plots.stage_bars(result)] == [
        ("batch", 0.0),
        ("logps", pytest.approx(3e4)),
        ("kl", pytest.approx(0.2)),
        ("loss", 0.0),
    ]


def test_html_first_divergence_carries_the_heatmap() -> None:
    finding = _finding_with_map(token_error_map_prompts=[1, 0, 1])
    page = render(
        Result([finding, Finding("loss.finite", "loss", "pass", figure=0.0, tolerance=0.0)]), "html"
    )
    section = page.split('<section id="first-divergence">')[1].split("</section>")[0]
    assert "<figure class='heatmap' id=\"divergence-heatmap\"><img" in section
    assert "rows grouped by prompt, masked tokens grey" in section


def test_error_map_of_a_1d_quantity_is_absent() -> None:
    from grpo_check.compare._diff import error_map

    assert error_map(torch.ones(3), torch.ones(3, dtype=torch.bool)) is None


def test_a_per_row_first_divergence_is_pictured_where_it_lands_token_by_token() -> None:
    from grpo_check.compare import compare
    from grpo_check.compare.synthetic import make_trace
    from grpo_check.report.html import token_picture_source

    trace = make_trace(steps=2, n_prompts=2, completion_length=6)
    trace.steps[1].tensors["advantages"] = trace.steps[1]["advantages"] * 1.5  # a per-row (B,) quantity
    result = compare(trace)
    first = result.first_divergence()
    assert first.stage == "advantages" and "token_error_map" not in first.details
    source = token_picture_source(result, first)
    assert source is not None and source.verdict is Verdict.FAIL and "token_error_map" in source.details
    assert source.where.step == first.where.step == trace.steps[1].step
    page = render(result, "html")
    section = page.split('<section id="first-divergence">')[1].split("</section>")[0]
    assert 'id="divergence-heatmap"' in section and f"token by token: {source.check_id}" in section
    # silent when nothing at that step carries a per-token map
    for finding in result.findings:
        if finding is not first:
            finding.details.pop("token_error_map", None)
    assert token_picture_source(result, first) is None
    assert 'id="divergence-heatmap"' not in render(result, "html")


def test_terminal_says_each_failing_check_once_with_its_count() -> None:
    text = render(long_run(), "text")
    assert text.count("[FAIL] advantages.values") == 1  # the first divergence, in full
    assert (
        "advantages.values: + 79 more occurrence(s) (80 occurrences, steps 30-49); worst 49.5 (allowed 1e-06) at "
        "step 49, micro-batch 0, rank 0, row 0, token 4 (the first is the first divergence above)"
    ) in text
    assert len(text.splitlines()) < 40
