"""The Label Studio review round trip: labelling config, tasks, push, pull, action classes, merge.

Regions follow Label Studio's COCO keypoint export: one `RectangleLabels` region per instance
(id `a<ann_id>`) and its keypoints as `KeyPointLabels` regions tied to it by `parentID`
(id `a<ann_id>k<index>`), labels carrying `model_index` in schema order, coordinates in
percent of the image. Only visible keypoints (visibility 2) are regions; every prediction
region carries the ALM's confidence as `score`.
"""

from __future__ import annotations

import hashlib
import json
import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import quoteattr

import numpy as np

from semcorr.annotation.labelstudio import HTTPStatusError, LabelStudio, to_plain
from semcorr.annotation.plan import write_new
from semcorr.errors import SemcorrError
from semcorr.paths import safe_component, safe_relative
from semcorr.store import Category, Dataset, ImageInfo, Instance

ACCEPT_TOLERANCE_PX = 1.5
ACTIONS = ("accepted", "dragged", "discarded", "added", "manual")
# the reviewer's acceptance radius, as a share of the box's longer side: the radius the ALM's scores are
# calibrated to (semcorr.alm.calibration.ACCEPT_RADIUS, kept equal by a test) and the simulated reviewer uses
ACCEPT_RADIUS = 0.05
# provenance of keypoints a person placed or decided: never overwritten by a machine
AUTO_ACCEPTED = "auto-accepted"
RELIABILITY_BINS = 5
# the click model of `reviewer_effort` (see its docstring)
CLICKS = {"scratch": 2, "accepted": 0, "dragged": 1, "discarded": 1, "added": 2, "manual": 2, "replaced": 3}


def labeling_config(category: Category) -> str:
    """Label Studio XML: the image, one box label for the category, one keypoint label per keypoint."""
    labels = "\n".join(f'    <Label value={quoteattr(name)} model_index="{index}"/>'
                       for index, name in enumerate(category.keypoints))
    return (f'<View>\n  <Image name="image" value="$image" zoom="true"/>\n'
            f'  <RectangleLabels name="instance" toName="image">\n    <Label value={quoteattr(category.name)}/>\n'
            f'  </RectangleLabels>\n  <KeyPointLabels name="keypoints" toName="image" strokeWidth="2">\n{labels}\n'
            f'  </KeyPointLabels>\n</View>')


def image_path(dataset: Dataset, image: ImageInfo) -> Path:
    """The image file, resolved; its `file_name` must be a safe relative path."""
    name = safe_relative(image.file_name, f"annotations.json: image id={image.id}: file_name")
    return (Path(dataset.image_root) / name).resolve()


def image_url(dataset: Dataset, image: ImageInfo, document_root: Path = Path("/")) -> str:
    """The image as Label Studio's local file serving names it (relative to its LOCAL_FILES_DOCUMENT_ROOT)."""
    relative = image_path(dataset, image).relative_to(Path(document_root).resolve())
    return "/data/local-files/?d=" + urllib.parse.quote(relative.as_posix(), safe="/")


def find_document_root(client: LabelStudio, dataset: Dataset, image: ImageInfo) -> Path:
    """The server's LOCAL_FILES_DOCUMENT_ROOT, found by asking it for one image under each ancestor folder.

    Label Studio names a local file relative to its document root, which the API does not tell;
    the right ancestor of the image folder is the one whose URL the server serves. `semcorr
    review server --dataset D` sets it to the folder holding D's images folder.

    Raises:
        SemcorrError: one line saying how to let the server serve the images.
    """
    image_root = Path(dataset.image_root).resolve()
    path = image_path(dataset, image)
    for candidate in image_root.parents:
        url = image_url(dataset, image, candidate)
        try:
            client.get_raw(url)
            return candidate
        except HTTPStatusError as exc:
            if exc.status == 404:
                continue
            raise SemcorrError(f"{client.url}: cannot serve the image {path} (answered {exc.status}); "
                               f"start the server with `semcorr review server --dataset DATASET`") from None
        except SemcorrError as exc:
            raise SemcorrError(f"{client.url}: cannot serve the image {path} ({str(exc).split(': ', 1)[-1][:120]}); "
                               f"start the server with `semcorr review server --dataset DATASET`") from None
    raise SemcorrError(f"{client.url}: the server does not serve {path}; start it with `semcorr review server "
                       f"--dataset DATASET` (or set LOCAL_FILES_SERVING_ENABLED=true and LOCAL_FILES_DOCUMENT_ROOT "
                       f"to a folder above {image_root})")


