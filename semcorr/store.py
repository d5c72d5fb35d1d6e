"""The dataset directory: load, validate and save (atomically).

Layout (see DESIGN.md)::

    annotations.json   COCO keypoints: images, annotations (+ attributes), categories
    splits.json        image id -> "trn" | "val" | "test"
    pairs.parquet      one row per pair
    images/            the pixels (or `info.image_root` in annotations.json points elsewhere)

In memory, keypoints are (K, 3) float arrays of (x, y, visibility) with x and y NaN
where visibility is 0 ("not labelled"); on disk they are COCO's flat `[x, y, v] * K`
with 0, 0, 0 for unlabelled points. Visibility 1 means "labelled, not visible" and is
kept distinct from 2 ("labelled and visible").
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from semcorr import atomic, coco_schema
from semcorr.errors import SemcorrError

ANNOTATIONS_FILE = "annotations.json"
SPLITS_FILE = "splits.json"
PAIRS_FILE = "pairs.parquet"
IMAGES_DIR = "images"
SPLIT_NAMES = ("trn", "val", "test")
NUM_AZIMUTH_BINS = 8


@dataclass(frozen=True)
class Category:
    """A category and its keypoint schema.

    Attributes:
        id: COCO category id.
        name: category name.
        keypoints: ordered keypoint names (K of them; K differs between categories).
        skeleton: edges as 0-based keypoint index pairs (COCO files store them 1-based).
        descriptions: one text description per keypoint, or empty.
        flip_pairs: 0-based (left, right) keypoint index pairs swapped by a mirror flip.
        supercategory: COCO supercategory.
        schema_version: version of the keypoint schema the names come from.
    """

    id: int
    name: str
    keypoints: tuple[str, ...]
    skeleton: tuple[tuple[int, int], ...] = ()
    descriptions: tuple[str, ...] = ()
    flip_pairs: tuple[tuple[int, int], ...] = ()
    supercategory: str = ""
    schema_version: int = 1

    def __post_init__(self) -> None:
        num = len(self.keypoints)
        if len(set(self.keypoints)) != num:
            raise ValueError(f"category {self.name!r}: duplicate keypoint names")
        if self.descriptions and len(self.descriptions) != num:
            raise ValueError(f"category {self.name!r}: {len(self.descriptions)} descriptions for {num} keypoints")
        for a, b in (*self.skeleton, *self.flip_pairs):
            if not (0 <= a < num and 0 <= b < num):
                raise ValueError(f"category {self.name!r}: edge ({a}, {b}) outside 0..{num - 1}")

    @property
    def num_keypoints(self) -> int:
        """K, the length of this category's keypoint list."""
        return len(self.keypoints)


@dataclass(frozen=True)
class ImageInfo:
    """One image: COCO id, file name relative to the image root, and size in pixels."""

    id: int
    file_name: str
    width: int
    height: int


def valid_visibility(visibility: np.ndarray) -> bool:
    """Every keypoint visibility is 0, 1 or 2."""
    return bool(((visibility == 0) | (visibility == 1) | (visibility == 2)).all())


@dataclass
class Instance:
    """One annotated object instance.

    Attributes:
        id: COCO annotation id.
        image_id: id of the image it is in.
        category_id: id of its category.
        bbox: (4,) float array, COCO [x, y, width, height] in pixels.
        keypoints: (K, 3) float array of x, y, visibility; x, y are NaN where visibility is 0.
        segmentation: COCO segmentation (RLE dict or polygon list), or None.
        area: mask area in pixels (bbox area when there is no mask).
        azimuth_bin: SPair azimuth bin 0..7, or None where unknown.
        truncated: cut by the image border.
        occluded: covered by another object.
        iscrowd: COCO crowd flag.
        extra_attributes: other `attributes` entries (provenance etc.), kept as they are.
    """

    id: int
    image_id: int
    category_id: int
    bbox: np.ndarray
    keypoints: np.ndarray
    segmentation: Any = None
    area: float = 0.0
    azimuth_bin: int | None = None
    truncated: bool = False
    occluded: bool = False
    iscrowd: int = 0
    extra_attributes: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.bbox = np.asarray(self.bbox, dtype=np.float64)
        self.keypoints = np.asarray(self.keypoints, dtype=np.float64).reshape(-1, 3)
        if self.bbox.shape != (4,):
            raise ValueError(f"instance {self.id}: bbox must have shape (4,), got {self.bbox.shape}")
        vis = self.keypoints[:, 2]
        if not valid_visibility(vis):
            raise ValueError(f"instance {self.id}: keypoint visibility must be 0, 1 or 2")
        self.keypoints[vis == 0, :2] = np.nan

    @property
    def visible(self) -> np.ndarray:
        """(K,) bool: keypoints labelled and visible (visibility 2)."""
        return self.keypoints[:, 2] == 2

    @property
    def labelled(self) -> np.ndarray:
        """(K,) bool: keypoints with any label (visibility 1 or 2)."""
        return self.keypoints[:, 2] > 0

    @property
    def bbox_area(self) -> float:
        """Width times height of the bounding box."""
        return float(self.bbox[2] * self.bbox[3])


