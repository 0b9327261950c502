"""``grpo-check compare``: a trace stage by stage against the float64 reference (or another trace)."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

import typer

from grpo_check.cli._common import (
    EXIT_CRASHED,
    ExitCode,
    fail_usage,
    refuse_output_inside,
    silence_closed_streams,
    user_errors,
)

_HELP = """
Compare a GRPO trainer with the float64 reference GRPO, stage by stage: each stage is fed the trainer's
OWN upstream tensors (its rewards → reference advantages; its logps/old_logps/advantages → reference ratio,
KL, loss; its logps → reference ∂loss/∂logps), so a bug shows in the stage where it lives. An end-to-end
pass (`e2e.*`) runs as well. Every failing comparison is diagnosed (which known bug it looks like, with
its bug-catalog id and a fix); legitimate convention differences (population std, ε size) are reported as
`convention`, not failures. Invariants run on every step too.

`--trainer PATH.py:FUNCTION` is the full check: the factory's GRPOTrainer trains `--steps` optimizer steps
with grpo-check attached, and every micro-batch is compared live, including the reference's OWN forward
passes of the policy and of the reference model (the trainer's per-token log-probs are checked, not
trusted). The captured trace is written to `<output>/trace`, replacing the one an earlier run left there once the
new one is saved (until then it waits in `<output>/trace.earlier`; a factory that fails puts it back).
Those forward passes run on a subset of each accumulation window's rows that covers every prompt padding,
truncated and EOS-ended rows, every completion-length bucket, every group and micro-batch (at least a
quarter of the rows); every row keeps the other checks. `--forward-rows all` runs them on every row.

A recorded TRACE is compared offline; its forward log-probs are checked only with `--model PATH` (and the
reference model's with `--ref-model PATH`): local directories loaded with `from_pretrained`, holding the
weights the trace's first captured step was computed with (later steps trained past them and are not
forward-checked).

Coverage is part of the verdict: every report lists which check families ran (rewards and advantages,
forward log-probs, reference-model forward, loss, ∂loss/∂logps, probes, re-derivations, invariants) and
which could not, why, and how to supply what they need. Where the model was at hand (`--trainer`,
`--model`), a core family that could not run makes the run INCOMPLETE (exit 4) instead of OK; without a
model the headline reads `OK (partial: …)` and names what to pass.

Reports (report.md, report.html, result.json, junit.xml) are written atomically into `--output`
(default `reports/<trace name>`); a failing comparison also writes a replayable repro there (`repro/`).

Examples:

    grpo-check compare --trainer examples/train_factory.py:build_trainer --steps 2

    grpo-check compare traces/run1

    grpo-check compare traces/run1 --model checkpoints/step0 --ref-model checkpoints/ref

    grpo-check compare traces/run1 --format md --output reports/run1

    grpo-check compare traces/gas4 --against traces/gas1

    grpo-check compare traces/run1 --tolerance grad.logps_grad=1e-3,1e-8 --strict

With `--trainer`, the trainer's own output (its log lines) goes to stderr, so that stdout holds only the
chosen format. A trainer that raises during training, or a SIGINT/SIGTERM, stops training but not the
check: one line names the exception and where (your file and line), what was captured is compared and
saved, and the exit code says how training ended.

Tolerances: `--tolerance CHECK=RTOL,ATOL` (repeatable) overrides one check id (`loss.per_token`) or one
quantity (`logps`); the whole policy is written into every report.

