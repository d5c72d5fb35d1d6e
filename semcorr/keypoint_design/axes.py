"""Help choosing a mesh's up and front axes: a suggestion from the shape and a six-view preview.

- up: the object rests on its largest support. For each of the six signed axes, the support
  is the area of the footprint it would stand on with that axis up: the 2D convex hull of the
  vertices within 2% of the object's size of its lowest point (four wheels or chair legs span
  the rectangle between them), as a share of the bounding-box cross-section, times how low the
  surface's area centroid sits above it (1 - its height / the object's height); the largest wins
  (ties: +y, +z, +x, ...). glTF files are +y up by specification, so for .glb / .gltf up is +y.
- front: of the two axes across up, the one that is not across the mirror plane: the object
  mirrored along the other axis lies on itself (smallest mean distance of a surface sample to
  its mirror image). The sign cannot be told from the shape: + is proposed, and the preview
  lets the user confirm or flip it.
"""

from __future__ import annotations

import io

import numpy as np
import trimesh
from PIL import Image, ImageDraw
from scipy.spatial import ConvexHull, QhullError, cKDTree

from semcorr.keypoint_design.views import VIEW_NAMES, ViewRender
from semcorr.rendering import Part
from semcorr.synth.prototypes import axis_vector

PREFERENCE = ("+y", "+z", "+x", "-y", "-z", "-x")
UNIT = {"x": 0, "y": 1, "z": 2}


def geometry_only(parts: list[Part]) -> trimesh.Trimesh:
    """All parts as one mesh of vertices and faces (no textures to merge: fast on textured scenes)."""
    vertices, faces, offset = [], [], 0
    for part in parts:
        vertices.append(np.asarray(part.mesh.vertices))
        faces.append(np.asarray(part.mesh.faces) + offset)
        offset += len(part.mesh.vertices)
    return trimesh.Trimesh(np.concatenate(vertices), np.concatenate(faces), process=False)


def support_shares(mesh: trimesh.Trimesh, slab: float = 0.02) -> dict[str, float]:
    """Per signed axis, the footprint with that axis up: area of the 2D convex hull of the vertices
    within `slab` x the longest side of the lowest one, as a share of the bounding box's cross-section."""
    points = np.asarray(mesh.vertices, dtype=np.float64)
    extent = np.ptp(points, axis=0)
    out = {}
    for axis in PREFERENCE:
        height = points @ -axis_vector(axis)
        low = points[height >= height.max() - slab * float(extent.max())]
        across = [i for i in range(3) if i != UNIT[axis[1]]]
        flat = low[:, across]
        try:
            area = float(ConvexHull(flat).volume) if len(flat) >= 3 else 0.0
        except QhullError:  # all on a line: no area
            area = 0.0
        out[axis] = area / max(float(extent[across[0]] * extent[across[1]]), 1e-12)
    return out


def centroid_heights(mesh: trimesh.Trimesh) -> dict[str, float]:
    """Per signed axis, the height of the surface's area centroid above the lowest point with that
    axis up, as a share of the object's height along it."""
    centroid = np.average(mesh.triangles_center, axis=0, weights=np.maximum(mesh.area_faces, 1e-300))
    points = np.asarray(mesh.vertices, dtype=np.float64)
    out = {}
    for axis in PREFERENCE:
        height = points @ axis_vector(axis)
        out[axis] = float((centroid @ axis_vector(axis) - height.min()) / max(float(np.ptp(height)), 1e-12))
    return out


def mirror_error(points: np.ndarray, axis: int) -> float:
    """Mean distance of `points` mirrored across the plane through their bounding-box centre
    perpendicular to `axis`, to the nearest of `points`, relative to the longest side."""
    low, high = points.min(axis=0), points.max(axis=0)
    mirrored = points.copy()
    mirrored[:, axis] = low[axis] + high[axis] - mirrored[:, axis]
    return float(cKDTree(points).query(mirrored)[0].mean() / max(float(np.max(high - low)), 1e-12))


def suggest_up(mesh: trimesh.Trimesh, front_axis: str | None = None) -> tuple[str, float]:
    """(up axis, its footprint as a share of the box's cross-section): the largest footprint, among the
    axes not parallel to `front_axis` when one is given."""
    shares, heights = support_shares(mesh), centroid_heights(mesh)
    stability = {a: shares[a] * (1.0 - heights[a]) for a in PREFERENCE}
    allowed = [a for a in PREFERENCE if front_axis is None or a[1] != front_axis[1]]
    up = max(allowed, key=lambda a: (round(stability[a], 6), -PREFERENCE.index(a)))
    return up, shares[up]


def suggest_front(mesh: trimesh.Trimesh, up_axis: str, seed: int = 0) -> tuple[str, str]:
    """(front axis, reason): across `up_axis`, the axis that is not across the mirror plane, + sign."""
    points = np.asarray(trimesh.sample.sample_surface(mesh, 4000, seed=seed)[0])
    across = [a for a in "xyz" if a != up_axis[1]]
    errors = {a: mirror_error(points, UNIT[a]) for a in across}
    mirror_axis = min(across, key=lambda a: (round(errors[a], 9), a))
    front = next(a for a in across if a != mirror_axis)
    return f"+{front}", (f"mirror plane across {mirror_axis} (mirror error {errors[mirror_axis]:.3f}, "
                         f"{errors[front]:.3f} across {front}), so the front is along {front}; its sign cannot "
                         "be told from the shape")


def suggest_axes(parts: list[Part], up_axis: str | None = None, front_axis: str | None = None, seed: int = 0,
                 gltf: bool = False) -> tuple[str, str, str]:
    """(up, front, reason) for the mesh in its own frame; a given axis is kept, the other suggested.

    Args:
        parts: the mesh's parts as loaded (the file's frame).
        up_axis: a given up axis, or None to suggest one.
        front_axis: a given front axis, or None to suggest one.
        seed: surface sampling seed.
        gltf: the file is glTF, +y up by specification.
    """
    mesh = geometry_only(parts)
    reasons = []
    if up_axis is None and gltf and (front_axis is None or front_axis[1] != "y"):
        up_axis = "+y"
        reasons.append("glTF files are +y up")
    if up_axis is None:
        up_axis, share = suggest_up(mesh, front_axis)
        reasons.append(f"stands on its largest footprint facing {_flip(up_axis)}, {share:.0%} of its box")
    if front_axis is None:
        front_axis, reason = suggest_front(mesh, up_axis, seed)
        reasons.append(reason)
    return up_axis, front_axis, "; ".join(reasons)


def _flip(axis: str) -> str:
    return ("-" if axis[0] == "+" else "+") + axis[1]


def axes_preview(views: list[ViewRender], up_axis: str, front_axis: str, tile: int = 200) -> bytes:
    """PNG bytes: the six grading views (2 x 3 tiles, labelled) with the axes used, to confirm them."""
    by_name = {view.name: view for view in views}
    header = 30
    sheet = Image.new("RGB", (3 * tile, 2 * tile + header), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((6, 8), f"up {up_axis}, front {front_axis}: 'upper' should show the top, 'front' the front",
              fill="black")
    for index, name in enumerate(VIEW_NAMES):
        image = Image.fromarray(by_name[name].color).resize((tile, tile), Image.LANCZOS)
        x, y = (index % 3) * tile, header + (index // 3) * tile
        sheet.paste(image, (x, y))
        draw.text((x + 6, y + 4), name, fill=(200, 0, 0))
        draw.rectangle([x, y, x + tile - 1, y + tile - 1], outline=(180, 180, 180))
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    return buffer.getvalue()
