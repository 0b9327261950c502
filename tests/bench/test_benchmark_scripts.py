"""The scripts in ``benchmarks/`` that others build on keep their command-line contract (no timings asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_fixed_cost_json_gives_seconds_per_step_size() -> None:
    # ab_check_cost.py reads this line: {tokens: seconds} for the first --sizes step sizes
    out = subprocess.run(
        [sys.executable, str(BENCHMARKS / "fixed_cost.py"), "--json", "--sizes", "1", "--repeats", "2"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    points = json.loads(out.strip().splitlines()[-1])
    assert list(points) == ["48"]  # the demo-sized micro-batch: 8 rows x 6 tokens
    assert points["48"] > 0


def test_ab_check_cost_help_names_its_options() -> None:
    out = subprocess.run(
        [sys.executable, str(BENCHMARKS / "ab_check_cost.py"), "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for option in ("--before", "--runs", "--repeats", "--sizes", "--threads"):
        assert option in out


def test_count_ops_attributes_the_operations_of_one_check_to_the_engine_parts() -> None:
    out = subprocess.run(
        [sys.executable, str(BENCHMARKS / "count_ops.py"), "--dispatch", "--top", "3"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    lines = out.splitlines()
    assert lines[0].startswith("check_captured_step on a correct 48-token step:")
    calls = int(lines[1].split()[0])
    torch_calls, _, _, _, _, aten = lines[2].split()[:6]
    assert calls > int(torch_calls) > int(aten) > 0  # Python calls include the torch calls
    parts = {line.split()[1] for line in lines[3:] if line.split()[0].isdigit() and "ATen" in line}
    assert {"invariants.registry", "compare.tensor_diff", "reference.loss"} & parts
    assert any(part.startswith("invariants.") for part in parts)
    assert any(part.startswith("diagnose.") for part in parts)
    assert "--- the 3 most called" in lines


def test_merge_window_estimate_checks_only_the_first_micro_batch_of_a_window(monkeypatch) -> None:
    import importlib.util

    import grpo_check.trl.background as background
    from grpo_check.trace.model import TraceStep

    spec = importlib.util.spec_from_file_location(
        "merge_window_estimate", BENCHMARKS / "merge_window_estimate.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    checked = []

    def fake_check(step, *args, **kwargs):
        checked.append(step)
        return ["a finding"], []

    monkeypatch.setattr(background, "check_captured_step", fake_check)
    real = background.check_captured_step
    steps = [
        TraceStep(tensors={}, meta={"scope": "micro_batch", "micro_batch": 0}),
        TraceStep(tensors={}, meta={"scope": "micro_batch", "micro_batch": 1}),
        TraceStep(tensors={}, meta={"scope": "generation"}),
    ]
    with script._first_micro_batch_only():
        results = [background.check_captured_step(step) for step in steps]
    assert checked == [steps[0], steps[2]]  # the second micro-batch of the window is not checked
    assert results == [(["a finding"], []), ([], []), (["a finding"], [])]
    assert background.check_captured_step is real


def _load_script(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_findings_snapshot_flags_a_changed_figure_and_passes_an_identical_run() -> None:
    script = _load_script("findings_snapshot")
    before = script.snapshot(demo=False, loss_types=("grpo",))
    # the broken variants really fire, so a check that stopped firing would show as a difference
    negated = before["grpo/beta=0.04/k3/negated_grad"]["findings"]
    assert any("FAIL" in finding["verdict"] for finding in negated)
    assert script.differences(before, script.snapshot(demo=False, loss_types=("grpo",))) == []

    after = json.loads(json.dumps(before))
    after["grpo/beta=0.0/k1"]["findings"][0]["figure"] = repr(1.5)
    lines = script.differences(before, after)
    assert lines[0].startswith("grpo/beta=0.0/k1: ") and "figure" in lines[0]
    assert lines[-1] == f"1 of {len(before)} case(s) differ"


def test_findings_snapshot_refuses_an_unreadable_snapshot_before_checking(tmp_path) -> None:
    broken = tmp_path / "before.json"
    broken.write_text("{not json", encoding="utf-8")
    for against in (str(tmp_path / "missing.json"), str(broken)):
        run = subprocess.run(
            [sys.executable, str(BENCHMARKS / "findings_snapshot.py"), "--no-demo", "--against", against],
            capture_output=True,
            text=True,
        )
        assert run.returncode == 2
        assert f"--against {against}:" in run.stderr and "Traceback" not in run.stderr
        assert "steps checked" not in run.stderr  # refused before any step was checked
    run = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "findings_snapshot.py"),
            "--no-demo",
            "-o",
            str(tmp_path / "no" / "x.json"),
        ],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2 and "no such directory" in run.stderr


@pytest.mark.slow
def test_wider_policy_factory_builds_the_demo_trainer_on_the_wider_policy_and_cleans_up() -> None:
    import gc
    import importlib.util

    from grpo_check.bench.overhead import demo_trainer_factory

    spec = importlib.util.spec_from_file_location(
        "wider_policy_factory", BENCHMARKS / "wider_policy_factory.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    trainer = module.build_trainer(steps=3)
    config = trainer.model.config
    assert (config.hidden_size, config.num_hidden_layers) == (module.HIDDEN_SIZE, module.NUM_LAYERS)
    assert trainer.args.max_steps == 3
    demo = demo_trainer_factory()(Path(trainer.args.output_dir).parent / "demo")
    assert config.hidden_size > demo.model.config.hidden_size  # wider than the demo's policy ...
    for name in ("loss_type", "beta", "num_generations", "gradient_accumulation_steps", "temperature"):
        assert getattr(trainer.args, name) == getattr(demo.args, name)  # ... on the demo's configuration
    work = Path(trainer.args.output_dir).parent
    assert work.is_dir()
    del trainer, demo
    gc.collect()
    assert not work.exists()  # the saved policy goes with the trainer


def test_gc_cost_help_names_its_options() -> None:
    out = subprocess.run(
        [sys.executable, str(BENCHMARKS / "gc_cost.py"), "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "--runs" in out and "--steps" in out


def test_live_vs_warm_sets_each_kind_of_step_live_beside_warm() -> None:
    out = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "live_vs_warm.py"),
            "--steps",
            "2",
            "--repeats",
            "2",
            "--threads",
            "1",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    ).stdout
    lines = [line for line in out.splitlines() if "checked:" in line]
    assert {line.split()[0] for line in lines} == {"generation", "micro_batch"}
    for line in lines:
        assert "live " in line and "warm " in line and " ms" in line
