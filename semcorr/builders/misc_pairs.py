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

import itertools
import zlib

import numpy as np
import pandas as pd
import pyarrow as pa
from pycocotools import mask as mask_utils

from semcorr.builders import labels
from semcorr.builders.coco_filter import segmentation_rle
from semcorr.errors import SemcorrError
from semcorr.store import SPLIT_NAMES, Dataset, collector_paused

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

    Built column-wise: instances are grouped by one stable sort, keypoint counts and mean areas
    are summed in bulk (the mean with numpy's own summation order, so the same floats), and
    only units with two or more masks compute IoUs, one pycocotools call per unit.
    """
    with collector_paused():
        return _misc_units(dataset, splits)


def _misc_units(dataset: Dataset, splits: dict[int, str]) -> tuple[pd.DataFrame, np.ndarray]:
    k_max = max((c.num_keypoints for c in dataset.categories.values()), default=0)
    members = [inst for inst in dataset.instances if inst.image_id in splits]
    count = len(members)
    names = {c.id: c.name for c in dataset.categories.values()}
    rank = {cid: r for r, cid in enumerate(sorted(names, key=lambda cid: names[cid]))}
    image_ids = np.fromiter((m.image_id for m in members), dtype=np.int64, count=count)
    category_ids = np.fromiter((m.category_id for m in members), dtype=np.int64, count=count)
    ranks = np.fromiter((rank[m.category_id] for m in members), dtype=np.int64, count=count)
    order = np.lexsort((image_ids, ranks))  # stable: members of a unit stay in file order
    members = [members[i] for i in order.tolist()]
    image_ids, category_ids, ranks = image_ids[order], category_ids[order], ranks[order]
    new_unit = np.ones(count, dtype=bool)
    new_unit[1:] = (image_ids[1:] != image_ids[:-1]) | (ranks[1:] != ranks[:-1])
    starts = np.flatnonzero(new_unit)
    sizes = np.diff(np.append(starts, count))
    unit_of = np.repeat(np.arange(len(starts)), sizes)

    # keypoints shown, per unit and keypoint index
    visible = [m.visible for m in members]
    lengths = np.fromiter(map(len, visible), dtype=np.int64, count=count)
    shown = np.concatenate(visible) if visible else np.zeros(0, dtype=bool)
    point_index = np.arange(len(shown)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    flat = np.bincount(np.repeat(unit_of, lengths)[shown] * k_max + point_index[shown],
                       minlength=len(starts) * k_max)
    counts = flat.reshape(len(starts), k_max).astype(np.int16)

    # mean areas: np.mean of each unit's areas, computed per unit size on a (units, size) matrix
    areas = np.fromiter((m.area if m.area > 0 else m.bbox_area for m in members), dtype=np.float64, count=count)
    mean_area = np.zeros(len(starts))
    for size in np.unique(sizes).tolist():
        chosen = np.flatnonzero(sizes == size)
        mean_area[chosen] = areas[starts[chosen, None] + np.arange(size)].mean(axis=1)
    truncated = np.fromiter((bool(m.truncated) for m in members), dtype=bool, count=count)
    occluded = np.fromiter((bool(m.occluded) for m in members), dtype=bool, count=count)

    masked = np.fromiter((bool(m.segmentation) for m in members), dtype=bool, count=count)
    overlap = np.zeros(len(starts))
    with_masks = np.add.reduceat(masked.astype(np.int64), starts) if count else np.zeros(0, dtype=np.int64)
    plain, extents = _plain_polygons(members, dataset)
    for unit in np.flatnonzero(_may_overlap(with_masks, starts, sizes, masked, plain, extents)).tolist():
        first, last = int(starts[unit]), int(starts[unit] + sizes[unit])
        image = dataset.images[int(image_ids[first])]
        chosen = [i for i in range(first, last) if masked[i]]
        rles = _unit_rles([members[i].segmentation for i in chosen], [plain[i] for i in chosen],
                          image.height, image.width)
        ious = mask_utils.iou(rles, rles, [0] * len(rles))
        np.fill_diagonal(ious, 0.0)
        overlap[unit] = round(float(ious.max()), 6)

    first_ids = image_ids[starts] if count else image_ids
    units = pd.DataFrame({
        "image_id": first_ids,
        "category": [names[c] for c in category_ids[starts].tolist()] if count else [],
        "split": [splits[i] for i in first_ids.tolist()],
        "num_instances": sizes.astype(np.int64),
        "num_keypoints": np.array([dataset.categories[c].num_keypoints for c in category_ids[starts].tolist()],
                                  dtype=np.int64) if count else np.zeros(0, dtype=np.int64),
        "mean_area": mean_area,
        "truncated": np.logical_or.reduceat(truncated, starts) if count else np.zeros(0, dtype=bool),
        "occluded": np.logical_or.reduceat(occluded, starts) if count else np.zeros(0, dtype=bool),
        "max_overlap": overlap,
    }, columns=UNIT_COLUMNS)
    return units, counts


def _plain_polygons(members: list, dataset: Dataset) -> list[bool]:
    """Per instance: its segmentation is polygons that `segmentation_rle` certainly accepts as they are.

    That is, a list of lists of an even count (6 or more) of finite plain numbers within the
    image grown by its size on each side (the limits of `segmentation_problem`); anything else
    goes through `instance_rle`, which raises its usual error for a corrupt mask.
    """
    count = len(members)
    segs = [m.segmentation if type(m.segmentation) is list else [] for m in members]
    ok = np.fromiter((type(m.segmentation) is list for m in members), dtype=bool, count=count)
    polygons = [p for seg in segs for p in seg]
    per_instance = np.fromiter(map(len, segs), dtype=np.int64, count=count)
    owner = np.repeat(np.arange(count), per_instance)
    is_list = np.fromiter((type(p) is list for p in polygons), dtype=bool, count=len(polygons))
    lengths = np.fromiter((len(p) if good else 0 for p, good in zip(polygons, is_list.tolist())), dtype=np.int64,
                          count=len(polygons))
    bad = ~is_list | (lengths < 6) | (lengths % 2 == 1)
    ok[owner[bad]] = False
    # a bad polygon adds no coordinates, so x stays at even and y at odd positions for every later one
    polygons = [[] if wrong else p for p, wrong in zip(polygons, bad.tolist())]
    lengths[bad] = 0
    ok &= per_instance > 0
    values = list(itertools.chain.from_iterable(polygons))
    if set(map(type, values)) <= {int, float}:
        try:
            coords = np.array(values, dtype=np.float64)
        except OverflowError:
                return [False] * count, np.full((count, 4), np.nan)
    else:
        return [False] * count, np.full((count, 4), np.nan)
    del values
    point_owner = np.repeat(owner, lengths)
    sides = np.array([[dataset.images[m.image_id].width, dataset.images[m.image_id].height] if m.image_id in
                      dataset.images else [0, 0] for m in members], dtype=np.float64).reshape(count, 2)
    limit = sides[point_owner, np.arange(len(coords)) % 2]  # x at even, y at odd positions (even lengths)
    outside = ~np.isfinite(coords) | (coords < -limit) | (coords > 2 * limit)
    ok[point_owner[outside]] = False
    extents = np.full((count, 4), np.nan)  # x0, y0, x1, y1 of each plain instance's polygon points
    point_counts = np.bincount(point_owner, minlength=count)
    has_points = point_counts > 0  # their point ranges tile `coords`
    if has_points.any():
        first_point = np.cumsum(point_counts) - point_counts
        xs, ys = coords[0::2], coords[1::2]
        starts = first_point[has_points] // 2
        for column, (values, reduce) in enumerate(((xs, np.minimum), (ys, np.minimum), (xs, np.maximum),
                                                    (ys, np.maximum))):
            extents[has_points, column] = reduce.reduceat(values, starts)
    return ok.tolist(), extents


MASK_MARGIN = 2.0  # pixels: a polygon's rasterised mask stays within its points' box grown by this


def _may_overlap(with_masks: np.ndarray, starts: np.ndarray, sizes: np.ndarray, masked: np.ndarray,
                 plain: list[bool], extents: np.ndarray) -> np.ndarray:
    """(units,) bool: units with two or more masks whose IoUs are not all certainly 0.

    Two polygon masks whose point boxes (grown by MASK_MARGIN) are apart share no pixel, so
    their IoU is exactly 0; a unit where every pair is apart has a largest IoU of 0 and needs
    no rasterising. Units with any other kind of mask are always computed.
    """
    need = with_masks >= 2
    plain_masked = masked & np.asarray(plain, dtype=bool)
    for size in np.unique(sizes[need]).tolist():
        units = np.flatnonzero(need & (sizes == size))
        rows = starts[units, None] + np.arange(size)
        other = (masked[rows] & ~plain_masked[rows]).any(axis=1)
        box = np.where(plain_masked[rows][..., None], extents[rows], np.nan)  # NaN boxes meet nothing
        x0, y0 = box[..., 0] - MASK_MARGIN, box[..., 1] - MASK_MARGIN
        x1, y1 = box[..., 2] + MASK_MARGIN, box[..., 3] + MASK_MARGIN
        meet = ((x0[:, :, None] <= x1[:, None, :]) & (x0[:, None, :] <= x1[:, :, None])
                & (y0[:, :, None] <= y1[:, None, :]) & (y0[:, None, :] <= y1[:, :, None]))
        meet[:, np.arange(size), np.arange(size)] = False
        need[units] = other | meet.any(axis=(1, 2))
    return need


def _unit_rles(segmentations: list, plain: list[bool], height: int, width: int) -> list:
    """One RLE per segmentation (the masks `instance_rle` gives), polygons of a unit in one pycocotools call."""
    polygons = [p for seg, good in zip(segmentations, plain) if good for p in seg]
    made = iter(mask_utils.frPyObjects(polygons, height, width) if polygons else [])
    rles = []
    for seg, good in zip(segmentations, plain):
        if not good:
            rles.append(instance_rle(seg, height, width))
            continue
        parts = [next(made) for _ in seg]
        rles.append(parts[0] if len(parts) == 1 else mask_utils.merge(parts))
    return rles


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
