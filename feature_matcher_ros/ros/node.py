"""``matcher_node``: matches every camera frame against the current keyframe and publishes the result.

Threads: the executor thread runs the subscriptions, the parameter services and the diagnostics timer;
one worker thread runs the frontend. The image callback checks and converts the frame, pairs it with the
latest ``camera_info`` and leaves it in a one-slot :class:`~.mailbox.Mailbox` (a frame still waiting is
dropped and counted), so the node always works on the newest frame and never queues.

Topics (relative names, remap as usual):

==================  ======================================  =========================================
``image``           sensor_msgs/Image (or CompressedImage)  input, QoS from ``input_qos``
``camera_info``     sensor_msgs/CameraInfo                  input, the latest one is used
``matches``         sensor_msgs/PointCloud2                 header = the image's header; per point
                                                            x0 y0 x1 y1 score inlier (float32) and the
                                                            keyframe stamp kf_sec kf_nanosec (uint32)
``relative_pose``   geometry_msgs/PoseWithCovarianceStamped current camera in the keyframe camera's
                                                            frame; stamp = image stamp, frame_id =
                                                            ``<camera_frame>@<keyframe stamp in ns>``
``odometry``        nav_msgs/Odometry                       chained keyframe poses in ``odom_frame``
``keyframe``        geometry_msgs/PoseStamped               each keyframe change; stamp = keyframe stamp
``debug_image``     sensor_msgs/Image                       drawn matches, only while subscribed
``/diagnostics``    diagnostic_msgs/DiagnosticArray         rates, latency, drops, rejects by reason
==================  ======================================  =========================================

Services: ``~/reset`` (std_srvs/Trigger) forgets keyframes, odometry and the stamp order. A stamp that jumps
back by more than ``reset_on_time_jump_s`` on any input (a bag played again, a restarted ``/clock``) does the
same, counted as ``time_jumps``.

Every entry point (subscriptions, the diagnostics timer, parameter callbacks, ``~/reset``, lifecycle
transitions) runs behind :class:`~.guard.EntryGuard`: a bug there is counted (``internal_error.<where>``),
logged with its traceback, and the node goes on.

Structure: :class:`MatcherSteps` holds the parts as steps with their inverses (load the matcher, create the
outputs: :class:`~.outputs.Outputs`, create the inputs); :class:`MatcherNode` runs them at construction, the
lifecycle node (:mod:`.lifecycle_node`) per transition.
"""

from __future__ import annotations

import gc
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import cv2
import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseWithCovarianceStamped
from rcl_interfaces.msg import SetParametersResult
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header
from std_srvs.srv import Trigger

from ..backends import RUNTIMES, backend_class, backend_names, create_backend
from ..frontend import FrameResult, Frontend
from ..messages import CameraInfoCache, InputError, decode_image, stamp_to_ns
from ..params import ParamSpec
from ..settings import FRONTEND_PARAMS, INPUT_MODES, PRECISION_PARAM, split_settings
from ..transforms import TransformUnavailable
from .diagnostics import Stats
from .guard import EntryGuard, faults_from_env
from .mailbox import Mailbox
from .metric_inputs import MetricInput, PairedInputs
from .outputs import Outputs
from .parameters import LiveParameters, declare
from .qos import INPUT_QOS_CHOICES, input_qos
from .robot import RobotOdometry

NODE_NAME = "matcher_node"

