"""vote-keypoints: from a prototype mesh to a versioned keypoint schema a designer can sign off.

Steps: load the mesh (suggesting axes when asked) and normalise it; render the views; propose
candidates with the three schemes on the outer surface (what some view sees) and drop those no
grading view sees; score every (view, scheme) cell from votes or automatic proxies; per view keep
the schemes scoring above the threshold; select at most `max_keypoints` of their candidates, no
two closer than `min_spacing`, spread over the object and designed on one half of a
mirror-symmetric object (selection.py); name them from the frame, wire skeleton edges; version
the result against the schema already in the output folder.
"""

from __future__ import annotations

import dataclasses
import math
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
from semcorr.keypoint_design import selection as sel
from semcorr.keypoint_design.axes import axes_preview, geometry_only, suggest_axes, suggest_up
from semcorr.keypoint_design.views import VIEW_NAMES, orbit_cameras, render_views, visibility_matrix
from semcorr.keypoint_schema import KeypointSchema, load_schema, parse_axes, parse_axis, schema_to_json
from semcorr.paths import refuse_file_target
from semcorr.rendering import Renderer
from semcorr.synth.prototypes import canonical_parts, load_mesh_parts

SCHEMA_FILE = "schema.json"
VOTES_USED_FILE = "votes_used.csv"
AXES_PREVIEW_FILE = "axes.png"
AUTO = "auto"
OUTER_SAMPLE = 4000  # surface points tested for visibility (outer surface, coverage)


@dataclass(frozen=True)
class DesignOptions:
    """Options of vote-keypoints (canonical units: the prototype's longest side is 1).

    `up_axis` / `front_axis` may be "auto": suggested from the mesh (axes.py)."""

    up_axis: str = "+y"
    front_axis: str = "+z"
    size: int = 512
    max_candidates: int = 24
    threshold: float = 0.5
    max_keypoints: int = 30
    min_spacing: float = 0.1
    coverage_radius: float = 0.1
    disagreement: float = 0.25
    symmetry_tolerance: float = 0.02
    seed: int = 0


@dataclass
class DesignResult:
    """What vote-keypoints decided and wrote.

    Attributes:
        coverage: per view, the share of the surface seen there within `coverage_radius` of a keypoint.
        saliency: p10 / median / p90 of the automatic saliency of every visible candidate.
        annotators: distinct annotators in the votes (0 without votes).
    """

    schema: KeypointSchema
    scores: pd.DataFrame
    agreement: dict[str, float]
    candidates: list[cand.Candidates]
    version_note: str
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    coverage: dict[str, float] = field(default_factory=dict)
    saliency: dict[str, float] = field(default_factory=dict)
    annotators: int = 0


def checked_options(options: DesignOptions) -> DesignOptions:
    """`options` with the axes normalised (x, y, z with an optional sign, any case, or "auto"); SemcorrError
    with one line naming the option when an axis is unknown, the axes are parallel or a number is out of range."""
    up_auto = str(options.up_axis).strip().lower() == AUTO
    front_auto = str(options.front_axis).strip().lower() == AUTO
    if up_auto or front_auto:
        up = AUTO if up_auto else parse_axis(options.up_axis, "--up-axis")
        front = AUTO if front_auto else parse_axis(options.front_axis, "--front-axis")
    else:
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
    number("--min-spacing", options.min_spacing, 0.0, 1.0, low_open=True)
    number("--max-keypoints", options.max_keypoints, 1, 1000, whole=True)
    number("coverage_radius", options.coverage_radius, 0.0, 2.0, low_open=True)
    number("disagreement", options.disagreement, 0.0, 1.0)
    number("symmetry_tolerance", options.symmetry_tolerance, 0.0, 1.0)
    number("--size", options.size, 64, 4096, whole=True)
    number("--max-candidates", options.max_candidates, 1, 10000, whole=True)
    number("--seed", options.seed, 0, 2**32 - 1, whole=True)
    return dataclasses.replace(options, up_axis=up, front_axis=front)


def candidate_pool(candidate_sets: list[cand.Candidates], visibility: dict[str, np.ndarray], decided: pd.DataFrame
                   ) -> sel.Pool:
    """The candidates of the chosen (view, scheme) cells that are visible in that view.

    A candidate's score is the best total of the chosen cells proposing it, times
    (0.5 + 0.5 x its strength relative to its scheme's strongest), so within a cell the
    scheme's own ranking decides.

    Args:
        candidate_sets: one per scheme.
        visibility: scheme -> (6, N) bool, views in VIEW_NAMES order.
        decided: `total` and `chosen` per (view, scheme).
    """
    xyz, score, views, schemes, kinds = [], [], [], [], []
    for cands in candidate_sets:
        chosen = np.array([bool(decided["chosen"].get((view, cands.scheme), False)) for view in VIEW_NAMES])
        totals = np.array([float(decided["total"].get((view, cands.scheme), 0.0)) for view in VIEW_NAMES])
        strongest = max(float(cands.strength.max()), 1e-12) if len(cands.strength) else 1.0
        for index in range(len(cands.xyz)):
            proposing = chosen & visibility[cands.scheme][:, index]
            if proposing.any():
                xyz.append(cands.xyz[index])
                score.append(totals[proposing].max() * (0.5 + 0.5 * cands.strength[index] / strongest))
                views.append(proposing)
                schemes.append(cands.scheme)
                kinds.append(cands.kinds[index])
    return sel.Pool(np.array(xyz).reshape(-1, 3), np.array(score), np.array(views).reshape(-1, len(VIEW_NAMES)),
                    tuple(schemes), tuple(kinds))


