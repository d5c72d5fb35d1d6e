"""SPair-71k on-disk layout, as the released dataset and its public loaders have it::

    JPEGImages/<category>/<image>.jpg
    ImageAnnotation/<category>/<image>.json
    Segmentation/<category>/<image>.png
    PairAnnotation/{trn,val,test}/<pair_id:06d>-<src>-<trg>:<category>.json
    Layout/large/{trn,val,test}.txt        one pair stem a line, ending with a newline
    category_map.json                      original category / image name -> exported name

Loaders split stems on '-' and ':' and match categories as substrings of file names, so
exported image and category names hold only [A-Za-z0-9_] and no category name is a
substring of another; the renames are recorded in `category_map.json`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from PIL import Image

from semcorr import atomic
from semcorr.builders.coco_filter import decode_mask
from semcorr.errors import SemcorrError
from semcorr.store import SPLIT_NAMES, Dataset, Instance, open_image

MIN_KPS_KEYS = 30
MAX_SPAIR_KEYPOINTS = 30  # SPair-71k's largest category; common loaders keep this many keypoint slots
POSES = {0: "Frontal", 2: "Left", 4: "Rear", 6: "Right"}
VOC_PALETTE = [0, 0, 0, 128, 0, 0] + [0, 0, 0] * 254


@dataclass
class SpairExportReport:
    """What an export wrote."""

    root: Path
    pairs_per_split: dict[str, int]
    categories: dict[str, str]
    images: int
    renamed_images: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "", text.replace(" ", "_").replace("-", "_").replace("/", "_")) or "x"


def safe_category_names(names: list[str]) -> dict[str, str]:
    """Map category names to [A-Za-z0-9_] names none of which is a substring of another."""
    mapping = {name: _safe(name) for name in sorted(names)}
    changed = True
    while changed:
        changed = False
        for name, exported in sorted(mapping.items()):
            others = [v for k, v in mapping.items() if k != name]
            if exported in others or any(exported in other for other in others):
                suffix = 1
                while any(f"{exported}_{suffix}" in v for v in mapping.values()):
                    suffix += 1
                mapping[name] = f"{exported}_{suffix}"
                changed = True
    return mapping


def safe_image_names(dataset: Dataset, image_ids: list[int]) -> dict[int, str]:
    """Image id -> exported stem ([A-Za-z0-9_] only, unique)."""
    out: dict[int, str] = {}
    used: set[str] = set()
    for image_id in sorted(image_ids):
        stem = _safe(Path(dataset.images[image_id].file_name).stem)
        if stem in used:
            stem = f"{stem}_{image_id}"
        used.add(stem)
        out[image_id] = stem
    return out


def pixel_keypoints(instance: Instance, width: int, height: int) -> np.ndarray:
    """(K, 2) int pixel indexes of the visible keypoints, -1 where not visible."""
    out = np.full((len(instance.keypoints), 2), -1, dtype=np.int64)
    visible = instance.visible
    xy = np.floor(instance.keypoints[visible, :2]).astype(np.int64)
    xy[:, 0] = np.clip(xy[:, 0], 0, width - 1)
    xy[:, 1] = np.clip(xy[:, 1], 0, height - 1)
    out[visible] = xy
    return out


def pixel_bndbox(bbox: np.ndarray, width: int, height: int) -> list[int]:
    """COCO [x, y, w, h] to SPair's inclusive integer [x1, y1, x2, y2] inside the image."""
    x1 = int(np.clip(np.floor(bbox[0]), 0, width - 1))
    y1 = int(np.clip(np.floor(bbox[1]), 0, height - 1))
    x2 = int(np.clip(np.ceil(bbox[0] + bbox[2]) - 1, x1, width - 1))
    y2 = int(np.clip(np.ceil(bbox[1] + bbox[3]) - 1, y1, height - 1))
    return [x1, y1, x2, y2]


def _copy_jpeg(dataset: Dataset, image_id: int, target: Path) -> None:
    source = dataset.image_root / dataset.images[image_id].file_name
    pixels = open_image(dataset, image_id)  # decodes it whole: empty, truncated or mis-sized files stop here
    with open(source, "rb") as handle:
        is_jpeg = handle.read(2) == b"\xff\xd8"
    if not is_jpeg:
        pixels.save(target, format="JPEG", quality=95)
        return
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _check_pairs(pairs: pd.DataFrame) -> None:
    unknown = pairs[pairs["viewpoint_variation"] < 0]
    if len(unknown):
        row = unknown.iloc[0]
        raise SemcorrError(
            f"pairs.parquet: pair_id={row.pair_id}: viewpoint variation unknown (an image has no azimuth_bin); "
            "SPair export needs azimuth bins on every paired instance"
        )
    present = pairs.groupby("category", observed=True)["split"].unique()
    for category, splits in present.items():
        missing = [s for s in SPLIT_NAMES if s not in set(splits)]
        if missing:
            raise SemcorrError(
                f"pairs.parquet: category {category!r} has no pairs in split {', '.join(missing)}; SPair loaders "
                "fail on an empty category: add images, change --ratios, or drop the category"
            )


