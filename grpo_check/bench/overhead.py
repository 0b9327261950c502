"""Training overhead: step time with checking attached ÷ step time without.

Arms run in one process on the same configuration and seed: ``off`` (no grpo-check), ``every=1``
(capture + live float64 comparison on every optimizer step) and ``every=10``. Arms are interleaved round by
round (off, every-1, every-10, off, ...) with a fresh trainer per arm and round, so drift in machine load hits
all arms alike. A callback times each optimizer step (``on_step_begin`` → ``on_step_end``: generation,
scoring, forward/backward, optimizer, and the live check); the first ``warmup`` steps of every run are
dropped and the MEAN over the rest is taken: with ``every=10`` one step in ten carries the check, and a
median would hide exactly that step.

Two more arms check in the background (``attach(..., background=True)``: the float64 comparison, diagnoses and
invariants in a helper process; the helper is started and warmed before the rounds, so its start-up is not a
training step). Their figures carry the same targets. Checks the helper has not finished when training ends
are waited for by ``close()``; that wait is charged to the arm (added to its timed steps' total before the
mean is taken), so work deferred past the last step is not free.

One more arm, ``every_1_floor``, is the floor of checking every step: the attachment captures each step and
runs the reference's forward passes (the policy once per accumulation window, the reference model once per
generation batch) but checks nothing. It has no target; the every-step figure's ``above_floor`` (in step
times without checking) is what the checks themselves add on top of it. Where a target is set for it (the
demo: on a 2-layer policy the floor alone reaches the every-step target, which is retired there), it is a
figure of its own, ``overhead_above_floor_<label>``, with its interval over the rounds.

Targets are per policy: :data:`DEMO_TARGETS`, :data:`REALISTIC_TARGETS` (the 41.7M-parameter policy of
:mod:`grpo_check.bench.policy`, :func:`realistic_trainer_factory`) and :data:`DEFAULT_TARGETS` (a user's
trainer).

Each attached arm also carries ``accounted``: the checking time the attachment itself timed on the training
process in the arm's timed steps (what ``result().metadata["checking"]`` reports and ``budget=`` schedules by),
in step times without checking, beside the ratio the bench measures from outside.

Each figure also carries its ratio round by round (each round against its own ``off`` arm) and, from them,
a 95 % interval (:func:`grpo_check.bench.core.ratio_interval`) with what it says of the target: met, missed,
or undecided when the interval straddles it. ``ok`` stays the point estimate against the target.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from grpo_check.bench.core import (
    BenchFigure,
    difference_interval,
    ratio_interval,
    rounds_to_decide,
    rounds_to_decide_difference,
    target_verdict,
)

DISTURBED_BELOW = 0.8
"""A mean ratio below this says the machine slowed the unchecked arm (attached runs do strictly more work):
the figure is reported as disturbed, neither met nor missed."""
TARGET_EVERY_STEP = 1.25
TARGET_EVERY_10 = 1.03
DEFAULT_TARGETS: dict[str, float] = {"every_1": TARGET_EVERY_STEP, "every_10": TARGET_EVERY_10}
"""Targets of the arms on a user's trainer (``--trainer``); a background arm has its inline arm's target."""
DEMO_TARGETS: dict[str, float] = {"every_10": TARGET_EVERY_10}
"""On the demo's policy the floor alone (capture + the reference's forward passes, no checks) reaches the
every-step target: that target is retired there, and what the checks add above the floor has its own."""
TARGET_ABOVE_FLOOR_DEMO = 0.05
REALISTIC_TARGETS: dict[str, float] = {"every_1": 1.10, "every_10": 1.02}
"""On the policy of :mod:`grpo_check.bench.policy` (41.7M parameters): what checking costs at a size people
train."""
# the floor arm has no target: it is what every-step checking costs with the checks themselves left out
FLOOR_TARGET = "none: capture + forward passes, no checks"


def _step_recorder(attachment: Any = None) -> tuple[Any, list[float], list[float]]:
    """A callback that records, per optimizer step, its wall time (``on_step_begin`` → ``on_step_end``) and,
    with an ``attachment``, the checking time the attachment accounted for in it (its schedule's running
    total, which the last micro-batch of the step updates before the optimizer steps)."""
    from transformers import TrainerCallback

    times: list[float] = []
    accounted: list[float] = []
    total = [0.0]

    class StepRecorder(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self._start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            times.append(time.perf_counter() - self._start)
            if attachment is not None:
                now = attachment.schedule.checking_seconds
                accounted.append(now - total[0])
                total[0] = now

    return StepRecorder(), times, accounted


class TimedRun(NamedTuple):
    step_seconds: list[float]  # per optimizer step, on_step_begin → on_step_end
    finish_seconds: float  # Attachment.close(): waiting for background checks still running (0 when off)
    # per optimizer step, the checking time the attachment itself accounts for on the training process (what
    # result().metadata["checking"] and attach(budget=...) go by); empty when off
    accounted_seconds: Sequence[float] = ()


def _forward_passes_only(
    step: Any, spec: Any, *, model: Any, ref_model: Any, tolerances: Any, invariants: bool
) -> tuple[list[Any], list[str]]:
    """``check_captured_step`` without the checks: only the forward passes it would run (none where the
    adapter already computed the log-probs for these rows: ``KnownLogps``). What checking cannot avoid."""
    from grpo_check.stepref.forward import model_logps

    for forward in (model, ref_model):
        if forward is not None:
            model_logps(forward, step, spec.temperature)
    return [], []


@contextlib.contextmanager
def check_captured_step_replaced(
    replacement: Callable[[Callable[..., Any]], Callable[..., Any]],
) -> Iterator[None]:
    """While open, live checking calls ``replacement(check_captured_step)`` for each captured step instead of
    ``check_captured_step`` (the attachment looks it up at call time). For experiments that leave checks out."""
    from grpo_check.trl import background

    original = background.check_captured_step
    background.check_captured_step = replacement(original)
    try:
        yield
    finally:
        background.check_captured_step = original


def _checks_replaced_by_forwards() -> contextlib.AbstractContextManager[None]:
    """While open, live checking captures steps and runs the reference's forward passes, and checks nothing."""
    return check_captured_step_replaced(lambda original: _forward_passes_only)


