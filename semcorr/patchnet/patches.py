"""Patches around keypoints, and matching / non-matching patch pairs from a dataset directory.

A patch is a square of `scale` times the instance box's longer side centred on the keypoint,
resampled to 64 x 64; where it reaches past the image border it is padded with zeros (and
counted), never skipped. Patches are normalised per patch (zero mean, unit deviation) before
they reach a network.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from PIL import Image

from semcorr.errors import SemcorrError
from semcorr.patchnet.models import PATCH_SIZE
from semcorr.store import Dataset, Instance, open_image

DEFAULT_SCALE = 0.3
MIN_KEYPOINTS = 20


def cut_patch(image: Image.Image, xy: tuple[float, float], side: float, size: int = PATCH_SIZE,
              grayscale: bool = True) -> tuple[np.ndarray, bool]:
    """The (size, size) or (size, size, 3) uint8 patch of `side` pixels centred on `xy`, and
    whether it had to be padded (zeros) past the image border."""
    half = side / 2.0
    box = (xy[0] - half, xy[1] - half, xy[0] + half, xy[1] + half)
    padded = box[0] < 0 or box[1] < 0 or box[2] > image.width or box[3] > image.height
    source = image.convert("L" if grayscale else "RGB")
    patch = source.transform((size, size), Image.Transform.EXTENT, box, Image.Resampling.BILINEAR, fillcolor=0)
    return np.asarray(patch, dtype=np.uint8), padded


def normalise(patches: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W[, C]) -> float32 (N, C, H, W), each patch to zero mean and unit deviation."""
    x = patches.astype(np.float32)
    x = x[:, None] if x.ndim == 3 else np.moveaxis(x, -1, 1)
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    std = x.std(axis=(1, 2, 3), keepdims=True)
    return (x - mean) / np.maximum(std, 1.0)


class ImageCache:
    """Opens each image of a dataset once."""

    def __init__(self, dataset: Dataset, grayscale: bool = True):
        self.dataset, self.grayscale, self._open = dataset, grayscale, {}

    def __call__(self, image_id: int) -> Image.Image:
        if image_id not in self._open:
            pixels = open_image(self.dataset, image_id)
            self._open[image_id] = pixels.convert("L") if self.grayscale else pixels
        return self._open[image_id]


def box_side(instance: Instance) -> float:
    """The instance box's longer side, the unit patches and displacements are measured in."""
    return float(max(instance.bbox[2], instance.bbox[3]))


@dataclass
class PatchPairs:
    """Patch pairs with labels: 1 a match, 0 not; `padded` counts patches that reached past a border."""

    first: np.ndarray
    second: np.ndarray
    labels: np.ndarray
    kinds: np.ndarray
    padded: int = 0

    def __post_init__(self):
        if not (len(self.first) == len(self.second) == len(self.labels) == len(self.kinds)):
            raise ValueError("first, second, labels and kinds must have the same length")

    def __len__(self) -> int:
        return len(self.labels)


def instance_pairs(pairs: pd.DataFrame, dataset: Dataset, limit_per_pair: int = 4) -> list[tuple[int, int]]:
    """(source ann id, target ann id) from a pairs table: SPair rows name their instances, MISC
    rows their images (every source instance with every target instance, at most
    `limit_per_pair`)."""
    if "src_ann_id" in pairs.columns:
        return list(zip(pairs["src_ann_id"].astype(int), pairs["trg_ann_id"].astype(int)))
    by_image: dict[tuple[int, str], list[int]] = {}
    names = {c.id: c.name for c in dataset.categories.values()}
    for inst in dataset.instances:
        by_image.setdefault((inst.image_id, names[inst.category_id]), []).append(inst.id)
    out = []
    for row in pairs.itertuples():
        sources = by_image.get((int(row.src_image_id), str(row.category)), [])
        targets = by_image.get((int(row.trg_image_id), str(row.category)), [])
        out += [(s, t) for s in sources for t in targets][:limit_per_pair]
    return out


def sample_pairs(dataset: Dataset, pairs: pd.DataFrame, count: int, seed: int = 0, scale: float = DEFAULT_SCALE,
                 grayscale: bool = True) -> PatchPairs:
    """Balanced training pairs: half matches (the same keypoint id on the two instances of a
    pair), a quarter other keypoint ids, a quarter the target point displaced by 0.5 to 1.5
    patch sides in a random direction (kept inside the image)."""
    rng = np.random.default_rng(seed)
    by_id = {inst.id: inst for inst in dataset.instances}
    candidates = [(s, t) for s, t in instance_pairs(pairs, dataset)
                  if s in by_id and t in by_id and (by_id[s].visible & by_id[t].visible).any()]
    counts: dict[str, int] = {}
    for inst in dataset.instances:
        if not dataset.categories[inst.category_id].num_keypoints:
            continue
        name = dataset.categories[inst.category_id].name
        counts[name] = counts.get(name, 0) + int(inst.visible.sum())
    starved = sorted(name for name, total in counts.items() if total < MIN_KEYPOINTS)
    if not candidates or starved:
        names = ", ".join(starved) or ", ".join(sorted(counts))
        raise SemcorrError(f"too few annotated keypoints to train on for category {names} "
                           f"(need {MIN_KEYPOINTS} visible keypoints and pairs that share one)")
    images = ImageCache(dataset, grayscale)
    first, second, labels, kinds, padded = [], [], [], [], 0
    for n in range(count):
        source, target = (by_id[i] for i in candidates[rng.integers(len(candidates))])
        shared = np.flatnonzero(source.visible & target.visible)
        k = int(rng.choice(shared))
        kind = "match" if n % 2 == 0 else ("other_keypoint" if n % 4 == 1 else "displaced")
        target_xy = target.keypoints[k, :2]
        if kind == "other_keypoint":
            others = np.flatnonzero(target.visible & (np.arange(len(target.visible)) != k))
            if len(others) == 0:
                kind = "displaced"
            else:
                target_xy = target.keypoints[int(rng.choice(others)), :2]
        if kind == "displaced":
            side = scale * box_side(target)
            image = dataset.images[target.image_id]
            angle, distance = rng.uniform(0, 2 * np.pi), rng.uniform(0.5, 1.5) * side
            target_xy = np.clip(target_xy + distance * np.array([np.cos(angle), np.sin(angle)]),
                                0, [image.width - 1, image.height - 1])
        a, pad_a = cut_patch(images(source.image_id), source.keypoints[k, :2], scale * box_side(source),
                             grayscale=grayscale)
        b, pad_b = cut_patch(images(target.image_id), target_xy, scale * box_side(target), grayscale=grayscale)
        first.append(a)
        second.append(b)
        labels.append(int(kind == "match"))
        kinds.append(kind)
        padded += int(pad_a) + int(pad_b)
    return PatchPairs(np.stack(first), np.stack(second), np.array(labels, dtype=np.int8), np.array(kinds), padded)
