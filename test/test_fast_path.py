"""The fast path computes what the published pipeline computes: decoder logits, label images, end to end."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_bank
from label_checks import assert_same_decisions

from fpseg_core import FPSeg, build_fpseg, decoder_fingerprint, fuse, tiny_config
from fpseg_core.fast_labels import FastLabeler, upsampling_matrix
from fpseg_core.modeling.fast_decoder import FastMaskDecoder
from fpseg_core.modeling.fpseg import FPSegModel
from fpseg_core.preprocess import Geometry, postprocess_logits


def perturbed_model(seed: int, prompt_size: int = 5) -> FPSegModel:
    """A tiny model whose every weight (LayerNorm scales and all biases included) is off its init."""
    torch.manual_seed(seed)
    model = build_fpseg(tiny_config("mobilesam", n_classes=8, prompt_size=prompt_size, img_size=128))
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn(param.shape, generator=generator))
    return model.eval()


@pytest.mark.parametrize("class_chunk", [None, 1, 3])
@pytest.mark.parametrize("n_classes", [1, 2, 7])
def test_fast_decoder_matches_plain_decoder(n_classes: int, class_chunk: int | None) -> None:
    model = perturbed_model(seed=n_classes)
    generator = torch.Generator().manual_seed(10 + n_classes)
    embedding = torch.randn(1, 256, 8, 8, generator=generator)
    prompts = torch.randn(n_classes, 5, 256, generator=generator)
    with torch.inference_mode():
        expected = model.decode(embedding, prompts)
        actual = FastMaskDecoder(model, class_chunk)(embedding, prompts)
    assert actual.shape == expected.shape == (1, n_classes, 32, 32)
    assert (actual - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_fast_decoder_shares_weights_and_leaves_the_model_alone() -> None:
    model = perturbed_model(seed=3)
    keys, fingerprint = list(model.state_dict()), decoder_fingerprint(model.state_dict())
    fast = FastMaskDecoder(model)
    assert list(model.state_dict()) == keys and decoder_fingerprint(model.state_dict()) == fingerprint
    assert {p.data_ptr() for p in fast.parameters()} <= {p.data_ptr() for p in model.parameters()}


def test_fast_decoder_refuses_image_batches_and_bad_chunks() -> None:
    model = perturbed_model(seed=4)
    with pytest.raises(ValueError, match="one image at a time"):
        FastMaskDecoder(model)(torch.randn(2, 256, 8, 8), torch.randn(1, 5, 256))
    with pytest.raises(ValueError, match="class_chunk"):
        FastMaskDecoder(model, class_chunk=0)


@pytest.mark.parametrize(("low", "size", "kept", "out"), [(16, 64, 64, 200), (16, 64, 41, 37), (32, 128, 75, 50)])
def test_upsampling_matrix_is_the_two_interpolations(low: int, size: int, kept: int, out: int) -> None:
    """R @ x equals interpolating x to `size`, cropping to `kept` and interpolating to `out`."""
    signal = torch.randn(1, 1, low, 3, dtype=torch.float64)
    stage = F.interpolate(signal, (size, 3), mode="bilinear", align_corners=False)[:, :, :kept]
    expected = F.interpolate(stage, (out, 3), mode="bilinear", align_corners=False)[0, 0]
    torch.testing.assert_close(upsampling_matrix(low, size, kept, out) @ signal[0, 0], expected)


def random_logits(n: int, low: int, smooth: bool, seed: int) -> torch.Tensor:
    logits = 4 * torch.randn(1, n, low, low, generator=torch.Generator().manual_seed(seed))
    return F.avg_pool2d(logits, 5, 1, 2) if smooth else logits


GEOMETRIES = [  # (height, width, mode, encoder size, low-res size)
    (120, 200, "squash", 64, 16),
    (37, 91, "letterbox", 64, 16),
    (300, 71, "letterbox", 128, 32),
    (50, 30, "squash", 128, 32),  # output smaller than the encoder input: the second stage shrinks
    (333, 517, "squash", 128, 32),  # several row steps and column bands
]


@pytest.mark.parametrize("threshold", [0.0, 0.7, -0.3])
@pytest.mark.parametrize("fusion", ["argmax", "priority"])
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_fast_labels_equal_published_postprocessing(geometry: tuple, fusion: str, threshold: float) -> None:
    height, width, mode, size, low = geometry
    where = Geometry.for_image(height, width, size, mode)
    labeler = FastLabeler(band_rows=8, band_cols=16, rows_per_step=40)
    for seed, smooth in enumerate([True, False]):
        logits = random_logits(6, low, smooth, seed)
        ids = [7, 0, 3, 12, 5, 1]
        full_resolution = postprocess_logits(logits, where)[0]
        expected = fuse(full_resolution, ids, fusion, threshold)
        actual = labeler(logits[0], where, ids, fusion, threshold)
        assert actual.dtype == torch.uint8 and actual.shape == (height, width)
        assert_same_decisions(actual, expected, full_resolution, fusion, threshold)


def test_classes_never_above_threshold_are_skipped_exactly() -> None:
    """A class whose low-res maximum sits at the threshold is dropped, and the labels do not change."""
    where = Geometry.for_image(90, 140, 64, "squash")
    logits = random_logits(4, 16, True, seed=7)
    logits[0, 1] = logits[0, 1] - logits[0, 1].max()  # max exactly 0 = threshold: can never be present
    logits[0, 3] = -1.0 - logits[0, 3].abs()
    ids = [0, 1, 2, 3]
    keep = FastLabeler._classes_that_can_win(logits[0], 0.0)
    assert keep.tolist() == [True, False, True, False]
    for fusion in ("argmax", "priority"):
        expected = fuse(postprocess_logits(logits, where)[0], ids, fusion)
        assert torch.equal(FastLabeler()(logits[0], where, ids, fusion), expected)
    nothing = FastLabeler()(-logits[0].abs() - 1, where, ids)
    assert nothing.shape == (90, 140) and not nothing.any()


def test_fast_labels_argmax_ties_go_to_the_first_class_like_fuse() -> None:
    where = Geometry.for_image(40, 40, 64, "squash")
    logits = random_logits(3, 16, True, seed=2).abs() + 0.1
    logits[0, 2] = logits[0, 0]  # classes 0 and 2 tie everywhere
    expected = fuse(postprocess_logits(logits, where)[0], [4, 5, 6])
    assert torch.equal(FastLabeler()(logits[0], where, [4, 5, 6]), expected)
    assert not (expected == 7).any()


def tiny_fpseg(n_classes: int, seed: int, **options) -> FPSeg:
    """A tiny random network with a bank of clearly different classes (unit-scale random tokens)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = FPSeg.random(tiny_config("mobilesam", n_classes=n_classes, prompt_size=4, img_size=128),
                             seed=seed, backend="torch", **options)
    model.set_bank(make_bank(model, model.classes, seed))
    return model


