"""The whole MISC210K annotation loop against a real local Label Studio, reviewer simulated.

`coco`: the people of ../shared/data/coco-mini-train (every non-crowd person with at least one
labelled keypoint; the simulated reviewer labels with the COCO ground truth). `synth`: a
`semcorr synth` store of the three built-in categories. Either way the store starts with no
keypoints; the loop plans, runs the manual round, trains the ALM, pushes two review rounds with
its predictions, pulls the reviews, retrains, and evaluates PCK@0.1 of the box on the held-out
test instances after every training (beside the mean-shape baseline). Prints a JSON report.

Usage: .venv/bin/python benchmarks/annotation_loop.py coco --out /tmp/loop-coco [--epochs 30 --crop 192]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from semcorr import commands, store  # noqa: E402
from semcorr.alm.train import TrainOptions  # noqa: E402
from semcorr.annotation import server  # noqa: E402
from semcorr.annotation.labelstudio import LabelStudio  # noqa: E402
from semcorr.annotation.simulate import run_loop, unlabelled  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco-mini-train"


def coco_people(out: Path) -> store.Dataset:
    """A store of the COCO people with keypoints (crowds and unlabelled people left out)."""
    raw = json.loads((SHARED / "annotations" / "person_keypoints_train2017.json").read_text())
    raw["annotations"] = [a for a in raw["annotations"] if a["num_keypoints"] > 0 and not a["iscrowd"]]
    kept = {a["image_id"] for a in raw["annotations"]}
    raw["images"] = [im for im in raw["images"] if im["id"] in kept]
    raw["info"] = {"description": "COCO people with keypoints", "image_root": str((SHARED / "images").resolve())}
    dataset = store.dataset_from_coco(raw, SHARED / "annotations" / "person_keypoints_train2017.json",
                                     (SHARED / "images").resolve())
    store.save_dataset(dataset, out)
    return dataset


def synthetic(out: Path, images: int) -> store.Dataset:
    """A rendered store of the three built-in categories."""
    from semcorr.synth.generate import SynthOptions
    from semcorr.synth.prototypes import builtin_prototype

    prototypes = [builtin_prototype(name) for name in ("chair", "car", "airplane")]
    commands.run_synth(out, prototypes, SynthOptions(images_per_category=images, width=320, height=240, seed=0))
    return store.load_dataset(out)


def main() -> int:
    """Run the loop and print its report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", choices=("coco", "synth"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--images", type=int, default=40, help="synth: images per category")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--crop", type=int, default=192)
    parser.add_argument("--backbone", default="efficientnet-lite0")
    parser.add_argument("--manual", type=float, default=0.5)
    parser.add_argument("--first", type=float, default=0.3)
    parser.add_argument("--test", type=float, default=0.2, help="share of images in the frozen test split")
    args = parser.parse_args()
    if args.out.exists():
        shutil.rmtree(args.out)
    truth = coco_people(args.out) if args.source == "coco" else synthetic(args.out, args.images)
    commands.run_split(args.out, (1 - args.test, 0.0, args.test), seed=0)
    store.save_dataset(unlabelled(truth), args.out)
    options = TrainOptions(backbone=args.backbone, pretrained=args.backbone != "scratch", crop_size=args.crop,
                           epochs=args.epochs, batch_size=16, seed=0)
    started = time.perf_counter()
    running = server.start(Path(tempfile.mkdtemp(prefix="semcorr-ls-")),
                           image_roots=[store.load_dataset(args.out, check_files=False).image_root])
    try:
        client = LabelStudio(running.url, running.token)
        report = run_loop(args.out, truth, client, options, args.manual, args.first, seed=0)
    finally:
        running.stop()
    plan = json.loads((args.out / "annotation" / "plan.json").read_text())
    sets = {name: sum(v["set"] == name for v in plan["images"].values()) for name in ("manual", "alm1", "alm2")}
    print(json.dumps({"source": args.source, "images": len(truth.images), "instances": len(truth.instances),
                      "plan": sets, "frozen_test_images": sum(v["frozen_test"] for v in plan["images"].values()),
                      "backbone": args.backbone, "crop": args.crop, "epochs": args.epochs,
                      "rounds": report.rounds, "evaluations": report.evaluations,
                      "total_seconds": round(time.perf_counter() - started, 1)}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
