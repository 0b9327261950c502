"""The adapter on the TRL 0.17-0.19 line (different internals). Runs only where such a TRL is importable:
``scripts/test-trl017.sh`` builds ``.venv-trl017`` (trl 0.17.0, transformers 4.51.3) and runs this file."""

from __future__ import annotations

import pytest

trl = pytest.importorskip("trl")
if not trl.__version__.startswith("0."):
    pytest.skip(
        f"TRL {trl.__version__} is not a 0.x release (see scripts/test-trl017.sh)", allow_module_level=True
    )

import torch  # noqa: E402

from grpo_check.demo.matrix import Cell  # noqa: E402
from grpo_check.findings import Verdict  # noqa: E402

pytestmark = pytest.mark.slow

# 0.x has no steps_per_generation, importance_sampling_level, dapo/cispo/...: the settings it does have
CELL_017 = Cell(
    "trl017-bnpo-beta-iters2-gas2",
    {
        "loss_type": "bnpo",
        "beta": 0.04,
        "temperature": 0.7,
        "num_iterations": 2,
        "gradient_accumulation_steps": 2,
    },
    steps=2,
)


def _train(workdir, *, live, trainer_cls=None, cell=CELL_017):
    from grpo_check.demo.run import build_trainer
    from grpo_check.trl import attach

    trainer = build_trainer(cell, workdir, trainer_cls=trainer_cls)
    attachment = None if live is None else attach(trainer, live=live)
    trainer.train()
    params = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return params, losses, attachment


def test_attach_on_trl017_captures_and_compares_clean(tmp_path):
    _, _, attachment = _train(tmp_path, live=True)
    assert attachment.support.line == "0.x" and attachment.support.logps_method == "_get_per_token_logps"
    micro = [s for s in attachment.trace.steps if s.meta["scope"] == "micro_batch"]
    generation = [s for s in attachment.trace.steps if s.meta["scope"] == "generation"]
    assert micro and generation
    assert generation[0]["rewards_per_func"].shape[1] == 2  # captured from the reward functions themselves
    step = micro[0]
    for name in ("logps", "ref_logps", "old_logps", "logps_grad", "advantages", "loss"):
        assert step.has(name), name
    assert step.meta["backward_scale"] == pytest.approx(0.5)  # transformers divides by GAS on this line
    failing = [f for f in attachment.findings if f.verdict is Verdict.FAIL]
    assert not failing, [f.message() for f in failing]
    passed = {f.check_id for f in attachment.findings if f.verdict is Verdict.PASS}
    assert {"advantages.values", "logps.model", "loss.value", "grad.logps_grad"} <= passed


def test_checking_does_not_change_training_on_trl017(tmp_path):
    plain_params, plain_losses, _ = _train(tmp_path / "a", live=None)
    checked_params, checked_losses, _ = _train(tmp_path / "b", live=True)
    assert plain_losses == checked_losses
    for name in plain_params:
        assert torch.equal(plain_params[name], checked_params[name]), name


def test_sign_flipped_log_softmax_is_caught_on_trl017(tmp_path):
    from trl import GRPOTrainer

    class SignFlip(GRPOTrainer):
        def _get_per_token_logps(self, *args, **kwargs):
            return -super()._get_per_token_logps(*args, **kwargs)

    _, _, attachment = _train(tmp_path, live=True, trainer_cls=SignFlip)
    first = attachment.result().first_divergence()
    assert first is not None and first.stage == "logps"


def test_background_checking_on_trl017_gives_the_inline_findings(tmp_path):
    from grpo_check.demo.run import build_trainer
    from grpo_check.trl import attach

    verdicts = {}
    for background in (False, True):
        trainer = build_trainer(CELL_017, tmp_path / str(background))
        attachment = attach(trainer, live=True, background=background)
        trainer.train()
        result = attachment.result()
        attachment.close()
        verdicts[background] = sorted(
            (f.check_id, f.verdict.value, f.where.step or 0, f.where.micro_batch or 0)
            for f in result.findings
        )
        assert not result.metadata["live_problems"]
    assert verdicts[True] == verdicts[False]


def test_probe_trainer_on_the_0x_loss_code(tmp_path):
    """0.x computes old log-probs only with num_iterations > 1 and (0.18) scores the reference model inside the
    loss: probing drives that loss code as it is and finds it correct."""
    from grpo_check.demo.run import build_trainer
    from grpo_check.trl.probe import loss_era, probe_trainer_outcome

    trainer = build_trainer(CELL_017, tmp_path)
    assert loss_era(trainer).helper_outputs in (1, 2)
    outcome = probe_trainer_outcome(trainer)
    assert outcome.ok, [f.message() for f in outcome.findings if f.verdict is not Verdict.PASS]
    assert "clip.lower_binds" in outcome.branches  # num_iterations = 2: the loss reads the old log-probs
