"""predict / fusion semantics on hand-made logits, input handling and the errors users see."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY_CLASSES
from PIL import Image

from fpseg_core import InputImageError, fuse
from fpseg_core.cli.main import main as fpseg_main
from fpseg_core.preprocess import Geometry, postprocess_logits, preprocess, to_rgb

# Three requested classes with bank ids 4, 0, 2, over a 1 x 4 image.
LOGITS = torch.tensor(
    [
        [[3.0, -1.0, 0.5, -2.0]],  # bank id 4
        [[1.0, 2.0, 0.7, -3.0]],  # bank id 0
        [[2.0, 5.0, -1.0, -1.0]],  # bank id 2
    ]
)
IDS = [4, 0, 2]


def test_argmax_takes_highest_logit_above_threshold() -> None:
    assert fuse(LOGITS, IDS, "argmax").tolist() == [[5, 3, 1, 0]]


def test_priority_takes_first_requested_class_above_threshold() -> None:
    assert fuse(LOGITS, IDS, "priority").tolist() == [[5, 1, 5, 0]]


def test_threshold_moves_the_none_boundary() -> None:
    assert fuse(LOGITS, IDS, "argmax", threshold=2.5).tolist() == [[5, 3, 0, 0]]
    assert fuse(LOGITS, IDS, "priority", threshold=1.5).tolist() == [[5, 1, 0, 0]]
    assert fuse(LOGITS, IDS, "argmax", threshold=-10.0).tolist() == [[5, 3, 1, 3]]


def test_class_subset_only_uses_requested_maps() -> None:
    assert fuse(LOGITS[1:2], [0], "argmax").tolist() == [[1, 1, 1, 0]]


def test_argmax_values_do_not_depend_on_request_order() -> None:
    order = [2, 0, 1]
    assert torch.equal(fuse(LOGITS[order], [IDS[i] for i in order], "argmax"), fuse(LOGITS, IDS, "argmax"))


def test_priority_depends_on_request_order() -> None:
    order = [2, 1, 0]
    assert fuse(LOGITS[order], [IDS[i] for i in order], "priority").tolist() == [[3, 3, 1, 0]]


def test_fuse_rejects_unknown_mode_and_mismatched_ids() -> None:
    with pytest.raises(ValueError, match="fusion must be one of argmax, priority"):
        fuse(LOGITS, IDS, "vote")
    with pytest.raises(ValueError, match="2 bank ids for 3 logit maps"):
        fuse(LOGITS, IDS[:2])


# --- the predict API on a tiny model -----------------------------------------------------------------

def test_predict_matches_fused_class_logits(tiny_model) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    requested = ["person", "road", "sky"]
    ids = tiny_model.resolve_classes(requested)
    logits = tiny_model.class_logits(image, ids)
    assert logits.shape == (3, 50, 70)
    for fusion in ("argmax", "priority"):
        labels = tiny_model.predict(image, classes=requested, fusion=fusion, threshold=0.0)
        assert labels.dtype == np.uint8 and labels.shape == (50, 70)
        np.testing.assert_array_equal(labels, fuse(logits, ids, fusion).numpy())
    assert set(np.unique(tiny_model.predict(image, classes=requested, threshold=-1e9))) <= {3, 1, 4}


def test_segment_reports_stage_timings(tiny_model) -> None:
    result = tiny_model.segment(np.zeros((32, 48, 3), np.uint8), ["car"])
    assert result.classes == ["car"]
    assert set(result.timings_ms) == {"preprocess", "encoder", "decoder", "postprocess", "total"}
    assert all(v >= 0 for v in result.timings_ms.values())


def test_colour_orders_and_channel_layouts_agree(tiny_model) -> None:
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    reference = tiny_model.class_logits(rgb, [0, 1])
    torch.testing.assert_close(tiny_model.class_logits(rgb[:, :, ::-1].copy(), [0, 1], color_order="bgr"),
                               reference)
    rgba = np.concatenate([rgb, np.full((40, 40, 1), 7, np.uint8)], axis=2)
    torch.testing.assert_close(tiny_model.class_logits(rgba, [0, 1]), reference)
    grey = rgb[:, :, 0]
    torch.testing.assert_close(tiny_model.class_logits(grey, [0, 1]),
                               tiny_model.class_logits(np.stack([grey] * 3, axis=2), [0, 1]))


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((8, 8, 3), np.float32), "dtype is float32, expected uint8"),
        (np.zeros((8, 8, 2), np.uint8), r"shape is \(8, 8, 2\), expected H x W"),
        (np.zeros((2, 8, 8, 3), np.uint8), "expected H x W"),
        (np.zeros((0, 8, 3), np.uint8), "image is empty"),
    ],
)
def test_bad_images_are_refused_with_a_reason(tiny_model, image, message) -> None:
    with pytest.raises(InputImageError, match=message):
        tiny_model.predict(image)


def test_bad_class_requests_are_refused(tiny_model) -> None:
    image = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(KeyError, match=r"unknown class\(es\) 'tree'; the prompt bank has: road, car, person"):
        tiny_model.predict(image, classes=["road", "tree"])
    with pytest.raises(ValueError, match="no classes requested; choose from: road, car"):
        tiny_model.predict(image, classes=[])
    with pytest.raises(TypeError, match="not one string"):
        tiny_model.predict(image, classes="road")
    with pytest.raises(ValueError, match="requested twice"):
        tiny_model.predict(image, classes=["road", "road"])


def test_bad_options_are_refused(tiny_checkpoint) -> None:
    from fpseg_core import FPSeg

    with pytest.raises(ValueError, match="input_mode must be one of squash, letterbox"):
        FPSeg.from_checkpoint(tiny_checkpoint, input_mode="crop")
    with pytest.raises(ValueError, match="fusion must be one of argmax, priority"):
        FPSeg.from_checkpoint(tiny_checkpoint, fusion="max")


# --- pre / post-processing -------------------------------------------------------------------------

def test_squash_and_letterbox_geometry() -> None:
    rgb = np.full((60, 120, 3), 200, np.uint8)
    squashed, geometry = preprocess(rgb, 64, "squash")
    assert squashed.shape == (1, 3, 64, 64) and geometry.resized_height == 64
    boxed, geometry = preprocess(rgb, 64, "letterbox")
    assert (geometry.resized_height, geometry.resized_width) == (32, 64)
    assert torch.all(boxed[:, :, 32:, :] == 0)  # zero padding after normalisation, bottom only
    expected = (200 - 123.675) / 58.395
    assert abs(boxed[0, 0, 10, 10].item() - expected) < 1e-4


def test_postprocess_crops_letterbox_padding() -> None:
    geometry = Geometry.for_image(30, 60, 64, "letterbox")
    low_res = torch.zeros(1, 1, 16, 16)
    low_res[..., 12:, :] = 100.0  # "on" only in rows that upsample into the padding
    full = postprocess_logits(low_res, geometry)
    assert full.shape == (1, 1, 30, 60)
    assert full.max().item() == 0.0
    squashed = postprocess_logits(low_res, Geometry.for_image(30, 60, 64, "squash"))
    assert squashed[0, 0, -1].min().item() == pytest.approx(100.0)


def test_to_rgb_accepts_pil_like_arrays() -> None:
    image = Image.new("RGB", (5, 4), (1, 2, 3))
    assert to_rgb(image).shape == (4, 5, 3)


# --- the segment command -------------------------------------------------------------------------

def test_segment_cli_writes_pngs(tiny_checkpoint, tmp_path, capsys) -> None:
    rng = np.random.default_rng(2)
    paths = []
    for name in ("a", "b"):
        path = tmp_path / f"{name}.png"
        Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    out = tmp_path / "out"
    code = fpseg_main(["segment", *paths, "--checkpoint", str(tiny_checkpoint), "--classes", "car,road",
                       "--out", str(out), "--threshold", "-1000"])
    assert code == 0
    labels = np.asarray(Image.open(out / "a_labels.png"))
    assert labels.shape == (30, 40) and set(np.unique(labels)) <= {1, 2}
    colour = np.asarray(Image.open(out / "a_color.png"))
    assert colour.shape == (30, 40, 3)
    assert {tuple(c) for c in colour.reshape(-1, 3)} <= {(128, 64, 128), (0, 0, 142)}  # Cityscapes road, car
    assert (out / "b_overlay.png").is_file()
    out = capsys.readouterr().out
    assert "backend: torch, classes: car, road" in out and "encoder" in out


def test_segment_cli_reports_unknown_class(tiny_checkpoint, tmp_path, capsys) -> None:
    path = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)
    code = fpseg_main(["segment", str(path), "--checkpoint", str(tiny_checkpoint), "--classes", "tree",
                       "--out", str(tmp_path)])
    assert code == 2
    assert "unknown class(es) 'tree'" in capsys.readouterr().err
    assert TINY_CLASSES == ["road", "car", "person", "sky"]


def test_segment_batch_equals_segment_per_image_in_one_encoder_pass(tiny_model) -> None:
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((40, 60, 3), (64, 32, 3), (30, 30, 3))]
    orders = ["rgb", "bgr", "rgb"]
    singles = [tiny_model.segment(image, ["sky", "car"], color_order=order, confidence=True)
               for image, order in zip(images, orders, strict=True)]
    assert not tiny_model.backend.batch_encoding  # on the CPU a batch gains nothing: torch batches on CUDA only
    tiny_model.backend.batch_encoding = True  # the CUDA path's batching, checked on the CPU
    encoded: list[int] = []
    encode = tiny_model.backend.encode
    tiny_model.backend.encode = lambda x: encoded.append(x.shape[0]) or encode(x)
    passes = tiny_model.encoder_passes
    batch = tiny_model.segment_batch(images, orders, ["sky", "car"], confidence=True)
    assert encoded == [3] and tiny_model.encoder_passes == passes + 3  # one pass, three images counted
    for single, result in zip(singles, batch, strict=True):
        np.testing.assert_array_equal(result.labels, single.labels)
        assert np.abs(result.confidence.astype(int) - single.confidence.astype(int)).max() <= 1
        assert result.batch_size == 3 and single.batch_size == 1
        assert result.timings_ms["encoder"] == batch[0].timings_ms["encoder"]
    with pytest.raises(ValueError, match="one colour order per image"):
        tiny_model.segment_batch(images, orders[:2])


def test_backends_without_batches_encode_one_image_at_a_time(tiny_model) -> None:
    encoded: list[int] = []
    encode = tiny_model.backend.encode
    tiny_model.backend.encode = lambda x: encoded.append(x.shape[0]) or encode(x)
    assert not tiny_model.backend.batch_encoding  # torch on the CPU, like the ONNX Runtime, OpenVINO, TensorRT
    images = [np.zeros((20, 20, 3), np.uint8), np.ones((20, 20, 3), np.uint8)]
    assert [r.batch_size for r in tiny_model.segment_batch(images, ["rgb", "rgb"])] == [2, 2]
    assert encoded == [1, 1]
