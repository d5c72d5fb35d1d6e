"""coco-filter on hostile and real COCO input: border cut, types, malformed records, options, provenance.

Expected values are worked out by hand (box perimeters, pixel runs) or by a second, simpler
rule (a box within a pixel of the image edge is a truncated instance).
"""

import json
import math

import numpy as np
import pandas as pd
import pytest
from pycocotools import mask as mask_utils
from typer.testing import CliRunner

from semcorr import commands, store
from semcorr.builders import coco_filter as cf
from semcorr.cli import app
from semcorr.errors import SemcorrError
from tests.conftest import shared_data

runner = CliRunner()


def square(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def box_of(polygon):
    xs, ys = polygon[0::2], polygon[1::2]
    return np.array([min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)])


# ----------------------------------------------------------------------------- border cut, by hand


@pytest.mark.parametrize("polygon, expected", [
    # stops at x = 639.04 like COCO polygons: rows 100..299 touch the right edge; 200 / (2 (139.04 + 200))
    ([500, 100, 639.04, 100, 639.04, 300, 500, 300], 200 / 678.08),
    # a bottle whose box touches the top edge at y = 0.6: columns 100..139; 40 / (2 (40 + 199.4))
    ([100, 0.6, 140, 0.6, 140, 200, 100, 200], 40 / 478.8),
    # bottom edge at 479.2 of 480: columns 100..199; 100 / (2 (100 + 79.2))
    ([100, 400, 200, 400, 200, 479.2, 100, 479.2], 100 / 358.4),
    # top-left corner: 100 columns + 50 rows over 2 (99.7 + 49.7)
    ([0.3, 0.3, 100, 0.3, 100, 50, 0.3, 50], 150 / 298.8),
    # three pixels inside every edge: no cut
    ([3, 3, 100, 3, 100, 50, 3, 50], 0.0),
])
def test_border_cut_counts_the_band_next_to_the_edge(polygon, expected):
    mask = cf.decode_mask([polygon], 480, 640)
    assert cf.border_cut(mask, box_of(polygon)) == pytest.approx(expected, abs=1e-9)


def test_border_cut_caps_at_one_and_uses_the_mask_box_without_a_bbox():
    mask = np.ones((10, 20), bool)
    assert cf.border_cut(mask, np.array([0, 0, 20, 10])) == 1.0  # 20 + 20 + 10 + 10 over 60
    assert cf.border_cut(mask) == 1.0
    assert cf.border_cut(np.zeros((10, 20), bool)) == 0.0


def test_polygon_stopping_inside_the_edge_is_truncated_and_cut(tmp_path):
    # 200 x 100 image; a 40 x 90 box from y = 0.7: top columns 60..99 -> 40 / (2 (40 + 89.3)) = 0.155
    # a wide box stopping at x = 199.1: right rows 10..89 -> 80 / (2 (100.1 + 80)) = 0.222
    coco = {"images": [{"id": 1, "file_name": "a.jpg", "width": 200, "height": 100}],
            "categories": [{"id": 1, "name": "bottle"}],
            "annotations": [
                {"id": 1, "image_id": 1, "category_id": 1, "bbox": [60, 0.7, 40, 89.3],
                 "segmentation": square(60, 0.7, 100, 90)},
                {"id": 2, "image_id": 1, "category_id": 1, "bbox": [99, 10, 100.1, 80],
                 "segmentation": square(99, 10, 199.1, 90)}]}
    screened = cf.screen_instances(coco, {"bottle"}, cf.FilterOptions(min_area=100, max_border_cut=0.2))
    by_id = screened.set_index("ann_id")
    assert by_id.loc[1, "truncated"] and by_id.loc[2, "truncated"]
    assert pd.isna(by_id.loc[1, "reason"]) and by_id.loc[2, "reason"] == "cut_by_border"


# ----------------------------------------------------------------------------- real COCO polygons


def real_coco():
    base = shared_data("coco-mini-train")
    return base, json.loads((base / "annotations" / "instances_train2017.json").read_text())


