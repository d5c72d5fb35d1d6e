"""Instance crops, augmentation and heatmap targets for the ALM (the top-down recipe).

A crop is an affine warp of the image (OpenCV's `warpAffine`) onto a square of `crop_size`
pixels around the box: side max(w, h) x (1 + 2 x margin), optionally scaled, rotated about
the box centre, shifted (box jitter) and mirrored. The same 2x3 matrix moves the keypoints,
so image and labels stay exactly consistent; mirroring also swaps each flip pair's channels.

Coordinates: COCO keypoints are continuous (pixel i spans [i, i + 1)); warps work on pixel
centres, so a point is shifted by -0.5 before the matrix and +0.5 after its inverse. Targets
are Gaussians at stride 4 (heat cell j is centred on crop pixel 4j + 1.5).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from semcorr.store import Dataset, Instance, open_image

STRIDE = 4
SIGMA = 2.0  # heat cells
MARGIN = 0.15
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


@dataclass(frozen=True)
class Augmentation:
    """Random ranges of the training augmentation (SimpleBaselines / HRNet style).

    Attributes:
        scale: zoom drawn from [1 - scale, 1 + scale].
        rotation: degrees drawn from [-rotation, rotation] (with probability `rotation_p`).
        shift: box-centre jitter, a share of the box's longer side in each direction.
        flip: probability of a horizontal mirror (categories without flip pairs are never mirrored).
        color: brightness, contrast and saturation factors drawn from [1 - color, 1 + color].
    """

    scale: float = 0.3
    rotation: float = 35.0
    rotation_p: float = 0.6
    shift: float = 0.08
    flip: float = 0.5
    color: float = 0.3


@dataclass(frozen=True)
class CropParams:
    """One draw of the augmentation (the identity by default)."""

    scale: float = 1.0
    rotation: float = 0.0
    shift: tuple[float, float] = (0.0, 0.0)
    flip: bool = False
    brightness: float = 1.0
    contrast: float = 1.0
    saturation: float = 1.0


def draw_params(rng: np.random.Generator, augmentation: Augmentation, can_flip: bool) -> CropParams:
    """A random CropParams from `augmentation`."""
    rotation = rng.uniform(-augmentation.rotation, augmentation.rotation) if rng.random() < augmentation.rotation_p \
        else 0.0
    return CropParams(
        scale=float(rng.uniform(1 - augmentation.scale, 1 + augmentation.scale)), rotation=float(rotation),
        shift=(float(rng.uniform(-augmentation.shift, augmentation.shift)),
               float(rng.uniform(-augmentation.shift, augmentation.shift))),
        flip=bool(can_flip and rng.random() < augmentation.flip),
        brightness=float(rng.uniform(1 - augmentation.color, 1 + augmentation.color)),
        contrast=float(rng.uniform(1 - augmentation.color, 1 + augmentation.color)),
        saturation=float(rng.uniform(1 - augmentation.color, 1 + augmentation.color)))


def crop_matrix(bbox: np.ndarray, crop_size: int, params: CropParams = CropParams(), margin: float = MARGIN
                ) -> np.ndarray:
    """(2, 3) affine map from image pixel centres to crop pixel centres."""
    longer = max(float(bbox[2]), float(bbox[3]), 1.0)
    side = longer * (1 + 2 * margin) / params.scale
    centre_x = bbox[0] + bbox[2] / 2 + params.shift[0] * longer - 0.5
    centre_y = bbox[1] + bbox[3] / 2 + params.shift[1] * longer - 0.5
    s = crop_size / side
    angle = math.radians(params.rotation)
    cos, sin = s * math.cos(angle), s * math.sin(angle)
    half = (crop_size - 1) / 2
    matrix = np.array([[cos, sin, half - cos * centre_x - sin * centre_y],
                       [-sin, cos, half + sin * centre_x - cos * centre_y]])
    if params.flip:
        matrix[0] = -matrix[0]
        matrix[0, 2] += crop_size - 1
    return matrix


def to_crop(matrix: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Image (continuous) coordinates -> crop pixel-centre coordinates."""
    xy = np.asarray(xy, dtype=np.float64) - 0.5
    return xy @ matrix[:, :2].T + matrix[:, 2]


