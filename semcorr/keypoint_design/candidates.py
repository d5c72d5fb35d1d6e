"""The three candidate schemes of MISC210K's keypoint design, on a canonical prototype.

- skeleton: end and branch points of the curve skeleton of the voxelised shape;
- contour: extremal and high-curvature points of silhouettes over a ring of viewpoints;
- appearance: corner responses (Harris) on the shaded, textured renders.

Every candidate is lifted to 3D (depth buffer or voxel centre) and snapped to the nearest
point of a dense surface sample, so candidates lie on the surface.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import trimesh
from scipy import ndimage
from scipy.spatial import cKDTree

from semcorr.errors import SemcorrError
from semcorr.keypoint_design.selection import KIND_PHRASES, region
from semcorr.keypoint_design.views import ViewRender
from semcorr.rendering import Part

SCHEMES = ("skeleton", "contour", "appearance")


@dataclass
class Candidates:
    """One scheme's candidate keypoints.

    Attributes:
        scheme: one of SCHEMES.
        xyz: (N, 3) surface points in the canonical frame.
        strength: (N,) how strongly the scheme proposes each point (its ranking key).
        descriptions: N short text descriptions.
        kinds: N kind words (keys of selection.KIND_PHRASES: tip, joint, extreme, corner, feature).
    """

    scheme: str
    xyz: np.ndarray
    strength: np.ndarray
    descriptions: tuple[str, ...]
    kinds: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.xyz = np.asarray(self.xyz, dtype=np.float64).reshape(-1, 3)
        self.strength = np.asarray(self.strength, dtype=np.float64).reshape(-1)
        if not self.kinds:
            self.kinds = ("feature",) * len(self.xyz)
        if not (len(self.xyz) == len(self.strength) == len(self.descriptions) == len(self.kinds)):
            raise ValueError("xyz, strength, descriptions and kinds must have one entry per candidate")

    def subset(self, keep: np.ndarray) -> Candidates:
        """The candidates where `keep` (bool, N) is true, in order."""
        rows = np.flatnonzero(keep)
        return Candidates(self.scheme, self.xyz[rows], self.strength[rows],
                          tuple(self.descriptions[i] for i in rows), tuple(self.kinds[i] for i in rows))


@dataclass
class Surface:
    """A dense, seeded sample of the prototype's surface with a nearest-point index."""

    points: np.ndarray
    tree: cKDTree

    def snap(self, points: np.ndarray) -> np.ndarray:
        """Nearest surface sample of each point."""
        _, index = self.tree.query(np.asarray(points, dtype=np.float64).reshape(-1, 3))
        return self.points[index]


def sample_surface(parts: list[Part], count: int = 30000, seed: int = 0) -> Surface:
    """Area-weighted surface sample of all parts, plus every vertex (so corners are exact)."""
    mesh = trimesh.util.concatenate([p.mesh for p in parts])
    points, _ = trimesh.sample.sample_surface(mesh, count, seed=seed)
    points = np.concatenate([np.asarray(points), np.asarray(mesh.vertices)])
    return Surface(points=points, tree=cKDTree(points))


def merge_close(xyz: np.ndarray, radius: float) -> tuple[np.ndarray, list[list[int]]]:
    """Greedy merge in the given order: a point within `radius` of a kept point joins it.

    Returns:
        kept: indexes of the kept points, in order.
        groups: for each kept point, the indexes merged into it (itself first).
    """
    kept: list[int] = []
    groups: list[list[int]] = []
    for index, point in enumerate(np.asarray(xyz, dtype=np.float64).reshape(-1, 3)):
        if kept:
            distances = np.linalg.norm(xyz[kept] - point, axis=1)
            nearest = int(np.argmin(distances))
            if distances[nearest] <= radius:
                groups[nearest].append(index)
                continue
        kept.append(index)
        groups.append([index])
    return np.array(kept, dtype=np.int64), groups


def _rank_and_cap(scheme: str, xyz: np.ndarray, strength: np.ndarray, labels: list[str], surface: Surface,
                  dedup_radius: float, max_count: int, low: np.ndarray, high: np.ndarray) -> Candidates:
    """Snap, merge near-duplicates (strongest first, strengths summed) and keep the strongest.

    `labels` are kind words (keys of selection.KIND_PHRASES)."""
    if len(xyz) == 0:
        return Candidates(scheme, np.zeros((0, 3)), np.zeros(0), ())
    snapped = surface.snap(xyz)
    order = np.lexsort((snapped[:, 2], snapped[:, 1], snapped[:, 0], -strength))
    kept, groups = merge_close(snapped[order], dedup_radius)
    merged_strength = np.array([strength[order][g].sum() for g in groups])
    points = snapped[order][kept]
    texts = [labels[order[k]] for k in kept]
    final = np.argsort(-merged_strength, kind="stable")[:max_count]
    descriptions = tuple(f"{KIND_PHRASES[texts[i]]} at the {' '.join(region(points[i], low, high, True)) or 'middle'}"
                         for i in final)
    return Candidates(scheme, points[final], merged_strength[final], descriptions, tuple(texts[i] for i in final))


