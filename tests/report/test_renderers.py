"""Every renderer on a Result with pass / fail / warn / convention / not-captured / inconclusive findings."""

from __future__ import annotations

import base64
import json
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest

from grpo_check.findings import Finding, Result, Verdict
from grpo_check.report import load_result, render, write_report
from grpo_check.report import plots as report_plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_terminal_first_divergence_counts_and_messages(mixed_result: Result) -> None:
    text = render(mixed_result, "text", color=False)
    lines = text.splitlines()
    assert (
        lines[0] == "grpo-check: FAIL - 2 fail, 1 warn, 1 inconclusive, 1 not captured, 1 convention, 1 pass"
    )
    assert "\x1b[" not in text
    # the earliest-stage failure (advantages, step 0) is the first divergence, printed before the later one
    first = text.index("advantages.group_sum_zero")
    assert first < text.index("logps.match_reference")
    assert text.index("First divergence") < first
    # what, where, how much, allowed, likely cause, fix
    for needle in (
        "group 3 advantages sum to 1.66",
        "prompt 3",
        "measured: 1.66 (allowed 1e-06)",
        "repeat_interleave",
        "bug-catalog 6",
        "fix: divide the logits",
        "step 1, micro-batch 0, rank 0, prompt 1, generation 2, row 5, token 3, (id 17)",
    ):
        assert needle in text, needle
    # per-stage summary: one line per stage present, pipeline order
    stage_lines = [
        line.split()[0] for line in lines if re.match(r"^(advantages|logps|ratio|kl|loss)\s+\d", line)
    ]
    assert stage_lines == ["advantages", "logps", "ratio", "kl", "loss"]
    assert "not captured: 1 check(s) in kl" in text


def test_terminal_colour_and_clean(mixed_result: Result, clean_result: Result) -> None:
    assert "\x1b[" in render(mixed_result, "text", color=True)
    clean = render(clean_result, "text", color=False)
    assert clean.startswith("grpo-check: OK")
    assert "First divergence" not in clean
    assert "population std" in clean  # conventions are listed as such, not as failures


def test_markdown_failures_in_full_then_aggregated_passes(mixed_result: Result) -> None:
    text = render(mixed_result, "md")
    assert (
        text.index("## First divergence") < text.index("## Failures and warnings") < text.index("## Passed")
    )
    failures = text.split("## Failures and warnings (3 in 3 check(s))")[1].split("\n## ")[0]
    # the first divergence is not repeated; the other failure and the warning are shown in full
    assert "first occurrence: the first divergence, above" in failures
    assert "**likely cause**: temperature applied on one side only (bug-catalog S1)" in failures
    assert "&lt;html&gt; &amp; stuff" in failures
    assert "**fix**: disable dropout" in failures
    assert "| `loss.finite` | loss | 1 | 0 | 0 | 0 | 0 | step 0 |" in text
    assert "| NOT CAPTURED | `kl.match_reference` | kl | 1 | - | kl was not recorded |" in text
    assert (
        "| `advantages.std_convention` | advantages | 1 | 0 | population std instead of sample std |" in text
    )
    assert "**likely cause**: generations grouped with repeat" in text
    assert "| advantages | 1 | 0 | 0 | 1 | FAIL |" in text
    assert "tolerances" in text
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert all(len(re.split(r"(?<!\\)\|", row)) == row.count("|") + 1 - row.count("\\|") for row in rows)


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.srcs: list[str] = []
        self.hrefs: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for key, value in attrs:
            if key == "src":
                self.srcs.append(value or "")
            if key == "href":
                self.hrefs.append(value or "")


def test_html_is_self_contained_with_embedded_plots(mixed_result: Result) -> None:
    page = render(mixed_result, "html")
    parser = _Collector()
    parser.feed(page)
    assert parser.srcs, "expected embedded images"
    # stage bars + (heatmap + distribution) for logps + distribution for advantages
    assert len(parser.srcs) == 4
    for src in parser.srcs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG_MAGIC)
    assert parser.hrefs == []
    assert "link" not in parser.tags and "script" not in parser.tags
    without_images = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)
    assert not re.search(r"(https?:)?//[a-z]", without_images)
    assert "&lt;html&gt; &amp; stuff" in page  # explanations are escaped


def test_html_degrades_without_details(mixed_result: Result) -> None:
    for finding in mixed_result.findings:
        finding.details = {}
    page = render(mixed_result, "html")
    parser = _Collector()
    parser.feed(page)
    assert len(parser.srcs) == 1  # only the per-stage bars remain
    from grpo_check.report.html import render_html

    assert "<img" not in render_html(mixed_result, plots=False)


def test_malformed_details_never_raise() -> None:
    finding = Finding(
        "logps.match_reference",
        "logps",
        Verdict.FAIL,
        figure=float("nan"),
        tolerance=0.0,
        details={
            "token_error_map": "garbage",
            "histogram": {"edges": [0, 1], "counts": [1, 2]},
            "values": "x",
        },
    )
    assert report_plots.finding_plots(finding) == []
    finding.details = {"token_error_map": [[], []], "values": [float("nan")], "histogram": [None, 3]}
    assert report_plots.finding_plots(finding) == []
    assert "<html" in render(Result([finding]), "html")


