"""Image-level train/val/test splits, stratified over azimuth bins (SPair-71k section 2)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from semcorr.errors import SemcorrError
from semcorr.store import SPLIT_NAMES


def parse_ratios(text: str) -> tuple[float, float, float]:
    """'5:2:3' -> (0.5, 0.2, 0.3).

    Raises:
        SemcorrError: not three finite, non-negative numbers with a positive sum (`nan:1:1`,
            `inf:1:1`, `-1:1:1`, `0:0:0`).
    """
    try:
        parts = [float(p) for p in str(text).split(":")]
    except ValueError:
        parts = []
    if (len(parts) != 3 or not all(math.isfinite(p) for p in parts) or min(parts) < 0 or sum(parts) <= 0
            or not math.isfinite(sum(parts))):
        raise SemcorrError(f"--ratios {text!r}: expected three finite non-negative numbers with a positive sum, "
                           "like 5:2:3")
    total = sum(parts)
    return tuple(p / total for p in parts)  # type: ignore[return-value]


def split_counts(instances: pd.DataFrame, splits: dict[int, str]) -> pd.DataFrame:
    """Images per category (rows) and split (columns): an image counts under every category it holds.

    Args:
        instances: rows with `image_id` and `category` (one per instance).
        splits: image id -> split name.
    """
    units = instances[["image_id", "category"]].drop_duplicates()
    units = units.assign(split=units["image_id"].map(splits)).dropna(subset=["split"])
    counts = units.groupby(["category", "split"]).size().unstack(fill_value=0)
    return counts.reindex(columns=list(SPLIT_NAMES), fill_value=0).astype(int)


def interleave_assign(count: int, ratios: tuple[float, float, float]) -> np.ndarray:
    """Split indexes 0..2 for `count` ordered items, each prefix as close to `ratios` as possible.

    Position i goes to the split whose count lags its target share of i + 1 items the most
    (ties to the earlier split), so any ordered run of items is spread over the splits.
    (Plain float arithmetic, the same operations numpy did per item; a shorter run is a prefix
    of a longer one.)
    """
    target = [float(r) for r in np.asarray(ratios, dtype=np.float64).tolist()]
    usable = [t != 0 for t in target]
    counts = [0.0, 0.0, 0.0]
    out = []
    append = out.append
    minus_inf = -math.inf
    for i in range(1, count + 1):
        best, best_deficit = 0, target[0] * i - counts[0] if usable[0] else minus_inf
        for j in (1, 2):
            deficit = target[j] * i - counts[j] if usable[j] else minus_inf
            if deficit > best_deficit:
                best, best_deficit = j, deficit
        append(best)
        counts[best] += 1
    return np.array(out, dtype=np.int64)


def assign_splits(
    images: pd.DataFrame, ratios: tuple[float, float, float] = (0.5, 0.2, 0.3), seed: int = 0
) -> dict[int, str]:
    """Assign every image to one split, per category, spread over azimuth bins.

    Args:
        images: one row per image with columns `image_id`, `category` (the category the
            image is split under) and `azimuth_bin` (-1 where unknown).
        ratios: train, val, test shares.
        seed: seed of the shuffle inside each azimuth bin.

    Returns:
        image id -> "trn" | "val" | "test".

    Images are ordered by (azimuth bin, seeded random key) inside each category and dealt
    out by `interleave_assign`, so each split gets about its share of every bin.
    """
    rng = np.random.default_rng(seed)
    splits: dict[int, str] = {}
    ordered = images.sort_values(["category", "image_id"], kind="stable")
    groups = list(ordered.groupby("category", sort=True))
    dealt = interleave_assign(max((len(group) for _, group in groups), default=0), ratios)  # prefixes serve all
    names = np.array(SPLIT_NAMES, dtype=object)
    for _, group in groups:
        keys = rng.random(len(group))
        order = np.lexsort((keys, group["azimuth_bin"].to_numpy()))
        image_ids = group["image_id"].to_numpy()[order]
        splits.update(zip((int(i) for i in image_ids.tolist()), names[dealt[: len(image_ids)]].tolist()))
    return splits


def split_units(instances: pd.DataFrame) -> pd.DataFrame:
    """One row per image: the category it is split under and that category's azimuth bin.

    An image holding several categories is split under the one with most instances (ties
    to the alphabetically first); its azimuth bin is that of the category's largest instance.
    """
    counts = instances.groupby(["image_id", "category"]).size().rename("count").reset_index()
    counts = counts.sort_values(["image_id", "count", "category"], ascending=[True, False, True], kind="stable")
    primary = counts.drop_duplicates("image_id")[["image_id", "category"]]
    largest = (instances.sort_values(["image_id", "category", "bbox_area", "ann_id"],
                                     ascending=[True, True, False, True], kind="stable")
               .drop_duplicates(["image_id", "category"])[["image_id", "category", "azimuth_bin"]])
    return primary.merge(largest, on=["image_id", "category"], how="left").reset_index(drop=True)
