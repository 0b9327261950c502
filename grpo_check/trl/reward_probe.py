"""TRL glue for :mod:`grpo_check.probe.rewards`: call each reward function again as ``_calculate_rewards``
calls it (TRL 1.x), its per-row arguments reordered, on the first generation batch of a run.

The extra calls leave training untouched: the RNG states (Python, NumPy, torch) are restored afterwards, and
the logging callbacks TRL hands reward functions (``log_extra``, ``log_metric``) are replaced by no-ops.
Reward models (``nn.Module``), async reward functions and functions marked
``func.grpo_check_row_dependent = True`` (row-dependent by design) are not probed.
"""

from __future__ import annotations

import contextlib
import inspect
import random
from collections.abc import Iterator
from typing import Any

from grpo_check.findings import Finding

ROW_DEPENDENT_ATTRIBUTE = "grpo_check_row_dependent"
"""Set this attribute to True on a reward function whose rewards depend on the other rows by design (a rank
within the batch, a position-based schedule): the reward-row probe skips it."""

_PER_ROW_EXCLUDED = ("prompt", "completion", "completion_ids")  # the columns TRL passes under other names


@contextlib.contextmanager
def _rng_preserved() -> Iterator[None]:
    import torch

    py_state = random.getstate()
    torch_state = torch.random.get_rng_state()
    np_state = None
    with contextlib.suppress(ImportError):
        import numpy as np

        np_state = np.random.get_state()
    try:
        yield
    finally:
        random.setstate(py_state)
        torch.random.set_rng_state(torch_state)
        if np_state is not None:
            import numpy as np

            np.random.set_state(np_state)


def not_probed(name: str, step: int | None, error: BaseException) -> Finding:
    """INCONCLUSIVE: the reward function raised when called again, so its row independence is unknown."""
    from grpo_check.findings import Verdict, Where
    from grpo_check.probe.rewards import CHECK_ID, STAGE

    message = " ".join(str(error).split())
    return Finding(
        CHECK_ID,
        STAGE,
        Verdict.INCONCLUSIVE,
        where=Where(step=step, reward_function=name),
        kind="invariant",
        explanation=f"reward function {name!r} raised {type(error).__name__}: {message} when called again on the "
        "same batch, so its row independence was not probed",
        details={"reward_function": name, "error": type(error).__name__},
    )


def _noop(*_: Any, **__: Any) -> None:
    return None


def probe_reward_functions(
    trainer: Any,
    inputs: list[dict[str, Any]],
    prompts: list[Any],
    completions: list[Any],
    completion_ids_list: list[Any],
    rewards_per_func: Any,
    *,
    rank: int = 0,
    step: int | None = None,
) -> list[Finding]:
    """One :data:`~grpo_check.probe.rewards.CHECK_ID` finding per synchronous reward function."""
    import torch

    from grpo_check.probe.rewards import probe_reward_rows

    rows = len(prompts)
    if not rows or not inputs or rewards_per_func is None:
        return []
    table = rewards_per_func.detach().to("cpu")
    if table.shape[0] >= (rank + 1) * rows:  # TRL gathers the rewards of every process
        table = table[rank * rows : (rank + 1) * rows]
    columns = {key: [row.get(key) for row in inputs] for key in inputs[0] if key not in _PER_ROW_EXCLUDED}
    per_row: dict[str, list[Any]] = {
        "prompts": list(prompts),
        "completions": list(completions),
        "completion_ids": list(completion_ids_list),
        **columns,
    }
    shared: dict[str, Any] = {"trainer_state": getattr(trainer, "state", None), "log_extra": _noop,
                              "log_metric": _noop}  # fmt: skip
    if getattr(trainer, "environments", None) is not None:
        return []  # environments are stateful per row: reordering them is not a pure reordering
    findings: list[Finding] = []
    names = list(getattr(trainer, "reward_func_names", []) or [])
    for index, func in enumerate(getattr(trainer, "reward_funcs", []) or []):
        if isinstance(func, torch.nn.Module) or inspect.iscoroutinefunction(func):
            continue
        if getattr(
            func, ROW_DEPENDENT_ATTRIBUTE, False
        ):  # row-dependent by design (batch-relative), declared
            continue
        name = names[index] if index < len(names) else getattr(func, "__name__", f"reward_{index}")

        def call(order: list[int], func: Any = func) -> list[Any]:
            kwargs = {key: [values[i] for i in order] for key, values in per_row.items()}
            with _rng_preserved():
                return list(func(**kwargs, **shared))

        try:
            findings.append(probe_reward_rows(call, table[:, index].tolist(), name=name, step=step))
        except Exception as exc:  # a reward function that cannot be called again is not probed: say so
            findings.append(not_probed(name, step, exc))
    return findings
