"""Trace on-disk format: round trip, validation errors naming file and field, partial loads, atomic writes."""

from __future__ import annotations

import json
import os
import stat
import warnings
from pathlib import Path

import pytest
import torch

from grpo_check.config import GRPOSpec
from grpo_check.findings import InputError
from grpo_check.trace import io as trace_io
from grpo_check.trace.io import FORMAT_VERSION, build_manifest, load_trace, save_trace
from grpo_check.trace.model import TENSOR_STAGE, Trace, TraceStep

B, T, P, F = 4, 5, 3, 2


def full_step(float_dtype: torch.dtype = torch.float32, step: int = 0, micro_batch: int = 0) -> TraceStep:
    """A step holding every canonical tensor name with a valid shape and dtype."""
    g = torch.Generator().manual_seed(step * 10 + micro_batch)

    def floats(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=g).to(float_dtype)

    completion_mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 0, 0, 0]])
    tensors = {
        "prompt_ids": torch.randint(0, 50, (B, P), generator=g),
        "prompt_mask": torch.ones(B, P, dtype=torch.long),
        "completion_ids": torch.randint(0, 50, (B, T), generator=g, dtype=torch.int32),
        "completion_mask": completion_mask,
        "group_index": torch.tensor([0, 0, 1, 1]),
        "tool_mask": torch.ones(B, T, dtype=torch.bool),
        "truncated": torch.tensor([False, True, False, False]),
        "rewards_per_func": floats(B, F),
        "reward_weights": floats(F),
        "rewards": floats(B),
        "advantages": floats(B),
        "logps": -floats(B, T).abs(),
        "old_logps": -floats(B, T).abs(),
        "ref_logps": -floats(B, T).abs(),
        "sampler_logps": -floats(B, T).abs(),
        "entropies": floats(B, T).abs(),
        "ratio": floats(B, T).exp(),
        "clipped_ratio": floats(B, T).exp(),
        "is_low_clipped": torch.zeros(B, T, dtype=torch.bool),
        "is_high_clipped": torch.zeros(B, T, dtype=torch.uint8),
        "sampler_is_ratio": floats(B, 1).exp(),
        "kl": floats(B, T).abs(),
        "per_token_loss": floats(B, T),
        "loss": floats(),
        "loss_normalizer": torch.tensor(11.0, dtype=float_dtype),
        "logps_grad": floats(B, T),
        "extra.my_probe": torch.arange(6, dtype=torch.int16).reshape(2, 3),
    }
    return TraceStep(
        tensors=tensors,
        completion_text=["a", "bb", "", "c d"],
        prompt_text=["p0", "p0", "p1", "p1"],
        meta={"step": step, "micro_batch": micro_batch, "rank": 0, "num_items_in_batch": 11},
    )


def make_trace(*steps: TraceStep) -> Trace:
    spec = GRPOSpec(num_generations=2, loss_type="grpo")
    manifest = build_manifest(trainer="unit-test", spec=spec, trainer_config={"lr": 1e-6}, seeds={"torch": 0})
    return Trace(manifest=manifest, steps=list(steps))


