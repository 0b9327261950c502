"""Probing TRL's real GRPOTrainer loss code: silent on TRL 1.16, firing on patched losses, no training effect."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("trl")

import torch

from grpo_check.demo.matrix import MATRIX, Cell
from grpo_check.findings import Verdict

CONFIGS = {
    "grpo-gas2": {"loss_type": "grpo", "gradient_accumulation_steps": 2},
    "dapo-eps-high-delta-beta-gas2-spg4": {
        "loss_type": "dapo",
        "epsilon_high": 0.28,
        "delta": 1.5,
        "beta": 0.04,
        "gradient_accumulation_steps": 2,
        "steps_per_generation": 4,
    },
    "bnpo-sequence": {"loss_type": "bnpo", "importance_sampling_level": "sequence"},
    "dr_grpo-truncated": {"loss_type": "dr_grpo", "mask_truncated_completions": True, "beta": 0.04},
    "cispo": {"loss_type": "cispo", "epsilon_high": 5.0, "gradient_accumulation_steps": 2},
    "sapo-beta-no-bias-correction": {"loss_type": "sapo", "beta": 0.04, "use_bias_correction_kl": False},
    "vespo-gas2-spg4": {"loss_type": "vespo", "gradient_accumulation_steps": 2, "steps_per_generation": 4},
    "luspo-sequence": {"loss_type": "luspo", "importance_sampling_level": "sequence"},
    "dapo-entropy-offpolicy": {
        "loss_type": "dapo",
        "top_entropy_quantile": 0.5,
        "off_policy_mask_threshold": 0.5,
    },
    "grpo-entropy-bonus": {"loss_type": "grpo", "entropy_coef": 0.01},
    "dapo-bf16-autocast": {"loss_type": "dapo", "bf16": True, "beta": 0.04, "delta": 1.5},
}


def _trainer(tmp_path, overrides, trainer_cls=None, steps=2):
    from grpo_check.demo.run import build_trainer

    return build_trainer(
        Cell("probe", overrides, steps=steps), tmp_path, trainer_cls=trainer_cls, dataset_size=16
    )


def _not_passing(findings):
    return [f.message() for f in findings if f.verdict is not Verdict.PASS]


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_trl_loss_code_passes_every_probe(tmp_path, name):
    from grpo_check.trl.probe import probe_trainer_outcome

    trainer = _trainer(tmp_path, CONFIGS[name])
    start = time.perf_counter()
    outcome = probe_trainer_outcome(trainer)
    assert time.perf_counter() - start < 1.0  # cheap: once per configuration
    assert outcome.ok, _not_passing(outcome.findings)
    assert {f.check_id for f in outcome.findings} == {"probe.loss", "probe.logps_grad"}
    assert len(outcome.branches) >= 9


def test_probe_once_per_configuration(tmp_path):
    from grpo_check.trl.probe import ProbeOnce

    trainer = _trainer(tmp_path, CONFIGS["grpo-gas2"])
    prober = ProbeOnce()
    first = prober(trainer)
    assert {f.check_id for f in first} == {"probe.loss", "probe.logps_grad"}
    assert prober(trainer) == []  # the same configuration: nothing to do
    trainer.args.epsilon_high = 0.3  # another configuration (a changed clip bound) is probed again
    trainer.epsilon_high = 0.3
    assert prober(trainer) and len(prober.seen) == 2


def _patched(name, replacements):
    from trl import GRPOTrainer

    from grpo_check.zoo.mutants_trl import source_patched

    return type(
        name, (GRPOTrainer,), {"_compute_loss": source_patched(GRPOTrainer._compute_loss, replacements)}
    )


PATCHES = {
    # name: (config, replacements, expected diagnosis)
    "grpo-not-scaled-by-gas": (
        {"loss_type": "grpo", "gradient_accumulation_steps": 2},
        [
            (
                'policy_loss = loss.detach()\n            loss = loss / normalizer\n        elif self.loss_type == "bnpo"',
                'policy_loss = loss.detach()\n        elif self.loss_type == "bnpo"',
            )
        ],
        "normaliser.not_divided_by_accumulation",
    ),
    "dapo-num-items-not-rescaled": (
        {"loss_type": "dapo", "gradient_accumulation_steps": 2, "steps_per_generation": 4},
        [
            (
                "normalizer = normalizer * self.current_gradient_accumulation_steps / self.args.steps_per_generation",
                "normalizer = normalizer",
            )
        ],
        "normaliser.steps_per_generation_ignored",
    ),
    "bnpo-counts-padding": (
        {"loss_type": "bnpo"},
        [
            (
                "loss = (per_token_loss * mask).sum() / mask.sum().clamp(min=1.0)",
                "loss = (per_token_loss * mask).sum() / mask.numel()",
            )
        ],
        "normaliser.counts_padding",
    ),
    "upper-clip-uses-epsilon-low": (
        {"loss_type": "dapo", "epsilon_high": 0.28},
        [
            (
                "coef_2 = torch.clamp(coef_1, 1 - self.epsilon_low, 1 + self.epsilon_high)",
                "coef_2 = torch.clamp(coef_1, 1 - self.epsilon_low, 1 + self.epsilon_low)",
            )
        ],
        "clip.upper_uses_epsilon_low",
    ),
    "kl-not-bias-corrected": (
        {"loss_type": "grpo", "beta": 0.04},
        [("if self.args.use_bias_correction_kl:", "if False:")],
        "kl.bias_correction_flipped",
    ),
    "entropy-mask-ignored": (
        {"loss_type": "dapo", "top_entropy_quantile": 0.5},
        [("per_token_loss = per_token_loss * entropy_mask", "per_token_loss = per_token_loss")],
        "entropy_mask.ignored",
    ),
    "sequence-ratio-unmasked": (
        {"loss_type": "dapo", "importance_sampling_level": "sequence"},
        [
            (
                "log_importance_weights = (log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)",
                "log_importance_weights = log_ratio.mean(-1)",
            )
        ],
        None,  # no known variant: found, localised, not named
    ),
}


@pytest.mark.parametrize("name", sorted(PATCHES))
def test_patched_trl_loss_is_found_and_diagnosed(tmp_path, name):
    from grpo_check.trl.probe import probe_trainer_outcome

    overrides, replacements, variant = PATCHES[name]
    trainer = _trainer(tmp_path, overrides, trainer_cls=_patched(name.title().replace("-", ""), replacements))
    outcome = probe_trainer_outcome(trainer)
    failures = outcome.failures
    assert failures and {f.stage for f in failures} <= {"loss", "grad"}
    if variant is not None:
        assert {f.details["variant"] for f in failures} == {variant}, [f.message() for f in failures]


def test_zoo_mutants_are_found_by_probing_and_the_control_is_clean(tmp_path):
    from grpo_check.trl.probe import probe_trainer
    from grpo_check.zoo.mutants_probe import (
        ON_POLICY,
        clip_control_class,
        delta_mutant_class,
        lower_clip_mutant_class,
    )

    for factory, variant, branch in (
        (lower_clip_mutant_class, "clip.lower_missing", "clip.lower_binds"),
        (delta_mutant_class, "delta.ignored", "delta.caps"),
    ):
        findings = probe_trainer(_trainer(tmp_path / variant, ON_POLICY, trainer_cls=factory()))
        failing = [f for f in findings if f.verdict is Verdict.FAIL]
        assert failing and {f.details["variant"] for f in failing} == {variant}
        assert all(f.catalog_id == "21" for f in failing)
        grads = [f for f in failing if f.check_id == "probe.logps_grad"]
        assert any(branch in f.details["branches_differing"] for f in grads)
    control = probe_trainer(_trainer(tmp_path / "control", ON_POLICY, trainer_cls=clip_control_class()))
    assert not _not_passing(control)


def _state(trainer):
    params = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    return params, torch.random.get_rng_state()


def test_probe_trainer_leaves_no_trace_on_the_trainer(tmp_path):
    import copy

    from grpo_check.trl import attach
    from grpo_check.trl.probe import probe_trainer

    trainer = _trainer(tmp_path, CONFIGS["dapo-entropy-offpolicy"] | {"entropy_coef": 0.01})
    attachment = attach(trainer, live=False)
    trainer._metrics["train"]["reward"].append(0.5)
    trainer.current_gradient_accumulation_steps = 3
    helpers = {k: v for k, v in trainer.__dict__.items() if callable(v)}
    metrics = copy.deepcopy(trainer._metrics)
    params, rng = _state(trainer)
    entropy_coef, training = trainer.entropy_coef, trainer.model.training
    assert not training  # the probe switches the model to training mode and back

    findings = probe_trainer(trainer)

    assert not _not_passing(findings)
    assert torch.equal(rng, torch.random.get_rng_state())
    after, _ = _state(trainer)
    assert all(torch.equal(params[k], after[k]) for k in params)
    assert all(p.grad is None for p in trainer.model.parameters())
    assert trainer._metrics == metrics
    assert trainer.current_gradient_accumulation_steps == 3
    assert trainer.entropy_coef == entropy_coef and trainer.model.training == training
    assert {
        k: v for k, v in trainer.__dict__.items() if callable(v)
    } == helpers  # capture's wrappers are back
    attachment.detach()


@pytest.mark.slow
def test_probing_during_training_changes_nothing_bitwise(tmp_path):
    """Probe after every micro-batch (between backward and the optimizer step): parameters and logged losses
    are bit-identical to a run without probing."""
    from grpo_check.demo.run import build_trainer
    from grpo_check.trl.probe import probe_trainer

    cell = next(c for c in MATRIX if "grpo-beta" in c.name)  # GAS 2, spg 4: old log-probs, ratios != 1

    def train(workdir, probe):
        trainer = build_trainer(cell, workdir, seed=0)
        calls = []
        if probe:
            original = trainer.training_step

            def training_step(*args, **kwargs):
                out = original(*args, **kwargs)
                calls.append(probe_trainer(trainer))
                return out

            trainer.training_step = training_step
        trainer.train()
        params = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        return params, losses, calls

    plain_params, plain_losses, _ = train(tmp_path / "plain", probe=False)
    probed_params, probed_losses, calls = train(tmp_path / "probed", probe=True)
    assert len(calls) == 4 and all(not _not_passing(findings) for findings in calls)
    assert plain_losses == probed_losses  # bitwise equal floats
    for name in plain_params:
        assert torch.equal(plain_params[name], probed_params[name]), name


@pytest.mark.slow
def test_probes_from_a_captured_micro_batch(tmp_path):
    from grpo_check.trl import attach
    from grpo_check.trl.probe import probe_trainer_outcome

    trainer = _trainer(tmp_path, CONFIGS["dapo-eps-high-delta-beta-gas2-spg4"], steps=1)
    attachment = attach(trainer, live=False)
    trainer.train()
    trace = attachment.close()
    step = next(s for s in trace.steps if s.meta.get("scope") == "micro_batch")
    outcome = probe_trainer_outcome(trainer, step)
    assert outcome.ok, _not_passing(outcome.findings)
    assert "normaliser.steps_per_generation" in outcome.branches
    from grpo_check.probe import build_probes
    from grpo_check.trl.probe import effective_spec

    probes = build_probes(effective_spec(trainer), step)
    assert all(p.shape[1] == step["completion_mask"].shape[1] for p in probes)


@pytest.mark.slow
def test_probing_on_two_processes(tmp_path):
    """Every rank probes (TRL's loss gathers its metrics); N counts both processes; the entropy quantile, which
    spans the ranks, is neutralised rather than misjudged."""
    import json
    import subprocess
    from pathlib import Path

    script = Path(__file__).with_name("_probe_rank.py")
    from grpo_check.trl.runner import rank_launch

    cmd, env = rank_launch(2, str(script), str(tmp_path))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        report = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert report["processes"] == 2 and report["ok"] == [True, True], report["problems"]
        assert "normaliser.processes" in report["branches"]
        assert "entropy_mask.drops" not in report["branches"]


def test_a_loss_that_runs_its_own_forward_is_inconclusive_not_a_false_alarm(tmp_path):
    from trl import GRPOTrainer

    from grpo_check.trl.probe import probe_trainer_outcome

    class OwnForward(GRPOTrainer):
        """Calls the class's log-prob helper directly: synthetic log-probs cannot reach this loss."""

        def _compute_loss(self, model, inputs):
            self._get_per_token_logps_and_entropies = GRPOTrainer._get_per_token_logps_and_entropies.__get__(
                self
            )
            try:
                return super()._compute_loss(model, inputs)
            finally:
                del self._get_per_token_logps_and_entropies

    trainer = _trainer(tmp_path, {"loss_type": "dapo"}, trainer_cls=OwnForward)
    params, rng = _state(trainer)
    outcome = probe_trainer_outcome(trainer)
    assert not outcome.ok and not outcome.failures
    assert set(outcome.not_run) == {"on-policy", "ratio-grid", "masks", "normaliser"}
    assert all("does not take its log-probs" in f.explanation for f in outcome.findings)
    assert torch.equal(rng, torch.random.get_rng_state())
    after, _ = _state(trainer)
    assert all(torch.equal(params[k], after[k]) for k in params)
