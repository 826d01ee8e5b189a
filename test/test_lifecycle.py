"""lifecycle_matcher_node driven through the real lifecycle_msgs services (``~/change_state``,
``~/get_state``): nothing is subscribed before ``activate`` (publishers exist from ``configure`` but are
disabled), frames are matched while active and ignored after ``deactivate``, ``cleanup`` releases the
model and the publishers and a second configure/activate works, ``shutdown`` ends the process. A configure
that cannot load the model fails with the reason and leaves the node unconfigured; ``--activate`` starts it
active."""

import signal
import time

import pytest
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState

from feature_matcher_ros.ros.client import NO_TRANSITION, MatcherClient
from feature_matcher_ros.ros.process import LIFECYCLE_MODULE, NodeProcess
from ros_helpers import send_until_answered

MODULE = LIFECYCLE_MODULE
NS = 1_000_000_000


def state(client, node) -> str:
    return client.lifecycle_state(node)


def transition(client, node, transition_id) -> bool:
    return client.change_state(transition_id, node)


def topics(client, node) -> tuple[set, set]:
    deadline = time.monotonic() + 10.0  # the services may answer before the graph shows the node
    while node not in client.node.get_node_names() and time.monotonic() < deadline:
        time.sleep(0.05)
    subs = {t for t, _ in client.node.get_subscriber_names_and_types_by_node(node, "/")}
    pubs = {t for t, _ in client.node.get_publisher_names_and_types_by_node(node, "/")}
    return subs, pubs


def wait_topics(client, node, subscribed: bool, publishing: bool, timeout=10.0) -> tuple[set, set]:
    """The node's topics once ``/image`` is (not) subscribed and ``/matches`` (not) advertised."""
    deadline = time.monotonic() + timeout
    while True:
        subs, pubs = topics(client, node)
        if (("/image" in subs) == subscribed and ("/matches" in pubs) == publishing) or time.monotonic() > deadline:
            return subs, pubs
        time.sleep(0.1)


@pytest.fixture(scope="module")
def frames(shared):
    import cv2

    from feature_matcher_ros.camera import CameraModel

    folder = shared / "data" / "tum_fr2_desk"
    lines = [ln.split() for ln in (folder / "images.txt").read_text().splitlines() if ln and ln[0] != "#"]
    rgb = [cv2.cvtColor(cv2.imread(str(folder / rel)), cv2.COLOR_BGR2RGB) for _, rel in lines[:3]]
    return rgb, CameraModel.from_yaml(folder / "intrinsics.yaml")