def solidify(shell: np.ndarray) -> np.ndarray:
    """Fill a voxel shell that may have holes: a voxel is inside when occupied voxels bracket it
    along at least two of the three axes (an open bottom, as on a scanned bunny, leaves two)."""
    bracketed = np.zeros(shell.shape, dtype=np.int8)
    for axis in range(3):
        before = np.maximum.accumulate(shell, axis=axis)
        after = np.flip(np.maximum.accumulate(np.flip(shell, axis=axis), axis=axis), axis=axis)
        bracketed += before & after
    return shell | (bracketed >= 2)


def skeleton_arms(skeleton: np.ndarray) -> np.ndarray:
    """Per skeleton voxel, how many separate arms leave it: the connected components of its
    26-neighbourhood (1: an end, 2: along a curve, 3+: a branch); 0 off the skeleton.

    Counting components rather than neighbours keeps a line end that bends into a little
    triangle of voxels an end point."""
    padded = np.pad(skeleton, 1)
    arms = np.zeros(skeleton.shape, dtype=np.int8)
    full = np.ones((3, 3, 3), dtype=bool)
    for x, y, z in np.argwhere(skeleton):
        around = padded[x: x + 3, y: y + 3, z: z + 3].copy()
        around[1, 1, 1] = False
        arms[x, y, z] = ndimage.label(around, structure=full)[1]
    return arms


def skeleton_candidates(surface: Surface, max_count: int = 24, resolution: int = 48,
                        dedup_radius: float = 0.05, snap_to: Surface | None = None) -> Candidates:
    """End points (limb ends) and branch points of the curve skeleton of the voxelised shape.

    Skeleton voxels lie inside the shape; each is snapped to the nearest point of `snap_to`
    (default `surface`). Pass the outer surface (points seen from some view) so that, on a mesh
    of overlapping pieces, no candidate lands on a piece buried inside another."""
    from skimage.morphology import skeletonize

    low, high = surface.points.min(axis=0), surface.points.max(axis=0)
    pitch = float(np.max(high - low)) / resolution
    # occupancy of the dense surface sample: a surface voxelisation that is fast and copes
    # with open, multi-part meshes
    cells = np.floor((surface.points - low) / pitch).astype(np.int64)
    shape = cells.max(axis=0) + 1
    occupied = np.zeros(shape, dtype=bool)
    occupied[cells[:, 0], cells[:, 1], cells[:, 2]] = True
    solid = solidify(ndimage.binary_closing(np.pad(occupied, 2), structure=np.ones((3, 3, 3))))
    # scikit-image's 3D thinning drops arms of even voxel thickness on one side of the
    # shape; thinning the volume and its point reflection and uniting the two keeps every arm
    skeleton = skeletonize(solid).astype(bool) | skeletonize(solid[::-1, ::-1, ::-1])[::-1, ::-1, ::-1].astype(bool)
    if not skeleton.any():
        raise SemcorrError("the prototype voxelises to nothing: is it a closed, non-degenerate shape?")
    arms = skeleton_arms(skeleton)
    ends = arms == 1
    branches = arms >= 3
    end_index, branch_index = np.argwhere(ends) - 2, np.argwhere(branches) - 2
    # a branch point is a cluster of junction voxels: one candidate per cluster
    labelled, count = ndimage.label(np.pad(branches, 0), structure=np.ones((3, 3, 3)))
    if count:
        branch_index = np.array(ndimage.center_of_mass(branches, labelled, range(1, count + 1))) - 2
    points = low + (np.concatenate([end_index, branch_index]).astype(np.float64) + 0.5) * pitch
    strength = np.r_[np.full(len(end_index), 2.0), np.full(len(branch_index), 1.0)]
    labels = ["tip"] * len(end_index) + ["joint"] * len(branch_index)
    return _rank_and_cap("skeleton", points, strength, labels, snap_to or surface, dedup_radius, max_count, low, high)


