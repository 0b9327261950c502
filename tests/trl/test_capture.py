"""The TRL adapter on TRL's real GRPOTrainer (tiny policy built from code, CPU).

* attach captures every stage with the right shapes, and the live comparison of a correct TRL is clean;
* checking does not change training (bitwise: parameters and logged losses);
* deliberately broken trainers (subclasses of GRPOTrainer) are caught in the right stage.
"""

from __future__ import annotations

import pytest

pytest.importorskip("trl")

import torch

from grpo_check.demo.matrix import MATRIX, Cell
from grpo_check.findings import InputError, Verdict


def _cell(name_part: str) -> Cell:
    return next(c for c in MATRIX if name_part in c.name)


def _failing(result, stage=None):
    return [f for f in result.findings if f.verdict is Verdict.FAIL and (stage is None or f.stage == stage)]


@pytest.fixture(scope="module")
def grpo_run():
    """grpo loss, beta > 0 (reloaded reference model), T=0.7, top_p=0.9, GAS=2, spg=4 (old log-probs)."""
    from grpo_check.demo.run import run_cell

    return run_cell(_cell("grpo-beta"))


@pytest.mark.slow
def test_attach_captures_every_stage_with_trl_shapes(grpo_run):
    steps = grpo_run.trace.steps
    generation = [s for s in steps if s.meta["scope"] == "generation"]
    micro = [s for s in steps if s.meta["scope"] == "micro_batch"]
    # 2 optimizer steps x GAS 2 = 4 micro-batches, all from one generation batch (spg = 4)
    assert len(micro) == 4 and len(generation) == 1
    gen = generation[0]
    rows = gen["group_index"].shape[0]
    assert rows == 8 * 4  # per_device_train_batch_size x steps_per_generation
    assert gen["rewards_per_func"].shape == (rows, 2) and gen["advantages"].shape == (rows,)
    assert torch.bincount(gen["group_index"]).tolist() == [4] * (rows // 4)  # whole groups of G = 4
    seen_rows = sorted(r for s in micro for r in s.meta["global_rows"])
    assert seen_rows == list(range(rows))  # each generated row used exactly once, after TRL's shuffle
    for step in micro:
        b, t = step["completion_ids"].shape
        assert b == 8
        for name in ("completion_mask", "logps", "old_logps", "ref_logps", "entropies", "logps_grad"):
            assert step[name].shape == (b, t), name
        assert step["advantages"].shape == (b,)
        assert step["loss"].dim() == 0
        assert step["extra.group_index"].shape == (b,)  # partial groups: not under the canonical name
        assert len(step.completion_text) == b and len(step.prompt_text) == b
        # the tokenizer's decode, taken from one decode of the generation batch, is this micro-batch's rows'
        assert step.meta["decoded_completion_text"] == step.completion_text
        assert step.meta["gradient_accumulation_steps"] == 2 and step.meta["steps_per_generation"] == 4
        assert step.meta["backward_scale"] == 1.0  # TRL backpropagates the loss it returns
        assert step.meta["compute_dtype"] == "float32"  # the demo turns off TRL's bf16 default
        assert bool((step["logps"][step["completion_mask"].bool()] <= 0).all())
        # a row's prompt text is the prompt of its group in the generation step (the tag followed the row)
        for local, global_row in enumerate(step.meta["global_rows"]):
            assert step["extra.group_index"][local] == gen["group_index"][global_row]
    later = [s for s in micro if s.meta["step"] == 1]
    assert all(s.meta["optimizer_steps_since_old_logps"] == 1 for s in later)


@pytest.mark.slow
def test_live_comparison_of_correct_trl_is_clean_and_logged(grpo_run):
    result = grpo_run.result
    assert not _failing(result), [f.message() for f in _failing(result)]
    checked = {f.check_id for f in result.findings if f.verdict is Verdict.PASS}
    for check_id in ("advantages.values", "logps.model", "logps.ref_model", "loss.value", "grad.logps_grad"):
        assert check_id in checked
    logged = [h for h in grpo_run.log_history if "grpo_check/fails" in h]
    assert logged and all(h["grpo_check/fails"] == 0 for h in logged)
    assert any("grpo_check/max_logp_err" in h for h in logged)


def _train(cell: Cell, workdir, *, attach_live: bool | None, trainer_cls=None):
    from grpo_check.demo.run import build_trainer
    from grpo_check.trl import attach

    trainer = build_trainer(cell, workdir, seed=0, trainer_cls=trainer_cls)
    attachment = None if attach_live is None else attach(trainer, live=attach_live)
    trainer.train()
    params = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return params, losses, attachment


@pytest.mark.slow
def test_checking_does_not_change_training(tmp_path):
    cell = _cell("grpo-beta")
    plain_params, plain_losses, _ = _train(cell, tmp_path / "plain", attach_live=None)
    checked_params, checked_losses, attachment = _train(cell, tmp_path / "checked", attach_live=True)
    assert attachment.findings, "the live comparison ran"
    assert {"probe.loss", "probe.logps_grad"} <= {f.check_id for f in attachment.findings}, (
        "the loss code was probed"
    )
    assert plain_losses == checked_losses  # bitwise equal floats
    assert plain_params.keys() == checked_params.keys()
    for name in plain_params:
        assert torch.equal(plain_params[name], checked_params[name]), name


def _broken_advantages_trainer():
    from trl import GRPOTrainer

    class LargeEpsilonTrainer(GRPOTrainer):
        """Advantages as if epsilon were 1e4 instead of 1e-4 (bug-catalog S2): A * σ / (σ + 1e4) ≈ 0."""

        def _generate_and_score_completions(self, inputs):
            output = super()._generate_and_score_completions(inputs)
            output["advantages"] = output["advantages"] * 1e-4
            return output

    return LargeEpsilonTrainer


def _broken_logsoftmax_trainer():
    from trl import GRPOTrainer

    class SignFlipTrainer(GRPOTrainer):
        """log-softmax computed as logsumexp - logit (bug-catalog S1): every log-prob negated."""

        def _get_per_token_logps_and_entropies(self, *args, **kwargs):
            logps, entropies, aux = super()._get_per_token_logps_and_entropies(*args, **kwargs)
            return -logps, entropies, aux

    return SignFlipTrainer


def _broken_alignment_trainer():
    from trl import GRPOTrainer

    class MisalignedTrainer(GRPOTrainer):
        """Advantages rolled one row away from their completions after the split (a bookkeeping bug)."""

        def _prepare_inputs(self, generation_batch):
            inputs = dict(super()._prepare_inputs(generation_batch))
            inputs["advantages"] = torch.roll(inputs["advantages"], 1)
            return inputs

    return MisalignedTrainer


@pytest.mark.slow
@pytest.mark.parametrize(
    ("make_trainer", "stage", "check_id"),
    [
        (_broken_advantages_trainer, "advantages", "advantages.values"),
        (_broken_logsoftmax_trainer, "logps", "logps.model"),
        (_broken_alignment_trainer, "advantages", "trl.advantages_slice"),
    ],
)
def test_broken_trainer_is_caught_in_the_right_stage(tmp_path, make_trainer, stage, check_id):
    cell = Cell("broken", {"loss_type": "grpo", "beta": 0.0, "temperature": 0.7}, steps=1)
    _, _, attachment = _train(cell, tmp_path, attach_live=True, trainer_cls=make_trainer())
    result = attachment.result()
    failing = _failing(result)
    assert failing, "the bug was not caught"
    assert any(f.check_id == check_id and f.stage == stage for f in failing), [f.check_id for f in failing]
    first = result.first_divergence()
    assert first is not None and first.stage == stage


def _rows_scored_by(model, trainer, monkeypatch) -> list[int]:
    """Rows of each forward pass the reference runs with ``model`` (filled in as training goes)."""
    import grpo_check.reference.logps as reference_logps

    rows: list[int] = []
    real = reference_logps.logps_from_model
    target = trainer.accelerator.unwrap_model(model)

    def counting(forward, prompt_ids, *args, **kwargs):
        if getattr(forward, "wrapped_module", None) is target:
            rows.append(int(prompt_ids.shape[0]))
        return real(forward, prompt_ids, *args, **kwargs)

    monkeypatch.setattr(reference_logps, "logps_from_model", counting)
    return rows


def _corrupted_ref_trainer():
    from trl import GRPOTrainer

    class StaleReferenceTrainer(GRPOTrainer):
        """Reference log-probs of generation rows 0-3 off by 0.5 nats (a stale or mis-gathered reference)."""

        def _generate_and_score_completions(self, inputs):
            output = super()._generate_and_score_completions(inputs)
            output["ref_per_token_logps"] = output["ref_per_token_logps"].clone()
            output["ref_per_token_logps"][:4] += 0.5
            return output

    return StaleReferenceTrainer


@pytest.mark.slow
@pytest.mark.parametrize("broken", [False, True])
def test_reference_model_scores_each_generation_batch_once(tmp_path, monkeypatch, broken):
    """With the forward passes on every row (``forward_rows="all"``), the frozen reference model runs once per
    generation batch, and each micro-batch is still compared with the reference log-probs of its own rows
    (after TRL's shuffle): a corrupted row fails exactly the micro-batches that received it."""
    from grpo_check.demo.run import build_trainer
    from grpo_check.trl import attach

    cell = _cell("grpo-beta")  # beta > 0, GAS 2, spg 4: 4 micro-batches from one generation batch
    trainer = build_trainer(cell, tmp_path, seed=0, trainer_cls=_corrupted_ref_trainer() if broken else None)
    scored_rows = _rows_scored_by(trainer.ref_model, trainer, monkeypatch)
    attachment = attach(trainer, live=True, forward_rows="all")
    trainer.train()
    trace = attachment.close()
    micro = [s for s in trace.steps if s.meta["scope"] == "micro_batch"]
    ref_findings = [f for f in attachment.findings if f.check_id == "logps.ref_model"]
    assert len(ref_findings) == len(micro) == 4
    assert all("forward_rows" not in s.meta for s in micro)
    expected_failures = sorted(
        (s.meta["step"], s.meta["micro_batch"]) for s in micro if any(r < 4 for r in s.meta["global_rows"])
    )
    failed = sorted((f.where.step, f.where.micro_batch) for f in ref_findings if f.verdict is Verdict.FAIL)
    if broken:
        assert failed == expected_failures and failed
        # the position-ids diagnosis still gets a real forward pass of the micro-batch
        assert scored_rows[0] == 32 and all(rows == 8 for rows in scored_rows[1:])
    else:
        assert failed == []
        assert scored_rows == [32]  # one forward over the 32-row generation batch, none per micro-batch


@pytest.mark.slow
@pytest.mark.parametrize("broken", [False, True])
def test_reference_model_scores_only_the_forward_rows_once_per_window(tmp_path, monkeypatch, broken):
    """By default the reference model scores only the rows chosen for the forward passes, in one forward per
    accumulation window; a corrupted group (rows 0-3 of the generation batch) still fails in every window
    that holds rows of it (every group keeps a row), on a real row of that group."""
    from grpo_check.demo.run import build_trainer
    from grpo_check.trl import attach

    cell = _cell("grpo-beta")  # 2 windows of 2 micro-batches of 8 rows, from one 32-row generation batch
    trainer = build_trainer(cell, tmp_path, seed=0, trainer_cls=_corrupted_ref_trainer() if broken else None)
    scored_rows = _rows_scored_by(trainer.ref_model, trainer, monkeypatch)
    attachment = attach(trainer, live=True)
    trainer.train()
    trace = attachment.close()
    micro = [s for s in trace.steps if s.meta["scope"] == "micro_batch"]
    chosen = {(s.meta["step"], s.meta["micro_batch"]): s.meta["forward_rows"]["rows"] for s in micro}
    assert all(rows for rows in chosen.values())  # every micro-batch keeps rows
    ref_findings = [f for f in attachment.findings if f.check_id == "logps.ref_model"]
    assert len(ref_findings) == 4
    assert sum(len(rows) for rows in chosen.values()) < 32
    per_window = [sum(len(rows) for (step, _), rows in chosen.items() if step == window) for window in (0, 1)]
    assert scored_rows[0] == per_window[0]  # one forward for the first window, over its chosen rows only
    failed = [f for f in ref_findings if f.verdict is Verdict.FAIL]
    if broken:
        corrupted = {s.meta["step"] for s in micro if any(r < 4 for r in s.meta["global_rows"])}
        assert {f.where.step for f in failed} == corrupted
        for finding in failed:  # a real row index of the micro-batch, holding a corrupted row
            step = next(
                s
                for s in micro
                if (s.meta["step"], s.meta["micro_batch"]) == (finding.where.step, finding.where.micro_batch)
            )
            assert step.meta["global_rows"][finding.where.row] < 4
            assert finding.where.row in chosen[(finding.where.step, finding.where.micro_batch)]
        # the position-ids diagnosis runs the chosen rows of a failing micro-batch again (arange positions)
        assert sum(scored_rows) > sum(per_window)
    else:
        assert failed == [] and scored_rows == per_window  # and nothing else


def _second_micro_batch_flipped_trainer():
    from trl import GRPOTrainer

    class FlipEverySecondTrainer(GRPOTrainer):
        """Log-probs negated in the loss of every second micro-batch only (micro-batch 1 of each GAS-2 window)."""

        _micro_batches = 0
        _flip = False

        def training_step(
            self, *args, **kwargs
        ):  # counts training micro-batches, not other loss calls (probes)
            self._flip = self._micro_batches % 2 == 1
            self._micro_batches += 1
            try:
                return super().training_step(*args, **kwargs)
            finally:
                self._flip = False

        def _get_per_token_logps_and_entropies(self, *args, **kwargs):
            logps, entropies, aux = super()._get_per_token_logps_and_entropies(*args, **kwargs)
            return (-logps if self._flip else logps), entropies, aux

    return FlipEverySecondTrainer


@pytest.mark.slow
@pytest.mark.parametrize("forward_rows", ["all", "subset"])
@pytest.mark.parametrize("broken", [False, True])
def test_policy_forward_runs_once_per_accumulation_window(tmp_path, monkeypatch, broken, forward_rows):
    """With gradient accumulation the policy's log-probs for a whole window come from one forward pass (the
    weights only change after its last micro-batch); each micro-batch is still judged on its own rows."""
    from grpo_check.demo.run import build_trainer
    from grpo_check.trl import attach

    cell = _cell("grpo-beta")  # GAS 2: 2 optimizer steps x 2 micro-batches of 8 rows
    trainer = build_trainer(
        cell, tmp_path, seed=0, trainer_cls=_second_micro_batch_flipped_trainer() if broken else None
    )
    policy_rows = _rows_scored_by(trainer.model, trainer, monkeypatch)
    attachment = attach(trainer, live=True, forward_rows=forward_rows)
    trainer.train()
    result = attachment.result()
    logps_findings = [f for f in result.findings if f.check_id == "logps.model"]
    assert sorted((f.where.step, f.where.micro_batch) for f in logps_findings) == [
        (0, 0),
        (0, 1),
        (1, 0),
        (1, 1),
    ]
    failed = sorted((f.where.step, f.where.micro_batch) for f in logps_findings if f.verdict is Verdict.FAIL)
    window_rows = 16
    if forward_rows == "subset":  # the chosen rows of both micro-batches (each keeps some)
        chosen = [f.details["forward_rows"] for f in logps_findings]
        # (all 8 rows of a flipped micro-batch have positive log-probs: anomalous rows are always chosen)
        assert all(0 < part["rows"] <= part["of"] == 8 for part in chosen)
        assert broken or all(part["rows"] < 8 for part in chosen)
        window_rows = chosen[0]["rows"] + chosen[1]["rows"]
    assert policy_rows[:1] == [window_rows]  # one forward over both micro-batches of the first window
    if broken:  # caught in every flipped micro-batch: each keeps rows of its own
        assert failed == [(0, 1), (1, 1)]
    else:
        assert failed == []
        assert len(policy_rows) == 2  # and nothing else: one forward per window
        assert forward_rows == "subset" or policy_rows == [16, 16]
    assert not result.metadata["live_problems"]


@pytest.mark.slow
def test_window_closed_by_the_optimizer_is_compared_without_stale_weights(tmp_path):
    """A micro-batch still waiting when the optimizer has stepped is compared without the policy forward (its
    weights are gone), and the run says so instead of reporting a false log-prob mismatch."""
    from grpo_check.demo.run import build_trainer
    from grpo_check.trl import attach

    trainer = build_trainer(_cell("grpo-beta"), tmp_path, seed=0, steps=1)
    attachment = attach(trainer, live=True)
    original = attachment._flush_window
    attachment._flush_window = lambda: None  # hold every window open during training
    trainer.train()
    held = len(attachment._window)
    assert held == 2
    trainer.state.global_step += 1  # as after an optimizer step that closed the window early
    attachment._flush_window = original
    result = attachment.result()
    assert not [f for f in result.findings if f.check_id == "logps.model"]
    assert any("not recomputed" in problem for problem in result.metadata["live_problems"])
    assert [f.check_id for f in result.findings if f.check_id == "loss.value"] == ["loss.value"] * held
    assert not _failing(result)


@pytest.mark.slow
def test_every_n_steps_captures_only_due_steps(tmp_path):
    from grpo_check.demo.run import build_trainer
    from grpo_check.trl import attach

    trainer = build_trainer(Cell("every", {"loss_type": "dapo"}, steps=2), tmp_path)
    attachment = attach(trainer, every=2, live=False)
    trainer.train()
    trace = attachment.close()
    assert trace.steps and {s.meta["step"] for s in trace.steps} == {0}
    assert trainer._compute_loss.__func__ is type(trainer)._compute_loss  # hooks removed by close()


def test_attach_rejects_a_non_trl_object_with_a_clear_message():
    from grpo_check.trl import attach

    class NotATrainer:
        args = None

        def compute_loss(self):
            return None

    with pytest.raises(InputError, match="lacks the methods grpo-check hooks"):
        attach(NotATrainer())


def test_attach_refuses_misuse_before_training_and_takes_tolerance_overrides_as_a_dict(tmp_path):
    """Mistakes found at attach() time, not as a crash in every live check or a lost trace after training."""
    from grpo_check.compare import TolerancePolicy
    from grpo_check.demo.run import build_trainer
    from grpo_check.trl import attach

    trainer = build_trainer(Cell("misuse", {"loss_type": "dapo"}, steps=1), tmp_path)
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    with pytest.raises(InputError, match="out_dir is a file"):
        attach(trainer, out_dir=a_file)
    with pytest.raises(InputError, match=r"must be a grpo_check\.compare\.TolerancePolicy or a dict"):
        attach(trainer, tolerances="tight")
    with pytest.raises(InputError, match=r"'logps' must be \(rtol, atol\)"):
        attach(trainer, tolerances={"logps": 1e-3})
    with pytest.raises(InputError, match="every must be a whole number"):
        attach(trainer, every=1.5)
    with pytest.raises(InputError, match="out_dir is empty"):
        attach(trainer, out_dir="")
    with pytest.raises(InputError, match="live must be True or False"):
        attach(trainer, live="no")
    assert trainer._compute_loss.__func__ is type(trainer)._compute_loss  # none of them installed a hook

    attachment = attach(trainer, tolerances={"logps": (1e-3, 1e-3)})
    assert isinstance(attachment.tolerances, TolerancePolicy)
    with pytest.raises(InputError, match="already has a grpo-check attachment"):
        attach(trainer)
    trainer.train()
    result = attachment.result()
    assert attachment.live_problems == [] and result.counts()["pass"] > 0
    attachment.close()
    attach(trainer, live=False).close()  # closed: the trainer can be attached again


@pytest.mark.slow
def test_mixed_precision_is_recorded_as_the_compute_dtype(tmp_path):
    """TRL 1.x defaults to bf16 (autocast, even on CPU): the float32 tensors then carry bf16-precise values."""
    from grpo_check.demo.run import build_trainer
    from grpo_check.trl import attach

    trainer = build_trainer(Cell("bf16", {"loss_type": "dapo", "bf16": True}, steps=1), tmp_path)
    attachment = attach(trainer, live=False)
    trainer.train()
    trace = attachment.close()
    micro = [s for s in trace.steps if s.meta["scope"] == "micro_batch"]
    assert micro and all(s.meta["compute_dtype"] == "bfloat16" for s in micro)
    assert trace.manifest["compute_dtype"] == "bfloat16"


@pytest.mark.slow
def test_a_failing_demo_configuration_writes_a_replayable_repro(tmp_path):
    """A configuration with failures gets <out>/repro/<cell>, which `grpo-check compare` replays (exit 1);
    a clean configuration gets none."""
    from typer.testing import CliRunner

    from grpo_check.cli import app
    from grpo_check.demo.run import _write_repros, run_cell

    cell = Cell("broken", {"loss_type": "grpo", "beta": 0.0, "temperature": 0.7}, steps=1)
    broken = run_cell(cell, trainer_cls=_broken_advantages_trainer())
    clean = run_cell(Cell("clean", {"loss_type": "grpo", "beta": 0.0, "temperature": 0.7}, steps=1))
    assert broken.result.failures and not clean.result.failures
    (path,) = _write_repros([broken, clean], tmp_path)
    assert path == str(tmp_path / "repro" / "broken")
    replay = CliRunner().invoke(app, ["compare", path, "-o", str(tmp_path / "replayed")])
    assert replay.exit_code == 1, replay.output
    assert "advantages" in replay.output


@pytest.mark.slow
def test_a_failing_live_check_never_stops_training(tmp_path, monkeypatch):
    """If the reference's own forward pass fails (e.g. a model on another device), training runs to the end
    unchanged, the failure is reported in live_problems, and what could still be checked was checked."""
    import grpo_check.reference.logps as reference_logps

    cell = _cell("grpo-beta")

    def broken_forward(*args, **kwargs):
        raise RuntimeError("Expected all tensors to be on the same device")

    plain_params, plain_losses, _ = _train(cell, tmp_path / "plain", attach_live=None)
    monkeypatch.setattr(reference_logps, "logps_from_model", broken_forward)
    params, losses, attachment = _train(cell, tmp_path / "checked", attach_live=True)
    result = attachment.result()
    assert losses == plain_losses and all(torch.equal(plain_params[k], params[k]) for k in plain_params)
    assert any("live check failed (RuntimeError" in problem for problem in result.metadata["live_problems"])
    checked = {f.check_id for f in result.findings if f.verdict is Verdict.PASS}
    assert "advantages.values" in checked  # the generation step needs no forward pass
    assert "logps.model" not in checked and not _failing(result)
