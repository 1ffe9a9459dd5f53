"""The node's ROS-free controller on a real tiny FPSeg model: class switching, prompt loading with rollback,
per-frame outputs and stats, and the newest-frame worker."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import TINY_CLASSES, make_bank
from ros_fakes import compressed_message, image_message, random_pixels
from safetensors.torch import save_file

from fpseg_core import FPSeg, FPSegError, PromptBank, load_checkpoint
from fpseg_core.constants import MAX_CLASSES, UNLABELED_CLASS_ID
from fpseg_core.export.onnx_export import export_onnx
from fpseg_core.preprocess import to_rgb
from fpseg_core.runtime.controller import (
    ClassSelectionError,
    FrameResult,
    Rejection,
    SegmentationController,
    load_pipeline,
    probability_to_logit,
)
from fpseg_core.runtime.health import Level

LOW_THRESHOLD = 0.01  # random weights: a low threshold makes sure classes show up in the labels
WAIT_S = 60.0


@pytest.fixture()
def controller(tiny_model: FPSeg) -> SegmentationController:
    return SegmentationController(tiny_model, score_threshold=LOW_THRESHOLD)


@pytest.fixture()
def frame() -> np.ndarray:
    return random_pixels(24, 32, 3, seed=11)


def _labels(controller: SegmentationController, pixels: np.ndarray, encoding: str = "rgb8") -> np.ndarray:
    outcome = controller.handle(image_message(pixels, encoding))
    assert isinstance(outcome, FrameResult), outcome
    return outcome.labels


def _state(controller: SegmentationController, model: FPSeg) -> tuple:
    return controller.available, controller.active, model.bank, model.bank.embeddings.clone()


def _assert_unchanged(before: tuple, controller: SegmentationController, model: FPSeg) -> None:
    available, active, bank, tokens = before
    assert controller.available == available
    assert controller.active == active
    assert model.bank is bank
    torch.testing.assert_close(model.bank.embeddings, tokens)


# ------------------------------------------------------------------------------------------ classes
def test_default_active_classes_are_the_whole_bank(controller: SegmentationController) -> None:
    assert controller.available == TINY_CLASSES
    assert controller.active == TINY_CLASSES
    assert controller.label_map() == {0: "none", 1: "road", 2: "car", 3: "person", 4: "sky"}


@pytest.mark.parametrize(("classes", "expected"), [
    (["road", "bicycle"], "unknown class(es) 'bicycle'; available: road, car, person, sky"),
    ([], "classes is empty; choose at least one of: road, car, person, sky"),
    ("road", "must be a list of class names"),
    (None, "must be a list of class names"),
    ([1, 2], "classes must be strings"),
    (["car", "car"], "listed twice: car"),
])
def test_bad_class_list_is_refused_and_the_old_one_stays(
    controller: SegmentationController, classes: object, expected: str
) -> None:
    controller.update({"classes": ["person", "road"]})
    with pytest.raises(ClassSelectionError) as info:
        controller.update({"classes": classes})
    assert expected in str(info.value)
    assert controller.active == ["person", "road"]


def test_too_many_classes_names_the_limit(tiny_model: FPSeg) -> None:
    controller = SegmentationController(tiny_model, classes=["road"], max_classes=2)
    with pytest.raises(ClassSelectionError, match=r"3 classes requested, at most 2 may be active \(max_classes\)"):
        controller.update({"classes": ["road", "car", "sky"]})
    assert controller.active == ["road"]
    with pytest.raises(ClassSelectionError, match="at most 2"):
        SegmentationController(tiny_model, max_classes=2)  # default = the whole bank of 4


def test_update_is_all_or_nothing(controller: SegmentationController) -> None:
    with pytest.raises(ValueError, match="fusion must be one of argmax, priority"):
        controller.update({"classes": ["sky"], "fusion": "vote"})
    with pytest.raises(ValueError, match="score_threshold must be a number in"):
        controller.update({"classes": ["sky"], "score_threshold": 1.5})
    for window in (0, 10001):
        with pytest.raises(ValueError, match=r"stats_window must be an integer in \[1, 10000\]"):
            controller.update({"classes": ["sky"], "stats_window": window})
    with pytest.raises(ValueError, match="not a run-time setting: checkpoint"):
        controller.update({"classes": ["sky"], "checkpoint": "x.pth"})
    assert controller.active == TINY_CLASSES


def test_class_switch_takes_effect_on_the_next_frame(
    controller: SegmentationController, tiny_model: FPSeg, frame: np.ndarray
) -> None:
    threshold = probability_to_logit(LOW_THRESHOLD)
    controller.update({"classes": ["road"]})
    labels = _labels(controller, frame)
    np.testing.assert_array_equal(labels, tiny_model.predict(frame, ["road"], threshold=threshold))
    assert set(np.unique(labels)) <= {0, 1} and labels.any()

    controller.update({"classes": ["sky", "person"], "fusion": "priority"})
    labels = _labels(controller, frame)
    expected = tiny_model.predict(frame, ["sky", "person"], fusion="priority", threshold=threshold)
    np.testing.assert_array_equal(labels, expected)
    assert set(np.unique(labels)) <= {0, 3, 4} and labels.any()


def test_threshold_is_a_probability(controller: SegmentationController, tiny_model: FPSeg,
                                    frame: np.ndarray) -> None:
    controller.update({"score_threshold": 0.5})
    np.testing.assert_array_equal(_labels(controller, frame), tiny_model.predict(frame, threshold=0.0))
    assert probability_to_logit(0.5) == 0.0


def test_switching_classes_while_frames_flow_is_atomic(controller: SegmentationController) -> None:
    """Every published frame's labels belong to the class list its stats report, never a mix."""
    allowed = {("road",): {0, 1}, ("car", "sky"): {0, 2, 4}}
    results: list[FrameResult] = []
    done = threading.Event()

    def on_result(result: FrameResult) -> None:
        results.append(result)
        if len(results) >= 8:
            done.set()

    controller.start(on_result, lambda rejection: pytest.fail(rejection.reason))
    stop_flipping = threading.Event()

    def flip() -> None:  # many switches per inference, but not a busy loop starving the worker of the GIL
        while not stop_flipping.is_set():
            for classes in allowed:
                controller.update({"classes": list(classes)})
                time.sleep(0.001)

    flipper = threading.Thread(target=flip)
    flipper.start()
    try:
        for seed in range(500):
            controller.submit(image_message(random_pixels(16, 16, 3, seed), "rgb8"))
            if done.wait(0.01):
                break
        assert done.wait(WAIT_S)
    finally:
        stop_flipping.set()
        flipper.join()
        assert controller.stop()
    for result in results:
        assert set(np.unique(result.labels)) <= allowed[tuple(result.stats.classes)]


