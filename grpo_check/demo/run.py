"""Run the embedded demo: TRL's real ``GRPOTrainer`` on the tiny policy, checked live, over the matrix.

Every cell builds the policy and tokenizer from code (saved to a temporary directory, because TRL reloads the
reference model from a path when ``beta > 0``), trains a couple of optimizer steps with
:func:`grpo_check.trl.attach` checking every micro-batch against the float64 reference, and contributes its
findings to one :class:`~grpo_check.findings.Result` (each finding's ``details["cell"]`` names its cell).

With ``processes=2`` each cell is launched with ``torchrun --nproc_per_node 2`` on CPU (accelerate, gloo); every
rank captures its slice, rank 0 also records the gathered generation batch, and the per-rank traces and
results are merged into one.

Example::

    from grpo_check.demo.run import run_demo
    outcome = run_demo(matrix="fast", out_dir="reports/demo")
    print(outcome.result.counts(), outcome.seconds)
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from grpo_check.demo.matrix import Cell, cells
from grpo_check.demo.model import HIDDEN_SIZE, NUM_LAYERS
from grpo_check.findings import Finding, InputError, Result

Progress = Callable[[str], None]


def _quiet_libraries() -> None:
    import logging
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    for name in ("transformers", "trl", "accelerate", "datasets", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


QUIET_CPU_TRAINING: dict[str, Any] = {
    "logging_steps": 1,
    "report_to": [],
    "save_strategy": "no",
    "use_cpu": True,
    "disable_tqdm": True,
    "dataloader_num_workers": 0,
}
"""The ``GRPOConfig`` settings every demo trainer shares: on the CPU, logging each step to the trainer's log
history only, no checkpoints, no progress bar, no data-loader workers."""


def build_trainer(
    cell: Cell,
    workdir: str | os.PathLike[str],
    *,
    seed: int = 0,
    trainer_cls: Any = None,
    steps: int | None = None,
    dataset_size: int = 64,
    quiet: bool = True,
    hidden_size: int = HIDDEN_SIZE,
    num_layers: int = NUM_LAYERS,
    model_dir: str | None = None,
    tokenizer: Any = None,
) -> Any:
    """A TRL ``GRPOTrainer`` (or ``trainer_cls``) for ``cell`` on the tiny policy (or one of ``hidden_size`` and
    ``num_layers``; or the policy saved in ``model_dir`` with its ``tokenizer``), reward functions from the toy
    task. ``workdir`` receives the saved policy and TRL's output directory."""
    _quiet_libraries()
    from trl import GRPOConfig, GRPOTrainer

    from grpo_check.demo.model import build_tokenizer, save_policy
    from grpo_check.demo.task import correctness_reward, format_reward, make_dataset

    workdir = Path(workdir)
    if model_dir is None:
        model_dir = save_policy(
            workdir / "policy",
            seed=seed,
            pad_is_eos=cell.pad_is_eos,
            hidden_size=hidden_size,
            num_layers=num_layers,
        )
        tokenizer = build_tokenizer(pad_is_eos=cell.pad_is_eos)
    elif tokenizer is None:
        raise ValueError("model_dir needs its tokenizer")
    kwargs = cell.config_kwargs()
    config = GRPOConfig(
        output_dir=str(workdir / "trl-output"),
        max_steps=steps or cell.steps,
        seed=seed,
        **QUIET_CPU_TRAINING,
        **kwargs,
    )
    cls = trainer_cls or GRPOTrainer
    trainer = cls(
        model=model_dir,
        reward_funcs=[correctness_reward, format_reward],
        args=config,
        train_dataset=make_dataset(dataset_size, seed=seed),
        processing_class=tokenizer,
    )
    if quiet:  # the demo prints its own progress lines; TRL's log dicts stay in trainer.state.log_history
        from transformers.trainer_callback import PrinterCallback, ProgressCallback

        trainer.remove_callback(PrinterCallback)
        trainer.remove_callback(ProgressCallback)
    return trainer


@dataclasses.dataclass
class CellRun:
    """One cell's outcome: its live-comparison result, the captured trace, wall time, TRL's log history."""

    cell: Cell
    result: Result
    trace: Any
    seconds: float
    log_history: list[dict[str, Any]] = dataclasses.field(default_factory=list)


def _label(findings: list[Finding], cell: Cell) -> list[Finding]:
    """Tag each finding with its configuration (``details["cell"]`` and a prefix every renderer shows)."""
    for finding in findings:
        finding.details = {**(finding.details or {}), "cell": cell.name}
        if not finding.explanation.startswith(f"[{cell.name}]"):
            finding.explanation = f"[{cell.name}] {finding.explanation}"
    return findings


