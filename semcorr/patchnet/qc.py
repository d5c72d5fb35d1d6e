"""Correspondence quality control: give every labelled keypoint of a dataset a row with one column
per cue (mask, shape, swap, appearance; see `semcorr.patchnet.cues`), rank them by the combined
suspicion, and check multi-instance matches for cycle consistency.

The appearance cue scores every annotated correspondence of a pairs table with a patch network
(or, without one, with non-learned gradient descriptors). A keypoint's appearance quality is its
agreement with its counterparts over all the pairs it takes part in, with pair difficulty and the
counterparts' own quality taken out (`keypoint_quality`); its cue is how far that quality falls
below the same keypoint id's median in its category, as a robust z-score (`cues.robust_z`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from semcorr.engine import LOCAL, Engine, map_chunks
from semcorr.patchnet import cues
from semcorr.patchnet.models import PatchNet
from semcorr.patchnet.patches import DEFAULT_SCALE, ImageCache, box_side, cut_patch, instance_pairs, normalise
from semcorr.store import Dataset

SUSPECT_Z = 3.0
PairScorer = Callable[[np.ndarray, np.ndarray], np.ndarray]


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


def network_scorer(model: PatchNet, bank: PatchBank) -> PairScorer:
    """Scores of bank rows (first[i], second[i]) by a patch network."""
    return lambda first, second: score_indexed(model, bank.patches, first, second)


def descriptor_scorer(bank: PatchBank) -> PairScorer:
    """Scores of bank rows (first[i], second[i]) as the cosine of their gradient descriptors (no learning)."""
    described = cues.gradient_descriptors(bank.patches)
    return lambda first, second: (described[first] * described[second]).sum(axis=1)


def correspondence_scores(dataset: Dataset, pairs: pd.DataFrame, scorer: PairScorer, bank: PatchBank
                          ) -> pd.DataFrame:
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
    scores = scorer(np.array(first, dtype=np.int64), np.array(second, dtype=np.int64))
    table = pd.DataFrame(meta, columns=["src_ann_id", "trg_ann_id", "keypoint"])
    table.insert(0, "category", bank.keys.category.to_numpy()[np.array(first, dtype=np.int64)] if first else [])
    table["score"] = np.asarray(scores, dtype=np.float64)
    return table


def keypoint_quality(correspondences: pd.DataFrame, damp: float = 0.1, min_group: int = 5) -> pd.DataFrame:
    """Per (ann_id, keypoint): how well it agrees with its counterparts, each pair's difficulty and
    each counterpart's own quality taken out.

    A score is first centred on its pair's median (a pair seen from very different viewpoints
    scores low everywhere) and on its keypoint id's mean in the category where that id has at least
    `min_group` correspondences (with fewer, the id's own mean would subtract its signal away: a
    keypoint in a single comparison would always come out exactly average), then modelled as the
    sum of the two keypoints' qualities (ridge least squares): a wrong keypoint no longer drags down
    the correct ones it is paired with.
    """
    from scipy.sparse import csr_matrix
    from scipy.sparse.linalg import lsqr

    table = correspondences
    centred = table.score - table.groupby(["src_ann_id", "trg_ann_id"]).score.transform("median")
    by_id = centred.groupby([table.category, table.keypoint])
    centred = centred - by_id.transform("mean").where(by_id.transform("size") >= min_group, 0.0)
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


def appearance_cue(correspondences: pd.DataFrame, bank: PatchBank) -> pd.DataFrame:
    """Per keypoint in at least one correspondence: pairs, mean score, quality and `appearance`, the
    robust z of how far its quality falls below the same keypoint id's median in its category
    (ids seen on fewer than five instances are measured against the whole category)."""
    per_point = keypoint_quality(correspondences).merge(bank.keys[["ann_id", "keypoint", "category"]],
                                                        on=["ann_id", "keypoint"], how="left")
    floor = max(1e-6, 0.05 * float(per_point.quality.std() or 0.0))
    per_point["appearance"] = cues.robust_z(-per_point.quality, [per_point.category, per_point.keypoint],
                                            [per_point.category], floor)
    return per_point[["ann_id", "keypoint", "pairs", "mean_score", "quality", "appearance"]]


def keypoint_rows(dataset: Dataset) -> pd.DataFrame:
    """One row per labelled keypoint (visibility 1 or 2): ids, category, name, visibility, x, y."""
    rows = []
    for inst in dataset.instances:
        category = dataset.categories[inst.category_id]
        for k in np.flatnonzero(inst.keypoints[:, 2] > 0):
            rows.append((inst.id, inst.image_id, category.name, int(k), category.keypoints[k],
                         int(inst.keypoints[k, 2]), float(inst.keypoints[k, 0]), float(inst.keypoints[k, 1])))
    return pd.DataFrame(rows, columns=["ann_id", "image_id", "category", "keypoint", "name", "visibility", "x", "y"])


def mask_values(items: list[tuple]) -> list[np.ndarray]:
    """`cues.mask_cue` of each (segmentation, height, width, keypoints (K, 3), box side) item (pure:
    the per-instance mask decoding and distance transforms, run in chunks by an engine)."""
    from semcorr.builders.coco_filter import decode_mask

    out = []
    for segmentation, height, width, keypoints, side in items:
        outside, depth = cues.distance_maps(decode_mask(segmentation, height, width))
        xy = keypoints[:, :2]
        out.append(cues.mask_cue(keypoints[:, 2], cues.sample_map(outside, xy), cues.sample_map(depth, xy), side))
    return out


def mask_column(dataset: Dataset, engine: Engine = LOCAL, chunk_size: int = 500) -> pd.DataFrame:
    """`mask` (see `cues.mask_cue`) and `box_side` (pixels) of every labelled keypoint of an instance with a
    segmentation; the masks are measured in chunks of `chunk_size` instances by `engine` (local, or Ray
    tasks), same result."""
    members = [inst for inst in dataset.instances
               if inst.segmentation is not None and (inst.keypoints[:, 2] > 0).any()]
    items = [(inst.segmentation, dataset.images[inst.image_id].height, dataset.images[inst.image_id].width,
              inst.keypoints, box_side(inst)) for inst in members]
    rows = []
    for inst, item, value in zip(members, items, map_chunks(engine, mask_values, items, chunk_size)):
        rows += [(inst.id, int(k), float(value[k]), item[4]) for k in np.flatnonzero(inst.keypoints[:, 2] > 0)]
    return pd.DataFrame(rows, columns=["ann_id", "keypoint", "mask", "box_side"])


def shape_columns(dataset: Dataset, flip_pairs: dict[str, tuple[tuple[int, int], ...]]
                  ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per category, the layout learned from its labels (`cues.factorise_layout`), then per instance
    a trimmed camera fit: `shape` (residual, box sides) and where the fit puts the point
    (`shape_x`, `shape_y`, pixels) for every labelled keypoint; and one row per flip pair tested
    for a swap (`cues.swap_gains`): ann_id, first, second, cost, gain, suspected."""
    points, swaps = [], []
    for category_id, category in sorted(dataset.categories.items()):
        members = [inst for inst in dataset.instances if inst.category_id == category_id]
        if not members or not category.num_keypoints:
            continue
        coords = np.stack([cues.box_frame(np.where(inst.keypoints[:, 2:] > 0, inst.keypoints[:, :2], np.nan),
                                          inst.bbox) for inst in members])
        layout = cues.factorise_layout(coords)
        pairs = list(flip_pairs.get(category.name, ()))
        fits = [cues.camera_residuals(layout, xy) for xy in coords]
        overlap, overlap_with = cues.coincidence_cue(coords, np.stack([fit[0] for fit in fits]))
        for i, (inst, xy, (residual, guess, cost)) in enumerate(zip(members, coords, fits)):
            part, part_as = cues.part_cue(xy, guess, residual)
            side, centre = box_side(inst), inst.bbox[:2] + inst.bbox[2:] / 2
            for k in np.flatnonzero(inst.keypoints[:, 2] > 0):
                points.append((inst.id, int(k), residual[k], *(guess[k] * side + centre), part[k],
                               category.keypoints[part_as[k]] if part_as[k] >= 0 else "", overlap[i, k],
                               category.keypoints[overlap_with[i, k]] if overlap_with[i, k] >= 0 else ""))
            for (a, b), gain in zip(pairs, cues.swap_gains(layout, xy, pairs, cost)):
                if np.isfinite(gain):
                    swaps.append((inst.id, a, b, cost, gain, bool(cues.swap_suspected(gain, cost))))
    return (pd.DataFrame(points, columns=["ann_id", "keypoint", "shape", "shape_x", "shape_y", "part", "part_as",
                                          "overlap", "overlap_with"]),
            pd.DataFrame(swaps, columns=["ann_id", "first", "second", "cost", "gain", "suspected"]))


