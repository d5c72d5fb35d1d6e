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

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from semcorr import atomic
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
        if not np.isin(vis, (0, 1, 2)).all():
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
        rows = [
            {
                "ann_id": inst.id,
                "image_id": inst.image_id,
                "category_id": inst.category_id,
                "category": self.categories[inst.category_id].name,
                "azimuth_bin": -1 if inst.azimuth_bin is None else inst.azimuth_bin,
                "bbox_area": inst.bbox_area,
                "truncated": bool(inst.truncated),
                "occluded": bool(inst.occluded),
                "num_visible": int(inst.visible.sum()),
            }
            for inst in self.instances
        ]
        columns = ["ann_id", "image_id", "category_id", "category", "azimuth_bin", "bbox_area",
                   "truncated", "occluded", "num_visible"]
        return pd.DataFrame(rows, columns=columns)


# ---------------------------------------------------------------------------- COCO <-> records


def keypoints_from_coco(flat: list[float]) -> np.ndarray:
    """COCO `[x, y, v] * K` to a (K, 3) array with NaN x, y where v == 0."""
    array = np.asarray(flat, dtype=np.float64).reshape(-1, 3)
    array[array[:, 2] == 0, :2] = np.nan
    return array


def keypoints_to_coco(keypoints: np.ndarray) -> list[float]:
    """(K, 3) array to COCO `[x, y, v] * K`, writing 0, 0, 0 for unlabelled points."""
    out: list[float] = []
    for x, y, v in keypoints:
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


def dataset_to_coco(dataset: Dataset) -> dict[str, Any]:
    """The COCO keypoints dictionary written to `annotations.json`."""
    return {
        "info": dataset.info,
        "images": [
            {"id": im.id, "file_name": im.file_name, "width": im.width, "height": im.height}
            for im in sorted(dataset.images.values(), key=lambda im: im.id)
        ],
        "annotations": [_instance_to_coco(inst) for inst in dataset.instances],
        "categories": [_category_to_coco(c) for c in sorted(dataset.categories.values(), key=lambda c: c.id)],
    }


