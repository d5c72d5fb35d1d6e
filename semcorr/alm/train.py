"""Train, predict, evaluate and checkpoint the ALM.

The same code runs on CUDA (mixed precision, channels-last) and on the CPU; on the CPU a
seed gives identical weights. Checkpoints are plain dicts of tensors and metadata (round,
category schemas, backbone, crop size, training-data hash), loaded with
`torch.load(..., weights_only=True)`.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from semcorr import atomic
from semcorr.alm.data import CropSet, crop_frame, crop_image, data_hash, decode
from semcorr.alm.model import KeypointNet
from semcorr.errors import SemcorrError
from semcorr.store import Dataset, Instance

FORMAT = "semcorr-alm-1"


@dataclass(frozen=True)
class TrainOptions:
    """ALM training options."""

    backbone: str = "efficientnet-lite0"
    pretrained: bool = True
    crop_size: int = 256
    epochs: int = 20
    batch_size: int = 16
    learning_rate: float = 1e-3
    seed: int = 0


@dataclass
class ALM:
    """A trained ALM: the network and what it was trained on."""

    model: KeypointNet
    keypoints: dict[str, list[str]]
    backbone: str
    crop_size: int
    round: int
    data_hash: str


def device() -> torch.device:
    """CUDA when present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _batches(instances: list[Instance], dataset: Dataset, batch_size: int, generator: torch.Generator):
    by_category: dict[str, list[int]] = {}
    for index, inst in enumerate(instances):
        by_category.setdefault(dataset.categories[inst.category_id].name, []).append(index)
    batches = []
    for name in sorted(by_category):
        members = torch.tensor(by_category[name])[torch.randperm(len(by_category[name]), generator=generator)]
        batches += [(name, members[i: i + batch_size].tolist()) for i in range(0, len(members), batch_size)]
    order = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in order]


def keypoint_loss(heat: torch.Tensor, vis_logits: torch.Tensor, targets: torch.Tensor, visible: torch.Tensor
                  ) -> torch.Tensor:
    """Cross-entropy of each visible keypoint's spatial softmax against its normalised Gaussian,
    plus binary cross-entropy of the visibility logits."""
    log_prob = F.log_softmax(heat.flatten(2), dim=2)
    target = targets.flatten(2)
    target = target / target.sum(dim=2, keepdim=True).clamp_min(1e-6)
    location = -(target * log_prob).sum(dim=2)
    location = (location * visible).sum() / visible.sum().clamp_min(1.0)
    return location + F.binary_cross_entropy_with_logits(vis_logits, visible)


def train(dataset: Dataset, instances: list[Instance], options: TrainOptions, round_index: int = 1,
          init: ALM | None = None, progress: Callable[[int, float, float], None] | None = None) -> ALM:
    """Train (or warm-start from `init`) on `instances`; `progress(step, loss, crops_per_s)`."""
    if not instances:
        raise SemcorrError("no annotated instances to train the ALM on: label some images first")
    torch.manual_seed(options.seed)
    keypoints = {c.name: list(c.keypoints) for c in dataset.categories.values() if c.num_keypoints}
    if init is not None:
        keypoints = {**keypoints, **init.keypoints}
        model = init.model
        for name, names in keypoints.items():
            if name not in model.heads:
                model.add_category(name, len(names))
    else:
        model = KeypointNet({k: len(v) for k, v in keypoints.items()}, options.backbone, options.pretrained)
    run_on = device()
    model = model.to(run_on)
    if run_on.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimiser = torch.optim.Adam(model.parameters(), lr=options.learning_rate)
    scaler = torch.amp.GradScaler(enabled=run_on.type == "cuda")
    crops = CropSet(dataset, instances, options.crop_size)
    generator = torch.Generator().manual_seed(options.seed)
    model.train()
    step = 0
    for _ in range(options.epochs):
        for category, members in _batches(instances, dataset, options.batch_size, generator):
            started = time.perf_counter()
            items = [crops[i] for i in members]
            images = torch.stack([i[0] for i in items]).to(run_on)
            targets = torch.stack([i[1] for i in items]).to(run_on)
            visible = torch.stack([i[2] for i in items]).to(run_on)
            if run_on.type == "cuda":
                images = images.to(memory_format=torch.channels_last)
            with torch.autocast(run_on.type, dtype=torch.float16, enabled=run_on.type == "cuda"):
                heat, vis_logits = model(images, category)
                loss = keypoint_loss(heat.float(), vis_logits.float(), targets, visible)
            optimiser.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimiser)
            scaler.update()
            step += 1
            if progress is not None:
                progress(step, float(loss), len(members) / max(time.perf_counter() - started, 1e-9))
    model.eval()
    return ALM(model=model.cpu(), keypoints=keypoints, backbone=options.backbone if init is None else init.backbone,
               crop_size=options.crop_size if init is None else init.crop_size, round=round_index,
               data_hash=data_hash(instances))