def instance_regions(instance: Instance, category: Category, image: ImageInfo, keypoints: np.ndarray | None = None,
                     scores: np.ndarray | None = None) -> list[dict]:
    """Box region plus keypoint regions (visible ones) of one instance, in Label Studio's result format."""
    w, h = image.width, image.height
    box_id = f"a{instance.id}"
    x, y, bw, bh = (float(v) for v in instance.bbox)
    regions = [{"id": box_id, "type": "rectanglelabels", "from_name": "instance", "to_name": "image",
                "original_width": w, "original_height": h, "image_rotation": 0,
                "value": {"x": 100 * x / w, "y": 100 * y / h, "width": 100 * bw / w, "height": 100 * bh / h,
                          "rotation": 0, "rectanglelabels": [category.name]}}]
    points = instance.keypoints if keypoints is None else keypoints
    for index, (px, py, v) in enumerate(points[:, :3]):
        if not pushable(px, py, v, image):
            continue
        region = {"id": f"{box_id}k{index}", "type": "keypointlabels", "from_name": "keypoints", "to_name": "image",
                  "parentID": box_id, "original_width": w, "original_height": h, "image_rotation": 0,
                  "value": {"x": 100 * float(px) / w, "y": 100 * float(py) / h, "width": 0.6,
                            "keypointlabels": [category.keypoints[index]]}}
        if scores is not None:
            region["score"] = round(float(scores[index]), 4)
        regions.append(region)
    return regions


def pushable(px: float, py: float, v: float, image: ImageInfo) -> bool:
    """Whether a keypoint becomes a region: visible (2) and inside the image (a point outside cannot be visible)."""
    return bool(v == 2 and 0 <= px <= image.width and 0 <= py <= image.height)


@dataclass
class KeypointAction:
    """What a reviewer did to one keypoint.

    `replaced`: the reviewer deleted the ALM's point and placed the same label anew; the action
    is then `accepted` or `dragged` by the distance from the deleted prediction. `score`: the
    calibrated confidence the prediction carried (None when the keypoint was not predicted, or
    its region had no score).
    """

    ann_id: int
    index: int
    action: str
    xy: tuple[float, float] | None
    displacement: float = 0.0
    replaced: bool = False
    score: float | None = None


@dataclass
class TaskReview:
    """The classified actions of one task, and the problems found in it."""

    image_id: int
    annotator: str
    actions: list[KeypointAction] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


# a position the reviewer placed or moved beats one left as predicted, which beats a deletion
_PRECEDENCE = {"dragged": 2, "added": 2, "manual": 2, "accepted": 1, "discarded": 0}
_REGION_ID = re.compile(r"^a(\d+)k(\d+)$")


def winning_action(actions: list[KeypointAction]) -> KeypointAction:
    """The action that decides one keypoint: a reviewed position always beats a deletion, in any order.

    Among positions, one the reviewer placed or moved beats one left as predicted; among equals
    the last one given wins.
    """
    best = actions[0]
    for action in actions[1:]:
        if _PRECEDENCE[action.action] >= _PRECEDENCE[best.action]:
            best = action
    return best


def _pixel(region: dict) -> tuple[float, float]:
    return (region["value"]["x"] * region["original_width"] / 100.0,
            region["value"]["y"] * region["original_height"] / 100.0)


def _score(region: dict) -> float | None:
    """A prediction region's score, when it is a finite number."""
    value = region.get("score")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        return None
    return float(value)


def classify(predicted: list[dict], reviewed: list[dict], category: Category, image: ImageInfo,
             tolerance: float = ACCEPT_TOLERANCE_PX) -> tuple[list[KeypointAction], list[str]]:
    """Compare a task's predicted regions with the reviewer's result: one action per keypoint.

    A predicted keypoint whose region id is still there within `tolerance` pixels is
    accepted, farther away dragged (displacement kept), gone discarded; a keypoint region the
    prediction did not have is added (or manual when there was no prediction). A prediction
    deleted and its label placed anew on the same instance is one move of the prediction
    (accepted or dragged, `replaced`), never a discard: the reviewed position wins whatever the
    order of the regions. Labels unknown to the schema, points outside the image and keypoints
    placed twice are reported (a twice-placed keypoint keeps the position placed last).
    """
    index_of = {name: i for i, name in enumerate(category.keypoints)}
    boxes = {r["id"]: r for r in reviewed + predicted if r.get("type") == "rectanglelabels"}
    before = {r["id"]: r for r in predicted if r.get("type") == "keypointlabels"}
    after = {r["id"]: r for r in reviewed if r.get("type") == "keypointlabels"}
    placed: dict[tuple[int, int], list[KeypointAction]] = {}
    deleted: dict[tuple[int, int], tuple[tuple[float, float], float | None]] = {}
    problems = []
    for region_id, region in after.items():
        label = (region["value"].get("keypointlabels") or [None])[0]
        if label not in index_of:
            problems.append(f"keypoint label {label!r} is not in the {category.name} schema")
            continue
        xy = _pixel(region)
        if not (0 <= xy[0] <= image.width and 0 <= xy[1] <= image.height):
            problems.append(f"keypoint {label} at ({xy[0]:.1f}, {xy[1]:.1f}) is outside the image")
            continue
        parent = region.get("parentID") or _nearest_box(xy, boxes)
        if parent is None or not str(parent).startswith("a") or not str(parent)[1:].isdigit():
            problems.append(f"keypoint {label} belongs to no known instance box")
            continue
        key = (int(str(parent)[1:]), index_of[label])
        if region_id in before:
            moved = float(np.hypot(*np.subtract(xy, _pixel(before[region_id]))))
            action = KeypointAction(*key, "accepted" if moved <= tolerance else "dragged", xy, moved,
                                    score=_score(before[region_id]))
        else:
            action = KeypointAction(*key, "added" if predicted else "manual", xy)
        placed.setdefault(key, []).append(action)
    for region_id, region in before.items():
        if region_id in after:
            continue
        match = _REGION_ID.match(str(region_id))
        if match is None:
            problems.append(f"predicted region {region_id!r} is not named a<annotation id>k<keypoint index>")
            continue
        deleted[(int(match[1]), int(match[2]))] = (_pixel(region), _score(region))
    actions = []
    for key in sorted(set(placed) | set(deleted)):
        if key not in placed:
            actions.append(KeypointAction(*key, "discarded", None, score=deleted[key][1]))
            continue
        candidates = placed[key]
        best = winning_action(candidates)
        if len(candidates) > 1:
            problems.append(f"keypoint {category.keypoints[key[1]]} of annotation id={key[0]} is placed "
                            f"{len(candidates)} times; kept one at ({best.xy[0]:.1f}, {best.xy[1]:.1f})")
        if best.action == "added" and key in deleted:
            moved = float(np.hypot(*np.subtract(best.xy, deleted[key][0])))
            best = KeypointAction(*key, "accepted" if moved <= tolerance else "dragged", best.xy, moved,
                                  replaced=True, score=deleted[key][1])
        actions.append(best)
    return actions, problems