@dataclass
class Dataset:
    """The contents of `annotations.json`.

    Attributes:
        images: image id -> ImageInfo.
        categories: category id -> Category.
        instances: all instances, in file order.
        image_root: directory the image file names are relative to.
        info: COCO `info` object (kept as is; never holds timestamps we write).
    """

    images: dict[int, ImageInfo]
    categories: dict[int, Category]
    instances: list[Instance]
    image_root: Path
    info: dict[str, Any] = field(default_factory=dict)

    def category_by_name(self, name: str) -> Category:
        """The category called `name`; SemcorrError if there is none."""
        for category in self.categories.values():
            if category.name == name:
                return category
        known = ", ".join(sorted(c.name for c in self.categories.values()))
        raise SemcorrError(f"unknown category {name!r}; the dataset has: {known}")

    def instance_table(self) -> pd.DataFrame:
        """One row per instance with the columns the builders use."""
        with collector_paused():
            instances = self.instances
            count = len(instances)
            names = {c.id: c.name for c in self.categories.values()}
            visible = [inst.keypoints[:, 2] == 2 for inst in instances]
            sizes = np.fromiter(map(len, visible), dtype=np.int64, count=count)
            shown = np.concatenate(([0], np.cumsum(np.concatenate(visible)) if count else [])).astype(np.int64)
            ends = np.cumsum(sizes)
            columns = {
                "ann_id": [inst.id for inst in instances],
                "image_id": [inst.image_id for inst in instances],
                "category_id": [inst.category_id for inst in instances],
                "category": [names[inst.category_id] for inst in instances],
                "azimuth_bin": [-1 if inst.azimuth_bin is None else inst.azimuth_bin for inst in instances],
                "bbox_area": [inst.bbox_area for inst in instances],
                "truncated": [bool(inst.truncated) for inst in instances],
                "occluded": [bool(inst.occluded) for inst in instances],
                "num_visible": (shown[ends] - shown[ends - sizes]).astype(np.int64),
            }
            if not count:
                return pd.DataFrame([], columns=list(columns))
            return pd.DataFrame(columns, columns=list(columns))


# ---------------------------------------------------------------------------- COCO <-> records


def keypoints_from_coco(flat: list[float]) -> np.ndarray:
    """COCO `[x, y, v] * K` to a (K, 3) array with NaN x, y where v == 0."""
    array = np.asarray(flat, dtype=np.float64).reshape(-1, 3)
    array[array[:, 2] == 0, :2] = np.nan
    return array


def keypoints_to_coco(keypoints: np.ndarray) -> list[float]:
    """(K, 3) array to COCO `[x, y, v] * K`, writing 0, 0, 0 for unlabelled points."""
    out: list[float] = []
    for x, y, v in np.asarray(keypoints, dtype=np.float64).tolist():
        if v == 0:
            out.extend((0, 0, 0))
        else:
            out.extend((round(float(x), 2), round(float(y), 2), int(v)))
    return out


def _category_to_coco(category: Category) -> dict[str, Any]:
    return {
        "id": category.id,
        "name": category.name,
        "supercategory": category.supercategory,
        "keypoints": list(category.keypoints),
        "skeleton": [[a + 1, b + 1] for a, b in category.skeleton],
        "keypoint_descriptions": list(category.descriptions),
        "flip_pairs": [[a, b] for a, b in category.flip_pairs],
        "schema_version": category.schema_version,
    }


def _instance_to_coco(inst: Instance) -> dict[str, Any]:
    attributes = dict(inst.extra_attributes)
    attributes.update(
        {
            "azimuth_bin": inst.azimuth_bin,
            "truncated": bool(inst.truncated),
            "occluded": bool(inst.occluded),
        }
    )
    return {
        "id": inst.id,
        "image_id": inst.image_id,
        "category_id": inst.category_id,
        "bbox": [round(float(v), 2) for v in inst.bbox],
        "area": round(float(inst.area), 2),
        "iscrowd": int(inst.iscrowd),
        "segmentation": inst.segmentation if inst.segmentation is not None else [],
        "keypoints": keypoints_to_coco(inst.keypoints),
        "num_keypoints": int(inst.labelled.sum()),
        "attributes": attributes,
    }


def round2(values: np.ndarray) -> np.ndarray:
    """Python's `round(v, 2)` of every value (correctly rounded), vectorised.

    Where numpy's rounding gives the value back, the value already is the double nearest a
    2-decimal number, and so is Python's result; only the rest is rounded one by one.
    """
    values = np.asarray(values, dtype=np.float64)
    rounded = np.round(values, 2)
    other = (rounded != values) & ~np.isnan(values)  # round(nan, 2) is nan too
    if other.any():
        rounded[other] = [round(v, 2) for v in values[other].tolist()]
    return rounded


