"""The fuzz harness: targets (one per reader), a bounded runner and the outcome classes.

Every input ends in exactly one outcome:

- ``clean``: refused with the project's ``InputError`` (the CLI: exit 2 and one line on stderr);
- ``accepted``: read (the CLI: exit 0 or 1);
- ``traceback``: any other exception (the CLI: a traceback or another exit code): a bug;
- ``hang``: over the per-input time bound: a bug.

:func:`run_campaign` runs the hypothesis-generated inputs of one target in this process, each under a
``SIGALRM`` time bound; :func:`run_bounded` runs a campaign in a child process under an address-space cap
(``resource.setrlimit``) and a wall-clock timeout, and returns its figures. ``tests/fuzz/test_fuzz_*.py``
run a fixed-seed slice; ``scripts/fuzz_long.py`` the long version.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

PER_INPUT_SECONDS = 20.0
MEMORY_CAP_BYTES = 6 << 30


class Hang(Exception):
    """An input ran past the per-input time bound."""


@dataclass
class Figures:
    tried: int = 0
    clean: int = 0
    accepted: int = 0
    tracebacks: int = 0
    hangs: int = 0
    examples: list[str] = field(default_factory=list)  # the first few tracebacks and hangs, for the record

    def add(self, outcome: str, detail: str | None = None) -> None:
        self.tried += 1
        name = {"traceback": "tracebacks", "hang": "hangs"}.get(outcome, outcome)
        setattr(self, name, getattr(self, name) + 1)
        if detail and len(self.examples) < 5:
            self.examples.append(detail)

    def merge(self, other: dict[str, Any]) -> None:
        for key in ("tried", "clean", "accepted", "tracebacks", "hangs"):
            setattr(self, key, getattr(self, key) + int(other.get(key, 0)))
        self.examples += list(other.get("examples", []))[: 5 - len(self.examples)]


@contextlib.contextmanager
def time_bound(seconds: float):
    """Raise :class:`Hang` in this (main) thread after ``seconds``; a blocking system call is interrupted."""

    def on_alarm(signum, frame):
        raise Hang(f"over {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def classify(call: Callable[[], Any], *, seconds: float = PER_INPUT_SECONDS) -> tuple[str, str | None]:
    """Run ``call`` under the time bound; its outcome and, for a bug, a description."""
    from grpo_check.findings import InputError

    try:
        with time_bound(seconds):
            call()
    except Hang as exc:
        return "hang", f"hang: {exc}"
    except InputError:
        return "clean", None
    except CliOutcome as exc:
        return exc.outcome, exc.detail
    except Exception:
        return "traceback", traceback.format_exc(limit=-6)
    return "accepted", None


# ------------------------------------------------------------------------------------------------ traces
def write_valid_trace(path: Path, *, steps: int = 1) -> Path:
    """A small, valid trace (B=4 rows in 2 groups, T=5, every stage present)."""
    import torch

    from grpo_check.config import GRPOSpec
    from grpo_check.trace.io import build_manifest, save_trace
    from grpo_check.trace.model import Trace, TraceStep

    g = torch.Generator().manual_seed(0)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 0, 0, 0]])
    items = []
    for step in range(steps):
        logps = -torch.rand(4, 5, generator=g, dtype=torch.float64) - 0.1
        rewards = torch.tensor([[1.0], [0.0], [0.5], [0.25]], dtype=torch.float64)
        items.append(
            TraceStep(
                tensors={
                    "prompt_ids": torch.randint(0, 50, (4, 3), generator=g),
                    "prompt_mask": torch.ones(4, 3, dtype=torch.long),
                    "completion_ids": torch.randint(0, 50, (4, 5), generator=g),
                    "completion_mask": mask,
                    "group_index": torch.tensor([0, 0, 1, 1]),
                    "rewards_per_func": rewards,
                    "logps": logps,
                    "old_logps": logps.clone(),
                    "loss": torch.tensor(0.0, dtype=torch.float64),
                },
                completion_text=["a", "b", "c", "d"],
                meta={"step": step, "micro_batch": 0, "rank": 0, "num_items_in_batch": 11},
            )
        )
    spec = GRPOSpec(num_generations=2, loss_type="grpo")
    save_trace(Trace(manifest=build_manifest(trainer="fuzz", spec=spec), steps=items), path, overwrite=True)
    return path


def step_files(trace: Path) -> tuple[Path, Path]:
    """The ``.json`` and ``.safetensors`` of the trace's first step."""
    json_path = sorted((trace / "steps").glob("*.json"))[0]
    return json_path, json_path.with_suffix(".safetensors")


def unpin(json_path: Path) -> None:
    """Drop the recorded size and sha256 of a step's tensor file, so an edited file is parsed, not refused
    by its checksum."""
    record = json.loads(json_path.read_text())
    record.pop("tensor_file_bytes", None)
    record.pop("tensor_file_sha256", None)
    json_path.write_text(json.dumps(record))


def write_safetensors(path: Path, tensors: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(path))


def load_trace_target(root: Path) -> Callable[[], Any]:
    """Load a trace, then run what ``grpo-check check`` runs on it (the invariants) and the comparison."""

    def call() -> None:
        from grpo_check.compare import compare
        from grpo_check.trace.io import load_trace

        trace = load_trace(root)
        compare(trace)

    return call


# ---------------------------------------------------------------------------------------------------- CLI
class CliOutcome(Exception):
    def __init__(self, outcome: str, detail: str | None):
        super().__init__(outcome)
        self.outcome, self.detail = outcome, detail


