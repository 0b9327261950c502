"""Recorder: a hand-written GRPO loop on a tiny model records a trace whose logps_grad is the true gradient."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from grpo_check import GRPOSpec, Recorder
from grpo_check.findings import InputError
from grpo_check.trace.io import load_trace

G, P, T, V = 3, 2, 4, 11  # generations per prompt, prompt length, completion length, vocabulary


class TinyLM(torch.nn.Module):
    """Embedding -> GRU -> vocabulary logits: a real (tiny) autoregressive model built from code."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(V, 8)
        self.rnn = torch.nn.GRU(8, 8, batch_first=True)
        self.head = torch.nn.Linear(8, V)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        hidden, _ = self.rnn(self.embed(input_ids))
        return self.head(hidden)


def grpo_batch(model: TinyLM, prompts: torch.Tensor, generator: torch.Generator):
    """Sample G completions per prompt, score them, return the batch tensors and group advantages."""
    prompt_ids = prompts.repeat_interleave(G, dim=0)
    ids = prompt_ids
    with torch.no_grad():
        for _ in range(T):
            probs = torch.softmax(model(ids)[:, -1], dim=-1)
            ids = torch.cat([ids, torch.multinomial(probs, 1, generator=generator)], dim=1)
    completion_ids = ids[:, P:]
    completion_mask = torch.ones_like(completion_ids)
    completion_mask[1, 2:] = 0  # one shorter completion
    group_index = torch.arange(prompts.shape[0]).repeat_interleave(G)
    rewards = (completion_ids % 2 == 0).float().mean(dim=1)
    grouped = rewards.view(-1, G)
    advantages = ((grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + 1e-4)).view(-1)
    return prompt_ids, completion_ids, completion_mask, group_index, rewards, advantages


def policy_logps(model: TinyLM, prompt_ids: torch.Tensor, completion_ids: torch.Tensor) -> torch.Tensor:
    logits = model(torch.cat([prompt_ids, completion_ids], dim=1))[:, P - 1 : -1]
    return torch.log_softmax(logits, dim=-1).gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)


def grpo_loss(logps, old_logps, advantages, completion_mask):
    ratio = torch.exp(logps - old_logps)
    per_token_loss = -torch.min(ratio * advantages[:, None], ratio.clamp(0.8, 1.2) * advantages[:, None])
    loss = ((per_token_loss * completion_mask).sum(1) / completion_mask.sum(1)).mean()
    return ratio, per_token_loss, loss


def run_loop(rec: Recorder, steps: int = 2, backward_inside: bool = True) -> list[torch.Tensor]:
    """Run the loop, recording; returns the autograd gradients ∂loss/∂logps obtained with retain_grad."""
    torch.manual_seed(0)
    model = TinyLM()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    generator = torch.Generator().manual_seed(1)
    prompts = torch.randint(0, V, (2, P), generator=generator)
    autograd_grads = []
    for step in range(steps):
        prompt_ids, completion_ids, completion_mask, group_index, rewards, advantages = grpo_batch(
            model, prompts, generator
        )
        with rec.step(step=step, micro_batch=0, rank=0) as s:
            s.record(
                prompt_ids=prompt_ids,
                prompt_mask=torch.ones_like(prompt_ids),
                completion_ids=completion_ids,
                completion_mask=completion_mask,
                group_index=group_index,
                rewards_per_func=rewards[:, None],
                rewards=rewards,
                advantages=advantages,
            )
            s.record_text(completion_text=[" ".join(map(str, row.tolist())) for row in completion_ids])
            s.meta.update(num_items_in_batch=int(completion_mask.sum()))
            logps = s.watch("logps", policy_logps(model, prompt_ids, completion_ids))
            logps.retain_grad()
            old_logps = logps.detach()
            ratio, per_token_loss, loss = grpo_loss(logps, old_logps, advantages, completion_mask)
            s.record(old_logps=old_logps, ratio=ratio, per_token_loss=per_token_loss, loss=loss)
            if backward_inside:
                loss.backward()
        if not backward_inside:
            loss.backward()  # after the with block: the recorder must still catch the gradient
        autograd_grads.append(logps.grad.clone())
        optimizer.step()
        optimizer.zero_grad()
    return autograd_grads


