"""Regression tests for the issue-15 fast paths (store, coco_schema, atomic, exports/coco, builders).

Each test puts a fast path next to a plain reference written here, apart from the code under
test: Python's `round`, a full `pycocotools.mask.decode`, the per-record pydantic loader loop
the store had before, brute-force IoUs, the numpy `interleave_assign` of before, a plain
concatenation. The comment above each test says which independent value it checks, so each
can fail when the fast path drifts from the simple behaviour.

The four divergences found while writing these (an odd polygon shifting later point boxes in
`misc_units`, scalar Arrow and nullable integer columns in the pairs export, a 400-digit integer
in a polygon) were fixed; their tests stay as plain regression tests.
"""

from __future__ import annotations

import copy
import json
import math
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from pycocotools import mask as mask_utils

from semcorr import atomic, coco_schema, store
from semcorr.builders import coco_filter, misc_pairs, splits
from semcorr.errors import SemcorrError
from semcorr.exports import coco as coco_export
from semcorr.store import Category, Dataset, ImageInfo, Instance

# ---------------------------------------------------------------------------- helpers


def float_bits(value: float) -> bytes | str:
    """The exact double (sign of zero included); every NaN the same."""
    return "nan" if math.isnan(value) else struct.pack("<d", value)


def ref_instance_to_coco(inst: Instance) -> dict:
    """The annotation record `save_dataset` wrote before issue 15 (per instance, Python `round`)."""
    attributes = dict(inst.extra_attributes)
    attributes.update({"azimuth_bin": inst.azimuth_bin, "truncated": bool(inst.truncated),
                       "occluded": bool(inst.occluded)})
    keypoints = []
    for x, y, v in np.asarray(inst.keypoints, dtype=np.float64).tolist():
        keypoints.extend((0, 0, 0) if v == 0 else (round(float(x), 2), round(float(y), 2), int(v)))
    return {
        "id": inst.id,
        "image_id": inst.image_id,
        "category_id": inst.category_id,
        "bbox": [round(float(v), 2) for v in inst.bbox],
        "area": round(float(inst.area), 2),
        "iscrowd": int(inst.iscrowd),
        "segmentation": inst.segmentation if inst.segmentation is not None else [],
        "keypoints": keypoints,
        "num_keypoints": int((np.asarray(inst.keypoints)[:, 2] > 0).sum()),
        "attributes": attributes,
    }


def ref_coco(dataset: Dataset) -> dict:
    coco = store.dataset_to_coco(dataset, annotations=False)  # images/categories/info: unchanged code
    coco["annotations"] = [ref_instance_to_coco(inst) for inst in dataset.instances]
    return coco


def ref_store_text(dataset: Dataset) -> str:
    """What `atomic.write_json(path, dataset_to_coco(dataset))` wrote before: one json.dumps."""
    return json.dumps(ref_coco(dataset), ensure_ascii=False, allow_nan=False) + "\n"


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


CATEGORIES = {
    1: Category(id=1, name="cup", keypoints=("rim", "handle", "base")),
    2: Category(id=2, name="fork", keypoints=("tip", "end")),
    3: Category(id=3, name="blob", keypoints=()),
}
IMAGES = {1: ImageInfo(1, "a.jpg", 100, 80), 2: ImageInfo(2, "b.jpg", 60, 60), 3: ImageInfo(3, "c.jpg", 1, 1)}


