"""Correspondence quality control: score every annotated keypoint correspondence of a pairs
table with a patch network, find the keypoints that disagree with their counterparts, and
check multi-instance matches for cycle consistency.

A keypoint's suspicion is a robust z-score: how far its quality (its agreement with its
counterparts over all the pairs it takes part in, with pair difficulty and the counterparts'
own quality taken out; see `keypoint_quality`) falls below the median of the same keypoint
id over the category's instances, in units of their median absolute deviation. Planted or real labelling errors (a point put on
the wrong part) disagree in every pair they are in, so they rise to the top.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from semcorr.patchnet.models import PatchNet
from semcorr.patchnet.patches import DEFAULT_SCALE, ImageCache, box_side, cut_patch, instance_pairs, normalise
from semcorr.store import Dataset

SUSPECT_Z = 3.0


@dataclass
class PatchBank:
    """One patch per visible annotated keypoint: `keys` (ann_id, keypoint index) row i is `patches[i]`."""

    keys: pd.DataFrame
    patches: np.ndarray
    padded: int

    def index(self) -> dict[tuple[int, int], int]:
        """(ann_id, keypoint) -> row."""
        return {(int(a), int(k)): i for i, (a, k) in enumerate(zip(self.keys.ann_id, self.keys.keypoint))}


def patch_bank(dataset: Dataset, ann_ids: set[int] | None = None, scale: float = DEFAULT_SCALE,
               grayscale: bool = True) -> PatchBank:
    """Cut the patch of every visible keypoint (of `ann_ids`, or all instances)."""
    images = ImageCache(dataset, grayscale)
    rows, patches, padded = [], [], 0
    for inst in dataset.instances:
        if ann_ids is not None and inst.id not in ann_ids:
            continue
        for k in np.flatnonzero(inst.visible):
            patch, pad = cut_patch(images(inst.image_id), inst.keypoints[k, :2], scale * box_side(inst),
                                   grayscale=grayscale)
            rows.append({"ann_id": inst.id, "image_id": inst.image_id,
                         "category": dataset.categories[inst.category_id].name, "keypoint": int(k),
                         "x": float(inst.keypoints[k, 0]), "y": float(inst.keypoints[k, 1])})
            patches.append(patch)
            padded += int(pad)
    shape = (0, 64, 64) if grayscale else (0, 64, 64, 3)
    return PatchBank(pd.DataFrame(rows, columns=["ann_id", "image_id", "category", "keypoint", "x", "y"]),
                     np.stack(patches) if patches else np.zeros(shape, np.uint8), padded)


@torch.no_grad()
def score_indexed(model: PatchNet, patches: np.ndarray, first: np.ndarray, second: np.ndarray,
                  batch_size: int = 1024) -> np.ndarray:
    """Scores of the pairs (patches[first[i]], patches[second[i]]); siamese models describe each patch once."""
    run_on = next((p.device for p in model.parameters()), torch.device("cpu"))
    cuda = run_on.type == "cuda"
    model.eval()
    with torch.autocast(run_on.type, dtype=torch.float16, enabled=cuda):
        if model.has_descriptor:
            chunks = [torch.from_numpy(normalise(patches[s: s + batch_size])).to(run_on)
                      for s in range(0, len(patches), batch_size)]
            one = torch.cat([model.describe(c) for c in chunks]).float()
            two = torch.cat([model.describe(c, second=True) for c in chunks]).float() if not model.shared else one
            out = [model.compare(one[torch.from_numpy(first[s: s + batch_size])],
                                 two[torch.from_numpy(second[s: s + batch_size])]).float()
                   for s in range(0, len(first), batch_size)]
        else:
            out = [model(torch.from_numpy(normalise(patches[first[s: s + batch_size]])).to(run_on),
                         torch.from_numpy(normalise(patches[second[s: s + batch_size]])).to(run_on)).float()
                   for s in range(0, len(first), batch_size)]
    return torch.cat(out).cpu().numpy() if out else np.zeros(0, np.float32)


def correspondence_scores(dataset: Dataset, pairs: pd.DataFrame, model: PatchNet, bank: PatchBank) -> pd.DataFrame:
    """One row per annotated correspondence (same keypoint id, visible on both instances of a pair)."""
    by_instance: dict[int, dict[int, int]] = {}
    for (ann, k), i in bank.index().items():
        by_instance.setdefault(ann, {})[k] = i
    first, second, meta = [], [], []
    for source, target in instance_pairs(pairs, dataset):
        a, b = by_instance.get(source, {}), by_instance.get(target, {})
        for k in sorted(a.keys() & b.keys()):
            first.append(a[k])
            second.append(b[k])
            meta.append((source, target, k))
    scores = score_indexed(model, bank.patches, np.array(first, dtype=np.int64), np.array(second, dtype=np.int64))
    table = pd.DataFrame(meta, columns=["src_ann_id", "trg_ann_id", "keypoint"])
    table["score"] = scores.astype(np.float64)
    return table


def keypoint_quality(correspondences: pd.DataFrame, damp: float = 0.1) -> pd.DataFrame:
    """Per (ann_id, keypoint): how well it agrees with its counterparts, each pair's difficulty and
    each counterpart's own quality taken out.

    A score is first centred on its pair's median (a pair seen from very different viewpoints
    scores low everywhere), then, per keypoint id, modelled as the sum of the two keypoints'
    qualities (ridge least squares): a wrong keypoint no longer drags down the correct ones it
    is paired with.
    """
    from scipy.sparse import csr_matrix
    from scipy.sparse.linalg import lsqr

    table = correspondences
    centred = table.score - table.groupby(["src_ann_id", "trg_ann_id"]).score.transform("median")
    centred = centred - centred.groupby(table.keypoint).transform("mean")
    keys = sorted(set(zip(table.src_ann_id, table.keypoint)) | set(zip(table.trg_ann_id, table.keypoint)))
    column = {key: i for i, key in enumerate(keys)}
    first = np.array([column[key] for key in zip(table.src_ann_id, table.keypoint)], dtype=np.int64)
    second = np.array([column[key] for key in zip(table.trg_ann_id, table.keypoint)], dtype=np.int64)
    rows = np.arange(len(table))
    design = csr_matrix((np.ones(2 * len(table)), (np.r_[rows, rows], np.r_[first, second])),
                        shape=(len(table), len(keys)))
    quality = lsqr(design, centred.to_numpy(dtype=np.float64), damp=damp)[0]
    both = pd.concat([table.rename(columns={"src_ann_id": "ann_id"})[["ann_id", "keypoint", "score"]],
                      table.rename(columns={"trg_ann_id": "ann_id"})[["ann_id", "keypoint", "score"]]])
    stats = both.groupby(["ann_id", "keypoint"]).score.agg(pairs="size", mean_score="mean")
    out = pd.DataFrame({"ann_id": [k[0] for k in keys], "keypoint": [k[1] for k in keys], "quality": quality})
    return out.merge(stats.reset_index(), on=["ann_id", "keypoint"])


def rank_suspects(correspondences: pd.DataFrame, bank: PatchBank) -> pd.DataFrame:
    """Per annotated keypoint: pairs, mean score, quality and the robust z-score of how far its
    quality falls below the same keypoint id's median in its category; most suspect first."""
    per_point = keypoint_quality(correspondences).merge(bank.keys, on=["ann_id", "keypoint"], how="left")
    groups = [per_point.category, per_point.keypoint]
    median = per_point.quality.groupby(groups).transform("median")
    spread = 1.4826 * (per_point.quality - median).abs().groupby(groups).transform("median")
    floor = max(1e-6, 0.05 * float(per_point.quality.std() or 0.0))
    per_point["suspicion"] = (median - per_point.quality) / np.maximum(spread, floor)
    per_point["suspect"] = per_point.suspicion >= SUSPECT_Z
    columns = ["ann_id", "image_id", "category", "keypoint", "x", "y", "pairs", "mean_score", "quality", "suspicion",
               "suspect"]
    return per_point.sort_values(["suspicion", "ann_id", "keypoint"], ascending=[False, True, True],
                                 kind="stable")[columns].reset_index(drop=True)