def _instances_to_coco(instances: list[Instance]) -> list[dict[str, Any]]:
    """`_instance_to_coco` of every instance, with the numbers converted in bulk (the same values and types)."""
    count = len(instances)
    try:
        keypoints = [np.asarray(inst.keypoints, dtype=np.float64) for inst in instances]
        if any(k.ndim != 2 or k.shape[1] != 3 for k in keypoints):
            raise ValueError("not (K, 3) keypoints")
        sizes = np.fromiter(map(len, keypoints), dtype=np.int64, count=count)
        flat = np.concatenate(keypoints) if count else np.zeros((0, 3))
        boxes = np.array([np.asarray(inst.bbox, dtype=np.float64) for inst in instances]).reshape(count, 4)
        areas = np.fromiter((inst.area for inst in instances), dtype=np.float64, count=count)
    except (ValueError, TypeError):
        return [_instance_to_coco(inst) for inst in instances]
    x, y, v = flat[:, 0], flat[:, 1], flat[:, 2]
    unlabelled = v == 0
    if not (np.isfinite(v).all() and np.isfinite(flat[~unlabelled, :2]).all()):
        return [_instance_to_coco(inst) for inst in instances]  # it fails there as it always did
    values = np.empty(3 * len(flat), dtype=object)
    values[0::3] = round2(x).tolist()
    values[1::3] = round2(y).tolist()
    values[2::3] = v.astype(np.int64).tolist()
    zero = np.flatnonzero(unlabelled) * 3
    values[zero] = 0
    values[zero + 1] = 0
    values = values.tolist()
    ends = np.cumsum(3 * sizes)
    starts = (ends - 3 * sizes).tolist()
    ends = ends.tolist()
    labelled = np.concatenate(([0], np.cumsum(v > 0)))
    row_ends = np.cumsum(sizes)
    num_keypoints = (labelled[row_ends] - labelled[row_ends - sizes]).tolist()
    box_lists = round2(boxes).tolist()
    area_values = round2(areas).tolist()
    out = []
    for index, inst in enumerate(instances):
        attributes = dict(inst.extra_attributes)
        attributes.update({"azimuth_bin": inst.azimuth_bin, "truncated": bool(inst.truncated),
                           "occluded": bool(inst.occluded)})
        out.append({
            "id": inst.id,
            "image_id": inst.image_id,
            "category_id": inst.category_id,
            "bbox": box_lists[index],
            "area": area_values[index],
            "iscrowd": int(inst.iscrowd),
            "segmentation": inst.segmentation if inst.segmentation is not None else [],
            "keypoints": values[starts[index]:ends[index]],
            "num_keypoints": num_keypoints[index],
            "attributes": attributes,
        })
    return out


def dataset_to_coco(dataset: Dataset, annotations: bool = True) -> dict[str, Any]:
    """The COCO keypoints dictionary written to `annotations.json` (`annotations` an empty list when False)."""
    return {
        "info": dataset.info,
        "images": [
            {"id": im.id, "file_name": im.file_name, "width": im.width, "height": im.height}
            for im in sorted(dataset.images.values(), key=lambda im: im.id)
        ],
        "annotations": _instances_to_coco(dataset.instances) if annotations else [],
        "categories": [_category_to_coco(c) for c in sorted(dataset.categories.values(), key=lambda c: c.id)],
    }


ANNOTATION_CHUNK = 50_000  # instances converted and written at a time


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=False)


def coco_text(coco: dict[str, Any], instances: list[Instance],
              adjust: Callable[[list[dict[str, Any]]], None] | None = None) -> Iterator[str]:
    """The text of `json.dumps(coco)` (compact, UTF-8, as `atomic.write_json` writes it, newline included)
    in pieces, with `coco["annotations"]` made from `instances` ANNOTATION_CHUNK at a time.

    The annotations never exist as one list of dictionaries; `adjust` may change each chunk's
    dictionaries in place before they are written.
    """
    yield "{"
    for position, (key, value) in enumerate(coco.items()):
        yield f"{', ' if position else ''}{_dumps(key)}: "
        if key != "annotations":
            yield _dumps(value)
            continue
        yield "["
        for start in range(0, len(instances), ANNOTATION_CHUNK):
            records = _instances_to_coco(instances[start:start + ANNOTATION_CHUNK])
            if adjust is not None:
                adjust(records)
            yield (", " if start else "") + _dumps(records)[1:-1]
        yield "]"
    yield "}\n"


def _parse_category(raw: Any, index: int, path: Path) -> Category:
    record = coco_schema.record_name(raw, index, "category")
    parsed = coco_schema.check_record(coco_schema.RawCategory, raw, path, record, "fix the category record")
    try:
        return Category(
            id=parsed.id,
            name=parsed.name,
            keypoints=tuple(parsed.keypoints),
            skeleton=tuple((a - 1, b - 1) for a, b in parsed.skeleton),
            descriptions=tuple(parsed.keypoint_descriptions),
            flip_pairs=tuple(parsed.flip_pairs),
            supercategory=parsed.supercategory,
            schema_version=parsed.schema_version,
        )
    except ValueError as exc:
        raise SemcorrError(f"{path}: {record}: {exc}; fix the category's keypoint schema") from None


def _parse_image(raw: Any, index: int, path: Path) -> ImageInfo:
    if coco_schema.quick_image(raw):
        return ImageInfo(id=raw["id"], file_name=raw["file_name"], width=raw["width"], height=raw["height"])
    record = coco_schema.record_name(raw, index, "image")
    parsed = coco_schema.check_record(coco_schema.RawImage, raw, path, record, "fix the image record")
    return ImageInfo(id=parsed.id, file_name=parsed.file_name, width=parsed.width, height=parsed.height)