def _timed_run(
    make_trainer: Callable[[Path], Any],
    every: int | None,
    steps: int,
    background: bool = False,
    *,
    during_training: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
    forwards_only: bool = False,
) -> TimedRun:
    """Build a trainer, optionally attach grpo-check, train ``steps`` steps; per-step seconds and the time
    ``close()`` then took.

    ``during_training()`` is entered around ``trainer.train()`` only (a profiler, say), not around the
    set-up or the final ``close()``. ``forwards_only``: the attachment captures and runs the forward passes
    but checks nothing (the floor arm; inline only)."""
    from grpo_check.trl import attach

    work = Path(tempfile.mkdtemp(prefix="grpo-check-bench-"))
    try:
        trainer = make_trainer(work)
        trainer.args.max_steps = steps
        attachment = (
            attach(trainer, every=every, live=True, background=background) if every is not None else None
        )
        recorder, times, accounted = _step_recorder(attachment)
        trainer.add_callback(recorder)
        # the floor arm's checks stay left out through close(), which checks any window still open
        with _checks_replaced_by_forwards() if forwards_only else contextlib.nullcontext():
            with during_training():
                trainer.train()
            finish = 0.0
            if attachment is not None:
                start = time.perf_counter()
                attachment.close()  # waits for the background checks still running
                finish = time.perf_counter() - start
        return TimedRun(times, finish, accounted)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def demo_trainer_factory(seed: int = 0, **policy_size: int) -> Callable[[Path], Any]:
    """The demo configuration (the first cell of the fast matrix) on the embedded tiny model, or on a policy of
    ``hidden_size`` and ``num_layers`` (:func:`grpo_check.demo.run.build_trainer`'s keywords)."""
    from grpo_check.demo.matrix import cells
    from grpo_check.demo.run import build_trainer

    cell = cells("fast")[0]
    return lambda work: build_trainer(cell, work, seed=seed, **policy_size)


def realistic_trainer_factory(seed: int = 0) -> Callable[[Path], Any]:
    """The demo configuration on the policy of :mod:`grpo_check.bench.policy` (41.7M parameters, a 32k
    vocabulary). The policy is built and saved once, on the first trainer, into a folder removed when the
    factory is: every trainer loads the same weights from it (TRL only reads it), and a round's set-up does
    not pay seconds of random initialisation per arm."""
    import copy
    import weakref

    from grpo_check.bench.policy import build_tokenizer, save_policy
    from grpo_check.demo.matrix import cells
    from grpo_check.demo.run import build_trainer

    cell = cells("fast")[0]
    saved: dict[str, Any] = {}

    def make(work: Path) -> Any:
        if not saved:
            folder = tempfile.mkdtemp(prefix="grpo-check-bench-policy-")
            saved["finalizer"] = weakref.finalize(make, shutil.rmtree, folder, True)
            saved["dir"] = save_policy(Path(folder) / "policy", seed=seed)
            saved["tokenizer"] = build_tokenizer()
        tokenizer = copy.deepcopy(saved["tokenizer"])  # a trainer may set options on its tokenizer
        return build_trainer(cell, work, seed=seed, model_dir=saved["dir"], tokenizer=tokenizer)

    return make


