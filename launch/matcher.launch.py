"""Start matcher_node on a camera (needs a ROS 2 install with launch_ros).

    ros2 launch feature_matcher_ros matcher.launch.py image:=/camera/color/image_raw \
        camera_info:=/camera/color/camera_info namespace:=front params_file:=/path/to/matcher.yaml
    ros2 launch feature_matcher_ros matcher.launch.py backend:=sptd2 device:=auto
    ros2 launch feature_matcher_ros matcher.launch.py backend:=eloftr weights:=/path/eloftr_outdoor.ckpt
    ros2 launch feature_matcher_ros matcher.launch.py backend:=eloftr runtime:=onnxruntime weights:=/path/fm_export_dir
    ros2 launch feature_matcher_ros matcher.launch.py input_mode:=rgbd \
        params_file:=$(ros2 pkg prefix feature_matcher_ros)/share/feature_matcher_ros/config/matcher_rgbd.yaml \
        image:=/camera/color/image_raw camera_info:=/camera/color/camera_info \
        depth:=/camera/aligned_depth_to_color/image_raw
    ros2 launch feature_matcher_ros matcher.launch.py input_mode:=stereo image:=/stereo/left/image_rect \
        camera_info:=/stereo/left/camera_info right_image:=/stereo/right/image_rect \
        right_camera_info:=/stereo/right/camera_info
    ros2 launch feature_matcher_ros matcher.launch.py base_frame:=base_link camera_frame:=camera_optical_frame \
        mount_x:=0.1 mount_z:=0.2 image:=/camera/image_raw camera_info:=/camera/camera_info

``backend``, ``weights``, ``device``, ``runtime``, ``input_mode``, ``base_frame``, ``camera_frame`` and
``publish_tf`` override the params file when given (empty = keep the file's value). ``depth`` (rgbd),
``right_image`` and ``right_camera_info`` (stereo) remap the metric inputs. For a robot without a URDF,
``mount_x mount_y mount_z`` (metres) and ``mount_roll mount_pitch mount_yaw`` (radians; zero looks along the
base's x axis) also start ``fm-static-transform`` publishing ``base_frame -> camera_frame`` (the camera's optical
frame) on /tf_static.
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
               "the shipped sptd2_fast_distill.pt for sptd2).",
    "device": "cpu | cuda | cuda:N | auto (empty = the params file's).",
    "runtime": "torch | onnxruntime (weights = an fm-export folder; empty = the params file's).",
    "input_mode": "mono | rgbd | stereo (empty = the params file's).",
    "base_frame": "Robot frame of the odometry, e.g. base_link (empty = the params file's; '' there = the camera).",
    "camera_frame": "The camera's (optical) frame name in the outputs and TF (empty = the params file's).",
}
MOUNT = ("mount_x", "mount_y", "mount_z", "mount_roll", "mount_pitch", "mount_yaw")


def _node(context, *args, extra=None, **kwargs):
    """The matcher node (and the mounting's static transform); ``extra``: more parameter overrides."""
    overrides = dict(extra or {})
    for name in OVERRIDES:
        value = LaunchConfiguration(name).perform(context).strip()
        if value:
            overrides[name] = value
    use_sim_time = LaunchConfiguration("use_sim_time").perform(context).strip().lower() in ("true", "1", "yes")
    publish_tf = LaunchConfiguration("publish_tf").perform(context).strip().lower()
    if publish_tf:
        overrides["publish_tf"] = publish_tf in ("true", "1", "yes")
    nodes = _mount(context, overrides)
    return nodes + [Node(
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


def _mount(context, overrides):
    """``fm-static-transform`` for ``base_frame -> camera_frame`` when a mount_* argument is given."""
    values = {name: LaunchConfiguration(name).perform(context).strip() for name in MOUNT}
    if not any(values.values()):
        return []
    base, camera = overrides.get("base_frame", ""), overrides.get("camera_frame", "")
    if not base or not camera:
        raise ValueError("mount_* needs base_frame and camera_frame (the transform's parent and child)")
    arguments = [arg for name, value in values.items() for arg in (f"--{name[6:]}", value or "0")]
    return [Node(
        package="feature_matcher_ros",
        executable="fm-static-transform",
        name="camera_mount_publisher",
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        arguments=[*arguments, "--frame-id", base, "--child-frame-id", camera, "--optical"],
    )]


def launch_arguments():
    """The arguments of this file (slam.launch.py takes them too)."""
    default_params = os.path.join(get_package_share_directory("feature_matcher_ros"), "config", "matcher.yaml")
    return [
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
        DeclareLaunchArgument("publish_tf", default_value="",
                              description="true | false: broadcast odom -> base_frame (empty = the params file's)."),
        *(DeclareLaunchArgument(name, default_value="", description=f"Camera mounting on base_frame: {name[6:]} "
                                f"({'radians' if name[6:] in ('roll', 'pitch', 'yaw') else 'metres'}).")
          for name in MOUNT),
    ]


def generate_launch_description():
    return LaunchDescription([*launch_arguments(), OpaqueFunction(function=_node)])
