"""Straightforward per-pair reference implementations of the SPair rules, written apart from
the vectorised builders so tests and benchmarks can compare the two."""

from __future__ import annotations

import pandas as pd

SPLIT_ORDER = {"trn": 0, "val": 1, "test": 2}


def reference_viewpoint(src_bin: int, trg_bin: int) -> int:
    diff = abs(src_bin - trg_bin)
    diff = min(diff, 8 - diff)
    if diff in (0, 1):
        return 0
    if diff in (2, 3):
        return 1
    return 2


def reference_scale(src_area: float, trg_area: float) -> int:
    ratio = max(src_area, trg_area) / min(src_area, trg_area)
    if ratio < 2:
        return 0
    if ratio < 4:
        return 1
    return 2


def reference_flag(src: bool, trg: bool) -> int:
    return {(False, False): 0, (True, False): 1, (False, True): 2, (True, True): 3}[(bool(src), bool(trg))]


def reference_spair_pairs(units: pd.DataFrame, visible) -> list[dict]:
    """One dict per pair, in (category, split, src image, trg image) order, from plain loops."""
    rows = list(units.reset_index(drop=True).itertuples(index=False))
    indexed = sorted(range(len(rows)), key=lambda i: (rows[i].category, SPLIT_ORDER[rows[i].split], rows[i].image_id))
    out = []
    for i in indexed:
        for j in indexed:
            a, b = rows[i], rows[j]
            if i == j or a.category != b.category or a.split != b.split:
                continue
            shared = [k for k in range(visible.shape[1]) if visible[i, k] and visible[j, k]]
            if not shared:
                continue
            out.append({
                "pair_id": len(out) + 1,
                "category": a.category,
                "split": a.split,
                "src_image_id": int(a.image_id),
                "trg_image_id": int(b.image_id),
                "viewpoint_variation": reference_viewpoint(int(a.azimuth_bin), int(b.azimuth_bin)),
                "scale_variation": reference_scale(float(a.bbox_area), float(b.bbox_area)),
                "truncation": reference_flag(a.truncated, b.truncated),
                "occlusion": reference_flag(a.occluded, b.occluded),
                "kps_ids": shared,
            })
    return out