def closed_form_grpo_grad(step) -> torch.Tensor:
    """At ratio 1 the GRPO loss gradient is −A_i · mask_{i,t} / (|o_i| · B)."""
    mask = step["completion_mask"].float()
    return -step["advantages"][:, None] * mask / mask.sum(1, keepdim=True) / mask.shape[0]


@pytest.mark.parametrize("backward_inside", [True, False])
def test_recorded_logps_grad_equals_autograd(tmp_path: Path, backward_inside: bool) -> None:
    rec = Recorder(tmp_path / "t", spec=GRPOSpec(num_generations=G, loss_type="grpo"), trainer="tiny-loop")
    autograd_grads = run_loop(rec, backward_inside=backward_inside)
    trace = rec.close()
    assert len(trace.steps) == 2
    for step, expected in zip(trace.steps, autograd_grads, strict=True):
        assert "missing_grads" not in step.meta
        torch.testing.assert_close(step["logps_grad"], expected)
        torch.testing.assert_close(step["logps_grad"], closed_form_grpo_grad(step))
    on_disk = load_trace(tmp_path / "t", strict=True)
    assert on_disk.manifest["trainer"] == "tiny-loop"
    assert on_disk.spec().num_generations == G
    for got, want in zip(on_disk.steps, trace.steps, strict=True):
        assert set(got.tensors) == set(want.tensors)
        torch.testing.assert_close(got["logps_grad"], want["logps_grad"])
        assert got.completion_text == want.completion_text
        assert got.meta["num_items_in_batch"] == want.meta["num_items_in_batch"]


def test_steps_are_streamed_to_disk_before_close(tmp_path: Path) -> None:
    rec = Recorder(tmp_path / "t", spec={"num_generations": G}, trainer="tiny-loop")
    run_loop(rec, steps=2)
    # no close(): as if the process was killed here — both steps and the manifest are already on disk
    trace = load_trace(tmp_path / "t")
    assert [s.step for s in trace.steps] == [0, 1]
    assert trace.steps[1].has("logps_grad")
    assert [p.split(": ", 1)[1] for p in trace.problems] == [
        "field 'complete': the run did not close this trace (interrupted or crashed?): 2 complete step(s) read"
    ]
    rec.close()
    assert load_trace(tmp_path / "t", strict=True).problems == []


def test_late_gradient_lands_with_lazy_flush(tmp_path: Path) -> None:
    rec = Recorder(tmp_path / "t")
    run_loop(rec, steps=1, backward_inside=False)
    trace = load_trace(tmp_path / "t")  # the grad arrived after the block: step flushed on the hook
    assert trace.steps[0].has("logps_grad")


def test_missing_gradient_is_noted_not_fatal() -> None:
    rec = Recorder(None)
    x = torch.randn(2, 3, requires_grad=True)
    with rec.step(step=0) as s:
        s.watch("logps", x * 2)  # no backward ever runs
    with rec.step(step=1) as s:  # the next step flushes the previous one
        s.record(loss=torch.tensor(1.0))
    trace = rec.close()
    assert trace.steps[0].meta["missing_grads"] == ["logps_grad"]
    assert not trace.steps[0].has("logps_grad")
    assert trace.steps[0].has("logps")


def test_watch_without_grad_records_value_only() -> None:
    rec = Recorder(None)
    with rec.step(step=0) as s:
        s.watch("logps", torch.zeros(2, 3))
    (step,) = rec.close().steps
    assert step.has("logps") and not step.has("logps_grad")
    assert "does not require grad" in step.meta["watch_notes"][0]


def test_record_detaches_and_copies() -> None:
    rec = Recorder(None)
    value = torch.ones(2, 3, requires_grad=True)
    with rec.step(step=0) as s:
        s.record(logps=value)
        with torch.no_grad():
            value.mul_(5)  # an in-place edit after recording must not leak into the trace
    (step,) = rec.close().steps
    assert not step["logps"].requires_grad
    assert torch.equal(step["logps"], torch.ones(2, 3))