@torch.no_grad()
def predict(alm: ALM, dataset: Dataset, instances: list[Instance], threshold: float = 0.5,
            batch_size: int = 32) -> dict[int, np.ndarray]:
    """Instance id -> (K, 4) x, y, visibility (2 when the visibility confidence reaches `threshold`,
    else 0), confidence."""
    if not isinstance(threshold, int | float) or not 0.0 <= threshold <= 1.0:  # NaN fails too
        raise SemcorrError(f"threshold {threshold!r}: must be a finite number in [0, 1]")
    run_on = device()
    model = alm.model.to(run_on).eval()
    crops = CropSet(dataset, instances, alm.crop_size)
    out: dict[int, np.ndarray] = {}
    for start in range(0, len(instances), batch_size):
        chunk = instances[start: start + batch_size]
        for category in sorted({dataset.categories[i.category_id].name for i in chunk}):
            members = [i for i in chunk if dataset.categories[i.category_id].name == category]
            if category not in model.heads:
                continue
            images = torch.stack([torch.from_numpy(crop_image(crops.image(i.image_id), crop_frame(i.bbox, alm.crop_size),
                                                              alm.crop_size)) for i in members]).to(run_on)
            with torch.autocast(run_on.type, dtype=torch.float16, enabled=run_on.type == "cuda"):
                heat, vis_logits = model(images, category)
            maps = heat.float().cpu().numpy()
            confidences = torch.sigmoid(vis_logits.float()).cpu().numpy()
            for inst, heatmap, confidence in zip(members, maps, confidences):
                xy, _ = decode(heatmap)
                frame = crop_frame(inst.bbox, alm.crop_size)
                image_xy = frame.to_image(xy)
                info = dataset.images[inst.image_id]
                image_xy[:, 0] = np.clip(image_xy[:, 0], 0, info.width - 1e-3)
                image_xy[:, 1] = np.clip(image_xy[:, 1], 0, info.height - 1e-3)
                visibility = np.where(confidence >= threshold, 2.0, 0.0)
                out[inst.id] = np.column_stack([image_xy, visibility, confidence])
    alm.model.cpu()
    return out


def pck_of_box(predicted: dict[int, np.ndarray], instances: list[Instance], alpha: float = 0.1) -> float:
    """PCK@alpha of the box's longer side over the truly visible keypoints (a keypoint predicted
    not visible counts as a miss), in percent."""
    hits = total = 0
    for inst in instances:
        truth = inst.visible
        if inst.id not in predicted or not truth.any():
            total += int(truth.sum())
            continue
        guess = predicted[inst.id]
        distance = np.linalg.norm(guess[truth, :2] - inst.keypoints[truth, :2], axis=1)
        hits += int(((distance <= alpha * max(inst.bbox[2], inst.bbox[3])) & (guess[truth, 2] == 2)).sum())
        total += int(truth.sum())
    return 100.0 * hits / max(total, 1)


def mean_shape_predictions(train_instances: list[Instance], instances: list[Instance], dataset: Dataset
                           ) -> dict[int, np.ndarray]:
    """The baseline: every keypoint at its mean box-normalised position over the training instances."""
    sums: dict[int, list] = {}
    for inst in train_instances:
        normalised = (inst.keypoints[:, :2] - inst.bbox[:2]) / inst.bbox[2:]
        entry = sums.setdefault(inst.category_id, [np.zeros_like(normalised), np.zeros(len(normalised))])
        entry[0] += np.where(inst.visible[:, None], normalised, 0.0)
        entry[1] += inst.visible
    out = {}
    for inst in instances:
        if inst.category_id not in sums:
            continue
        total, count = sums[inst.category_id]
        mean = total / np.maximum(count, 1)[:, None]
        xy = inst.bbox[:2] + mean * inst.bbox[2:]
        out[inst.id] = np.column_stack([xy, np.where(count > 0, 2.0, 0.0), np.full(len(xy), 1.0)])
    return out


def save_checkpoint(alm: ALM, path: Path) -> Path:
    """Atomically save weights and metadata."""
    import io

    payload = {"format": FORMAT, "round": alm.round, "backbone": alm.backbone, "crop_size": alm.crop_size,
               "data_hash": alm.data_hash, "keypoints": alm.keypoints,
               "state_dict": {k: v.detach().cpu() for k, v in alm.model.state_dict().items()}}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic.write_bytes(Path(path), buffer.getvalue())
    return Path(path)


