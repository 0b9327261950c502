"""Golden vectors: load and replay the JSON cases of ``reference/golden/`` against the installed reference.

Format (``grpo-check-golden/1``): a file holds ``{"format": ..., "cases": [case, ...]}``; a case is
``{"id", "function", "description", "hand_worked", "equations", "spec", "meta", "kwargs", "inputs",
"expected", "rtol", "atol"}``. Tensors are ``{"dtype": "float64" | "int64" | "bool", "data": nested lists}``
with non-finite floats written as the strings ``"nan"``, ``"inf"``, ``"-inf"``. ``spec`` holds only the
``GRPOSpec`` fields that differ from the defaults. :func:`load_cases` refuses a case it could not replay as
written (unknown function, dtype, input or keyword name, missing input, ragged data, bad spec, duplicate id)
with an ``InputError`` naming the case and the file: a broken vector file is an input error, not a failure of
the reference. A copy of the files ships inside the package
(``grpo_check/reference/golden_vectors/``) so ``grpo-check selfcheck`` works when installed.

Example::

    >>> from grpo_check.reference.golden import load_cases, replay_case
    >>> cases = load_cases()
    >>> len(cases) >= 40
    True
    >>> replay_case(cases[0]).passed
    True
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from grpo_check._kinds import is_nonnegative_number, is_whole_number

FORMAT = "grpo-check-golden/1"
PACKAGE_DIR = Path(__file__).parent / "golden_vectors"


# --------------------------------------------------------------------------------------------- encoding


def _encode_number(value: float | int | bool) -> Any:
    if isinstance(value, (bool, int)):
        return value
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return float(value)


def _encode_nested(data: Any) -> Any:
    if isinstance(data, list):
        return [_encode_nested(x) for x in data]
    return _encode_number(data)


def encode_tensor(value: Any, dtype: str | None = None) -> dict[str, Any]:
    """A tensor / nested list / number → the JSON form. ``dtype`` defaults from the torch dtype (or float64)."""
    if hasattr(value, "tolist"):
        if dtype is None:
            name = str(value.dtype)
            dtype = "bool" if "bool" in name else ("int64" if "int" in name else "float64")
        value = value.tolist()
    return {"dtype": dtype or "float64", "data": _encode_nested(value)}


def _decode_nested(data: Any) -> Any:
    if isinstance(data, list):
        return [_decode_nested(x) for x in data]
    if isinstance(data, str):
        return float(data)
    return data


def decode_tensor(obj: dict[str, Any]):  # -> torch.Tensor
    import torch

    dtypes = {"float64": torch.float64, "int64": torch.int64, "bool": torch.bool}
    return torch.tensor(_decode_nested(obj["data"]), dtype=dtypes[obj["dtype"]])


# ----------------------------------------------------------------------------------------------- loading


def golden_dirs() -> list[Path]:
    """The packaged copy, then the repository's ``reference/golden`` (when running from a checkout)."""
    repo = Path(__file__).resolve().parents[2] / "reference" / "golden"
    return [d for d in (PACKAGE_DIR, repo) if d.is_dir()]


def load_cases(directory: str | Path | None = None) -> list[dict[str, Any]]:
    """All cases from the ``*.json`` files of ``directory`` (default: the first of :func:`golden_dirs`)."""
    from grpo_check import limits
    from grpo_check.findings import InputError

    if directory is None:
        dirs = golden_dirs()
        if not dirs:
            raise InputError("no golden vectors found (neither packaged nor in reference/golden)")
        directory = dirs[0]
    directory = Path(directory)
    files = sorted(directory.glob("*.json"))
    if not files:
        raise InputError(f"no golden vector files (*.json) in {directory}")
    cases: list[dict[str, Any]] = []
    seen: dict[str, str] = {}  # case id -> file that defined it
    for path in files:
        try:
            doc = limits.loads_json(limits.read_text(path, cap=limits.MAX_JSON_BYTES), source=str(path))
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}: not valid JSON ({exc})") from None
        except UnicodeDecodeError as exc:
            raise InputError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            found = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
            raise InputError(f"{path}: format {found!r}, expected {FORMAT!r}")
        if not isinstance(doc.get("cases"), list):
            raise InputError(f"{path}: field 'cases' must be a list of cases")
        for index, case in enumerate(doc["cases"]):
            if not isinstance(case, dict) or not all(
                isinstance(case.get(key), str) for key in ("id", "function")
            ):
                raise InputError(f"{path}: field 'cases[{index}]' needs string 'id' and 'function' keys")
            _check_case(case, path, seen)
            case["_file"] = path.name
            cases.append(case)
    return cases