def test_every_and_stages_filters() -> None:
    rec = Recorder(None, every=2, stages={"batch", "grad"})
    run_loop(rec, steps=4)
    trace = rec.close()
    assert [s.step for s in trace.steps] == [0, 2]
    assert set(trace.steps[0].tensors) == {
        "prompt_ids",
        "prompt_mask",
        "completion_ids",
        "completion_mask",
        "group_index",
        "logps_grad",
    }


def test_unknown_name_is_rejected_and_extras_are_kept() -> None:
    rec = Recorder(None)
    with rec.step(step=0) as s:
        with pytest.raises(InputError) as info:
            s.record(logprobs=torch.zeros(2))
        assert info.value.field == "logprobs"
        s.record_extra(value_head=torch.zeros(2))
    (step,) = rec.close().steps
    assert step.has("extra.value_head")


def test_exception_inside_step_still_keeps_what_was_recorded(tmp_path: Path) -> None:
    rec = Recorder(tmp_path / "t")
    with pytest.raises(RuntimeError), rec.step(step=0) as s:
        s.record(loss=torch.tensor(float("nan")))
        raise RuntimeError("loss is NaN")
    trace = load_trace(tmp_path / "t")
    assert "loss is NaN" in trace.steps[0].meta["error"]


def test_bad_arguments() -> None:
    with pytest.raises(InputError):
        Recorder(None, every=0)
    with pytest.raises(InputError):
        Recorder(None, spec={"loss_type": "nope"})
    with pytest.raises(InputError):
        Recorder(None, spec={"no_such_field": 1})


def test_disk_only_recorder_and_context_manager(tmp_path: Path) -> None:
    with Recorder(tmp_path / "t", in_memory=False) as rec:
        run_loop(rec, steps=2)
    assert rec.close().steps == []  # nothing kept in memory ...
    assert [s.step for s in load_trace(tmp_path / "t").steps] == [0, 1]  # ... everything on disk
    assert load_trace(tmp_path / "t").manifest["num_steps"] == 2
    with pytest.raises(InputError, match="kept in memory"):
        Recorder(None, in_memory=False)


def test_same_step_twice_gets_distinct_entries(tmp_path: Path) -> None:
    rec = Recorder(tmp_path / "t")
    for iteration in range(2):  # num_iterations > 1: the same step / micro-batch recorded twice
        with rec.step(step=0, micro_batch=0, iteration=iteration) as s:
            s.record(loss=torch.tensor(float(iteration)))
    rec.close()
    names = sorted(p.name for p in (tmp_path / "t" / "steps").glob("*.json"))
    assert names == ["000000-mb00-r0-1.json", "000000-mb00-r0.json"]
    assert [s.meta["iteration"] for s in load_trace(tmp_path / "t").steps] == [0, 1]


def test_record_after_the_block_is_refused() -> None:
    rec = Recorder(None)
    with rec.step(step=0) as s:
        s.record(loss=torch.tensor(1.0))
    with pytest.raises(InputError, match="inside the block"):
        s.record(rewards=torch.zeros(2))
    with pytest.raises(InputError, match="inside the block"):
        s.record_text(completion_text=["a"])
    assert set(rec.close().steps[0].tensors) == {"loss"}