CHECKPOINT_KEYS = ("format", "round", "backbone", "crop_size", "data_hash", "keypoints", "state_dict")


def read_torch_file(path: Path, kind: str, readable: str | None = None) -> object:
    """`torch.load(weights_only=True)` of a file; one-line SemcorrError when it is missing or unreadable.

    The errors torch raises for a truncated file, random bytes or a pickle that is not plain
    tensors and values are caught here, at the file boundary, and only here.
    """
    import pickle
    import zipfile

    path = Path(path)
    if not path.exists():
        raise SemcorrError(f"{path}: {kind} checkpoint not found")
    if not path.is_file():
        raise SemcorrError(f"{path}: not a file; give the {kind} checkpoint (.pt) file")
    article = "an" if kind[0] in "AEIOU" else "a"
    if path.stat().st_size == 0:
        raise SemcorrError(f"{path}: empty file, not {article} {kind} checkpoint; train again or pick another file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols of foreign files
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        reason = "not a torch weights file, or it holds pickled objects other than tensors and plain values"
    except (RuntimeError, EOFError, zipfile.BadZipFile) as exc:
        reason = f"truncated or damaged ({type(exc).__name__})"
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, UnicodeDecodeError, OverflowError,
            MemoryError) as exc:
        reason = f"damaged ({type(exc).__name__})"
    raise SemcorrError(f"{path}: not a readable {readable or kind + ' checkpoint'}: {reason}; give {article} {kind} "
                       "checkpoint (train again or pick another file)")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def load_checkpoint(path: Path) -> ALM:
    """Load a checkpoint saved by `save_checkpoint` (weights_only: no code is unpickled).

    Raises:
        SemcorrError: one line naming the file and what is wrong (missing, unreadable, a patchnet
            checkpoint, missing keys, wrong types, weights that do not fit the network).
    """
    from semcorr.alm.model import BACKBONES

    path = Path(path)
    payload = read_torch_file(path, "ALM", "checkpoint")
    if not isinstance(payload, dict):
        raise SemcorrError(f"{path}: not an ALM checkpoint (holds a {type(payload).__name__}, not a dict); "
                           "give a file written by `semcorr alm train`")
    if payload.get("format") != FORMAT:
        if "architecture" in payload and "format" not in payload:
            raise SemcorrError(f"{path}: a patchnet checkpoint ({payload.get('architecture')!r}), not an ALM "
                               "checkpoint; give a file written by `semcorr alm train`")
        missing = [key for key in CHECKPOINT_KEYS if key not in payload]
        raise SemcorrError(f"{path}: not an ALM checkpoint (format {payload.get('format')!r}, expected {FORMAT!r}"
                           + (f"; missing {', '.join(missing)}" if missing else "") + ")")
    missing = [key for key in CHECKPOINT_KEYS if key not in payload]
    if missing:
        raise SemcorrError(f"{path}: ALM checkpoint is missing {', '.join(missing)}; train again")
    keypoints, state = payload["keypoints"], payload["state_dict"]
    problems = []
    if (not isinstance(keypoints, dict) or not keypoints
            or not all(isinstance(k, str) and isinstance(v, list) and v and all(isinstance(n, str) for n in v)
                       for k, v in keypoints.items())):
        problems.append("keypoints must map category names to lists of keypoint names")
    if payload["backbone"] not in BACKBONES:
        problems.append(f"backbone {payload['backbone']!r} is not one of {', '.join(BACKBONES)}")
    if not _is_int(payload["crop_size"]) or not 32 <= payload["crop_size"] <= 4096:
        problems.append(f"crop_size {payload['crop_size']!r} is not a whole number in [32, 4096]")
    if not _is_int(payload["round"]) or payload["round"] < 0:
        problems.append(f"round {payload['round']!r} is not a whole number >= 0")
    if not isinstance(payload["data_hash"], str):
        problems.append("data_hash is not a string")
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        problems.append("state_dict must map names to tensors")
    if problems:
        raise SemcorrError(f"{path}: damaged ALM checkpoint: {problems[0]}; train again")
    model = KeypointNet({k: len(v) for k, v in keypoints.items()}, payload["backbone"], pretrained=False)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = next((line.strip() for line in str(exc).splitlines()[1:] if line.strip()), str(exc))
        raise SemcorrError(f"{path}: the weights do not fit the {payload['backbone']} ALM network "
                           f"({' '.join(first.split())[:160]}); train again") from None
    model.eval()
    return ALM(model=model, keypoints=keypoints, backbone=payload["backbone"],
               crop_size=payload["crop_size"], round=payload["round"], data_hash=payload["data_hash"])
