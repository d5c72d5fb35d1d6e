"""Review round trip at scale: push 1,000 tasks with ALM predictions to a real local Label
Studio (batched import), answer them all through the API (the simulated reviewer, not timed),
and pull them back (export, raw export saved, classification, merge into the store).
Targets: push <= 30 s, pull <= 30 s.

Usage: .venv/bin/python benchmarks/bench_review.py [--tasks 1000] [--url URL --token TOKEN]
(without --url a local server is started in a temporary folder, which takes about a minute).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from semcorr import store  # noqa: E402
from semcorr.annotation import review, server  # noqa: E402
from semcorr.annotation.labelstudio import LabelStudio  # noqa: E402
from semcorr.annotation.simulate import review_round  # noqa: E402

KEYPOINTS = 10


def make_store(root: Path, count: int, seed: int = 0) -> tuple[store.Dataset, dict[int, np.ndarray]]:
    """`count` images of one instance with 10 keypoints each, and predictions near the truth."""
    rng = np.random.default_rng(seed)
    images_dir = root / "images"
    images_dir.mkdir(parents=True)
    Image.fromarray(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)).save(images_dir / "0.jpg")
    category = store.Category(id=1, name="thing", keypoints=tuple(f"p{i}" for i in range(KEYPOINTS)))
    images, instances, predictions = {}, [], {}
    for image_id in range(1, count + 1):
        (images_dir / f"{image_id}.jpg").hardlink_to(images_dir / "0.jpg")
        images[image_id] = store.ImageInfo(image_id, f"{image_id}.jpg", 320, 240)
        xy = rng.uniform([60, 40], [260, 200], (KEYPOINTS, 2))
        visibility = np.where(rng.random(KEYPOINTS) < 0.8, 2, 0)
        keypoints = np.column_stack([np.where(visibility[:, None] == 2, xy, np.nan), visibility])
        instances.append(store.Instance(id=image_id, image_id=image_id, category_id=1, bbox=[50, 30, 220, 180],
                                        keypoints=keypoints))
        guess = xy + rng.normal(0, 8, xy.shape)
        predictions[image_id] = np.column_stack([guess, np.where(rng.random(KEYPOINTS) < 0.85, 2, 0),
                                                 rng.uniform(0.3, 1.0, KEYPOINTS)])
    dataset = store.Dataset(images=images, categories={1: category}, instances=instances,
                            image_root=images_dir.resolve())
    store.save_dataset(dataset, root)
    return dataset, predictions


def main() -> int:
    """Time push and pull of one round."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--url")
    parser.add_argument("--token")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="semcorr-bench-review-"))
    root = work / "dataset"
    truth, predictions = make_store(root, args.tasks)
    running = None
    if args.url is None:
        running = server.start(work / "label-studio",
                               image_roots=[store.load_dataset(root, check_files=False).image_root])
        args.url, args.token = running.url, running.token
    try:
        client = LabelStudio(args.url, args.token)
        dataset = store.load_dataset(root)
        for inst in dataset.instances:
            inst.keypoints[:] = (np.nan, np.nan, 0)
        start = time.perf_counter()
        counts = review.push(client, root, dataset, sorted(dataset.images), 2, predictions)
        push_s = time.perf_counter() - start
        start = time.perf_counter()
        submitted = review_round(client, root, truth, 2)
        answer_s = time.perf_counter() - start
        start = time.perf_counter()
        reviews = review.pull(client, root, dataset, 2)
        changed = review.merge(dataset, reviews, 2)
        store.save_dataset(dataset, root)
        pull_s = time.perf_counter() - start
        report = review.round_report(reviews, dataset)
    finally:
        if running is not None:
            running.stop()
    print(f"tasks {args.tasks}: push {push_s:.1f} s ({counts}); reviewer answered in {answer_s:.1f} s; "
          f"pull + merge {pull_s:.1f} s ({len(reviews)} tasks, {changed} keypoints written)")
    print(f"submitted {dict(submitted)}; pulled accepted {report['accepted']}, dragged {report['dragged']}, "
          f"discarded {report['discarded']}, added {report['added']}; "
          f"pre-label PCK@0.1 {report['alm_pck_before_review']:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
