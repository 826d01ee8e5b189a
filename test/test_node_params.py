"""Parameters of a running matcher_node, through its real parameter services: descriptors generated from
the specs, live changes taking effect from the next frame, bad values rejected with a reason and nothing
half-applied."""

import pytest
from rcl_interfaces.msg import ParameterType

from ros_helpers import load_frames, running_node


@pytest.fixture(scope="module")
def node(shared, tmp_path_factory):
    frames, camera, _ = load_frames(shared, count=8)
    log = tmp_path_factory.mktemp("node") / "matcher_node.log"
    with running_node(log, "backend:=sift", "device:=cpu", "input_qos:=reliable") as (process, client):
        state = {"next": 0}
        client.prime_camera_info(camera)

        def send_next():
            """Send the next frame and return its PointCloud2 width."""
            stamp, rgb = frames[state["next"]]
            state["next"] += 1
            client.send(rgb, "rgb8", stamp, camera, "cam")
            cloud = client.wait_result(stamp, timeout=60.0)
            assert cloud is not None
            return cloud.width

        assert send_next() == 0  # the first keyframe
        yield client, send_next, process


def test_descriptors_generated_from_specs(node):
    client, _, _ = node
    d = client.describe_parameters(["backend", "device", "weights", "max_matches", "ransac.threshold_px",
                                    "ransac.confidence", "precision", "num_threads", "keyframe.min_inliers"])
    for name in ("backend", "device", "weights"):
        assert d[name].read_only, name
    for name in ("max_matches", "ransac.threshold_px", "ransac.confidence", "precision", "num_threads"):
        assert not d[name].read_only, name
    assert d["max_matches"].type == ParameterType.PARAMETER_INTEGER
    assert d["max_matches"].integer_range[0].from_value == 0
    thr = d["ransac.threshold_px"].floating_point_range[0]
    assert d["ransac.threshold_px"].type == ParameterType.PARAMETER_DOUBLE and 0 < thr.from_value < thr.to_value
    assert d["ransac.confidence"].floating_point_range[0].to_value < 1.0
    assert all(p in d["precision"].additional_constraints for p in ("fp32", "fp16", "bf16"))
    assert d["max_matches"].description


def test_max_matches_caps_the_next_frame(node):
    client, send_next, _ = node
    assert send_next() > 40  # uncapped
    results = client.set_parameters({"max_matches": 40})
    assert [r.successful for r in results] == [True]
    assert client.get_parameters(["max_matches"]) == {"max_matches": 40}
    assert send_next() == 40


def test_bad_values_rejected_with_a_reason(node):
    client, _, _ = node
    cases = {
        "ransac.threshold_px": -1.0,   # out of the descriptor's range
        "precision": "fp64",           # not a choice (the frontend's check)
        "backend": "orb",              # read-only
        "max_matches": "ten",          # wrong type
    }
    before = client.get_parameters(cases)
    for name, value in cases.items():
        (result,) = client.set_parameters({name: value})
        assert not result.successful, name
        assert result.reason, name
    assert "read-only" in client.set_parameters({"backend": "orb"})[0].reason
    assert "fp64" in client.set_parameters({"precision": "fp64"})[0].reason
    # A cross-field rule of the frontend: the reason names both parameters.
    (result,) = client.set_parameters({"tracking.min_inliers": 400})
    assert not result.successful and "tracking.min_inliers" in result.reason and "keyframe.min_inliers" in result.reason
    assert client.get_parameters(cases) == before


def test_a_batch_with_one_bad_value_changes_nothing(node):
    client, send_next, _ = node
    names = ["max_matches", "ransac.threshold_px", "num_threads"]
    before = client.get_parameters(names)
    result = client.set_parameters_atomically({"max_matches": 25, "ransac.threshold_px": 2.0, "num_threads": 1,
                                               "ransac.confidence": 2.0})
    assert not result.successful and "ransac.confidence" in result.reason
    assert client.get_parameters(names) == before
    assert send_next() == before["max_matches"]  # the node still uses the old cap
    result = client.set_parameters_atomically({"max_matches": 25, "num_threads": 1, "keyframe.min_inliers": 10,
                                               "tracking.min_inliers": 20})  # frontend cross-check fails
    assert not result.successful and "tracking.min_inliers" in result.reason
    assert client.get_parameters(names + ["keyframe.min_inliers"]) == {**before, "keyframe.min_inliers": 50}


def test_a_good_batch_takes_effect_whole(node):
    client, send_next, process = node
    result = client.set_parameters_atomically({"max_matches": 25, "ransac.threshold_px": 2.0, "num_threads": 1,
                                               "precision": "fp16"})
    assert result.successful, result.reason
    assert client.get_parameters(["max_matches", "ransac.threshold_px", "num_threads", "precision"]) == {
        "max_matches": 25, "ransac.threshold_px": 2.0, "num_threads": 1, "precision": "fp16"}
    assert send_next() == 25
    diag = client.latest_diagnostics(timeout=5.0)
    assert diag["precision"] == "fp16"
    assert process.poll() is None
