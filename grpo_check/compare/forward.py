"""Moved to :mod:`grpo_check.stepref.forward`; its names stay importable from here."""

from grpo_check.stepref.forward import *  # noqa: F403
from grpo_check.stepref.forward import __all__  # noqa: F401
