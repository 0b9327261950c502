"""Background checking (``attach(..., background=True)``): the comparison, diagnoses and invariants run in a
helper process, and give exactly the findings inline checking gives; what needs the live model stays inline."""

from __future__ import annotations

import collections

import pytest
import torch

from grpo_check.findings import Verdict
from grpo_check.trl import background


@pytest.mark.parametrize(
    "tensor",
    [
        torch.randn(3, 4),
        torch.randn(2, 5, dtype=torch.float64),
        torch.randn(4, 2).to(torch.bfloat16),
        torch.randn(3).to(torch.float16),
        torch.arange(6).reshape(2, 3),
        torch.tensor([True, False, True]),
        torch.zeros(0, 4),
        torch.tensor(2.5),
    ],
    ids=["f32", "f64", "bf16", "f16", "int64", "bool", "empty", "scalar"],
)
def test_wire_format_round_trips_every_tensor_bit_for_bit(tensor):
    header, tensors = background.decode(
        background.encode({"id": 7, "note": "x"}, {"t": tensor, "u": tensor.clone()})
    )
    assert header == {"id": 7, "note": "x"}
    for name in ("t", "u"):
        assert tensors[name].dtype == tensor.dtype and tensors[name].shape == tensor.shape
        assert torch.equal(tensors[name].view(-1).view(torch.uint8), tensor.reshape(-1).view(torch.uint8))


def _run(cell, tmp_path, *, background_mode, trainer_cls=None, forward_rows="subset"):
    from grpo_check.demo.run import build_trainer
    from grpo_check.trl import attach

    trainer = build_trainer(cell, tmp_path / str(background_mode), seed=0, trainer_cls=trainer_cls)
    attachment = attach(trainer, live=True, background=background_mode, forward_rows=forward_rows)
    trainer.train()
    result = attachment.result()
    attachment.close()
    return attachment, result


def _verdicts(result):
    return collections.Counter(
        (f.check_id, f.verdict.value, f.where.step, f.where.micro_batch, f.catalog_id)
        for f in result.findings
    )


@pytest.mark.slow
def test_background_findings_equal_inline_findings(tmp_path):
    from grpo_check.demo.matrix import MATRIX

    cell = next(c for c in MATRIX if "grpo-beta" in c.name)  # beta > 0, GAS 2, spg 4
    inline_attachment, inline = _run(cell, tmp_path, background_mode=False)
    bg_attachment, in_background = _run(cell, tmp_path, background_mode=True)
    assert bg_attachment._checker is not None and not bg_attachment._jobs  # submitted, and all came back
    assert _verdicts(in_background) == _verdicts(inline)
    assert bg_attachment.skipped_invariants == inline_attachment.skipped_invariants
    assert not in_background.metadata["live_problems"]
    assert not [f for f in in_background.findings if f.verdict is Verdict.FAIL]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("make_trainer", "check_id", "catalog_id"),
    [
        ("_broken_advantages_trainer", "advantages.values", None),  # judged in the helper
        (
            "_broken_logsoftmax_trainer",
            "logps.model",
            "S1",
        ),  # log-probs disagree: checked inline, with the model
    ],
)
def test_background_catches_what_inline_catches(tmp_path, make_trainer, check_id, catalog_id):
    import test_capture  # the broken trainers live beside the capture tests

    from grpo_check.demo.matrix import Cell

    cell = Cell("broken", {"loss_type": "grpo", "beta": 0.0, "temperature": 0.7}, steps=1)
    trainer_cls = getattr(test_capture, make_trainer)()
    _, inline = _run(cell, tmp_path, background_mode=False, trainer_cls=trainer_cls)
    _, in_background = _run(cell, tmp_path, background_mode=True, trainer_cls=trainer_cls)
    failing = [f for f in in_background.findings if f.verdict is Verdict.FAIL]
    assert any(f.check_id == check_id for f in failing), [f.check_id for f in failing]
    if catalog_id is not None:
        assert any(f.catalog_id == catalog_id for f in in_background.findings if f.kind == "diagnosis")
    assert _verdicts(in_background) == _verdicts(inline)


@pytest.mark.slow
def test_a_helper_that_cannot_start_leaves_every_step_checked_inline(tmp_path, monkeypatch):
    from grpo_check.demo.matrix import Cell

    monkeypatch.setattr(background.sys, "executable", str(tmp_path / "no-such-python"))
    monkeypatch.setattr(background, "_SHARED", None)
    cell = Cell("helperless", {"loss_type": "dapo"}, steps=2)
    _, in_background = _run(cell, tmp_path, background_mode=True)
    _, inline = _run(cell, tmp_path, background_mode=False)
    assert _verdicts(in_background).keys() == _verdicts(inline).keys()
    assert any("background" in problem for problem in in_background.metadata["live_problems"])
    monkeypatch.setattr(background, "_SHARED", None)  # the next test starts a working helper


@pytest.mark.parametrize(
    ("threads", "cores", "fires"), [(2, 2, True), (8, 4, True), (1, 1, True), (1, 2, False), (15, 16, False)]
)
def test_no_free_core_warning_fires_only_when_torch_takes_every_core(threads, cores, fires):
    message = background.no_free_core_warning(threads, cores)
    assert (message is not None) == fires
    if fires and cores > 1:
        assert f"torch.set_num_threads({cores - 1})" in message


