"""`grpo-check bench`: measure the cost of checking (overhead, memory, throughput, start-up)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from grpo_check.cli._common import ExitCode, OutputFormat, check_output_file, fail_usage, user_errors

_FIGURES = ("startup", "memory", "throughput", "overhead", "overhead-realistic")
_OVERHEAD = ("overhead", "overhead-realistic")


def bench(
    only: list[str] = typer.Option(
        None, "--only", help=f"Measure only these figures (repeatable): {', '.join(_FIGURES)}. Default: all."
    ),
    trainer: str = typer.Option(
        None,
        "--trainer",
        help="Also measure training overhead on your own factory, `path/to/train.py:build_trainer`.",
    ),
    steps: int = typer.Option(
        12,
        "--steps",
        help="Optimizer steps per timed training run (overhead, overhead-realistic): 2 warm-up steps plus "
        "whole tens (12, 22, ...).",
    ),
    rounds: int = typer.Option(
        3,
        "--rounds",
        min=1,
        help="Interleaved rounds per arm (overhead, overhead-realistic); more rounds, a narrower 95 % interval.",
    ),
    threads: int = typer.Option(
        None,
        "--threads",
        min=1,
        help="torch intra-op threads for the measured work (default: torch's own, one per core).",
    ),
    naive: bool = typer.Option(
        False,
        "--naive",
        help="Also measure a naive float64 log-softmax for comparison (needs ~15 GiB: 12x the logits).",
    ),
    output_format: str = typer.Option("text", "--format", "-f", help="text or json."),
    output: Path = typer.Option(None, "--output", "-o", help="Also write the JSON figures to this file."),
    check_targets: bool = typer.Option(False, "--check", help="Exit 1 when a figure misses its target."),
) -> None:
    """Measure what checking costs, with the product itself, and print each figure beside its target.

    Figures: **overhead** (step time attached ÷ without, every step and every 10th, on the demo and on
    `--trainer`; plus the floor: every step with the forward passes run and the checks left out, and on the
    demo what the checks add above that floor), **overhead-realistic** (the same, inline, on a 41.7M-parameter
    Llama with a 32k vocabulary built from code: the cost at a size people train), **memory** (float64
    log-probs + entropy over B=2, T=2048, V=151,936 bf16 logits, above the logits), **throughput** (tokens/s
    of the invariant + compare suite at 10k, 100k, 1M tokens, and its fixed cost: the least time of one
    check of a demo-sized micro-batch) and **startup** (`grpo-check --help` ÷ `import torch`).

    Examples:

        grpo-check bench --only startup --only memory

        grpo-check bench --format json -o reports/bench.json

        grpo-check bench --only overhead --trainer examples/train_factory.py:build_trainer

        grpo-check bench --only overhead --threads 1     # leave the second core to background checking

        grpo-check bench --only overhead --rounds 20 --trainer benchmarks/wider_policy_factory.py:build_trainer

        grpo-check bench --only overhead-realistic --rounds 3 -o reports/bench/overhead-realistic.json

    Each overhead figure comes with its 95 % interval over the rounds (Student's t on the round-by-round
    ratios); where the interval straddles the target the table says "within noise": this run cannot tell
    whether the target is met, and says about how many `--rounds` at the same spread would. Under each
    attached arm, "attachment's own" is the checking time the attachment itself timed (what
    `result().metadata["checking"]` reports and `budget=` schedules by), in step times without checking.
    A mean ratio below 0.8x is marked "disturbed" (neither met nor missed): checking only adds work, so
    the machine slowed the run without it; measure again, with more `--rounds`.

    The memory figure allocates 1.2 GiB of bf16 logits (process peak about 1.6 GiB); `--naive` adds about
    12x the logits on top (about 15 GiB: a float64 log-softmax and its exp() product). Overhead trains the
    demo model (minutes on a CPU); overhead-realistic trains the 41.7M-parameter policy (steps of one to a
    few seconds on 2 cores: about 2 minutes a round at 12 steps, a peak of about 1.7 GB; on a machine other
    work keeps busy, add `--threads 1`) and has no background arms (the helper does not take copies of
    models over 64 MiB, so their forward passes, most of the cost at this size, stay on the training
    process anyway).

    Exit codes: 0 measured (with `--check`: every figure met its target), 1 with `--check` a figure missed
    its target, 2 usage error (unknown figure or format, bad `--steps` or `--trainer`, unwritable
    `--output`), 130 interrupted (Ctrl-C): the figures measured before it are still printed and written.
    """
    selected = list(only or _FIGURES)
    unknown = sorted(set(selected) - set(_FIGURES))
    if unknown:
        raise fail_usage(f"unknown figure(s) {', '.join(unknown)}; choose from {', '.join(_FIGURES)}")
    output_format = OutputFormat.parse(
        output_format,
        (OutputFormat.TEXT, OutputFormat.JSON),
        message=f"--format must be text or json, got {output_format!r}",
    )
    if any(figure in selected for figure in _OVERHEAD):
        from grpo_check.bench.overhead import check_steps

        with user_errors():
            check_steps(steps)
    if trainer:
        if "overhead" not in selected:
            raise fail_usage(
                "--trainer is measured by the overhead figure: add --only overhead (or drop --only)"
            )
        _check_factory_reference(trainer)
    if output is not None:
        check_output_file(output)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    collected: list = []  # filled figure by figure: an interrupt keeps what was measured
    interrupted = False
    with user_errors():
        try:
            figures = _measure(
                selected, trainer=trainer, steps=steps, rounds=rounds, naive=naive, into=collected
            )
        except KeyboardInterrupt:
            figures, interrupted = collected, True
    from grpo_check.bench import machine_description

    payload: dict = {"machine": machine_description(), "figures": [f.to_dict() for f in figures]}
    if interrupted:
        payload["interrupted"] = True
    if output_format == "json":  # printed first: a failed write below must not lose the figures
        typer.echo(json.dumps(payload, indent=2))
    else:
        _print_table(payload)
    if output is not None:
        from grpo_check.trace.io import atomic_write_text

        with user_errors():
            atomic_write_text(output, json.dumps(payload, indent=2) + "\n")
    if interrupted:
        typer.secho(
            f"interrupted: the {len(figures)} figure(s) measured before it are shown"
            + (f" and written to {output}" if output is not None else ""),
            err=True,
        )
        raise typer.Exit(ExitCode.INTERRUPTED)
    if check_targets and any(f.ok is False for f in figures):
        raise typer.Exit(ExitCode.FINDINGS)


def _check_factory_reference(reference: str) -> None:
    """Fail fast (before minutes of demo training) on a --trainer that cannot be loaded: the file imports
    and holds the function."""
    path, sep, name = reference.rpartition(":")
    if not sep or not path or not name.isidentifier():
        raise fail_usage(f"--trainer must be path/to/train.py:function_name, got {reference!r}")
    if not Path(path).is_file():
        raise fail_usage(f"--trainer {reference}: no such file {path}")
    from grpo_check.trl.runner import load_factory

    with user_errors():
        load_factory(reference)


def _measure(
    selected: list[str],
    *,
    trainer: str | None,
    steps: int,
    rounds: int,
    naive: bool,
    into: list | None = None,
) -> list:
    """Measure the selected figures, appending each to ``into`` (returned) as soon as it is measured."""
    figures = into if into is not None else []

    def progress(message: str) -> None:
        typer.secho(f"bench: {message}", err=True, fg=typer.colors.BRIGHT_BLACK)

    if "startup" in selected:
        from grpo_check.bench.startup import measure_startup

        progress("start-up (grpo-check --help vs import torch) ...")
        figures.append(measure_startup())
    if "memory" in selected:
        from grpo_check.bench.memory import measure_memory

        progress("reference log-prob memory (B=2, T=2048, V=151,936 bf16) ...")
        figures.append(measure_memory())
        if naive:
            progress("naive float64 log-softmax for comparison ...")
            figures.append(measure_memory(naive=True))
    if "throughput" in selected:
        from grpo_check.bench.throughput import measure_fixed_cost, measure_throughput

        progress("check throughput at 10k, 100k, 1M tokens, and the fixed cost of a demo micro-batch ...")
        figures.extend(measure_throughput())
        figures.append(measure_fixed_cost())

    def round_done(round_number: int, ratios: dict[str, float]) -> None:
        shown = ", ".join(f"{arm} {ratio:.2f}x" for arm, ratio in ratios.items())
        progress(f"  round {round_number}/{rounds}: {shown}")

    if "overhead" in selected:
        from grpo_check.bench import overhead
        from grpo_check.bench.overhead import demo_trainer_factory, measure_overhead, user_trainer_factory

        progress(
            f"training overhead on the demo ({rounds} rounds x 6 arms x {steps} steps: off, every step and "
            "every 10th, inline and in the background, and the floor: capture + forwards, no checks) ..."
        )
        figures.extend(
            measure_overhead(
                demo_trainer_factory(),
                steps=steps,
                rounds=rounds,
                label="demo",
                on_round=round_done,
                targets=overhead.DEMO_TARGETS,
                above_floor_target=overhead.TARGET_ABOVE_FLOOR_DEMO,
            )
        )
        if trainer:
            progress(f"training overhead on {trainer} ...")
            figures.extend(
                measure_overhead(
                    user_trainer_factory(trainer),
                    steps=steps,
                    rounds=rounds,
                    label="user",
                    on_round=round_done,
                )
            )
    if "overhead-realistic" in selected:
        from grpo_check.bench import overhead, policy

        progress(
            f"training overhead on a realistic policy ({policy.describe()}; {rounds} rounds x 4 arms x "
            f"{steps} steps: off, every step, every 10th and the floor, inline) ..."
        )
        figures.extend(
            overhead.measure_overhead(
                overhead.realistic_trainer_factory(),
                steps=steps,
                rounds=rounds,
                label="realistic",
                background=False,
                on_round=round_done,
                targets=overhead.REALISTIC_TARGETS,
                policy=policy.describe(),
            )
        )
    return figures


def _print_table(payload: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    machine = payload["machine"]
    table = Table(title="grpo-check bench", title_justify="left")
    table.add_column("figure", overflow="fold")  # folded, never cut: the name says which arm it is
    for column in ("value", "unit", "target", "ok"):
        table.add_column(column)
    policies: dict[
        str, tuple[str, float | None]
    ] = {}  # figure-name suffix: (policy, step time without checking)
    for fig in payload["figures"]:
        ok = {True: "[green]yes[/]", False: "[red]no[/]", None: "-"}[fig["ok"]]
        details = fig.get("details") or {}
        # a difference of step-time ratios (the checks above the floor) reads with its sign
        signed = "round_values" in details
        number = "{:+.3f}" if signed else "{:.3f}"
        value = f"{fig['value']:,.0f}" if fig["value"] >= 1000 else number.format(fig["value"])
        if details.get("policy"):
            label = fig["name"].rsplit("_", 1)[-1]
            policies.setdefault(label, (details["policy"], details.get("mean_step_off_s")))
        interval = details.get("ci95")
        if interval:  # the figure's 95 % interval over the rounds, and what it says of the target
            value += f"\n95 %: {number.format(interval[0])}–{number.format(interval[1])}"
            if details.get("target_verdict") == "undecided":
                needed = details.get("rounds_to_decide")
                ok += "\n[yellow]within noise[/]" + (
                    f"\n~{needed} rounds to tell" if needed else "\n(on the target)"
                )
        if details.get("target_verdict") == "disturbed":  # see DISTURBED_BELOW
            ok = "[yellow]disturbed[/]\n(below 0.8x:\nmeasure again)"
        rounds = details.get("round_values" if signed else "round_ratios")
        if rounds and len(rounds) > 1:  # how far machine load moved it: the lowest and highest round
            spread = "{:+.2f}" if signed else "{:.2f}"
            value += f"\n(rounds {spread.format(min(rounds))}–{spread.format(max(rounds))})"
        if details.get("above_floor") is not None:  # what the checks add to capture + forward passes
            value += f"\nchecks: {details['above_floor']:+.3f} over the floor"
        if details.get("accounted"):  # what the attachment itself timed as checking (its budget's view)
            value += f"\nattachment's own: {details['accounted']:+.3f}"
        table.add_row(fig["name"], value, fig["unit"], fig["target"], ok)
    console = Console()
    console.print(table)
    console.print(
        f"machine: {machine.get('cpu_model', machine.get('processor'))}, {machine.get('cpu_count')} cores, "
        f"torch {machine.get('torch')} ({machine.get('torch_threads')} thread(s)), Python {machine.get('python')}"
    )
    for label, (policy, step_seconds) in policies.items():
        step = f"; a step without checking {step_seconds:.2f} s" if step_seconds else ""
        console.print(f"overhead_*_{label}: {policy}{step}")


def register(app: typer.Typer) -> None:
    app.command("bench")(bench)
