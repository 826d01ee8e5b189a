"""ROS parameters generated from the core's :class:`~feature_matcher_ros.params.ParamSpec` list.

Every spec becomes a declared parameter whose descriptor carries the description, the range
(``integer_range`` / ``floating_point_range``), the allowed choices (``additional_constraints``) and
``read_only``. Changes at run time go through :class:`LiveParameters`, the on-set-parameters callback:
the whole batch is validated first (node specs, then ``Frontend.update``, which applies all or none), so
a batch with one bad value changes nothing and its ``SetParametersResult.reason`` says why.

Note that ROS's ``set_parameters`` service sets the parameters of one request one at a time (each is its
own batch); ``set_parameters_atomically`` is the all-or-none one.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    ParameterType,
    SetParametersResult,
)
from rclpy.exceptions import ParameterException
from rclpy.node import Node
from rclpy.parameter import Parameter

from ..params import ParamSpec, check_changes

_PARAMETER_TYPES = {
    bool: ParameterType.PARAMETER_BOOL,
    int: ParameterType.PARAMETER_INTEGER,
    float: ParameterType.PARAMETER_DOUBLE,
    str: ParameterType.PARAMETER_STRING,
}
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def descriptor_for(spec: ParamSpec) -> ParameterDescriptor:
    """The ROS descriptor of one spec (a range needs both ends in ROS: a missing end is unbounded)."""
    if spec.type not in _PARAMETER_TYPES:
        raise TypeError(f"{spec.name}: parameter type {spec.type.__name__} has no ROS equivalent")
    desc = ParameterDescriptor(
        name=spec.name,
        type=_PARAMETER_TYPES[spec.type],
        description=spec.description,
        read_only=spec.read_only,
    )
    if spec.choices is not None:
        desc.additional_constraints = "one of: " + ", ".join(str(c) for c in spec.choices)
    if spec.type is int and (spec.min is not None or spec.max is not None):
        desc.integer_range = [IntegerRange(
            from_value=int(spec.min) if spec.min is not None else _INT64_MIN,
            to_value=int(spec.max) if spec.max is not None else _INT64_MAX,
            step=0,
        )]
    elif spec.type is float and (spec.min is not None or spec.max is not None):
        desc.floating_point_range = [FloatingPointRange(
            from_value=float(spec.min) if spec.min is not None else -sys.float_info.max,
            to_value=float(spec.max) if spec.max is not None else sys.float_info.max,
            step=0.0,
        )]
    return desc


def declare(node: Node, specs: Iterable[ParamSpec]) -> dict[str, Any]:
    """Declare ``specs`` on ``node`` (values from the params file / ``-p`` overrides, else the defaults)
    and return their values; one declared before (by a lifecycle node's earlier configure) keeps its
    current value. Raises ``ValueError`` naming the parameter when a value is not allowed."""
    values = {}
    for spec in specs:
        try:
            param = (node.get_parameter(spec.name) if node.has_parameter(spec.name)
                     else node.declare_parameter(spec.name, spec.default, descriptor_for(spec)))
        except ParameterException as exc:  # wrong type or out of range in the overrides
            raise ValueError(f"parameter {spec.name}: {exc}") from None
        value = spec.coerce(param.value)
        reason = spec.check(value)
        if reason:
            raise ValueError(f"parameter {reason}")
        values[spec.name] = value
    return values


class LiveParameters:
    """The on-set-parameters callback: validates a batch whole, then applies it.

    Args:
        node_specs: the node's own specs (read-only ones are refused by ROS before this runs).
        node_values: their current values (updated in place when a batch is accepted).
        frontend_update: ``Frontend.update``: validates and applies the frontend/backend part, all or none,
            returning a reason or None.
        frontend_names: the names ``frontend_update`` owns.
        lock: held while applying, so that a frame never sees half a batch (the worker holds it while it
            processes a frame).
        on_applied: called with the accepted node-level changes (after the frontend part succeeded).
    """

    def __init__(
        self,
        node_specs: Iterable[ParamSpec],
        node_values: dict[str, Any],
        frontend_update: Callable[[dict[str, Any]], str | None],
        frontend_names: Iterable[str],
        lock: threading.Lock,
        on_applied: Callable[[Mapping[str, Any]], None] | None = None,
    ) -> None:
        self.node_specs = tuple(node_specs)
        self.node_values = node_values
        self.frontend_update = frontend_update
        self.frontend_names = set(frontend_names)
        self.lock = lock
        self.on_applied = on_applied

    def __call__(self, params: list[Parameter]) -> SetParametersResult:
        node_changes, frontend_changes = {}, {}
        for p in params:
            (frontend_changes if p.name in self.frontend_names else node_changes)[p.name] = p.value
        merged, reason = check_changes(self.node_specs, self.node_values, node_changes)
        if reason:
            return SetParametersResult(successful=False, reason=reason)
        with self.lock:
            if frontend_changes:
                try:
                    reason = self.frontend_update(frontend_changes)
                except Exception as exc:  # noqa: BLE001 - a failing update must never take the node down
                    reason = f"could not apply {sorted(frontend_changes)}: {exc}"
                if reason:
                    return SetParametersResult(successful=False, reason=reason)
            accepted = {k: merged[k] for k in node_changes}
            self.node_values.update(accepted)
            if accepted and self.on_applied is not None:
                self.on_applied(accepted)
        return SetParametersResult(successful=True)