# The node's own parameters (the frontend's and the backend's come from Frontend.params()).
NODE_PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec("backend", "sift", "Matcher backend.", choices=backend_names(), read_only=True),
    ParamSpec("device", "auto", "cpu, cuda, cuda:N or auto (cuda when torch sees a GPU).", read_only=True),
    ParamSpec("weights", "", "Checkpoint of a learned backend: required for eloftr (eloftr_outdoor.ckpt); '' = the "
              "shipped sptd2_fast_distill.pt for sptd2; unused by sift/orb. With runtime onnxruntime: the fm-export "
              "folder.", read_only=True),
    ParamSpec("runtime", "torch", "torch, or onnxruntime to run an fm-export folder (eloftr, sptd2) given as "
              "weights.", choices=RUNTIMES, read_only=True),
    ParamSpec("input_qos", "sensor_data", "QoS of the image and camera_info subscriptions.",
              choices=INPUT_QOS_CHOICES, read_only=True),
    ParamSpec("compressed_input", False, "Subscribe to 'image' as sensor_msgs/CompressedImage.", read_only=True),
    ParamSpec("odom_frame", "odom", "frame_id of odometry and keyframe poses: where base_frame (or the camera) was "
              "at the first keyframe.", read_only=True),
    ParamSpec("base_frame", "", "Robot frame the odometry is about (REP 105 child, e.g. base_link; the camera's "
              "mounting comes from TF); '' = the camera frame (no TF needed, none broadcast).", read_only=True),
    ParamSpec("publish_tf", True, "Broadcast odom_frame -> base_frame on /tf at each frame's stamp (off when an "
              "EKF owns that transform; never with base_frame '').", read_only=True),
    ParamSpec("tf.timeout_s", 0.1, "How long a frame waits for the camera's mounting at its stamp before it is "
              "rejected (no_transform).", min=0.0, max=10.0, read_only=True),
    ParamSpec("odometry.publish_when_lost", False, "While tracking is lost, publish the last pose with variance "
              "9999 (rtabmap's convention) instead of no odometry."),
    ParamSpec("camera_frame", "", "Camera frame name for outputs ('' = the image header's frame_id).",
              read_only=True),
    ParamSpec("diagnostics_period_s", 1.0, "Seconds between /diagnostics reports.", min=0.1, max=60.0,
              read_only=True),
    ParamSpec("input_mode", "mono", "mono (image), rgbd (image + registered depth) or stereo (rectified left image + "
              "right/image): rgbd and stereo give metric poses.", choices=INPUT_MODES, read_only=True),
    ParamSpec("sync.queue_size", 10, "rgbd/stereo: messages kept per input while pairing by stamp.", min=1, max=1000,
              read_only=True),
    ParamSpec("sync.slop_s", 0.02, "rgbd/stereo: largest stamp difference paired (seconds; 0 = equal stamps).",
              min=0.0, max=10.0, read_only=True),
    ParamSpec("depth.scale", 0.001, "rgbd: metres per unit of 16-bit depth (0.001 = millimetres, REP 118; 32FC1 is "
              "metres).", min=1e-9, max=1e3),
    ParamSpec("num_threads", 0, "CPU threads for torch and OpenCV (0 = all cores).", min=0, max=1024),
    ParamSpec("debug_image.max_lines", 200, "Matches drawn on debug_image (best first).", min=0, max=10000),
    ParamSpec("reset_on_time_jump_s", 1.0, "A stamp on any input more than this many seconds before the previous "
              "one on that input (a bag played again, /clock restarted) resets keyframes, odometry and pairing as "
              "~/reset does (0 = off: such frames are rejected as stamp_backwards).", min=0.0, max=1e6),
)
LOG_PERIOD_S = 5.0
# Learned backends without shipped weights, and where their checkpoint comes from.
WEIGHTS_HINTS = {
    "eloftr": "download eloftr_outdoor.ckpt from the Efficient LoFTR release "
              "(https://github.com/zju3dv/EfficientLoFTR, the README's model link) and pass "
              "-p weights:=/path/eloftr_outdoor.ckpt (or set weights: in the params file)",
}
# Backends that take no weights at all.
NO_WEIGHTS = ("sift", "orb")
# How long an image that arrived before any camera_info waits for one (checked at each diagnostics report).
CAMERA_INFO_WAIT_S = 0.5
# How long shutdown (and deactivate) waits for the frame in hand before abandoning it: a quarter of the 2 s a
# node has to end in after SIGINT/SIGTERM, the rest left for tear-down on a loaded machine (test_shutdown.py)
FRAME_IN_HAND_S = 0.5


def backend_weights(backend: str, weights: str, runtime: str = "torch") -> str | None:
    """The ``weights`` argument of ``create_backend`` for the ``weights`` parameter: None for the shipped
    default (or for backends without weights), else the expanded path. Raises ``ValueError`` saying where to
    get the file when a backend without shipped weights has none, or when the file does not exist. With
    ``runtime`` onnxruntime: the export (a folder, or an .onnx file for sptd2), always required."""
    path = os.path.expanduser(weights.strip())
    if backend in NO_WEIGHTS:
        return None
    if runtime != "torch":
        if not path or not os.path.exists(path):
            raise ValueError(f"runtime {runtime} needs weights = the folder fm-export wrote for backend {backend} "
                             f"(fm-export --backend {backend} ... --out DIR); got {path!r}")
        return path
    if not path:
        if backend in WEIGHTS_HINTS:
            raise ValueError(f"backend {backend} needs weights and none were given: {WEIGHTS_HINTS[backend]}")
        return None
    if not os.path.isfile(path):
        hint = WEIGHTS_HINTS.get(backend, "leave weights empty for the shipped default")
        raise ValueError(f"weights file {path!r} for backend {backend} not found: {hint}")
    return path


