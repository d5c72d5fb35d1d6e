"""The whole MISC210K annotation loop against a real local Label Studio, reviewer simulated.

`coco`: the people of ../shared/data/coco-mini-train (every non-crowd person with at least one
labelled keypoint; the simulated reviewer labels with the COCO ground truth). `synth`: a
`semcorr synth` store of the three built-in categories. Either way the store starts with no
keypoints; the loop plans, runs the manual round, trains the ALM, pushes two review rounds with
its predictions, pulls the reviews, retrains, and evaluates PCK@0.1 of the box on the held-out
test instances after every training (beside the mean-shape baseline). Prints a JSON report.

Usage: .venv/bin/python benchmarks/annotation_loop.py coco --out /tmp/loop-coco [--epochs 30 --crop 192]

`--replay` (after a run, same --out): no Label Studio, no training. Replays the simulated reviewer
offline on the review rounds with the run's saved checkpoints (round N-1's ALM on round N's set,
exactly what the reviewer answered) for variants of the decisions: as run (the defaults), hiding
nothing, hiding at the calibrated P(visible) < 1/3 without the margin, hiding at the visibility
head's own (uncalibrated) P(visible) < 1/3, sub-cell positions fitted without the prior
(`predict(..., refine_without_prior=True)`, as the 12-03 morning run did), and the visibility fit
redone on the checkpoint's validation share; with held-out PCK@0.1 for each.
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


def replay(out: Path, truth: store.Dataset) -> dict:
    """The simulated reviewer's outcome for decision variants of the saved checkpoints (see the docstring)."""
    import dataclasses

    import numpy as np

    from semcorr.alm import train as alm_train
    from semcorr.alm.calibration import Calibration, fit_platt
    from semcorr.annotation.review import ACCEPT_RADIUS, pushable

    plan = json.loads((out / "annotation" / "plan.json").read_text())
    sets = {name: {int(k) for k, v in plan["images"].items() if v["set"] == name}
            for name in ("manual", "alm1", "alm2")}
    test_ids = {int(k) for k, v in plan["images"].items() if v["frozen_test"]}
    test = [i for i in truth.instances if i.image_id in test_ids and i.visible.any()]

    def shrunk(alm, round_index):
        """The checkpoint with its visibility fit redone on its own validation share (the images it was not
        trained on, `validation_split` of the images labelled by then) with the identity prior of `train`."""
        labelled = sets["manual"] - test_ids | (sets["alm1"] if round_index == 3 else set())
        trained = [i for i in truth.instances if i.image_id in labelled and i.visible.any()]
        options = alm_train.TrainOptions()
        _, validation = alm_train.validation_split(trained, options.validation_share, options.min_validation,
                                                   options.seed, options.min_validation_points)
        _, _, raw_visible, truly_visible = alm_train.validation_scores(alm, truth, validation)
        fit = fit_platt(raw_visible, truly_visible, prior_points=alm_train.VISIBILITY_PRIOR_POINTS)
        return dataclasses.replace(alm, visibility_calibration=fit), fit

    def variants(alm, round_index):
        """(name, ALM, fit sub-cell positions without the prior) for each decision variant."""
        yield "as run (the defaults)", alm, False
        yield "no hiding", dataclasses.replace(alm, visibility_calibration=Calibration()), False
        fit = alm.visibility_calibration
        if fit.points:
            yield "hide at p < 1/3, no margin", dataclasses.replace(
                alm, visibility_calibration=dataclasses.replace(fit, var_a=0.0, cov_ab=0.0, var_b=0.0)), False
        yield "hide at raw head P(visible) < 1/3", dataclasses.replace(
            alm, visibility_calibration=Calibration(points=1)), False
        yield "sub-cell position without the prior (the 12-03 morning run)", alm, True
        refit, fit = shrunk(alm, round_index)
        yield (f"visibility refit with the identity prior ({fit.points} points, a={fit.a:.2f}, b={fit.b:.2f})",
               refit, False)

    rows = []
    for round_index, image_set in ((2, "alm1"), (3, "alm2")):
        alm = alm_train.load_checkpoint(out / "annotation" / f"alm_round{round_index - 1}.pt")
        members = [i for i in truth.instances if i.image_id in sets[image_set]]
        for name, variant, refine in variants(alm, round_index):
            predicted = alm_train.predict(variant, truth, members, refine_without_prior=refine)
            held_out = alm_train.pck_of_box(alm_train.predict(variant, truth, test, refine_without_prior=refine), test)
            c = dict.fromkeys(("predicted", "accepted", "dragged", "discarded", "added", "hidden", "hidden_labelled"),
                              0)
            expected = []
            for inst in members:
                row, image = predicted[inst.id], truth.images[inst.image_id]
                side = max(inst.bbox[2], inst.bbox[3])
                for k in range(len(row)):
                    shown = pushable(row[k, 0], row[k, 1], row[k, 2], image)
                    labelled = bool(inst.visible[k])
                    if not shown:
                        c["hidden"] += 1
                        c["hidden_labelled"] += labelled
                        c["added"] += labelled
                        continue
                    c["predicted"] += 1
                    expected.append(row[k, 3])
                    if not labelled:
                        c["discarded"] += 1
                    elif np.hypot(*(row[k, :2] - inst.keypoints[k, :2])) <= ACCEPT_RADIUS * side:
                        c["accepted"] += 1
                    else:
                        c["dragged"] += 1
            scratch = 2 * (c["accepted"] + c["dragged"] + c["added"])
            with_alm = c["dragged"] + c["discarded"] + 2 * c["added"]
            rows.append({"round": round_index, "variant": name, **c,
                         "acceptance": round(c["accepted"] / max(c["predicted"], 1), 4),
                         "expected_acceptance": round(float(np.mean(expected)), 4) if expected else None,
                         "clicks_saved": scratch - with_alm, "clicks_from_scratch": scratch,
                         "held_out_pck": round(held_out, 1)})
    return {"replay": rows, "test_instances": len(test)}


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
    parser.add_argument("--replay", action="store_true", help="replay a finished run's review rounds offline")
    args = parser.parse_args()
    if args.replay:
        with tempfile.TemporaryDirectory() as scratch:
            truth = coco_people(Path(scratch)) if args.source == "coco" else synthetic(Path(scratch), args.images)
            print(json.dumps(replay(args.out, truth), indent=1))
        return 0
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
