"""The fixed-seed slice of every fuzzer: each target's inputs run in a child process under a 6 GiB
address-space cap, each input under a 20 s alarm. Every input must end in a clean error or be read:
no traceback, no hang. ``scripts/fuzz_long.py`` runs the long version."""

from __future__ import annotations

import fuzz_harness as h
import pytest

# examples per target, sized so the whole slice takes about a minute on two cores
SLICE = {"trace": 80, "manifest": 60, "config": 80, "results": 60, "golden": 40, "cli": 60}


@pytest.mark.parametrize("target", sorted(SLICE))
def test_fixed_seed_slice(target: str) -> None:
    figures = h.run_bounded(target, examples=SLICE[target], seed=20261204, timeout=300)
    assert figures["tracebacks"] == 0 and figures["hangs"] == 0, "\n\n".join(figures["examples"])
    assert figures["tried"] == SLICE[target]
    assert figures["clean"] > 0  # the fuzzer reaches the refusals, not only well-formed inputs


def test_classify_tells_the_outcomes_apart() -> None:
    from grpo_check.findings import InputError

    def refuse() -> None:
        raise InputError("bad")

    def crash() -> None:
        raise KeyError("x")

    def block() -> None:
        import time

        time.sleep(5)

    assert h.classify(refuse)[0] == "clean"
    assert h.classify(lambda: None)[0] == "accepted"
    assert h.classify(crash)[0] == "traceback"
    assert h.classify(block, seconds=0.2)[0] == "hang"


def test_the_cli_judge_counts_a_usage_box_or_a_traceback_as_a_bug() -> None:
    assert h.judge_cli(["x"], 2, "error: one line\n")[0] == "clean"
    assert h.judge_cli(["x"], 2, "Usage: x\nTry 'x --help'\nError: bad\n")[0] == "traceback"
    assert h.judge_cli(["x"], 1, "Traceback (most recent call last):\n")[0] == "traceback"
    assert h.judge_cli(["x"], 1, "")[0] == "accepted"
