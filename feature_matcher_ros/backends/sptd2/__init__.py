"""SPTD2 (Soft Point-wise Transformer for Descriptor and Detector) keypoints, trained in this package.

``SPTD2Backend`` is the frontend backend (registered as ``"sptd2"``); :mod:`.model` holds the network,
:mod:`.inference` the test-time procedure, :mod:`.losses`/:mod:`.data` the training pieces.
"""

from .backend import DEFAULT_WEIGHTS, SPTD2Backend, default_weights
from .config import SPTD2Config

__all__ = ["DEFAULT_WEIGHTS", "SPTD2Backend", "SPTD2Config", "default_weights"]
