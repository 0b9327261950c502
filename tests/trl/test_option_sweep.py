"""A fixed slice of the option sweep (scripts/option_sweep.py): GRPOConfig options drawn in combination, run
on unpatched TRL through the full check, must give 0 FAIL and 0 WARN. Seed 1's first nine draws cover the
adaptive entropy bonus, zero updates (every advantage 0) under num_iterations = 2 and steps_per_generation >
GAS, entropy and off-policy masks with β > 0, sync_ref_model, pad = EOS, a second EOS id and truncation."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("trl")

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "option_sweep.py"


def _sweep_module():
    spec = importlib.util.spec_from_file_location("option_sweep", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_sampler_is_seeded_and_keeps_pairings_trl_needs():
    import random

    sweep = _sweep_module()
    first = [sweep.draw_configuration(random.Random(3)) for _ in range(2)]
    assert first[0] == first[1]
    for draw in (sweep.draw_configuration(random.Random(seed)) for seed in range(50)):
        if draw["loss_type"] in ("bnpo", "dr_grpo", "dapo", "cispo", "vespo"):
            assert draw["importance_sampling_level"] == "token"
        if draw["beta"] == 0.0:
            assert draw["sync_ref_model"] is False


@pytest.mark.slow
def test_a_fixed_slice_of_the_sweep_raises_no_false_alarm(tmp_path, capsys):
    sweep = _sweep_module()
    code = sweep.main(["--seed", "1", "--count", "9", "--steps", "2", "-o", str(tmp_path / "sweep.json")])
    out = capsys.readouterr()
    assert code == 0, out.err[-3000:]
    assert "9 clean" in out.out