def test_one_backward_on_summed_micro_batch_losses_lands_every_gradient(tmp_path: Path) -> None:
    rec = Recorder(tmp_path / "t")
    weights = torch.randn(2, 3, requires_grad=True)
    losses, logps_by_micro_batch = [], []
    for micro_batch in range(2):
        with rec.step(step=0, micro_batch=micro_batch) as s:
            logps = s.watch("logps", torch.log_softmax(weights * (micro_batch + 1), dim=-1))
            logps.retain_grad()
            logps_by_micro_batch.append(logps)
            losses.append(-(logps * torch.tensor([[1.0], [-2.0]])).mean())
    (losses[0] + losses[1]).backward()  # gradient accumulation: one backward after the last micro-batch
    with rec.step(step=1) as s:  # the next optimizer step
        s.record(loss=torch.tensor(0.0))
    trace = rec.close()
    order = [(0, 0), (0, 1), (1, 0)]  # recording order, although micro-batch 1's gradient arrived first
    assert [(s.step, s.meta["micro_batch"]) for s in trace.steps] == order
    assert [(s.step, s.meta["micro_batch"]) for s in load_trace(tmp_path / "t").steps] == order
    for step, logps in zip(trace.steps[:2], logps_by_micro_batch, strict=True):
        assert "missing_grads" not in step.meta
        torch.testing.assert_close(step["logps_grad"], logps.grad)


def test_recorder_warns_when_a_step_will_not_load(tmp_path) -> None:
    """Inconsistent shapes used to be written silently and only reported when the trace was loaded."""
    rec = Recorder(tmp_path / "t", spec=GRPOSpec(num_generations=2))
    with pytest.warns(UserWarning, match=r"'logps': B = 3 along this tensor but B = 2"):
        with rec.step(step=0) as s:
            s.record(completion_mask=torch.ones(2, 3), logps=torch.zeros(3, 3))
        rec.close()


def test_recorder_under_a_file_is_an_input_error(tmp_path) -> None:
    (tmp_path / "afile").write_text("x")
    with pytest.raises(InputError, match="a parent of this path is a file"):
        Recorder(tmp_path / "afile" / "t", spec=GRPOSpec(num_generations=2))


# ------------------------------------------------------------------------------- misuse refused early
def _rows(n: int = 4) -> dict[str, torch.Tensor]:
    return {"completion_mask": torch.ones(n, 3, dtype=torch.long), "group_index": torch.arange(n) // 2}


@pytest.mark.parametrize("field", ["completion_text", "prompt_text"])
def test_text_with_the_wrong_row_count_is_refused_when_recorded(tmp_path: Path, field: str) -> None:
    rec = Recorder(tmp_path / "t")
    with rec.step(step=0) as s:
        s.record(**_rows())
        with pytest.raises(InputError) as info:
            s.record_text(**{field: ["a", "b", "c"]})
        assert info.value.field == field and "has 3 entries for 4 rows" in str(info.value)
        s.record_text(**{field: ["a", "b", "c", "d"]})  # the correct call still works
    rec.close()
    (step,) = load_trace(tmp_path / "t", strict=True).steps
    assert getattr(step, field) == ["a", "b", "c", "d"]


def test_text_recorded_before_the_rows_are_known_is_checked_when_they_are(tmp_path: Path) -> None:
    rec = Recorder(tmp_path / "t")
    with rec.step(step=0) as s:
        s.record(loss=torch.tensor(0.5))  # a scalar: B still unknown
        s.record_text(completion_text=["a", "b", "c"])
        with pytest.raises(InputError) as info:
            s.record(**_rows())
        assert info.value.field == "completion_text" and "has 3 entries for 4 rows" in str(info.value)
        assert not s.tensors.keys() & _rows().keys()  # the refused call recorded nothing
        s.record(**_rows(3))
    with rec.step(step=1) as s:
        s.record_text(completion_text=["a", "b"], prompt_text=["p", "p"])
        s.record(**_rows(2))
    rec.close()
    trace = load_trace(tmp_path / "t", strict=True)
    assert [s.completion_text for s in trace.steps] == [["a", "b", "c"], ["a", "b"]]
    assert [s["completion_mask"].shape[0] for s in trace.steps] == [3, 2]


def test_texts_of_different_lengths_or_a_bare_string_are_refused() -> None:
    rec = Recorder(None)
    with rec.step(step=0) as s:
        with pytest.raises(InputError, match="completion_text has 2") as info:
            s.record_text(completion_text=["a", "b"], prompt_text=["p"])
        assert info.value.field == "prompt_text"
        with pytest.raises(InputError, match="not a single string") as info:
            s.record_text(completion_text="one completion")
        assert info.value.field == "completion_text"
        s.record_text(completion_text=["one completion"], prompt_text=["p"])
    (step,) = rec.close().steps
    assert (step.completion_text, step.prompt_text) == (["one completion"], ["p"])


def test_unknown_stage_names_are_refused() -> None:
    with pytest.raises(InputError) as info:
        Recorder(None, stages={"advantage", "gradient"})
    message = str(info.value)
    assert info.value.field == "stages"
    assert "'advantage', 'gradient'" in message
    assert "valid stages: batch, rewards, advantages, logps, ratio, kl, loss, grad" in message
    with pytest.raises(InputError, match="not a single string"):
        Recorder(None, stages="batch")

    rec = Recorder(None, stages={"advantages", "grad"})  # the correct spelling records
    with rec.step(step=0) as s:
        s.record(advantages=torch.tensor([1.0, -1.0]), **_rows(2))
    (step,) = rec.close().steps
    assert set(step.tensors) == {"advantages"}


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"step": "zero"}, "step"),
        ({"step": 1.5}, "step"),
        ({"micro_batch": "1"}, "micro_batch"),
        ({"rank": True}, "rank"),
        ({"optimizer_steps_since_old_logps": "0"}, "optimizer_steps_since_old_logps"),
        ({"eos_token_ids": "23"}, "eos_token_ids"),
    ],
)
def test_wrongly_typed_step_coordinates_and_meta_are_refused(kwargs: dict, field: str) -> None:
    rec = Recorder(None)
    with pytest.raises(InputError) as info, rec.step(**kwargs):
        pass
    assert info.value.field == field
    assert rec.close().steps == []


