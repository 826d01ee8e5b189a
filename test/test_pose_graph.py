"""The GTSAM pose graph (pose_graph.py) on hand-made cases: the covariance order and frame (ROS's [x y z rx ry rz]
in the parent frame to GTSAM's body tangent), a drifting square closed by a loop, and the loop gate."""

import math

import numpy as np
import pytest

from feature_matcher_ros.loops import Edge
from feature_matcher_ros.pose_graph import PoseGraph, gtsam_covariance
from feature_matcher_ros.se3 import rotation_from_rotvec, se3

pytest.importorskip("gtsam")


def Rz(a):
    return rotation_from_rotvec([0.0, 0.0, a])


def test_covariance_order_and_frame_decide_the_optimum():
    """Two measurements of the same keyframe, both turned 90 degrees left: A is sure of x (parent frame) and
    unsure of y, B the other way round. The optimum takes x from A and y from B; had the covariance not been
    rotated into the body frame (where the parent's x is the body's -y), it would take each from the other."""
    tight, loose = 1e-6, 1.0
    A = Edge(0, 1, se3(Rz(math.pi / 2), [1.0, 0.0, 0.0]), np.diag([tight, loose, tight, 1e-8, 1e-8, 1e-8]), "keyframe")
    B = Edge(0, 1, se3(Rz(math.pi / 2), [1.2, 0.5, 0.0]), np.diag([loose, tight, tight, 1e-8, 1e-8, 1e-8]), "keyframe")
    graph = PoseGraph()
    assert graph.add_edge(A) and graph.add_edge(B)
    graph.optimise()
    T = graph.estimate()[1]
    assert np.allclose(T[:3, 3], [1.0, 0.5, 0.0], atol=1e-3), T[:3, 3]
    assert np.allclose(T[:3, :3], Rz(math.pi / 2), atol=1e-6)


def test_gtsam_covariance_of_the_identity_is_a_reordering():
    cov = np.diag([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    assert np.allclose(np.diag(gtsam_covariance(np.eye(4), cov)), [4, 5, 6, 1, 2, 3])


def _square(yaw_bias):
    """Odometry edges around a 1 m square (four left turns of 90 degrees, plus a yaw bias each); 1 cm and
    3 degrees standard deviation, so a bias of 3 degrees is within the edges' own uncertainty."""
    step = se3(Rz(math.pi / 2 + yaw_bias), [1.0, 0.0, 0.0])
    cov = np.diag([1e-4] * 3 + [math.radians(3) ** 2] * 3)
    return [Edge(k, k + 1, step, cov, "keyframe") for k in range(4)]


def test_a_loop_closes_a_drifting_square():
    """With 3 degrees of yaw error per corner the fourth keyframe ends 10 cm away from the first; the loop edge
    keyframe 4 -> 0 (they are the same place) brings it back, the other corners with it."""
    graph = PoseGraph()
    for edge in _square(math.radians(3)):
        graph.add_edge(edge)
    graph.optimise()
    drifted = graph.estimate()[4]
    assert np.linalg.norm(drifted[:3, 3]) > 0.05
    loop = Edge(0, 4, np.eye(4), np.diag([1e-6] * 6), "loop", inliers=200, metric=True)
    assert graph.add_edge(loop)
    ms = graph.optimise()
    closed = graph.estimate()
    assert np.linalg.norm(closed[4][:3, 3]) < 0.01 and np.allclose(closed[0], np.eye(4), atol=1e-6)
    truth = {1: [1, 0], 2: [1, 1], 3: [0, 1]}
    assert all(np.linalg.norm(closed[k][:2, 3] - xy) < 0.1 for k, xy in truth.items())
    assert graph.stats.loops_accepted == 1 and graph.stats.keyframes == 5 and ms >= 0


def test_the_gate_rejects_an_inconsistent_loop_and_unknown_keyframes():
    graph = PoseGraph()
    for edge in _square(0.0):
        graph.add_edge(edge)
    graph.optimise()
    far = Edge(0, 4, se3(np.eye(3), [5.0, 0.0, 0.0]), np.diag([1e-6] * 6), "loop")  # 5 m off: a false loop
    assert not graph.add_edge(far) and graph.stats.loops_rejected == 1
    assert not graph.add_edge(Edge(0, 99, np.eye(4), np.eye(6), "loop"))
    # a keyframe after a loss: connected by a weak edge, so the graph stays solvable
    assert graph.add_edge(Edge(4, 5, se3(np.eye(3), [0.5, 0, 0]), np.eye(6), "lost"))
    graph.optimise()
    T4, T5 = graph.estimate()[4], graph.estimate()[5]
    assert np.allclose(T5[:3, 3], T4[:3, :3] @ [0.5, 0, 0] + T4[:3, 3])
    assert graph.stats.lost_edges == 1


def test_edges_travel_as_pose_with_covariance_and_lost_ones_say_so():
    """keyframe_edge / loop_closure messages (what matcher_node publishes, what pose_graph_node reads): the frame
    id names the camera at the from-keyframe, the stamp is the to-keyframe's, and a lost edge is marked unknown."""
    from feature_matcher_ros.messages import edge_from_message
    from feature_matcher_ros.ros.conversions import edge_msg

    T = se3(Rz(0.3), [0.5, -0.1, 2.0])
    cov = np.diag([1e-4, 2e-4, 3e-4, 1e-6, 2e-6, 3e-6])
    for kind in ("keyframe", "loop", "lost"):
        msg = edge_msg(Edge(1_000, 5_000, T, cov, kind), "cam")
        assert msg.header.frame_id == "cam@1000" and msg.header.stamp.nanosec == 5_000
        edge, camera = edge_from_message(msg, "loop" if kind == "loop" else "keyframe")
        assert camera == "cam" and edge.kind == kind and (edge.from_stamp_ns, edge.to_stamp_ns) == (1_000, 5_000)
        assert np.allclose(edge.T, T)
        assert np.allclose(np.diag(edge.covariance), -1.0 if kind == "lost" else np.diag(cov))
    msg.header.frame_id = "cam"
    with pytest.raises(ValueError, match="does not name a keyframe"):
        edge_from_message(msg, "keyframe")