def user_trainer_factory(factory_ref: str) -> Callable[[Path], Any]:
    """A user's ``path/to/train.py:build_trainer`` factory (see ``grpo-check compare --trainer``)."""
    from grpo_check.trl.runner import build_from_factory

    return lambda work: build_from_factory(factory_ref, steps=1)


class _Round(NamedTuple):
    """One arm's run in one round. ``seconds`` includes ``close_wait``: the wait for unfinished background
    checks is part of the cost, spread over the arm's timed steps."""

    seconds: float  # the timed steps (warm-up dropped) plus close()'s wait
    steps: int  # timed steps
    close_wait: float
    accounted: float = 0.0  # of ``seconds``, what the attachment accounted for as checking (timed steps)

    @property
    def per_step(self) -> float:
        return self.seconds / max(self.steps, 1)


WARMUP_STEPS = 2


def check_steps(steps: int, warmup: int = WARMUP_STEPS) -> None:
    """Raise ``InputError`` unless the timed steps (after ``warmup``) are whole tens: the every-10th arm checks
    steps 0, 10, 20, ..., so only then does its mean carry exactly one checked step in ten."""
    from grpo_check.findings import InputError

    timed = steps - warmup
    if timed < 10 or timed % 10:
        raise InputError(
            f"--steps must be {warmup} warm-up steps plus whole tens (12, 22, 32, ...), got {steps}: the "
            "every-10th figure needs one checked step in each ten timed steps",
            field="steps",
        )


def _warm_background_helper(make_trainer: Callable[[Path], Any], steps: int) -> None:
    """Start the background helper before the rounds: its start-up is not a training step. That is importing
    torch and transformers, and, in one untimed background run of ``steps`` steps, what the helper's first
    copy of the model imports and builds (seconds, once per process)."""
    from grpo_check.trl.background import shared_checker

    shared_checker().warm(models=True)
    _timed_run(make_trainer, 1, steps, True)


