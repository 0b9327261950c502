"""`grpo-check bench`: cheap checks of the figures' plumbing and the command line (no timed assertions)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from grpo_check.bench.core import BenchFigure, machine_description, median_time
from grpo_check.bench.memory import measure_memory
from grpo_check.cli import app

# Small enough to run in seconds, large enough that the naive float64 copy (4x the bf16 logits, then its
# exp() product) stands out from allocator and thread-pool noise.
TINY = {"batch": 1, "tokens": 512, "vocab": 8192}


@pytest.fixture(scope="module")
def memory_figures() -> tuple[BenchFigure, BenchFigure]:
    return measure_memory(**TINY), measure_memory(naive=True, **TINY)


def test_memory_figure_is_a_finite_fraction_of_the_logits(memory_figures) -> None:
    chunked, _ = memory_figures
    assert chunked.name == "memory" and chunked.unit == "x logits size"
    assert math.isfinite(chunked.value) and chunked.value >= 0
    assert chunked.details["logits_bytes"] == TINY["batch"] * TINY["tokens"] * TINY["vocab"] * 2  # bf16
    assert chunked.details["logps_dtype"] == "torch.float64" and chunked.details["finite"] is True
    assert chunked.ok is (chunked.value <= 0.25)


def test_naive_log_softmax_needs_more_memory_than_the_chunked_reference(memory_figures) -> None:
    chunked, naive = memory_figures
    assert naive.name == "memory_naive" and naive.ok is None  # a comparison, no target
    # a materialised float64 log-softmax alone is 4x the bf16 logits
    assert naive.details["extra_bytes"] >= 4 * naive.details["logits_bytes"]
    assert naive.details["extra_bytes"] > chunked.details["extra_bytes"]


def test_median_time_runs_warmup_and_repeats() -> None:
    calls = []
    seconds = median_time(lambda: calls.append(1), repeats=3, warmup=2)
    assert len(calls) == 5 and seconds >= 0


def test_machine_description_and_figure_serialise() -> None:
    machine = machine_description()
    assert machine["cpu_count"] and machine["python"]
    figure = BenchFigure("startup", 0.1, "x import torch", "<= 0.2", True, {"help_s": 0.3})
    assert json.loads(json.dumps(figure.to_dict()))["details"] == {"help_s": 0.3}


def _bench(*args: str):
    return CliRunner().invoke(app, ["bench", *args])


def test_unknown_figure_is_a_usage_error() -> None:
    result = _bench("--only", "latency")
    assert result.exit_code == 2
    assert "latency" in result.output and "startup, memory, throughput, overhead" in result.output


def test_unknown_format_is_a_usage_error() -> None:
    result = _bench("--only", "memory", "--format", "yaml")
    assert result.exit_code == 2 and "yaml" in result.output


def test_help_names_the_exit_codes() -> None:
    result = _bench("--help")
    assert result.exit_code == 0 and "Exit codes" in result.output


@pytest.fixture
def fake_figures(monkeypatch: pytest.MonkeyPatch) -> list[BenchFigure]:
    """Stand-in measurements: the CLI's plumbing is under test here, not the machine."""
    import grpo_check.cli.bench as bench_cli

    figures = [
        BenchFigure("startup", 0.1, "x import torch", "<= 0.2", True),
        BenchFigure("memory", 0.5, "x logits size", "<= 0.25", False),
    ]
    monkeypatch.setattr(bench_cli, "_measure", lambda selected, **kwargs: figures)
    return figures


def test_json_output_parses_and_check_exits_1_on_a_missed_target(fake_figures, tmp_path: Path) -> None:
    out = tmp_path / "sub" / "bench.json"
    result = _bench("--only", "startup", "--format", "json", "--output", str(out))
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert [f["name"] for f in printed["figures"]] == ["startup", "memory"]
    assert json.loads(out.read_text()) == printed
    assert _bench("--only", "startup", "--check", "--format", "json").exit_code == 1


