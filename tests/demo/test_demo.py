"""The embedded demo: tiny model and tokenizer from code, the toy task, the matrix, the CLI, multi-process."""

from __future__ import annotations

import json

import pytest

from grpo_check.demo.matrix import MATRIX, cells
from grpo_check.demo.task import answer_for, correctness_reward, format_reward, make_prompts
from grpo_check.findings import InputError


def test_tokenizer_round_trips_and_pads_left():
    pytest.importorskip("transformers")
    from grpo_check.demo.model import build_tokenizer

    tok = build_tokenizer()
    ids = tok(["rev:12=", "cpy:3141="], padding=True)
    assert tok.decode(tok("rev:12=")["input_ids"]) == "rev:12="
    assert ids["attention_mask"][0][:2] == [0, 0]  # left padding
    assert tok.pad_token_id != tok.eos_token_id


def test_pad_is_eos_tokenizer_shares_the_token():
    pytest.importorskip("transformers")
    from grpo_check.demo.model import build_tokenizer

    tok = build_tokenizer(pad_is_eos=True)
    assert tok.pad_token_id == tok.eos_token_id


def test_policy_is_deterministic_and_rng_neutral():
    torch = pytest.importorskip("torch")
    from grpo_check.demo.model import build_policy, build_tokenizer

    tok = build_tokenizer()
    state = torch.random.get_rng_state()
    first, second = build_policy(tok, seed=3), build_policy(tok, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_rewards_are_verifiable():
    assert answer_for("rev:123=") == "321" and answer_for("cpy:45=") == "45"
    assert correctness_reward(["rev:123="], ["321"]) == [1.0]
    assert correctness_reward(["rev:123="], ["123"]) == [pytest.approx(1 / 3)]
    assert correctness_reward(["rev:="], ["1"]) == [None]  # unscorable
    assert format_reward(["cpy:12="], ["12"]) == [1.0]
    assert format_reward(["cpy:12="], [""]) == [0.0]
    prompts = make_prompts(20, seed=1)
    assert len(set(prompts)) == 20 and len({len(p) for p in prompts}) > 1  # distinct, different lengths


def test_matrix_leaves_the_defaults_that_hide_bugs():
    configs = [c.config_kwargs() for c in MATRIX]
    assert {c["loss_type"] for c in configs} >= {
        "grpo",
        "bnpo",
        "dr_grpo",
        "dapo",
        "cispo",
        "sapo",
        "luspo",
        "vespo",
    }
    assert {c.get("importance_sampling_level", "token") for c in configs} == {"token", "sequence"}
    assert {c["beta"] == 0 for c in configs} == {True, False}
    assert {c.get("scale_rewards", "group") for c in configs} == {"group", "batch", "none"}
    assert {c.get("num_iterations", 1) for c in configs} == {1, 2}
    assert {1, 4} <= {c["gradient_accumulation_steps"] for c in configs}
    assert any(c.get("steps_per_generation") not in (None, c["gradient_accumulation_steps"]) for c in configs)
    assert all(c["temperature"] != 1.0 for c in configs)
    assert any(c.get("top_p", 1.0) < 1.0 for c in configs)
    assert all(c["per_device_train_batch_size"] // c["num_generations"] >= 2 for c in configs)
    assert any(c.pad_is_eos for c in MATRIX)
    fast = cells("fast")
    assert 1 < len(fast) < len(MATRIX)


def test_matrix_selection_errors_are_input_errors():
    with pytest.raises(InputError, match="matrix must be"):
        cells("huge")
    with pytest.raises(InputError, match="no matrix cell matches"):
        cells("full", ["no-such-cell"])
    assert [c.name for c in cells("fast", ["cispo"])] == ["cispo-T0.8-topp0.8"]


def test_demo_cli_lists_the_matrix_without_training():
    from typer.testing import CliRunner

    from grpo_check.cli import app

    out = CliRunner().invoke(app, ["demo", "--list"])
    assert out.exit_code == 0, out.output
    assert all(c.name in out.output for c in MATRIX)
    bad = CliRunner().invoke(app, ["demo", "--matrix", "huge"])
    assert bad.exit_code == 2 and "matrix must be" in bad.output
    listed = CliRunner().invoke(app, ["demo", "--list", "--format", "json"])
    assert {row["name"] for row in json.loads(listed.stdout)} == {c.name for c in MATRIX}


def test_demo_cli_refuses_a_bad_seed_or_out_dir_before_training(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import grpo_check.demo.run as demo_run
    from grpo_check.cli import app

    monkeypatch.setattr(demo_run, "run_demo", lambda *args, **kwargs: pytest.fail("trained"))
    for seed in ("-5", str(2**32)):
        bad = CliRunner().invoke(app, ["demo", "--seed", seed, "--out-dir", str(tmp_path / "r")])
        assert bad.exit_code == 2 and "--seed must be between 0 and" in bad.output
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    for option in ("--output", "-o", "--out-dir"):  # --out-dir: the older spelling, kept as a hidden alias
        bad = CliRunner().invoke(app, ["demo", option, str(a_file)])
        assert bad.exit_code == 2 and "is a file, not a directory" in bad.output, option


@pytest.mark.slow
def test_demo_cli_fast_subset_is_clean_and_writes_reports(tmp_path):
    pytest.importorskip("trl")
    from typer.testing import CliRunner

    from grpo_check.cli import app

    out_dir = tmp_path / "demo"
    run = CliRunner().invoke(app, ["demo", "--output", str(out_dir)])
    assert run.exit_code == 0, run.output
    for name in ("report.md", "report.html", "result.json", "junit.xml"):
        assert (out_dir / name).is_file(), name
    result = json.loads((out_dir / "result.json").read_text())
    assert result["counts"]["fail"] == 0
    assert result["counts"]["pass"] > 0
    cells_run = {f["details"]["cell"] for f in result["findings"]}
    assert cells_run == {c.name for c in cells("fast")}
    assert "configuration(s) in" in run.output


@pytest.mark.slow
def test_full_matrix_is_clean_on_a_correct_trl(tmp_path):
    """Every configuration of the matrix, on TRL's real trainer: a correct TRL has zero failures and zero
    warnings (false positives would show up here first, e.g. a check that ignores mask_truncated_completions)."""
    pytest.importorskip("trl")
    from typer.testing import CliRunner

    from grpo_check.cli import app

    out_dir = tmp_path / "full"
    run = CliRunner().invoke(app, ["demo", "--matrix", "full", "--output", str(out_dir), "--format", "json"])
    assert run.exit_code == 0, run.output
    result = json.loads((out_dir / "result.json").read_text())
    bad = [
        f["check_id"] + ": " + f["explanation"]
        for f in result["findings"]
        if f["verdict"] in ("fail", "warn")
    ]
    assert bad == []
    assert {f["details"]["cell"] for f in result["findings"]} == {c.name for c in MATRIX}


@pytest.mark.slow
def test_multi_process_run_merges_two_ranks():
    pytest.importorskip("trl")
    from grpo_check.demo.run import run_cell_multiprocess

    cell = next(c for c in MATRIX if c.name.startswith("bnpo"))
    run = run_cell_multiprocess(cell, processes=2)
    assert run.result.exit_code() == 0, [f.message() for f in run.result.failures]
    micro = [s for s in run.trace.steps if s.meta["scope"] == "micro_batch"]
    generation = [s for s in run.trace.steps if s.meta["scope"] == "generation"]
    assert {s.meta["rank"] for s in micro} == {0, 1}
    assert generation and all(s.meta["num_processes"] == 2 for s in generation)
    # the generation step holds both ranks' rows; each rank's rows are its own slice of it
    rows = generation[0]["group_index"].shape[0]
    assert rows == 2 * 8 * 2  # processes x per_device_train_batch_size x steps_per_generation
    by_rank = {
        r: sorted(
            x
            for s in micro
            if s.meta["rank"] == r and s.meta["generation"] == 0
            for x in s.meta["global_rows"]
        )
        for r in (0, 1)
    }
    assert by_rank[0] == list(range(rows // 2)) and by_rank[1] == list(range(rows // 2, rows))
    slice_checks = [f for f in run.result.findings if f.check_id == "trl.advantages_slice"]
    assert {f.where.rank for f in slice_checks} == {0, 1}
