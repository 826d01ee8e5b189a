"""Start matcher_node on a camera (needs a ROS 2 install with launch_ros).

    ros2 launch feature_matcher_ros matcher.launch.py image:=/camera/color/image_raw \
        camera_info:=/camera/color/camera_info namespace:=front params_file:=/path/to/matcher.yaml
    ros2 launch feature_matcher_ros matcher.launch.py backend:=sptd2 device:=auto
    ros2 launch feature_matcher_ros matcher.launch.py backend:=eloftr weights:=/path/eloftr_outdoor.ckpt
    ros2 launch feature_matcher_ros matcher.launch.py input_mode:=rgbd \
        params_file:=$(ros2 pkg prefix feature_matcher_ros)/share/feature_matcher_ros/config/matcher_rgbd.yaml \
        image:=/camera/color/image_raw camera_info:=/camera/color/camera_info \
        depth:=/camera/aligned_depth_to_color/image_raw
    ros2 launch feature_matcher_ros matcher.launch.py input_mode:=stereo image:=/stereo/left/image_rect \
        camera_info:=/stereo/left/camera_info right_image:=/stereo/right/image_rect \
        right_camera_info:=/stereo/right/camera_info

``backend``, ``weights``, ``device`` and ``input_mode`` override the params file when given (empty = keep the
file's value). ``depth`` (rgbd), ``right_image`` and ``right_camera_info`` (stereo) remap the metric inputs.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription

# Launch arguments that become read-only node parameters when not empty.
OVERRIDES = {
    "backend": "Matcher backend: sift | orb | eloftr | sptd2 (empty = the params file's).",
    "weights": "Checkpoint of a learned backend; eloftr needs eloftr_outdoor.ckpt (empty = the params file's: "
               "the shipped sptd2_small.pt for sptd2).",
    "device": "cpu | cuda | cuda:N | auto (empty = the params file's).",
    "input_mode": "mono | rgbd | stereo (empty = the params file's).",
}


def _node(context, *args, **kwargs):
    overrides = {}
    for name in OVERRIDES:
        value = LaunchConfiguration(name).perform(context).strip()
        if value:
            overrides[name] = value
    use_sim_time = LaunchConfiguration("use_sim_time").perform(context).strip().lower() in ("true", "1", "yes")
    return [Node(
        package="feature_matcher_ros",
        executable="matcher_node",
        name="matcher_node",
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        emulate_tty=True,
        parameters=[LaunchConfiguration("params_file"), {"use_sim_time": use_sim_time, **overrides}],
        remappings=[
            ("image", LaunchConfiguration("image")),
            ("camera_info", LaunchConfiguration("camera_info")),
            ("depth", LaunchConfiguration("depth")),
            ("right/image", LaunchConfiguration("right_image")),
            ("right/camera_info", LaunchConfiguration("right_camera_info")),
        ],
    )]


def generate_launch_description():
    default_params = os.path.join(get_package_share_directory("feature_matcher_ros"), "config", "matcher.yaml")
    arguments = [
        DeclareLaunchArgument("namespace", default_value="", description="Namespace of the node and its topics."),
        DeclareLaunchArgument("image", default_value="image", description="Input image topic."),
        DeclareLaunchArgument("camera_info", default_value="camera_info", description="Input camera_info topic."),
        DeclareLaunchArgument("depth", default_value="depth",
                              description="rgbd: depth image registered to the colour image."),
        DeclareLaunchArgument("right_image", default_value="right/image",
                              description="stereo: right image (rectified)."),
        DeclareLaunchArgument("right_camera_info", default_value="right/camera_info",
                              description="stereo: right camera_info (P[3] = -fx * baseline)."),
        DeclareLaunchArgument("params_file", default_value=default_params, description="Parameters (YAML)."),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="Use /clock (bag replay)."),
        *(DeclareLaunchArgument(name, default_value="", description=text) for name, text in OVERRIDES.items()),
    ]
    return LaunchDescription([*arguments, OpaqueFunction(function=_node)])
