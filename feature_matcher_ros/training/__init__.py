"""Training and development of the learned models: never imported by the runtime (``backends``, the frontend,
``ros``, the nodes; ``test/test_layers.py`` checks it). Each model has its subpackage: data, losses, the trainer
and its commands (``fm-train-sptd2``, ``fm-eval-sptd2``, ``fm-sptd2-teacher``) and the GPU scripts."""