@pytest.mark.parametrize("float_dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_round_trip_every_tensor_name_and_dtype(tmp_path: Path, float_dtype: torch.dtype) -> None:
    step = full_step(float_dtype)
    assert set(TENSOR_STAGE) <= set(step.tensors)  # the fixture really covers every canonical name
    save_trace(make_trace(step), tmp_path / "t")
    loaded = load_trace(tmp_path / "t", strict=True)
    assert loaded.problems == []
    (got,) = loaded.steps
    assert set(got.tensors) == set(step.tensors)
    for name, tensor in step.tensors.items():
        assert got[name].dtype == tensor.dtype, name
        assert got[name].shape == tensor.shape, name
        assert torch.equal(got[name], tensor), name
    assert got.completion_text == step.completion_text
    assert got.prompt_text == step.prompt_text
    assert got.meta == step.meta
    assert loaded.manifest["trainer"] == "unit-test"
    assert loaded.manifest["format_version"] == FORMAT_VERSION
    assert loaded.manifest["dtypes"]["logps"] == str(float_dtype).removeprefix("torch.")
    assert loaded.spec() == GRPOSpec(num_generations=2, loss_type="grpo")
    assert set(loaded.manifest["versions"]) == {"python", "torch", "transformers", "trl", "grpo-check"}


def test_files_follow_the_documented_layout(tmp_path: Path) -> None:
    save_trace(make_trace(full_step(step=3, micro_batch=1)), tmp_path / "t")
    names = sorted(p.name for p in (tmp_path / "t" / "steps").iterdir())
    assert names == ["000003-mb01-r0.json", "000003-mb01-r0.safetensors"]
    record = json.loads((tmp_path / "t" / "steps" / "000003-mb01-r0.json").read_text())
    assert record["tensors"]["logps"] == {
        "dtype": "float32",
        "shape": [B, T],
        "nbytes": B * T * 4,
        "stage": "logps",
    }
    assert len(record["tensor_file_sha256"]) == 64
    # safetensors + JSON only: nothing else in the directory, no pickle anywhere
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == ["manifest.json", "steps"]


def test_steps_keep_recording_order(tmp_path: Path) -> None:
    steps = [full_step(step=s, micro_batch=m) for s in (0, 1) for m in (0, 1)]
    save_trace(make_trace(*steps), tmp_path / "t")
    loaded = load_trace(tmp_path / "t")
    assert [(s.meta["step"], s.meta["micro_batch"]) for s in loaded.steps] == [(0, 0), (0, 1), (1, 0), (1, 1)]


def test_valid_alternative_shapes_are_accepted(tmp_path: Path) -> None:
    step = full_step()
    step.tensors["advantages"] = torch.randn(B, T)  # (B, T) advantages
    step.tensors["ratio"] = torch.rand(B, 1) + 0.5  # sequence-level ratio (GSPO)
    save_trace(make_trace(step), tmp_path / "t")
    assert load_trace(tmp_path / "t", strict=True).steps[0]["ratio"].shape == (B, 1)


def test_refuses_to_overwrite_an_existing_trace(tmp_path: Path) -> None:
    save_trace(make_trace(full_step()), tmp_path / "t")
    with pytest.raises(InputError, match="already holds a trace"):
        save_trace(make_trace(full_step()), tmp_path / "t")
    save_trace(make_trace(full_step(step=7)), tmp_path / "t", overwrite=True)
    assert [s.step for s in load_trace(tmp_path / "t").steps] == [7]


# ----------------------------------------------------------------------------- validation and bad input
def _two_step_trace(tmp_path: Path, break_second) -> Path:
    good, bad = full_step(step=0), full_step(step=1)
    break_second(bad)
    # write with the writer, skipping its own name check only where the breakage is a name
    save_trace(make_trace(good, bad), tmp_path / "t")
    return tmp_path / "t"


@pytest.mark.parametrize(
    ("breakage", "field", "needle"),
    [
        (lambda s: s.tensors.__setitem__("logps", torch.randn(B, T + 1)), "logps", "T = 6"),
        (lambda s: s.tensors.__setitem__("advantages", torch.randn(B, 1, 1)), "advantages", "(B,) or (B, T)"),
        (lambda s: s.tensors.__setitem__("ratio", torch.rand(B, 3, 2)), "ratio", "(B, T) or (B, 1)"),
        (lambda s: s.tensors.__setitem__("rewards", torch.randn(B + 1)), "rewards", "B = 5"),
        (lambda s: s.tensors.__setitem__("prompt_mask", torch.ones(B, P + 1)), "prompt_mask", "P = 4"),
        (lambda s: s.tensors.__setitem__("completion_ids", torch.rand(B, T)), "completion_ids", "integer"),
        (lambda s: s.tensors.__setitem__("logps", torch.zeros(B, T, dtype=torch.long)), "logps", "floating"),
        (lambda s: s.tensors.__setitem__("loss", torch.zeros(2)), "loss", "scalar"),
        (
            lambda s: s.tensors.__setitem__("group_index", torch.tensor([0, -1, 1, 1])),
            "group_index",
            "non-negative",
        ),
    ],
)
def test_malformed_step_is_named_and_good_steps_still_load(
    tmp_path: Path, breakage, field: str, needle: str
) -> None:
    # a tensor format error is also announced while writing
    with pytest.warns(UserWarning, match=f"will be skipped when loaded: {field!r}"):
        path = _two_step_trace(tmp_path, breakage)
    with pytest.raises(InputError) as info:
        load_trace(path, strict=True)
    assert info.value.field == field
    assert "000001-mb00-r0" in info.value.source
    assert needle in str(info.value)

    loaded = load_trace(path)  # strict=False: the malformed step is left out, the good one is kept
    assert [s.step for s in loaded.steps] == [0]
    assert loaded.problems and all("000001-mb00-r0" in p for p in loaded.problems)
    assert any(repr(field) in p and "step skipped" in p for p in loaded.problems)


@pytest.mark.parametrize(
    ("breakage", "field", "needle"),
    [
        (lambda s: s.tensors["completion_mask"].__setitem__((1, 2), 2), "completion_mask", "only 0 and 1"),
        (
            lambda s: s.tensors.__setitem__("prompt_mask", torch.full((B, P), 0.5)),
            "prompt_mask",
            "only 0 and 1",
        ),
        (
            lambda s: s.tensors.__setitem__("group_index", torch.tensor([0, 0, 0, 1])),
            "group_index",
            "num_generations",
        ),
    ],
)
def test_bad_values_are_named_and_the_step_is_kept_for_the_invariants(
    tmp_path: Path, breakage, field: str, needle: str
) -> None:
    with warnings.catch_warnings():  # the step stays loadable: no "will be skipped" warning while writing
        warnings.simplefilter("error", UserWarning)
        path = _two_step_trace(tmp_path, breakage)
    with pytest.raises(InputError) as info:
        load_trace(path, strict=True)
    assert (info.value.field, "000001-mb00-r0" in info.value.source) == (field, True)
    assert needle in str(info.value)
    loaded = load_trace(path)
    assert [s.step for s in loaded.steps] == [
        0,
        1,
    ]  # kept: batch.masks_binary / batch.group_sizes diagnose it
    assert len(loaded.problems) == 1 and repr(field) in loaded.problems[0]


def test_correct_trace_has_no_problems(tmp_path: Path) -> None:
    path = _two_step_trace(tmp_path, lambda s: None)
    assert load_trace(path, strict=True).problems == []


def _rewrite_tensor_file(path: Path, tensors: dict) -> None:
    from safetensors.torch import save

    blob = save(tensors)
    (path / "steps" / "000001-mb00-r0.safetensors").write_bytes(blob)
    meta_path = path / "steps" / "000001-mb00-r0.json"
    record = json.loads(meta_path.read_text())
    import hashlib

    record["tensor_file_sha256"] = hashlib.sha256(blob).hexdigest()
    record["tensor_file_bytes"] = len(blob)
    record["tensors"] = {n: {"shape": list(t.shape)} for n, t in tensors.items()}
    meta_path.write_text(json.dumps(record))


def test_unknown_tensor_name_is_reported_and_ignored(tmp_path: Path) -> None:
    path = _two_step_trace(tmp_path, lambda s: None)
    tensors = dict(full_step(step=1).tensors)
    tensors["logprobs"] = torch.zeros(B, T)  # not canonical, not under extra.
    _rewrite_tensor_file(path, tensors)
    with pytest.raises(InputError) as info:
        load_trace(path, strict=True)
    assert info.value.field == "logprobs"
    loaded = load_trace(path)
    assert len(loaded.steps) == 2 and "logprobs" not in loaded.steps[1].tensors
    assert any("'logprobs'" in p and "extra." in p for p in loaded.problems)


def test_writer_rejects_unknown_names(tmp_path: Path) -> None:
    step = full_step()
    step.tensors["logprobs"] = torch.zeros(B, T)
    with pytest.raises(InputError) as info:
        save_trace(make_trace(step), tmp_path / "t")
    assert info.value.field == "logprobs"


def test_truncated_safetensors_file(tmp_path: Path) -> None:
    path = _two_step_trace(tmp_path, lambda s: None)
    tensor_file = path / "steps" / "000001-mb00-r0.safetensors"
    tensor_file.write_bytes(tensor_file.read_bytes()[:100])
    with pytest.raises(InputError) as info:
        load_trace(path, strict=True)
    assert info.value.source.endswith("000001-mb00-r0.safetensors")
    assert "truncated" in str(info.value)
    loaded = load_trace(path)
    assert [s.step for s in loaded.steps] == [0]


def test_garbled_safetensors_without_checksum(tmp_path: Path) -> None:
    path = _two_step_trace(tmp_path, lambda s: None)
    (path / "steps" / "000001-mb00-r0.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    meta_path = path / "steps" / "000001-mb00-r0.json"
    record = json.loads(meta_path.read_text())
    record.pop("tensor_file_sha256")
    record.pop("tensor_file_bytes")
    meta_path.write_text(json.dumps(record))
    with pytest.raises(InputError, match="not a readable safetensors file"):
        load_trace(path, strict=True)
    assert len(load_trace(path).steps) == 1


def test_corrupted_step_json(tmp_path: Path) -> None:
    path = _two_step_trace(tmp_path, lambda s: None)
    meta_path = path / "steps" / "000001-mb00-r0.json"
    meta_path.write_text(meta_path.read_text()[:40])
    with pytest.raises(InputError) as info:
        load_trace(path, strict=True)
    assert info.value.source.endswith("000001-mb00-r0.json")
    assert "not valid JSON" in str(info.value)
    loaded = load_trace(path)
    assert [s.step for s in loaded.steps] == [0]
    # the orphaned tensor file (its .json unreadable) is not read either
    assert any("000001-mb00-r0" in p for p in loaded.problems)


def test_orphan_tensor_file_is_reported(tmp_path: Path) -> None:
    path = _two_step_trace(tmp_path, lambda s: None)
    (path / "steps" / "000001-mb00-r0.json").unlink()
    loaded = load_trace(path)
    assert [s.step for s in loaded.steps] == [0]
    assert any("no matching .json" in p for p in loaded.problems)


def test_missing_manifest(tmp_path: Path) -> None:
    path = _two_step_trace(tmp_path, lambda s: None)
    (path / "manifest.json").unlink()
    with pytest.raises(InputError, match=r"missing manifest\.json"):
        load_trace(path)


def test_corrupted_manifest(tmp_path: Path) -> None:
    path = _two_step_trace(tmp_path, lambda s: None)
    (path / "manifest.json").write_text("{ oops")
    with pytest.raises(InputError) as info:
        load_trace(path)
    assert info.value.source.endswith("manifest.json")


def test_newer_format_version_is_refused(tmp_path: Path) -> None:
    path = _two_step_trace(tmp_path, lambda s: None)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["format_version"] = FORMAT_VERSION + 1
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError) as info:
        load_trace(path)
    assert info.value.field == "format_version"


def test_invalid_config_in_manifest(tmp_path: Path) -> None:
    path = _two_step_trace(tmp_path, lambda s: None)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["config"]["loss_type"] = "nonsense"
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError) as info:
        load_trace(path, strict=True)
    assert info.value.field == "config.loss_type"
    assert len(load_trace(path).steps) == 2


