"""The correct hand-written loop: what it records, and that its maths is GRPO's."""

from __future__ import annotations

import torch

from grpo_check.zoo.loop import GRPOLoop, LoopConfig


def _micro_batches(run):
    return [s for s in run.trace.steps if s.meta.get("scope") == "micro_batch"]


def test_records_every_stage_and_the_gradient():
    run = GRPOLoop(LoopConfig(beta=0.04, num_iterations=2)).run()
    generation = [s for s in run.trace.steps if s.meta.get("scope") == "generation"]
    assert len(generation) == 1 and generation[0].has("group_index", "rewards_per_func", "advantages")
    steps = _micro_batches(run)
    assert [s.meta["step"] for s in steps] == [0, 1]
    for name in (
        "completion_mask",
        "sampler_logps",
        "ref_logps",
        "old_logps",
        "ratio",
        "kl",
        "loss",
        "logps_grad",
    ):
        assert steps[0].has(name), name
    assert set(run.snapshots) == {0, 1}


def test_advantages_sum_to_zero_per_group_and_mask_ends_at_first_eos():
    loop = GRPOLoop(LoopConfig())
    batch = loop.generate_and_score()
    for group in batch["group_index"].unique():
        assert abs(float(batch["advantages"][batch["group_index"] == group].sum())) < 1e-5
    ids, mask = batch["completion_ids"], batch["completion_mask"]
    for row in range(ids.shape[0]):
        eos = (ids[row] == loop.vocab.eos_token_id).nonzero()
        length = int(eos[0]) + 1 if len(eos) else ids.shape[1]
        assert mask[row, :length].all() and not mask[row, length:].any()


def test_logps_are_log_probabilities_of_the_sampled_tokens():
    loop = GRPOLoop(LoopConfig(temperature=0.7))
    batch = loop.generate_and_score()
    with torch.no_grad():
        logps = loop.per_token_logps(loop.model, *loop._model_inputs(batch))
    mask = batch["completion_mask"].bool()
    assert (logps[mask] <= 0).all()
    # the trainer forward (with position ids) agrees with the engine's incremental forward
    assert torch.allclose(logps[mask], batch["sampler_logps"][mask], atol=1e-4)


def test_policy_snapshot_reproduces_the_step_logps():
    run = GRPOLoop(LoopConfig(num_iterations=2)).run()
    step = _micro_batches(run)[1]
    loop = GRPOLoop(LoopConfig())
    with torch.no_grad():
        again = loop.per_token_logps(
            run.policy_at(1),
            step["prompt_ids"],
            step["prompt_mask"],
            step["completion_ids"],
            step["completion_mask"],
        )
    mask = step["completion_mask"].bool()
    assert torch.allclose(again[mask], step["logps"][mask], atol=1e-5)


def test_gradient_accumulation_records_one_step_per_micro_batch_with_whole_or_extra_groups():
    run = GRPOLoop(LoopConfig(gradient_accumulation_steps=2)).run()  # 12 rows, G=4: 6 rows per micro-batch
    steps = _micro_batches(run)
    assert [s.meta["micro_batch"] for s in steps] == [0, 1]
    assert all(s.has("extra.group_index") and not s.has("group_index") for s in steps)
