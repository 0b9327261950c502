"""``benchmarks/gpu_bf16.py``: its command line, and its tiny bf16 form trained on the CPU (no timings asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_bf16.py"


def _run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, check=False, timeout=timeout
    )


def test_without_cuda_it_says_how_to_smoke_test_and_exits_2() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    run = _run("--steps", "1")
    assert run.returncode == 2, run.stderr
    assert "--device cpu --tiny" in run.stderr and "Traceback" not in run.stderr
    assert run.stdout == ""


def test_a_step_count_below_one_is_a_usage_error() -> None:
    run = _run("--device", "cpu", "--tiny", "--steps", "0")
    assert run.returncode == 2 and "--steps must be at least 1" in run.stderr


@pytest.mark.slow
def test_the_tiny_bf16_policy_trains_checked_inline_and_in_the_background_without_fail_or_warn(
    tmp_path,
) -> None:
    pytest.importorskip("trl")
    out = tmp_path / "gpu.json"
    run = _run("--device", "cpu", "--tiny", "--steps", "3", "-o", str(out), timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    payload = json.loads(run.stdout)
    assert json.loads(out.read_text()) == payload
    assert payload["policy"]["dtype"] == "bfloat16" and payload["policy"]["num_hidden_layers"] == 2
    assert payload["fail"] == 0 and payload["warn"] == 0
    assert set(payload["runs"]) == {"off", "inline", "background"}
    for mode in ("inline", "background"):
        checked = payload["runs"][mode]
        assert checked["steps"] == 3 and checked["counts"]["pass"] > 0 and checked["fail_warn"] == []
        assert checked["ratio"] > 0
    assert "counts" not in payload["runs"]["off"]


def _load():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_bf16", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_the_full_shape_is_qwen2_05b() -> None:
    from grpo_check.bench.policy import llama_parameters

    shape = _load().FULL
    # Qwen2 is a Llama with biases on the query, key and value projections: 494M parameters, embeddings tied
    biases = shape["num_hidden_layers"] * (shape["hidden_size"] + 2 * 128)  # q: hidden, k and v: 2 heads x 64
    parameters = (
        llama_parameters(
            vocab_size=shape["vocab_size"],
            hidden_size=shape["hidden_size"],
            num_layers=shape["num_hidden_layers"],
            intermediate_size=shape["intermediate_size"],
            num_heads=shape["num_attention_heads"],
            num_kv_heads=shape["num_key_value_heads"],
        )
        + biases
    )
    assert parameters == 494_032_768


def test_fail_and_warn_lists_exactly_the_failing_and_warning_findings() -> None:
    from grpo_check.findings import Finding, Verdict

    script = _load()
    findings = [
        Finding("ratio.on_policy", "ratio", Verdict.FAIL, explanation="ρ differed\nat row 3"),
        Finding("kl.k3", "kl", Verdict.WARN, explanation=""),
        Finding("loss.value", "loss", Verdict.PASS, explanation="matched"),
        Finding("logps.entropy", "logps", Verdict.INCONCLUSIVE, explanation="too few tokens"),
    ]
    assert script.fail_and_warn(findings) == [
        {"check": "ratio.on_policy", "verdict": "fail", "stage": "ratio", "message": "ρ differed"},
        {"check": "kl.k3", "verdict": "warn", "stage": "kl", "message": ""},
    ]
    assert script.fail_and_warn(findings[2:]) == []  # a clean run lists nothing