def swap_column(swaps: pd.DataFrame, names: dict[tuple[int, int], str]) -> pd.DataFrame:
    """Per keypoint of a tested flip pair: `swap`, the largest gain of a suspected swap it is in (0 when
    none is suspected), and `swap_with`, the other keypoint's name ('' when none)."""
    both = pd.concat([swaps.rename(columns={"first": "keypoint", "second": "other"}),
                      swaps.rename(columns={"second": "keypoint", "first": "other"})], ignore_index=True)
    both["swap"] = both.gain.where(both.suspected, 0.0)
    both = both.sort_values(["swap", "ann_id", "keypoint"], ascending=[False, True, True], kind="stable")
    best = both.drop_duplicates(["ann_id", "keypoint"])
    swap_with = [names.get((int(a), int(o)), str(o)) if s else "" for a, o, s in
                 zip(best.ann_id, best.other, best.suspected)]
    return pd.DataFrame({"ann_id": best.ann_id.to_numpy(), "keypoint": best.keypoint.to_numpy(),
                         "swap": best.swap.to_numpy(), "swap_with": swap_with})


def rank_keypoints(rows: pd.DataFrame, columns: list[pd.DataFrame]) -> pd.DataFrame:
    """Every labelled keypoint with its raw cue values, each cue's robust z (`z_<cue>`), the combined
    `suspicion` (`cues.combine_cues`), the cue that fired, a reason in words; most suspect first: points
    clearly off their mask (`off_mask`, `cues.OFF_MASK`), then by suspicion.

    Args:
        rows: `keypoint_rows`.
        columns: per-keypoint tables keyed by (ann_id, keypoint): `mask_column`, `shape_columns`[0],
            `swap_column`, `appearance_cue` (any may be missing; `appearance` is already a z).
    """
    table = rows.copy()
    for column in columns:
        table = table.merge(column, on=["ann_id", "keypoint"], how="left")
    for name, default in (("mask", np.nan), ("box_side", np.nan), ("shape", np.nan), ("shape_x", np.nan),
                          ("shape_y", np.nan), ("part", np.nan), ("part_as", ""), ("overlap", np.nan),
                          ("overlap_with", ""), ("swap", np.nan), ("swap_with", ""), ("pairs", 0),
                          ("mean_score", np.nan), ("quality", np.nan), ("appearance", np.nan)):
        if name not in table:
            table[name] = default
    table["swap_with"] = table.swap_with.fillna("")
    table["part_as"] = table.part_as.fillna("")
    table["overlap_with"] = table.overlap_with.fillna("")
    table["pairs"] = table.pairs.fillna(0).astype(int)
    fine, coarse = [table.category, table.keypoint], [table.category]
    z = pd.DataFrame({"mask": cues.robust_z(table["mask"], coarse, coarse, cues.FLOORS["mask"]),
                      "shape": cues.robust_z(table["shape"], fine, coarse, cues.FLOORS["shape"]),
                      "part": cues.robust_z(table["part"], coarse, coarse, cues.FLOORS["part"]),
                      "overlap": cues.robust_z(table["overlap"], coarse, coarse, cues.FLOORS["overlap"]),
                      "swap": cues.robust_z(table["swap"], coarse, coarse, cues.FLOORS["swap"]),
                      "appearance": table["appearance"]})
    for cue in cues.CUES:
        table[f"z_{cue}"] = z[cue]
    table["suspicion"], table["cue"] = cues.combine_cues(z[list(cues.CUES)])
    table["suspicion"] = table.suspicion.fillna(0.0)
    table["off_mask"] = cues.off_mask(table["mask"], table.visibility, table.box_side)
    table["cue"] = table.cue.where(~table.off_mask, "mask")
    table["suspect"] = (table.suspicion >= SUSPECT_Z) | table.off_mask
    table["reason"] = [reason(row) for row in table.itertuples()]
    table["appearance_note"] = np.where(table.appearance.notna(), "",
                                        np.where(table.visibility == 2, "in no pair's shared visible keypoints "
                                                 "(pairs stay inside one split)", "not visible: no patch"))
    order = ["ann_id", "image_id", "category", "keypoint", "name", "visibility", "x", "y", "suspicion", "cue",
             "reason", "suspect", "off_mask", "mask", "box_side", "shape", "shape_x", "shape_y", "part", "part_as",
             "overlap", "overlap_with", "swap", "swap_with", "appearance", "pairs", "mean_score", "quality",
             "appearance_note", *[f"z_{cue}" for cue in cues.CUES]]
    return table.sort_values(["off_mask", "suspicion", "ann_id", "keypoint"], ascending=[False, False, True, True],
                             kind="stable")[order].reset_index(drop=True)


