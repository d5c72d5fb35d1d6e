"""Full-scale benchmark: COCO-2017-sized inputs without pixels, each command timed in its own process.

Generates, with a seed:

- `instances.json`: 118,287 images and about 860,000 annotations in COCO 2017's category mix
  (80 categories, person about 30%), polygons for most instances, compressed RLE for some,
  crowd regions as uncompressed RLE (about 1%), box sizes spread over COCO's small / medium /
  large; an `images/` folder of empty placeholders (hard links to one empty file: coco-filter
  checks that each image exists, it never reads pixels on this path);
- `store/`: a dataset directory with 1,000,000 instances of the 34 MISC categories (1 to 4 per
  image, 5 to 30 keypoints per category, polygons, azimuth bins, truncation / occlusion flags).

Then runs `coco-filter`, loading (and loading + saving) the dataset directory, `split`,
`build-pairs --mode misc`, `export coco` and `validate`, each in a fresh process, and reports
wall seconds and the process's peak resident memory (`wait4` rusage of that child).
Targets on a 2-core machine: each <= 120 s and <= 8 GB.

Usage: .venv/bin/python benchmarks/bench_full_scale.py [--scale 1.0] [--work DIR] [--seed 0] [--steps ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
COCO_IMAGES = 118_287
COCO_ANNOTATIONS = 860_001
STORE_INSTANCES = 1_000_000
# COCO 2017 train instance counts per category (the real mix, rounded to the nearest ten)
COCO_MIX = {
    "person": 262470, "bicycle": 7110, "car": 43870, "motorcycle": 8730, "airplane": 5140, "bus": 6070,
    "train": 4570, "truck": 9970, "boat": 10760, "traffic light": 12880, "fire hydrant": 1870, "stop sign": 1980,
    "parking meter": 1290, "bench": 9840, "bird": 10810, "cat": 4770, "dog": 5510, "horse": 6590, "sheep": 9510,
    "cow": 8150, "elephant": 5510, "bear": 1290, "zebra": 5300, "giraffe": 5130, "backpack": 8720,
    "umbrella": 11430, "handbag": 12350, "tie": 6500, "suitcase": 6190, "frisbee": 2680, "skis": 6650,
    "snowboard": 2690, "sports ball": 6350, "kite": 9080, "baseball bat": 3280, "baseball glove": 3750,
    "skateboard": 5540, "surfboard": 6130, "tennis racket": 4810, "bottle": 24340, "wine glass": 7910,
    "cup": 20650, "fork": 5480, "knife": 7770, "spoon": 6170, "bowl": 14360, "banana": 9460, "apple": 5850,
    "sandwich": 4370, "orange": 6400, "broccoli": 7310, "carrot": 7850, "hot dog": 2920, "pizza": 5820,
    "donut": 7180, "cake": 6350, "chair": 38490, "couch": 5780, "potted plant": 8650, "bed": 4190,
    "dining table": 15710, "toilet": 4160, "tv": 5810, "laptop": 4970, "mouse": 2260, "remote": 5700,
    "keyboard": 2860, "cell phone": 6430, "microwave": 1670, "oven": 3330, "toaster": 230, "sink": 5610,
    "refrigerator": 2640, "book": 24720, "clock": 6330, "vase": 6610, "scissors": 1480, "teddy bear": 4790,
    "hair drier": 200, "toothbrush": 1950,
}
IMAGE_SIZES = ((640, 480), (480, 640), (640, 427), (427, 640), (640, 360), (500, 375), (612, 612))


def _image_records(count: int, rng: np.random.Generator) -> list[dict]:
    sizes = np.asarray(IMAGE_SIZES)[rng.choice(len(IMAGE_SIZES), size=count, p=[.4, .15, .2, .08, .07, .05, .05])]
    return [{"id": i + 1, "file_name": f"{i + 1:012d}.jpg", "width": int(w), "height": int(h)}
            for i, (w, h) in enumerate(sizes.tolist())]


def _boxes(width: np.ndarray, height: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(N, 4) COCO boxes: areas log-uniform over COCO's small / medium / large, about 20% at the border."""
    n = len(width)
    area = np.exp(rng.uniform(np.log(60), np.log(0.6 * width * height), n))
    aspect = np.exp(rng.uniform(-0.9, 0.9, n))
    w = np.clip(np.sqrt(area * aspect), 4, width - 1)
    h = np.clip(area / w, 4, height - 1)
    x = rng.uniform(0, width - w)
    y = rng.uniform(0, height - h)
    edge = rng.random(n)
    x = np.where(edge < 0.07, 0.0, np.where(edge > 0.93, width - w, x))
    y = np.where((edge > 0.07) & (edge < 0.14), height - h, y)
    return np.round(np.stack([x, y, w, h], axis=1), 2)


