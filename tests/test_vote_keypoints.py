"""vote-keypoints: candidates on known geometry, vote arithmetic, merging, flips, versions, bad input."""

import itertools
import json

import numpy as np
import pandas as pd
import pytest
import trimesh
from typer.testing import CliRunner

from semcorr import commands
from semcorr.cli import app
from semcorr.errors import SemcorrError
from semcorr.keypoint_design import scoring
from semcorr.keypoint_design.candidates import (
    appearance_candidates,
    contour_candidates,
    merge_close,
    sample_surface,
    skeleton_candidates,
)
from semcorr.keypoint_design.design import DesignOptions, design_keypoints, id_map, is_mirror_symmetric
from semcorr.keypoint_design.views import orbit_cameras, render_views
from semcorr.keypoint_schema import load_schema
from semcorr.rendering import Part, Renderer
from semcorr.synth.generate import SynthOptions
from semcorr.synth.prototypes import builtin_prototype, canonical_parts, load_mesh_parts
from tests.conftest import shared_data
from tests.test_vote_design import assert_designer_checks

runner = CliRunner()
FAST = DesignOptions(size=256)


def candidates_of(meshes):
    parts, _ = canonical_parts([Part(m, (0.6, 0.6, 0.6, 1.0)) for m in meshes])
    surface = sample_surface(parts)
    with Renderer(256, 256) as renderer:
        views = render_views(renderer, parts, orbit_cameras(256))
    return skeleton_candidates(surface), contour_candidates(views, surface), appearance_candidates(views, surface)


def nearest(targets, points):
    return np.linalg.norm(np.asarray(targets)[:, None] - points[None], axis=2).min(axis=1)


def test_box_corners_are_appearance_and_contour_candidates():
    _, contour, appearance = candidates_of([trimesh.creation.box((1.0, 0.6, 0.8))])
    corners = np.array(list(itertools.product([-0.5, 0.5], [-0.3, 0.3], [-0.4, 0.4])))
    assert nearest(corners, appearance.xyz).max() < 0.03
    assert nearest(corners, contour.xyz).max() < 0.03


def test_jack_limb_ends_are_skeleton_ends_and_silhouette_extremes():
    arms = [trimesh.creation.box(e) for e in ((1, 0.1, 0.1), (0.1, 1, 0.1), (0.1, 0.1, 1))]
    skeleton, contour, _ = candidates_of(arms)
    tips = np.array([[0.5, 0, 0], [-0.5, 0, 0], [0, 0.5, 0], [0, -0.5, 0], [0, 0, 0.5], [0, 0, -0.5]])
    ends = skeleton.xyz[[k == "tip" for k in skeleton.kinds]]
    assert len(ends) == 6
    assert nearest(tips, ends).max() < 0.12  # within a limb's thickness of each tip
    assert nearest(tips, contour.xyz).max() < 0.08  # the tip face's corners
    junctions = skeleton.xyz[[k == "joint" for k in skeleton.kinds]]
    assert len(junctions) >= 1 and np.linalg.norm(junctions, axis=1).min() < 0.1


def write_votes(path, rows):
    pd.DataFrame(rows, columns=list(scoring.VOTE_COLUMNS)).to_csv(path, index=False)
    return path


def test_votes_are_averaged_weighted_and_thresholded(tmp_path):
    path = write_votes(tmp_path / "votes.csv", [
        ("ann1", "front", "contour", 0.8, 0.6, 0.2), ("ann2", "front", "contour", 0.6, 0.4, 0.2),  # 0.7 .5 .2 -> 0.54
        ("ann1", "front", "skeleton", 0.5, 0.5, 0.5), ("ann2", "front", "skeleton", 0.5, 0.5, 0.5),  # exactly 0.5
        ("ann1", "back", "appearance", 0.6, 0.4, 0.3),  # 0.3 + 0.12 + 0.06 = 0.48
    ])
    table = scoring.aggregate_votes(scoring.load_votes(path))
    assert table.loc[("front", "contour"), ["saliency", "completeness", "uniformity"]].tolist() == pytest.approx(
        [0.7, 0.5, 0.2])
    assert table.loc[("front", "contour"), "votes"] == 2
    decided = scoring.choose(table[list(scoring.CRITERIA)], threshold=0.5)
    assert decided["total"].to_dict() == pytest.approx(
        {("back", "appearance"): 0.48, ("front", "contour"): 0.54, ("front", "skeleton"): 0.5})
    assert decided["chosen"].to_dict() == {("back", "appearance"): False, ("front", "contour"): True,
                                           ("front", "skeleton"): False}  # 0.5 is not above 0.5
    assert scoring.choose(table[list(scoring.CRITERIA)], threshold=0.45)["chosen"].all()