def to_image(matrix: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Crop pixel-centre coordinates -> image (continuous) coordinates."""
    inverse = cv2.invertAffineTransform(matrix)
    return np.asarray(xy, dtype=np.float64) @ inverse[:, :2].T + inverse[:, 2] + 0.5


SIDE_WORDS = (("left", "right"), ("l", "r"))


def category_flip_pairs(category) -> tuple[tuple[int, int], ...]:
    """The schema's flip pairs, else pairs read off the names (`left_eye` / `right_eye`, `l_knee` / `r_knee`)."""
    if category.flip_pairs:
        return tuple(category.flip_pairs)
    index = {name.lower(): k for k, name in enumerate(category.keypoints)}
    pairs = []
    for name, k in index.items():
        for left, right in SIDE_WORDS:
            for sep in ("_", "-", " "):
                if name.startswith(left + sep) and (right + sep + name[len(left) + 1:]) in index:
                    pairs.append((k, index[right + sep + name[len(left) + 1:]]))
    return tuple(sorted(set(pairs)))


def flip_permutation(num_keypoints: int, flip_pairs: tuple[tuple[int, int], ...]) -> np.ndarray:
    """Channel order after a mirror: each flip pair's two keypoints trade places."""
    order = np.arange(num_keypoints)
    for a, b in flip_pairs:
        order[a], order[b] = b, a
    return order


def warp_crop(pixels: np.ndarray, matrix: np.ndarray, crop_size: int, params: CropParams = CropParams()
              ) -> np.ndarray:
    """(S, S, 3) uint8 crop of an (H, W, 3) uint8 image, zeros outside, colour jitter applied."""
    crop = cv2.warpAffine(pixels, matrix, (crop_size, crop_size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    if (params.brightness, params.contrast, params.saturation) != (1.0, 1.0, 1.0):
        values = crop.astype(np.float32)
        grey = values @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        values = grey[..., None] + (values - grey[..., None]) * params.saturation
        values = (values - values.mean()) * params.contrast + values.mean()
        crop = np.clip(values * params.brightness, 0, 255).astype(np.uint8)
    return crop


def normalise(crop: np.ndarray) -> np.ndarray:
    """(S, S, 3) uint8 -> (3, S, S) float32, ImageNet mean and std."""
    return ((crop.astype(np.float32) / 255.0 - MEAN) / STD).transpose(2, 0, 1).copy()


def heatmaps(crop_xy: np.ndarray, visible: np.ndarray, crop_size: int, sigma: float = SIGMA) -> np.ndarray:
    """(K, S/4, S/4) Gaussians at the visible keypoints' crop positions, zeros for the others."""
    size = crop_size // STRIDE
    out = np.zeros((len(crop_xy), size, size), dtype=np.float32)
    grid = np.arange(size, dtype=np.float32)
    for k, ((x, y), seen) in enumerate(zip(crop_xy, visible)):
        if not seen:
            continue
        cx, cy = (x - 1.5) / STRIDE, (y - 1.5) / STRIDE
        out[k] = np.exp(-((grid[None, :] - cx) ** 2 + (grid[:, None] - cy) ** 2) / (2 * sigma ** 2))
    return out


def decode(probabilities: np.ndarray, window: int = 2, radius_cells: float | None = None,
           refine: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per channel of a spatial distribution (K, H, W): sub-pixel position and a location score.

    The position (crop pixel-centre coordinates) is the peak of a quadratic fitted to the log
    probabilities within `window` cells of the peak cell (weighted least squares, weights the
    probabilities: exact for a Gaussian, and robust to noise, as DARK's Taylor step is not without
    smoothing), moved at most one cell; where that fit is not a maximum it is the probability-
    weighted mean in the window, which is biased toward the peak cell by up to 0.3 cells for a
    Gaussian of sigma 2 cells (the training target's width). The score is the probability mass within
    `radius_cells` of the position (the peak cell's mass when no radius is given).

    `refine` (K, H, W): where the sub-cell position is fitted, around the peak cell of
    `probabilities`. With the mean-shape prior, `probabilities` is the heatmap times the prior (it
    picks which peak) and `refine` the heatmap alone, so the prior does not pull a well-located
    point toward the mean shape.
    """
    channels, height, width = probabilities.shape
    flat = probabilities.reshape(channels, -1)
    ys, xs = np.divmod(flat.argmax(axis=1), width)
    grid_y, grid_x = np.mgrid[0:height, 0:width]
    xy = np.zeros((channels, 2))
    score = np.zeros(channels)
    for c in range(channels):
        near = (np.abs(grid_x - xs[c]) <= window) & (np.abs(grid_y - ys[c]) <= window)
        weights = probabilities[c] * near
        total = max(float(weights.sum()), 1e-12)
        fx, fy = float((weights * grid_x).sum() / total), float((weights * grid_y).sum() / total)
        peak = _quadratic_peak(probabilities[c] if refine is None else refine[c], int(xs[c]), int(ys[c]), window)
        if peak is not None:
            fx, fy = peak
        xy[c] = (fx * STRIDE + 1.5, fy * STRIDE + 1.5)
        if radius_cells is None:
            score[c] = probabilities[c, ys[c], xs[c]]
        else:
            inside = (grid_x - fx) ** 2 + (grid_y - fy) ** 2 <= radius_cells ** 2
            score[c] = float(probabilities[c][inside].sum())
    return xy, score


MAX_FIT_SIGMA = 3.5  # heat cells: a log-heatmap flatter than a Gaussian this wide is not fitted


def _quadratic_peak(probability: np.ndarray, x: int, y: int, window: int) -> tuple[float, float] | None:
    """The maximum of a quadratic fitted to log `probability` around cell (x, y) (None if not a maximum)."""
    height, width = probability.shape
    y0, y1, x0, x1 = max(0, y - window), min(height, y + window + 1), max(0, x - window), min(width, x + window + 1)
    if y1 - y0 < 3 or x1 - x0 < 3:
        return None
    patch = probability[y0:y1, x0:x1].astype(np.float64)
    peak = float(probability[y, x])
    if not peak > 0:
        return None
    dy, dx = np.mgrid[y0 - y:y1 - y, x0 - x:x1 - x]
    dx, dy = dx.ravel().astype(np.float64), dy.ravel().astype(np.float64)
    weights = patch.ravel() / peak
    logs = np.log(np.maximum(patch.ravel(), peak * 1e-12))
    design = np.column_stack([np.ones_like(dx), dx, dy, dx * dx, dy * dy, dx * dy]) * weights[:, None]
    try:
        coef = np.linalg.lstsq(design, logs * weights, rcond=None)[0]
    except np.linalg.LinAlgError:
        return None
    hessian = np.array([[2 * coef[3], coef[5]], [coef[5], 2 * coef[4]]])
    if not np.isfinite(hessian).all() or hessian[0, 0] >= 0 or np.linalg.det(hessian) <= 0:
        return None
    if np.linalg.eigvalsh(-hessian).min() < 1 / MAX_FIT_SIGMA ** 2:
        return None  # too flat (a vague heatmap, e.g. an untrained model's): the window mean is steadier
    offset = np.clip(-np.linalg.solve(hessian, coef[1:3]), -1.0, 1.0)
    return x + float(offset[0]), y + float(offset[1])


def acceptance_radius_cells(crop_size: int, radius: float, margin: float = MARGIN) -> float:
    """A radius given as a share of the box's longer side, in heat cells of an unaugmented crop."""
    return radius * crop_size / (1 + 2 * margin) / STRIDE


class ImageCache:
    """Decoded images as uint8 arrays, each decoded once (per worker), up to `max_bytes`."""

    def __init__(self, dataset: Dataset, max_bytes: int = 2 << 30) -> None:
        self.dataset, self.max_bytes, self._arrays, self._bytes = dataset, max_bytes, {}, 0

    def __call__(self, image_id: int) -> np.ndarray:
        array = self._arrays.get(image_id)
        if array is None:
            array = np.asarray(open_image(self.dataset, image_id))
            if self._bytes + array.nbytes <= self.max_bytes:
                self._arrays[image_id] = array
                self._bytes += array.nbytes
        return array


class CropSet(torch.utils.data.Dataset):
    """(crop, heatmaps, visible) items for instances of one store, augmented when `augmentation` is given.

    Item i of epoch e draws its augmentation from a generator seeded by (seed, e, i), so the
    same seed gives the same crops whatever the number of DataLoader workers.
    """

    def __init__(self, dataset: Dataset, instances: list[Instance], crop_size: int,
                 augmentation: Augmentation | None = None, seed: int = 0) -> None:
        self.dataset, self.instances, self.crop_size = dataset, instances, crop_size
        self.augmentation, self.seed, self.epoch = augmentation, seed, 0
        self.images = ImageCache(dataset)
        self.flip_orders = {cid: flip_permutation(c.num_keypoints, category_flip_pairs(c))
                            for cid, c in dataset.categories.items()}

    def __len__(self) -> int:
        return len(self.instances)

    def item(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(uint8 crop, crop keypoints (K, 2), visible (K,), matrix) of instance `index` this epoch."""
        inst = self.instances[index]
        params = CropParams()
        if self.augmentation is not None:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            can_flip = bool((self.flip_orders[inst.category_id] != np.arange(inst.keypoints.shape[0])).any())
            params = draw_params(rng, self.augmentation, can_flip)
        matrix = crop_matrix(inst.bbox, self.crop_size, params)
        crop = warp_crop(self.images(inst.image_id), matrix, self.crop_size, params)
        xy = to_crop(matrix, np.nan_to_num(inst.keypoints[:, :2], nan=-1e4))
        visible = inst.keypoints[:, 2] == 2
        inside = (xy >= -0.5).all(axis=1) & (xy <= self.crop_size - 0.5).all(axis=1)
        visible = visible & inside
        if params.flip:
            order = self.flip_orders[inst.category_id]
            xy, visible = xy[order], visible[order]
        return crop, xy, visible, matrix

    def __getitem__(self, index: int):
        crop, xy, visible, _ = self.item(index)
        target = heatmaps(xy, visible, self.crop_size)
        return (torch.from_numpy(normalise(crop)), torch.from_numpy(target),
                torch.from_numpy(visible.astype(np.float32)))


def data_hash(instances: list[Instance]) -> str:
    """SHA-256 of the training instances' ids and keypoints (what a checkpoint was trained on)."""
    digest = hashlib.sha256()
    for inst in sorted(instances, key=lambda i: i.id):
        digest.update(str(inst.id).encode())
        digest.update(np.nan_to_num(inst.keypoints, nan=-1).round(2).tobytes())
    return digest.hexdigest()