# ------------------------------------------------------------------------------------- prompt banks
def _save(bank: PromptBank, tmp_path: Path, name: str) -> str:
    return str(bank.save(tmp_path / f"{name}.safetensors"))


def test_merge_adds_a_class_and_activates_it(
    controller: SegmentationController, tiny_model: FPSeg, tmp_path: Path, frame: np.ndarray
) -> None:
    controller.update({"classes": ["road"]})
    path = _save(make_bank(tiny_model, ["bicycle"]), tmp_path, "bicycle")
    update = controller.load_prompts(path, activate=True)
    assert update.success, update.message
    assert update.available == [*TINY_CLASSES, "bicycle"] == controller.available
    assert update.active == ["road", "bicycle"] == controller.active
    assert "merged 1 class(es)" in update.message
    labels = _labels(controller, frame)
    assert set(np.unique(labels)) <= {0, 1, 5} and (labels == 5).any()
    assert controller.label_map()[5] == "bicycle"


def test_merge_overwrites_a_class_of_the_same_name(
    controller: SegmentationController, tiny_model: FPSeg, tmp_path: Path
) -> None:
    new = make_bank(tiny_model, ["car"], seed=9)
    update = controller.load_prompts(_save(new, tmp_path, "car"))
    assert update.success and update.available == TINY_CLASSES and update.active == TINY_CLASSES
    torch.testing.assert_close(tiny_model.bank.embeddings[1], new.embeddings[0])


def test_subset_takes_only_the_named_classes(
    controller: SegmentationController, tiny_model: FPSeg, tmp_path: Path
) -> None:
    path = _save(make_bank(tiny_model, ["bicycle", "train", "bus"]), tmp_path, "three")
    update = controller.load_prompts(path, classes=["bus", "bicycle"], activate=True)
    assert update.success
    assert update.available == [*TINY_CLASSES, "bus", "bicycle"]
    assert update.active == [*TINY_CLASSES, "bus", "bicycle"]


