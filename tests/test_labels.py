"""SPair difficulty labels at every boundary, against the reference rules."""

import itertools

import numpy as np
import pytest

from semcorr.builders import labels
from tests.reference import reference_flag, reference_scale, reference_viewpoint


@pytest.mark.parametrize(
    ("src", "trg", "expected"),
    [
        (0, 0, 0), (3, 4, 0), (7, 0, 0), (0, 7, 0),  # difference 0 or 1, with the 7 <-> 0 wrap
        (0, 2, 1), (6, 0, 1), (1, 4, 1), (7, 2, 1),  # difference 2 or 3 (7 -> 2 wraps to 3)
        (0, 4, 2), (2, 6, 2), (7, 3, 2), (5, 1, 2),  # difference 4
    ],
)
def test_viewpoint_boundaries(src, trg, expected):
    assert labels.viewpoint_variation(np.array([src]), np.array([trg]))[0] == expected


def test_viewpoint_all_bin_pairs_match_reference():
    src, trg = np.array(list(itertools.product(range(8), range(8)))).T
    expected = [reference_viewpoint(a, b) for a, b in zip(src, trg)]
    assert labels.viewpoint_variation(src, trg).tolist() == expected


@pytest.mark.parametrize(
    ("src_area", "trg_area", "expected"),
    [
        (100.0, 100.0, 0), (100.0, 199.99, 0), (199.99, 100.0, 0),
        (100.0, 200.0, 1), (200.0, 100.0, 1),  # exactly 2 is medium
        (100.0, 399.99, 1),
        (100.0, 400.0, 2), (400.0, 100.0, 2),  # exactly 4 is hard
        (1.0, 1000.0, 2),
        (0.1 * 3, 0.6000000000000001, 1),  # float areas whose exact ratio is 2
        (12.3 * 45.6, 4 * 12.3 * 45.6, 2),
    ],
)
def test_scale_boundaries(src_area, trg_area, expected):
    assert labels.scale_variation(np.array([src_area]), np.array([trg_area]))[0] == expected


def test_scale_matches_reference_on_random_areas():
    rng = np.random.default_rng(3)
    src = rng.integers(1, 50, 500).astype(float) * rng.integers(1, 50, 500)
    trg = rng.integers(1, 50, 500).astype(float) * rng.integers(1, 50, 500)
    assert labels.scale_variation(src, trg).tolist() == [reference_scale(a, b) for a, b in zip(src, trg)]


@pytest.mark.parametrize(("src", "trg", "expected"), [(0, 0, 0), (1, 0, 1), (0, 1, 2), (1, 1, 3)])
def test_flag_variation(src, trg, expected):
    assert labels.flag_variation(np.array([src]), np.array([trg]))[0] == expected == reference_flag(src, trg)


@pytest.mark.parametrize(
    ("azimuth", "expected"),
    [(0.0, 0), (22.4, 0), (22.5, 1), (44.9, 1), (67.5, 2), (180.0, 4), (337.4, 7), (337.5, 0), (359.9, 0),
     (-10.0, 0), (-22.6, 7)],
)
def test_azimuth_bins(azimuth, expected):
    assert labels.azimuth_bin_of(azimuth) == expected