def near_border(ann, image, pixels=1.0):
    x, y, w, h = ann["bbox"]
    return x <= pixels or y <= pixels or x + w >= image["width"] - pixels or y + h >= image["height"] - pixels


def test_real_coco_instances_touching_the_border_are_truncated():
    base, coco = real_coco()
    names = {c["name"] for c in coco["categories"]}
    screened = cf.screen_instances(coco, names, cf.FilterOptions(), base / "images")
    images = {im["id"]: im for im in coco["images"]}
    valid = screened[~screened["reason"].isin(cf.RECORD_REASONS + ("crowd",))]
    anns = coco["annotations"]
    touching = [row for row in valid.itertuples() if near_border(anns[row.index], images[anns[row.index]["image_id"]])]
    assert len(touching) >= 100
    missed = [int(row.ann_id) for row in touching if not row.truncated]
    assert missed == []
    # boxes more than the band away from every edge never count as cut
    inside = [row for row in valid.itertuples()
              if not near_border(anns[row.index], images[anns[row.index]["image_id"]], pixels=2.5)]
    assert not any(row.truncated for row in inside)
    # instances whose polygons stop just inside the edge: the outermost pixel row/column is empty
    by_id = valid.set_index("ann_id")
    for ann_id in (453958, 1410020, 1732309, 2003533, 2014156):
        ann = next(a for a in anns if a["id"] == ann_id)
        image = images[ann["image_id"]]
        mask = cf.decode_mask(ann["segmentation"], image["height"], image["width"])
        assert not (mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())
        assert by_id.loc[ann_id, "truncated"], ann_id


def test_real_coco_kept_border_instances_are_flagged():
    base, coco = real_coco()
    options = cf.FilterOptions()
    screened = cf.screen_instances(coco, set(cf.MISC_CATEGORIES), options, base / "images")
    kept, _ = cf.select_images(screened, options)
    images = {im["id"]: im for im in coco["images"]}
    anns = coco["annotations"]
    touching = kept[[near_border(anns[i], images[anns[i]["image_id"]]) for i in kept["index"]]]
    assert len(touching) >= 20 and touching["truncated"].all()
    # person 1732309 (box from y = 0.42, 20 x 69 px) reaches the band along a few columns of its top: a small cut
    ann = next(a for a in anns if a["id"] == 1732309)
    image = images[ann["image_id"]]
    cut = cf.border_cut(cf.decode_mask(ann["segmentation"], image["height"], image["width"]), np.array(ann["bbox"]))
    assert 0 < cut < 20 / (2 * (20.37 + 69.15))
    assert screened.set_index("ann_id").loc[1732309, "truncated"]


# ----------------------------------------------------------------------------- types, areas, malformed records


