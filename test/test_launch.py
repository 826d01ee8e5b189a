"""``launch/matcher.launch.py`` as ``ros2 launch`` would run it, from a real install.

``launch``/``launch_ros`` are not on PyPI: the file is evaluated with the small stand-in in
``test/launch_standin`` (named in the README). Everything else is real: the package is installed with
``pip install --prefix`` (the ament_python data files: resource index, launch, config, data), the default
params file is found through the real ``ament_index_python``, and the node the file describes is started
with the command line ``launch_ros`` would build and served over DDS through its namespace and remappings.
"""

import configparser
import re
import shutil
import subprocess
import sys
import time
from importlib.metadata import entry_points
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "launch_standin"))
import runner  # noqa: E402
from geometry_msgs.msg import PoseWithCovarianceStamped  # noqa: E402

from feature_matcher_ros.ros.client import MatcherClient  # noqa: E402
from feature_matcher_ros.ros.process import NodeProcess  # noqa: E402
from feature_matcher_ros.ros.qos import latched_qos  # noqa: E402
from ros_helpers import load_frames  # noqa: E402

PKG = "feature_matcher_ros"
TEST_DATA = Path(__file__).resolve().parent / "data"
ARGUMENTS = {"namespace", "image", "camera_info", "params_file", "use_sim_time", "backend", "weights", "device",
             "runtime", "input_mode", "depth", "right_image", "right_camera_info", "base_frame", "camera_frame",
             "publish_tf", "mount_x", "mount_y", "mount_z", "mount_roll", "mount_pitch", "mount_yaw"}


@pytest.fixture(scope="module")
def prefix(repo, tmp_path_factory):
    """The package installed into its own prefix (from a copy, so the checkout gets no build/ folder)."""
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src"
    shutil.copytree(repo, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".cache", ".hypothesis", ".pytest_cache", "out", "build", "*.egg-info", "__pycache__", "test"))
    run = subprocess.run(
        # --ignore-installed: never touch the venv's own (editable) install of the package
        [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
         "--no-build-isolation", "--no-compile", "--ignore-installed", "--prefix", str(tmp / "prefix"), str(src)],
        capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    return tmp / "prefix"


def installed_entry_point(prefix, script):
    """``module:function`` of the console script ``script`` in the installed package's metadata."""
    (info,) = prefix.glob(f"lib/python*/site-packages/{PKG}-*.dist-info/entry_points.txt")
    parser = configparser.ConfigParser()
    parser.read(info)
    return parser["console_scripts"][script]


def describe(prefix, monkeypatch, launch_file="matcher.launch.py", **arguments):
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(prefix))
    return runner.describe(prefix / "share" / PKG / "launch" / launch_file, **arguments)


def test_install_holds_what_ros2_launch_and_run_need(prefix):
    share = prefix / "share" / PKG
    assert (prefix / "share" / "ament_index" / "resource_index" / "packages" / PKG).is_file()
    for rel in ("package.xml", "launch/matcher.launch.py", "launch/slam.launch.py", "config/matcher.yaml",
                "config/fastdds_large_images.xml"):
        assert (share / rel).is_file(), rel
    assert any((share / "data" / "demo").rglob("*.mcap")), "the demo bag is installed"
    (weights,) = prefix.glob(f"lib/python*/site-packages/{PKG}/weights/sptd2_fast_distill.pt")
    assert weights.stat().st_size > 100_000
    for script in ("matcher_node", "lifecycle_matcher_node", "pose_graph_node", "fm-match", "fm-bench", "fm-replay"):
        assert (prefix / "bin" / script).is_file(), script
    # and the venv's own install of the package (`make` installs it editable) is still there
    assert entry_points(group="console_scripts", name="matcher_node")


def test_arguments_defaults_and_readme_examples(prefix, monkeypatch, repo):
    declared, (node,) = describe(prefix, monkeypatch)
    assert set(declared) == ARGUMENTS and all(d.description for d in declared.values())
    assert (node.package, node.executable, node.name, node.namespace) == (PKG, "matcher_node", "matcher_node", "")
    # the default params file is the installed one, found through the ament index
    assert node.parameters == [str(prefix / "share" / PKG / "config" / "matcher.yaml"), {"use_sim_time": False}]
    assert node.remappings == [("image", "image"), ("camera_info", "camera_info"), ("depth", "depth"),
                               ("right/image", "right/image"), ("right/camera_info", "right/camera_info")]
    # every `ros2 launch` line of the README, docs/ and the file's own docstring uses declared arguments only
    pages = [repo / "README.md", *sorted((repo / "docs").rglob("*.md")), repo / "launch" / "matcher.launch.py"]
    texts = "".join(page.read_text() for page in pages)
    examples = re.findall(r"ros2 launch feature_matcher_ros matcher\.launch\.py((?:[^\n]|\\\n)*)", texts)
    assert len(examples) >= 5
    for line in examples:
        args = dict(re.findall(r"(\w+):=(\S+)", line))
        assert args and set(args) <= ARGUMENTS, line
        _, nodes = describe(prefix, monkeypatch, **args)
        (n,) = [node for node in nodes if node.executable == "matcher_node"]
        if "backend" in args:
            assert n.parameters[1]["backend"] == args["backend"]
    with pytest.raises(ValueError, match="imgae"):
        describe(prefix, monkeypatch, imgae="/camera/image_raw")
    slam_examples = re.findall(r"ros2 launch feature_matcher_ros slam\.launch\.py((?:[^\n]|\\\n)*)",
                               texts + (repo / "launch" / "slam.launch.py").read_text())
    assert len(slam_examples) >= 2
    for line in slam_examples:
        args = dict(re.findall(r"(\w+):=(\S+)", line))
        _, nodes = describe(prefix, monkeypatch, "slam.launch.py", **args)
        assert {"matcher_node", "pose_graph_node"} <= {n.executable for n in nodes}, line


