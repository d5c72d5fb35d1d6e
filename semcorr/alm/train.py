"""Train, predict, evaluate and checkpoint the ALM.

The same code runs on CUDA (mixed precision, channels-last) and on the CPU; on the CPU a
seed gives identical weights. Checkpoints are plain dicts of tensors and metadata (round,
category schemas, backbone, crop size, training-data hash), loaded with
`torch.load(..., weights_only=True)`.
"""

from __future__ import annotations

import hashlib
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from semcorr import atomic
from semcorr.alm.calibration import Calibration, best_epoch, fit_platt
from semcorr.alm.data import (STRIDE, Augmentation, CropSet, acceptance_radius_cells, category_flip_pairs, crop_matrix,
                              data_hash, decode, flip_permutation, normalise, to_crop, to_image)
from semcorr.alm.model import KeypointNet
from semcorr.errors import SemcorrError
from semcorr.store import Dataset, Instance

FORMAT = "semcorr-alm-2"


@dataclass(frozen=True)
class TrainOptions:
    """ALM training options (the SimpleBaselines / HRNet recipe, sized for a CPU by default).

    Attributes:
        epochs: upper bound; early stopping on the validation share usually stops sooner.
        learning_rate: AdamW peak rate after a linear warm-up, then cosine decay.
        validation_share: share of the training images (never the test split) held out for early
            stopping and score calibration; none when fewer than `min_validation` instances.
        min_validation_points: labelled keypoints the validation share holds at least (more images
            are added by their fixed draw, up to a third of the images): on COCO people a 15% share by
            image was one person, whose PCK stayed 0 every epoch, so early stopping kept epoch 0.
        patience: epochs without a better validation PCK before stopping (0: max(5, epochs // 4)).
        min_epochs: epochs trained before early stopping may pick an epoch or stop (None: a third of
            `epochs`). On COCO people the validation PCK of 13 people spiked at epoch 2 (38 against
            21-34 around it, learning rate still high), and patience 7 then kept that epoch: 29.8
            held-out PCK@0.1 where later epochs gave 43-47.
        augment: scale, rotation, flip (with flip pairs), box jitter and colour jitter.
        workers: DataLoader workers (None: 4 on CUDA, 0 on a CPU, whose cores train the network).
    """

    backbone: str = "efficientnet-lite0"
    pretrained: bool = True
    crop_size: int = 256
    epochs: int = 60
    batch_size: int = 16
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    warmup_share: float = 0.05
    validation_share: float = 0.15
    min_validation: int = 12
    min_validation_points: int = 60
    patience: int = 0
    min_epochs: int | None = None
    augment: bool = True
    workers: int | None = None
    seed: int = 0


@dataclass
class ALM:
    """A trained ALM: the network, what it was trained on and how its scores are calibrated."""

    model: KeypointNet
    keypoints: dict[str, list[str]]
    backbone: str
    crop_size: int
    round: int
    data_hash: str
    flip_pairs: dict[str, list[list[int]]] = field(default_factory=dict)
    calibration: Calibration = field(default_factory=Calibration)
    visibility_calibration: Calibration = field(default_factory=Calibration)
    history: list[dict[str, float]] = field(default_factory=list)
    shape_prior: dict[str, dict[str, list]] = field(default_factory=dict)
    visibility_evidence: list[dict[str, float]] = field(default_factory=list)


def shape_statistics(dataset: Dataset, instances: list[Instance], crop_size: int) -> dict[str, dict[str, list]]:
    """Per category, each keypoint's mean and spread in unaugmented crop coordinates (the mean shape).

    At inference this is a Gaussian prior on where each keypoint lies: with little training
    data the heatmap alone is vague, and the posterior falls back to the mean shape.
    """
    sums: dict[str, list[np.ndarray]] = {}
    for inst in instances:
        category = dataset.categories[inst.category_id]
        xy = to_crop(crop_matrix(inst.bbox, crop_size), np.nan_to_num(inst.keypoints[:, :2]))
        seen = inst.visible.astype(np.float64)
        entry = sums.setdefault(category.name, [np.zeros((len(xy), 2)), np.zeros((len(xy), 2)), np.zeros(len(xy))])
        entry[0] += xy * seen[:, None]
        entry[1] += xy ** 2 * seen[:, None]
        entry[2] += seen
    out = {}
    for name, (total, squares, count) in sums.items():
        n = np.maximum(count, 1)[:, None]
        mean = total / n
        spread = np.sqrt(np.maximum(squares / n - mean ** 2, 0))
        # at least a tenth of the crop, and wide where few points were seen (a weak prior there)
        spread = np.maximum(spread, crop_size * (0.1 + 0.5 / np.sqrt(n)))
        mean[count == 0] = crop_size / 2
        spread[count == 0] = crop_size
        out[name] = {"mean": mean.round(3).tolist(), "spread": spread.round(3).tolist(), "count": count.tolist()}
    return out