def hostile_coco(tmp_path):
    """100 x 100 images 1-2 with files; every annotation but 1, 2, 3 and 4 is malformed one way."""
    for name in ("1.jpg", "2.jpg", "x.jpg"):
        (tmp_path / name).write_bytes(b"\xff\xd8")
    good_mask = np.zeros((100, 100), np.uint8)
    good_mask[20:60, 30:70] = 1  # 1600 px
    rle = mask_utils.encode(np.asfortranarray(good_mask))
    compressed = {"size": [100, 100], "counts": rle["counts"].decode()}
    column = [int(v) for v in mask_utils.decode(rle).flatten(order="F")]
    runs, current, length = [], 0, 0
    for value in column:  # uncompressed RLE by hand: alternating runs of 0 and 1, column-major
        if value == current:
            length += 1
        else:
            runs.append(length)
            current, length = value, 1
    runs.append(length)
    images = [
        {"id": 1, "file_name": "1.jpg", "width": 100, "height": 100},
        {"id": 2, "file_name": "2.jpg", "width": 100, "height": 100},
        {"id": 3, "file_name": "x.jpg", "width": 100},  # no height
        {"id": 4, "file_name": "../../x.jpg", "width": 100, "height": 100},
        {"id": 5, "file_name": "/etc/passwd", "width": 100, "height": 100},
        {"id": 6, "file_name": "x.jpg", "width": "wide", "height": 100},
        {"id": 7, "file_name": "x.jpg", "width": 10**9, "height": 10**9},
    ]

    def ann(ann_id, **fields):
        base = {"id": ann_id, "image_id": 1, "category_id": 1, "bbox": [30, 20, 40, 40],
                "segmentation": square(30, 20, 70, 60)}
        base.update(fields)
        return base

    anns = [
        ann(1),
        ann(2, image_id=2, segmentation=compressed),
        ann(3, image_id=2, segmentation={"size": [100, 100], "counts": runs}, bbox=[31, 21, 38, 38]),
        ann(4, iscrowd=0, area=1600.0),
        ann(10, iscrowd="0"),
        ann(11, iscrowd=0.5),
        ann(12, bbox="30,20,40,40"),
        ann(13, bbox=[30, None, 40, 40]),
        ann(14, image_id="abc"),
        ann(15, image_id=1.5),
        ann(10**20),
        ann(16, category_id="1"),
        ann(17, image_id=3),
        ann(18, image_id=4),
        ann(19, image_id=5),
        ann(20, image_id=6),
        ann(21, image_id=7),
        ann(22, segmentation={"size": [100, 100], "counts": "garbage!!"}),
        ann(23, segmentation={"size": [100, 100], "counts": ""}),
        ann(24, segmentation={"size": [100, 100], "counts": [10]}),
        ann(25, segmentation={"size": [100, 100], "counts": [5, -3]}),
        ann(26, segmentation={"size": [50, 50], "counts": compressed["counts"]}),
        ann(27, segmentation=[["30", "20", "70", "20", "70", "60"]]),
        ann(28, segmentation=[[30, 20, 70, float("nan"), 70, 60]]),
        ann(29, segmentation=[[1e30, 20, 70, 20, 70, 60]]),
        ann(30, segmentation={"counts": compressed["counts"]}),
        ann(31, segmentation=compressed["counts"][:5] + "\x7f" + compressed["counts"][5:]),
        ann(32), ann(32),  # the same id twice
        "not an annotation",
        ann(33, image_id=99),
        ann(34, category_id=99),
        ann(35, bbox=[30, 20, 0, 40]),
        ann(36, segmentation=[]),
        ann(37, segmentation={"size": [100, 100], "counts": compressed["counts"][:-1] + "\x60"}),
    ]
    return {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "cat"}]}


EXPECTED_REASONS = {
    1: None, 2: None, 3: None, 4: None,
    10: "bad_record", 11: "bad_record", 12: "bad_record", 13: "bad_record", 14: "bad_record", 15: "bad_record",
    16: "bad_record", 17: "bad_image_record", 18: "unsafe_file_name", 19: "unsafe_file_name",
    20: "bad_image_record", 21: "bad_image_record", 22: "bad_segmentation", 23: "bad_segmentation",
    24: "bad_segmentation", 25: "bad_segmentation", 26: "bad_segmentation", 27: "bad_segmentation",
    28: "bad_segmentation", 29: "bad_segmentation", 30: "bad_segmentation", 31: "bad_segmentation",
    33: "unknown_image", 34: "unknown_category", 35: "zero_area_box", 36: "empty_segmentation",
    37: "bad_segmentation",
}


def test_malformed_records_are_counted_never_a_crash(tmp_path):
    coco = hostile_coco(tmp_path)
    screened = cf.screen_instances(coco, {"cat"}, cf.FilterOptions(min_area=100), tmp_path)
    reasons = {int(r.ann_id): (r.reason if isinstance(r.reason, str) else None)
               for r in screened.itertuples() if not pd.isna(r.ann_id) and r.ann_id != 32}
    assert reasons == EXPECTED_REASONS
    assert screened[screened["ann_id"] == 32]["reason"].tolist() == ["duplicate_id", "duplicate_id"]
    # the string record and the id 10^20 have no usable id
    assert screened["ann_id"].isna().sum() == 2 and len(screened) == len(coco["annotations"])
    # every clean mask is the same 40 x 40 square: 1600 px whichever encoding
    clean = screened[screened["reason"].isna()].set_index("ann_id")
    assert clean.loc[[1, 2, 3, 4], "area"].tolist() == [1600.0] * 4


