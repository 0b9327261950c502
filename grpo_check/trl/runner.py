"""Train a TRL trainer with the full check attached: the one path ``attach``, ``compare --trainer`` and the demo
share. Also: run a user's trainer factory, and merge per-rank traces.

:func:`train_checked` attaches :func:`grpo_check.trl.attach` (live: the reference's own forward passes of the
policy and the reference model, every stage, diagnoses, invariants), trains, and returns a :class:`CheckedRun`:
the :class:`~grpo_check.findings.Result` (with its coverage), the trace, and how training ended. A trainer that
raises, or a SIGINT/SIGTERM, ends training but not the check: what was captured is still compared, and the
outcome (``metadata["outcome"]``) sets the exit code: 3 crashed, 130 SIGINT, 143 SIGTERM.

``grpo-check compare --trainer path/to/train.py:build_trainer --steps 2`` uses :func:`check_factory`: it
imports the file, calls the factory (no arguments, or ``steps=`` when it accepts it) and runs
:func:`train_checked` for N optimizer steps.

Example::

    from grpo_check.trl.runner import check_factory
    run = check_factory("examples/train_factory.py:build_trainer", steps=2, out_dir="traces/run1")
    print(run.result.status(), run.outcome.status)
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import inspect
import os
import signal
import sys
import sysconfig
import threading
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from grpo_check.findings import InputError, Result
from grpo_check.trace.model import Trace

EXIT_CRASHED = 3
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


class FactoryCrashed(Exception):
    """The user's factory raised while building the trainer (exit code 3). ``line`` says what and where."""

    def __init__(self, line: str) -> None:
        super().__init__(line)
        self.line = line


def load_factory(factory_ref: str) -> Any:
    """Import ``path/to/file.py:function`` (or ``package.module:function``) and return the function."""
    path_part, sep, attr = factory_ref.rpartition(":")
    if not sep or not path_part or not attr:
        raise InputError(
            f"expected 'path/to/train.py:build_trainer' (file or module, a colon, a function name), got "
            f"{factory_ref!r}",
            field="trainer",
        )
    if path_part.endswith(".py") or os.sep in path_part or "/" in path_part:
        file = Path(path_part)
        if not file.is_file():
            raise InputError("no such file", source=str(file), field="trainer")
        name = f"_grpo_check_factory_{abs(hash(str(file.resolve())))}"
        spec = importlib.util.spec_from_file_location(name, file)
        if spec is None or spec.loader is None:
            raise InputError("cannot import this file as Python", source=str(file), field="trainer")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        sys.path.insert(0, str(file.resolve().parent))
        try:
            spec.loader.exec_module(module)
        except SyntaxError as exc:
            raise InputError(
                f"syntax error at line {exc.lineno}: {exc.msg}", source=str(file), field="trainer"
            ) from None
        except Exception as exc:  # the user's module failed while importing: say where, in one line
            raise InputError(
                f"importing it raised {_where(exc, file)}", source=str(file), field="trainer"
            ) from None
        finally:
            with contextlib.suppress(ValueError):
                sys.path.remove(str(file.resolve().parent))
    else:
        try:
            module = importlib.import_module(path_part)
        except ImportError as exc:
            raise InputError(f"cannot import module {path_part!r}: {exc}", field="trainer") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise InputError(f"{path_part} has no function {attr!r}", field="trainer")
    return factory


def _where(error: BaseException, file: Path | None = None, *, name: str | None = None) -> str:
    """``Type: message (at file.py:line)``: the innermost frame in ``file``, else the innermost frame of the
    user's code (not an installed library, the standard library or grpo-check), else the innermost frame."""
    frames = traceback.extract_tb(error.__traceback__)
    chosen = [frame for frame in frames if file is not None and _same_file(frame.filename, file)]
    chosen = chosen or [frame for frame in frames if _is_user_code(frame.filename)] or frames
    place = f" (at {_shown(chosen[-1].filename)}:{chosen[-1].lineno})" if chosen else ""
    message = " ".join(str(error).split())  # one line
    name = name or type(error).__name__
    return f"{name}: {message}{place}" if message else f"{name}{place}"


def _shown(name: str) -> str:
    """A file as the user would write it: relative to the working directory when it lies below it."""
    with contextlib.suppress(ValueError, OSError):
        return str(Path(name).resolve().relative_to(Path.cwd().resolve()))
    return name


def _same_file(name: str, file: Path) -> bool:
    try:
        return Path(name).resolve() == file.resolve()
    except OSError:  # pragma: no cover
        return False


_LIBRARY_ROOTS = tuple(
    str(Path(p).resolve())
    for p in {
        sysconfig.get_paths()["stdlib"],
        sysconfig.get_paths()["purelib"],
        sysconfig.get_paths()["platlib"],
    }
)
_OWN_ROOT = str(Path(__file__).resolve().parents[1])


