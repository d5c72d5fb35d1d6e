"""The pair viewer: source and target side by side, correspondences as coloured point pairs joined by lines.

A pair is first gathered into a `PairView` (pixels, boxes, masks, keypoints per instance and
the correspondence links), from a dataset directory (`pair_from_store`) or an SPair-layout
export (`pair_from_spair_export`), then drawn by `render_pair`, which touches no file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
import pyarrow as pa
from PIL import Image, ImageDraw
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from semcorr import store
from semcorr.builders.coco_filter import decode_mask
from semcorr.builders.statistics import FACTORS
from semcorr.coco_schema import check_record
from semcorr.errors import SemcorrError
from semcorr.paths import safe_relative
from semcorr.viewers import drawing


@dataclass
class SideView:
    """One image of a pair with the instances that take part.

    Attributes:
        image: the RGB pixels.
        title: what names the image in the caption (file name and id).
        instance_ids: annotation ids, one per instance.
        boxes: COCO [x, y, w, h] boxes, one per instance.
        masks: (H, W) bool masks (None where the instance has none), one per instance.
        keypoints: (K, 2) x, y per instance, NaN where not visible.
        azimuth_bins: azimuth bin per instance (None where unknown).
    """

    image: Image.Image
    title: str
    instance_ids: list[int] = field(default_factory=list)
    boxes: list[np.ndarray] = field(default_factory=list)
    masks: list[np.ndarray | None] = field(default_factory=list)
    keypoints: list[np.ndarray] = field(default_factory=list)
    azimuth_bins: list[int | None] = field(default_factory=list)


@dataclass
class PairView:
    """Everything the pair drawing shows.

    Attributes:
        pair_id: the pair's id.
        category: category name.
        split: trn, val or test.
        keypoint_names: name per keypoint id.
        src: the source side.
        trg: the target side.
        links: (source instance index, target instance index, keypoint id) per correspondence.
        labels: difficulty factor title (Viewpoint, Scale, Truncation, Occlusion) -> level name.
    """

    pair_id: int
    category: str
    split: str
    keypoint_names: tuple[str, ...]
    src: SideView
    trg: SideView
    links: list[tuple[int, int, int]]
    labels: dict[str, str]

    @property
    def multi_instance(self) -> bool:
        """Whether either side holds more than one instance (a MISC pair)."""
        return len(self.src.instance_ids) > 1 or len(self.trg.instance_ids) > 1


# ---------------------------------------------------------------------------- drawing


def _marker_radius(height: int) -> int:
    return max(3, round(height / 60))


def _decorated(side: SideView, height: int, multi: bool) -> tuple[Image.Image, float]:
    """The side's pixels scaled to `height`, with translucent masks and boxes in instance colours."""
    image, factor = drawing.scaled(side.image, height)
    for index, mask in enumerate(side.masks):
        if mask is not None:
            image = drawing.overlay_mask(image, mask, drawing.instance_color(index))
    draw = ImageDraw.Draw(image)
    for index, box in enumerate(side.boxes):
        x, y, w, h = np.asarray(box, dtype=float) * factor
        draw.rectangle([x, y, x + w, y + h], outline=drawing.instance_color(index), width=2 if multi else 1)
    return image, factor


def pair_caption_lines(view: PairView) -> list[str]:
    """The caption: the pair, its difficulty labels and the azimuth bins of both sides."""
    counts = (f"{len(view.src.instance_ids)} x {len(view.trg.instance_ids)} instances, "
              if view.multi_instance else "")
    first = (f"pair {view.pair_id} | {view.category} | {view.split} | {counts}{len(view.links)} correspondences | "
             f"{view.src.title} -> {view.trg.title}")
    labels = " | ".join(f"{title.lower()} {level}" for title, level in view.labels.items()) or "no difficulty labels"

    def bins(side: SideView) -> str:
        return ",".join("?" if b is None else str(b) for b in side.azimuth_bins) or "?"

    return [first, labels, f"azimuth bins: source {bins(view.src)}, target {bins(view.trg)}"]