class _Checker:
    """Turns a failed check into a SemcorrError naming the file and the record."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, record: str, problem: str, fix: str) -> SemcorrError:
        return SemcorrError(f"{self.path}: {record}: {problem}; {fix}")

    def field(self, obj: dict, key: str, record: str) -> Any:
        if not isinstance(obj, dict) or key not in obj:
            raise self.fail(record, f"missing field {key!r}", "add it")
        return obj[key]


def _parse_category(raw: dict, index: int, check: _Checker) -> Category:
    record = f"categories[{index}]"
    cat_id = check.field(raw, "id", record)
    record = f"category id={cat_id}"
    names = raw.get("keypoints", []) or []
    try:
        return Category(
            id=int(cat_id),
            name=str(check.field(raw, "name", record)),
            keypoints=tuple(names),
            skeleton=tuple((int(a) - 1, int(b) - 1) for a, b in raw.get("skeleton", []) or []),
            descriptions=tuple(raw.get("keypoint_descriptions", []) or []),
            flip_pairs=tuple((int(a), int(b)) for a, b in raw.get("flip_pairs", []) or []),
            supercategory=str(raw.get("supercategory", "")),
            schema_version=int(raw.get("schema_version", 1)),
        )
    except ValueError as exc:
        raise check.fail(record, str(exc), "fix the category's keypoint schema") from None


def _parse_instance(
    raw: dict, index: int, check: _Checker, images: dict[int, ImageInfo], categories: dict[int, Category]
) -> Instance:
    ann_id = check.field(raw, "id", f"annotations[{index}]")
    record = f"annotation id={ann_id}"
    image_id = int(check.field(raw, "image_id", record))
    category_id = int(check.field(raw, "category_id", record))
    record = f"annotation id={ann_id} (image id={image_id})"
    if image_id not in images:
        raise check.fail(record, f"unknown image id {image_id}", "add the image to 'images' or remove the annotation")
    if category_id not in categories:
        raise check.fail(record, f"unknown category id {category_id}",
                         "add the category to 'categories' or fix category_id")
    image = images[image_id]
    category = categories[category_id]
    bbox = np.asarray(check.field(raw, "bbox", record), dtype=np.float64)
    if bbox.shape != (4,) or not np.isfinite(bbox).all():
        raise check.fail(record, f"bbox {raw['bbox']!r} is not [x, y, width, height]", "write four numbers")
    if bbox[2] <= 0 or bbox[3] <= 0:
        raise check.fail(record, f"bbox {raw['bbox']!r} has non-positive size", "give it a width and height > 0")
    flat = raw.get("keypoints", []) or []
    if len(flat) != 3 * category.num_keypoints:
        raise check.fail(
            record,
            f"{len(flat)} keypoint values for category {category.name!r}, which has "
            f"{category.num_keypoints} keypoints ({3 * category.num_keypoints} values)",
            "write [x, y, v] for every keypoint of the category",
        )
    keypoints = keypoints_from_coco(flat)
    if not np.isin(keypoints[:, 2], (0, 1, 2)).all():
        raise check.fail(record, "keypoint visibility outside {0, 1, 2}", "use 0, 1 or 2")
    for k, (x, y, v) in enumerate(keypoints):
        if v > 0 and not (0 <= x <= image.width and 0 <= y <= image.height):
            raise check.fail(
                record,
                f"keypoint {k} ({category.keypoints[k]}) at ({x:g}, {y:g}) is outside the "
                f"{image.width}x{image.height} image",
                "fix the coordinates or set its visibility to 0",
            )
    attributes = dict(raw.get("attributes", {}) or {})
    azimuth_bin = attributes.pop("azimuth_bin", None)
    if azimuth_bin is not None and (
        not isinstance(azimuth_bin, int) or isinstance(azimuth_bin, bool) or not 0 <= azimuth_bin < NUM_AZIMUTH_BINS
    ):
        raise check.fail(record, f"azimuth_bin {azimuth_bin!r} is outside 0-7", "use an integer bin 0..7 or null")
    truncated = bool(attributes.pop("truncated", False))
    occluded = bool(attributes.pop("occluded", False))
    return Instance(
        id=int(ann_id),
        image_id=image_id,
        category_id=category_id,
        bbox=bbox,
        keypoints=keypoints,
        segmentation=raw.get("segmentation") or None,
        area=float(raw.get("area", bbox[2] * bbox[3])),
        azimuth_bin=azimuth_bin,
        truncated=truncated,
        occluded=occluded,
        iscrowd=int(raw.get("iscrowd", 0)),
        extra_attributes=attributes,
    )


def dataset_from_coco(coco: dict, path: Path, image_root: Path, check_files: bool = True) -> Dataset:
    """Validate a COCO keypoints dictionary and turn it into a Dataset.

    Args:
        coco: the parsed JSON.
        path: the file it came from (named in error messages).
        image_root: directory that image file names are relative to.
        check_files: also check that every image file exists.

    Raises:
        SemcorrError: naming the file and record of the first problem found.
    """
    check = _Checker(path)
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco.get(key), list):
            raise check.fail("top level", f"missing list {key!r}", "write a COCO keypoints file")
    categories: dict[int, Category] = {}
    for index, raw in enumerate(coco["categories"]):
        category = _parse_category(raw, index, check)
        if category.id in categories:
            raise check.fail(f"category id={category.id}", "duplicate category id", "give each category its own id")
        categories[category.id] = category
    images: dict[int, ImageInfo] = {}
    for index, raw in enumerate(coco["images"]):
        image_id = check.field(raw, "id", f"images[{index}]")
        record = f"image id={image_id}"
        image = ImageInfo(
            id=int(image_id),
            file_name=str(check.field(raw, "file_name", record)),
            width=int(check.field(raw, "width", record)),
            height=int(check.field(raw, "height", record)),
        )
        if image.id in images:
            raise check.fail(record, "duplicate image id", "give each image its own id")
        if image.width <= 0 or image.height <= 0:
            raise check.fail(record, f"size {image.width}x{image.height} is not positive", "fix width and height")
        if check_files and not (image_root / image.file_name).is_file():
            raise check.fail(record, f"image file {image_root / image.file_name} does not exist",
                             "copy the image there or fix file_name")
        images[image.id] = image
    instances = []
    seen: set[int] = set()
    for index, raw in enumerate(coco["annotations"]):
        inst = _parse_instance(raw, index, check, images, categories)
        if inst.id in seen:
            raise check.fail(f"annotation id={inst.id}", "duplicate annotation id", "give each annotation its own id")
        seen.add(inst.id)
        instances.append(inst)
    return Dataset(images=images, categories=categories, instances=instances, image_root=image_root,
                   info=dict(coco.get("info", {}) or {}))


def read_json(path: Path) -> Any:
    """Parse a JSON file; SemcorrError naming the file and position when it is malformed."""
    path = Path(path)
    if not path.is_file():
        raise SemcorrError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise SemcorrError(f"{path}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None


def load_dataset(root: Path, check_files: bool = True) -> Dataset:
    """Load and validate `annotations.json` of a dataset directory."""
    root = Path(root)
    path = root / ANNOTATIONS_FILE
    coco = read_json(path)
    if not isinstance(coco, dict):
        raise SemcorrError(f"{path}: top level: expected a JSON object; write a COCO keypoints file")
    image_root = Path(coco.get("info", {}).get("image_root", IMAGES_DIR))
    if not image_root.is_absolute():
        image_root = root / image_root
    return dataset_from_coco(coco, path, image_root, check_files=check_files)


def save_dataset(dataset: Dataset, root: Path) -> Path:
    """Atomically write `annotations.json` into a dataset directory; returns its path."""
    path = Path(root) / ANNOTATIONS_FILE
    atomic.write_json(path, dataset_to_coco(dataset))
    return path


# ---------------------------------------------------------------------------- splits and pairs


def load_splits(root: Path) -> dict[int, str]:
    """`splits.json` as image id -> split name."""
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
    return splits


def save_splits(splits: dict[int, str], root: Path) -> Path:
    """Atomically write `splits.json` (keys sorted numerically)."""
    path = Path(root) / SPLITS_FILE
    atomic.write_json(path, {str(k): splits[k] for k in sorted(splits)}, indent=0)
    return path


def load_pairs(root: Path) -> pd.DataFrame:
    """`pairs.parquet` as a DataFrame."""
    path = Path(root) / PAIRS_FILE
    if not path.is_file():
        raise SemcorrError(f"{path}: file not found; run `semcorr build-pairs` first")
    table = pq.read_table(path)
    return table.to_pandas(types_mapper=lambda t: pd.ArrowDtype(t) if pa.types.is_list(t) else None)


def save_pairs(pairs: pd.DataFrame, root: Path) -> Path:
    """Atomically write `pairs.parquet`."""
    path = Path(root) / PAIRS_FILE
    table = pa.Table.from_pandas(pairs, preserve_index=False).replace_schema_metadata(None)
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer)
    atomic.write_bytes(path, buffer.getvalue().to_pybytes())
    return path
