"""COCO curation, MISC pairs, COCO/MISC exports (round trips), PCK and mPCK."""

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from semcorr import commands, store
from semcorr.builders import coco_filter as cf
from semcorr.builders.misc_pairs import allocate, build_misc_pairs, sample_ordered_pairs
from semcorr.errors import SemcorrError
from semcorr.evaluation import metrics
from semcorr.evaluation.evaluate import evaluate_spair, identity_predictions
from semcorr.exports.coco import evaluate_keypoints, export_coco, load_coco_export
from semcorr.exports.misc import export_misc, instances_from_record, load_misc
from tests.conftest import shared_data


def square(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def filter_fixture(tmp_path):
    """Images 100x100; image 1 clean (2 cats), 2 five cats, 3 a cat beside a border-cut cat,
    4 crowd + tiny + sparse, plus broken records; 'dog' is not a wanted category."""
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 100, "height": 100} for i in (1, 2, 3, 4, 5)]
    for im in images[:4]:
        (tmp_path / im["file_name"]).write_bytes(b"\xff\xd8")
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "segmentation": square(10, 10, 50, 50)},
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [55, 55, 40, 40], "segmentation": square(55, 55, 95, 95)},
        *({"id": 10 + k, "image_id": 2, "category_id": 1, "bbox": [2 + 19 * k, 30, 16, 60],
           "segmentation": square(2 + 19 * k, 30, 18 + 19 * k, 90)} for k in range(5)),
        {"id": 20, "image_id": 3, "category_id": 1, "bbox": [30, 30, 40, 40], "segmentation": square(30, 30, 70, 70)},
        {"id": 21, "image_id": 3, "category_id": 1, "bbox": [0, 0, 60, 20], "segmentation": square(0, 0, 60, 20)},
        {"id": 30, "image_id": 4, "category_id": 1, "bbox": [0, 0, 50, 50], "segmentation": square(0, 0, 50, 50),
         "iscrowd": 1},
        {"id": 31, "image_id": 4, "category_id": 1, "bbox": [60, 60, 5, 5], "segmentation": square(60, 60, 65, 65)},
        {"id": 32, "image_id": 4, "category_id": 1, "bbox": [10, 55, 80, 40], "segmentation": square(10, 55, 30, 70)},
        {"id": 40, "image_id": 1, "category_id": 1, "segmentation": square(1, 1, 5, 5)},
        {"id": 41, "image_id": 99, "category_id": 1, "bbox": [1, 1, 4, 4], "segmentation": square(1, 1, 5, 5)},
        {"id": 42, "image_id": 1, "category_id": 77, "bbox": [1, 1, 4, 4], "segmentation": square(1, 1, 5, 5)},
        {"id": 43, "image_id": 1, "category_id": 1, "bbox": [1, 1, 0, 4], "segmentation": square(1, 1, 5, 5)},
        {"id": 44, "image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 4], "segmentation": []},
        {"id": 45, "image_id": 5, "category_id": 1, "bbox": [1, 1, 4, 4], "segmentation": square(1, 1, 5, 5)},
        {"id": 50, "image_id": 1, "category_id": 2, "bbox": [1, 1, 4, 4], "segmentation": square(1, 1, 5, 5)},
    ]
    return {"images": images, "annotations": anns,
            "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]}


def test_filter_rules_each_reason(tmp_path):
    coco = filter_fixture(tmp_path)
    options = cf.FilterOptions(min_area=100, max_border_cut=0.25, min_fill=0.2)
    screened = cf.screen_instances(coco, {"cat"}, options, tmp_path).set_index("ann_id")
    assert {k: (v if isinstance(v, str) else None) for k, v in screened["reason"].items()} == {
        1: None, 2: None, 10: None, 11: None, 12: None, 13: None, 14: None, 20: None, 21: "cut_by_border",
        30: "crowd", 31: "too_small", 32: "sparse_mask", 40: "bad_record", 41: "unknown_image",
        42: "unknown_category", 43: "zero_area_box", 44: "empty_segmentation", 45: "missing_image_file"}
    assert screened.loc[1, "area"] == 1600 and not screened.loc[1, "truncated"]
    kept, rejected = cf.select_images(screened.reset_index(), options)
    assert kept["ann_id"].tolist() == [1, 2]
    assert rejected.to_dict("records") == [
        {"image_id": 2, "category": "cat", "reason": "too_many_instances"},
        {"image_id": 3, "category": "cat", "reason": "confusing_excluded"}]
    report = cf.selection_report(screened.reset_index(), kept, rejected)
    assert report.loc["cat", ["candidate_images", "kept_images", "images_with_2", "crowd", "too_many_instances"]
                      ].tolist() == [5, 1, 1, 1, 1]


def test_balanced_pick_round_robin():
    ids = np.array([1, 2, 3, 4, 5, 6, 7])
    counts = np.array([1, 1, 1, 1, 2, 2, 3])
    picked = cf.balanced_pick(ids, counts, limit=5, seed=0)
    per_count = pd.Series(counts, index=ids).loc[picked].value_counts().to_dict()
    assert per_count == {1: 2, 2: 2, 3: 1}
    assert cf.balanced_pick(ids, counts, 5, seed=0).tolist() == picked.tolist()
    assert len(cf.balanced_pick(ids, counts, limit=50, seed=0)) == 7


def test_sampling_without_repeats_and_deterministic():
    rng = np.random.default_rng(1)
    src, trg = sample_ordered_pairs(30, 500, rng)
    assert len(set(zip(src.tolist(), trg.tolist()))) == 500 and (src != trg).all()
    assert src.max() < 30 and trg.max() < 30
    again = sample_ordered_pairs(30, 500, np.random.default_rng(1))
    assert (again[0] == src).all() and (again[1] == trg).all()
    all_src, all_trg = sample_ordered_pairs(4, 100, rng)
    assert list(zip(all_src.tolist(), all_trg.tolist())) == [(i, j) for i in range(4) for j in range(4) if i != j]
    assert allocate(10, np.array([90, 6, 20])).tolist() == [8, 0, 2]
    assert allocate(1000, np.array([90, 6, 20])).tolist() == [90, 6, 20]


def misc_units_fixture():
    """Three images of one 10-keypoint category in one split; visibility counts set by hand."""
    units = pd.DataFrame({"image_id": [1, 2, 3], "category": ["cup"] * 3, "split": ["trn"] * 3,
                          "num_instances": [2, 1, 1], "num_keypoints": [10] * 3, "mean_area": [100.0, 200.0, 50.0],
                          "truncated": [False, True, False], "occluded": [False] * 3,
                          "max_overlap": [0.25, 0.0, 0.0]})
    counts = np.zeros((3, 10), dtype=np.int16)
    counts[0, [0, 1, 2, 3]] = [2, 1, 1, 1]  # image 1: two instances, both show kp 0
    counts[1, [0, 1, 2]] = 1  # shares 3 of 10 with image 1 -> 0.3 exactly
    counts[2, [0, 5]] = 1  # shares 1 with image 1, 1 with image 2
    return units, counts


def test_share_threshold_boundary_and_denominators():
    units, counts = misc_units_fixture()
    pairs = build_misc_pairs(units, counts, threshold=0.3)
    assert list(zip(pairs.src_image_id, pairs.trg_image_id)) == [(1, 2), (2, 1)]  # 3/10 reaches 0.3
    first = pairs.iloc[0]
    assert first.shared == 3 and first.share == 0.3 and pa.array(pairs.kps_ids).to_pylist()[0] == [0, 1, 2]
    assert first.num_correspondences == 2 * 1 + 1 + 1  # kp 0: 2 x 1 instance pairs; kps 1, 2: 1 x 1
    assert (first.scale_variation, first.truncation, first.src_max_overlap) == (1, 2, 0.25)
    assert len(build_misc_pairs(units, counts, threshold=0.31)) == 0
    by_union = build_misc_pairs(units, counts, threshold=0.0, denominator="union").set_index(
        ["src_image_id", "trg_image_id"])["share"].to_dict()
    assert by_union[(1, 2)] == 0.75 and by_union[(2, 3)] == pytest.approx(1 / 4) and by_union[(1, 3)] == 0.2
    by_source = build_misc_pairs(units, counts, threshold=0.0, denominator="source").set_index(
        ["src_image_id", "trg_image_id"])["share"].to_dict()
    assert by_source[(1, 2)] == 0.75 and by_source[(2, 1)] == 1.0 and by_source[(3, 1)] == 0.5
    with pytest.raises(SemcorrError, match="--share-of"):
        build_misc_pairs(units, counts, denominator="image")


@pytest.mark.parametrize(
    ("pred", "pred_ids", "gt", "gt_ids", "radius", "expected"),
    [
        ([[0, 1], [10, 1], [50, 50]], [0, 0, 0], [[0, 0], [10, 0]], [0, 0], 2.0, (2, 1, 0)),  # more predictions
        ([[0, 1]], [0], [[0, 0], [10, 0], [20, 0]], [0, 0, 0], 2.0, (1, 0, 2)),  # fewer predictions
        ([], [], [[0, 0]], [0], 2.0, (0, 0, 1)),  # none
        ([[0, 0], [0, 0]], [0, 0], [[0, 0]], [0], 2.0, (1, 1, 0)),  # duplicates
        ([[3, 4]], [0], [[0, 0]], [0], 5.0, (1, 0, 0)),  # exactly at the radius counts
        ([[3, 4]], [0], [[0, 0]], [0], 4.999, (0, 1, 1)),
        ([[0, 0]], [1], [[0, 0]], [0], 2.0, (0, 1, 1)),  # right place, wrong keypoint id
        # greedy nearest would pair (1,0)->(0,0) and leave (3,0) with (6,0) out of reach; KM finds two
        ([[1, 0], [3, 0]], [0, 0], [[0, 0], [6, 0]], [0, 0], 3.0, (2, 0, 0)),
    ],
)
def test_mpck_hand_cases(pred, pred_ids, gt, gt_ids, radius, expected):
    assert metrics.mpck_pair(np.array(pred).reshape(-1, 2), pred_ids, np.array(gt), gt_ids, radius) == expected


def test_pair_score_and_pck_by_hand():
    assert metrics.pair_score(2, 1) == pytest.approx(2 / 3) and metrics.pair_score(0, 0) == 0.0
    pred = np.array([[0, 0], [10, 0], [0, 9.99], [5, 5]], dtype=float)
    gt = np.array([[0, 0], [0, 0], [0, 0], [0, 0]], dtype=float)
    # pair 0 holds points 0-2 (0, 10 and 9.99 from the truth); pair 1 holds point 3 (sqrt(50) = 7.07 away)
    result = metrics.pck_per_pair(pred, gt, np.array([0, 0, 0, 1]), np.array([10.0, 7.1]), 2)
    assert result.tolist() == [1.0, 1.0]
    result = metrics.pck_per_pair(pred, gt, np.array([0, 0, 0, 1]), np.array([9.995, 7.0]), 2)
    assert result[0] == pytest.approx(2 / 3) and result[1] == 0.0


def multi_instance_store(tmp_path) -> store.Dataset:
    """Two images of 'cup' (3 keypoints): image 1 holds two instances; visibilities 0, 1 and 2 all occur."""
    (tmp_path / "images").mkdir(exist_ok=True)
    for name in ("a.jpg", "b.jpg"):
        from PIL import Image

        Image.new("RGB", (100, 80)).save(tmp_path / "images" / name)
    cup = store.Category(id=3, name="cup", keypoints=("rim", "handle", "base"), skeleton=((0, 2),))
    images = {1: store.ImageInfo(1, "a.jpg", 100, 80), 2: store.ImageInfo(2, "b.jpg", 100, 80)}
    kp = store.keypoints_from_coco
    instances = [
        store.Instance(7, 1, 3, [10, 10, 30, 30], kp([12, 14, 2, 0, 0, 0, 25, 35, 1]),
                       segmentation=square(10, 10, 40, 40), area=900),
        store.Instance(8, 1, 3, [50, 10, 30, 30], kp([52, 14, 2, 70, 20, 2, 0, 0, 0]),
                       segmentation=square(50, 10, 80, 40), area=900, truncated=True),
        store.Instance(9, 2, 3, [20, 20, 40, 40], kp([22, 24, 2, 50, 30, 2, 40, 55, 2]),
                       segmentation=square(20, 20, 60, 60), area=1600),
    ]
    return store.Dataset(images=images, categories={3: cup}, instances=instances, image_root=tmp_path / "images")


def test_coco_export_round_trip_and_cocoeval(tmp_path):
    dataset = multi_instance_store(tmp_path)
    export_coco(dataset, tmp_path / "coco.json")
    back = load_coco_export(tmp_path / "coco.json")
    assert back.categories[3].keypoints == ("rim", "handle", "base") and back.categories[3].skeleton == ((0, 2),)
    for original, loaded in zip(dataset.instances, back.instances):
        assert loaded.image_id == original.image_id and loaded.id == original.id
        assert loaded.keypoints[:, 2].tolist() == original.keypoints[:, 2].tolist()
        np.testing.assert_array_equal(loaded.keypoints[:, :2], original.keypoints[:, :2])  # NaN where v = 0
    raw = json.loads((tmp_path / "coco.json").read_text())
    assert raw["annotations"][0]["keypoints"] == [12, 14, 2, 0, 0, 0, 25, 35, 1]
    assert raw["categories"][0]["oks_sigmas"] == [0.072] * 3
    perfect = [{"image_id": a["image_id"], "category_id": 3, "keypoints": a["keypoints"], "score": 1.0}
               for a in raw["annotations"]]
    assert evaluate_keypoints(tmp_path / "coco.json", perfect, "cup")["AP"] == pytest.approx(1.0)
    shifted = [{**d, "keypoints": [v + 6 if i % 3 != 2 else v for i, v in enumerate(d["keypoints"])]}
               for d in perfect]
    assert evaluate_keypoints(tmp_path / "coco.json", shifted, "cup")["AP"] < 1.0


def test_misc_export_round_trip(tmp_path):
    dataset = multi_instance_store(tmp_path)
    store.save_dataset(dataset, tmp_path)
    store.save_splits({1: "trn", 2: "trn"}, tmp_path)
    commands.run_build_pairs(tmp_path, mode="misc", threshold=0.3)
    pairs = store.load_pairs(tmp_path)
    export_misc(dataset, pairs, tmp_path / "misc")
    records = load_misc(tmp_path / "misc", "trn")
    assert [r["pair_id"] for r in records] == pairs["pair_id"].tolist()
    first = records[0]
    assert (first["src"]["image_id"], first["trg"]["image_id"]) == (1, 2)
    assert first["kps_ids"] == [0, 1]
    assert first["correspondences"] == [{"src_instance": 7, "trg_instance": 9, "kps_ids": [0]},
                                        {"src_instance": 8, "trg_instance": 9, "kps_ids": [0, 1]}]
    by_id = {inst.id: inst for inst in dataset.instances}
    for side in ("src", "trg"):
        for inst in instances_from_record(first[side]):
            original = by_id[inst.id]
            assert inst.keypoints[:, 2].tolist() == original.keypoints[:, 2].tolist()
            np.testing.assert_array_equal(inst.keypoints[:, :2], original.keypoints[:, :2])
            assert inst.bbox.tolist() == original.bbox.tolist() and inst.truncated == original.truncated
            from semcorr.builders.coco_filter import decode_mask

            assert (decode_mask(inst.segmentation, 80, 100) == decode_mask(original.segmentation, 80, 100)).all()


def test_evaluate_bad_predictions_name_the_pair(synth_store):
    dataset = store.load_dataset(synth_store)
    pairs = store.load_pairs(synth_store)
    test = pairs[(pairs.split == "test").to_numpy()].reset_index(drop=True)
    with pytest.raises(SemcorrError, match=r"pair 999999: no such pair"):
        evaluate_spair(dataset, test, {"pairs": {"999999": {"trg_kps": [[1, 2]]}}})
    pair_id = int(test.pair_id[0])
    with pytest.raises(SemcorrError, match=rf"pair {pair_id}: 1 predicted points for \d+ keypoints"):
        evaluate_spair(dataset, test, {"pairs": {str(pair_id): {"trg_kps": [[1, 2]]}}})
    perfect = {"pairs": {}}
    by_id = {inst.image_id: inst for inst in dataset.instances}
    for row, ids in zip(test.itertuples(), pa.array(test.kps_ids).to_pylist()):
        perfect["pairs"][str(row.pair_id)] = {"trg_kps": by_id[row.trg_image_id].keypoints[ids, :2].tolist()}
    result = evaluate_spair(dataset, test, perfect)
    assert (result.tables["pck_by_category"] == 100).all().all()
    baseline = evaluate_spair(dataset, test, identity_predictions(dataset, test))
    assert baseline.tables["pck_by_category"].loc["All", "PCK@0.1"] < 50


def test_real_coco_end_to_end(tmp_path):
    base = shared_data("coco-mini-train")
    out = tmp_path / "store"
    result = commands.run_coco_filter(base / "annotations" / "instances_train2017.json", base / "images", out,
                                      keypoints_json=base / "annotations" / "person_keypoints_train2017.json")
    report = result.report
    assert report.loc["person", "kept_images"] > 0
    assert (report[[f"images_with_{k}" for k in range(1, 5)]].sum(axis=1) == report["kept_images"]).all()
    commands.run_split(out, (0.5, 0.2, 0.3), seed=0)
    pairs = commands.run_build_pairs(out, mode="misc").pairs
    person = pairs[(pairs.category == "person").to_numpy()]
    assert len(person) > 0 and ((person.src_instances > 1) | (person.trg_instances > 1)).any()
    assert (person.num_correspondences > person.shared).any()  # many-to-many
    paths = commands.run_export_coco(out, tmp_path / "coco.json")
    raw = json.loads(paths[0].read_text())
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "keypoints": a["keypoints"], "score": 1.0}
            for a in raw["annotations"] if a["num_keypoints"] > 0]
    assert evaluate_keypoints(paths[0], dets, "person")["AP"] == pytest.approx(1.0)
    commands.run_export_misc(out, tmp_path / "misc")
    assert len(load_misc(tmp_path / "misc")) == len(pairs)
    evaluation, _ = commands.run_evaluate(out, None, "identity", "all", (0.05, 0.1, 0.15, 1.0), "bbox", None)
    table = evaluation.tables["mpck_by_category"]
    assert 0 <= table.loc["All", "mPCK@0.1"] <= table.loc["All", "mPCK@1"] <= 100


