"""vote-keypoints designs schemas a dataset designer can sign off: a budget, a spacing, exact mirror
pairs, graded saliency, visible keypoints, names from the frame, axis help, and SPair's 30 keypoints."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import trimesh
from typer.testing import CliRunner

from semcorr import commands
from semcorr.cli import app
from semcorr.keypoint_design import scoring
from semcorr.keypoint_design.axes import geometry_only, suggest_axes, suggest_up
from semcorr.keypoint_design.design import DesignOptions, design_keypoints
from semcorr.keypoint_design.selection import Pool, Selection, name_keypoints, select_keypoints, select_spread
from semcorr.keypoint_design.views import VIEW_DIRECTIONS, VIEW_DISTANCE
from semcorr.keypoint_schema import load_schema
from semcorr.rendering import Part
from semcorr.synth.generate import SynthOptions
from semcorr.synth.prototypes import canonical_parts, load_mesh_parts
from tests.test_eval_inputs import assert_one_line_error
from tests.test_export_spair import test_every_pair_field_and_invariant as spair_loader_invariants

runner = CliRunner()
OPTIONS = DesignOptions(size=256)  # the defaults, on smaller views


# ---------------------------------------------------------------------------- procedural shapes


def table_mesh() -> trimesh.Trimesh:
    """A table: a 1.2 x 0.08 x 0.8 top on four legs at x = +-0.5, z = +-0.3 (mirror-symmetric in x)."""
    top = trimesh.creation.box((1.2, 0.08, 0.8), trimesh.transformations.translation_matrix((0, 0.75, 0)))
    legs = [trimesh.creation.box((0.08, 0.75, 0.08), trimesh.transformations.translation_matrix((x, 0.375, z)))
            for x in (-0.5, 0.5) for z in (-0.3, 0.3)]
    return trimesh.util.concatenate([top, *legs])


def mug_mesh() -> trimesh.Trimesh:
    """A mug: a hollow cylinder with a base and a handle at the back (-z), mirror-symmetric in x."""
    upright = trimesh.transformations.rotation_matrix(np.pi / 2, [1, 0, 0])
    wall = trimesh.creation.annulus(r_min=0.34, r_max=0.4, height=0.9, sections=48,
                                    transform=trimesh.transformations.translation_matrix((0, 0.45, 0)) @ upright)
    base = trimesh.creation.cylinder(radius=0.4, height=0.06, sections=48,
                                     transform=trimesh.transformations.translation_matrix((0, 0.03, 0)) @ upright)
    handle = trimesh.creation.torus(major_radius=0.22, minor_radius=0.05, major_sections=32, minor_sections=12)
    handle.apply_transform(trimesh.transformations.translation_matrix((0, 0.45, -0.4))
                           @ trimesh.transformations.rotation_matrix(np.pi / 2, [0, 1, 0]))
    return trimesh.util.concatenate([wall, base, handle])


def ray_hits_before(triangles: np.ndarray, origin: np.ndarray, target: np.ndarray, slack: float) -> bool:
    """Brute-force Moller-Trumbore: does the segment origin -> target hit a triangle more than `slack` before target?"""
    direction = target - origin
    length = float(np.linalg.norm(direction))
    direction = direction / length
    v0, e1, e2 = triangles[:, 0], triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0]
    p = np.cross(direction, e2)
    det = np.einsum("ij,ij->i", e1, p)
    ok = np.abs(det) > 1e-12
    inv = np.where(ok, 1.0 / np.where(ok, det, 1.0), 0.0)
    s = origin - v0
    u = np.einsum("ij,ij->i", s, p) * inv
    q = np.cross(s, e1)
    v = (q @ direction) * inv
    t = np.einsum("ij,ij->i", e2, q) * inv
    hit = ok & (u >= 0) & (v >= 0) & (u + v <= 1) & (t > 1e-9) & (t < length - slack)
    return bool(hit.any())


def seen_by_rays(triangles: np.ndarray, point: np.ndarray, nudge: float = 0.015) -> bool:
    """Some grading camera sees `point`, or a point within `nudge` of it along an axis (about a pixel:
    a keypoint in a crease between two pieces counts as seen), with nothing in front (brute-force rays)."""
    eyes = [VIEW_DISTANCE * np.array(direction) for direction, _ in VIEW_DIRECTIONS.values()]
    targets = [point] + [point + sign * nudge * np.eye(3)[axis] for axis in range(3) for sign in (-1, 1)]
    return any(not ray_hits_before(triangles, eye, target, 0.03) for eye in eyes for target in targets)


def assert_designer_checks(result, parts: list[Part], spacing: float) -> None:
    """8-30 keypoints, exact pairs for every off-plane keypoint of a symmetric object, the spacing,
    each keypoint seen from some grading camera (brute-force ray casting), each view contributing."""
    schema = result.schema
    xyz = np.array([extra["xyz_canonical"] for extra in schema.keypoint_extra])
    assert 8 <= len(xyz) <= 30, len(xyz)
    distance = np.linalg.norm(xyz[:, None] - xyz[None], axis=2) + np.eye(len(xyz)) * 9
    assert distance.min() >= spacing - 1e-6, distance.min()
    if "not mirror-symmetric" not in result.version_note:
        paired = {i for pair in schema.flip_pairs for i in pair}
        assert paired == {i for i in range(len(xyz)) if xyz[i, 0] != 0.0}  # every off-plane keypoint paired
        for left, right in schema.flip_pairs:
            assert xyz[left, 0] > 0 and np.allclose(xyz[left] * [-1, 1, 1], xyz[right], atol=2e-6)
    triangles = np.concatenate([np.asarray(p.mesh.triangles) for p in parts])
    for index, point in enumerate(xyz):
        assert seen_by_rays(triangles, point), schema.names[index]
    contributing = {view for extra in schema.keypoint_extra for view in extra["views"]}
    assert contributing == set(VIEW_DIRECTIONS)


# ---------------------------------------------------------------------------- selection by hand


def test_score_weighted_farthest_point_selection_by_hand():
    points = np.array([[0, 0, 0], [0.05, 0, 0], [0.5, 0, 0], [1.0, 0, 0]], dtype=float)
    score = np.array([1.0, 0.9, 0.5, 0.4])
    views = np.ones((4, 1), dtype=bool)
    # first the best score; then score x distance: p3 0.4 x 1.0 beats p2 0.5 x 0.5; p1 is within the spacing
    assert select_spread(points, score, views, np.ones(4), 10, 0.1, False) == [0, 3, 2]
    assert select_spread(points, score, views, np.ones(4), 2, 0.1, False) == [0, 3]
    # each view's best first: view 1 is proposed only by p2
    by_view = np.array([[True, False], [True, False], [False, True], [True, False]])
    assert select_spread(points, score, by_view, np.ones(4), 10, 0.1, False) == [0, 2, 3]


def test_symmetric_selection_mirrors_exactly_and_puts_near_plane_points_on_it():
    grid = np.stack(np.meshgrid(np.arange(-50, 51) / 100, np.arange(0, 101) / 100, indexing="ij"), -1).reshape(-1, 2)
    outer = np.c_[grid, np.zeros(len(grid))]  # a square in the plane z = 0
    pool = Pool(xyz=[[-0.3, 0.5, 0], [0.02, 0.9, 0], [0.31, 0.52, 0]], score=[1.0, 0.8, 0.7],
                views=np.ones((3, 1), dtype=bool), scheme=("contour",) * 3, kind=("corner",) * 3)

    def everything(points):
        return np.ones(len(points), dtype=bool)

    chosen = select_keypoints(pool, outer, budget=30, spacing=0.1, symmetric=True, seen=everything)
    # the right-side candidate folds to (0.3, 0.5) and pairs with its exact mirror; the near-plane one lands
    # on the plane; the third folds within the spacing of the first and is left out
    assert np.allclose(chosen.xyz, [[0.3, 0.5, 0], [-0.3, 0.5, 0], [0.0, 0.9, 0]])
    assert chosen.pairs == ((0, 1),) and chosen.side == ("left", "right", "plane")
    assert chosen.source.tolist() == [0, 0, 1]
    only_two = select_keypoints(pool, outer, budget=2, spacing=0.1, symmetric=True, seen=everything)
    assert len(only_two.xyz) == 2 and only_two.pairs == ((0, 1),)
    only_one = select_keypoints(pool, outer, budget=1, spacing=0.1, symmetric=True, seen=everything)
    assert np.allclose(only_one.xyz, [[0.0, 0.9, 0]])  # a pair costs two
    unseen_mirror = select_keypoints(pool, outer, budget=30, spacing=0.1, symmetric=True,
                                     seen=lambda points: points[:, 0] >= 0)
    assert np.allclose(unseen_mirror.xyz, [[0.0, 0.9, 0]])  # no pair whose right partner nobody sees


def test_names_come_from_the_frame_and_descriptions_read():
    selection = Selection(xyz=np.array([[0.4, 0.9, 0.4], [-0.4, 0.9, 0.4], [0.0, 0.1, 0.0], [0.3, 0.9, 0.45],
                                        [-0.3, 0.9, 0.45]]),
                          source=np.zeros(5, dtype=int), side=("left", "right", "plane", "left", "right"),
                          pairs=((0, 1), (3, 4)), views=np.ones((5, 6), dtype=bool))
    names, texts = name_keypoints(selection, ["corner", "corner", "tip", "corner", "corner"],
                                  np.array([-0.5, 0.0, -0.5]), np.array([0.5, 1.0, 0.5]))
    assert names == ("left_top_front_corner", "right_top_front_corner", "bottom_tip", "left_top_front_corner_2",
                     "right_top_front_corner_2")
    assert texts[0] == ("Corner of the outline at the top front of the object, on its left side "
                        "(mirror image of right_top_front_corner).")
    assert texts[2] == "Tip of a part at the bottom of the object, on its mirror plane."


def test_saliency_is_a_rank_that_grades_a_flat_view():
    mask = np.zeros((40, 40), dtype=bool)
    mask[10:30, 10:30] = True
    response = np.zeros((40, 40))
    response[20, 20] = 1.0  # one corner on an otherwise flat face
    view = SimpleNamespace(mask=mask, corner_response=response)
    ranks = scoring.corner_rank_map(view)
    # by hand: the mask dilated twice (cross) has 24 x 24 - 4 x 3 = 564 pixels; 25 of them (the 5 x 5
    # window around the corner) hold the maximum 1, the other 539 hold 0; mid-ranks (below + through) / 2n
    assert ranks[20, 20] == pytest.approx((539 + 564) / (2 * 564))
    assert ranks[12, 12] == pytest.approx(539 / (2 * 564))  # a flat point grades about 0.48, not 0
    # the old 95th-percentile normalisation divided by 0 here and scored the whole view 0


# ---------------------------------------------------------------------------- axes


def rotated_parts(mesh: trimesh.Trimesh, matrix: np.ndarray) -> list[Part]:
    return [Part(mesh.copy().apply_transform(matrix), (0.7, 0.7, 0.7, 1.0))]


def test_axes_suggested_for_a_mug_stored_z_up():
    # canonical (+y up, +z front) -> file frame: y -> +z, z -> -y (a quarter turn about x)
    to_file = trimesh.transformations.rotation_matrix(np.pi / 2, [1, 0, 0])
    up, front, reason = suggest_axes(rotated_parts(mug_mesh(), to_file))
    assert up == "+z"  # base and rim span the same disk; the base keeps the centroid lower
    assert front[1] == "y" and "mirror plane across x" in reason  # the handle is on the y axis


def test_up_is_the_wide_base_of_a_truncated_cone():
    cone = trimesh.creation.cone(radius=0.5, height=1.0, sections=32)  # base at z = 0, tip at z = 1
    assert suggest_up(cone)[0] == "+z"
    flipped = cone.copy().apply_transform(trimesh.transformations.rotation_matrix(np.pi, [1, 0, 0]))
    assert suggest_up(flipped)[0] == "-z"
    assert suggest_up(geometry_only([Part(cone, (1, 1, 1, 1))]), front_axis="+z")[0] != "+z"  # never parallel


# ---------------------------------------------------------------------------- whole designs


@pytest.fixture(scope="module")
def mug_design(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mug")
    mug_mesh().export(root / "mug.ply")
    result = design_keypoints(root / "mug.ply", "mug", root / "design", options=OPTIONS)
    return root, result


@pytest.mark.parametrize("shape", ["table", "mug"])
def test_procedural_shapes_pass_the_designer_checks(shape, mug_design, tmp_path):
    if shape == "mug":
        root, result = mug_design
        mesh_path = root / "mug.ply"
    else:
        mesh_path = tmp_path / "table.ply"
        table_mesh().export(mesh_path)
        result = design_keypoints(mesh_path, "table", tmp_path / "design", options=OPTIONS)
    assert "not mirror-symmetric" not in result.version_note
    parts, _ = canonical_parts(load_mesh_parts(mesh_path))
    assert_designer_checks(result, parts, OPTIONS.min_spacing)
    for name, text in zip(result.schema.names, result.schema.descriptions):
        assert not name.startswith("kp") and text.endswith(".") and " at the upper" not in text


def test_mug_schema_goes_through_synth_and_export_spair(mug_design, tmp_path):
    root, _ = mug_design
    schema_path = root / "design" / "schema.json"
    data = json.loads(schema_path.read_text())
    assert data["mesh_relative"] == "../mug.ply"  # relative to the schema file
    store_dir = tmp_path / "dataset"
    commands.run_synth(store_dir, commands.resolve_prototypes([], [schema_path], []),
                       SynthOptions(images_per_category=20, width=200, height=150, seed=7))
    commands.run_split(store_dir, (0.5, 0.2, 0.3), seed=0)
    commands.run_build_pairs(store_dir)
    exported = tmp_path / "spair"
    result = runner.invoke(app, ["export", "spair", str(store_dir), str(exported)])
    assert result.exit_code == 0, result.output
    assert "warning" not in result.output
    spair_loader_invariants(exported, store_dir)  # the SPair loader invariants test, unchanged


def pad_to(store_dir: Path, count: int) -> str:
    """Give the store's category `count` keypoints (extra ones never labelled); returns its name."""
    path = store_dir / "annotations.json"
    coco = json.loads(path.read_text())
    category = coco["categories"][0]
    extra = count - len(category["keypoints"])
    for key in ("keypoints", "keypoint_descriptions"):
        if isinstance(category.get(key), list):
            category[key] = category[key] + [f"unused_{i}" for i in range(extra)]
    for annotation in coco["annotations"]:
        annotation["keypoints"] = annotation["keypoints"] + [0, 0, 0] * extra
    path.write_text(json.dumps(coco))
    return category["name"]


