"""Where RoofSAM's points go: inside polygons (concave ones too), boxes and masks, clipped to the image, and
the majority vote over them."""

from __future__ import annotations

import numpy as np
import pytest

from fpseg_core.preprocess import Geometry
from fpseg_core.regions.classifier import majority_vote
from fpseg_core.regions.sampling import (
    clip_polygon,
    inside_polygon,
    polygon_area_centroid,
    sample_points,
    to_encoder_frame,
)

# An L shape: its bounding box is 0..10 x 0..10, the square 5..10 x 5..10 is outside it.
L_SHAPE = np.array([[0, 0], [10, 0], [10, 5], [5, 5], [5, 10], [0, 10]], dtype=float)


def test_majority_vote_takes_the_most_frequent_class_and_ties_go_to_the_lowest_index() -> None:
    assert majority_vote([2, 1, 2, 0]) == (2, 0.5)
    assert majority_vote([3, 1, 1, 3]) == (1, 0.5)
    assert majority_vote([4]) == (4, 1.0)


def test_points_fall_inside_a_concave_polygon() -> None:
    points = sample_points(L_SHAPE, 200, np.random.default_rng(0), 100, 100)
    assert points.shape == (200, 2)
    assert inside_polygon(points, L_SHAPE).all()
    assert not ((points[:, 0] > 5) & (points[:, 1] > 5)).any()
    assert points[:, 0].min() < 2 and points[:, 1].max() > 8  # spread over the whole shape


def test_one_point_is_the_centroid() -> None:
    square = np.array([[2, 2], [6, 2], [6, 6], [2, 6]], dtype=float)
    np.testing.assert_allclose(sample_points(square, 1, np.random.default_rng(0), 10, 10), [[4, 4]])
    area, centroid = polygon_area_centroid(L_SHAPE)
    assert area == pytest.approx(75.0)
    np.testing.assert_allclose(centroid, [25 / 6, 25 / 6])  # (100 * 5 - 25 * 7.5) / 75
    np.testing.assert_allclose(sample_points((0, 0, 4, 2), 1, np.random.default_rng(0), 10, 10), [[2, 1]])
    mask = np.zeros((10, 10), dtype=bool)
    mask[1, 1] = mask[3, 5] = True
    np.testing.assert_allclose(sample_points(mask, 1, np.random.default_rng(0), 10, 10), [[3, 2]])


def test_regions_partly_outside_the_image_are_clipped() -> None:
    polygon = np.array([[-10, -10], [20, -10], [20, 4], [-10, 4]], dtype=float)  # the image is 8 wide, 6 high
    clipped = clip_polygon(polygon, 8, 6)
    assert polygon_area_centroid(clipped)[0] == pytest.approx(32.0)
    points = sample_points(polygon, 50, np.random.default_rng(1), 8, 6)
    assert (points >= 0).all() and (points[:, 0] <= 8).all() and (points[:, 1] <= 4).all()
    np.testing.assert_allclose(sample_points(polygon, 1, np.random.default_rng(0), 8, 6), [[4, 2]])
    box = sample_points((-5, 3, 3, 50), 50, np.random.default_rng(2), 8, 6)
    assert (box[:, 0] >= 0).all() and (box[:, 0] <= 3).all() and (box[:, 1] >= 3).all() and (box[:, 1] <= 6).all()


def test_regions_with_nothing_inside_the_image_give_none() -> None:
    rng = np.random.default_rng(0)
    assert sample_points(np.array([[20, 20], [30, 20], [30, 30]]), 4, rng, 10, 10) is None
    assert sample_points(np.array([[1, 1], [5, 5], [9, 9]]), 4, rng, 10, 10) is None  # zero area
    assert sample_points((12, 0, 20, 5), 4, rng, 10, 10) is None
    assert sample_points(np.zeros((10, 10), dtype=bool), 4, rng, 10, 10) is None


def test_masks_give_their_true_pixels_and_must_match_the_image() -> None:
    mask = np.zeros((6, 8), dtype=bool)
    mask[2, 3] = mask[4, 7] = True
    points = sample_points(mask, 5, np.random.default_rng(0), 8, 6)
    assert {tuple(p) for p in points} <= {(3.0, 2.0), (7.0, 4.0)}
    with pytest.raises(ValueError, match="image's size 5 x 8"):
        sample_points(mask, 2, np.random.default_rng(0), 8, 5)


def test_bad_regions_are_refused() -> None:
    with pytest.raises(ValueError, match="a region must be a polygon"):
        sample_points(np.zeros((3, 3)), 2, np.random.default_rng(0), 8, 8)
    with pytest.raises(ValueError, match="at least 1"):
        sample_points(L_SHAPE, 0, np.random.default_rng(0), 8, 8)


def test_same_seed_same_points() -> None:
    first = sample_points(L_SHAPE, 6, np.random.default_rng(7), 100, 100)
    np.testing.assert_array_equal(first, sample_points(L_SHAPE, 6, np.random.default_rng(7), 100, 100))


@pytest.mark.parametrize(("mode", "scale"), [("squash", (1024 / 200, 1024 / 100)), ("letterbox", (1024 / 200,) * 2)])
def test_points_follow_the_images_geometry(mode: str, scale: tuple[float, float]) -> None:
    geometry = Geometry.for_image(100, 200, 1024, mode)
    np.testing.assert_allclose(to_encoder_frame(np.array([[50.0, 20.0]]), geometry),
                               [[50 * scale[0], 20 * scale[1]]])