def prior_maps(prior: dict[str, list], crop_size: int) -> np.ndarray:
    """(K, H, W) Gaussian prior over heat cells from `shape_statistics`."""
    size = crop_size // STRIDE
    centres = np.arange(size) * STRIDE + 1.5
    mean, spread = np.asarray(prior["mean"]), np.asarray(prior["spread"])
    gx = np.exp(-((centres[None, :] - mean[:, :1]) ** 2) / (2 * spread[:, :1] ** 2))
    gy = np.exp(-((centres[None, :] - mean[:, 1:]) ** 2) / (2 * spread[:, 1:] ** 2))
    return gy[:, :, None] * gx[:, None, :]


def device() -> torch.device:
    """CUDA when present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class EpochBatches(torch.utils.data.Sampler):
    """Per epoch, shuffled batches of one category each (each category has its own head), as (epoch, index)."""

    def __init__(self, categories: list[str], batch_size: int, seed: int, min_batches: int = 16) -> None:
        self.categories, self.batch_size, self.seed, self.epoch = categories, batch_size, seed, 0
        # a small training set is passed over several times per epoch (each pass augmented afresh),
        # so that an epoch is at least `min_batches` steps and validation is not run every few steps
        self.repeats = max(1, -(-min_batches * batch_size // max(len(categories), 1)))

    def batches(self) -> list[list[tuple[int, int]]]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        by_category: dict[str, list[int]] = {}
        for index, name in enumerate(self.categories):
            by_category.setdefault(name, []).append(index)
        batches = []
        for name in sorted(by_category):
            keys = torch.tensor([(self.epoch * 1000 + repeat, index) for repeat in range(self.repeats)
                                 for index in by_category[name]])
            keys = keys[torch.randperm(len(keys), generator=generator)]
            batches += [[(int(a), int(b)) for a, b in keys[start: start + self.batch_size]]
                        for start in range(0, len(keys), self.batch_size)]
        return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]

    def __iter__(self):
        return iter(self.batches())

    def __len__(self) -> int:
        counts: dict[str, int] = {}
        for name in self.categories:
            counts[name] = counts.get(name, 0) + self.repeats
        return sum(-(-count // self.batch_size) for count in counts.values())


class _EpochCrops(torch.utils.data.Dataset):
    """A CropSet addressed by (pass, index), so persistent workers augment each pass afresh."""

    def __init__(self, crops: CropSet, categories: list[str]) -> None:
        self.crops, self.categories = crops, categories

    def __len__(self) -> int:
        return len(self.crops)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        self.crops.epoch = epoch
        return (*self.crops[index], self.categories[index])


def _collate(items):
    return (torch.stack([i[0] for i in items]), torch.stack([i[1] for i in items]),
            torch.stack([i[2] for i in items]), items[0][3])


def keypoint_loss(heat: torch.Tensor, vis_logits: torch.Tensor, targets: torch.Tensor, visible: torch.Tensor
                  ) -> torch.Tensor:
    """Cross-entropy of each visible keypoint's spatial softmax against its normalised Gaussian
    ("where"), plus binary cross-entropy of the visibility logits ("whether"), kept apart."""
    log_prob = F.log_softmax(heat.flatten(2), dim=2)
    target = targets.flatten(2)
    target = target / target.sum(dim=2, keepdim=True).clamp_min(1e-6)
    location = -(target * log_prob).sum(dim=2)
    location = (location * visible).sum() / visible.sum().clamp_min(1.0)
    return location + 0.5 * F.binary_cross_entropy_with_logits(vis_logits, visible)


def image_draw(image_id: int, seed: int) -> float:
    """A number in [0, 1) fixed by the image id and the seed (SHA-256), the same in every round."""
    digest = hashlib.sha256(f"semcorr-validation:{seed}:{int(image_id)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def validation_split(instances: list[Instance], share: float, minimum: int, seed: int, min_points: int = 0
                     ) -> tuple[list[Instance], list[Instance]]:
    """(train, validation) by image; none when too few instances.

    An image is in the validation share when its `image_draw` is below `share`, so the choice does
    not depend on which other images are labelled: an image trained on in one round is never used
    to validate (early stopping, calibration) a warm-started model in a later round. When those
    images hold fewer than `min_points` labelled keypoints (or there are none), the images with the
    next lowest draws are added until they do, at most a third of the images (at least one). Adding
    images only lowers the draw that is needed, so this keeps the rule above, except after a round
    that hit the cap.
    """
    if share <= 0 or len(instances) < minimum:
        return instances, []
    images = sorted({inst.image_id for inst in instances})
    if len(images) < 2:
        return instances, []
    draws = {image_id: image_draw(image_id, seed) for image_id in images}
    points: dict[int, int] = dict.fromkeys(images, 0)
    for inst in instances:
        points[inst.image_id] += int(np.count_nonzero(inst.visible))
    chosen, held = set(), 0
    for image_id in sorted(images, key=draws.__getitem__):
        if chosen and (draws[image_id] >= share and held >= min_points or len(chosen) >= max(1, len(images) // 3)):
            break
        chosen.add(image_id)
        held += points[image_id]
    if len(chosen) == len(images):
        return instances, []
    return ([i for i in instances if i.image_id not in chosen], [i for i in instances if i.image_id in chosen])


def _schedule(total_steps: int, warmup_share: float) -> Callable[[int], float]:
    warmup = max(1, int(warmup_share * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def train(dataset: Dataset, instances: list[Instance], options: TrainOptions, round_index: int = 1,
          init: ALM | None = None, progress: Callable[[int, float, float], None] | None = None) -> ALM:
    """Train (or warm-start from `init`) on `instances`; `progress(step, loss, crops_per_s)`.

    A validation share of the images (by seed) picks the best epoch (early stopping) and
    calibrates the location scores; the returned ALM holds the best epoch's weights.
    """
    if not instances:
        raise SemcorrError("no annotated instances to train the ALM on: label some images first")
    torch.manual_seed(options.seed)
    keypoints = {c.name: list(c.keypoints) for c in dataset.categories.values() if c.num_keypoints}
    flip_pairs = {c.name: [list(p) for p in category_flip_pairs(c)] for c in dataset.categories.values()
                  if c.num_keypoints}
    if init is not None:
        keypoints, flip_pairs = {**keypoints, **init.keypoints}, {**flip_pairs, **init.flip_pairs}
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
    fitting, validation = validation_split(instances, options.validation_share, options.min_validation, options.seed,
                                           options.min_validation_points)
    categories = [dataset.categories[i.category_id].name for i in fitting]
    crops = CropSet(dataset, fitting, options.crop_size, Augmentation() if options.augment else None, options.seed)
    validation_crops = CropSet(dataset, validation, options.crop_size)  # decoded once, scored every epoch
    sampler = EpochBatches(categories, options.batch_size, options.seed)
    workers = options.workers if options.workers is not None else (4 if run_on.type == "cuda" else 0)
    loader = torch.utils.data.DataLoader(_EpochCrops(crops, categories), batch_sampler=sampler, num_workers=workers,
                                         collate_fn=_collate, pin_memory=run_on.type == "cuda",
                                         persistent_workers=workers > 0)
    optimiser = torch.optim.AdamW(model.parameters(), lr=options.learning_rate, weight_decay=options.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, _schedule(options.epochs * len(sampler),
                                                                        options.warmup_share))
    scaler = torch.amp.GradScaler(enabled=run_on.type == "cuda")
    patience = options.patience or max(5, options.epochs // 4)
    first = options.epochs // 3 if options.min_epochs is None else min(options.min_epochs, options.epochs - 1)
    partial = ALM(model=model, keypoints=keypoints, backbone=options.backbone if init is None else init.backbone,
                  crop_size=options.crop_size if init is None else init.crop_size, round=round_index,
                  data_hash=data_hash(instances), flip_pairs=flip_pairs)
    # the mean shape of the fitting share only: the validation share must not shape the prior that
    # early stopping and calibration are then measured with
    partial.shape_prior = {**(init.shape_prior if init is not None else {}),
                           **shape_statistics(dataset, fitting, partial.crop_size)}
    history, scores, best_state = [], [], None
    step = 0
    for epoch in range(options.epochs):
        sampler.epoch = epoch
        model.train()
        started, seen, losses = time.perf_counter(), 0, []
        for images, targets, visible, category in loader:
            images, targets, visible = (t.to(run_on, non_blocking=True) for t in (images, targets, visible))
            if run_on.type == "cuda":
                images = images.to(memory_format=torch.channels_last)
            with torch.autocast(run_on.type, dtype=torch.float16, enabled=run_on.type == "cuda"):
                heat, vis_logits = model(images, category)
                loss = keypoint_loss(heat.float(), vis_logits.float(), targets, visible)
            optimiser.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimiser)
            scaler.update()
            scheduler.step()
            step += 1
            seen += len(images)
            losses.append(float(loss.detach()))
            if progress is not None:
                progress(step, float(loss), seen / max(time.perf_counter() - started, 1e-9))
        record = {"epoch": epoch, "loss": float(np.mean(losses)), "crops_per_s": seen / (time.perf_counter() - started)}
        if validation:
            record["val_pck"] = pck_of_box(predict(partial, dataset, validation, keep_device=True,
                                                   crops=validation_crops), validation,
                                           use_visibility=False)
            scores.append(record["val_pck"])
            best, stop = best_epoch(scores, patience, first)
            if best == epoch:
                best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            history.append(record)
            if stop:
                break
        else:
            history.append(record)
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    partial.model, partial.history = model.cpu(), history
    partial.visibility_evidence = list(init.visibility_evidence) if init is not None else []
    if validation:
        raw, hit, raw_visible, truly_visible = validation_scores(partial, dataset, validation, validation_crops)
        partial.calibration = fit_platt(raw, hit)
        visibility = fit_platt(raw_visible, truly_visible, prior_points=VISIBILITY_PRIOR_POINTS)
        if visibility.var_a > 0:  # a real fit (both classes, enough points), not the identity
            outcome = visibility_outcomes(hide_mask(visibility, raw_visible), truly_visible,
                                          visibility(raw_visible))
            partial.visibility_evidence.append({"round": int(round_index),
                                                "images": len({i.image_id for i in validation}), **outcome})
            if hiding_saves_clicks(partial.visibility_evidence):
                partial.visibility_calibration = visibility
    return partial


# Hiding a visible point costs the reviewer 2 clicks (place it, name it); showing a point that is not
# visible costs 1 (discard it). With a calibrated P(visible) = p, hiding costs 2p clicks on average
# and showing 1 - p, so hiding pays when p < 1/3.
HIDE_THRESHOLD = 1 / 3
# The visibility head's sigmoid is already a probability (trained with cross-entropy on the labels); its Platt
# fit is pulled toward the identity with this many points' worth of prior, so a one-image validation share
# (34-85 points on COCO people) cannot flatten it (unshrunk, a = 0.27-0.43 hid nothing; the head's own
# P(visible) < 1/3 hid 130 round-3 points, 14% of them labelled: `benchmarks/annotation_loop.py --replay`).
VISIBILITY_PRIOR_POINTS = 100.0
# The margin: a point is hidden only when the upper confidence bound of its calibrated P(visible)
# (HIDE_Z standard errors of the Platt fit's logit, one-sided about 84%) is below the threshold, so
# a calibration fitted on few validation points hides little and one fitted on many approaches the
# expected-cost rule.
HIDE_Z = 1.0
# Hiding is switched off when the newest model's validation outcomes show, with this confidence, that
# more than a third of the points it hid were labelled (it then costs clicks).
VETO_CONFIDENCE = 0.9


def hide_mask(calibration: Calibration, raw_visible: np.ndarray, threshold: float = HIDE_THRESHOLD,
              z: float = HIDE_Z) -> np.ndarray:
    """Which points to hide: those whose calibrated P(visible) is below `threshold` even at its upper
    confidence bound. Location confidence plays no part (where and whether are kept apart)."""
    return np.asarray(calibration.upper(raw_visible, z) < threshold, dtype=bool)


def visibility_outcomes(hidden: np.ndarray, truly_visible: np.ndarray, p_visible: np.ndarray | None = None
                        ) -> dict[str, float]:
    """Counts of one validation share under a hiding decision (and the calibrated expectation of
    labelled points among the hidden ones, when `p_visible` is given)."""
    hidden, truly_visible = np.asarray(hidden, dtype=bool), np.asarray(truly_visible, dtype=bool)
    out: dict[str, float] = {"points": int(len(hidden)),
                             "hidden_labelled": int((hidden & truly_visible).sum()),
                             "hidden_unlabelled": int((hidden & ~truly_visible).sum()),
                             "shown_labelled": int((~hidden & truly_visible).sum()),
                             "shown_unlabelled": int((~hidden & ~truly_visible).sum())}
    if p_visible is not None:
        out["expected_hidden_labelled"] = round(float(np.asarray(p_visible, dtype=np.float64)[hidden].sum()), 3)
    return out


def hiding_saves_clicks(evidence: list[dict[str, float]], confidence: float = VETO_CONFIDENCE) -> bool:
    """Whether the newest model may hide points, from its own validation outcomes (`evidence[-1]`).

    The entry counts how many of the points its rule hid on its validation share were labelled (k)
    or not (m). Hiding saves clicks when fewer than a third of the hidden points are labelled
    (m - 2k > 0). It is kept unless the counts show the opposite with `confidence` (posterior
    P(labelled share > 1/3) under a Jeffreys prior): the per-point rule already hides only where the
    calibration, with its margin, expects a saving, so thin evidence leaves that decision to the
    calibration rather than switching hiding off. Earlier entries (the warm-started rounds before)
    are kept as a record but not pooled: they score weaker models, and pooling them vetoed a round-2
    model whose hiding would have saved 33 clicks in round 3 of the COCO loop
    (`benchmarks/annotation_loop.py --replay`).
    """
    from scipy.stats import beta

    if not evidence:
        return False
    labelled = float(evidence[-1].get("hidden_labelled", 0))
    unlabelled = float(evidence[-1].get("hidden_unlabelled", 0))
    if labelled + unlabelled == 0:
        return True
    costs_clicks = float(beta.sf(1 / 3, labelled + 0.5, unlabelled + 0.5))
    return costs_clicks < confidence


@torch.no_grad()
def _heat(alm: ALM, images: torch.Tensor, category: str, flip_test: bool) -> tuple[np.ndarray, np.ndarray]:
    """Spatial probabilities (B, K, H, W) and visibility probabilities (B, K), flip-averaged when asked."""
    run_on = images.device
    with torch.autocast(run_on.type, dtype=torch.float16, enabled=run_on.type == "cuda"):
        heat, vis_logits = alm.model(images, category)
    shape = heat.shape
    prob = F.softmax(heat.float().flatten(2), dim=2).view(shape)
    visible = torch.sigmoid(vis_logits.float())
    pairs = alm.flip_pairs.get(category) or []
    if flip_test and pairs:
        order = torch.as_tensor(flip_permutation(shape[1], tuple(tuple(p) for p in pairs)), device=run_on)
        with torch.autocast(run_on.type, dtype=torch.float16, enabled=run_on.type == "cuda"):
            heat_f, vis_f = alm.model(images.flip(-1), category)
        prob_f = F.softmax(heat_f.float().flatten(2), dim=2).view(shape).flip(-1)[:, order]
        prob = (prob + prob_f) / 2
        visible = (visible + torch.sigmoid(vis_f.float())[:, order]) / 2
    return prob.cpu().numpy(), visible.cpu().numpy()


def _raw_predictions(alm: ALM, dataset: Dataset, instances: list[Instance], flip_test: bool, batch_size: int,
                     keep_device: bool = False, shape_prior: bool = True, crops: CropSet | None = None,
                     refine_without_prior: bool = False) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Instance id -> (image xy (K, 2), raw location score (K,), visibility probability (K,)).

    `crops`: an unaugmented `CropSet` of these instances to reuse (its images stay decoded).
    `refine_without_prior`: fit the sub-cell position on the network's heatmap alone (the prior then
    only picks the peak cell). Multiplying by a Gaussian prior of spread s moves a heatmap peak of
    width h toward the mean shape by h^2 / (h^2 + s^2) of its distance; refining without it accepted
    2 more keypoints per COCO review round but lost 2.3 points of held-out PCK@0.1 (replay of
    2026-12-03), so it is a measurement variant, off by default.
    """
    run_on = device()
    was_training = alm.model.training
    model = alm.model.to(run_on).eval()
    crops = crops if crops is not None else CropSet(dataset, instances, alm.crop_size)
    radius = acceptance_radius_cells(alm.crop_size, alm.calibration.radius)
    out = {}
    for start in range(0, len(instances), batch_size):
        chunk = list(range(start, min(start + batch_size, len(instances))))
        for category in sorted({dataset.categories[instances[i].category_id].name for i in chunk}):
            if category not in model.heads:
                continue
            members = [i for i in chunk if dataset.categories[instances[i].category_id].name == category]
            items = [crops.item(i) for i in members]
            images = torch.stack([torch.from_numpy(normalise(item[0])) for item in items]).to(run_on)
            likelihood, visible = _heat(alm, images, category, flip_test)
            prob = likelihood
            if shape_prior and category in alm.shape_prior:
                prob = prob * prior_maps(alm.shape_prior[category], alm.crop_size)[None]
                prob = prob / np.maximum(prob.sum(axis=(2, 3), keepdims=True), 1e-30)
            for index, item, heat, raw_heat, seen in zip(members, items, prob, likelihood, visible):
                # the prior picks the peak; the sub-cell fit uses the prior-weighted heatmap unless asked not to
                xy, score = decode(heat, radius_cells=radius, refine=raw_heat if refine_without_prior else None)
                inst = instances[index]
                info = dataset.images[inst.image_id]
                image_xy = to_image(item[3], xy)
                image_xy[:, 0] = np.clip(image_xy[:, 0], 0, info.width - 1e-3)
                image_xy[:, 1] = np.clip(image_xy[:, 1], 0, info.height - 1e-3)
                out[inst.id] = (image_xy, score, seen)
    if not keep_device:
        alm.model.cpu()
    alm.model.train(was_training)
    return out


