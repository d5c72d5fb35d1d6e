"""3D prototypes: built-in procedural categories and any mesh trimesh loads.

The canonical frame: +y up, +z the object's front, centred on its bounding box, the
longest bounding-box side 1. "Left" keypoints are on the object's own left (+x).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import trimesh

from semcorr.errors import SemcorrError
from semcorr.keypoint_schema import KeypointSchema
from semcorr.rendering import Part


@dataclass
class Prototype:
    """A category's 3D model in the canonical frame, with its keypoint schema."""

    schema: KeypointSchema
    parts: list[Part]
    keypoints_xyz: np.ndarray

    @property
    def name(self) -> str:
        """The category name."""
        return self.schema.category

    @property
    def vertices(self) -> np.ndarray:
        """All vertices of all parts, (N, 3)."""
        return np.concatenate([part.mesh.vertices for part in self.parts])


def axis_vector(axis: str) -> np.ndarray:
    """'+y' -> (0, 1, 0), '-x' -> (-1, 0, 0)."""
    vector = np.zeros(3)
    vector["xyz".index(axis[1])] = 1.0 if axis[0] == "+" else -1.0
    return vector


def canonical_transform(bounds: np.ndarray, up_axis: str = "+y", front_axis: str = "+z") -> np.ndarray:
    """4x4 transform from a mesh's frame to the canonical one (rotate, centre, unit size)."""
    up, front = axis_vector(up_axis), axis_vector(front_axis)
    right = np.cross(up, front)
    rotation = np.eye(4)
    rotation[:3, :3] = np.stack([right, up, front])
    corners = trimesh.bounds.corners(bounds)
    rotated = corners @ rotation[:3, :3].T
    low, high = rotated.min(axis=0), rotated.max(axis=0)
    scale = 1.0 / float(np.max(high - low))
    transform = np.eye(4)
    transform[:3, :3] = scale * rotation[:3, :3]
    transform[:3, 3] = -scale * (low + high) / 2.0
    return transform


def load_mesh_parts(path: Path) -> list[Part]:
    """Load any mesh or scene trimesh reads (OBJ, GLB/glTF, PLY, STL, OFF) as world-space parts."""
    path = Path(path)
    if not path.is_file():
        raise SemcorrError(f"{path}: mesh file not found")
    try:
        loaded = trimesh.load(path, force="scene")
    except Exception as exc:
        raise SemcorrError(f"{path}: trimesh cannot read it ({type(exc).__name__}: {exc})") from None
    meshes = [geom for geom in loaded.dump(concatenate=False) if isinstance(geom, trimesh.Trimesh)]
    meshes = [mesh for mesh in meshes if len(mesh.faces)]
    if not meshes:
        raise SemcorrError(f"{path}: holds no triangle mesh (no faces); export the object as a mesh")
    vertices = np.concatenate([mesh.vertices for mesh in meshes])
    if not np.isfinite(vertices).all():
        raise SemcorrError(f"{path}: has non-finite vertex coordinates")
    extent = vertices.max(axis=0) - vertices.min(axis=0)
    if sum(len(mesh.faces) for mesh in meshes) < 4 or extent.min() <= 1e-6 * max(extent.max(), 1e-12):
        raise SemcorrError(f"{path}: the mesh is degenerate (flat or fewer than 4 faces, extent "
                           f"{', '.join(f'{v:g}' for v in extent)}); a 3D prototype needs volume")
    return [Part(mesh=mesh, color=None) for mesh in meshes]


def canonical_parts(parts: list[Part], up_axis: str = "+y", front_axis: str = "+z") -> tuple[list[Part], np.ndarray]:
    """Parts moved into the canonical frame, and the 4x4 transform that moved them."""
    bounds = np.array([np.min([p.mesh.bounds[0] for p in parts], axis=0),
                       np.max([p.mesh.bounds[1] for p in parts], axis=0)])
    transform = canonical_transform(bounds, up_axis, front_axis)
    moved = []
    for part in parts:
        mesh = part.mesh.copy()
        mesh.apply_transform(transform)
        moved.append(Part(mesh=mesh, color=part.color))
    return moved, transform


