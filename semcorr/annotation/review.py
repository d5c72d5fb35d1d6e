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
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import quoteattr

import numpy as np

from semcorr import atomic
from semcorr.annotation.labelstudio import LabelStudio
from semcorr.errors import SemcorrError
from semcorr.store import Category, Dataset, ImageInfo, Instance

ACCEPT_TOLERANCE_PX = 1.5
ACTIONS = ("accepted", "dragged", "discarded", "added", "manual")


def labeling_config(category: Category) -> str:
    """Label Studio XML: the image, one box label for the category, one keypoint label per keypoint."""
    labels = "\n".join(f'    <Label value={quoteattr(name)} model_index="{index}"/>'
                       for index, name in enumerate(category.keypoints))
    return (f'<View>\n  <Image name="image" value="$image" zoom="true"/>\n'
            f'  <RectangleLabels name="instance" toName="image">\n    <Label value={quoteattr(category.name)}/>\n'
            f'  </RectangleLabels>\n  <KeyPointLabels name="keypoints" toName="image" strokeWidth="2">\n{labels}\n'
            f'  </KeyPointLabels>\n</View>')


def image_url(dataset: Dataset, image: ImageInfo, document_root: Path = Path("/")) -> str:
    """The image as Label Studio's local file serving names it."""
    path = (Path(dataset.image_root) / image.file_name).resolve()
    return "/data/local-files/?d=" + str(path.relative_to(document_root.resolve()))


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
        if v != 2 or not (0 <= px <= w and 0 <= py <= h):  # a point outside the image cannot be visible
            continue
        region = {"id": f"{box_id}k{index}", "type": "keypointlabels", "from_name": "keypoints", "to_name": "image",
                  "parentID": box_id, "original_width": w, "original_height": h, "image_rotation": 0,
                  "value": {"x": 100 * float(px) / w, "y": 100 * float(py) / h, "width": 0.6,
                            "keypointlabels": [category.keypoints[index]]}}
        if scores is not None:
            region["score"] = round(float(scores[index]), 4)
        regions.append(region)
    return regions


@dataclass
class KeypointAction:
    """What a reviewer did to one keypoint."""

    ann_id: int
    index: int
    action: str
    xy: tuple[float, float] | None
    displacement: float = 0.0


@dataclass
class TaskReview:
    """The classified actions of one task, and the problems found in it."""

    image_id: int
    annotator: str
    actions: list[KeypointAction] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _pixel(region: dict) -> tuple[float, float]:
    return (region["value"]["x"] * region["original_width"] / 100.0,
            region["value"]["y"] * region["original_height"] / 100.0)


def classify(predicted: list[dict], reviewed: list[dict], category: Category, image: ImageInfo,
             tolerance: float = ACCEPT_TOLERANCE_PX) -> tuple[list[KeypointAction], list[str]]:
    """Compare a task's predicted regions with the reviewer's result.

    A predicted keypoint whose region id is still there within `tolerance` pixels is
    accepted, farther away dragged (displacement kept), gone discarded; a keypoint region the
    prediction did not have is added (or manual when there was no prediction). Labels unknown
    to the schema and points outside the image are reported and skipped.
    """
    index_of = {name: i for i, name in enumerate(category.keypoints)}
    boxes = {r["id"]: r for r in reviewed + predicted if r.get("type") == "rectanglelabels"}
    before = {r["id"]: r for r in predicted if r.get("type") == "keypointlabels"}
    after = {r["id"]: r for r in reviewed if r.get("type") == "keypointlabels"}
    actions, problems = [], []
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
        ann_id, index = int(str(parent)[1:]), index_of[label]
        if region_id in before:
            moved = float(np.hypot(*np.subtract(xy, _pixel(before[region_id]))))
            action = "accepted" if moved <= tolerance else "dragged"
            actions.append(KeypointAction(ann_id, index, action, xy, moved))
        else:
            actions.append(KeypointAction(ann_id, index, "added" if predicted else "manual", xy))
    for region_id, region in before.items():
        if region_id not in after:
            ann_id, index = int(region_id[1:].split("k")[0]), int(region_id.split("k")[1])
            actions.append(KeypointAction(ann_id, index, "discarded", None))
    return sorted(actions, key=lambda a: (a.ann_id, a.index)), problems


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
    """Write reviewed keypoints into the store with per-keypoint provenance; returns keypoints changed."""
    by_id = {inst.id: inst for inst in dataset.instances}
    changed = 0
    for review in reviews:
        for action in review.actions:
            inst = by_id.get(action.ann_id)
            if inst is None:
                review.problems.append(f"annotation id={action.ann_id} is not in the store")
                continue
            if action.action == "discarded":
                inst.keypoints[action.index] = (np.nan, np.nan, 0)
            else:
                inst.keypoints[action.index] = (*action.xy, 2)
            provenance = inst.extra_attributes.setdefault("keypoint_provenance", {})
            provenance[str(action.index)] = {"action": action.action, "round": round_index,
                                             "annotator": review.annotator,
                                             **({"displacement": round(action.displacement, 2)}
                                                if action.action == "dragged" else {})}
            changed += 1
    return changed


