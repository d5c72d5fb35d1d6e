"""COCO keypoints export: a file `pycocotools.coco.COCO` loads and `COCOeval(iouType="keypoints")`
runs on, plus the pairs as a sidecar `<name>.pairs.json`.

Each category carries `oks_sigmas` (one per keypoint): COCO's published person sigmas for the
17-keypoint person schema, else `DEFAULT_SIGMA` for every keypoint (the mean of COCO's
person sigmas), unless the caller gives its own. COCOeval takes one sigma vector per run, so
`evaluate_keypoints` runs it per category.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from semcorr import atomic
from semcorr.store import Dataset, coco_text, collector_paused, dataset_from_coco, dataset_to_coco

COCO_PERSON_SIGMAS = (0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072, 0.062, 0.062, 0.107, 0.107,
                      0.087, 0.087, 0.089, 0.089)
DEFAULT_SIGMA = 0.072


def default_sigmas(name: str, num_keypoints: int) -> list[float]:
    """COCO's person sigmas for a 17-keypoint person, else DEFAULT_SIGMA for each keypoint."""
    if name == "person" and num_keypoints == len(COCO_PERSON_SIGMAS):
        return list(COCO_PERSON_SIGMAS)
    return [DEFAULT_SIGMA] * num_keypoints


def export_coco(dataset: Dataset, out_path: Path, pairs: pd.DataFrame | None = None,
                sigmas: dict[str, list[float]] | None = None) -> list[Path]:
    """Write the COCO keypoints JSON (and the pairs sidecar when `pairs` is given)."""
    out_path = Path(out_path)
    coco = dataset_to_coco(dataset, annotations=False)
    coco["info"] = {**coco["info"], "image_root": str(dataset.image_root)}
    for category in coco["categories"]:
        chosen = (sigmas or {}).get(category["name"]) or default_sigmas(category["name"], len(category["keypoints"]))
        category["oks_sigmas"] = [float(s) for s in chosen]
    written = [out_path]
    with collector_paused():
        atomic.write_chunks(out_path, coco_text(coco, dataset.instances, adjust=_empty_masks_as_lists))
        if pairs is not None:
            sidecar = out_path.with_name(out_path.stem + ".pairs.json")
            head = json.dumps({"annotations": out_path.name, "pairs": []}, ensure_ascii=False)[:-2]
            body = ((", " if start else "") + _pair_records_json(pairs[start:start + PAIR_CHUNK])
                    for start in range(0, len(pairs), PAIR_CHUNK))
            # the same text as one json.dumps of all records
            atomic.write_chunks(sidecar, itertools.chain([head], body, ["]}\n"]))
            written.append(sidecar)
    return written


def _empty_masks_as_lists(annotations: list[dict]) -> None:
    for ann in annotations:
        if isinstance(ann["segmentation"], dict) and not ann["segmentation"]:
            ann["segmentation"] = []


PAIR_CHUNK = 50_000  # pairs converted at a time: the sidecar of a million pairs never exists as Python objects


def _pair_records_json(chunk: pd.DataFrame) -> str:
    """Pairs as JSON records, comma-separated without the enclosing brackets.

    The text `json.dumps` gives for the records pandas' `to_json` makes of the chunk (its float
    formatting included), written column by column: each value's JSON text once, then one
    template per row.
    """
    if not len(chunk):
        return ""
    texts, keys = [], []
    for column in chunk.columns:
        series = chunk[column]
        if column in ("category", "split"):
            values = series.astype(str).tolist()  # JSON strings read back as they were
        elif isinstance(series.dtype, pd.ArrowDtype) and (pa.types.is_list(series.dtype.pyarrow_dtype)
                                                          or pa.types.is_large_list(series.dtype.pyarrow_dtype)):
            values = pa.array(series).to_pylist()
            if not set(map(type, itertools.chain.from_iterable(v for v in values if type(v) is list))) <= {int}:
                values = json.loads(pd.Series(values, dtype=object).to_json(orient="values"))
        elif isinstance(series.dtype, np.dtype) and series.dtype.kind in "iu":
            values = series.to_numpy().tolist()  # integers come back from pandas' JSON unchanged
        else:  # floats (pandas writes them with 10 decimals) and anything else: through pandas' JSON
            values = json.loads(series.to_json(orient="values"))
        texts.append(_value_texts(values))
        keys.append(_encode_string(str(column)))
    template = "{" + ", ".join(f"{key.replace('%', '%%')}: %s" for key in keys) + "}"
    return ", ".join([template % row for row in zip(*texts)])


_encode_string = json.encoder.encode_basestring  # what json.dumps(ensure_ascii=False) writes for a str


def _value_texts(values: list) -> list[str]:
    """`json.dumps(v, ensure_ascii=False, allow_nan=False)` of each value, in bulk for the usual types."""
    kinds = set(map(type, values))
    if kinds <= {int}:
        return list(map(int.__repr__, values))
    if kinds <= {float} and all(map(math.isfinite, values)):
        return list(map(float.__repr__, values))
    if kinds <= {str}:
        return list(map(_encode_string, values))
    if kinds <= {list} and set(map(type, itertools.chain.from_iterable(values))) <= {int}:
        return ["[" + ", ".join(map(int.__repr__, v)) + "]" for v in values]
    return [json.dumps(v, ensure_ascii=False, allow_nan=False) for v in values]


def load_coco_export(path: Path) -> Dataset:
    """Read an export back through pycocotools (so what COCO tools see is what is checked)."""
    import contextlib
    import io

    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(path))
    image_root = Path(coco.dataset.get("info", {}).get("image_root", "."))
    return dataset_from_coco(coco.dataset, Path(path), image_root, check_files=False)


def evaluate_keypoints(gt_path: Path, detections: list[dict], category: str) -> dict[str, float]:
    """COCOeval keypoint AP / AR for one category, with the category's own `oks_sigmas`.

    Args:
        gt_path: the exported COCO file.
        detections: COCO results (`image_id`, `category_id`, `keypoints`, `score`).
        category: the category name.
    """
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools narrates every step
        gt = COCO(str(gt_path))
        cat = next(c for c in gt.dataset["categories"] if c["name"] == category)
        results = gt.loadRes([d for d in detections if d["category_id"] == cat["id"]])
        evaluator = COCOeval(gt, results, iouType="keypoints")
        evaluator.params.catIds = [cat["id"]]
        evaluator.params.kpt_oks_sigmas = np.array(cat["oks_sigmas"])
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    names = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")
    return dict(zip(names, (float(v) for v in evaluator.stats)))