def validation_scores(alm: ALM, dataset: Dataset, instances: list[Instance], crops: CropSet | None = None
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """From one prediction pass: raw location scores of the truly visible keypoints and whether each
    lies within the acceptance radius; raw visibility probabilities of all keypoints and the truth."""
    raw_predictions = _raw_predictions(alm, dataset, instances, flip_test=True, batch_size=32, crops=crops)
    scores, hits, seen, truth = [], [], [], []
    for inst in instances:
        if inst.id not in raw_predictions:
            continue
        xy, score, visible = raw_predictions[inst.id]
        shown = inst.visible
        distance = np.linalg.norm(xy[shown] - inst.keypoints[shown, :2], axis=1)
        scores.append(score[shown])
        hits.append(distance <= alm.calibration.radius * max(inst.bbox[2], inst.bbox[3]))
        seen.append(visible)
        truth.append(shown)
    if not scores:
        empty = np.zeros(0)
        return empty, empty.astype(bool), empty, empty.astype(bool)
    return np.concatenate(scores), np.concatenate(hits), np.concatenate(seen), np.concatenate(truth)


def predict(alm: ALM, dataset: Dataset, instances: list[Instance], threshold: float = HIDE_THRESHOLD,
            batch_size: int = 32, flip_test: bool = True, keep_device: bool = False, shape_prior: bool = True,
            crops: CropSet | None = None, refine_without_prior: bool = False) -> dict[int, np.ndarray]:
    """Instance id -> (K, 5): x, y, visibility, location score, visibility probability.

    Where and whether are kept apart: the location score is the calibrated probability that
    the point lies within the acceptance radius (5% of the box's longer side); visibility is 2
    unless the calibrated visibility probability is below `threshold`, whatever the location's
    certainty, with a margin: a point is hidden only when the upper confidence bound of its
    calibrated P(visible) (`hide_mask`, HIDE_Z standard errors of the visibility fit) is below
    `threshold`. An ALM whose visibility head was never validated (too few training instances
    for a validation share), or whose hiding its own validation outcomes showed to cost clicks
    (`hiding_saves_clicks`), hides nothing. `crops`: an unaugmented `CropSet` of `instances` to
    reuse (images decoded once). `refine_without_prior`: see `_raw_predictions`.
    """
    if not isinstance(threshold, int | float) or not 0.0 <= threshold <= 1.0:  # NaN fails too
        raise SemcorrError(f"threshold {threshold!r}: must be a finite number in [0, 1]")
    raw_predictions = _raw_predictions(alm, dataset, instances, flip_test, batch_size, keep_device, shape_prior,
                                       crops, refine_without_prior)
    out = {}
    validated = alm.visibility_calibration.points > 0
    for inst_id, (xy, score, seen) in raw_predictions.items():
        hidden = hide_mask(alm.visibility_calibration, seen, threshold) if validated else np.zeros(len(seen), bool)
        seen = alm.visibility_calibration(seen) if validated else seen
        visibility = np.where(hidden, 0.0, 2.0)
        out[inst_id] = np.column_stack([xy, visibility, alm.calibration(score), seen])
    return out


def pck_of_box(predicted: dict[int, np.ndarray], instances: list[Instance], alpha: float = 0.1,
               use_visibility: bool = True) -> float:
    """PCK@alpha of the box's longer side over the truly visible keypoints, in percent.

    With `use_visibility`, a keypoint predicted not visible counts as a miss."""
    hits = total = 0
    for inst in instances:
        truth = inst.visible
        if inst.id not in predicted or not truth.any():
            total += int(truth.sum())
            continue
        guess = predicted[inst.id]
        distance = np.linalg.norm(guess[truth, :2] - inst.keypoints[truth, :2], axis=1)
        shown = guess[truth, 2] == 2 if use_visibility else True
        hits += int(((distance <= alpha * max(inst.bbox[2], inst.bbox[3])) & shown).sum())
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
               "data_hash": alm.data_hash, "keypoints": alm.keypoints, "flip_pairs": alm.flip_pairs,
               "calibration": alm.calibration.to_dict(),
               "visibility_calibration": alm.visibility_calibration.to_dict(), "history": alm.history,
               "shape_prior": alm.shape_prior, "visibility_evidence": alm.visibility_evidence,
               "state_dict": {k: v.detach().cpu() for k, v in alm.model.state_dict().items()}}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic.write_bytes(Path(path), buffer.getvalue())
    return Path(path)


