"""SPTD2 training: pair generation (``data``, ``batches``), losses, checkpoints, the trainer (``train``:
fm-train-sptd2), the comparison with SIFT/ORB and teachers (``evaluate``: fm-eval-sptd2), the XFeat teacher's
heatmaps (``teacher``: fm-sptd2-teacher), and ``scripts/`` for runs on a lent GPU machine. The network itself,
its inference and ``load_checkpoint`` are the runtime's (:mod:`feature_matcher_ros.backends.sptd2`)."""
