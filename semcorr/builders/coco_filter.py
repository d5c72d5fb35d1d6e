"""COCO curation the MISC210K way: categories with a 3D prototype, 1-4 clean instances per
image, a balanced distribution of per-image instance counts.

Rules, in order (each rejected record is counted under its reason, never a crash):

- records: an annotation that is not an object or has a field of the wrong type (`bad_record`:
  ids that are not integers in 0..2^63-1, a bbox that is not four finite numbers, an
  `iscrowd` that is not 0 or 1), that shares its id with another annotation
  (`duplicate_id`), names an unknown image (`unknown_image`), an image whose record is
  broken (`bad_image_record`: missing or non-integer id, width or height, duplicate id) or
  whose `file_name` is unsafe (`unsafe_file_name`: absolute, with `..` or NUL; see
  `semcorr.paths`), an unknown category (`unknown_category`), has a zero-area box
  (`zero_area_box`), an empty segmentation (`empty_segmentation`), a corrupt one
  (`bad_segmentation`: polygon coordinates that are not finite numbers near the image, RLE
  whose size is not the image's or whose runs do not cover it), or is on an image whose file
  is missing (`missing_image_file`);
- instances: `crowd` (iscrowd = 1), `too_small` (area < `min_area` pixels, where the area is
  COCO's `area` field, the documented measure, and the mask's pixel count only where that
  field is missing or not a positive number), `cut_by_border` (share of the box perimeter
  lying on the image border > `max_border_cut`, see `border_cut`), `sparse_mask`
  (area / box area < `min_fill`);
- images, per category: `too_many_instances` (more than `max_instances` clean ones),
  `confusing_excluded` (a crowd region, or a rejected instance at least `min_area` large, of
  the same category: an unannotated look-alike would turn correct predictions into false
  positives), then at most `max_images` per category, drawn with the seed so that the
  counts of 1, 2, 3 and 4-instance images are as equal as the data allows (`over_cap`).

Kept instances get `truncated` when they touch the image border (a border cut above 0).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from pycocotools import mask as mask_utils

from semcorr.coco_schema import rle_array, rle_runs
from semcorr.engine import LOCAL, Engine, map_chunks
from semcorr.errors import SemcorrError
from semcorr.paths import path_problem

MISC_CATEGORIES = (
    "airplane", "baseball bat", "bear", "bed", "bench", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "clock", "cow", "cup", "dog", "fork", "giraffe", "horse", "laptop", "motorcycle", "mouse", "person",
    "sheep", "skateboard", "skis", "stop sign", "tennis racket", "tie", "toothbrush", "train", "tv", "zebra",
)
RECORD_REASONS = ("bad_record", "duplicate_id", "unknown_image", "bad_image_record", "unsafe_file_name",
                  "unknown_category", "zero_area_box", "empty_segmentation", "bad_segmentation",
                  "missing_image_file")
INSTANCE_REASONS = ("crowd", "too_small", "cut_by_border", "sparse_mask")
IMAGE_REASONS = ("too_many_instances", "confusing_excluded", "over_cap")
BORDER_BAND = 2  # pixels: COCO polygons stop a fraction of a pixel inside the image edge
MAX_ID = 2**63 - 1
MAX_SIDE = 20000  # pixels: larger images are refused before a mask is allocated


def _finite(value, lo: float = -math.inf, hi: float = math.inf) -> bool:
    """An int or float (not bool) that is finite and within [lo, hi]."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and lo <= value <= hi)


def _all_finite(values: list, lo: float = -math.inf, hi: float = math.inf) -> bool:
    """`_finite(v, lo, hi)` for every value; plain ints and floats in bulk, anything else one by one."""
    if not values:
        return True
    if not set(map(type, values)) <= {int, float}:
        return all(_finite(v, lo, hi) for v in values)
    try:
        total = sum(values)
    except OverflowError:
        return False
    return math.isfinite(total) and lo <= min(values) and max(values) <= hi


