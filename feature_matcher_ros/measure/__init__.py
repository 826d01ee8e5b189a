"""Measurement: commands that print numbers (frames/s, latency, memory, accuracy, loss), each a console script
(``fm-bench``, ``fm-bench-metric``, ``fm-bench-geometry``, ``fm-thread-study``, ``fm-nms-effect``, ``fm-stress``
with ``--chaos``, ``fm-dds-loss``, ``fm-burn``, ``fm-gpu-check``), plus the two libraries they stand on:
``chaos`` (the episodes behind ``fm-stress --chaos``) and ``parity`` (the Efficient LoFTR fixture: its
checkpoint, pairs, thresholds and the comparison with the official outputs; the tests import it too). The
runtime never imports this package."""
