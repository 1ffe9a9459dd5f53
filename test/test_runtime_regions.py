"""Region classification in the node's ROS-free runtime: the controller keeps the embeddings of the frames it
segments, and RegionQueries classifies polygons and detection boxes on them without another encoder pass (the
backend's encode calls are counted)."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from region_fixtures import REGION_CLASSES, write_bank, write_decoder, write_official_sam
from ros_fakes import image_message, random_pixels

from fpseg_core import FPSeg
from fpseg_core.modeling.build import EMBED_DIM, PATCH_STRIDE
from fpseg_core.modeling.class_decoder import ClassDecoder
from fpseg_core.modeling.point_prompt_encoder import PointPromptEncoder
from fpseg_core.preprocess import Geometry
from fpseg_core.regions import RegionClassifier
from fpseg_core.regions.network import RegionHead
from fpseg_core.runtime.controller import FrameResult, SegmentationController, load_pipeline
from fpseg_core.runtime.regions import (
    DEFAULT_POINTS,
    LATEST,
    NS_PER_S,
    POINTS_RANGE,
    RegionQueryError,
    RegionSetupError,
    load_region_classifier,
)

HEIGHT, WIDTH = 24, 32
SQUARE = np.array([[2.0, 2.0], [20.0, 2.0], [20.0, 18.0], [2.0, 18.0]])
TRIANGLE = [[25.0, 3.0], [31.0, 20.0], [18.0, 20.0]]


class EncoderCalls:
    """Stands in for the backend's `encode`: runs it and keeps every embedding it returned."""

    def __init__(self, encode) -> None:
        self._encode = encode
        self.outputs: list[torch.Tensor] = []

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        self.outputs.append(self._encode(image))
        return self.outputs[-1]


class ClassifierCalls:
    """Stands in for RegionClassifier.classify: runs it and keeps each call's keyword arguments."""

    def __init__(self, classify) -> None:
        self._classify = classify
        self.calls: list[dict] = []

    def __call__(self, **kwargs):
        self.calls.append(kwargs)
        return self._classify(**kwargs)


def _classifier(model: FPSeg, seed: int = 3) -> RegionClassifier:
    """A random RoofSAM head on `model`'s embedding grid, without an image encoder (as the node builds it)."""
    torch.manual_seed(seed)
    grid = model.img_size // PATCH_STRIDE
    head = RegionHead(PointPromptEncoder(EMBED_DIM, (grid, grid), (model.img_size, model.img_size)),
                      ClassDecoder(len(REGION_CLASSES)))
    return RegionClassifier(None, head, REGION_CLASSES, model.img_size)


@pytest.fixture()
def encoder(tiny_model: FPSeg, monkeypatch: pytest.MonkeyPatch) -> EncoderCalls:
    calls = EncoderCalls(tiny_model.backend.encode)
    monkeypatch.setattr(tiny_model.backend, "encode", calls)
    return calls


@pytest.fixture()
def classifier(tiny_model: FPSeg, monkeypatch: pytest.MonkeyPatch) -> tuple[RegionClassifier, ClassifierCalls]:
    model = _classifier(tiny_model)
    calls = ClassifierCalls(model.classify)
    monkeypatch.setattr(model, "classify", calls)
    return model, calls


def _controller(model: FPSeg, classifier: RegionClassifier, **options) -> SegmentationController:
    return SegmentationController(model, region_classifier=classifier, **options)


def _handle(controller: SegmentationController, sec: int, seed: int | None = None) -> FrameResult:
    result = controller.handle(image_message(random_pixels(HEIGHT, WIDTH, 3, seed=sec if seed is None else seed),
                                             "rgb8", sec=sec))
    assert isinstance(result, FrameResult), result
    return result


def _detection(cx: float, cy: float, width: float, height: float) -> SimpleNamespace:
    """A vision_msgs/Detection2D as the node receives it (vision_msgs 4.x: bbox.center.position)."""
    center = SimpleNamespace(position=SimpleNamespace(x=cx, y=cy), theta=0.0)
    return SimpleNamespace(bbox=SimpleNamespace(center=center, size_x=width, size_y=height), results=[])