def is_mirror_symmetric(surface_points: np.ndarray, tolerance: float) -> bool:
    """True when the surface mirrored in x (the left/right plane) lies on itself within `tolerance`."""
    step = max(1, len(surface_points) // 4000)
    mirrored = surface_points[::step] * np.array([-1.0, 1.0, 1.0])
    distance, _ = cKDTree(surface_points).query(mirrored)
    return float(np.mean(distance)) <= tolerance


def skeleton_edges(xyz: np.ndarray) -> list[tuple[int, int]]:
    """Edges of the Euclidean minimum spanning tree over the keypoints (sorted index pairs)."""
    if len(xyz) < 2:
        return []
    tree = minimum_spanning_tree(squareform(pdist(xyz))).tocoo()
    return sorted((int(min(a, b)), int(max(a, b))) for a, b in zip(tree.row, tree.col))


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


def _version(out_dir: Path, category: str, canonical: np.ndarray, names: tuple[str, ...], max_distance: float
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
    return version, id_map(old, canonical, max_distance), f"changed: version {previous.version} -> {version}"


def resolve_axes(mesh_path: Path, raw_parts: list, options: DesignOptions) -> tuple[DesignOptions, list[str]]:
    """`options` with "auto" axes replaced by the suggestion (axes.py), and notes for the user: the
    suggestion with its reason, or a hint when the given up axis is not the one the mesh rests on."""
    gltf = Path(mesh_path).suffix.lower() in (".glb", ".gltf")
    if AUTO not in (options.up_axis, options.front_axis):
        suggested_up = "+y" if gltf else suggest_up(geometry_only(raw_parts), options.front_axis)[0]
        if suggested_up != options.up_axis and suggested_up[1] != options.front_axis[1]:
            hint = (f"axes: the mesh stands on its largest footprint with {suggested_up} up, not "
                    f"{options.up_axis}; check {AXES_PREVIEW_FILE}, and pass --up-axis {suggested_up} or "
                    "--up-axis auto if it is upside down or on its side")
            return options, [hint]
        return options, []
    up, front, reason = suggest_axes(raw_parts, None if options.up_axis == AUTO else options.up_axis,
                                     front_axis=None if options.front_axis == AUTO else options.front_axis,
                                     seed=options.seed, gltf=gltf)
    return (dataclasses.replace(options, up_axis=up, front_axis=front),
            [f"axes suggested: up {up}, front {front} ({reason}); check {AXES_PREVIEW_FILE}"])


def score_cells(six: list, candidate_sets: list[cand.Candidates], visibility: dict[str, np.ndarray],
                votes: pd.DataFrame | None, options: DesignOptions
                ) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, float], np.ndarray, list[str]]:
    """(score table for scores.csv, decided totals and choices, agreement, pooled automatic saliency, notes)."""
    automatic, saliency = scoring.automatic_scores(six, candidate_sets, visibility)
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
    voted_views = set(table.index[table["source"] != "automatic"].get_level_values("view"))
    decided, stand_ins = scoring.best_stands_in(decided, [v for v in VIEW_NAMES if v not in voted_views])
    if stand_ins:
        notes.append("no scheme above --threshold in view(s) " + ", ".join(f"{v} (best: {s} {t:.2f})"
                     for v, s, t in stand_ins) + " on automatic scores: the best scheme there stands in, so every "
                     "view contributes")
    table["auto_total"] = scoring.weighted_total(automatic)
    table["total"], table["chosen"] = decided["total"], decided["chosen"]
    return table, decided, agreement, saliency, notes


