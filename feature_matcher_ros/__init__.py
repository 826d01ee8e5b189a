"""feature_matcher_ros: a real-time learned image-matching front-end for ROS 2.

The core (backends, geometry, keyframes, frontend, evaluation) never imports rclpy; the ROS layer lives
in :mod:`feature_matcher_ros.ros`.
"""

__version__ = "0.1.0"