def test_unwritable_output_exits_2_without_traceback(fake_figures, tmp_path: Path) -> None:
    result = _bench("--only", "startup", "--format", "json", "--output", str(tmp_path))
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert str(tmp_path) in result.stderr


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("train.py", "path/to/train.py:function_name"),
        ("missing.py:build", "no such file missing.py"),
        (
            f"{Path(__file__).resolve().parents[2] / 'examples' / 'train_factory.py'}:nosuch",
            "no function 'nosuch'",
        ),
    ],
)
def test_bad_trainer_reference_fails_before_measuring(fake_figures, reference: str, message: str) -> None:
    result = _bench("--only", "overhead", "--trainer", reference)
    assert result.exit_code == 2 and message in result.output


def test_trainer_without_the_overhead_figure_is_a_usage_error(fake_figures) -> None:
    factory = Path(__file__).resolve().parents[2] / "examples" / "train_factory.py"
    result = _bench("--only", "startup", "--trainer", f"{factory}:build_trainer")
    assert result.exit_code == 2 and "--only overhead" in result.output


def _fake_timed_runs(monkeypatch, finish_by_arm: dict[tuple[int | None, bool], float]) -> None:
    """Every arm's steps take 1 s; ``close()`` of an arm (every, background) takes the given seconds."""
    import grpo_check.bench.overhead as overhead

    def fake_timed_run(make_trainer, every, steps, background=False, **_):
        return overhead.TimedRun([1.0] * steps, finish_by_arm.get((every, background), 0.0))

    monkeypatch.setattr(overhead, "_timed_run", fake_timed_run)
    monkeypatch.setattr(overhead, "_warm_background_helper", lambda *_: None)


def test_overhead_charges_the_wait_for_unfinished_background_checks(monkeypatch) -> None:
    from grpo_check.bench.overhead import measure_overhead

    # background checks deferred past the last step: 10 s of waiting in close() over 2 rounds x 10 timed steps
    _fake_timed_runs(monkeypatch, {(1, True): 10.0})
    figures = {f.name: f for f in measure_overhead(lambda work: None, steps=12, rounds=2, warmup=2)}
    deferred = figures["overhead_every_1_background_demo"]
    assert deferred.value == pytest.approx((20 * 1.0 + 2 * 10.0) / 20)  # 2.0, not the 1.0 of the steps alone
    assert not deferred.ok
    assert deferred.details["close_wait_s"] == pytest.approx(20.0)
    assert deferred.details["round_ratios"] == pytest.approx([2.0, 2.0])  # each round: (10 + 10) / 10
    # nothing deferred: the arm costs what its steps cost
    assert figures["overhead_every_1_demo"].value == pytest.approx(1.0)
    assert figures["overhead_every_1_demo"].ok


