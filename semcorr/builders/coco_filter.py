"""COCO curation the MISC210K way: categories with a 3D prototype, 1-4 clean instances per
image, a balanced distribution of per-image instance counts.

Rules, in order (each rejected record is counted under its reason, never a crash):

- records: an annotation missing a field, naming an unknown image or category, with a
  zero-area box or an empty segmentation, or on an image whose file is missing, is
  rejected as `bad_record` / `unknown_image` / `unknown_category` / `zero_area_box` /
  `empty_segmentation` / `missing_image_file`;
- instances: `crowd` (iscrowd = 1), `too_small` (mask area < `min_area` pixels),
  `cut_by_border` (share of the box perimeter lying on the image border > `max_border_cut`),
  `sparse_mask` (mask area / box area < `min_fill`);
- images, per category: `too_many_instances` (more than `max_instances` clean ones),
  `confusing_excluded` (a crowd region, or a rejected instance at least `min_area` large, of
  the same category: an unannotated look-alike would turn correct predictions into false
  positives), then at most `max_images` per category, drawn with the seed so that the
  counts of 1, 2, 3 and 4-instance images are as equal as the data allows (`over_cap`).

Kept instances get `truncated` when they touch the image border.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from pycocotools import mask as mask_utils

MISC_CATEGORIES = (
    "airplane", "baseball bat", "bear", "bed", "bench", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "clock", "cow", "cup", "dog", "fork", "giraffe", "horse", "laptop", "motorcycle", "mouse", "person",
    "sheep", "skateboard", "skis", "stop sign", "tennis racket", "tie", "toothbrush", "train", "tv", "zebra",
)
RECORD_REASONS = ("bad_record", "unknown_image", "unknown_category", "zero_area_box", "empty_segmentation",
                  "missing_image_file")
INSTANCE_REASONS = ("crowd", "too_small", "cut_by_border", "sparse_mask")
IMAGE_REASONS = ("too_many_instances", "confusing_excluded", "over_cap")


@dataclass(frozen=True)
class FilterOptions:
    """Thresholds of coco-filter (areas in pixels)."""

    min_area: float = 1024.0
    max_border_cut: float = 0.25
    min_fill: float = 0.2
    max_instances: int = 4
    max_images: int = 300
    seed: int = 0


def decode_mask(segmentation, height: int, width: int) -> np.ndarray:
    """COCO polygon list, uncompressed or compressed RLE -> (H, W) bool mask."""
    if isinstance(segmentation, list):
        rles = mask_utils.frPyObjects(segmentation, height, width)
        return mask_utils.decode(mask_utils.merge(rles)).astype(bool)
    if isinstance(segmentation.get("counts"), list):
        segmentation = mask_utils.frPyObjects(segmentation, height, width)
    return mask_utils.decode(segmentation).astype(bool)


def border_cut(mask: np.ndarray, bbox: np.ndarray) -> float:
    """Share of the box perimeter where the mask lies on the image border."""
    on_border = int(mask[0].sum() + mask[-1].sum() + mask[:, 0].sum() + mask[:, -1].sum())
    perimeter = 2.0 * (bbox[2] + bbox[3])
    return on_border / perimeter if perimeter > 0 else 1.0


def _record_problem(ann: dict, images: dict, categories: dict, image_dir: Path | None) -> str | None:
    if not isinstance(ann, dict) or any(k not in ann for k in ("id", "image_id", "category_id", "bbox")):
        return "bad_record"
    if ann["image_id"] not in images:
        return "unknown_image"
    if ann["category_id"] not in categories:
        return "unknown_category"
    bbox = ann["bbox"]
    if not isinstance(bbox, list) or len(bbox) != 4 or bbox[2] <= 0 or bbox[3] <= 0:
        return "zero_area_box"
    segmentation = ann.get("segmentation")
    if not segmentation or (isinstance(segmentation, list) and not any(len(p) >= 6 for p in segmentation)):
        return "empty_segmentation"
    if image_dir is not None and not (image_dir / images[ann["image_id"]]["file_name"]).is_file():
        return "missing_image_file"
    return None


def screen_instances(coco: dict, wanted: set[str], options: FilterOptions, image_dir: Path | None = None
                     ) -> pd.DataFrame:
    """One row per annotation of a wanted category: ann_id, image_id, category, area, truncated, reason.

    `reason` is None for a clean instance, else one of RECORD_REASONS or INSTANCE_REASONS.
    """
    images = {im["id"]: im for im in coco.get("images", []) if isinstance(im, dict) and "id" in im}
    categories = {c["id"]: c["name"] for c in coco.get("categories", []) if isinstance(c, dict) and "id" in c}
    rows = []
    for ann in coco.get("annotations", []):
        category = categories.get(ann.get("category_id")) if isinstance(ann, dict) else None
        if category is not None and category not in wanted:
            continue
        problem = _record_problem(ann, images, categories, image_dir)
        row = {"ann_id": ann.get("id") if isinstance(ann, dict) else None,
               "image_id": ann.get("image_id") if isinstance(ann, dict) else None,
               "category": category, "area": 0.0, "truncated": False, "reason": problem}
        if problem is None:
            image = images[ann["image_id"]]
            bbox = np.asarray(ann["bbox"], dtype=np.float64)
            if ann.get("iscrowd", 0):
                row["reason"] = "crowd"
                row["area"] = float(ann.get("area", bbox[2] * bbox[3]))
            else:
                mask = decode_mask(ann["segmentation"], image["height"], image["width"])
                area = float(mask.sum())
                cut = border_cut(mask, bbox)
                row.update(area=area, truncated=cut > 0)
                if area < options.min_area:
                    row["reason"] = "too_small"
                elif cut > options.max_border_cut:
                    row["reason"] = "cut_by_border"
                elif area / (bbox[2] * bbox[3]) < options.min_fill:
                    row["reason"] = "sparse_mask"
        rows.append(row)
    return pd.DataFrame(rows, columns=["ann_id", "image_id", "category", "area", "truncated", "reason"])


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
        real = sub[~sub["reason"].isin(("bad_record", "unknown_image"))]
        row = {"category": category, "candidate_images": int(real["image_id"].nunique()),
               "kept_images": int(per_image.size), "kept_instances": int(len(kept_sub))}
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