def test_integer_like_step_coordinates_and_meta_are_accepted(tmp_path: Path) -> None:
    import numpy as np

    rec = Recorder(tmp_path / "t")
    meta = {"optimizer_steps_since_old_logps": torch.tensor(0), "eos_token_ids": (1, 2), "pad_token_id": None}
    with rec.step(step=np.int64(2), micro_batch=torch.tensor(1), rank=1.0, **meta) as s:
        s.record(**_rows(2))
    rec.close()
    (step,) = load_trace(tmp_path / "t", strict=True).steps
    assert {k: step.meta[k] for k in ("step", "micro_batch", "rank")} == {
        "step": 2,
        "micro_batch": 1,
        "rank": 1,
    }
    assert (step.meta["optimizer_steps_since_old_logps"], step.meta["eos_token_ids"]) == (0, [1, 2])


def test_a_spec_of_the_wrong_kind_and_a_sparse_tensor_are_refused(tmp_path) -> None:
    import torch

    from grpo_check.trace.recorder import Recorder

    with pytest.raises(InputError, match="field 'spec': must be a GRPOSpec or a dict of its fields, got str"):
        Recorder(tmp_path / "a", spec="grpo")
    recorder = Recorder(tmp_path / "b", spec={"num_generations": 2})
    with recorder.step(step=0) as step:
        with pytest.raises(
            InputError, match=r"cannot record a torch\.sparse_coo tensor; pass it \.to_dense\(\)"
        ):
            step.record(logps=torch.eye(2).to_sparse())
        step.record(logps=-torch.ones(2, 3))
    assert recorder.close().steps[0].has("logps")


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"every": "2"}, "every"),
        ({"every": 1.5}, "every"),
        ({"every": True}, "every"),
        ({"overwrite": "no"}, "overwrite"),
    ],
)
def test_recorder_settings_of_the_wrong_kind_are_refused(tmp_path, kwargs, field) -> None:
    with pytest.raises(InputError, match=f"field '{field}'"):
        Recorder(tmp_path / "t", **kwargs)
    Recorder(tmp_path / "ok", every=2, overwrite=False).close()


def test_a_tensor_on_the_meta_device_is_refused(tmp_path) -> None:
    recorder = Recorder(tmp_path / "t")
    with recorder.step(step=0) as step, pytest.raises(InputError, match="on the meta device"):
        step.record(logps=torch.empty(2, 3, device="meta"))
    recorder.close()