def test_table_shows_the_spread_of_the_round_ratios(monkeypatch) -> None:
    import grpo_check.cli.bench as bench_cli

    spread = BenchFigure(
        "overhead_every_1_demo", 1.3, "x step time", "<= 1.25", False, {"round_ratios": [1.21, 1.42, 1.3]}
    )
    single = BenchFigure("startup", 0.1, "x import torch", "<= 0.2", True, {"round_ratios": [0.1]})
    monkeypatch.setattr(bench_cli, "_measure", lambda selected, **kwargs: [spread, single])
    result = CliRunner().invoke(app, ["bench", "--only", "overhead"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "(rounds 1.21–1.42)" in result.output
    assert result.output.count("(rounds") == 1  # one round: nothing to spread


# ------------------------------------------------------------------------------- the overhead interval
def test_ratio_interval_is_students_t_on_the_log_ratios() -> None:
    from grpo_check.bench.core import ratio_interval

    # log-ratios 0.1, 0.2, 0.3: mean 0.2, sample sd 0.1, t(0.975, 2) = 4.303 -> 0.2 ± 0.24843 (by hand)
    low, high = ratio_interval([math.exp(0.1), math.exp(0.2), math.exp(0.3)])
    assert low == pytest.approx(math.exp(0.2 - 0.24843), rel=1e-4)
    assert high == pytest.approx(math.exp(0.2 + 0.24843), rel=1e-4)


def test_ratio_interval_collapses_without_spread_widens_with_it_and_needs_two_rounds() -> None:
    from grpo_check.bench.core import ratio_interval

    assert ratio_interval([1.3, 1.3, 1.3]) == pytest.approx((1.3, 1.3))
    narrow = ratio_interval([1.29, 1.3, 1.31])
    wide = ratio_interval([1.2, 1.3, 1.4])
    assert narrow[0] < 1.3 < narrow[1] and wide[0] < narrow[0] and wide[1] > narrow[1]
    # more rounds of the same spread: a smaller t quantile and a larger n, a narrower interval
    more = ratio_interval([1.2, 1.3, 1.4] * 3)
    assert more[1] - more[0] < wide[1] - wide[0]
    assert ratio_interval([1.3]) is None and ratio_interval([]) is None


@pytest.mark.parametrize(
    ("interval", "verdict"),
    [((1.10, 1.20), "met"), ((1.20, 1.25), "met"), ((1.26, 1.40), "missed"), ((1.20, 1.30), "undecided")],
)
def test_target_verdict_reads_the_interval_against_the_target(interval, verdict) -> None:
    from grpo_check.bench.core import target_verdict

    assert target_verdict(interval, 1.25) == verdict
    assert target_verdict(None, 1.25) is None


def _spread_rounds(monkeypatch) -> None:
    """Three rounds of the six arms (off, every_1, every_10, every_1_floor, every_1_background,
    every_10_background): the every-step arm costs 1.1x, 1.3x, 1.5x of the off arm in rounds 1, 2, 3 (a wide
    interval around 1.3), its floor 1.05x; every other arm costs what the off arm does."""
    import grpo_check.bench.overhead as overhead

    rounds = [(1.1, 1.05), (1.3, 1.05), (1.5, 1.05)]  # (every_1, every_1_floor) per round
    costs = iter([cost for every, floor in rounds for cost in (1.0, every, 1.0, floor, 1.0, 1.0)])

    def fake_timed_run(make_trainer, every, steps, background=False, **_):
        return overhead.TimedRun([next(costs)] * steps, 0.0)

    monkeypatch.setattr(overhead, "_timed_run", fake_timed_run)
    monkeypatch.setattr(overhead, "_warm_background_helper", lambda *_: None)


def test_overhead_figures_carry_the_interval_and_the_verdict(monkeypatch) -> None:
    from grpo_check.bench.overhead import measure_overhead

    _spread_rounds(monkeypatch)
    figures = {f.name: f for f in measure_overhead(lambda work: None, steps=11, rounds=3, warmup=1)}
    every_step = figures["overhead_every_1_demo"]
    assert every_step.details["round_ratios"] == pytest.approx([1.1, 1.3, 1.5])
    low, high = every_step.details["ci95"]
    assert low < 1.25 < high and every_step.details["target_verdict"] == "undecided"
    assert every_step.ok is False  # the point estimate, 1.3, is above 1.25
    steady = figures["overhead_every_10_demo"]  # 1.0 in every round: no spread, met
    assert steady.details["ci95"] == pytest.approx([1.0, 1.0]) and steady.details["target_verdict"] == "met"


def test_the_floor_arm_has_no_target_and_the_every_step_figure_says_how_far_above_it_it_is(
    monkeypatch,
) -> None:
    from grpo_check.bench.overhead import FLOOR_TARGET, measure_overhead

    _spread_rounds(monkeypatch)
    figures = {f.name: f for f in measure_overhead(lambda work: None, steps=11, rounds=3, warmup=1)}
    floor = figures["overhead_every_1_floor_demo"]
    assert floor.value == pytest.approx(1.05) and floor.ok is None and floor.target == FLOOR_TARGET
    assert floor.details["target_verdict"] is None and floor.details["rounds_to_decide"] is None
    # every step: mean 1.3x; the floor 1.05x: the checks themselves add 0.25 of a step
    assert figures["overhead_every_1_demo"].details["above_floor"] == pytest.approx(0.25)
    assert "above_floor" not in figures["overhead_every_10_demo"].details


def test_table_says_what_the_checks_add_over_the_floor(monkeypatch) -> None:
    import grpo_check.cli.bench as bench_cli

    every_step = BenchFigure(
        "overhead_every_1_demo", 1.3, "x step time", "<= 1.25", False, {"above_floor": 0.21}
    )
    floor = BenchFigure("overhead_every_1_floor_demo", 1.09, "x step time", "none", None, {})
    monkeypatch.setattr(bench_cli, "_measure", lambda selected, **kwargs: [every_step, floor])
    result = CliRunner().invoke(app, ["bench", "--only", "overhead"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert result.output.count("over the floor") == 1 and "checks: +0.210 over the floor" in result.output


def test_checks_below_the_floor_in_a_noisy_run_read_as_a_negative_number(monkeypatch) -> None:
    import grpo_check.cli.bench as bench_cli

    every_step = BenchFigure(
        "overhead_every_1_demo", 1.09, "x step time", "<= 1.25", True, {"above_floor": -0.169}
    )
    monkeypatch.setattr(bench_cli, "_measure", lambda selected, **kwargs: [every_step])
    result = CliRunner().invoke(app, ["bench", "--only", "overhead"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "checks: -0.169 over the floor" in result.output and "+-" not in result.output


def test_table_prints_the_interval_and_flags_a_figure_within_noise(monkeypatch) -> None:
    import grpo_check.cli.bench as bench_cli

    undecided = BenchFigure(
        "overhead_every_1_demo",
        1.3,
        "x step time",
        "<= 1.25",
        False,
        {"round_ratios": [1.1, 1.3, 1.5], "ci95": [1.02, 1.66], "target_verdict": "undecided"},
    )
    missed = BenchFigure(
        "overhead_every_10_demo",
        1.3,
        "x step time",
        "<= 1.03",
        False,
        {"round_ratios": [1.29, 1.31], "ci95": [1.2, 1.4], "target_verdict": "missed"},
    )
    monkeypatch.setattr(bench_cli, "_measure", lambda selected, **kwargs: [undecided, missed])
    result = CliRunner().invoke(app, ["bench", "--only", "overhead"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "95 %: 1.020–1.660" in result.output and "95 %: 1.200–1.400" in result.output
    assert result.output.count("within noise") == 1


def test_overhead_reports_each_round_as_it_finishes(monkeypatch) -> None:
    from grpo_check.bench.overhead import measure_overhead

    _fake_timed_runs(monkeypatch, {(1, True): 10.0})  # every step takes 1 s; one arm waits 10 s in close()
    seen: list[tuple[int, dict[str, float]]] = []
    measure_overhead(
        lambda work: None, steps=12, rounds=3, warmup=2, on_round=lambda n, r: seen.append((n, r))
    )
    assert [number for number, _ in seen] == [1, 2, 3]
    ratios = seen[0][1]
    assert set(ratios) == {
        "every_1",
        "every_10",
        "every_1_floor",
        "every_1_background",
        "every_10_background",
    }
    assert ratios["every_1_background"] == pytest.approx(2.0) and ratios["every_1"] == pytest.approx(1.0)


def test_bench_command_prints_progress_per_round(monkeypatch) -> None:
    import grpo_check.bench.overhead as overhead

    _fake_timed_runs(monkeypatch, {})
    monkeypatch.setattr(overhead, "demo_trainer_factory", lambda: lambda work: None)
    result = CliRunner().invoke(app, ["bench", "--only", "overhead", "--rounds", "2"])
    assert result.exit_code == 0, result.output
    assert "round 1/2: every_1 1.00x" in result.output and "round 2/2" in result.output
    # the header's arm count agrees with the arms measured (each round line lists every arm but "off")
    round_line = next(line for line in result.output.splitlines() if "round 1/2:" in line)
    assert f"x {round_line.count('x,') + 2} arms x" in result.output


@pytest.mark.parametrize("steps", ["3", "11", "15", "21"])
def test_steps_that_leave_no_whole_tens_are_a_usage_error(steps: str) -> None:
    # 2 warm-up steps, then the every-10th arm must time one checked step in each ten: 12, 22, 32, ...
    result = CliRunner().invoke(app, ["bench", "--only", "overhead", "--steps", steps])
    assert result.exit_code == 2
    assert "whole tens" in result.output and "Traceback" not in result.output


def test_check_steps_accepts_warmup_plus_whole_tens() -> None:
    from grpo_check.bench.overhead import check_steps
    from grpo_check.findings import InputError

    for steps in (12, 22, 102):
        check_steps(steps)  # no error
    with pytest.raises(InputError):
        check_steps(13)
    check_steps(11, warmup=1)


def test_rounds_to_decide_is_the_fewest_rounds_whose_interval_excludes_the_target() -> None:
    from grpo_check.bench.core import rounds_to_decide

    # log-ratios 0 and 0.2: mean 0.1, sd 0.1414; target 1 (log 0) is 0.1 away. By hand: t(9)·sd/√10 = 0.1011
    # is not below 0.1, t(10)·sd/√11 = 0.0950 is: 11 rounds
    assert rounds_to_decide([1.0, math.exp(0.2)], 1.0) == 11
    assert rounds_to_decide([0.9, 1.1], math.sqrt(0.99)) is None  # the mean log-ratio sits on the target
    assert rounds_to_decide([1.3], 1.25) is None


def test_an_undecided_overhead_figure_says_how_many_rounds_would_tell(monkeypatch) -> None:
    import grpo_check.cli.bench as bench_cli
    from grpo_check.bench.overhead import measure_overhead

    _spread_rounds(monkeypatch)
    figures = measure_overhead(lambda work: None, steps=12, rounds=3, warmup=2)
    by_name = {f.name: f for f in figures}
    undecided = by_name["overhead_every_1_demo"]  # 1.1, 1.3, 1.5 against 1.25
    assert undecided.details["target_verdict"] == "undecided"
    needed = undecided.details["rounds_to_decide"]
    assert isinstance(needed, int) and needed > 3
    assert by_name["overhead_every_10_demo"].details["rounds_to_decide"] is None  # met: nothing to decide
    monkeypatch.setattr(bench_cli, "_measure", lambda selected, **kwargs: figures)
    result = CliRunner().invoke(app, ["bench", "--only", "overhead"], env={"COLUMNS": "200"})
    assert f"~{needed} rounds to tell" in result.output


def test_an_interrupt_keeps_the_figures_already_measured(monkeypatch, tmp_path: Path) -> None:
    import grpo_check.cli.bench as bench_cli

    def measure_then_interrupt(selected, *, into, **kwargs):
        into.append(BenchFigure("startup", 0.1, "x import torch", "<= 0.2", True))
        raise KeyboardInterrupt  # Ctrl-C during the next, long figure

    monkeypatch.setattr(bench_cli, "_measure", measure_then_interrupt)
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["bench", "--format", "json", "-o", str(out)])
    assert result.exit_code == 130
    written = json.loads(out.read_text())
    assert written["interrupted"] is True
    assert [f["name"] for f in written["figures"]] == ["startup"]
    assert "interrupted: the 1 figure(s) measured before it are shown" in result.output
    assert "Traceback" not in result.output


def test_a_run_that_finishes_is_not_marked_interrupted(monkeypatch, tmp_path: Path) -> None:
    import grpo_check.cli.bench as bench_cli

    figure = BenchFigure("startup", 0.1, "x import torch", "<= 0.2", True)
    monkeypatch.setattr(bench_cli, "_measure", lambda selected, **kwargs: [figure])
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["bench", "-o", str(out)])
    assert result.exit_code == 0 and "interrupted" not in json.loads(out.read_text())


# ------------------------------------------------------------------------------------- the floor arm
def _tiny_step_and_model():
    import torch

    from grpo_check.demo.model import build_policy, build_tokenizer
    from grpo_check.trace.model import TraceStep

    model = build_policy(build_tokenizer()).eval()
    tensors = {
        "prompt_ids": torch.tensor([[5, 6, 7], [5, 8, 9]]),
        "prompt_mask": torch.ones(2, 3, dtype=torch.long),
        "completion_ids": torch.tensor([[10, 11], [12, 13]]),
        "completion_mask": torch.ones(2, 2, dtype=torch.long),
    }
    return TraceStep(tensors=tensors, meta={}), model


class _CountingModel:
    def __init__(self, model) -> None:
        self.model, self.calls = model, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.model(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.model, name)


def test_the_floor_runs_the_forward_passes_a_check_would_and_checks_nothing() -> None:
    from grpo_check.bench.overhead import _forward_passes_only
    from grpo_check.compare.stages import KnownLogps, model_logps
    from grpo_check.config import GRPOSpec

    step, model = _tiny_step_and_model()
    spec = GRPOSpec(num_generations=2)
    policy, reference = _CountingModel(model), _CountingModel(model)
    known = KnownLogps(reference, model_logps(model, step, spec.temperature), spec.temperature)
    result = _forward_passes_only(step, spec, model=policy, ref_model=known, tolerances=None, invariants=True)
    assert result == ([], [])
    assert policy.calls == 1  # a plain model: its forward pass is part of the floor
    assert reference.calls == 0  # log-probs the adapter already computed are not recomputed
    assert _forward_passes_only(step, spec, model=None, ref_model=None, tolerances=None, invariants=True) == (
        [],
        [],
    )


def test_the_floor_replaces_the_checks_only_while_open() -> None:
    import grpo_check.trl.background as background
    from grpo_check.bench.overhead import _checks_replaced_by_forwards, _forward_passes_only

    original = background.check_captured_step
    with _checks_replaced_by_forwards():
        assert background.check_captured_step is _forward_passes_only
    assert background.check_captured_step is original
    with pytest.raises(KeyboardInterrupt), _checks_replaced_by_forwards():
        raise KeyboardInterrupt
    assert background.check_captured_step is original


@pytest.mark.slow
def test_the_floor_arm_trains_with_capture_and_forwards_and_never_checks(tmp_path, monkeypatch) -> None:
    pytest.importorskip("trl")
    import grpo_check.bench.overhead as overhead
    import grpo_check.trl.background as background

    checks, forwards = [], []
    real_check, real_forwards = background.check_captured_step, overhead._forward_passes_only

    def counted_check(*args, **kwargs):
        checks.append(1)
        return real_check(*args, **kwargs)

    def counted_forwards(*args, **kwargs):
        forwards.append(1)
        return real_forwards(*args, **kwargs)

    monkeypatch.setattr(background, "check_captured_step", counted_check)
    monkeypatch.setattr(overhead, "_forward_passes_only", counted_forwards)
    make_trainer = overhead.demo_trainer_factory()
    floor = overhead._timed_run(make_trainer, 1, 2, forwards_only=True)
    assert len(floor.step_seconds) == 2
    assert forwards and not checks  # every captured step got its forwards, none its checks
    assert background.check_captured_step is counted_check  # the real checks are back after the run
    forwards.clear()
    overhead._timed_run(make_trainer, 1, 2)
    assert checks and not forwards  # the every-step arm checks for real


def test_throughput_steps_hold_the_named_number_of_tokens_and_pass_when_correct() -> None:
    from grpo_check.bench.throughput import measure_throughput, step_shape

    for size in (10_000, 100_000, 1_000_000):
        prompts, length = step_shape(size)
        assert prompts * 8 * length == size
    (figure,) = measure_throughput(sizes=(10_000,), repeats=1)
    assert figure.name == "throughput_10k"
    assert figure.details["tokens"] == 10_000
    assert figure.details["failures_on_correct_step"] == 0
    assert figure.value == pytest.approx(10_000 / figure.details["seconds"])
    assert figure.ok is None and figure.target.startswith("none")  # the 10k step is mostly the fixed cost


def test_the_throughput_target_applies_at_100k_and_1m_tokens(monkeypatch) -> None:
    import grpo_check.bench.throughput as throughput

    monkeypatch.setattr(throughput, "step_shape", lambda size, generations=8: (1, size // 8))
    monkeypatch.setattr(throughput, "median_time", lambda fn, repeats, warmup: 1e-5)  # 100k tokens: 1e10 /s
    figures = {f.name: f for f in throughput.measure_throughput(sizes=(800, 100_000), repeats=1)}
    assert figures["throughput_100k"].target == f">= {throughput.TARGET_TOKENS_PER_S:,}"
    assert figures["throughput_100k"].ok is True
    assert figures["throughput_0k"].ok is None
    monkeypatch.setattr(throughput, "median_time", lambda fn, repeats, warmup: 1.0)  # 100k tokens/s: missed
    slow = {f.name: f for f in throughput.measure_throughput(sizes=(100_000,), repeats=1)}
    assert slow["throughput_100k"].ok is False


def test_fixed_cost_is_one_check_of_a_demo_micro_batch_against_one_millisecond() -> None:
    from grpo_check.bench.throughput import TARGET_FIXED_COST_S, measure_fixed_cost

    figure = measure_fixed_cost(repeats=2)
    assert figure.name == "fixed_cost_demo_micro_batch" and figure.target == "<= 1"
    assert figure.details["rows"] == 8 and figure.details["tokens"] == 48
    assert figure.details["failures_on_correct_step"] == 0
    assert figure.ok is (figure.value <= TARGET_FIXED_COST_S * 1e3)


def test_each_arm_reports_what_the_attachment_itself_accounted_for_in_its_timed_steps(monkeypatch) -> None:
    import grpo_check.bench.overhead as overhead

    def fake_timed_run(make_trainer, every, steps, background=False, **_):
        # every step takes 1 s; an attached arm accounts 0.2 s of it as checking (every=1) or 0.05 s (every=10),
        # and 5 s in each warm-up step, which the figure must leave out with the warm-up steps themselves
        per_step = {None: 0.0, 1: 0.2, 10: 0.05}[every]
        accounted = [5.0] * overhead.WARMUP_STEPS + [per_step] * (steps - overhead.WARMUP_STEPS)
        return overhead.TimedRun([1.0] * steps, 0.0, accounted if every is not None else [])

    monkeypatch.setattr(overhead, "_timed_run", fake_timed_run)
    figures = {f.name: f for f in overhead.measure_overhead(lambda work: None, rounds=2, background=False)}
    assert figures["overhead_every_1_demo"].details["accounted"] == pytest.approx(0.2)
    assert figures["overhead_every_10_demo"].details["accounted"] == pytest.approx(0.05)


def test_table_says_what_the_attachment_itself_accounted_for(monkeypatch) -> None:
    import grpo_check.cli.bench as bench_cli

    attached = BenchFigure("overhead_every_1_demo", 1.3, "x step time", "<= 1.25", False, {"accounted": 0.27})
    off_like = BenchFigure(
        "overhead_every_1_floor_demo", 1.09, "x step time", "none", None, {"accounted": 0.0}
    )
    monkeypatch.setattr(bench_cli, "_measure", lambda selected, **kwargs: [attached, off_like])
    result = CliRunner().invoke(app, ["bench", "--only", "overhead"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert result.output.count("attachment's own") == 1 and "attachment's own: +0.270" in result.output


@pytest.mark.slow
def test_a_timed_run_reads_the_attachments_own_accounting_per_step(tmp_path) -> None:
    pytest.importorskip("trl")
    import grpo_check.bench.overhead as overhead

    make_trainer = overhead.demo_trainer_factory()
    checked = overhead._timed_run(make_trainer, 1, 3)
    assert len(checked.accounted_seconds) == len(checked.step_seconds) == 3
    assert all(
        0 < accounted < step
        for accounted, step in zip(checked.accounted_seconds, checked.step_seconds, strict=True)
    )
    assert overhead._timed_run(make_trainer, None, 3).accounted_seconds == []


def test_an_unusable_output_path_is_refused_before_anything_is_measured(monkeypatch, tmp_path: Path) -> None:
    import grpo_check.cli.bench as bench_cli

    measured = []
    monkeypatch.setattr(bench_cli, "_measure", lambda selected, **kwargs: measured.append(1) or [])
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    for output, message in ((a_file / "x.json", "is a file, not a directory"), (tmp_path, "is a directory")):
        result = _bench("--only", "startup", "-o", str(output))
        assert result.exit_code == 2 and message in result.stderr, result.output
    assert measured == []
    assert _bench("--only", "startup", "-o", str(tmp_path / "new" / "bench.json")).exit_code == 0
    assert measured == [1]


def test_figures_are_printed_even_when_writing_them_fails(fake_figures, monkeypatch, tmp_path: Path) -> None:
    import grpo_check.trace.io as trace_io

    def disk_full(path, text):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(trace_io, "atomic_write_text", disk_full)
    result = _bench("--only", "startup", "--format", "json", "-o", str(tmp_path / "bench.json"))
    assert result.exit_code == 2 and "No space left on device" in result.stderr
    assert json.loads(result.stdout)["figures"][0]["name"] == "startup"


def test_a_ratio_far_below_one_is_reported_as_disturbed_not_met(monkeypatch) -> None:
    """Attached runs only add work; an off arm 5x slower than them means the machine slowed it down."""
    import grpo_check.bench.overhead as overhead
    import grpo_check.cli.bench as bench_cli

    def fake_timed_run(make_trainer, every, steps, background=False, **_):
        return overhead.TimedRun([5.0 if every is None else 1.0] * steps, 0.0)

    monkeypatch.setattr(overhead, "_timed_run", fake_timed_run)
    monkeypatch.setattr(overhead, "_warm_background_helper", lambda *_: None)
    figures = {f.name: f for f in overhead.measure_overhead(lambda work: None, steps=12, rounds=1, warmup=2)}
    every_step = figures["overhead_every_1_demo"]
    assert every_step.value == pytest.approx(0.2)
    assert every_step.ok is None and every_step.details["target_verdict"] == "disturbed"
    monkeypatch.setattr(bench_cli, "_measure", lambda selected, **kwargs: [every_step])
    table = CliRunner().invoke(app, ["bench", "--only", "overhead"], env={"COLUMNS": "200"})
    assert "disturbed" in table.output
    # an ordinary ratio is judged as before
    monkeypatch.setattr(overhead, "_timed_run", lambda make_trainer, every, steps, background=False, **_: (
        overhead.TimedRun([1.0] * steps, 0.0)))  # fmt: skip
    steady = overhead.measure_overhead(lambda work: None, steps=12, rounds=1, warmup=2)[0]
    assert steady.ok is True and steady.details["target_verdict"] != "disturbed"
