"""User commands, each a console script: ``fm-demo``, ``fm-match``, ``fm-make-bag``, ``fm-eval``, ``fm-replay``.
Measurement commands are in :mod:`feature_matcher_ros.measure`, training in :mod:`feature_matcher_ros.training`."""
