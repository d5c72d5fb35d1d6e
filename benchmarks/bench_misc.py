"""Benchmark MISC pair building and mPCK at MISC210K scale, beside straightforward references.

34 categories x 300 images x 1-4 instances, 5-52 keypoints per category, 30,000 initial
pairs per category (about a million candidates); then mPCK over 200,000 pairs with noisy
identity predictions. Each fast path is checked against a plain-loop reference of the same
rule (identical outputs). Targets: build-pairs <= 15 s and <= 2 GB peak; mPCK <= 60 s.

Usage: .venv/bin/python benchmarks/bench_misc.py [--categories 34] [--images 300] [--mpck-pairs 200000]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from semcorr.builders.misc_pairs import allocate, build_misc_pairs, group_seed, misc_units, sample_ordered_pairs  # noqa: E402
from semcorr.builders.splits import assign_splits, split_units  # noqa: E402
from semcorr.evaluation.metrics import mpck_batch, mpck_pair  # noqa: E402
from semcorr.store import SPLIT_NAMES, Category, Dataset, ImageInfo, Instance  # noqa: E402


def make_dataset(categories: int, images: int, seed: int) -> Dataset:
    """Random multi-instance annotations without pixels (640 x 480 images)."""
    rng = np.random.default_rng(seed)
    cats, infos, instances = {}, {}, []
    for c in range(1, categories + 1):
        k = int(rng.integers(5, 53))
        cats[c] = Category(id=c, name=f"category{c:02d}", keypoints=tuple(f"kp{i}" for i in range(k)))
        for _ in range(images):
            image_id = len(infos) + 1
            infos[image_id] = ImageInfo(image_id, f"{image_id}.jpg", 640, 480)
            for _ in range(int(rng.integers(1, 5))):
                x, y = rng.uniform(0, 400), rng.uniform(0, 300)
                w, h = rng.uniform(20, 240), rng.uniform(20, 180)
                kps = np.column_stack([x + w * rng.random(k), y + h * rng.random(k),
                                       np.where(rng.random(k) < 0.5, 2.0, 0.0)])
                instances.append(Instance(len(instances) + 1, image_id, c, [x, y, w, h], kps, area=w * h,
                                          azimuth_bin=int(rng.integers(0, 8))))
    return Dataset(images=infos, categories=cats, instances=instances, image_root=Path("."))


def reference_pairs(units, counts, max_pairs: int, threshold: float, seed: int) -> list[tuple]:
    """The MISC rule with Python sets and loops (same seeded draw of initial pairs)."""
    visible = [set(np.flatnonzero(row).tolist()) for row in counts > 0]
    out = []
    for category in sorted(units["category"].unique()):
        members = [units.index[(units.category == category) & (units.split == s)].tolist() for s in SPLIT_NAMES]
        sizes = np.array([len(m) for m in members])
        for split, group, quota in zip(SPLIT_NAMES, members, allocate(max_pairs, sizes * (sizes - 1))):
            rng = np.random.default_rng(group_seed(seed, category, split))
            for i, j in zip(*sample_ordered_pairs(len(group), int(quota), rng)):
                a, b = group[i], group[j]
                common = sorted(visible[a] & visible[b])
                if common and len(common) >= threshold * units.num_keypoints[a] - 1e-9:
                    corr = sum(int(counts[a, k]) * int(counts[b, k]) for k in common)
                    out.append((int(units.image_id[a]), int(units.image_id[b]), len(common), common, corr))
    return out


def main() -> int:
    """Run both benchmarks and print the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--categories", type=int, default=34)
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--mpck-pairs", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    dataset = make_dataset(args.categories, args.images, args.seed)
    splits = assign_splits(split_units(dataset.instance_table()), seed=args.seed)

    start = time.perf_counter()
    units, counts = misc_units(dataset, splits)
    units_s = time.perf_counter() - start
    start = time.perf_counter()
    pairs = build_misc_pairs(units, counts, seed=args.seed)
    build_s = time.perf_counter() - start
    build_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    reference = reference_pairs(units, counts, 30000, 0.3, args.seed)
    reference_s = time.perf_counter() - start
    fast = list(zip(pairs.src_image_id.tolist(), pairs.trg_image_id.tolist(), pairs.shared.tolist(),
                    pa.array(pairs.kps_ids).to_pylist(), pairs.num_correspondences.tolist()))
    identical = fast == reference
    candidates = sum(int(q) for c in units.category.unique() for q in allocate(30000, np.array(
        [n * (n - 1) for n in (units[(units.category == c) & (units.split == s)].shape[0] for s in SPLIT_NAMES)])))

    # mPCK over the first pairs (repeated if there are fewer): GT = target instances' shared keypoints,
    # predictions = source instances' keypoints rescaled and jittered
    by_unit = {}
    for inst in dataset.instances:
        by_unit.setdefault((inst.image_id, inst.category_id), []).append(inst)
    name_to_id = {c.name: c.id for c in dataset.categories.values()}
    rng = np.random.default_rng(args.seed)
    take = np.resize(np.arange(len(pairs)), args.mpck_pairs)
    ids_all = pa.array(pairs.kps_ids).to_pylist()
    pred, gt = [], []
    for p, row_index in enumerate(take):
        src_id, trg_id = int(pairs.src_image_id.iat[row_index]), int(pairs.trg_image_id.iat[row_index])
        category = name_to_id[str(pairs.category.iat[row_index])]
        ids = ids_all[row_index]
        for inst in by_unit[(src_id, category)]:
            shown = [k for k in ids if inst.visible[k]]
            pred.append(np.column_stack([np.full(len(shown), p), shown,
                                         inst.keypoints[shown, :2] + rng.normal(0, 20, (len(shown), 2))]))
        for inst in by_unit[(trg_id, category)]:
            shown = [k for k in ids if inst.visible[k]]
            gt.append(np.column_stack([np.full(len(shown), p), shown, inst.keypoints[shown, :2]]))
    pred, gt = np.concatenate(pred), np.concatenate(gt)
    radius = np.full(args.mpck_pairs, 0.1 * 640)
    start = time.perf_counter()
    tp, fp, fn = mpck_batch(pred[:, 0], pred[:, 1].astype(int), pred[:, 2:], gt[:, 0], gt[:, 1].astype(int),
                            gt[:, 2:], radius, args.mpck_pairs)
    mpck_s = time.perf_counter() - start
    check = min(args.mpck_pairs, 20_000)
    start = time.perf_counter()
    p_bounds = np.searchsorted(pred[:, 0], np.arange(check + 1))
    g_bounds = np.searchsorted(gt[:, 0], np.arange(check + 1))
    ref = [mpck_pair(pred[p_bounds[i]:p_bounds[i + 1], 2:], pred[p_bounds[i]:p_bounds[i + 1], 1],
                     gt[g_bounds[i]:g_bounds[i + 1], 2:], gt[g_bounds[i]:g_bounds[i + 1], 1], radius[i])
           for i in range(check)]
    ref_s = (time.perf_counter() - start) * args.mpck_pairs / check
    same = np.array_equal(np.array(ref), np.stack([tp[:check], fp[:check], fn[:check]], axis=1))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    print(f"units: {len(units):,} (image, category) units, {int(units.num_instances.sum()):,} instances")
    print(f"candidates drawn: {candidates:,}; kept pairs: {len(pairs):,}; reference identical: {identical}")
    print(f"  misc_units                {units_s:8.2f} s")
    print(f"  build_misc_pairs          {build_s:8.2f} s   (units + build {units_s + build_s:.2f} s <= 15 s: "
          f"{'PASS' if units_s + build_s <= 15 else 'FAIL'})")
    print(f"  reference loops           {reference_s:8.2f} s")
    print(f"mPCK@0.1 over {args.mpck_pairs:,} pairs ({len(pred):,} predicted, {len(gt):,} true points): "
          f"{np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 0).mean() * 100:.1f}")
    print(f"  mpck_batch                {mpck_s:8.2f} s   (<= 60 s: {'PASS' if mpck_s <= 60 else 'FAIL'})")
    print(f"  per-pair Kuhn-Munkres     {ref_s:8.2f} s   (extrapolated from {check:,} pairs; identical: {same})")
    print(f"peak RSS after build-pairs {build_peak:,.0f} MiB (<= 2048 MiB: {'PASS' if build_peak <= 2048 else 'FAIL'});"
          f" whole run, with the 5.9M-point mPCK arrays, {peak:,.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