def round_report(reviews: list[TaskReview], dataset: Dataset | None = None, alpha: float = 0.1) -> dict:
    """Acceptance rate, drag distances, discards, additions of a pulled round.

    With `dataset` (for the boxes) it also gives the ALM's PCK@alpha (of the box's longer
    side) against the reviewed labels, i.e. the pre-labels' accuracy before review: over the
    keypoints the reviewer left visible, a hit is an accepted keypoint or one dragged by at
    most alpha times the box side; a keypoint the reviewer had to add is a miss. After
    review the store holds the reviewed labels, so its PCK against them is 100 by definition.
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
        hits = sum(a.action == "accepted" or (a.action == "dragged" and a.displacement <= alpha * sides[a.ann_id])
                   for a in visible)
        report["alm_pck_before_review"] = 100.0 * hits / len(visible) if visible and predicted else float("nan")
        report["alm_pck_after_review"] = 100.0 if visible and predicted else float("nan")
    return report


def save_raw_export(root: Path, round_index: int, category: str, export: list) -> Path:
    """Keep Label Studio's raw export before anything is merged (human work is never lost)."""
    path = Path(root) / "annotation" / "raw" / f"round{round_index}_{category}.json"
    atomic.write_json(path, export)
    return path


def find_project(client: LabelStudio, title: str) -> dict | None:
    """The project with this title, if it exists."""
    answer = client.get("/api/projects?page_size=1000")
    projects = answer.get("results", []) if isinstance(answer, dict) else answer
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
    if project is None:
        project = client.post("/api/projects", {"title": title, "label_config": config})
    elif project.get("label_config") != config:
        client.patch(f"/api/projects/{project['id']}", {"label_config": config})
    storages = client.get(f"/api/storages/localfiles?project={project['id']}")
    if not storages:
        client.post("/api/storages/localfiles", {"project": project["id"], "path": str(Path(image_root).resolve()),
                                                 "use_blob_urls": False, "title": "semcorr images"})
    return int(project["id"])


