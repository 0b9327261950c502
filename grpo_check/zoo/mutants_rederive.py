"""Mutants and controls for what a trainer hands its loss: the token count, the completion ends, the old
log-probs. Each runs a factory of :mod:`grpo_check.zoo.rederive_factories` exactly as
``grpo-check compare --trainer FILE:FUNCTION --steps 2`` does (the full check attached while it trains), on
a tiny Qwen2 policy with two EOS ids and an arithmetic task, not the demo's model.

The bugs are invisible to a comparison fed the trainer's own inputs (the reference divides by the same wrong
N, masks with the same wrong mask, takes the same missing old log-probs as on-policy): only the
re-derivations (:mod:`grpo_check.rederive`) find them.
"""

from __future__ import annotations

from typing import Any

from grpo_check.zoo.catalog import Bug, Case, register

FACTORIES = "grpo_check/zoo/rederive_factories.py"
ENTRY_POINT = "compare --trainer"


def _run_compare_trainer(function: str, steps: int) -> Any:
    """``grpo-check compare --trainer`` in-process: the factory trained with the full check attached."""
    from grpo_check.trl.runner import check_factory
    from grpo_check.zoo.mutants_trl import TRLRun

    run = check_factory(f"grpo_check.zoo.rederive_factories:{function}", steps)
    if run.outcome.status != "completed":
        raise RuntimeError(run.outcome.line)
    return TRLRun(trace=run.trace, result=run.result)


def _case(
    *, id: str, title: str, function: str, bugs: tuple[Bug, ...] = (), steps: int = 2, **text: str
) -> Case:
    def make() -> Any:
        return _run_compare_trainer(function, steps)

    return register(
        Case(
            id=id,
            title=title,
            bugs=bugs,
            pipeline="trl",
            make=make,
            seen_in=text.get("seen_in", ""),
            description=text.get("description", ""),
            config={"factory": f"{FACTORIES}:{function}", "entry_point": ENTRY_POINT, "steps": steps},
        )
    )


_case(
    id="trl-rederive-count-masked-tokens",
    title="dapo normaliser N counts the tokens of truncated completions the loss masks out",
    function="build_count_before_truncation_mask",
    bugs=(Bug("4", "loss", also=("5",)),),
    seen_in="TRL #3021 / PR #6024 class (normaliser not matching the loss mask)",
    description="num_items_in_batch is gathered from the completion mask before mask_truncated_completions "
    "zeroes truncated rows: the dapo loss divides by tokens it never trains on",
)
_case(
    id="trl-rederive-secondary-eos-ignored",
    title="a secondary EOS id of the generation config is ignored when masking completions",
    function="build_secondary_eos_ignored",
    bugs=(Bug("11", "batch"),),
    seen_in="TRL PR #2708 class (generation_config lists several EOS ids, the trainer masks with one)",
    description="trainer.eos_token_ids holds only the tokenizer's EOS; generation stops at <|im_end|> too, and "
    "the mask runs on over the padding after it",
)
_case(
    id="trl-rederive-old-logps-skipped",
    title="old log-probs dropped although the batch is trained on after an optimizer step (num_iterations=2)",
    function="build_old_logps_skipped",
    bugs=(Bug("17", "ratio"),),
    seen_in="open-instruct PR #755, TRL PR #3725 class",
    description="the second iteration over a generation batch uses old = logps.detach(): ρ ≡ 1, no clipping",
)
_case(
    id="trl-rederive-unscorable-scored-zero",
    title="rows no reward function could score are summed to 0 and kept in the group statistics",
    function="build_unscorable_scored_zero",
    bugs=(Bug("8", "advantages"),),
    seen_in="TRL PR #5773, #5775",
    description="the NaN marking of unscorable rows is missing before the group mean and std (scale_rewards="
    "'batch'): they count as reward 0 and carry an advantage",
)
_case(
    id="ctl-trl-rederive-truncated-masked",
    title="control: dapo with mask_truncated_completions, truncated rows masked and left out of N",
    function="build_truncating_dapo",
)
_case(
    id="ctl-trl-rederive-two-eos",
    title="control: completions end at either EOS id (tokenizer's and generation config's)",
    function="build_two_eos",
)
_case(
    id="ctl-trl-rederive-spg-below-gas",
    title="control: steps_per_generation 2 < GAS 3 (not a multiple), old log-probs taken at generation",
    function="build_spg_below_gas",
)
_case(
    id="ctl-trl-rederive-unscorable-rows",
    title="control: a verifier that returns None for some completions, unscorable rows left out of the statistics",
    function="build_unscorable_rows",
)