Exit codes: 0 clean, 1 findings (with --strict also warnings), 2 usage or input error, 3 the trainer or its
factory crashed, 4 incomplete coverage (a core check could not run although the model was at hand; accept
with --allow-partial), 130 / 143 training interrupted by SIGINT / SIGTERM.
"""


def _progress_bar(total: int, label: str):
    """A rich progress bar on stderr; returns (callback, close)."""
    try:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    except ImportError:  # pragma: no cover - rich is a dependency
        return (lambda done, total: None), (lambda: None)
    console = Console(stderr=True)
    if total <= 1 or not console.is_terminal:
        return (lambda done, total: None), (lambda: None)
    progress = Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
    task = progress.add_task(label, total=total)
    progress.start()

    def update(done: int, _total: int) -> None:
        progress.update(task, completed=done)

    return update, progress.stop


def parse_tolerances(values: list[str] | None):
    from grpo_check.compare.tolerances import TolerancePolicy

    overrides: dict[str, tuple[float, float]] = {}
    for value in values or []:
        key, pair = TolerancePolicy.parse_override(value)
        if key in overrides:
            raise fail_usage(f"--tolerance {key} is given twice ({overrides[key]} and {pair}); give it once")
        overrides[key] = pair
    return TolerancePolicy(overrides=overrides)


def emit(
    result: Any,
    *,
    output_format: str,
    out_dir: Path,
    strict: bool,
    trace: Any = None,
    repro: bool = True,
    allow_partial: bool = False,
) -> ExitCode:
    """Write the reports, print the chosen rendering, write a repro on failure; return the exit code."""
    from grpo_check.findings import InputError
    from grpo_check.report import normalise_format, render, write_report, write_repro

    fmt = normalise_format(output_format)
    if allow_partial:
        result.metadata["allow_partial"] = True  # the headline and every report agree with the exit code
    paths = write_report(result, out_dir)
    code = ExitCode(result.exit_code(strict=strict, allow_partial=allow_partial))
    repro_path = None
    if code and repro and trace is not None:
        with contextlib.suppress(InputError):
            repro_path = write_repro(trace, None, result, out_dir / "repro")
    # everything is written before anything is printed: a reader that stops early (`| head`) costs neither the
    # files nor the exit code
    with _reader_may_stop():
        if fmt == "text":
            from grpo_check.report.terminal import render_terminal

            typer.echo(render_terminal(result, color=sys.stdout.isatty()))
        else:
            typer.echo(render(result, fmt, strict=strict), nl=False)
        written = ", ".join(str(p) for p in paths.values())
        typer.secho(f"reports: {written}", err=True)
        if repro_path is not None:
            typer.secho(f"repro: {repro_path} (replay with: grpo-check compare {repro_path})", err=True)
        outcome = result.metadata.get("outcome") or {}
        if outcome.get("line"):
            typer.secho(f"error: {outcome['line']}", err=True, fg=typer.colors.RED)
    return code


@contextlib.contextmanager
def _reader_may_stop():
    """A closed stdout or stderr (the reader stopped) ends the printing quietly; the caller goes on."""
    try:
        yield
    except BrokenPipeError:
        silence_closed_streams()


def load_local_model(path: Path, option: str) -> Any:
    """A causal LM from a local ``from_pretrained`` directory (never the hub), in float32 and eval mode; exit 2
    with one line when it is not one."""
    if not path.is_dir():
        raise fail_usage(f"{option} {path}: not a directory (a local from_pretrained directory is needed)")
    if not (path / "config.json").is_file():
        raise fail_usage(f"{option} {path}: no config.json (a local from_pretrained directory is needed)")
    try:
        import torch
        from transformers import AutoModelForCausalLM
    except ModuleNotFoundError as exc:
        raise fail_usage(f"{option} needs transformers ({exc.name} missing)") from None
    with contextlib.suppress(Exception):  # no progress bars on the terminal
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, dtype=torch.float32)
    except Exception as exc:  # a broken or foreign directory: one line, not a traceback
        message = " ".join(str(exc).split())[:300]
        raise fail_usage(
            f"{option} {path}: cannot load a causal LM ({type(exc).__name__}: {message})"
        ) from None
    return model.eval()


def first_step_weights(trace: Any, model: Any) -> Any:
    """``step -> model`` for the steps computed with the weights the trace started from (its first optimizer
    step); later steps trained past them and get no forward check."""
    numbers = [s.meta.get("step") for s in trace.steps if s.meta.get("scope", "micro_batch") == "micro_batch"]
    first = min((n for n in numbers if isinstance(n, int)), default=None)

    def for_step(step: Any) -> Any:
        return model if step.meta.get("step") in (first, None) else None

    return for_step


def _set_earlier_trace_aside(trace_dir: Path) -> Path | None:
    """An earlier ``compare --trainer`` run's trace in the report folder makes way for the new one (streamed
    there step by step): it is renamed to ``trace.earlier`` until the new run's trace is saved, and returned.
    ``None`` when there is none; anything else at that path is left for the writer to refuse. A
    ``trace.earlier`` already there (a run that stopped before it could finish) is never overwritten."""
    if not (trace_dir.is_dir() and not trace_dir.is_symlink() and (trace_dir / "manifest.json").is_file()):
        return None
    aside = trace_dir.with_name(trace_dir.name + ".earlier")
    if aside.exists() or aside.is_symlink():
        raise fail_usage(
            f"{aside} holds the trace of an earlier run that stopped before a new trace replaced it: move or "
            "delete it, then run again"
        )
    trace_dir.rename(aside)
    return aside


def _settle_earlier_trace(aside: Path | None, trace_dir: Path, *, replaced: bool) -> None:
    """Drop the earlier trace once the new one is saved (``replaced``); else put it back where nothing new was
    written, or leave it aside beside what the new run captured."""
    import shutil

    if aside is None:
        return
    if replaced:
        shutil.rmtree(aside)
    elif not trace_dir.exists():
        aside.rename(trace_dir)
    else:
        typer.secho(f"note: the earlier run's trace is kept in {aside}", err=True)


def register(app: typer.Typer) -> None:
    @app.command("compare", help=_HELP)
    def compare_command(
        trace_path: Path | None = typer.Argument(None, metavar="TRACE", help="Trace directory to compare."),
        against: Path | None = typer.Option(
            None, "--against", help="Compare with this other trace instead of the reference."
        ),
        trainer: str | None = typer.Option(
            None,
            "--trainer",
            help="The full check: build the GRPOTrainer PATH.py:FUNCTION returns, train it with grpo-check attached, "
            "compare every micro-batch live (forward passes included).",
        ),
        steps: int | None = typer.Option(
            None, "--steps", help="Optimizer steps to run with --trainer (default 2)."
        ),
        output_format: str = typer.Option(
            "text", "--format", "-f", help="Printed format: text, md, html, json, junit."
        ),
        output: Path | None = typer.Option(
            None,
            "--output",
            "-o",
            help="Report directory (default: reports/ and the trace's or the factory file's name).",
        ),
        tolerance: list[str] | None = typer.Option(
            None, "--tolerance", help="CHECK=RTOL,ATOL override (repeatable), e.g. loss.per_token=1e-4,1e-6."
        ),
        strict: bool = typer.Option(False, "--strict", help="Exit 1 on warnings too."),
        no_invariants: bool = typer.Option(
            False, "--no-invariants", help="Skip the single-trace invariants."
        ),
        no_probes: bool = typer.Option(
            False, "--no-probes", help="With --trainer: do not probe the trainer's own loss code."
        ),
        model: Path | None = typer.Option(
            None,
            "--model",
            help="With a TRACE: the policy (a local from_pretrained directory, weights of the first captured "
            "step) for the forward log-prob checks.",
        ),
        ref_model: Path | None = typer.Option(
            None,
            "--ref-model",
            help="With a TRACE: the reference model (a local from_pretrained directory) for its forward check.",
        ),
        allow_partial: bool = typer.Option(
            False,
            "--allow-partial",
            help="Accept incomplete coverage: exit 0 instead of 4 when a core check could not run.",
        ),
        forward_rows: str | None = typer.Option(
            None,
            "--forward-rows",
            help="With --trainer: the rows the reference's own forward passes run on: subset (default; every "
            "prompt padding, truncated and EOS-ended rows, every group and micro-batch, at least a quarter of "
            "the rows) or all. A TRACE with --model is checked on every row.",
        ),
    ) -> None:
        with user_errors():
            from grpo_check.compare import compare
            from grpo_check.report import make_output_dir, normalise_format
            from grpo_check.trace.io import load_trace, save_trace

            normalise_format(output_format)
            policy = parse_tolerances(tolerance)
            if (trace_path is None) == (trainer is None):
                raise fail_usage("give exactly one of TRACE or --trainer PATH.py:FUNCTION (see --help)")
            if steps is not None and trainer is None:
                raise fail_usage(
                    "--steps applies to --trainer (how many optimizer steps to train); a TRACE is compared whole"
                )
            if forward_rows is not None and trainer is None:
                raise fail_usage(
                    "--forward-rows applies to --trainer; a TRACE with --model is checked on every row"
                )
            if forward_rows not in (None, "subset", "all"):
                raise fail_usage(f"--forward-rows must be subset or all, got {forward_rows!r}")
            if trainer is not None:
                steps = 2 if steps is None else steps
                if against is not None:
                    raise fail_usage("--against needs a TRACE, not --trainer")
                if model is not None or ref_model is not None:
                    raise fail_usage(
                        "--model/--ref-model apply to a TRACE; with --trainer the trainer's own models are used"
                    )
                try:
                    from grpo_check.trl.runner import FactoryCrashed, check_factory, load_factory
                except ModuleNotFoundError as exc:
                    typer.secho(
                        f"error: --trainer is not available in this installation ({exc.name} missing)",
                        err=True,
                        fg=typer.colors.RED,
                    )
                    raise typer.Exit(ExitCode.USAGE) from None
                name = Path(trainer.split(":")[0]).stem or "trainer"
                out_dir = make_output_dir(output or Path("reports") / name)  # before training, not after
                load_factory(trainer)  # a wrong file or function name: said now, not after training
                trace_dir = out_dir / "trace"
                earlier = _set_earlier_trace_aside(trace_dir)
                replaced = False
                try:
                    with contextlib.redirect_stdout(sys.stderr):  # stdout is for the chosen format only
                        run = check_factory(
                            trainer,
                            steps,
                            trace_dir,  # every captured step reaches the disk as it is captured
                            tolerances=policy,
                            invariants=not no_invariants,
                            probes=not no_probes,
                            forward_rows=forward_rows or "subset",
                        )
                    # the whole trace again, with what the run added to the manifest
                    save_trace(run.trace, trace_dir, overwrite=True)
                    replaced = True
                except FactoryCrashed as exc:
                    typer.secho(f"error: {exc.line}", err=True, fg=typer.colors.RED)
                    raise typer.Exit(EXIT_CRASHED) from None
                finally:
                    _settle_earlier_trace(earlier, trace_dir, replaced=replaced)
                code = emit(
                    run.result,
                    output_format=output_format,
                    out_dir=out_dir,
                    strict=strict,
                    trace=run.trace,
                    allow_partial=allow_partial,
                )
                raise typer.Exit(code)
            if against is not None and (model is not None or ref_model is not None):
                raise fail_usage("--model/--ref-model check log-probs against the reference, not --against")
            trace = load_trace(trace_path)
            out_dir = output or Path("reports") / (trace_path.resolve().name or "trace")
            refuse_output_inside(out_dir, trace_path)
            out_dir = make_output_dir(out_dir)
            policy_model = None if model is None else load_local_model(model, "--model")
            reference_model = None if ref_model is None else load_local_model(ref_model, "--ref-model")
            other = load_trace(against) if against is not None else None
            update, close = _progress_bar(len(trace.steps), "comparing steps")
            try:
                result = compare(
                    trace,
                    against=other,
                    model=None if policy_model is None else first_step_weights(trace, policy_model),
                    ref_model=reference_model,
                    tolerances=policy,
                    invariants=not no_invariants,
                    source=str(trace_path),
                    progress=update,
                )
            finally:
                close()
            if other is None:  # a failure that a shipped bug of the recorded TRL release explains is named
                from grpo_check.trl.history import name_shipped_bugs_in_trace

                result.findings.extend(name_shipped_bugs_in_trace(trace.manifest, result.findings))
            code = emit(
                result,
                output_format=output_format,
                out_dir=out_dir,
                strict=strict,
                trace=trace,
                allow_partial=allow_partial,
            )
        raise typer.Exit(ExitCode(code))