def test_disagreement_flag_and_krippendorff_alpha(tmp_path):
    # hand-computed: values {1,1,2,2,3,4}; D_o = 2/6, D_e = 82/30, alpha = 1 - 10/82
    assert scoring.krippendorff_alpha_interval([[1, 1], [2, 2], [3, 4]]) == pytest.approx(1 - 10 / 82)
    assert scoring.krippendorff_alpha_interval([[0.2, 0.2], [0.9, 0.9]]) == pytest.approx(1.0)
    path = write_votes(tmp_path / "votes.csv", [
        ("a", "left", "skeleton", 0.1, 0.5, 0.5), ("b", "left", "skeleton", 0.9, 0.5, 0.5),
        ("a", "right", "skeleton", 0.5, 0.5, 0.5), ("b", "right", "skeleton", 0.6, 0.5, 0.5),
    ])
    votes = scoring.load_votes(path)
    table = scoring.aggregate_votes(votes, disagreement=0.25)
    assert table["disagree"].to_dict() == {("left", "skeleton"): True, ("right", "skeleton"): False}
    alpha = scoring.agreement(votes)
    assert alpha["saliency"] < 0 and np.isnan(alpha["completeness"])  # no variation at all: undefined


def test_merge_close_and_id_map():
    points = np.array([[0, 0, 0], [0.03, 0, 0], [0.2, 0, 0], [0.06, 0, 0]], dtype=float)
    kept, groups = merge_close(points, radius=0.05)
    assert kept.tolist() == [0, 2, 3] and groups == [[0, 1], [2], [3]]
    assert merge_close(points, radius=0.07)[0].tolist() == [0, 2]
    old = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], dtype=float)
    new = np.array([[0, 1.01, 0], [0.02, 0, 0]], dtype=float)
    assert id_map(old, new, max_distance=0.05) == {"0": 1, "1": None, "2": 0}


def test_mirror_symmetry_of_a_symmetric_and_a_lopsided_mesh():
    chair = builtin_prototype("chair")
    surface = sample_surface(chair.parts)
    assert is_mirror_symmetric(surface.points, 0.02)
    lopsided, _ = canonical_parts(chair.parts + [Part(trimesh.creation.icosphere(radius=0.2).apply_translation(
        (0.5, 0.9, 0.3)), (1, 0, 0, 1))])
    assert not is_mirror_symmetric(sample_surface(lopsided).points, 0.02)


def export_builtin(name, path):
    trimesh.util.concatenate([p.mesh for p in builtin_prototype(name).parts]).export(path)
    return path


def test_design_on_symmetric_mesh_then_versions(tmp_path):
    mesh = export_builtin("chair", tmp_path / "chair.ply")
    out = tmp_path / "design"
    first = design_keypoints(mesh, "chair", out, options=FAST)
    schema = first.schema
    assert 8 <= len(schema.names) <= 30 and schema.version == 1
    canonical = np.array([e["xyz_canonical"] for e in schema.keypoint_extra])
    assert schema.flip_pairs
    for left, right in schema.flip_pairs:
        assert canonical[left, 0] > 0 > canonical[right, 0]
        assert np.allclose(canonical[left] * [-1, 1, 1], canonical[right])  # exact mirror images
        assert schema.names[left].startswith("left_") and schema.names[right] == "right_" + schema.names[left][5:]
    files = {p.name for p in out.iterdir()}
    assert {"schema.json", "schema_v1.json", "voting_sheet.csv", "scores.csv", "candidates.csv"} <= files
    assert {f"contact_{v}.png" for v in ("upper", "below", "left", "right", "front", "back")} <= files
    scores = pd.read_csv(out / "scores.csv")
    assert len(scores) == 6 * 3 * 5 and set(scores["criterion"]) == {"saliency", "completeness", "uniformity",
                                                                      "total", "chosen"}
    # same mesh again: unchanged, same version
    again = design_keypoints(mesh, "chair", out, options=FAST)
    assert again.schema.version == 1 and "unchanged" in again.version_note
    # a changed mesh: version 2 with a map from old ids to new
    bigger = trimesh.util.concatenate([trimesh.load(mesh), trimesh.creation.box((0.2, 0.3, 0.2)).apply_translation(
        (0, 1.1, -0.2))])
    bigger.export(tmp_path / "chair2.ply")
    second = design_keypoints(tmp_path / "chair2.ply", "chair", out, options=FAST)
    assert second.schema.version == 2
    saved = json.loads((out / "schema.json").read_text())
    assert saved["version"] == 2 and set(saved["id_map"]) == {str(i) for i in range(len(schema.names))}
    assert (out / "schema_v1.json").exists() and (out / "schema_v2.json").exists()


