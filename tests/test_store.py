"""The dataset store: round trip, and one clear error line per kind of bad input."""

import json
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from semcorr import store
from semcorr.cli import app
from semcorr.errors import SemcorrError

runner = CliRunner()


def tiny_coco() -> dict:
    """Two categories with different keypoint counts (3 and 2), visibility 0, 1 and 2."""
    return {
        "info": {"image_root": "images"},
        "images": [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 80},
                   {"id": 2, "file_name": "b.jpg", "width": 60, "height": 60}],
        "categories": [{"id": 1, "name": "cup", "keypoints": ["rim", "handle", "base"], "skeleton": [[1, 3]]},
                       {"id": 2, "name": "fork", "keypoints": ["tip", "end"], "flip_pairs": []}],
        "annotations": [
            {"id": 5, "image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 40], "area": 2000,
             "keypoints": [20.5, 30, 2, 0, 0, 0, 40, 45, 1], "attributes": {"azimuth_bin": 3, "occluded": True,
                                                                            "source": "hand"}},
            {"id": 6, "image_id": 2, "category_id": 2, "bbox": [1, 2, 3, 4], "area": 12,
             "keypoints": [5, 5, 2, 59.5, 60, 2], "attributes": {"azimuth_bin": None}},
        ],
    }


def write_store(root, coco) -> None:
    (root / "images").mkdir(parents=True, exist_ok=True)
    for image in coco["images"]:
        (root / "images" / image["file_name"]).write_bytes(b"\xff\xd8fake")
    (root / "annotations.json").write_text(json.dumps(coco))


def test_round_trip_keeps_visibility_and_attributes(tmp_path):
    write_store(tmp_path, tiny_coco())
    dataset = store.load_dataset(tmp_path)
    cup = dataset.instances[0]
    assert cup.keypoints[:, 2].tolist() == [2, 0, 1]
    assert np.isnan(cup.keypoints[1, :2]).all()
    assert cup.visible.tolist() == [True, False, False] and cup.labelled.tolist() == [True, False, True]
    assert (cup.azimuth_bin, cup.occluded, cup.truncated) == (3, True, False)
    assert cup.extra_attributes == {"source": "hand"}
    assert dataset.categories[1].skeleton == ((0, 2),)
    store.save_dataset(dataset, tmp_path)
    saved = json.loads((tmp_path / "annotations.json").read_text())
    assert saved["annotations"][0]["keypoints"] == [20.5, 30, 2, 0, 0, 0, 40, 45, 1]
    assert saved["annotations"][0]["num_keypoints"] == 2
    assert saved["categories"][0]["skeleton"] == [[1, 3]]
    again = store.load_dataset(tmp_path)
    assert again.instances[1].keypoints.tolist() == dataset.instances[1].keypoints.tolist()


def corrupt(coco: dict, change: str) -> dict:
    ann = coco["annotations"][0]
    if change == "outside":
        ann["keypoints"][0] = 100.5
    elif change == "length":
        ann["keypoints"] = ann["keypoints"][:6]
    elif change == "category":
        ann["category_id"] = 7
    elif change == "bbox":
        ann["bbox"] = [10, 10, 0, 40]
    elif change == "azimuth":
        ann["attributes"]["azimuth_bin"] = 8
    return coco


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("outside", r"annotation id=5 \(image id=1\): keypoint 0 \(rim\) at \(100.5, 30\) is outside the 100x80 image"),
        ("length", r"annotation id=5 \(image id=1\): 6 keypoint values for category 'cup', which has 3 keypoints"),
        ("category", r"annotation id=5 \(image id=1\): unknown category id 7"),
        ("bbox", r"annotation id=5: field 'bbox': bbox has non-positive size: width and height must be > 0 \(got \[10, 10, 0, 40\]\)"),
        ("azimuth", r"annotation id=5 \(image id=1\): field 'azimuth_bin': Input should be less than or equal to 7"),
    ],
)
def test_validation_errors_name_file_and_record(tmp_path, change, message):
    write_store(tmp_path, corrupt(tiny_coco(), change))
    with pytest.raises(SemcorrError, match=message) as info:
        store.load_dataset(tmp_path)
    assert str(info.value).startswith(str(tmp_path / "annotations.json"))


def test_missing_image_file(tmp_path):
    write_store(tmp_path, tiny_coco())
    (tmp_path / "images" / "b.jpg").unlink()
    with pytest.raises(SemcorrError, match=r"image id=2: image file .*b.jpg does not exist"):
        store.load_dataset(tmp_path)


def test_malformed_json_names_line_and_column(tmp_path):
    write_store(tmp_path, tiny_coco())
    (tmp_path / "annotations.json").write_text('{"images": [\n  {"id": 1,,}\n]}')
    with pytest.raises(SemcorrError, match=r"annotations.json: malformed JSON at line 2 column 12"):
        store.load_dataset(tmp_path)


@pytest.mark.parametrize("change", ["outside", "length", "category", "bbox", "azimuth"])
def test_cli_prints_one_line_exits_nonzero_and_writes_nothing(tmp_path, change):
    write_store(tmp_path, corrupt(tiny_coco(), change))
    before = sorted(p.name for p in tmp_path.iterdir())
    result = runner.invoke(app, ["split", str(tmp_path)])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "annotation id=5" in lines[0]
    assert "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_console_script_has_no_traceback(tmp_path):
    write_store(tmp_path, corrupt(tiny_coco(), "bbox"))
    proc = subprocess.run([sys.executable, "-m", "semcorr.cli", "validate", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "non-positive size" in proc.stderr


def test_bad_splits_and_missing_pairs(tmp_path):
    write_store(tmp_path, tiny_coco())
    (tmp_path / "splits.json").write_text('{"1": "train"}')
    with pytest.raises(SemcorrError, match=r"splits.json: image id=1: split 'train' is not one of trn, val, test"):
        store.load_splits(tmp_path)
    with pytest.raises(SemcorrError, match=r"pairs.parquet: file not found; run `semcorr build-pairs`"):
        store.load_pairs(tmp_path)
