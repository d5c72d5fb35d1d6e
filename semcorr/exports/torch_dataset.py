"""PyTorch datasets over the exports, and a collate function that pads::

    from semcorr.exports.torch_dataset import SpairPairs, pad_collate
    loader = torch.utils.data.DataLoader(SpairPairs("out/spair", "trn"), batch_size=8, collate_fn=pad_collate)
    for batch in loader: ...   # batch["src_kps"]: (B, N_max, 2), NaN where padded

`SpairPairs` reads an SPair-71k layout (`semcorr export spair`, or the released dataset);
`MiscPairs` reads a MISC export (`semcorr export misc`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from semcorr.errors import SemcorrError


def _image(path: Path) -> torch.Tensor:
    with Image.open(path) as image:
        array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


class SpairPairs(Dataset):
    """Single-instance pairs of an SPair-71k layout.

    Items: `src_image`, `trg_image` (3, H, W float in [0, 1]), `src_kps`, `trg_kps` (N, 2 float),
    `kps_ids` (N long), `src_bbox`, `trg_bbox` (4 float, x1 y1 x2 y2), `category`, `pair_id`.
    """

    def __init__(self, root: str | Path, split: str) -> None:
        self.root = Path(root)
        layout = self.root / "Layout" / "large" / f"{split}.txt"
        if not layout.is_file():
            raise SemcorrError(f"{layout}: file not found; is {self.root} an SPair-71k layout?")
        self.stems = [line for line in layout.read_text().split("\n") if line]

    def __len__(self) -> int:
        return len(self.stems)

    def __getitem__(self, index: int) -> dict[str, Any]:
        stem = self.stems[index]
        split = next(s for s in ("trn", "val", "test") if (self.root / "PairAnnotation" / s / f"{stem}.json").exists())
        record = json.loads((self.root / "PairAnnotation" / split / f"{stem}.json").read_text())
        folder = self.root / "JPEGImages" / record["category"]
        return {
            "src_image": _image(folder / record["src_imname"]),
            "trg_image": _image(folder / record["trg_imname"]),
            "src_kps": torch.tensor(record["src_kps"], dtype=torch.float32).reshape(-1, 2),
            "trg_kps": torch.tensor(record["trg_kps"], dtype=torch.float32).reshape(-1, 2),
            "kps_ids": torch.tensor([int(k) for k in record["kps_ids"]], dtype=torch.long),
            "src_bbox": torch.tensor(record["src_bndbox"], dtype=torch.float32),
            "trg_bbox": torch.tensor(record["trg_bndbox"], dtype=torch.float32),
            "category": record["category"],
            "pair_id": record["pair_id"],
        }


def _instance_keypoints(side: dict) -> torch.Tensor:
    rows = [[[np.nan, np.nan, 0.0] if kp is None else kp for kp in inst["keypoints"]] for inst in side["instances"]]
    return torch.tensor(rows, dtype=torch.float32).reshape(len(rows), -1, 3)


class MiscPairs(Dataset):
    """Multi-instance pairs of a MISC export.

    Items: `src_image`, `trg_image`, `src_kps` (I_src, K, 3: x, y, visibility; NaN where
    unlabelled), `trg_kps` (I_trg, K, 3), `correspondences` (C, 3 long: source instance
    index, target instance index, keypoint id), `category`, `pair_id`.
    """

    def __init__(self, root: str | Path, split: str) -> None:
        self.root = Path(root)
        listing = self.root / "splits" / f"{split}.txt"
        if not listing.is_file():
            raise SemcorrError(f"{listing}: file not found; is {self.root} a MISC export?")
        self.stems = listing.read_text().split()

    def __len__(self) -> int:
        return len(self.stems)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = json.loads((self.root / "pairs" / f"{self.stems[index]}.json").read_text())
        src_index = {inst["id"]: i for i, inst in enumerate(record["src"]["instances"])}
        trg_index = {inst["id"]: i for i, inst in enumerate(record["trg"]["instances"])}
        links = [[src_index[c["src_instance"]], trg_index[c["trg_instance"]], k]
                 for c in record["correspondences"] for k in c["kps_ids"]]
        return {
            "src_image": _image(self.root / "images" / record["src"]["image"]),
            "trg_image": _image(self.root / "images" / record["trg"]["image"]),
            "src_kps": _instance_keypoints(record["src"]),
            "trg_kps": _instance_keypoints(record["trg"]),
            "correspondences": torch.tensor(links, dtype=torch.long).reshape(-1, 3),
            "category": record["category"],
            "pair_id": record["pair_id"],
        }


def _pad(tensors: list[torch.Tensor], value: float) -> torch.Tensor:
    shape = [max(t.shape[d] for t in tensors) for d in range(tensors[0].dim())]
    out = torch.full((len(tensors), *shape), value, dtype=tensors[0].dtype)
    for i, t in enumerate(tensors):
        out[(i, *[slice(0, s) for s in t.shape])] = t
    return out


def pad_collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack a batch, padding every tensor to the largest shape in it.

    Images pad with 0 (their sizes are in `<key>_size` as (H, W)), float keypoints with NaN,
    integer tensors with -1; other values become lists.
    """
    out: dict[str, Any] = {}
    for key in batch[0]:
        values = [item[key] for item in batch]
        if not isinstance(values[0], torch.Tensor):
            out[key] = values
        elif key.endswith("image"):
            out[key] = _pad(values, 0.0)
            out[f"{key}_size"] = torch.tensor([v.shape[-2:] for v in values], dtype=torch.long)
        else:
            out[key] = _pad(values, float("nan") if values[0].is_floating_point() else -1)
    return out