@pytest.mark.parametrize("input_mode", ["squash", "letterbox"])
@pytest.mark.parametrize("shape", [(96, 160), (77, 131), (250, 61)])
def test_segment_equals_baseline_end_to_end(input_mode: str, shape: tuple[int, int]) -> None:
    model = tiny_fpseg(12, seed=shape[0], input_mode=input_mode)
    image = np.random.default_rng(shape[1]).integers(0, 256, (*shape, 3), dtype=np.uint8)
    for n in (1, 4, 12):
        classes = model.classes[-n:][::-1]
        ids = model.resolve_classes(classes)
        for fusion in ("argmax", "priority"):
            fast = model.segment(image, classes, fusion=fusion)
            baseline = model.segment_baseline(image, classes, fusion=fusion)
            assert fast.classes == baseline.classes == classes
            assert_same_decisions(fast.labels, baseline.labels, model.class_logits(image, ids), fusion)
            assert len(np.unique(baseline.labels)) > min(n, 2)  # a real mix of classes, not one flat label
            assert set(fast.timings_ms) == set(baseline.timings_ms) == {
                "preprocess", "encoder", "decoder", "postprocess", "total"}


def test_class_logits_keep_the_published_postprocessing() -> None:
    model = tiny_fpseg(3, seed=1)
    image = np.random.default_rng(0).integers(0, 256, (70, 90, 3), dtype=np.uint8)
    logits = model.class_logits(image, [2, 0])
    x, geometry = model._prepare(image, "rgb")
    with torch.inference_mode():
        expected = postprocess_logits(model.model.decode(model.model.encode(x), model._prompts[[2, 0]]), geometry)[0]
    assert logits.shape == (2, 70, 90)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)


def test_bf16_torch_backend_runs_and_fp16_on_cpu_is_refused() -> None:
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    reference = tiny_fpseg(3, seed=2)
    low_precision = tiny_fpseg(3, seed=2, dtype="bf16")
    assert low_precision.model.image_encoder.neck[0].weight.dtype == torch.float32  # the pipeline's copy
    with torch.inference_mode():
        x, _ = reference._prepare(image, "rgb")
        expected = reference.backend.decode(reference.backend.encode(x), reference._prompts)
        actual = low_precision.backend.decode(low_precision.backend.encode(x), low_precision._prompts)
    assert actual.dtype == torch.float32
    assert (actual - expected).abs().max() < 0.1 * expected.abs().max()
    with pytest.raises(ValueError, match="fp16 needs a CUDA device; on CPU use bf16"):
        tiny_fpseg(3, seed=2, dtype="fp16")
