"""What the command-line tools share: user errors end as one line on stderr and exit code 2."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..datasets import DatasetError
from .bagio import BagError

EXIT_USAGE = 2


class UsageError(Exception):
    """A bad option or input file (the message says which)."""


USER_ERRORS = (BagError, DatasetError, UsageError)


def read_yaml(path: str | Path, what: str) -> Any:
    """The YAML document of a user's file; a missing file or bad YAML is a :class:`UsageError` naming ``what``
    (e.g. "parameter file") and the path."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{what} {path} does not exist")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UsageError(f"{what} {path} is not valid YAML: {str(exc).splitlines()[0]}") from None


def run_main(prog: str, body: Callable[[], int | None]) -> int:
    """Run ``body``; a user error prints ``prog: error: message`` and returns 2, Ctrl-C returns 130."""
    try:
        return int(body() or 0)
    except USER_ERRORS as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:  # unwritable output folder, unreadable input file, ...
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