def test_replace_keeps_the_active_classes_it_still_has(
    controller: SegmentationController, tiny_model: FPSeg, tmp_path: Path, frame: np.ndarray
) -> None:
    controller.update({"classes": ["person", "car"]})
    update = controller.load_prompts(_save(make_bank(tiny_model, ["bus", "car"]), tmp_path, "new"), replace=True)
    assert update.success, update.message
    assert update.available == ["bus", "car"] and update.active == ["car"]
    assert "deactivated (not in the new bank): person" in update.message
    assert set(np.unique(_labels(controller, frame))) <= {0, 2}


def _corrupt(tmp_path: Path, model: FPSeg) -> str:
    path = tmp_path / "corrupt.safetensors"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8).tobytes())
    return str(path)


def _not_a_bank(tmp_path: Path, model: FPSeg) -> str:
    path = tmp_path / "weights.safetensors"
    save_file({"weight": torch.zeros(3, 3)}, str(path))
    return str(path)


def _wrong_shape(tmp_path: Path, model: FPSeg) -> str:
    bank = make_bank(model, ["bicycle"])
    path = _save(bank, tmp_path, "shape")
    header = {"format": "fpseg-prompt-bank/1", "names": '["bicycle"]', "prompt_size": "4",
              "decoder_fingerprint": bank.decoder_fingerprint}
    save_file({"prompt_embeddings": torch.zeros(1, 4, 128)}, path, metadata=header)
    return path


def _other_decoder(tmp_path: Path, model: FPSeg) -> str:
    bank = make_bank(model, ["bicycle"])
    bank.decoder_fingerprint = "0123456789abcdef"
    return _save(bank, tmp_path, "fingerprint")


def _other_prompt_size(tmp_path: Path, model: FPSeg) -> str:
    bank = make_bank(model, ["bicycle"])
    return _save(PromptBank(bank.names, torch.zeros(1, 8, 256), bank.encoder, bank.decoder_fingerprint),
                 tmp_path, "size")


@pytest.mark.parametrize(("make_file", "options", "expected"), [
    (lambda tmp, model: str(tmp / "missing.safetensors"), {}, "does not exist"),
    (_corrupt, {}, "not a readable safetensors prompt bank"),
    (_not_a_bank, {}, "not an FPSeg prompt bank"),
    (_wrong_shape, {}, "must have shape [n_classes, prompt_size, 256]"),
    (_other_decoder, {}, "was tuned for decoder 0123456789abcdef"),
    (_other_prompt_size, {}, "prompt size 8 does not match the running bank's 4"),
    (lambda tmp, model: _save(make_bank(model, ["bus"]), tmp, "bus"), {"classes": ["tram"]},
     "unknown class(es) 'tram'"),
    (lambda tmp, model: _save(make_bank(model, ["bus"]), tmp, "bus"), {"replace": True},
     "classes is empty"),
])
def test_a_bad_bank_is_refused_and_nothing_changes(
    controller: SegmentationController, tiny_model: FPSeg, tmp_path: Path, frame: np.ndarray,
    make_file, options: dict, expected: str,
) -> None:
    controller.update({"classes": ["sky", "road"]})
    labels_before = _labels(controller, frame)
    before = _state(controller, tiny_model)
    path = make_file(tmp_path, tiny_model)
    update = controller.load_prompts(path, **options)
    assert not update.success
    assert expected in update.message and path in update.message
    assert update.available == TINY_CLASSES and update.active == ["sky", "road"]
    _assert_unchanged(before, controller, tiny_model)
    np.testing.assert_array_equal(_labels(controller, frame), labels_before)


def test_activation_beyond_max_classes_is_refused(tiny_model: FPSeg, tmp_path: Path) -> None:
    controller = SegmentationController(tiny_model, max_classes=5)
    before = _state(controller, tiny_model)
    update = controller.load_prompts(_save(make_bank(tiny_model, ["bus", "train"]), tmp_path, "two"),
                                     activate=True)
    assert not update.success and "6 classes requested, at most 5" in update.message
    _assert_unchanged(before, controller, tiny_model)


class SwapFailsHalfway(FPSeg):
    """A backend that has already overwritten its device tokens when taking a new bank fails."""

    def set_bank(self, bank: PromptBank, force: bool = False) -> None:
        if "poison" in bank.names:
            self._prompts = torch.zeros_like(self._prompts)
            raise RuntimeError("CUDA error: out of memory")
        super().set_bank(bank, force)