def latest_annotation(task: dict) -> dict | None:
    """A Label Studio task's annotation that counts: the last updated (then highest id) of those not
    cancelled; None when there is none. `review pull` and `import labelstudio` both use it."""
    annotations = [a for a in task.get("annotations") or [] if isinstance(a, dict) and not a.get("was_cancelled")]
    if not annotations:
        return None
    return max(annotations, key=lambda a: (str(a.get("updated_at") or ""),
                                           a["id"] if isinstance(a.get("id"), int) else 0))


def _nearest_box(xy: tuple[float, float], boxes: dict[str, dict]) -> str | None:
    best, best_distance = None, np.inf
    for box_id, box in boxes.items():
        w, h = box["original_width"], box["original_height"]
        v = box["value"]
        centre = ((v["x"] + v["width"] / 2) * w / 100, (v["y"] + v["height"] / 2) * h / 100)
        distance = np.hypot(xy[0] - centre[0], xy[1] - centre[1])
        if distance < best_distance:
            best, best_distance = box_id, distance
    return best


def merge(dataset: Dataset, reviews: list[TaskReview], round_index: int) -> int:
    """Write reviewed keypoints into the store with per-keypoint provenance; returns keypoints changed.

    The actions on one keypoint are resolved with `winning_action` before anything is written,
    so a reviewed position is never undone by a deletion listed after it (or before it).

    A keypoint the store holds as `auto-accepted` (written at push, see `apply_auto_accept`) takes
    the reviewer's action when there is one (dragged, discarded, or accepted after a nudge or a
    re-placement); left untouched (still exactly where it was predicted) it stays `auto-accepted`,
    position and provenance unchanged, and is not counted as changed.
    """
    by_id = {inst.id: inst for inst in dataset.instances}
    decided: dict[tuple[int, int], list[tuple[KeypointAction, TaskReview]]] = {}
    for review in reviews:
        for action in review.actions:
            if action.ann_id not in by_id:
                review.problems.append(f"annotation id={action.ann_id} is not in the store")
                continue
            if not 0 <= action.index < len(by_id[action.ann_id].keypoints):
                review.problems.append(f"annotation id={action.ann_id}: keypoint index {action.index} is not in "
                                       "its schema")
                continue
            decided.setdefault((action.ann_id, action.index), []).append((action, review))
    changed = 0
    for (ann_id, index), entries in sorted(decided.items()):
        action = winning_action([a for a, _ in entries])
        review = next(r for a, r in entries if a is action)
        inst = by_id[ann_id]
        if untouched_auto_accepted(inst, index, action):
            continue
        if action.action == "discarded":
            inst.keypoints[index] = (np.nan, np.nan, 0)
        else:
            inst.keypoints[index] = (*action.xy, 2)
        provenance = inst.extra_attributes.setdefault("keypoint_provenance", {})
        provenance[str(index)] = {"action": action.action, "round": round_index, "annotator": review.annotator,
                                  **({"displacement": round(action.displacement, 2)}
                                     if action.action == "dragged" else {}),
                                  **({"replaced": True} if action.replaced else {})}
        changed += 1
    return changed


UNTOUCHED_PX = 1e-6


