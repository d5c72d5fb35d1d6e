"""`semcorr evaluate`: predictions against a dataset directory, as the papers' tables.

Predictions JSON, keyed by pair id::

    {"pairs": {"17": {"trg_kps": [[x, y], ...]}}}              SPair pairs: one point per kps_id, in order
    {"pairs": {"17": {"points": [[x, y, kp_id], ...],          MISC pairs: any number of points
                      "masks": [<COCO RLE>, ...]}}}            optional predicted target instance masks

Pairs of the evaluated split without a prediction score 0 and are counted in the summary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from semcorr.builders.labels import FLAG_LEVELS, SCALE_LEVELS, VIEWPOINT_LEVELS
from semcorr.coco_schema import rle_runs
from semcorr.errors import SemcorrError
from semcorr.evaluation import metrics
from semcorr.store import Dataset, Instance

DEFAULT_ALPHAS = (0.05, 0.1, 0.15, 1.0)
TABLE_NAMES = ("pck_by_category", "pck_by_difficulty", "pck_others_easy", "mpck_by_category")
SPAIR_FACTORS = (("viewpoint_variation", "viewpoint", VIEWPOINT_LEVELS), ("scale_variation", "scale", SCALE_LEVELS),
                 ("truncation", "truncation", FLAG_LEVELS), ("occlusion", "occlusion", FLAG_LEVELS))


@dataclass
class EvaluationResult:
    """The tables of one evaluation."""

    mode: str
    tables: dict[str, pd.DataFrame]
    pairs: int
    missing: int
    notes: list[str] = field(default_factory=list)


def is_misc(pairs: pd.DataFrame) -> bool:
    """A MISC pairs table (multi-instance) rather than an SPair one."""
    return "src_instances" in pairs.columns


def _instances_by_unit(dataset: Dataset) -> dict[tuple[int, str], list[Instance]]:
    groups: dict[tuple[int, str], list[Instance]] = {}
    for inst in dataset.instances:
        groups.setdefault((inst.image_id, dataset.categories[inst.category_id].name), []).append(inst)
    return groups


def identity_predictions(dataset: Dataset, pairs: pd.DataFrame) -> dict:
    """The identity-mapping baseline: each source keypoint at the same normalised position in the target."""
    groups = _instances_by_unit(dataset)
    out = {}
    for row, ids in zip(pairs.itertuples(index=False), pa.array(pairs["kps_ids"]).to_pylist()):
        src_image, trg_image = dataset.images[int(row.src_image_id)], dataset.images[int(row.trg_image_id)]
        scale = np.array([trg_image.width / src_image.width, trg_image.height / src_image.height])
        sources = groups[(int(row.src_image_id), str(row.category))]
        if is_misc(pairs):
            points = [[*(inst.keypoints[k, :2] * scale).round(2).tolist(), k] for inst in sources for k in ids
                      if inst.visible[k]]
            out[str(int(row.pair_id))] = {"points": points}
        else:
            out[str(int(row.pair_id))] = {"trg_kps": (sources[0].keypoints[ids, :2] * scale).round(2).tolist()}
    return {"pairs": out}


def read_json_file(path: Path, what: str = "JSON") -> object:
    """Parse a JSON file, gzip-compressed or not; SemcorrError with one line for every way it can be unreadable."""
    import gzip
    import json
    import zlib

    path = Path(path)
    if not path.is_file():
        raise SemcorrError(f"{path}: {what} file not found" if not path.exists() else f"{path}: not a file")
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":  # gzip magic: decompress transparently
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise SemcorrError(f"{path}: gzip-compressed but damaged ({exc}); decompress it first") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SemcorrError(f"{path}: not UTF-8 text (byte {exc.start}); write the {what} as UTF-8 JSON") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SemcorrError(f"{path}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except (ValueError, RecursionError) as exc:  # a number too long to convert, nesting too deep
        raise SemcorrError(f"{path}: unreadable JSON ({type(exc).__name__}: {str(exc)[:80]})") from None


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def mask_problem(mask: object, height: int | None = None, width: int | None = None) -> str | None:
    """Why `mask` is not a COCO polygon list or RLE (of an image `height` x `width`, when given), or None."""
    if isinstance(mask, list):
        if not mask:
            return "an empty polygon list"
        for polygon in mask:
            if (not isinstance(polygon, list) or len(polygon) < 6 or len(polygon) % 2
                    or not all(_is_number(v) for v in polygon)):
                return "a polygon must be a list of at least 3 finite x, y pairs"
        return None
    if not isinstance(mask, dict):
        return f"expected a COCO RLE object or a polygon list, got {type(mask).__name__}"
    size = mask.get("size")
    if (not isinstance(size, list) or len(size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool)
                                                                  and v > 0 for v in size)):
        return f"RLE size {size!r}: expected [height, width]"
    if height is not None and width is not None and size != [height, width]:
        return f"RLE size {size} differs from the target image's [{height}, {width}]"
    counts = mask.get("counts")
    if isinstance(counts, str):
        runs = rle_runs(counts)
        if runs is None:
            return "RLE counts: not a compressed COCO RLE string"
    elif isinstance(counts, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in counts):
        runs = counts
    else:
        return "RLE counts: expected a compressed string or a list of run lengths"
    if any(v < 0 for v in runs) or sum(runs) != size[0] * size[1]:
        return f"RLE counts: run lengths must be non-negative and sum to {size[0]} x {size[1]} pixels"
    return None


def load_predictions(path: Path) -> dict:
    """Read and validate a predictions JSON; one-line SemcorrError naming the file and the pair.

    Every entry must be an object; `trg_kps` a list of finite [x, y]; `points` a list of
    [x, y, kp_id] (finite numbers, kp_id a whole number >= 0); `masks` a list of COCO RLEs or
    polygon lists. Whether the pair ids exist and the counts match is checked in `evaluate_*`.
    """
    raw = read_json_file(path, "predictions")
    if not isinstance(raw, dict) or not isinstance(raw.get("pairs"), dict):
        raise SemcorrError(f"{path}: top level: expected {{\"pairs\": {{pair_id: prediction}}}}")
    for key, entry in raw["pairs"].items():
        record = f"{path}: pair {key}"
        if not isinstance(entry, dict):
            raise SemcorrError(f"{record}: expected an object like {{\"trg_kps\": [[x, y], ...]}}, "
                               f"got {type(entry).__name__}")
        if "trg_kps" in entry:
            kps = entry["trg_kps"]
            if not isinstance(kps, list):
                raise SemcorrError(f"{record}: trg_kps: expected a list of [x, y]")
            for index, point in enumerate(kps):
                if not isinstance(point, list) or len(point) != 2 or not all(_is_number(v) for v in point):
                    raise SemcorrError(f"{record}: trg_kps[{index}] {str(point)[:60]}: expected [x, y], two "
                                       "finite numbers")
        if "points" in entry:
            points = entry["points"]
            if not isinstance(points, list):
                raise SemcorrError(f"{record}: points: expected a list of [x, y, kp_id]")
            for index, point in enumerate(points):
                if (not isinstance(point, list) or len(point) != 3 or not all(_is_number(v) for v in point)
                        or not float(point[2]).is_integer() or point[2] < 0):
                    raise SemcorrError(f"{record}: points[{index}] {str(point)[:60]}: expected [x, y, kp_id], "
                                       "finite numbers with kp_id a whole number >= 0")
        if "masks" in entry:
            masks = entry["masks"]
            if not isinstance(masks, list):
                raise SemcorrError(f"{record}: masks: expected a list of COCO RLEs or polygon lists")
            for index, mask in enumerate(masks):
                problem = mask_problem(mask)
                if problem:
                    raise SemcorrError(f"{record}: masks[{index}]: {problem}")
    return raw


def check_alphas(alphas) -> tuple[float, ...]:
    """PCK thresholds: finite and positive, duplicates dropped (order kept); SemcorrError otherwise."""
    out: list[float] = []
    for alpha in alphas:
        if not _is_number(alpha) or alpha <= 0:
            raise SemcorrError(f"--alpha {alpha!r}: must be a finite number above 0 (e.g. 0.1)")
        if float(alpha) not in out:
            out.append(float(alpha))
    if not out:
        raise SemcorrError("--alpha: give at least one threshold (e.g. --alpha 0.1)")
    return tuple(out)


def check_known(predictions: dict, pairs: pd.DataFrame, source: str) -> None:
    """SemcorrError naming the first prediction whose pair id is not in `pairs`."""
    known = set(pairs["pair_id"].astype(str))
    for key in predictions["pairs"]:
        if key not in known:
            raise SemcorrError(f"{source}: pair {key}: no such pair id in pairs.parquet (or not in the evaluated "
                               "split); key predictions by the pair_id column")


_check_known = check_known


def _threshold_side(image, bbox: np.ndarray, by: str) -> float:
    return float(max(bbox[2], bbox[3])) if by == "bbox" else float(max(image.width, image.height))


def evaluate_spair(dataset: Dataset, pairs: pd.DataFrame, predictions: dict, alphas=DEFAULT_ALPHAS, by: str = "bbox",
                   source: str = "predictions") -> EvaluationResult:
    """PCK tables: per category (Table 3), per difficulty level (Table 4), other factors easy (Table 5)."""
    _check_known(predictions, pairs, source)
    groups = _instances_by_unit(dataset)
    ids_all = pa.array(pairs["kps_ids"]).to_pylist()
    preds, gts, index, sides, missing = [], [], [], [], 0
    for pair_index, (row, ids) in enumerate(zip(pairs.itertuples(index=False), ids_all)):
        target = groups[(int(row.trg_image_id), str(row.category))][0]
        gt = target.keypoints[ids, :2]
        entry = predictions["pairs"].get(str(int(row.pair_id)))
        if entry is None:
            missing += 1
            pred = np.full_like(gt, np.inf)
        else:
            if not isinstance(entry, dict):
                raise SemcorrError(f"{source}: pair {int(row.pair_id)}: expected an object with trg_kps")
            pred = np.asarray(entry.get("trg_kps") or [], dtype=np.float64).reshape(-1, 2)
            if len(pred) != len(ids):
                raise SemcorrError(f"{source}: pair {int(row.pair_id)}: {len(pred)} predicted points for "
                                   f"{len(ids)} keypoints (kps_ids {ids}); give one [x, y] per kps_id, in order")
        preds.append(pred)
        gts.append(gt)
        index.append(np.full(len(ids), pair_index))
        sides.append(_threshold_side(dataset.images[int(row.trg_image_id)], target.bbox, by))
    pred, gt, index = np.concatenate(preds), np.concatenate(gts), np.concatenate(index)
    sides = np.array(sides)
    scores = pd.DataFrame({"category": pairs["category"].astype(str).to_numpy()})
    for alpha in alphas:
        scores[f"PCK@{alpha:g}"] = metrics.pck_per_pair(pred, gt, index, alpha * sides, len(pairs)) * 100
    for column, _, _ in SPAIR_FACTORS:
        scores[column] = pairs[column].to_numpy()
    value_columns = [f"PCK@{a:g}" for a in alphas]
    per_category = scores.groupby("category")[value_columns].mean()
    per_category.loc["All"] = scores[value_columns].mean()
    rows4, rows5 = [], []
    for column, name, levels in SPAIR_FACTORS:
        others = [c for c, _, _ in SPAIR_FACTORS if c != column]
        easy_others = (scores[others] == 0).all(axis=1)
        for code, level in enumerate(levels):
            hit = scores[column] == code
            rows4.append({"factor": name, "level": level, "pairs": int(hit.sum()),
                          **scores.loc[hit, value_columns].mean().to_dict()})
            rows5.append({"factor": name, "level": level, "pairs": int((hit & easy_others).sum()),
                          **scores.loc[hit & easy_others, value_columns].mean().to_dict()})
    tables = {"pck_by_category": per_category.round(1),
              "pck_by_difficulty": pd.DataFrame(rows4).set_index(["factor", "level"]).round(1),
              "pck_others_easy": pd.DataFrame(rows5).set_index(["factor", "level"]).round(1)}
    return EvaluationResult("spair", tables, len(pairs), missing)


def evaluate_misc(dataset: Dataset, pairs: pd.DataFrame, predictions: dict, alphas=DEFAULT_ALPHAS,
                  source: str = "predictions") -> EvaluationResult:
    """mPCK per category and alpha (MISC Table 2 layout), with mIoU when masks are predicted."""
    from semcorr.builders.coco_filter import decode_mask

    _check_known(predictions, pairs, source)
    groups = _instances_by_unit(dataset)
    ids_all = pa.array(pairs["kps_ids"]).to_pylist()
    gt_parts, pred_parts, sides, ious, missing = [], [], [], [], 0
    for pair_index, (row, ids) in enumerate(zip(pairs.itertuples(index=False), ids_all)):
        image = dataset.images[int(row.trg_image_id)]
        targets = groups[(int(row.trg_image_id), str(row.category))]
        for inst in targets:
            shown = [k for k in ids if inst.visible[k]]
            gt_parts.append(np.column_stack([np.full(len(shown), pair_index), shown, inst.keypoints[shown, :2]]))
        entry = predictions["pairs"].get(str(int(row.pair_id)))
        if entry is None:
            missing += 1
            entry = {"points": []}
        raw_points = entry.get("points", []) if isinstance(entry, dict) else None
        if not isinstance(raw_points, list) or any(not isinstance(p, list) or len(p) != 3 for p in raw_points):
            raise SemcorrError(f"{source}: pair {int(row.pair_id)}: every point must be [x, y, kp_id]")
        points = np.asarray(raw_points, dtype=np.float64).reshape(-1, 3)
        pred_parts.append(np.column_stack([np.full(len(points), pair_index), points[:, 2], points[:, :2]]))
        sides.append(max(image.width, image.height))
        if "masks" in entry:
            for index, mask in enumerate(entry["masks"]):
                problem = mask_problem(mask, image.height, image.width)
                if problem:
                    raise SemcorrError(f"{source}: pair {int(row.pair_id)}: masks[{index}]: {problem}")
            pred_masks = [decode_mask(m, image.height, image.width) for m in entry["masks"]]
            gt_masks = [decode_mask(t.segmentation, image.height, image.width) for t in targets if t.segmentation]
            ious.append(metrics.mask_iou_matched(pred_masks, gt_masks) * 100)
        else:
            ious.append(np.nan)
    gt = np.concatenate(gt_parts) if gt_parts else np.zeros((0, 4))
    pred = np.concatenate(pred_parts) if pred_parts else np.zeros((0, 4))
    sides = np.array(sides, dtype=np.float64)
    scores = pd.DataFrame({"category": pairs["category"].astype(str).to_numpy()})
    for alpha in alphas:
        tp, fp, _fn = metrics.mpck_batch(pred[:, 0], pred[:, 1].astype(np.int64), pred[:, 2:], gt[:, 0],
                                        gt[:, 1].astype(np.int64), gt[:, 2:], alpha * sides, len(pairs))
        with np.errstate(invalid="ignore", divide="ignore"):
            scores[f"mPCK@{alpha:g}"] = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 0.0) * 100
    value_columns = [f"mPCK@{a:g}" for a in alphas]
    if not np.isnan(ious).all():
        scores["mIoU"] = ious
        value_columns.append("mIoU")
    table = scores.groupby("category")[value_columns].mean()
    table.loc["All"] = scores[value_columns].mean()
    return EvaluationResult("misc", {"mpck_by_category": table.round(1)}, len(pairs), missing)