def is_coco_id(value) -> bool:
    """A COCO id: an integer (not bool) in 0..2^63-1."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_ID


def _side(value) -> int | None:
    """An image width or height: a positive whole number up to MAX_SIDE, else None."""
    if _finite(value, 1, MAX_SIDE) and float(value).is_integer():
        return int(value)
    return None


@dataclass(frozen=True)
class FilterOptions:
    """Thresholds of coco-filter (areas in pixels)."""

    min_area: float = 1024.0
    max_border_cut: float = 0.25
    min_fill: float = 0.2
    max_instances: int = 4
    max_images: int = 300
    seed: int = 0

    def __post_init__(self) -> None:
        checks = (
            ("--min-area", self.min_area, _finite(self.min_area, 0), "use a number of pixels >= 0"),
            ("--max-border-cut", self.max_border_cut, _finite(self.max_border_cut, 0, 1), "use a share in [0, 1]"),
            ("--min-fill", self.min_fill, _finite(self.min_fill, 0, 1), "use a share in [0, 1]"),
            ("--max-instances", self.max_instances,
             isinstance(self.max_instances, int) and not isinstance(self.max_instances, bool)
             and self.max_instances >= 1, "use a whole number >= 1"),
            ("--max-images", self.max_images,
             isinstance(self.max_images, int) and not isinstance(self.max_images, bool) and self.max_images >= 1,
             "use a whole number >= 1"),
            ("--seed", self.seed, isinstance(self.seed, int) and not isinstance(self.seed, bool)
             and 0 <= self.seed < 2**32, "use a whole number in 0..4294967295"),
        )
        for option, value, ok, fix in checks:
            if not ok:
                raise SemcorrError(f"{option} {value!r}: out of range; {fix}")


def segmentation_problem(segmentation, height: int, width: int) -> str | None:
    """Why a COCO segmentation cannot be decoded on a height x width image, or None.

    Polygons: lists of at least three (x, y) finite numbers within the image grown by its
    size on each side. RLE: `size` equal to [height, width], runs (a list of non-negative
    integers or a compressed string) that add up to height * width.
    """
    if isinstance(segmentation, list):
        for polygon in segmentation:
            if not isinstance(polygon, list) or len(polygon) % 2:
                return "a polygon is not a list of x, y pairs"
            if not (_all_finite(polygon[0::2], -width, 2 * width) and _all_finite(polygon[1::2], -height, 2 * height)):
                return "a polygon coordinate is not a finite number near the image"
        if not any(len(polygon) >= 6 for polygon in segmentation):
            return "no polygon has 3 points"
        return None
    if not isinstance(segmentation, dict):
        return f"expected a polygon list or an RLE object, got {type(segmentation).__name__}"
    size, counts = segmentation.get("size"), segmentation.get("counts")
    if not (isinstance(size, list) and len(size) == 2 and all(is_coco_id(s) for s in size)):
        return "RLE size is not [height, width]"
    if size != [height, width]:
        return f"RLE size {size} is not the image's [{height}, {width}]"
    total = height * width
    if isinstance(counts, list):
        if not all(is_coco_id(c) for c in counts):
            return "RLE counts are not non-negative integers"
        runs = counts
    elif isinstance(counts, str):
        runs = rle_runs(counts, total)
        if runs is None:
            return "RLE counts string is corrupt"
    else:
        return "RLE counts are neither a list nor a string"
    if sum(runs) != total:
        return f"RLE runs cover {sum(runs)} pixels, not the image's {total}"
    return None


def decode_mask(segmentation, height: int, width: int) -> np.ndarray:
    """COCO polygon list, uncompressed or compressed RLE -> (H, W) bool mask.

    Raises:
        SemcorrError: the segmentation is corrupt (see `segmentation_problem`).
    """
    return mask_utils.decode(segmentation_rle(segmentation, height, width)).astype(bool)


def segmentation_rle(segmentation, height: int, width: int) -> dict:
    """COCO polygon list, uncompressed or compressed RLE -> one pycocotools RLE, without decoding pixels.

    Raises:
        SemcorrError: the segmentation is corrupt (see `segmentation_problem`).
    """
    problem = segmentation_problem(segmentation, height, width)
    if problem:
        raise SemcorrError(f"corrupt segmentation: {problem}")
    if isinstance(segmentation, list):
        return mask_utils.merge(mask_utils.frPyObjects([[float(v) for v in p] for p in segmentation if len(p) >= 6],
                                                       height, width))
    if isinstance(segmentation["counts"], list):
        return mask_utils.frPyObjects(segmentation, height, width)
    return {"size": [height, width], "counts": segmentation["counts"].encode("ascii")}


def mask_measures(items: list[tuple]) -> list[tuple[float, float]]:
    """(mask pixel count, `border_cut`) of each (segmentation, height, width, bbox) item.

    The mask's own box comes from its RLE; only a mask within `BORDER_BAND` of an image edge
    is decoded (a mask away from every edge has a border cut of 0), so most masks are never
    expanded to pixels. Items are checked segmentations (see `segmentation_problem`).
    """
    out = []
    for segmentation, height, width, bbox in items:
        rle = _checked_rle(segmentation, height, width)
        area = float(mask_utils.area(rle))
        x, y, w, h = mask_utils.toBbox(rle).tolist()
        band = max(1, min(BORDER_BAND, height, width))
        perimeter = 2.0 * (float(bbox[2]) + float(bbox[3]))
        if area > 0 and x >= band and y >= band and x + w <= width - band and y + h <= height - band:
            cut = 0.0 if perimeter > 0 else 1.0
        else:  # `border_cut` of the decoded mask, counted from the runs
            on_border = border_pixels(rle_array(rle["counts"].decode("ascii")), height, width, band)
            cut = min(1.0, on_border / perimeter) if perimeter > 0 else 1.0
        out.append((area, cut))
    return out


def _checked_rle(segmentation, height: int, width: int) -> dict:
    """`segmentation_rle` of a segmentation `segmentation_problem` has passed (the same mask, unchecked again)."""
    if isinstance(segmentation, list):
        polygons = [p for p in segmentation if len(p) >= 6]  # plain numbers: pycocotools reads them as doubles
        rles = mask_utils.frPyObjects(polygons, height, width)
        return rles[0] if len(rles) == 1 else mask_utils.merge(rles)
    return segmentation_rle(segmentation, height, width)


def _covered(starts: np.ndarray, ends: np.ndarray, size: int) -> int:
    """How many of 0..size-1 lie in at least one of the closed intervals [starts[i], ends[i]]."""
    keep = starts <= ends
    marks = np.zeros(size + 1, dtype=np.int64)
    np.add.at(marks, starts[keep], 1)
    np.add.at(marks, ends[keep] + 1, -1)
    return int((np.cumsum(marks[:size]) > 0).sum())


def border_pixels(runs: np.ndarray, height: int, width: int, band: int) -> int:
    """`border_cut`'s count of border columns and rows, from a mask's column-major RLE runs (no decoding).

    Per image edge: the columns (top, bottom) or rows (left, right) where some foreground run
    reaches into the outer `band` pixels; the four counts summed.
    """
    edges = np.cumsum(runs)
    begin = np.concatenate(([0], edges[:-1]))[1::2]  # foreground runs [begin, end) of linear index col * h + row
    end = edges[1::2]
    keep = end > begin
    begin, end = begin[keep], end[keep]
    if not len(begin):
        return 0
    h = height
    total = _covered(np.maximum((begin - band) // h + 1, 0), (end - 1) // h, width)  # top rows 0..band-1
    total += _covered(begin // h, np.minimum((end - h + band - 1) // h, width - 1), width)  # bottom rows
    for first, last in ((0, band * h), ((width - band) * h, width * h)):  # left / right columns
        lo, hi = np.maximum(begin, first), np.minimum(end, last)
        inside = hi > lo
        lo, hi = lo[inside], hi[inside]
        full = (hi - lo) >= h
        if full.any():
            total += h
            continue
        r0, r1 = lo % h, (hi - 1) % h
        wrap = r0 > r1
        starts = np.concatenate((r0[~wrap], r0[wrap], np.zeros(int(wrap.sum()), dtype=np.int64)))
        stops = np.concatenate((r1[~wrap], np.full(int(wrap.sum()), h - 1, dtype=np.int64), r1[wrap]))
        total += _covered(starts, stops, h)
    return total


def border_cut(mask: np.ndarray, bbox: np.ndarray | None = None, band: int = BORDER_BAND) -> float:
    """Share of the box perimeter that lies on the image border.

    A side of the box lies on the border where the mask reaches the outer `band` pixels of
    the image (COCO polygons stop a fraction of a pixel inside the edge, at x = 0.3 or
    x = 639.04, so the outermost pixel row alone misses most cuts): per image edge, the
    number of pixel columns (top, bottom) or rows (left, right) where the mask has a pixel
    within `band` of that edge, summed and divided by the box perimeter 2 (w + h), capped at 1.

    Args:
        mask: (H, W) bool instance mask.
        bbox: COCO [x, y, w, h]; the mask's own bounding box when None.
        band: width of the border band in pixels.
    """
    mask = np.asarray(mask, dtype=bool)
    height, width = mask.shape
    if bbox is None:
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        if not len(rows):
            return 0.0
        bbox = np.array([cols[0], rows[0], cols[-1] + 1 - cols[0], rows[-1] + 1 - rows[0]], dtype=np.float64)
    band = max(1, min(int(band), height, width))
    on_border = (int(mask[:band].any(axis=0).sum()) + int(mask[-band:].any(axis=0).sum())
                 + int(mask[:, :band].any(axis=1).sum()) + int(mask[:, -band:].any(axis=1).sum()))
    perimeter = 2.0 * (float(bbox[2]) + float(bbox[3]))
    return min(1.0, on_border / perimeter) if perimeter > 0 else 1.0


def checked_images(coco: dict) -> tuple[dict[int, dict], dict[int, str]]:
    """The usable image records by id, and the reason each unusable one (with an integer id) is out.

    Returns:
        images: id -> {"id", "file_name", "width", "height"} with checked types.
        problems: id -> "bad_image_record" | "unsafe_file_name".
    """
    images: dict[int, dict] = {}
    problems: dict[int, str] = {}
    for raw in coco.get("images", []):
        if not isinstance(raw, dict) or not is_coco_id(raw.get("id")):
            continue  # no usable id: annotations naming it count as unknown_image
        image_id = raw["id"]
        if image_id in images or image_id in problems:
            images.pop(image_id, None)
            problems[image_id] = "bad_image_record"  # duplicate id: which record is meant is unknown
            continue
        width, height = _side(raw.get("width")), _side(raw.get("height"))
        if width is None or height is None:
            problems[image_id] = "bad_image_record"
        elif path_problem(raw.get("file_name")):
            problems[image_id] = "unsafe_file_name"
        else:
            images[image_id] = {"id": image_id, "file_name": raw["file_name"], "width": width, "height": height}
    return images, problems


def checked_categories(coco: dict) -> dict[int, str]:
    """Category id -> name for records with an integer id and a string name (duplicate ids dropped)."""
    names: dict[int, str] = {}
    duplicate: set[int] = set()
    for raw in coco.get("categories", []):
        if isinstance(raw, dict) and is_coco_id(raw.get("id")) and isinstance(raw.get("name"), str):
            if raw["id"] in names:
                duplicate.add(raw["id"])
            names[raw["id"]] = raw["name"]
    return {k: v for k, v in names.items() if k not in duplicate}


def coco_area(ann: dict) -> float | None:
    """COCO's `area` of an annotation when it is a positive finite number, else None."""
    area = ann.get("area")
    return float(area) if _finite(area) and area > 0 else None


