"""Quality-control cues: one small pure function per cue, over numpy arrays and tables.

Each cue gives every labelled keypoint a raw value in box units (the instance box's longer
side) or score units; `robust_z` turns each column into "how far above what is normal for this
keypoint id in this category", and `combine_cues` sums the positive weighted z's (see its docstring);
points clearly off their mask come first (`off_mask`).

- mask: how far a visible point lies outside its instance mask; a labelled but hidden point
  (visibility 1) deep inside the mask is a weaker cue (`mask_cue`).
- shape: the category's keypoint layout learned from the labels themselves as a rigid 3D shape
  seen through affine cameras (`factorise_layout`, rank-3 factorisation with missing points and
  robust weights, the Tomasi-Kanade model); each instance gets a trimmed camera fit and each
  keypoint its residual (`camera_residuals`).
- part: how much closer a point lies to another id's predicted position than to its own (`part_cue`).
- overlap: a point on the same spot as another labelled keypoint of the instance, far closer than
  that pair usually is (`coincidence_cue`). Part and overlap are the cues for wrong parts.
- swap: for each flip pair visible on an instance, the fit cost with the two labels traded
  (`swap_gains`); a clear drop is a suspected left/right swap.
- appearance: patch agreement with the same keypoint id on paired instances (network or
  `gradient_descriptors`), see `qc.keypoint_quality`.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import ndimage

CUES = ("mask", "shape", "part", "overlap", "swap", "appearance")
HIDDEN_WEIGHT = 0.5  # a hidden point deep in the mask is a weaker cue than a visible one outside it
HIDDEN_DEPTH = 0.05  # box sides of depth a hidden point may lie inside the mask before it counts
SHAPE_MIN_POINTS = 5  # an affine camera has 8 parameters: 4 points fit exactly, the 5th is the first check
TRIM = 2.5  # points farther than this many times the median residual leave the camera fit
RESIDUAL_CAP = 0.25  # box sides: one point's share of a fit cost is capped (a truncated quadratic)
COINCIDE_FROM = 0.5  # a point counts as on another's spot below 10^-0.5 = 0.32 of the pair's typical distance ...
COINCIDE_CAP = 1.5  # ... and scores -log10(ratio) - COINCIDE_FROM, at most this (a ratio of 0.01 or less)
COINCIDE_TIE = 1e-3  # box sides: shape residuals closer than this do not say which of two coincident points is wrong
SWAP_RATIO = 0.5  # a swap is suspected when trading the labels at least halves the fit cost ...
SWAP_MIN_GAIN = 0.01  # ... and lowers it by at least this (box sides squared: one point off by 0.1)
# Floors of each cue's spread in `robust_z`, in the cue's own units: below these a clean store's
# spread is noise (pixel rounding of mask borders, perspective left in an affine fit).
FLOORS = {"mask": 0.02, "shape": 0.02, "part": 0.02, "overlap": 0.1, "swap": 0.005, "appearance": 0.05}
# The combined suspicion is the weighted sum of the positive z's (`combine_cues`). Rule and weights were
# chosen on store seed 0 of `benchmarks/bench_qc.py` only (plant seeds 0 1; a grid of weights 0.25-4 per
# cue, max against sum against root-sum-square) by the mean top-k share over the six per-kind runs:
# sum 0.76, root-sum-square 0.74, max 0.72. The shape z counts a quarter: its clean tail is heavier
# (perspective that an affine camera cannot model; 99th percentile z 6.4 on a clean store, the mask's 0.95).
CUE_WEIGHTS = {"mask": 1.0, "shape": 0.25, "part": 0.5, "overlap": 1.0, "swap": 0.5, "appearance": 1.0}
# Mask priority: a visible point more than OFF_MASK box sides outside its instance mask is listed before every
# point that is not (`off_mask`), whatever the other cues say. Chosen on store seed 0 (thresholds 0.01-0.08):
# 0.03 is the smallest distance no clean keypoint reaches there (92 clean points pass 0.01, 5 pass 0.02), and it
# lifted off-object points from 83% to 93% of the top k without moving wrong parts or swaps. The sum alone lets
# other cues' clean tails (flat patches, keypoints that project close together) outrank a point just off the mask.
OFF_MASK = 0.03
OFF_MASK_PIXELS = 2.0  # ... and at least this many pixels: a keypoint on a small instance's silhouette can sit
# 1-1.5 px outside its rasterised mask (seen on 30-44 px instances, where 0.03 box sides is about 1 px)


def distance_maps(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(outside, depth) in pixels for an (H, W) bool mask: `outside` is each pixel's distance to the
    nearest mask pixel (0 on the mask), `depth` its distance to the nearest background pixel (0 off it)."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return np.full(mask.shape, np.inf), np.zeros(mask.shape)
    return ndimage.distance_transform_edt(~mask), ndimage.distance_transform_edt(mask)


def sample_map(values: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """values at the pixels that hold points `xy` (K, 2) (pixel i covers [i, i + 1)); NaN for NaN points,
    points past the border take the nearest border pixel."""
    xy = np.asarray(xy, dtype=np.float64)
    out = np.full(len(xy), np.nan)
    ok = np.isfinite(xy).all(axis=1)
    cols = np.clip(np.floor(xy[ok, 0]).astype(int), 0, values.shape[1] - 1)
    rows = np.clip(np.floor(xy[ok, 1]).astype(int), 0, values.shape[0] - 1)
    out[ok] = values[rows, cols]
    return out


def mask_cue(visibility: np.ndarray, outside: np.ndarray, depth: np.ndarray, side: float) -> np.ndarray:
    """Per keypoint, in box sides: a visible point's distance outside the mask; a hidden (visibility 1)
    point's depth inside it beyond HIDDEN_DEPTH, times HIDDEN_WEIGHT; NaN where not labelled.

    Args:
        visibility: (K,) 0 not labelled, 1 labelled hidden, 2 visible.
        outside: (K,) distance to the mask at each point (`sample_map` of `distance_maps`), pixels.
        depth: (K,) distance to the background at each point, pixels.
        side: the box's longer side, pixels.
    """
    visibility = np.asarray(visibility)
    out = np.full(len(visibility), np.nan)
    seen, hidden = visibility == 2, visibility == 1
    out[seen] = np.asarray(outside, float)[seen] / side
    out[hidden] = HIDDEN_WEIGHT * np.maximum(0.0, np.asarray(depth, float)[hidden] / side - HIDDEN_DEPTH)
    return out


def box_frame(xy: np.ndarray, bbox: np.ndarray) -> np.ndarray:
    """Points in box units: (xy - box centre) / the box's longer side."""
    bbox = np.asarray(bbox, dtype=np.float64)
    return (np.asarray(xy, np.float64) - (bbox[:2] + bbox[2:] / 2)) / max(float(bbox[2:].max()), 1e-9)