def test_design_with_votes_uses_them(tmp_path):
    mesh = export_builtin("car", tmp_path / "car.ply")
    rows = [(a, v, s, 0.9, 0.9, 0.9) if s == "contour" else (a, v, s, 0.1, 0.1, 0.1)
            for a in ("ann1", "ann2") for v in ("upper", "below", "left", "right", "front", "back")
            for s in ("skeleton", "contour", "appearance")]
    result = design_keypoints(mesh, "car", tmp_path / "out", votes_path=write_votes(tmp_path / "v.csv", rows),
                              options=FAST)
    chosen = result.scores[result.scores["chosen"]]
    assert set(chosen.index.get_level_values("scheme")) == {"contour"}
    assert {e["scheme"] for e in result.schema.keypoint_extra} == {"contour"}
    assert (result.scores["source"] == "votes").all()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", r"empty.obj: (holds no triangle mesh|trimesh cannot read it)"),
        (b"v 0 0 0\nv 1 0 0\nv 0 1 0\n", r"empty.obj: holds no triangle mesh"),
        (b"v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n", r"empty.obj: the mesh is degenerate"),
        (b"v 0 0 0\nv 1 0 0\nv 0 1 0\nv 1 1 0\nv 2 0 0\nf 1 2 3\nf 2 4 3\nf 2 5 4\nf 1 3 5\n",
         r"empty.obj: the mesh is degenerate \(flat"),
    ],
)
def test_bad_meshes_are_one_clear_line(tmp_path, content, message):
    (tmp_path / "empty.obj").write_bytes(content)
    result = runner.invoke(app, ["vote-keypoints", str(tmp_path / "empty.obj"), "--category", "x",
                                 "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    import re

    assert re.search(message, lines[0]), lines[0]
    assert not (tmp_path / "out").exists()


def test_unreadable_binary_mesh(tmp_path):
    (tmp_path / "junk.glb").write_bytes(b"\x00\x01 not a gltf at all")
    with pytest.raises(SemcorrError, match=r"junk.glb: trimesh cannot read it"):
        design_keypoints(tmp_path / "junk.glb", "x", tmp_path / "out", options=FAST)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("header", "row", "message"),
    [
        ("annotator,view,scheme,saliency,completeness,uniformity", "a,top,contour,0.5,0.5,0.5",
         r"votes.csv: row 2: unknown view 'top'"),
        ("annotator,view,scheme,saliency,completeness,uniformity", "a,front,outline,0.5,0.5,0.5",
         r"votes.csv: row 2: unknown scheme 'outline'"),
        ("annotator,view,scheme,saliency,completeness", "a,front,contour,0.5,0.5",
         r"votes.csv: header: missing column uniformity"),
        ("annotator,view,scheme,saliency,completeness,uniformity", "a,front,contour,1.5,0.5,0.5",
         r"votes.csv: row 2: saliency 1.5 is outside \[0, 1\]"),
        ("annotator,view,scheme,saliency,completeness,uniformity", "a,front,contour,0.5,high,0.5",
         r"votes.csv: row 2: completeness 'high' is not a number"),
    ],
)
def test_bad_votes_are_one_clear_line_and_nothing_written(tmp_path, header, row, message):
    mesh = export_builtin("car", tmp_path / "car.ply")
    (tmp_path / "votes.csv").write_text(f"{header}\n{row}\n")
    result = runner.invoke(app, ["vote-keypoints", str(mesh), "--category", "car", "--votes",
                                 str(tmp_path / "votes.csv"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    import re

    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and re.search(message, lines[0]), result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("mesh", "front_axis"), [("chair_model.obj", "-x"), ("Duck.glb", "+x"),
                                                  ("CesiumMilkTruck.glb", "+x"), ("bunny.ply", "+z")])
def test_real_prototypes_give_spread_keypoints_that_synth_renders(tmp_path, mesh, front_axis):
    path = shared_data("prototypes", mesh)
    out = tmp_path / "design"
    result = design_keypoints(path, "thing", out, options=DesignOptions(front_axis=front_axis))
    canonical = np.array([e["xyz_canonical"] for e in result.schema.keypoint_extra])
    parts = canonical_parts(load_mesh_parts(path), "+y", front_axis)[0]
    assert_designer_checks(result, parts, DesignOptions().min_spacing)
    assert ("not mirror-symmetric" in result.version_note) == (mesh == "bunny.ply")
    surface = sample_surface(parts).points
    object_extent = surface.max(axis=0) - surface.min(axis=0)
    spread = canonical.max(axis=0) - canonical.min(axis=0)
    assert (spread >= 0.6 * object_extent).all(), (spread, object_extent)  # keypoints span the whole object
    schema = load_schema(out / "schema.json")
    prototypes = commands.resolve_prototypes([], [out / "schema.json"], [])
    dataset = commands.run_synth(tmp_path / "synth", prototypes, SynthOptions(images_per_category=3, width=160,
                                                                             height=120))
    assert sum(int(i.visible.sum()) for i in dataset.instances) > 0
    assert dataset.categories[1].keypoints == schema.names