def measure_overhead(
    make_trainer: Callable[[Path], Any],
    *,
    steps: int = 12,
    rounds: int = 3,
    warmup: int = WARMUP_STEPS,
    label: str = "demo",
    background: bool = True,
    on_round: Callable[[int, dict[str, float]], None] | None = None,
    targets: Mapping[str, float] | None = None,
    above_floor_target: float | None = None,
    policy: str | None = None,
) -> list[BenchFigure]:
    """Mean step-time ratios (attached ÷ off) for every=1 and every=10 (amortised cost per step), checking
    inline (the default) and, with ``background``, in the helper process as well.

    ``targets`` maps an inline arm (``every_1``, ``every_10``) to its target ratio (default
    :data:`DEFAULT_TARGETS`; an arm left out has none). With ``above_floor_target``, one more figure,
    ``overhead_above_floor_<label>``: what the checks add to the floor when checking every step, in step
    times without checking, against that target. ``policy`` names the policy in every figure's details.

    ``on_round(round_number, ratios)`` is called after each round with that round's ratio per checked arm
    (progress for the command line: a run takes minutes). ``steps`` must be ``warmup`` plus whole tens
    (:func:`check_steps`)."""
    check_steps(steps, warmup)
    # arm: (every, in the background, forward passes only)
    plan = {
        "off": (None, False, False),
        "every_1": (1, False, False),
        "every_10": (10, False, False),
        "every_1_floor": (1, False, True),
    }
    if background:
        _warm_background_helper(make_trainer, warmup)
        plan.update({"every_1_background": (1, True, False), "every_10_background": (10, True, False)})
    runs: dict[str, list[_Round]] = {arm: [] for arm in plan}
    for round_number in range(1, rounds + 1):
        for arm, (every, in_background, forwards_only) in plan.items():
            run = _timed_run(make_trainer, every, steps, in_background, forwards_only=forwards_only)
            timed = run.step_seconds[warmup:]
            accounted = sum(run.accounted_seconds[warmup:])
            runs[arm].append(
                _Round(sum(timed) + run.finish_seconds, len(timed), run.finish_seconds, accounted)
            )
        if on_round is not None:
            off = runs["off"][-1].per_step
            on_round(round_number, {arm: r[-1].per_step / off for arm, r in runs.items() if arm != "off"})
    mean = {
        arm: sum(r.seconds for r in records) / sum(r.steps for r in records) for arm, records in runs.items()
    }
    figures = []
    targets = DEFAULT_TARGETS if targets is None else targets
    for arm, records in runs.items():
        if arm == "off":
            continue
        target = targets.get(arm.removesuffix("_background"))
        ratio = mean[arm] / mean["off"]
        # the same ratio round by round (each against the off arm of its own round): its spread shows how
        # far machine load moves the figure, and gives the figure's 95 % interval
        round_ratios = [on.per_step / off.per_step for on, off in zip(records, runs["off"], strict=True)]
        interval = ratio_interval(round_ratios)
        verdict = None if target is None else target_verdict(interval, target)
        disturbed = ratio < DISTURBED_BELOW
        if disturbed:  # checking cannot make training this much faster: the off arm was slowed down
            verdict = "disturbed"
        details = {
            "mean_step_s": mean[arm],
            "mean_step_off_s": mean["off"],
            "close_wait_s": sum(r.close_wait for r in records),
            "steps_timed": sum(r.steps for r in records),
            "rounds": rounds,
            "round_ratios": round_ratios,
            "ci95": None if interval is None else list(interval),
            "target_verdict": verdict,
            # where undecided: about how many rounds at this spread would tell (None: not even 200)
            "rounds_to_decide": rounds_to_decide(round_ratios, target) if verdict == "undecided" else None,
        }
        # what the attachment itself accounted for, per timed step, in step times without checking: the
        # cost result().metadata["checking"] reports and attach(budget=...) schedules by; the rest of
        # ratio − 1 is time it does not see (and noise)
        details["accounted"] = sum(r.accounted for r in records) / details["steps_timed"] / mean["off"]
        if arm == "every_1":  # how much of checking every step is the checks themselves
            details["above_floor"] = (mean["every_1"] - mean["every_1_floor"]) / mean["off"]
        if policy is not None:
            details["policy"] = policy
        figures.append(
            BenchFigure(
                name=f"overhead_{arm}_{label}",
                value=ratio,
                unit="x step time without checking",
                target=f"<= {target}" if target is not None else _no_target(arm, label, above_floor_target),
                ok=None if target is None or disturbed else ratio <= target,
                details=details,
            )
        )
    if above_floor_target is not None:
        figures.append(_above_floor_figure(runs, mean, label=label, target=above_floor_target, policy=policy))
    return figures


def _no_target(arm: str, label: str, above_floor_target: float | None) -> str:
    """The target column of an arm without a target: the floor's, or where the checks' own figure is."""
    if arm == "every_1_floor":
        return FLOOR_TARGET
    if arm == "every_1" and above_floor_target is not None:
        return f"none: the checks' cost is overhead_above_floor_{label}"
    return "none"


def _above_floor_figure(
    runs: Mapping[str, Sequence[_Round]],
    mean: Mapping[str, float],
    *,
    label: str,
    target: float,
    policy: str | None,
) -> BenchFigure:
    """What the checks add to the floor when checking every step, in step times without checking (the
    every-step arm minus the floor arm, over the off arm), with its 95 % interval over the rounds (each round
    against its own off arm) and what the interval says of ``target``."""
    value = (mean["every_1"] - mean["every_1_floor"]) / mean["off"]
    round_values = [
        (every.per_step - floor.per_step) / off.per_step
        for every, floor, off in zip(runs["every_1"], runs["every_1_floor"], runs["off"], strict=True)
    ]
    interval = difference_interval(round_values)
    verdict = target_verdict(interval, target)
    # the every-step and floor ratios it comes from: either far below 1 says the off arm was slowed down
    disturbed = min(mean["every_1"], mean["every_1_floor"]) / mean["off"] < DISTURBED_BELOW
    if disturbed:
        verdict = "disturbed"
    details: dict[str, Any] = {
        "mean_step_every_1_s": mean["every_1"],
        "mean_step_floor_s": mean["every_1_floor"],
        "mean_step_off_s": mean["off"],
        "rounds": len(round_values),
        "round_values": round_values,
        "ci95": None if interval is None else list(interval),
        "target_verdict": verdict,
        "rounds_to_decide": (
            rounds_to_decide_difference(round_values, target) if verdict == "undecided" else None
        ),
    }
    if policy is not None:
        details["policy"] = policy
    return BenchFigure(
        name=f"overhead_above_floor_{label}",
        value=value,
        unit="x step time without checking, above the floor",
        target=f"<= +{target}",
        ok=None if disturbed else value <= target,
        details=details,
    )
