"""The adapter's contract on whatever TRL release is installed (0.14.0 and later).

The same file runs on every release line: ``scripts/test-trl.sh RELEASE`` builds a side venv with that release
and runs it there; ``scripts/trl_matrix.py`` runs it on every release line. The trainer is
:func:`grpo_check.demo.portable.build_trainer`, which sets only the settings the installed ``GRPOConfig`` has.

Contract: the hooks match the release's era; every stage is captured and checked, and nothing fails but the
numerical bugs the release shipped (and a later release fixed) that these settings trigger, each named with
its fixing release and pull request (:mod:`grpo_check.trl.history`); attaching changes no number of the
training; a sign-flipped log-softmax is found at the log-prob stage; background checking gives the inline
findings.
"""

from __future__ import annotations

import pytest

trl = pytest.importorskip("trl")

import torch  # noqa: E402

from grpo_check.findings import Verdict  # noqa: E402
from grpo_check.trl.versions import era_for, parse_version  # noqa: E402

pytestmark = pytest.mark.slow

ERA = era_for(trl.__version__)


def _train(workdir, *, live, trainer_cls=None, background=False):
    from grpo_check.demo.portable import build_trainer
    from grpo_check.trl import attach

    trainer = build_trainer(steps=2, workdir=workdir, trainer_cls=trainer_cls)
    attachment = None if live is None else attach(trainer, live=live, background=background)
    trainer.train()
    params = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return params, losses, attachment


def test_the_hooks_follow_the_release_era(tmp_path):
    from grpo_check.demo.portable import build_trainer
    from grpo_check.trl.versions import check_trainer_support

    support = check_trainer_support(build_trainer(steps=1, workdir=tmp_path))
    assert support.era == ERA.name and support.generation_method == ERA.generation_method
    assert support.warning is None  # every installed release the matrix runs is a tested one
    if ERA.logps_method:
        assert support.logps_method in ("_get_per_token_logps", "_get_per_token_logps_and_entropies")


def test_a_correct_trl_is_captured_and_compares_clean_but_for_its_shipped_bugs(tmp_path):
    from grpo_check.trl.history import shipped_bugs

    _, _, attachment = _train(tmp_path, live=True)
    micro = [s for s in attachment.trace.steps if s.meta["scope"] == "micro_batch"]
    generation = [s for s in attachment.trace.steps if s.meta["scope"] == "generation"]
    assert micro and generation
    assert generation[0]["rewards_per_func"].shape[1] == 2  # both reward functions, as they scored
    step = micro[0]
    for name in ("logps", "ref_logps", "logps_grad", "advantages", "loss", "completion_mask"):
        assert step.has(name), name
    assert step.meta["backward_scale"] > 0
    result = attachment.result()
    # the numerical bugs this release shipped (and a later one fixed) that these settings trigger: each must
    # fail and be named (bug, fixing release, PR); nothing else may fail
    expected = {bug.id: bug for bug in shipped_bugs(trl.__version__, attachment.run_settings())}
    failing = [f for f in result.findings if f.verdict is Verdict.FAIL]
    unexplained = [f.message() for f in failing if (f.details or {}).get("shipped_bug") not in expected]
    assert not unexplained, unexplained
    named = {f.details["shipped_bug"]: f for f in failing if f.check_id.startswith("trl.shipped_bug.")}
    assert set(named) == set(expected)
    for bug_id, finding in named.items():
        bug = expected[bug_id]
        assert f"fixed in {bug.fixed_in}" in finding.explanation and f"PR #{bug.pr}" in finding.explanation
    passed = {f.check_id for f in result.findings if f.verdict is Verdict.PASS}
    stages_hit = {stage for bug in expected.values() for stage in bug.stages}
    assert "advantages.values" in passed
    for check_id, stage in (("logps.model", "logps"), ("loss.value", "loss"), ("grad.logps_grad", "grad")):
        assert stage in stages_hit or check_id in passed, check_id


def test_checking_does_not_change_training(tmp_path):
    plain_params, plain_losses, _ = _train(tmp_path / "a", live=None)
    checked_params, checked_losses, _ = _train(tmp_path / "b", live=True)
    assert plain_losses == checked_losses
    for name in plain_params:
        assert torch.equal(plain_params[name], checked_params[name]), name


def _sign_flipped_trainer():
    """A GRPOTrainer whose per-token log-probs are negated (``logsumexp - logit``, bug-catalog S1)."""
    from trl import GRPOTrainer

    if not ERA.logps_method:  # 0.14: log-probs come from a local function: flip the logits' log-softmax
        return None
    name = ERA.logps_method

    def flipped(self, *args, **kwargs):
        out = getattr(super(SignFlip, self), name)(*args, **kwargs)
        return (-out[0], *out[1:]) if isinstance(out, tuple) else -out

    SignFlip = type("SignFlip", (GRPOTrainer,), {name: flipped})
    return SignFlip


def test_a_sign_flipped_log_softmax_is_found_at_the_logps_stage(tmp_path):
    trainer_cls = _sign_flipped_trainer()
    if trainer_cls is None:
        pytest.skip(f"TRL {trl.__version__} computes log-probs in a local function: no method to override")
    _, _, attachment = _train(tmp_path, live=True, trainer_cls=trainer_cls)
    first = attachment.result().first_divergence()
    assert first is not None and first.stage == "logps"


def test_background_checking_gives_the_inline_findings(tmp_path):
    verdicts = {}
    for background in (False, True):
        _, _, attachment = _train(tmp_path / str(background), live=True, background=background)
        result = attachment.result()
        attachment.close()
        verdicts[background] = sorted(
            (f.check_id, f.verdict.value, f.where.step or 0, f.where.micro_batch or 0)
            for f in result.findings
        )
        assert not result.metadata["live_problems"]
    assert verdicts[True] == verdicts[False]


def test_probing_drives_this_release_s_own_loss_code(tmp_path):
    """The trainer's own loss code, run on the probe micro-batches (0.x reads old log-probs only with
    num_iterations > 1 and 0.18 scores the reference model inside the loss): correct on every probe but the
    shipped bugs of the release, which name their fix."""
    if parse_version(ERA.first) < (0, 16, 0):  # 0.14: compute_loss also generates; 0.15: not driven yet
        pytest.skip(f"probing drives the loss code of TRL 0.16 and later, not {trl.__version__}'s")
    from grpo_check.demo.portable import build_trainer
    from grpo_check.trl.history import SHIPPED_BUGS
    from grpo_check.trl.probe import probe_trainer_outcome

    trainer = build_trainer(steps=1, workdir=tmp_path)
    outcome = probe_trainer_outcome(trainer)
    assert outcome.branches, "no loss branch was exercised"
    failing = [f for f in outcome.findings if f.verdict is Verdict.FAIL]
    if failing and not any(bug.affects(trl.__version__) for bug in SHIPPED_BUGS):
        raise AssertionError("\n".join(f.message() for f in failing))
