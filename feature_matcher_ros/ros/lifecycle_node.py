"""``lifecycle_matcher_node``: the matcher node as a ROS 2 managed (lifecycle) node.

Same parameters, topics, diagnostics and worker as :class:`~.node.MatcherNode`, but nothing heavy happens
at construction:

============  =================================================================================
transition    what happens
============  =================================================================================
configure     reads the parameters, loads the backend (model weights onto ``device``), builds the
              frontend, the live-parameter callback, ``~/reset``, the worker thread and the output
              publishers (lifecycle publishers: they publish nothing until activated). A failure
              (missing weights, CUDA asked for without CUDA, a bad value) is logged with its reason
              and the node stays ``unconfigured``.
activate      enables the publishers, creates the ``image``/``camera_info`` subscriptions and the
              diagnostics timer.
deactivate    destroys the subscriptions and the timer, disables the publishers (a frame still
              in the worker's hands is matched, its outputs are not published). The model stays.
cleanup       stops the worker, destroys the publishers and ``~/reset``, releases the model (and
              the CUDA cache), keyframes and odometry.
shutdown      whatever of the above is needed from the current state; ``main`` then exits.
============  =================================================================================

How it reuses MatcherNode: ``on_configure`` runs ``MatcherNode._start`` while this class intercepts the
entities it creates: subscriptions are recorded and only created on activate, timers it leaves running
run only while active, publishers become lifecycle publishers, and everything is remembered for cleanup;
and parameters declared by an earlier configure are read back instead of declared again.

Drive it with the ``lifecycle_msgs`` services (``~/change_state``, ``~/get_state``), e.g.
``ros2 lifecycle set /matcher_node configure``.
"""

from __future__ import annotations

import gc
import sys
from typing import Any

from rcl_interfaces.msg import SetParametersResult
from rclpy.lifecycle import LifecycleNodeMixin, LifecycleState, TransitionCallbackReturn
from rclpy.node import Node

from ..params import ParamSpec, check_changes
from .node import NODE_NAME, NODE_PARAMS, MatcherNode

SUCCESS, FAILURE = TransitionCallbackReturn.SUCCESS, TransitionCallbackReturn.FAILURE


