"""Each re-derivation fires on a broken input and is silent on a correct one (hand-built tensors)."""

from __future__ import annotations

import math

import pytest
import torch

from grpo_check.config import GRPOSpec
from grpo_check.findings import Verdict
from grpo_check.rederive import rederive_step
from grpo_check.trace.model import Trace, TraceStep

PAD, EOS, IM_END = 0, 2, 3
SOURCES = {"tokenizer": [EOS], "generation_config": [IM_END, EOS], "trainer": [EOS]}


def finding(step: TraceStep, check: str, spec: GRPOSpec | None = None, trace: Trace | None = None):
    found = [
        f for f in rederive_step(step, spec or GRPOSpec(num_generations=2), trace) if f.check_id == check
    ]
    assert len(found) == 1, [f.check_id for f in found]
    return found[0]


# ------------------------------------------------------------------------------------------ completion ends
IDS = torch.tensor(
    [
        [5, 6, EOS, PAD, PAD],  # ends at the tokenizer's EOS
        [5, IM_END, PAD, PAD, PAD],  # ends at the generation config's EOS
        [5, 6, 7, 8, 9],  # truncated
        [7, 7, EOS, PAD, PAD],
    ]
)
GOOD_MASK = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])


def ends_step(mask: torch.Tensor, **meta) -> TraceStep:
    return TraceStep(
        tensors={"completion_ids": IDS, "completion_mask": mask},
        meta={"eos_token_id_sources": SOURCES, "eos_token_ids": [EOS], "pad_token_id": PAD, **meta},
    )


def test_completion_ends_silent_on_every_eos_honoured():
    f = finding(ends_step(GOOD_MASK), "rederive.completion_ends")
    assert f.verdict is Verdict.PASS, f.message()
    assert f.stage == "batch" and f.kind == "rederive" and f.details["family"] == "re-derivations"


def test_completion_ends_fires_on_a_secondary_eos_ignored():
    mask = GOOD_MASK.clone()
    mask[1] = 1  # masked on over the padding after <|im_end|>
    f = finding(ends_step(mask), "rederive.completion_ends")
    assert f.verdict is Verdict.FAIL
    assert (f.where.row, f.where.token) == (1, 2)
    assert f.catalog_id == "11"
    assert "secondary EOS id 3" in f.likely_cause and "generation_config" in f.likely_cause
    assert "mask covers 5 token(s), expected 2" in f.explanation


def test_completion_ends_fires_on_tokens_after_eos():
    mask = GOOD_MASK.clone()
    mask[3] = 1
    f = finding(ends_step(mask), "rederive.completion_ends")
    assert f.verdict is Verdict.FAIL and f.where.row == 3
    assert "after the first EOS" in f.likely_cause


def test_completion_ends_with_mask_truncated_completions():
    spec = GRPOSpec(num_generations=2, mask_truncated_completions=True)
    masked = GOOD_MASK.clone()
    masked[2] = 0
    assert finding(ends_step(masked), "rederive.completion_ends", spec).verdict is Verdict.PASS
    kept = finding(ends_step(GOOD_MASK), "rederive.completion_ends", spec)
    assert kept.verdict is Verdict.FAIL and kept.where.row == 2
    assert "mask_truncated_completions is on" in kept.likely_cause
    # and the converse: masking a truncated row without the option is wrong too
    wrong = finding(ends_step(masked), "rederive.completion_ends")
    assert wrong.verdict is Verdict.FAIL and "is off" in wrong.likely_cause


def test_completion_ends_checks_a_recorded_truncated_flag():
    step = ends_step(GOOD_MASK)
    step.tensors["truncated"] = torch.tensor([False, False, True, False])
    assert finding(step, "rederive.completion_ends").verdict is Verdict.PASS
    step.tensors["truncated"] = torch.tensor([False, True, True, False])  # row 1 ended at <|im_end|>
    f = finding(step, "rederive.completion_ends")
    assert f.verdict is Verdict.FAIL and f.where.row == 1