def _record_problem(ann, images: dict, image_problems: dict, categories: dict, duplicates: set,
                    image_exists: Callable[[dict], bool]) -> str | None:
    if not isinstance(ann, dict) or any(k not in ann for k in ("id", "image_id", "category_id", "bbox")):
        return "bad_record"
    if not (is_coco_id(ann["id"]) and is_coco_id(ann["image_id"]) and is_coco_id(ann["category_id"])):
        return "bad_record"
    bbox = ann["bbox"]
    if not (isinstance(bbox, list) and len(bbox) == 4 and _all_finite(bbox)):
        return "bad_record"
    if ann.get("iscrowd", 0) not in (0, 1) or isinstance(ann.get("iscrowd", 0), float):
        return "bad_record"  # "0" (a string) or 0.5 are not crowd flags
    if ann["id"] in duplicates:
        return "duplicate_id"
    if ann["image_id"] in image_problems:
        return image_problems[ann["image_id"]]
    if ann["image_id"] not in images:
        return "unknown_image"
    if ann["category_id"] not in categories:
        return "unknown_category"
    if bbox[2] <= 0 or bbox[3] <= 0:
        return "zero_area_box"
    segmentation = ann.get("segmentation")
    if not segmentation or (isinstance(segmentation, list) and all(isinstance(p, list) and len(p) < 6
                                                                   for p in segmentation)):
        return "empty_segmentation"
    image = images[ann["image_id"]]
    if segmentation_problem(segmentation, image["height"], image["width"]):
        return "bad_segmentation"
    if not image_exists(image):
        return "missing_image_file"
    return None