# -------------------------------------------------------------------------------------------- validation


@dataclasses.dataclass(frozen=True)
class _Signature:
    """What a golden ``function`` reads: input tensors (required / optional) and keyword arguments."""

    required: frozenset[str] = frozenset()
    optional: frozenset[str] = frozenset()
    kwargs: frozenset[str] = frozenset()
    required_kwargs: frozenset[str] = frozenset()


_STEP_INPUTS = frozenset(
    {
        "completion_mask", "group_index", "rewards_per_func", "rewards", "advantages", "logps", "old_logps",
        "ref_logps", "sampler_logps", "entropies", "tool_mask", "truncated", "sampler_is_ratio",
        "reward_weights",
    }
)  # fmt: skip

# One entry per function :func:`run_case` dispatches on; anything else in a case is a malformed vector.
FUNCTIONS: dict[str, _Signature] = {
    "compute_advantages": _Signature(
        required=frozenset({"rewards_per_func"}), optional=frozenset({"group_index", "reward_weights"})
    ),
    "logps_and_entropy_from_logits": _Signature(
        required=frozenset({"logits", "completion_ids"}), kwargs=frozenset({"temperature", "chunk_size"})
    ),
    "logps_from_full_logits": _Signature(
        required=frozenset({"full_logits", "completion_ids"}),
        kwargs=frozenset({"prompt_length", "temperature", "chunk_size"}),
        required_kwargs=frozenset({"prompt_length"}),
    ),
    "sampling_kept_mass": _Signature(
        required=frozenset({"logits", "completion_ids"}),
        kwargs=frozenset({"temperature", "top_p", "top_k", "min_p", "order", "chunk_size"}),
    ),
    "per_token_kl": _Signature(
        required=frozenset({"logps", "ref_logps"}),
        optional=frozenset({"ratio"}),
        kwargs=frozenset({"estimator"}),
    ),
    "sampler_is_ratio": _Signature(
        required=frozenset({"old_logps", "sampler_logps"}),
        optional=frozenset({"loss_mask"}),
        kwargs=frozenset({"mode", "clip_min", "clip_max"}),
    ),
    "reference_step": _Signature(optional=_STEP_INPUTS, kwargs=frozenset({"isolate", "stages"})),
}

_DTYPES: tuple[str, ...] = ("float64", "int64", "bool")
_NON_FINITE: tuple[str, ...] = ("nan", "inf", "-inf")


class _Malformed(ValueError):
    """A golden case that cannot be replayed as written (the message says what is wrong)."""


def _names(names: Iterable[str]) -> str:
    return ", ".join(sorted(names))


def _check_case(case: dict[str, Any], path: Path, seen: dict[str, str]) -> None:
    """Raise ``InputError("malformed golden case <id> in <file>: <what>")`` unless ``case`` can be replayed."""
    from grpo_check.findings import InputError

    case_id = case["id"]
    try:
        if case_id in seen:
            where = "earlier in the same file" if seen[case_id] == str(path) else f"also in {seen[case_id]}"
            raise _Malformed(f"duplicate case id ({where})")
        _check_structure(case)
    except _Malformed as exc:
        raise InputError(f"malformed golden case {case_id} in {path}: {exc}") from None
    seen[case_id] = str(path)