def run_cli_in_process(args: list[str], *, cwd: Path | None = None) -> tuple[int, str, str]:
    """``grpo-check ARGS`` in this process through the console entry point, in folder ``cwd`` (default
    outputs such as ``reports/`` land there); (exit code, stdout, stderr)."""
    from grpo_check.cli import main

    out, err = io.StringIO(), io.StringIO()
    argv = sys.argv
    sys.argv = ["grpo-check", *args]
    code: Any = 0
    here = os.getcwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main()
            except SystemExit as exc:
                code = exc.code
    finally:
        sys.argv = argv
        os.chdir(here)
    return (code if isinstance(code, int) else 1), out.getvalue(), err.getvalue()


def cli_target(args: list[str], *, cwd: Path | None = None) -> Callable[[], None]:
    """The CLI's outcome for ``args``: exit 2 with one line is clean, 0/1 accepted, anything else a bug."""

    def call() -> None:
        code, _, err = run_cli_in_process(args, cwd=cwd)
        raise CliOutcome(*judge_cli(args, code, err))

    return call


def judge_cli(args: list[str], code: int, err: str) -> tuple[str, str | None]:
    lines = [line for line in err.splitlines() if line.strip()]
    if "Traceback" in err or code not in (0, 1, 2, 4):
        return "traceback", f"grpo-check {' '.join(args)} -> exit {code}: {err[-800:]}"
    if code == 2:
        errors = [line for line in lines if line.startswith("error:")]
        if len(errors) != 1:
            return "traceback", f"grpo-check {' '.join(args)} -> exit 2 without one error line: {err[-400:]}"
        return "clean", None
    return "accepted", None


def run_cli_subprocess(
    args: list[str], *, stdout: Any = subprocess.PIPE, timeout: float = 120, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``grpo-check ARGS`` as a child process (this repository's code) under the memory cap."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-c", "from grpo_check.cli import main; main()", *args],
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        timeout=timeout,
        env=env,
        cwd=cwd,
        preexec_fn=_cap_memory,
    )


def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP_BYTES, MEMORY_CAP_BYTES))


# ------------------------------------------------------------------------------------------- campaigns
def run_campaign(target: str, *, examples: int, seed: int, seconds: float = PER_INPUT_SECONDS) -> Figures:
    """Run ``examples`` hypothesis inputs of fuzz ``target`` (a name in :data:`fuzz_targets.TARGETS`) here."""
    import fuzz_targets
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed

    strategy, build = fuzz_targets.TARGETS[target]
    figures = Figures()
    workdir = Path(tempfile.mkdtemp(prefix=f"fuzz-{target}-"))
    counter = iter(range(10**9))

    @hypothesis_seed(seed)
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=False,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def one(value: Any) -> None:
        case = workdir / f"case{next(counter)}"
        case.mkdir()
        try:
            call = build(value, case)
        except Exception:
            figures.add("traceback", "building the input failed: " + traceback.format_exc(limit=-3))
            return
        outcome, detail = classify(call, seconds=seconds)
        figures.add(outcome, detail)
        _remove(case)

    one()
    _remove(workdir)
    return figures


def _remove(path: Path) -> None:
    import shutil

    for child in path.rglob("*"):  # a FIFO or a read-only folder must not stop the clean-up
        with contextlib.suppress(OSError):
            child.chmod(0o700) if child.is_dir() and not child.is_symlink() else None
    shutil.rmtree(path, ignore_errors=True)


def run_bounded(
    target: str, *, examples: int, seed: int, timeout: float, memory: int = MEMORY_CAP_BYTES
) -> dict:
    """:func:`run_campaign` in a child process under an address-space cap and a wall-clock timeout.

    Returns the figures plus ``peak_rss_mib`` (the child's peak resident memory); a child killed by the
    timeout counts as one hang, one that died otherwise as one traceback.
    """
    out = Path(tempfile.mkstemp(prefix="fuzz-figures-", suffix=".json")[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(HERE)]), OMP_NUM_THREADS="1")
    code = (
        "import json, sys, dataclasses, fuzz_harness as h; "
        f"f = h.run_campaign({target!r}, examples={examples}, seed={seed}); "
        f"open({str(out)!r}, 'w').write(json.dumps(dataclasses.asdict(f)))"
    )
    started = time.monotonic()

    def limits() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    process = subprocess.Popen(
        [sys.executable, "-c", code],
        env=env,
        preexec_fn=limits,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        _, stderr = process.communicate(timeout=timeout)
        status = process.returncode
    except subprocess.TimeoutExpired:
        process.kill()
        _, stderr = process.communicate()
        status = None
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    figures = Figures()
    text = out.read_text() if out.exists() else ""
    out.unlink(missing_ok=True)
    if text:
        figures.merge(json.loads(text))
    elif status is None:
        figures.add("hang", f"{target}: the campaign ran past {timeout:g} s")
    else:
        figures.add("traceback", f"{target}: the campaign died (exit {status}): {stderr.decode()[-800:]}")
    result = {
        "target": target,
        "tried": figures.tried,
        "clean": figures.clean,
        "accepted": figures.accepted,
        "tracebacks": figures.tracebacks,
        "hangs": figures.hangs,
        "examples": figures.examples,
        "seconds": round(time.monotonic() - started, 1),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),  # Linux: kilobytes; the largest child so far
    }
    return result
