"""MISC-style export: one JSON per pair with every instance of both images and the
instance-pair correspondence lists, plus split list files::

    images/<file_name>                 the pixels (hard links where possible)
    pairs/<pair_id:06d>.json           one pair
    splits/{trn,val,test}.txt          pair file stems, one a line

A pair file: `pair_id`, `category`, `split`, `kps_ids` (keypoint types visible in both
images), `src` / `trg` (`image`, `image_id`, `width`, `height`, `instances`: `id`, `bbox`,
`keypoints` as [x, y, v] per keypoint with null for unlabelled ones, `mask` as COCO RLE),
and `correspondences`: one entry per (source instance, target instance) with the keypoint
ids both show.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from semcorr import atomic
from semcorr.builders.misc_pairs import instance_rle
from semcorr.errors import SemcorrError
from semcorr.paths import safe_relative
from semcorr.store import SPLIT_NAMES, Dataset, Instance, open_image


def _keypoints_json(instance: Instance) -> list:
    return [None if v == 0 else [round(float(x), 2), round(float(y), 2), int(v)] for x, y, v in instance.keypoints]


def _side(dataset: Dataset, image_id: int, instances: list[Instance]) -> dict:
    image = dataset.images[image_id]
    out = []
    for inst in instances:
        mask = None
        if inst.segmentation:
            rle = instance_rle(inst.segmentation, image.height, image.width)
            mask = {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}
        out.append({"id": inst.id, "bbox": [round(float(v), 2) for v in inst.bbox],
                    "keypoints": _keypoints_json(inst), "mask": mask,
                    "truncated": bool(inst.truncated), "occluded": bool(inst.occluded)})
    return {"image": image.file_name, "image_id": image.id, "width": image.width, "height": image.height,
            "instances": out}


def correspondences(src: list[Instance], trg: list[Instance], kps_ids: list[int]) -> list[dict]:
    """Every source instance to every target instance over the keypoint ids both show."""
    wanted = np.zeros(max([len(i.keypoints) for i in src + trg] + [0]), dtype=bool)
    wanted[kps_ids] = True
    out = []
    for a in src:
        for b in trg:
            common = np.flatnonzero(a.visible & b.visible & wanted[: len(a.visible)])
            if len(common):
                out.append({"src_instance": a.id, "trg_instance": b.id, "kps_ids": common.tolist()})
    return out


def export_misc(dataset: Dataset, pairs: pd.DataFrame, out_dir: Path) -> dict[str, int]:
    """Write the MISC layout (replacing `out_dir` atomically); returns pairs per split."""
    if "src_instances" not in pairs.columns:
        raise SemcorrError("pairs.parquet: holds SPair pairs; run `semcorr build-pairs --mode misc` for a MISC export")
    groups: dict[tuple[int, int], list[Instance]] = {}
    for inst in dataset.instances:
        groups.setdefault((inst.image_id, inst.category_id), []).append(inst)
    category_ids = {c.name: c.id for c in dataset.categories.values()}
    kps_all = pa.array(pairs["kps_ids"]).to_pylist()
    counts = {}
    with atomic.staged_directory(Path(out_dir), "misc") as root:
        (root / "pairs").mkdir()
        (root / "splits").mkdir()
        used_images = set(pairs["src_image_id"]) | set(pairs["trg_image_id"])
        for image_id in sorted(used_images):
            name = str(safe_relative(dataset.images[int(image_id)].file_name, f"image id={int(image_id)}"))
            open_image(dataset, int(image_id))  # refuse empty, truncated or mis-sized files before exporting
            target = root / "images" / name
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(dataset.image_root / name, target)
            except OSError:
                shutil.copyfile(dataset.image_root / name, target)
        stems = {split: [] for split in SPLIT_NAMES}
        for row, kps_ids in zip(pairs.itertuples(index=False), kps_all):
            category_id = category_ids[str(row.category)]
            src = groups[(int(row.src_image_id), category_id)]
            trg = groups[(int(row.trg_image_id), category_id)]
            record = {"pair_id": int(row.pair_id), "category": str(row.category), "split": str(row.split),
                      "kps_ids": kps_ids, "src": _side(dataset, int(row.src_image_id), src),
                      "trg": _side(dataset, int(row.trg_image_id), trg),
                      "correspondences": correspondences(src, trg, kps_ids)}
            stem = f"{int(row.pair_id):06d}"
            (root / "pairs" / f"{stem}.json").write_text(json.dumps(record))
            stems[str(row.split)].append(stem)
        for split, names in stems.items():
            (root / "splits" / f"{split}.txt").write_text("".join(f"{s}\n" for s in names))
            counts[split] = len(names)
        (root / "meta.json").write_text(json.dumps({"format": "semcorr-misc", "categories": {
            c.name: list(c.keypoints) for c in dataset.categories.values() if c.name in set(pairs["category"])}},
            indent=1) + "\n")
    return counts


def load_misc(root: Path, split: str | None = None) -> list[dict]:
    """The pair records of a MISC export (one split, or all in split order)."""
    root = Path(root)
    records = []
    for name in ([split] if split else list(SPLIT_NAMES)):
        listing = root / "splits" / f"{name}.txt"
        if not listing.is_file():
            raise SemcorrError(f"{listing}: file not found; is {root} a MISC export?")
        for stem in listing.read_text().split():
            records.append(json.loads((root / "pairs" / f"{stem}.json").read_text()))
    return records


def instances_from_record(side: dict) -> list[Instance]:
    """The instances of one side of a pair record, as store records (category id left 0)."""
    out = []
    for raw in side["instances"]:
        keypoints = np.array([[0, 0, 0] if kp is None else kp for kp in raw["keypoints"]], dtype=np.float64)
        out.append(Instance(id=raw["id"], image_id=side["image_id"], category_id=0, bbox=raw["bbox"],
                            keypoints=keypoints, segmentation=raw["mask"], truncated=raw["truncated"],
                            occluded=raw["occluded"]))
    return out
