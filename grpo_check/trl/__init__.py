"""TRL adapter: capture TRL's ``GRPOTrainer`` batches exactly as its loss used them, and check them live.

Example::

    from grpo_check.trl import attach
    attachment = attach(trainer, out_dir="traces/run1")   # before trainer.train()
    trainer.train()
    print(attachment.result().counts())
    trace = attachment.close()

Importing this package does not import TRL or torch; :func:`attach` does.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Attachment", "attach", "run_factory", "spec_from_trl"]


def __getattr__(name: str) -> Any:
    if name in ("attach", "Attachment"):
        from grpo_check.trl import capture

        return getattr(capture, name)
    if name == "spec_from_trl":
        from grpo_check.trl.spec import spec_from_trl

        return spec_from_trl
    if name == "run_factory":
        from grpo_check.trl.runner import run_factory

        return run_factory
    raise AttributeError(f"module 'grpo_check.trl' has no attribute {name!r}")