def test_no_readable_step_is_an_input_error(tmp_path: Path) -> None:
    path = _two_step_trace(tmp_path, lambda s: None)
    for meta_path in (path / "steps").glob("*.json"):
        meta_path.write_text("garbage")
    with pytest.raises(InputError, match="no readable step"):
        load_trace(path)


def test_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such trace directory"):
        load_trace(tmp_path / "nope")


def test_load_via_manifest_path(tmp_path: Path) -> None:
    path = _two_step_trace(tmp_path, lambda s: None)
    assert len(load_trace(path / "manifest.json").steps) == 2


# ------------------------------------------------------------------------------------------ atomic writes
def test_atomic_write_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "out.json"
    target.write_text("old content")

    def crash(src, dst):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(trace_io.os, "replace", crash)
    with pytest.raises(OSError, match="simulated"):
        trace_io.atomic_write_text(target, "new content that never lands")
    assert target.read_text() == "old content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]  # temp file cleaned up


def test_crash_while_writing_a_step_keeps_earlier_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = trace_io.TraceWriter(tmp_path / "t")
    writer.write_manifest(make_trace().manifest)
    writer.write_step(full_step(step=0))
    real_replace = os.replace
    calls = {"n": 0}

    def crash_on_step_json(src, dst):
        calls["n"] += 1
        if str(dst).endswith(".json"):
            raise OSError("killed (simulated)")
        real_replace(src, dst)

    monkeypatch.setattr(trace_io.os, "replace", crash_on_step_json)
    with pytest.raises(OSError, match="simulated"):
        writer.write_step(full_step(step=1))
    monkeypatch.setattr(trace_io.os, "replace", real_replace)
    loaded = load_trace(tmp_path / "t")
    assert [s.step for s in loaded.steps] == [0]
    assert not [p for p in (tmp_path / "t" / "steps").iterdir() if p.name.endswith(".tmp")]