def test_export_spair_refuses_over_30_keypoints_unless_allowed(mug_design, tmp_path):
    root, _ = mug_design
    store_dir = tmp_path / "dataset"
    commands.run_synth(store_dir, commands.resolve_prototypes([], [root / "design" / "schema.json"], []),
                       SynthOptions(images_per_category=10, width=120, height=90, seed=3))
    commands.run_split(store_dir, (0.5, 0.2, 0.3), seed=0)
    commands.run_build_pairs(store_dir)
    name = pad_to(store_dir, 31)
    out = tmp_path / "spair"
    refused = runner.invoke(app, ["export", "spair", str(store_dir), str(out)])
    line = assert_one_line_error(refused, f"category {name!r} has 31 keypoints")
    assert "--allow-over-30" in line and not out.exists()
    allowed = runner.invoke(app, ["export", "spair", str(store_dir), str(out), "--allow-over-30"])
    assert allowed.exit_code == 0, allowed.output
    assert "warning: category 'mug' has 31 keypoints: common SPair loaders keep only the first 30" in " ".join(
        allowed.output.split())
    assert out.is_dir()


def test_auto_axes_write_a_preview_and_hint_at_a_wrong_up_axis(tmp_path):
    to_file = trimesh.transformations.rotation_matrix(np.pi / 2, [1, 0, 0])
    mug_mesh().apply_transform(to_file).export(tmp_path / "mug_z_up.ply")
    result = runner.invoke(app, ["vote-keypoints", str(tmp_path / "mug_z_up.ply"), "--category", "mug",
                                 "--up-axis", "auto", "--out", str(tmp_path / "T"), "--size", "128"])
    assert result.exit_code == 0, result.output
    assert "axes suggested: up +z, front +y" in " ".join(result.output.split())
    schema = load_schema(tmp_path / "T" / "schema.json")
    assert (schema.up_axis, schema.front_axis) == ("+z", "+y") and (tmp_path / "T" / "axes.png").is_file()
    hinted = runner.invoke(app, ["vote-keypoints", str(tmp_path / "mug_z_up.ply"), "--category", "mug",
                                 "--front-axis", "+x", "--out", str(tmp_path / "H"), "--size", "128"])
    assert hinted.exit_code == 0 and "largest footprint with +z up, not +y" in " ".join(hinted.output.split())
    shutil.rmtree(tmp_path / "T")


