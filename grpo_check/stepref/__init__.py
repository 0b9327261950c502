"""The reference on a captured step: what :mod:`grpo_check.compare` and :mod:`grpo_check.diagnose` both
build on, below either of them.

* :mod:`~grpo_check.stepref.context` — GRPO coordinates of a step (:class:`StepContext`), float64 views;
* :mod:`~grpo_check.stepref.forward` — the reference's own forward passes of a model on the step's batch;
* :mod:`~grpo_check.stepref.inputs` — the reference fed the trainer's own upstream tensors (stage
  isolation): advantages, ratio, KL, loss, ∂loss/∂logps, and the precision each tensor was computed in.
"""