def harris_response(image: np.ndarray, sigma: float = 1.5, k: float = 0.05) -> np.ndarray:
    """Harris corner response det(M) - k trace(M)^2 of a grey image (M: Gaussian-weighted structure tensor)."""
    image = np.asarray(image, dtype=np.float64)
    gx, gy = ndimage.sobel(image, axis=1), ndimage.sobel(image, axis=0)
    ixx = ndimage.gaussian_filter(gx * gx, sigma)
    iyy = ndimage.gaussian_filter(gy * gy, sigma)
    ixy = ndimage.gaussian_filter(gx * gy, sigma)
    return ixx * iyy - ixy * ixy - k * (ixx + iyy) ** 2


def response_peaks(response: np.ndarray, min_distance: int, threshold_rel: float) -> np.ndarray:
    """(row, col) local maxima of `response` at least `threshold_rel` x its maximum, in raster order."""
    top = float(response.max())
    if top <= 0:
        return np.zeros((0, 2), dtype=np.int64)
    local_max = ndimage.maximum_filter(response, size=2 * min_distance + 1) == response
    return np.argwhere(local_max & (response >= threshold_rel * top))


def grey(color: np.ndarray) -> np.ndarray:
    """RGB uint8 to luminance in [0, 1]."""
    return color[..., :3].astype(np.float64) @ np.array([0.2126, 0.7152, 0.0722]) / 255.0


def _contour_points(mask: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """(row, col) extremal points of the silhouette and its corners (Harris peaks of the mask)."""
    pixels = np.argwhere(mask)
    points = [pixels[pixels[:, 0].argmin()], pixels[pixels[:, 0].argmax()],
              pixels[pixels[:, 1].argmin()], pixels[pixels[:, 1].argmax()]]
    labels = ["extreme"] * 4
    corners = response_peaks(harris_response(mask.astype(np.float64), sigma=2.0),
                             min_distance=max(3, mask.shape[0] // 40), threshold_rel=0.1)
    points.extend(corners)
    labels.extend(["corner"] * len(corners))
    return np.array(points, dtype=np.float64), labels


def _lift(view: ViewRender, rows_cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """3D points behind pixel positions, from the nearest object pixel's depth; (points, ok)."""
    height, width = view.depth.shape
    object_pixels = np.argwhere(view.mask)
    tree = cKDTree(object_pixels)
    _, nearest = tree.query(np.asarray(rows_cols, dtype=np.float64).reshape(-1, 2))
    pixels = object_pixels[nearest]
    depth = view.depth[pixels[:, 0], pixels[:, 1]]
    xy = np.stack([pixels[:, 1] + 0.5, pixels[:, 0] + 0.5], axis=1)
    ok = (depth > 0) & (pixels[:, 0] < height) & (pixels[:, 1] < width)
    return view.camera.unproject(xy, depth), ok


def contour_candidates(views: list[ViewRender], surface: Surface, max_count: int = 24, dedup_radius: float = 0.05
                       ) -> Candidates:
    """Silhouette extremes and corners over many viewpoints; strength = number of views proposing it."""
    points, labels = [], []
    for view in views:
        if not view.mask.any():
            continue
        rows_cols, texts = _contour_points(view.mask)
        if len(rows_cols) == 0:
            continue
        lifted, ok = _lift(view, rows_cols)
        points.append(lifted[ok])
        labels.extend(t for t, good in zip(texts, ok) if good)
    xyz = np.concatenate(points) if points else np.zeros((0, 3))
    low, high = surface.points.min(axis=0), surface.points.max(axis=0)
    return _rank_and_cap("contour", xyz, np.ones(len(xyz)), labels, surface, dedup_radius, max_count, low, high)


def appearance_candidates(views: list[ViewRender], surface: Surface, max_count: int = 24,
                          dedup_radius: float = 0.05) -> Candidates:
    """Harris corners of the shaded, textured renders (geometric corners and texture corners)."""
    points, strengths = [], []
    for view in views:
        if not view.mask.any():
            continue
        response = view.corner_response
        size = view.mask.shape[0]
        peaks = response_peaks(response, min_distance=max(3, size // 50), threshold_rel=0.02)
        if len(peaks) == 0:
            continue
        near_object = ndimage.binary_dilation(view.mask, iterations=2)[peaks[:, 0], peaks[:, 1]]
        peaks = peaks[near_object]
        if len(peaks) == 0:
            continue
        lifted, ok = _lift(view, peaks)
        values = response[peaks[:, 0], peaks[:, 1]]
        points.append(lifted[ok])
        strengths.append(values[ok] / max(float(response.max()), 1e-12))
    xyz = np.concatenate(points) if points else np.zeros((0, 3))
    strength = np.concatenate(strengths) if strengths else np.zeros(0)
    low, high = surface.points.min(axis=0), surface.points.max(axis=0)
    labels = ["feature"] * len(xyz)
    return _rank_and_cap("appearance", xyz, strength, labels, surface, dedup_radius, max_count, low, high)
