"""The SPair-71k export read back the way public SPair loaders read it, field by field."""

import glob
import json
import os

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from semcorr import commands, store
from semcorr.errors import SemcorrError
from semcorr.exports.spair import load_spair, pixel_bndbox, safe_category_names

POSES = {"Unspecified", "Frontal", "Left", "Rear", "Right"}


@pytest.fixture(scope="module")
def exported(synth_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "spair"
    commands.run_export_spair(synth_store, out)
    return out


def test_layout_lists_parse_like_the_loaders(exported, synth_store):
    pairs = store.load_pairs(synth_store)
    categories = sorted(os.listdir(exported / "JPEGImages"))
    assert categories == sorted(os.listdir(exported / "ImageAnnotation")) == ["airplane", "car", "chair"]
    for name in categories:  # no category is a substring of another
        assert not any(name in other for other in categories if other != name)
    for split in ("trn", "val", "test"):
        text = (exported / "Layout" / "large" / f"{split}.txt").read_text()
        assert text.endswith("\n")
        lines = text.split("\n")[:-1]  # the way HPF-style loaders drop the last empty element
        assert len(lines) == (pairs["split"] == split).sum()
        for line in lines:
            pair_id, src, rest = line.split("-")
            trg, category = rest.split(":")
            assert pair_id.isdigit() and len(pair_id) == 6
            assert category in categories
            assert os.path.isfile(exported / "JPEGImages" / category / f"{src}.jpg")
            assert os.path.isfile(exported / "JPEGImages" / category / f"{trg}.jpg")
            assert glob.glob(str(exported / "PairAnnotation" / split / f"{line}.json"))
        for category in categories:  # glob by category and substring match both find pairs
            by_glob = glob.glob(str(exported / "PairAnnotation" / split / f"*:{category}.json"))
            by_substring = [f for f in os.listdir(exported / "PairAnnotation" / split) if category in f]
            assert len(by_glob) == len(by_substring) > 0


def test_every_pair_field_and_invariant(exported, synth_store):
    dataset = store.load_dataset(synth_store)
    pairs = store.load_pairs(synth_store).set_index("pair_id")
    kps_ids = dict(zip(pairs.index, pa.array(pairs["kps_ids"]).to_pylist()))
    read = load_spair(exported)
    checked = 0
    for split, records in read.items():
        for rec in records:
            row = pairs.loc[rec["pair_id"]]
            assert isinstance(rec["pair_id"], int) and row.split == split
            category = rec["category"]
            src_ann = json.loads((exported / "ImageAnnotation" / category / rec["src_imname"].replace(".jpg", ".json")).read_text())
            trg_ann = json.loads((exported / "ImageAnnotation" / category / rec["trg_imname"].replace(".jpg", ".json")).read_text())
            for side, ann, image_id in (("src", src_ann, row.src_image_id), ("trg", trg_ann, row.trg_image_id)):
                image = dataset.images[int(image_id)]
                with Image.open(exported / "JPEGImages" / category / rec[f"{side}_imname"]) as jpeg:
                    assert jpeg.format == "JPEG"
                    assert rec[f"{side}_imsize"] == [jpeg.width, jpeg.height, 3]
                assert rec[f"{side}_imsize"] == [ann["image_width"], ann["image_height"], 3] == [image.width, image.height, 3]
                assert rec[f"{side}_bndbox"] == ann["bndbox"]
                assert rec[f"{side}_pose"] in POSES and rec[f"{side}_pose"] == ann["pose"]
                assert len(ann["kps"]) >= 30 and set(ann["kps"]) >= {str(i) for i in range(30)}
                kps = rec[f"{side}_kps"]
                assert len(kps) >= 1
                for (x, y), key in zip(kps, rec["kps_ids"]):
                    assert isinstance(x, int) and isinstance(y, int)
                    assert 0 <= x < image.width and 0 <= y < image.height
                    assert ann["kps"][key] == [x, y]
            assert rec["kps_ids"] == [str(k) for k in kps_ids[rec["pair_id"]]]
            assert len(rec["src_kps"]) == len(rec["trg_kps"]) == len(rec["kps_ids"])
            assert rec["mirror"] == 0
            for field in ("viewpoint_variation", "scale_variation", "truncation", "occlusion"):
                assert isinstance(rec[field], int) and rec[field] == int(getattr(row, field))
            assert 0 <= rec["viewpoint_variation"] <= 2 and 0 <= rec["truncation"] <= 3
            assert rec["filename"].startswith(f"{rec['pair_id']:06d}-")
            checked += 1
    assert checked == len(pairs)


def test_image_annotation_matches_store(exported, synth_store):
    dataset = store.load_dataset(synth_store)
    for inst in dataset.instances[:10]:
        image = dataset.images[inst.image_id]
        category = dataset.categories[inst.category_id].name
        path = exported / "ImageAnnotation" / category / image.file_name.replace(".jpg", ".json")
        if not path.exists():
            continue  # an image in no pair is not exported
        ann = json.loads(path.read_text())
        assert ann["azimuth_id"] == inst.azimuth_bin
        assert ann["truncated"] == int(inst.truncated) and ann["occluded"] == int(inst.occluded)
        for k, (x, y, v) in enumerate(inst.keypoints):
            assert ann["kps"][str(k)] == ([int(x), int(y)] if v == 2 else None)
        seg = np.array(Image.open(exported / "Segmentation" / category / image.file_name.replace(".jpg", ".png")))
        assert (seg > 0).sum() == inst.area


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (["car", "chair"], {"car": "car", "chair": "chair"}),
        (["tv/monitor", "potted plant"], {"tv/monitor": "tv_monitor", "potted plant": "potted_plant"}),
        (["car", "sidecar"], {"car": "car_1", "sidecar": "sidecar"}),
        (["cat", "cat:2"], {"cat": "cat_1", "cat:2": "cat2"}),
    ],
)
def test_safe_category_names(names, expected):
    mapping = safe_category_names(names)
    assert mapping == expected
    values = list(mapping.values())
    assert not any(a in b for a in values for b in values if a != b)


def test_pixel_bndbox():
    assert pixel_bndbox(np.array([10.0, 20.0, 5.0, 6.0]), 100, 100) == [10, 20, 14, 25]
    assert pixel_bndbox(np.array([95.5, 0.0, 10.0, 1.0]), 100, 100) == [95, 0, 99, 0]


def test_category_without_pairs_in_a_split_is_refused_and_nothing_written(store_copy, tmp_path):
    pairs = store.load_pairs(store_copy)
    store.save_pairs(pairs[~((pairs.category == "car") & (pairs.split == "val"))], store_copy)
    with pytest.raises(SemcorrError, match=r"category 'car' has no pairs in split val"):
        commands.run_export_spair(store_copy, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name != "dataset"] == []
