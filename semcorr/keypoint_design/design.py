"""vote-keypoints: from a prototype mesh to a merged, versioned keypoint schema.

Steps: load and normalise the mesh; propose candidates with the three schemes; render the
six views and test each candidate's visibility there; score every (view, scheme) cell
from votes or automatic proxies; per view keep the schemes scoring above the threshold;
merge the kept candidates of all six views (points within `merge_distance` become one);
find left/right flip pairs by mirror symmetry and wire skeleton edges; version the result
against the schema already in the output folder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import trimesh
from scipy.sparse.csgraph import minimum_spanning_tree
from scipy.spatial import cKDTree
from scipy.spatial.distance import pdist, squareform

from semcorr import atomic
from semcorr.errors import SemcorrError
from semcorr.keypoint_design import candidates as cand
from semcorr.keypoint_design import scoring, sheets
from semcorr.keypoint_design.views import VIEW_NAMES, orbit_cameras, render_views, visibility_matrix
from semcorr.keypoint_schema import KeypointSchema, load_schema, parse_axes, schema_to_json
from semcorr.paths import refuse_file_target
from semcorr.rendering import Renderer
from semcorr.synth.prototypes import canonical_parts, load_mesh_parts

SCHEMA_FILE = "schema.json"
VOTES_USED_FILE = "votes_used.csv"


@dataclass(frozen=True)
class DesignOptions:
    """Options of vote-keypoints (canonical units: the prototype's longest side is 1)."""

    up_axis: str = "+y"
    front_axis: str = "+z"
    size: int = 512
    max_candidates: int = 24
    threshold: float = 0.5
    merge_distance: float = 0.06
    disagreement: float = 0.25
    symmetry_tolerance: float = 0.02
    seed: int = 0


@dataclass
class DesignResult:
    """What vote-keypoints decided and wrote."""

    schema: KeypointSchema
    scores: pd.DataFrame
    agreement: dict[str, float]
    candidates: list[cand.Candidates]
    version_note: str
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def checked_options(options: DesignOptions) -> DesignOptions:
    """`options` with the axes normalised (x, y, z with an optional sign, any case); SemcorrError with
    one line naming the option when an axis is unknown, the axes are parallel or a number is out of range."""
    import dataclasses
    import math

    up, front = parse_axes(options.up_axis, options.front_axis)

    def number(option: str, value: object, low: float, high: float, low_open: bool = False,
               whole: bool = False) -> None:
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        ok = ok and (value > low if low_open else value >= low) and value <= high
        if ok and whole:
            ok = float(value).is_integer()
        if not ok:
            kind = "a whole number" if whole else "a finite number"
            bounds = f"{'(' if low_open else '['}{low:g}, {high:g}]"
            raise SemcorrError(f"{option} {value!r}: must be {kind} in {bounds}")

    number("--threshold", options.threshold, 0.0, 1.0)
    number("--merge-distance", options.merge_distance, 0.0, 1.0, low_open=True)
    number("disagreement", options.disagreement, 0.0, 1.0)
    number("symmetry_tolerance", options.symmetry_tolerance, 0.0, 1.0)
    number("--size", options.size, 64, 4096, whole=True)
    number("--max-candidates", options.max_candidates, 1, 10000, whole=True)
    number("--seed", options.seed, 0, 2**32 - 1, whole=True)
    return dataclasses.replace(options, up_axis=up, front_axis=front)


def merge_chosen(candidate_sets: list[cand.Candidates], visibility: dict[str, np.ndarray], chosen: pd.Series,
                 merge_distance: float) -> tuple[np.ndarray, list[dict]]:
    """Merge the candidates of the chosen (view, scheme) cells that are visible in that view.

    Args:
        candidate_sets: one per scheme, in SCHEMES order.
        visibility: scheme -> (6, N) bool, views in VIEW_NAMES order.
        chosen: bool, indexed by (view, scheme).
        merge_distance: points closer than this become one (the first, in scheme order, stays).

    Returns:
        xyz: (M, 3) merged keypoints.
        sources: per keypoint, {"scheme", "schemes", "views", "description"}.
    """
    points, info = [], []
    for cands in candidate_sets:
        for index in range(len(cands.xyz)):
            views = [view for v, view in enumerate(VIEW_NAMES)
                     if chosen.get((view, cands.scheme), False) and visibility[cands.scheme][v, index]]
            if views:
                points.append(cands.xyz[index])
                info.append({"scheme": cands.scheme, "views": views, "description": cands.descriptions[index]})
    if not points:
        return np.zeros((0, 3)), []
    xyz = np.array(points)
    kept, groups = cand.merge_close(xyz, merge_distance)
    sources = []
    for keep, group in zip(kept, groups):
        views = sorted({v for g in group for v in info[g]["views"]}, key=VIEW_NAMES.index)
        schemes = sorted({info[g]["scheme"] for g in group}, key=cand.SCHEMES.index)
        sources.append({"scheme": info[keep]["scheme"], "schemes": schemes, "views": views,
                        "description": info[keep]["description"]})
    return xyz[kept], sources


def is_mirror_symmetric(surface_points: np.ndarray, tolerance: float) -> bool:
    """True when the surface mirrored in x (the left/right plane) lies on itself within `tolerance`."""
    step = max(1, len(surface_points) // 4000)
    mirrored = surface_points[::step] * np.array([-1.0, 1.0, 1.0])
    distance, _ = cKDTree(surface_points).query(mirrored)
    return float(np.mean(distance)) <= tolerance


def flip_pairs(xyz: np.ndarray, max_distance: float, on_plane: float = 0.02) -> list[tuple[int, int]]:
    """(left, right) index pairs: mutual nearest mirror images (x -> -x) within `max_distance`.

    Left is the object's own left (+x); points within `on_plane` of the mirror plane pair with nobody.
    """
    if len(xyz) < 2:
        return []
    mirrored = xyz * np.array([-1.0, 1.0, 1.0])
    distance = np.linalg.norm(mirrored[:, None, :] - xyz[None, :, :], axis=2)
    pairs = []
    for left in np.flatnonzero(xyz[:, 0] > on_plane):
        right = int(np.argmin(distance[left]))
        if (xyz[right, 0] < -on_plane and distance[left, right] <= max_distance
                and int(np.argmin(distance[:, right])) == left):
            pairs.append((int(left), right))
    return pairs


def skeleton_edges(xyz: np.ndarray) -> list[tuple[int, int]]:
    """Edges of the Euclidean minimum spanning tree over the keypoints (sorted index pairs)."""
    if len(xyz) < 2:
        return []
    tree = minimum_spanning_tree(squareform(pdist(xyz))).tocoo()
    return sorted((int(min(a, b)), int(max(a, b))) for a, b in zip(tree.row, tree.col))


def keypoint_names(xyz: np.ndarray) -> tuple[str, ...]:
    """kpNN_<region>, e.g. kp03_upper_front_left."""
    low, high = xyz.min(axis=0), xyz.max(axis=0)
    return tuple(f"kp{i:02d}_{cand.region_words(p, low, high).replace(' ', '_')}" for i, p in enumerate(xyz))


def id_map(old: np.ndarray, new: np.ndarray, max_distance: float) -> dict[str, int | None]:
    """Old keypoint id -> new id of the same point (nearest, one-to-one, within `max_distance`), or None."""
    mapping: dict[str, int | None] = {str(i): None for i in range(len(old))}
    if len(old) and len(new):
        distance = np.linalg.norm(old[:, None, :] - new[None, :, :], axis=2)
        for flat in np.argsort(distance, axis=None, kind="stable"):
            i, j = np.unravel_index(flat, distance.shape)
            if distance[i, j] > max_distance:
                break
            if mapping[str(i)] is None and j not in mapping.values():
                mapping[str(i)] = int(j)
    return mapping


def _previous_schema(out_dir: Path, category: str) -> KeypointSchema | None:
    """The schema already in `out_dir`, if any; SemcorrError if it is another category's."""
    path = out_dir / SCHEMA_FILE
    if not path.exists():
        return None
    previous = load_schema(path)
    if previous.category != category:
        raise SemcorrError(f"{path}: holds the schema of category {previous.category!r}, not {category!r}; "
                           "choose another --out")
    return previous


def _version(out_dir: Path, category: str, canonical: np.ndarray, names: tuple[str, ...], merge_distance: float
             ) -> tuple[int, dict | None, str]:
    """(version, id map or None, note) against the schema already in `out_dir`."""
    previous = _previous_schema(out_dir, category)
    if previous is None:
        return 1, None, "new schema, version 1"
    old = np.array([extra.get("xyz_canonical", [np.nan] * 3) for extra in previous.keypoint_extra]
                   if previous.keypoint_extra else previous.xyz, dtype=np.float64).reshape(-1, 3)
    if previous.names == names and old.shape == canonical.shape and np.allclose(old, canonical, atol=1e-6):
        return previous.version, None, f"unchanged, version {previous.version}"
    version = previous.version + 1
    return version, id_map(old, canonical, merge_distance), f"changed: version {previous.version} -> {version}"


def design_keypoints(mesh_path: Path, category: str, out_dir: Path, votes_path: Path | None = None,
                     options: DesignOptions = DesignOptions(), progress: Callable[[str], None] | None = None
                     ) -> DesignResult:
    """Run vote-keypoints and write its outputs into `out_dir` (nothing is written on error)."""
    say = progress or (lambda _step: None)
    out_dir = Path(out_dir)
    options = checked_options(options)
    refuse_file_target(out_dir, "--out")
    votes = scoring.load_votes(votes_path) if votes_path is not None else None
    votes_bytes = Path(votes_path).read_bytes() if votes_path is not None else None
    _previous_schema(out_dir, category)
    raw_parts = load_mesh_parts(mesh_path)
    try:
        parts, transform = canonical_parts(raw_parts, options.up_axis, options.front_axis)
    except ValueError as exc:
        raise SemcorrError(f"--up-axis/--front-axis: {exc}") from None
    say("sampling the surface")
    surface = cand.sample_surface(parts, seed=options.seed)
    say("rendering views")
    with Renderer(options.size, options.size) as renderer:
        all_views = render_views(renderer, parts, orbit_cameras(options.size))
    six = [v for v in all_views if v.name in VIEW_NAMES]
    say("skeleton candidates")
    candidate_sets = [cand.skeleton_candidates(surface, options.max_candidates)]
    say("contour candidates")
    candidate_sets.append(cand.contour_candidates(all_views, surface, options.max_candidates))
    say("appearance candidates")
    candidate_sets.append(cand.appearance_candidates(all_views, surface, options.max_candidates))
    visibility = {c.scheme: visibility_matrix(six, c.xyz) for c in candidate_sets}
    say("scoring")
    automatic = scoring.automatic_scores(six, candidate_sets, visibility)
    table = automatic.add_prefix("auto_")
    agreement: dict[str, float] = {}
    used = automatic.copy()
    notes: list[str] = []
    if votes is not None:
        voted = scoring.aggregate_votes(votes, options.disagreement)
        table = table.join(voted.add_prefix("vote_"), how="left")
        for name in scoring.CRITERIA:
            used[name] = table[f"vote_{name}"].fillna(automatic[name])
        agreement = scoring.agreement(votes)
        have = table[[f"vote_{name}" for name in scoring.CRITERIA]].notna().sum(axis=1)
        table["source"] = np.where(have == len(scoring.CRITERIA), "votes",
                                   np.where(have > 0, "votes+automatic", "automatic"))
        unvoted = int((have == 0).sum())
        partial = int(((have > 0) & (have < len(scoring.CRITERIA))).sum())
        if unvoted or partial:
            notes.append(f"votes: {len(votes)} filled row(s) used; {unvoted} of {len(table)} (view, scheme) cells "
                         f"had no votes and {partial} had some criteria unvoted: the automatic scores stand in "
                         "for them")
    else:
        table["source"] = "automatic"
    decided = scoring.choose(used, options.threshold)
    table["auto_total"] = scoring.weighted_total(automatic)
    table["total"], table["chosen"] = decided["total"], decided["chosen"]

    xyz, sources = merge_chosen(candidate_sets, visibility, decided["chosen"], options.merge_distance)
    if len(xyz) == 0:
        raise SemcorrError(f"{mesh_path}: no (view, scheme) cell scored above {options.threshold}; no keypoints "
                           "chosen: lower --threshold or give votes")
    names = keypoint_names(xyz)
    symmetric = is_mirror_symmetric(surface.points, options.symmetry_tolerance)
    flips = flip_pairs(xyz, options.merge_distance) if symmetric else []
    version, mapping, note = _version(out_dir, category, xyz, names, options.merge_distance)
    mesh_xyz = trimesh.transform_points(xyz, np.linalg.inv(transform))
    mesh_ref = Path(mesh_path).expanduser().resolve()
    schema = KeypointSchema(
        category=category, names=names, xyz=mesh_xyz,
        descriptions=tuple(s["description"] for s in sources),
        skeleton=tuple(skeleton_edges(xyz)), flip_pairs=tuple(flips), version=version,
        up_axis=options.up_axis, front_axis=options.front_axis, mesh=mesh_ref,
        extra={"id_map": mapping} if mapping is not None else {},
        keypoint_extra=tuple({"scheme": s["scheme"], "schemes": s["schemes"], "views": s["views"],
                              "xyz_canonical": [round(float(v), 6) for v in p]} for s, p in zip(sources, xyz)),
    )
    say("writing")
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    if votes_bytes is not None:  # the human input, kept first and verbatim beside what it produced
        atomic.write_bytes(out_dir / VOTES_USED_FILE, votes_bytes)
        files.append(out_dir / VOTES_USED_FILE)
    written, sheet_notes = sheets.write_outputs(out_dir, schema, table, candidate_sets, visibility, six, version)
    files += written
    files.insert(0, _write_schema(out_dir, schema))
    return DesignResult(schema=schema, scores=table, agreement=agreement, candidates=candidate_sets,
                        version_note=note + ("" if symmetric else "; not mirror-symmetric: no flip pairs"),
                        files=files, notes=notes + sheet_notes)


def _write_schema(out_dir: Path, schema: KeypointSchema) -> Path:
    data = schema_to_json(schema, relative_to=out_dir)
    atomic.write_json(out_dir / f"schema_v{schema.version}.json", data, indent=2)
    atomic.write_json(out_dir / SCHEMA_FILE, data, indent=2)
    return out_dir / SCHEMA_FILE
