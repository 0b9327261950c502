"""Mutants that live in TRL-like code: patched ``trl.GRPOTrainer`` subclasses, captured with ``grpo_check.trl.attach``.

Each mutant is a subclass of TRL's real ``GRPOTrainer`` whose bug is planted the way it reached users: either
an overridden method (a fork's ``_generate`` that post-processes the text) or a *source patch* of one line of
TRL's own method (``1e-4`` → ``1e4`` in ``_generate_and_score_completions``), compiled at run time from the
installed TRL's source. A source patch whose line is missing (a TRL version that moved it) raises, so a mutant
never silently turns into a correct trainer.

The run is the embedded demo's (tiny Llama built from code, toy task, nothing downloaded): the live comparison
the adapter runs during training is what the scorecard scores.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import shutil
import tempfile
import textwrap
from pathlib import Path
from typing import Any

from grpo_check.zoo.catalog import Bug, Case, register

__all__ = ["TRLRun", "source_patched", "trl_case"]


def source_patched(function: Any, replacements: list[tuple[str, str]]) -> Any:
    """A copy of ``function`` compiled from its source with each ``(old, new)`` text replaced exactly once.

    Raises ``RuntimeError`` if a replacement's ``old`` text is not found exactly once.
    """
    source = inspect.getsource(function)  # replacements match the source as written (class indentation)
    for old, new in replacements:
        count = source.count(old)
        if count != 1:
            raise RuntimeError(
                f"cannot plant the bug: {old!r} occurs {count} times in {function.__qualname__} of the installed TRL"
            )
        source = source.replace(old, new)
    source = textwrap.dedent(source)
    owner_name = function.__qualname__.rsplit(".", 1)[0]
    # zero-argument super() needs the class cell of the original definition: name the class explicitly
    source = source.replace("super()", f"super({owner_name}, self)")
    namespace: dict[str, Any] = {}
    exec(compile(source, f"<zoo patch of {function.__qualname__}>", "exec"), function.__globals__, namespace)
    patched = namespace[function.__name__]
    functools.update_wrapper(patched, function)
    patched.__wrapped__ = function
    return patched


@dataclasses.dataclass
class TRLRun:
    """A finished TRL run: the trace and the live comparison the adapter made while training."""

    trace: Any
    result: Any


def _run_trl(trainer_cls_factory: Any, overrides: dict[str, Any], *, pad_is_eos: bool, steps: int) -> TRLRun:
    from grpo_check.demo.matrix import Cell
    from grpo_check.demo.run import build_trainer
    from grpo_check.trl.runner import train_checked

    trainer_cls = trainer_cls_factory()
    cell = Cell(name="zoo", overrides=overrides, pad_is_eos=pad_is_eos, steps=steps)
    work = Path(tempfile.mkdtemp(prefix="grpo-check-zoo-"))
    try:
        trainer = build_trainer(cell, work, trainer_cls=trainer_cls, dataset_size=16)
        run = train_checked(trainer, live=True)
        if run.outcome.status != "completed":
            raise RuntimeError(run.outcome.line)
        return TRLRun(trace=run.trace, result=run.result)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def trl_case(
    *,
    id: str,
    title: str,
    bugs: tuple[Bug, ...],
    trainer: Any,
    overrides: dict[str, Any] | None = None,
    pad_is_eos: bool = False,
    steps: int = 1,
    seen_in: str = "",
    description: str = "",
) -> Case:
    """Register a TRL case; ``trainer`` is a zero-argument callable returning the GRPOTrainer (sub)class."""
    overrides = dict(overrides or {})

    def make() -> TRLRun:
        return _run_trl(trainer, overrides, pad_is_eos=pad_is_eos, steps=steps)

    return register(
        Case(
            id=id,
            title=title,
            bugs=bugs,
            pipeline="trl",
            make=make,
            seen_in=seen_in,
            description=description,
            config={**overrides, "pad_is_eos": pad_is_eos, "steps": steps}
            if (overrides or pad_is_eos)
            else {},
        )
    )


# ------------------------------------------------------------------------------------------------- trainers
def _base() -> Any:
    from trl import GRPOTrainer

    return GRPOTrainer


def _sign_flip_logps(base: Any) -> Any:
    class LogSoftmaxSignFlip(base):
        """A fork's log-prob helper computing logsumexp − logit, i.e. −log p, for every token (S1)."""

        def _get_per_token_logps_and_entropies(self, *args: Any, **kwargs: Any):
            logps, entropies, *rest = super()._get_per_token_logps_and_entropies(*args, **kwargs)
            return (-logps, entropies, *rest)

    return LogSoftmaxSignFlip