def run_cell(
    cell: Cell,
    *,
    workdir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    every: int = 1,
    trainer_cls: Any = None,
    trace_dir: str | os.PathLike[str] | None = None,
    live: bool = True,
    steps: int | None = None,
    budget: float | None = None,
    forward_rows: str = "subset",
) -> CellRun:
    """Train ``cell`` with checking attached (single process) and return its :class:`CellRun`.

    ``steps`` overrides the cell's optimizer steps; ``budget`` attaches with ``attach(budget=...)``,
    ``forward_rows`` with ``attach(forward_rows=...)``."""
    from grpo_check.trl.runner import train_checked

    start = time.perf_counter()
    owned = workdir is None
    work = Path(tempfile.mkdtemp(prefix="grpo-check-demo-")) if owned else Path(workdir)
    try:
        trainer = build_trainer(cell, work, seed=seed, trainer_cls=trainer_cls, steps=steps)
        run = train_checked(
            trainer, out_dir=trace_dir, every=every, live=live, budget=budget, forward_rows=forward_rows
        )
        if run.outcome.status != "completed":
            raise RuntimeError(f"{cell.name}: {run.outcome.line}")
        _label(run.result.findings, cell)
        return CellRun(
            cell=cell,
            result=run.result,
            trace=run.trace,
            seconds=time.perf_counter() - start,
            log_history=run.log_history,
        )
    finally:
        if owned:
            shutil.rmtree(work, ignore_errors=True)