def test_atomic_write_gives_normal_permissions(tmp_path: Path) -> None:
    target = trace_io.atomic_write_text(tmp_path / "x.json", "{}")
    assert target.stat().st_mode & 0o777 == 0o666 & ~trace_io._UMASK


@pytest.mark.parametrize("where", ["directory", "under_a_file"])
def test_unwritable_destination_is_an_input_error_and_an_oserror(tmp_path: Path, where: str) -> None:
    """A directory or a path under a file used to raise a bare IsADirectoryError/FileExistsError (a CLI
    traceback); now the error names the path, maps to exit code 2, and is still an OSError."""
    from grpo_check.findings import InputError

    (tmp_path / "file.txt").write_text("x")
    target = tmp_path if where == "directory" else tmp_path / "file.txt" / "out.json"
    with pytest.raises(trace_io.OutputPathError) as info:
        trace_io.atomic_write_text(target, "data")
    assert isinstance(info.value, InputError) and isinstance(info.value, OSError)
    assert info.value.source == str(target)
    assert (tmp_path / "file.txt").read_text() == "x"


# ------------------------------------------------------- partial drops: wrong text, wrongly typed step meta
def _edit_step_json(path: Path, edit) -> Path:
    """Apply ``edit`` to step 1's ``.json`` record (the tensor file is left untouched)."""
    meta_path = path / "steps" / "000001-mb00-r0.json"
    record = json.loads(meta_path.read_text())
    edit(record)
    meta_path.write_text(json.dumps(record))
    return meta_path


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("completion_text", ["a", "b", "c"], "has 3 entries for 4 rows"),
        ("prompt_text", ["p"] * 5, "has 5 entries for 4 rows"),
        ("completion_text", [1, 2, 3, 4], "list of strings"),
    ],
)
def test_wrong_text_drops_only_the_text_and_names_the_json(
    tmp_path: Path, field: str, value: list, needle: str
) -> None:
    path = _two_step_trace(tmp_path, lambda s: None)
    meta_path = _edit_step_json(path, lambda record: record.__setitem__(field, value))
    with pytest.raises(InputError) as info:
        load_trace(path, strict=True)
    assert (info.value.field, info.value.source) == (field, str(meta_path))
    assert needle in str(info.value)

    loaded = load_trace(path)
    assert [s.step for s in loaded.steps] == [0, 1]  # the step and its tensors are kept
    good, kept = loaded.steps
    assert set(kept.tensors) == set(good.tensors)
    assert getattr(kept, field) is None  # only the faulty text is dropped
    other = "prompt_text" if field == "completion_text" else "completion_text"
    assert getattr(kept, other) == getattr(good, other)
    (message,) = loaded.problems
    assert message.startswith(f"{meta_path}: field {field!r}: ") and "text dropped, tensors kept" in message