def check_keypoints(dataset: Dataset, correspondences: pd.DataFrame, bank: PatchBank, engine: Engine = LOCAL
                    ) -> pd.DataFrame:
    """`rank_keypoints` of every labelled keypoint of `dataset` with all four cues (the appearance cue
    from `correspondences`; flip pairs from the schema, else read off `left_*` / `right_*` names; the
    mask cue's per-instance work on `engine`)."""
    from semcorr.alm.data import category_flip_pairs

    flips = {c.name: category_flip_pairs(c) for c in dataset.categories.values()}
    names = {(inst.id, k): name for inst in dataset.instances
             for k, name in enumerate(dataset.categories[inst.category_id].keypoints)}
    shape, swaps = shape_columns(dataset, flips)
    columns = [mask_column(dataset, engine), shape, swap_column(swaps, names)]
    if len(correspondences):
        columns.append(appearance_cue(correspondences, bank))
    return rank_keypoints(keypoint_rows(dataset), columns)


def reason(row) -> str:
    """The fired cue in words, for the report and the review task."""
    if row.cue == "mask":
        return (f"{row.mask:.2f} box sides outside the mask" if row.visibility == 2
                else "hidden point deep inside the mask")
    if row.cue == "shape":
        return f"{row.shape:.2f} box sides from where the category's layout puts it"
    if row.cue == "part":
        return f"sits where the category's layout puts {row.part_as}"
    if row.cue == "overlap":
        return f"on the same spot as {row.overlap_with}"
    if row.cue == "swap":
        return f"left/right swap with {row.swap_with}?"
    if row.cue == "appearance":
        return f"patch unlike the same keypoint on {row.pairs} paired instances"
    return ""