class _InputFrame:
    """One accepted input frame on its way to the worker (with its depth or right image in rgbd/stereo)."""

    __slots__ = ("pixels", "header", "stamp_ns", "camera", "arrived", "metric")

    def __init__(self, pixels: np.ndarray, header: Header, stamp_ns: int, camera: Any, arrived: float,
                 metric: MetricInput | None = None) -> None:
        self.pixels, self.header, self.stamp_ns, self.camera, self.arrived = pixels, header, stamp_ns, camera, arrived
        self.metric = metric or MetricInput()


class MatcherSteps:
    """The matcher node's parts as steps, each with its inverse, for a :class:`rclpy.node.Node` subclass.

    ==================  ===============================================================  ===================
    step                makes                                                            undone by
    ==================  ===============================================================  ===================
    ``load_matcher``    the parameters, backend (weights on ``device``) and frontend,    ``release_matcher``
                        the live-parameter callbacks, ``~/reset``
    ``create_outputs``  the output publishers and the worker thread                      ``destroy_outputs``
    ``create_inputs``   the ``image``/``camera_info`` subscriptions, the diagnostics     ``destroy_inputs``
                        timer
    ==================  ===============================================================  ===================

    :class:`MatcherNode` runs the steps in this order when it is built; the lifecycle node runs them per
    transition. Each inverse may be called when its step never ran or failed half-way. The node's constructor
    calls :meth:`init_state` first: every attribute, as before any step, is set there.
    """

    def init_state(self) -> None:
        """Every attribute of the matcher as it is before any step ran; a bad ``FM_TEST_FAULTS`` raises here."""
        self.values: dict[str, Any] = {}
        self.backend: Any = None
        self.frontend: Frontend | None = None
        self._live_parameters: LiveParameters | None = None
        self._pre_set: Callable | None = None  # the guarded parameter callbacks, as registered
        self._on_set: Callable | None = None
        self._reset_service: Any = None
        self.mailbox = Mailbox()
        self._worker: threading.Thread | None = None
        self.outputs: Outputs | None = None
        self._input_subscriptions: tuple = ()
        self._diagnostics_timer: Any = None
        self._paired: PairedInputs | None = None
        self.robot: RobotOdometry | None = None
        self._set_pose_sub: Any = None
        # counts internal errors for the node's whole life (not per stream)
        self.guard = EntryGuard(self.get_logger().error, self._on_internal_error, faults_from_env())
        self._new_stream()

    def _on_internal_error(self, where: str, exc: BaseException) -> None:
        stats = getattr(self, "stats", None)
        if stats is not None:
            stats.last_error = f"internal error in {where}: {type(exc).__name__}: {exc}"

    # -- the matcher ----------------------------------------------------------------------------------
    def load_matcher(self) -> None:
        """Declare the parameters (ones declared before keep their values), load the backend, build the
        frontend, start taking live parameter changes and serve ``~/reset``."""
        self._new_stream()
        self.values = declare(self, NODE_PARAMS)
        self.robot = RobotOdometry(self.values)
        name = self.values["backend"]
        live = declare(self, (*FRONTEND_PARAMS, PRECISION_PARAM, *backend_class(name).PARAMS))
        _, frontend_values, backend_values = split_settings(live, name)
        self.backend = self._create_backend(name, frontend_values.pop("precision"), backend_values)
        self._apply_num_threads(self.values["num_threads"])
        self.frontend = Frontend(self.backend, frontend_values, self.values["input_mode"])
        self._adopt_backend_values()
        self._warn_unknown_overrides()
        self._live_parameters = LiveParameters(
            [s for s in NODE_PARAMS if not s.read_only],
            self.values,
            self.frontend.update,
            [s.name for s in self.frontend.params()],
            self.lock,
            self._on_node_params,
        )
        self._pre_set = self.guard("parameters_pre_set", self._add_derived, lambda exc, params: params)
        self._on_set = self.guard("parameters", self._live_parameters, _refuse_change)
        self.add_pre_set_parameters_callback(self._pre_set)
        self.add_on_set_parameters_callback(self._on_set)
        self._reset_service = self.create_service(Trigger, "~/reset", self.guard("reset", self._on_reset, _failed_call))

    def release_matcher(self) -> None:
        """Undo :meth:`load_matcher`: no ``~/reset``, no live changes, the model released (and the CUDA
        cache). The parameters stay declared, with their values."""
        if self._reset_service is not None:
            self.destroy_service(self._reset_service)
            self._reset_service = None
        if self._live_parameters is not None:
            self.remove_on_set_parameters_callback(self._on_set)
            self.remove_pre_set_parameters_callback(self._pre_set)
            self._live_parameters = None
        device = str(getattr(self.backend, "device", "cpu"))
        self.frontend = self.backend = None
        gc.collect()
        if device.startswith("cuda") and "torch" in sys.modules:
            sys.modules["torch"].cuda.empty_cache()

    def _new_stream(self) -> None:
        """The state one camera stream builds up, empty (at the start and at each configure)."""
        self.lock = threading.Lock()  # held while a frame is processed or parameters are applied
        self.stats = Stats()
        self.cameras = CameraInfoCache()
        self._last_stamp_ns: int | None = None
        self._frame_id: str | None = None  # every accepted image must come from this camera frame
        self._log_times: dict[str, float] = {}
        self._parked: tuple[Any, float, Any] | None = None  # (image, arrival, partner) waiting for a camera_info
        self._input_stamps: dict[str, int] = {}  # the latest stamp per input, to see time jump back

    def _create_backend(self, name: str, precision: str, settings: Mapping[str, Any]) -> Any:
        weights = self.values["weights"]
        if name in NO_WEIGHTS and weights:
            self.get_logger().warning(f"backend {name} takes no weights: ignoring weights {weights!r}")
        runtime = self.values["runtime"]
        return create_backend(name, device=self.values["device"], precision=precision,
                              weights=backend_weights(name, weights, runtime), runtime=runtime, **settings)

    def _adopt_backend_values(self) -> None:
        """Make the ROS parameters show what the backend really uses when it adjusted a start-up value
        (eloftr: ``eloftr.mode: opt`` with the full-mode default threshold runs with opt's default)."""
        values = self.frontend.values()
        params = [Parameter(k, value=v) for k, v in values.items()
                  if self.has_parameter(k) and self.get_parameter(k).value != v]
        if params:
            self.set_parameters(params)
            for p in params:
                self.get_logger().info(f"{p.name} is {p.value!r} (set by the backend from the start-up values)")

    def _warn_unknown_overrides(self) -> None:
        overrides = getattr(self, "_parameter_overrides", {}) or {}
        unknown = sorted(name for name in overrides if not self.has_parameter(name))
        if unknown:
            self.get_logger().warning(f"ignoring unknown parameters {unknown} (typo? see config/matcher.yaml)")

    # -- the outputs ----------------------------------------------------------------------------------
    def create_outputs(self, create_publisher: Callable[..., Any] | None = None) -> None:
        """The output publishers, made by ``create_publisher`` (default ``self.create_publisher``; the
        lifecycle node passes ``create_lifecycle_publisher``), and the worker thread that matches and
        publishes."""
        self.outputs = Outputs(create_publisher or self.create_publisher)
        self.robot.create_outputs(self, create_publisher or self.create_publisher)
        self.mailbox = Mailbox()
        self._worker = threading.Thread(target=self._work, args=(self.mailbox,), name="matcher_worker", daemon=True)
        self._worker.start()

    def destroy_outputs(self, destroy_publisher: Callable[[Any], Any] | None = None,
                        timeout: float = FRAME_IN_HAND_S) -> None:
        """Undo :meth:`create_outputs`: stop the worker after the frame in hand, then destroy the publishers
        with ``destroy_publisher`` (the counterpart of the ``create_publisher`` given there). A frame still
        in inference after ``timeout`` s is abandoned (its results are never published): shutdown must not
        wait for a slow backend."""
        if self._worker is not None and not self.mailbox.closed:
            self.mailbox.close()
            self._worker.join(timeout=timeout)
        if self.outputs is not None:
            for pub in (*self.outputs.publishers, *self.robot.output_publishers()):
                (destroy_publisher or self.destroy_publisher)(pub)
            self.outputs = None
            self.robot.destroy_outputs()

    @property
    def busy(self) -> bool:
        """True while the worker thread is still inside a frame (after :meth:`destroy_outputs` timed out)."""
        return self._worker is not None and self._worker.is_alive()

    # -- the inputs -----------------------------------------------------------------------------------
    def create_inputs(self) -> None:
        """The ``image`` and ``camera_info`` subscriptions and the diagnostics timer."""
        qos = input_qos(self.values["input_qos"])
        self._input_subscriptions = (
            self.create_subscription(self.image_type, "image", self.guard("image", self._on_image), qos),
            self.create_subscription(CameraInfo, "camera_info", self.guard("camera_info", self._on_camera_info), qos),
        )
        if self.values["input_mode"] != "mono":
            v = self.values
            self._paired = PairedInputs(self, v["input_mode"], qos, v["sync.queue_size"], v["sync.slop_s"],
                                        v["compressed_input"], self._accept, self._on_unpaired, guard=self.guard,
                                        on_arrival=self._check_time_jump, on_invalid=self._invalid)
        self.robot.create_inputs(self, self.guard)
        self._set_pose_sub = self.create_subscription(PoseWithCovarianceStamped, "~/set_pose",
                                                      self.guard("set_pose", self._on_set_pose), input_qos("reliable"))
        self._diagnostics_timer = self.create_timer(self.values["diagnostics_period_s"],
                                                    self.guard("diagnostics", self._publish_diagnostics))

    def destroy_inputs(self) -> None:
        """Undo :meth:`create_inputs`."""
        for sub in self._input_subscriptions:
            self.destroy_subscription(sub)
        self._input_subscriptions = ()
        if self._paired is not None:
            self._count_cleared(self._paired.destroy(self))
            self._paired = None
        if self._diagnostics_timer is not None:
            self.destroy_timer(self._diagnostics_timer)
            self._diagnostics_timer = None
        if self._set_pose_sub is not None:
            self.destroy_subscription(self._set_pose_sub)
            self._set_pose_sub = None
        if self.robot is not None:
            self.robot.destroy_inputs(self)

    @property
    def image_type(self) -> type:
        return CompressedImage if self.values["compressed_input"] else Image

    def matcher_summary(self) -> str:
        """``backend sift on cpu (fp32)``."""
        d = self.backend.describe()
        return f"backend {d['backend']} on {d['device']} ({d['precision']})"


    # -- inputs (executor thread) ------------------------------------------------------------------
    def _on_camera_info(self, msg: CameraInfo) -> None:
        error = self.cameras.update(msg)
        if error is not None:
            self._invalid("camera_info", error)
        parked, self._parked = self._parked, None
        if parked is not None:  # the image that came before the first camera_info
            self._accept(*parked)

    def _on_image(self, msg: Image | CompressedImage) -> None:
        self.stats.on_input()
        stamp_ns = stamp_to_ns(msg.header.stamp)
        if stamp_ns < 0:  # before 1970: no output could carry it; and it must not pass for a time jump
            self._reject("bad_stamp", f"image stamp {stamp_ns} ns is negative (sec {msg.header.stamp.sec})")
            return
        self._check_time_jump("image", stamp_ns)
        if self._paired is not None:  # rgbd / stereo: on to the worker once its depth or right image is here
            self._paired.add_image(msg, time.monotonic())
        else:
            self._accept(msg, time.monotonic())

    def _on_unpaired(self, which: str, replaced: bool = False) -> None:
        """A message left its pairing queue alone: an image is rejected (``unpaired``, or ``stamp_repeated`` when
        an image with the same stamp replaced it), a depth or right image only counted (``unpaired.<input>``)."""
        if which == "image" and replaced:
            self._reject("stamp_repeated", "an image with the same stamp arrived while it waited for its "
                                           f"{self._paired.partner} image; the newer one is used")
        elif which == "image":
            self._reject("unpaired", f"no {self._paired.partner} image within sync.slop_s "
                                     f"({self.values['sync.slop_s']} s) of an image; is the {self._paired.partner} "
                                     "topic publishing, with stamps close to the image's?")
        else:
            self.stats.on_unpaired(which)

    def _accept(self, msg: Image | CompressedImage, arrived: float, partner: Any = None) -> None:
        """Check, convert and pair one image with the latest camera_info (and its depth or right image),
        then hand it to the worker."""
        try:
            pixels = decode_image(msg)
            height, width = pixels.shape[:2]
            if self.cameras.received == 0 and time.monotonic() - arrived < CAMERA_INFO_WAIT_S:
                # No camera_info ever: the first image often races its camera_info; keep it a moment.
                if self._parked is not None:
                    self._reject("no_camera_info", "no camera_info received yet; images wait for one")
                self._parked = (msg, arrived, partner)
                return
            camera = self.cameras.camera_for(width, height)
            stamp_ns = stamp_to_ns(msg.header.stamp)
            self._check_order(msg.header.frame_id, stamp_ns)
            metric = self._metric_input(partner, (height, width))
        except InputError as err:
            self._reject(err.reason, str(err))
            return
        self._last_stamp_ns = stamp_ns
        self._frame_id = msg.header.frame_id
        if self.mailbox.put(_InputFrame(pixels, msg.header, stamp_ns, metric.camera or camera, arrived, metric)):
            self.stats.on_drop()

    def _check_order(self, frame_id: str, stamp_ns: int) -> None:
        """One camera, stamps strictly increasing; :class:`InputError` otherwise."""
        if self._frame_id is not None and frame_id != self._frame_id:
            raise InputError("frame_id_changed", f"image frame_id {frame_id!r} differs from {self._frame_id!r}; "
                                                 "run one matcher per camera, or call ~/reset when the camera was "
                                                 "renamed")
        if self._last_stamp_ns is not None and stamp_ns <= self._last_stamp_ns:
            reason = "stamp_repeated" if stamp_ns == self._last_stamp_ns else "stamp_backwards"
            raise InputError(reason, f"image stamp {stamp_ns} ns is not after the previous one ({self._last_stamp_ns} "
                                     "ns); call ~/reset after restarting a recording")

    def _metric_input(self, partner: Any, size: tuple[int, int]) -> MetricInput:
        """The depth or right image of an rgbd/stereo frame, decoded (an empty input in mono mode)."""
        if partner is None:
            return MetricInput()
        metric = self._paired.decode(partner, size, self.cameras.message, float(self.values["depth.scale"]))
        if metric.warning:
            self._warn("depth_units", metric.warning)
        return metric

    def _expire_parked(self) -> None:
        parked = self._parked
        if parked is not None and time.monotonic() - parked[1] >= CAMERA_INFO_WAIT_S:
            self._parked = None
            self._accept(*parked)  # now too old to wait: rejected as no_camera_info

    def _warn(self, reason: str, message: str) -> None:
        """A problem with an input that does not stop it: counted (``warning.<reason>``), logged once."""
        if self.stats.on_warning(reason) == 1:
            self.get_logger().warning(f"{message} (logged once; counted as warning.{reason})")

    def _invalid(self, which: str, error: InputError,
                 consequence: str = "images are rejected until a usable one arrives") -> None:
        """An unusable message on input ``which`` (not an image: ``camera_info``, ``set_pose``): counted
        (``invalid.<which>``), logged once per period."""
        count = self.stats.on_invalid(which)
        now = time.monotonic()
        if now - self._log_times.get(f"invalid.{which}", -1e9) >= LOG_PERIOD_S:
            self._log_times[f"invalid.{which}"] = now
            self.get_logger().warning(f"ignored {which} ({error.reason}, {count} so far): {error}; {consequence}")

    def _reject(self, reason: str, message: str) -> None:
        """Count a rejected input and log it, at most once per ``LOG_PERIOD_S`` per reason."""
        self.stats.on_reject(reason)
        now = time.monotonic()
        if now - self._log_times.get(reason, -1e9) >= LOG_PERIOD_S:
            self._log_times[reason] = now
            count = self.stats.rejected[reason]
            self.get_logger().warning(f"dropped input ({reason}, {count} so far): {message}")

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        self._reset_stream()
        response.success, response.message = True, "keyframes, odometry and stamp order reset"
        self.get_logger().info("reset: " + response.message)
        return response

    def _reset_stream(self) -> None:
        """Forget keyframes, odometry, the stamp order, the pairing queues and a frame not yet taken by the
        worker (``~/reset`` and a time jump)."""
        with self.lock:
            self.frontend.reset()
            if self._paired is not None:
                self._count_cleared(self._paired.clear())
            if self._worker is not None and self.mailbox.clear():
                self.stats.on_drop()
            if self._parked is not None:
                self.stats.on_drop()
            self._parked = None
            if self.outputs is not None:
                self.outputs.reset()
            self.robot.reset()
            self._last_stamp_ns = None
            self._frame_id = None
            self._input_stamps.clear()

    def _count_cleared(self, waiting: Mapping[str, int]) -> None:
        """Images taken out of the pairing queue unprocessed count as dropped, partners as unpaired."""
        for which, count in waiting.items():
            if which == "image":
                self.stats.on_drop(count)
            elif count:
                self.stats.on_unpaired(which, count)

    def _check_time_jump(self, which: str, stamp_ns: int) -> None:
        """Reset the stream when ``stamp_ns`` on input ``which`` is more than ``reset_on_time_jump_s`` before
        the latest one seen there (a bag played again, a restarted ``/clock``). Checked where messages enter,
        before pairing: queues full of newer stamps would otherwise turn every later message into an unpaired
        one, and the jump would never reach the stamp-order check."""
        limit_s = float(self.values["reset_on_time_jump_s"])
        latest = self._input_stamps.get(which)
        if latest is None or stamp_ns > latest:
            self._input_stamps[which] = stamp_ns
        elif limit_s > 0 and latest - stamp_ns > limit_s * 1e9:
            self._reset_stream()
            self._input_stamps[which] = stamp_ns
            count = self.stats.on_time_jump()
            self.get_logger().warning(
                f"time jumped back on {which} by {(latest - stamp_ns) / 1e9:.3f} s (more than reset_on_time_jump_s "
                f"= {limit_s} s): keyframes, odometry and pairing reset ({count} time jumps so far)")

    # -- parameters ---------------------------------------------------------------------------------
    def _on_node_params(self, changes: Mapping[str, Any]) -> None:
        """Accepted node-level changes (called with the lock held, so between frames)."""
        if "num_threads" in changes:
            self._apply_num_threads(changes["num_threads"])

    def _add_derived(self, params: list[Parameter]) -> list[Parameter]:
        """Pre-set parameters callback: ``params`` plus the backend parameters the backend derives from them
        (eloftr: a mode change alone moves the threshold to the new mode's default), so that the derived
        value is set in the same atomic batch, or not at all."""
        asked = {p.name: p.value for p in params}
        own = {name: value for name, value in asked.items() if name in self.backend.settings}
        if not own:
            return params
        try:
            effective = self.backend.effective_settings(own)
        except Exception:  # noqa: BLE001 - a bad value: the on-set callback rejects it, with the reason
            return params
        return params + [Parameter(name, value=value) for name, value in effective.items()
                         if name not in asked and value != self.get_parameter(name).value]

    @staticmethod
    def _apply_num_threads(n: int) -> None:
        n = n or os.cpu_count() or 1
        cv2.setNumThreads(n)
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(n)

    # -- the worker ---------------------------------------------------------------------------------
    def _work(self, mailbox: Mailbox) -> None:
        while not mailbox.closed:
            frame = mailbox.take(timeout=0.5)
            if frame is None:
                continue
            try:
                mount = self._mount(frame)
                if mount is None:
                    continue
                with self.lock:
                    started = time.perf_counter()
                    result = self.frontend.process(frame.pixels, frame.stamp_ns, frame.camera,
                                                   frame.metric.depth, frame.metric.stereo)
                    process_ms = 1e3 * (time.perf_counter() - started)
                if mailbox.closed:  # shutting down, or left behind by a restart: its outputs may be gone
                    return
                self._publish(frame, result, mount)
                self.stats.on_output(
                    1e3 * (time.monotonic() - frame.arrived), process_ms, result.status, result.reason,
                    result.new_keyframe,
                )
                self.stats.last_error = ""
            except Exception as exc:  # noqa: BLE001 - one bad frame must not stop the node
                self.stats.last_error = f"processing failed: {type(exc).__name__}: {exc}"
                self._reject("processing_error", self.stats.last_error)

    # -- outputs (worker thread) --------------------------------------------------------------------
    def _camera_frame(self, header: Header) -> str:
        return self.values["camera_frame"] or header.frame_id or "camera"

    def _mount(self, frame: _InputFrame) -> np.ndarray | None:
        """The camera's mounting on ``base_frame`` at the frame's stamp (identity without one); None, after
        counting the frame as ``no_transform``, when TF does not know it within ``tf.timeout_s``."""
        camera = self._camera_frame(frame.header)
        try:
            return self.robot.mount(camera, frame.stamp_ns)
        except TransformUnavailable as exc:
            self._reject("no_transform", f"no transform {self.values['base_frame']} -> {camera} at {frame.stamp_ns} ns "
                                         f"within tf.timeout_s ({exc}); publish the camera's mounting on /tf_static")
            return None

    def _publish(self, frame: _InputFrame, result: FrameResult, mount: np.ndarray) -> None:
        camera_frame = self._camera_frame(frame.header)
        with self.lock:  # the odometry's state changes with ~/set_pose and ~/reset too
            odom = self.robot.step(result, mount, camera_frame)
        cached = [k.stamp_ns for k in self.frontend.cache]
        if self.outputs.publish(frame, result, camera_frame, odom, cached, int(self.values["debug_image.max_lines"])):
            self.stats.debug_images += 1
        self.robot.broadcast(odom, result.stamp_ns)

    def _on_set_pose(self, msg: PoseWithCovarianceStamped) -> None:
        """``~/set_pose``: the odometry continues from this pose of ``base_frame`` (or the camera) in ``odom_frame``."""
        with self.lock:
            problem = self.robot.set_pose(msg)
        if problem is not None:
            self._invalid("set_pose", InputError("bad_set_pose", problem), "the odometry goes on unchanged")
        else:
            self.get_logger().info("set_pose: odometry continues from the given pose")

    # -- diagnostics (executor thread) --------------------------------------------------------------
    def _publish_diagnostics(self) -> None:
        self._expire_parked()
        d = self.backend.describe()
        info = {
            "backend": d.get("backend", ""),
            "device": d.get("device", ""),
            "precision": d.get("precision", ""),
            "input_qos": self.values["input_qos"],
            "input_mode": self.values["input_mode"],
            "camera_info_received": self.cameras.received,
            # received = processed + dropped + rejected_total + images_waiting once the worker is idle
            "images_waiting": (self._paired.images_waiting if self._paired is not None else 0)
                              + int(self._parked is not None),
            "keyframe_stamp_ns": "" if self.outputs.announced_keyframe is None else self.outputs.announced_keyframe,
            "keyframe_cache_entries": len(self.frontend.cache),
            "keyframe_cache_mb": f"{self.frontend.cache_nbytes / 2**20:.1f}",
            "scratch_mb": f"{self.backend.scratch_nbytes / 2**20:.1f}",
            "runtime": self.values["runtime"],
            **self.backend.counters,  # eloftr: truncated_frames, candidates, cuda_graphs
        }
        if d.get("weights"):
            info["weights"] = d["weights"]
        if self.values["input_mode"] == "stereo":  # the rig's self-calibration (stereo.self_calibrate)
            info["stereo_disparity_offset_px"] = f"{self.frontend.disparity_offset_px:.3f}"
            info["stereo_offset_fits"] = self.frontend.disparity_offset_fits
        info.update({f"internal_error.{k}": v for k, v in sorted(self.guard.counts.items())})
        name = f"{self.get_fully_qualified_name().lstrip('/')}: matcher"
        status = self.stats.status(name, str(d.get("device", "")), info)
        msg = DiagnosticArray()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.status = [status]
        self.outputs.diagnostics.publish(msg)


def _refuse_change(exc: BaseException, params: Any) -> SetParametersResult:
    """The answer to a parameter change whose callback failed: refused, nothing applied."""
    return SetParametersResult(successful=False, reason=f"internal error, nothing applied: {type(exc).__name__}: {exc}")


def _failed_call(exc: BaseException, request: Any, response: Any) -> Any:
    """The answer of a service whose handler failed."""
    response.success, response.message = False, f"internal error: {type(exc).__name__}: {exc}"
    return response


class MatcherNode(MatcherSteps, Node):
    """The matcher node: :class:`MatcherSteps` run at once. Raises (ValueError, RuntimeError, OSError, ...)
    with a clear message when it cannot start: unknown backend, missing weights, CUDA asked for without
    CUDA, a parameter out of range."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        try:
            self.init_state()
            self.load_matcher()
            self.create_outputs()
            self.create_inputs()
        except BaseException:
            self.close()
            self.destroy_node()
            raise
        self.get_logger().info(f"ready: {self.matcher_summary()}, image type {self.image_type.__name__}, "
                               f"input QoS {self.values['input_qos']}")

    def close(self) -> None:
        """Stop the inputs and the worker (call before ``destroy_node``)."""
        self.destroy_inputs()
        self.destroy_outputs()
