"""batch.text_faithful: the text the rewards scored is the decode of the completion tokens (bug-catalog S3)."""

from __future__ import annotations

import pytest
import torch

from grpo_check import GRPOCheckError, GRPOSpec
from grpo_check.findings import Verdict
from grpo_check.invariants import assert_text_faithful, run_invariants
from grpo_check.trace.model import TraceStep

DECODED = ["12 + 3 = 15", "the answer is 7", "", "  padded  "]


def _step(scored: list[str], decoded: list[str] | None = DECODED) -> TraceStep:
    meta = {"step": 3} if decoded is None else {"step": 3, "decoded_completion_text": decoded}
    return TraceStep(
        tensors={"completion_mask": torch.ones(len(scored), 4, dtype=torch.long)},
        completion_text=scored,
        meta=meta,
    )


def _finding(step: TraceStep):
    (finding,) = run_invariants(step, GRPOSpec(num_generations=2), checks=["batch.text_faithful"])
    return finding


def test_silent_when_scored_text_is_the_decode():
    assert _finding(_step(list(DECODED))).verdict is Verdict.PASS


def test_surrounding_whitespace_is_not_content():
    assert _finding(_step(["12 + 3 = 15 ", "the answer is 7", "", "padded"])).verdict is Verdict.PASS


def test_fires_on_prefix_stripped_text():
    mangled = [text[2:] for text in DECODED]  # post-processing drops the first two characters
    finding = _finding(_step(mangled))
    assert finding.verdict is Verdict.FAIL
    assert finding.catalog_id == "S3"
    assert finding.where.row == 0 and finding.where.step == 3
    assert "' + 3 = 15'" in finding.explanation and "'12 + 3 = 15'" in finding.explanation
    assert finding.details["differing_rows"] == [0, 1]  # the empty row and the whitespace-padded row survive


def test_fires_on_one_blanked_row_and_names_it():
    scored = list(DECODED)
    scored[1] = ""
    finding = _finding(_step(scored))
    assert finding.verdict is Verdict.FAIL
    assert finding.where.row == 1
    assert finding.details["differing_rows"] == [1]


def test_not_captured_without_a_decode():
    assert _finding(_step(list(DECODED), decoded=None)).verdict is Verdict.NOT_CAPTURED


def test_inconclusive_when_rows_cannot_be_paired():
    assert _finding(_step(list(DECODED), decoded=DECODED[:2])).verdict is Verdict.INCONCLUSIVE


def test_assert_form_raises_with_both_strings():
    with pytest.raises(GRPOCheckError, match="tokens decode to"):
        assert_text_faithful(completion_text=["wrong"], decoded_completion_text=["right"])
    assert (
        assert_text_faithful(completion_text=["same"], decoded_completion_text=["same"]).verdict
        is Verdict.PASS
    )
