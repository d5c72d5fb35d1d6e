"""The six grading views (upper, below, left, right, front, back) of a canonical prototype."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from semcorr.rendering import Camera, Part, Renderer, keypoint_visibility, look_at

# eye direction and image-up vector per view, in the canonical frame (+y up, +z front, +x the object's left)
VIEW_DIRECTIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "upper": ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0)),
    "below": ((0.0, -1.0, 0.0), (0.0, 0.0, 1.0)),
    "left": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    "right": ((-1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    "front": ((0.0, 0.0, 1.0), (0.0, 1.0, 0.0)),
    "back": ((0.0, 0.0, -1.0), (0.0, 1.0, 0.0)),
}
VIEW_NAMES = tuple(VIEW_DIRECTIONS)
VIEW_DISTANCE = 2.8
VIEW_YFOV = np.radians(30.0)
VISIBILITY_TOLERANCE = 0.02


@dataclass
class ViewRender:
    """One rendered view: colour (H, W, 3), depth (H, W, 0 = background), mask and camera."""

    name: str
    camera: Camera
    color: np.ndarray
    depth: np.ndarray

    @property
    def mask(self) -> np.ndarray:
        """(H, W) bool object pixels."""
        return self.depth > 0

    @functools.cached_property
    def corner_response(self) -> np.ndarray:
        """Harris response of the grey render (computed once)."""
        from semcorr.keypoint_design.candidates import grey, harris_response

        return harris_response(grey(self.color), sigma=1.5)


def view_camera(direction: np.ndarray, up: np.ndarray, size: int, name: str = "") -> Camera:
    """A camera at VIEW_DISTANCE along `direction` looking at the origin."""
    eye = VIEW_DISTANCE * np.asarray(direction, dtype=np.float64) / np.linalg.norm(direction)
    return Camera(size, size, VIEW_YFOV, look_at(eye, np.zeros(3), up=np.asarray(up, dtype=np.float64)))


def render_views(renderer: Renderer, parts: list[Part], cameras: dict[str, Camera]) -> list[ViewRender]:
    """Render each named camera on a white background."""
    renders = renderer.render_many(parts, list(cameras.values()), background=(1.0, 1.0, 1.0), light_intensity=3.0)
    return [ViewRender(name=name, camera=camera, color=color, depth=depth)
            for (name, camera), (color, depth) in zip(cameras.items(), renders)]


def six_view_cameras(size: int) -> dict[str, Camera]:
    """The six grading cameras."""
    return {name: view_camera(np.array(d), np.array(u), size, name) for name, (d, u) in VIEW_DIRECTIONS.items()}


def orbit_cameras(size: int, azimuths: int = 4, elevation_deg: float = 30.0) -> dict[str, Camera]:
    """Cameras on a ring above the object, plus the six views: the contour scheme's viewpoints."""
    cameras = six_view_cameras(size)
    el = np.radians(elevation_deg)
    for index in range(azimuths):
        az = 2 * np.pi * (index + 0.5) / azimuths
        direction = np.array([np.sin(az) * np.cos(el), np.sin(el), np.cos(az) * np.cos(el)])
        cameras[f"orbit{index}"] = view_camera(direction, np.array([0.0, 1.0, 0.0]), size)
    return cameras


def visibility_matrix(views: list[ViewRender], points: np.ndarray) -> np.ndarray:
    """(num_views, N) bool: point n seen in view v (depth test)."""
    out = np.zeros((len(views), len(points)), dtype=bool)
    for index, view in enumerate(views):
        xy, depth = view.camera.project(points)
        out[index] = keypoint_visibility(xy, depth, view.depth, tolerance=VISIBILITY_TOLERANCE,
                                         edge_jump=np.maximum(0.08, 12.0 * depth / view.camera.focal))
    return out