def _parse_instance(raw: Any, index: int, path: Path, images: dict[int, ImageInfo],
                    categories: dict[int, Category]) -> Instance:
    if coco_schema.quick_annotation(raw):  # the common shape, checked in bulk; same fields as the model's
        parsed = SimpleNamespace(**{"keypoints": [], "area": None, "iscrowd": 0, "segmentation": None,
                                    "attributes": {}, **raw})
    else:
        record = coco_schema.record_name(raw, index, "annotation")
        parsed = coco_schema.check_record(coco_schema.RawAnnotation, raw, path, record, "fix the annotation record")
    record = f"annotation id={parsed.id} (image id={parsed.image_id})"

    def fail(problem: str, fix: str) -> SemcorrError:
        return SemcorrError(f"{path}: {record}: {problem}; {fix}")

    if parsed.image_id not in images:
        raise fail(f"unknown image id {parsed.image_id}", "add the image to 'images' or remove the annotation")
    if parsed.category_id not in categories:
        raise fail(f"unknown category id {parsed.category_id}", "add the category to 'categories' or fix category_id")
    image = images[parsed.image_id]
    category = categories[parsed.category_id]
    if len(parsed.keypoints) != 3 * category.num_keypoints and parsed.keypoints:
        raise fail(f"{len(parsed.keypoints)} keypoint values for category {category.name!r}, which has "
                   f"{category.num_keypoints} keypoints ({3 * category.num_keypoints} values)",
                   "write [x, y, v] for every keypoint of the category")
    keypoints = keypoints_from_coco(parsed.keypoints or [0] * (3 * category.num_keypoints))
    if not valid_visibility(keypoints[:, 2]):
        raise fail("keypoint visibility outside {0, 1, 2}", "use 0, 1 or 2")
    x_all, y_all, v_all = keypoints.T
    outside = (v_all > 0) & ~((x_all >= 0) & (x_all <= image.width) & (y_all >= 0) & (y_all <= image.height))
    if outside.any():
        k = int(np.argmax(outside))
        x, y = keypoints[k, :2]
        raise fail(f"keypoint {k} ({category.keypoints[k]}) at ({x:g}, {y:g}) is outside the "
                   f"{image.width}x{image.height} image", "fix the coordinates or set its visibility to 0")
    segmentation = parsed.segmentation
    if isinstance(segmentation, coco_schema.RawRle):
        if tuple(segmentation.size) != (image.height, image.width):
            raise fail(f"RLE mask size {list(segmentation.size)} is not the image's [height, width] "
                       f"[{image.height}, {image.width}]", "re-encode the mask at the image size")
        segmentation = {"size": list(segmentation.size), "counts": segmentation.counts}
    attributes = dict(parsed.attributes)
    known = {k: attributes.pop(k) for k in ("azimuth_bin", "truncated", "occluded") if k in attributes}
    if coco_schema.quick_attributes(known):
        known = SimpleNamespace(**{"azimuth_bin": None, "truncated": False, "occluded": False, **known})
    else:
        known = coco_schema.check_record(coco_schema.RawAttributes, known, path, record, "fix its attributes")
    bbox = np.asarray(parsed.bbox, dtype=np.float64)
    return Instance(
        id=parsed.id,
        image_id=parsed.image_id,
        category_id=parsed.category_id,
        bbox=bbox,
        keypoints=keypoints,
        segmentation=segmentation or None,
        area=float(parsed.area if parsed.area is not None else bbox[2] * bbox[3]),
        azimuth_bin=known.azimuth_bin,
        truncated=bool(known.truncated),
        occluded=bool(known.occluded),
        iscrowd=int(parsed.iscrowd),
        extra_attributes=attributes,
    )


@contextlib.contextmanager
def collector_paused():
    """No cyclic garbage collection while a million acyclic records are built or written.

    Each collection would walk every container made so far (the parsed JSON included); none of
    them is part of a reference cycle, so pausing frees nothing late. Restored afterwards.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def dataset_from_coco(coco: Any, path: Path, image_root: Path, check_files: bool = True) -> Dataset:
    """Validate a COCO keypoints dictionary and turn it into a Dataset.

    Args:
        coco: the parsed JSON.
        path: the file it came from (named in error messages).
        image_root: directory that image file names are relative to.
        check_files: also check that every image file exists.

    Raises:
        SemcorrError: naming the file and record of the first problem found.
    """
    with collector_paused():
        return _dataset_from_coco(coco, path, image_root, check_files)


def _file_exists(image_root: Path) -> Callable[[str], bool]:
    """Whether `image_root / name` is a file: one directory listing for plain names, a stat otherwise."""
    try:
        with os.scandir(image_root) as entries:
            listed = {entry.name for entry in entries if entry.is_file()}
    except OSError:
        listed = set()

    def exists(name: str) -> bool:
        return name in listed or (image_root / name).is_file()

    return exists


def _dataset_from_coco(coco: Any, path: Path, image_root: Path, check_files: bool) -> Dataset:
    top = coco_schema.check_record(coco_schema.RawCoco, coco, path, "top level", "write a COCO keypoints file")
    categories: dict[int, Category] = {}
    for index, raw in enumerate(top.categories):
        category = _parse_category(raw, index, path)
        if category.id in categories:
            raise SemcorrError(f"{path}: category id={category.id}: duplicate category id; "
                               "give each category its own id")
        if any(other.name == category.name for other in categories.values()):
            raise SemcorrError(f"{path}: category id={category.id}: duplicate category name {category.name!r}; "
                               "give each category its own name")
        categories[category.id] = category
    images: dict[int, ImageInfo] = {}
    exists = _file_exists(image_root) if check_files else None
    for index, raw in enumerate(top.images):
        image = _parse_image(raw, index, path)
        if image.id in images:
            raise SemcorrError(f"{path}: image id={image.id}: duplicate image id; give each image its own id")
        if exists is not None and not exists(image.file_name):
            raise SemcorrError(f"{path}: image id={image.id}: image file {image_root / image.file_name} does not "
                               "exist; copy the image there or fix file_name")
        images[image.id] = image
    instances = _parse_instances(top.annotations, path, images, categories)
    return Dataset(images=images, categories=categories, instances=instances, image_root=image_root,
                   info=dict(top.info))


_KNOWN_ATTRIBUTES = ("azimuth_bin", "truncated", "occluded")


def _lookup(table: dict[int, Any], keys: np.ndarray, *columns: Callable[[Any], int]) -> tuple[np.ndarray, ...]:
    """For each key: found in `table`, and each column's value of its entry (0 where not found)."""
    known = np.fromiter(table, dtype=np.int64, count=len(table))
    order = np.argsort(known)
    known = known[order]
    entries = [table[k] for k in known.tolist()]
    position = np.clip(np.searchsorted(known, keys), 0, max(len(known) - 1, 0))
    found = known[position] == keys if len(known) else np.zeros(len(keys), dtype=bool)
    out = [found]
    for column in columns:
        values = np.array([column(e) for e in entries], dtype=np.int64) if entries else np.zeros(1, dtype=np.int64)
        out.append(np.where(found, values[position], 0))
    return tuple(out)


