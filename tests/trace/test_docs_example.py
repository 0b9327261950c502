"""The walkthrough in docs/traces.md runs as written (hand-written loop on a tiny Llama)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

DOC = Path(__file__).resolve().parents[2] / "docs" / "traces.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)


@pytest.mark.slow
def test_walkthrough_runs_and_records_the_true_gradient(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    blocks = _python_blocks()
    assert len(blocks) >= 5
    namespace: dict = {"__name__": "docs_example"}
    for block in blocks:  # verbatim: the "broken trace" block breaks its own copy of the trace
        exec(compile(block, str(DOC), "exec"), namespace)
    out = capsys.readouterr().out

    from grpo_check import load_trace
    from grpo_check.report import load_result

    trace = load_trace(tmp_path / "traces" / "my-loop", strict=True)
    assert len(trace.steps) == 3 and trace.problems == []
    for step in trace.steps:
        # grpo loss at ratio 1: ∂loss/∂logps[i, t] = −A_i · mask[i, t] / (|o_i| · B)
        mask = step["completion_mask"].float()
        expected = -step["advantages"][:, None] * mask / mask.sum(1, keepdim=True) / mask.shape[0]
        torch.testing.assert_close(step["logps_grad"], expected)
    assert "3 steps; problems: []" in out
    assert "[0, 2]" in out and "000001-mb00-r0.safetensors" in out and "tensor_file_bytes" in out
    assert load_result(tmp_path / "reports" / "example" / "result.json").counts()["fail"] == 1
    assert (tmp_path / "reports" / "example" / "report.html").read_text().count("data:image/png;base64,") >= 3
    repro = load_trace(tmp_path / "reports" / "example" / "repro")
    assert [s.step for s in repro.steps] == [1]
