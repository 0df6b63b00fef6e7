"""Accuracy against ground truth: instance matching (``instances``), pixel classes
(``classes``), and one sample's segmentation scored from its files (``segmentation``)."""

from snakescope.evaluation.segmentation import segmentation_scores

__all__ = ["segmentation_scores"]
