"""The former name of :mod:`grpo_check.compare.tensor_diff`; its names stay importable from here."""

from grpo_check.compare.tensor_diff import *  # noqa: F403
from grpo_check.compare.tensor_diff import __all__  # noqa: F401
