"""feature_matcher_ros: a real-time learned image-matching front-end for ROS 2.

The core (backends, geometry, keyframes, frontend, evaluation) never imports rclpy; the ROS layer lives
in :mod:`feature_matcher_ros.ros`. Importing the package sets the CPU thread defaults of
:mod:`feature_matcher_ros.cpu_defaults` (before torch starts its OpenMP pool).
"""

from .cpu_defaults import apply_cpu_defaults

apply_cpu_defaults()

__version__ = "0.1.0"