def test_full_lifecycle(frames):
    rgb, camera = frames
    name = "fm_lifecycle"
    node = NodeProcess(name, {"backend": "sift", "device": "cpu", "input_qos": "reliable"}, module=MODULE)
    client = MatcherClient(node=name, name="fm_lifecycle_client")
    try:
        assert state(client, name) == "unconfigured", node.stderr
        # the probe MatcherClient.change_state sends first (a label no state machine has): refused, nothing moves
        probe = ChangeState.Request()
        probe.transition.label = NO_TRANSITION
        assert not client.call(ChangeState, f"/{name}/change_state", probe, 20.0).success
        assert state(client, name) == "unconfigured"
        subs, pubs = topics(client, name)
        assert "/image" not in subs and "/matches" not in pubs

        assert transition(client, name, Transition.TRANSITION_CONFIGURE), node.stderr
        assert state(client, name) == "inactive"
        assert "configured (inactive): backend sift" in node.stderr
        # Inactive: publishers exist (lifecycle publishers, disabled), nothing is subscribed.
        subs, pubs = wait_topics(client, name, subscribed=False, publishing=True)
        assert "/image" not in subs and "/matches" in pubs, (subs, pubs)

        for cycle in range(2):
            assert transition(client, name, Transition.TRANSITION_ACTIVATE), node.stderr
            assert state(client, name) == "active"
            subs, pubs = wait_topics(client, name, subscribed=True, publishing=True)
            assert {"/image", "/camera_info"} <= subs and {"/matches", "/relative_pose", "/diagnostics"} <= pubs
            assert client.wait_for_matcher(timeout=30.0)
            base = (100 + 10 * cycle) * NS
            for i in range(2):
                assert send_until_answered(client, rgb[i], base + i * NS, camera) is not None, node.stderr[-2000:]

            assert transition(client, name, Transition.TRANSITION_DEACTIVATE), node.stderr
            assert state(client, name) == "inactive"
            subs, pubs = wait_topics(client, name, subscribed=False, publishing=True)
            assert "/image" not in subs and "/camera_info" not in subs
            late = base + 5 * NS
            client.send(rgb[2], "rgb8", late, camera, "cam")
            time.sleep(1.0)
            assert late not in client.matches, "an inactive node answered a frame"

            assert transition(client, name, Transition.TRANSITION_CLEANUP), node.stderr
            assert state(client, name) == "unconfigured"
            assert node.stderr.count("model released") == cycle + 1
            subs, pubs = wait_topics(client, name, subscribed=False, publishing=False)
            assert "/matches" not in pubs and "/diagnostics" not in pubs, pubs
            # Unconfigured: changes are checked against the specs, and the parameters survive configure.
            assert client.set_parameters({"max_matches": 500 + cycle})[0].successful
            assert not client.set_parameters({"precision": "fp64"})[0].successful
            assert transition(client, name, Transition.TRANSITION_CONFIGURE), node.stderr
            assert state(client, name) == "inactive"
            assert client.get_parameters(["max_matches", "precision"]) == {"max_matches": 500 + cycle,
                                                                           "precision": "fp32"}

        # Transitions that are not allowed from here are refused, the state is kept.
        assert not transition(client, name, Transition.TRANSITION_DEACTIVATE)
        assert state(client, name) == "inactive"

        assert transition(client, name, Transition.TRANSITION_INACTIVE_SHUTDOWN)
        rc = node.wait(timeout=10.0)
        assert rc == 0, node.stderr
        assert "Traceback" not in node.stderr
    finally:
        client.close()
        node.close()


def test_failed_configure_reports_why_and_activate_flag(frames, tmp_path):
    rgb, camera = frames
    missing = tmp_path / "no" / "eloftr.ckpt"
    bad = NodeProcess("fm_lifecycle_bad", {"backend": "eloftr", "device": "cpu", "weights": str(missing)},
                      module=MODULE)
    auto = NodeProcess("fm_lifecycle_auto", {"backend": "sift", "device": "cpu", "input_qos": "reliable"},
                       module=MODULE, args=["--activate"])
    client = MatcherClient(node="fm_lifecycle_auto", name="fm_lifecycle_client2")
    try:
        # The model is loaded in configure: the missing file shows up there, and the node stays usable.
        assert state(client, "fm_lifecycle_bad") == "unconfigured"
        assert not transition(client, "fm_lifecycle_bad", Transition.TRANSITION_CONFIGURE)
        assert state(client, "fm_lifecycle_bad") == "unconfigured"
        assert bad.alive()
        assert "configure failed" in bad.stderr and str(missing) in bad.stderr, bad.stderr
        assert transition(client, "fm_lifecycle_bad", Transition.TRANSITION_UNCONFIGURED_SHUTDOWN)
        assert bad.wait(timeout=10.0) == 0
        assert "Traceback" not in bad.stderr

        # --activate: configured and active right away.
        assert client.wait_for_matcher(timeout=60.0), auto.stderr
        assert state(client, "fm_lifecycle_auto") == "active"
        assert send_until_answered(client, rgb[0], 7 * NS, camera) is not None, auto.stderr[-2000:]
        # SIGTERM while active: a clean exit, as for matcher_node (test_shutdown.py).
        rc, took = auto.stop(signal.SIGTERM, timeout=10.0)
        assert rc == 0 and "Traceback" not in auto.stderr, auto.stderr
        assert took < 2.0, f"exit took {took:.2f} s"
    finally:
        client.close()
        bad.close()
        auto.close()