def test_launched_node_serves_its_namespace_remappings_and_parameters(prefix, monkeypatch, repo, shared, tmp_path):
    params = tmp_path / "robot.yaml"  # a robot's own params file: values that differ from the defaults
    text = (repo / "config" / "matcher.yaml").read_text()
    text = text.replace("max_matches: 0 ", "max_matches: 321 ").replace("input_qos: sensor_data", "input_qos: reliable")
    params.write_text(text)
    _, (node,) = describe(prefix, monkeypatch, namespace="front", image="/cam/image_raw",
                          camera_info="/cam/camera_info", params_file=str(params), backend="sift", device="cpu")
    command = runner.command(node, installed_entry_point(prefix, node.executable).split(":")[0])
    frames, camera, _ = load_frames(shared, count=2)
    log = tmp_path / "node.log"
    node = NodeProcess(command=command, log_path=log)
    client = MatcherClient(node="matcher_node", namespace="/front", image_topic="/cam/image_raw",
                           info_topic="/cam/camera_info")
    try:
        assert client.wait_for_matcher(timeout=60.0), log.read_text(errors="replace")
        got = client.get_parameters(["backend", "device", "max_matches", "input_qos", "use_sim_time"])
        assert got == {"backend": "sift", "device": "cpu", "max_matches": 321, "input_qos": "reliable",
                       "use_sim_time": False}
        client.prime_camera_info(camera)
        for stamp, rgb in frames:
            client.send(rgb, "rgb8", stamp, camera, "camera")
            assert client.wait_result(stamp, timeout=60.0) is not None, log.read_text(errors="replace")
        assert client.matches[frames[1][0]].width > 50  # matched, on /front/matches
    finally:
        client.close()
        code, _ = node.stop()
        node.close()
    assert code in (0, -2), log.read_text(errors="replace")


def test_launched_robot_mount_and_base_frame(prefix, monkeypatch, repo, shared, tmp_path):
    """base_frame, camera_frame and mount_* start the node with base_frame set and fm-static-transform with the
    camera's mounting: the node finds it on /tf_static and publishes base_link odometry. Input QoS reliable: a
    best-effort 640x480 frame can be lost on a loaded machine (make test-repeat saw it), and this test is about
    the frames, not the transport."""
    params = tmp_path / "robot.yaml"
    params.write_text((repo / "config" / "matcher.yaml").read_text().replace("input_qos: sensor_data",
                                                                           "input_qos: reliable"))
    _, nodes = describe(prefix, monkeypatch, namespace="bot", base_frame="base_link",
                        camera_frame="camera_optical_frame", mount_x="0.1", mount_z="0.2", mount_roll="0.05",
                        publish_tf="false", backend="sift", device="cpu", params_file=str(params))
    mount, matcher = sorted(nodes, key=lambda n: n.executable)
    assert (mount.executable, matcher.executable) == ("fm-static-transform", "matcher_node")
    assert mount.other["arguments"][-5:] == ["--frame-id", "base_link", "--child-frame-id", "camera_optical_frame",
                                             "--optical"]
    assert {k: matcher.parameters[1][k] for k in ("base_frame", "camera_frame", "publish_tf")} == {
        "base_frame": "base_link", "camera_frame": "camera_optical_frame", "publish_tf": False}
    with pytest.raises(ValueError, match="needs base_frame and camera_frame"):
        describe(prefix, monkeypatch, mount_x="0.1")
    frames, camera, _ = load_frames(shared, count=2)
    processes = [NodeProcess(command=runner.command(n, installed_entry_point(prefix, n.executable).split(":")[0]),
                             log_path=tmp_path / f"{n.executable}.log")
                 for n in (mount, matcher)]
    client = MatcherClient(node="matcher_node", namespace="/bot")
    try:
        assert client.wait_for_matcher(timeout=60.0)
        client.prime_camera_info(camera)
        stamps = []
        for stamp, rgb in frames:
            for k in range(10):  # the first until the node has the mounting
                client.send(rgb, "rgb8", stamp + k, camera, "camera")
                if client.wait_result(stamp + k, timeout=5.0) is not None:
                    stamps.append(stamp + k)
                    break
        assert len(stamps) == 2, (tmp_path / "matcher_node.log").read_text(errors="replace")
        assert client.wait_until(lambda: stamps[1] in client.odometry, 10.0)
        assert client.odometry[stamps[1]].child_frame_id == "base_link"
    finally:
        client.close()
        for p in processes:
            p.stop()
            p.close()