def fit_affine_camera(layout: np.ndarray, xy: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(2, D + 1) camera P minimising sum_k w_k |P [X_k; 1] - x_k|^2 (least squares, NaN-free rows)."""
    design = np.column_stack([layout, np.ones(len(layout))]) * np.sqrt(weights)[:, None]
    camera, *_ = np.linalg.lstsq(design, xy * np.sqrt(weights)[:, None], rcond=None)
    return camera.T


def project(camera: np.ndarray, layout: np.ndarray) -> np.ndarray:
    """(K, 2) projections of a (K, D) layout through a (2, D + 1) affine camera."""
    return layout @ camera[:, :-1].T + camera[:, -1]


def trimmed_camera(layout: np.ndarray, xy: np.ndarray, usable: np.ndarray) -> np.ndarray:
    """Affine camera of the `usable` points: fit on all, then (up to twice) refit without the points
    whose residual exceeds TRIM times the median (never fewer than D + 1 points, an exact fit).

    Least median of squares over minimal subsets was tried and ranked planted wrong parts worse on
    the benchmark (27% against 37% in the top k): with 5 to 8 points per instance an exact 4-point
    fit through a wrong point is often the most consistent one."""
    keep = usable.copy()
    for _ in range(3):
        camera = fit_affine_camera(layout[keep], xy[keep], np.ones(int(keep.sum())))
        error = np.linalg.norm(project(camera, layout[usable]) - xy[usable], axis=1)
        inside = error <= TRIM * max(float(np.median(error)), 1e-3)
        if inside.sum() < layout.shape[1] + 1:
            inside = error <= np.sort(error)[layout.shape[1]]
        new_keep = usable.copy()
        new_keep[usable] = inside
        if (new_keep == keep).all():
            break
        keep = new_keep
    return camera


def camera_residuals(layout: np.ndarray, xy: np.ndarray, min_points: int = SHAPE_MIN_POINTS
                     ) -> tuple[np.ndarray, np.ndarray, float]:
    """Residuals of one instance's points from its trimmed affine-camera fit (`trimmed_camera`) to a
    category layout.

    Args:
        layout: (K, D) the category's keypoint layout (NaN rows: keypoint without a layout).
        xy: (K, 2) the instance's points in box units, NaN where not labelled.
        min_points: fewer usable points than this give no verdict.

    Returns:
        (residuals (K,), predictions (K, 2), cost): residuals NaN where unusable or without a verdict,
        predictions for every keypoint with a layout row (labelled or not) once there is a verdict;
        cost is the sum of min(residual, RESIDUAL_CAP)^2 over usable points (NaN without a verdict).
    """
    known = np.isfinite(layout).all(axis=1)
    usable = np.isfinite(xy).all(axis=1) & known
    residuals, predictions = np.full(len(xy), np.nan), np.full((len(xy), 2), np.nan)
    if usable.sum() < min_points:
        return residuals, predictions, float("nan")
    camera = trimmed_camera(layout, xy, usable)
    predictions[known] = project(camera, layout[known])
    residuals[usable] = np.linalg.norm(predictions[usable] - xy[usable], axis=1)
    return residuals, predictions, float((np.minimum(residuals[usable], RESIDUAL_CAP) ** 2).sum())


def part_cue(xy: np.ndarray, predictions: np.ndarray, residuals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Wrong-part cue of one instance: per labelled keypoint, how much closer it lies to another
    keypoint id's predicted position than to its own (own residual minus the nearest other
    prediction's distance, at least 0, box sides), and that other id (-1 where none is closer).

    A point put on another part sits where the fit puts that part, while the part's own point (if
    labelled) sits where it belongs and scores 0: the cue names which of two coincident points is
    wrong, which the residual alone does not (the fit shares a wrong point's error with the rest).

    Args:
        xy: (K, 2) the instance's points, NaN where not labelled.
        predictions: (K, 2) where the camera fit puts every keypoint (`camera_residuals`), NaN rows skipped.
        residuals: (K,) each point's distance from its own prediction.
    """
    value, other = np.full(len(xy), np.nan), np.full(len(xy), -1)
    for k in np.flatnonzero(np.isfinite(residuals)):
        gaps = np.linalg.norm(predictions - xy[k], axis=1)
        gaps[k] = np.nan
        if np.isnan(gaps).all():
            continue
        j = int(np.nanargmin(gaps))
        value[k] = max(0.0, float(residuals[k] - gaps[j]))
        other[k] = j if value[k] > 0 else -1
    return value, other


def coincidence_cue(coords: np.ndarray, residuals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two labels on one spot: per instance and labelled keypoint, -log10 of its distance to the nearest
    other labelled keypoint of the instance over that pair's median distance in the category, less
    COINCIDE_FROM and clipped to [0, COINCIDE_CAP] (0 unless the two are much closer than usual, the cap
    when they coincide), and that keypoint (-1 where none).

    Of a coinciding pair only the point with the larger shape residual keeps the value (the one put on
    the wrong part); the other keeps half of it (both keep it all where the fit gave no verdict).

    Args:
        coords: (N, K, 2) the category's instances in box units, NaN where not labelled.
        residuals: (N, K) shape residuals (`camera_residuals`), NaN where none.
    """
    gaps = np.linalg.norm(coords[:, :, None] - coords[:, None], axis=3)  # (N, K, K)
    n, k = coords.shape[:2]
    gaps[:, np.arange(k), np.arange(k)] = np.nan
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a pair never labelled together has no median
        typical = np.nanmedian(np.where(gaps > 0, gaps, np.nan), axis=0)  # exact duplicates left out
        ratio = gaps / typical[None]
    value, other = np.full((n, k), np.nan), np.full((n, k), -1)
    labelled = np.isfinite(coords).all(axis=2)
    for i, kp in zip(*np.nonzero(labelled)):
        row = ratio[i, kp]
        if np.isnan(row).all():
            value[i, kp] = 0.0
            continue
        j = int(np.nanargmin(row))
        value[i, kp] = float(np.clip(-np.log10(max(row[j], 1e-9)) - COINCIDE_FROM, 0.0, COINCIDE_CAP))
        other[i, kp] = j if value[i, kp] > 0 else -1
    for i, kp in zip(*np.nonzero(other >= 0)):
        j = other[i, kp]
        if np.isfinite(residuals[i, [kp, j]]).all() and residuals[i, kp] < residuals[i, j] - COINCIDE_TIE:
            value[i, kp] *= 0.5
    return value, other


def factorise_layout(coords: np.ndarray, rank: int = 3, iterations: int = 30) -> np.ndarray:
    """A category's keypoint layout (K, rank) from its instances' points by robust alternating least
    squares: every instance is an affine camera P_i of one layout S, x_ik = P_i [S_k; 1].

    Missing points are skipped; each point is weighted by a Cauchy weight of its residual, so a
    wrong label bends the layout little. Keypoints seen on fewer than two instances get NaN rows.

    Args:
        coords: (N, K, 2) instances' points in box units (`box_frame`), NaN where not visible.
        rank: layout dimension (3: a rigid object under weak perspective).
        iterations: alternations.
    """
    seen = np.isfinite(coords).all(axis=2)  # (N, K)
    count = seen.sum(axis=0)
    layout = np.full((coords.shape[1], rank), np.nan)
    known = count >= 2
    rows = seen.sum(axis=1) >= rank + 2
    if known.sum() < rank + 1 or rows.sum() < 2:
        return layout
    x, ok = coords[rows][:, known], seen[rows][:, known]
    n, k = ok.shape
    filled = np.where(ok[..., None], x, np.nanmean(np.where(ok[..., None], x, np.nan), axis=0))
    flat = filled.transpose(0, 2, 1).reshape(2 * n, k)
    _, singular, vt = np.linalg.svd(flat - flat.mean(axis=1, keepdims=True), full_matrices=False)
    shape = (vt[:rank] * singular[:rank, None]).T / np.sqrt(n)  # (k, rank)
    weights = ok.astype(np.float64)
    for _ in range(iterations):
        cameras = np.stack([fit_affine_camera(shape[ok[i]], x[i, ok[i]], weights[i, ok[i]] + 1e-9)
                            for i in range(n)])  # (n, 2, rank + 1)
        for j in range(k):
            who = ok[:, j]
            lhs = cameras[who, :, :rank].reshape(-1, rank)
            rhs = (x[who, j] - cameras[who, :, rank]).reshape(-1)
            w = np.repeat(weights[who, j], 2)
            shape[j] = np.linalg.solve(lhs.T @ (lhs * w[:, None]) + 1e-6 * np.eye(rank), lhs.T @ (rhs * w))
        guess = np.einsum("nab,kb->nka", cameras[:, :, :rank], shape) + cameras[:, None, :, rank]
        error = np.where(ok, np.linalg.norm(guess - np.nan_to_num(x), axis=2), np.nan)
        scale = max(1.4826 * float(np.nanmedian(error)), 0.01)
        weights = np.where(ok, 1.0 / (1.0 + (np.nan_to_num(error) / (2 * scale)) ** 2), 0.0)
        shape = (shape - shape.mean(axis=0)) / max(float(shape.std()), 1e-9)  # fix the gauge
    layout[known] = shape
    return layout


def swap_gains(layout: np.ndarray, xy: np.ndarray, flip_pairs: list[tuple[int, int]],
               cost: float | None = None) -> np.ndarray:
    """Per flip pair: the instance's camera-fit cost minus the cost with the pair's two points traded
    (positive: the traded labels fit the layout better); NaN where either point is not usable or
    the fit gives no verdict. `cost`: the instance's own fit cost when already known (`camera_residuals`)."""
    gains = np.full(len(flip_pairs), np.nan)
    if cost is None:
        _, _, cost = camera_residuals(layout, xy)
    for p, (a, b) in enumerate(flip_pairs):
        if not (np.isfinite(xy[[a, b]]).all() and np.isfinite(cost)):
            continue
        traded = xy.copy()
        traded[[a, b]] = xy[[b, a]]
        gains[p] = cost - camera_residuals(layout, traded)[2]
    return gains


def swap_suspected(gain: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """A clear swap: trading the labels lowers the fit cost by SWAP_MIN_GAIN and at least halves it."""
    gain, cost = np.asarray(gain, float), np.asarray(cost, float)
    with np.errstate(invalid="ignore"):
        return (gain >= SWAP_MIN_GAIN) & (cost - gain <= SWAP_RATIO * cost)


def gradient_descriptors(patches: np.ndarray, cells: int = 4, bins: int = 8) -> np.ndarray:
    """Non-learned patch descriptors (SIFT-like): per cell of a cells x cells grid, a histogram of
    gradient orientations weighted by magnitude; L2-normalised, clipped at 0.2, renormalised.

    Args:
        patches: (N, H, W) or (N, H, W, 3) uint8 patches (colour is averaged to grey).
    Returns:
        (N, cells * cells * bins) float32, unit length (zero for a flat patch).
    """
    grey = np.asarray(patches, np.float32)
    grey = grey.mean(axis=-1) if grey.ndim == 4 else grey
    n, h, w = grey.shape
    gy, gx = np.gradient(grey, axis=(1, 2))
    magnitude = np.hypot(gx, gy)
    which = (np.floor((np.arctan2(gy, gx) + np.pi) / (2 * np.pi) * bins).astype(int)) % bins
    cell_row = np.minimum(np.arange(h) * cells // h, cells - 1)
    cell_col = np.minimum(np.arange(w) * cells // w, cells - 1)
    slot = (cell_row[:, None] * cells + cell_col[None, :])[None] * bins + which  # (n, h, w)
    flat = slot.reshape(n, -1) + (np.arange(n) * cells * cells * bins)[:, None]
    hist = np.bincount(flat.ravel(), magnitude.reshape(n, -1).ravel(), minlength=n * cells * cells * bins)
    hist = hist.reshape(n, -1)
    for _ in range(2):
        hist = hist / np.maximum(np.linalg.norm(hist, axis=1, keepdims=True), 1e-9)
        hist = np.minimum(hist, 0.2)
    return (hist / np.maximum(np.linalg.norm(hist, axis=1, keepdims=True), 1e-9)).astype(np.float32)


def robust_z(values: pd.Series, fine: list[pd.Series], coarse: list[pd.Series], floor: float,
             min_group: int = 5) -> pd.Series:
    """(value - median) / max(1.4826 MAD, floor) within the `fine` group; groups with fewer than
    `min_group` values use their `coarse` group's median and MAD (a group of two has a MAD of half
    its gap, so its own z is at most 0.67 however far apart the two are). NaN stays NaN."""
    def stats(groups):
        median = values.groupby(groups).transform("median")
        spread = 1.4826 * (values - median).abs().groupby(groups).transform("median")
        return median, spread, values.groupby(groups).transform("count")

    fine_median, fine_spread, size = stats(fine)
    coarse_median, coarse_spread, _ = stats(coarse)
    small = size < min_group
    median = fine_median.where(~small, coarse_median)
    spread = fine_spread.where(~small, coarse_spread)
    return (values - median) / np.maximum(spread.fillna(0.0), floor)


def combine_cues(z: pd.DataFrame, weights: dict[str, float] | None = None) -> tuple[pd.Series, pd.Series]:
    """The combined suspicion is the sum of the row's positive weighted cue z's (CUE_WEIGHTS), and the cue
    that gave the largest share ('' when none is positive; NaN suspicion when all are missing).

    A sum lets cues that each see a little add up (an off-object point is off the mask and its patch
    unlike its id's; a wrong part is off the layout and on another part's spot), and the clean tails of
    different cues rarely meet on one row; it beat the maximum on the tuning store (see CUE_WEIGHTS).
    """
    weights = CUE_WEIGHTS if weights is None else weights
    weighted = z * pd.Series({c: weights.get(c, 1.0) for c in z.columns})
    positive = weighted.clip(lower=0.0)
    total = positive.sum(axis=1, min_count=1)
    fired = positive.fillna(-1.0).idxmax(axis=1).where(positive.max(axis=1) > 0, "")
    return total, fired


def off_mask(mask_distance: np.ndarray, visibility: np.ndarray, box_side: np.ndarray, limit: float = OFF_MASK,
             min_pixels: float = OFF_MASK_PIXELS) -> np.ndarray:
    """Whether each keypoint is visible and at least `limit` box sides and `min_pixels` pixels outside its
    mask (the mask priority tier, see OFF_MASK); False where the distance is missing (no mask).

    Args:
        mask_distance: (K,) distance outside the mask in box sides (`mask_cue`).
        visibility: (K,) 0, 1 or 2.
        box_side: (K,) the instance box's longer side in pixels.
    """
    distance = np.nan_to_num(np.asarray(mask_distance, dtype=np.float64), nan=0.0)
    pixels = distance * np.nan_to_num(np.asarray(box_side, dtype=np.float64), nan=0.0)
    return (np.asarray(visibility) == 2) & (distance >= limit) & (pixels >= min_pixels)
