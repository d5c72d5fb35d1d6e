"""From scored candidates to a keypoint set: a budget, a minimum spacing, mirror pairs, names.

Coordinates are canonical (+y up, +z front, +x the object's own left; the longest side is 1).
On a mirror-symmetric object the design is done on the left half (x >= 0): every candidate is
folded onto that half, candidates whose mirror image would lie within the spacing of
themselves are put on the plane (x = 0), and every off-plane keypoint gets its exact mirror
image as its right partner, so flip pairs are exact by construction.

Selection is greedy, farthest-point style over score: each view's best candidate first (so
every view whose schemes were chosen contributes), then repeatedly the candidate with the
largest score x distance to the keypoints chosen so far, never closer than the spacing to any
of them (mirror partners included), until the budget is spent or no candidate fits.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

MIRROR = np.array([-1.0, 1.0, 1.0])

KIND_PHRASES = {
    "tip": "Tip of a part",
    "joint": "Joint where parts meet",
    "extreme": "Outermost point of the outline",
    "corner": "Corner of the outline",
    "feature": "Distinctive corner of shape or texture",
}


@dataclass
class Pool:
    """Candidates of the chosen (view, scheme) cells, one row each.

    Attributes:
        xyz: (P, 3) canonical surface points.
        score: (P,) ranking key in [0, 1] (higher is better).
        views: (P, V) bool, the chosen views that propose each candidate.
        scheme: P scheme names.
        kind: P kind words (keys of KIND_PHRASES).
    """

    xyz: np.ndarray
    score: np.ndarray
    views: np.ndarray
    scheme: tuple[str, ...]
    kind: tuple[str, ...]

    def __post_init__(self) -> None:
        self.xyz = np.asarray(self.xyz, dtype=np.float64).reshape(-1, 3)
        self.score = np.asarray(self.score, dtype=np.float64).reshape(-1)
        self.views = np.asarray(self.views, dtype=bool).reshape(len(self.xyz), -1)
        if not (len(self.xyz) == len(self.score) == len(self.scheme) == len(self.kind)):
            raise ValueError("xyz, score, views, scheme and kind need one entry per candidate")


@dataclass
class Selection:
    """The chosen keypoints.

    Attributes:
        xyz: (K, 3) canonical points; a left keypoint is followed by its right partner.
        source: (K,) index into the pool of the candidate each keypoint came from.
        side: K of "left", "right", "plane" (symmetric design) or "" (no symmetry).
        pairs: (left, right) index pairs.
        views: (K, V) bool, the views proposing a candidate within the spacing of each keypoint
            (for a mirror partner, of its left keypoint).
    """

    xyz: np.ndarray
    source: np.ndarray
    side: tuple[str, ...]
    pairs: tuple[tuple[int, int], ...]
    views: np.ndarray


def fold_to_half(pool: Pool, plane_points: np.ndarray, half_surface: cKDTree, half_points: np.ndarray,
                 spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """Fold candidates onto the left half (x >= 0).

    A candidate closer than spacing / 2 to the plane moves onto it (the nearest surface point
    within the plane band, x set to 0); the others are mirrored to x > 0 when needed and
    snapped to the left half's surface.

    Args:
        pool: the candidates.
        plane_points: (Q, 2) (y, z) of surface points in the plane band.
        half_surface: KD-tree over `half_points`, surface points with x >= spacing / 2.
        half_points: (R, 3) the points of `half_surface`.
        spacing: the minimum spacing.

    Returns:
        folded: (P, 3) points (NaN rows where no surface is near enough).
        on_plane: (P,) bool.
    """
    folded = np.full_like(pool.xyz, np.nan)
    on_plane = np.abs(pool.xyz[:, 0]) < spacing / 2
    if on_plane.any() and len(plane_points):
        distance, index = cKDTree(plane_points).query(pool.xyz[on_plane][:, 1:])
        near = distance <= spacing
        rows = np.flatnonzero(on_plane)[near]
        folded[rows, 1:] = plane_points[index[near]]
        folded[rows, 0] = 0.0
    off = ~on_plane
    if off.any() and len(half_points):
        mirrored = pool.xyz[off] * np.where(pool.xyz[off, :1] < 0, MIRROR, 1.0)
        distance, index = half_surface.query(mirrored)
        near = distance <= spacing / 2
        folded[np.flatnonzero(off)[near]] = half_points[index[near]]
    return folded, on_plane


def select_spread(points: np.ndarray, score: np.ndarray, views: np.ndarray, cost: np.ndarray, budget: int,
                  spacing: float, mirrored: bool) -> list[int]:
    """Greedy score-weighted farthest-point selection under a spacing constraint and a budget.

    Args:
        points: (P, 3) candidate points (NaN rows are never chosen).
        score: (P,) scores, higher first.
        views: (P, V) bool, the views proposing each candidate; each view's best fitting
            candidate is taken first, view by view.
        cost: (P,) keypoints each choice spends (2 for a mirrored pair, else 1).
        budget: most keypoints in all.
        spacing: no chosen point (or its mirror image when `mirrored`) closer than this to another.
        mirrored: the chosen set includes each point's mirror image (x -> -x).

    Returns:
        indexes of the chosen candidates, in the order chosen.
    """
    usable = np.isfinite(points).all(axis=1)
    distance = np.full(len(points), np.inf)
    chosen: list[int] = []
    spent = 0

    def take(index: int) -> None:
        nonlocal spent
        chosen.append(index)
        spent += int(cost[index])
        for image in (points[index], points[index] * MIRROR) if mirrored else (points[index],):
            distance[:] = np.minimum(distance, np.linalg.norm(points - image, axis=1))

    def best(mask: np.ndarray) -> int | None:
        fits = mask & usable & (distance >= spacing) & (cost <= budget - spent)
        fits[chosen] = False
        if not fits.any():
            return None
        weight = score * np.minimum(distance, 1.0)  # the first pick: the best score
        return int(np.flatnonzero(fits)[np.argmax(weight[fits])])

    for view in range(views.shape[1]):
        if not views[chosen, view].any():
            index = best(views[:, view])
            if index is not None:
                take(index)
    while (index := best(np.ones(len(points), dtype=bool))) is not None:
        take(index)
    return chosen


def select_keypoints(pool: Pool, outer_points: np.ndarray, budget: int, spacing: float, symmetric: bool,
                     seen: Callable[[np.ndarray], np.ndarray]) -> Selection:
    """Choose at most `budget` keypoints from `pool`, `spacing` apart, mirrored when `symmetric`.

    Args:
        pool: candidates of the chosen cells.
        outer_points: (S, 3) outer-surface points (visible from some view).
        budget: --max-keypoints.
        spacing: --min-spacing.
        symmetric: the object is mirror-symmetric in x.
        seen: (N, 3) points -> (N,) bool, seen in at least one grading view; a folded point
            or mirror partner nobody sees is never chosen.
    """
    if not symmetric:
        points = np.where(seen(pool.xyz)[:, None], pool.xyz, np.nan) if len(pool.xyz) else pool.xyz
        picked = select_spread(points, pool.score, pool.views, np.ones(len(pool.xyz)), budget, spacing, False)
        return Selection(pool.xyz[picked], np.array(picked, dtype=np.int64), ("",) * len(picked), (),
                         _nearby_views(points, pool.views, picked, spacing))
    band = np.abs(outer_points[:, 0]) <= max(0.01, spacing / 10)
    half = outer_points[outer_points[:, 0] >= spacing / 2]
    folded, on_plane = fold_to_half(pool, outer_points[band][:, 1:], cKDTree(half) if len(half) else None, half,
                                    spacing)
    found = np.isfinite(folded).all(axis=1)
    if found.any():
        visible = np.zeros(len(folded), dtype=bool)
        both = seen(np.concatenate([folded[found], folded[found] * MIRROR]))
        visible[found] = both[: found.sum()] & (on_plane[found] | both[found.sum():])
        folded[~visible] = np.nan
    cost = np.where(on_plane, 1, 2)
    picked = select_spread(folded, pool.score, pool.views, cost, budget, spacing, True)
    xyz, source, side, pairs = [], [], [], []
    for index in picked:
        if on_plane[index]:
            xyz.append(folded[index])
            source.append(index)
            side.append("plane")
            continue
        pairs.append((len(xyz), len(xyz) + 1))
        xyz += [folded[index], folded[index] * MIRROR]
        source += [index, index]
        side += ["left", "right"]
    views = _nearby_views(folded, pool.views, picked, spacing)
    expand = [row for row, index in enumerate(picked) for _ in range(1 if on_plane[index] else 2)]
    return Selection(np.array(xyz).reshape(-1, 3), np.array(source, dtype=np.int64), tuple(side), tuple(pairs),
                     views[expand].reshape(-1, pool.views.shape[1]))


def _nearby_views(points: np.ndarray, views: np.ndarray, picked: list[int], spacing: float) -> np.ndarray:
    """(len(picked), V): per picked candidate, the views of every usable candidate within `spacing` of it."""
    out = np.zeros((len(picked), views.shape[1]), dtype=bool)
    usable = np.isfinite(points).all(axis=1)
    for row, index in enumerate(picked):
        near = usable & (np.linalg.norm(np.where(usable[:, None], points, 0.0) - points[index], axis=1) < spacing)
        out[row] = views[near].any(axis=0) | views[index]
    return out


def region(point: np.ndarray, low: np.ndarray, high: np.ndarray, with_side: bool) -> list[str]:
    """Region words of a canonical point: top/bottom (y), front/back (z), and left/right (x) when asked."""
    rel = (np.asarray(point) - (low + high) / 2) / np.maximum(high - low, 1e-9)
    axes = [(rel[1], "top", "bottom"), (rel[2], "front", "back")]
    if with_side:
        axes.append((rel[0], "left", "right"))
    words = []
    for value, positive, negative in axes:
        if value > 1 / 6:
            words.append(positive)
        elif value < -1 / 6:
            words.append(negative)
    return words


def name_keypoints(selection: Selection, kinds: list[str], low: np.ndarray, high: np.ndarray
                   ) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Names and descriptions from the frame: `left_`/`right_` for mirror partners (same region words
    for both), region words top/bottom and front/back, and the candidate's kind; `_2`, `_3` ... keep
    names unique.

    Args:
        selection: the chosen keypoints.
        kinds: per keypoint, a key of KIND_PHRASES.
        low, high: the object's canonical bounds.
    """
    regions = [region(point, low, high, with_side=side == "") for point, side in zip(selection.xyz, selection.side)]
    partner = {a: b for a, b in selection.pairs} | {b: a for a, b in selection.pairs}
    count: Counter[tuple[bool, str]] = Counter()
    names = []
    for words, side, kind in zip(regions, selection.side, kinds):
        mirrored = side in ("left", "right")
        base = "_".join([*words, kind])
        if side != "right":  # a right partner takes its left partner's number
            count[mirrored, base] += 1
        number = count[mirrored, base]
        name = base if number == 1 else f"{base}_{number}"
        names.append(f"{side}_{name}" if mirrored else name)
    texts = []
    for index, (words, side, kind) in enumerate(zip(regions, selection.side, kinds)):
        where = f"at the {' '.join(words)} of the object" if words else "in the middle of the object"
        text = f"{KIND_PHRASES.get(kind, 'Point')} {where}"
        if side in ("left", "right"):
            text += f", on its {side} side (mirror image of {names[partner[index]]})"
        elif side == "plane":
            text += ", on its mirror plane"
        texts.append(text + ".")
    return tuple(names), tuple(texts)


def coverage(surface_points: np.ndarray, seen: np.ndarray, keypoints: np.ndarray, radius: float) -> np.ndarray:
    """Per view, the share of the surface seen there that lies within `radius` of some keypoint.

    Args:
        surface_points: (S, 3) surface sample.
        seen: (V, S) bool, which samples each view sees.
        keypoints: (K, 3).
        radius: coverage radius (canonical units).
    """
    if len(keypoints) == 0:
        return np.zeros(len(seen))
    near = cKDTree(keypoints).query(surface_points)[0] <= radius
    return np.array([near[row].mean() if row.any() else 0.0 for row in seen])
