"""Benchmark SPair pair building and export at SPair-71k scale, without pixels.

Generates 18 categories x 100 single-instance images of random annotations (9..30
keypoints per category, random visibility, azimuth bins, boxes and flags), splits them
5:2:3, then times:

* `spair_units` and `build_spair_pairs` (best of 3), checked row for row against the
  per-pair loops of `tests.reference.reference_spair_pairs` (also best of 3);
* `export_spair` into the SPair-71k layout, every image a hard link to one tiny JPEG.

Prints a results table with PASS/FAIL against the targets and always exits 0.

Usage: .venv/bin/python benchmarks/bench_spair.py [--categories 18] [--images 100]
    [--seed 0] [--work benchmarks/_work] [--keep]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import string
import sys
import time
import tracemalloc
from itertools import product
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from semcorr.builders.spair_pairs import build_spair_pairs, spair_units  # noqa: E402
from semcorr.builders.splits import assign_splits, split_units  # noqa: E402
from semcorr.exports.spair import export_spair  # noqa: E402
from semcorr.store import Category, Dataset, ImageInfo, Instance  # noqa: E402
from tests.reference import reference_spair_pairs  # noqa: E402

WIDTH, HEIGHT = 500, 375
VISIBLE_PROB = 0.55
COMPARED = ["pair_id", "category", "split", "src_image_id", "trg_image_id", "viewpoint_variation",
            "scale_variation", "truncation", "occlusion"]


def make_dataset(num_categories: int, images_per_category: int, seed: int) -> Dataset:
    """Random SPair-like annotations: one instance per image, image id == instance id.

    Category names are "cat" plus two letters: all the same length, so none is a
    substring of another. Boxes lie inside a 500x375 image with widths and heights
    drawn over most of its range, so box areas span all three scale levels.
    """
    rng = np.random.default_rng(seed)
    suffixes = ["".join(p) for p in product(string.ascii_lowercase, repeat=2)]
    categories, images, instances = {}, {}, []
    for cat_id in range(1, num_categories + 1):
        num_kps = int(rng.integers(9, 31))
        categories[cat_id] = Category(id=cat_id, name=f"cat{suffixes[cat_id - 1]}",
                                      keypoints=tuple(f"kp{k:02d}" for k in range(num_kps)))
        for _ in range(images_per_category):
            ann_id = len(instances) + 1
            w, h = rng.uniform(20, WIDTH), rng.uniform(15, HEIGHT)
            x, y = rng.uniform(0, WIDTH - w), rng.uniform(0, HEIGHT - h)
            kps = np.column_stack([x + w * rng.random(num_kps), y + h * rng.random(num_kps),
                                   np.where(rng.random(num_kps) < VISIBLE_PROB, 2.0, 0.0)])
            images[ann_id] = ImageInfo(id=ann_id, file_name=f"img_{ann_id:06d}.jpg", width=WIDTH, height=HEIGHT)
            instances.append(Instance(
                id=ann_id, image_id=ann_id, category_id=cat_id, bbox=np.array([x, y, w, h]), keypoints=kps,
                area=w * h, azimuth_bin=int(rng.integers(0, 8)),
                truncated=bool(rng.random() < 0.2), occluded=bool(rng.random() < 0.3)))
    return Dataset(images=images, categories=categories, instances=instances, image_root=Path("."),
                   info={"description": "bench_spair synthetic annotations"})


def best_of(runs: int, func, *args):
    """Call `func(*args)` `runs` times; return (last result, fastest wall time in seconds)."""
    best, result = float("inf"), None
    for _ in range(runs):
        start = time.perf_counter()
        result = func(*args)
        best = min(best, time.perf_counter() - start)
    return result, best


def check_identical(pairs, reference: list[dict]) -> None:
    """Raise AssertionError unless the pairs table equals the reference rows, key for key."""
    assert len(pairs) == len(reference), f"{len(pairs)} pairs vs {len(reference)} in the reference"
    columns = [pairs[c].tolist() for c in COMPARED] + [pa.array(pairs["kps_ids"]).to_pylist()]
    for index, (row, ref) in enumerate(zip(zip(*columns), reference)):
        expected = tuple(ref[c] for c in COMPARED) + (ref["kps_ids"],)
        assert row == expected, f"row {index}: {row} != {expected}"


def placeholder_images(dataset: Dataset, folder: Path) -> None:
    """Hard-link one tiny 500x375 JPEG as every image file and point the dataset at it."""
    folder.mkdir(parents=True, exist_ok=True)
    master = folder.parent / "placeholder.jpg"
    Image.new("RGB", (WIDTH, HEIGHT), (128, 128, 128)).save(master, format="JPEG", quality=50)
    for image in dataset.images.values():
        target = folder / image.file_name
        if not target.exists():
            os.link(master, target)
    dataset.image_root = folder


def row(name: str, value: str, target: str = "", ok: bool | None = None) -> None:
    """Print one line of the results table."""
    verdict = "" if ok is None else ("PASS" if ok else "FAIL")
    print(f"  {name:<28} {value:>14}   {target:<18} {verdict}")


def main() -> int:
    """Run the benchmark; always returns 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--categories", type=int, default=18)
    parser.add_argument("--images", type=int, default=100, help="images per category")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("benchmarks/_work"), help="scratch directory")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args()

    start = time.perf_counter()
    dataset = make_dataset(args.categories, args.images, args.seed)
    splits = assign_splits(split_units(dataset.instance_table()), ratios=(0.5, 0.2, 0.3), seed=args.seed)
    print(f"dataset: {len(dataset.categories)} categories, {len(dataset.instances)} instances, "
          f"generated and split in {time.perf_counter() - start:.2f} s")

    (units, visible, _skipped), units_s = best_of(3, spair_units, dataset, splits)
    pairs, build_s = best_of(3, build_spair_pairs, units, visible)
    tracemalloc.start()
    build_spair_pairs(units, visible)
    build_peak_mb = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()

    reference, reference_s = best_of(3, reference_spair_pairs, units, visible)
    try:
        check_identical(pairs, reference)
        identical = "identical"
    except AssertionError as exc:
        identical = f"DIFFERENT: {exc}"
    del reference
    speedup = reference_s / build_s

    placeholder_images(dataset, args.work / "images")
    start, cpu = time.perf_counter(), os.times()
    report = export_spair(dataset, pairs, args.work / "spair")
    export_s, cpu_end = time.perf_counter() - start, os.times()
    export_cpu = f"user {cpu_end.user - cpu.user:.1f} s, sys {cpu_end.system - cpu.system:.1f} s"
    pair_files = sum(1 for p in (args.work / "spair" / "PairAnnotation").rglob("*.json"))
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    per_split = pairs["split"].value_counts()
    scale_levels = pairs["scale_variation"].value_counts().sort_index().to_dict()
    print(f"pairs: {len(pairs)} ({', '.join(f'{s} {per_split.get(s, 0)}' for s in ('trn', 'val', 'test'))}); "
          f"scale levels {scale_levels}; vs reference: {identical}")
    print(f"export: {report.images} images, {pair_files} PairAnnotation files "
          f"(no Segmentation PNGs: instances have no segmentation); CPU {export_cpu}\n")
    row("spair_units (best of 3)", f"{units_s:.3f} s")
    row("build_spair_pairs (best of 3)", f"{build_s:.3f} s", "<= 1 s", build_s <= 1.0)
    row("reference loops (best of 3)", f"{reference_s:.2f} s")
    row("speed-up", f"{speedup:.1f}x", ">= 20x", speedup >= 20 and identical == "identical")
    row("build tracemalloc peak", f"{build_peak_mb:.0f} MiB")
    row("export_spair", f"{export_s:.2f} s", "<= 20 s (~70k)", export_s <= 20.0)
    row("peak RSS", f"{peak_rss_mb:.0f} MiB", "<= 1 GB (1024 MiB)", peak_rss_mb <= 1024)

    if not args.keep:
        shutil.rmtree(args.work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