def _wait(predicate, timeout):
    """Poll ``predicate`` (set by subscription callbacks on the client's spinner thread) until it holds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_slam_launch_closes_a_loop_and_broadcasts_map_to_odom(prefix, monkeypatch, shared, tmp_path):
    """slam.launch.py: matcher_node (with the camera's mounting from fm-static-transform) and pose_graph_node
    with one set of arguments; a there-and-back stereo bag replayed to them over DDS (fm-replay --connect) gives
    loop closures on the way back, a keyframe path in map and map -> odom on /tf beside odom -> base_link."""
    from nav_msgs.msg import Path as PathMsg

    from feature_matcher_ros.ros.tf import TF_QOS, tf_message_type
    from feature_matcher_ros.tools import make_bag

    bag = tmp_path / "tab"
    assert make_bag.main([str(shared / "data/kitti06_stereo_f000_050"), str(bag), "--there-and-back", "--quiet"]) == 0
    params = tmp_path / "slam.yaml"
    params.write_text((TEST_DATA / "eval_stereo_sift.yaml").read_text()
                      + "    input_qos: reliable\n    diagnostics_period_s: 0.5\n")
    declared, nodes = describe(prefix, monkeypatch, "slam.launch.py", namespace="slam", params_file=str(params),
                               base_frame="base_link", camera_frame="camera_optical_frame", mount_x="1.5",
                               mount_z="1.6", use_sim_time="true", image="/camera/image_raw",
                               camera_info="/camera/camera_info", right_image="/camera/right/image_raw",
                               right_camera_info="/camera/right/camera_info")
    assert set(declared) == ARGUMENTS | {"loop_keyframes", "loop_kernel"}
    by_exe = {n.executable: n for n in nodes}
    assert set(by_exe) == {"fm-static-transform", "matcher_node", "pose_graph_node"}
    assert by_exe["matcher_node"].parameters[1]["loop.keyframes"] == 1000
    assert by_exe["pose_graph_node"].parameters[0]["base_frame"] == "base_link"
    processes = [NodeProcess(command=runner.command(n, installed_entry_point(prefix, n.executable).split(":")[0]),
                             log_path=tmp_path / f"{n.executable}.log") for n in nodes]
    client = MatcherClient(node="matcher_node", namespace="/slam", image_topic="/camera/image_raw",
                           info_topic="/camera/camera_info")
    seen = {"tf": set(), "loops": 0, "path": 0}
    client.node.create_subscription(tf_message_type(), "/tf", lambda m: seen["tf"].update(
        (t.header.frame_id, t.child_frame_id) for t in m.transforms), TF_QOS)
    client.node.create_subscription(PathMsg, "/slam/pose_graph/path", lambda m: seen.update(path=len(m.poses)),
                                    latched_qos(1))
    client.node.create_subscription(PoseWithCovarianceStamped, "/slam/loop_closure",
                                    lambda m: seen.update(loops=seen["loops"] + 1), latched_qos(100))

    def logs():
        return "\n".join(f"--- {n.executable}: {(tmp_path / f'{n.executable}.log').read_text(errors='replace')[-3000:]}"
                         for n in nodes)

    try:
        assert client.wait_for_matcher(timeout=60.0), logs()
        run = subprocess.run([sys.executable, "-m", "feature_matcher_ros.tools.replay", str(bag), "--connect",
                              "--node-namespace", "/slam", "--params", str(params), "--rate", "0.1",
                              "--out", str(tmp_path / "replay"), "--pictures", "0", "--quiet"],
                             capture_output=True, text=True, timeout=400)
        assert run.returncode == 0, run.stdout + run.stderr + logs()
        assert _wait(lambda: seen["loops"] >= 1 and ("map", "odom") in seen["tf"], 30.0), (seen, logs())
        assert ("odom", "base_link") in seen["tf"] and seen["path"] >= 10, (seen, logs())
    finally:
        client.close()
        codes = [p.stop()[0] for p in processes]
        for p in processes:
            p.close()
    assert all(c == 0 for c in codes), (codes, logs())
