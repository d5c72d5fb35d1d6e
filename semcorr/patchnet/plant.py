"""Planted labelling errors, to measure how well `qc` finds each kind (benchmarks and tests).

Three kinds, the mistakes annotators make: `off_object` (a point moved by 0.2-0.35 of the box's
longer side in a random direction, staying inside the image and landing off its instance mask),
`wrong_part` (a point moved onto another labelled keypoint of the same instance), `swap` (the two
points of a flip pair traded). A fourth, `on_object`, is the same displacement landing back on the
mask (a point slid along the object, not off it): no mask can see it, so it is reported apart
rather than counted as off-object (on the benchmark's synthetic stores about 40% of the issue's
unconditioned displacements land on the mask). Instances without a segmentation take any landing.
At most one error per instance, so each planted error is judged on its own.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import pandas as pd

from semcorr.errors import SemcorrError
from semcorr.store import Dataset

KINDS = ("off_object", "wrong_part", "swap")
EXTRA_KINDS = ("on_object",)
OFF_OBJECT_RANGE = (0.2, 0.35)


@dataclass(frozen=True)
class Planted:
    """One planted error: its kind, instance and keypoint(s) (`other`: the swap partner or the keypoint
    whose place was taken, -1 for off-object)."""

    kind: str
    ann_id: int
    keypoint: int
    other: int = -1


def plant_errors(dataset: Dataset, counts: dict[str, int], flip_pairs: dict[str, tuple[tuple[int, int], ...]],
                 seed: int) -> tuple[Dataset, list[Planted]]:
    """A copy of `dataset` with `counts[kind]` errors of each kind planted on distinct instances; seeded.

    Raises:
        SemcorrError: a kind is unknown, or too few instances can take the errors asked for.
    """
    unknown = sorted(set(counts) - set(KINDS) - set(EXTRA_KINDS))
    if unknown:
        raise SemcorrError(f"unknown error kind {', '.join(unknown)}; choose from "
                           f"{', '.join(KINDS + EXTRA_KINDS)}")
    rng = np.random.default_rng(seed)
    planted_set = copy.deepcopy(dataset)
    free = [inst for inst in planted_set.instances if inst.visible.sum() >= 2]
    order = rng.permutation(len(free))
    used, planted = set(), []
    for kind in KINDS + EXTRA_KINDS:
        wanted = counts.get(kind, 0)
        for index in order:
            if wanted == 0:
                break
            inst = free[index]
            if inst.id in used:
                continue
            category = planted_set.categories[inst.category_id]
            image = planted_set.images[inst.image_id]
            error = _plant_one(kind, inst.keypoints, inst.bbox, (image.width, image.height),
                               flip_pairs.get(category.name, ()), rng,
                               _mask(inst, image) if kind in ("off_object", "on_object") else None)
            if error is None:
                continue
            inst.keypoints[:, :2], (k, other) = error
            used.add(inst.id)
            planted.append(Planted(kind, inst.id, k, other))
            wanted -= 1
        if wanted:
            raise SemcorrError(f"could not plant {counts[kind]} {kind} errors: "
                               "too few instances left that can take one")
    return planted_set, planted


def _mask(inst, image) -> np.ndarray | None:
    """The instance's (H, W) bool mask, or None without a segmentation."""
    from semcorr.builders.coco_filter import decode_mask

    if inst.segmentation is None:
        return None
    return decode_mask(inst.segmentation, image.height, image.width)


def _plant_one(kind: str, keypoints: np.ndarray, bbox: np.ndarray, size: tuple[int, int],
               flips: tuple[tuple[int, int], ...], rng: np.random.Generator, mask: np.ndarray | None = None
               ) -> tuple[np.ndarray, tuple[int, int]] | None:
    """New (K, 2) points with one error of `kind` and (keypoint, other), or None where it cannot be planted.

    `off_object` / `on_object` landings must be off / on `mask` (pixel i covers [i, i + 1)); any landing
    counts as off-object where `mask` is None, and on-object cannot be planted without one."""
    xy = keypoints[:, :2].copy()
    visible = np.flatnonzero(keypoints[:, 2] == 2)
    if kind == "swap":
        usable = [(a, b) for a, b in flips if a in visible and b in visible]
        if not usable:
            return None
        a, b = usable[rng.integers(len(usable))]
        xy[[a, b]] = xy[[b, a]]
        return xy, (int(a), int(b))
    k = int(rng.choice(visible))
    if kind == "wrong_part":
        other = int(rng.choice(visible[visible != k]))
        xy[k] = xy[other]
        return xy, (k, other)
    side = float(max(bbox[2], bbox[3]))
    for _ in range(50):
        angle, distance = rng.uniform(0, 2 * np.pi), rng.uniform(*OFF_OBJECT_RANGE) * side
        moved = xy[k] + distance * np.array([np.cos(angle), np.sin(angle)])
        if not (0 <= moved[0] <= size[0] - 1 and 0 <= moved[1] <= size[1] - 1):
            continue
        if mask is None:
            if kind == "on_object":
                return None
        elif bool(mask[int(moved[1]), int(moved[0])]) != (kind == "on_object"):
            continue
        xy[k] = moved
        return xy, (k, -1)
    return None


def planted_keys(planted: list[Planted]) -> pd.DataFrame:
    """One row per planted keypoint (both points of a swap): kind, ann_id, keypoint, other."""
    rows = []
    for p in planted:
        rows.append((p.kind, p.ann_id, p.keypoint, p.other))
        if p.kind == "swap":
            rows.append((p.kind, p.ann_id, p.other, p.keypoint))
    return pd.DataFrame(rows, columns=["kind", "ann_id", "keypoint", "other"])


def ranks_of(suspects: pd.DataFrame, column: str, keys: pd.DataFrame) -> np.ndarray:
    """0-based rank of each planted keypoint when `suspects` is ordered by `column`, highest first
    (missing values last, ties broken by ann_id, keypoint as `qc` orders them)."""
    order = suspects.assign(_v=suspects[column].fillna(-np.inf)).sort_values(
        ["_v", "ann_id", "keypoint"], ascending=[False, True, True], kind="stable").reset_index(drop=True)
    rank = {(int(a), int(k)): i for i, (a, k) in enumerate(zip(order.ann_id, order.keypoint))}
    return np.array([rank[(int(a), int(k))] for a, k in zip(keys.ann_id, keys.keypoint)])


def swaps_named(suspects: pd.DataFrame, planted: list[Planted]) -> list[bool]:
    """Per planted swap (in order): whether `qc` reports it as a swap of exactly that pair (either point
    naming the other)."""
    names = dict(zip(zip(suspects.ann_id, suspects.keypoint), suspects.name))
    said = dict(zip(zip(suspects.ann_id, suspects.keypoint), suspects.swap_with.fillna("")))
    return [said.get((p.ann_id, p.keypoint)) == names.get((p.ann_id, p.other))
            or said.get((p.ann_id, p.other)) == names.get((p.ann_id, p.keypoint))
            for p in planted if p.kind == "swap"]


def swaps_reported(suspects: pd.DataFrame, planted: list[Planted]) -> int:
    """How many planted swaps `qc` reports as a swap of exactly that pair (`swaps_named`)."""
    return sum(swaps_named(suspects, planted))
