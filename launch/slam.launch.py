"""Start the front-end (matcher_node, as matcher.launch.py) and its SLAM back-end (pose_graph_node) with one set
of arguments (needs a ROS 2 install with launch_ros).

    ros2 launch feature_matcher_ros slam.launch.py input_mode:=stereo base_frame:=base_link \
        camera_frame:=camera_optical_frame image:=/stereo/left/image_rect camera_info:=/stereo/left/camera_info \
        right_image:=/stereo/right/image_rect right_camera_info:=/stereo/right/camera_info

Every argument of matcher.launch.py applies (same names, same meaning), plus ``loop_keyframes`` (the front-end's
``loop.keyframes``: keyframes kept for loop detection, default 1000; loop detection is what the back-end needs)
and ``loop_kernel`` (the back-end's robust kernel of loop edges). Both nodes run in ``namespace``, where the
back-end finds the front-end's ``keyframe_edge``, ``loop_closure``, ``keyframe`` and ``odometry``. With a
``base_frame`` the front-end broadcasts ``odom -> base_frame`` and the back-end ``map -> odom`` (REP 105).
"""

import importlib.util
import os

from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription


def _matcher_launch():
    """matcher.launch.py, beside this file (its arguments and its node)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "matcher.launch.py")
    spec = importlib.util.spec_from_file_location("feature_matcher_ros_matcher_launch", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MATCHER = _matcher_launch()


def _base_frame(context):
    """The front-end's base_frame: the argument, else the params file's (the back-end needs the same)."""
    value = LaunchConfiguration("base_frame").perform(context).strip()
    if value:
        return value
    import yaml

    with open(LaunchConfiguration("params_file").perform(context)) as f:
        doc = yaml.safe_load(f) or {}
    for section in doc.values():
        params = section.get("ros__parameters", {}) if isinstance(section, dict) else {}
        if "base_frame" in params:
            value = str(params["base_frame"])
    return value


def _nodes(context, *args, **kwargs):
    loop_keyframes = int(LaunchConfiguration("loop_keyframes").perform(context) or 0)
    front = MATCHER._node(context, extra={"loop.keyframes": loop_keyframes})
    use_sim_time = LaunchConfiguration("use_sim_time").perform(context).strip().lower() in ("true", "1", "yes")
    back = Node(
        package="feature_matcher_ros",
        executable="pose_graph_node",
        name="pose_graph_node",
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        emulate_tty=True,
        parameters=[{"base_frame": _base_frame(context),
                     "loop_kernel": LaunchConfiguration("loop_kernel").perform(context).strip() or "cauchy",
                     "use_sim_time": use_sim_time}],
    )
    return [*front, back]


def generate_launch_description():
    return LaunchDescription([
        *MATCHER.launch_arguments(),
        DeclareLaunchArgument("loop_keyframes", default_value="1000",
                              description="The front-end's loop.keyframes (keyframes kept for loop detection)."),
        DeclareLaunchArgument("loop_kernel", default_value="cauchy",
                              description="The back-end's robust kernel of loop edges: cauchy | huber | none."),
        OpaqueFunction(function=_nodes),
    ])
