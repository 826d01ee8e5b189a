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


def shared_dir() -> Path:
    """``../shared`` beside the checkout (datasets and fixtures for tests), or ``$FM_SHARED``."""
    return Path(os.environ.get("FM_SHARED", _SOURCE_ROOT.parent / "shared"))