def _polygon(box: np.ndarray, points: int, phase: float) -> list[float]:
    """An ellipse-like polygon inside `box` (x, y, w, h)."""
    angles = phase + np.linspace(0, 2 * np.pi, points, endpoint=False)
    radius = 0.85 + 0.15 * np.cos(3 * angles)
    x = box[0] + box[2] * (0.5 + 0.5 * radius * np.cos(angles))
    y = box[1] + box[3] * (0.5 + 0.5 * radius * np.sin(angles))
    return np.round(np.stack([x, y], axis=1).ravel(), 2).tolist()


def _box_rle(box: np.ndarray, width: int, height: int) -> list[int]:
    """Uncompressed (column-major) RLE runs of the pixels of `box`."""
    x0, y0 = int(box[0]), int(box[1])
    x1, y1 = min(width, int(np.ceil(box[0] + box[2]))), min(height, int(np.ceil(box[1] + box[3])))
    h = y1 - y0
    runs = [x0 * height + y0]
    for _ in range(x0, x1 - 1):
        runs += [h, height - h]
    runs += [h, width * height - sum(runs) - h]
    return runs


def _compressed_rle(polygon: list[float], width: int, height: int) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.frPyObjects([polygon], height, width)[0]
    return {"size": [height, width], "counts": rle["counts"].decode("ascii")}


def make_instances(images: int = COCO_IMAGES, annotations: int = COCO_ANNOTATIONS, seed: int = 0) -> dict:
    """A COCO instances dictionary of the given size in COCO 2017's category mix (no keypoints)."""
    rng = np.random.default_rng(seed)
    names = list(COCO_MIX)
    weights = np.array([COCO_MIX[n] for n in names], dtype=np.float64)
    image_records = _image_records(images, rng)
    image_of = np.sort(rng.integers(0, images, annotations))
    # instances of one image come in runs of one category (1 to 6), as in COCO
    category_of = np.empty(annotations, dtype=np.int64)
    start = 0
    while start < annotations:
        run = int(rng.integers(1, 7))
        category_of[start:start + run] = rng.choice(len(names), p=weights / weights.sum())
        start += run
    widths = np.array([image_records[i]["width"] for i in image_of])
    heights = np.array([image_records[i]["height"] for i in image_of])
    boxes = _boxes(widths, heights, rng)
    kind = rng.random(annotations)  # < 0.01 crowd (uncompressed RLE), < 0.04 compressed RLE, else polygons
    points = rng.integers(8, 40, annotations)
    records = []
    for index in range(annotations):
        box, width, height = boxes[index], int(widths[index]), int(heights[index])
        polygon = _polygon(box, int(points[index]), float(kind[index]) * 6.283)
        if kind[index] < 0.01:
            segmentation = {"size": [height, width], "counts": _box_rle(box, width, height)}
        elif kind[index] < 0.04:
            segmentation = _compressed_rle(polygon, width, height)
        else:
            segmentation = [polygon]
        records.append({"id": index + 1, "image_id": int(image_of[index]) + 1,
                        "category_id": int(category_of[index]) + 1, "bbox": box.tolist(),
                        "area": round(float(box[2] * box[3] * 0.7), 2), "iscrowd": int(kind[index] < 0.01),
                        "segmentation": segmentation})
    categories = [{"id": i + 1, "name": n, "supercategory": "thing"} for i, n in enumerate(names)]
    return {"info": {"description": f"semcorr synthetic COCO-2017-sized instances, seed {seed}"},
            "images": image_records, "annotations": records, "categories": categories}


