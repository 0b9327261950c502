"""Correct controls: the same pipelines without any bug, across a configuration matrix.

None of these may fail. They cover every setting the mutants need to show their bug (T ≠ 1, top_p < 1,
GAS > 1, μ = 2, β > 0, pad == eos, tool tokens, NaN rewards, all-equal and singleton groups, two generation
rounds) and the legitimate conventions other frameworks use (population std, ε = 1e-6 / 1e-8), both declared
in the spec and left undeclared (which must be reported as a *convention*, never as a failure).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from grpo_check.zoo.catalog import control
from grpo_check.zoo.loop import GRPOLoop, LoopConfig


class _UndeclaredConvention(GRPOLoop):
    """A loop that *uses* one convention while its recorded spec keeps TRL's defaults (sample std, ε = 1e-4).

    ``convention`` holds the LoopConfig fields the loop computes with; the spec is built from the defaults.
    """

    convention: ClassVar[dict] = {}

    def __init__(self, config=None):
        super().__init__(dataclasses.replace(config or LoopConfig(), **self.convention))
        self._declared = config or LoopConfig()

    def run(self, recorder=None):
        from grpo_check.trace.recorder import Recorder

        recorder = Recorder(None, spec=self._declared.spec(), trainer=self.name)
        run = super().run(recorder)
        run.trace = recorder.close()
        run.spec = self._declared.spec()
        return run


class PopulationStdLoop(_UndeclaredConvention):
    """verl/OpenRLHF-style population std (÷G), spec left at TRL's sample std."""

    convention: ClassVar[dict] = {"std": "population"}


class Epsilon1e6Loop(_UndeclaredConvention):
    """verl's ε = 1e-6 in the std guard, spec left at TRL's 1e-4."""

    convention: ClassVar[dict] = {"adv_epsilon": 1e-6}


class Epsilon1e8Loop(_UndeclaredConvention):
    """OpenRLHF's ε = 1e-8 in the std guard, spec left at TRL's 1e-4."""

    convention: ClassVar[dict] = {"adv_epsilon": 1e-8}


_MATRIX: list[tuple[str, str, LoopConfig]] = [
    ("ctl-grpo", "grpo, β=0, GAS=1, μ=1 (TRL defaults)", LoopConfig()),
    (
        "ctl-grpo-kl",
        "grpo, β=0.04 (k3 with bias correction), two generation rounds",
        LoopConfig(beta=0.04, generation_rounds=2, learning_rate=1e-3),
    ),
    (
        "ctl-grpo-kl-no-bias-correction",
        "grpo, β=0.04, use_bias_correction_kl=False, two generation rounds",
        LoopConfig(beta=0.04, use_bias_correction_kl=False, generation_rounds=2, learning_rate=1e-3),
    ),
    ("ctl-bnpo-gas2", "bnpo, GAS=2", LoopConfig(loss_type="bnpo", gradient_accumulation_steps=2)),
    (
        "ctl-dr-grpo-kl",
        "dr_grpo, β=0.04, two generation rounds",
        LoopConfig(loss_type="dr_grpo", beta=0.04, generation_rounds=2, learning_rate=1e-3),
    ),
    (
        "ctl-dapo-gas4-mu2",
        "dapo, β=0.04, GAS=4, μ=2 (clipping active)",
        LoopConfig(
            loss_type="dapo", beta=0.04, num_prompts=4, gradient_accumulation_steps=4, num_iterations=2
        ),
    ),
    (
        "ctl-grpo-gas4",
        "grpo, GAS=4 (loss ÷ GAS)",
        LoopConfig(num_prompts=4, gradient_accumulation_steps=4),
    ),
    (
        "ctl-clip-higher-mu2",
        "ε_high = 0.28, μ=2, lr 1e-3 (clip-higher active)",
        LoopConfig(num_iterations=2, epsilon_high=0.28, learning_rate=1e-3),
    ),
    ("ctl-temperature-top-p", "T=0.7, top_p=0.8", LoopConfig(temperature=0.7, top_p=0.8)),
    ("ctl-pad-eq-eos", "pad == eos tokenizer, mask up to the first EOS", LoopConfig(pad_is_eos=True)),
    (
        "ctl-secondary-eos",
        "two EOS ids (end-of-turn too), mask up to the first of either",
        LoopConfig(secondary_eos=True),
    ),
    (
        "ctl-tool-tokens-masked",
        "tool answers inside completions, tool_mask applied",
        LoopConfig(tool_calls=True),
    ),
    (
        "ctl-edge-groups",
        "an unscorable (NaN) row and an all-equal group",
        LoopConfig(unscorable_rows=(1,), zero_reward_prompts=(2,)),
    ),
    ("ctl-singleton-groups", "G = 1 (every group a singleton)", LoopConfig(num_prompts=4, num_generations=1)),
    (
        "ctl-dropout-disabled-mu2",
        "dropout in the model config, disabled for training (TRL disable_dropout), μ=2",
        LoopConfig(dropout=0.1, disable_dropout=True, num_iterations=2),
    ),
    (
        "ctl-two-rounds-synced",
        "two generation rounds, weights synced to the sampler, lr 1e-3",
        LoopConfig(generation_rounds=2, learning_rate=1e-3),
    ),
    ("ctl-population-std-declared", "population std, declared in the spec", LoopConfig(std="population")),
    ("ctl-epsilon-1e6-declared", "ε = 1e-6, declared in the spec", LoopConfig(adv_epsilon=1e-6)),
]

for _id, _title, _config in _MATRIX:
    control(id=_id, title=_title, config=_config)

control(
    id="ctl-population-std-undeclared",
    title="population std used, spec says sample std (a convention, not a bug)",
    config=LoopConfig(),
    loop_class=PopulationStdLoop,
)
control(
    id="ctl-epsilon-1e6-undeclared",
    title="ε = 1e-6 used, spec says 1e-4 (a convention, not a bug)",
    config=LoopConfig(),
    loop_class=Epsilon1e6Loop,
)
control(
    id="ctl-epsilon-1e8-undeclared",
    title="ε = 1e-8 used, spec says 1e-4 (a convention, not a bug)",
    config=LoopConfig(zero_reward_prompts=(2,)),
    loop_class=Epsilon1e8Loop,
)
