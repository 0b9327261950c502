"""Per-release TRL environments: one virtual environment per pin set, a release installed into it on demand.

Used by ``scripts/trl_matrix.py`` (every release line) and ``grpo-check zoo --history`` (the releases on both
sides of a shipped bug's fix). Pins are the known working set on a CPU-only torch 2.13.0: torch first (an
unpinned torch would pull a CUDA build), then the transformers/accelerate/datasets the release runs with,
then grpo-check itself with ``--no-deps`` (editable, this checkout) and its light dependencies.

Example::

    >>> pins_for("0.14.0").name, pins_for("0.20.0").name, pins_for("1.16.0").name
    ('tf4.51', 'tf4.53', 'tf5')
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from typing import IO

REPO = Path(__file__).resolve().parents[3]
TORCH = "torch==2.13.0"
LIGHT_DEPS = (
    "numpy",
    "safetensors",
    "typer",
    "rich",
    "pandas",
    "pyyaml",
    "hypothesis",
    "pytest",
    "matplotlib",
    "tokenizers",
)
DEFAULT_CACHE = Path(os.environ.get("GRPO_CHECK_TRL_CACHE", Path.home() / ".cache" / "grpo-check" / "trl"))


@dataclasses.dataclass(frozen=True)
class Pins:
    """A pin set: the environment's name and what is installed beside TRL."""

    name: str
    requirements: tuple[str, ...]


def pins_for(release: str) -> Pins:
    """The pin set ``release`` runs with on CPU torch 2.13."""
    major, minor = (int(p) for p in release.split(".")[:2])
    if major == 0 and minor <= 18:  # 0.15/0.16 fail on transformers 4.53 (_get_train_sampler signature)
        return Pins("tf4.51", ("transformers==4.51.3", "accelerate<1.8", "datasets<4"))
    if major == 0 and minor <= 20:
        return Pins("tf4.53", ("transformers==4.53.2", "accelerate<1.8", "datasets<4"))
    if major == 0 and minor <= 28:  # 0.23-0.28 do not import with transformers 5 (a tuple taken for a bool)
        return Pins("tf4.56", ("transformers==4.56.2", "accelerate<1.11", "datasets<4"))
    return Pins("tf5", ("transformers>=5,<6", "accelerate", "datasets", "requests"))


class EnvironmentError_(RuntimeError):
    """An environment could not be built or a release not installed (the message says which command)."""


def run_logged(
    cmd: list[str], *, log: IO[str], timeout: float, env: dict[str, str] | None = None
) -> tuple[int, str]:
    """Run ``cmd`` in the checkout, append its output to ``log``; (exit code, its last 2000 characters).
    124 on timeout."""
    log.write(f"\n$ {' '.join(cmd)}\n")
    log.flush()
    try:
        done = subprocess.run(
            cmd,
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout if isinstance(exc.stdout, str) else (exc.stdout or b"").decode(errors="replace")
        log.write(out + "\n[timed out]\n")
        return 124, out[-2000:]
    log.write(done.stdout)
    log.flush()
    return done.returncode, done.stdout[-2000:]


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def ensure_env(pins: Pins, cache: Path, *, log: IO[str], timeout: float = 1800.0) -> Path:
    """The pin set's environment under ``cache`` (built on first use): its python."""
    venv = cache / f"venv-{pins.name}"
    python = venv / "bin" / "python"
    if python.exists():
        return python
    code, _ = run_logged([sys.executable, "-m", "venv", str(venv)], log=log, timeout=timeout)
    if code:
        raise EnvironmentError_(f"python -m venv {venv} failed")
    for step in ([TORCH], [TORCH, *pins.requirements, *LIGHT_DEPS]):
        code, tail = run_logged([str(python), "-m", "pip", "install", "-q", *step], log=log, timeout=timeout)
        if code:
            raise EnvironmentError_(f"pip install {' '.join(step)} failed: {_last_line(tail)}")
    code, tail = run_logged(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "-e", str(REPO)], log=log, timeout=timeout
    )
    if code:
        raise EnvironmentError_(f"pip install --no-deps -e {REPO} failed: {_last_line(tail)}")
    return python


def installed(python: Path, package: str) -> str:
    """The version of ``package`` in the environment of ``python`` ('' when absent)."""
    out = subprocess.run(
        [str(python), "-c", f"import importlib.metadata as m; print(m.version({package!r}))"],
        capture_output=True,
        text=True,
    )
    return out.stdout.strip() if out.returncode == 0 else ""


def env_with_release(release: str, cache: Path, *, log: IO[str], timeout: float = 1800.0) -> Path:
    """The python of an environment holding TRL ``release`` (installed into its pin set's environment)."""
    pins = pins_for(release)
    python = ensure_env(pins, cache, log=log, timeout=timeout)
    if installed(python, "trl") != release:
        code, tail = run_logged(
            [str(python), "-m", "pip", "install", "-q", f"trl=={release}", TORCH, *pins.requirements],
            log=log,
            timeout=timeout,
        )
        if code:
            raise EnvironmentError_(f"pip install trl=={release} failed: {_last_line(tail)}")
    return python


def child_environment() -> dict[str, str]:
    """Environment variables for a run in a per-release environment: this checkout first, one thread."""
    return {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
    }
