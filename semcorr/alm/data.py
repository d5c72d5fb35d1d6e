"""Instance crops and heatmap targets for the ALM.

A crop is the square around the box centre with side max(w, h) x (1 + 2 x margin), resized to
`crop_size`; keypoints map into it with one scale and offset (`CropFrame`), and back. Targets
are Gaussian heatmaps at stride 8 for visible keypoints (visibility 2), normalised to a
distribution for the location loss, and the visibility flags for the visibility head.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from semcorr.store import Dataset, Instance, open_image

STRIDE = 8
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


@dataclass(frozen=True)
class CropFrame:
    """Maps image pixels to crop pixels: crop = (image - origin) x scale."""

    origin: tuple[float, float]
    scale: float

    def to_crop(self, xy: np.ndarray) -> np.ndarray:
        return (np.asarray(xy, dtype=np.float64) - self.origin) * self.scale

    def to_image(self, xy: np.ndarray) -> np.ndarray:
        return np.asarray(xy, dtype=np.float64) / self.scale + self.origin


def crop_frame(bbox: np.ndarray, crop_size: int, margin: float = 0.15) -> CropFrame:
    """The square crop around a COCO box."""
    side = max(float(bbox[2]), float(bbox[3]), 1.0) * (1 + 2 * margin)
    centre = (bbox[0] + bbox[2] / 2, bbox[1] + bbox[3] / 2)
    return CropFrame(origin=(centre[0] - side / 2, centre[1] - side / 2), scale=crop_size / side)


def crop_image(image: Image.Image, frame: CropFrame, crop_size: int) -> np.ndarray:
    """(3, S, S) float32 normalised crop (zeros outside the image)."""
    x0, y0 = frame.origin
    side = crop_size / frame.scale
    patch = image.transform((crop_size, crop_size), Image.Transform.EXTENT, (x0, y0, x0 + side, y0 + side),
                            resample=Image.Resampling.BILINEAR, fillcolor=(0, 0, 0))
    array = (np.asarray(patch, dtype=np.float32) / 255.0 - MEAN) / STD
    return array.transpose(2, 0, 1).copy()


def heatmaps(keypoints: np.ndarray, frame: CropFrame, crop_size: int, sigma: float = 1.5) -> np.ndarray:
    """(K, S/8, S/8) Gaussian targets for the visible keypoints, zeros for the others."""
    size = crop_size // STRIDE
    out = np.zeros((len(keypoints), size, size), dtype=np.float32)
    grid = np.arange(size, dtype=np.float32) + 0.5
    for k, (x, y, v) in enumerate(keypoints):
        if v != 2:
            continue
        cx, cy = frame.to_crop([x, y]) / STRIDE
        out[k] = np.exp(-((grid[None, :] - cx) ** 2 + (grid[:, None] - cy) ** 2) / (2 * sigma ** 2))
    return out


def decode(heatmap: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per channel: (x, y) in crop pixels (peak with a quarter-pixel shift to the higher neighbour) and peak value."""
    channels, height, width = heatmap.shape
    flat = heatmap.reshape(channels, -1)
    index = flat.argmax(axis=1)
    ys, xs = np.divmod(index, width)
    fx, fy = xs.astype(np.float64), ys.astype(np.float64)
    for c in range(channels):
        x, y = xs[c], ys[c]
        if 0 < x < width - 1:
            fx[c] += 0.25 * np.sign(heatmap[c, y, x + 1] - heatmap[c, y, x - 1])
        if 0 < y < height - 1:
            fy[c] += 0.25 * np.sign(heatmap[c, y + 1, x] - heatmap[c, y - 1, x])
    xy = (np.stack([fx, fy], axis=1) + 0.5) * STRIDE
    return xy, flat.max(axis=1)


class CropSet(torch.utils.data.Dataset):
    """(crop, heatmaps, category) items for a list of instances of one store."""

    def __init__(self, dataset: Dataset, instances: list[Instance], crop_size: int) -> None:
        self.dataset, self.instances, self.crop_size = dataset, instances, crop_size
        self._images: dict[int, Image.Image] = {}

    def __len__(self) -> int:
        return len(self.instances)

    def image(self, image_id: int) -> Image.Image:
        if image_id not in self._images:
            self._images[image_id] = open_image(self.dataset, image_id)
        return self._images[image_id]

    def __getitem__(self, index: int):
        inst = self.instances[index]
        frame = crop_frame(inst.bbox, self.crop_size)
        crop = crop_image(self.image(inst.image_id), frame, self.crop_size)
        target = heatmaps(inst.keypoints, frame, self.crop_size)
        visible = torch.from_numpy((inst.keypoints[:, 2] == 2).astype(np.float32))
        return torch.from_numpy(crop), torch.from_numpy(target), visible


def data_hash(instances: list[Instance]) -> str:
    """SHA-256 of the training instances' ids and keypoints (what a checkpoint was trained on)."""
    digest = hashlib.sha256()
    for inst in sorted(instances, key=lambda i: i.id):
        digest.update(str(inst.id).encode())
        digest.update(np.nan_to_num(inst.keypoints, nan=-1).round(2).tobytes())
    return digest.hexdigest()