def test_corrupt_masks_are_named_by_decode_mask():
    with pytest.raises(SemcorrError, match="corrupt segmentation: RLE runs cover 10 pixels"):
        cf.decode_mask({"size": [10, 10], "counts": [10]}, 10, 10)
    with pytest.raises(SemcorrError, match="polygon coordinate"):
        cf.decode_mask([[1, 2, 3, math.nan, 5, 6]], 10, 10)


def test_iscrowd_string_is_not_crowd_and_too_small_uses_coco_area(tmp_path):
    (tmp_path / "1.jpg").write_bytes(b"\xff\xd8")
    base = {"image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "segmentation": square(10, 10, 50, 50)}
    coco = {"images": [{"id": 1, "file_name": "1.jpg", "width": 100, "height": 100}],
            "categories": [{"id": 1, "name": "cat"}],
            "annotations": [{**base, "id": 1, "iscrowd": "0"},  # a string: malformed, not a crowd
                            {**base, "id": 2, "iscrowd": 0, "area": 1700.0},  # mask 1600 px, COCO area 1700
                            {**base, "id": 3, "area": 1500},
                            {**base, "id": 4, "area": "big"},  # invalid: the mask's 1600 px
                            {**base, "id": 5, "area": -3},
                            {**base, "id": 6, "iscrowd": True, "area": 2000}]}
    screened = cf.screen_instances(coco, {"cat"}, cf.FilterOptions(min_area=1650, min_fill=0.0), tmp_path)
    rows = screened.set_index("ann_id")
    assert rows.loc[1, "reason"] == "bad_record"
    assert pd.isna(rows.loc[2, "reason"]) and rows.loc[2, "area"] == 1700.0
    assert rows.loc[3, "reason"] == "too_small" and rows.loc[3, "area"] == 1500.0
    assert rows.loc[4, "reason"] == "too_small" and rows.loc[4, "area"] == 1600.0
    assert rows.loc[5, "area"] == 1600.0
    assert rows.loc[6, "reason"] == "crowd" and rows.loc[6, "area"] == 2000.0


# ----------------------------------------------------------------------------- the command


def write_coco(tmp_path, coco, name="instances.json"):
    path = tmp_path / name
    path.write_text(json.dumps(coco))
    return path


def one_line_error(result, *fragments):
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in result.output


def test_command_counts_hostile_records_in_its_report(tmp_path):
    coco = hostile_coco(tmp_path)
    source = write_coco(tmp_path, coco)
    out = tmp_path.parent / f"{tmp_path.name}-store"
    result = runner.invoke(app, ["coco-filter", str(source), str(tmp_path), str(out), "--category", "cat",
                                 "--min-area", "100"])
    assert result.exit_code == 0, result.output
    report = pd.read_csv(out / "coco_filter_report.csv", index_col=0)
    expected = pd.Series([r for r in EXPECTED_REASONS.values() if r] + ["duplicate_id"] * 2).value_counts()
    expected["bad_record"] += 2  # the string record and the id 10^20
    for reason, count in expected.items():
        assert report[reason].sum() == count, reason
    saved = store.load_dataset(out)
    assert sorted(inst.id for inst in saved.instances) == [1, 2, 3, 4]
    assert all(not inst.extra_attributes.get("keypoint_provenance") for inst in saved.instances)
    assert "keypoints: none labelled" in result.output


def test_unknown_category_missing_folder_and_overlap_are_one_line_errors(tmp_path):
    coco = hostile_coco(tmp_path)
    source = write_coco(tmp_path, coco)
    out = tmp_path.parent / f"{tmp_path.name}-out"
    result = runner.invoke(app, ["coco-filter", str(source), str(tmp_path), str(out), "--category", "cat",
                                 "--category", "unicorn"])
    one_line_error(result, "'unicorn'", "it has: cat")
    result = runner.invoke(app, ["coco-filter", str(source), str(tmp_path / "nope"), str(out)])
    one_line_error(result, "nope", "does not exist")
    for target in (tmp_path, tmp_path.parent):  # the images folder itself; a folder holding the inputs
        result = runner.invoke(app, ["coco-filter", str(source), str(tmp_path), str(target), "--category", "cat"])
        one_line_error(result, "choose an output folder outside the inputs")
    assert source.is_file() and (tmp_path / "1.jpg").is_file()
    assert not out.exists()


def test_a_selection_keeping_nothing_leaves_the_existing_store_alone(tmp_path):
    coco = hostile_coco(tmp_path)
    source = write_coco(tmp_path, coco)
    out = tmp_path.parent / f"{tmp_path.name}-kept"
    assert runner.invoke(app, ["coco-filter", str(source), str(tmp_path), str(out), "--category", "cat",
                               "--min-area", "100"]).exit_code == 0
    before = (out / "annotations.json").read_bytes()
    result = runner.invoke(app, ["coco-filter", str(source), str(tmp_path), str(out), "--category", "cat",
                                 "--min-area", "5000"])
    one_line_error(result, "no image of cat passed the filter", "too_small 4", "nothing written")
    assert (out / "annotations.json").read_bytes() == before


@pytest.mark.parametrize("option, value", [
    ("--min-area", "-1"), ("--min-area", "nan"), ("--max-border-cut", "1.5"), ("--max-border-cut", "-0.1"),
    ("--max-border-cut", "nan"), ("--min-fill", "2"), ("--min-fill", "nan"), ("--max-images", "0"),
])
def test_option_ranges(tmp_path, option, value):
    source = write_coco(tmp_path, hostile_coco(tmp_path))
    out = tmp_path.parent / f"{tmp_path.name}-opt"
    result = runner.invoke(app, ["coco-filter", str(source), str(tmp_path), str(out), option, value])
    one_line_error(result, option)
    assert not out.exists()


def test_filter_options_refuse_out_of_range_values():
    for fields in ({"min_area": -1}, {"max_border_cut": 1.01}, {"min_fill": -0.5}, {"max_images": 0},
                   {"max_instances": 0}, {"seed": -1}, {"min_area": math.inf}):
        with pytest.raises(SemcorrError, match="out of range"):
            cf.FilterOptions(**fields)
    assert cf.FilterOptions(max_border_cut=1.0, min_fill=0.0, min_area=0).max_border_cut == 1.0


# ----------------------------------------------------------------------------- keypoints and provenance


def test_imported_keypoints_carry_provenance(tmp_path):
    coco = hostile_coco(tmp_path)
    source = write_coco(tmp_path, coco)
    keypoints = {"categories": [{"id": 1, "name": "cat", "keypoints": ["ear", "nose", "tail"], "skeleton": [[1, 2]]}],
                 "annotations": [
                     {"id": 1, "image_id": 1, "category_id": 1, "keypoints": [40, 30, 2, 0, 0, 0, 60, 50, 1]},
                     {"id": 2, "image_id": 2, "category_id": 1, "keypoints": ["40", "30", "2", 0, 0, 0, 0, 0, 0]},
                     {"id": 3, "image_id": 2, "category_id": 1, "keypoints": [400, 30, 2, 0, 0, 0, 0, 0, 0]},
                     {"id": 4, "image_id": 1, "category_id": 1, "keypoints": [0] * 9}]}
    kp_path = write_coco(tmp_path, keypoints, "keypoints.json")
    out = tmp_path.parent / f"{tmp_path.name}-kp"
    result = runner.invoke(app, ["coco-filter", str(source), str(tmp_path), str(out), "--category", "cat",
                                 "--min-area", "100", "--keypoints", str(kp_path)])
    assert result.exit_code == 0, result.output
    saved = {inst.id: inst for inst in store.load_dataset(out).instances}
    assert saved[1].keypoints[:, 2].tolist() == [2, 0, 1]
    assert saved[1].extra_attributes["keypoint_provenance"] == {
        "0": {"action": "imported", "round": 0, "annotator": "coco", "source": "keypoints.json"},
        "2": {"action": "imported", "round": 0, "annotator": "coco", "source": "keypoints.json"}}
    for ann_id in (2, 3, 4):  # strings, a point outside the image, nothing labelled: unlabelled, no provenance
        assert saved[ann_id].keypoints[:, 2].tolist() == [0, 0, 0]
        assert "keypoint_provenance" not in saved[ann_id].extra_attributes
    report = pd.read_csv(out / "coco_filter_report.csv", index_col=0)
    assert report.loc["cat", "bad_keypoints"] == 2
    assert "malformed keypoint records (instances kept unlabelled): 2" in result.output


def test_real_coco_person_keypoints_are_imported_with_provenance(tmp_path):
    base, _ = real_coco()
    result = commands.run_coco_filter(base / "annotations" / "instances_train2017.json", base / "images",
                                      tmp_path / "store", ["person"],
                                      keypoints_json=base / "annotations" / "person_keypoints_train2017.json")
    labelled = 0
    for inst in store.load_dataset(tmp_path / "store").instances:
        provenance = inst.extra_attributes.get("keypoint_provenance", {})
        assert sorted(map(int, provenance)) == np.flatnonzero(inst.labelled).tolist()
        assert all(p["action"] == "imported" for p in provenance.values())
        labelled += len(provenance)
    assert labelled > 50 and result.report.loc["person", "bad_keypoints"] == 0
    bare = commands.run_coco_filter(base / "annotations" / "instances_train2017.json", base / "images",
                                    tmp_path / "bare", ["person"])
    assert all(inst.labelled.sum() == 0 for inst in bare.dataset.instances)


# ----------------------------------------------------------------------------- stats on a MISC store


def test_stats_on_a_misc_store(tmp_path):
    from tests.test_coco_misc import multi_instance_store

    dataset = multi_instance_store(tmp_path)
    store.save_dataset(dataset, tmp_path)
    store.save_splits({1: "trn", 2: "trn"}, tmp_path)
    commands.run_build_pairs(tmp_path, mode="misc", threshold=0.3)
    result = runner.invoke(app, ["stats", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "MISC" in result.output and "Traceback" not in result.output
    instances = pd.read_csv(tmp_path / "stats" / "misc_instances.csv", index_col=0)
    # image 2 holds one cup, image 1 two
    assert instances.loc["cup", ["1 instance", "2 instances", "3 instances", "images"]].tolist() == [1, 1, 0, 2]
    pairs = pd.read_csv(tmp_path / "stats" / "misc_pairs.csv", index_col=0)
    # both ordered pairs: image 1 shows rim (2 cups) and handle (1 cup); image 2 all three (1 cup):
    # rim 2 x 1 + handle 1 x 1 = 3 correspondences, 2 of 3 keypoint types shared; the cups do not overlap
    assert pairs.loc["cup", ["pairs", "multi_instance_pairs", "correspondences_mean", "correspondences_max",
                             "overlap_pairs"]].tolist() == [2, 2, 3, 3, 0]
    assert pairs.loc["cup", "share_mean"] == pytest.approx(2 / 3, abs=1e-4)
    table1 = pd.read_csv(tmp_path / "stats" / "table1_difficulty.csv", index_col=0)
    assert "Viewpoint easy" not in table1.columns
    assert table1.loc["All", ["Truncation none", "Truncation src", "Truncation tgt", "Truncation both"]].sum() == 2
    assert (tmp_path / "stats" / "fig1_difficulty_pies.png").is_file()