def test_text_with_one_entry_per_row_is_kept(tmp_path: Path) -> None:
    path = _two_step_trace(tmp_path, lambda s: None)
    loaded = load_trace(path, strict=True)
    assert loaded.steps[1].completion_text == ["a", "bb", "", "c d"]
    assert loaded.steps[1].prompt_text == ["p0", "p0", "p1", "p1"]


def test_writer_warns_that_a_wrong_text_will_be_dropped(tmp_path: Path) -> None:
    with pytest.warns(
        UserWarning, match="text will be dropped when loaded: 'completion_text': has 1 entries"
    ):
        path = _two_step_trace(tmp_path, lambda s: setattr(s, "completion_text", ["only one"]))
    loaded = load_trace(path)
    assert [s.completion_text is None for s in loaded.steps] == [False, True]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("step", "zero"),
        ("micro_batch", "0"),
        ("rank", 1.5),
        ("step", True),
        ("optimizer_steps_since_old_logps", "0"),
        ("pad_token_id", [0]),
        ("eos_token_ids", "23"),
        ("eos_token_ids", [2, "x"]),
    ],
)
def test_wrongly_typed_meta_key_is_dropped_and_the_step_kept(tmp_path: Path, key: str, value: object) -> None:
    path = _two_step_trace(tmp_path, lambda s: None)
    meta_path = _edit_step_json(path, lambda record: record["meta"].__setitem__(key, value))
    with pytest.raises(InputError) as info:
        load_trace(path, strict=True)
    assert (info.value.field, info.value.source) == (f"meta.{key}", str(meta_path))
    assert repr(value) in str(info.value)

    loaded = load_trace(path)
    assert len(loaded.steps) == 2
    kept = loaded.steps[1]
    assert key not in kept.meta and kept.meta["num_items_in_batch"] == 11  # only the bad key is dropped
    assert set(kept.tensors) == set(loaded.steps[0].tensors)
    (message,) = loaded.problems
    assert message.startswith(f"{meta_path}: field 'meta.{key}': ") and "key dropped, step kept" in message


