"""Run a user's TRL trainer factory with capture attached, and merge per-rank traces.

``grpo-check compare --trainer path/to/train.py:build_trainer --steps 2`` uses :func:`run_factory`: it
imports the file, calls the factory (no arguments, or ``steps=`` when it accepts it), attaches
:func:`grpo_check.trl.attach`, trains N optimizer steps and returns the captured trace.

Example::

    from grpo_check.trl.runner import run_factory
    trace = run_factory("examples/train_factory.py:build_trainer", steps=2, out_dir="traces/run1")
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from grpo_check.findings import InputError
from grpo_check.trace.model import Trace


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


def _where(error: BaseException, file: Path | None = None) -> str:
    """``Type: message (at file.py:line)``: the innermost frame in ``file`` (else the innermost frame)."""
    frames = traceback.extract_tb(error.__traceback__)
    if file is not None:
        mine = [frame for frame in frames if Path(frame.filename).resolve() == file.resolve()]
        frames = mine or frames
    place = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(error).__name__}: {error}{place}"


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
        raise InputError(f"{factory_ref} raised {where}", field="trainer") from None
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
    training; its findings are in ``trace.manifest["live_result"]``.
    """
    if steps < 1:
        raise InputError(f"steps must be >= 1, got {steps}", field="steps")
    from grpo_check.trl.capture import attach

    trainer = build_from_factory(factory_ref, steps)
    attachment = attach(trainer, out_dir=out_dir, every=every, live=live)
    trainer.train()
    attachment.trace.manifest["factory"] = factory_ref
    if live:
        attachment.trace.manifest["live_result"] = attachment.result().to_dict()
    return attachment.close()


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
