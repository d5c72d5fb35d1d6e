"""Scores of each (view, scheme) cell: saliency, completeness, uniformity in [0, 1].

From annotators: a votes CSV (`annotator, view, scheme, saliency, completeness, uniformity`)
averaged per cell, with Krippendorff's alpha (interval metric) per criterion and a flag
where annotators disagree strongly. Automatic proxies, computed from the renders:

- saliency: mean, over the scheme's points visible in the view, of the rank of the local
  corner strength (the largest Harris response of the render within 2 pixels of the point)
  among the same strengths of all object pixels of that view (a mid-rank in [0, 1]: 0.99
  means stronger than 99% of the object). Rank-based, so it never divides by a near-zero
  percentile: a point on a large flat face (response 0 there, tied with most pixels) gets
  about the share of the object that is weaker or flat, and corners grade near 1;
- completeness: share of the view's silhouette within `coverage_radius` (a fraction of
  the silhouette's bounding-box diagonal) of some visible point;
- uniformity: 1 - coefficient of variation of the visible points' nearest-neighbour
  distances in the image (0 with fewer than 3 visible points): evenly spaced sets score high.

Total = 0.5 saliency + 0.3 completeness + 0.2 uniformity; per view, the schemes whose total
is above the threshold are chosen.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.spatial import cKDTree

from semcorr.errors import SemcorrError
from semcorr.keypoint_design.candidates import SCHEMES, Candidates
from semcorr.keypoint_design.views import VIEW_NAMES, ViewRender

CRITERIA = ("saliency", "completeness", "uniformity")
WEIGHTS = {"saliency": 0.5, "completeness": 0.3, "uniformity": 0.2}
VOTE_COLUMNS = ("annotator", "view", "scheme", *CRITERIA)


def weighted_total(scores: pd.DataFrame) -> pd.Series:
    """0.5 x saliency + 0.3 x completeness + 0.2 x uniformity, row by row."""
    return sum(weight * scores[name] for name, weight in WEIGHTS.items())


def choose(scores: pd.DataFrame, threshold: float = 0.5) -> pd.DataFrame:
    """Add `total` and `chosen` (total strictly above `threshold`) to a view x scheme table."""
    out = scores.copy()
    out["total"] = weighted_total(out)
    out["chosen"] = out["total"] > threshold + 1e-9  # strictly above, robust to float rounding
    return out


def best_stands_in(decided: pd.DataFrame, views: list[str]) -> tuple[pd.DataFrame, list[tuple[str, str, float]]]:
    """For each of `views` where no scheme is chosen, choose its best-scoring scheme.

    Used on automatic scores only (a view the annotators scored keeps their verdict), so that
    every view contributes to the merged set as MISC210K's six-view design intends.

    Returns:
        the updated table and (view, scheme, total) of each stand-in.
    """
    out = decided.copy()
    stand_ins = []
    for view in views:
        rows = out.xs(view, level="view", drop_level=False) if view in out.index.get_level_values("view") else None
        if rows is None or rows.empty or rows["chosen"].any():
            continue
        best = rows["total"].idxmax()
        out.loc[best, "chosen"] = True
        stand_ins.append((view, best[1], float(rows.loc[best, "total"])))
    return out, stand_ins


# ---------------------------------------------------------------------------- votes


def load_votes(path: Path) -> pd.DataFrame:
    """Read and validate a votes CSV; SemcorrError naming the file and row of the first problem.

    A partly filled voting sheet is fine: rows with no score at all (the blank template's rows)
    are skipped, and a criterion left empty in a row is NaN (the automatic score stands in for
    a cell where nobody scored that criterion).
    """
    path = Path(path)
    if not path.is_file():
        raise SemcorrError(f"{path}: votes file not found")
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        raise SemcorrError(f"{path}: gzip-compressed; decompress it first (gunzip) and pass the CSV")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SemcorrError(f"{path}: not UTF-8 text (byte {exc.start}); save the sheet as UTF-8 CSV") from None
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        header = [str(c).strip() for c in (reader.fieldnames or [])]
        reader.fieldnames = header
        missing = [c for c in VOTE_COLUMNS if c not in header]
        if missing:
            raise SemcorrError(f"{path}: header: missing column {', '.join(missing)}; expected {', '.join(VOTE_COLUMNS)}")
        rows = []
        for raw in reader:
            record = f"{path}: row {reader.line_num}"
            cells = {c: (raw.get(c) or "") if isinstance(raw.get(c), str) else "" for c in VOTE_COLUMNS}
            cells = {c: v.strip() for c, v in cells.items()}
            if not any(cells[name] for name in CRITERIA):
                continue  # nothing voted in this row (a blank template row): the automatic score stands
            view, scheme = cells["view"], cells["scheme"]
            if view not in VIEW_NAMES:
                raise SemcorrError(f"{record}: unknown view {view!r}; use one of {', '.join(VIEW_NAMES)}")
            if scheme not in SCHEMES:
                raise SemcorrError(f"{record}: unknown scheme {scheme!r}; use one of {', '.join(SCHEMES)}")
            values = {}
            for name in CRITERIA:
                text_value = cells[name]
                if not text_value:
                    values[name] = np.nan
                    continue
                try:
                    value = float(text_value)
                except ValueError:
                    raise SemcorrError(f"{record}: {name} {text_value!r} is not a number in [0, 1]") from None
                if not 0.0 <= value <= 1.0:  # also refuses NaN
                    raise SemcorrError(f"{record}: {name} {value:g} is outside [0, 1]")
                values[name] = value
            annotator = cells["annotator"]
            if not annotator:
                raise SemcorrError(f"{record}: empty annotator; name who gave the scores")
            rows.append({"annotator": annotator, "view": view, "scheme": scheme, **values})
    except csv.Error as exc:
        raise SemcorrError(f"{path}: row {reader.line_num}: malformed CSV ({exc})") from None
    if not rows:
        raise SemcorrError(f"{path}: holds no votes (every score is empty); fill in saliency, completeness and "
                           "uniformity for some rows, or leave out --votes")
    return pd.DataFrame(rows, columns=list(VOTE_COLUMNS))


def aggregate_votes(votes: pd.DataFrame, disagreement: float = 0.25) -> pd.DataFrame:
    """Mean per (view, scheme) and criterion, the vote count, and a `disagree` flag.

    A cell is flagged when the standard deviation of any criterion across its annotators
    exceeds `disagreement`.
    """
    grouped = votes.groupby(["view", "scheme"])
    table = grouped[list(CRITERIA)].mean()
    spread = grouped[list(CRITERIA)].std(ddof=0).fillna(0.0)
    table["votes"] = grouped.size()
    table["voted_criteria"] = grouped[list(CRITERIA)].count().gt(0).sum(axis=1)
    table["disagree"] = (spread > disagreement).any(axis=1)
    for name in CRITERIA:
        table[f"{name}_std"] = spread[name]
    return table


def krippendorff_alpha_interval(units: list[list[float]]) -> float:
    """Krippendorff's alpha with the interval metric.

    Args:
        units: per unit (a view x scheme cell), the values the annotators gave it; units
            with fewer than two values are not pairable and are ignored.

    Returns:
        alpha in (-inf, 1]; NaN when there is no variation to measure against.
    """
    pairable = [np.asarray(u, dtype=np.float64) for u in units if len(u) >= 2]
    if not pairable:
        return float("nan")
    values = np.concatenate(pairable)
    n = len(values)
    observed = sum(((u[:, None] - u[None, :]) ** 2).sum() / (len(u) - 1) for u in pairable) / n
    expected = ((values[:, None] - values[None, :]) ** 2).sum() / (n * (n - 1))
    if expected == 0:
        return float("nan")
    return float(1.0 - observed / expected)


def agreement(votes: pd.DataFrame) -> dict[str, float]:
    """Krippendorff's alpha per criterion over the (view, scheme) cells."""
    return {name: krippendorff_alpha_interval([g[name].dropna().tolist() for _, g in votes.groupby(["view", "scheme"])])
            for name in CRITERIA}


# ---------------------------------------------------------------------------- automatic proxies


def corner_rank_map(view: ViewRender) -> np.ndarray:
    """(H, W) saliency per pixel: mid-rank in [0, 1] of the 5 x 5 maximum of the Harris response
    among the same maxima over the object (mask dilated by 2 pixels); 0 when the view is empty."""
    window = ndimage.maximum_filter(np.maximum(view.corner_response, 0.0), size=5)
    inside = np.sort(window[ndimage.binary_dilation(view.mask, iterations=2)])
    if inside.size == 0:
        return np.zeros_like(window)
    below = np.searchsorted(inside, window, side="left")
    through = np.searchsorted(inside, window, side="right")
    return (below + through) / (2.0 * inside.size)


def point_saliency(view: ViewRender, xy: np.ndarray, rank_map: np.ndarray) -> np.ndarray:
    """(M,) saliency of image points `xy` (M, 2): the rank map at their pixels."""
    height, width = rank_map.shape
    cols = np.clip(np.asarray(xy)[:, 0].astype(int), 0, width - 1)
    rows = np.clip(np.asarray(xy)[:, 1].astype(int), 0, height - 1)
    return rank_map[rows, cols]


def cell_scores(view: ViewRender, xy: np.ndarray, point_scores: np.ndarray, coverage_radius: float = 0.15) -> dict:
    """Automatic saliency, completeness, uniformity of the visible points `xy` (M, 2) in one view, given
    their `point_saliency` (M,)."""
    if len(xy) == 0 or not view.mask.any():
        return {"saliency": 0.0, "completeness": 0.0, "uniformity": 0.0}
    height, width = view.mask.shape
    cols = np.clip(xy[:, 0].astype(int), 0, width - 1)
    rows = np.clip(xy[:, 1].astype(int), 0, height - 1)
    saliency = float(np.mean(point_scores))
    object_pixels = np.argwhere(view.mask)
    span = object_pixels.max(axis=0) - object_pixels.min(axis=0)
    radius = coverage_radius * float(np.hypot(*span))
    distance, _ = cKDTree(np.stack([rows, cols], axis=1)).query(object_pixels)
    completeness = float((distance <= radius).mean())
    if len(xy) >= 3:
        nearest, _ = cKDTree(xy).query(xy, k=2)
        gaps = nearest[:, 1]
        uniformity = float(np.clip(1.0 - gaps.std() / max(gaps.mean(), 1e-9), 0.0, 1.0))
    else:
        uniformity = 0.0
    return {"saliency": saliency, "completeness": completeness, "uniformity": uniformity}


def automatic_scores(views: list[ViewRender], candidates: list[Candidates], visibility: dict[str, np.ndarray]
                     ) -> tuple[pd.DataFrame, np.ndarray]:
    """The proxies for every (view, scheme) cell, indexed by (view, scheme), and the saliency of
    every visible (view, candidate) (pooled, for the summary's distribution).

    Args:
        views: the six grading views.
        candidates: one Candidates per scheme.
        visibility: scheme -> (num_views, N) bool visibility of its candidates.
    """
    rows, pooled = [], [np.zeros(0)]
    for view_index, view in enumerate(views):
        rank_map = corner_rank_map(view)
        for cand in candidates:
            seen = visibility[cand.scheme][view_index]
            xy, _ = view.camera.project(cand.xyz[seen])
            point_scores = point_saliency(view, xy, rank_map) if len(xy) else np.zeros(0)
            rows.append({"view": view.name, "scheme": cand.scheme, **cell_scores(view, xy, point_scores)})
            pooled.append(point_scores)
    return pd.DataFrame(rows).set_index(["view", "scheme"]), np.concatenate(pooled)
