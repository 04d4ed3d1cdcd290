"""The scheme registry: every training scheme's entry, collected from the family packages (plain data and lookups;
`wsml_fast.schemes.build` builds a scheme for a run).

In the spirit of timm's model registry, every scheme is one `Scheme` entry (wsml_fast.schemes.declaration),
declared with its settings in its family's package (`wsml_fast/schemes/<family>/__init__.py`): its name, the
family whose paper it follows, a one-line description, the labels it trains on and what it needs, the function of
the family's `training` module that builds it, and the settings it reads (`Setting`: type, default, constraint,
help, search range). The declarations are plain data, so the command line lists them without importing torch; a
family's `training` module is imported only when one of its schemes is built. Adding a scheme to a family is one
entry (and its settings) in the family's package and its build function in the family's `training` module; a new
family is one more package, listed in `_PACKAGES`. The `train` options, config validation, the docs' table,
`wsml schemes --json`, `wsml tune` and `--mix` (what a mixed image means for each scheme) all read this registry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from wsml_fast.core.errors import WsmlError
from wsml_fast.schemes import cole, em, gr, large_loss, role
from wsml_fast.schemes.declaration import Family, Scheme, Setting

if TYPE_CHECKING:  # for annotations only
    from wsml_fast.training.config import TrainConfig

_PACKAGES = (cole, role, large_loss, em, gr)
FAMILIES: dict[str, Family] = {package.FAMILY.name: package.FAMILY for package in _PACKAGES}
SCHEMES: dict[str, Scheme] = {scheme.name: scheme for package in _PACKAGES for scheme in package.ENTRIES}

TARGETS = ("observed", "truth", "observed-positives-true-negatives")
DENSE_STATE_BUDGET = 4 * 2**30  # bytes of per-entry state a scheme may keep: 4 GiB


def _declared_settings() -> dict[str, Setting]:
    """Every scheme's settings, each once, in registry order (a name is one TrainConfig field and one option)."""
    settings: dict[str, Setting] = {}
    for scheme in SCHEMES.values():
        for setting in scheme.settings:
            if settings.setdefault(setting.name, setting) != setting:
                raise ValueError(f"scheme setting {setting.name!r} is declared twice, differently")
    return settings


SETTINGS = _declared_settings()


def get_scheme(name: str) -> Scheme:
    if name not in SCHEMES:
        raise WsmlError(f"--scheme {name!r} is not one of: {', '.join(SCHEMES)}")
    return SCHEMES[name]


def settings_of(config: TrainConfig) -> dict[str, Any]:
    """The scheme's own settings as this run resolved them (for the run's first lines)."""
    return {setting.name: getattr(config, setting.name) for setting in get_scheme(config.scheme).settings}


def readers(setting: Setting) -> list[str]:
    """The schemes that read `setting`."""
    return [scheme.name for scheme in SCHEMES.values() if setting in scheme.settings]


def option_help(setting: Setting) -> str:
    """The command-line help of a scheme setting: who reads it, what it is, its default."""
    default = f" (default {_plain(setting.default)})" if setting.default is not None else ""
    return f"{', '.join(readers(setting))}: {setting.help}{default}."


def schemes_json() -> list[dict[str, Any]]:
    """Every scheme with its settings, as `wsml schemes --json` prints them."""
    return [
        {
            "name": scheme.name,
            "family": scheme.family,
            "paper": FAMILIES[scheme.family].paper,
            "description": scheme.description,
            "settings": [setting.to_json() for setting in scheme.settings],
        }
        for scheme in SCHEMES.values()
    ]


def markdown_table() -> str:
    """The docs' table of schemes (docs/commands.md), made from the registry (a test keeps the two the same)."""
    lines = ["| scheme | what it does | method | own settings (default) |", "| --- | --- | --- | --- |"]
    for scheme in SCHEMES.values():
        settings = ", ".join(
            f"`{s.option}`" + (f" ({_plain(s.default)})" if s.default is not None else "") for s in scheme.settings
        )
        paper = FAMILIES[scheme.family].paper.split(" (")[0]
        lines.append(f"| `{scheme.name}` | {scheme.description} | {paper} | {settings or '-'} |")
    return "\n".join(lines)


def mixing_table() -> str:
    """The docs' table of what a mixed image means for each scheme (docs/mixing.md; a test keeps the two the same)."""
    lines = ["| scheme | with `--mix` |", "| --- | --- |"]
    for scheme in SCHEMES.values():
        what = f"refused: {scheme.mixing.means}" if scheme.mixing.refused else scheme.mixing.means
        lines.append(f"| `{scheme.name}` | {what} |")
    return "\n".join(lines)


def _plain(value: Any) -> str:
    return " ".join(f"{v:g}" for v in value) if isinstance(value, tuple) else f"{value:g}"