def image_suspicion(suspects: pd.DataFrame) -> pd.DataFrame:
    """Per image: its worst keypoint's suspicion, whether a point is off its mask, how many are suspect;
    images with an off-mask point first, then by worst suspicion."""
    if "off_mask" not in suspects:
        suspects = suspects.assign(off_mask=False)
    table = suspects.groupby("image_id").agg(off_mask=("off_mask", "any"), worst=("suspicion", "max"),
                                             suspects=("suspect", "sum"), keypoints=("suspect", "size")).reset_index()
    return table.sort_values(["off_mask", "worst", "image_id"], ascending=[False, False, True],
                             kind="stable").reset_index(drop=True)


def best_matches(scorer: PairScorer, source_rows: np.ndarray, target_rows: np.ndarray) -> np.ndarray:
    """For each source row, the target row with the highest score (ties to the lower row)."""
    if len(source_rows) == 0 or len(target_rows) == 0:
        return np.full(len(source_rows), -1, dtype=np.int64)
    first = np.repeat(source_rows, len(target_rows))
    second = np.tile(target_rows, len(source_rows))
    scores = np.asarray(scorer(first, second)).reshape(len(source_rows), len(target_rows))
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


def cycle_check(scorer: PatchNet | PairScorer, bank: PatchBank, triples: list[tuple[int, int, int]],
                category: str) -> tuple[pd.DataFrame, int]:
    """Best matches (of a network, or any scorer of bank rows) chained over image triples of one
    category: one row per chain that does not return, and the number of chains followed.

    `kind` says whether the chain came back to another keypoint id (`keypoint`) or to the same
    keypoint id on another instance of the start image (`instance`).
    """
    if isinstance(scorer, PatchNet):
        scorer = network_scorer(scorer, bank)
    rows, chains = [], 0
    keys = bank.keys
    key_of = list(zip(keys.ann_id.astype(int), keys.keypoint.astype(int)))
    members = {image_id: np.flatnonzero((keys.image_id == image_id).to_numpy() & (keys.category == category).to_numpy())
               for image_id in {i for t in triples for i in t}}
    for a, b, c in triples:
        hops = [(members[a], members[b]), (members[b], members[c]), (members[c], members[a])]
        maps = [dict(zip(src.tolist(), best_matches(scorer, src, trg).tolist())) for src, trg in hops]
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


