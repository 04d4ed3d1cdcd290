"""Per-dataset training recipes: YAML files of TrainConfig values shipped in `recipes/`."""

from __future__ import annotations

from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from wsml_fast.core.errors import WsmlError
from wsml_fast.schemes import FAMILIES, SCHEMES, get_scheme


def shipped_recipes() -> dict[str, Path]:
    """Name -> file of every recipe that ships with the package."""
    folder = resources.files("wsml_fast.recipe_files")
    return {Path(str(p)).stem: Path(str(p)) for p in folder.iterdir() if str(p).endswith(".yaml")}


def load_recipe(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise WsmlError(f"--recipe {path}: file not found")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise WsmlError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise WsmlError(f"{path}: a recipe is a mapping of settings (key: value per line)")
    return values


def _section(path: Path, values: dict[str, Any], key: str, known: Iterable[str]) -> dict[str, dict]:
    section = values.pop(key, None) or {}
    if not isinstance(section, dict) or not all(isinstance(v, dict) for v in section.values()):
        raise WsmlError(f"{path}: '{key}' must map names to settings")
    unknown = sorted(set(section) - set(known))
    if unknown:
        raise WsmlError(f"{path}: '{key}' names {', '.join(unknown)}, not one of: {', '.join(known)}")
    return section


def find_recipe(
    recipe_file: str | None, dataset: str | None, scheme: str | None = None
) -> tuple[dict[str, Any] | None, str | None]:
    """The recipe to use: `--recipe FILE` if given, else the shipped recipe named like the dataset, if any.

    Settings belong to a scheme's family (each paper used its own): a recipe's common settings are overlaid by
    its `families:` section for the family of the scheme in use, then by its `schemes:` section for the scheme
    itself (the command line's scheme, else the recipe's, else `an`).
    """
    if recipe_file:
        path, name = Path(recipe_file), recipe_file
    elif dataset in shipped_recipes():
        path, name = shipped_recipes()[dataset], dataset
    else:
        return None, None
    values = load_recipe(path)
    values.pop("description", None)
    families = _section(path, values, "families", sorted({family.recipe_family for family in FAMILIES.values()}))
    schemes = _section(path, values, "schemes", SCHEMES)
    chosen = get_scheme(scheme or values.get("scheme", "an"))
    values.update(families.get(FAMILIES[chosen.family].recipe_family, {}))
    values.update(schemes.get(chosen.name, {}))
    return values, name
