"""``fm-stress --chaos``: the node fed disorder over real DDS, in each input mode, and checked from outside.

For ``mono`` (the bundled TUM desk frames), ``rgbd`` (TUM fr3 cabinet with depth) and ``stereo`` (KITTI 06
left and right; both from ``../shared/data``), a lifecycle matcher node is started active, and episodes of
disorder are sent, each followed by good frames that must be answered:

==================  ===============================================================  =========================
episode             what arrives                                                     counted as (any of)
==================  ===============================================================  =========================
reorder             four frames in the order 3 1 4 2                                 rejected.stamp_backwards
duplicate           one frame twice (same stamp)                                     rejected.stamp_repeated,
                                                                                     unpaired.<partner>
gap                 stamps 5 s ahead (frames dropped upstream)                       (answered)
burst               ten frames at once                                               (answered; drops counted)
bag_replayed        stamps 30 s back (a bag played again)                            time_jumps
clock_restart       stamps back near 0 (``use_sim_time``, ``/clock`` restarted)      time_jumps
bad_stamp           a stamp before 1970 (negative seconds)                           rejected.bad_stamp
resolution          camera_info at half size with full-size images, then half-size  rejected.size_mismatch
                    frames, then full size again
camera_model        camera_info with an unsupported distortion model                 rejected.bad_camera_info
encoding            an image in an unknown encoding                                  rejected.unknown_encoding
frame_id            an image from another camera frame                               rejected.frame_id_changed
partner_missing     images without depth / right image (more than the queue holds)  rejected.unpaired
partner_late        the partner after newer ones filled its queue                    unpaired.<partner>
partner_early       the partner published before its image                           (answered)
partner_jitter      the partner 15 ms off the image (within ``sync.slop_s``)         (answered)
partner_size        the partner at half size                                         rejected.depth_size_mism
                                                                                     atch / stereo_mismatch
partner_encoding    the partner in an unknown encoding                               rejected.depth_encoding /
                                                                                     unknown_encoding
lifecycle           deactivate, frames, activate                                     (answered)
==================  ===============================================================  =========================

Meanwhile a thread changes live parameters atomically (valid batches, and batches with one bad value that
must change nothing). At the end the node must be alive, without ``internal_error.*``, every image it
received accounted for (``received = processed + dropped + rejected_total + images_waiting``), its
parameters those of the last accepted batch. The table has the frames, rejects, time jumps, the latency of
the good frames (publication to ``matches``, p50/p99) and the node's RSS after warm-up and at the end.
``SECONDS`` is how long each mode goes on (whole rounds of episodes; 0 = one round).
"""

from __future__ import annotations

import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..camera import CameraModel
from ..datasets import read_sequence
from ..resources import config_file, data_dir, shared_dir
from ..ros.process import LIFECYCLE_MODULE, NodeProcess

NS = 1_000_000_000
STEP_NS = NS // 10  # between consecutive frames: five times the default sync.slop_s
START_NS = 1_700_000_000 * NS  # the first stamp; each round of episodes starts 1000 s after the previous
MODES = ("mono", "rgbd", "stereo")
FRAMES = 6
# Live parameter batches the parameter thread picks from (frontend parameters: any backend has them).
PARAM_CHOICES = {
    "max_matches": (0, 500, 1000),
    "ransac.threshold_px": (0.75, 1.0, 1.5),
    "keyframe.max_parallax_px": (40.0, 60.0, 80.0),
    "nms.kernel_size": (0, 3),
}
BAD_BATCH = {"ransac.threshold_px": -1.0}  # with a valid change: the whole batch must be refused


# -- the data -----------------------------------------------------------------------------------------
@dataclass
class Source:
    """Good frames of one input mode: RGB images, their partners (16-bit depth or right RGB), the cameras."""

    mode: str
    images: list[np.ndarray]
    camera: CameraModel
    frame_id: str
    params: dict[str, Any]
    partners: list[np.ndarray] = field(default_factory=list)
    right_camera: CameraModel | None = None
    baseline_m: float = 0.0

    @property
    def partner(self) -> str:
        return {"rgbd": "depth", "stereo": "right"}.get(self.mode, "")


