"""vote-keypoints never loses human input, refuses bad options in one line before any work,
and writes a schema whose mesh is found from any folder and after the output is moved."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import trimesh
from typer.testing import CliRunner

from semcorr import commands
from semcorr.cli import app
from semcorr.errors import SemcorrError
from semcorr.keypoint_design.sheets import voting_sheet_csv
from semcorr.keypoint_schema import load_schema, parse_axes, parse_axis
from semcorr.synth.prototypes import builtin_prototype
from tests.test_eval_inputs import assert_one_line_error as one_line_error

runner = CliRunner()
SIZE = ["--size", "128"]


@pytest.fixture(scope="module")
def designed(tmp_path_factory) -> Path:
    """A folder with car.ply and T/ = `vote-keypoints car.ply --category car --out T` (no votes)."""
    root = tmp_path_factory.mktemp("vote")
    trimesh.util.concatenate([p.mesh for p in builtin_prototype("car").parts]).export(root / "car.ply")
    result = runner.invoke(app, ["vote-keypoints", str(root / "car.ply"), "--category", "car", "--out",
                                 str(root / "T"), *SIZE])
    assert result.exit_code == 0, result.output
    return root


@pytest.fixture
def work(designed, tmp_path) -> Path:
    target = tmp_path / "work"
    shutil.copytree(designed, target)
    return target


def fill(sheet: Path, rows: dict[int, str]) -> bytes:
    """Replace data rows (1-based, after the header) of a voting sheet; returns the new bytes."""
    lines = sheet.read_text().splitlines()
    for number, text in rows.items():
        lines[number] = text
    sheet.write_text("\n".join(lines) + "\n")
    return sheet.read_bytes()


def test_first_run_writes_the_blank_sheet(designed):
    assert (designed / "T" / "voting_sheet.csv").read_text() == voting_sheet_csv()
    assert not (designed / "T" / "voting_sheet_blank.csv").exists()


def test_partly_filled_sheet_is_used_kept_and_copied(work):
    sheet = work / "T" / "voting_sheet.csv"
    filled = fill(sheet, {1: "ann1,upper,skeleton,0.9,0.9,", 2: "ann1,upper,contour,0.1,0.1,0.1",
                          5: "ann2,below,contour,1,1,1"})
    result = runner.invoke(app, ["vote-keypoints", str(work / "car.ply"), "--category", "car", "--votes", str(sheet),
                                 "--out", str(work / "T"), *SIZE])
    assert result.exit_code == 0, result.output
    assert sheet.read_bytes() == filled  # the human input is untouched
    assert (work / "T" / "votes_used.csv").read_bytes() == filled  # and copied beside what it produced
    assert (work / "T" / "voting_sheet_blank.csv").read_text() == voting_sheet_csv()
    assert "automatic scores stand in" in result.output and "voting_sheet_blank.csv" in " ".join(result.output.split())
    scores = pd.read_csv(work / "T" / "scores.csv")
    used = scores[scores["criterion"] == "chosen"].set_index(["view", "scheme"])["used"]
    assert used[("upper", "contour")] == "votes" and used[("below", "contour")] == "votes"
    assert used[("upper", "skeleton")] == "votes+automatic" and used[("front", "skeleton")] == "automatic"
    # a second run with the same votes still leaves the filled sheet alone
    again = runner.invoke(app, ["vote-keypoints", str(work / "car.ply"), "--category", "car", "--votes",
                                str(sheet), "--out", str(work / "T"), *SIZE])
    assert again.exit_code == 0, again.output
    assert sheet.read_bytes() == filled


def test_a_filled_sheet_survives_a_run_without_votes_and_an_edited_blank_too(work):
    sheet, blank = work / "T" / "voting_sheet.csv", work / "T" / "voting_sheet_blank.csv"
    filled = fill(sheet, {3: "ann1,upper,appearance,0.5,0.5,0.5"})
    edited = b"my own notes\n"
    blank.write_bytes(edited)
    result = runner.invoke(app, ["vote-keypoints", str(work / "car.ply"), "--category", "car", "--out",
                                 str(work / "T"), *SIZE])
    assert result.exit_code == 0, result.output
    assert sheet.read_bytes() == filled and blank.read_bytes() == edited
    assert "both kept" in " ".join(result.output.split())


@pytest.mark.parametrize(("rows", "fragment"), [
    ({}, "holds no votes"),
    ({1: ",upper,skeleton,0.5,0.5,0.5"}, "row 2: empty annotator"),
    ({2: "a,upper,contour,0.5,nan,0.5"}, "row 3: completeness nan is outside [0, 1]"),
    ({2: "a,upper,contour,0.5,,2"}, "row 3: uniformity 2 is outside [0, 1]"),
])
def test_bad_sheet_is_one_line_and_changes_nothing(work, rows, fragment):
    sheet = work / "T" / "voting_sheet.csv"
    fill(sheet, rows)
    before = {p.name: p.read_bytes() for p in (work / "T").iterdir()}
    result = runner.invoke(app, ["vote-keypoints", str(work / "car.ply"), "--category", "car", "--votes", str(sheet),
                                 "--out", str(work / "T"), *SIZE])
    line = one_line_error(result, fragment)
    assert "voting_sheet.csv" in line
    assert {p.name: p.read_bytes() for p in (work / "T").iterdir()} == before


@pytest.mark.parametrize(("data", "fragment"), [
    (b"\x1f\x8b\x08\x00junk", "gzip-compressed"),
    (b"annotator,view,scheme,saliency,completeness,uniformity\n\xff\xfe,front,contour,1,1,1\n", "not UTF-8"),
])
def test_unreadable_votes_file(work, data, fragment):
    (work / "votes.csv").write_bytes(data)
    result = runner.invoke(app, ["vote-keypoints", str(work / "car.ply"), "--category", "car", "--votes",
                                 str(work / "votes.csv"), "--out", str(work / "new"), *SIZE])
    one_line_error(result, fragment)
    assert not (work / "new").exists()


@pytest.mark.parametrize(("options", "fragment"), [
    (["--up-axis", "up"], "--up-axis 'up': not an axis"),
    (["--up-axis", "w"], "--up-axis 'w': not an axis"),
    (["--front-axis", "++z"], "--front-axis '++z': not an axis"),
    (["--up-axis", "z"], "are parallel"),  # front defaults to +z
    (["--up-axis", "+y", "--front-axis", "-Y"], "are parallel"),
    (["--threshold", "nan"], "--threshold nan"),
    (["--threshold", "-0.5"], "--threshold -0.5"),
    (["--threshold", "1.5"], "--threshold 1.5"),
    (["--min-spacing", "-1"], "--min-spacing -1"),
    (["--min-spacing", "0"], "--min-spacing 0"),
    (["--min-spacing", "nan"], "--min-spacing nan"),
    (["--min-spacing", "inf"], "--min-spacing inf"),
    (["--max-keypoints", "0"], "--max-keypoints 0"),
    (["--up-axis", "auto", "--front-axis", "up"], "--front-axis 'up': not an axis"),
])
def test_bad_options_fail_fast_in_one_line(work, options, fragment):
    out = work / "new"
    result = runner.invoke(app, ["vote-keypoints", str(work / "car.ply"), "--category", "car", "--out", str(out),
                                 *SIZE, *options])
    one_line_error(result, fragment)
    assert not out.exists()


def test_out_that_is_a_file_is_refused(work):
    result = runner.invoke(app, ["vote-keypoints", str(work / "car.ply"), "--category", "car", "--out",
                                 str(work / "car.ply"), *SIZE])
    one_line_error(result, "is not a folder")


@pytest.mark.parametrize(("text", "axis"), [("z", "+z"), ("Z", "+z"), ("-Y", "-y"), (" +x ", "+x"), ("-z", "-z")])
def test_axes_accept_any_case_and_optional_sign(text, axis):
    assert parse_axis(text) == axis


def test_parallel_axes_are_refused():
    assert parse_axes("Y", "-z") == ("+y", "-z")
    with pytest.raises(SemcorrError, match="parallel"):
        parse_axes("y", "-y")


def test_lower_case_axis_runs(work):
    result = runner.invoke(app, ["vote-keypoints", str(work / "car.ply"), "--category", "car", "--out",
                                 str(work / "Z"), "--up-axis", "Y", "--front-axis", "z", *SIZE])
    assert result.exit_code == 0, result.output
    schema = load_schema(work / "Z" / "schema.json")
    assert (schema.up_axis, schema.front_axis) == ("+y", "+z")


def test_schema_mesh_is_found_after_moving_the_output_and_from_another_folder(work, tmp_path, monkeypatch):
    moved = tmp_path / "elsewhere" / "deeper" / "T"
    moved.parent.mkdir(parents=True)
    shutil.move(str(work / "T"), moved)
    monkeypatch.chdir(tmp_path / "elsewhere")
    schema = load_schema(Path("deeper") / "T" / "schema.json")
    assert schema.mesh is not None and schema.mesh.is_file() and schema.mesh.is_absolute()
    prototypes = commands.resolve_prototypes([], [Path("deeper") / "T" / "schema.json"], [])
    assert prototypes[0].schema.names == schema.names


def test_schema_mesh_is_found_when_mesh_and_schema_move_together(work, tmp_path):
    moved = tmp_path / "bundle"
    shutil.move(str(work), moved)
    path = moved / "T" / "schema.json"
    data = json.loads(path.read_text())
    assert Path(data["mesh"]).is_absolute() and data["mesh_relative"] == "../car.ply"
    data["mesh"] = str(tmp_path / "gone" / "car.ply")  # as if the original folder were moved away
    path.write_text(json.dumps(data))
    schema = load_schema(path)
    assert schema.mesh == (moved / "car.ply").resolve()


def test_one_annotator_gets_a_word_not_nan(work):
    sheet = work / "T" / "voting_sheet.csv"
    fill(sheet, {1: "ann1,upper,skeleton,0.9,0.9,0.9", 2: "ann1,upper,contour,0.2,0.2,0.2"})
    result = runner.invoke(app, ["vote-keypoints", str(work / "car.ply"), "--category", "car", "--votes", str(sheet),
                                 "--out", str(work / "T"), *SIZE])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "agreement (saliency): Krippendorff's alpha needs two annotators" in text and "nan" not in text