def test_viewpoint_from_keypoints_on_synthetic_truth(store_copy):
    from semcorr.builders.viewpoint import fit_weak_perspective

    truth = {inst.id: inst.azimuth_bin for inst in store.load_dataset(store_copy).instances}
    dataset = store.load_dataset(store_copy)
    for inst in dataset.instances:
        inst.azimuth_bin = None
    store.save_dataset(dataset, store_copy)
    table = commands.run_viewpoint(store_copy, [])
    estimated = {inst.id: inst.azimuth_bin for inst in store.load_dataset(store_copy).instances}
    tried = table["ann_id"].tolist()
    assert len(tried) >= 0.8 * len(truth)  # instances with >= 4 visible keypoints
    distance = np.array([min((estimated[i] - truth[i]) % 8, (truth[i] - estimated[i]) % 8) for i in tried])
    assert (distance == 0).mean() >= 0.6 and (distance <= 1).mean() >= 0.9, np.bincount(distance)
    # an exact weak-perspective projection is recovered exactly
    rng = np.random.default_rng(0)
    xyz = rng.normal(size=(6, 3))
    az = np.radians(100.0)
    right, up = np.array([np.cos(az), 0, -np.sin(az)]), np.array([0.0, 1.0, 0.0])
    xy = 50 * np.stack([xyz @ right, -(xyz @ up)], axis=1) + [200, 100]
    rotation, scale, _, rms = fit_weak_perspective(xyz, xy)
    assert scale == pytest.approx(50) and rms == pytest.approx(0, abs=1e-9)
    from semcorr.builders.viewpoint import estimate_viewpoint

    keypoints = np.column_stack([xy, np.full(6, 2.0)])
    assert estimate_viewpoint(xyz, keypoints, np.array([0, 0, 100, 100])).azimuth_deg == pytest.approx(100.0)