def run_cell_multiprocess(
    cell: Cell,
    *,
    processes: int = 2,
    seed: int = 0,
    timeout: float = 600.0,
    steps: int | None = None,
    budget: float | None = None,
    forward_rows: str = "subset",
) -> CellRun:
    """Run ``cell`` on N CPU processes (torchrun + accelerate, gloo) and merge the ranks' traces and results.

    ``steps`` overrides the cell's optimizer steps; ``budget`` attaches with ``attach(budget=...)``,
    ``forward_rows`` with ``attach(forward_rows=...)``."""
    from grpo_check.trl.runner import merge_rank_traces, rank_launch

    start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="grpo-check-demo-mp-"))
    try:
        # torchrun starts the ranks; accelerate (inside TRL) sees WORLD_SIZE > 1 without a GPU and uses gloo.
        # (`accelerate launch --cpu` starts a single process unless MPI is configured.)
        cmd, env = rank_launch(
            processes,
            "-m",
            "grpo_check.demo.worker",
            "--cell",
            cell.name,
            "--out",
            str(work),
            "--seed",
            str(seed),
            *(["--steps", str(steps)] if steps is not None else []),
            *(["--budget", str(budget)] if budget is not None else []),
            "--forward-rows",
            forward_rows,
        )
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)
        if proc.returncode != 0:
            tail = (proc.stdout + proc.stderr)[-3000:]
            raise RuntimeError(f"multi-process run of {cell.name} failed (exit {proc.returncode}):\n{tail}")
        rank_dirs = sorted(work.glob("rank*/trace"))
        trace = merge_rank_traces([str(p) for p in rank_dirs])
        from grpo_check.report.merge import merge_results

        paths = sorted(work.glob("rank*/result.json"))
        if len(paths) != processes:
            raise RuntimeError(
                f"multi-process run of {cell.name}: {len(paths)} of {processes} ranks wrote a result"
            )
        parts = [Result.from_dict(json.loads(path.read_text())) for path in paths]
        result = merge_results(parts, sources=[path.parent.name for path in paths])
        _label(result.findings, cell)
        log_path = work / "rank0" / "log_history.json"
        history = json.loads(log_path.read_text()) if log_path.exists() else []
        return CellRun(
            cell=cell, result=result, trace=trace, seconds=time.perf_counter() - start, log_history=history
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


@dataclasses.dataclass
class DemoOutcome:
    result: Result
    runs: list[CellRun]
    seconds: float
    report_paths: list[str]
    repro_paths: list[str] = dataclasses.field(default_factory=list)


def _summary_line(run: CellRun) -> str:
    counts = run.result.counts()
    status = "FAIL" if counts.get("fail") else "ok"
    steps = {s.meta.get("scope"): 0 for s in run.trace.steps}
    for s in run.trace.steps:
        steps[s.meta.get("scope")] += 1
    return (
        f"{status:4} {run.cell.name:38} {run.seconds:5.1f}s  "
        f"{steps.get('micro_batch', 0):2d} micro-batches, {steps.get('generation', 0)} generation batches  "
        f"pass {counts.get('pass', 0)}, fail {counts.get('fail', 0)}, warn {counts.get('warn', 0)}"
    )


def write_demo_report(
    result: Result, out_dir: str | os.PathLike[str], formats: list[str] | None = None
) -> list[str]:
    """Write the report files for ``result`` under ``out_dir`` (renderers from :mod:`grpo_check.report`)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    try:
        from grpo_check.report import write_report
    except ImportError:
        path = out / "result.json"
        path.write_text(result.to_json() + "\n")
        return [str(path)]
    kwargs: dict[str, Any] = {}
    if formats:
        kwargs["formats"] = formats
    written = write_report(result, out, **kwargs)
    if isinstance(written, dict):
        return [str(p) for p in written.values()]
    if isinstance(written, (list, tuple)):
        return [str(p) for p in written]
    return [str(written)]


def run_demo(
    matrix: str = "fast",
    *,
    out_dir: str | os.PathLike[str] | None = "reports/demo",
    only: list[str] | None = None,
    processes: int = 1,
    seed: int = 0,
    every: int = 1,
    progress: Progress | None = None,
    formats: list[str] | None = None,
    forward_rows: str = "subset",
) -> DemoOutcome:
    """Run the matrix (``"fast"`` subset or ``"full"``), print one line per cell through ``progress``, write
    the merged report to ``out_dir`` (skipped when ``None``). ``forward_rows``: ``attach(forward_rows=...)``."""
    if processes < 1:
        raise InputError(f"processes must be >= 1, got {processes}", field="processes")
    _quiet_libraries()
    chosen = cells(matrix, only)
    say = progress or (lambda _line: None)
    start = time.perf_counter()
    runs: list[CellRun] = []
    say(
        f"grpo-check demo: {len(chosen)} configuration(s), TRL GRPOTrainer on a tiny policy, {processes} process(es)"
    )
    for index, cell in enumerate(chosen, 1):
        say(f"[{index}/{len(chosen)}] {cell.name}: {cell.why}")
        if processes == 1:
            run = run_cell(cell, seed=seed, every=every, forward_rows=forward_rows)
        else:
            run = run_cell_multiprocess(cell, processes=processes, seed=seed, forward_rows=forward_rows)
        runs.append(run)
        say("      " + _summary_line(run))
    from grpo_check.coverage import merge_coverage

    result = Result()
    for run in runs:
        result.extend(run.result.findings)
    coverage = merge_coverage(run.result.metadata.get("coverage") for run in runs)
    seconds = time.perf_counter() - start
    from grpo_check.trl.versions import library_versions

    first = runs[0].trace.manifest if runs else {}
    result.metadata.update(
        {
            "source": f"grpo-check demo (matrix {matrix}, {processes} process(es))",
            "config": {run.cell.name: run.trace.manifest.get("config") for run in runs},
            "versions": first.get("versions") or library_versions(),
            "tolerances": _tolerance_metadata(),
            "cells": [
                {
                    "name": run.cell.name,
                    "why": run.cell.why,
                    "seconds": round(run.seconds, 2),
                    "counts": run.result.counts(),
                    "trl_config": run.cell.config_kwargs(),
                    "pad_is_eos": run.cell.pad_is_eos,
                }
                for run in runs
            ],
            "seconds": round(seconds, 2),
            "processes": processes,
            **({"coverage": coverage} if coverage is not None else {}),
        }
    )
    paths = write_demo_report(result, out_dir, formats) if out_dir is not None else []
    repros = _write_repros(runs, out_dir) if out_dir is not None else []
    return DemoOutcome(result=result, runs=runs, seconds=seconds, report_paths=paths, repro_paths=repros)


def _write_repros(runs: list[CellRun], out_dir: str | os.PathLike[str]) -> list[str]:
    """A self-contained repro (failing steps, config, versions) per configuration with a failing finding,
    under ``<out_dir>/repro/<cell>``: ``grpo-check compare <dir>`` replays it."""
    from grpo_check.report import write_repro

    written: list[str] = []
    for run in runs:
        if not run.result.failures or not run.trace.steps:
            continue
        target = Path(out_dir) / "repro" / run.cell.name
        try:
            written.append(str(write_repro(run.trace, None, run.result, target)))
        except InputError:  # no failing finding names a recorded step: keep every step
            written.append(str(write_repro(run.trace, range(len(run.trace.steps)), run.result, target)))
    return written


def _tolerance_metadata() -> Any:
    try:
        from grpo_check.compare.tolerances import TolerancePolicy

        policy = TolerancePolicy()
        to_dict = getattr(policy, "to_dict", None)
        return to_dict() if callable(to_dict) else repr(policy)
    except ImportError:  # pragma: no cover
        return None