def prototype_from_parts(parts: list[Part], schema: KeypointSchema) -> Prototype:
    """Normalise parts and the schema's keypoints together into the canonical frame."""
    moved, transform = canonical_parts(parts, schema.up_axis, schema.front_axis)
    keypoints = trimesh.transform_points(schema.xyz, transform)
    return Prototype(schema=schema, parts=moved, keypoints_xyz=keypoints)


def load_prototype(mesh_path: Path, schema: KeypointSchema) -> Prototype:
    """A prototype from a mesh file and a keypoint schema in that mesh's frame."""
    return prototype_from_parts(load_mesh_parts(mesh_path), schema)


# ---------------------------------------------------------------------------- built-in categories


def _box(size: tuple[float, float, float], centre: tuple[float, float, float]) -> trimesh.Trimesh:
    return trimesh.creation.box(extents=size, transform=trimesh.transformations.translation_matrix(centre))


def _cylinder(radius: float, height: float, centre: tuple[float, float, float], axis: str) -> trimesh.Trimesh:
    rotate = {"x": trimesh.transformations.rotation_matrix(np.pi / 2, [0, 1, 0]),
              "y": trimesh.transformations.rotation_matrix(np.pi / 2, [1, 0, 0]),
              "z": np.eye(4)}[axis]
    return trimesh.creation.cylinder(radius=radius, height=height, sections=24,
                                     transform=trimesh.transformations.translation_matrix(centre) @ rotate)


def _mirrored(points: dict[str, tuple[float, float, float]]) -> dict[str, tuple[float, float, float]]:
    """For each `left_*` point (x > 0) add its `right_*` mirror (x < 0)."""
    out = dict(points)
    for name, (x, y, z) in points.items():
        if name.startswith("left_"):
            out["right_" + name[5:]] = (-x, y, z)
    return out


def _schema(category: str, points: dict[str, tuple[float, float, float]],
            skeleton: list[tuple[str, str]], descriptions: dict[str, str]) -> KeypointSchema:
    names = tuple(points)
    index = {name: i for i, name in enumerate(names)}
    flips = tuple((index[n], index["right_" + n[5:]]) for n in names if n.startswith("left_"))
    return KeypointSchema(
        category=category,
        names=names,
        xyz=np.array([points[n] for n in names]),
        descriptions=tuple(descriptions.get(n, n.replace("_", " ")) for n in names),
        skeleton=tuple((index[a], index[b]) for a, b in skeleton),
        flip_pairs=flips,
    )


def _chair() -> tuple[list[Part], KeypointSchema]:
    wood, fabric = (0.55, 0.35, 0.2, 1.0), (0.2, 0.35, 0.6, 1.0)
    parts = [Part(_box((0.5, 0.06, 0.5), (0, 0.45, 0)), fabric),
             Part(_box((0.5, 0.5, 0.05), (0, 0.73, -0.225)), fabric)]
    for x in (-0.22, 0.22):
        for z in (-0.22, 0.22):
            parts.append(Part(_box((0.05, 0.42, 0.05), (x, 0.21, z)), wood))
    points = _mirrored({
        "left_front_foot": (0.245, 0.01, 0.245),
        "left_back_foot": (0.245, 0.01, -0.245),
        "left_seat_front": (0.25, 0.48, 0.25),
        "left_seat_back": (0.25, 0.48, -0.2),
        "left_back_top": (0.25, 0.98, -0.2),
    })
    skeleton = [(f"{s}_front_foot", f"{s}_seat_front") for s in ("left", "right")]
    skeleton += [(f"{s}_back_foot", f"{s}_seat_back") for s in ("left", "right")]
    skeleton += [(f"{s}_seat_back", f"{s}_back_top") for s in ("left", "right")]
    skeleton += [("left_seat_front", "right_seat_front"), ("left_back_top", "right_back_top")]
    descriptions = {"left_front_foot": "bottom of the front leg on the chair's left",
                    "left_seat_front": "front corner of the seat on the chair's left",
                    "left_back_top": "top corner of the backrest on the chair's left"}
    return parts, _schema("chair", points, skeleton, descriptions)


