"""The package's layout shows the flow: sub-packages in layers, and a module imports only from its own layer or
the layers below (imports for type annotations alone, under TYPE_CHECKING, and imports inside functions that
the command line makes lazily are not dependencies of the module)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "wsml_fast"
LAYERS = [
    "core",
    "data",
    "model",
    "learning",
    "schemes",
    "training",
    "inference",
    "tuning",
    "prepare",
    "cli",
]  # bottom to top


def layer_of(module: str) -> str:
    """The sub-package a module belongs to; the package's own top-level modules are the command line's."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else "cli"


def module_imports(path: Path) -> list[tuple[str, int]]:
    """(imported wsml module, line) for the imports at a module's top level (not under TYPE_CHECKING)."""
    found = []
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("wsml_fast"):
            found += [(_module_or_member(node.module, alias.name), node.lineno) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names if alias.name.startswith("wsml_fast")]
    return found


def _module_or_member(module: str, name: str) -> str:
    """`from package import submodule` imports the submodule; `from module import name`, the module."""
    folder = PACKAGE.parent.joinpath(*module.split("."))
    is_module = (folder / f"{name}.py").is_file() or (folder / name / "__init__.py").is_file()
    return f"{module}.{name}" if is_module else module


def test_modules_import_only_their_own_layer_or_below() -> None:
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        here = LAYERS.index(layer_of(module))
        for imported, line in module_imports(path):
            if LAYERS.index(layer_of(imported)) > here:
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {imported}")
    assert not wrong, "\n".join(wrong)


def test_no_module_is_left_beside_the_sub_packages() -> None:
    loose = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert loose == ["__init__.py", "__main__.py", "cli.py"]


def test_no_two_modules_import_each_other_in_a_circle() -> None:
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        graph[module] = {imported for imported, _ in module_imports(path)}
    circles = []

    def visit(module: str, trail: list[str]) -> None:
        if module in trail:
            circles.append(" -> ".join(trail[trail.index(module) :] + [module]))
            return
        for imported in sorted(graph.get(module, ())):
            visit(imported, trail + [module])

    for module in sorted(graph):
        visit(module, [])
    assert not circles, "\n".join(sorted(set(circles)))


def test_every_sub_package_is_installed() -> None:
    """pyproject.toml lists the packages a wheel holds: a sub-package missing there would be missing for users."""
    pyproject = (PACKAGE.parent / "pyproject.toml").read_text()  # (tomllib is Python 3.11+; wsml runs on 3.10)
    listing = re.search(r"^packages = \[(.*?)\]", pyproject, re.M | re.S)
    listed = set(re.findall(r'"([\w.]+)"', listing.group(1)))
    found = {".".join(p.parent.relative_to(PACKAGE.parent).parts) for p in PACKAGE.rglob("__init__.py")}
    assert found <= listed, f"not in pyproject.toml's packages: {sorted(found - listed)}"
