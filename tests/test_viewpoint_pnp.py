"""`viewpoint --method pnp`: cv2.solvePnP with the focal prior, beside the weak-perspective fit."""

from __future__ import annotations

import numpy as np
import pytest

from semcorr import commands, store
from semcorr.builders.viewpoint import estimate_viewpoint, pnp_intrinsics
from semcorr.errors import SemcorrError
from semcorr.synth.prototypes import builtin_prototype


def project(xyz: np.ndarray, azimuth: float, elevation: float, distance: float, size: tuple[int, int]) -> np.ndarray:
    """Pinhole projection from a camera at (azimuth, elevation, distance) looking at the origin, focal = longer side."""
    az, el = np.radians(azimuth), np.radians(elevation)
    eye = distance * np.array([np.sin(az) * np.cos(el), np.sin(el), np.cos(az) * np.cos(el)])
    forward = -eye / np.linalg.norm(eye)
    right = np.cross(forward, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    relative = xyz - eye
    x, y, z = relative @ right, -(relative @ up), relative @ forward
    focal = max(size)
    return np.column_stack([focal * x / z + size[0] / 2, focal * y / z + size[1] / 2])


def test_intrinsics_prior_is_the_longer_side_and_the_centre():
    np.testing.assert_array_equal(pnp_intrinsics(400, 300), [[400, 0, 200], [0, 400, 150], [0, 0, 1]])


@pytest.mark.parametrize("azimuth", [10.0, 100.0, 200.0, 315.0])
def test_pnp_recovers_a_known_camera(azimuth):
    xyz = builtin_prototype("chair").keypoints_xyz
    xy = project(xyz, azimuth, 20.0, 2.0, (400, 300))
    keypoints = np.column_stack([xy, np.full(len(xy), 2.0)])
    bbox = np.array([*xy.min(0), *(xy.max(0) - xy.min(0))])
    estimate = estimate_viewpoint(xyz, keypoints, bbox, "pnp", (400, 300))
    assert estimate.azimuth_deg == pytest.approx(azimuth, abs=0.1)
    assert estimate.elevation_deg == pytest.approx(20.0, abs=0.1)
    assert estimate.confidence == pytest.approx(1.0, abs=1e-3)  # exact points: no reprojection error
    weak = estimate_viewpoint(xyz, keypoints, bbox, "weak")
    assert weak.confidence < estimate.confidence  # a close camera is not weak-perspective


def test_pnp_needs_the_image_size_and_a_known_method():
    xyz = builtin_prototype("chair").keypoints_xyz
    keypoints = np.column_stack([project(xyz, 0, 10, 3, (200, 200)), np.full(len(xyz), 2.0)])
    with pytest.raises(ValueError, match="image size"):
        estimate_viewpoint(xyz, keypoints, np.array([0, 0, 10, 10]), "pnp")
    with pytest.raises(ValueError, match="use one of weak, pnp"):
        estimate_viewpoint(xyz, keypoints, np.array([0, 0, 10, 10]), "affine")


def test_viewpoint_command_with_pnp_writes_its_source(store_copy):
    truth = {inst.id: inst.azimuth_bin for inst in store.load_dataset(store_copy).instances}
    table = commands.run_viewpoint(store_copy, [], overwrite=True, method="pnp")
    assert len(table) > 0 and table["written"].all()
    exact = np.mean([row.azimuth_bin == truth[row.ann_id] for row in table.itertuples()])
    assert exact >= 0.8
    written = store.load_dataset(store_copy).instances[0].extra_attributes
    assert written["viewpoint_source"] == "cv2.solvePnP, focal = longer image side"
    with pytest.raises(SemcorrError, match="--method 'affine'"):
        commands.run_viewpoint(store_copy, [], method="affine")