def test_integer_and_null_meta_values_load_without_problems(tmp_path: Path) -> None:
    path = _two_step_trace(tmp_path, lambda s: None)
    values = {"rank": None, "optimizer_steps_since_old_logps": 0, "pad_token_id": 0, "eos_token_ids": [1, 2]}
    _edit_step_json(path, lambda record: record["meta"].update(values))
    loaded = load_trace(path, strict=True)
    assert loaded.problems == []
    assert {k: loaded.steps[1].meta[k] for k in values} == values
    _edit_step_json(path, lambda record: record["meta"].update(eos_token_ids=2))
    assert load_trace(path, strict=True).steps[1].meta["eos_token_ids"] == 2


def test_check_on_a_wrongly_typed_step_number_reports_instead_of_crashing(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from grpo_check.cli import app

    path = _two_step_trace(tmp_path, lambda s: None)
    _edit_step_json(path, lambda record: record["meta"].__setitem__("step", "zero"))
    args = ["check", str(path), "--output", str(tmp_path / "reports")]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code in (0, 1), result.output  # checked, not a usage error and not a traceback
    assert "field 'meta.step': must be an integer or null, got 'zero'" in result.output


# --------------------------------------------------------------------------- manifest config of wrong type
def _edit_manifest_config(path: Path, edit) -> Path:
    manifest_path = path / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    edit(manifest)
    manifest_path.write_text(json.dumps(manifest))
    return manifest_path


def _run_check(path: Path, tmp_path: Path):
    from typer.testing import CliRunner

    from grpo_check.cli import app

    args = ["check", str(path), "--output", str(tmp_path / "reports")]
    return CliRunner().invoke(app, args, catch_exceptions=False)


@pytest.mark.parametrize("config", [[1], "grpo", 4])
def test_config_that_is_not_an_object_is_an_input_error(tmp_path: Path, config: object) -> None:
    path = _two_step_trace(tmp_path, lambda s: None)
    manifest_path = _edit_manifest_config(path, lambda m: m.__setitem__("config", config))
    with pytest.raises(InputError) as info:
        load_trace(path, strict=True)
    assert (info.value.field, info.value.source) == ("config", str(manifest_path))
    trace = load_trace(path)
    assert len(trace.steps) == 2 and any("'config'" in p for p in trace.problems)
    with pytest.raises(InputError) as info:
        trace.spec()
    assert (info.value.field, info.value.source) == ("config", str(manifest_path))
    assert "must be a JSON object" in str(info.value)

    result = _run_check(path, tmp_path)
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [f"error: {info.value}"]


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [("num_generations", "4", "whole number"), ("epsilon", "0.2", "finite number")],
)
def test_config_field_of_wrong_type_is_an_input_error_naming_the_manifest(
    tmp_path: Path, field: str, value: str, needle: str
) -> None:
    path = _two_step_trace(tmp_path, lambda s: None)
    manifest_path = _edit_manifest_config(path, lambda m: m["config"].__setitem__(field, value))
    with pytest.raises(InputError) as info:
        load_trace(path).spec()
    assert (info.value.field, info.value.source) == (f"config.{field}", str(manifest_path))
    assert needle in str(info.value)

    result = _run_check(path, tmp_path)
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [f"error: {info.value}"]


