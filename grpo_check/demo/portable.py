"""A demo trainer every TRL release since 0.14 builds: the settings that leave the bug-hiding defaults, as far
as the installed release has them.

The demo matrix (:mod:`grpo_check.demo.matrix`) uses settings of the 1.x line (``steps_per_generation``,
``importance_sampling_level``, the newer loss types). This factory asks the installed ``GRPOConfig`` which
fields it has and sets only those: temperature != 1 everywhere; ``beta > 0`` (a reference model);
gradient accumulation 2; two reward functions with unequal weights (0.15+); ``top_p < 1`` and
``num_iterations=2`` (0.16+); ``steps_per_generation != gradient_accumulation_steps`` (0.18+); float32 (1.x
defaults to bf16). The version matrix (``scripts/trl_matrix.py``) runs it on every release line with
``grpo-check compare --trainer grpo_check.demo.portable:build_trainer --steps 2``.

Example::

    from grpo_check.demo.portable import build_trainer
    trainer = build_trainer(steps=2)     # before trainer.train()
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from typing import Any

# wanted settings, in the order the releases gained them; a release without a field skips it
WANTED: dict[str, Any] = {
    "num_generations": 4,
    "max_completion_length": 6,
    "learning_rate": 5e-3,
    "temperature": 0.7,
    "beta": 0.04,
    "gradient_accumulation_steps": 2,
    "reward_weights": [1.0, 0.5],  # 0.15+
    "top_p": 0.9,  # 0.16+
    "num_iterations": 2,  # 0.16+
    "steps_per_generation": 4,  # 0.18+
    "bf16": False,
}


SWITCHES = ("unscorable_every",)
"""Overrides that are not GRPOConfig fields: ``unscorable_every=k`` makes both reward functions return None for
every k-th completion (an unscorable row)."""


def _unscorable(func: Any, every: int) -> Any:
    """``func`` returning None for every ``every``-th completion."""

    def reward(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float | None]:
        values = func(prompts, completions, **kwargs)
        return [None if index % every == every - 1 else value for index, value in enumerate(values)]

    reward.__name__ = func.__name__
    reward.grpo_check_row_dependent = True  # type: ignore[attr-defined]  # by position, on purpose
    return reward


def per_device_batch_size(version: str) -> int:
    """Per-device batch: 2 prompts x 4 generations. 0.14 counts prompts (each generates ``num_generations``
    completions), later releases count completions."""
    from grpo_check.trl.versions import parse_version

    return 2 if parse_version(version) < (0, 15, 0) else 8


def config_kwargs(config_cls: Any, version: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The :data:`WANTED` settings (``overrides`` winning) that ``config_cls`` (a release's ``GRPOConfig``) has
    fields for."""
    fields = {field.name for field in dataclasses.fields(config_cls)}
    kwargs = {name: value for name, value in {**WANTED, **(overrides or {})}.items() if name in fields}
    kwargs["per_device_train_batch_size"] = per_device_batch_size(version)
    return kwargs


def build_trainer(
    steps: int = 2,
    *,
    workdir: str | os.PathLike[str] | None = None,
    trainer_cls: Any = None,
    seed: int = 0,
    overrides: dict[str, Any] | None = None,
) -> Any:
    """A ``GRPOTrainer`` (or ``trainer_cls``) on the demo's tiny policy, built from code (nothing downloaded);
    ``overrides`` replace :data:`WANTED` settings (those the release has)."""
    from grpo_check.demo.run import QUIET_CPU_TRAINING, _quiet_libraries

    _quiet_libraries()
    import trl
    from trl import GRPOConfig, GRPOTrainer

    from grpo_check.demo.model import build_tokenizer, save_policy
    from grpo_check.demo.task import correctness_reward, format_reward, make_dataset

    work = str(workdir) if workdir is not None else tempfile.mkdtemp(prefix="grpo-check-portable-")
    model_dir = save_policy(os.path.join(work, "policy"), seed=seed)
    overrides = dict(overrides or {})
    every = overrides.pop("unscorable_every", None)
    reward_funcs: list[Any] = [correctness_reward, format_reward]
    if every:
        reward_funcs = [_unscorable(func, int(every)) for func in reward_funcs]
    config = GRPOConfig(
        output_dir=os.path.join(work, "trl-output"),
        max_steps=steps,
        seed=seed,
        **QUIET_CPU_TRAINING,
        **config_kwargs(GRPOConfig, trl.__version__, overrides),
    )
    trainer = (trainer_cls or GRPOTrainer)(
        model=model_dir,
        reward_funcs=reward_funcs,
        args=config,
        train_dataset=make_dataset(64, seed=seed),
        processing_class=build_tokenizer(),
    )
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    return trainer


def run_live(
    steps: int = 2, out_dir: str | os.PathLike[str] | None = None, overrides: dict[str, Any] | None = None
) -> Any:
    """Train :func:`build_trainer` with grpo-check attached live (the reference's own forward passes too) and
    return the :class:`~grpo_check.findings.Result`; ``out_dir`` receives ``result.json``."""
    import json

    from grpo_check.trl import attach

    trainer = build_trainer(steps=steps, overrides=overrides)
    attachment = attach(trainer, live=True)
    trainer.train()
    result = attachment.result()
    attachment.close()
    if out_dir is not None:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "result.json"), "w") as handle:
            json.dump(result.to_dict(), handle, indent=1)
    return result


def main(argv: list[str] | None = None) -> int:
    """``python -m grpo_check.demo.portable [--steps N] [--output DIR]``: the live run, its counts, exit 0 when
    nothing failed and 1 otherwise."""
    import argparse

    parser = argparse.ArgumentParser(
        description="Run the portable demo trainer with grpo-check attached live."
    )
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--output", default=None, help="directory for result.json")
    args = parser.parse_args(argv)
    result = run_live(args.steps, args.output)
    for finding in result.findings:
        if finding.failed:
            print(finding.message())
    print(f"grpo-check (live, portable demo): {result.counts()}")
    return result.exit_code()


if __name__ == "__main__":
    raise SystemExit(main())
