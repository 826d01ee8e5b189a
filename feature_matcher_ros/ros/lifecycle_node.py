"""``lifecycle_matcher_node``: the matcher node as a ROS 2 managed (lifecycle) node.

Same parameters, topics, diagnostics and worker as :class:`~.node.MatcherNode`, built from the same steps
(:class:`~.node.MatcherSteps`), but nothing heavy happens at construction:

============  =================================================================================
transition    what happens
============  =================================================================================
configure     ``load_matcher`` (reads the parameters, loads the backend: model weights onto
              ``device``; builds the frontend, the live-parameter callbacks and ``~/reset``), then
              ``create_outputs`` with lifecycle publishers (they publish nothing until activated)
              and the worker thread. A failure (missing weights, CUDA asked for without CUDA, a bad
              value) is logged as ``configure failed: <reason>`` and the node stays
              ``unconfigured``.
activate      enables the publishers, then ``create_inputs`` (the ``image``/``camera_info``
              subscriptions and the diagnostics timer).
deactivate    ``destroy_inputs``; the publishers are disabled (a frame still in the worker's hands
              is matched, its outputs are not published). The model stays.
cleanup       ``destroy_outputs`` (stops the worker) and ``release_matcher`` (the model, the CUDA
              cache, keyframes and odometry go; the parameters stay, with their values).
shutdown      whatever of the above is needed from the current state; ``main`` then exits.
============  =================================================================================

Each transition runs behind the node's entry-point guard (:mod:`.guard`): an unexpected exception in it is
counted (``internal_error.<transition>``), logged with its traceback, and the transition FAILS (the node stays in
the state it was in; rclpy alone would answer ERROR and drop the node to ``unconfigured`` without a word).

Drive it with the ``lifecycle_msgs`` services (``~/change_state``, ``~/get_state``), e.g.
``ros2 lifecycle set /matcher_node configure``.
"""

from __future__ import annotations

from typing import Any

from rcl_interfaces.msg import SetParametersResult
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.task import Future

from ..params import ParamSpec, check_changes
from .node import NODE_NAME, NODE_PARAMS, MatcherSteps

SUCCESS, FAILURE = TransitionCallbackReturn.SUCCESS, TransitionCallbackReturn.FAILURE


class LifecycleMatcherNode(MatcherSteps, LifecycleNode):
    """The matcher as a managed node (see the module docstring for what each transition does).

    ``finished`` is done once the node has shut down (the ``shutdown`` transition).
    """

    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self.init_state()
        self.finished = Future()
        self._known_specs: dict[str, ParamSpec] = {}
        # Outside "inactive"/"active" nothing validates live changes; this keeps them within the specs.
        self.add_on_set_parameters_callback(self._check_while_unconfigured)

    # -- configure / cleanup ----------------------------------------------------------------------
    def _configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self.load_matcher()
            self.create_outputs(self.create_lifecycle_publisher)
        except Exception as exc:  # noqa: BLE001 - a failed configure is a reported FAILURE, not a crash
            self.get_logger().error(f"configure failed: {exc}")
            self._release()
            return FAILURE
        self._known_specs = {s.name: s for s in (*NODE_PARAMS, *self.frontend.params())}
        self.get_logger().info(f"configured (inactive): {self.matcher_summary()}")
        return LifecycleNode.on_configure(self, state)

    def _cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self.get_logger().info("cleaned up: model released")
        return LifecycleNode.on_cleanup(self, state)

    def _check_while_unconfigured(self, params) -> SetParametersResult:
        """Live changes before configure / after cleanup: checked against the specs seen so far."""
        if self.frontend is not None:
            return SetParametersResult(successful=True)  # the matcher's own callbacks decide
        # Declarations also pass through here; ``declare`` checks those itself (ROS checks read-only).
        changes = {p.name: p.value for p in params if p.name in self._known_specs and self.has_parameter(p.name)}
        current = {name: self.get_parameter(name).value for name in changes}
        _, reason = check_changes(self._known_specs.values(), current, changes, allow_read_only=True)
        return SetParametersResult(successful=reason is None, reason=reason or "")

    # -- activate / deactivate --------------------------------------------------------------------
    def _activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        result = LifecycleNode.on_activate(self, state)  # enables the lifecycle publishers
        if result != SUCCESS:
            return result
        try:
            self.create_inputs()
        except Exception as exc:  # noqa: BLE001
            self.get_logger().error(f"activate failed: {exc}")
            self.destroy_inputs()
            return FAILURE
        self.get_logger().info(f"active: listening on {self.resolve_topic_name('image')}")
        return SUCCESS

    def _deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.destroy_inputs()
        self.get_logger().info("deactivated: no subscriptions, publishers disabled")
        return LifecycleNode.on_deactivate(self, state)

    # -- shutdown / error -------------------------------------------------------------------------
    def _shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self.finished.set_result(True)
        return LifecycleNode.on_shutdown(self, state)

    def _error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return LifecycleNode.on_error(self, state)

    # -- the transitions as rclpy calls them: each behind the guard ------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self.guard("configure", self._configure, self._failed_configure)(state)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self.guard("activate", self._activate, self._failed_activate)(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self.guard("deactivate", self._deactivate, self._failed_transition)(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self.guard("cleanup", self._cleanup, self._failed_transition)(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self.guard("shutdown", self._shutdown, self._failed_shutdown)(state)

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self.guard("error", self._error, self._failed_transition)(state)

    def _failed_transition(self, exc: BaseException, state: LifecycleState) -> TransitionCallbackReturn:
        return FAILURE

    def _failed_configure(self, exc: BaseException, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return FAILURE

    def _failed_activate(self, exc: BaseException, state: LifecycleState) -> TransitionCallbackReturn:
        """Back to what ``inactive`` means: no inputs, publishers disabled."""
        self.destroy_inputs()
        LifecycleNode.on_deactivate(self, state)
        return FAILURE

    def _failed_shutdown(self, exc: BaseException, state: LifecycleState) -> TransitionCallbackReturn:
        """Shutting down ends the process whatever went wrong on the way."""
        if not self.finished.done():
            self.finished.set_result(True)
        return SUCCESS

    def _release(self) -> None:
        """Undo whatever configure and activate made (any state, also after a partial configure)."""
        self.destroy_inputs()
        self.destroy_outputs(self.destroy_lifecycle_publisher)
        self.release_matcher()

    def close(self) -> None:
        """Stop the inputs and the worker (call before ``destroy_node``), whatever the state. The process
        ends next: releasing the model piece by piece would only delay the exit."""
        self.destroy_inputs()
        self.destroy_outputs(self.destroy_lifecycle_publisher)