def _is_user_code(name: str) -> bool:
    if name.startswith("<"):
        return False
    path = str(Path(name).resolve())
    return not path.startswith((*_LIBRARY_ROOTS, _OWN_ROOT)) and "site-packages" not in path


def build_from_factory(factory_ref: str, steps: int) -> Any:
    """Call the factory, passing ``steps=`` (or ``max_steps=``) when its signature accepts it."""
    factory = load_factory(factory_ref)
    params = inspect.signature(factory).parameters
    kwargs: dict[str, Any] = {}
    if "steps" in params:
        kwargs["steps"] = steps
    elif "max_steps" in params:
        kwargs["max_steps"] = steps
    try:
        trainer = factory(**kwargs)
    except InputError:
        raise
    except Exception as exc:  # the user's factory failed: one line saying where, not our traceback
        source = inspect.getsourcefile(factory) if inspect.isfunction(factory) else None
        where = _where(exc, Path(source) if source else None)
        raise FactoryCrashed(f"{factory_ref} raised {where}") from None
    if isinstance(trainer, type):  # `return GRPOTrainer` instead of `return GRPOTrainer(...)`
        raise InputError(
            f"{factory_ref} returned the class {trainer.__name__}, not an instance of it", field="trainer"
        )
    if not (hasattr(trainer, "train") and hasattr(trainer, "compute_loss")):
        raise InputError(
            f"{factory_ref} returned a {type(trainer).__name__}, not a TRL GRPOTrainer", field="trainer"
        )
    trainer.args.max_steps = steps
    return trainer


@dataclasses.dataclass
class RunOutcome:
    """How training ended: ``completed``, ``crashed`` (the trainer raised) or ``interrupted`` (SIGINT/SIGTERM).

    ``line`` is the one line to print (the exception and where: the user's file and line); ``exit_code`` is 0,
    3, 130 or 143."""

    status: Literal["completed", "crashed", "interrupted"] = "completed"
    exit_code: int = 0
    line: str = ""
    optimizer_steps: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class CheckedRun:
    """A training run checked live: the comparison's result (with coverage), the trace, how training ended."""

    result: Result
    trace: Trace
    outcome: RunOutcome
    log_history: list[dict[str, Any]] = dataclasses.field(default_factory=list)


class _Terminated(BaseException):
    """SIGTERM during training, raised like KeyboardInterrupt so that training unwinds."""