def _rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def load_source(mode: str, shared_data: Path, frames: int = FRAMES) -> Source:
    """The frames of ``mode``: the bundled TUM desk (mono), TUM fr3 cabinet (rgbd), KITTI 06 (stereo)."""
    if mode == "mono":
        seq = read_sequence(data_dir() / "tum_fr2_desk")
        return Source(mode, [_rgb(p) for _, p in seq.frames[:frames]], seq.camera, "camera", {})
    if mode == "rgbd":
        seq = read_sequence(shared_data / "tum_fr3_cabinet_rgbd")
        depth = [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for _, p in seq.depth.frames[:frames]]
        params = {"depth.scale": 1.0 / seq.depth.scale, "sift.contrast_threshold": 0.01,
                  "keyframe.min_inliers": 5, "tracking.min_inliers": 5, "keyframe.min_matches": 8}
        return Source(mode, [_rgb(p) for _, p in seq.frames[:frames]], seq.camera, "camera_rgb_optical_frame",
                      params, depth)
    if mode == "stereo":
        seq = read_sequence(shared_data / "kitti06_stereo_f000_050")
        right = [_rgb(p) for _, p in seq.stereo.frames[:frames]]
        return Source(mode, [_rgb(p) for _, p in seq.frames[:frames]], seq.camera, "camera", {"depth.max_m": 80.0},
                      right, seq.stereo.camera, seq.stereo.baseline_m)
    raise ValueError(f"unknown input mode {mode!r} (one of {', '.join(MODES)})")


