"""Viewpoint of an instance from its 2D keypoints and the prototype's 3D keypoints.

COCO has no azimuth. A scaled-orthographic (weak-perspective) camera is fitted to the
instance's labelled keypoints by least squares (an affine fit projected to the nearest
scaled rotation), which needs no intrinsics. The camera's direction in the prototype's
canonical frame (+y up, +z front) gives the azimuth, as `synth` defines it: 0 seen from
the front, 90 from the object's left (+x). Confidence is exp(-rms reprojection error /
(0.05 x box diagonal)): 1 for a perfect fit, about 0.37 when points are off by 5% of the box.

`method="pnp"` fits a full perspective camera instead, with OpenCV's `cv2.solvePnP` (SQPnP, then
Levenberg-Marquardt refinement). COCO images carry no intrinsics, so the focal length has a
prior: PNP_FOCAL_PRIOR = the longer image side in pixels (a 53-degree field of view across
that side, close to a normal phone or 35 mm lens), principal point at the image centre, no
distortion. The azimuth is then that of the camera centre seen from the prototype's origin.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from semcorr.builders.labels import azimuth_bin_of

MIN_POINTS = 4
METHODS = ("weak", "pnp")
PNP_FOCAL_PRIOR = "longer image side"


@dataclass(frozen=True)
class ViewpointEstimate:
    """An estimated viewpoint."""

    azimuth_deg: float
    azimuth_bin: int
    elevation_deg: float
    confidence: float
    points: int


def fit_weak_perspective(xyz: np.ndarray, xy: np.ndarray) -> tuple[np.ndarray, float, np.ndarray, float]:
    """Fit x = s R[:2] X + t. Returns (R (3, 3) proper rotation, s, t (2,), rms error in pixels)."""
    xyz, xy = np.asarray(xyz, float), np.asarray(xy, float)
    centre_3d, centre_2d = xyz.mean(axis=0), xy.mean(axis=0)
    a, b = xyz - centre_3d, xy - centre_2d
    affine, *_ = np.linalg.lstsq(a, b, rcond=None)  # (3, 2): b = a @ affine
    u, singular, vt = np.linalg.svd(affine.T, full_matrices=False)  # affine.T = u diag(s) vt
    rows = u @ vt  # (2, 3) orthonormal rows
    scale = float(singular.mean())
    rotation = np.vstack([rows, np.cross(rows[0], rows[1])])
    translation = centre_2d - scale * rows @ centre_3d
    residual = xy - (scale * xyz @ rows.T + translation)
    return rotation, scale, translation, float(np.sqrt((residual ** 2).sum(axis=1).mean()))


def pnp_intrinsics(width: int, height: int) -> np.ndarray:
    """The (3, 3) camera matrix of the focal prior: focal = the longer image side, centre = the image centre."""
    focal = float(max(width, height))
    return np.array([[focal, 0.0, width / 2.0], [0.0, focal, height / 2.0], [0.0, 0.0, 1.0]])


def fit_pnp(xyz: np.ndarray, xy: np.ndarray, camera: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Perspective fit with cv2.solvePnP. Returns (R (3, 3) object -> camera, t (3,), rms error in pixels)."""
    import cv2

    xyz = np.ascontiguousarray(xyz, dtype=np.float64).reshape(-1, 1, 3)
    xy = np.ascontiguousarray(xy, dtype=np.float64).reshape(-1, 1, 2)
    ok, rvec, tvec = cv2.solvePnP(xyz, xy, camera, None, flags=cv2.SOLVEPNP_SQPNP)
    if not ok:
        raise ValueError("solvePnP found no pose")
    rvec, tvec = cv2.solvePnPRefineLM(xyz, xy, camera, None, rvec, tvec)
    projected, _ = cv2.projectPoints(xyz, rvec, tvec, camera, None)
    rms = float(np.sqrt(((projected - xy) ** 2).sum(axis=-1).mean()))
    return cv2.Rodrigues(rvec)[0], tvec.ravel(), rms


def estimate_viewpoint(prototype_xyz: np.ndarray, keypoints: np.ndarray, bbox: np.ndarray, method: str = "weak",
                       image_size: tuple[int, int] | None = None) -> ViewpointEstimate | None:
    """Azimuth (and elevation) of an instance; None with fewer than MIN_POINTS labelled keypoints.

    Args:
        prototype_xyz: (K, 3) canonical 3D keypoints of the category (NaN rows are skipped).
        keypoints: (K, 3) the instance's x, y, visibility.
        bbox: COCO [x, y, w, h] (scales the confidence).
        method: "weak" (weak-perspective fit) or "pnp" (cv2.solvePnP with the focal prior).
        image_size: (width, height) in pixels; needed by "pnp".
    """
    if method not in METHODS:
        raise ValueError(f"viewpoint method {method!r}: use one of {', '.join(METHODS)}")
    usable = (keypoints[:, 2] > 0) & np.isfinite(prototype_xyz).all(axis=1)
    if usable.sum() < MIN_POINTS or np.linalg.matrix_rank(prototype_xyz[usable] - prototype_xyz[usable].mean(0)) < 3:
        return None
    if method == "pnp":
        if image_size is None:
            raise ValueError("the pnp method needs the image size")
        rotation, translation, rms = fit_pnp(prototype_xyz[usable], keypoints[usable, :2], pnp_intrinsics(*image_size))
        centre = -rotation.T @ translation  # the camera centre in the prototype's frame
        towards_camera = centre / (np.linalg.norm(centre) or 1.0)
    else:
        rotation, _, _, rms = fit_weak_perspective(prototype_xyz[usable], keypoints[usable, :2])
        towards_camera = -rotation[2]  # image x right, y down: the camera looks along r1 x r2
    azimuth = float(np.degrees(np.arctan2(towards_camera[0], towards_camera[2])) % 360.0)
    elevation = float(np.degrees(np.arcsin(np.clip(towards_camera[1], -1, 1))))
    diagonal = float(np.hypot(bbox[2], bbox[3])) or 1.0
    return ViewpointEstimate(azimuth_deg=azimuth, azimuth_bin=int(azimuth_bin_of(azimuth)), elevation_deg=elevation,
                             confidence=float(np.exp(-rms / (0.05 * diagonal))), points=int(usable.sum()))