# ----------------------------------------------------------------------------------- the embedding
def test_segment_returns_the_embedding_only_when_asked(tiny_model: FPSeg, encoder: EncoderCalls) -> None:
    pixels = random_pixels(HEIGHT, WIDTH, 3)
    plain = tiny_model.segment(pixels)
    kept = tiny_model.segment(pixels, keep_embedding=True)
    assert plain.embedding is None and plain.geometry is None
    assert kept.embedding is encoder.outputs[-1] and len(encoder.outputs) == 2  # the same pass, no extra one
    assert kept.embedding.shape == (1, EMBED_DIM, tiny_model.img_size // PATCH_STRIDE,
                                    tiny_model.img_size // PATCH_STRIDE)
    assert kept.geometry == Geometry.for_image(HEIGHT, WIDTH, tiny_model.img_size, tiny_model.input_mode)
    np.testing.assert_array_equal(kept.labels, plain.labels)
    assert tiny_model.encoder_passes == 2


def test_without_a_region_classifier_no_embedding_is_kept(tiny_model: FPSeg, monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    asked: list[bool] = []
    segment = tiny_model.segment_batch

    def spy(*args, **kwargs):
        asked.append(kwargs["keep_embedding"])
        return segment(*args, **kwargs)

    monkeypatch.setattr(tiny_model, "segment_batch", spy)
    controller = SegmentationController(tiny_model)
    _handle(controller, sec=1)
    assert controller.regions is None and asked == [False]
    assert "region classes" not in dict(controller.health().values)


# ------------------------------------------------------------------------------------ classify (service)
def test_classify_on_a_segmented_frame_runs_no_second_encoder_pass(
    tiny_model: FPSeg, encoder: EncoderCalls, classifier: tuple[RegionClassifier, ClassifierCalls]
) -> None:
    model, calls = classifier
    controller = _controller(tiny_model, model)
    _handle(controller, sec=1)
    _handle(controller, sec=2)
    assert len(encoder.outputs) == controller.encoder_passes == 2

    results, used = controller.regions.classify(1 * NS_PER_S, [SQUARE, TRIANGLE])
    assert used == 1 * NS_PER_S
    assert len(encoder.outputs) == controller.encoder_passes == 2  # no encoder pass for the regions
    (call,) = calls.calls
    assert call["embedding"] is encoder.outputs[0]  # the first frame's own embedding
    assert call["geometry"] == Geometry.for_image(HEIGHT, WIDTH, tiny_model.img_size, tiny_model.input_mode)
    assert call["points_per_region"] == DEFAULT_POINTS
    assert [len(r.votes) for r in results] == [DEFAULT_POINTS, DEFAULT_POINTS]
    for result in results:
        assert result.class_name in REGION_CLASSES
        assert result.confidence == result.votes.count(result.class_name) / DEFAULT_POINTS
    # The same answer as the classifier gives on that embedding directly (same seed, same points).
    direct = model.classify(regions=call["regions"], embedding=encoder.outputs[0], geometry=call["geometry"])
    assert [(r.class_name, r.confidence) for r in results] == [(r.class_name, r.confidence) for r in direct]
    assert dict(controller.health().values)["encoder passes"] == "2"


def test_stamp_zero_is_the_latest_frame(
    tiny_model: FPSeg, encoder: EncoderCalls, classifier: tuple[RegionClassifier, ClassifierCalls]
) -> None:
    model, calls = classifier
    controller = _controller(tiny_model, model)
    for sec in (5, 3, 4):  # segmented in this order: the latest is the last segmented, not the largest stamp
        _handle(controller, sec=sec)
    _, used = controller.regions.classify(LATEST, [SQUARE])
    assert used == 4 * NS_PER_S and calls.calls[-1]["embedding"] is encoder.outputs[-1]


def test_an_unknown_stamp_names_the_cached_ones(
    tiny_model: FPSeg, classifier: tuple[RegionClassifier, ClassifierCalls]
) -> None:
    controller = _controller(tiny_model, classifier[0])
    with pytest.raises(RegionQueryError, match="no frame has been segmented yet"):
        controller.regions.classify(LATEST, [SQUARE])
    _handle(controller, sec=1)
    _handle(controller, sec=2)
    expected = ("no cached frame is stamped 7.000000005; cached (the last 4 segmented, region_cache_frames): "
                "1.000000000, 2.000000000")
    with pytest.raises(RegionQueryError, match=re.escape(expected)):
        controller.regions.classify(7 * NS_PER_S + 5, [SQUARE])
    reply = controller.regions.answer(7 * NS_PER_S + 5, [SQUARE])  # the service's answer: never raises
    assert not reply.success and expected in reply.message
    assert (reply.class_names, reply.confidences, reply.stamp_ns) == ([], [], 0)
    assert not classifier[1].calls


def test_the_cache_keeps_the_last_region_cache_frames(
    tiny_model: FPSeg, classifier: tuple[RegionClassifier, ClassifierCalls]
) -> None:
    controller = _controller(tiny_model, classifier[0], region_cache_frames=2)
    for sec in (1, 2, 3):
        _handle(controller, sec=sec)
    assert controller.regions.cached_stamps == [2 * NS_PER_S, 3 * NS_PER_S]
    with pytest.raises(RegionQueryError, match=r"cached .*: 2\.000000000, 3\.000000000"):
        controller.regions.classify(1 * NS_PER_S, [SQUARE])
    _handle(controller, sec=2, seed=9)  # the same stamp again: replaces the cached frame, stays bounded
    assert controller.regions.cached_stamps == [3 * NS_PER_S, 2 * NS_PER_S]
    assert dict(controller.health().values)["region frames cached"] == "2"
    with pytest.raises(ValueError, match=r"region_cache_frames must be an integer in \[1, 100\], got 0"):
        _controller(tiny_model, classifier[0], region_cache_frames=0)


def test_points_per_region_zero_is_the_parameter_and_others_are_checked(
    tiny_model: FPSeg, classifier: tuple[RegionClassifier, ClassifierCalls]
) -> None:
    model, calls = classifier
    controller = _controller(tiny_model, model, region_points=3)
    _handle(controller, sec=1)
    results, _ = controller.regions.classify(LATEST, [SQUARE])
    assert len(results[0].votes) == 3
    results, _ = controller.regions.classify(LATEST, [SQUARE], points_per_region=7)
    assert len(results[0].votes) == 7 and calls.calls[-1]["points_per_region"] == 7
    reply = controller.regions.answer(LATEST, [SQUARE], POINTS_RANGE[1] + 1)
    assert not reply.success
    assert f"points_per_region must be an integer in [1, {POINTS_RANGE[1]}]" in reply.message
    assert "(0 = region_points, 3)" in reply.message


def test_the_reply_lists_a_class_and_confidence_per_polygon(
    tiny_model: FPSeg, classifier: tuple[RegionClassifier, ClassifierCalls]
) -> None:
    controller = _controller(tiny_model, classifier[0])
    _handle(controller, sec=6)
    # geometry_msgs/Polygon-like input (Point32 x, y, z); z is ignored.
    polygon = SimpleNamespace(points=[SimpleNamespace(x=x, y=y, z=9.0) for x, y in SQUARE])
    reply = controller.regions.answer(LATEST, [polygon, TRIANGLE])
    assert reply.success and reply.stamp_ns == 6 * NS_PER_S
    assert reply.message == "classified 2 region(s) on the frame stamped 6.000000000"
    direct, _ = controller.regions.classify(6 * NS_PER_S, [SQUARE, TRIANGLE])
    assert reply.class_names == [r.class_name for r in direct]
    assert reply.confidences == [r.confidence for r in direct]
    np.testing.assert_array_equal(classifier[1].calls[0]["regions"][0], SQUARE)


# ---------------------------------------------------------------------------------------- detections
def test_detections_get_one_hypothesis_per_box(
    tiny_model: FPSeg, encoder: EncoderCalls, classifier: tuple[RegionClassifier, ClassifierCalls]
) -> None:
    model, calls = classifier
    controller = _controller(tiny_model, model)
    _handle(controller, sec=1)
    _handle(controller, sec=2)
    boxes = [_detection(10.0, 10.0, 12.0, 8.0), _detection(28.0, 20.0, 10.0, 10.0), _detection(5.0, 5.0, 4.0, 4.0)]
    labels = controller.regions.detections(2 * NS_PER_S, boxes)
    assert len(labels) == len(boxes) and len(encoder.outputs) == 2
    assert calls.calls[-1]["embedding"] is encoder.outputs[1]
    # the centre / size boxes as (x0, y0, x1, y1); the classifier clips them to the image
    np.testing.assert_array_equal(calls.calls[-1]["regions"][1], [23.0, 15.0, 33.0, 25.0])
    for name, score in labels:
        assert name in REGION_CLASSES and 0.0 < score <= 1.0
    assert controller.regions.detections(2 * NS_PER_S, []) == []


def test_detections_use_the_exact_frame_else_the_newest_older_one(
    tiny_model: FPSeg, encoder: EncoderCalls, classifier: tuple[RegionClassifier, ClassifierCalls]
) -> None:
    model, calls = classifier
    controller = _controller(tiny_model, model)
    _handle(controller, sec=10)
    _handle(controller, sec=20)
    box = [_detection(10.0, 10.0, 8.0, 8.0)]
    controller.regions.detections(10 * NS_PER_S, box)
    assert calls.calls[-1]["embedding"] is encoder.outputs[0]
    controller.regions.detections(15 * NS_PER_S, box)  # between the two frames: the older one
    assert calls.calls[-1]["embedding"] is encoder.outputs[0]
    controller.regions.detections(25 * NS_PER_S, box)  # after the latest: the latest
    assert calls.calls[-1]["embedding"] is encoder.outputs[1]
    with pytest.raises(RegionQueryError, match=re.escape("no cached frame is stamped at or before 9.000000000; "
                                                         "cached: 10.000000000, 20.000000000")):
        controller.regions.detections(9 * NS_PER_S, box)


# ---------------------------------------------------------------------------------------- loading
@pytest.fixture(scope="module")
def official_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("regions")
    sam = write_official_sam(folder / "mobile_sam.pt")
    return {"sam": sam, "bank": write_bank(sam, ["road", "car"], folder / "bank.safetensors"),
            "decoder": write_decoder(folder / "decoder_test.pt")}


def test_the_node_classifier_has_no_encoder_of_its_own(official_files: dict[str, Path]) -> None:
    pipeline = load_pipeline(str(official_files["sam"]), str(official_files["bank"]), backend="torch", device="cpu")
    classifier = load_region_classifier(str(official_files["sam"]), str(official_files["decoder"]), None, pipeline)
    assert classifier.encoder is None  # it classifies on the pipeline's embeddings
    assert classifier.class_names == REGION_CLASSES  # from decoder_test.classes.json
    assert (classifier.img_size, classifier.input_mode, classifier.device) == (pipeline.img_size,
                                                                               pipeline.input_mode, pipeline.device)
    renamed = load_region_classifier(str(official_files["sam"]), str(official_files["decoder"]), ["a", "b", "c"],
                                     pipeline)
    assert renamed.class_names == ["a", "b", "c"]
    assert load_region_classifier(str(official_files["sam"]), "", None, pipeline) is None

    controller = SegmentationController(pipeline, region_classifier=classifier)
    _handle(controller, sec=1)
    reply = controller.regions.answer(LATEST, [SQUARE, TRIANGLE])
    assert reply.success, reply.message
    assert set(reply.class_names) <= set(REGION_CLASSES) and controller.encoder_passes == 1


def test_an_fpseg_checkpoint_cannot_give_the_prompt_encoder(tiny_checkpoint: Path, tiny_model: FPSeg,
                                                            official_files: dict[str, Path]) -> None:
    with pytest.raises(RegionSetupError) as info:
        load_region_classifier(str(tiny_checkpoint), str(official_files["decoder"]), None, tiny_model)
    message = str(info.value)
    assert f"prompt encoder from checkpoint {tiny_checkpoint}, which must be an official SAM / MobileSAM" in message
    assert "no point-prompt weights" in message


@pytest.mark.parametrize(("names", "expected"), [
    (["a", "b"], "has 3 classes but the class_names given name 2"),
    ([1, 2, 3], "class names must be a list of non-empty strings"),
])
def test_bad_region_class_names_are_refused(official_files: dict[str, Path], tiny_model: FPSeg, names: list,
                                            expected: str) -> None:
    with pytest.raises(RegionSetupError, match=re.escape(expected)):
        load_region_classifier(str(official_files["sam"]), str(official_files["decoder"]), names, tiny_model)