def push(client: LabelStudio, root: Path, dataset: Dataset, image_ids: list[int], round_index: int,
         predictions: dict[int, np.ndarray] | None = None) -> dict[str, int]:
    """Create tasks (empty, or with ALM predictions as `predictions`) without duplicates.

    Returns counts: tasks created, predictions added, skipped (already there).
    """
    problems = client.preflight()
    if problems:
        raise SemcorrError("preflight failed:\n" + "\n".join(problems))
    counts = {"created": 0, "predictions": 0, "skipped": 0}
    wanted = set(image_ids)
    for category in sorted(dataset.categories.values(), key=lambda c: c.id):
        members = [i for i in dataset.instances if i.category_id == category.id and i.image_id in wanted]
        if not members or not category.num_keypoints:
            continue
        project_id = ensure_project(client, root, category, dataset.image_root)
        problems = client.preflight(image_url(dataset, dataset.images[members[0].image_id]))
        if problems:
            raise SemcorrError("preflight failed:\n" + "\n".join(problems))
        existing = {t["data"].get("semcorr_image_id"): t for t in client.all_tasks(project_id)}
        version = f"alm-round-{round_index}"
        new_tasks = []
        for image_id in sorted({i.image_id for i in members}):
            image = dataset.images[image_id]
            instances = [i for i in members if i.image_id == image_id]
            result = []
            if predictions is not None:
                for inst in instances:
                    guess = predictions.get(inst.id)
                    if guess is not None:
                        result += instance_regions(inst, category, image, guess[:, :3], guess[:, 3])
            boxes_only = [r for inst in instances for r in instance_regions(
                inst, category, image, np.zeros_like(inst.keypoints))]
            task = existing.get(image_id)
            if task is None:
                entry = {"data": {"image": image_url(dataset, image), "semcorr_image_id": image_id,
                                  "semcorr_round": round_index}}
                entry["predictions"] = [{"model_version": version if predictions is not None else "boxes",
                                         "score": float(np.mean([r.get("score", 1.0) for r in result] or [1.0])),
                                         "result": result if predictions is not None else boxes_only}]
                new_tasks.append(entry)
                counts["created"] += 1
            elif predictions is not None and not any(p.get("model_version") == version
                                                     for p in task.get("predictions", [])):
                client.post("/api/predictions", {"task": task["id"], "model_version": version, "result": result,
                                                 "score": float(np.mean([r.get("score", 1.0) for r in result]
                                                                        or [1.0]))})
                counts["predictions"] += 1
            else:
                counts["skipped"] += 1
        for start in range(0, len(new_tasks), 250):
            client.post(f"/api/projects/{project_id}/import", new_tasks[start: start + 250])
    return counts


def pull(client: LabelStudio, root: Path, dataset: Dataset, round_index: int,
         tolerance: float = ACCEPT_TOLERANCE_PX) -> list[TaskReview]:
    """Export each category's project, save the raw export, classify every reviewed task."""
    reviews = []
    for category in sorted(dataset.categories.values(), key=lambda c: c.id):
        project = find_project(client, project_title(root, category.name))
        if project is None:
            continue
        export = client.get(f"/api/projects/{project['id']}/export?exportType=JSON&download_all_tasks=true")
        save_raw_export(root, round_index, category.name, export)
        version = f"alm-round-{round_index}"
        predictions_of = {t["id"]: t.get("predictions", []) for t in client.all_tasks(project["id"])}
        for task in export:
            if task["data"].get("semcorr_round") != round_index:
                continue
            annotations = [a for a in task.get("annotations", []) if not a.get("was_cancelled")]
            if not annotations:
                continue
            image_id = task["data"].get("semcorr_image_id")
            if image_id not in dataset.images:
                reviews.append(TaskReview(image_id=image_id, annotator="", problems=[
                    f"task {task['id']}: image {image_id} is not in the store"]))
                continue
            latest = max(annotations, key=lambda a: (a.get("updated_at") or "", a["id"]))
            predicted = next((p["result"] for p in predictions_of.get(task["id"], [])
                              if isinstance(p, dict) and p.get("model_version") == version), [])
            actions, problems = classify(predicted, latest.get("result", []), category, dataset.images[image_id],
                                         tolerance)
            annotator = str(latest.get("completed_by", {}).get("email") if isinstance(latest.get("completed_by"), dict)
                            else latest.get("completed_by", ""))
            reviews.append(TaskReview(image_id=image_id, annotator=annotator, actions=actions,
                                      problems=[f"task {task['id']}: {p}" for p in problems]))
    return reviews


def load_raw_exports(root: Path, round_index: int) -> dict[str, list]:
    """The raw exports saved for a round (category -> tasks)."""
    folder = Path(root) / "annotation" / "raw"
    return {p.stem.split("_", 1)[1]: json.loads(p.read_text()) for p in sorted(folder.glob(f"round{round_index}_*.json"))}
