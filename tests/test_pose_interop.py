"""Pose-tool interop through sleap-io: SLEAP and DeepLabCut round trips, a DeepLabCut project, NWB, Label Studio."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from semcorr import commands, store
from semcorr.errors import SemcorrError
from semcorr.formats import dlc, pose, sleap
from tests.conftest import shared_data

pytest.importorskip("sleap_io")


def hide_some(root: Path) -> int:
    """Set every third labelled keypoint of the store to visibility 1; returns how many."""
    dataset = store.load_dataset(root)
    hidden = 0
    for inst in dataset.instances:
        for k in np.flatnonzero(inst.keypoints[:, 2] == 2)[::3]:
            inst.keypoints[k, 2] = 1
            hidden += 1
    store.save_dataset(dataset, root)
    return hidden


def keypoints_by_category(dataset: store.Dataset) -> dict[str, list[np.ndarray]]:
    """Per category, the keypoints of its instances with a labelled point, by image id then store order."""
    out: dict[str, list[np.ndarray]] = {}
    for inst in sorted(dataset.instances, key=lambda i: i.image_id):  # stable: store order within an image
        if inst.labelled.any():
            out.setdefault(dataset.categories[inst.category_id].name, []).append(inst.keypoints)
    return out


def same_schema(a: store.Category, b: store.Category, flips: bool = True) -> None:
    assert (a.name, a.keypoints, tuple(map(tuple, a.skeleton))) == (b.name, b.keypoints, tuple(map(tuple, b.skeleton)))
    if flips:
        assert {frozenset(p) for p in a.flip_pairs} == {frozenset(p) for p in b.flip_pairs}


def assert_round_trip(before: store.Dataset, after: store.Dataset, hidden_dropped: bool) -> None:
    names = {c.name: c for c in after.categories.values()}
    for category in before.categories.values():
        same_schema(category, names[category.name], flips=not hidden_dropped)
    expected = keypoints_by_category(before)
    got = keypoints_by_category(after)
    assert sorted(expected) == sorted(got)
    for name, want_list in expected.items():
        got_list = got[name]
        assert len(want_list) == len(got_list)
        for want, have in zip(want_list, got_list):
            want = want.copy()
            if hidden_dropped:  # DeepLabCut: hidden points are not written
                want[want[:, 2] == 1] = (np.nan, np.nan, 0)
            np.testing.assert_array_equal(have[:, 2], want[:, 2])
            np.testing.assert_allclose(have[:, :2], want[:, :2], atol=0.005)  # the store keeps 2 decimals


def test_box_from_keypoints_pads_by_the_margin_and_clips():
    keypoints = np.array([[10.0, 20.0, 2], [50.0, 40.0, 1], [np.nan, np.nan, 0]])
    # extent 40 x 20 -> pad 0.1 * 40 = 4 on each side
    np.testing.assert_allclose(pose.box_from_keypoints(keypoints, 100, 100), [6, 16, 48, 28])
    np.testing.assert_allclose(pose.box_from_keypoints(keypoints, 52, 100), [6, 16, 46, 28])  # clipped at x = 52
    single = np.array([[5.0, 5.0, 2]])
    np.testing.assert_allclose(pose.box_from_keypoints(single, 100, 100), [3, 3, 4, 4])  # the 2 px minimum


def test_sleap_round_trip_keeps_keypoints_visibility_and_schema(store_copy, tmp_path):
    hidden = hide_some(store_copy)
    assert hidden > 0
    report = sleap.save_sleap(store_copy, tmp_path / "out.slp")
    assert any("SLEAP holds no boxes" in line for line in report.losses)
    back = tmp_path / "back"
    sleap.load_sleap(tmp_path / "out.slp", back)
    before, after = store.load_dataset(store_copy), store.load_dataset(back)
    assert_round_trip(before, after, hidden_dropped=False)
    assert sum(int((i.keypoints[:, 2] == 1).sum()) for i in after.instances) == hidden
    provenance = after.instances[0].extra_attributes["keypoint_provenance"]
    assert {p["action"] for p in provenance.values()} == {"imported"}


def test_dlc_round_trip_reports_hidden_points_per_file(store_copy, tmp_path):
    hidden = hide_some(store_copy)
    out = tmp_path / "dlc"
    report = dlc.save_dlc(store_copy, out)
    before = store.load_dataset(store_copy)
    per_category = {c.name: sum(int((i.keypoints[:, 2] == 1).sum()) for i in before.instances
                                if i.category_id == c.id) for c in before.categories.values()}
    for name, count in per_category.items():
        line = next(li for li in report.losses if li.startswith(str(out / name / "labeled-data" / name)) and "hidden"
                    in li)
        assert f"{count} keypoints labelled but hidden" in line
    assert sum(per_category.values()) == hidden
    for name in per_category:
        config = yaml.safe_load((out / name / "config.yaml").read_text())
        assert config["Task"] == name and config["bodyparts"] == list(before.category_by_name(name).keypoints)
    back = tmp_path / "back"
    commands.run_import("dlc", out, back)
    assert_round_trip(before, store.load_dataset(back), hidden_dropped=True)


def coco_people(tmp_path: Path) -> Path:
    root = shared_data("coco-mini-train")
    out = tmp_path / "people"
    commands.run_coco_filter(root / "annotations" / "instances_train2017.json", root / "images", out,
                             categories=["person"],
                             keypoints_json=root / "annotations" / "person_keypoints_train2017.json")
    return out


@pytest.mark.parametrize("fmt", ["sleap", "dlc"])
def test_coco_people_round_trip(tmp_path, fmt):
    people = coco_people(tmp_path)
    before = store.load_dataset(people)
    assert any(sum(i.image_id == im and i.labelled.any() for i in before.instances) > 1 for im in before.images)
    out = tmp_path / ("people.slp" if fmt == "sleap" else "people-dlc")
    report = commands.run_export_pose(fmt, people, out)
    if fmt == "dlc":  # several people per image: a multi-animal project
        assert yaml.safe_load((out / "person" / "config.yaml").read_text())["multianimalproject"] is True
        hidden = sum(int((i.keypoints[:, 2] == 1).sum()) for i in before.instances)
        assert hidden > 0 and any(f"{hidden} keypoints labelled but hidden" in li for li in report.losses)
    empty = sum(not i.labelled.any() for i in before.instances)
    assert any(f"{empty} instances without a labelled keypoint" in li for li in report.losses)
    back = tmp_path / "back"
    commands.run_import(fmt, out, back)
    assert_round_trip(before, store.load_dataset(back), hidden_dropped=fmt == "dlc")


def write_dlc_project(root: Path, scorer: str = "Alex") -> dict:
    """A single-animal DeepLabCut project written the way DeepLabCut writes it (pandas, 3-level index)."""
    bodyparts = ["snout", "leftear", "rightear", "tailbase"]  # not alphabetical: the config's order must win
    config = {"Task": "mouse", "scorer": scorer, "date": "Jan1", "multianimalproject": False,
              "project_path": str(root), "video_sets": {str(root / "videos" / "reach.avi"): {"crop": "0, 64, 0, 48"}},
              "bodyparts": bodyparts, "skeleton": [["snout", "leftear"], ["snout", "rightear"]], "numframes2pick": 2}
    root.mkdir(parents=True)
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    folder = root / "labeled-data" / "reach"
    folder.mkdir(parents=True)
    names = ["img017.png", "img103.png"]
    for k, name in enumerate(names):
        Image.new("RGB", (64, 48), (40 * k, 80, 120)).save(folder / name)
    columns = pd.MultiIndex.from_product([[scorer], bodyparts, ["x", "y"]], names=["scorer", "bodyparts", "coords"])
    index = pd.MultiIndex.from_tuples([("labeled-data", "reach", n) for n in names])
    values = np.array([[10.5, 12.25, 20.0, 8.0, 30.0, 9.5, np.nan, np.nan],
                       [40.0, 30.0, 44.75, 20.0, 50.0, 22.0, 60.0, 40.0]])
    pd.DataFrame(values, index=index, columns=columns).to_csv(folder / f"CollectedData_{scorer}.csv")
    return {"bodyparts": bodyparts, "values": values}


def test_real_deeplabcut_project_imports(tmp_path):
    project = tmp_path / "reach-Alex-2024-01-01"
    written = write_dlc_project(project)
    out = tmp_path / "mouse"
    report = commands.run_import("dlc", project / "config.yaml", out)
    assert (report.images, report.instances, report.keypoints) == (2, 2, 7)
    dataset = store.load_dataset(out)
    (category,) = dataset.categories.values()
    assert category.name == "mouse" and category.keypoints == tuple(written["bodyparts"])
    assert category.skeleton == ((0, 1), (0, 2))
    assert [im.file_name for im in dataset.images.values()] == ["reach/img017.png", "reach/img103.png"]
    first, second = dataset.instances
    np.testing.assert_array_equal(first.keypoints[:3], [[10.5, 12.25, 2], [20, 8, 2], [30, 9.5, 2]])
    assert first.keypoints[3, 2] == 0 and np.isnan(first.keypoints[3, :2]).all()
    # box: x 10.5..30, y 8..12.25 -> longer extent 19.5, pad max(1.95, 2) = 2
    np.testing.assert_allclose(first.bbox, [8.5, 6, 23.5, 8.25])
    np.testing.assert_allclose(second.keypoints[:, :2].ravel(), written["values"][1])
    assert (out / "images" / "reach" / "img103.png").is_file()


@pytest.mark.parametrize("edit, needle", [
    (lambda lines: ["scorer,x"] + lines[1:], "line 1"),
    (lambda lines: [lines[0], "parts" + lines[1][9:]] + lines[2:], "line 2: header row 2 must start with 'bodyparts'"),
    (lambda lines: lines[:3] + [lines[3].replace("10.5", "ten")] + lines[4:], "line 4: snout x is 'ten'"),
    (lambda lines: lines[:3] + [lines[3].replace("labeled-data,reach", "labeled-data,..")] + lines[4:],
     "line 4: unsafe image path"),
])
def test_malformed_deeplabcut_csv_names_file_and_line(tmp_path, edit, needle):
    project = tmp_path / "proj"
    write_dlc_project(project)
    csv_path = project / "labeled-data" / "reach" / "CollectedData_Alex.csv"
    csv_path.write_text("\n".join(edit(csv_path.read_text().splitlines())) + "\n")
    with pytest.raises(SemcorrError, match=needle) as caught:
        commands.run_import("dlc", project, tmp_path / "out")
    assert str(csv_path) in str(caught.value)
    assert not (tmp_path / "out").exists()


def test_import_refuses_output_inside_input_and_annotation_work(tmp_path, store_copy):
    project = tmp_path / "proj"
    write_dlc_project(project)
    with pytest.raises(SemcorrError, match="inside the input"):
        commands.run_import("dlc", project, project / "dataset")
    (store_copy / "annotation").mkdir()
    sleap.save_sleap(store_copy, tmp_path / "x.slp")
    before = (store_copy / "annotations.json").read_bytes()
    with pytest.raises(SemcorrError, match="annotation work"):
        commands.run_import("sleap", tmp_path / "x.slp", store_copy)
    assert (store_copy / "annotations.json").read_bytes() == before


def test_bad_sleap_file_is_one_error(tmp_path):
    bad = tmp_path / "bad.slp"
    bad.write_text("not hdf5")
    with pytest.raises(SemcorrError, match="bad.slp: not a readable SLEAP file"):
        commands.run_import("sleap", bad, tmp_path / "out")


def test_nwb_import_through_sleap_io(store_copy, tmp_path):
    import sleap_io as sio

    sleap.save_sleap(store_copy, tmp_path / "x.slp")
    sio.save_nwb(sio.load_slp(str(tmp_path / "x.slp")), str(tmp_path / "x.nwb"), nwb_format="annotations")
    commands.run_import("nwb", tmp_path / "x.nwb", tmp_path / "back")
    before, after = store.load_dataset(store_copy), store.load_dataset(tmp_path / "back")
    for category in before.categories.values():  # NWB skeletons carry no symmetries
        same_schema(category, after.category_by_name(category.name), flips=False)
    assert len(after.instances) == sum(i.labelled.any() for i in before.instances)


def test_labelstudio_export_imports_with_boxes(tmp_path):
    images = tmp_path / "imgs"
    images.mkdir()
    Image.new("RGB", (200, 100)).save(images / "a.jpg")
    regions = [
        {"id": "b1", "type": "rectanglelabels", "original_width": 200, "original_height": 100,
         "value": {"x": 10, "y": 20, "width": 50, "height": 40, "rectanglelabels": ["bird"]}},
        {"id": "k1", "type": "keypointlabels", "parentID": "b1", "original_width": 200, "original_height": 100,
         "value": {"x": 25, "y": 50, "keypointlabels": ["tail"]}},
        {"id": "k2", "type": "keypointlabels", "parentID": "b1", "original_width": 200, "original_height": 100,
         "value": {"x": 30, "y": 30, "keypointlabels": ["beak"]}},
    ]
    export = tmp_path / "export.json"
    export.write_text(json.dumps([{"id": 7, "data": {"image": "/data/local-files/?d=a.jpg"},
                                   "annotations": [{"result": regions}]}]))
    config = tmp_path / "config.xml"
    config.write_text('<View><Image name="image" value="$image"/><KeyPointLabels name="kp" toName="image">'
                      '<Label value="beak"/><Label value="wing"/><Label value="tail"/></KeyPointLabels></View>')
    commands.run_import("labelstudio", export, tmp_path / "out", images=images, config=config)
    dataset = store.load_dataset(tmp_path / "out")
    (category,) = dataset.categories.values()
    assert category.name == "bird" and category.keypoints == ("beak", "wing", "tail")
    (inst,) = dataset.instances
    np.testing.assert_allclose(inst.keypoints[[0, 2]], [[60, 30, 2], [50, 50, 2]])
    assert inst.keypoints[1, 2] == 0
    np.testing.assert_allclose(inst.bbox, [20, 20, 100, 40])
    # two annotations of one task: the later `updated_at` counts whatever the list order (as `review pull`)
    older = [dict(r, value=dict(r["value"], x=r["value"]["x"] + 5)) for r in regions]
    twice = tmp_path / "twice.json"
    twice.write_text(json.dumps([{"id": 9, "data": {"image": "/data/local-files/?d=a.jpg"}, "annotations": [
        {"id": 2, "updated_at": "2026-12-03T10:00:00Z", "result": regions},
        {"id": 1, "updated_at": "2026-12-01T10:00:00Z", "result": older}]}]))
    commands.run_import("labelstudio", twice, tmp_path / "out3", images=images, config=config)
    (latest,) = store.load_dataset(tmp_path / "out3").instances
    np.testing.assert_allclose(latest.keypoints, inst.keypoints)
    missing = tmp_path / "missing.json"
    missing.write_text(json.dumps([{"id": 8, "data": {"image": "/data/upload/1/zz.jpg"},
                                    "annotations": [{"result": regions}]}]))
    with pytest.raises(SemcorrError, match="task id=8: image zz.jpg not found"):
        commands.run_import("labelstudio", missing, tmp_path / "out2", images=images)


def test_cli_import_and_export_print_losses(store_copy, tmp_path):
    from typer.testing import CliRunner

    from semcorr.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["export", "dlc", str(store_copy), str(tmp_path / "d")])
    assert result.exit_code == 0, result.output
    assert "not kept:" in result.output and "flip pairs" in result.output
    result = runner.invoke(app, ["import", "dlc", str(tmp_path / "d"), str(tmp_path / "d" / "x")])
    assert result.exit_code == 1
    assert "inside the input" in result.output
