"""SPair-71k pairs: every ordered pair of distinct images of one category inside one split
that share at least one visible keypoint, with difficulty labels and shared keypoint ids."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from semcorr.builders import labels
from semcorr.store import SPLIT_NAMES, Dataset

UNIT_COLUMNS = ["image_id", "ann_id", "category", "split", "azimuth_bin", "bbox_area", "truncated", "occluded"]


def spair_units(dataset: Dataset, splits: dict[int, str]) -> tuple[pd.DataFrame, np.ndarray, pd.DataFrame]:
    """The single-instance (image, category) units SPair pairs are built from.

    SPair images hold one annotated instance of their category; an image with several
    instances of a category is left out of that category's SPair pairs (MISC mode pairs them).

    Returns:
        units: one row per unit with UNIT_COLUMNS.
        visible: (len(units), K_max) bool, keypoint k of the unit labelled and visible.
        skipped: (image_id, category, reason) rows for images left out.
    """
    table = dataset.instance_table()
    table["split"] = table["image_id"].map(splits)
    skipped = []
    unsplit = table["split"].isna()
    for row in table[unsplit].drop_duplicates(["image_id", "category"]).itertuples():
        skipped.append((row.image_id, row.category, "image not in splits.json"))
    table = table[~unsplit]
    multiple = table.duplicated(["image_id", "category"], keep=False)
    for row in table[multiple].drop_duplicates(["image_id", "category"]).itertuples():
        skipped.append((row.image_id, row.category, "several instances of the category"))
    table = table[~multiple].sort_values(["category", "image_id"], kind="stable").reset_index(drop=True)
    k_max = max((c.num_keypoints for c in dataset.categories.values()), default=0)
    by_id = {inst.id: inst for inst in dataset.instances}
    visible = np.zeros((len(table), k_max), dtype=bool)
    for row_index, ann_id in enumerate(table["ann_id"].to_numpy()):
        mask = by_id[int(ann_id)].visible
        visible[row_index, : len(mask)] = mask
    skipped_table = pd.DataFrame(skipped, columns=["image_id", "category", "reason"])
    return table[UNIT_COLUMNS], visible, skipped_table


def _ordered_pairs(visible: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row-major (src, trg) local indexes of distinct units sharing a visible keypoint."""
    as_int = visible.astype(np.int32)
    shares = (as_int @ as_int.T) > 0
    np.fill_diagonal(shares, False)
    return np.nonzero(shares)


def build_spair_pairs(units: pd.DataFrame, visible: np.ndarray) -> pd.DataFrame:
    """Build the SPair pairs table.

    Args:
        units: UNIT_COLUMNS rows, as from `spair_units`.
        visible: (len(units), K) bool visibility of each unit's keypoints.

    Returns:
        One row per ordered pair, numbered from 1 in (category, split, source image,
        target image) order, with `category` and `split` as categoricals, ids, azimuth bins, `viewpoint_variation`,
        `scale_variation`, `truncation`, `occlusion` (codes as in `labels`; -1 for the
        viewpoint where a bin is unknown), `num_shared` and `kps_ids`.
    """
    units = units.reset_index(drop=True)
    split_rank = units["split"].map({name: i for i, name in enumerate(SPLIT_NAMES)}).to_numpy()
    order = np.lexsort((units["image_id"].to_numpy(), split_rank, units["category"].to_numpy()))
    src_parts, trg_parts = [], []
    keys = pd.DataFrame({"category": units["category"].to_numpy()[order], "split": split_rank[order]})
    group_starts = np.flatnonzero(np.r_[True, (keys.iloc[1:].to_numpy() != keys.iloc[:-1].to_numpy()).any(axis=1)])
    group_ends = np.r_[group_starts[1:], len(order)]
    for start, end in zip(group_starts, group_ends):
        members = order[start:end]
        src_local, trg_local = _ordered_pairs(visible[members])
        src_parts.append(members[src_local])
        trg_parts.append(members[trg_local])
    src = np.concatenate(src_parts) if src_parts else np.zeros(0, dtype=np.int64)
    trg = np.concatenate(trg_parts) if trg_parts else np.zeros(0, dtype=np.int64)

    src_bin = units["azimuth_bin"].to_numpy()[src]
    trg_bin = units["azimuth_bin"].to_numpy()[trg]
    viewpoint = labels.viewpoint_variation(src_bin, trg_bin)
    viewpoint[(src_bin < 0) | (trg_bin < 0)] = -1
    area = units["bbox_area"].to_numpy()
    truncated = units["truncated"].to_numpy()
    occluded = units["occluded"].to_numpy()

    shared = visible[src] & visible[trg]
    kp_index = np.flatnonzero(shared) % max(shared.shape[1], 1)
    num_shared = shared.sum(axis=1)
    category_codes, category_names = pd.factorize(units["category"], sort=True)
    offsets = np.r_[0, np.cumsum(num_shared)].astype(np.int32)
    kps_ids = pa.ListArray.from_arrays(pa.array(offsets), pa.array(kp_index.astype(np.int16)))

    return pd.DataFrame(
        {
            "pair_id": np.arange(1, len(src) + 1, dtype=np.int64),
            "category": pd.Categorical.from_codes(category_codes[src], categories=category_names),
            "split": pd.Categorical.from_codes(split_rank[src], categories=list(SPLIT_NAMES)),
            "src_image_id": units["image_id"].to_numpy()[src].astype(np.int64),
            "trg_image_id": units["image_id"].to_numpy()[trg].astype(np.int64),
            "src_ann_id": units["ann_id"].to_numpy()[src].astype(np.int64),
            "trg_ann_id": units["ann_id"].to_numpy()[trg].astype(np.int64),
            "src_azimuth_bin": src_bin.astype(np.int8),
            "trg_azimuth_bin": trg_bin.astype(np.int8),
            "viewpoint_variation": viewpoint,
            "scale_variation": labels.scale_variation(area[src], area[trg]),
            "truncation": labels.flag_variation(truncated[src], truncated[trg]),
            "occlusion": labels.flag_variation(occluded[src], occluded[trg]),
            "num_shared": num_shared.astype(np.int16),
            "kps_ids": pd.Series(pd.arrays.ArrowExtensionArray(kps_ids)),
        }
    )
