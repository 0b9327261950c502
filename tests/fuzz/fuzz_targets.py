"""Fuzz targets: for each reader, a hypothesis strategy of malformed inputs and the call that reads them.

``TARGETS[name] = (strategy, build)``; ``build(value, workdir)`` writes the input under ``workdir`` and
returns the zero-argument call whose outcome :func:`fuzz_harness.classify` judges.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import fuzz_harness as h
from hypothesis import strategies as st

# ------------------------------------------------------------------------------------------- values
SURROGATE = "\ud800"
_special_ints = st.sampled_from([0, -1, 1, 2**31, 2**40, 2**63, 2**64, 10**30, -(2**63) - 1])
_special_floats = st.sampled_from([1e308, -1e308, float("nan"), float("inf"), -0.0, 5e-324])
_special_text = st.sampled_from(
    ["", "abc", SURROGATE, f"x{SURROGATE}y", "a\x00b", "../../etc", "\u202e", "1e999"]
)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    _special_ints,
    st.floats(allow_nan=True, allow_infinity=True),
    _special_floats,
    st.text(max_size=12),
    _special_text,
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6) | _special_text, inner, max_size=4)
    ),
    max_leaves=12,
)
# raw texts that no generator of JSON values produces: too deep, too long, cut off, not text at all
raw_json_texts = st.one_of(
    st.integers(min_value=50, max_value=100_000).map(lambda n: "[" * n + "]" * n),
    st.integers(min_value=50, max_value=20_000).map(lambda n: '{"a": ' * n + "1" + "}" * n),
    st.integers(min_value=30, max_value=6000).map(lambda n: '{"x": ' + "9" * n + "}"),
    st.just('{"format": "grpo-check-trace", "format_version": 1'),
    st.binary(max_size=64).map(lambda b: b.decode("latin-1")),
)


def dumps(value: Any) -> str:
    return json.dumps(value)  # ensure_ascii: a lone surrogate is written as its \\ud800 escape


def _set_path(document: Any, path: list[Any], value: Any) -> Any:
    """``document`` with the item at ``path`` (keys or indices, wrapped to what exists) set to ``value``."""
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(document, dict) and document:
        key = sorted(document)[head % len(document)] if isinstance(head, int) else head
        return {**document, key: _set_path(document.get(key), rest, value)}
    if isinstance(document, list) and document:
        index = head % len(document) if isinstance(head, int) else 0
        return [*document[:index], _set_path(document[index], rest, value), *document[index + 1 :]]
    return value


json_edits = st.lists(
    st.tuples(
        st.lists(st.integers(min_value=0, max_value=50) | st.text(max_size=6), max_size=3), json_values
    ),
    min_size=1,
    max_size=3,
)


def edit_json_file(path: Path, edits: list[tuple[list[Any], Any]]) -> None:
    document = json.loads(path.read_text())
    for where, value in edits:
        document = _set_path(document, where, value)
    path.write_text(dumps(document))


# ------------------------------------------------------------------------------------------- traces
@cache
def _template(steps: int) -> Path:
    import tempfile

    return h.write_valid_trace(Path(tempfile.mkdtemp(prefix="fuzz-template-")) / "trace", steps=steps)


def fresh_trace(workdir: Path, steps: int = 1) -> Path:
    target = workdir / "trace"
    shutil.copytree(_template(steps), target)
    return target


def _replace_with_special(path: Path, kind: str) -> None:
    path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev_zero":
        os.symlink("/dev/zero", path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "dangling":
        os.symlink(path.parent / "nowhere", path)
    elif kind == "empty":
        path.write_bytes(b"")


special_files = st.sampled_from(["fifo", "dev_zero", "directory", "dangling", "empty"])
dtypes = st.sampled_from(
    [
        "int64",
        "int32",
        "int16",
        "int8",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "bool",
        "float16",
        "bfloat16",
        "float32",
        "float64",
        "float8_e4m3fn",
        "float8_e5m2",
    ]
)
tensor_names = st.sampled_from(
    [
        "group_index",
        "completion_ids",
        "completion_mask",
        "rewards_per_func",
        "logps",
        "old_logps",
        "logps_grad",
        "loss",
        "advantages",
        "ratio",
        "extra.x",
        "bogus",
        "loss\x00x",
        "a" * 300,
    ]
)


@st.composite
def tensor_edits(draw) -> dict[str, Any]:
    shape = draw(st.lists(st.integers(min_value=0, max_value=6), max_size=3))
    return {
        "name": draw(tensor_names),
        "dtype": draw(dtypes),
        "shape": shape,
        "fill": draw(st.sampled_from([0, 1, -1, 2**40, 2**31, 1e308, -1e308, float("nan"), float("inf")])),
    }


def _apply_tensor_edit(tensors: dict[str, Any], edit: dict[str, Any]) -> None:
    import torch

    dtype = getattr(torch, edit["dtype"])
    fill = edit["fill"]
    value = torch.zeros(edit["shape"], dtype=torch.float64)
    if not dtype.is_floating_point:
        fill = int(fill) if isinstance(fill, int) or (fill == fill and abs(fill) < 2**62) else 0
        info = torch.iinfo(dtype) if dtype != torch.bool else None
        if info is not None:
            fill = max(min(fill, info.max), info.min)
        value = torch.full(edit["shape"], fill, dtype=torch.int64 if dtype != torch.bool else torch.bool)
    else:
        value = value.fill_(fill)
    tensors[edit["name"]] = value.to(dtype)


TRACE_KINDS = ["manifest", "manifest_raw", "step_json", "step_raw", "tensors", "bytes", "header", "special"]


@st.composite
def trace_inputs(draw, kinds: tuple[str, ...] = tuple(TRACE_KINDS)) -> dict[str, Any]:
    kind = draw(st.sampled_from(kinds))
    value: dict[str, Any] = {"kind": kind}
    if kind in ("manifest", "step_json"):
        value["edits"] = draw(json_edits)
    elif kind in ("manifest_raw", "step_raw"):
        value["text"] = draw(raw_json_texts)
    elif kind == "tensors":
        value["edits"] = draw(st.lists(tensor_edits(), min_size=1, max_size=3))
    elif kind == "bytes":
        value["flips"] = draw(
            st.lists(
                st.tuples(st.integers(min_value=0, max_value=10**6), st.integers(min_value=1, max_value=255)),
                min_size=1,
                max_size=8,
            )
        )
        value["truncate"] = draw(st.none() | st.integers(min_value=0, max_value=4000))
    elif kind == "header":
        value["length"] = draw(st.integers(min_value=0, max_value=2**64 - 1) | st.sampled_from([0, 2, 2**62]))
        value["header"] = draw(
            json_values
            | st.dictionaries(
                tensor_names,
                st.fixed_dictionaries(
                    {
                        "dtype": st.sampled_from(["F32", "I64", "U32", "F8_E4M3", "X"]) | json_scalars,
                        "shape": st.lists(st.integers(min_value=-2, max_value=2**40), max_size=3)
                        | json_values,
                        "data_offsets": st.lists(st.integers(min_value=-5, max_value=2**62), max_size=3)
                        | json_values,
                    }
                ),
                max_size=3,
            )
        )
    else:
        value["which"] = draw(st.sampled_from(["manifest", "step_json", "tensors", "steps_dir"]))
        value["special"] = draw(special_files)
    value["unpin"] = draw(st.booleans())
    return value


def build_trace(value: dict[str, Any], workdir: Path) -> Callable[[], Any]:
    root = fresh_trace(workdir)
    json_path, tensor_path = h.step_files(root)
    kind = value["kind"]
    if value["unpin"] or kind in ("tensors", "header"):
        h.unpin(json_path)
    if kind == "manifest":
        edit_json_file(root / "manifest.json", value["edits"])
    elif kind == "manifest_raw":
        (root / "manifest.json").write_text(value["text"], encoding="utf-8", errors="surrogatepass")
    elif kind == "step_json":
        edit_json_file(json_path, value["edits"])
    elif kind == "step_raw":
        json_path.write_text(value["text"], encoding="utf-8", errors="surrogatepass")
    elif kind == "tensors":
        from safetensors.torch import load_file

        tensors = load_file(str(tensor_path))
        for edit in value["edits"]:
            _apply_tensor_edit(tensors, edit)
        h.write_safetensors(tensor_path, tensors)
        record = json.loads(json_path.read_text())
        record["tensors"] = {}
        json_path.write_text(dumps(record))
    elif kind == "bytes":
        data = bytearray(tensor_path.read_bytes())
        for offset, mask in value["flips"]:
            data[offset % len(data)] ^= mask
        if value["truncate"] is not None:
            data = data[: value["truncate"]]
        tensor_path.write_bytes(bytes(data))
    elif kind == "header":
        header = dumps(value["header"]).encode()
        tensor_path.write_bytes(struct.pack("<Q", value["length"] % 2**64) + header + b"\0" * 64)
    else:
        which = value["which"]
        path = {"manifest": root / "manifest.json", "step_json": json_path, "tensors": tensor_path}.get(which)
        if path is None:
            shutil.rmtree(root / "steps")
            (root / "steps").touch()
        else:
            _replace_with_special(path, value["special"])
    return h.load_trace_target(root)


# ------------------------------------------------------------------------------------------- configs
GRPO_KEYS = [
    "num_generations",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "beta",
    "learning_rate",
    "loss_type",
    "epsilon",
    "temperature",
    "top_p",
    "max_completion_length",
    "steps_per_generation",
    "reward_weights",
    "scale_rewards",
    "generation_batch_size",
    "bogus_key",
]
CONFIG_TEXTS = [
    "a: &x [*x]\n",
    "num_generations: &n [1, *n]\n",
    "a: " + "[" * 10_000 + "]" * 10_000 + "\n",
    "num_generations: " + "9" * 5000 + "\n",
    '{"num_generations": ' + "9" * 5000 + "}",
    '{"a": ' + "[" * 900 + "]" * 900 + "}",
    "".join([f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]\n" for i in range(1, 12)]).replace(
        "*l0", "x"
    ),
    "!!python/object/apply:os.system ['true']\n",
    "num_generations: !!python/name:os.system\n",
    "num_generations: 0x" + "f" * 5000 + "\n",
    f'{{"num_generations": 8, "{SURROGATE}x": 1}}',
    "beta: .nan\nnum_generations: 8\n",
]


@st.composite
def config_inputs(draw) -> dict[str, Any]:
    style = draw(st.sampled_from(["yaml", "json", "raw", "binary"]))
    if style == "raw":
        return {"style": style, "text": draw(st.sampled_from(CONFIG_TEXTS) | raw_json_texts)}
    if style == "binary":
        return {"style": style, "bytes": draw(st.binary(max_size=200))}
    mapping = draw(st.dictionaries(st.sampled_from(GRPO_KEYS), json_values, min_size=1, max_size=6))
    nest = draw(st.sampled_from([None, "training", "grpo"]))
    return {
        "style": style,
        "mapping": {nest: mapping} if nest else mapping,
        "format": draw(st.sampled_from(["text", "json", "sarif", "md", "table"])),
    }


def build_config(value: dict[str, Any], workdir: Path) -> Callable[[], Any]:
    style = value["style"]
    fmt = value.get("format", "sarif")
    if style == "yaml":
        import yaml

        path = workdir / "config.yaml"
        try:
            path.write_text(yaml.safe_dump(value["mapping"], allow_unicode=False), errors="surrogatepass")
        except (yaml.YAMLError, UnicodeEncodeError):
            path.write_text(dumps(value["mapping"]))
    elif style == "json":
        path = workdir / "config.json"
        path.write_text(dumps(value["mapping"]))
    elif style == "raw":
        path = workdir / "config.yaml"
        path.write_text(value["text"], encoding="utf-8", errors="surrogatepass")
    else:
        path = workdir / "config.yaml"
        path.write_bytes(value["bytes"])
    return h.cli_target(["audit", str(path), "--format", fmt], cwd=workdir)


# ------------------------------------------------------------------------------------------- results
VERDICTS = ["pass", "warn", "fail", "inconclusive", "convention", "not_captured"]


@st.composite
def result_inputs(draw) -> dict[str, Any]:
    if draw(st.integers(min_value=0, max_value=5)) == 0:
        return {"raw": draw(raw_json_texts)}
    finding = {
        "check_id": draw(st.sampled_from(["loss.per_token", "adv.sum", SURROGATE]) | json_scalars),
        "stage": draw(st.sampled_from(["loss", "advantages", "run"]) | json_scalars),
        "verdict": draw(st.sampled_from(VERDICTS) | json_scalars),
        "figure": draw(json_scalars),
        "tolerance": draw(json_scalars),
        "where": draw(
            st.fixed_dictionaries({"step": json_scalars, "row": json_scalars, "token": json_scalars})
            | json_values
        ),
        "explanation": draw(_special_text | json_scalars),
        "details": draw(
            st.fixed_dictionaries(
                {
                    "values": st.lists(st.floats() | _special_floats, max_size=6),
                    "token_error_map": st.lists(
                        st.lists(st.floats() | _special_floats, max_size=4), max_size=3
                    ),
                    "histogram": json_values,
                }
            )
            | json_values
        ),
    }
    drop = draw(st.lists(st.sampled_from(sorted(finding)), max_size=2))
    for key in drop:
        finding.pop(key, None)
    document = {
        "format": "grpo-check-result",
        "format_version": draw(st.sampled_from([1, 2, "1", None])),
        "findings": [finding] * draw(st.integers(min_value=0, max_value=2)),
        "metadata": draw(st.fixed_dictionaries({"source": _special_text}) | json_values),
    }
    return {"document": document, "format": draw(st.sampled_from(["text", "md", "html", "json", "junit"]))}


def build_results(value: dict[str, Any], workdir: Path) -> Callable[[], Any]:
    path = workdir / "result.json"
    if "raw" in value:
        path.write_text(value["raw"], encoding="utf-8", errors="surrogatepass")
        fmt = "json"
    else:
        path.write_text(dumps(value["document"]))
        fmt = value["format"]
    return h.cli_target(
        ["report", str(path), "--format", fmt, "-o", str(workdir / f"out.{fmt}")], cwd=workdir
    )


# -------------------------------------------------------------------------------------------- golden
@cache
def _golden_case() -> dict[str, Any]:
    doc = json.loads((h.ROOT / "reference" / "golden" / "advantages.json").read_text())
    return doc["cases"][0]


@st.composite
def golden_inputs(draw) -> dict[str, Any]:
    if draw(st.integers(min_value=0, max_value=5)) == 0:
        return {"raw": draw(raw_json_texts)}
    return {"edits": draw(json_edits), "dtype": draw(st.none() | st.sampled_from(["float64", "uint32", "x"]))}


def build_golden(value: dict[str, Any], workdir: Path) -> Callable[[], Any]:
    from grpo_check.reference.golden import load_cases, replay_all

    path = workdir / "cases.json"
    if "raw" in value:
        path.write_text(value["raw"], encoding="utf-8", errors="surrogatepass")
    else:
        case = json.loads(json.dumps(_golden_case()))
        for where, item in value["edits"]:
            case = _set_path(case, where, item)
        if value["dtype"] and isinstance(case, dict) and isinstance(case.get("inputs"), dict):
            for tensor in case["inputs"].values():
                if isinstance(tensor, dict):
                    tensor["dtype"] = value["dtype"]
        path.write_text(dumps({"format": "grpo-check-golden/1", "cases": [case]}))
    return lambda: replay_all(load_cases(workdir))


# ----------------------------------------------------------------------------------------------- CLI
COMMANDS = ["report", "audit", "check", "compare", "selfcheck", "zoo", "demo"]
OPTIONS = [
    "--format",
    "-o",
    "--output",
    "--out-dir",
    "--tolerance",
    "--strict",
    "--against",
    "--list",
    "--golden-dir",
    "--only",
    "--steps",
    "--trainer",
    "--color",
    "--trl-version",
    "--num-processes",
    "--bogus",
]
OPTION_VALUES = [
    "text",
    "md",
    "html",
    "json",
    "junit",
    "sarif",
    "table",
    "xml",
    "",
    "zz",
    "-1",
    "0",
    "10**30",
    "loss.per_token=1e-4,1e-6",
    "loss.per_token=abc",
    "=",
    "x=1,2,3",
    SURROGATE,
    "1e999",
]
PATHS = [
    "@trace",
    "@result",
    "@config",
    "@fifo",
    "@missing",
    "@dir",
    "@garbage",
    "/dev/zero",
    "/dev/null",
    "@readonly/out",
    "@file/below",
    "@out",
    "/dev/full",
]


@st.composite
def cli_inputs(draw) -> list[str]:
    command = draw(st.sampled_from(COMMANDS))
    args = [command]
    if command in ("zoo", "demo"):
        args.append("--list")  # these commands train when not listing: too slow to fuzz
    for _ in range(draw(st.integers(min_value=0, max_value=4))):
        choice = draw(st.integers(min_value=0, max_value=2))
        if choice == 0:
            args.append(draw(st.sampled_from(PATHS)))
        else:
            option = draw(st.sampled_from(OPTIONS))
            if option == "--trainer" or option == "--steps":
                continue  # training is not fuzzed here (see the kill tests)
            args.append(option)
            if option not in ("--strict", "--list", "--color") and draw(st.booleans()):
                args.append(draw(st.sampled_from(OPTION_VALUES + PATHS) | st.text(max_size=8)))
    return args


def build_cli(value: list[str], workdir: Path) -> Callable[[], Any]:
    def path_for(token: str) -> str:
        if not token.startswith("@"):
            return token
        name, _, below = token[1:].partition("/")
        target = workdir / name
        if not target.exists() and not target.is_symlink():
            if name == "trace":
                shutil.copytree(_template(1), target)
            elif name == "result":
                target.write_text(json.dumps({"format": "grpo-check-result", "findings": []}))
            elif name == "config":
                target = workdir / "config.yaml"
                target.write_text("num_generations: 8\nper_device_train_batch_size: 8\n")
            elif name == "fifo":
                os.mkfifo(target)
            elif name == "dir":
                target.mkdir()
            elif name == "garbage":
                target.write_bytes(b"\x00\xff garbage")
            elif name == "readonly":
                target.mkdir()
                target.chmod(0o500)
            elif name == "file":
                target.write_text("x")
        return str(target / below) if below else str(target)

    args = [path_for(token) for token in value]
    return h.cli_target(args, cwd=workdir)  # default outputs (reports/...) land in the case's folder


TARGETS: dict[str, tuple[Any, Callable[[Any, Path], Callable[[], Any]]]] = {
    "trace": (trace_inputs(), build_trace),
    "manifest": (trace_inputs(kinds=("manifest", "manifest_raw")), build_trace),
    "config": (config_inputs(), build_config),
    "results": (result_inputs(), build_results),
    "golden": (golden_inputs(), build_golden),
    "cli": (cli_inputs(), build_cli),
}
