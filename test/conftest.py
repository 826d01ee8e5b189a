"""Test-wide set-up: a unique ROS_DOMAIN_ID per run, discovery kept on this machine, data paths."""

import os
import random
from pathlib import Path

import pytest

# Before anything imports rclpy: every test run (and every process it starts) gets its own domain,
# so parallel runs on one machine never see each other, and no discovery traffic leaves localhost.
if "FM_TEST_DOMAIN_SET" not in os.environ:
    os.environ["ROS_DOMAIN_ID"] = str(random.SystemRandom().randint(1, 101))
    os.environ["FM_TEST_DOMAIN_SET"] = "1"
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")

REPO = Path(__file__).resolve().parent.parent

# ``make test-fast``: the core tests (no DDS, no subprocess, no Efficient LoFTR run at 640x480), in under a
# minute. Every other file is marked ``slow``; so is any test here marked ``@pytest.mark.slow`` itself.
# A new file that fits these rules belongs in this list.
CORE_FILES = {
    "test_bag.py", "test_camera.py", "test_conversions.py", "test_datasets.py", "test_eloftr_fast_paths.py",
    "test_eloftr_loader.py", "test_frontend.py", "test_geometry.py", "test_messages.py", "test_metric.py",
    "test_layers.py", "test_nms.py", "test_se3.py", "test_sift.py", "test_sptd2.py", "test_sptd2_training.py",
    "test_sync.py",
}

# Files whose tests talk to nodes over DDS (marked ``dds``): ``make test-repeat`` runs them again and again
# with a core kept busy, to show that none of them passes or fails by chance.
DDS_FILES = {
    "test_chaos.py", "test_gpu_check.py", "test_launch.py", "test_lifecycle.py", "test_node.py",
    "test_node_bad_input.py", "test_node_eloftr.py", "test_node_guard.py", "test_node_metric.py",
    "test_node_params.py", "test_node_robot.py", "test_node_sptd2.py", "test_params_hypothesis.py", "test_replay.py",
    "test_replay_metric.py", "test_robustness.py", "test_shutdown.py", "test_transport.py",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name not in CORE_FILES and item.path.suffix == ".py" and item.path.name.startswith("test_"):
            item.add_marker(pytest.mark.slow)
        if item.path.name in DDS_FILES:
            item.add_marker(pytest.mark.dds)
SHARED = Path(os.environ.get("FM_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def shared() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"../shared not found at {SHARED}: tests need the shared datasets and fixtures")
    return SHARED


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def fixture_dir(shared) -> Path:
    """The Efficient LoFTR parity fixture (official outputs for a random-weight checkpoint)."""
    return shared / "fixtures" / "eloftr"


@pytest.fixture(scope="session")
def checkpoint(fixture_dir, repo) -> Path:
    """The fixture checkpoint, decompressed once into .cache/eloftr and checked against its sha256."""
    from feature_matcher_ros.measure.parity import fixture_checkpoint

    return fixture_checkpoint(fixture_dir, repo / ".cache" / "eloftr")


@pytest.fixture(scope="session")
def manifest(fixture_dir) -> dict:
    """The fixture's manifest.json."""
    from feature_matcher_ros.measure.parity import fixture_manifest

    return fixture_manifest(fixture_dir)


@pytest.fixture(scope="session")
def thr(fixture_dir) -> dict[str, float]:
    """The coarse threshold per mode (``full``, ``opt``) of the fixture's official outputs."""
    from feature_matcher_ros.measure.parity import fixture_thresholds

    return fixture_thresholds(fixture_dir)


def pytest_generate_tests(metafunc):
    """A test that takes ``pair`` runs on every pair of the Efficient LoFTR fixture (its manifest's list),
    unless it names its pairs itself."""
    chosen = any(m.args and "pair" in m.args[0] for m in metafunc.definition.iter_markers("parametrize"))
    if "pair" in metafunc.fixturenames and not chosen:
        from feature_matcher_ros.measure.parity import fixture_pairs

        fixture = SHARED / "fixtures" / "eloftr"
        metafunc.parametrize("pair", fixture_pairs(fixture) if fixture.is_dir() else ())


@pytest.fixture(scope="session")
def small_bag(shared, tmp_path_factory) -> Path:
    """A six-frame TUM bag (frames 0, 3, ..., 15: 0.3 s apart, mono8, mcap), made once per run. A rosbag2
    folder named ``tum6.bag``, as users name them: every tool must read it as what it is, not by its name."""
    from feature_matcher_ros.tools import make_bag

    out = tmp_path_factory.mktemp("bags") / "tum6.bag"
    assert make_bag.main([str(shared / "data/tum_fr2_desk"), str(out), "--frames", "0:18:3",
                          "--encoding", "mono8", "--quiet"]) == 0
    return out


# -- SPTD2 networks and images shared by test_sptd2.py and test_sptd2_training.py ---------------------------------
@pytest.fixture(scope="module")
def small_model():
    """SPTD2 small with seeded random weights, in eval mode."""
    import torch

    from feature_matcher_ros.backends.sptd2 import SPTD2Config
    from feature_matcher_ros.backends.sptd2.model import SPTD2

    torch.manual_seed(0)
    return SPTD2(SPTD2Config.small()).eval()


@pytest.fixture(scope="module")
def fast_model():
    """SPTD2 fast with seeded random weights, in eval mode."""
    import torch

    from feature_matcher_ros.backends.sptd2 import SPTD2Config
    from feature_matcher_ros.backends.sptd2.model import SPTD2

    torch.manual_seed(0)
    return SPTD2(SPTD2Config.fast()).eval()


@pytest.fixture(scope="module")
def graffiti(shared):
    """img1, img2 of Oxford graffiti at half size and the ground-truth homography for that size."""
    import cv2
    import numpy as np

    folder = shared / "data" / "oxford_graffiti"
    im0 = cv2.imread(str(folder / "images" / "img1.png"), cv2.IMREAD_GRAYSCALE)
    im1 = cv2.imread(str(folder / "images" / "img2.png"), cv2.IMREAD_GRAYSCALE)
    H = np.loadtxt(folder / "homographies" / "H_img1_to_img2.txt")
    s = np.array([[0.5, 0, -0.25], [0, 0.5, -0.25], [0, 0, 1]])  # x' = (x + 0.5) / 2 - 0.5

    def half(im):
        return cv2.resize(im, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
    return half(im0), half(im1), s @ H @ np.linalg.inv(s)


@pytest.fixture(scope="session")
def kitti06_stereo(shared):
    """The first 10 rectified grey pairs of KITTI 06 (``(left, right)`` uint8), with the left camera and the rig."""
    import cv2

    from feature_matcher_ros.camera import CameraModel
    from feature_matcher_ros.metric import StereoRig

    folder = shared / "data" / "kitti06_stereo_f000_050"
    camera = CameraModel.from_yaml(folder / "intrinsics.yaml")
    rig = StereoRig(camera, camera.K[0, 0], camera.K[0, 2], 0.537150653)
    left = sorted((folder / "images").glob("*.png"))[:10]
    right = sorted((folder / "images_right").glob("*.png"))[:10]
    frames = [(cv2.imread(str(a), cv2.IMREAD_GRAYSCALE), cv2.imread(str(b), cv2.IMREAD_GRAYSCALE))
              for a, b in zip(left, right)]
    return camera, rig, frames