def test_starting_the_helper_warns_when_torch_takes_every_core(monkeypatch, caplog):
    monkeypatch.setattr(background, "available_cores", lambda: torch.get_num_threads())
    with caplog.at_level("WARNING", logger="grpo_check.trl"):
        background._warn_without_a_free_core()
    assert "no core of its own" in caplog.text or "1-core" in caplog.text
    caplog.clear()
    monkeypatch.setattr(background, "available_cores", lambda: torch.get_num_threads() + 1)
    with caplog.at_level("WARNING", logger="grpo_check.trl"):
        background._warn_without_a_free_core()
    assert caplog.text == ""


# ------------------------------------------------------------------ forward passes in the helper
@pytest.fixture
def free_core(monkeypatch):
    """A core the helper has to itself, whatever this machine has (the forward passes go to the helper only
    then)."""
    monkeypatch.setattr(background, "available_cores", lambda: torch.get_num_threads() + 1)


def _run_counting_forwards(cell, tmp_path, monkeypatch, *, trainer_cls=None, forward_rows="all"):
    """A background run, with the rows of each forward pass the training process runs of the policy and of
    the reference model. The training process waits for each reply here (as if the helper were instant), so
    that the second window finds the first one's verdict on the helper's copies in."""
    import test_capture  # the broken trainers and the forward counter live beside the capture tests

    from grpo_check.demo.run import build_trainer
    from grpo_check.trl import attach

    trainer = build_trainer(cell, tmp_path / "counted", seed=0, trainer_cls=trainer_cls)
    policy_rows = test_capture._rows_scored_by(trainer.model, trainer, monkeypatch)
    ref_rows = test_capture._rows_scored_by(trainer.ref_model, trainer, monkeypatch)
    attachment = attach(trainer, live=True, background=True, forward_rows=forward_rows)
    collect = attachment._collect_background
    monkeypatch.setattr(attachment, "_collect_background", lambda *, wait: collect(wait=True))
    trainer.train()
    result = attachment.result()
    attachment.close()
    return attachment, result, policy_rows, ref_rows


@pytest.mark.slow
@pytest.mark.parametrize("forward_rows", ["all", "subset"])
@pytest.mark.parametrize("broken", [False, True])
def test_the_helper_runs_the_forward_passes_of_a_small_model(
    tmp_path, monkeypatch, broken, forward_rows, free_core
):
    """A small CPU model's weights go to the helper with each checked window, and the helper runs the
    reference's forward passes: after the first window (scored on both sides, to vouch for the helper's
    copy) the training process runs none. The findings are inline checking's, diagnoses included, also
    when the log-probs disagree (the helper's copy answers the diagnoses' forward passes)."""
    import test_capture

    cell = test_capture._cell("grpo-beta")  # beta > 0, GAS 2, spg 4: two windows, one generation batch
    trainer_cls = test_capture._second_micro_batch_flipped_trainer() if broken else None
    _, inline = _run(
        cell, tmp_path, background_mode=False, trainer_cls=trainer_cls, forward_rows=forward_rows
    )
    attachment, in_background, policy_rows, ref_rows = _run_counting_forwards(
        cell, tmp_path, monkeypatch, trainer_cls=trainer_cls, forward_rows=forward_rows
    )
    assert attachment._forward_refusal is None and not attachment._jobs
    if forward_rows == "all":
        assert policy_rows == [16] and ref_rows == [32]  # the first window, scored here too; then none
    else:  # the first window's chosen rows, scored here too; then none
        first = [
            s for s in attachment.trace.steps if s.meta["scope"] == "micro_batch" and s.meta["step"] == 0
        ]
        chosen = sum(len(s.meta["forward_rows"]["rows"]) for s in first)
        assert policy_rows == [chosen] and ref_rows == [chosen] and chosen < 16
    assert _verdicts(in_background) == _verdicts(inline)
    assert not in_background.metadata["live_problems"]
    failed = {
        (f.check_id, f.where.step, f.where.micro_batch)
        for f in in_background.findings
        if f.verdict is Verdict.FAIL
    }
    assert (("logps.model", 1, 1) in failed) is broken  # the second window: judged in the helper


@pytest.mark.slow
def test_a_helper_copy_that_scores_differently_hands_the_forward_passes_back(
    tmp_path, monkeypatch, free_core
):
    """The guard on the helper's copies: weights that arrive wrong score the first window differently, the
    forward passes go back to the training process for the rest of the run, and no finding comes from the
    wrong copy."""
    import test_capture

    real = background.model_message

    def off_by_a_little(model, role):
        header, tensors = real(model, role)
        return header, {name: t + 0.05 if t.is_floating_point() else t for name, t in tensors.items()}

    monkeypatch.setattr(background, "model_message", off_by_a_little)
    cell = test_capture._cell("grpo-beta")
    _, inline = _run(cell, tmp_path, background_mode=False)
    attachment, in_background, policy_rows, _ = _run_counting_forwards(cell, tmp_path, monkeypatch)
    assert "scored the first window differently" in (attachment._forward_refusal or "")
    assert any("moved back to the training process" in p for p in in_background.metadata["live_problems"])
    assert policy_rows == [16, 16]  # both windows scored here
    assert _verdicts(in_background) == _verdicts(inline)


