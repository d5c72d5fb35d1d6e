"""Offscreen rendering (pyrender over EGL) and the pinhole camera it shares with projection.

Camera frame follows OpenGL: the camera looks down its -z axis with +y up. Image
coordinates are continuous pixels: x to the right, y down, pixel (row r, column c)
covering [c, c + 1) x [r, r + 1), so `floor` of a coordinate is the pixel index.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

import numpy as np  # noqa: E402
import trimesh  # noqa: E402

from semcorr.errors import SemcorrError  # noqa: E402


def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray = np.array([0.0, 1.0, 0.0])) -> np.ndarray:
    """Camera-to-world 4x4 pose of a camera at `eye` looking at `target`."""
    eye = np.asarray(eye, dtype=np.float64)
    backward = eye - np.asarray(target, dtype=np.float64)
    backward /= np.linalg.norm(backward)
    right = np.cross(up, backward)
    if np.linalg.norm(right) < 1e-9:
        right = np.cross(np.array([0.0, 0.0, 1.0]), backward)
    right /= np.linalg.norm(right)
    true_up = np.cross(backward, right)
    pose = np.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = right, true_up, backward, eye
    return pose


@dataclass(frozen=True)
class Camera:
    """A pinhole camera with the principal point at the image centre.

    Attributes:
        width: image width in pixels.
        height: image height in pixels.
        yfov: vertical field of view in radians.
        pose: (4, 4) camera-to-world transform (OpenGL axes).
    """

    width: int
    height: int
    yfov: float
    pose: np.ndarray

    @property
    def focal(self) -> float:
        """Focal length in pixels (square pixels)."""
        return (self.height / 2.0) / np.tan(self.yfov / 2.0)

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Project world points.

        Returns:
            xy: (N, 2) continuous pixel coordinates.
            depth: (N,) distance along the viewing axis (positive in front of the camera),
                the quantity pyrender's depth buffer holds.
        """
        points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        world_to_cam = np.linalg.inv(self.pose)
        cam = points @ world_to_cam[:3, :3].T + world_to_cam[:3, 3]
        depth = -cam[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            x = self.width / 2.0 + self.focal * cam[:, 0] / depth
            y = self.height / 2.0 - self.focal * cam[:, 1] / depth
        return np.stack([x, y], axis=1), depth

    def unproject(self, xy: np.ndarray, depth: np.ndarray) -> np.ndarray:
        """World points at pixel coordinates `xy` (N, 2) and viewing-axis depths `depth` (N,)."""
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        depth = np.asarray(depth, dtype=np.float64).reshape(-1)
        cam = np.stack([(xy[:, 0] - self.width / 2.0) * depth / self.focal,
                        -(xy[:, 1] - self.height / 2.0) * depth / self.focal, -depth], axis=1)
        return cam @ self.pose[:3, :3].T + self.pose[:3, 3]


@dataclass
class Part:
    """A mesh to render: its own visual (texture, vertex colours) or a flat colour."""

    mesh: trimesh.Trimesh
    color: tuple[float, float, float, float] | None = None


class Renderer:
    """One reusable EGL offscreen context of a fixed image size."""

    def __init__(self, width: int, height: int) -> None:
        try:
            import pyrender

            self._renderer = pyrender.OffscreenRenderer(width, height)
        except Exception as exc:  # the GL stack is missing or broken
            raise SemcorrError(
                f"offscreen rendering is unavailable ({type(exc).__name__}: {exc}); install Mesa's EGL "
                "(Debian: libegl1 libgl1 libegl-mesa0 libgl1-mesa-dri) and keep PYOPENGL_PLATFORM=egl"
            ) from None
        self.width, self.height = width, height

    def close(self) -> None:
        """Release the GL context."""
        self._renderer.delete()

    def __enter__(self) -> Renderer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _scene(self, parts: list[Part], camera: Camera, background: tuple[float, float, float],
               light_intensity: float):
        import pyrender

        scene = pyrender.Scene(bg_color=[*background, 1.0], ambient_light=[0.35, 0.35, 0.35])
        # One node holding every part as a primitive: pyrender orders separate nodes by a
        # set's iteration order, which would make coincident faces flip between runs.
        primitives = []
        for part in parts:
            if part.color is None:
                mesh = pyrender.Mesh.from_trimesh(part.mesh, smooth=False)
            else:
                material = pyrender.MetallicRoughnessMaterial(
                    baseColorFactor=list(part.color), metallicFactor=0.1, roughnessFactor=0.7
                )
                mesh = pyrender.Mesh.from_trimesh(part.mesh, material=material, smooth=False)
            primitives.extend(mesh.primitives)
        scene.add(pyrender.Mesh(primitives=primitives))
        aspect = self.width / self.height
        camera_node = scene.add(pyrender.PerspectiveCamera(yfov=camera.yfov, aspectRatio=aspect, znear=0.05,
                                                           zfar=100.0), pose=camera.pose)
        head_light = scene.add(pyrender.DirectionalLight(color=np.ones(3), intensity=light_intensity),
                               pose=camera.pose)
        key_light = scene.add(pyrender.DirectionalLight(color=np.ones(3), intensity=light_intensity * 0.5),
                              pose=_key_light_pose(camera.pose))
        return scene, (camera_node, head_light, key_light)

    def render(self, parts: list[Part], camera: Camera, background: tuple[float, float, float] = (1.0, 1.0, 1.0),
               light_intensity: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
        """Colour (H, W, 3) uint8 and depth (H, W) float32 (0 where nothing was hit)."""
        return next(self.render_many(parts, [camera], background, light_intensity))

    def render_many(self, parts: list[Part], cameras: list[Camera],
                    background: tuple[float, float, float] = (1.0, 1.0, 1.0), light_intensity: float = 3.0):
        """Yield (colour, depth) for each camera (same yfov), building the scene only once."""
        import pyrender

        scene, (camera_node, head_light, key_light) = self._scene(parts, cameras[0], background, light_intensity)
        for camera in cameras:
            scene.set_pose(camera_node, camera.pose)
            scene.set_pose(head_light, camera.pose)
            scene.set_pose(key_light, _key_light_pose(camera.pose))
            color, depth = self._renderer.render(scene, flags=pyrender.RenderFlags.NONE)
            yield np.ascontiguousarray(color[:, :, :3]), depth

    def depth(self, parts: list[Part], camera: Camera) -> np.ndarray:
        """Depth (H, W) float32 only, 0 where nothing was hit."""
        import pyrender

        scene, _ = self._scene(parts, camera, (0.0, 0.0, 0.0), 1.0)
        return self._renderer.render(scene, flags=pyrender.RenderFlags.DEPTH_ONLY)


def _key_light_pose(camera_pose: np.ndarray) -> np.ndarray:
    pose = camera_pose.copy()
    pose[:3, :3] = trimesh.transformations.rotation_matrix(0.6, [1, 0, 0])[:3, :3] @ pose[:3, :3]
    return pose


def keypoint_visibility(xy: np.ndarray, depth: np.ndarray, depth_buffer: np.ndarray,
                        tolerance: float | np.ndarray, edge_jump: float | np.ndarray = 0.08) -> np.ndarray:
    """Which projected 3D surface points are seen, from the depth buffer.

    A point is visible when it lies inside the image, in front of the camera, and
    - its own pixel holds no surface nearer than its depth minus `tolerance` (a point
      whose pixel is background lies on a silhouette edge the rasteriser missed: nothing
      hides it there, so it needs only some surface in its 3x3 neighbourhood), and
    - no pixel of its 3x3 neighbourhood holds a surface nearer by more than
      `max(3 * tolerance, edge_jump)` (per point): a point within a pixel of an occluding edge, where
      the pixel grid cannot tell which side it is on, is left unannotated. Smaller depth
      differences are the slope of the point's own surface and do not count.

    Args:
        xy: (N, 2) pixel coordinates.
        depth: (N,) the points' own depths.
        depth_buffer: (H, W) rendered depth, 0 for background.
        tolerance: depth slack in scene units, scalar or (N,).
        edge_jump: smallest depth jump taken for an occluding edge, in scene units, scalar
            or (N,); grow it with the pixel footprint so steep surfaces are not mistaken for edges.

    Returns:
        (N,) bool.
    """
    height, width = depth_buffer.shape
    xy = np.asarray(xy, dtype=np.float64)
    visible = np.zeros(len(xy), dtype=bool)
    inside = (
        np.isfinite(xy).all(axis=1) & (depth > 0)
        & (xy[:, 0] >= 0) & (xy[:, 0] < width) & (xy[:, 1] >= 0) & (xy[:, 1] < height)
    )
    tolerance = np.broadcast_to(np.asarray(tolerance, dtype=np.float64), (len(xy),))
    jump = np.maximum(3 * tolerance, np.broadcast_to(np.asarray(edge_jump, dtype=np.float64), (len(xy),)))
    for index in np.flatnonzero(inside):
        col, row = int(xy[index, 0]), int(xy[index, 1])
        window = depth_buffer[max(row - 1, 0): row + 2, max(col - 1, 0): col + 2]
        covered = window[window > 0]
        centre = depth_buffer[row, col]
        seen = centre >= depth[index] - tolerance[index] if centre > 0 else covered.size > 0
        visible[index] = bool(seen) and bool((covered >= depth[index] - jump[index]).all())
    return visible
