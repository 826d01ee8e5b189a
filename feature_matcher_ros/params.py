"""Parameter specifications shared by the core and the ROS layer (which turns them into descriptors).

A :class:`ParamSpec` says a parameter's name, type, default, allowed values and whether it may change
at run time. :func:`check_changes` validates a batch of changes against the specs and a cross-field
checker, so that a batch is applied whole or not at all.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

_TYPE_NAMES = {bool: "bool", int: "integer", float: "double", str: "string"}


@dataclass(frozen=True)
class ParamSpec:
    """One parameter.

    Attributes:
        name: dotted name, e.g. ``"ransac.threshold_px"`` (a ROS parameter of the same name).
        default: default value; its Python type is the parameter's type.
        description: one sentence, shown in the ROS parameter descriptor.
        choices: allowed values for a string parameter.
        min, max: inclusive bounds for a number.
        read_only: set at start-up only.
    """

    name: str
    default: Any
    description: str
    choices: tuple[Any, ...] | None = None
    min: float | None = None
    max: float | None = None
    read_only: bool = False

    @property
    def type(self) -> type:
        return type(self.default)

    def coerce(self, value: Any) -> Any:
        """``value`` in this parameter's type (an int is accepted for a float parameter)."""
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        return value

    def check(self, value: Any) -> str | None:
        """Why ``value`` is not allowed, or None."""
        value = self.coerce(value)
        want = self.type
        if not isinstance(value, want) or (want is not bool and isinstance(value, bool)):
            return f"{self.name}: expected {_TYPE_NAMES.get(want, want.__name__)}, got {type(value).__name__} {value!r}"
        if isinstance(value, float) and not math.isfinite(value):
            return f"{self.name}: must be finite, got {value!r}"
        if self.choices is not None and value not in self.choices:
            return f"{self.name}: must be one of {list(self.choices)}, got {value!r}"
        if self.min is not None and value < self.min:
            return f"{self.name}: must be >= {self.min}, got {value!r}"
        if self.max is not None and value > self.max:
            return f"{self.name}: must be <= {self.max}, got {value!r}"
        return None


def check_changes(
    specs: Iterable[ParamSpec],
    current: Mapping[str, Any],
    changes: Mapping[str, Any],
    cross_check: Callable[[Mapping[str, Any]], str | None] | None = None,
    allow_read_only: bool = False,
) -> tuple[dict[str, Any] | None, str | None]:
    """Validate a batch of changes.

    Returns ``(merged, None)`` with the complete new settings when every change is allowed, or
    ``(None, reason)`` naming the first problem. Nothing is modified either way.
    """
    by_name = {s.name: s for s in specs}
    merged = dict(current)
    for name, value in changes.items():
        spec = by_name.get(name)
        if spec is None:
            return None, f"{name}: unknown parameter"
        if spec.read_only and not allow_read_only and merged.get(name) != value:
            return None, f"{name}: read-only (set it at start-up, e.g. in the params file)"
        reason = spec.check(value)
        if reason:
            return None, reason
        merged[name] = spec.coerce(value)
    if cross_check is not None:
        reason = cross_check(merged)
        if reason:
            return None, reason
    return merged, None