def imported_keypoints(raw, num_keypoints: int, width: int, height: int) -> np.ndarray | None:
    """A COCO keypoints annotation's `keypoints` as a (K, 3) array, or None when malformed.

    Malformed: not a list of 3K finite numbers, a visibility outside {0, 1, 2}, or a labelled
    point outside the image.
    """
    flat = raw.get("keypoints") if isinstance(raw, dict) else None
    if not (isinstance(flat, list) and len(flat) == 3 * num_keypoints and all(_finite(v) for v in flat)):
        return None
    array = np.asarray(flat, dtype=np.float64).reshape(-1, 3)
    if not np.isin(array[:, 2], (0, 1, 2)).all():
        return None
    labelled = array[:, 2] > 0
    xs, ys = array[labelled, 0], array[labelled, 1]
    if ((xs < 0) | (xs > width) | (ys < 0) | (ys > height)).any():
        return None
    array[~labelled, :2] = np.nan
    return array


SCREEN_COLUMNS = ["ann_id", "image_id", "category", "area", "truncated", "reason", "index"]


def _file_check(image_dir: Path | None) -> Callable[[dict], bool]:
    """Whether an image record's file exists under `image_dir` (always, without one); one look per image."""
    seen: dict[int, bool] = {}

    def exists(image: dict) -> bool:
        if image_dir is None:
            return True
        if image["id"] not in seen:
            seen[image["id"]] = (image_dir / image["file_name"]).is_file()
        return seen[image["id"]]

    return exists


