"""The confidence image: round(255 * sigmoid(winning logit)) of the published full-resolution logits, computed in
the fused low-resolution pass (FPSeg.segment(confidence=True)) and published by the controller."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ros_fakes import image_message, random_pixels

from fpseg_core import FPSeg
from fpseg_core.fusion import fuse
from fpseg_core.runtime.controller import FrameResult, SegmentationController


def _reference(model: FPSeg, image: np.ndarray, classes: list[str], fusion: str, threshold: float
               ) -> tuple[np.ndarray, np.ndarray]:
    """Labels and confidence the baseline way: all N logit maps at full resolution (postprocess_logits), fuse,
    then the sigmoid of the winning class's logit."""
    ids = model.resolve_classes(classes)
    logits = model.class_logits(image, ids)  # [N, H, W], as published
    labels = fuse(logits, ids, fusion, threshold)
    # argmax: the highest logit; priority: the first class above the threshold
    winner = logits.argmax(dim=0) if fusion == "argmax" else (logits > threshold).to(torch.uint8).argmax(dim=0)
    winning = logits.gather(0, winner[None])[0]
    confidence = torch.where(labels > 0, torch.round(torch.sigmoid(winning) * 255), 0)
    return labels.numpy(), confidence.to(torch.uint8).numpy()


@pytest.mark.parametrize("fusion", ["argmax", "priority"])
@pytest.mark.parametrize("threshold", [0.0, -3.0])
@pytest.mark.parametrize("shape", [(24, 32, 3), (61, 47, 3)])
def test_confidence_is_the_sigmoid_of_the_winning_logit(tiny_model: FPSeg, fusion: str, threshold: float,
                                                         shape: tuple[int, int, int]) -> None:
    image = random_pixels(*shape, seed=4)
    classes = ["sky", "road", "person"]
    result = tiny_model.segment(image, classes, fusion=fusion, threshold=threshold, confidence=True)
    labels, expected = _reference(tiny_model, image, classes, fusion, threshold)
    assert result.confidence is not None
    assert result.confidence.dtype == np.uint8 and result.confidence.shape == shape[:2]
    same = result.labels == labels  # the fast path equals the baseline up to float ties
    assert same.mean() > 0.99
    assert (labels > 0).any(), "the test needs labelled pixels"
    difference = np.abs(result.confidence.astype(int) - expected.astype(int))[same]
    assert difference.max() <= 1  # uint8 rounding of nearly equal floats
    assert not result.confidence[result.labels == 0].any()  # 0 where no class is present
    if threshold == 0.0:  # a labelled class has a logit above 0: probability above 0.5
        assert (result.confidence[result.labels > 0] >= 128).all()


def test_confidence_leaves_the_labels_unchanged_and_is_off_by_default(tiny_model: FPSeg) -> None:
    image = random_pixels(24, 32, 3, seed=5)
    plain = tiny_model.segment(image, ["road", "car"], threshold=-2.0)
    with_confidence = tiny_model.segment(image, ["road", "car"], threshold=-2.0, confidence=True)
    assert plain.confidence is None
    np.testing.assert_array_equal(plain.labels, with_confidence.labels)


def test_nothing_present_gives_zero_confidence(tiny_model: FPSeg) -> None:
    result = tiny_model.segment(random_pixels(24, 32, 3, seed=6), ["road"], threshold=1e6, confidence=True)
    assert not result.labels.any()
    assert result.confidence is not None and not result.confidence.any()


def test_the_controller_publishes_confidence_when_asked(tiny_model: FPSeg) -> None:
    controller = SegmentationController(tiny_model, score_threshold=0.01)
    message = image_message(random_pixels(24, 32, 3, seed=7), "rgb8")
    outcome = controller.handle(message)
    assert isinstance(outcome, FrameResult) and outcome.confidence is None
    controller.update({"publish_confidence": True})
    outcome = controller.handle(message)
    assert isinstance(outcome, FrameResult)
    assert outcome.confidence is not None and outcome.confidence.shape == outcome.labels.shape
    assert outcome.header is message.header
    assert not outcome.confidence[outcome.labels == 0].any()
    # score_threshold 0.01: every labelled pixel has a probability of at least about 1%
    assert (outcome.confidence[outcome.labels > 0] >= 2).all()