def untouched_auto_accepted(instance: Instance, index: int, action: KeypointAction) -> bool:
    """Whether the store holds this keypoint as `auto-accepted` and the reviewer left the prediction
    exactly where it was (not moved, not deleted and placed anew)."""
    entry = (instance.extra_attributes.get("keypoint_provenance") or {}).get(str(index))
    return (isinstance(entry, dict) and entry.get("action") == AUTO_ACCEPTED and action.action == "accepted"
            and not action.replaced and action.displacement <= UNTOUCHED_PX)


def check_auto_accept(threshold: float | None) -> float | None:
    """`--auto-accept P`: None (off) or a calibrated probability in (0, 1].

    Raises:
        SemcorrError: one line when P is not a number in (0, 1].
    """
    if threshold is None:
        return None
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        raise SemcorrError(f"--auto-accept {threshold!r}: give a calibrated probability in (0, 1], e.g. 0.9") from None
    if not np.isfinite(value) or not 0 < value <= 1:
        raise SemcorrError(f"--auto-accept {threshold}: give a calibrated probability in (0, 1], e.g. 0.9 "
                           "(a keypoint whose score is at least P is written into the store as auto-accepted)")
    return value


def _is_human(instance: Instance, index: int) -> bool:
    """Whether a person placed or decided this keypoint: any provenance but `auto-accepted`, or a label
    with no provenance at all (its source is unknown, so it is kept)."""
    entry = (instance.extra_attributes.get("keypoint_provenance") or {}).get(str(index))
    if isinstance(entry, dict) and entry.get("action") is not None:
        return entry.get("action") != AUTO_ACCEPTED
    return bool(instance.keypoints[index, 2] > 0)


def auto_accept_choices(dataset: Dataset, predictions: dict[int, np.ndarray],
                        threshold: float) -> list[tuple[int, int, float]]:
    """(annotation id, keypoint index, score) of the predicted keypoints to auto-accept: pushed as a
    visible region (visible, inside the image), score (column 3) at least `threshold`, and not human
    work in the store (see `_is_human`: manual, accepted, dragged, added, discarded, imported, or
    labelled without provenance). Sorted by annotation id and index."""
    chosen = []
    by_id = {inst.id: inst for inst in dataset.instances}
    for ann_id in sorted(predictions):
        inst = by_id.get(ann_id)
        if inst is None or inst.image_id not in dataset.images:
            continue
        guess = np.asarray(predictions[ann_id], dtype=np.float64)
        if guess.ndim != 2 or guess.shape[1] < 4:
            continue
        image = dataset.images[inst.image_id]
        for index in range(min(len(guess), len(inst.keypoints))):
            px, py, v, score = guess[index, :4]
            if pushable(px, py, v, image) and np.isfinite(score) and score >= threshold \
                    and not _is_human(inst, index):
                chosen.append((ann_id, index, float(score)))
    return chosen


def apply_auto_accept(dataset: Dataset, predictions: dict[int, np.ndarray], threshold: float,
                      round_index: int) -> int:
    """Write the keypoints `auto_accept_choices` picks into the store, with provenance
    {"action": "auto-accepted", "round": N, "annotator": "alm", "score": s, "threshold": P}
    (the shape `merge` writes); returns how many. The caller saves the dataset."""
    by_id = {inst.id: inst for inst in dataset.instances}
    chosen = auto_accept_choices(dataset, predictions, threshold)
    for ann_id, index, score in chosen:
        inst = by_id[ann_id]
        x, y = (float(v) for v in np.asarray(predictions[ann_id], dtype=np.float64)[index, :2])
        inst.keypoints[index] = (x, y, 2)
        provenance = inst.extra_attributes.setdefault("keypoint_provenance", {})
        provenance[str(index)] = {"action": AUTO_ACCEPTED, "round": round_index, "annotator": "alm",
                                  "score": round(score, 4), "threshold": threshold}
    return len(chosen)


def _sides(dataset: Dataset | None) -> dict[int, float]:
    return {} if dataset is None else {inst.id: float(max(inst.bbox[2], inst.bbox[3])) for inst in dataset.instances}


def _within_radius(action: KeypointAction, sides: dict[int, float], radius: float) -> bool:
    """Accepted, or dragged by at most `radius` times the box's longer side."""
    if action.action == "accepted":
        return True
    return action.action == "dragged" and action.ann_id in sides and action.displacement <= radius * sides[action.ann_id]


def reliability_table(scores, hits, bins: int = RELIABILITY_BINS) -> list[dict]:
    """Predicted against actual acceptance per score bin [0, 0.2), [0.2, 0.4), ..., [0.8, 1.0]: every
    bin, with count, mean score (`predicted`) and share accepted (`actual`); NaN means in an empty bin."""
    scores = np.clip(np.asarray(scores, dtype=np.float64), 0.0, 1.0)
    hits = np.asarray(hits, dtype=bool)
    which = np.minimum(np.floor(scores * bins + 1e-9).astype(int), bins - 1)
    table = []
    for b in range(bins):
        inside = which == b
        count = int(inside.sum())
        table.append({"low": round(b / bins, 6), "high": round((b + 1) / bins, 6), "count": count,
                      "predicted": float(scores[inside].mean()) if count else float("nan"),
                      "actual": float(hits[inside].mean()) if count else float("nan")})
    return table