def test_backend_failure_during_the_swap_rolls_back(tiny_model: FPSeg, tmp_path: Path,
                                                    frame: np.ndarray) -> None:
    model = SwapFailsHalfway(tiny_model.model, tiny_model.bank)
    controller = SegmentationController(model, score_threshold=LOW_THRESHOLD)
    labels_before = _labels(controller, frame)
    before = _state(controller, model)
    update = controller.load_prompts(_save(make_bank(model, ["poison"]), tmp_path, "poison"), activate=True)
    assert not update.success and "could not take the bank (CUDA error: out of memory)" in update.message
    _assert_unchanged(before, controller, model)
    np.testing.assert_array_equal(_labels(controller, frame), labels_before)


# ------------------------------------------------------------------------------------------- frames
def test_outputs_carry_the_input_header_and_size(controller: SegmentationController) -> None:
    msg = image_message(random_pixels(21, 34, 3), "bgr8", padding=2, sec=7, nanosec=5, frame_id="cam_front")
    result = controller.handle(msg)
    assert isinstance(result, FrameResult)
    assert result.header is msg.header
    assert result.labels.shape == (21, 34) and result.labels.dtype == np.uint8
    assert result.overlay is None


def test_overlay_shows_the_rgb_image_where_nothing_was_found(controller: SegmentationController) -> None:
    controller.update({"publish_color": True, "score_threshold": 0.5})
    pixels = random_pixels(20, 30, 3, seed=4)
    result = controller.handle(image_message(pixels, "bgr8"))
    assert isinstance(result, FrameResult)
    assert result.overlay.shape == (20, 30, 3) and result.overlay.dtype == np.uint8
    background = result.labels == 0
    assert background.any() and (~background).any()
    rgb = to_rgb(pixels, "bgr")
    np.testing.assert_array_equal(result.overlay[background], rgb[background])
    assert (result.overlay[~background] != rgb[~background]).any(axis=-1).all()


def test_stats_count_frames_and_measure_latency_from_the_stamp(tiny_model: FPSeg) -> None:
    ticks = iter([5_000_000_000, 5_050_000_000, 6_000_000_000, 6_030_000_000, 9_000_000_000, 9_020_000_000])
    controller = SegmentationController(tiny_model, classes=["car"], stats_window=2,
                                        clock_ns=lambda: next(ticks))
    pixels = random_pixels(8, 8, 3)
    first = controller.handle(image_message(pixels, "rgb8", sec=4, nanosec=900_000_000))  # stamp 100 ms old
    second = controller.handle(image_message(pixels, "rgb8", sec=6))  # stamped on arrival
    third = controller.handle(image_message(pixels, "rgb8", sec=0))  # unstamped: from arrival
    assert [r.stats.frame for r in (first, second, third)] == [1, 2, 3]
    assert [r.stats.latency_ms for r in (first, second, third)] == pytest.approx([150.0, 30.0, 20.0])
    stats = third.stats
    assert stats.window == 2 and stats.latency_mean_ms == pytest.approx(25.0)
    assert stats.latency_max_ms == pytest.approx(30.0)
    assert stats.classes == ["car"] and stats.backend == controller.backend_name
    assert stats.inference_ms == pytest.approx(
        stats.preprocess_ms + stats.encoder_ms + stats.decoder_ms + stats.postprocess_ms)
    assert (stats.dropped_frames, stats.rejected_frames, stats.failed_frames) == (0, 0, 0)


def test_malformed_message_is_counted_and_the_next_frame_works(controller: SegmentationController) -> None:
    bad = image_message(random_pixels(4, 4, 3), "rgb8")
    bad.step = 5
    outcome = controller.handle(bad)
    assert isinstance(outcome, Rejection) and outcome.malformed
    assert "step 5 is smaller than width x channels" in outcome.reason
    good = controller.handle(image_message(random_pixels(4, 4, 3), "rgb8"))
    assert isinstance(good, FrameResult) and good.stats.rejected_frames == 1 and good.stats.frame == 1