def check_keypoint_budget(dataset: Dataset, category_names: list[str], allow_over_30: bool) -> list[str]:
    """Warnings for categories with more than MAX_SPAIR_KEYPOINTS keypoints when `allow_over_30`;
    otherwise SemcorrError naming the first such category and its count."""
    counts = {c.name: len(c.keypoints) for c in dataset.categories.values()}
    over = [(name, counts[name]) for name in sorted(category_names) if counts.get(name, 0) > MAX_SPAIR_KEYPOINTS]
    if over and not allow_over_30:
        name, count = over[0]
        raise SemcorrError(
            f"annotations.json: category {name!r} has {count} keypoints, more than SPair-71k's "
            f"{MAX_SPAIR_KEYPOINTS}: common SPair loaders keep {MAX_SPAIR_KEYPOINTS} keypoint slots and drop or fail "
            "on the rest; design at most 30 (vote-keypoints --max-keypoints 30) or pass --allow-over-30")
    return [f"category {name!r} has {count} keypoints: common SPair loaders keep only the first "
            f"{MAX_SPAIR_KEYPOINTS}" for name, count in over]


def export_spair(dataset: Dataset, pairs: pd.DataFrame, out_dir: Path,
                 progress: Callable[[int], None] | None = None, allow_over_30: bool = False) -> SpairExportReport:
    """Write the SPair-71k layout for `pairs` into `out_dir` (replaced atomically).

    Args:
        dataset: the store the pairs were built from.
        pairs: the SPair pairs table (`build_spair_pairs`).
        out_dir: the export directory.
        progress: called with the number of pair files written, now and then.
        allow_over_30: export categories with more than 30 keypoints (with a warning) instead of refusing.
    """
    if pairs.empty:
        raise SemcorrError("pairs.parquet: holds no pairs; run `semcorr build-pairs --mode spair` on a split store")
    _check_pairs(pairs)
    names = sorted(set(pairs["category"].astype(str)))
    warnings = check_keypoint_budget(dataset, names, allow_over_30)
    instances = {inst.id: inst for inst in dataset.instances}
    categories = safe_category_names(names)
    units = pd.concat([
        pairs[["category", "src_image_id", "src_ann_id", "src_azimuth_bin"]].set_axis(
            ["category", "image_id", "ann_id", "azimuth_bin"], axis=1),
        pairs[["category", "trg_image_id", "trg_ann_id", "trg_azimuth_bin"]].set_axis(
            ["category", "image_id", "ann_id", "azimuth_bin"], axis=1),
    ]).drop_duplicates(["category", "image_id"]).sort_values(["category", "image_id"])
    names = safe_image_names(dataset, sorted(set(units["image_id"].tolist())))

    with atomic.staged_directory(Path(out_dir), "spair") as root:
        unit_kps: dict[int, np.ndarray] = {}
        unit_box: dict[int, list[int]] = {}
        for row in units.itertuples(index=False):
            category = categories[row.category]
            image = dataset.images[int(row.image_id)]
            instance = instances[int(row.ann_id)]
            stem = names[image.id]
            for sub in ("JPEGImages", "ImageAnnotation", "Segmentation"):
                (root / sub / category).mkdir(parents=True, exist_ok=True)
            _copy_jpeg(dataset, image.id, root / "JPEGImages" / category / f"{stem}.jpg")
            kps = pixel_keypoints(instance, image.width, image.height)
            box = pixel_bndbox(instance.bbox, image.width, image.height)
            unit_kps[int(instance.id)], unit_box[int(instance.id)] = kps, box
            num_keys = max(MIN_KPS_KEYS, len(kps))
            annotation = {
                "filename": f"{stem}.jpg",
                "src_database": "semcorr",
                "src_annotation": "annotations.json",
                "src_image": image.file_name,
                "image_width": image.width,
                "image_height": image.height,
                "image_depth": 3,
                "category": category,
                "pose": POSES.get(int(row.azimuth_bin), "Unspecified"),
                "truncated": int(instance.truncated),
                "occluded": int(instance.occluded),
                "difficult": 0,
                "bndbox": box,
                "kps": {str(k): (kps[k].tolist() if k < len(kps) and kps[k, 0] >= 0 else None)
                        for k in range(num_keys)},
                "azimuth_id": int(row.azimuth_bin),
            }
            (root / "ImageAnnotation" / category / f"{stem}.json").write_text(json.dumps(annotation))
            if instance.segmentation:
                mask = decode_mask(instance.segmentation, image.height, image.width)
                seg = Image.fromarray(mask.astype(np.uint8), mode="P")
                seg.putpalette(VOC_PALETTE)
                seg.save(root / "Segmentation" / category / f"{stem}.png")

        layout_dir = root / "Layout" / "large"
        layout_dir.mkdir(parents=True)
        counts = {}
        for split in SPLIT_NAMES:
            split_dir = root / "PairAnnotation" / split
            split_dir.mkdir(parents=True)
            chosen = pairs[(pairs["split"] == split).to_numpy()]
            stems = _write_pair_files(chosen, dataset, names, categories, unit_kps, unit_box, str(split_dir),
                                      progress)
            (layout_dir / f"{split}.txt").write_text("".join(f"{s}\n" for s in stems))
            counts[split] = len(stems)
        renamed = {dataset.images[i].file_name: f"{s}.jpg" for i, s in names.items()
                   if dataset.images[i].file_name != f"{s}.jpg"}
        (root / "category_map.json").write_text(json.dumps(
            {"categories": categories, "images": renamed}, indent=1, sort_keys=True) + "\n")
    return SpairExportReport(root=Path(out_dir), pairs_per_split=counts, categories=categories,
                             images=len(units), renamed_images=renamed, warnings=warnings)