CUE_COLOURS = {"mask": (230, 120, 0), "shape": (200, 0, 160), "part": (200, 0, 160), "overlap": (200, 0, 160),
               "swap": (0, 90, 230), "appearance": (0, 150, 60), "": (120, 120, 120)}


def suspect_sheet(dataset: Dataset, bank: PatchBank, suspects: pd.DataFrame, correspondences: pd.DataFrame, path,
                  top: int = 12, partners: int = 4):
    """PNG, one row per top suspect: the instance (red ring: the suspect; for a swap a blue ring on the
    other keypoint and a line between; for shape a magenta cross where the layout puts it; the
    mask outline in orange), the suspect's patch, the same keypoint on paired instances, and the
    fired cue with its reason."""
    from PIL import Image, ImageDraw

    from semcorr.builders.coco_filter import decode_mask

    where, by_id = bank.index(), {inst.id: inst for inst in dataset.instances}
    images = ImageCache(dataset, grayscale=False)
    rows = suspects.head(top)
    view, cell, label_h = 160, 72, 14
    text_x = view + cell * (partners + 1) + 12
    sheet = Image.new("RGB", (text_x + 330, max(1, len(rows)) * (view + 6) + 4), "white")
    draw = ImageDraw.Draw(sheet)
    for r, row in enumerate(rows.itertuples()):
        y0 = r * (view + 6) + 2
        inst, k = by_id[int(row.ann_id)], int(row.keypoint)
        x, y, w, h = inst.bbox
        side = max(w, h) * 1.3
        box = (x + w / 2 - side / 2, y + h / 2 - side / 2, x + w / 2 + side / 2, y + h / 2 + side / 2)
        crop = images(inst.image_id).convert("RGB").transform((view, view), Image.Transform.EXTENT, box,
                                                             Image.Resampling.BILINEAR, fillcolor=(0, 0, 0))
        pen = ImageDraw.Draw(crop)

        def at(px, py, box=box, side=side):
            return (px - box[0]) * view / side, (py - box[1]) * view / side

        if inst.segmentation is not None:
            image = dataset.images[inst.image_id]
            mask = Image.fromarray(decode_mask(inst.segmentation, image.height, image.width).astype(np.uint8) * 255)
            outline = np.asarray(mask.transform((view, view), Image.Transform.EXTENT, box)) > 127
            edge = outline ^ np.pad(outline, 1)[1:-1, 2:] | outline ^ np.pad(outline, 1)[2:, 1:-1]
            crop.paste(CUE_COLOURS["mask"], mask=Image.fromarray((edge * 255).astype(np.uint8)))
        for j in np.flatnonzero(inst.keypoints[:, 2] > 0):
            px, py = at(*inst.keypoints[j, :2])
            pen.ellipse([px - 2, py - 2, px + 2, py + 2], fill="white", outline="black")
        sx, sy = at(row.x, row.y)
        if row.cue == "swap" and row.swap_with:
            other = dataset.categories[inst.category_id].keypoints.index(row.swap_with)
            ox, oy = at(*inst.keypoints[other, :2])
            pen.line([sx, sy, ox, oy], fill=CUE_COLOURS["swap"], width=2)
            pen.ellipse([ox - 6, oy - 6, ox + 6, oy + 6], outline=CUE_COLOURS["swap"], width=3)
        if row.cue in ("shape", "part") and np.isfinite(row.shape_x):
            gx, gy = at(row.shape_x, row.shape_y)
            pen.line([sx, sy, gx, gy], fill=CUE_COLOURS["shape"], width=1)
            pen.line([gx - 5, gy - 5, gx + 5, gy + 5], fill=CUE_COLOURS["shape"], width=2)
            pen.line([gx - 5, gy + 5, gx + 5, gy - 5], fill=CUE_COLOURS["shape"], width=2)
        pen.ellipse([sx - 6, sy - 6, sx + 6, sy + 6], outline="red", width=3)
        sheet.paste(crop, (2, y0))
        mates = correspondences[((correspondences.src_ann_id == inst.id) | (correspondences.trg_ann_id == inst.id))
                                & (correspondences.keypoint == k)] if len(correspondences) else correspondences
        others = sorted({int(t if s == inst.id else s) for s, t in zip(mates.src_ann_id, mates.trg_ann_id)})
        for c, other in enumerate([inst.id, *others[:partners]]):
            if (other, k) not in where:
                continue
            xp = view + 8 + c * cell
            sheet.paste(Image.fromarray(bank.patches[where[(other, k)]]).convert("RGB"), (xp + 4, y0 + label_h))
            draw.rectangle([xp + 3, y0 + label_h - 1, xp + 68, y0 + label_h + 64], outline="red" if c == 0 else "grey")
            draw.text((xp + 4, y0), f"ann {other}", fill="black")
        colour = CUE_COLOURS.get(row.cue, CUE_COLOURS[""])
        draw.text((text_x, y0 + 8), f"#{r + 1} {row.category} image {row.image_id} ann {row.ann_id}\n"
                  f"{row.name} (kp {k})", fill="black")
        draw.text((text_x, y0 + 40), f"cue: {row.cue or '-'}  suspicion {row.suspicion:.1f}", fill=colour)
        draw.text((text_x, y0 + 56), str(row.reason), fill="black")
        zs = "  ".join(f"{cue} {getattr(row, f'z_{cue}'):.1f}" for cue in cues.CUES
                       if np.isfinite(getattr(row, f"z_{cue}")))
        draw.text((text_x, y0 + 72), f"z: {zs}", fill="grey")
    sheet.save(path)
    return path
