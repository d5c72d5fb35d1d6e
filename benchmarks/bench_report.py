"""Benchmark `semcorr report` on an SPair-scale store with placeholder images.

Builds the store of `bench_spair.make_dataset` (18 categories x 100 images, about 66k SPair
pairs), every image a hard link to one tiny grey JPEG, splits and pairs it, then times
`commands.run_report` with the default cap (2 sample pairs per category and difficulty level).

Usage: .venv/bin/python benchmarks/bench_report.py [--categories 18] [--images 100] [--work benchmarks/_work]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_spair import HEIGHT, WIDTH, make_dataset
from semcorr import commands, store
from semcorr.viewers.report import ReportOptions


def build_store(root: Path, categories: int, images: int) -> int:
    """Write the benchmark store into `root`; returns its pair count."""
    dataset = make_dataset(categories, images, seed=0)
    dataset.image_root = root / store.IMAGES_DIR
    dataset.image_root.mkdir(parents=True)
    placeholder = root / "placeholder.jpg"
    Image.new("RGB", (WIDTH, HEIGHT), (150, 150, 150)).save(placeholder, quality=80)
    for image in dataset.images.values():
        os.link(placeholder, dataset.image_root / image.file_name)
    dataset.info = {}
    store.save_dataset(dataset, root)
    commands.run_split(root, (0.5, 0.2, 0.3), seed=0)
    return len(commands.run_build_pairs(root).pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--categories", type=int, default=18)
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--work", type=Path, default=REPO / "benchmarks" / "_work")
    args = parser.parse_args()
    root, out = args.work / "report_store", args.work / "report_out"
    shutil.rmtree(root, ignore_errors=True)
    pairs = build_store(root, args.categories, args.images)
    start = time.perf_counter()
    summary = commands.run_report(root, out, ReportOptions())
    seconds = time.perf_counter() - start
    print(f"report: {pairs:,} pairs, {summary.pairs_drawn} sample pairs drawn, {seconds:.1f} s "
          f"({'PASS' if seconds <= 60 else 'FAIL'} against 60 s)")


if __name__ == "__main__":
    main()