def image_suspicion(suspects: pd.DataFrame) -> pd.DataFrame:
    """Per image: its worst keypoint's suspicion and how many keypoints are suspect."""
    table = suspects.groupby("image_id").agg(worst=("suspicion", "max"), suspects=("suspect", "sum"),
                                             keypoints=("suspect", "size")).reset_index()
    return table.sort_values(["worst", "image_id"], ascending=[False, True], kind="stable").reset_index(drop=True)


def best_matches(model: PatchNet, bank: PatchBank, source_rows: np.ndarray, target_rows: np.ndarray) -> np.ndarray:
    """For each source row, the target row with the highest score (ties to the lower row)."""
    if len(source_rows) == 0 or len(target_rows) == 0:
        return np.full(len(source_rows), -1, dtype=np.int64)
    first = np.repeat(source_rows, len(target_rows))
    second = np.tile(target_rows, len(source_rows))
    scores = score_indexed(model, bank.patches, first, second).reshape(len(source_rows), len(target_rows))
    return target_rows[np.argmax(scores, axis=1)]


def cycle_inconsistencies(ab: dict, bc: dict, ca: dict) -> list[tuple]:
    """Starts of A -> B -> C -> A chains that do not come back: (start, via B, via C, end).

    Each mapping sends a point (any hashable, e.g. (ann_id, keypoint)) to its match in the next
    image; a chain broken by a missing match is not reported (nothing to compare).
    """
    broken = []
    for start, via_b in ab.items():
        via_c = bc.get(via_b)
        end = ca.get(via_c) if via_c is not None else None
        if end is not None and end != start:
            broken.append((start, via_b, via_c, end))
    return broken