@contextlib.contextmanager
def _terminate_raises() -> Iterator[None]:
    """While training: SIGTERM raises :class:`_Terminated` (main thread only; elsewhere nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(signum: int, frame: Any) -> None:
        raise _Terminated()

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def train_checked(
    trainer: Any,
    *,
    out_dir: str | os.PathLike[str] | None = None,
    every: int = 1,
    live: bool = True,
    tolerances: Any = None,
    invariants: bool = True,
    background: bool = False,
    budget: float | None = None,
    probes: bool = True,
    user_file: str | os.PathLike[str] | None = None,
    forward_rows: str = "subset",
) -> CheckedRun:
    """Attach the full check to ``trainer``, train it, and compare what was captured — also when training
    crashes or is interrupted (SIGINT, SIGTERM): then ``outcome`` says so in one line and the result's
    ``metadata["outcome"]`` makes its exit code 3, 130 or 143. ``user_file`` (the factory's file) is where the
    crash's line is looked for first."""
    from grpo_check.trl.capture import attach

    attachment = attach(
        trainer,
        out_dir=out_dir,
        every=every,
        live=live,
        tolerances=tolerances,
        invariants=invariants,
        background=background,
        budget=budget,
        probes=probes,
        forward_rows=forward_rows,
    )
    outcome = RunOutcome()
    try:
        with _terminate_raises():
            trainer.train()
    except KeyboardInterrupt as exc:
        outcome = RunOutcome("interrupted", EXIT_SIGINT, _where(exc, _as_path(user_file), name="SIGINT"))
    except _Terminated as exc:
        outcome = RunOutcome("interrupted", EXIT_SIGTERM, _where(exc, _as_path(user_file), name="SIGTERM"))
    except (
        Exception
    ) as exc:  # the user's trainer crashed: one line saying where; what was captured is checked
        outcome = RunOutcome("crashed", EXIT_CRASHED, _where(exc, _as_path(user_file)))
    outcome.optimizer_steps = int(getattr(getattr(trainer, "state", None), "global_step", 0) or 0)
    if outcome.status != "completed":
        done = outcome.optimizer_steps
        verb = "crashed" if outcome.status == "crashed" else "interrupted"
        outcome.line = (
            f"training {verb} after {done} optimizer step{'' if done == 1 else 's'}: {outcome.line}"
        )
    if outcome.status != "completed":
        attachment.trace.manifest["outcome"] = outcome.to_dict()
    result = attachment.result()
    trace = attachment.close()
    if outcome.status != "completed":
        result.metadata["outcome"] = outcome.to_dict()
    history = list(getattr(getattr(trainer, "state", None), "log_history", []) or [])
    return CheckedRun(result=result, trace=trace, outcome=outcome, log_history=history)


def _as_path(value: str | os.PathLike[str] | None) -> Path | None:
    return None if value is None else Path(value)


def check_factory(
    factory_ref: str,
    steps: int,
    out_dir: str | os.PathLike[str] | None = None,
    every: int = 1,
    *,
    tolerances: Any = None,
    invariants: bool = True,
    probes: bool = True,
    forward_rows: str = "subset",
) -> CheckedRun:
    """Import the factory, build the trainer, train ``steps`` optimizer steps with the full check attached
    (:func:`train_checked`). Raises :class:`FactoryCrashed` when the factory itself raises."""
    if steps < 1:
        raise InputError(f"steps must be >= 1, got {steps}", field="steps")
    trainer = build_from_factory(factory_ref, steps)
    path_part = factory_ref.rpartition(":")[0]
    user_file = path_part if path_part.endswith(".py") else None
    run = train_checked(
        trainer,
        out_dir=out_dir,
        every=every,
        tolerances=tolerances,
        invariants=invariants,
        user_file=user_file,
        probes=probes,
        forward_rows=forward_rows,
    )
    run.trace.manifest["factory"] = factory_ref
    run.result.metadata["source"] = factory_ref
    return run


def run_factory(
    factory_ref: str,
    steps: int,
    out_dir: str | os.PathLike[str] | None = None,
    every: int = 1,
    *,
    live: bool = False,
) -> Trace:
    """Import the factory, build the trainer, attach capture, train ``steps`` optimizer steps, return the trace.

    ``out_dir`` (optional) receives the trace on disk. With ``live=True`` the comparison also runs during
    training; its findings are in ``trace.manifest["live_result"]``. (:func:`check_factory` returns the result
    and how training ended too.)
    """
    if steps < 1:
        raise InputError(f"steps must be >= 1, got {steps}", field="steps")
    trainer = build_from_factory(factory_ref, steps)
    run = train_checked(trainer, out_dir=None, every=every, live=live)
    if run.outcome.status != "completed":
        raise RuntimeError(run.outcome.line)
    trace = run.trace
    trace.manifest["factory"] = factory_ref
    if live:
        trace.manifest["live_result"] = run.result.to_dict()
    if out_dir is not None:
        from grpo_check.trace.io import save_trace

        save_trace(trace, out_dir)
    return trace


def rank_launch(processes: int, *target: str) -> tuple[list[str], dict[str, str]]:
    """(command, environment) that start ``target`` (a script and its arguments, or ``-m module ...``) on
    ``processes`` CPU processes with ``torch.distributed.run``: accelerate (inside TRL) sees WORLD_SIZE > 1
    without a GPU and uses gloo. One torch thread per rank, no tokenizer threads, nothing downloaded. Each
    rank should end with :func:`end_rank`."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nnodes",
        "1",
        "--nproc_per_node",
        str(processes),
        *target,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    return command, env


def end_rank(exit_code: int) -> None:
    """End a rank started by ``torch.distributed.run`` once everything it writes is written.

    With torch 2.13 (CPU, gloo), a plain ``trainer.train()`` under ``torch.distributed.run`` aborts in the
    interpreter's teardown about one run in three ("terminate called without an active exception", SIGABRT),
    after the rank has finished; the launcher then reports the whole run failed. The ranks meet, the process
    group is destroyed, the streams are flushed and the process leaves with ``os._exit`` before that teardown.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)


def merge_rank_traces(paths: list[str]) -> Trace:
    """One trace from the per-rank traces of a multi-process run.

    Rank 0 holds the gathered generation batches; every rank holds its own micro-batches (``meta["rank"]``).
    The merged manifest is rank 0's with ``num_processes`` and the list of rank sources.
    """
    from grpo_check.trace.io import load_trace

    if not paths:
        raise InputError("no per-rank traces to merge (did the ranks finish?)", field="traces")
    traces = [load_trace(p) for p in paths]
    traces.sort(key=lambda t: min((s.meta.get("rank") or 0) for s in t.steps) if t.steps else 0)
    manifest = dict(traces[0].manifest)
    manifest["merged_from"] = [str(p) for p in paths]
    manifest["num_processes"] = len(traces)
    steps = [s for t in traces for s in t.steps]
    steps.sort(
        key=lambda s: (
            s.meta.get("step") or 0,
            0 if s.meta.get("scope") == "generation" else 1,
            s.meta.get("micro_batch") or 0,
            s.meta.get("rank") or 0,
        )
    )
    problems = [p for t in traces for p in t.problems]
    return Trace(manifest=manifest, steps=steps, problems=problems)
