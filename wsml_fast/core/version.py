"""The installed wsml's version, read from the package metadata (pyproject.toml is its one source)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    WSML_VERSION = version("wsml-fast")
except PackageNotFoundError:  # a source tree on PYTHONPATH, not installed
    WSML_VERSION = "unknown"