def _epsilon_typo(base: Any) -> Any:
    from trl import GRPOTrainer

    patched = source_patched(
        GRPOTrainer._generate_and_score_completions,
        [("advantages = advantages / (std_rewards + 1e-4)", "advantages = advantages / (std_rewards + 1e4)")],
    )
    return type("AdvantageEpsilonTypo", (base,), {"_generate_and_score_completions": patched})


def _blank_decode(base: Any) -> Any:
    import re

    class DecodeKeepsExtractedAnswer(base):
        """A fork's ``_generate`` replaces each completion with the answer its extractor found (the first run of
        digits), '' when there is none (S3): the rewards and the logs see the extraction, not the completion."""

        answer_pattern = re.compile(r"[0-9]+")

        def _generate(self, prompts):
            prompt_ids, completion_ids, tool_mask, completions, *rest = super()._generate(prompts)
            found = [self.answer_pattern.search(text) for text in completions]
            completions = [match.group(0) if match else "" for match in found]
            return (prompt_ids, completion_ids, tool_mask, completions, *rest)

    return DecodeKeepsExtractedAnswer


def _prefix_strip_decode(base: Any) -> Any:
    class DecodeStripsPrefix(base):
        """A fork's ``_generate`` strips a 2-character role prefix the template never emitted (S3, mangled
        rather than blank: the text is non-empty but is not the decode of the completion tokens)."""

        def _generate(self, prompts):
            prompt_ids, completion_ids, tool_mask, completions, *rest = super()._generate(prompts)
            completions = [text[2:] for text in completions]
            return (prompt_ids, completion_ids, tool_mask, completions, *rest)

    return DecodeStripsPrefix


def _skillsbench_scenario() -> Any:
    return _blank_decode(_epsilon_typo(_sign_flip_logps(_base())))


def _loss_patch(name: str, replacements: list[tuple[str, str]]) -> Any:
    def factory() -> Any:
        from trl import GRPOTrainer

        patched = source_patched(GRPOTrainer._compute_loss, replacements)
        return type(name, (GRPOTrainer,), {"_compute_loss": patched})

    return factory


