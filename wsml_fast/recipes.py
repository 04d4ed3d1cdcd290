"""Per-dataset training recipes: YAML files of TrainConfig values shipped in `recipes/`."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from wsml_fast.errors import WsmlError


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


def find_recipe(
    recipe_file: str | None, dataset: str | None, scheme: str | None = None
) -> tuple[dict[str, Any] | None, str | None]:
    """The recipe to use: `--recipe FILE` if given, else the shipped recipe named like the dataset, if any.

    A recipe's `schemes:` section holds per-scheme settings (Delta differs per scheme); the section of the
    scheme in use (the command line's, else the recipe's, else `an`) is merged into the rest.
    """
    if recipe_file:
        path, name = Path(recipe_file), recipe_file
    elif dataset in shipped_recipes():
        path, name = shipped_recipes()[dataset], dataset
    else:
        return None, None
    values = load_recipe(path)
    values.pop("description", None)
    per_scheme = values.pop("schemes", None) or {}
    if not isinstance(per_scheme, dict):
        raise WsmlError(f"{path}: 'schemes' must map scheme names to settings")
    values.update(per_scheme.get(scheme or values.get("scheme", "an")) or {})
    return values, name