def calibration_report(actions: list[KeypointAction], sides: dict[int, float],
                       radius: float = ACCEPT_RADIUS) -> dict:
    """Predicted against actual acceptance over the predicted visible keypoints that carried a score.

    expected = mean score; actual = share accepted or dragged by at most `radius` times the box's
    longer side (a discard is a miss). Keypoints of instances without a box in `sides` are left out.
    """
    scored = [a for a in actions if a.score is not None and a.action in ("accepted", "dragged", "discarded")
              and a.ann_id in sides]
    scores = np.array([a.score for a in scored], dtype=np.float64)
    hits = np.array([_within_radius(a, sides, radius) for a in scored], dtype=bool)
    return {"scored_keypoints": len(scored),
            "expected_acceptance": float(scores.mean()) if len(scored) else float("nan"),
            "actual_acceptance": float(hits.mean()) if len(scored) else float("nan"),
            "accept_radius": radius,
            "reliability": reliability_table(scores, hits)}


def reviewer_effort(actions: list[KeypointAction], sides: dict[int, float], radius: float = ACCEPT_RADIUS) -> dict:
    """How much placing the ALM spared the reviewer, and an estimate of clicks saved.

    Final keypoints: those the round's review left visible (accepted, dragged, added, manual), i.e.
    the final labels of the round's instances as the reviewers submitted them. Not placed by the
    reviewer: accepted, or dragged by at most `radius` times the box's longer side.

    Click model (an estimate, boxes given in both cases): labelling from scratch, each final
    keypoint takes 2 clicks (place it, choose its label). With the ALM: accepting a prediction 0,
    dragging it 1, discarding it 1, adding a keypoint it missed 2 (place, label), a manual one 2,
    and deleting a prediction and placing its label anew (`replaced`) 3 (delete, place, label).
    """
    final = [a for a in actions if a.action in ("accepted", "dragged", "added", "manual")]
    spared = sum(_within_radius(a, sides, radius) for a in final)
    with_alm = sum(CLICKS["replaced"] if a.replaced else CLICKS[a.action] for a in actions)
    scratch = CLICKS["scratch"] * len(final)
    return {"final_keypoints": len(final), "not_placed": int(spared),
            "not_placed_share": spared / len(final) if final else float("nan"),
            "clicks_with_alm": int(with_alm), "clicks_from_scratch": int(scratch),
            "clicks_saved": int(scratch - with_alm),
            "clicks_saved_share": (scratch - with_alm) / scratch if scratch else float("nan")}


def round_report(reviews: list[TaskReview], dataset: Dataset | None = None, alpha: float = 0.1,
                 seen: set[int] | None = None) -> dict:
    """Acceptance rate, drag distances, discards, additions of a pulled round.

    With `dataset` (for the boxes) it also gives the ALM's PCK@alpha (of the box's longer
    side) against the reviewed labels, i.e. the pre-labels' accuracy before review: over the
    keypoints the reviewer left visible, a hit is an accepted keypoint or one dragged by at
    most alpha times the box side; a keypoint the reviewer had to add is a miss. After
    review the store holds the reviewed labels, so its PCK against them is 100 by definition.

    `seen`: annotation ids that already carried labels when the round was pushed (the ALM
    trains on every labelled non-test instance, so it may have seen them). The PCK is measured
    on the other instances (`alm_pck_scope` "held out"); when there are none, or `seen` is
    unknown (None), on all of the round's instances, and the scope says they are not held out.

    With `dataset` it also gives, under `calibration`, predicted acceptance (mean calibrated score
    of the predicted visible keypoints) against actual acceptance (accepted or dragged by at most
    ACCEPT_RADIUS of the box's longer side) with a reliability table (`calibration_report`); under
    `effort`, the share of final keypoints the reviewer did not have to place and the clicks with
    the ALM against from scratch (`reviewer_effort`); and `auto_accepted_kept`, the round's
    keypoints the store still holds as `auto-accepted` (the reviewer left them untouched).
    """
    actions = [a for r in reviews for a in r.actions]
    counts = {name: sum(a.action == name for a in actions) for name in ACTIONS}
    predicted = counts["accepted"] + counts["dragged"] + counts["discarded"]
    drags = np.array([a.displacement for a in actions if a.action == "dragged"])
    report = {**counts, "tasks": len(reviews), "problems": sum(len(r.problems) for r in reviews),
              "acceptance_rate": counts["accepted"] / predicted if predicted else float("nan"),
              "drag_median_px": float(np.median(drags)) if len(drags) else 0.0,
              "drag_p90_px": float(np.percentile(drags, 90)) if len(drags) else 0.0}
    if dataset is not None:
        sides = {inst.id: max(inst.bbox[2], inst.bbox[3]) for inst in dataset.instances}
        visible = [a for a in actions if a.action in ("accepted", "dragged", "added") and a.ann_id in sides]
        held_out = [a for a in visible if seen is not None and a.ann_id not in seen]
        if held_out:
            scope, measured = "held out", held_out
        else:
            scope = "not held out" if seen is not None else "unknown"
            measured = visible
        hits = sum(a.action == "accepted" or (a.action == "dragged" and a.displacement <= alpha * sides[a.ann_id])
                   for a in measured)
        report["alm_pck_before_review"] = 100.0 * hits / len(measured) if measured and predicted else float("nan")
        report["alm_pck_after_review"] = 100.0 if measured and predicted else float("nan")
        report["alm_pck_scope"] = scope
        report["alm_pck_instances"] = len({a.ann_id for a in measured})
        by_id = {inst.id: inst for inst in dataset.instances}
        report["calibration"] = calibration_report(actions, sides)
        report["effort"] = reviewer_effort(actions, sides)
        report["auto_accepted_kept"] = sum(
            a.ann_id in by_id and ((by_id[a.ann_id].extra_attributes.get("keypoint_provenance") or {})
                                   .get(str(a.index)) or {}).get("action") == AUTO_ACCEPTED
            for a in actions)
    return report