def test_completion_ends_not_captured_without_eos_ids():
    step = TraceStep(tensors={"completion_ids": IDS, "completion_mask": GOOD_MASK})
    f = finding(step, "rederive.completion_ends")
    assert f.verdict is Verdict.NOT_CAPTURED and "EOS ids" in f.explanation


def test_completion_ends_trainer_only_ids_of_a_trl_trace_are_not_a_pass():
    step = TraceStep(
        tensors={"completion_ids": IDS[[0, 2]], "completion_mask": GOOD_MASK[[0, 2]]},
        meta={"eos_token_ids": [EOS], "pad_token_id": PAD},
    )
    trace = Trace(manifest={"trainer": "trl.GRPOTrainer (GRPOTrainer)"}, steps=[step])
    f = finding(step, "rederive.completion_ends", trace=trace)
    assert f.verdict is Verdict.INCONCLUSIVE and "eos_token_id_sources" in f.explanation


# ------------------------------------------------------------------------------------------ N
def generation_trace(n_given: float, *, truncated_zeroed: bool = True) -> Trace:
    """One generation batch of 4 rows over two micro-batches (global rows 2,0 and 3,1), dapo."""
    ids = IDS
    mask = GOOD_MASK.clone()
    if truncated_zeroed:
        mask[2] = 0
    gen = TraceStep(
        tensors={"group_index": torch.tensor([0, 0, 1, 1])},
        meta={"scope": "generation", "generation": 0, "step": 0},
    )
    steps = [gen]
    for micro, rows in enumerate(([2, 0], [3, 1])):
        steps.append(
            TraceStep(
                tensors={"completion_ids": ids[rows], "completion_mask": mask[rows]},
                meta={
                    "scope": "micro_batch",
                    "generation": 0,
                    "global_rows": rows,
                    "step": 0,
                    "micro_batch": micro,
                    "num_items_in_batch": n_given,
                    "num_processes": 1,
                    "eos_token_id_sources": SOURCES,
                    "pad_token_id": PAD,
                },
            )
        )
    return Trace(manifest={"trainer": "test"}, steps=steps)


DAPO = GRPOSpec(num_generations=2, loss_type="dapo", mask_truncated_completions=True)


def test_num_items_silent_when_it_counts_the_loss_masks():
    trace = generation_trace(8.0)  # 3 + 2 + 0 + 3
    for step in trace.steps[1:]:
        f = finding(step, "rederive.num_items_in_batch", DAPO, trace)
        assert f.verdict is Verdict.PASS, f.message()
        assert f.details["derived"] == 8.0


def test_num_items_fires_when_it_counts_masked_truncated_tokens():
    trace = generation_trace(13.0)  # + the 5 tokens of the truncated row
    f = finding(trace.steps[1], "rederive.num_items_in_batch", DAPO, trace)
    assert f.verdict is Verdict.FAIL and f.stage == "loss" and f.catalog_id == "4"
    assert f.figure == 5.0
    assert "truncated completions" in f.likely_cause
    assert "N = 13 given, 8 re-derived" in f.explanation


def test_num_items_counts_tool_mask():
    trace = generation_trace(8.0)
    for step in trace.steps[1:]:
        step.tensors["tool_mask"] = torch.ones_like(step["completion_mask"])
    trace.steps[1].tensors["tool_mask"][1, 1] = 0  # row 0, token 1 is a tool output
    assert finding(trace.steps[1], "rederive.num_items_in_batch", DAPO, trace).verdict is Verdict.FAIL
    trace2 = generation_trace(7.0)
    for step in trace2.steps[1:]:
        step.tensors["tool_mask"] = torch.ones_like(step["completion_mask"])
    trace2.steps[1].tensors["tool_mask"][1, 1] = 0
    assert finding(trace2.steps[1], "rederive.num_items_in_batch", DAPO, trace2).verdict is Verdict.PASS


def test_num_items_inconclusive_when_a_micro_batch_is_missing():
    trace = generation_trace(13.0)
    del trace.steps[2]
    f = finding(trace.steps[1], "rederive.num_items_in_batch", DAPO, trace)
    assert f.verdict is Verdict.NOT_CAPTURED and "2 of generation 0's 4 rows" in f.explanation