def test_mpck_batch_equals_per_pair_kuhn_munkres():
    rng = np.random.default_rng(4)
    pairs = 400
    pred = [(p, int(rng.integers(0, 3)), *rng.uniform(0, 20, 2)) for p in range(pairs) for _ in range(rng.integers(0, 12))]
    gt = [(p, int(rng.integers(0, 3)), *rng.uniform(0, 20, 2)) for p in range(pairs) for _ in range(rng.integers(0, 12))]
    pred, gt = np.array(pred), np.array(gt)
    radius = rng.uniform(1, 6, pairs)
    tp, fp, fn = metrics.mpck_batch(pred[:, 0], pred[:, 1].astype(int), pred[:, 2:], gt[:, 0], gt[:, 1].astype(int),
                                    gt[:, 2:], radius, pairs)
    for p in range(pairs):
        mine, theirs = pred[pred[:, 0] == p], gt[gt[:, 0] == p]
        assert (tp[p], fp[p], fn[p]) == metrics.mpck_pair(mine[:, 2:], mine[:, 1], theirs[:, 2:], theirs[:, 1],
                                                          radius[p])
    assert (np.bincount(pred[:, 1].astype(int) + 3 * pred[:, 0].astype(int)) > 4).any()  # the fallback path ran


def test_coco_filter_gives_a_designed_schema_and_export_takes_sigmas(tmp_path):
    from semcorr.keypoint_schema import KeypointSchema, save_schema

    coco = filter_fixture(tmp_path)
    (tmp_path / "instances.json").write_text(json.dumps(coco))
    schema = save_schema(KeypointSchema("cat", ("ear", "tail", "nose"), np.eye(3), flip_pairs=()), tmp_path / "s.json")
    out = tmp_path / "store"
    result = commands.run_coco_filter(tmp_path / "instances.json", tmp_path, out, ["cat"],
                                      options=cf.FilterOptions(min_area=100), schemas=[schema])
    category = result.dataset.categories[1]
    assert category.keypoints == ("ear", "tail", "nose")
    assert all((inst.keypoints[:, 2] == 0).all() and inst.keypoints.shape == (3, 3) for inst in result.dataset.instances)
    commands.run_export_coco(out, tmp_path / "a.json", ["cat=0.05,0.06,0.07"])
    assert json.loads((tmp_path / "a.json").read_text())["categories"][0]["oks_sigmas"] == [0.05, 0.06, 0.07]
    commands.run_export_coco(out, tmp_path / "b.json", ["cat=0.1"])
    assert json.loads((tmp_path / "b.json").read_text())["categories"][0]["oks_sigmas"] == [0.1, 0.1, 0.1]
    with pytest.raises(SemcorrError, match=r"--sigmas 'cat=0.1,0.2': 2 values for 3 keypoints"):
        commands.run_export_coco(out, tmp_path / "c.json", ["cat=0.1,0.2"])
    assert not (tmp_path / "c.json").exists()


def test_mask_iou_matching_by_hand():
    a = np.zeros((10, 10), bool)
    a[:5, :5] = True  # 25 px
    b = np.zeros((10, 10), bool)
    b[:5, :4] = True  # 20 px inside a: IoU 0.8
    c = np.zeros((10, 10), bool)
    c[6:, 6:] = True  # 16 px
    # predictions [b, c] matched to truths [c, a]: c-c 1.0, b-a 0.8 -> mean 0.9
    assert metrics.mask_iou_matched([b, c], [c, a]) == pytest.approx(0.9)
    assert metrics.mask_iou_matched([b], [c, a]) == pytest.approx(0.4)  # the unmatched truth counts 0
    assert metrics.mask_iou_matched([], [a]) == 0.0