def _half(pixels: np.ndarray) -> np.ndarray:
    h, w = pixels.shape[:2]
    interpolation = cv2.INTER_NEAREST if pixels.dtype == np.uint16 else cv2.INTER_AREA
    return cv2.resize(pixels, (w // 2, h // 2), interpolation=interpolation)


# -- results --------------------------------------------------------------------------------------------
@dataclass
class EpisodeResult:
    name: str
    expected: tuple[str, ...]  # diagnostics keys of which at least one must grow
    counted: bool  # one of them grew (True when nothing was expected)
    answered: bool  # a good frame sent after it was answered
    grew: dict[str, int] = field(default_factory=dict)  # what grew, by how much


@dataclass
class ChaosResult:
    """One input mode. ``problems`` lists every check that failed (empty: the node passed)."""

    mode: str
    episodes: list[EpisodeResult]
    good_sent: int
    good_answered: int
    latency_ms: list[float]
    params_accepted: int
    params_refused: int
    diagnostics: dict[str, str]
    rss_warm_mb: float
    rss_end_mb: float
    alive: bool
    exit_code: int | None
    problems: list[str]

    def latency_p(self, q: float) -> float:
        return float(np.percentile(self.latency_ms, q)) if self.latency_ms else float("nan")


# -- the driver -----------------------------------------------------------------------------------------
class Chaos:
    """Sends one mode's episodes through ``client`` (a :class:`~..ros.client.MatcherClient`) to a running
    lifecycle matcher node, and checks what its diagnostics count."""

    def __init__(self, client: Any, source: Source, log: Callable[[str], None] = print) -> None:
        self.client, self.src, self.log = client, source, log
        self.stamp = START_NS
        self.k = 0
        self.sent_at: dict[int, float] = {}
        self.good: list[int] = []
        self.problems: list[str] = []

    # -- sending --------------------------------------------------------------------------------------
    def next_stamp(self, step: int = STEP_NS) -> int:
        self.stamp += step
        return self.stamp

    def send(self, stamp: int, k: int | None = None, *, half: bool = False, info: str | None = "good",
             partner: str | None = "good", partner_stamp: int | None = None, partner_first: bool = False,
             encoding: str | None = None, frame_id: str | None = None, image: bool = True) -> None:
        """Frame ``k`` (default: the next good one; at half size with ``half``) stamped ``stamp``: its
        camera_info (``info``: ``good``; ``other_size``: the camera at the other size; ``model``: an unsupported
        distortion model; None: not sent), its partner (``good``, ``other_size``, ``encoding``, None = not sent)
        at ``partner_stamp``, and the image (labelled ``encoding`` when given, from ``frame_id``; with ``image``
        False only the camera_info)."""
        from ..ros import conversions as cv

        src, c = self.src, self.client
        k = self.k if k is None else k
        full, small = src.camera, src.camera.scaled(src.camera.width // 2, src.camera.height // 2)
        pixels = _half(src.images[k]) if half else src.images[k]
        frame_id = frame_id or src.frame_id
        if info is not None:
            msg = cv.model_to_camera_info(small if half != (info == "other_size") else full, stamp, frame_id)
            if info == "model":
                msg.distortion_model, msg.d = "equidistant", [0.0, 0.0, 0.0, 0.0]
            c.pub_info.publish(msg)
        if not image:
            return

        def send_partner() -> None:
            if partner is not None and src.mode != "mono":
                self._send_partner(k, partner_stamp if partner_stamp is not None else stamp, half, partner)

        if partner_first:
            send_partner()
        img = cv.numpy_to_image(pixels, "rgb8", stamp, frame_id)
        if encoding is not None:
            img.encoding = encoding
        c.pub_image.publish(img)
        if not partner_first:
            send_partner()

    def _send_partner(self, k: int, stamp: int, half: bool, how: str) -> None:
        from ..ros import conversions as cv

        src, c = self.src, self.client
        pixels = _half(src.partners[k]) if half != (how == "other_size") else src.partners[k]
        if src.mode == "rgbd":
            msg = cv.numpy_to_image(pixels, "16UC1", stamp, src.frame_id)
            if how == "encoding":
                msg.encoding = "rgb8"  # 16-bit data labelled as colour: not depth
            c.partners["depth"].publish(msg)
            return
        right_camera = src.right_camera.scaled(pixels.shape[1], pixels.shape[0])
        c.partners["right_info"].publish(cv.model_to_camera_info(right_camera, stamp, "camera_right",
                                                                 tx=-right_camera.fx * src.baseline_m))
        msg = cv.numpy_to_image(pixels, "rgb8", stamp, "camera_right")
        if how == "encoding":
            msg.encoding = "yuv9"
        c.partners["right"].publish(msg)

    def good_frame(self, half: bool = False) -> int:
        """The next good frame, with fresh stamp; its stamp."""
        stamp = self.next_stamp()
        self.sent_at[stamp] = time.monotonic()
        self.send(stamp, half=half)
        self.good.append(stamp)
        self.k = (self.k + 1) % len(self.src.images)
        return stamp

    def answered(self, tries: int = 8, timeout: float = 8.0, half: bool = False) -> bool:
        """Good frames until one of them is answered."""
        sent: list[int] = []
        for _ in range(tries):
            sent.append(self.good_frame(half))
            if self.client.wait_until(lambda: any(s in self.client.matches for s in sent), timeout):
                return True
        return False

    def latencies_ms(self) -> list[float]:
        arrival = dict(self.client.arrival)
        return [1e3 * (arrival[s] - self.sent_at[s]) for s in self.good if s in arrival]

    # -- diagnostics --------------------------------------------------------------------------------------
    def diagnostics(self, timeout: float = 5.0) -> dict[str, str]:
        return self.client.latest_diagnostics(timeout=timeout) or {}

    def wait_growth(self, before: dict[str, str], keys: tuple[str, ...], timeout: float = 15.0) -> dict[str, int]:
        """The keys of ``keys`` that grew since ``before`` (waits until one did, up to ``timeout``)."""
        deadline = time.monotonic() + timeout
        while True:
            now = self.diagnostics(timeout=2.0)
            grew = {k: _int(now, k) - _int(before, k) for k in keys if _int(now, k) > _int(before, k)}
            if grew or not keys or time.monotonic() > deadline:
                return grew

    def quiet(self, timeout: float = 30.0) -> dict[str, str]:
        """The diagnostics once two reports in a row show the same received/processed counts."""
        deadline = time.monotonic() + timeout
        last = self.diagnostics()
        while time.monotonic() < deadline:
            time.sleep(0.3)
            now = self.diagnostics()
            same = all(_int(now, k) == _int(last, k) for k in ("frames_received", "frames_processed",
                                                                  "frames_dropped", "rejected_total"))
            if same and now:
                return now
            last = now or last
        return last

    # -- episodes ---------------------------------------------------------------------------------------
    def episodes(self, lifecycle: bool) -> list[tuple[str, Callable[[], tuple[str, ...]]]]:
        names = ["reorder", "duplicate", "gap", "burst", "bag_replayed", "clock_restart", "bad_stamp",
                 "resolution", "camera_model", "encoding", "frame_id"]
        if self.src.mode != "mono":
            names += ["partner_missing", "partner_late", "partner_early", "partner_jitter", "partner_size",
                      "partner_encoding"]
        if lifecycle:
            names.append("lifecycle")
        return [(n, getattr(self, f"_ep_{n}")) for n in names]

    def new_round(self, index: int) -> None:
        """Stamps of round ``index`` start far ahead of anything sent before (a gap, not a jump back), so
        that every round's jumps back are jumps back."""
        self.stamp = START_NS + index * 1000 * NS

    def run_episode(self, name: str, episode: Callable[[], tuple[str, ...]]) -> EpisodeResult:
        before = self.diagnostics()
        expected = episode()
        grew = self.wait_growth(before, expected) if expected else {}
        if name == "resolution":  # half-size frames with their camera_info, then full size again
            answered = self.answered(half=True) and self.answered()
        else:
            answered = self.answered()
        return EpisodeResult(name, expected, bool(grew) or not expected, answered, grew)

    def _ep_reorder(self) -> tuple[str, ...]:
        stamps = [self.next_stamp() for _ in range(4)]
        for i in (2, 0, 3, 1):
            self.send(stamps[i], i)
        return ("rejected.stamp_backwards",)

    def _ep_duplicate(self) -> tuple[str, ...]:
        stamp = self.next_stamp()
        self.send(stamp)
        self.send(stamp)
        return ("rejected.stamp_repeated",) + ((f"unpaired.{self.src.partner}",) if self.src.partner else ())

    def _ep_gap(self) -> tuple[str, ...]:
        self.next_stamp(5 * NS)
        return ()

    def _ep_burst(self) -> tuple[str, ...]:
        for _ in range(10):
            self.good_frame()
        return ()

    def _ep_bag_replayed(self) -> tuple[str, ...]:
        self.stamp -= 30 * NS
        self.send(self.next_stamp())
        return ("time_jumps",)

    def _ep_clock_restart(self) -> tuple[str, ...]:
        self.stamp = 2 * NS  # /clock starts again near zero
        self.send(self.next_stamp())
        return ("time_jumps",)

    def _info_then_image(self, info: str) -> None:
        """A camera_info, and once the node has taken it (they travel on separate topics) an image."""
        before = self.diagnostics()
        stamp = self.next_stamp()
        self.send(stamp, info=info, image=False)
        self.wait_growth(before, ("camera_info_received",))
        self.send(stamp, info=None)

    def _ep_bad_stamp(self) -> tuple[str, ...]:
        self.send(-5 * NS)
        return ("rejected.bad_stamp",)

    def _ep_resolution(self) -> tuple[str, ...]:
        self._info_then_image("other_size")
        return ("rejected.size_mismatch",)

    def _ep_camera_model(self) -> tuple[str, ...]:
        self._info_then_image("model")
        return ("rejected.bad_camera_info",)

    def _ep_encoding(self) -> tuple[str, ...]:
        self.send(self.next_stamp(), encoding="yuv9")
        return ("rejected.unknown_encoding",)

    def _ep_frame_id(self) -> tuple[str, ...]:
        self.send(self.next_stamp(), frame_id="another_camera")
        return ("rejected.frame_id_changed",)

    def _ep_partner_missing(self) -> tuple[str, ...]:
        for _ in range(5):  # sync.queue_size is 3: at least two leave their queue unpaired
            self.send(self.next_stamp(), partner=None)
        return ("rejected.unpaired",)

    def _ep_partner_late(self) -> tuple[str, ...]:
        stamp = self.next_stamp()
        self.send(stamp, partner=None)
        for j in (5, 6, 7):  # newer partners fill the queue of 3, then the image's own arrives
            self._send_partner(self.k, stamp + j * NS // 10, False, "good")
        self._send_partner(self.k, stamp, False, "good")
        self.next_stamp(NS)
        return (f"unpaired.{self.src.partner}",)

    def _ep_partner_early(self) -> tuple[str, ...]:
        self.send(self.next_stamp(), partner_first=True)
        return ()

    def _ep_partner_jitter(self) -> tuple[str, ...]:
        stamp = self.next_stamp()
        self.send(stamp, partner_stamp=stamp + 15 * NS // 1000)
        return ()

    def _ep_partner_size(self) -> tuple[str, ...]:
        self.send(self.next_stamp(), partner="other_size")
        return ("rejected.depth_size_mismatch",) if self.src.mode == "rgbd" else ("rejected.stereo_mismatch",)

    def _ep_partner_encoding(self) -> tuple[str, ...]:
        self.send(self.next_stamp(), partner="encoding")
        return ("rejected.depth_encoding",) if self.src.mode == "rgbd" else ("rejected.unknown_encoding",)

    def _ep_lifecycle(self) -> tuple[str, ...]:
        from lifecycle_msgs.msg import Transition

        if not self.client.change_state(Transition.TRANSITION_DEACTIVATE):
            self.problems.append("lifecycle: deactivate failed")
        for _ in range(3):  # nobody listens
            self.send(self.next_stamp())
        if not self.client.change_state(Transition.TRANSITION_ACTIVATE):
            self.problems.append("lifecycle: activate failed")
        if not self.client.wait_for_matcher(timeout=30.0):
            self.problems.append("lifecycle: the inputs did not come back after activate")
        return ()


def _int(values: dict[str, str], key: str) -> int:
    try:
        return int(float(values.get(key, 0)))
    except ValueError:
        return 0


class ParameterChanger(threading.Thread):
    """Changes live parameters atomically every ``period_s`` until stopped: a valid batch, or (one in four)
    the same with one bad value, which must be refused whole. Remembers the last accepted batch."""

    def __init__(self, client: Any, seed: int = 0, period_s: float = 0.4) -> None:
        super().__init__(name="fm_chaos_params", daemon=True)
        self.client, self.period_s = client, period_s
        self.rng = random.Random(seed)
        self.accepted = self.refused = 0
        self.current: dict[str, Any] = {}
        self.problems: list[str] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self.period_s):
            batch = {name: self.rng.choice(values) for name, values in PARAM_CHOICES.items()}
            bad = self.rng.random() < 0.25
            try:
                result = self.client.set_parameters_atomically({**batch, **BAD_BATCH} if bad else batch, timeout=10.0)
            except TimeoutError as exc:
                self.problems.append(f"parameter service: {exc}")
                continue
            if bad and result.successful:
                self.problems.append(f"a batch with a bad value was accepted: {batch} + {BAD_BATCH}")
            elif not bad and not result.successful:
                self.problems.append(f"a valid batch was refused: {batch}: {result.reason}")
            elif bad:
                self.refused += 1
            else:
                self.accepted += 1
                self.current = batch

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(timeout=15.0)


# -- one mode ----------------------------------------------------------------------------------------------
def run_mode(mode: str, seconds: float, shared_data: Path, overrides: dict[str, Any] | None = None,
             env: dict | None = None, log: Callable[[str], None] = print, seed: int = 0) -> ChaosResult:
    """Start a lifecycle matcher node in ``mode`` (SIFT unless overridden), run rounds of episodes for
    ``seconds`` (at least one round), and check it (see the module docstring). The node and the client are
    closed whatever happens."""
    from ..ros.client import MatcherClient

    source = load_source(mode, shared_data)
    name, namespace = f"fm_chaos_{mode}", f"/chaos_{mode}"
    params = {"backend": "sift", "device": "cpu", "input_qos": "reliable", "input_mode": mode,
              "diagnostics_period_s": 0.2, "sync.queue_size": 3, **source.params, **(overrides or {})}
    with NodeProcess(name, params, config_file("matcher.yaml"), env=env, module=LIFECYCLE_MODULE,
                     args=["--activate"], namespace=namespace) as node:
        with MatcherClient(node=name, namespace=namespace, name=f"fm_chaos_client_{mode}", input_mode=mode) as client:
            chaos = Chaos(client, source, log)
            changer = ParameterChanger(client, seed)
            try:
                result = _rounds(chaos, changer, node, seconds)
            finally:
                changer.stop()
            result.diagnostics = chaos.quiet() if node.alive() else {}
            params_now = client.get_parameters(list(changer.current)) if node.alive() and changer.current else {}
        result.exit_code, _ = node.stop(signal.SIGINT)
        result.problems = chaos.problems + _problems(result, changer, params_now)
        if result.problems:
            log(node.stderr[-4000:])
    return result


def _rounds(chaos: Chaos, changer: ParameterChanger, node: NodeProcess, seconds: float) -> ChaosResult:
    """Bring the node up to its first answered frame, then rounds of episodes (parameters changing
    meanwhile) until ``seconds`` have passed or the node died."""
    client, mode = chaos.client, chaos.src.mode
    if not client.wait_for_matcher(timeout=90.0):
        raise RuntimeError(f"the {mode} node did not come up:\n{node.stderr[-3000:]}")
    client.prime_camera_info(chaos.src.camera, chaos.src.frame_id)
    if not chaos.answered(timeout=30.0):
        raise RuntimeError(f"the {mode} node answered no good frame:\n{node.stderr[-3000:]}")
    changer.start()
    started, episodes, rss_warm, round_ = time.monotonic(), [], float("nan"), 0
    while node.alive():
        chaos.new_round(round_)
        for name, episode in chaos.episodes(lifecycle=True):
            result = chaos.run_episode(name, episode)
            episodes.append(result)
            chaos.log(f"  {mode:6} {name:16} counted {result.grew or '-'}; next good frame "
                      f"{'answered' if result.answered else 'NOT ANSWERED'}")
            if not node.alive():
                break
        round_ += 1
        if round_ == 1:  # every path has run once: warm
            rss_warm = node.rss_mb()
        if time.monotonic() - started >= seconds:
            break
    return ChaosResult(mode, episodes, len(chaos.good), sum(s in client.matches for s in chaos.good),
                       chaos.latencies_ms(), changer.accepted, changer.refused, {}, rss_warm, node.rss_mb(),
                       node.alive(), None, [])


def _problems(r: ChaosResult, changer: ParameterChanger, params_now: dict[str, Any]) -> list[str]:
    """Every check of the module docstring that ``r`` fails."""
    out = list(changer.problems)
    if not r.alive or r.exit_code != 0:
        out.append(f"node alive {r.alive}, exit code {r.exit_code}")
    out += [f"{e.name}: none of {e.expected} was counted" for e in r.episodes if not e.counted]
    out += [f"{e.name}: no good frame answered after it" for e in r.episodes if not e.answered]
    d = r.diagnostics
    internal = {k: v for k, v in d.items() if k.startswith("internal_error.")}
    if internal:
        out.append(f"internal errors: {internal}")
    accounted = sum(_int(d, k) for k in ("frames_processed", "frames_dropped", "rejected_total", "images_waiting"))
    if not d or _int(d, "frames_received") != accounted:
        out.append(f"images received {_int(d, 'frames_received')} != processed + dropped + rejected + waiting "
                   f"({accounted}): {d}")
    if params_now != changer.current:
        out.append(f"parameters {params_now} are not the last accepted batch {changer.current}")
    return out


# -- the command -----------------------------------------------------------------------------------------------
def format_table(results: list[ChaosResult]) -> str:
    head = (f"{'mode':>6} {'episodes':>8} {'good sent':>9} {'answered':>8} {'received':>8} {'processed':>9} "
            f"{'dropped':>7} {'rejected':>8} {'time jumps':>10} {'params ok/refused':>17} {'lat p50':>8} "
            f"{'lat p99':>8} {'RSS warm':>9} {'RSS end':>8}  result")
    rows = [head, "-" * len(head)]
    for r in results:
        d = r.diagnostics
        rows.append(
            f"{r.mode:>6} {len(r.episodes):>8} {r.good_sent:>9} {r.good_answered:>8} {_int(d, 'frames_received'):>8} "
            f"{_int(d, 'frames_processed'):>9} {_int(d, 'frames_dropped'):>7} {_int(d, 'rejected_total'):>8} "
            f"{_int(d, 'time_jumps'):>10} {f'{r.params_accepted}/{r.params_refused}':>17} "
            f"{r.latency_p(50):>6.0f}ms {r.latency_p(99):>6.0f}ms {r.rss_warm_mb:>6.0f}MiB {r.rss_end_mb:>5.0f}MiB  "
            + ("ok" if not r.problems else f"{len(r.problems)} PROBLEMS"))
    reasons = sorted({k for r in results for k in r.diagnostics
                      if k.startswith(("rejected.", "unpaired.", "invalid."))})
    rows.append("")
    rows.append("counted by reason: " + "; ".join(
        f"{k} " + "/".join(str(_int(r.diagnostics, k)) for r in results) for k in reasons)
        + f" ({'/'.join(r.mode for r in results)})")
    return "\n".join(rows)


def run(modes: list[str], seconds: float, overrides: dict[str, Any], env: dict,
        shared_data: Path | None = None, log: Callable[[str], None] = print) -> list[ChaosResult]:
    """Each mode in turn (its own node); the results, and the table printed with ``log``."""
    shared_data = shared_data or shared_dir() / "data"
    results = []
    for mode in modes:
        log(f"chaos {mode}: {seconds:.0f} s of episodes")
        results.append(run_mode(mode, seconds, shared_data, overrides, env, log))
    log(format_table(results))
    for r in results:
        for problem in r.problems:
            log(f"PROBLEM {r.mode}: {problem}")
    return results
