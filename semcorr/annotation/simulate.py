"""A simulated reviewer that answers pushed rounds through Label Studio's HTTP API from known
truth, and the whole MISC210K loop driven with it (manual round, ALM, two review rounds).

The reviewer behaves like a careful person: a predicted keypoint within `accept_fraction` (by
default ACCEPT_RADIUS, 5%, the radius the ALM's scores are calibrated to) of the box's longer
side from the truth is left where it is (accepted), a farther one is moved
onto the truth (dragged), one that is not visible in the truth is deleted (discarded), and a
visible keypoint the ALM missed is added. In a manual round every visible keypoint is placed.
"""

from __future__ import annotations

import copy
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from semcorr.annotation.labelstudio import LabelStudio
from semcorr.annotation.review import ACCEPT_RADIUS, find_project, instance_regions, model_version, project_title
from semcorr.store import Category, Dataset, ImageInfo, Instance


def unlabelled(dataset: Dataset) -> Dataset:
    """A copy of the dataset with every keypoint removed (what annotation starts from)."""
    out = copy.deepcopy(dataset)
    for inst in out.instances:
        inst.keypoints[:] = (np.nan, np.nan, 0)
    return out


def reviewed_result(predicted: list[dict], truth: list[Instance], category: Category, image: ImageInfo,
                    accept_fraction: float, reviewing: bool, hidden: Counter | None = None
                    ) -> tuple[list[dict], Counter]:
    """The result a careful reviewer submits for one task, and the actions it amounts to
    (`reviewing`: the task carries ALM predictions, so new points count as added, not manual).

    `hidden`, when given and `reviewing`, counts the keypoints the ALM did not show (`hidden`) and
    how many of those the truth labels (`hidden_labelled`, the reviewer adds them)."""
    predicted_points = {r["id"]: r for r in predicted if r.get("type") == "keypointlabels"}
    result = [copy.deepcopy(r) for r in predicted if r.get("type") == "rectanglelabels"]
    actions: Counter = Counter()
    for inst in truth:
        if not any(r["id"] == f"a{inst.id}" for r in result):
            result += instance_regions(inst, category, image, np.zeros_like(inst.keypoints))
        exact = {r["id"]: r for r in instance_regions(inst, category, image)}
        side = max(inst.bbox[2], inst.bbox[3])
        for index in range(category.num_keypoints):
            region_id = f"a{inst.id}k{index}"
            guess, right = predicted_points.get(region_id), exact.get(region_id)
            if hidden is not None and reviewing and guess is None:
                hidden["hidden"] += 1
                hidden["hidden_labelled"] += int(right is not None)
            if guess is not None and right is None:
                actions["discarded"] += 1
                continue
            if right is None:
                continue
            if guess is None:
                added = dict(right, id=f"r{inst.id}k{index}")
                result.append(added)
                actions["added" if reviewing else "manual"] += 1
                continue
            guess_xy = np.array([guess["value"]["x"] * image.width, guess["value"]["y"] * image.height]) / 100
            moved = float(np.hypot(*(guess_xy - inst.keypoints[index, :2])))
            kept = moved <= accept_fraction * side
            region = {k: v for k, v in (guess if kept else right).items() if k != "score"}
            result.append(region)
            actions["accepted" if kept else "dragged"] += 1
    return result, actions


def review_round(client: LabelStudio, root: Path, truth: Dataset, round_index: int,
                 accept_fraction: float = ACCEPT_RADIUS, hidden: Counter | None = None) -> Counter:
    """Answer every unannotated task of a round from `truth`; returns the actions submitted
    (`hidden`: see `reviewed_result`)."""
    version = model_version(round_index)
    actions: Counter = Counter()
    for category in sorted(truth.categories.values(), key=lambda c: c.id):
        project = find_project(client, project_title(root, category.name))
        if project is None:
            continue
        for task in client.all_tasks(project["id"]):
            if task["data"].get("semcorr_round") != round_index or task.get("total_annotations", 0):
                continue
            image_id = task["data"]["semcorr_image_id"]
            versions = {p.get("model_version"): p["result"] for p in task.get("predictions", [])}
            predicted = versions.get(version, versions.get("boxes", []))
            members = [i for i in truth.instances if i.image_id == image_id and i.category_id == category.id]
            result, done = reviewed_result(predicted, members, category, truth.images[image_id], accept_fraction,
                                           reviewing=version in versions, hidden=hidden)
            client.call(f"POST /api/tasks/{task['id']}/annotations", client.sdk.annotations.create, task["id"],
                        result=result)
            actions += done
    return actions


@dataclass
class LoopReport:
    """What each step of a simulated loop did and measured."""

    rounds: list[dict] = field(default_factory=list)
    evaluations: list[dict] = field(default_factory=list)


def run_loop(root: Path, truth: Dataset, client: LabelStudio, train_options, manual: float = 0.4,
             first: float = 0.3, seed: int = 0, accept_fraction: float = ACCEPT_RADIUS, progress=None,
             auto_accept: float | None = None) -> LoopReport:
    """Plan, manual round, ALM round 1, review round 2, retrain, review round 3, retrain.

    `root` must hold the unlabelled store (see `unlabelled`) with its splits; `truth` is what
    the simulated reviewer labels with. After each training the ALM is evaluated on the
    held-out (test) instances, beside the mean-shape baseline. `auto_accept` is `review push
    --auto-accept` for the review rounds (2 and 3).
    """
    from semcorr import commands

    report = LoopReport()
    commands.run_annotate_plan(root, manual, first, seed)
    for round_index in (1, 2, 3):
        pushed = commands.run_review_push(root, round_index, client.url, client.token,
                                          auto_accept=auto_accept if round_index > 1 else None)
        hidden: Counter = Counter()
        submitted = review_round(client, root, truth, round_index, accept_fraction, hidden=hidden)
        pulled, _, changed = commands.run_review_pull(root, round_index, client.url, client.token)
        report.rounds.append({"round": round_index, "pushed": pushed, "submitted": dict(submitted),
                              "hidden": dict(hidden), "report": pulled, "changed": changed})
        start = time.perf_counter()
        alm, path, trained_on, warm = commands.run_alm_train(root, round_index, train_options, progress=progress)
        seconds = time.perf_counter() - start
        scores = commands.run_alm_eval(root, path, "test")
        report.evaluations.append({"after_round": round_index, "trained_on": trained_on, "warm_start": warm,
                                   "train_seconds": round(seconds, 1), **scores,
                                   "hides": bool(alm.visibility_calibration.points),
                                   "visibility_calibration": alm.visibility_calibration.to_dict(),
                                   "visibility_evidence": alm.visibility_evidence})
    return report