def _car() -> tuple[list[Part], KeypointSchema]:
    paint, glass, rubber = (0.75, 0.1, 0.1, 1.0), (0.6, 0.75, 0.85, 1.0), (0.08, 0.08, 0.08, 1.0)
    parts = [Part(_box((0.45, 0.22, 1.0), (0, 0.22, 0)), paint),
             Part(_box((0.4, 0.18, 0.5), (0, 0.42, -0.05)), glass)]
    for x in (-0.215, 0.215):
        for z in (-0.32, 0.32):
            parts.append(Part(_cylinder(0.11, 0.07, (x, 0.11, z), "x"), rubber))
    points = _mirrored({
        "left_front_wheel": (0.25, 0.11, 0.32),
        "left_back_wheel": (0.25, 0.11, -0.32),
        "left_headlight": (0.18, 0.28, 0.5),
        "left_taillight": (0.18, 0.28, -0.5),
        "left_roof_front": (0.2, 0.51, 0.2),
        "left_roof_back": (0.2, 0.51, -0.3),
    })
    skeleton = [("left_front_wheel", "left_back_wheel"), ("right_front_wheel", "right_back_wheel"),
                ("left_headlight", "right_headlight"), ("left_taillight", "right_taillight"),
                ("left_roof_front", "left_roof_back"), ("right_roof_front", "right_roof_back"),
                ("left_roof_front", "right_roof_front")]
    descriptions = {"left_front_wheel": "centre of the front wheel on the car's left",
                    "left_headlight": "headlight on the car's left"}
    return parts, _schema("car", points, skeleton, descriptions)


def _airplane() -> tuple[list[Part], KeypointSchema]:
    body, wing = (0.85, 0.85, 0.88, 1.0), (0.3, 0.45, 0.7, 1.0)
    nose = trimesh.creation.cone(radius=0.07, height=0.12, sections=24,
                                 transform=trimesh.transformations.translation_matrix((0, 0, 0.38)))
    parts = [Part(_cylinder(0.07, 0.76, (0, 0, 0), "z"), body), Part(nose, body),
             Part(_box((1.0, 0.03, 0.2), (0, 0, 0.05)), wing),
             Part(_box((0.03, 0.2, 0.12), (0, 0.14, -0.32)), wing),
             Part(_box((0.36, 0.02, 0.1), (0, 0.0, -0.33)), wing)]
    points = _mirrored({
        "nose": (0.0, 0.0, 0.5),
        "tail": (0.0, 0.0, -0.38),
        "left_wingtip_front": (0.5, 0.015, 0.15),
        "left_wingtip_back": (0.5, 0.015, -0.05),
        "fin_top": (0.0, 0.24, -0.26),
        "left_stabilizer_tip": (0.18, 0.01, -0.33),
    })
    skeleton = [("nose", "tail"), ("left_wingtip_front", "left_wingtip_back"),
                ("right_wingtip_front", "right_wingtip_back"), ("tail", "fin_top"),
                ("left_stabilizer_tip", "right_stabilizer_tip")]
    descriptions = {"nose": "tip of the nose cone", "fin_top": "top of the vertical tail fin"}
    return parts, _schema("airplane", points, skeleton, descriptions)


BUILTIN_CATEGORIES: dict[str, Callable[[], tuple[list[Part], KeypointSchema]]] = {
    "chair": _chair,
    "car": _car,
    "airplane": _airplane,
}


def builtin_prototype(name: str) -> Prototype:
    """One of BUILTIN_CATEGORIES as a canonical prototype."""
    if name not in BUILTIN_CATEGORIES:
        raise SemcorrError(f"unknown built-in category {name!r}; choose from {', '.join(BUILTIN_CATEGORIES)} "
                           "or give --mesh and --schema")
    parts, schema = BUILTIN_CATEGORIES[name]()
    return prototype_from_parts(parts, schema)