def _drop_unseen(six: list, candidate_sets: list[cand.Candidates]
                 ) -> tuple[list[cand.Candidates], dict[str, np.ndarray], dict[str, int]]:
    """(candidates seen in some grading view, their (6, N) visibility per scheme, dropped count per scheme)."""
    everything = np.concatenate([c.xyz for c in candidate_sets])
    seen_all = visibility_matrix(six, everything)
    kept, visibility, hidden = [], {}, {}
    start = 0
    for cands in candidate_sets:
        seen = seen_all[:, start: start + len(cands.xyz)]
        start += len(cands.xyz)
        keep = seen.any(axis=0)
        hidden[cands.scheme] = int((~keep).sum())
        kept.append(cands.subset(keep))
        visibility[cands.scheme] = seen[:, keep]
    return kept, visibility, hidden


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
    options, notes = resolve_axes(mesh_path, raw_parts, options)
    parts, transform = canonical_parts(raw_parts, options.up_axis, options.front_axis)
    say("sampling the surface")
    surface = cand.sample_surface(parts, seed=options.seed)
    say("rendering views")
    with Renderer(options.size, options.size) as renderer:
        all_views = render_views(renderer, parts, orbit_cameras(options.size))
    six = [v for v in all_views if v.name in VIEW_NAMES]
    sample = surface.points[:: max(1, len(surface.points) // OUTER_SAMPLE)]
    surface_seen = visibility_matrix(all_views, sample)  # the outer surface: what some view sees
    outer_points = sample[surface_seen.any(axis=0)]
    outer = cand.Surface(outer_points, cKDTree(outer_points))
    say("skeleton candidates")
    candidate_sets = [cand.skeleton_candidates(surface, options.max_candidates, snap_to=outer)]
    say("contour candidates")
    candidate_sets.append(cand.contour_candidates(all_views, surface, options.max_candidates))
    say("appearance candidates")
    candidate_sets.append(cand.appearance_candidates(all_views, surface, options.max_candidates))
    candidate_sets, visibility, hidden = _drop_unseen(six, candidate_sets)
    if any(hidden.values()):
        notes.append("candidates seen from no view, dropped: " + ", ".join(f"{k} {v}" for k, v in hidden.items()))
    say("scoring")
    table, decided, agreement, saliency, vote_notes = score_cells(six, candidate_sets, visibility, votes, options)
    notes += vote_notes

    pool = candidate_pool(candidate_sets, visibility, decided)
    symmetric = is_mirror_symmetric(surface.points, options.symmetry_tolerance)
    chosen = sel.select_keypoints(pool, outer_points, options.max_keypoints, options.min_spacing, symmetric,
                                  seen=lambda points: visibility_matrix(six, points).any(axis=0))
    xyz = chosen.xyz
    if len(xyz) == 0:
        raise SemcorrError(f"{mesh_path}: no (view, scheme) cell scored above {options.threshold}; no keypoints "
                           "chosen: lower --threshold or give votes")
    low, high = surface.points.min(axis=0), surface.points.max(axis=0)
    names, descriptions = sel.name_keypoints(chosen, [pool.kind[i] for i in chosen.source], low, high)
    seen_in = visibility_matrix(six, xyz)
    coverage = sel.coverage(sample, surface_seen[:len(six)], xyz, options.coverage_radius)
    version, mapping, note = _version(out_dir, category, xyz, names, options.min_spacing)
    schema = KeypointSchema(
        category=category, names=names, xyz=trimesh.transform_points(xyz, np.linalg.inv(transform)),
        descriptions=descriptions, skeleton=tuple(skeleton_edges(xyz)), flip_pairs=chosen.pairs, version=version,
        up_axis=options.up_axis, front_axis=options.front_axis, mesh=Path(mesh_path).expanduser().resolve(),
        extra={"id_map": mapping} if mapping is not None else {},
        keypoint_extra=tuple({"scheme": pool.scheme[source],
                              "views": [v for v, on in zip(VIEW_NAMES, chosen.views[k]) if on],
                              "visible_in": [v for v, on in zip(VIEW_NAMES, seen_in[:, k]) if on],
                              "xyz_canonical": [round(float(v), 6) for v in xyz[k]]}
                             for k, source in enumerate(chosen.source)),
    )
    say("writing")
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    if votes_bytes is not None:  # the human input, kept first and verbatim beside what it produced
        atomic.write_bytes(out_dir / VOTES_USED_FILE, votes_bytes)
        files.append(out_dir / VOTES_USED_FILE)
    written, sheet_notes = sheets.write_outputs(out_dir, schema, table, candidate_sets, visibility, six, version)
    atomic.write_bytes(out_dir / AXES_PREVIEW_FILE, axes_preview(six, options.up_axis, options.front_axis))
    files += [*written, out_dir / AXES_PREVIEW_FILE]
    files.insert(0, _write_schema(out_dir, schema))
    return DesignResult(schema=schema, scores=table, agreement=agreement, candidates=candidate_sets,
                        version_note=note + ("" if symmetric else "; not mirror-symmetric: no flip pairs"),
                        files=files, notes=notes + sheet_notes,
                        coverage=dict(zip(VIEW_NAMES, (float(c) for c in coverage))),
                        saliency=dict(zip(("p10", "median", "p90"), np.quantile(saliency, [0.1, 0.5, 0.9]).tolist()))
                        if len(saliency) else {},
                        annotators=int(votes["annotator"].nunique()) if votes is not None else 0)


def _write_schema(out_dir: Path, schema: KeypointSchema) -> Path:
    data = schema_to_json(schema, relative_to=out_dir)
    atomic.write_json(out_dir / f"schema_v{schema.version}.json", data, indent=2)
    atomic.write_json(out_dir / SCHEMA_FILE, data, indent=2)
    return out_dir / SCHEMA_FILE