def labelled_before_round(instance: Instance, round_index: int) -> bool:
    """Whether the instance has a labelled keypoint that round N's own review did not place."""
    provenance = instance.extra_attributes.get("keypoint_provenance") or {}
    for index in np.flatnonzero(instance.labelled):
        entry = provenance.get(str(index))
        if not (isinstance(entry, dict) and entry.get("round") == round_index):
            return True
    return False


def pck_line(report: dict, alpha: float = 0.1) -> str | None:
    """The report's ALM PCK as one honest line (None when the round had no predictions)."""
    value = report.get("alm_pck_before_review")
    if value is None or np.isnan(value):
        return None
    where = {"held out": "instances that were unlabelled when pushed (held out: the ALM never trained on them)",
             "not held out": "this round's instances, which were already labelled when pushed (NOT held out: the "
                             "ALM may have trained on them)",
             "unknown": "this round's instances (not known to be held out: the push predates this record)"}
    return (f"ALM pre-labels vs reviewed labels, PCK@{alpha:g} before review {value:.1f} (after review "
            f"{report['alm_pck_after_review']:.1f} by definition) on {report['alm_pck_instances']} "
            f"{where[report['alm_pck_scope']]}")


def calibration_lines(report: dict) -> list[str]:
    """Predicted against actual acceptance, and the reliability table, as two lines ([] without scores)."""
    calibration = report.get("calibration") or {}
    if not calibration.get("scored_keypoints"):
        return []
    radius = calibration["accept_radius"]
    bins = " | ".join(f"{b['low']:.1f}-{b['high']:.1f}: {b['count']}" +
                      (f" pred {b['predicted']:.2f} act {b['actual']:.2f}" if b["count"] else "")
                      for b in calibration["reliability"])
    first = (f"ALM confidence: predicted acceptance {calibration['expected_acceptance']:.2f} (mean calibrated score "
             f"of {calibration['scored_keypoints']} predicted keypoints), actual {calibration['actual_acceptance']:.2f} "
             f"(accepted or dragged within {100 * radius:g}% of the box's longer side)")
    return [first, f"  by score: {bins}"]


def effort_line(report: dict) -> str | None:
    """The reviewer's effort as one line (None when the round had no predictions)."""
    effort = report.get("effort")
    predicted = report.get("accepted", 0) + report.get("dragged", 0) + report.get("discarded", 0)
    if not effort or not predicted or not effort["final_keypoints"]:
        return None
    kept = report.get("auto_accepted_kept", 0)
    return (f"reviewer effort: {effort['not_placed']} of {effort['final_keypoints']} final keypoints "
            f"({100 * effort['not_placed_share']:.0f}%) not placed by the reviewer (accepted or dragged within "
            f"{100 * ACCEPT_RADIUS:g}% of the box side); about {effort['clicks_with_alm']} clicks with the ALM vs "
            f"{effort['clicks_from_scratch']} from scratch (saved {effort['clicks_saved']}, "
            f"{100 * effort['clicks_saved_share']:.0f}%; click model: place+label 2, accept 0, drag 1, discard 1, "
            f"add 2)" + (f"; {kept} auto-accepted keypoints left untouched" if kept else ""))


def raw_export_stem(round_index: int, category: str) -> str:
    """`round<N>_<category>` as one safe file-name component (a hash tells apart names made safe alike)."""
    safe = safe_component(category)
    if safe != category:
        safe += "-" + hashlib.sha1(str(category).encode()).hexdigest()[:8]
    return f"round{int(round_index)}_{safe}"