def _check_structure(case: dict[str, Any]) -> None:
    signature = FUNCTIONS.get(case["function"])
    if signature is None:
        raise _Malformed(f"unknown function {case['function']!r} (known: {_names(FUNCTIONS)})")
    inputs = _mapping(case, "inputs", required=True)
    _check_names("inputs", inputs, signature.required, signature.required | signature.optional)
    kwargs = _mapping(case, "kwargs")
    _check_names("kwargs", kwargs, signature.required_kwargs, signature.kwargs)
    _mapping(case, "meta")
    expected = _mapping(case, "expected", required=True)
    if not expected:
        raise _Malformed("'expected' lists no outputs")
    for section, tensors in (("inputs", inputs), ("expected", expected)):
        for name, obj in tensors.items():
            _check_tensor(f"{section}.{name}", obj)
    for tolerance in ("rtol", "atol"):
        value = case.get(tolerance, 0.0)
        if not is_nonnegative_number(value):
            raise _Malformed(f"'{tolerance}' must be a number ≥ 0, got {value!r}")
    _check_spec(case)


def _mapping(case: dict[str, Any], key: str, *, required: bool = False) -> dict[str, Any]:
    value = case.get(key)
    if value is None and not required:
        return {}
    if value is None:
        raise _Malformed(f"'{key}' is missing")
    if not isinstance(value, dict):
        raise _Malformed(f"'{key}' must be a mapping, got {type(value).__name__} {value!r:.40}")
    return value


def _check_names(
    section: str, given: dict[str, Any], required: frozenset[str], allowed: frozenset[str]
) -> None:
    missing = required - set(given)
    if missing:
        raise _Malformed(f"'{section}' lacks {_names(missing)}")
    unknown = set(given) - allowed
    if unknown:
        known = _names(allowed) if allowed else "none"
        raise _Malformed(f"unknown '{section}' key(s) {_names(unknown)} (known: {known})")


def _check_tensor(where: str, obj: Any) -> None:
    if not isinstance(obj, dict) or set(obj) != {"dtype", "data"}:
        raise _Malformed(f'{where} must be a tensor {{"dtype": ..., "data": ...}}, got {obj!r:.60}')
    if obj["dtype"] not in _DTYPES:
        raise _Malformed(f"{where}: unknown dtype {obj['dtype']!r} (known: {', '.join(_DTYPES)})")
    _shape(where, obj["data"], obj["dtype"])


def _shape(where: str, data: Any, dtype: str) -> tuple[int, ...]:
    """The shape of the nested list ``data``; raises on a ragged list or an element ``dtype`` cannot hold."""
    if isinstance(data, list):
        shapes = {_shape(where, item, dtype) for item in data}
        if len(shapes) > 1:
            raise _Malformed(f"{where}: ragged data (rows of shapes {sorted(shapes)})")
        return (len(data), *(shapes.pop() if shapes else ()))
    if not _is_element(data, dtype):
        raise _Malformed(f"{where}: {data!r:.40} is not a {dtype} value")
    return ()


def _is_element(value: Any, dtype: str) -> bool:
    if dtype == "bool":
        return isinstance(value, bool)
    if dtype == "int64":
        return is_whole_number(value)
    return value in _NON_FINITE if isinstance(value, str) else isinstance(value, (int, float))


def _check_spec(case: dict[str, Any]) -> None:
    from grpo_check.findings import InputError

    if not isinstance(case.get("spec") or {}, dict):
        raise _Malformed(f"'spec' must be a mapping of GRPOSpec fields, got {type(case['spec']).__name__}")
    try:
        _spec(case)
    except (InputError, TypeError, ValueError) as exc:
        raise _Malformed(f"bad 'spec': {exc}") from None


# ------------------------------------------------------------------------------------------------ replay


@dataclasses.dataclass
class CaseResult:
    """Outcome of one replayed case: ``mismatches`` lists ``"name: detail"`` strings (empty = pass)."""

    case_id: str
    function: str
    passed: bool
    mismatches: list[str]
    hand_worked: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _spec(case: dict[str, Any]):
    from grpo_check.config import GRPOSpec

    return GRPOSpec.from_dict(case.get("spec") or {}, strict=True)