def test_num_items_from_recorded_generation_loss_tokens_live():
    step = generation_trace(13.0).steps[1]
    step.meta["generation_loss_tokens"] = 8.0
    assert finding(step, "rederive.num_items_in_batch", DAPO).verdict is Verdict.FAIL
    step.meta["num_items_in_batch"] = 8.0
    assert finding(step, "rederive.num_items_in_batch", DAPO).verdict is Verdict.PASS


def test_num_items_unused_by_grpo_is_a_warning_not_a_failure():
    trace = generation_trace(13.0)
    f = finding(
        trace.steps[1], "rederive.num_items_in_batch", GRPOSpec(num_generations=2, loss_type="grpo"), trace
    )
    assert f.verdict is Verdict.WARN


# ------------------------------------------------------------------------------------------ old logps
def old_logps_trace(use_step: int, old: torch.Tensor | None) -> Trace:
    logps = torch.tensor([[-1.0, -2.0], [-0.5, -0.25]])
    gen = TraceStep(
        tensors={"group_index": torch.tensor([0, 0])},
        meta={"scope": "generation", "generation": 4, "step": 3},
    )
    tensors = {"logps": logps, "completion_mask": torch.ones(2, 2)}
    if old is not None:
        tensors["old_logps"] = old
    micro = TraceStep(tensors=tensors, meta={"scope": "micro_batch", "generation": 4, "step": use_step})
    return Trace(manifest={}, steps=[gen, micro])


def test_old_logps_on_policy_expects_nothing():
    trace = old_logps_trace(3, None)
    f = finding(trace.steps[1], "rederive.old_logps_required", trace=trace)
    assert f.verdict is Verdict.PASS and "ρ ≡ 1 is expected" in f.explanation


def test_old_logps_fires_when_skipped_after_an_optimizer_step():
    trace = old_logps_trace(4, None)
    f = finding(trace.steps[1], "rederive.old_logps_required", trace=trace)
    assert f.verdict is Verdict.FAIL and f.stage == "ratio" and f.catalog_id == "17"
    assert "1 optimizer step(s) between generation (step 3) and use (step 4)" in f.explanation


def test_old_logps_aliased_to_logps_fail_when_the_policy_moved():
    trace = old_logps_trace(5, torch.tensor([[-1.0, -2.0], [-0.5, -0.25]]))
    # without earlier log-probs of these rows, a policy that did not move (lr 0) gives the same: a warning
    f = finding(trace.steps[1], "rederive.old_logps_required", trace=trace)
    assert f.verdict is Verdict.WARN and "equal logps bitwise" in f.explanation
    # the same rows scored at the generation step (iteration 0) with other log-probs: the policy moved
    for step in trace.steps[1:]:
        step.meta["global_rows"] = [0, 1]
    first_use = TraceStep(
        tensors={"logps": torch.tensor([[-1.2, -2.0], [-0.5, -0.25]]), "completion_mask": torch.ones(2, 2)},
        meta={"scope": "micro_batch", "generation": 4, "step": 3, "global_rows": [1, 0]},
    )
    trace.steps.append(first_use)
    f = finding(trace.steps[1], "rederive.old_logps_required", trace=trace)
    assert f.verdict is Verdict.FAIL and "the policy moved" in f.explanation
    # rows are paired by global row: row 1 here is row 0 there, |(-0.5, -0.25) - (-1.2, -2.0)| = 1.75 at most
    assert f.figure == 1.75 and "at optimizer step 3" in f.explanation


def test_old_logps_silent_when_taken_before_the_update():
    trace = old_logps_trace(4, torch.tensor([[-1.1, -2.0], [-0.5, -0.3]]))
    f = finding(trace.steps[1], "rederive.old_logps_required", trace=trace)
    assert f.verdict is Verdict.PASS and "differ from logps on 2 of 4" in f.explanation


