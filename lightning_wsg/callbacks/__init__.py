"""Lightning callbacks that write what a trained model does, one per file.

* :class:`GroundingWriter` (``lightning predict``, ``cli_configs/predict.yaml``): predictions
  as JSON Lines, and pictures.
* :class:`PseudoLabelWriter` (``lightning predict``, ``cli_configs/pseudo_labels.yaml``): the
  chosen box per phrase of a dataset split, in a layout a supervised grounder reads.
* :class:`GroundingPictures` (validation): a grid of pictures logged to TensorBoard.
* :class:`DistillationDiagnostics` (training): what the distillation target carries
  (entropies, gradient norms of the two terms, where the teacher's top box is right), as
  JSON Lines and logged metrics.
* :class:`FeatureStatistics` (training): hands a feature tower the training split's feature
  statistics (the ``lightning`` command adds it).
* :class:`TestReport` (``lightning test``, ``cli_configs/report.yaml``): one self-contained
  HTML page per run.

``drawing`` holds what they share: boxes drawn on the original image.
"""

from .drawing import PALETTE, draw_grounding, picture_grid
from .feature_statistics import FeatureStatistics
from .kd_diagnostics import DistillationDiagnostics
from .pictures import GroundingPictures
from .pseudo_labels import PseudoLabelWriter
from .report import TestReport
from .writer import GroundingWriter

__all__ = [
    "PALETTE",
    "DistillationDiagnostics",
    "FeatureStatistics",
    "GroundingPictures",
    "GroundingWriter",
    "PseudoLabelWriter",
    "TestReport",
    "draw_grounding",
    "picture_grid",
]