def run_case(case: dict[str, Any]) -> dict[str, Any]:
    """Run the case's ``function`` on its inputs; returns ``{output name: tensor}``."""
    import torch

    from grpo_check import reference as ref

    inputs = {name: decode_tensor(obj) for name, obj in case.get("inputs", {}).items()}
    kwargs = dict(case.get("kwargs") or {})
    function = case["function"]
    spec = _spec(case)
    if function == "compute_advantages":
        out = ref.compute_advantages(
            inputs["rewards_per_func"],
            inputs.get("group_index"),
            spec,
            reward_weights=inputs.get("reward_weights"),
        )
        return {
            "rewards": out.rewards,
            "advantages": out.advantages,
            "group_mean": out.group_mean,
            "group_std": out.group_std,
            "scorable": out.scorable,
        }
    if function == "logps_and_entropy_from_logits":
        logps, entropy = ref.logps_and_entropy_from_logits(
            inputs["logits"], inputs["completion_ids"], **kwargs
        )
        return {"logps": logps, "entropies": entropy}
    if function == "logps_from_full_logits":
        prompt_length = kwargs.pop("prompt_length")
        logits = ref.completion_logits(inputs["full_logits"], prompt_length)
        return {"logps": ref.logps_from_logits(logits, inputs["completion_ids"], **kwargs)}
    if function == "sampling_kept_mass":
        mass, support = ref.sampling_kept_mass(
            inputs["logits"], inputs["completion_ids"], return_in_support=True, **kwargs
        )
        return {"kept_mass": mass, "in_support": support}
    if function == "per_token_kl":
        return {
            "kl": ref.per_token_kl(inputs["logps"], inputs["ref_logps"], ratio=inputs.get("ratio"), **kwargs)
        }
    if function == "sampler_is_ratio":
        return {
            "sampler_is_ratio": ref.sampler_is_ratio(
                inputs["old_logps"], inputs["sampler_logps"], inputs.get("loss_mask"), **kwargs
            )
        }
    if function == "reference_step":
        step = ref.reference_step(inputs, spec, case.get("meta") or {}, **kwargs)
        return dict(step.tensors)
    raise ValueError(f"unknown golden function {function!r}")  # pragma: no cover - generator bug
    del torch


def replay_case(case: dict[str, Any]) -> CaseResult:
    """Run one case and compare every expected output (NaN == NaN; bools exactly)."""
    import torch

    mismatches: list[str] = []
    try:
        outputs = run_case(case)
    except Exception as exc:  # a crash is a failure of this case, reported, not raised
        return CaseResult(case["id"], case["function"], False, [f"raised {type(exc).__name__}: {exc}"])
    rtol, atol = float(case.get("rtol", 1e-10)), float(case.get("atol", 1e-12))
    for name, obj in case["expected"].items():
        want = decode_tensor(obj)
        got = outputs.get(name)
        if got is None:
            mismatches.append(f"{name}: not produced")
            continue
        got = got.detach()
        if got.shape != want.shape:
            if got.numel() == want.numel():
                got = got.reshape(want.shape)
            else:
                mismatches.append(f"{name}: shape {tuple(got.shape)}, expected {tuple(want.shape)}")
                continue
        if want.dtype == torch.bool:
            if not torch.equal(got.to(torch.bool), want):
                mismatches.append(f"{name}: {got.tolist()} != expected {want.tolist()}")
            continue
        try:
            torch.testing.assert_close(got.double(), want, rtol=rtol, atol=atol, equal_nan=True)
        except AssertionError as exc:
            detail = " ".join(line.strip() for line in str(exc).splitlines()[1:] if line.strip())
            mismatches.append(f"{name}: {detail}")
    return CaseResult(case["id"], case["function"], not mismatches, mismatches, bool(case.get("hand_worked")))


def replay_all(cases: Iterable[dict[str, Any]] | None = None) -> list[CaseResult]:
    """Replay every case (default: the packaged golden vectors)."""
    return [replay_case(case) for case in (load_cases() if cases is None else cases)]