def save_raw_export(root: Path, round_index: int, category: str, export: list) -> Path:
    """Keep Label Studio's raw export before anything is merged (human work is never lost).

    The file is `annotation/raw/round<N>_<category>.json`; an existing export is never
    overwritten: a different one goes to the next free `round<N>_<category>.<k>.json` (created
    exclusively), an identical one is not written again.
    """
    folder = Path(root) / "annotation" / "raw"
    folder.mkdir(parents=True, exist_ok=True)
    stem = raw_export_stem(round_index, category)
    data = (json.dumps(export, ensure_ascii=False) + "\n").encode("utf-8")
    existing = _raw_export_files(folder, stem)
    if existing and existing[-1].read_bytes() == data:
        return existing[-1]
    return write_new(folder / f"{stem}.json", data)


def _raw_export_files(folder: Path, stem: str) -> list[Path]:
    """The raw exports of one round and category, oldest first."""
    pattern = re.compile(rf"^{re.escape(stem)}(?:\.(\d+))?\.json$")
    found = [(int(m[1] or 0), p) for p in folder.glob(f"{stem}*.json") if (m := pattern.match(p.name))]
    return [p for _, p in sorted(found)]


def find_project(client: LabelStudio, title: str) -> dict | None:
    """The project with this title, if it exists (the SDK pages through the projects)."""
    projects = client.call("GET /api/projects", lambda: to_plain(list(client.sdk.projects.list(page_size=100))))
    return next((p for p in projects if p.get("title") == title), None)


def project_title(root: Path, category: str) -> str:
    """One project per dataset directory and category (a hash of the path tells same-named folders apart)."""
    path = Path(root).resolve()
    return f"semcorr {path.name} {category} [{hashlib.sha1(str(path).encode()).hexdigest()[:8]}]"


def ensure_project(client: LabelStudio, root: Path, category: Category, image_root: Path) -> int:
    """Create or update the category's project, with local file storage for its images."""
    title = project_title(root, category.name)
    config = labeling_config(category)
    project = find_project(client, title)
    sdk = client.sdk
    if project is None:
        project = to_plain(client.call("POST /api/projects", sdk.projects.create, title=title, label_config=config))
    elif project.get("label_config") != config:
        client.call(f"PATCH /api/projects/{project['id']}", sdk.projects.update, project["id"], label_config=config)
    local = sdk.import_storage.local
    if not client.call("GET /api/storages/localfiles", local.list, project=project["id"]):
        client.call("POST /api/storages/localfiles", local.create, project=project["id"], title="semcorr images",
                    path=str(Path(image_root).resolve()), use_blob_urls=False)
    return int(project["id"])


def model_version(round_index: int) -> str:
    """The `model_version` of the predictions pushed for review round N (made by the round N-1 ALM)."""
    return f"alm-round-{int(round_index)}"


def _prediction(result: list[dict], version: str) -> dict:
    return {"model_version": version, "score": float(np.mean([r.get("score", 1.0) for r in result] or [1.0])),
            "result": result}


def task_prediction(instances: list[Instance], category: Category, image: ImageInfo, round_index: int,
                    predictions: dict[int, np.ndarray]) -> dict:
    """One task's ALM prediction as Label Studio stores it: `model_version`, `score`, `result`.

    The one place a task's prediction is made: `push` sends it, the ML backend answers it.
    `predictions`: annotation id -> (K, >=4) array (x, y, visibility, calibrated score); each
    instance gives its box and its visible keypoints (`instance_regions`), every keypoint region
    scored; the task's score is the mean over its regions (a box counts 1).
    """
    result = []
    for inst in instances:
        guess = predictions.get(inst.id)
        if guess is not None:
            result += instance_regions(inst, category, image, guess[:, :3], guess[:, 3])
    return _prediction(result, model_version(round_index))


def boxes_prediction(instances: list[Instance], category: Category, image: ImageInfo) -> dict:
    """The boxes alone (a manual round's task), `model_version` "boxes"."""
    boxes = [r for inst in instances for r in instance_regions(inst, category, image, np.zeros_like(inst.keypoints))]
    return {**_prediction([], "boxes"), "result": boxes}


