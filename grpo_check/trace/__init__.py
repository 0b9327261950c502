"""Traces: captured GRPO tensors by stage (in memory: :mod:`.model`; on disk: :mod:`.io`)."""

from grpo_check.trace.model import TENSOR_STAGE, Trace, TraceStep

__all__ = ["TENSOR_STAGE", "Trace", "TraceStep"]
