from glob import glob

from setuptools import find_packages, setup

package_name = "feature_matcher_ros"


def tree(folder):
    """data_files entries that install every file under ``folder`` into share/<package>/<folder>."""
    import os

    entries = {}
    for path in glob(f"{folder}/**/*", recursive=True):
        if os.path.isfile(path):
            entries.setdefault(os.path.join("share", package_name, os.path.dirname(path)), []).append(path)
    return sorted(entries.items())


setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*"]),
    include_package_data=True,
    package_data={package_name + ".weights": ["*.pt", "*.json", "*.md"]},
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", glob("launch/*.launch.py")),
        ("share/" + package_name + "/config", glob("config/*.yaml") + glob("config/*.xml")),
        *tree("data"),
    ],
    install_requires=["setuptools"],
    # evaluation over many bags and tuning (fm-eval with several bags, fm-tune); the node never needs them
    # ONNX export (fm-export) and runtime: onnxruntime (requirements-onnx.txt)
    extras_require={"eval": ["ray==2.60.0", "optuna==5.1.0"],
                    "onnx": ["onnxruntime==1.31.1", "onnx==1.23.2", "onnxscript==0.7.2", "onnx-ir==1.1.0"]},
    zip_safe=False,
    maintainer="feature_matcher_ros maintainers",
    maintainer_email="maintainers@feature-matcher-ros.invalid",
    description="Real-time learned image matching front-end for ROS 2",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            # the nodes
            "matcher_node = feature_matcher_ros.matcher_node:main",
            "lifecycle_matcher_node = feature_matcher_ros.lifecycle_matcher_node:main",
            "fm-static-transform = feature_matcher_ros.static_transform_node:main",
            "pose_graph_node = feature_matcher_ros.pose_graph_node:main",
            # user commands (feature_matcher_ros/tools)
            "fm-demo = feature_matcher_ros.tools.demo:main",
            "fm-match = feature_matcher_ros.tools.match:main",
            "fm-make-bag = feature_matcher_ros.tools.make_bag:main",
            "fm-eval = feature_matcher_ros.tools.eval:main",
            "fm-replay = feature_matcher_ros.tools.replay:main",
            "fm-tune = feature_matcher_ros.tools.tune:main",
            # measurement (feature_matcher_ros/measure)
            "fm-bench = feature_matcher_ros.measure.bench:main",
            "fm-export = feature_matcher_ros.tools.export:main",
            "fm-bench-metric = feature_matcher_ros.measure.bench_metric:main",
            "fm-bench-geometry = feature_matcher_ros.measure.bench_geometry:main",
            "fm-thread-study = feature_matcher_ros.measure.thread_study:main",
            "fm-nms-effect = feature_matcher_ros.measure.nms_effect:main",
            "fm-stress = feature_matcher_ros.measure.stress:main",
            "fm-dds-loss = feature_matcher_ros.measure.dds_loss:main",
            "fm-burn = feature_matcher_ros.measure.burn:main",
            "fm-gpu-check = feature_matcher_ros.measure.gpu_check:main",
            # training (feature_matcher_ros/training)
            "fm-train-sptd2 = feature_matcher_ros.training.sptd2.train:main",
            "fm-eval-sptd2 = feature_matcher_ros.training.sptd2.evaluate:main",
            "fm-sptd2-teacher = feature_matcher_ros.training.sptd2.teacher:main",
        ],
    },
)