def render_pair(view: PairView, height: int | None = None, names: bool = True, gap: int = 8) -> Image.Image:
    """Draw a pair: source left, target right, each correspondence a line between two markers.

    Lines and marker fills take the keypoint id's colour (`drawing.keypoint_color`); masks and
    boxes the instance's colour; on multi-instance (MISC) pairs each marker also carries a ring
    in its instance's colour. Keypoint names are written beside the markers when `names`.

    Args:
        view: the pair.
        height: height of both images in the drawing (default: the taller image's height).
        names: write keypoint names beside the markers.
        gap: white pixels between the two images.
    """
    height = int(height or max(view.src.image.height, view.trg.image.height))
    multi = view.multi_instance
    left, src_factor = _decorated(view.src, height, multi)
    right, trg_factor = _decorated(view.trg, height, multi)
    canvas = Image.new("RGB", (left.width + gap + right.width, height), (255, 255, 255))
    canvas.paste(left, (0, 0))
    canvas.paste(right, (left.width + gap, 0))
    offset = left.width + gap
    draw = ImageDraw.Draw(canvas)
    radius = _marker_radius(height)
    font = drawing.label_font(max(9, round(radius * 2.6)))

    def point(side: SideView, instance: int, keypoint: int, factor: float, shift: float) -> tuple[float, float]:
        x, y = side.keypoints[instance][keypoint]
        return x * factor + shift, y * factor

    ends = [(point(view.src, a, k, src_factor, 0.0), point(view.trg, b, k, trg_factor, offset), a, b, k)
            for a, b, k in view.links]
    for start, end, _, _, k in ends:
        draw.line([start, end], fill=drawing.keypoint_color(k), width=max(1, radius // 2))
    markers = {}
    for start, end, a, b, k in ends:
        markers[("src", a, k)] = (start, a, k)
        markers[("trg", b, k)] = (end, b, k)
    if names:
        taken: list[tuple[float, float, float, float]] = []
        for xy, _, k in markers.values():
            drawing.draw_label(draw, xy, view.keypoint_names[k] if k < len(view.keypoint_names) else str(k), font,
                               taken=taken)
    for xy, instance, k in markers.values():
        if multi:
            drawing.draw_marker(draw, xy, radius + 2, drawing.instance_color(instance))
        drawing.draw_marker(draw, xy, radius, drawing.keypoint_color(k))
    band = drawing.caption(canvas.width, pair_caption_lines(view), font_size=max(10, min(14, height // 22)))
    return drawing.stacked(canvas, band)


# ---------------------------------------------------------------------------- from a dataset directory


def image_pixels(dataset: store.Dataset, image_id: int) -> Image.Image:
    """An image's RGB pixels; SemcorrError naming the file when it is missing or unreadable."""
    image = dataset.images[image_id]
    path = dataset.image_root / safe_relative(image.file_name, f"{store.ANNOTATIONS_FILE}: image id={image_id}")
    if not path.is_file():
        raise SemcorrError(f"{path}: image id={image_id}: image file not found; copy the image there or fix "
                           f"file_name in {store.ANNOTATIONS_FILE}")
    return store.open_image(dataset, image_id)


def side_from_store(dataset: store.Dataset, image_id: int, instances: list[store.Instance]) -> SideView:
    """One side of a pair: the image's pixels and the given instances' boxes, masks and visible keypoints."""
    image = dataset.images[image_id]
    masks = [decode_mask(inst.segmentation, image.height, image.width) if inst.segmentation else None
             for inst in instances]
    keypoints = [np.where(inst.visible[:, None], inst.keypoints[:, :2], np.nan) for inst in instances]
    return SideView(image=image_pixels(dataset, image_id), title=f"{image.file_name} (id {image_id})",
                    instance_ids=[inst.id for inst in instances], boxes=[inst.bbox for inst in instances],
                    masks=masks, keypoints=keypoints, azimuth_bins=[inst.azimuth_bin for inst in instances])


def difficulty_labels(row: Any) -> dict[str, str]:
    """Factor title -> level name for the factors a pairs-table row carries (MISC pairs have no viewpoint)."""
    labels = {}
    for column, title, levels in FACTORS:
        code = getattr(row, column, None)
        if code is not None and not pd.isna(code):
            labels[title] = levels[int(code)] if 0 <= int(code) < len(levels) else "unknown"
    return labels


def instances_by_image(dataset: store.Dataset) -> dict[tuple[int, int], list[store.Instance]]:
    """(image id, category id) -> its instances, in file order."""
    groups: dict[tuple[int, int], list[store.Instance]] = {}
    for inst in dataset.instances:
        groups.setdefault((inst.image_id, inst.category_id), []).append(inst)
    return groups


def pair_from_row(dataset: store.Dataset, row: Any, kps_ids: list[int],
                  groups: dict[tuple[int, int], list[store.Instance]]) -> PairView:
    """The PairView of one pairs-table row (SPair: its two instances; MISC: every instance of the category)."""
    from semcorr.exports.misc import correspondences

    category = dataset.category_by_name(str(row.category))
    if hasattr(row, "src_ann_id"):
        by_id = {inst.id: inst for inst in groups.get((int(row.src_image_id), category.id), []) +
                 groups.get((int(row.trg_image_id), category.id), [])}
        src = [by_id[int(row.src_ann_id)]]
        trg = [by_id[int(row.trg_ann_id)]]
        links = [(0, 0, int(k)) for k in kps_ids if src[0].visible[k] and trg[0].visible[k]]
    else:
        src = groups.get((int(row.src_image_id), category.id), [])
        trg = groups.get((int(row.trg_image_id), category.id), [])
        src_index = {inst.id: i for i, inst in enumerate(src)}
        trg_index = {inst.id: i for i, inst in enumerate(trg)}
        links = [(src_index[c["src_instance"]], trg_index[c["trg_instance"]], k)
                 for c in correspondences(src, trg, list(kps_ids)) for k in c["kps_ids"]]
    return PairView(pair_id=int(row.pair_id), category=category.name, split=str(row.split),
                    keypoint_names=category.keypoints, src=side_from_store(dataset, int(row.src_image_id), src),
                    trg=side_from_store(dataset, int(row.trg_image_id), trg), links=links,
                    labels=difficulty_labels(row))


def find_pair_row(pairs: pd.DataFrame, pair_id: int, path: Path) -> pd.DataFrame:
    """The one-row table of `pair_id`; SemcorrError naming the id range when there is none."""
    chosen = pairs[(pairs["pair_id"] == pair_id).to_numpy()]
    if chosen.empty:
        span = f"ids run from {int(pairs['pair_id'].min())} to {int(pairs['pair_id'].max())}" if len(pairs) \
            else "it holds no pairs"
        raise SemcorrError(f"{path}: no pair with pair_id={pair_id} ({span}); give a pair id from the table")
    return chosen


def pair_from_store(root: Path, pair_id: int) -> PairView:
    """The PairView of `pair_id` in a dataset directory's pairs table."""
    dataset = store.load_dataset(root, check_files=False)
    pairs = store.load_pairs(root)
    chosen = find_pair_row(pairs, pair_id, Path(root) / store.PAIRS_FILE)
    store.check_pairs(chosen, Path(root) / store.PAIRS_FILE, dataset)
    kps_ids = pa.array(chosen["kps_ids"]).to_pylist()[0]
    return pair_from_row(dataset, next(chosen.itertuples(index=False)), kps_ids, instances_by_image(dataset))


# ---------------------------------------------------------------------------- from an SPair-layout export


Pixel = Annotated[StrictInt, Field(ge=0, le=100_000)]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow", allow_inf_nan=False)


class RawSpairPair(_Strict):
    """A PairAnnotation file of an SPair-layout export: the fields the viewer reads."""

    pair_id: StrictInt
    category: str
    src_imname: str
    trg_imname: str
    src_bndbox: Annotated[list[Pixel], Field(min_length=4, max_length=4)]
    trg_bndbox: Annotated[list[Pixel], Field(min_length=4, max_length=4)]
    src_kps: list[Annotated[list[Pixel], Field(min_length=2, max_length=2)]]
    trg_kps: list[Annotated[list[Pixel], Field(min_length=2, max_length=2)]]
    kps_ids: list[str]
    viewpoint_variation: Annotated[StrictInt, Field(ge=0, le=2)]
    scale_variation: Annotated[StrictInt, Field(ge=0, le=2)]
    truncation: Annotated[StrictInt, Field(ge=0, le=3)]
    occlusion: Annotated[StrictInt, Field(ge=0, le=3)]


class RawSpairImage(_Strict):
    """An ImageAnnotation file of an SPair-layout export: the fields the viewer reads."""

    azimuth_id: Annotated[StrictInt, Field(ge=0, le=store.NUM_AZIMUTH_BINS - 1)]


def is_spair_export(root: Path) -> bool:
    """Whether `root` looks like an SPair-layout export (Layout/large and PairAnnotation folders)."""
    return (Path(root) / "Layout" / "large").is_dir() and (Path(root) / "PairAnnotation").is_dir()


def _export_side(root: Path, category: str, name: str, box: list[int], kps: np.ndarray, record: str) -> SideView:
    """One side of an exported pair: JPEGImages pixels, ImageAnnotation azimuth, Segmentation mask."""
    image_path = root / "JPEGImages" / safe_relative(category, record) / safe_relative(name, record)
    if not image_path.is_file():
        raise SemcorrError(f"{image_path}: {record}: image file not found; re-export the dataset")
    try:
        with Image.open(image_path) as handle:
            pixels = handle.convert("RGB")
    except (OSError, SyntaxError, ValueError) as exc:
        raise SemcorrError(f"{image_path}: cannot be read as an image ({' '.join(str(exc).split())[:100]})") from None
    stem = Path(name).stem
    annotation_path = root / "ImageAnnotation" / category / f"{stem}.json"
    annotation = check_record(RawSpairImage, store.read_json(annotation_path), annotation_path, "image annotation",
                              "re-export the dataset")
    mask_path = root / "Segmentation" / category / f"{stem}.png"
    mask = None
    if mask_path.is_file():
        with Image.open(mask_path) as handle:
            mask = np.asarray(handle) > 0
    x1, y1, x2, y2 = box
    centres = kps.astype(float) + 0.5  # exported keypoints are pixel indexes; draw at the pixel centre
    return SideView(image=pixels, title=name, instance_ids=[0], boxes=[np.array([x1, y1, x2 - x1 + 1, y2 - y1 + 1.0])],
                    masks=[mask], keypoints=[centres], azimuth_bins=[annotation.azimuth_id])


def pair_from_spair_export(root: Path, pair_id: int) -> PairView:
    """The PairView of `pair_id` in an SPair-layout export (keypoints named by their ids, as the export has no names)."""
    root = Path(root)
    found = sorted(p for split in store.SPLIT_NAMES
                   for p in (root / "PairAnnotation" / split).glob(f"{int(pair_id):06d}-*.json"))
    if not found:
        raise SemcorrError(f"{root / 'PairAnnotation'}: no pair file for pair_id={pair_id} "
                           f"({int(pair_id):06d}-*.json); give a pair id listed in {root / 'Layout' / 'large'}")
    path = found[0]
    raw = check_record(RawSpairPair, store.read_json(path), path, "pair", "re-export the dataset")
    if not (len(raw.src_kps) == len(raw.trg_kps) == len(raw.kps_ids)) or not all(k.isdigit() for k in raw.kps_ids):
        raise SemcorrError(f"{path}: pair: src_kps, trg_kps and kps_ids differ in length or kps_ids are not "
                           "keypoint numbers; re-export the dataset")
    ids = [int(k) for k in raw.kps_ids]
    size = max(ids, default=-1) + 1
    sides = []
    for name, box, kps in ((raw.src_imname, raw.src_bndbox, raw.src_kps), (raw.trg_imname, raw.trg_bndbox,
                                                                           raw.trg_kps)):
        points = np.full((size, 2), np.nan)
        if ids:
            points[ids] = np.asarray(kps, dtype=float)
        sides.append(_export_side(root, raw.category, name, box, points, f"pair file {path.name}"))
    row = pd.Series({column: getattr(raw, column) for column, _, _ in FACTORS})
    return PairView(pair_id=raw.pair_id, category=raw.category, split=path.parent.name,
                    keypoint_names=tuple(str(k) for k in range(size)), src=sides[0], trg=sides[1],
                    links=[(0, 0, k) for k in ids], labels=difficulty_labels(row))
