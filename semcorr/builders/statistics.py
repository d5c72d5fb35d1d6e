"""The SPair-71k paper's Table 1 (difficulty by split) and Table 2 (pairs per category), and the
MISC210K tables (instances per image, correspondences, keypoint share, overlapping instances)."""

from __future__ import annotations

import pandas as pd

from semcorr.builders.labels import FLAG_LEVELS, SCALE_LEVELS, VIEWPOINT_LEVELS
from semcorr.store import SPLIT_NAMES

SPLIT_TITLES = {"trn": "Train", "val": "Val", "test": "Test"}
FACTORS = (
    ("viewpoint_variation", "Viewpoint", VIEWPOINT_LEVELS),
    ("scale_variation", "Scale", SCALE_LEVELS),
    ("truncation", "Truncation", FLAG_LEVELS),
    ("occlusion", "Occlusion", FLAG_LEVELS),
)


MISC_COLUMNS = ("src_instances", "trg_instances", "num_correspondences", "share", "src_max_overlap",
                "trg_max_overlap")


def is_misc(pairs: pd.DataFrame) -> bool:
    """Pairs built by `build-pairs --mode misc` (multi-instance, no viewpoint labels)."""
    return all(column in pairs.columns for column in MISC_COLUMNS)


def difficulty_table(pairs: pd.DataFrame) -> pd.DataFrame:
    """Table 1: pair counts per split (rows Train, Val, Test, All) and factor level (columns).

    Only the factors the pairs carry: MISC pairs have no viewpoint label, so their table
    has scale, truncation and occlusion.
    """
    columns = {}
    for column, title, levels in FACTORS:
        if column not in pairs.columns:
            continue
        for code, level in enumerate(levels):
            hits = pairs[pairs[column] == code]
            counts = hits.groupby("split", observed=True).size()
            values = [int(counts.get(split, 0)) for split in SPLIT_NAMES]
            columns[(title, level)] = values + [sum(values)]
    table = pd.DataFrame(columns, index=[SPLIT_TITLES[s] for s in SPLIT_NAMES] + ["All"])
    table.columns = pd.MultiIndex.from_tuples(table.columns, names=["factor", "level"])
    return table


def category_table(pairs: pd.DataFrame) -> pd.DataFrame:
    """Table 2: pair counts per category (rows, plus `total`) and split (columns, plus `All`)."""
    counts = pairs.groupby(["category", "split"], observed=True).size().unstack(fill_value=0)
    counts = counts.reindex(columns=list(SPLIT_NAMES), fill_value=0).astype(int)
    counts.columns = [SPLIT_TITLES[s] for s in SPLIT_NAMES]
    counts["All"] = counts.sum(axis=1)
    counts.loc["total"] = counts.sum(axis=0)
    counts.index.name = "category"
    return counts


def azimuth_table(units: pd.DataFrame) -> pd.DataFrame:
    """Image counts per (category, split, azimuth_bin), for the circular histograms."""
    known = units[units["azimuth_bin"] >= 0]
    table = known.groupby(["category", "split", "azimuth_bin"]).size().rename("images").reset_index()
    return table


def misc_instance_table(instances: pd.DataFrame, splits: dict[int, str]) -> pd.DataFrame:
    """MISC: images per category (rows, plus `total`) by how many instances of it they hold (columns).

    Args:
        instances: one row per instance with `image_id` and `category` (`Dataset.instance_table`).
        splits: image id -> split; images outside the splits are not counted.
    """
    table = instances[instances["image_id"].isin(list(splits))]
    per_image = table.groupby(["category", "image_id"]).size().rename("instances").reset_index()
    counts = per_image.groupby(["category", "instances"]).size().unstack(fill_value=0)
    counts = counts.reindex(columns=sorted(set(counts.columns) | {1, 2, 3, 4}), fill_value=0).astype(int)
    counts.columns = [f"{n} instance{'s' if n > 1 else ''}" for n in counts.columns]
    counts["images"] = counts.sum(axis=1)
    counts.loc["total"] = counts.sum(axis=0)
    counts.index.name = "category"
    return counts


def misc_pair_table(pairs: pd.DataFrame) -> pd.DataFrame:
    """MISC: per category (rows, plus `All`): pairs, multi-instance pairs, correspondences per pair
    (mean, max), shared keypoint types (mean) and share (mean, min), pairs with overlapping
    instances (mask IoU > 0 on either side) and their percentage."""
    rows = {}
    groups = [(str(c), g) for c, g in pairs.groupby("category", observed=True, sort=True)] + [("All", pairs)]
    for category, group in groups:
        count = len(group)
        overlapping = int(((group["src_max_overlap"] > 0) | (group["trg_max_overlap"] > 0)).sum())
        rows[category] = {
            "pairs": count,
            "multi_instance_pairs": int(((group["src_instances"] > 1) | (group["trg_instances"] > 1)).sum()),
            "correspondences_mean": round(float(group["num_correspondences"].mean()), 2) if count else 0.0,
            "correspondences_max": int(group["num_correspondences"].max()) if count else 0,
            "shared_mean": round(float(group["shared"].mean()), 2) if count and "shared" in group else 0.0,
            "share_mean": round(float(group["share"].mean()), 4) if count else 0.0,
            "share_min": round(float(group["share"].min()), 4) if count else 0.0,
            "overlap_pairs": overlapping,
            "overlap_pct": round(100.0 * overlapping / count, 2) if count else 0.0,
        }
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "category"
    return table
