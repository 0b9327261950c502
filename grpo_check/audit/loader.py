"""Inputs of the audit: a YAML/JSON file (flat, or GRPOConfig fields nested in a recipe), a ``dict``, a
``trl.GRPOConfig`` object, or an instantiated ``GRPOTrainer``.

Files that need unpickling (``training_args.bin``, ``.pt``, ``.pkl`` …) are refused: unpickling runs code.
Nothing here imports TRL; a trainer or config object is read through its attributes.

Example::

    >>> from grpo_check.audit.loader import load_source
    >>> loaded = load_source({"trainer": {"num_generations": 4, "beta": 0.0}, "model": {"name": "x"}})
    >>> loaded.key_path, sorted(loaded.values)
    ('trainer', ['beta', 'num_generations'])
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from grpo_check import limits
from grpo_check.audit import versions as _versions
from grpo_check.findings import InputError

PICKLE_SUFFIXES: frozenset[str] = frozenset(
    {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz", ".torch"}
)

SAFE_EXPORT_HINT = (
    "Export the configuration as JSON instead, from the process that has the trainer:\n"
    "    import json; json.dump(trainer.args.to_dict(), open('grpo_config.json', 'w'), indent=2)\n"
    "(or `GRPOConfig(...).to_json_string()`), then run `grpo-check audit grpo_config.json`."
)

# Trainer attributes TRL copies from args in __init__ and reads afterwards: (field, attribute).
TRAINER_ATTRIBUTES: tuple[tuple[str, str], ...] = (
    ("num_generations", "num_generations"),
    ("loss_type", "loss_type"),
    ("beta", "beta"),
    ("epsilon", "epsilon_low"),
    ("epsilon_high", "epsilon_high"),
    ("scale_rewards", "scale_rewards"),
    ("importance_sampling_level", "importance_sampling_level"),
    ("temperature", "temperature"),
    ("top_p", "top_p"),
    ("top_k", "top_k"),
    ("min_p", "min_p"),
    ("repetition_penalty", "repetition_penalty"),
    ("num_iterations", "num_iterations"),
    ("mask_truncated_completions", "mask_truncated_completions"),
    ("top_entropy_quantile", "top_entropy_quantile"),
    ("max_completion_length", "max_completion_length"),
    ("use_vllm", "use_vllm"),
    ("vllm_importance_sampling_correction", "vllm_importance_sampling_correction"),
    ("vllm_importance_sampling_mode", "vllm_importance_sampling_mode"),
    ("off_policy_mask_threshold", "off_policy_mask_threshold"),
    ("entropy_coef", "entropy_coef"),
)


@dataclasses.dataclass
class LoadedConfig:
    """A configuration ready to audit.

    Attributes:
        values: the field values found (a file: exactly what it sets; an object: every field, effective).
        origin: the file path, or a description of the object.
        kind: ``"file"``, ``"mapping"``, ``"config"`` (GRPOConfig object) or ``"trainer"``.
        key_path: where in a recipe the GRPOConfig fields were found (``""`` = top level).
        lines: 1-based line of each field in the file, where the format tells it.
        explicit: fields the user set.
        effective: ``values`` already went through TRL's ``__post_init__`` (objects).
        facts: extras a rule may use (``num_processes``, ``num_reward_funcs``, ``dropout_max`` …).
        trl_version: the TRL version an object was built with (objects only).
        problems: problems confined to one key or line of a file (a key written twice, a line that is not
            YAML), each ``{"kind", "key", "line", "message", ...}``; the audit reports them as findings on
            that key instead of refusing the file.
    """

    values: dict[str, Any]
    origin: str
    kind: Literal["file", "mapping", "config", "trainer"]
    key_path: str = ""
    lines: dict[str, int] = dataclasses.field(default_factory=dict)
    explicit: frozenset[str] = frozenset()
    effective: bool = False
    facts: dict[str, Any] = dataclasses.field(default_factory=dict)
    trl_version: str | None = None
    problems: list[dict[str, Any]] = dataclasses.field(default_factory=list)


def load_source(source: Any) -> LoadedConfig:
    """Load any supported input (path, mapping, GRPOConfig, GRPOTrainer). Raises :class:`InputError`."""
    if isinstance(source, (str, os.PathLike)):
        return load_file(source)
    if isinstance(source, Mapping):
        return _from_mapping(dict(source), origin="<mapping>", kind="mapping", lines={})
    if hasattr(source, "args") and hasattr(source, "model") and _looks_like_config(source.args):
        return load_trainer(source)
    if _looks_like_config(source):
        return load_config_object(source)
    raise InputError(
        f"cannot audit a {type(source).__name__}: pass a YAML/JSON path, a dict, a trl.GRPOConfig or a GRPOTrainer"
    )


def _looks_like_config(obj: Any) -> bool:
    return dataclasses.is_dataclass(obj) and not isinstance(obj, type) and hasattr(obj, "num_generations")


# --------------------------------------------------------------------------- files


def load_file(path: str | os.PathLike[str]) -> LoadedConfig:
    """Read a YAML or JSON config file; find the GRPOConfig mapping in it; record the line of each field."""
    path = Path(path)
    name = str(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise InputError(
            f"refusing to read {path.suffix} files: they are pickles, and unpickling runs arbitrary code.\n"
            + SAFE_EXPORT_HINT,
            source=name,
        )
    if path.exists() and not path.is_dir() and not path.is_file():  # a pipe would block forever
        raise InputError("not a regular file (a device or a pipe)", source=name)
    # bounded, and never blocking; FileNotFoundError / IsADirectoryError -> exit 2 in the CLI
    raw = limits.read_bytes(path, cap=limits.MAX_CONFIG_BYTES, source=name)
    if raw[:1] == b"\x80" or raw[:2] == b"PK":
        raise InputError(
            "this looks like a pickle / torch.save archive, not YAML or JSON; refusing to unpickle it.\n"
            + SAFE_EXPORT_HINT,
            source=name,
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(
            f"not UTF-8 text (byte {exc.start}): expected a YAML or JSON file", source=name
        ) from None
    if not text.strip():
        raise InputError("the file is empty", source=name)
    suffix = path.suffix.lower()
    problems: list[dict[str, Any]] = []
    if suffix == ".json" or (suffix not in (".yaml", ".yml") and text.lstrip().startswith("{")):
        data, key_lines = _parse_json(text, name, problems)
    else:
        data, key_lines = _parse_yaml(text, name, problems)
    if not isinstance(data, Mapping):
        raise InputError(
            f"expected a mapping of GRPOConfig fields at the top level, got a {type(data).__name__}",
            source=name,
        )
    loaded = _from_mapping(dict(data), origin=name, kind="file", lines=key_lines)
    loaded.problems = problems
    return loaded


def _parse_json(
    text: str, name: str, problems: list[dict[str, Any]]
) -> tuple[Any, dict[tuple[str, ...], int]]:
    """Parse JSON; a key written twice in one object is recorded in ``problems`` (the last value is kept,
    as ``json.load`` and TRL keep it)."""
    duplicates: list[tuple[str, Any, Any]] = []

    def pairs_to_dict(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for key, value in pairs:
            if key in seen:
                duplicates.append((key, seen[key], value))
            seen[key] = value
        return dict(pairs)

    try:
        data = limits.loads_json(
            text, source=name, object_pairs_hook=pairs_to_dict
        )  # depth, integers bounded
    except json.JSONDecodeError as exc:
        raise InputError(
            f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}", source=name
        ) from None
    for key, first, last in duplicates:
        pattern = re.compile(r'"' + re.escape(json.dumps(key)[1:-1]) + r'"\s*:')
        found = [text.count("\n", 0, m.start()) + 1 for m in pattern.finditer(text)]
        problems.append(_duplicate_problem(key, found, first, last))
    return data, _json_key_lines(text, data)


def _duplicate_problem(key: str, lines: list[int], first: Any, last: Any) -> dict[str, Any]:
    distinct = list(dict.fromkeys(lines))
    where = f" (lines {', '.join(map(str, distinct))})" if len(distinct) >= 2 else ""
    same = first == last
    used = (
        f"both say {last!r}"
        if same
        else f"{first!r} then {last!r}; YAML/JSON parsers (and TRL) keep {last!r}"
    )
    return {
        "kind": "duplicate_key",
        "key": key,
        "line": distinct[-1] if distinct else None,
        "lines": distinct,
        "same_value": same,
        "message": f"{key} is written more than once{where}: {used}",
    }


def _json_key_lines(text: str, data: Any) -> dict[tuple[str, ...], int]:
    """Line of each key (first occurrence after its parent key's line): good enough for config files."""
    lines: dict[tuple[str, ...], int] = {}
    line_starts = [0] + [m.end() for m in re.finditer("\n", text)]

    def line_of(offset: int) -> int:
        lo, hi = 0, len(line_starts) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if line_starts[mid] <= offset:
                lo = mid
            else:
                hi = mid - 1
        return lo + 1

    def walk(node: Any, prefix: tuple[str, ...], start: int) -> None:
        if not isinstance(node, Mapping):
            return
        for key, value in node.items():
            match = re.compile(r'"' + re.escape(json.dumps(str(key))[1:-1]) + r'"\s*:').search(text, start)
            if match is None:
                continue
            lines[(*prefix, str(key))] = line_of(match.start())
            walk(value, (*prefix, str(key)), match.end())

    walk(data, (), 0)
    return lines


# A file whose syntax errors are all confined to a few lines is audited without those lines; more than this
# many broken lines means the file is not YAML at all, and it is refused.
MAX_SKIPPED_LINES = 5


def _parse_yaml(
    text: str, name: str, problems: list[dict[str, Any]]
) -> tuple[Any, dict[tuple[str, ...], int]]:
    """Parse YAML. A line with a syntax error is blanked and parsing retried (up to ``MAX_SKIPPED_LINES``),
    each skipped line recorded in ``problems``; a key written twice in one mapping is recorded there too
    (the last value is kept, as ``yaml.safe_load`` keeps it)."""
    import yaml

    lines_of_text = text.split("\n")
    skipped: list[dict[str, Any]] = []
    while True:
        try:
            # depth, recursive aliases, alias bombs and long integers first (a grpo_check.limits.LimitError)
            limits.check_yaml("\n".join(lines_of_text), source=name)
            node = yaml.compose("\n".join(lines_of_text), Loader=yaml.SafeLoader)
            data = yaml.safe_load("\n".join(lines_of_text))
            break
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            line = _skippable_line(lines_of_text, mark)
            if line is None or len(skipped) >= MAX_SKIPPED_LINES:
                raise InputError(f"invalid YAML{where}: {problem}", source=name) from None
            key = lines_of_text[line].split(":", 1)[0].strip().strip("'\"")
            skipped.append(
                {
                    "kind": "invalid_line",
                    "key": key,
                    "line": line + 1,
                    "message": f"line {line + 1} is not valid YAML ({problem}{where}); audited without it",
                }
            )
            lines_of_text[line] = "#" + " " * max(len(lines_of_text[line]) - 1, 0)
    problems.extend(skipped)
    lines: dict[tuple[str, ...], int] = {}

    def walk(current: Any, prefix: tuple[str, ...]) -> None:
        if not isinstance(current, yaml.MappingNode):
            return
        first: dict[str, Any] = {}
        for key_node, value_node in current.value:
            key = str(key_node.value)
            line = key_node.start_mark.line + 1
            if key in first and key != "<<":  # "<<" is YAML's merge key
                first_line, first_node = first[key]
                problems.append(
                    _duplicate_problem(
                        key, [first_line, line], _node_text(first_node), _node_text(value_node)
                    )
                )
            first[key] = (line, value_node)
            lines[(*prefix, key)] = line
            walk(value_node, (*prefix, key))

    walk(node, ())
    return data, lines


def _skippable_line(lines: list[str], mark: Any) -> int | None:
    """The 0-based line a YAML error points at, when blanking that one line can help (it holds a key)."""
    if mark is None or not 0 <= mark.line < len(lines):
        return None
    line = lines[mark.line]
    if ":" not in line or line.lstrip().startswith("#"):
        return None
    return int(mark.line)


def _node_text(node: Any) -> Any:
    """A YAML value node as comparable data (a scalar's text, else the source text it spans)."""
    value = getattr(node, "value", None)
    if isinstance(value, str):
        return value
    buffer = getattr(node.start_mark, "buffer", None)
    if buffer is not None:
        return buffer[node.start_mark.index : node.end_mark.index].strip()
    return repr(node)


# --------------------------------------------------------------------------- recipes


_RECIPE_HINT_KEYS = ("training", "trainer", "grpo", "args", "training_args", "config", "grpo_config")


def find_config_mapping(data: Mapping[str, Any]) -> tuple[tuple[str, ...], Mapping[str, Any]]:
    """The mapping in a (possibly nested) recipe that holds the most GRPOConfig-like keys, and its path.

    Ties go to the shallower mapping, then to conventional names (``training``, ``trainer``, ``grpo``, ``args``).

    >>> find_config_mapping({"model": {"name": "m"}, "grpo": {"beta": 0.0, "num_generations": 8}})[0]
    ('grpo',)
    """
    grpo_keys = set(_versions._HISTORY)
    every = grpo_keys | _versions.TRAINING_ARGUMENTS_FIELDS
    best: tuple[tuple[int, int, int, int], tuple[str, ...], Mapping[str, Any]] | None = None
    stack: list[tuple[tuple[str, ...], Any]] = [((), data)]
    while stack:
        path, node = stack.pop()
        if not isinstance(node, Mapping):
            continue
        keys = {str(k) for k in node}
        score = (
            len(keys & grpo_keys),
            len(keys & every),
            -len(path),
            int(bool(path) and path[-1].lower() in _RECIPE_HINT_KEYS),
        )
        if best is None or score > best[0]:
            best = (score, path, node)
        for key, value in node.items():
            if isinstance(value, Mapping):
                stack.append(((*path, str(key)), value))
    assert best is not None
    return best[1], best[2]


def _from_mapping(
    data: dict[str, Any], *, origin: str, kind: Literal["file", "mapping"], lines: dict[tuple[str, ...], int]
) -> LoadedConfig:
    path, mapping = find_config_mapping(data)
    every = (
        set(_versions._HISTORY)
        | _versions.TRAINING_ARGUMENTS_FIELDS
        | set(_versions.OTHER_TRAINER_KEYS)
        | set(_versions.EXTENSION_KEYS)
        | _versions.SCRIPT_KEYS
    )
    keys = [str(k) for k in mapping]
    if keys and not (set(keys) & every) and not _any_close(keys, every):
        raise InputError(
            "found no GRPOConfig fields (num_generations, beta, learning_rate, …) anywhere in the file; "
            f"top-level keys: {', '.join(keys[:8])}",
            source=origin,
        )
    values = {str(k): v for k, v in mapping.items()}
    facts: dict[str, Any] = {}
    reward_funcs = values.get("reward_funcs", data.get("reward_funcs"))
    if isinstance(reward_funcs, (list, tuple)):
        facts["num_reward_funcs"] = len(reward_funcs)
    elif isinstance(reward_funcs, str):
        facts["num_reward_funcs"] = len(reward_funcs.split())
    launcher = launcher_processes(values, data)
    if launcher is not None:
        facts["num_processes"], facts["num_processes_source"] = launcher
    field_lines = {key[-1]: line for key, line in lines.items() if key[:-1] == path}
    if path and path in lines:
        facts["section_line"] = lines[path]
    for key in _versions.SCRIPT_KEYS:
        values.pop(key, None)
    return LoadedConfig(
        values=values,
        origin=origin,
        kind=kind,
        key_path=".".join(path),
        lines=field_lines,
        explicit=frozenset(values),
        facts=facts,
    )


# Launcher settings a recipe may carry (accelerate, torchrun, other launch scripts). The product of a
# per-node count and a node count is the number of processes; a total count is taken as it is.
LAUNCHER_TOTAL_KEYS: tuple[str, ...] = ("num_processes", "world_size", "n_gpus", "num_gpus", "gpus")
LAUNCHER_PER_NODE_KEYS: tuple[str, ...] = ("nproc_per_node", "n_gpus_per_node", "gpus_per_node")
LAUNCHER_NODE_KEYS: tuple[str, ...] = ("num_machines", "nnodes", "num_nodes")
LAUNCHER_KEYS: frozenset[str] = frozenset(
    (
        *LAUNCHER_TOTAL_KEYS,
        *LAUNCHER_PER_NODE_KEYS,
        *LAUNCHER_NODE_KEYS,
        *("machine_rank", "main_process_port", "main_process_ip", "distributed_type", "mixed_precision"),
        *("deepspeed_config", "fsdp_config", "zero_stage", "num_cpu_threads_per_process", "rdzv_backend"),
        *("same_network", "main_training_function", "downcast_bf16", "use_cpu", "tpu_env", "tpu_use_cluster"),
    )
)


def launcher_processes(*mappings: Mapping[str, Any]) -> tuple[int, str] | None:
    """(number of processes, the key(s) it was read from) from launcher settings found in ``mappings``
    (the config section first, then the whole file; nested ``accelerate:``/``launcher:`` sections too)."""
    scopes: list[Mapping[str, Any]] = []
    for mapping in mappings:
        scopes.append(mapping)
        for name in ("accelerate", "launcher", "distributed", "trainer", "resources"):
            nested = mapping.get(name)
            if isinstance(nested, Mapping):
                scopes.append(nested)

    def count(scope: Mapping[str, Any], keys: tuple[str, ...]) -> tuple[int, str] | None:
        for key in keys:
            value = scope.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value, key
        return None

    for scope in scopes:
        total = count(scope, LAUNCHER_TOTAL_KEYS)
        if total is not None:
            return total
        per_node = count(scope, LAUNCHER_PER_NODE_KEYS)
        if per_node is not None:
            nodes = count(scope, LAUNCHER_NODE_KEYS) or (1, "")
            source = f"{per_node[1]} × {nodes[1]}" if nodes[1] else per_node[1]
            return per_node[0] * nodes[0], source
    return None


def _any_close(keys: list[str], fields: set[str]) -> bool:
    """Whether any key looks like a misspelt field (then the file is a config with typos, not something else)."""
    import difflib

    return any(difflib.get_close_matches(key, sorted(fields), n=1, cutoff=0.75) for key in keys)


# --------------------------------------------------------------------------- objects


def _dataclass_values(config: Any) -> tuple[dict[str, Any], frozenset[str]]:
    values: dict[str, Any] = {}
    explicit: set[str] = set()
    for field in dataclasses.fields(config):
        if not field.init:
            continue
        value = getattr(config, field.name, None)
        if hasattr(value, "value") and type(value).__module__.startswith("transformers"):
            value = value.value  # IntervalStrategy etc.
        values[field.name] = value
        if field.default is not dataclasses.MISSING:
            default = field.default
        elif field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        else:
            continue
        if value != default and field.name not in ("generation_batch_size", "steps_per_generation"):
            explicit.add(field.name)
    if values.get("scale_rewards") in (True, False):
        values["scale_rewards"] = "group" if values["scale_rewards"] else "none"
    explicit.discard("bf16")  # __post_init__ resolves None -> True
    explicit.discard("pad_to_multiple_of")
    return values, frozenset(explicit)


def _installed_trl_version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("trl")
    except metadata.PackageNotFoundError:
        return None


def load_config_object(config: Any) -> LoadedConfig:
    """A ``trl.GRPOConfig`` (after its ``__post_init__``): every field is an effective value."""
    values, explicit = _dataclass_values(config)
    facts: dict[str, Any] = {"effective": True}
    try:
        facts["num_processes"] = int(config.world_size)
    except Exception:  # world_size needs accelerate state; a config built elsewhere may not have it
        facts["num_processes"] = 1
    return LoadedConfig(
        values=values,
        origin=f"{type(config).__name__} object",
        kind="config",
        explicit=explicit,
        effective=True,
        facts=facts,
        trl_version=_installed_trl_version(),
    )


def load_trainer(trainer: Any) -> LoadedConfig:
    """An instantiated ``GRPOTrainer``: ``trainer.args`` plus the attributes the trainer really reads."""
    loaded = load_config_object(trainer.args)
    loaded.origin = f"{type(trainer).__name__} object"
    loaded.kind = "trainer"
    overrides = []
    for field, attr in TRAINER_ATTRIBUTES:
        if not hasattr(trainer, attr):
            continue
        now = getattr(trainer, attr)
        if field == "scale_rewards" and now in (True, False):
            now = "group" if now else "none"
        was = loaded.values.get(field)
        if field == "epsilon_high" and was is None:
            was = loaded.values.get("epsilon")
        if now != was:
            overrides.append((field, attr, was, now))
            loaded.values[field] = now
            loaded.explicit = loaded.explicit | {field}
    facts = loaded.facts
    facts["overrides"] = overrides
    accelerator = getattr(trainer, "accelerator", None)
    if accelerator is not None:
        facts["num_processes"] = int(getattr(accelerator, "num_processes", 1))
    reward_funcs = getattr(trainer, "reward_funcs", None)
    if reward_funcs is not None:
        facts["num_reward_funcs"] = len(reward_funcs)
    weights = getattr(trainer, "reward_weights", None)
    if weights is not None and hasattr(weights, "tolist"):
        loaded.values["reward_weights"] = [float(w) for w in weights.tolist()]
    model = getattr(trainer, "model", None)
    if model is not None:
        facts["dropout_max"] = _max_dropout(model)
        facts["functional_dropout"] = _functional_dropout(model)
        facts["model_training"] = bool(getattr(model, "training", False))
    ref_model = getattr(trainer, "ref_model", None)
    facts["ref_is_policy"] = ref_model is not None and ref_model is model
    return loaded


def _max_dropout(model: Any) -> float:
    """Largest ``p`` of the model's dropout modules (0.0 if none): what ``model.train()`` will apply."""
    import torch

    probabilities = [
        float(module.p)
        for module in model.modules()
        if isinstance(module, torch.nn.modules.dropout._DropoutNd)
    ]
    return max(probabilities, default=0.0)


_FUNCTIONAL_DROPOUT_ATTRIBUTES: tuple[str, ...] = (
    "attention_dropout",
    "attn_dropout",
    "dropout",
    "hidden_dropout",
    "activation_dropout",
    "dropout_rate",
)


def _functional_dropout(model: Any) -> dict[str, float]:
    """Dropout probabilities stored as plain floats on modules (e.g. ``LlamaAttention.attention_dropout``,
    passed to the attention kernel while training). TRL's ``disable_dropout_in_model`` only zeroes
    ``torch.nn.Dropout`` modules, so these survive ``disable_dropout=True``. Returns ``{"module.attr": p}``
    for the first few modules with ``p > 0``."""
    found: dict[str, float] = {}
    for name, module in model.named_modules():
        for attribute in _FUNCTIONAL_DROPOUT_ATTRIBUTES:
            value = module.__dict__.get(attribute)
            if isinstance(value, float) and not isinstance(value, bool) and value > 0.0:
                found[f"{name or type(module).__name__}.{attribute}"] = value
        if len(found) >= 4:
            break
    return found
