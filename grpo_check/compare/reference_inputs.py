"""Moved to :mod:`grpo_check.stepref.inputs`; its names stay importable from here."""

from grpo_check.stepref.inputs import *  # noqa: F403
from grpo_check.stepref.inputs import __all__  # noqa: F401
