"""MISC210K pairs: multi-instance image pairs with many-to-many keypoint correspondences.

Per category, up to `max_pairs` initial ordered pairs of distinct images (shared between the
splits in proportion to how many ordered pairs each split holds) are drawn with the seed,
without repeats, inside each split. A pair is kept when the share of keypoint types visible
in both images reaches `threshold`; the share's denominator is the category's keypoint
count (`category`, the default, as "30% of keypoints are shared" reads in the paper), the
keypoint types visible in either image (`union`) or in the source (`source`).
Correspondences are every source instance to every target instance over their common
visible keypoint ids; exports derive them from the store.
"""

from __future__ import annotations

import zlib

import numpy as np
import pandas as pd
import pyarrow as pa
from pycocotools import mask as mask_utils

from semcorr.builders import labels
from semcorr.builders.coco_filter import segmentation_rle
from semcorr.errors import SemcorrError
from semcorr.store import SPLIT_NAMES, Dataset

DENOMINATORS = ("category", "union", "source")
UNIT_COLUMNS = ["image_id", "category", "split", "num_instances", "num_keypoints", "mean_area", "truncated",
                "occluded", "max_overlap"]


def instance_rle(segmentation, height: int, width: int) -> dict:
    """Any COCO segmentation as one RLE (never expanded to pixels; the same mask, so the same IoUs)."""
    return segmentation_rle(segmentation, height, width)


def misc_units(dataset: Dataset, splits: dict[int, str]) -> tuple[pd.DataFrame, np.ndarray]:
    """(image, category) units of a split store.

    Returns:
        units: UNIT_COLUMNS, sorted by (category, image_id); `max_overlap` is the largest mask
            IoU between two instances of the unit (0 with one instance or no masks).
        counts: (len(units), K_max) int, how many of the unit's instances show keypoint k.
    """
    groups: dict[tuple[int, int], list] = {}
    for inst in dataset.instances:
        if inst.image_id in splits:
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
            rles = [instance_rle(m.segmentation, image.height, image.width) for m in with_masks]
            ious = mask_utils.iou(rles, rles, [0] * len(rles))
            np.fill_diagonal(ious, 0.0)
            overlap = float(ious.max())
        for inst in members:
            counts[row_index, : len(inst.keypoints)] += inst.visible
        rows.append({"image_id": image_id, "category": dataset.categories[category_id].name,
                     "split": splits[image_id], "num_instances": len(members),
                     "num_keypoints": dataset.categories[category_id].num_keypoints,
                     "mean_area": float(np.mean([m.area if m.area > 0 else m.bbox_area for m in members])),
                     "truncated": any(m.truncated for m in members), "occluded": any(m.occluded for m in members),
                     "max_overlap": round(overlap, 6)})
    return pd.DataFrame(rows, columns=UNIT_COLUMNS), counts


def allocate(limit: int, available: np.ndarray) -> np.ndarray:
    """Split `limit` over groups in proportion to `available` (largest remainder), capped by it."""
    available = np.asarray(available, dtype=np.int64)
    total = int(available.sum())
    if total <= limit:
        return available.copy()
    exact = limit * available / total
    quota = np.floor(exact).astype(np.int64)
    for index in np.argsort(-(exact - quota), kind="stable")[: limit - int(quota.sum())]:
        quota[index] += 1
    return np.minimum(quota, available)