CALIBRATION_KEYS = ("a", "b", "points", "radius", "var_a", "cov_ab", "var_b")
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
    if payload.get("format") == "semcorr-alm-1":
        raise SemcorrError(f"{path}: an ALM checkpoint of an earlier semcorr (stride-8 network, no calibration); "
                           "train again with `semcorr alm train`")
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
    for key in ("calibration", "visibility_calibration"):
        calibration = payload.get(key, {})
        if not isinstance(calibration, dict) or not all(
                isinstance(calibration.get(k, 0), int | float) and math.isfinite(calibration.get(k, 0))
                for k in CALIBRATION_KEYS):
            problems.append(f"{key} must map {', '.join(CALIBRATION_KEYS)} to finite numbers")
    evidence = payload.get("visibility_evidence") or []
    if not isinstance(evidence, list) or not all(
            isinstance(e, dict) and all(isinstance(v, int | float) and math.isfinite(v) for v in e.values())
            for e in evidence):
        problems.append("visibility_evidence must be a list of maps to finite numbers")
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
    calibration = payload.get("calibration") or {}
    visibility = payload.get("visibility_calibration") or {}
    return ALM(model=model, keypoints=keypoints, backbone=payload["backbone"],
               crop_size=payload["crop_size"], round=payload["round"], data_hash=payload["data_hash"],
               flip_pairs=payload.get("flip_pairs") or {},
               calibration=Calibration(**{k: calibration[k] for k in CALIBRATION_KEYS if k in calibration}),
               visibility_calibration=Calibration(**{k: visibility[k] for k in CALIBRATION_KEYS if k in visibility}),
               history=list(payload.get("history") or []), shape_prior=dict(payload.get("shape_prior") or {}),
               visibility_evidence=[dict(e) for e in evidence])