trl_case(
    id="trl-skillsbench-S1-S2-S3",
    title="the SkillsBench debug-trl-grpo scenario on TRL's GRPOTrainer: S1 + S2 + S3 in one run",
    bugs=(Bug("S1", "logps"), Bug("S2", "advantages"), Bug("S3", "batch")),
    trainer=_skillsbench_scenario,
    overrides={"beta": 0.04},
    seen_in="the SkillsBench debug-trl-grpo task (a TRL 0.17-based pipeline)",
    description="log-prob helper sign-flipped, advantage ε typed 1e4, completions replaced by the answer an "
    "extractor found in them ('' when none); each must be found in its own stage in one run",
)
trl_case(
    id="trl-S1-logsoftmax-sign",
    title="GRPOTrainer with a sign-flipped log-prob helper",
    bugs=(Bug("S1", "logps"),),
    trainer=lambda: _sign_flip_logps(_base()),
    seen_in="the SkillsBench debug-trl-grpo task (a TRL 0.17-based pipeline)",
)
trl_case(
    id="trl-S2-adv-epsilon-1e4",
    title="GRPOTrainer with the advantage epsilon typed 1e4",
    bugs=(Bug("S2", "advantages"),),
    trainer=lambda: _epsilon_typo(_base()),
    seen_in="the SkillsBench debug-trl-grpo task (a TRL 0.17-based pipeline)",
)
trl_case(
    id="trl-S3-decode-blank",
    title="GRPOTrainer whose completions are replaced by the extracted answer (blank when none)",
    bugs=(Bug("S3", "batch"),),
    trainer=lambda: _blank_decode(_base()),
    seen_in="the SkillsBench debug-trl-grpo task (a TRL 0.17-based pipeline)",
)
trl_case(
    id="trl-S3-decode-strips-prefix",
    title="GRPOTrainer whose decode post-processing drops the first two characters (text mangled, not blank)",
    bugs=(Bug("S3", "batch"),),
    trainer=lambda: _prefix_strip_decode(_base()),
    seen_in="the SkillsBench debug-trl-grpo task (a TRL 0.17-based pipeline): 'blanks or mangles completion text'",
)
trl_case(
    id="trl-4-loss-not-scaled-by-gas",
    title="GRPOTrainer whose grpo loss is not divided by gradient_accumulation_steps",
    bugs=(Bug("4", "loss"),),
    trainer=_loss_patch(
        "LossNotScaledByGas",
        [
            (
                'if self.loss_type in ["grpo", "sapo"]:\n            loss = ((per_token_loss * mask).sum(-1) / '
                "mask.sum(-1).clamp(min=1.0)).mean()\n            normalizer = self.current_gradient_accumulation_steps",
                'if self.loss_type in ["grpo", "sapo"]:\n            loss = ((per_token_loss * mask).sum(-1) / '
                "mask.sum(-1).clamp(min=1.0)).mean()\n            normalizer = 1.0",
            )
        ],
    ),
    overrides={"loss_type": "grpo", "gradient_accumulation_steps": 2},
    seen_in="TRL #3021; unsloth #3006",
)
trl_case(
    id="trl-21-clipping-not-used",
    title="GRPOTrainer whose loss ignores the clipped ratio",
    bugs=(Bug("21", "loss"),),
    trainer=_loss_patch(
        "ClippingNotUsed",
        [
            (
                "per_token_loss = -torch.min(per_token_loss1, per_token_loss2)",
                "per_token_loss = -per_token_loss1",
            )
        ],
    ),
    overrides={"loss_type": "dapo", "num_iterations": 2, "steps_per_generation": 2},
    steps=3,  # step 2 re-uses the first generation batch after two updates: clipping is active there
    seen_in="verl PR #784; rllm #81",
)
trl_case(
    id="trl-18-k1-as-kl-loss",
    title="GRPOTrainer using k1 (logp − ref) as the KL loss",
    bugs=(Bug("18", "kl"),),
    trainer=_loss_patch(
        "K1AsKlLoss",
        [
            (
                "torch.exp(ref_per_token_logps - per_token_logps) - (ref_per_token_logps - per_token_logps) - 1",
                "per_token_logps - ref_per_token_logps",
            )
        ],
    ),
    overrides={"beta": 0.04},
    steps=2,
    seen_in="arXiv 2512.21852 (TRL #4967)",
)

trl_case(
    id="ctl-trl-grpo",
    title="TRL GRPOTrainer unpatched: grpo, β=0.04, T=0.9, 2 steps",
    bugs=(),
    trainer=_base,
    overrides={"beta": 0.04},
    steps=2,
)
trl_case(
    id="ctl-trl-dapo-gas2-mu2",
    title="TRL GRPOTrainer unpatched: dapo, GAS=2, μ=2, 3 steps",
    bugs=(),
    trainer=_base,
    overrides={
        "loss_type": "dapo",
        "gradient_accumulation_steps": 2,
        "num_iterations": 2,
        "steps_per_generation": 2,
    },
    steps=3,
)