def sample_ordered_pairs(count: int, limit: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Up to `limit` distinct ordered pairs (i, j), i != j, of `count` items, in (i, j) order."""
    total = count * (count - 1)
    if total <= 0 or limit <= 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    flat = np.arange(total) if limit >= total else np.sort(rng.choice(total, size=limit, replace=False))
    src, rest = np.divmod(flat, count - 1)
    trg = rest + (rest >= src)
    return src.astype(np.int64), trg.astype(np.int64)


def group_seed(seed: int, category: str, split: str) -> list[int]:
    """A seed per (category, split) that does not depend on which other categories exist."""
    return [seed, zlib.crc32(category.encode()), SPLIT_NAMES.index(split)]


def build_misc_pairs(units: pd.DataFrame, counts: np.ndarray, max_pairs: int = 30000, threshold: float = 0.3,
                     denominator: str = "category", seed: int = 0) -> pd.DataFrame:
    """Sample, filter and label MISC pairs.

    Args:
        units: UNIT_COLUMNS rows (from `misc_units`).
        counts: (len(units), K) visible-instance counts per keypoint.
        max_pairs: initial ordered pairs per category.
        threshold: minimum share of keypoint types visible in both images.
        denominator: "category", "union" or "source".
        seed: sampling seed.

    Returns:
        One row per kept pair, numbered from 1, with instance counts, `shared`, `share`,
        `kps_ids`, `num_correspondences` (instance pairs x common keypoints),
        `scale_variation` (from mean instance areas), `truncation`, `occlusion` (from
        instance flags) and each side's `max_overlap`.
    """
    if denominator not in DENOMINATORS:
        raise SemcorrError(f"--share-of {denominator!r}: use one of {', '.join(DENOMINATORS)}")
    units = units.reset_index(drop=True)
    visible = counts > 0
    src_parts, trg_parts = [], []
    for category, cat_units in units.groupby("category", sort=True):
        members_by_split = [cat_units.index[cat_units["split"] == s].to_numpy() for s in SPLIT_NAMES]
        sizes = np.array([len(m) for m in members_by_split])
        quotas = allocate(max_pairs, sizes * (sizes - 1))
        for split, members, quota in zip(SPLIT_NAMES, members_by_split, quotas):
            rng = np.random.default_rng(group_seed(seed, category, split))
            src_local, trg_local = sample_ordered_pairs(len(members), int(quota), rng)
            src_parts.append(members[src_local])
            trg_parts.append(members[trg_local])
    src = np.concatenate(src_parts) if src_parts else np.zeros(0, dtype=np.int64)
    trg = np.concatenate(trg_parts) if trg_parts else np.zeros(0, dtype=np.int64)

    both = visible[src] & visible[trg]
    shared = both.sum(axis=1)
    if denominator == "category":
        denom = units["num_keypoints"].to_numpy()[src]
    elif denominator == "union":
        denom = (visible[src] | visible[trg]).sum(axis=1)
    else:
        denom = visible[src].sum(axis=1)
    keep = (shared > 0) & (shared >= threshold * denom - 1e-9)
    src, trg, both, shared, denom = src[keep], trg[keep], both[keep], shared[keep], denom[keep]

    kp_index = np.flatnonzero(both) % max(both.shape[1], 1)
    offsets = np.r_[0, np.cumsum(shared)].astype(np.int32)
    area = units["mean_area"].to_numpy()
    category_codes, category_names = pd.factorize(units["category"], sort=True)
    split_codes = units["split"].map({s: i for i, s in enumerate(SPLIT_NAMES)}).to_numpy()
    return pd.DataFrame({
        "pair_id": np.arange(1, len(src) + 1, dtype=np.int64),
        "category": pd.Categorical.from_codes(category_codes[src], categories=category_names),
        "split": pd.Categorical.from_codes(split_codes[src], categories=list(SPLIT_NAMES)),
        "src_image_id": units["image_id"].to_numpy()[src].astype(np.int64),
        "trg_image_id": units["image_id"].to_numpy()[trg].astype(np.int64),
        "src_instances": units["num_instances"].to_numpy()[src].astype(np.int8),
        "trg_instances": units["num_instances"].to_numpy()[trg].astype(np.int8),
        "shared": shared.astype(np.int16),
        "share": np.round(shared / np.maximum(denom, 1), 6),
        "kps_ids": pd.Series(pd.arrays.ArrowExtensionArray(
            pa.ListArray.from_arrays(pa.array(offsets), pa.array(kp_index.astype(np.int16))))),
        "num_correspondences": (counts[src].astype(np.int32) * counts[trg] * both).sum(axis=1).astype(np.int32),
        "scale_variation": labels.scale_variation(area[src], area[trg]),
        "truncation": labels.flag_variation(units["truncated"].to_numpy()[src], units["truncated"].to_numpy()[trg]),
        "occlusion": labels.flag_variation(units["occluded"].to_numpy()[src], units["occluded"].to_numpy()[trg]),
        "src_max_overlap": units["max_overlap"].to_numpy()[src],
        "trg_max_overlap": units["max_overlap"].to_numpy()[trg],
    })