def _parse_instances(raws: list, path: Path, images: dict[int, ImageInfo],
                     categories: dict[int, Category]) -> list[Instance]:
    """All annotations as Instances, in file order; the first problem raised as `_parse_instance` words it.

    Records of the common shape are checked column by column (types and ranges in bulk, keypoint
    visibility and bounds vectorised) and built without per-record numpy work: their keypoints
    and boxes are rows of one array each. Every other record (RLE masks, anything doubtful) goes
    through `_parse_instance` and its pydantic model, so every message stays what it was.
    """
    count = len(raws)
    if count == 0:
        return []
    is_dict = np.fromiter((type(r) is dict for r in raws), dtype=bool, count=count)
    ok = is_dict.copy()
    records = raws if ok.all() else [r if good else {} for r, good in zip(raws, is_dict.tolist())]

    ids = [r.get("id") for r in records]
    image_ids = [r.get("image_id") for r in records]
    category_ids = [r.get("category_id") for r in records]
    ok &= coco_schema.plain_ids(ids)
    image_ok = coco_schema.plain_ids(image_ids)
    category_ok = coco_schema.plain_ids(category_ids)
    ok &= image_ok & category_ok
    found, widths, heights = _lookup(images, coco_schema.id_array(image_ids, image_ok),
                                     lambda im: im.width, lambda im: im.height)
    ok &= found
    found, sizes = _lookup(categories, coco_schema.id_array(category_ids, category_ok),
                           lambda c: c.num_keypoints)
    ok &= found
    del image_ids, category_ids, found

    # boxes: four finite numbers, positive width and height
    values, lengths = coco_schema.number_lists([r.get("bbox") for r in records], ok)
    ok &= lengths == 4
    boxes = np.zeros((count, 4))
    if (lengths == 4).all():
        boxes = values.reshape(count, 4)
    else:
        four = lengths == 4
        starts = np.cumsum(lengths) - lengths
        boxes[four] = values[(starts[four, None] + np.arange(4)).ravel()].reshape(-1, 4)
    ok &= (boxes[:, 2] > 0) & (boxes[:, 3] > 0)

    # keypoints: 3K finite numbers (or none), visibility 0/1/2, labelled points inside the image
    values, lengths = coco_schema.number_lists([r.get("keypoints", _NO_VALUES) for r in records], ok)
    expected = 3 * sizes
    ok &= (lengths == expected) | (lengths == 0)
    given = (lengths == expected) & (lengths > 0)
    if given.all():
        flat = values
    else:
        flat = np.zeros(int(expected.sum()))
        flat[np.repeat(given, expected)] = values[np.repeat(given, lengths)]
    del values
    keypoints = flat.reshape(-1, 3)
    owner = np.repeat(np.arange(count), sizes)
    x, y, v = keypoints[:, 0], keypoints[:, 1], keypoints[:, 2]
    labelled = v > 0
    wrong = ~((v == 0) | (v == 1) | (v == 2)) | (labelled & ~(
        (x >= 0) & (x <= widths[owner]) & (y >= 0) & (y <= heights[owner])))
    ok[owner[wrong]] = False
    keypoints[v == 0, :2] = np.nan
    del owner, x, y, v, labelled, wrong

    # the other fields, as `quick_annotation` and `quick_attributes` take them
    ok &= coco_schema.plain_optional_numbers([r.get("num_keypoints") for r in records], 0) & np.fromiter(
        (r.get("num_keypoints") is None or type(r.get("num_keypoints")) is int for r in records), dtype=bool,
        count=count)
    areas = [r.get("area") for r in records]
    ok &= coco_schema.plain_optional_numbers(areas, 0)
    crowds = [r.get("iscrowd", 0) for r in records]
    ok &= np.fromiter((type(c) in (int, bool) and c in (0, 1) for c in crowds), dtype=bool, count=count)
    attributes = [r.get("attributes", _NO_ATTRIBUTES) for r in records]
    is_attr = np.fromiter((type(a) is dict for a in attributes), dtype=bool, count=count)
    ok &= is_attr
    attributes = [a if good else _NO_ATTRIBUTES for a, good in zip(attributes, is_attr.tolist())]
    if not set(map(type, itertools.chain.from_iterable(attributes))) <= {str}:
        ok &= np.fromiter((all(type(k) is str for k in a) for a in attributes), dtype=bool, count=count)
    ok &= coco_schema.plain_attributes(attributes)
    segmentations = [r.get("segmentation") for r in records]
    coco_schema.finite_polygons(segmentations, ok)

    # duplicate ids: the first record whose id an earlier record has
    id_values = coco_schema.id_array(ids, coco_schema.plain_ids(ids))
    id_values = np.where(id_values < 0, -2 - np.arange(count), id_values)
    _, first = np.unique(id_values, return_index=True)
    repeated = np.ones(count, dtype=bool)
    repeated[first] = False
    first_repeat = int(np.argmax(repeated)) if repeated.any() else count

    # records left to the model, in file order; an error there or a duplicate id stops the load
    slow: dict[int, Instance] = {}
    for index in sorted({*np.flatnonzero(~ok).tolist(), *([first_repeat] if first_repeat < count else [])}):
        if not ok[index]:
            slow[index] = _parse_instance(raws[index], index, path, images, categories)
        if index == first_repeat:
            raise SemcorrError(f"{path}: annotation id={ids[index]}: duplicate annotation id; "
                               "give each annotation its own id")

    ends = np.cumsum(sizes)
    starts = (ends - sizes).tolist()
    ends = ends.tolist()
    box_rows = list(boxes)
    new = Instance.__new__
    instances = []
    for index, raw in enumerate(records):
        if index in slow:
            instances.append(slow[index])
            continue
        extra = dict(attributes[index])
        azimuth = extra.pop("azimuth_bin", None)
        truncated = extra.pop("truncated", False)
        occluded = extra.pop("occluded", False)
        area = areas[index]
        box = box_rows[index]
        inst = new(Instance)
        inst.__dict__.update(
            id=raw["id"], image_id=raw["image_id"], category_id=raw["category_id"], bbox=box,
            keypoints=keypoints[starts[index]:ends[index]], segmentation=segmentations[index] or None,
            area=float(area if area is not None else box[2] * box[3]), azimuth_bin=azimuth,
            truncated=bool(truncated), occluded=bool(occluded), iscrowd=int(crowds[index]), extra_attributes=extra)
        instances.append(inst)
    return instances