def test_inference_failure_is_counted_and_the_node_goes_on(
    controller: SegmentationController, tiny_model: FPSeg, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as patch:
        patch.setattr(tiny_model, "segment_batch", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("device lost")))
        outcome = controller.handle(image_message(random_pixels(4, 4, 3), "rgb8"))
    assert isinstance(outcome, Rejection) and not outcome.malformed
    assert "RuntimeError: device lost" in outcome.reason
    good = controller.handle(image_message(random_pixels(4, 4, 3), "rgb8"))
    assert isinstance(good, FrameResult) and good.stats.failed_frames == 1


def test_compressed_input(tiny_model: FPSeg, frame: np.ndarray) -> None:
    controller = SegmentationController(tiny_model, compressed_input=True)
    result = controller.handle(compressed_message(frame, "png"))
    assert isinstance(result, FrameResult)
    np.testing.assert_array_equal(result.labels, tiny_model.predict(frame))
    assert isinstance(controller.handle(image_message(frame, "rgb8")), Rejection)


class GatedFPSeg(FPSeg):
    """Blocks each inference until the test lets it go."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.started = threading.Semaphore(0)
        self.release = threading.Semaphore(0)

    def segment_batch(self, *args, **kwargs):
        self.started.release()
        assert self.release.acquire(timeout=WAIT_S)
        return super().segment_batch(*args, **kwargs)


def test_worker_drops_stale_frames_under_overload(tiny_model: FPSeg) -> None:
    model = GatedFPSeg(tiny_model.model, tiny_model.bank)
    controller = SegmentationController(model)
    results: list[FrameResult] = []
    controller.start(results.append, lambda rejection: pytest.fail(rejection.reason))
    try:
        controller.submit(image_message(random_pixels(8, 8, 3), "rgb8", sec=1))
        assert model.started.acquire(timeout=WAIT_S)  # frame 1 is being segmented
        for sec in range(2, 21):  # 19 frames arrive meanwhile; submit never waits for inference
            controller.submit(image_message(random_pixels(8, 8, 3), "rgb8", sec=sec))
        assert controller.dropped_frames == 18
        model.release.release()
        assert model.started.acquire(timeout=WAIT_S)
        model.release.release()
    finally:
        model.release.release()
        assert controller.stop(WAIT_S)
    assert [r.header.stamp.sec for r in results] == [1, 20]
    assert results[-1].stats.dropped_frames == 18


def test_two_cameras_waiting_are_encoded_as_one_batch_with_drops_counted_per_camera(tiny_model: FPSeg) -> None:
    model = GatedFPSeg(tiny_model.model, tiny_model.bank)
    controller = SegmentationController(model, cameras=["front", "rear"])
    results: list[FrameResult] = []
    controller.start(results.append, lambda rejection: pytest.fail(rejection.reason))
    try:
        controller.submit(image_message(random_pixels(8, 8, 3), "rgb8", sec=1), "front")
        assert model.started.acquire(timeout=WAIT_S)  # front 1 is being segmented
        for sec in range(2, 6):  # front 2..5 (2..4 dropped) and rear 10, 11 (10 dropped) arrive meanwhile
            controller.submit(image_message(random_pixels(8, 8, 3), "rgb8", sec=sec), "front")
        controller.submit(image_message(random_pixels(12, 10, 3), "rgb8", sec=10), "rear")
        controller.submit(image_message(random_pixels(12, 10, 3), "rgb8", sec=11), "rear")
        assert controller.dropped_by_camera == {"front": 3, "rear": 1}
        model.release.release()
        assert model.started.acquire(timeout=WAIT_S)
        model.release.release()
        _wait_until(lambda: len(results) == 3)
    finally:
        model.release.release()
        assert controller.stop(WAIT_S)
    # rear is served first in the batch: front was served last
    assert [(r.camera, r.header.stamp.sec, r.stats.batch_size) for r in results] == [
        ("front", 1, 1), ("rear", 11, 2), ("front", 5, 2)]
    assert [r.labels.shape for r in results] == [(8, 8), (12, 10), (8, 8)]
    # counts at the time of each report: front's 3 drops happened while front 1 was being segmented
    assert [(r.stats.camera, r.stats.frame, r.stats.dropped_frames) for r in results] == [
        ("front", 1, 3), ("rear", 1, 1), ("front", 2, 3)]
    assert controller.dropped_frames == 4 and controller.segmented_frames == 3
    assert "camera rear" in dict(controller.health().values)


def test_a_silent_camera_does_not_stall_the_other_and_bad_frames_count_per_camera(tiny_model: FPSeg) -> None:
    controller = SegmentationController(tiny_model, cameras=["front", "rear"])
    results: list[FrameResult] = []
    rejections: list[Rejection] = []
    controller.start(results.append, rejections.append)
    try:
        controller.submit(image_message(random_pixels(8, 8, 3), "rgb8", sec=1), "rear")  # rear then goes silent
        for sec in range(2, 8):
            assert controller.submit(image_message(random_pixels(8, 8, 3), "rgb8", sec=sec), "front")
            _wait_until(lambda n=sec: len(results) == n)
        bad = image_message(random_pixels(8, 8, 3), "rgb8", sec=9)
        bad.step = 1
        controller.submit(bad, "rear")
        _wait_until(lambda: len(rejections) == 1)
    finally:
        assert controller.stop(WAIT_S)
    assert [r.header.stamp.sec for r in results if r.camera == "front"] == [2, 3, 4, 5, 6, 7]
    assert [r.camera for r in results].count("rear") == 1
    assert rejections[0].camera == "rear" and "of camera rear" in rejections[0].reason
    assert (controller.rejected_frames, results[-1].stats.rejected_frames) == (1, 0)  # front's own count
    with pytest.raises(KeyError, match="unknown camera 'left'"):
        controller.handle(image_message(random_pixels(8, 8, 3), "rgb8"), "left")
    with pytest.raises(ValueError, match="distinct non-empty"):
        SegmentationController(tiny_model, cameras=["front", "front"])


def test_one_bad_frame_in_a_batch_costs_that_frame_only(controller: SegmentationController, tiny_model: FPSeg
                                                        ) -> None:
    cameras = SegmentationController(tiny_model, score_threshold=LOW_THRESHOLD, cameras=["a", "b", "c"])
    bad = image_message(random_pixels(8, 8, 3), "rgb8", sec=2)
    bad.encoding = "no-such-encoding"
    outcomes = cameras.handle_batch([("a", image_message(random_pixels(8, 8, 3), "rgb8", sec=1)), ("b", bad),
                                     ("c", image_message(random_pixels(6, 9, 3), "rgb8", sec=3))])
    assert [type(o).__name__ for o in outcomes] == ["FrameResult", "Rejection", "FrameResult"]
    assert outcomes[1].malformed and outcomes[0].stats.batch_size == outcomes[2].stats.batch_size == 2
    alone = controller.handle(image_message(random_pixels(6, 9, 3), "rgb8", sec=3))
    np.testing.assert_array_equal(outcomes[2].labels, alone.labels)  # batching changes no label


def _wait_until(condition, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


def test_a_failing_publish_costs_that_frame_only(controller: SegmentationController) -> None:
    """The publish callback raises on every third frame: the other frames are still published, each failed
    publish is counted in failed_frames and goes to on_error, and the worker stays alive."""
    calls: list[int] = []
    published: list[FrameResult] = []
    errors: list[BaseException] = []

    def publish(result: FrameResult) -> None:
        calls.append(result.stats.frame)
        if len(calls) % 3 == 0:
            raise RuntimeError("publisher's context is invalid")
        published.append(result)

    controller.start(publish, lambda rejection: pytest.fail(rejection.reason), errors.append)
    frames = 9
    try:
        for sec in range(1, frames + 1):  # one at a time, so that none is dropped
            assert controller.submit(image_message(random_pixels(8, 8, 3, seed=sec), "rgb8", sec=sec))
            _wait_until(lambda n=sec: len(published) + len(errors) == n)
        assert controller.alive and controller.death_cause is None
    finally:
        assert controller.stop(WAIT_S)
    assert calls == list(range(1, frames + 1))
    assert [r.header.stamp.sec for r in published] == [1, 2, 4, 5, 7, 8]
    assert [str(e) for e in errors] == ["publisher's context is invalid"] * 3
    assert controller.failed_frames == 3 and controller.dropped_frames == 0
    assert [r.stats.failed_frames for r in published] == [0, 0, 1, 1, 2, 2]  # the stats say so as well


class HeaderFails(SimpleNamespace):
    """An image message whose header cannot be read: not malformed input, a failure of this frame."""

    @property
    def header(self) -> None:
        raise RuntimeError("header unavailable")


def test_a_failing_rejection_report_is_not_counted_twice(controller: SegmentationController) -> None:
    errors: list[BaseException] = []

    def report(rejection: Rejection) -> None:
        raise RuntimeError("logger failed")

    controller.start(lambda result: None, report, errors.append)
    try:
        bad = image_message(random_pixels(4, 4, 3), "rgb8")
        bad.step = 5
        assert controller.submit(bad)
        _wait_until(lambda: len(errors) == 1)
        fields = vars(image_message(random_pixels(4, 4, 3), "rgb8"))
        assert controller.submit(HeaderFails(**{k: v for k, v in fields.items() if k != "header"}))
        _wait_until(lambda: len(errors) == 2)
        assert controller.alive
    finally:
        assert controller.stop(WAIT_S)
    assert (controller.rejected_frames, controller.failed_frames) == (1, 1)


def test_a_dead_inference_thread_is_reported_and_refuses_frames(controller: SegmentationController) -> None:
    def publish(result: FrameResult) -> None:
        raise SystemExit("a library called sys.exit on the inference thread")

    assert not controller.alive and controller.death_cause is None
    controller.start(publish, lambda rejection: pytest.fail(rejection.reason))
    assert controller.submit(image_message(random_pixels(8, 8, 3), "rgb8"))
    _wait_until(lambda: not controller.alive)
    assert isinstance(controller.death_cause, SystemExit)
    assert not controller.submit(image_message(random_pixels(8, 8, 3), "rgb8"))
    assert controller.stop(WAIT_S)


def test_stop_then_start_runs_a_new_thread_and_leaks_none(controller: SegmentationController) -> None:
    """The node's deactivate / activate: the model stays loaded, counters go on, no thread is left behind."""
    baseline = threading.active_count()
    results: list[FrameResult] = []
    for cycle in range(1, 4):
        controller.start(results.append, lambda rejection: pytest.fail(rejection.reason))
        assert controller.alive
        with pytest.raises(RuntimeError, match="already started"):
            controller.start(results.append, lambda rejection: None)
        assert controller.submit(image_message(random_pixels(8, 8, 3), "rgb8"))
        _wait_until(lambda cycle=cycle: len(results) == cycle)
        assert controller.stop(WAIT_S)
        assert not controller.alive
        assert not controller.submit(image_message(random_pixels(8, 8, 3), "rgb8"))  # stopped: refused
        assert threading.active_count() == baseline
    assert [r.stats.frame for r in results] == [1, 2, 3]


