"""The full-scale benchmark's generator and the bulk fast paths, at a small size: the generator's records
are what COCO and the store hold, and every fast path agrees with the plain definition it replaces."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from semcorr import coco_schema, store
from semcorr.builders import coco_filter as cf
from semcorr.errors import SemcorrError

ROOT = Path(__file__).resolve().parents[1]


def load_bench():
    """benchmarks/bench_full_scale.py as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("bench_full_scale", ROOT / "benchmarks" / "bench_full_scale.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return load_bench()


@pytest.fixture(scope="module")
def coco(bench):
    return bench.make_instances(images=60, annotations=1500, seed=2)


def test_instances_have_the_coco_shape_and_are_seeded(bench, coco):
    assert len(coco["images"]) == 60 and len(coco["annotations"]) == 1500 and len(coco["categories"]) == 80
    assert json.dumps(bench.make_instances(images=60, annotations=1500, seed=2)) == json.dumps(coco)
    kinds = {"crowd": 0, "rle": 0, "polygon": 0}
    sizes = {im["id"]: (im["height"], im["width"]) for im in coco["images"]}
    for ann in coco["annotations"]:
        height, width = sizes[ann["image_id"]]
        seg = ann["segmentation"]
        assert cf.segmentation_problem(seg, height, width) is None
        if ann["iscrowd"]:
            kinds["crowd"] += 1
            assert isinstance(seg["counts"], list) and sum(seg["counts"]) == height * width
        elif isinstance(seg, dict):
            kinds["rle"] += 1
        else:
            kinds["polygon"] += 1
    assert all(kinds.values()) and kinds["polygon"] > 0.9 * len(coco["annotations"])


def test_mask_measures_match_decoding_every_mask(coco):
    sizes = {im["id"]: (im["height"], im["width"]) for im in coco["images"]}
    items = [(a["segmentation"], *sizes[a["image_id"]], a["bbox"]) for a in coco["annotations"]]
    fast = cf.mask_measures(items)
    for (seg, height, width, bbox), (area, cut) in zip(items, fast):
        mask = cf.decode_mask(seg, height, width)
        assert area == float(mask.sum())
        assert cut == cf.border_cut(mask, np.asarray(bbox, dtype=np.float64))
    assert any(cut > 0 for _, cut in fast) and any(cut == 0 for _, cut in fast)


def test_store_loads_and_saves_byte_identically(bench, tmp_path):
    raw = bench.make_store(instances=300, categories=5, seed=4)
    bench.placeholder_images(tmp_path / "images", raw["images"])
    bench.write_json(tmp_path / "annotations.json", raw)
    dataset = store.load_dataset(tmp_path)
    assert len(dataset.instances) == 300 and len(dataset.categories) == 5
    assert {len(dataset.categories[i.category_id].keypoints) == len(i.keypoints) for i in dataset.instances} == {True}
    store.save_dataset(dataset, tmp_path / "copy")
    assert (tmp_path / "copy" / "annotations.json").read_bytes() == (tmp_path / "annotations.json").read_bytes()


GOOD = {"id": 1, "image_id": 2, "category_id": 3, "bbox": [1, 2.5, 3, 4], "keypoints": [1.0, 2, 2, 0, 0, 0],
        "area": 10, "iscrowd": 0, "segmentation": [[0, 0, 1, 0, 1, 1]], "attributes": {"source": "x"}}


@pytest.mark.parametrize("change", [
    {"id": True}, {"id": "1"}, {"id": -1}, {"bbox": [1, 2, 0, 4]}, {"bbox": [1, 2, 3, float("nan")]},
    {"bbox": [1, 2, 3]}, {"keypoints": [1, 2, True]}, {"area": -1}, {"iscrowd": 2}, {"iscrowd": 0.0},
    {"segmentation": [[0, 0, 1, 0, 1]]}, {"segmentation": {"size": [2, 2], "counts": [4]}},
    {"attributes": []}, {"num_keypoints": -1},
])
def test_quick_annotation_leaves_every_doubtful_record_to_the_model(change):
    assert coco_schema.quick_annotation(GOOD)
    coco_schema.RawAnnotation.model_validate(GOOD)
    assert not coco_schema.quick_annotation({**GOOD, **change})


@pytest.mark.parametrize("name, quick", [("a/b_1.jpg", True), ("../x.jpg", False), ("/abs.jpg", False),
                                         (".hidden.jpg", False), ("a//b.jpg", False), ("C:x.jpg", False)])
def test_quick_image_accepts_only_plainly_safe_names(name, quick):
    assert coco_schema.quick_image({"id": 1, "file_name": name, "width": 2, "height": 2}) is quick


def test_bulk_pair_check_finds_the_first_bad_pair(tmp_path):
    dataset = store.Dataset(
        images={1: store.ImageInfo(1, "a.jpg", 10, 10), 2: store.ImageInfo(2, "b.jpg", 10, 10)},
        categories={1: store.Category(1, "cat", ("a", "b", "c"))},
        instances=[store.Instance(i, i, 1, [0, 0, 1, 1], np.zeros((3, 3))) for i in (1, 2)],
        image_root=tmp_path)
    pairs = pd.DataFrame({"pair_id": [1, 2, 3], "category": ["cat"] * 3, "split": ["trn"] * 3,
                          "src_image_id": [1, 2, 1], "trg_image_id": [2, 1, 2], "kps_ids": [[0, 2], [1, 3], [5]],
                          "src_instances": [1] * 3, "trg_instances": [1] * 3, "shared": [2, 2, 1],
                          "share": [1.0] * 3, "num_correspondences": [2, 2, 1]})
    assert store.suspect_pairs(pairs, pairs["kps_ids"].tolist(), dataset).tolist() == [1, 2]
    with pytest.raises(SemcorrError, match=r"pair_id=2: kps_ids \[1, 3\] are not keypoint indexes 0..2"):
        store.check_pairs(pairs, tmp_path / "pairs.parquet", dataset)
