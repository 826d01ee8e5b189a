"""Start matcher_node on a camera (needs a ROS 2 install with launch_ros).

    ros2 launch feature_matcher_ros matcher.launch.py image:=/camera/color/image_raw \
        camera_info:=/camera/color/camera_info namespace:=front params_file:=/path/to/matcher.yaml
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue


def generate_launch_description():
    default_params = os.path.join(get_package_share_directory("feature_matcher_ros"), "config", "matcher.yaml")
    arguments = [
        DeclareLaunchArgument("namespace", default_value="", description="Namespace of the node and its topics."),
        DeclareLaunchArgument("image", default_value="image", description="Input image topic."),
        DeclareLaunchArgument("camera_info", default_value="camera_info", description="Input camera_info topic."),
        DeclareLaunchArgument("params_file", default_value=default_params, description="Parameters (YAML)."),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="Use /clock (bag replay)."),
    ]
    node = Node(
        package="feature_matcher_ros",
        executable="matcher_node",
        name="matcher_node",
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        emulate_tty=True,
        parameters=[
            LaunchConfiguration("params_file"),
            {"use_sim_time": ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool)},
        ],
        remappings=[
            ("image", LaunchConfiguration("image")),
            ("camera_info", LaunchConfiguration("camera_info")),
        ],
    )
    return LaunchDescription([*arguments, node])