def screen_instances(coco: dict, wanted: set[str], options: FilterOptions, image_dir: Path | None = None,
                     engine: Engine = LOCAL, chunk_size: int = 5000) -> pd.DataFrame:
    """One row per annotation of a wanted category: ann_id, image_id, category, area, truncated, reason, index.

    `reason` is None for a clean instance, else one of RECORD_REASONS or INSTANCE_REASONS;
    `index` is the annotation's position in `coco["annotations"]`. Rows of malformed records
    carry ann_id / image_id only where they are valid ids (else None). Records are checked
    here; the masks of the clean, non-crowd ones are measured (`mask_measures`) in chunks of
    `chunk_size` by `engine` (local, or Ray tasks), with the same result.
    """
    images, image_problems = checked_images(coco)
    categories = checked_categories(coco)
    annotations = coco.get("annotations", [])
    annotations = annotations if isinstance(annotations, list) else []
    seen: set[int] = set()
    duplicates: set[int] = set()
    for ann in annotations:
        if isinstance(ann, dict) and is_coco_id(ann.get("id")):
            (duplicates if ann["id"] in seen else seen).add(ann["id"])
    rows, masks = [], []
    image_exists = _file_check(image_dir)
    for index, ann in enumerate(annotations):
        category_id = ann.get("category_id") if isinstance(ann, dict) else None
        category = categories.get(category_id) if is_coco_id(category_id) else None
        if category is not None and category not in wanted:
            continue
        problem = _record_problem(ann, images, image_problems, categories, duplicates, image_exists)
        ann_id = ann.get("id") if isinstance(ann, dict) and is_coco_id(ann.get("id")) else None
        image_id = ann.get("image_id") if isinstance(ann, dict) and is_coco_id(ann.get("image_id")) else None
        row = {"ann_id": ann_id, "image_id": image_id, "category": category, "area": 0.0, "truncated": False,
               "reason": problem, "index": index}
        if problem is None:
            image = images[ann["image_id"]]
            bbox = np.asarray(ann["bbox"], dtype=np.float64)
            area = coco_area(ann)
            if ann.get("iscrowd", 0):
                row["reason"] = "crowd"
                row["area"] = area if area is not None else float(bbox[2] * bbox[3])
            else:
                masks.append((len(rows), area, (ann["segmentation"], image["height"], image["width"], ann["bbox"])))
        rows.append(row)
    measures = map_chunks(engine, mask_measures, [item for *_, item in masks], chunk_size)
    for (position, area, item), (pixels, cut) in zip(masks, measures):
        _judge(rows[position], area if area is not None else pixels, cut, item[3], options)
    table = pd.DataFrame(rows, columns=SCREEN_COLUMNS)
    for column in ("ann_id", "image_id"):  # nullable integers: ids stay exact next to malformed records
        table[column] = pd.array([row[column] for row in rows], dtype="Int64")
    return table