def push(client: LabelStudio, root: Path, dataset: Dataset, image_ids: list[int], round_index: int,
         predictions: dict[int, np.ndarray] | None = None, notes: dict[int, str] | None = None) -> dict[str, int]:
    """Create tasks (empty, or with ALM predictions as `predictions`) without duplicates.

    `predictions`: annotation id -> (K, >=4) array, columns x, y, visibility, calibrated score
    (further columns are ignored); the score goes with each keypoint region. `notes`: image id -> text
    that new tasks carry as `semcorr_qc` (what `qc --push` asks the reviewer to look at).

    Returns counts: tasks created, predictions added, skipped (already there).
    """
    problems = client.preflight()
    if problems:
        raise SemcorrError("; ".join(problems))
    counts = {"created": 0, "predictions": 0, "skipped": 0}
    wanted = set(image_ids)
    for category in sorted(dataset.categories.values(), key=lambda c: c.id):
        members = [i for i in dataset.instances if i.category_id == category.id and i.image_id in wanted]
        if not members or not category.num_keypoints:
            continue
        project_id = ensure_project(client, root, category, dataset.image_root)
        document_root = find_document_root(client, dataset, dataset.images[members[0].image_id])
        existing = {t["data"].get("semcorr_image_id"): t for t in client.all_tasks(project_id)}
        version = model_version(round_index)
        new_tasks = []
        for image_id in sorted({i.image_id for i in members}):
            image = dataset.images[image_id]
            instances = [i for i in members if i.image_id == image_id]
            task = existing.get(image_id)
            if task is None:
                entry = {"data": {"image": image_url(dataset, image, document_root), "semcorr_image_id": image_id,
                                  "semcorr_round": round_index}}
                if notes and image_id in notes:
                    entry["data"]["semcorr_qc"] = notes[image_id]
                entry["predictions"] = [boxes_prediction(instances, category, image) if predictions is None else
                                        task_prediction(instances, category, image, round_index, predictions)]
                new_tasks.append(entry)
                counts["created"] += 1
            elif predictions is not None and not any(p.get("model_version") == version
                                                     for p in task.get("predictions", [])):
                prediction = task_prediction(instances, category, image, round_index, predictions)
                client.call("POST /api/predictions", client.sdk.predictions.create, task=task["id"], **prediction)
                counts["predictions"] += 1
            else:
                counts["skipped"] += 1
        for start in range(0, len(new_tasks), 250):
            client.call(f"POST /api/projects/{project_id}/import", client.sdk.projects.import_tasks, project_id,
                        request=new_tasks[start: start + 250])
    return counts


def annotator_name(client: LabelStudio, completed_by, cache: dict) -> str:
    """Who completed an annotation, as `First Last <email>` (or the email): Label Studio's export gives
    only a user id, so the user is looked up once per id; `user <id>` when the server will not say."""
    if isinstance(completed_by, dict):
        user, key = completed_by, completed_by.get("id")
    else:
        key, user = completed_by, None
    if key in cache:
        return cache[key]
    if user is None or not user.get("email"):
        try:
            user = to_plain(client.call(f"GET /api/users/{int(key)}", client.sdk.users.get, int(key)))
        except (SemcorrError, TypeError, ValueError):
            user = user or {}
    user = user if isinstance(user, dict) else {}
    name = " ".join(str(user.get(k) or "").strip() for k in ("first_name", "last_name")).strip()
    email = str(user.get("email") or user.get("username") or "").strip()
    text = f"{name} <{email}>" if name and email else (email or name or (f"user {key}" if key is not None else ""))
    cache[key] = text
    return text


def export_json(client: LabelStudio, project_id: int) -> object:
    """A project's JSON export, every task (the SDK's export download, parsed)."""
    chunks = client.sdk.projects.exports.download_sync(project_id, export_type="JSON", download_all_tasks=True)
    return json.loads(b"".join(chunks))


def pull(client: LabelStudio, root: Path, dataset: Dataset, round_index: int,
         tolerance: float = ACCEPT_TOLERANCE_PX) -> list[TaskReview]:
    """Export each category's project, save the raw export, classify every reviewed task.

    Every raw export is saved (never overwriting an earlier one) before any task is classified;
    nothing is merged here.
    """
    exports = []
    for category in sorted(dataset.categories.values(), key=lambda c: c.id):
        project = find_project(client, project_title(root, category.name))
        if project is None:
            continue
        export = client.call(f"GET /api/projects/{project['id']}/export", export_json, client, project["id"])
        if not isinstance(export, list):
            raise SemcorrError(f"{client.url}: the export of project {project['id']} is not a list of tasks; "
                               "check the server version")
        save_raw_export(root, round_index, category.name, export)
        exports.append((category, project, export))
    reviews, users = [], {}
    version = model_version(round_index)
    for category, project, export in exports:
        predictions_of = {t["id"]: t.get("predictions", []) for t in client.all_tasks(project["id"])}
        for task in export:
            if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
                continue
            if task["data"].get("semcorr_round") != round_index:
                continue
            latest = latest_annotation(task)
            if latest is None:
                continue
            image_id = task["data"].get("semcorr_image_id")
            if image_id not in dataset.images:
                reviews.append(TaskReview(image_id=image_id, annotator="", problems=[
                    f"task {task.get('id')}: image {image_id} is not in the store"]))
                continue
            predicted = next((p["result"] for p in predictions_of.get(task.get("id"), [])
                              if isinstance(p, dict) and p.get("model_version") == version), [])
            actions, problems = classify(predicted, latest.get("result") or [], category, dataset.images[image_id],
                                         tolerance)
            annotator = annotator_name(client, latest.get("completed_by"), users)
            reviews.append(TaskReview(image_id=image_id, annotator=annotator, actions=actions,
                                      problems=[f"task {task.get('id')}: {p}" for p in problems]))
    return reviews


def load_raw_exports(root: Path, round_index: int) -> dict[str, list]:
    """The raw exports saved for a round (file name -> tasks), oldest first per category."""
    folder = Path(root) / "annotation" / "raw"
    return {p.name: json.loads(p.read_text(encoding="utf-8"))
            for p in sorted(folder.glob(f"round{int(round_index)}_*.json"))}