def make_store(instances: int = STORE_INSTANCES, categories: int = 34, seed: int = 0) -> dict:
    """`annotations.json` of a dataset directory with `instances` instances (1 to 4 per image)."""
    from semcorr.builders.coco_filter import MISC_CATEGORIES

    rng = np.random.default_rng(seed)
    per_image = rng.integers(1, 5, instances)  # drawn generously; cut at `instances`
    per_image = per_image[: int(np.searchsorted(np.cumsum(per_image), instances)) + 1]
    per_image[-1] -= int(per_image.sum()) - instances
    image_count = len(per_image)
    image_records = _image_records(image_count, rng)
    num_keypoints = rng.integers(5, 31, categories)
    category_records = [{"id": c + 1, "name": MISC_CATEGORIES[c % len(MISC_CATEGORIES)] + ("" if c < 34 else f"_{c}"),
                         "supercategory": "thing", "keypoints": [f"kp{k}" for k in range(num_keypoints[c])],
                         "skeleton": [[k + 1, k + 2] for k in range(num_keypoints[c] - 1)],
                         "keypoint_descriptions": [], "flip_pairs": [], "schema_version": 1}
                        for c in range(categories)]
    image_of = np.repeat(np.arange(image_count), per_image)
    category_of = np.repeat(rng.integers(0, categories, image_count), per_image)
    widths = np.array([r["width"] for r in image_records])[image_of]
    heights = np.array([r["height"] for r in image_records])[image_of]
    boxes = _boxes(widths, heights, rng)
    points = rng.integers(10, 30, instances)
    azimuth = rng.integers(-1, 8, instances)
    flags = rng.random((instances, 2)) < (0.2, 0.15)
    records = []
    for index in range(instances):
        box = boxes[index]
        k = int(num_keypoints[category_of[index]])
        vis = rng.choice(3, size=k, p=(0.5, 0.1, 0.4))
        xy = np.round(box[:2] + rng.random((k, 2)) * box[2:], 2)
        flat = np.zeros((k, 3))
        flat[vis > 0, :2] = xy[vis > 0]
        flat[:, 2] = vis
        keypoints = [v for x, y, s in flat.tolist() for v in ((x, y, int(s)) if s else (0, 0, 0))]
        attributes = {"source": "coco", "azimuth_bin": None if azimuth[index] < 0 else int(azimuth[index]),
                      "truncated": bool(flags[index, 0]), "occluded": bool(flags[index, 1])}
        records.append({"id": index + 1, "image_id": int(image_of[index]) + 1,
                        "category_id": int(category_of[index]) + 1, "bbox": box.tolist(),
                        "area": round(float(box[2] * box[3] * 0.7), 2), "iscrowd": 0,
                        "segmentation": [_polygon(box, int(points[index]), float(index % 7))],
                        "keypoints": keypoints, "num_keypoints": int((vis > 0).sum()), "attributes": attributes})
    return {"info": {"description": f"semcorr synthetic 1M-instance store, seed {seed}", "image_root": "images"},
            "images": image_records, "annotations": records, "categories": category_records}


def placeholder_images(folder: Path, records: list[dict]) -> None:
    """Empty files named like the images (hard links to one empty file: no pixels, no per-file inode)."""
    folder.mkdir(parents=True, exist_ok=True)
    for index, record in enumerate(records):
        empty = folder / f".empty{index // 60000}"  # ext4 allows 65,000 links to one file
        empty.touch()
        target = folder / record["file_name"]
        if not target.exists():
            os.link(empty, target)