def test_old_logps_uses_recorded_generation_step_and_ratio():
    step = TraceStep(
        tensors={"ratio": torch.ones(2, 3)}, meta={"step": 2, "generation_step": 1, "scope": "micro_batch"}
    )
    # no evidence the policy moved: a warning
    assert finding(step, "rederive.old_logps_required").verdict is Verdict.WARN
    step.meta["policy_changed_since_generation"] = True  # the parameters' fingerprints differ: it moved
    moved = finding(step, "rederive.old_logps_required")
    assert moved.verdict is Verdict.FAIL and "fingerprint" in moved.explanation
    step.meta["policy_changed_since_generation"] = False  # a zero update: ρ ≡ 1 is right
    assert finding(step, "rederive.old_logps_required").verdict is Verdict.PASS
    del step.meta["policy_changed_since_generation"]
    step.tensors["ratio"] = torch.tensor([[1.0, 1.01, 1.0], [1.0, 1.0, 1.0]])
    assert finding(step, "rederive.old_logps_required").verdict is Verdict.PASS


def test_old_logps_not_captured_without_the_generation_step():
    step = TraceStep(tensors={"logps": torch.zeros(1, 2)}, meta={"step": 2, "scope": "micro_batch"})
    f = finding(step, "rederive.old_logps_required")
    assert f.verdict is Verdict.NOT_CAPTURED and "generation_step" in f.explanation


# ------------------------------------------------------------------------------------------ tool mask
def tool_step(grad: torch.Tensor) -> TraceStep:
    return TraceStep(
        tensors={
            "completion_ids": torch.tensor([[5, 6, 7, EOS]]),
            "completion_mask": torch.ones(1, 4),
            "tool_mask": torch.tensor([[1, 0, 0, 1]]),
            "logps_grad": grad,
        }
    )


def test_tool_tokens_silent_when_untrained():
    f = finding(tool_step(torch.tensor([[0.1, 0.0, 0.0, -0.2]])), "rederive.tool_tokens_untrained")
    assert f.verdict is Verdict.PASS and "2 tool-output token(s)" in f.explanation


def test_tool_tokens_fire_when_trained_on():
    f = finding(tool_step(torch.tensor([[0.1, 0.0, 0.3, -0.2]])), "rederive.tool_tokens_untrained")
    assert f.verdict is Verdict.FAIL and (f.where.row, f.where.token) == (0, 2)
    assert f.catalog_id == "28" and math.isclose(f.figure, 0.3, rel_tol=1e-6)


def test_tool_tokens_not_captured_without_gradient():
    step = tool_step(torch.zeros(1, 4))
    del step.tensors["logps_grad"]
    assert finding(step, "rederive.tool_tokens_untrained").verdict is Verdict.NOT_CAPTURED


# ------------------------------------------------------------------------------------------ unscorable rows
def unscorable_step(advantages: list[float]) -> TraceStep:
    nan = float("nan")
    return TraceStep(
        tensors={
            "rewards_per_func": torch.tensor([[1.0], [nan], [0.0], [0.5], [0.2], [0.9], [0.1], [0.4]]),
            "group_index": torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]),
            "advantages": torch.tensor(advantages),
        },
        meta={"scope": "generation"},
    )


SPEC4 = GRPOSpec(num_generations=4)


def _reference_advantages() -> list[float]:
    from grpo_check.reference.advantages import compute_advantages

    step = unscorable_step([0.0] * 8)
    return compute_advantages(step["rewards_per_func"], step["group_index"], SPEC4).advantages.tolist()


def test_unscorable_rows_silent_when_excluded():
    f = finding(unscorable_step(_reference_advantages()), "rederive.unscorable_rows", SPEC4)
    assert f.verdict is Verdict.PASS, f.message()


def test_unscorable_rows_silent_under_another_std_convention():
    scaled = [a * 0.8 if i < 4 else a for i, a in enumerate(_reference_advantages())]
    assert finding(unscorable_step(scaled), "rederive.unscorable_rows", SPEC4).verdict is Verdict.PASS


def test_unscorable_rows_fire_when_scored_zero_and_kept():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.5])  # the NaN row scored 0 and kept in the group
    leaked = ((rewards - rewards.mean()) / (rewards.std() + 1e-4)).tolist()
    leaked[1] = 0.0
    f = finding(unscorable_step(leaked + _reference_advantages()[4:]), "rederive.unscorable_rows", SPEC4)
    assert f.verdict is Verdict.FAIL and f.stage == "advantages" and f.catalog_id == "8"
    assert f.where.prompt == 0


