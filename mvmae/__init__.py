"""mvmae: compressed-domain (H.264 motion-vector) training data and MV-MAE action recognition."""

__version__ = "0.1.0"