def rle_of(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


# ---------------------------------------------------------------------------- 1. round2 and the saved text

ROUND_EDGES = [
    0.0, -0.0, 0.005, 0.015, 0.025, 0.035, 0.045, 0.125, 0.375, 1.005, 1.015, 1.025, 2.675, 2.665, 9.995, 99.995,
    1234.565, -0.005, -0.015, -2.675, -1.005, -0.125, 0.004999999999999999, 0.0050000000000000001, 1e-9, -1e-9,
    1e-5, 1.5e-5, 4.9e-3, 5e-3, 5.1e-3, 6e-3, -4.9e-3, -5e-3, 1e-4, 9.999e-5, 0.01, 0.1, 0.3, 1 / 3, 2 / 3,
    19.99, 639.04, 0.3, 1e15 + 0.125, 2.0**45 + 2.0**-6, 2.0**45 + 3 * 2.0**-7, 2.0**46 + 2.0**-6, 2.0**52 + 0.5,
    2.0**53 - 1, 1e16, 1e22, 1e300, -1e300, 1.7976931348623157e308, -1.7976931348623157e308, 5e-324, -5e-324,
    2.2250738585072014e-308, math.inf, -math.inf, math.nan,
]


def _random_floats(kind: str) -> np.ndarray:
    rng = np.random.default_rng(15)
    if kind == "ties":  # x.xx5: every value halfway between two 2-decimal numbers, as decimals
        return np.arange(-40001, 40001, 2) / 200.0
    if kind == "three_decimals":
        return rng.integers(-10**7, 10**7, 4000) / 1000.0
    if kind == "tiny":  # 1e-9 .. 1e-4, both signs
        return np.exp(rng.uniform(np.log(1e-9), np.log(1e-4), 4000)) * rng.choice([-1.0, 1.0], 4000)
    if kind == "pixels":
        return rng.uniform(-50, 700, 4000)
    if kind == "large":
        return np.exp(rng.uniform(np.log(1e6), np.log(1e300), 4000)) * rng.choice([-1.0, 1.0], 4000)
    if kind == "few_fraction_bits":  # 2^e + k ulp for e where an ulp is near 0.01 (round is not idempotent there)
        out = [2.0**e + k * np.spacing(2.0**e) for e in range(40, 54) for k in range(-60, 60)]
        return np.array(out + [-v for v in out])
    if kind == "random_bits":
        bits = rng.integers(0, 2**64, 6000, dtype=np.uint64, endpoint=False).view(np.float64)
        return bits
    raise AssertionError(kind)


# Independent value: Python's round(v, 2) of each element, compared bit for bit (sign of zero included).
@pytest.mark.parametrize("kind", ["edges", "ties", "three_decimals", "tiny", "pixels", "large", "few_fraction_bits",
                                  "random_bits"])
def test_round2_equals_python_round(kind):
    values = np.array(ROUND_EDGES) if kind == "edges" else _random_floats(kind)
    with np.errstate(over="ignore", invalid="ignore"):
        got = store.round2(values).tolist()
    expected = [v if not math.isfinite(v) else round(v, 2) for v in values.tolist()]
    wrong = [(v, g, e) for v, g, e in zip(values.tolist(), got, expected) if float_bits(g) != float_bits(e)]
    assert not wrong, f"round2 differs from round(v, 2) for (value, round2, round): {wrong[:5]}"


def _save_dataset(instances: list[Instance]) -> Dataset:
    return Dataset(images=dict(IMAGES), categories=dict(CATEGORIES), instances=instances, image_root=Path("images"),
                   info={"description": "fast paths ü", "image_root": "images"})


def _tricky_instances() -> list[Instance]:
    """Instances whose numbers sit on the rounding edges, with every optional field in its odd shapes."""
    values = [v for v in ROUND_EDGES if math.isfinite(v)]
    out = []
    for i in range(12):
        x = values[i % len(values)]
        y = values[(3 * i + 1) % len(values)]
        keypoints = [[x, y, 2], [np.nan, np.nan, 0], [values[(i + 5) % len(values)], 1.005, 1]]
        out.append(Instance(
            id=100 + i, image_id=1 + i % 2, category_id=1, bbox=[x, y, 1.005 + i, 2.675 + i],
            keypoints=keypoints, segmentation=[[0.005, 0.015, 10.125, 0.0, 5.5, 7.775]] if i % 3 == 0 else None,
            area=[0.005, 2.675, 1e-5, 12, -0.0, 1e22][i % 6], azimuth_bin=None if i % 4 == 0 else i % 8,
            truncated=bool(i % 2), occluded=i % 3 == 1, iscrowd=i % 5 == 0,
            extra_attributes={"source": "hand ✓", "score": 0.125} if i % 2 else {}))
    out.append(Instance(id=200, image_id=2, category_id=2, bbox=[1, 2, 3, 4],
                        keypoints=[[0.5, 0.5, 0], [59.995, 0.0, 2]], area=12.0,
                        segmentation={"size": [60, 60], "counts": rle_of(np.eye(60, dtype=bool))["counts"]}))
    out.append(Instance(id=201, image_id=3, category_id=3, bbox=[0, 0, 1, 1], keypoints=np.zeros((0, 3)), area=1.0))
    out.append(Instance(id=202, image_id=1, category_id=1, bbox=[-0.0, 0.0, 1e-9, 1e300], keypoints=np.zeros((3, 3)),
                        segmentation={}, area=0.0))
    return out


# Independent value: json.dumps (ensure_ascii=False, allow_nan=False) of the records made per instance with
# Python's round(v, 2), as `atomic.write_json` wrote the store before; for several chunk sizes (chunk joins).
@pytest.mark.parametrize("chunk", [1, 2, 5, 50_000])
@pytest.mark.parametrize("count", [0, 1, 3, 15])
def test_saved_store_text_is_one_json_dumps(tmp_path, monkeypatch, chunk, count):
    monkeypatch.setattr(store, "ANNOTATION_CHUNK", chunk)
    dataset = _save_dataset(_tricky_instances()[:count])
    store.save_dataset(dataset, tmp_path)
    assert (tmp_path / "annotations.json").read_text(encoding="utf-8") == ref_store_text(dataset)
    assert listing(tmp_path) == ["annotations.json"]  # no staging file left


# Independent value: the per-instance records (`ref_instance_to_coco`), as JSON text so that int / float and
# -0.0 / 0.0 differences show.
def test_dataset_to_coco_annotations_equal_per_instance_records():
    dataset = _save_dataset(_tricky_instances())
    got = store.dataset_to_coco(dataset)["annotations"]
    expected = ref_coco(dataset)["annotations"]
    for a, b in zip(got, expected, strict=True):
        assert json.dumps(a, ensure_ascii=False) == json.dumps(b, ensure_ascii=False)


# Independent value: old `export_coco` (one dataset_to_coco, info.image_root, oks_sigmas, {} masks as [],
# one json.dumps) and its sidecar (one json.dumps of pandas' records of the whole pairs table).
@pytest.mark.parametrize(("annotation_chunk", "pair_chunk"), [(2, 3), (50_000, 50_000)])
def test_export_coco_text_equals_old_export(tmp_path, monkeypatch, annotation_chunk, pair_chunk):
    monkeypatch.setattr(store, "ANNOTATION_CHUNK", annotation_chunk)
    monkeypatch.setattr(coco_export, "PAIR_CHUNK", pair_chunk)
    dataset = _save_dataset(_tricky_instances())
    pairs = _pairs_table(11)
    out = tmp_path / "export" / "coco.json"
    written = coco_export.export_coco(dataset, out, pairs, sigmas={"fork": [0.5, 0.25]})
    assert written == [out, out.with_name("coco.pairs.json")]

    coco = ref_coco(dataset)
    coco["info"] = {**coco["info"], "image_root": str(dataset.image_root)}
    for category in coco["categories"]:
        chosen = {"fork": [0.5, 0.25]}.get(category["name"]) or coco_export.default_sigmas(
            category["name"], len(category["keypoints"]))
        category["oks_sigmas"] = [float(s) for s in chosen]
    for ann in coco["annotations"]:
        if isinstance(ann["segmentation"], dict) and not ann["segmentation"]:
            ann["segmentation"] = []
    assert out.read_text(encoding="utf-8") == json.dumps(coco, ensure_ascii=False, allow_nan=False) + "\n"
    sidecar = {"annotations": "coco.json", "pairs": json.loads(_old_pair_records(pairs))}
    assert written[1].read_text(encoding="utf-8") == json.dumps(sidecar, ensure_ascii=False, allow_nan=False) + "\n"
    empty = coco_export.export_coco(dataset, tmp_path / "e.json", pairs.iloc[:0])[1]
    assert empty.read_text(encoding="utf-8") == '{"annotations": "e.json", "pairs": []}\n'


# Independent value: json.dumps refuses NaN / infinity (ValueError); the store written before the failed save
# stays byte for byte, and no staging file is left.
@pytest.mark.parametrize("field", ["bbox", "keypoint", "area", "keypoint_inf"])
def test_save_of_non_finite_numbers_fails_like_json_dumps_and_keeps_old_file(tmp_path, monkeypatch, field):
    monkeypatch.setattr(store, "ANNOTATION_CHUNK", 2)
    good = _tricky_instances()
    store.save_dataset(_save_dataset(good), tmp_path)
    before = (tmp_path / "annotations.json").read_bytes()
    bad = copy.deepcopy(good)
    target = bad[7]  # in the fourth chunk: some text was already written when it fails
    if field == "bbox":
        target.bbox[1] = np.nan
    elif field == "keypoint":
        target.keypoints[0] = [np.nan, 3.0, 2]
    elif field == "keypoint_inf":
        target.keypoints[2] = [1.0, np.inf, 1]
    else:
        target.area = math.inf
    with pytest.raises(ValueError) as expected:
        json.dumps(ref_coco(_save_dataset(bad)), allow_nan=False)
    with pytest.raises(ValueError) as got:
        store.save_dataset(_save_dataset(bad), tmp_path)
    assert str(got.value) == str(expected.value)
    assert (tmp_path / "annotations.json").read_bytes() == before
    assert listing(tmp_path) == ["annotations.json"]


# ---------------------------------------------------------------------------- 2. border cut from the RLE runs


def decoded_border_count(mask: np.ndarray, band: int) -> int:
    """`border_cut`'s numerator from the pixels: columns / rows with a mask pixel in each edge's band."""
    return (int(mask[:band].any(axis=0).sum()) + int(mask[-band:].any(axis=0).sum())
            + int(mask[:, :band].any(axis=1).sum()) + int(mask[:, -band:].any(axis=1).sum()))


def _structured_masks() -> list[tuple[str, np.ndarray]]:
    out = []
    for h, w in ((1, 1), (1, 7), (7, 1), (2, 2), (3, 5), (9, 4), (12, 12)):
        empty = np.zeros((h, w), dtype=bool)
        out.append((f"empty {h}x{w}", empty))
        out.append((f"full {h}x{w}", ~empty))
        for name, (r, c) in {"top-left": (0, 0), "top-right": (0, w - 1), "bottom-left": (h - 1, 0),
                             "bottom-right": (h - 1, w - 1), "centre": (h // 2, w // 2)}.items():
            one = empty.copy()
            one[r, c] = True
            out.append((f"pixel {name} {h}x{w}", one))
        for r in range(h):  # one full row, at every height
            row = empty.copy()
            row[r] = True
            out.append((f"row {r} {h}x{w}", row))
        for c in range(w):
            col = empty.copy()
            col[:, c] = True
            out.append((f"column {c} {h}x{w}", col))
        if h >= 3 and w >= 3:
            inner = empty.copy()
            inner[1:-1, 1:-1] = True
            out.append((f"inner {h}x{w}", inner))
            frame = ~inner
            out.append((f"frame {h}x{w}", frame))
            wrap = empty.copy()  # runs that wrap from the bottom of one column to the top of the next
            wrap[-1, 0] = wrap[0, 1] = True
            out.append((f"wrap {h}x{w}", wrap))
    return out


STRUCTURED_MASKS = _structured_masks()


# Independent value: the band counts of the fully decoded mask (`decoded_border_count`), for every band the
# image allows.
@pytest.mark.parametrize(("name", "mask"), STRUCTURED_MASKS, ids=[n for n, _ in STRUCTURED_MASKS])
def test_border_pixels_equals_decoded_count_on_hand_made_masks(name, mask):
    height, width = mask.shape
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    runs = coco_schema.rle_array(rle["counts"].decode("ascii"))
    assert np.array_equal(mask_utils.decode(rle).astype(bool), mask)
    for band in range(1, min(3, height, width) + 1):
        assert coco_filter.border_pixels(runs, height, width, band) == decoded_border_count(mask, band), (name, band)


# Independent value: as above, on seeded random masks of random sizes and densities (blobs, noise, stripes).
def test_border_pixels_equals_decoded_count_on_random_masks():
    rng = np.random.default_rng(2017)
    checked = 0
    for _ in range(2500):
        height, width = int(rng.integers(1, 14)), int(rng.integers(1, 14))
        kind = rng.integers(4)
        if kind == 0:
            mask = rng.random((height, width)) < rng.choice([0.02, 0.1, 0.5, 0.9, 0.98])
        elif kind == 1:  # a box
            r0, r1 = sorted(rng.integers(0, height + 1, 2))
            c0, c1 = sorted(rng.integers(0, width + 1, 2))
            mask = np.zeros((height, width), dtype=bool)
            mask[r0:r1, c0:c1] = True
        elif kind == 2:  # long column-major runs
            flat = np.zeros(height * width, dtype=bool)
            for start, length in zip(rng.integers(0, height * width, 3), rng.integers(1, 2 * height + 2, 3)):
                flat[start:start + length] = True
            mask = flat.reshape(width, height).T
        else:  # row stripes
            mask = np.zeros((height, width), dtype=bool)
            mask[rng.integers(0, height, 2)] = True
            mask[:, rng.integers(0, width, 1)] ^= rng.random() < 0.5
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        runs = coco_schema.rle_array(rle["counts"].decode("ascii"))
        for band in range(1, min(3, height, width) + 1):
            got = coco_filter.border_pixels(runs, height, width, band)
            assert got == decoded_border_count(mask, band), (mask.astype(int).tolist(), band)
            checked += 1
    assert checked > 4000


def _measure_items() -> list[tuple]:
    """(segmentation, height, width, bbox) items `segmentation_problem` passes: polygons on and off every edge,
    compressed and uncompressed RLE, empty and full masks, 1-pixel-wide images, zero-size boxes."""
    rng = np.random.default_rng(7)
    items = []
    for height, width in ((1, 1), (1, 30), (30, 1), (2, 2), (40, 60), (57, 33)):
        for _ in range(40):
            kind = rng.integers(5)
            if kind == 0:  # a triangle or quad anywhere in the allowed range (-size .. 2 size)
                points = rng.integers(3, 5)
                xs = rng.uniform(-0.3 * width, 1.3 * width, points)
                ys = rng.uniform(-0.3 * height, 1.3 * height, points)
                seg = [[float(v) for pair in zip(xs, ys) for v in pair]]
            elif kind == 1:  # a box hugging one edge, COCO style (a fraction of a pixel inside)
                inset = float(rng.choice([0.0, 0.3, 0.6, 1.2, 2.0, 2.6]))
                x0, x1 = sorted(rng.uniform(0, width, 2))
                y0, y1 = sorted(rng.uniform(0, height, 2))
                edge = rng.integers(4)
                if edge == 0:
                    x0 = inset
                elif edge == 1:
                    x1 = width - inset
                elif edge == 2:
                    y0 = inset
                else:
                    y1 = height - inset
                seg = [[float(v) for v in (x0, y0, x1, y0, x1, y1, x0, y1)], [0, 0, 1, 1]]  # short one: ignored
            elif kind == 2:  # ints, two polygons
                seg = []
                for points, low in ((3, 0), (4, -1)):
                    xs = rng.integers(low * width, 2 * width + 1, points)
                    ys = rng.integers(low * height, 2 * height + 1, points)
                    seg.append([int(v) for pair in zip(xs, ys) for v in pair])
            elif kind == 3:  # compressed RLE of random pixels
                mask = rng.random((height, width)) < rng.choice([0.0, 0.05, 0.5, 1.0])
                seg = rle_of(mask)
            else:  # uncompressed RLE
                mask = rng.random((height, width)) < 0.3
                flat = mask.T.ravel().astype(np.int8)
                change = np.flatnonzero(np.diff(np.concatenate(([0], flat, [2 - flat[-1] if len(flat) else 0]))))
                runs = np.diff(np.concatenate(([0], change[:-1] if len(change) else [], [len(flat)])))
                runs = [int(r) for r in runs]
                if sum(runs) != height * width:
                    runs = [height * width]
                seg = {"size": [height, width], "counts": runs}
            if coco_filter.segmentation_problem(seg, height, width) is not None:
                continue  # `mask_measures` only sees checked segmentations (an inset past a 1-px image)
            box = rng.choice([0, 1, 2])
            bbox = ([0.0, 0.0, 0.0, 0.0] if box == 0 else [float(v) for v in rng.uniform(0, 40, 4)])
            items.append((seg, height, width, bbox))
    return items


# Independent value: (pixel count, border_cut(decoded mask, bbox)) after a full decode of every mask, as
# `mask_measures` computed before it counted from the runs.
def test_mask_measures_equal_full_decode():
    items = _measure_items()
    assert len(items) > 220
    got = coco_filter.mask_measures(items)
    for (seg, height, width, bbox), (area, cut) in zip(items, got, strict=True):
        mask = coco_filter.decode_mask(seg, height, width)
        assert mask.shape == (height, width)
        expected = (float(mask.sum()), coco_filter.border_cut(mask, np.asarray(bbox, dtype=np.float64)))
        assert (area, cut) == expected, (seg, height, width, bbox)


# ---------------------------------------------------------------------------- 3. the column-wise load checks


def base_coco() -> dict:
    """Three images, three categories (K = 3, 2, 0) and eight annotations of every accepted shape."""
    eye = np.eye(60, dtype=bool)
    return {
        "info": {"image_root": "images"},
        "images": [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 80},
                   {"id": 2, "file_name": "b.jpg", "width": 60, "height": 60},
                   {"id": 3, "file_name": "c.jpg", "width": 1, "height": 1}],
        "categories": [{"id": 1, "name": "cup", "keypoints": ["rim", "handle", "base"]},
                       {"id": 2, "name": "fork", "keypoints": ["tip", "end"]},
                       {"id": 3, "name": "blob", "keypoints": []}],
        "annotations": [
            {"id": 5, "image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 40], "area": 2000,
             "keypoints": [20.5, 30, 2, 0, 0, 0, 40, 45, 1], "num_keypoints": 2,
             "attributes": {"azimuth_bin": 3, "occluded": True, "source": "hand"},
             "segmentation": [[10, 10, 60, 10, 60, 50, 10, 50]]},
            {"id": 6, "image_id": 2, "category_id": 2, "bbox": [1.5, 2, 3, 4.25], "area": 12.5,
             "keypoints": [5, 5, 2, 60, 60, 2], "attributes": {"azimuth_bin": None}, "iscrowd": 0},
            {"id": 7, "image_id": 1, "category_id": 1, "bbox": [0, 0, 100, 80],
             "keypoints": [0, 0, 2, 100, 80, 1, 0.0, 0.0, 0]},  # on the image corners; no area, no attributes
            {"id": 8, "image_id": 2, "category_id": 2, "bbox": [0, 0, 60, 60], "iscrowd": True,
             "segmentation": rle_of(eye), "attributes": {"truncated": 1, "occluded": 0}},  # RLE: the model's path
            {"id": 9, "image_id": 3, "category_id": 3, "bbox": [0, 0, 1, 1], "keypoints": [], "segmentation": [],
             "num_keypoints": None, "area": None, "attributes": {"truncated": False, "note": [1, {"a": None}]}},
            {"id": 10, "image_id": 1, "category_id": 2, "bbox": [1, 1, 1e-3, 1e5], "keypoints": [1, 2, 1, 3, 4, 2],
             "area": 0, "extra_field": "kept by extra=allow",
             "segmentation": [[1, 1, 2, 2, 1, 3], [5, 5, 6, 6.5, 5, 7]]},
            {"id": 11, "image_id": 2, "category_id": 1, "bbox": [2**53, 0.5, 2**53, 1],
             "keypoints": [1, 1, 2, 2, 2, 2, 3, 3, 2], "attributes": {"azimuth_bin": 7, "truncated": 0}},
            {"id": 2**53, "image_id": 1, "category_id": 1, "bbox": [5, 5, 5, 5], "num_keypoints": 2**60,
             "segmentation": None, "area": -0.0},
        ],
    }


def old_parse_instances(raws, path, images, categories):
    """The pre-issue-15 loop: each record through `_parse_instance`, then the duplicate-id check."""
    instances, seen = [], set()
    for index, raw in enumerate(raws):
        inst = store._parse_instance(raw, index, path, images, categories)
        if inst.id in seen:
            raise SemcorrError(f"{path}: annotation id={inst.id}: duplicate annotation id; "
                               "give each annotation its own id")
        seen.add(inst.id)
        instances.append(inst)
    return instances


PATH = Path("/data/store/annotations.json")


def load(coco: dict, reference: str | None = None):
    """(Dataset or None, error message or None) of `dataset_from_coco`; `reference` = "old" (the old loop) or
    "model" (the old loop with every record and attributes object through the pydantic models)."""
    coco = copy.deepcopy(coco)
    with pytest.MonkeyPatch.context() as patch:
        if reference is not None:
            patch.setattr(store, "_parse_instances", old_parse_instances)
        if reference == "model":
            patch.setattr(coco_schema, "quick_annotation", lambda raw: False)
            patch.setattr(coco_schema, "quick_attributes", lambda known: False)
        try:
            return store.dataset_from_coco(coco, PATH, Path("images"), check_files=False), None
        except SemcorrError as exc:
            return None, str(exc)
        except Exception as exc:  # noqa: BLE001 - a crash must be the same crash on every path
            return None, f"{type(exc).__name__}: {exc}"


def assert_same_instances(got: list[Instance], expected: list[Instance]) -> None:
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        for name in ("id", "image_id", "category_id", "azimuth_bin", "truncated", "occluded", "iscrowd"):
            va, vb = getattr(a, name), getattr(b, name)
            assert (type(va), va) == (type(vb), vb), (a.id, name, va, vb)
        assert (type(a.area), float_bits(a.area)) == (type(b.area), float_bits(b.area)), (a.id, a.area, b.area)
        for name in ("bbox", "keypoints"):
            va, vb = getattr(a, name), getattr(b, name)
            assert isinstance(va, np.ndarray) and va.dtype == vb.dtype == np.float64 and va.shape == vb.shape
            assert np.array_equal(va, vb, equal_nan=True), (a.id, name)
        assert a.segmentation == b.segmentation and type(a.segmentation) is type(b.segmentation)
        assert a.extra_attributes == b.extra_attributes


def _set(path: tuple, value):
    def change(ann):
        target = ann
        for key in path[:-1]:
            target = target.setdefault(key, {}) if isinstance(target, dict) else target[key]
        target[path[-1]] = value
    return change


def _drop(key):
    return lambda ann: ann.pop(key, None)


def _replace(value):
    return value  # the whole record replaced (not a dict, ...)


WIDTH = {1: 100, 2: 60, 3: 1}  # the images of `base_coco`
HEIGHT = {1: 80, 2: 60, 3: 1}


def _kps(*first):
    """Keypoints given for the first two points (callables of the record for image-dependent values), then
    [1, 1, 2] for a third where the category has one."""
    def change(ann):
        values = [v(ann) if callable(v) else v for v in first]
        ann["keypoints"] = values + ([1, 1, 2] if ann["category_id"] == 1 else [])
    return change


def _width(extra: float):
    return lambda ann: WIDTH[ann["image_id"]] + extra


def _height(extra: float):
    return lambda ann: HEIGHT[ann["image_id"]] + extra


# (name, change): a change to one annotation record (a function of the dict) or a replacement record.
CORRUPTIONS = [
    ("id str", _set(("id",), "5x")), ("id float", _set(("id",), 5.0)), ("id bool", _set(("id",), True)),
    ("id negative", _set(("id",), -1)), ("id too big", _set(("id",), 2**53 + 1)), ("id none", _set(("id",), None)),
    ("id missing", _drop("id")), ("image_id unknown", _set(("image_id",), 99)),
    ("image_id str", _set(("image_id",), "1")), ("image_id bool", _set(("image_id",), True)),
    ("image_id missing", _drop("image_id")), ("category_id unknown", _set(("category_id",), 42)),
    ("category_id float", _set(("category_id",), 1.0)), ("category_id huge", _set(("category_id",), 10**30)),
    ("bbox nan", _set(("bbox",), [1, math.nan, 3, 4])), ("bbox inf", _set(("bbox",), [1, 2, math.inf, 4])),
    ("bbox negative width", _set(("bbox",), [10, 10, -5, 4])), ("bbox zero height", _set(("bbox",), [1, 1, 3, 0])),
    ("bbox -0.0 width", _set(("bbox",), [1, 1, -0.0, 3])), ("bbox three", _set(("bbox",), [1, 2, 3])),
    ("bbox five", _set(("bbox",), [1, 2, 3, 4, 5])), ("bbox str", _set(("bbox",), [1, "2", 3, 4])),
    ("bbox bool", _set(("bbox",), [True, 2, 3, 4])), ("bbox none", _set(("bbox",), None)),
    ("bbox null value", _set(("bbox",), [1, None, 3, 4])), ("bbox dict", _set(("bbox",), {"x": 1})),
    ("bbox overflowing int", _set(("bbox",), [1, 2, 10**400, 4])), ("bbox missing", _drop("bbox")),
    ("keypoints too many", _set(("keypoints",), [1, 1, 2] * 4)),
    ("keypoints 3K-1", _kps(1, 1, 2, 1, 1)),
    ("visibility 3", _kps(1, 1, 3, 1, 1, 2)),
    ("visibility -1", _kps(1, 1, -1, 1, 1, 2)),
    ("visibility 1.5", _kps(1, 1, 1.5, 1, 1, 2)),
    ("visibility bool", _kps(1, 1, True, 1, 1, 2)),
    ("visibility str", _kps(1, 1, "2", 1, 1, 2)),
    ("keypoint x past width", _kps(1000.01, 1, 2, 1, 1, 2)),
    ("keypoint y negative", _kps(1, -0.01, 1, 1, 1, 2)),
    ("keypoint x just past width", _kps(_width(0.01), 1, 2, 1, 1, 2)),
    ("keypoint y just past height", _kps(1, 1, 2, 1, _height(1e-9), 1)),
    ("keypoint x just below 0", _kps(-1e-12, 1, 2, 1, 1, 2)),
    ("keypoint on the far corner (accepted)", _kps(_width(0), _height(0), 2, 0, 0, 1)),
    ("keypoint second outside", _kps(1, 1, 2, 1, 1e9, 1)),
    ("unlabelled keypoint nan", _kps(math.nan, 0, 0, 1, 1, 2)),
    ("unlabelled keypoint outside (accepted)", _kps(-50, 1e6, 0, 1, 1, 2)),
    ("keypoints none", _set(("keypoints",), None)), ("keypoints dict", _set(("keypoints",), {})),
    ("keypoints nested", _set(("keypoints",), [[1, 1, 2]])),
    ("num_keypoints negative", _set(("num_keypoints",), -1)), ("num_keypoints float", _set(("num_keypoints",), 1.5)),
    ("num_keypoints 2.0", _set(("num_keypoints",), 2.0)), ("num_keypoints bool", _set(("num_keypoints",), True)),
    ("num_keypoints str", _set(("num_keypoints",), "2")),
    ("area negative", _set(("area",), -1)), ("area nan", _set(("area",), math.nan)),
    ("area inf", _set(("area",), math.inf)), ("area str", _set(("area",), "5")), ("area bool", _set(("area",), True)),
    ("area list", _set(("area",), [5])), ("area int past float", _set(("area",), 10**400)),
    ("num_keypoints int past float (accepted)", _set(("num_keypoints",), 10**400)),
    ("keypoint int past float", _kps(10**400, 1, 2, 1, 1, 2)),
    ("segmentation int past float", _set(("segmentation",), [[1, 1, 2, 10**400, 3, 3]])),
    ("area huge int (accepted)", _set(("area",), 10**30)),
    ("iscrowd 2", _set(("iscrowd",), 2)), ("iscrowd 1.0 (accepted)", _set(("iscrowd",), 1.0)),
    ("iscrowd str", _set(("iscrowd",), "0")), ("iscrowd none", _set(("iscrowd",), None)),
    ("iscrowd false (accepted)", _set(("iscrowd",), False)),
    ("azimuth 8", _set(("attributes", "azimuth_bin"), 8)), ("azimuth -1", _set(("attributes", "azimuth_bin"), -1)),
    ("azimuth bool", _set(("attributes", "azimuth_bin"), True)),
    ("azimuth float", _set(("attributes", "azimuth_bin"), 3.0)),
    ("azimuth str", _set(("attributes", "azimuth_bin"), "3")),
    ("truncated 2", _set(("attributes", "truncated"), 2)), ("truncated str", _set(("attributes", "truncated"), "yes")),
    ("truncated none", _set(("attributes", "truncated"), None)),
    ("occluded 1.0 (accepted)", _set(("attributes", "occluded"), 1.0)),
    ("attributes none", _set(("attributes",), None)), ("attributes list", _set(("attributes",), [])),
    ("attributes int key", lambda a: a.__setitem__("attributes", {1: "x"})),
    ("segmentation short polygon", _set(("segmentation",), [[1, 1, 2, 2]])),
    ("segmentation odd polygon", _set(("segmentation",), [[1, 1, 2, 2, 3, 3, 4]])),
    ("segmentation nan", _set(("segmentation",), [[1, 1, 2, math.nan, 3, 3]])),
    ("segmentation str value", _set(("segmentation",), [[1, 1, 2, "2", 3, 3]])),
    ("segmentation bool value (accepted by the model)", _set(("segmentation",), [[1, 1, 2, True, 3, 3]])),
    ("segmentation not a polygon", _set(("segmentation",), [[1, 1, 2, 2, 3, 3], "x"])),
    ("segmentation empty dict", _set(("segmentation",), {})), ("segmentation str", _set(("segmentation",), "abc")),
    ("segmentation int", _set(("segmentation",), 5)),
    ("rle wrong size", _set(("segmentation",), {"size": [2, 2], "counts": [4]})),
    ("rle corrupt counts", _set(("segmentation",), {"size": [80, 100], "counts": "\x7f\x7f"})),
    ("rle short runs", _set(("segmentation",), {"size": [80, 100], "counts": [10, 20]})),
    ("record list", _replace([1, 2])), ("record none", _replace(None)), ("record int", _replace(5)),
    ("record empty", _replace({})),
]


def corrupted(coco: dict, index: int, change) -> dict:
    coco = copy.deepcopy(coco)
    if callable(change):
        change(coco["annotations"][index])
    else:
        coco["annotations"][index] = copy.deepcopy(change)
    return coco


def assert_loads_alike(coco: dict) -> str | None:
    """The fast load, the old per-record loop and the all-pydantic loop give the same instances or the same message."""
    fast, fast_error = load(coco)
    old, old_error = load(coco, "old")
    model, model_error = load(coco, "model")
    assert fast_error == old_error == model_error
    if fast_error is None:
        assert_same_instances(fast.instances, old.instances)
        assert_same_instances(fast.instances, model.instances)
        assert ref_store_text(fast) == ref_store_text(old)
    elif not fast_error.startswith("OverflowError"):  # see test_huge_int_in_polygon_gives_one_line_error
        assert fast_error.startswith(f"{PATH}: annotation")
        assert "\n" not in fast_error
    return fast_error


def test_base_coco_loads_and_matches_the_old_loop():
    assert assert_loads_alike(base_coco()) is None


# Independent value: the message (or the instances) of the old per-record loop and of the all-pydantic loop,
# for each bad record at the start, the middle and the end of the file.
@pytest.mark.parametrize("index", [0, 3, 7])
@pytest.mark.parametrize(("name", "change"), CORRUPTIONS, ids=[n for n, _ in CORRUPTIONS])
def test_one_bad_record_gives_the_pydantic_message(name, change, index):
    error = assert_loads_alike(corrupted(base_coco(), index, change))
    if "accepted" not in name:  # every other change is an error somewhere in the record
        assert error is not None, name


# A JSON integer too large for a float inside a polygon (a 400-digit literal; `json.loads` keeps it an int) once
# crashed the load with OverflowError in `coco_schema.finite`; now the usual one-line error names the record.
def test_huge_int_in_polygon_gives_one_line_error():
    coco = corrupted(base_coco(), 3, _set(("segmentation",), [[1, 1, 2, 10**400, 3, 3]]))
    with pytest.raises(SemcorrError, match=r"annotation id=8: field 'segmentation'"):
        store.dataset_from_coco(coco, PATH, Path("images"), check_files=False)


# Independent value: the first bad record in file order is the one named, duplicates included (the old loop
# raised at the first record whose id an earlier record has, after checking that record itself).
@pytest.mark.parametrize(("first", "second"), [
    ("bbox nan", "visibility 3"), ("visibility 3", "bbox nan"), ("rle wrong size", "area str"),
    ("area str", "rle wrong size"), ("record none", "id str"), ("keypoint x past width", "azimuth 8"),
])
@pytest.mark.parametrize(("i", "j"), [(1, 5), (5, 1), (0, 7)])
def test_two_bad_records_name_the_first_in_file_order(first, second, i, j):
    changes = dict(CORRUPTIONS)
    coco = corrupted(corrupted(base_coco(), i, changes[first]), j, changes[second])
    assert assert_loads_alike(coco) is not None


@pytest.mark.parametrize("case", [
    "dup of first at 4", "dup at 4 and bad at 2", "dup at 2 and bad at 4", "dup is itself bad", "dup of rle record",
    "three same ids", "dup of huge id", "bad id then dup",
])
def test_duplicate_ids_give_the_old_message(case):
    coco = base_coco()
    anns = coco["annotations"]
    if case == "dup of first at 4":
        anns[4]["id"] = 5
    elif case == "dup at 4 and bad at 2":
        anns[4]["id"] = 5
        anns[2]["bbox"] = [1, 1, -1, 1]
    elif case == "dup at 2 and bad at 4":
        anns[2]["id"] = 5
        anns[4]["bbox"] = [1, 1, -1, 1]
    elif case == "dup is itself bad":
        anns[4]["id"] = 5
        anns[4]["area"] = -3
    elif case == "dup of rle record":
        anns[6]["id"] = 8
    elif case == "three same ids":
        anns[2]["id"] = anns[4]["id"] = anns[6]["id"] = 6
    elif case == "dup of huge id":
        anns[1]["id"] = 2**53
    else:
        anns[1]["id"] = "6"
        anns[3]["id"] = 5
    error = assert_loads_alike(coco)
    assert error is not None and ("duplicate annotation id" in error or "field" in error)


# Independent value: seeded random single and double corruptions at random positions, against the old loop.
def test_random_corruptions_give_the_old_message():
    rng = np.random.default_rng(300)
    coco = base_coco()
    for _ in range(150):
        changed = coco
        for _ in range(int(rng.integers(1, 3))):
            _, change = CORRUPTIONS[int(rng.integers(len(CORRUPTIONS)))]
            changed = corrupted(changed, int(rng.integers(len(coco["annotations"]))), change)
        if rng.random() < 0.3:
            anns = changed["annotations"]
            position = int(rng.integers(1, len(anns)))
            if isinstance(anns[position], dict) and isinstance(anns[0], dict):
                anns[position]["id"] = anns[0].get("id")
        assert_loads_alike(changed)


# Independent value: `Path.is_file()` of each image file, one stat per name (the loader now lists the folder once).
def test_image_file_lookup_equals_is_file(tmp_path):
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    (root / "a.jpg").write_bytes(b"x")
    (root / "sub" / "b.jpg").write_bytes(b"x")
    (root / "folder.jpg").mkdir()
    (root / "link.jpg").symlink_to(root / "a.jpg")
    (root / "broken.jpg").symlink_to(root / "gone.jpg")
    names = ["a.jpg", "sub/b.jpg", "folder.jpg", "link.jpg", "broken.jpg", "A.jpg", "missing.jpg", "sub/c.jpg",
             "ünï.jpg"]
    coco = {"images": [{"id": i + 1, "file_name": n, "width": 5, "height": 5} for i, n in enumerate(names)],
            "annotations": [], "categories": []}
    for count in range(len(names) + 1):
        part = {**coco, "images": coco["images"][:count]}
        missing = next((im for im in part["images"] if not (root / im["file_name"]).is_file()), None)
        if missing is None:
            store.dataset_from_coco(part, PATH, root)
        else:
            with pytest.raises(SemcorrError, match=rf"image id={missing['id']}: image file .* does not exist"):
                store.dataset_from_coco(part, PATH, root)
    assert store.dataset_from_coco(coco, PATH, tmp_path / "no such folder", check_files=False).images


# ---------------------------------------------------------------------------- 4. shared keypoint arrays


def _many_instances_coco(count: int = 40) -> dict:
    rng = np.random.default_rng(4)
    coco = base_coco()
    anns = []
    for i in range(count):
        category = 1 + i % 2
        k = 3 if category == 1 else 2
        keypoints = []
        for _ in range(k):
            v = int(rng.integers(0, 3))
            keypoints += [0, 0, 0] if v == 0 else [round(float(rng.uniform(0, 60)), 2),
                                                   round(float(rng.uniform(0, 60)), 2), v]
        if i % 10 < 2:  # equal keypoints and boxes in several instances
            keypoints = [1, 2, 2] * k
        anns.append({"id": 1000 + i, "image_id": 1 + i % 2, "category_id": category,
                     "bbox": [1.0, 1.25, 5.5, 7.0] if i % 10 < 2 else [float(rng.integers(0, 10)), 1.25, 5.5, 7.0],
                     "keypoints": keypoints,
                     "area": float(i), "segmentation": [[1, 1, 5, 1, 5, 5]],
                     "attributes": {"azimuth_bin": i % 8, "truncated": bool(i % 3), "occluded": False}})
    coco["annotations"] = anns
    return coco


# Independent value: a copy of every instance's arrays taken before the edit; only the edited instance may
# change, whichever rows of a shared array the loader handed out (every instance is edited in turn; several
# instances hold equal keypoints, so a loader that handed out one array per distinct value would fail too).
@pytest.mark.parametrize("edit", ["keypoint x", "visibility", "whole keypoints", "bbox"])
def test_editing_one_instance_in_place_leaves_the_others(edit):
    coco = _many_instances_coco()
    for chosen in range(len(coco["annotations"])):
        dataset, error = load(coco)
        assert error is None
        snapshot = [(inst.keypoints.copy(), inst.bbox.copy()) for inst in dataset.instances]
        target = dataset.instances[chosen]
        if edit == "keypoint x":
            target.keypoints[0, 0] = 12.5
        elif edit == "visibility":
            target.keypoints[:, 2] = 2
        elif edit == "whole keypoints":
            target.keypoints[:] = 1.0
        else:
            target.bbox[:] = [1.0, 2.0, 3.0, 4.0]
        for index, (inst, (keypoints, bbox)) in enumerate(zip(dataset.instances, snapshot)):
            if index == chosen:
                continue
            assert np.array_equal(inst.keypoints, keypoints, equal_nan=True), (edit, chosen, index)
            assert np.array_equal(inst.bbox, bbox), (edit, chosen, index)
            assert inst.keypoints.shape == (dataset.categories[inst.category_id].num_keypoints, 3)
        # saving shows exactly the edit: the same records as the per-instance conversion
        assert json.dumps(store.dataset_to_coco(dataset)["annotations"]) == json.dumps(ref_coco(dataset)["annotations"])


# Independent value: the text of the first save (`ref_store_text`, one json.dumps per the old contract);
# load -> save -> load -> save repeats it byte for byte.
def test_save_load_round_trip_is_byte_identical(tmp_path):
    (tmp_path / "images").mkdir()
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        (tmp_path / "images" / name).write_bytes(b"x")
    first, error = load(_many_instances_coco())
    assert error is None
    store.save_dataset(first, tmp_path)
    text = (tmp_path / "annotations.json").read_bytes()
    assert text.decode("utf-8") == ref_store_text(first)
    for _ in range(2):
        again = store.load_dataset(tmp_path)
        assert_same_instances(again.instances, first.instances)
        store.save_dataset(again, tmp_path)
        assert (tmp_path / "annotations.json").read_bytes() == text


# ---------------------------------------------------------------------------- 5. MISC units and the skip rule


def brute_force_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = int((a | b).sum())
    return int((a & b).sum()) / union if union else 0.0


def ref_misc_units(dataset: Dataset, split_of: dict[int, str]) -> tuple[pd.DataFrame, np.ndarray]:
    """The pre-issue-15 `misc_units`, with IoUs from fully decoded masks."""
    groups: dict[tuple[int, int], list] = {}
    for inst in dataset.instances:
        if inst.image_id in split_of:
            groups.setdefault((inst.category_id, inst.image_id), []).append(inst)
    k_max = max((c.num_keypoints for c in dataset.categories.values()), default=0)
    keys = sorted(groups, key=lambda key: (dataset.categories[key[0]].name, key[1]))
    rows, counts = [], np.zeros((len(keys), k_max), dtype=np.int16)
    for row_index, (category_id, image_id) in enumerate(keys):
        members = groups[(category_id, image_id)]
        image = dataset.images[image_id]
        overlap = 0.0
        with_masks = [m for m in members if m.segmentation]
        if len(with_masks) >= 2:
            masks = [coco_filter.decode_mask(m.segmentation, image.height, image.width) for m in with_masks]
            overlap = max(brute_force_iou(masks[i], masks[j]) for i in range(len(masks))
                          for j in range(len(masks)) if i != j)
        for inst in members:
            counts[row_index, : len(inst.keypoints)] += inst.visible
        rows.append({"image_id": image_id, "category": dataset.categories[category_id].name,
                     "split": split_of[image_id], "num_instances": len(members),
                     "num_keypoints": dataset.categories[category_id].num_keypoints,
                     "mean_area": float(np.mean([m.area if m.area > 0 else m.bbox_area for m in members])),
                     "truncated": any(m.truncated for m in members), "occluded": any(m.occluded for m in members),
                     "max_overlap": round(overlap, 6)})
    return pd.DataFrame(rows, columns=misc_pairs.UNIT_COLUMNS), counts


def square(x: float, y: float, w: float, h: float | None = None) -> list[float]:
    h = w if h is None else h
    return [x, y, x + w, y, x + w, y + h, x, y + h]


# (name, segmentations of one unit's instances, expected max IoU > 0): two or three masks in a 64x48 image.
MISC_CASES = [
    ("overlap by 1 px", [[square(10, 10, 10)], [square(19, 10, 10)]], True),
    ("overlap by 0.5 px", [[square(10, 10, 10)], [square(19.5, 10, 10)]], None),
    ("overlap by 0.2 px", [[square(10, 10, 10)], [square(19.8, 10, 10)]], None),
    ("touching edges", [[square(10, 10, 10)], [square(20, 10, 10)]], None),
    ("0.1 px apart", [[square(10, 10, 10)], [square(20.1, 10, 10)]], None),
    ("touching corners", [[square(10, 10, 10)], [square(20, 20, 10)]], None),
    ("1 px apart", [[square(10, 10, 10)], [square(21, 10, 10)]], None),
    ("2 px apart", [[square(10, 10, 10)], [square(22, 10, 10)]], False),
    ("3 px apart", [[square(10, 10, 10)], [square(23, 10, 10)]], False),
    ("3.9 px apart", [[square(10, 10, 10)], [square(23.9, 10, 10)]], False),
    ("4 px apart", [[square(10, 10, 10)], [square(24, 10, 10)]], False),
    ("4.1 px apart", [[square(10, 10, 10)], [square(24.1, 10, 10)]], False),
    ("5 px apart vertically", [[square(10, 10, 10)], [square(10, 25, 10)]], False),
    ("3 px apart diagonally", [[square(10, 10, 10)], [square(23, 23, 10)]], False),
    ("boxes meet, triangles apart", [[[0, 0, 30, 0, 0, 30]], [[31, 31, 31, 5, 5, 31]]], None),
    ("slivers 0.2 px wide, 1 px apart", [[square(10, 5, 0.2, 30)], [square(11.2, 5, 0.2, 30)]], None),
    ("sliver inside square", [[square(10, 10, 10)], [square(15, 5, 0.2, 30)]], None),
    ("same square", [[square(3, 3, 7)], [square(3, 3, 7)]], True),
    ("outside the image, apart", [[square(-20, 10, 10)], [square(-5, 10, 10)]], False),
    ("outside the image, overlapping", [[square(-20, 10, 30)], [square(-5, 10, 10)]], True),
    ("past the right edge", [[square(60, 40, 30)], [square(62.5, 44, 10)]], True),
    ("two polygons each", [[square(1, 1, 5), square(40, 30, 5)], [square(10, 10, 5), square(42, 32, 5)]], True),
    ("three, one far", [[square(1, 1, 5)], [square(40, 30, 8)], [square(44, 33, 8)]], True),
    ("three, all apart", [[square(1, 1, 5)], [square(20, 20, 5)], [square(40, 30, 5)]], False),
    ("polygon and RLE", [[square(10, 10, 10)], "rle"], True),
    ("polygon and no mask", [[square(10, 10, 10)], None], False),
    ("ints and floats", [[[10, 10, 20, 10, 20, 20]], [[15.0, 15.0, 25.0, 15.0, 25.0, 25.0]]], True),
]


def _misc_dataset(units: list[list], areas: list[float] | None = None) -> tuple[Dataset, dict[int, str]]:
    categories = {7: Category(id=7, name="zebra", keypoints=("a", "b", "c")),
                  4: Category(id=4, name="apple", keypoints=("a",))}
    images, instances = {}, []
    rle_mask = np.zeros((48, 64), dtype=bool)
    rle_mask[12:30, 14:25] = True
    for image_id, segmentations in enumerate(units, start=1):
        images[image_id] = ImageInfo(image_id, f"{image_id}.jpg", 64, 48)
        for seg in segmentations:
            index = len(instances)
            category = 7 if index % 5 else 4
            k = categories[category].num_keypoints
            visible = [[1.0, 1.0, (index + j) % 3] for j in range(k)]
            instances.append(Instance(
                id=index + 1, image_id=image_id, category_id=category, bbox=[1, 1, 2 + index % 7, 3],
                keypoints=visible, segmentation=rle_of(rle_mask) if seg == "rle" else seg,
                area=(areas[index % len(areas)] if areas else 0.0), truncated=index % 4 == 0,
                occluded=index % 6 == 0))
    split_of = {i: ("trn", "val", "test")[i % 3] for i in images if i % 11 != 10}
    return Dataset(images=images, categories=categories, instances=instances, image_root=Path(".")), split_of


def assert_units_equal(dataset: Dataset, split_of: dict[int, str]) -> pd.DataFrame:
    got_units, got_counts = misc_pairs.misc_units(dataset, split_of)
    ref_units, ref_counts = ref_misc_units(dataset, split_of)
    pd.testing.assert_frame_equal(got_units, ref_units, check_exact=True)
    assert got_counts.dtype == ref_counts.dtype and np.array_equal(got_counts, ref_counts)
    return got_units


# Independent value: the largest IoU of fully decoded masks (brute force), per hand-made unit.
@pytest.mark.parametrize(("name", "segmentations", "overlapping"), MISC_CASES, ids=[c[0] for c in MISC_CASES])
def test_misc_max_overlap_equals_brute_force(name, segmentations, overlapping):
    dataset, _ = _misc_dataset([segmentations])
    for inst in dataset.instances:
        inst.category_id = 7  # one unit
    units = assert_units_equal(dataset, {1: "trn"})
    assert len(units) == 1
    if overlapping is not None:
        assert (units["max_overlap"].iloc[0] > 0) == overlapping, units["max_overlap"].iloc[0]


# (name, segmentations of one unit): masks the old loop decoded through `segmentation_rle`, which refuses some.
MISC_ERROR_CASES = [
    ("far right of the image, apart", [[square(200, 10, 5)], [square(10, 10, 5)]]),
    ("far left of the image, near", [[[-100, 0, 12, 0, 12, 30]], [square(10, 10, 5)]]),
    ("far below, overlapping", [[square(10, 10, 5, 200)], [square(10, 10, 5)]]),
    ("short polygon beside a good one", [[[1, 1, 2, 2], square(10, 10, 5)], [square(12, 12, 5)]]),
    ("only a short polygon", [[[1, 1, 2, 2]], [square(12, 12, 5)]]),
    ("RLE of another size", [[square(10, 10, 5)], {"size": [10, 10], "counts": [100]}]),
    ("corrupt RLE string", [[square(10, 10, 5)], {"size": [48, 64], "counts": "\x7f"}]),
    ("far outside, alone in its unit", [[square(500, 500, 5)]]),
]


# Independent value: the old loop's outcome on the same unit: the same SemcorrError message, or the same frame.
@pytest.mark.parametrize(("name", "segmentations"), MISC_ERROR_CASES, ids=[c[0] for c in MISC_ERROR_CASES])
def test_misc_corrupt_masks_fail_as_before(name, segmentations):
    dataset, _ = _misc_dataset([segmentations])
    for inst in dataset.instances:
        inst.category_id = 7
    outcomes = []
    for build in (misc_pairs.misc_units, ref_misc_units):
        try:
            outcomes.append(build(dataset, {1: "trn"})[0])
        except SemcorrError as exc:
            outcomes.append(str(exc))
    if isinstance(outcomes[1], str):
        assert outcomes[0] == outcomes[1]
    else:
        pd.testing.assert_frame_equal(outcomes[0], outcomes[1], check_exact=True)


# Independent value: the pixels of a decoded polygon mask lie within its points' box grown by MASK_MARGIN, the
# promise the skip rule rests on (no pixel shared => IoU exactly 0), on seeded random polygons.
def test_rasterised_polygons_stay_within_the_skip_margin():
    rng = np.random.default_rng(5)
    margin = misc_pairs.MASK_MARGIN
    for _ in range(600):
        height, width = int(rng.integers(1, 50)), int(rng.integers(1, 50))
        points = int(rng.integers(3, 7))
        scale = rng.choice([0.3, 2.0, 1.0 * max(width, height)])
        cx, cy = rng.uniform(-width, 2 * width), rng.uniform(-height, 2 * height)
        xs = np.clip(cx + rng.uniform(-scale, scale, points), -width, 2 * width)
        ys = np.clip(cy + rng.uniform(-scale, scale, points), -height, 2 * height)
        polygon = [float(v) for pair in zip(xs, ys) for v in pair]
        mask = coco_filter.decode_mask([polygon], height, width)
        rows, cols = np.nonzero(mask)
        if len(rows):
            assert cols.min() >= xs.min() - margin and cols.max() <= xs.max() + margin, polygon
            assert rows.min() >= ys.min() - margin and rows.max() <= ys.max() + margin, polygon


# Independent value: the old per-unit loop with brute-force IoUs, on seeded random images of 1 to 12 masks
# (random squares and triangles, some near each other), unit sizes up to 12 for the mean-area summation.
def test_misc_units_equal_old_loop_on_random_units():
    rng = np.random.default_rng(11)
    units = []
    for _ in range(120):
        segs = []
        for _ in range(int(rng.integers(1, 13))):
            kind = rng.integers(5)
            x, y = float(rng.uniform(-5, 60)), float(rng.uniform(-5, 45))
            size = float(rng.choice([0.3, 2, 5, 12]))
            if kind == 0:
                segs.append(None)
            elif kind == 1:
                segs.append([[x, y, x + size, y, x, y + size]])
            elif kind == 4 and segs and segs[-1] not in (None, "rle"):  # near the previous mask
                gap = float(rng.choice([-1, 0, 0.5, 1, 2, 3, 3.9, 4, 4.1, 5]))
                prev = segs[-1][0]
                right = max(prev[0::2]) + gap
                segs.append([square(right, min(prev[1::2]), size)])
            elif kind == 3 and rng.random() < 0.3:
                segs.append("rle")
            else:
                segs.append([square(x, y, size)])
        units.append(segs)
    areas = list(rng.uniform(0, 5000, 97)) + [0.0, 1e-3, 0.1, 0.7, 1 / 3]
    dataset, split_of = _misc_dataset(units, areas)
    assert_units_equal(dataset, split_of)


# Independent value: np.mean of each unit's list of areas (the old per-unit mean), for unit sizes 1..40 where
# numpy's pairwise summation switches between its unrolled and plain loops.
def test_misc_mean_area_uses_the_same_summation():
    rng = np.random.default_rng(12)
    units = [[None] * size for size in range(1, 41) for _ in range(2)]
    areas = list(rng.uniform(0, 1, 211) * 10.0 ** rng.integers(-3, 9, 211))
    dataset, split_of = _misc_dataset(units, areas)
    split_of = {i: "trn" for i in dataset.images}
    assert_units_equal(dataset, split_of)


def test_misc_units_empty():
    dataset, _ = _misc_dataset([[[square(1, 1, 3)]]])
    got_units, got_counts = misc_pairs.misc_units(dataset, {})
    ref_units, ref_counts = ref_misc_units(dataset, {})
    assert len(got_units) == len(ref_units) == 0 and list(got_units.columns) == list(ref_units.columns)
    assert got_counts.shape == ref_counts.shape


# Independent value: the brute-force IoU of the two overlapping squares (0.049144 here). An instance with an
# odd-length polygon (9 numbers) that sorts earlier once shifted `_plain_polygons`' x/y pairing for every later
# instance (max_overlap 0.0); bad polygons now add no coordinates. Only in-memory datasets hold odd polygons
# (`load_dataset` rejects them).
def test_misc_units_odd_polygon_earlier_does_not_hide_a_later_overlap():
    categories = {1: Category(id=1, name="a", keypoints=("p",)), 2: Category(id=2, name="b", keypoints=("p",))}
    images = {1: ImageInfo(1, "1.jpg", 100, 100), 2: ImageInfo(2, "2.jpg", 100, 100)}

    def inst(i, image, category, seg):
        return Instance(id=i, image_id=image, category_id=category, bbox=[0, 0, 10, 10], keypoints=[[1, 1, 2]],
                        segmentation=seg, area=100.0)

    dataset = Dataset(images=images, categories=categories, image_root=Path("."), instances=[
        inst(1, 1, 1, [[10, 10, 30, 10, 30, 30, 10, 30, 5]]),  # odd-length polygon, alone in its unit
        inst(2, 2, 2, [[10, 10, 30, 10, 30, 12, 20, 70]]),
        inst(3, 2, 2, [[10, 50, 30, 50, 30, 90, 10, 90]]),
    ])
    assert_units_equal(dataset, {1: "trn", 2: "trn"})


# ---------------------------------------------------------------------------- 6. splits


def old_interleave_assign(count: int, ratios) -> np.ndarray:
    """`interleave_assign` as it was at HEAD before issue 15 (numpy per item)."""
    target = np.asarray(ratios, dtype=np.float64)
    counts = np.zeros(3)
    out = np.empty(count, dtype=np.int64)
    for i in range(count):
        deficit = target * (i + 1) - counts
        deficit[target == 0] = -np.inf
        choice = int(np.argmax(deficit))
        out[i] = choice
        counts[choice] += 1
    return out


def _ratio_sets() -> list[tuple[float, float, float]]:
    fixed = ["5:2:3", "1:1:1", "1:0:0", "0:1:0", "0:0:1", "0:1:1", "1:1:0", "7:0:3", "1:2:3", "3:3:4", "1e-300:1:1",
             "1:1e-9:1", "0.1:0.2:0.7", "999:1:1"]
    rng = np.random.default_rng(6)
    ratios = [splits.parse_ratios(text) for text in fixed]
    for _ in range(40):
        parts = rng.integers(0, 10, 3) * (rng.random(3) < 0.85)
        if parts.sum() == 0:
            parts[0] = 1
        ratios.append(splits.parse_ratios(":".join(str(int(p)) for p in parts)))
    for _ in range(20):
        ratios.append(splits.parse_ratios(":".join(repr(float(p)) for p in rng.random(3))))
    ratios.append((0.5, 0.2, 0.3))  # not normalised by parse_ratios (the default argument)
    return ratios


# Independent value: the old numpy loop, position by position, for 75 seeded ratio sets and runs up to 400.
def test_interleave_assign_equals_old_numpy_loop():
    for ratios in _ratio_sets():
        longest = splits.interleave_assign(400, ratios)
        assert np.array_equal(longest, old_interleave_assign(400, ratios)), ratios
        assert longest.dtype == np.int64
        for count in (0, 1, 2, 3, 7, 50, 399):
            short = splits.interleave_assign(count, ratios)
            assert np.array_equal(short, longest[:count]), (ratios, count)
            assert short.dtype == np.int64 and short.shape == (count,)


def old_assign_splits(images: pd.DataFrame, ratios, seed: int) -> dict[int, str]:
    rng = np.random.default_rng(seed)
    out: dict[int, str] = {}
    ordered = images.sort_values(["category", "image_id"], kind="stable")
    for _, group in ordered.groupby("category", sort=True):
        keys = rng.random(len(group))
        order = np.lexsort((keys, group["azimuth_bin"].to_numpy()))
        image_ids = group["image_id"].to_numpy()[order]
        for image_id, split_index in zip(image_ids, old_interleave_assign(len(image_ids), ratios)):
            out[int(image_id)] = store.SPLIT_NAMES[split_index]
    return out


# Independent value: the old per-category assignment (same rng draws, numpy interleave per category), compared
# as ordered (image id, split) lists.
@pytest.mark.parametrize("seed", [0, 1, 99])
def test_assign_splits_equals_old_per_category_loop(seed):
    rng = np.random.default_rng(seed + 1000)
    sizes = [1, 2, 3, 9, 40, 137]
    rows = []
    next_id = 1
    for c, size in enumerate(sizes):
        for _ in range(size):
            rows.append({"image_id": next_id * 7 % 1009, "category": f"cat{(c * 5) % 7}",
                         "azimuth_bin": int(rng.integers(-1, 8))})
            next_id += 1
    images = pd.DataFrame(rows).sample(frac=1.0, random_state=seed).reset_index(drop=True)
    for ratios in _ratio_sets()[:25]:
        got = splits.assign_splits(images, ratios, seed=seed)
        expected = old_assign_splits(images, ratios, seed)
        assert list(got.items()) == list(expected.items()), ratios
    assert splits.assign_splits(images.iloc[:0], (0.5, 0.2, 0.3), seed) == {}


# ---------------------------------------------------------------------------- 7. atomic.write_chunks


# Independent value: b"".join of the pieces (str pieces as UTF-8).
@pytest.mark.parametrize("chunks", [
    [], [""], ["a"], [b"a", "b", b"", "ü✓"], ["x" * 100_000, "y" * 3], [b"\x00\xff", "\n"],
    (piece for piece in ["gen", "erator"]),
], ids=["none", "empty", "one", "mixed", "big", "binary", "generator"])
def test_write_chunks_writes_the_concatenation(tmp_path, chunks):
    chunks = list(chunks)
    target = tmp_path / "out" / "file.json"
    atomic.write_chunks(target, iter(chunks))
    assert target.read_bytes() == b"".join(c.encode("utf-8") if isinstance(c, str) else c for c in chunks)
    assert listing(target.parent) == ["file.json"]


class Boom(Exception):
    pass


def _failing(after: int, error: BaseException):
    def chunks():
        for i in range(after):
            yield f"piece {i}, "
        raise error
    return chunks()


# Independent value: the bytes the target held before (or its absence), and a folder with nothing else in it.
@pytest.mark.parametrize("existing", [True, False])
@pytest.mark.parametrize("error", [Boom("midway"), KeyboardInterrupt(), TypeError("bad piece")],
                         ids=["exception", "keyboard-interrupt", "type-error"])
@pytest.mark.parametrize("after", [0, 1, 5])
def test_write_chunks_failing_midway_keeps_the_old_file(tmp_path, existing, error, after):
    target = tmp_path / "annotations.json"
    if existing:
        target.write_bytes(b'{"old": true}\n')
    with pytest.raises(type(error)):
        atomic.write_chunks(target, _failing(after, error))
    if existing:
        assert target.read_bytes() == b'{"old": true}\n'
        assert listing(tmp_path) == ["annotations.json"]
    else:
        assert not target.exists()
        assert listing(tmp_path) == []


# Independent value: as above, for a piece of the wrong type (neither str nor bytes) after good pieces.
def test_write_chunks_bad_piece_type_keeps_the_old_file(tmp_path):
    target = tmp_path / "f"
    target.write_text("old")
    with pytest.raises((TypeError, AttributeError)):
        atomic.write_chunks(target, ["a", "b", 5, "c"])
    assert target.read_text() == "old" and listing(tmp_path) == ["f"]
    with pytest.raises(SemcorrError, match="is a folder"):
        atomic.write_chunks(tmp_path, ["x"])


# ---------------------------------------------------------------------------- extra: instance_table, pairs


def old_instance_table(dataset: Dataset) -> pd.DataFrame:
    rows = [{"ann_id": inst.id, "image_id": inst.image_id, "category_id": inst.category_id,
             "category": dataset.categories[inst.category_id].name,
             "azimuth_bin": -1 if inst.azimuth_bin is None else inst.azimuth_bin, "bbox_area": inst.bbox_area,
             "truncated": bool(inst.truncated), "occluded": bool(inst.occluded),
             "num_visible": int(inst.visible.sum())} for inst in dataset.instances]
    columns = ["ann_id", "image_id", "category_id", "category", "azimuth_bin", "bbox_area", "truncated",
               "occluded", "num_visible"]
    return pd.DataFrame(rows, columns=columns)


# Independent value: the old row-by-row table (per-instance `visible.sum()`), dtypes included.
@pytest.mark.parametrize("count", [0, 1, 15])
def test_instance_table_equals_row_by_row_table(count):
    dataset = _save_dataset(_tricky_instances()[-count:] if count else [])
    pd.testing.assert_frame_equal(dataset.instance_table(), old_instance_table(dataset), check_exact=True)
    loaded, _ = load(_many_instances_coco())
    pd.testing.assert_frame_equal(loaded.instance_table(), old_instance_table(loaded), check_exact=True)


def _pairs_table(count: int, kind: str = "object") -> pd.DataFrame:
    rng = np.random.default_rng(count)
    kps = [[int(k) for k in rng.choice(3, int(rng.integers(0, 4)), replace=False)] for _ in range(count)]
    table = pd.DataFrame({
        "pair_id": np.arange(1, count + 1, dtype=np.int64),
        "category": ["cup"] * count,
        "split": [("trn", "val", "test")[i % 3] for i in range(count)],
        "src_image_id": np.ones(count, dtype=np.int64),
        "trg_image_id": np.full(count, 2, dtype=np.int64),
        "share": rng.uniform(0, 1, count) / 3.0,
        "flag": rng.random(count) < 0.5,
        "kps_ids": kps,
    })
    if kind == "arrow":
        table["kps_ids"] = pd.Series(kps, dtype=pd.ArrowDtype(pa.list_(pa.int64())))
    return table


def _old_pair_records(chunk: pd.DataFrame) -> str:
    """The pre-issue-15 `_pair_records_json`: records through pandas' to_json, then one json.dumps."""
    table = chunk.copy()
    for column in table.columns:
        if isinstance(table[column].dtype, pd.ArrowDtype):
            table[column] = pa.array(table[column]).to_pylist()
    records = json.loads(table.astype({c: str for c in ("category", "split")}).to_json(orient="records"))
    return json.dumps(records, ensure_ascii=False, allow_nan=False)


# Independent value: the old records text (pandas' to_json per table, one json.dumps), per column kind the
# store's pairs tables hold: ints, strings, floats (10 digits, NaN as null), bools, object and Arrow int lists.
@pytest.mark.parametrize("kind", ["object", "arrow"])
def test_pair_records_json_equals_old_text(kind):
    table = _pairs_table(17, kind)
    table.loc[3, "share"] = np.nan
    table["category"] = ["cup", "tête", 'quo"te', "a\\b"] * 4 + ["cup"]
    table["src_instances"] = pd.Series([[1, 2]] * 17, dtype=pd.ArrowDtype(pa.list_(pa.int64())))
    table["floats_in_lists"] = pd.Series([[0.1234567890123, 1.0]] * 17,
                                         dtype=pd.ArrowDtype(pa.list_(pa.float64())))
    assert "[" + coco_export._pair_records_json(table) + "]" == _old_pair_records(table)
    assert coco_export._pair_records_json(table.iloc[:0]) == ""


# Once divergent (not reachable through `load_pairs`, which maps only list columns to Arrow and has no nullable
# integer columns; `export_coco` takes any DataFrame though): scalar Arrow and nullable integer columns now go
# through pandas' JSON as before. Independent value: the old text.
def test_pair_records_json_arrow_float_column():
    table = _pairs_table(2)
    table["af"] = pd.Series([0.1234567890123, 1e-7], dtype=pd.ArrowDtype(pa.float64()))
    assert "[" + coco_export._pair_records_json(table) + "]" == _old_pair_records(table)


def test_pair_records_json_nullable_int_column():
    table = _pairs_table(2)
    table["ni"] = pd.array([1, None], dtype="Int64")
    assert "[" + coco_export._pair_records_json(table) + "]" == _old_pair_records(table)


# Independent value: `_integer_lists` against the Python flattening of `to_pylist()` (lengths and values),
# on sliced, chunked, large-list, narrow and unsigned arrays; None where nulls or huge uint64 make it unsafe.
@pytest.mark.parametrize("case", ["plain", "sliced", "chunked", "large", "int8", "uint64", "empty", "all empty",
                                  "null list", "null value", "huge uint64", "floats", "not lists"])
def test_integer_lists_equals_python_flattening(case):
    lists = [[1, 2], [], [0], [5, 4, 3], [7]]
    array = pa.array(lists, type=pa.list_(pa.int64()))
    if case == "sliced":
        array = array.slice(1, 3)
    elif case == "chunked":
        array = pa.chunked_array([array.slice(0, 2), array.slice(2)])
    elif case == "large":
        array = pa.array(lists, type=pa.large_list(pa.int64()))
    elif case == "int8":
        array = pa.array(lists, type=pa.list_(pa.int8()))
    elif case == "uint64":
        array = pa.array(lists, type=pa.list_(pa.uint64()))
    elif case == "empty":
        array = pa.array([], type=pa.list_(pa.int64()))
    elif case == "all empty":
        array = pa.array([[], []], type=pa.list_(pa.int64()))
    elif case == "null list":
        array = pa.array([[1], None], type=pa.list_(pa.int64()))
    elif case == "null value":
        array = pa.array([[1, None]], type=pa.list_(pa.int64()))
    elif case == "huge uint64":
        array = pa.array([[2**63]], type=pa.list_(pa.uint64()))
    elif case == "floats":
        array = pa.array([[1.0]], type=pa.list_(pa.float64()))
    elif case == "not lists":
        array = pa.array([1, 2])
    got = store._integer_lists(array)
    python = array.to_pylist()
    if case in ("null list", "null value", "huge uint64", "floats", "not lists"):
        assert got is None
        return
    lengths, values = got
    assert lengths.tolist() == [len(v) for v in python]
    assert values.dtype == np.int64 and values.tolist() == [k for v in python for k in v]


def _pairs_dataset() -> Dataset:
    dataset, error = load(base_coco())
    assert error is None
    return dataset


def _all_rows_check(pairs: pd.DataFrame, dataset: Dataset) -> str | None:
    """`check_pairs` with every pair through the per-row check (no bulk pass, no Arrow buffers)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(store, "_integer_lists", lambda array: None)
        patch.setattr(store, "suspect_pairs", lambda pairs, kps_ids, dataset: np.arange(len(pairs)))
        try:
            store.check_pairs(pairs, PATH, dataset)
        except SemcorrError as exc:
            return str(exc)
    return None


# Independent value: the first message of the per-row check run over every pair.
@pytest.mark.parametrize("kind", ["object", "arrow"])
@pytest.mark.parametrize("corruption", ["none", "kps too big", "kps negative", "category", "image",
                                        "ann of other image", "two bad", "kps none", "kps floats"])
def test_check_pairs_first_message_equals_per_row_check(kind, corruption):
    dataset = _pairs_dataset()
    table = _pairs_table(12, kind)
    table["src_ann_id"] = np.full(12, 5, dtype=np.int64)  # instance 5 is on image 1
    table["trg_ann_id"] = np.full(12, 6, dtype=np.int64)  # instance 6 is on image 2
    for column in ("src_azimuth_bin", "trg_azimuth_bin", "viewpoint_variation", "scale_variation", "truncation",
                   "occlusion"):
        table[column] = np.zeros(12, dtype=np.int64)
    kps = [list(k) for k in table["kps_ids"]]
    if corruption == "kps too big":
        kps[6] = [0, 3]
    elif corruption == "kps negative":
        kps[4] = [-1]
    elif corruption == "category":
        table.loc[5, "category"] = "spoon"
    elif corruption == "image":
        table.loc[7, "trg_image_id"] = 99
    elif corruption == "ann of other image":
        table.loc[2, "trg_ann_id"] = 5
    elif corruption == "two bad":
        kps[9] = [7]
        table.loc[8, "src_image_id"] = 42
    elif corruption == "kps none":
        kps[3] = None
    elif corruption == "kps floats":
        kps[3] = [1.0]
    if kind == "arrow" and corruption != "kps floats":
        table["kps_ids"] = pd.Series(kps, dtype=pd.ArrowDtype(pa.list_(pa.int64())))
    else:
        table["kps_ids"] = pd.Series(kps, dtype=object)
    try:
        store.check_pairs(table, PATH, dataset)
        got = None
    except SemcorrError as exc:
        got = str(exc)
    assert got == _all_rows_check(table, dataset)
    assert (got is None) == (corruption == "none")