class LifecycleMatcherNode(LifecycleNodeMixin, MatcherNode):
    """The matcher as a managed node (see the module docstring for what each transition does).

    ``MatcherNode.__init__`` (which starts everything at once) is skipped on purpose; ``on_configure``
    runs ``MatcherNode._start`` with entity creation intercepted.
    """

    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        self._configuring = False
        Node.__init__(self, node_name, **kwargs)
        LifecycleNodeMixin.__init__(self)
        self._loaded = False
        self._deferred_subscriptions: list[tuple[tuple, dict]] = []
        self._owned_timers: list = []  # every timer configure made (destroyed on cleanup)
        self._active_timers: list = []  # those running while active (cancelled otherwise)
        self._live_subscriptions: list = []
        self._owned_publishers: list = []
        self._owned_services: list = []
        self._owned_param_callbacks: list = []
        self._known_specs: dict[str, ParamSpec] = {}
        # Outside "inactive"/"active" nothing validates live changes; this keeps them within the specs.
        self.add_on_set_parameters_callback(self._check_while_unconfigured)

    # -- entity creation, intercepted while MatcherNode._start runs -------------------------------
    def create_subscription(self, *args: Any, **kwargs: Any):
        if getattr(self, "_configuring", False):
            self._deferred_subscriptions.append((args, kwargs))
            return None
        return super().create_subscription(*args, **kwargs)

    def create_timer(self, *args: Any, **kwargs: Any):
        timer = super().create_timer(*args, **kwargs)
        if getattr(self, "_configuring", False):
            self._owned_timers.append(timer)
        return timer

    def create_publisher(self, msg_type, topic, qos_profile, **kwargs: Any):
        if getattr(self, "_configuring", False):
            pub = self.create_lifecycle_publisher(msg_type, topic, qos_profile, **kwargs)
            self._owned_publishers.append(pub)
            return pub
        return super().create_publisher(msg_type, topic, qos_profile, **kwargs)

    def create_service(self, *args: Any, **kwargs: Any):
        srv = super().create_service(*args, **kwargs)
        if getattr(self, "_configuring", False):
            self._owned_services.append(srv)
        return srv

    def add_on_set_parameters_callback(self, callback):
        if getattr(self, "_configuring", False):
            self._owned_param_callbacks.append(callback)
        return super().add_on_set_parameters_callback(callback)

    def declare_parameter(self, name, value=None, descriptor=None, ignore_override=False):
        if getattr(self, "_configuring", False) and self.has_parameter(name):
            return self.get_parameter(name)  # declared by an earlier configure: its current value
        return super().declare_parameter(name, value, descriptor, ignore_override)

    # -- configure / cleanup ----------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._configuring = True
        try:
            MatcherNode._start(self)
        except Exception as exc:  # noqa: BLE001 - a failed configure is a reported FAILURE, not a crash
            self._configuring = False
            self.get_logger().error(f"configure failed: {exc}")
            self._release()
            return FAILURE
        finally:
            self._configuring = False
        # Timers MatcherNode left running (diagnostics) run only while active; those it cancelled itself
        # (one-shot helpers it resets when needed) stay under its control.
        self._active_timers = [t for t in self._owned_timers if not t.is_canceled()]
        for timer in self._active_timers:
            timer.cancel()
        self._loaded = True
        self._known_specs = {s.name: s for s in (*NODE_PARAMS, *self.frontend.params())}
        d = self.backend.describe()
        self.get_logger().info(f"configured (inactive): backend {d['backend']} on {d['device']} ({d['precision']})")
        return super().on_configure(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self.get_logger().info("cleaned up: model released")
        return super().on_cleanup(state)

    def _release(self) -> None:
        """Drop the model and everything configure made (safe in any state, also after a partial configure)."""
        self._close_inputs()
        if hasattr(self, "mailbox") and hasattr(self, "_worker"):
            MatcherNode.close(self)  # stops the worker after the frame in hand
        for pub in self._owned_publishers:
            self.destroy_lifecycle_publisher(pub)
        for srv in self._owned_services:
            self.destroy_service(srv)
        for timer in self._owned_timers:
            self.destroy_timer(timer)
        self._owned_timers, self._active_timers = [], []
        for callback in self._owned_param_callbacks:
            self.remove_on_set_parameters_callback(callback)
        try:
            self.remove_pre_set_parameters_callback(self._add_derived)
        except ValueError:  # not configured
            pass
        self._owned_publishers, self._owned_services, self._owned_param_callbacks = [], [], []
        self._deferred_subscriptions = []
        device = str(getattr(getattr(self, "backend", None), "device", "cpu"))
        for name in ("frontend", "backend", "_keyframe_images", "chain"):
            if hasattr(self, name):
                setattr(self, name, None)
        self._loaded = False
        gc.collect()
        if device.startswith("cuda") and "torch" in sys.modules:
            sys.modules["torch"].cuda.empty_cache()

    def _check_while_unconfigured(self, params) -> SetParametersResult:
        """Live changes before configure / after cleanup: checked against the specs seen so far."""
        if self._loaded:
            return SetParametersResult(successful=True)  # MatcherNode's LiveParameters decides
        # Declarations also pass through here; ``declare`` checks those itself (ROS checks read-only).
        changes = {p.name: p.value for p in params if p.name in self._known_specs and self.has_parameter(p.name)}
        current = {name: self.get_parameter(name).value for name in changes}
        _, reason = check_changes(self._known_specs.values(), current, changes, allow_read_only=True)
        return SetParametersResult(successful=reason is None, reason=reason or "")

    # -- activate / deactivate --------------------------------------------------------------------
    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        result = super().on_activate(state)  # enables the lifecycle publishers
        if result != SUCCESS:
            return result
        try:
            for timer in self._active_timers:
                timer.reset()
            for args, kwargs in self._deferred_subscriptions:
                self._live_subscriptions.append(Node.create_subscription(self, *args, **kwargs))
        except Exception as exc:  # noqa: BLE001
            self.get_logger().error(f"activate failed: {exc}")
            self._close_inputs()
            return FAILURE
        self.get_logger().info(f"active: listening on {self.resolve_topic_name('image')}")
        return SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._close_inputs()
        self.get_logger().info("deactivated: no subscriptions, publishers disabled")
        return super().on_deactivate(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return super().on_shutdown(state)

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return super().on_error(state)

    def _close_inputs(self) -> None:
        for sub in self._live_subscriptions:
            self.destroy_subscription(sub)
        for timer in self._active_timers:
            timer.cancel()
        self._live_subscriptions = []

    def close(self) -> None:
        """Stop the inputs and the worker (before ``destroy_node``), whatever the state. The process ends
        next: releasing the model piece by piece would only delay the exit."""
        self._close_inputs()
        if hasattr(self, "mailbox") and hasattr(self, "_worker"):
            MatcherNode.close(self)
