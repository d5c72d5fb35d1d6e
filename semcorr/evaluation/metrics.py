"""The metrics, as pure functions over arrays.

- PCK@alpha (SPair): a predicted keypoint is correct within alpha x max(w, h) of the
  target box (or image); a pair's PCK is the share of its keypoints that are correct.
- mPCK@alpha (MISC eq. 1): per pair, predicted and ground-truth target points of each
  keypoint id are matched by Kuhn-Munkres, a match counting when within alpha x the longer
  image side; the pair scores TP / (TP + FP) (= TP / number of predictions; 0 with no
  predictions); mPCK is the mean over pairs. Missed ground truth (FN) is reported, as the
  paper does, but does not enter the score.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

FAR = 1e9


def pck_per_pair(pred: np.ndarray, gt: np.ndarray, pair_index: np.ndarray, threshold: np.ndarray,
                 num_pairs: int) -> np.ndarray:
    """Per-pair PCK from flat keypoint arrays.

    Args:
        pred: (N, 2) predicted points.
        gt: (N, 2) ground-truth points.
        pair_index: (N,) which pair each keypoint belongs to.
        threshold: (num_pairs,) pixel radius of each pair.
        num_pairs: number of pairs.

    Returns:
        (num_pairs,) share of correct keypoints (NaN for a pair with no keypoints).
    """
    distance = np.linalg.norm(np.asarray(pred, float) - np.asarray(gt, float), axis=1)
    correct = distance <= threshold[pair_index]
    hits = np.bincount(pair_index, weights=correct, minlength=num_pairs)
    totals = np.bincount(pair_index, minlength=num_pairs)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, hits / np.maximum(totals, 1), np.nan)


def matched_within(pred: np.ndarray, gt: np.ndarray, radius: float) -> int:
    """Kuhn-Munkres matches of `pred` (P, 2) to `gt` (G, 2) that lie within `radius`.

    Costs are the distances, with pairs beyond the radius made prohibitive, so the
    assignment first maximises the number of matches within the radius.
    """
    if len(pred) == 0 or len(gt) == 0:
        return 0
    distance = np.linalg.norm(pred[:, None, :] - gt[None, :, :], axis=2)
    inside = distance <= radius
    if len(pred) == 1 or len(gt) == 1:
        return int(inside.any())
    cost = np.where(inside, distance, FAR)
    rows, cols = linear_sum_assignment(cost)
    return int(inside[rows, cols].sum())


def mpck_pair(pred: np.ndarray, pred_ids: np.ndarray, gt: np.ndarray, gt_ids: np.ndarray, radius: float
              ) -> tuple[int, int, int]:
    """(TP, FP, FN) of one pair: predictions matched to ground truth of the same keypoint id."""
    pred, gt = np.asarray(pred, float).reshape(-1, 2), np.asarray(gt, float).reshape(-1, 2)
    pred_ids, gt_ids = np.asarray(pred_ids), np.asarray(gt_ids)
    tp = 0
    for kp in np.union1d(pred_ids, gt_ids):
        tp += matched_within(pred[pred_ids == kp], gt[gt_ids == kp], radius)
    return tp, len(pred) - tp, len(gt) - tp


def pair_score(tp: int, fp: int) -> float:
    """TP / (TP + FP), 0 when there is no prediction."""
    return tp / (tp + fp) if tp + fp else 0.0


def mask_iou_matched(pred_masks: list[np.ndarray], gt_masks: list[np.ndarray]) -> float:
    """Mean IoU over ground-truth instances after Kuhn-Munkres matching (unmatched ones count 0)."""
    if not gt_masks:
        return float("nan")
    if not pred_masks:
        return 0.0
    iou = np.zeros((len(pred_masks), len(gt_masks)))
    for i, p in enumerate(pred_masks):
        for j, g in enumerate(gt_masks):
            union = np.logical_or(p, g).sum()
            iou[i, j] = np.logical_and(p, g).sum() / union if union else 0.0
    rows, cols = linear_sum_assignment(-iou)
    return float(iou[rows, cols].sum() / len(gt_masks))


_PERMUTATIONS_4 = np.array(list(__import__("itertools").permutations(range(4))), dtype=np.int64)


def mpck_batch(pred_pair: np.ndarray, pred_kp: np.ndarray, pred_xy: np.ndarray, gt_pair: np.ndarray,
               gt_kp: np.ndarray, gt_xy: np.ndarray, radius: np.ndarray, num_pairs: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(TP, FP, FN) per pair for many pairs at once; identical to `mpck_pair` pair by pair.

    Points are grouped by (pair, keypoint id). A group's TP is the largest number of
    prediction-truth matches within the pair's radius (what Kuhn-Munkres with prohibitive
    costs beyond the radius finds). Groups of at most 4 x 4 points, the common case with 1 to 4
    instances, are solved at once by trying all 24 assignments; larger ones go to
    `matched_within`.
    """
    pred_pair, gt_pair = np.asarray(pred_pair, np.int64), np.asarray(gt_pair, np.int64)
    pred_xy, gt_xy = np.asarray(pred_xy, float).reshape(-1, 2), np.asarray(gt_xy, float).reshape(-1, 2)
    span = int(max(np.max(pred_kp, initial=0), np.max(gt_kp, initial=0))) + 1
    pred_key = pred_pair * span + np.asarray(pred_kp, np.int64)
    gt_key = gt_pair * span + np.asarray(gt_kp, np.int64)
    pred_order, gt_order = np.argsort(pred_key, kind="stable"), np.argsort(gt_key, kind="stable")
    pred_key, pred_xy = pred_key[pred_order], pred_xy[pred_order]
    gt_key, gt_xy = gt_key[gt_order], gt_xy[gt_order]
    keys = np.intersect1d(pred_key, gt_key)
    p_start, p_end = np.searchsorted(pred_key, keys, "left"), np.searchsorted(pred_key, keys, "right")
    g_start, g_end = np.searchsorted(gt_key, keys, "left"), np.searchsorted(gt_key, keys, "right")
    p_count, g_count = p_end - p_start, g_end - g_start
    group_pair = keys // span
    group_radius = np.asarray(radius, float)[group_pair]
    tp_group = np.zeros(len(keys), dtype=np.int64)
    small = (p_count <= 4) & (g_count <= 4)
    offsets = np.arange(4)
    small_index = np.flatnonzero(small)
    for chunk in np.array_split(small_index, max(1, len(small_index) // 100_000)):  # bounded memory
        rows = p_start[chunk, None] + offsets
        cols = g_start[chunk, None] + offsets
        row_ok, col_ok = offsets < p_count[chunk, None], offsets < g_count[chunk, None]
        a = pred_xy[np.minimum(rows, len(pred_xy) - 1)]
        b = gt_xy[np.minimum(cols, len(gt_xy) - 1)]
        distance = np.linalg.norm(a[:, :, None, :] - b[:, None, :, :], axis=3)
        inside = (distance <= group_radius[chunk, None, None]) & row_ok[:, :, None] & col_ok[:, None, :]
        chosen = inside[:, offsets[None, :], _PERMUTATIONS_4]  # (groups, 24, 4)
        tp_group[chunk] = chosen.sum(axis=2).max(axis=1)
    for index in np.flatnonzero(~small):
        tp_group[index] = matched_within(pred_xy[p_start[index]:p_end[index]], gt_xy[g_start[index]:g_end[index]],
                                         group_radius[index])
    tp = np.bincount(group_pair, weights=tp_group, minlength=num_pairs).astype(np.int64)
    predicted = np.bincount(pred_pair, minlength=num_pairs)
    truth = np.bincount(gt_pair, minlength=num_pairs)
    return tp, predicted - tp, truth - tp