def test_a_latency_budget_keeps_the_prefix_that_fits(tiny_model: FPSeg) -> None:
    controller = SegmentationController(tiny_model, classes=["sky", "car", "road"], score_threshold=LOW_THRESHOLD)
    frame = random_pixels(24, 32, 3, seed=3)
    first = controller.handle(image_message(frame, "rgb8"))  # measures the costs
    assert first.stats.skipped_classes == [] and first.stats.budget_ms == 0.0
    controller.update({"latency_budget_ms": 1e-3})  # below any frame's cost: only the first class
    outcome = controller.handle(image_message(frame, "rgb8"))
    assert outcome.stats.classes == ["sky"]
    assert outcome.stats.skipped_classes == ["car", "road"]
    assert outcome.stats.budget_ms == pytest.approx(1e-3)
    assert set(np.unique(outcome.labels).tolist()) <= {0, TINY_CLASSES.index("sky") + 1}
    assert controller.health().level == Level.WARN
    assert "skipping car, road" in controller.health().message
    controller.update({"latency_budget_ms": 0.0})  # off: every class again
    outcome = controller.handle(image_message(frame, "rgb8"))
    assert outcome.stats.classes == ["sky", "car", "road"] and outcome.stats.skipped_classes == []


@pytest.mark.parametrize(("changes", "expected"), [
    ({"latency_budget_ms": -1.0}, "latency_budget_ms must be a number in [0.0, 100000.0]"),
    ({"expected_input_hz": "10"}, "expected_input_hz must be a number"),
    ({"publish_confidence": 1}, "publish_confidence must be true or false"),
    ({"latency_warn_ms": 5.0, "fusion": "max"}, "fusion must be one of"),
])
def test_new_settings_are_checked_all_or_nothing(controller: SegmentationController, changes: dict,
                                                 expected: str) -> None:
    with pytest.raises(ValueError, match=re.escape(expected)):
        controller.update(changes)
    values = dict(controller.health().values)  # nothing was applied
    assert (values["latency budget (ms)"], values["latency warn (ms)"]) == ("off", "not checked")