def _judge(row: dict, area: float, cut: float, bbox: list, options: FilterOptions) -> None:
    """Fill a clean non-crowd row's area, truncation and instance reason."""
    row.update(area=area, truncated=cut > 0)
    if area < options.min_area:
        row["reason"] = "too_small"
    elif cut > options.max_border_cut:
        row["reason"] = "cut_by_border"
    elif area / (float(bbox[2]) * float(bbox[3])) < options.min_fill:
        row["reason"] = "sparse_mask"


def balanced_pick(image_ids: np.ndarray, counts: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """Up to `limit` image ids, dealt round-robin from per-count buckets shuffled with `seed`."""
    rng = np.random.default_rng(seed)
    buckets = {}
    for count in sorted(set(counts.tolist())):
        members = np.sort(image_ids[counts == count])
        buckets[count] = list(rng.permutation(members))
    picked = []
    while len(picked) < limit and any(buckets.values()):
        for count in sorted(buckets):
            if buckets[count] and len(picked) < limit:
                picked.append(buckets[count].pop(0))
    return np.array(sorted(picked), dtype=np.int64)


def select_images(screened: pd.DataFrame, options: FilterOptions) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Choose (image, category) units from screened instances.

    Returns:
        kept: the clean instances of the chosen units (rows of `screened`).
        rejected_units: (image_id, category, reason) for units turned away.
    """
    valid = screened[screened["reason"].isna() | screened["reason"].isin(INSTANCE_REASONS)]
    kept_parts, rejected = [], []
    for category, group in valid.groupby("category", sort=True):
        clean = group[group["reason"].isna()]
        confusing = group[(group["reason"] == "crowd")
                          | (group["reason"].isin(INSTANCE_REASONS) & (group["area"] >= options.min_area))]
        counts = clean.groupby("image_id").size()
        candidates = []
        for image_id, count in counts.items():
            if count > options.max_instances:
                rejected.append((image_id, category, "too_many_instances"))
            elif image_id in set(confusing["image_id"]):
                rejected.append((image_id, category, "confusing_excluded"))
            else:
                candidates.append((image_id, count))
        if not candidates:
            continue
        ids = np.array([c[0] for c in candidates], dtype=np.int64)
        picked = balanced_pick(ids, np.array([c[1] for c in candidates]), options.max_images,
                               seed=options.seed + sum(map(ord, category)))
        rejected.extend((int(i), category, "over_cap") for i in sorted(set(ids) - set(picked.tolist())))
        kept_parts.append(clean[clean["image_id"].isin(picked)])
    kept = pd.concat(kept_parts) if kept_parts else screened.iloc[0:0]
    return kept.sort_values(["category", "image_id", "ann_id"]), pd.DataFrame(
        rejected, columns=["image_id", "category", "reason"])


def selection_report(screened: pd.DataFrame, kept: pd.DataFrame, rejected_units: pd.DataFrame) -> pd.DataFrame:
    """Per category: candidate images, kept images and instances, rejections per reason, count histogram."""
    rows = []
    for category in sorted(set(screened["category"].dropna())):
        sub = screened[screened["category"] == category]
        kept_sub = kept[kept["category"] == category]
        per_image = kept_sub.groupby("image_id").size()
        real = sub[~sub["reason"].isin(("bad_record", "unknown_image", "bad_image_record", "unsafe_file_name"))]
        row = {"category": category, "candidate_images": int(real["image_id"].nunique()),
               "kept_images": int(per_image.size), "kept_instances": len(kept_sub)}
        for reason in RECORD_REASONS + INSTANCE_REASONS:
            row[reason] = int((sub["reason"] == reason).sum())
        units = rejected_units[rejected_units["category"] == category]
        for reason in IMAGE_REASONS:
            row[reason] = int((units["reason"] == reason).sum())
        for count in range(1, 5):
            row[f"images_with_{count}"] = int((per_image == count).sum())
        rows.append(row)
    report = pd.DataFrame(rows)
    unnamed = screened[screened["category"].isna()]
    if len(unnamed):  # records whose category could not be told
        extra = {"category": "(unknown)", **{r: int((unnamed["reason"] == r).sum()) for r in RECORD_REASONS}}
        report = pd.concat([report, pd.DataFrame([extra])], ignore_index=True).fillna(0)
    return report.set_index("category") if len(report) else report