@pytest.mark.parametrize("config", [None, {}, {"num_generations": 2, "epsilon": 0.2}])
def test_valid_or_absent_config_still_checks(tmp_path: Path, config: object) -> None:
    path = _two_step_trace(tmp_path, lambda s: None)
    _edit_manifest_config(path, lambda m: m.__setitem__("config", config))
    trace = load_trace(path, strict=True)
    assert trace.spec().epsilon == 0.2 and trace.problems == []
    assert _run_check(path, tmp_path).exit_code in (0, 1)


def test_atomic_write_goes_through_a_symlink_and_refuses_devices_and_pipes(tmp_path: Path) -> None:
    """Renaming a temp file over the path would replace a symlink, a device node or a FIFO with a plain file
    (``-o /dev/full`` used to turn the device into a file, as root)."""
    from grpo_check.trace.io import OutputPathError, atomic_write_bytes

    real = tmp_path / "real.json"
    real.write_text("{}")
    link = tmp_path / "link.json"
    link.symlink_to(real)
    atomic_write_bytes(link, b"new")
    assert link.is_symlink() and real.read_bytes() == b"new"
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for special in (fifo, Path(os.devnull)):
        with pytest.raises(OutputPathError, match="not a regular file"):
            atomic_write_bytes(special, b"x")
    assert stat.S_ISFIFO(fifo.stat().st_mode) and stat.S_ISCHR(Path(os.devnull).stat().st_mode)


def test_a_manifest_that_is_a_pipe_is_refused_instead_of_waiting_forever(tmp_path: Path) -> None:
    from grpo_check.findings import InputError
    from grpo_check.trace.io import load_trace

    (tmp_path / "steps").mkdir()
    os.mkfifo(tmp_path / "manifest.json")
    with pytest.raises(InputError, match=r"manifest\.json is not a regular file"):
        load_trace(tmp_path)


def test_a_scalar_saved_with_unit_dimensions_loads_as_a_scalar(tmp_path: Path) -> None:
    from grpo_check.compare import compare
    from grpo_check.compare.synthetic import make_trace

    trace = make_trace(steps=1)
    trace.steps[0].tensors["loss"] = trace.steps[0]["loss"].reshape(1, 1)  # (1, 1): used to crash compare
    loaded = load_trace(save_trace(trace, tmp_path / "t"))
    assert loaded.steps[0]["loss"].shape == () and not loaded.problems
    assert compare(loaded).exit_code() == 0


def test_an_unknown_config_field_in_a_manifest_is_a_load_problem_not_silently_ignored(tmp_path: Path) -> None:
    from grpo_check.compare.synthetic import make_trace

    trace = make_trace(steps=1)
    trace.manifest["config"] = {**trace.manifest.get("config", {}), "num_generation": 4}
    loaded = load_trace(save_trace(trace, tmp_path / "t"))
    assert any("field 'config.num_generation': unknown GRPOSpec field, ignored (did you mean 'num_generations'?)"
               in problem for problem in loaded.problems)  # fmt: skip
    clean = load_trace(save_trace(make_trace(steps=1), tmp_path / "clean"))
    assert not clean.problems


def test_load_trace_refuses_a_path_of_the_wrong_kind() -> None:
    from grpo_check.findings import InputError

    with pytest.raises(InputError, match="a trace path is a string or a path, got NoneType"):
        load_trace(None)
