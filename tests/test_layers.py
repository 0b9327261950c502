"""The package's layers, read from its imports (``ast``, no import is executed).

Each package of ``grpo_check`` sits in one layer and imports only from its own layer's packages' lower
layers (every import counts, also one inside a function). On top of the order:

* the reference depends on nothing above the base;
* capture (``grpo_check.trl``) never imports the reference's maths;
* ``diagnose`` does not import ``compare``, and ``compare`` does not import ``diagnose``'s private modules;
* the zoo's catalog does not import the modules that register cases into it (``zoo.cases`` loads them);
* no private name (``_x``, or a name from a ``_x`` module) crosses from one package into another.

``docs/architecture.md`` shows the same layers (``render_layers``); a test keeps the two equal.
"""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "grpo_check"

# lowest first; a package may import its own layer's base and anything below its layer
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("base", ("_kinds", "_step_cache", "findings", "config", "signatures", "tolerance_defaults", "limits")),
    ("coverage", ("coverage",)),
    ("trace", ("trace",)),
    ("reference", ("reference",)),
    ("reference on a step", ("stepref",)),
    ("checks", ("invariants", "diagnose")),
    ("comparison", ("compare",)),
    ("probes, re-derivations", ("probe", "rederive")),
    ("outputs", ("report", "audit")),
    ("capture", ("trl",)),
    ("demo", ("demo",)),
    ("suites", ("bench", "testing", "zoo")),
    ("command line", ("cli",)),
    ("entry point", ("__main__",)),
)
FACADE = "__init__"  # grpo_check/__init__.py re-exports the public names of every layer

# names that still cross a package boundary under a private name: (importing file, name)
PRIVATE_ALLOWED: set[tuple[str, str]] = set()


def layer_of(package: str) -> int:
    for index, (_, packages) in enumerate(LAYERS):
        if package in packages:
            return index
    raise AssertionError(f"grpo_check.{package} is in no layer of tests/test_layers.py")


def _package(path: Path) -> str:
    relative = path.relative_to(PACKAGE)
    return relative.parts[0].removesuffix(".py") if len(relative.parts) > 1 else relative.stem


def imports(path: Path) -> list[tuple[str, str]]:
    """(imported module, imported name or "") for every ``grpo_check`` import in the file."""
    found: list[tuple[str, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(alias.name, "") for alias in node.names if alias.name.startswith("grpo_check.")]
        elif (
            isinstance(node, ast.ImportFrom)
            and node.level == 0
            and (node.module or "").startswith("grpo_check")
        ):
            found += [(node.module, alias.name) for alias in node.names]
    return found


def _target(module: str, name: str) -> tuple[str, list[str]]:
    """(imported package, the module path below it) of ``from module import name``."""
    parts = module.split(".")[1:]
    if not parts:  # from grpo_check import x: the subpackage x, or a name of the facade
        return (name if (PACKAGE / name).exists() or (PACKAGE / f"{name}.py").exists() else FACADE), []
    return parts[0], parts[1:]


def edges() -> list[tuple[Path, str, str, list[str], str]]:
    """(file, its package, imported package, module path below it, imported name) for every import."""
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = _package(path)
        for module, name in imports(path):
            target, below = _target(module, name)
            out.append((path, source, target, below, name))
    return out


def package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for _, source, target, _, _ in edges():
        if source != target and FACADE not in (source, target):
            graph.setdefault(source, set()).add(target)
    return graph


def render_layers() -> str:
    """The layer diagram of ``docs/architecture.md``: top layer first, each with its packages."""
    width = max(len(name) for name, _ in LAYERS)
    lines = []
    for name, packages in reversed(LAYERS):
        shown = "  ".join(packages)
        lines.append(f"{name.rjust(width)} │ {shown}")
    return "\n".join(lines)


def _relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def test_every_package_sits_in_a_layer_and_imports_only_downward():
    wrong = []
    for path, source, target, _, _ in edges():
        if FACADE in (source, target) or source == target:
            continue
        if layer_of(target) > layer_of(source) or (
            layer_of(target) == layer_of(source) and LAYERS[layer_of(source)][0] != "base"
        ):
            wrong.append(f"{_relative(path)} ({LAYERS[layer_of(source)][0]}) imports grpo_check.{target} "
                         f"({LAYERS[layer_of(target)][0]})")  # fmt: skip
    assert not wrong, "\n".join(wrong)


def test_the_package_graph_has_no_cycle():
    graph = package_graph()
    for a, b in itertools.permutations(graph, 2):
        assert not (b in graph.get(a, ()) and a in graph.get(b, ())), f"{a} and {b} import each other"


def test_the_reference_depends_on_the_base_only():
    base = set(LAYERS[0][1])
    assert package_graph().get("reference", set()) <= base


def test_capture_computes_no_maths():
    assert "reference" not in package_graph().get("trl", set())


def test_compare_and_diagnose():
    assert "compare" not in package_graph().get("diagnose", set())
    private = [
        _relative(path)
        for path, source, target, below, _ in edges()
        if source == "compare" and target == "diagnose" and any(part.startswith("_") for part in below)
    ]
    assert not private, private


def test_the_zoo_catalog_does_not_import_what_registers_into_it():
    registering = ("grpo_check.zoo.mutants_", "grpo_check.zoo.controls", "grpo_check.zoo.cases")
    catalog = PACKAGE / "zoo" / "catalog.py"
    assert not [module for module, _ in imports(catalog) if module.startswith(registering)]


def test_no_private_name_crosses_a_package():
    crossing = []
    for path, source, target, below, name in edges():
        if source == target or FACADE in (source, target) or target in LAYERS[0][1]:
            continue  # within a package; the facade; grpo_check's own shared base modules
        private_module = any(part.startswith("_") for part in below)
        private_name = name.startswith("_") and not name.startswith("__")
        if (private_module or private_name) and (_relative(path), name) not in PRIVATE_ALLOWED:
            crossing.append(f"{_relative(path)}: grpo_check.{'.'.join([target, *below])} {name}")
    assert not crossing, "\n".join(crossing)


def test_the_architecture_page_shows_these_layers():
    page = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    assert render_layers() in page, "docs/architecture.md: replace the layer diagram with\n" + render_layers()
