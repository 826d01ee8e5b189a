"""Offline and live evaluation on rosbag2 recordings (ROS-free: bags are read and written with ``rosbags``).

- :mod:`.bagio`: reading/writing bags, topic discovery, images, cameras, ground truth;
- :mod:`.records`: one evaluated frame, from the offline frontend or the live node;
- :mod:`.metrics`: pose AUC, pose errors, epipolar precision, counts, latency;
- :mod:`.trajectory`: chaining with the ground-truth scale, evo (run as commands); trajectories and TUM files are
  :mod:`feature_matcher_ros.datasets`, message decoding :mod:`feature_matcher_ros.messages`;
- :mod:`.offline`: running the :class:`~feature_matcher_ros.frontend.Frontend` over a bag;
- :mod:`.report`: metrics.json, report.md and plots.
"""