_NO_VALUES: list = []
_NO_ATTRIBUTES: dict = {}


def read_json(path: Path) -> Any:
    """Parse a JSON file; SemcorrError naming the file and what is wrong when it cannot be read as JSON."""
    path = Path(path)
    if not path.is_file():
        raise SemcorrError(f"{path}: file not found" if not path.exists() else f"{path}: is not a file")
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        raise SemcorrError(f"{path}: is gzip-compressed; decompress it first (gunzip)")
    try:
        with collector_paused():  # a parsed file is acyclic: nothing for the collector to find while it grows
            return json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise SemcorrError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8 JSON") from None
    except json.JSONDecodeError as exc:
        raise SemcorrError(f"{path}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise SemcorrError(f"{path}: JSON nested too deeply to read") from None


def load_dataset(root: Path, check_files: bool = True) -> Dataset:
    """Load and validate `annotations.json` of a dataset directory."""
    root = Path(root)
    path = root / ANNOTATIONS_FILE
    if not root.is_dir():
        raise SemcorrError(f"{root}: dataset folder not found" if not root.exists() else
                           f"{root}: is not a folder; give a dataset directory")
    coco = read_json(path)
    if not isinstance(coco, dict):
        raise SemcorrError(f"{path}: top level: expected a JSON object; write a COCO keypoints file")
    info = coco.get("info", {})
    if info is not None and not isinstance(info, dict):
        raise SemcorrError(f"{path}: top level: field 'info' must be an object, got {type(info).__name__}; "
                           "write info as {...} or remove it")
    coco["info"] = info or {}
    image_root_text = coco["info"].get("image_root", IMAGES_DIR)
    if not isinstance(image_root_text, str) or not image_root_text or "\x00" in image_root_text:
        raise SemcorrError(f"{path}: info.image_root {image_root_text!r} is not a folder path; fix or remove it")
    image_root = Path(image_root_text)
    if not image_root.is_absolute():
        image_root = root / image_root
    return dataset_from_coco(coco, path, image_root, check_files=check_files)


def save_dataset(dataset: Dataset, root: Path) -> Path:
    """Atomically write `annotations.json` into a dataset directory; returns its path."""
    path = Path(root) / ANNOTATIONS_FILE
    with collector_paused():
        atomic.write_chunks(path, coco_text(dataset_to_coco(dataset, annotations=False), dataset.instances))
    return path


def open_image(dataset: Dataset, image_id: int):
    """The pixels of an image as a decoded RGB PIL image; SemcorrError for unreadable or mis-sized files."""
    from PIL import Image, UnidentifiedImageError

    image = dataset.images[image_id]
    path = dataset.image_root / image.file_name
    try:
        with Image.open(path) as handle:
            handle.load()
            pixels = handle.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        reason = "empty file" if path.is_file() and path.stat().st_size == 0 else " ".join(str(exc).split())[:100]
        raise SemcorrError(f"{path}: image id={image_id}: cannot be read as an image ({reason}); "
                           "replace the file") from None
    if pixels.size != (image.width, image.height):
        raise SemcorrError(f"{path}: image id={image_id}: is {pixels.size[0]}x{pixels.size[1]} pixels, but "
                           f"annotations.json says {image.width}x{image.height}; fix width/height or the file")
    return pixels


# ---------------------------------------------------------------------------- splits and pairs


def load_splits(root: Path, dataset: Dataset | None = None) -> dict[int, str]:
    """`splits.json` as image id -> split name (given the dataset, every id must be one of its images)."""
    path = Path(root) / SPLITS_FILE
    raw = read_json(path)
    if not isinstance(raw, dict):
        raise SemcorrError(f"{path}: top level: expected an object image id -> split; run `semcorr split`")
    splits: dict[int, str] = {}
    for key, value in raw.items():
        if value not in SPLIT_NAMES:
            raise SemcorrError(f"{path}: image id={key}: split {value!r} is not one of {', '.join(SPLIT_NAMES)}; "
                               "fix it or rerun `semcorr split`")
        try:
            splits[int(key)] = value
        except ValueError:
            raise SemcorrError(f"{path}: key {key!r} is not an image id; rerun `semcorr split`") from None
    if dataset is not None:
        unknown = sorted(set(splits) - set(dataset.images))
        if unknown:
            raise SemcorrError(f"{path}: image id={unknown[0]}: not an image of {ANNOTATIONS_FILE} "
                               f"({len(unknown)} such ids); rerun `semcorr split`")
    return splits


def save_splits(splits: dict[int, str], root: Path) -> Path:
    """Atomically write `splits.json` (keys sorted numerically)."""
    path = Path(root) / SPLITS_FILE
    atomic.write_json(path, {str(k): splits[k] for k in sorted(splits)}, indent=0)
    return path


PAIR_COLUMNS = ("pair_id", "category", "split", "src_image_id", "trg_image_id", "kps_ids")
SPAIR_COLUMNS = ("src_ann_id", "trg_ann_id", "src_azimuth_bin", "trg_azimuth_bin", "viewpoint_variation",
                 "scale_variation", "truncation", "occlusion")
MISC_COLUMNS = ("src_instances", "trg_instances", "shared", "share", "num_correspondences")


def load_pairs(root: Path, dataset: Dataset | None = None) -> pd.DataFrame:
    """`pairs.parquet` as a DataFrame, checked for its columns (and, given the dataset, its ids).

    Raises:
        SemcorrError: naming the file and the first bad column or pair.
    """
    path = Path(root) / PAIRS_FILE
    if not path.is_file():
        raise SemcorrError(f"{path}: file not found; run `semcorr build-pairs` first")
    try:
        table = pq.read_table(path)
        pairs = table.to_pandas(types_mapper=lambda t: pd.ArrowDtype(t) if pa.types.is_list(t) else None)
    except (pa.ArrowException, OSError, ValueError, TypeError) as exc:
        raise SemcorrError(f"{path}: not a readable pairs table ({' '.join(str(exc).split())[:120]}); "
                           "rerun `semcorr build-pairs`") from None
    check_pairs(pairs, path, dataset)
    return pairs


def check_pairs(pairs: pd.DataFrame, path: Path, dataset: Dataset | None = None) -> None:
    """Check a pairs table's columns, types and (given the dataset) the ids and keypoint indexes it names."""

    def fail(record: str, problem: str) -> SemcorrError:
        return SemcorrError(f"{path}: {record}: {problem}; rerun `semcorr build-pairs`")

    mode_columns = MISC_COLUMNS if "src_instances" in pairs.columns else SPAIR_COLUMNS
    missing = [c for c in (*PAIR_COLUMNS, *mode_columns) if c not in pairs.columns]
    if missing:
        raise fail("columns", f"missing column(s) {', '.join(missing)}")
    integer_columns = ["pair_id", "src_image_id", "trg_image_id"]
    if mode_columns is SPAIR_COLUMNS:
        integer_columns += ["src_ann_id", "trg_ann_id", "src_azimuth_bin", "trg_azimuth_bin", "viewpoint_variation",
                            "scale_variation", "truncation", "occlusion"]
    for column in integer_columns:
        if not pd.api.types.is_integer_dtype(pairs[column]):
            raise fail(f"column {column!r}", f"holds {pairs[column].dtype}, not integers")
    if pairs["pair_id"].duplicated().any():
        raise fail(f"pair_id={int(pairs.loc[pairs['pair_id'].duplicated(), 'pair_id'].iloc[0])}", "duplicate pair id")
    bad_split = ~pairs["split"].astype(str).isin(SPLIT_NAMES)
    if bad_split.any():
        row = pairs[bad_split.to_numpy()].iloc[0]
        raise fail(f"pair_id={row.pair_id}", f"split {row.split!r} is not one of {', '.join(SPLIT_NAMES)}")
    try:
        kps_array = pa.array(pairs["kps_ids"])
    except (pa.ArrowException, TypeError, ValueError):
        raise fail("column 'kps_ids'", "is not a list of keypoint indexes per pair") from None
    if dataset is None:
        return
    by_name = {c.name: c for c in dataset.categories.values()}
    flat = _integer_lists(kps_array)
    if flat is not None:  # lists of integers without nulls: checked from the Arrow buffers
        suspects = _suspect_pairs(pairs, *flat, dataset)
        kps_ids = {int(i): kps_array[int(i)].as_py() for i in suspects}
    else:
        kps_ids = kps_array.to_pylist()
        suspects = suspect_pairs(pairs, kps_ids, dataset)
    instances = {inst.id: inst for inst in dataset.instances} if len(suspects) else {}
    for row, kps in zip(pairs.iloc[suspects].itertuples(index=False), (kps_ids[i] for i in suspects)):
        record = f"pair_id={row.pair_id}"
        category = by_name.get(str(row.category))
        if category is None:
            raise fail(record, f"unknown category {str(row.category)!r}")
        for side in ("src", "trg"):
            image_id = int(getattr(row, f"{side}_image_id"))
            if image_id not in dataset.images:
                raise fail(record, f"unknown {side} image id {image_id}")
            ann_id = getattr(row, f"{side}_ann_id", None)
            if ann_id is not None and (int(ann_id) not in instances or instances[int(ann_id)].image_id != image_id):
                raise fail(record, f"{side} annotation id {int(ann_id)} is not an instance of image {image_id}")
        if not isinstance(kps, list) or any(not isinstance(k, int) or not 0 <= k < category.num_keypoints
                                            for k in kps):
            raise fail(record, f"kps_ids {kps!r} are not keypoint indexes 0..{category.num_keypoints - 1} of "
                               f"{category.name!r}")


def suspect_pairs(pairs: pd.DataFrame, kps_ids: list, dataset: Dataset) -> np.ndarray:
    """Positions of the pairs that may break a rule of `check_pairs` (all others certainly pass), in order.

    Checked in bulk: the category is known, both image ids are images, each annotation id (SPair)
    is an instance of its image, and every keypoint id is an int in 0..K-1 of the category.
    """
    lengths = np.fromiter((len(k) if isinstance(k, list) else -1 for k in kps_ids), dtype=np.int64,
                          count=len(kps_ids))
    flat = [k for kps in kps_ids if isinstance(kps, list) for k in kps]
    if not all(type(k) is int for k in flat):
        return np.arange(len(pairs))
    return _suspect_pairs(pairs, lengths, np.asarray(flat, dtype=np.int64), dataset)


def _integer_lists(array: pa.Array) -> tuple[np.ndarray, np.ndarray] | None:
    """(lengths, values as int64) of an Arrow array of integer lists with no null list or value, else None."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if not (pa.types.is_list(array.type) or pa.types.is_large_list(array.type)):
        return None
    if not pa.types.is_integer(array.type.value_type) or array.null_count:
        return None
    offsets = array.offsets.to_numpy(zero_copy_only=False).astype(np.int64)
    first, last = (int(offsets[0]), int(offsets[-1])) if len(array) else (0, 0)
    values = array.values.slice(first, last - first)
    if values.null_count:
        return None
    numbers = values.to_numpy(zero_copy_only=False)
    if numbers.dtype == np.uint64 and len(numbers) and numbers.max() > np.iinfo(np.int64).max:
        return None
    return np.diff(offsets), numbers.astype(np.int64)


def _suspect_pairs(pairs: pd.DataFrame, lengths: np.ndarray, values: np.ndarray, dataset: Dataset) -> np.ndarray:
    """`suspect_pairs` given each pair's keypoint-id count (-1: not a list) and all the ids, in order."""
    names = pairs["category"].astype(str).to_numpy()
    sizes = {c.name: c.num_keypoints for c in dataset.categories.values()}
    bad = ~pd.Series(names).isin(list(sizes)).to_numpy()
    image_ids = np.fromiter(dataset.images, dtype=np.int64, count=len(dataset.images))
    image_of = None
    for side in ("src", "trg"):
        images = pairs[f"{side}_image_id"].to_numpy()
        bad |= ~np.isin(images, image_ids)
        if f"{side}_ann_id" in pairs.columns:
            if image_of is None:
                image_of = pd.Series({inst.id: inst.image_id for inst in dataset.instances}, dtype="int64")
            owner = pd.Series(pairs[f"{side}_ann_id"].to_numpy()).map(image_of).to_numpy()
            bad |= ~(owner == images)
    bad |= lengths < 0
    limits = np.repeat(pd.Series(names).map(sizes).fillna(0).to_numpy(dtype=np.int64), np.maximum(lengths, 0))
    wrong = (values < 0) | (values >= limits)
    bad[np.repeat(np.arange(len(pairs)), np.maximum(lengths, 0))[wrong]] = True
    return np.flatnonzero(bad)


def save_pairs(pairs: pd.DataFrame, root: Path) -> Path:
    """Atomically write `pairs.parquet`."""
    path = Path(root) / PAIRS_FILE
    table = pa.Table.from_pandas(pairs, preserve_index=False).replace_schema_metadata(None)
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer)
    atomic.write_bytes(path, buffer.getvalue().to_pybytes())
    return path
