"""Where the package's shipped files are: a source checkout first, then the ament share directory."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE = "feature_matcher_ros"
_SOURCE_ROOT = Path(__file__).resolve().parent.parent


def share_dir() -> Path:
    """The folder holding config/, launch/ and data/: the checkout, or ``share/feature_matcher_ros``."""
    if (_SOURCE_ROOT / "package.xml").is_file() and (_SOURCE_ROOT / "config").is_dir():
        return _SOURCE_ROOT
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory(PACKAGE))
    except Exception:  # noqa: BLE001 - no ament index: fall back to the checkout layout
        return _SOURCE_ROOT


def config_file(name: str = "matcher.yaml") -> Path:
    return share_dir() / "config" / name


def data_dir() -> Path:
    return share_dir() / "data"


def source_checkout() -> Path | None:
    """The repository this package runs from (it has ``package.xml`` and ``test/``), or None when installed."""
    return _SOURCE_ROOT if (_SOURCE_ROOT / "package.xml").is_file() and (_SOURCE_ROOT / "test").is_dir() else None


def package_parent() -> Path:
    """The folder holding the ``feature_matcher_ros`` package (put it on ``PYTHONPATH`` to import it)."""
    return _SOURCE_ROOT


def cache_dir() -> Path:
    """A writable folder for caches (decompressed checkpoints, wheels): ``.cache`` of a source checkout, else
    ``$XDG_CACHE_HOME/feature_matcher_ros`` (``~/.cache/feature_matcher_ros``)."""
    checkout = source_checkout()
    if checkout is not None:
        return checkout / ".cache"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / PACKAGE


def shared_dir() -> Path:
    """``../shared`` beside the checkout (datasets and fixtures for tests), or ``$FM_SHARED``."""
    return Path(os.environ.get("FM_SHARED", _SOURCE_ROOT.parent / "shared"))
