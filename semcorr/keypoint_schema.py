"""Keypoint schema JSON: a category's named 3D keypoints on its prototype mesh.

Format (written by `vote-keypoints`, read by `synth` and the store)::

    {
      "format": "semcorr-keypoint-schema",
      "category": "chair",
      "version": 1,
      "mesh": "/abs/path/chair.obj",    # optional; absolute, or relative to the schema file
      "mesh_relative": "../chair.obj",  # optional; the same mesh relative to the schema file (tried first)
      "up_axis": "+y", "front_axis": "+z",   # of the mesh file's own frame
      "keypoints": [{"name": "left_top_front_corner", "xyz": [x, y, z],
                      "description": "...", "scheme": "...", "views": ["front"],   # views proposing it
                      "visible_in": ["front", "left"], "xyz_canonical": [x, y, z]}],
      "skeleton": [["a", "b"], ...],    # by keypoint name
      "flip_pairs": [["left_x", "right_x"], ...],
      "id_map": {"<old id>": <new id or null>}   # from the previous version, optional
    }

Coordinates are in the mesh file's own frame; loaders normalise mesh and keypoints together.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from semcorr import atomic
from semcorr.errors import SemcorrError
from semcorr.store import read_json

FORMAT = "semcorr-keypoint-schema"
AXES = ("+x", "-x", "+y", "-y", "+z", "-z")


def parse_axis(text: object, option: str = "axis") -> str:
    """An axis as one of AXES: x, y or z with an optional sign, any case ("Z" -> "+z", "-Y" -> "-y").

    Raises:
        SemcorrError: naming `option` and the accepted forms.
    """
    value = str(text).strip().lower() if isinstance(text, str) else ""
    if value in ("x", "y", "z"):
        value = "+" + value
    if value not in AXES:
        raise SemcorrError(f"{option} {text!r}: not an axis; use x, y or z with an optional sign (+y, -z, ...)")
    return value


def parse_axes(up_axis: object, front_axis: object, up_name: str = "--up-axis", front_name: str = "--front-axis"
               ) -> tuple[str, str]:
    """(up, front) normalised by `parse_axis`; SemcorrError when they are parallel."""
    up, front = parse_axis(up_axis, up_name), parse_axis(front_axis, front_name)
    if up[1] == front[1]:
        hint = "; or --up-axis auto to have them suggested" if up_name == "--up-axis" else ""
        raise SemcorrError(f"{up_name} {up_axis!r} and {front_name} {front_axis!r} are parallel; choose two "
                           f"different axes (e.g. up +y, front +z){hint}")
    return up, front


@dataclass
class KeypointSchema:
    """Named 3D keypoints of one category.

    Attributes:
        category: category name.
        names: ordered keypoint names (K).
        xyz: (K, 3) coordinates in the mesh's frame.
        descriptions: K text descriptions.
        skeleton: 0-based index edges.
        flip_pairs: 0-based (left, right) index pairs.
        version: schema version.
        up_axis: the mesh's up axis, one of AXES.
        front_axis: the mesh's front axis, one of AXES.
        mesh: path of the prototype mesh, if the schema names one.
        extra: top-level extra fields (the id map from the previous version), kept as they are.
        keypoint_extra: per-keypoint extra fields (scheme, views, ...), kept as they are.
    """

    category: str
    names: tuple[str, ...]
    xyz: np.ndarray
    descriptions: tuple[str, ...] = ()
    skeleton: tuple[tuple[int, int], ...] = ()
    flip_pairs: tuple[tuple[int, int], ...] = ()
    version: int = 1
    up_axis: str = "+y"
    front_axis: str = "+z"
    mesh: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    keypoint_extra: tuple[dict[str, Any], ...] = ()

    def __post_init__(self) -> None:
        self.xyz = np.asarray(self.xyz, dtype=np.float64).reshape(-1, 3)
        if len(self.names) != len(self.xyz):
            raise ValueError(f"{len(self.names)} names for {len(self.xyz)} points")
        if len(set(self.names)) != len(self.names):
            raise ValueError("duplicate keypoint names")
        if not self.descriptions:
            self.descriptions = tuple(name.replace("_", " ") for name in self.names)
        if self.up_axis not in AXES or self.front_axis not in AXES or self.up_axis[1] == self.front_axis[1]:
            raise ValueError(f"up {self.up_axis!r} and front {self.front_axis!r} must be two different axes of {AXES}")


def load_schema(path: Path) -> KeypointSchema:
    """Read and validate a keypoint schema JSON."""
    path = Path(path)
    raw = read_json(path)
    if not isinstance(raw, dict) or not isinstance(raw.get("keypoints"), list) or not raw["keypoints"]:
        raise SemcorrError(f"{path}: top level: expected an object with a non-empty 'keypoints' list")
    names, xyz, descriptions, keypoint_extra = [], [], [], []
    for index, point in enumerate(raw["keypoints"]):
        coords = point.get("xyz") if isinstance(point, dict) else None
        if not isinstance(point, dict) or "name" not in point or not isinstance(coords, list) or len(coords) != 3:
            raise SemcorrError(f"{path}: keypoints[{index}]: needs 'name' and 'xyz' [x, y, z]")
        if not all(isinstance(v, int | float) and not isinstance(v, bool) and np.isfinite(v) for v in coords):
            raise SemcorrError(f"{path}: keypoints[{index}] xyz {coords!r}: write three finite numbers")
        names.append(str(point["name"]))
        xyz.append([float(v) for v in coords])
        descriptions.append(str(point.get("description", point["name"])).replace("_", " "))
        keypoint_extra.append({k: v for k, v in point.items() if k not in ("name", "xyz", "description")})
    index_of = {name: i for i, name in enumerate(names)}

    def edges(key: str) -> tuple[tuple[int, int], ...]:
        out = []
        entries = raw.get(key, []) or []
        if not isinstance(entries, list):
            raise SemcorrError(f"{path}: {key}: expected a list of [name, name] pairs")
        for entry in entries:
            if not isinstance(entry, list) or len(entry) != 2:
                raise SemcorrError(f"{path}: {key} {entry!r}: expected a [name, name] pair")
            a, b = entry
            if not isinstance(a, str) or not isinstance(b, str) or a not in index_of or b not in index_of:
                raise SemcorrError(f"{path}: {key} [{a!r}, {b!r}]: unknown keypoint name")
            out.append((index_of[a], index_of[b]))
        return tuple(out)

    mesh = _mesh_path(path, raw.get("mesh"), raw.get("mesh_relative"))
    try:
        up_axis, front_axis = parse_axes(raw.get("up_axis", "+y"), raw.get("front_axis", "+z"),
                                         f"{path}: up_axis", "front_axis")
        return KeypointSchema(
            category=str(raw.get("category") or path.stem),
            names=tuple(names),
            xyz=np.array(xyz),
            descriptions=tuple(descriptions),
            skeleton=edges("skeleton"),
            flip_pairs=edges("flip_pairs"),
            version=_version_number(path, raw.get("version", 1)),
            up_axis=up_axis,
            front_axis=front_axis,
            mesh=mesh,
            extra={k: raw[k] for k in ("id_map",) if k in raw},
            keypoint_extra=tuple(keypoint_extra) if any(keypoint_extra) else (),
        )
    except (ValueError, TypeError) as exc:
        raise SemcorrError(f"{path}: {exc}") from None


def _version_number(path: Path, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SemcorrError(f"{path}: version {value!r}: expected a whole number from 1")
    return value


def _mesh_path(path: Path, mesh: object, mesh_relative: object) -> Path | None:
    """The schema's mesh as an absolute path: `mesh_relative` resolved from the schema file's folder when
    that file exists (the schema moved together with its mesh), else `mesh` (absolute, or relative to the
    schema file); None when none is named."""
    options = []
    for value in (mesh_relative, mesh):
        if value is None or value == "":
            continue
        if not isinstance(value, str) or "\x00" in value:
            raise SemcorrError(f"{path}: mesh {value!r}: expected a file path string")
        candidate = Path(value).expanduser()
        options.append(Path(os.path.normpath(candidate if candidate.is_absolute()
                                             else Path(path).resolve().parent / candidate)))
    if not options:
        return None
    return next((option for option in options if option.is_file()), options[0])


def schema_to_json(schema: KeypointSchema, relative_to: Path | None = None) -> dict[str, Any]:
    """The JSON object `save_schema` writes.

    The mesh is written as an absolute path (so the schema works from any folder and after the
    schema file is moved) and, when `relative_to` (the folder of the schema file) is given, also
    relative to it as `mesh_relative` (so a folder holding both can be moved together).
    """
    out: dict[str, Any] = {
        "format": FORMAT,
        "category": schema.category,
        "version": schema.version,
        "up_axis": schema.up_axis,
        "front_axis": schema.front_axis,
        "keypoints": [
            {"name": name, "xyz": [round(float(v), 6) for v in point], "description": text,
             **(schema.keypoint_extra[i] if schema.keypoint_extra else {})}
            for i, (name, point, text) in enumerate(zip(schema.names, schema.xyz, schema.descriptions))
        ],
        "skeleton": [[schema.names[a], schema.names[b]] for a, b in schema.skeleton],
        "flip_pairs": [[schema.names[a], schema.names[b]] for a, b in schema.flip_pairs],
    }
    if schema.mesh is not None:
        mesh = Path(schema.mesh).expanduser().resolve()
        out["mesh"] = str(mesh)
        if relative_to is not None:
            out["mesh_relative"] = os.path.relpath(mesh, Path(relative_to).resolve())
    out.update(schema.extra)
    return out


def save_schema(schema: KeypointSchema, path: Path) -> Path:
    """Atomically write a keypoint schema JSON."""
    atomic.write_json(Path(path), schema_to_json(schema, Path(path).parent), indent=2)
    return Path(path)
