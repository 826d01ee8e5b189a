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
    zip_safe=False,
    maintainer="feature_matcher_ros maintainers",
    maintainer_email="maintainers@feature-matcher-ros.invalid",
    description="Real-time learned image matching front-end for ROS 2",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "matcher_node = feature_matcher_ros.matcher_node:main",
            "lifecycle_matcher_node = feature_matcher_ros.lifecycle_matcher_node:main",
            "fm-demo = feature_matcher_ros.tools.demo:main",
            "fm-match = feature_matcher_ros.tools.match:main",
            "fm-bench = feature_matcher_ros.tools.bench:main",
            "fm-make-bag = feature_matcher_ros.tools.make_bag:main",
            "fm-eval = feature_matcher_ros.tools.eval:main",
            "fm-replay = feature_matcher_ros.tools.replay:main",
            "fm-train-sptd2 = feature_matcher_ros.tools.train_sptd2:main",
            "fm-eval-sptd2 = feature_matcher_ros.tools.eval_sptd2:main",
            "fm-sptd2-teacher = feature_matcher_ros.tools.sptd2_teacher:main",
            "fm-stress = feature_matcher_ros.tools.stress:main",
            "fm-dds-loss = feature_matcher_ros.tools.dds_loss:main",
            "fm-gpu-check = feature_matcher_ros.tools.gpu_check:main",
        ],
    },
)