def test_label_values_stop_below_unlabeled(tiny_model: FPSeg) -> None:
    """A full bank labels up to MAX_CLASSES (254); 255 is vision_msgs' 'unlabeled' and never in the label map."""
    names = [f"class_{i}" for i in range(MAX_CLASSES)]
    tiny_model.set_bank(make_bank(tiny_model, names))
    controller = SegmentationController(tiny_model, classes=[names[-1]], score_threshold=LOW_THRESHOLD)
    label_map = controller.label_map()
    assert max(label_map) == MAX_CLASSES == UNLABELED_CLASS_ID - 1
    assert UNLABELED_CLASS_ID not in label_map
    labels = _labels(controller, random_pixels(16, 16, 3, seed=9))
    assert set(np.unique(labels).tolist()) <= {0, MAX_CLASSES}


def test_mono8_frame_is_segmented_as_grey_rgb(controller: SegmentationController, tiny_model: FPSeg) -> None:
    grey = random_pixels(6, 9, 1, seed=8)
    threshold = probability_to_logit(LOW_THRESHOLD)
    np.testing.assert_array_equal(_labels(controller, grey, "mono8"),
                                  tiny_model.predict(np.repeat(grey[..., None], 3, 2), threshold=threshold))


# ----------------------------------------------------------------------------------------- pipeline
def test_load_pipeline_expands_home_and_reads_the_prompt_bank(
    tiny_checkpoint: Path, tiny_model: FPSeg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "tiny.pth").write_bytes(tiny_checkpoint.read_bytes())
    make_bank(tiny_model, ["bus", "train"]).save(tmp_path / "bank.safetensors")
    pipeline = load_pipeline("~/tiny.pth", prompts="~/bank.safetensors", input_mode="letterbox")
    assert pipeline.classes == ["bus", "train"]
    assert (pipeline.backend_name, pipeline.input_mode, pipeline.device.type) == ("torch", "letterbox", "cpu")
    assert load_pipeline(str(tiny_checkpoint)).classes == TINY_CLASSES