def test_plot_functions_return_png(mixed_result: Result) -> None:
    logps_finding = mixed_result.findings[0]
    assert report_plots.token_error_heatmap(logps_finding).startswith(PNG_MAGIC)
    assert report_plots.distribution_plot(logps_finding).startswith(PNG_MAGIC)
    assert report_plots.distribution_plot(mixed_result.findings[1]).startswith(PNG_MAGIC)
    assert report_plots.stage_error_plot(mixed_result).startswith(PNG_MAGIC)
    assert report_plots.stage_error_plot(Result([Finding("kl.x", "kl", "not_captured")])) is None


def test_json_round_trip(mixed_result: Result, tmp_path: Path) -> None:
    path = tmp_path / "result.json"
    path.write_text(render(mixed_result, "json"))
    loaded = load_result(path)
    assert [f.to_dict() for f in loaded.findings] == [
        json.loads(json.dumps(f.to_dict(), default=str)) for f in mixed_result.findings
    ]
    assert loaded.metadata["tolerances"] == mixed_result.metadata["tolerances"]


@pytest.mark.parametrize(("strict", "expected_failures"), [(False, 2), (True, 3)])
def test_junit_parses_and_counts_failures(mixed_result: Result, strict: bool, expected_failures: int) -> None:
    root = ET.fromstring(render(mixed_result, "junit", strict=strict).encode("utf-8"))
    suite = root.find("testsuite")
    cases = suite.findall("testcase")
    assert len(cases) == len(mixed_result.findings)
    assert int(suite.get("failures")) == expected_failures == len(suite.findall("testcase/failure"))
    assert int(suite.get("skipped")) == 2 == len(suite.findall("testcase/skipped"))
    failure = suite.find("testcase/failure")
    assert "advantages.group_sum_zero" in failure.get("message")
    assert "likely cause" in failure.text
    names = {case.get("name") for case in cases}
    assert "logps.match_reference[step=1,mb=0,rank=0]" in names
    assert {case.get("classname") for case in cases} >= {"grpo_check.logps", "grpo_check.advantages"}


def test_junit_clean_result_has_no_failure(clean_result: Result) -> None:
    root = ET.fromstring(render(clean_result, "junit"))
    assert root.find("testsuite").get("failures") == "0"


def test_junit_survives_control_characters() -> None:
    finding = Finding("batch.decode", "batch", "fail", explanation="completion text '\x00\x1b[0m' is garbage")
    root = ET.fromstring(render(Result([finding]), "junit"))
    assert root.find("testsuite/testcase/failure") is not None


def test_write_report_writes_every_format(mixed_result: Result, tmp_path: Path) -> None:
    paths = write_report(mixed_result, tmp_path / "out", formats=("md", "html", "json", "junit", "text"))
    assert {k: p.name for k, p in paths.items()} == {
        "md": "report.md",
        "html": "report.html",
        "json": "result.json",
        "junit": "junit.xml",
        "text": "report.txt",
    }
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        [*(p.name for p in paths.values()), "report-set.json"]
    )
    assert load_result(paths["json"]).counts() == mixed_result.counts()


def test_unknown_format_is_an_input_error(mixed_result: Result) -> None:
    from grpo_check.findings import InputError

    with pytest.raises(InputError, match="unknown report format"):
        render(mixed_result, "pdf")


def test_html_distribution_section_for_passing_findings() -> None:
    passing = Finding(
        "ratio.on_policy_one",
        "ratio",
        Verdict.PASS,
        figure=0.0,
        tolerance=1e-3,
        details={"values": [1.0, 1.0, 0.999], "values_label": "ratio"},
    )
    page = render(Result([passing]), "html")
    assert "<h2>Distributions</h2>" in page
    assert page.count("data:image/png;base64,") == 2  # stage bars + the ratio histogram
    passing.details = {}
    assert "<h2>Distributions</h2>" not in render(Result([passing]), "html")


def test_junit_survives_control_characters_in_metadata_and_stage() -> None:
    """The source property and the classname were written unsanitised: a NUL made the XML unparseable."""
    result = Result(
        [Finding("x.y", "lo\x00ss", Verdict.FAIL, explanation="e")], metadata={"source": "run\x00\x1b1"}
    )
    root = ET.fromstring(render(result, "junit").split("\n", 1)[1])
    assert root.find("testsuite/properties/property").get("value") == "run\ufffd\ufffd1"


def test_text_report_neutralises_terminal_control_sequences() -> None:
    """An explanation quoting a decoded completion with an ANSI escape used to reach the terminal raw."""
    finding = Finding("batch.decode", "batch", "fail", explanation="completion '\x1b[2J\x1b[31mx' \x07")
    text = render(Result([finding], metadata={"source": "run\x1b]0;title\x07"}), "text")
    assert "\x1b" not in text and "\x07" not in text
    assert "completion '\ufffd[2J\ufffd[31mx'" in text


def test_terminal_report_states_what_live_checking_cost():
    from grpo_check.report.terminal import render_terminal

    checking = {
        "checking_seconds": 0.52,
        "training_seconds": 16.58,
        "overhead": 0.0324,
        "checked_steps": 16,
        "steps": 200,
    }
    with_cost = Result([Finding("loss.finite", "loss", "pass")], metadata={"checking": checking})
    text = render_terminal(with_cost, color=False)
    assert (
        "checking cost: 0.52 s of 16.58 s training (overhead 3.2 %), 16 of 200 optimizer steps checked"
        in text
    )
    without = Result([Finding("loss.finite", "loss", "pass")], metadata={"source": "trace"})
    assert "checking cost" not in render_terminal(without, color=False)