def test_multi_part_mesh_has_no_buried_candidates(tmp_path):
    """An animal of overlapping pieces: legs and neck reach into the body, a block sits inside it."""
    def box(extents, centre):
        return trimesh.creation.box(extents, trimesh.transformations.translation_matrix(centre))

    pieces = [box((1.0, 0.4, 0.5), (0, 0.6, 0)), box((0.3, 0.2, 0.2), (0.1, 0.6, 0))]  # body, a buried block
    pieces += [box((0.1, 0.6, 0.1), (x, 0.3, z)) for x in (-0.35, 0.35) for z in (-0.15, 0.15)]  # legs
    pieces += [box((0.12, 0.5, 0.12), (0.45, 0.85, 0)), box((0.3, 0.15, 0.2), (0.55, 1.1, 0))]  # neck, head
    path = tmp_path / "animal.ply"
    trimesh.util.concatenate(pieces).export(path)
    result = design_keypoints(path, "animal", tmp_path / "design", options=DesignOptions(size=128))
    assert not any("seen from no view" in note for note in result.notes), result.notes
    parts, _ = canonical_parts(load_mesh_parts(path))
    triangles = np.concatenate([np.asarray(p.mesh.triangles) for p in parts])
    skeleton = next(c for c in result.candidates if c.scheme == "skeleton")
    assert len(skeleton.xyz) >= 6  # four feet, the head, joints
    for point in skeleton.xyz:
        assert seen_by_rays(triangles, point), point