def write_json(path: Path, obj: dict) -> None:
    """Compact JSON, as the store writes it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, ensure_ascii=False) + "\n")


def measure(argv: list[str], log: Path) -> tuple[float, float, float, int]:
    """Run `argv` in a child process: (wall seconds, CPU seconds, peak resident GB of that child, exit code).

    CPU seconds (user + system) say what the step costs when the cores are not shared.
    """
    start = time.perf_counter()
    with log.open("w") as out:
        child = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        _, status, usage = os.wait4(child.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return time.perf_counter() - start, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024**2, code


def steps(work: Path) -> dict[str, list[str]]:
    """The measured commands (each runs in a fresh process)."""
    semcorr = [str(Path(sys.executable).parent / "semcorr")]
    py = sys.executable
    store = work / "store"
    return {
        "coco-filter": [*semcorr, "coco-filter", str(work / "coco" / "instances.json"), str(work / "coco" / "images"),
                        str(work / "filtered")],
        "load": [py, "-c", (f"from semcorr import store; d = store.load_dataset({str(store)!r}); "
                            "print(len(d.instances))")],
        "load + save": [py, "-c", (f"from semcorr import store; d = store.load_dataset({str(store)!r}); "
                                   f"store.save_dataset(d, {str(work / 'saved')!r})")],
        "split": [*semcorr, "split", str(store)],
        "build-pairs --mode misc": [*semcorr, "build-pairs", str(store), "--mode", "misc"],
        "export coco": [*semcorr, "export", "coco", str(store), str(work / "export" / "coco.json")],
        "validate": [*semcorr, "validate", str(store)],
    }


def generate(work: Path, scale: float, seed: int) -> None:
    """Write the instances JSON, its placeholder images and the store (skipped when already there)."""
    coco_dir, store_dir = work / "coco", work / "store"
    if not (coco_dir / "instances.json").exists():
        start = time.perf_counter()
        coco = make_instances(int(COCO_IMAGES * scale), int(COCO_ANNOTATIONS * scale), seed)
        placeholder_images(coco_dir / "images", coco["images"])
        write_json(coco_dir / "instances.json", coco)
        print(f"generated instances.json: {len(coco['images'])} images, {len(coco['annotations'])} annotations "
              f"in {time.perf_counter() - start:.0f} s", flush=True)
        del coco
    if not (store_dir / "annotations.json").exists():
        start = time.perf_counter()
        coco = make_store(int(STORE_INSTANCES * scale), seed=seed)
        placeholder_images(store_dir / "images", coco["images"])
        write_json(store_dir / "annotations.json", coco)
        print(f"generated store: {len(coco['images'])} images, {len(coco['annotations'])} instances "
              f"in {time.perf_counter() - start:.0f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="share of the full size (0.1 for a tenth)")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "_work" / "full_scale")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", nargs="*", default=None, help="only these steps (names as printed)")
    args = parser.parse_args()
    generate(args.work, args.scale, args.seed)
    (args.work / "logs").mkdir(exist_ok=True)
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"{'step':<26}{'wall s':>9}{'CPU s':>9}{'peak GB':>9}  target (<= 120 s, <= 8 GB)")
    for name, argv in steps(args.work).items():
        if args.steps is not None and name not in args.steps:
            continue
        before = os.getloadavg()[0]
        seconds, cpu, peak, code = measure(argv, args.work / "logs" / f"{name.replace(' ', '_')}.log")
        verdict = "error (see log)" if code else ("met" if seconds <= 120 and peak <= 8 else "MISSED")
        print(f"{name:<26}{seconds:>9.1f}{cpu:>9.1f}{peak:>9.2f}  {verdict}   load {before:.2f} -> "
              f"{os.getloadavg()[0]:.2f}", flush=True)


if __name__ == "__main__":
    main()