def test_helper_forward_refusal_names_what_keeps_the_forwards_on_the_training_process(monkeypatch):
    from grpo_check.demo.model import build_policy, build_tokenizer

    policy = build_policy(build_tokenizer())
    assert background.helper_forward_refusal(policy, None) is None
    assert "not a model class that transformers exports" in background.helper_forward_refusal(
        torch.nn.Linear(2, 2)
    )
    assert "is on meta" in background.helper_forward_refusal(policy, policy.to("meta"))
    monkeypatch.setattr(background, "HELPER_FORWARD_MAX_BYTES", 1024)
    assert "MiB" in background.helper_forward_refusal(build_policy(build_tokenizer()))


def test_the_helpers_copy_of_a_model_scores_as_the_model_and_follows_its_weights(monkeypatch):
    """What the helper does with a model message (in this process): builds the copy once, scores exactly as
    the model, takes later weights in place, forgets on request, and keeps at most a few copies."""
    from grpo_check.demo.model import build_policy, build_tokenizer

    monkeypatch.setattr(background, "_HELPER_MODELS", collections.OrderedDict())
    policy = build_policy(build_tokenizer()).eval()
    ids = torch.randint(0, 20, (3, 7))

    def send(key):
        header, tensors = background.decode(background.encode(*background.model_message(policy, key)))
        return background.check_job(background.encode({**header, "id": 1}, tensors))

    assert send("a.policy") == {"id": 1, "loaded": "a.policy"}
    copy = background._HELPER_MODELS["a.policy"][1]
    with torch.no_grad():
        assert torch.equal(copy(ids).logits, policy(ids).logits)
        for parameter in policy.parameters():
            parameter.add_(0.01)
        assert not torch.equal(copy(ids).logits, policy(ids).logits)
        send("a.policy")  # the next step's weights: the same object, updated
        assert background._HELPER_MODELS["a.policy"][1] is copy
        assert torch.equal(copy(ids).logits, policy(ids).logits)
    reply = background.check_job(background.encode({"id": 2, "forget": ["a.policy"]}, {}))
    assert reply["forgotten"] == ["a.policy"] and "a.policy" not in background._HELPER_MODELS
    for index in range(background._HELPER_MODELS_KEPT + 2):
        send(f"{index}.policy")
    assert list(background._HELPER_MODELS) == [
        f"{index}.policy" for index in range(2, background._HELPER_MODELS_KEPT + 2)
    ]


def test_prepare_and_ping_messages_are_answered():
    assert background.check_job(background.encode({"id": 3, "prepare": True}, {})) == {
        "id": 3,
        "prepared": True,
    }
    assert background.check_job(background.encode({"id": 4, "ping": True, "prepare": True}, {})) == {
        "id": 4,
        "pong": True,
    }


@pytest.mark.slow
def test_attaching_in_the_background_starts_the_helper_and_decides_the_forwards(tmp_path, free_core):
    """The helper starts (and imports transformers) while training starts, not at the first window."""
    import test_capture

    from grpo_check.demo.run import build_trainer
    from grpo_check.trl import attach

    trainer = build_trainer(test_capture._cell("grpo-beta"), tmp_path, seed=0)
    attachment = attach(trainer, live=True, background=True)
    try:
        assert attachment._checker is not None and attachment._checker._process is not None
        assert attachment._forward_refusal is None
        inline = attach(build_trainer(test_capture._cell("grpo-beta"), tmp_path / "i", seed=0), live=True)
        assert inline._checker is None
        inline.close()
    finally:
        attachment.close()


@pytest.mark.slow
def test_without_a_free_core_the_forward_passes_stay_on_the_training_process(tmp_path, monkeypatch):
    """The helper's work competes with training when torch takes every core: it gets the checks only."""
    import test_capture

    monkeypatch.setattr(background, "available_cores", lambda: torch.get_num_threads())
    attachment, _, policy_rows, _ = _run_counting_forwards(
        test_capture._cell("grpo-beta"), tmp_path, monkeypatch
    )
    assert attachment._forward_refusal == "no free core for the helper"
    assert policy_rows == [16, 16] and not attachment._shipped


@pytest.mark.slow
def test_replies_to_jobs_nobody_awaits_are_dropped():
    """prepare() and forget messages: their replies come back and are not kept (nobody asks for them)."""
    checker = background.BackgroundChecker()
    try:
        unawaited = checker.submit({"prepare": False}, {}, awaited=False)
        assert checker.warm()  # replies come in order: the unawaited one has come back too
        assert unawaited not in checker._pending and not checker._unawaited
        assert unawaited not in checker._replies
        awaited = checker.submit({"prepare": False}, {})
        assert checker.replies({awaited}, wait=True)[awaited] == {"id": awaited, "prepared": True}
    finally:
        checker.close()