def cycle_check(model: PatchNet, bank: PatchBank, triples: list[tuple[int, int, int]],
                category: str) -> tuple[pd.DataFrame, int]:
    """Network matches chained over image triples of one category: one row per chain that does not
    return, and the number of chains followed.

    `kind` says whether the chain came back to another keypoint id (`keypoint`) or to the same
    keypoint id on another instance of the start image (`instance`).
    """
    rows, chains = [], 0
    keys = bank.keys
    key_of = list(zip(keys.ann_id.astype(int), keys.keypoint.astype(int)))
    members = {image_id: np.flatnonzero((keys.image_id == image_id).to_numpy() & (keys.category == category).to_numpy())
               for image_id in {i for t in triples for i in t}}
    for a, b, c in triples:
        hops = [(members[a], members[b]), (members[b], members[c]), (members[c], members[a])]
        maps = [dict(zip(src.tolist(), best_matches(model, bank, src, trg).tolist())) for src, trg in hops]
        chains += len(maps[0])
        for start, via_b, via_c, end in cycle_inconsistencies(*maps):
            rows.append({"category": category, "image_a": a, "image_b": b, "image_c": c,
                         "start_ann_id": key_of[start][0], "start_keypoint": key_of[start][1],
                         "via_b": f"{key_of[via_b][0]}:{key_of[via_b][1]}",
                         "via_c": f"{key_of[via_c][0]}:{key_of[via_c][1]}",
                         "end_ann_id": key_of[end][0], "end_keypoint": key_of[end][1],
                         "kind": "keypoint" if key_of[end][1] != key_of[start][1] else "instance"})
    columns = ["category", "image_a", "image_b", "image_c", "start_ann_id", "start_keypoint", "via_b", "via_c",
               "end_ann_id", "end_keypoint", "kind"]
    return pd.DataFrame(rows, columns=columns), chains


def image_triples(pairs: pd.DataFrame, category: str, limit: int, seed: int = 0) -> list[tuple[int, int, int]]:
    """Up to `limit` image triples (a, b, c) of a category whose three pairs all share a split; seeded."""
    rows = pairs[pairs.category.astype(str) == category]
    images_by_split = {split: sorted(set(group.src_image_id.astype(int)) | set(group.trg_image_id.astype(int)))
                       for split, group in rows.groupby(rows.split.astype(str), observed=True)}
    rng = np.random.default_rng(seed)
    triples = []
    for split in sorted(images_by_split):
        images = images_by_split[split]
        if len(images) >= 3:
            for _ in range(limit):
                triples.append(tuple(int(i) for i in rng.choice(images, 3, replace=False)))
    unique = sorted(set(triples))
    order = rng.permutation(len(unique))[:limit]
    return [unique[i] for i in sorted(order)]


def suspect_sheet(bank: PatchBank, suspects: pd.DataFrame, correspondences: pd.DataFrame, path, top: int = 12,
                  partners: int = 5):
    """PNG: one row per top suspect, its patch (red frame) then the same keypoint on paired instances."""
    from PIL import Image, ImageDraw

    where = bank.index()
    rows = suspects.head(top)
    cell, label_h = 72, 14
    sheet = Image.new("RGB", (cell * (partners + 1) + 220, max(1, len(rows)) * (cell + label_h) + 4), "white")
    draw = ImageDraw.Draw(sheet)
    for r, row in enumerate(rows.itertuples()):
        y = r * (cell + label_h) + 2
        ann, k = int(row.ann_id), int(row.keypoint)
        mates = correspondences[((correspondences.src_ann_id == ann) | (correspondences.trg_ann_id == ann))
                                & (correspondences.keypoint == k)]
        others = [int(t if s == ann else s) for s, t in zip(mates.src_ann_id, mates.trg_ann_id)]
        for c, other in enumerate([ann, *sorted(set(others))[:partners]]):
            patch = Image.fromarray(bank.patches[where[(other, k)]]).convert("RGB")
            x = c * cell + 2
            sheet.paste(patch, (x + 4, y + label_h))
            draw.rectangle([x + 3, y + label_h - 1, x + 68, y + label_h + 64], outline="red" if c == 0 else "grey")
            draw.text((x + 4, y), f"ann {other}", fill="black")
        draw.text(((partners + 1) * cell + 8, y + label_h + 8),
                  f"#{r + 1} {row.category} kp {k}\nimage {row.image_id}\nsuspicion {row.suspicion:.1f}\n"
                  f"mean score {row.mean_score:.2f} ({row.pairs} pairs)", fill="black")
    sheet.save(path)
    return path
