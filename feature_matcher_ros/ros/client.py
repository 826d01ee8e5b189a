"""The helper nodes that live beside other code in one Python process and talk to a running
``matcher_node`` over DDS.

:class:`HelperNode` is the plumbing they share: its own rclpy context (so that several helpers and any
other rclpy code in the process never interfere), one executor thread, a condition to wait on, and
service calls with a timeout. :class:`MatcherClient` publishes frames, collects every output and
gets/sets the matcher's parameters through the parameter services (the stand-in for ``ros2 param``);
``fm-demo``, ``fm-gpu-check`` and the tests use it. The graph watcher of ``fm-stress``
(:mod:`.monitor`) and the bag player of ``fm-replay`` are helper nodes too::

    with MatcherClient() as client:
        client.wait_for_matcher()
        client.send(rgb, "rgb8", stamp_ns, camera)
        cloud = client.wait_result(stamp_ns)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped
from lifecycle_msgs.srv import ChangeState, GetState
from nav_msgs.msg import Odometry
from rcl_interfaces.msg import SetParametersResult
from rcl_interfaces.srv import DescribeParameters, GetParameters, SetParameters, SetParametersAtomically
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter, parameter_value_to_python
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from std_srvs.srv import Trigger

from ..camera import CameraModel
from ..messages import cloud_to_array, matches_keyframe_stamp, stamp_to_ns, to_matcher_image
from . import conversions as cv
from .qos import input_qos, latched_qos, output_qos


class ServiceUnavailable(TimeoutError):
    """The service did not show up in the ROS graph in time (as opposed to not answering)."""


# How long one probe waits for its answer before the next is sent (see HelperNode.call).
PROBE_WAIT_S = 2.0
# A transition label that no lifecycle state machine has: change_state answers it with success = False and
# changes nothing (rclpy and rclcpp look the label up before anything else).
NO_TRANSITION = "fm_probe_no_such_transition"


def _answer(client: Any, request: Any, timeout: float) -> Any:
    """The response to ``request`` from ``client``, or None when none arrives within ``timeout`` seconds."""
    future = client.call_async(request)
    done = threading.Event()
    future.add_done_callback(lambda _: done.set())
    if not done.wait(timeout):
        client.remove_pending_request(future)
        return None
    return future.result()


class HelperNode:
    """An rclpy node with its own context, spun by its own daemon thread from construction to
    :meth:`close`.

    Subclasses set up the state their callbacks touch before creating the subscriptions, and hold
    ``self._cond`` (a :class:`threading.Condition`) while they change it, so that :meth:`wait_until`
    sees every change.
    """

    def __init__(self, name: str, namespace: str = "") -> None:
        self.context = rclpy.Context()
        rclpy.init(args=[], context=self.context)
        self.node = rclpy.create_node(name, namespace=namespace, context=self.context)
        self._cond = threading.Condition()
        self._call_lock = threading.Lock()
        self._closed = False
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._spinner = threading.Thread(target=self._spin, daemon=True)
        self._spinner.start()

    def _spin(self) -> None:
        try:
            self.executor.spin()
        except Exception:  # noqa: BLE001 - the context was shut down under us
            pass

    def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``predicate()`` (evaluated under the helper's lock) holds; False on timeout."""
        with self._cond:
            return self._cond.wait_for(predicate, timeout)

    def call(self, srv_type: Any, service: str, request: Any, timeout: float, probe: Any = None,
             repeat: bool = False) -> Any:
        """Call ``service`` and return its response; :class:`ServiceUnavailable` when it is not there
        within ``timeout`` seconds, :class:`TimeoutError` when it does not answer within as long again.

        A server sends its response once, and drops it when its writer has not yet discovered the new client's
        reader (Fast DDS waits 100 ms for that: a busy machine can take longer). ``repeat``: the request may be
        sent again until it is answered (a get: it changes nothing). ``probe``: for a request that must
        not be sent twice, a request the service answers without doing anything; it is sent, again and again,
        until one is answered: then the response path is known to work and the request goes.

        Waits on an event set by the future's callback: the executor thread completes the future."""
        with self._call_lock:  # one call at a time: a tool may call from several threads
            return self._call_once(srv_type, service, request, timeout, request if repeat else probe)

    def _call_once(self, srv_type: Any, service: str, request: Any, timeout: float, probe: Any = None) -> Any:
        client = self.node.create_client(srv_type, service)
        try:
            if not client.wait_for_service(timeout_sec=timeout):
                raise ServiceUnavailable(f"service {service} is not available")
            deadline = time.monotonic() + timeout
            while probe is not None:
                answer = _answer(client, probe, PROBE_WAIT_S)
                if answer is not None and probe is request:
                    return answer
                if answer is not None:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"service {service} did not answer in {timeout} s")
            response = _answer(client, request, timeout)
            if response is None:
                raise TimeoutError(f"service {service} did not answer in {timeout} s")
            return response
        finally:
            self.node.destroy_client(client)

    def close(self) -> None:
        """Stop the spinner, destroy the node and shut the context down (once; later calls do nothing)."""
        if self._closed:
            return
        self._closed = True
        try:
            self.executor.shutdown(timeout_sec=2.0)
        except Exception:  # noqa: BLE001 - a shutdown race must not hide the caller's own error
            pass
        try:
            self.node.destroy_node()
        finally:
            rclpy.try_shutdown(context=self.context)
        self._spinner.join(timeout=2.0)

    def __enter__(self) -> HelperNode:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class MatcherClient(HelperNode):
    """Frames in, outputs collected, parameters got and set: a running matcher seen from a test or tool.

    Args:
        node: the matcher's node name (with namespace, e.g. ``/front/matcher_node``).
        namespace: where its relative topics live (``""`` = root).
        qos: the profile to publish with (match the matcher's ``input_qos``).
        compressed: publish ``image`` as ``CompressedImage`` (PNG).
        name: this helper's own node name.
        image_topic, info_topic: where to publish the camera (relative to ``namespace`` unless absolute),
            for a matcher whose inputs are remapped.
        input_mode: the matcher's (``rgbd`` adds a ``depth`` publisher, ``stereo`` ``right/image`` and
            ``right/camera_info``; :meth:`wait_for_matcher` waits for those too).
    """

    def __init__(self, node: str = "matcher_node", namespace: str = "", qos: str = "reliable",
                 compressed: bool = False, name: str = "fm_client", image_topic: str = "image",
                 info_topic: str = "camera_info", input_mode: str = "mono") -> None:
        super().__init__(name, namespace)
        self.target = node if node.startswith("/") else f"{namespace.rstrip('/')}/{node}"
        self.matches: dict[int, PointCloud2] = {}
        self.poses: dict[int, PoseWithCovarianceStamped] = {}
        self.odometry: dict[int, Odometry] = {}
        self.keyframes: list[PoseStamped] = []
        self.landmarks: list[PointCloud2] = []
        self.debug_images: list[Image] = []
        self.diagnostics: list[DiagnosticStatus] = []
        self.arrival: dict[int, float] = {}  # matches stamp -> time.monotonic() on arrival
        self.compressed = compressed
        n = self.node
        self.pub_image = n.create_publisher(CompressedImage if compressed else Image, image_topic, input_qos(qos))
        self.pub_info = n.create_publisher(CameraInfo, info_topic, input_qos(qos))
        image_type = CompressedImage if compressed else Image
        self.partners = {
            "mono": {},
            "rgbd": {"depth": n.create_publisher(image_type, "depth", input_qos(qos))} if input_mode == "rgbd" else {},
            "stereo": {"right": n.create_publisher(image_type, "right/image", input_qos(qos)),
                       "right_info": n.create_publisher(CameraInfo, "right/camera_info", input_qos(qos))}
            if input_mode == "stereo" else {},
        }[input_mode]
        self._subs = [
            n.create_subscription(PointCloud2, "matches", self._keep(self.matches, True), output_qos(100)),
            n.create_subscription(PoseWithCovarianceStamped, "relative_pose", self._keep(self.poses), output_qos(100)),
            n.create_subscription(Odometry, "odometry", self._keep(self.odometry), output_qos(100)),
            n.create_subscription(PoseStamped, "keyframe", self._append(self.keyframes), latched_qos(100)),
            n.create_subscription(PointCloud2, "landmarks", self._append(self.landmarks), latched_qos(100)),
            n.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, output_qos(100)),
        ]
        self._debug_sub = None

    # -- recording ------------------------------------------------------------------------------------
    def _keep(self, store: dict, track_arrival: bool = False) -> Callable:
        def callback(msg: Any) -> None:
            stamp = stamp_to_ns(msg.header.stamp)
            with self._cond:
                store[stamp] = msg
                if track_arrival:
                    self.arrival[stamp] = time.monotonic()
                self._cond.notify_all()
        return callback

    def _append(self, store: list) -> Callable:
        def callback(msg: Any) -> None:
            with self._cond:
                store.append(msg)
                self._cond.notify_all()
        return callback

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        prefix = self.target.lstrip("/") + ":"  # the matcher names its status "<namespace/name>: matcher"
        with self._cond:
            self.diagnostics.extend(s for s in msg.status if s.name.startswith(prefix))
            self._cond.notify_all()

    # -- discovery ------------------------------------------------------------------------------------
    def wait_for_matcher(self, timeout: float = 30.0) -> bool:
        """True once the matcher's subscriptions, outputs and parameter services are all connected, seen
        from both sides.

        Our publishers seeing the matcher's subscriptions is not enough: the matcher's (volatile) readers
        may match our writers a moment later and would silently miss what we publish before that (e.g. the
        first camera_info, never re-sent). So this ends with a parameter service round trip: the matcher
        can only answer once it has discovered the service client, which we created after the publishers,
        and discovery announcements arrive in order.
        """
        deadline = time.monotonic() + timeout
        client = self.node.create_client(SetParameters, f"{self.target}/set_parameters")
        try:
            while time.monotonic() < deadline:
                publishers = [self.pub_image, self.pub_info, *self.partners.values()]
                if (all(pub.get_subscription_count() > 0 for pub in publishers)
                        and self._subs[0].get_publisher_count() > 0 and client.service_is_ready()):
                    break
                time.sleep(0.05)
            else:
                return False
        finally:
            self.node.destroy_client(client)
        while time.monotonic() < deadline:
            try:
                self._call(GetParameters, "get_parameters", GetParameters.Request(names=["backend"]),
                           min(2.0, max(0.1, deadline - time.monotonic())))
                return True
            except TimeoutError:
                continue
        return False

    def subscribe_debug_image(self, timeout: float = 10.0) -> bool:
        """Start receiving ``debug_image`` (the matcher draws it only while someone listens)."""
        if self._debug_sub is None:
            self._debug_sub = self.node.create_subscription(
                Image, "debug_image", self._append(self.debug_images), output_qos(10))
        deadline = time.monotonic() + timeout
        while self._debug_sub.get_publisher_count() == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        return self._debug_sub.get_publisher_count() > 0

    # -- frames ---------------------------------------------------------------------------------------
    def send(self, pixels: np.ndarray, encoding: str, stamp_ns: int, camera: CameraModel | None,
             frame_id: str = "camera") -> None:
        """Publish ``camera_info`` (unless ``camera`` is None) and then the image, both stamped ``stamp_ns``."""
        if camera is not None:
            self.pub_info.publish(cv.model_to_camera_info(camera, stamp_ns, frame_id))
        if self.compressed:
            rgb = pixels if encoding in ("rgb8", "mono8") else to_matcher_image(pixels, encoding)
            self.pub_image.publish(cv.numpy_to_compressed(rgb, "png", stamp_ns, frame_id))
        else:
            self.pub_image.publish(cv.numpy_to_image(pixels, encoding, stamp_ns, frame_id))

    def send_depth(self, depth: np.ndarray, encoding: str, stamp_ns: int, frame_id: str = "camera") -> None:
        """Publish a depth image (``16UC1`` units or ``32FC1`` metres) on ``depth`` (rgbd clients)."""
        self.partners["depth"].publish(cv.numpy_to_image(depth, encoding, stamp_ns, frame_id))

    def send_right(self, pixels: np.ndarray, encoding: str, stamp_ns: int, camera: CameraModel | None,
                   baseline_m: float, frame_id: str = "camera_right") -> None:
        """Publish ``right/camera_info`` (rectified: ``P[3] = -fx * baseline``; unless ``camera`` is None) and the
        right image on ``right/image`` (stereo clients)."""
        if camera is not None:
            self.partners["right_info"].publish(
                cv.model_to_camera_info(camera, stamp_ns, frame_id, tx=-camera.fx * baseline_m))
        self.partners["right"].publish(cv.numpy_to_image(pixels, encoding, stamp_ns, frame_id))

    def prime_camera_info(self, camera: CameraModel, frame_id: str = "camera", timeout: float = 30.0) -> None:
        """Publish ``camera_info`` until the matcher's diagnostics count one (``RuntimeError`` after ``timeout``).

        A DDS reader can match a new writer a moment after the writer matched it, and a volatile reader never
        gets what was published before that; a real driver sends camera_info with every frame, a test or tool
        that sends the first one once primes it like this, so its first frame is independent of that race."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.pub_info.publish(cv.model_to_camera_info(camera, 0, frame_id))
            diag = self.latest_diagnostics(timeout=2.0)
            if diag is not None and int(diag.get("camera_info_received", 0)) > 0:
                return
        raise RuntimeError(f"{self.target} counted no camera_info within {timeout} s")

    def wait_result(self, stamp_ns: int, timeout: float = 30.0) -> PointCloud2 | None:
        """The ``matches`` message of the frame stamped ``stamp_ns``, or None on timeout."""
        if not self.wait_until(lambda: stamp_ns in self.matches, timeout):
            return None
        # relative_pose and odometry of the same frame are published right after matches, on their own
        # topics: a loaded machine may deliver them later. A frame with inliers has a pose to wait for.
        # The keyframe announcement, sent first, travels on its own topic too.
        cloud = self.matches[stamp_ns]
        pts = cloud_to_array(cloud) if cloud.width > 0 else None
        with_pose = pts is not None and bool((pts["inlier"] == 1.0).any())
        self.wait_until(lambda: stamp_ns in self.poses and stamp_ns in self.odometry, 5.0 if with_pose else 0.2)
        if pts is not None:
            kf = matches_keyframe_stamp(pts)
            self.wait_until(lambda: any(stamp_to_ns(k.header.stamp) == kf for k in list(self.keyframes)), 5.0)
        return cloud

    def latest_diagnostics(self, timeout: float = 5.0, after: float | None = None) -> dict[str, str] | None:
        """The values of the next ``/diagnostics`` status of the matcher (received after now)."""
        count = len(self.diagnostics)
        if not self.wait_until(lambda: len(self.diagnostics) > count, timeout):
            return None
        return {kv.key: kv.value for kv in self.diagnostics[-1].values}

    # -- parameters (the ros2 param stand-in) ------------------------------------------------------
    def _call(self, srv_type: Any, name: str, request: Any, timeout: float, repeat: bool = False) -> Any:
        """Call the matcher's service ``<target>/<name>`` (see :meth:`HelperNode.call`)."""
        return self.call(srv_type, f"{self.target}/{name}", request, timeout, repeat=repeat)

    def set_parameters(self, values: Mapping[str, Any], timeout: float = 10.0) -> list[SetParametersResult]:
        """``/<node>/set_parameters``: each parameter is its own change (ROS semantics)."""
        request = SetParameters.Request(
            parameters=[Parameter(k, value=v).to_parameter_msg() for k, v in values.items()])
        return list(self._call(SetParameters, "set_parameters", request, timeout).results)

    def set_parameters_atomically(self, values: Mapping[str, Any], timeout: float = 10.0) -> SetParametersResult:
        """``/<node>/set_parameters_atomically``: all or nothing."""
        request = SetParametersAtomically.Request(
            parameters=[Parameter(k, value=v).to_parameter_msg() for k, v in values.items()])
        return self._call(SetParametersAtomically, "set_parameters_atomically", request, timeout).result

    def get_parameters(self, names: Iterable[str], timeout: float = 10.0) -> dict[str, Any]:
        names = list(names)
        response = self._call(GetParameters, "get_parameters", GetParameters.Request(names=names), timeout, repeat=True)
        return {n: parameter_value_to_python(v) for n, v in zip(names, response.values)}

    def describe_parameters(self, names: Iterable[str], timeout: float = 10.0) -> dict[str, Any]:
        names = list(names)
        response = self._call(DescribeParameters, "describe_parameters",
                              DescribeParameters.Request(names=names), timeout, repeat=True)
        return {d.name: d for d in response.descriptors}

    def reset(self, timeout: float = 10.0) -> Trigger.Response:
        return self._call(Trigger, "reset", Trigger.Request(), timeout)

    # -- lifecycle (the ros2 lifecycle stand-in) ----------------------------------------------------
    def lifecycle_state(self, node: str | None = None, timeout: float = 20.0) -> str:
        """The label of the lifecycle state of ``node`` (default: the matcher), e.g. ``"active"``."""
        target = node if node is not None else self.target
        return self.call(GetState, f"/{target.lstrip('/')}/get_state", GetState.Request(),
                         timeout, repeat=True).current_state.label

    def change_state(self, transition_id: int, node: str | None = None, timeout: float = 60.0) -> bool:
        """Ask ``node`` (default: the matcher) for a lifecycle transition (``lifecycle_msgs/Transition``
        id); whether it succeeded."""
        target = node if node is not None else self.target
        request = ChangeState.Request()
        request.transition.id = transition_id
        probe = ChangeState.Request()
        probe.transition.label = NO_TRANSITION  # a transition is not sent twice: its answer must come back
        return self.call(ChangeState, f"/{target.lstrip('/')}/change_state", request, timeout, probe).success