@pytest.mark.parametrize(("options", "error", "expected"), [
    ({"checkpoint": ""}, FPSegError, "parameter 'checkpoint' is empty"),
    ({"checkpoint": "/nonexistent/model.pth"}, FPSegError, "does not exist"),
    ({"backend": "onnxruntime"}, ValueError, "needs engine_dir"),
    ({"backend": "tflite"}, ValueError, "backend must be one of"),
    ({"input_mode": "crop"}, ValueError, "input_mode must be one of"),
])
def test_load_pipeline_refuses_bad_settings(tiny_checkpoint: Path, options: dict, error: type,
                                            expected: str) -> None:
    with pytest.raises(error, match=expected):
        load_pipeline(**{"checkpoint": str(tiny_checkpoint), **options})


def test_the_controller_runs_the_same_on_onnxruntime(tiny_checkpoint: Path, tiny_model: FPSeg, tmp_path: Path,
                                                    frame: np.ndarray) -> None:
    for module in ("onnx", "onnxruntime"):
        pytest.importorskip(module, reason=f"{module} is not installed (it has no rosdep key): pip install '.[onnx]'")
    loaded = load_checkpoint(tiny_checkpoint)
    export_onnx(loaded.model, loaded.config, tmp_path / "onnx")
    pipeline = load_pipeline(str(tiny_checkpoint), backend="onnxruntime", engine_dir=str(tmp_path / "onnx"))
    onnx = SegmentationController(pipeline, classes=["person", "road"], score_threshold=LOW_THRESHOLD)
    torch_ = SegmentationController(tiny_model, classes=["person", "road"], score_threshold=LOW_THRESHOLD)
    result = onnx.handle(image_message(frame, "rgb8"))
    assert isinstance(result, FrameResult) and result.stats.backend == "onnxruntime"
    agreement = (result.labels == _labels(torch_, frame)).mean()
    assert agreement > 0.99  # the same network; only float rounding differs
    update = onnx.load_prompts(_save(make_bank(tiny_model, ["bicycle"]), tmp_path, "bicycle"), activate=True)
    assert update.success, update.message
    labels = _labels(onnx, frame)
    assert set(np.unique(labels)) <= {0, 1, 3, 5}
