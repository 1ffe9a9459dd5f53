"""Region classification with point prompts (RoofSAM): the class of given regions (polygons, boxes, masks)
from a SAM / MobileSAM image embedding, and its training and evaluation on annotated images."""

from .classifier import RegionClassifier, RegionResult

__all__ = ["RegionClassifier", "RegionResult"]
