"""The HTML report in a real browser: headless Chromium (Debian's package) driven by Playwright opens it, the
rendered page shows the headline, the first divergence and its heatmap, and no script or console error
occurs. A screenshot is kept as a test artifact (``$GRPO_CHECK_ARTIFACTS``, default ``reports/_scratch``).

Skipped when Chromium or Playwright is missing, except in CI (``CI=true``), where it must run."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from grpo_check.findings import Verdict

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ROOT = Path(__file__).resolve().parents[2]


def _chromium() -> str:
    path = (
        os.environ.get("GRPO_CHECK_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    )
    in_ci = os.environ.get("CI", "").lower() in ("1", "true", "yes")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        if in_ci:
            pytest.fail("CI must run the browser test: pip install -e '.[docs]' (playwright)")
        pytest.skip("playwright is not installed (pip install -e '.[docs]')")
    if path is None:
        if in_ci:
            pytest.fail("CI must run the browser test: apt-get install -y chromium")
        pytest.skip("no chromium binary (apt-get install -y chromium)")
    return path


def _artifacts() -> Path:
    folder = Path(os.environ.get("GRPO_CHECK_ARTIFACTS", ROOT / "reports" / "_scratch"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _broken_run_report(folder: Path) -> tuple[Path, int]:
    """A real comparison of two steps whose KL carries a bug on the tokens of one prompt."""
    from grpo_check.compare import compare
    from grpo_check.compare.synthetic import make_trace
    from grpo_check.report import write_report

    trace = make_trace(steps=2, n_prompts=3, completion_length=8)
    step = trace.steps[1]
    bug = step["completion_mask"] * (step["group_index"] == 1)[:, None]
    step.tensors["kl"] = step["kl"] + 0.05 * bug
    result = compare(trace)
    first = result.first_divergence()
    assert first is not None and first.verdict is Verdict.FAIL and "token_error_map" in first.details
    assert first.where.step == step.step and first.where.prompt == 1
    return write_report(result, folder, formats=("html", "json"))["html"], step.step


def test_html_report_renders_in_chromium(tmp_path: Path) -> None:
    executable = _chromium()
    from playwright.sync_api import sync_playwright

    page_path, broken_step = _broken_run_report(tmp_path / "report")
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on(
                "console",
                lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None,
            )
            page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
            page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
            page.goto(page_path.as_uri(), wait_until="load")

            assert page.locator("p.headline").inner_text().startswith("grpo-check: FAIL - ")
            section = page.locator("#first-divergence")
            assert section.locator("h2").inner_text() == "First divergence"
            assert "kl.values" in section.locator("h3").inner_text()
            assert f"step {broken_step}, micro-batch 0, rank 0, prompt 1" in section.inner_text()
            heatmap = section.locator("#divergence-heatmap img")
            assert heatmap.count() == 1 and heatmap.is_visible()
            size = heatmap.evaluate("img => [img.complete, img.naturalWidth, img.naturalHeight]")
            assert size[0] and size[1] > 200 and size[2] > 100, size  # a decoded picture, not a broken image
            assert "grouped by prompt" in section.locator("#divergence-heatmap figcaption").inner_text()
            assert page.locator("#passed table tr").count() > 10  # passes: one row per check
            assert page.locator("script").count() == 0

            shot = _artifacts() / "report-html.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
        finally:
            browser.close()
    assert errors == []