def test_unscorable_rows_fire_on_a_nonzero_advantage():
    advantages = _reference_advantages()
    advantages[1] = 0.7
    f = finding(unscorable_step(advantages), "rederive.unscorable_rows", SPEC4)
    assert f.verdict is Verdict.FAIL and f.where.row == 1


@pytest.mark.parametrize("scope", ["generation", "micro_batch"])
def test_scope_selects_the_checks_that_apply(scope):
    step = TraceStep(tensors={}, meta={"scope": scope})
    stages = {f.stage for f in rederive_step(step, GRPOSpec())}
    assert stages == ({"advantages"} if scope == "generation" else {"batch", "loss", "ratio"})


def test_a_check_with_nothing_to_verify_reports_nothing():
    no_tool = tool_step(torch.zeros(1, 4))
    del no_tool.tensors["tool_mask"]
    grpo = GRPOSpec(num_generations=2, loss_type="grpo")
    scorable = unscorable_step(_reference_advantages())
    scorable.tensors["rewards_per_func"] = torch.ones(8, 1)
    for step, check, spec in (
        (no_tool, "rederive.tool_tokens_untrained", None),
        (
            TraceStep(tensors={"completion_mask": torch.ones(1, 2)}, meta={"step": 0}),
            "rederive.num_items_in_batch",
            grpo,
        ),
        (scorable, "rederive.unscorable_rows", SPEC4),
    ):
        assert [
            f.check_id for f in rederive_step(step, spec or GRPOSpec(), None) if f.check_id == check
        ] == []


@pytest.mark.parametrize("mask_len", [2, 3, 5])
def test_completion_ends_accepts_either_reading_of_a_pad_tail(mask_len):
    """No EOS, then pad ids: padding after a stop, or pad ids the policy sampled up to the length limit."""
    ids = torch.tensor([[5, 6, PAD, PAD, PAD]])
    mask = (torch.arange(5) < mask_len).int().unsqueeze(0)
    step = TraceStep(
        tensors={"completion_ids": ids, "completion_mask": mask},
        meta={"eos_token_id_sources": SOURCES, "pad_token_id": PAD},
    )
    assert finding(step, "rederive.completion_ends").verdict is Verdict.PASS
    step.tensors["completion_mask"] = torch.tensor([[1, 0, 0, 0, 0]])  # cuts into the generated tokens
    assert finding(step, "rederive.completion_ends").verdict is Verdict.FAIL


def test_completion_ends_holds_the_trainer_list_to_the_tokenizer_and_generation_config():
    """A trainer list with an id generation does not stop at cuts completions short: the re-derived end is
    the first id of the tokenizer's or the generation config's EOS ids."""
    ids = torch.tensor([[5, 9, 6, EOS, PAD]])
    cut = torch.tensor([[1, 1, 0, 0, 0]])  # the trainer masked at id 9
    sources = {"tokenizer": [EOS], "generation_config": [EOS], "trainer": [EOS, 9]}
    step = TraceStep(
        tensors={"completion_ids": ids, "completion_mask": cut},
        meta={"eos_token_id_sources": sources, "pad_token_id": PAD},
    )
    f = finding(step, "rederive.completion_ends")
    assert f.verdict is Verdict.FAIL and "expected 4" in f.explanation
    step.tensors["completion_mask"] = torch.tensor([[1, 1, 1, 1, 0]])
    assert finding(step, "rederive.completion_ends").verdict is Verdict.PASS


def test_meta_numbers_of_other_integer_kinds_are_read():
    import numpy as np

    step = TraceStep(
        tensors={"logps": torch.zeros(1, 2)},
        meta={"step": np.int64(2), "generation_step": torch.tensor(1), "scope": "micro_batch"},
    )
    assert finding(step, "rederive.old_logps_required").verdict is Verdict.FAIL
    step.meta["generation_step"] = "1"  # the wrong kind: not recorded
    assert finding(step, "rederive.old_logps_required").verdict is Verdict.NOT_CAPTURED
