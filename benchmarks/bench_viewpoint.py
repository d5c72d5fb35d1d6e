"""Compare the viewpoint fits: weak perspective vs cv2.solvePnP (focal = longer image side) on synthetic renders.

Renders a synthetic store (built-in categories, known azimuth per instance), estimates each
instance's azimuth bin from its labelled keypoints with both methods, and counts bins that are
exact and within one bin (circular) of the truth, per category. `--noise` adds Gaussian noise
(sigma = that share of the box diagonal, seeded) to the keypoints, as a stand-in for human clicks.

Usage: .venv/bin/python benchmarks/bench_viewpoint.py [--images 80] [--noise 0.0 --noise 0.02] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from semcorr import commands, store
from semcorr.builders.labels import azimuth_bin_distance
from semcorr.builders.viewpoint import METHODS, estimate_viewpoint
from semcorr.synth.generate import SynthOptions
from semcorr.synth.prototypes import builtin_prototype

CATEGORIES = ("chair", "car", "airplane")


def compare(dataset: store.Dataset, noise: float, seed: int) -> pd.DataFrame:
    """One row per (category, method): instances estimated, exact bins, bins within one, share of each."""
    rng = np.random.default_rng(seed)
    rows = []
    for inst in dataset.instances:
        category = dataset.categories[inst.category_id]
        prototype = builtin_prototype(category.name)
        index = {n: i for i, n in enumerate(prototype.schema.names)}
        xyz = np.array([prototype.keypoints_xyz[index[n]] for n in category.keypoints])
        keypoints = inst.keypoints.copy()
        keypoints[:, :2] += rng.normal(0, noise * np.hypot(inst.bbox[2], inst.bbox[3]), keypoints[:, :2].shape)
        image = dataset.images[inst.image_id]
        for method in METHODS:
            estimate = estimate_viewpoint(xyz, keypoints, inst.bbox, method, (image.width, image.height))
            if estimate is None:
                continue
            distance = int(azimuth_bin_distance(estimate.azimuth_bin, inst.azimuth_bin))
            rows.append({"category": category.name, "method": method, "exact": distance == 0,
                         "within_one": distance <= 1})
    frame = pd.DataFrame(rows)
    table = frame.groupby(["category", "method"]).agg(instances=("exact", "size"), exact=("exact", "mean"),
                                                      within_one=("within_one", "mean"))
    overall = frame.groupby("method").agg(instances=("exact", "size"), exact=("exact", "mean"),
                                          within_one=("within_one", "mean"))
    overall.index = pd.MultiIndex.from_product([["all"], overall.index], names=["category", "method"])
    return pd.concat([table, overall]).round(3)


def markdown(table: pd.DataFrame) -> str:
    """The table as a GitHub markdown table (no extra dependency)."""
    header = ["category", "method", *table.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (category, method), row in table.iterrows():
        lines.append("| " + " | ".join([category, method, *(f"{v:g}" for v in row)]) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=80, help="images per category")
    parser.add_argument("--noise", type=float, action="append", help="keypoint noise, share of box diagonal")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "synth"
        options = SynthOptions(images_per_category=args.images, seed=args.seed)
        commands.run_synth(root, [builtin_prototype(n) for n in CATEGORIES], options)
        dataset = store.load_dataset(root)
    for noise in args.noise or [0.0, 0.02]:
        print(f"\n### keypoint noise {noise:g} x box diagonal\n")
        print(markdown(compare(dataset, noise, args.seed)))


if __name__ == "__main__":
    main()