def _write_pair_files(pairs: pd.DataFrame, dataset: Dataset, names: dict[int, str], categories: dict[str, str],
                      unit_kps: dict[int, np.ndarray], unit_box: dict[int, list[int]], directory: str,
                      progress: Callable[[int], None] | None) -> list[str]:
    """Write one PairAnnotation JSON per row into `directory`; returns the stems in row order."""
    kps_ids_all = pa.array(pairs["kps_ids"]).to_pylist()
    columns = [pairs[c].to_numpy() for c in (
        "pair_id", "category", "src_image_id", "trg_image_id", "src_ann_id", "trg_ann_id", "src_azimuth_bin",
        "trg_azimuth_bin", "viewpoint_variation", "scale_variation", "truncation", "occlusion")]
    stems = []
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    for (pair_id, category, src_id, trg_id, src_ann, trg_ann, src_bin, trg_bin, viewpoint, scale, truncation,
         occlusion), ids in zip(zip(*columns), kps_ids_all):
        src_image, trg_image = dataset.images[int(src_id)], dataset.images[int(trg_id)]
        src_name, trg_name, category = names[src_image.id], names[trg_image.id], categories[category]
        stem = f"{int(pair_id):06d}-{src_name}-{trg_name}:{category}"
        record = {
            "pair_id": int(pair_id),
            "filename": stem,
            "src_imname": f"{src_name}.jpg",
            "trg_imname": f"{trg_name}.jpg",
            "src_imsize": [src_image.width, src_image.height, 3],
            "trg_imsize": [trg_image.width, trg_image.height, 3],
            "src_bndbox": unit_box[src_ann],
            "trg_bndbox": unit_box[trg_ann],
            "category": category,
            "src_pose": POSES.get(int(src_bin), "Unspecified"),
            "trg_pose": POSES.get(int(trg_bin), "Unspecified"),
            "src_kps": unit_kps[src_ann][ids].tolist(),
            "trg_kps": unit_kps[trg_ann][ids].tolist(),
            "mirror": 0,
            "viewpoint_variation": int(viewpoint),
            "scale_variation": int(scale),
            "truncation": int(truncation),
            "occlusion": int(occlusion),
            "kps_ids": [str(k) for k in ids],
        }
        handle = os.open(f"{directory}/{stem}.json", flags, 0o644)
        try:
            os.write(handle, json.dumps(record).encode())
        finally:
            os.close(handle)
        stems.append(stem)
        if progress is not None and len(stems) % 1000 == 0:
            progress(1000)
    if progress is not None:
        progress(len(stems) % 1000)
    return stems


def load_spair(root: Path) -> dict[str, list[dict]]:
    """Read an SPair-71k layout back: split -> pair records, in `Layout/large` order."""
    root = Path(root)
    out = {}
    for split in SPLIT_NAMES:
        layout = root / "Layout" / "large" / f"{split}.txt"
        if not layout.is_file():
            raise SemcorrError(f"{layout}: file not found; is {root} an SPair-71k export?")
        stems = [line for line in layout.read_text().split("\n") if line]
        out[split] = [json.loads((root / "PairAnnotation" / split / f"{stem}.json").read_text()) for stem in stems]
    return out
