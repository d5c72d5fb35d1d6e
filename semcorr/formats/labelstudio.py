"""Label Studio JSON exports of keypoint tasks: `load_labelstudio` imports them into a store.

Real Label Studio exports are read here (sleap-io's Label Studio reader only reads files
sleap-io wrote, which carry a `meta.video` entry). Regions follow Label Studio's result format
as `semcorr.annotation.review` reads it: coordinates in percent of `original_width` /
`original_height`; keypoints belong to the box named by `parentID`, else to the nearest box,
else (no boxes) to one instance per task. Box labels name the categories; keypoint names keep
the order of the labelling config's `<KeyPointLabels>` when `config` is given, else the order of
first appearance. Labelled points are visible (Label Studio has no hidden flag); boxes are kept.
"""

from __future__ import annotations

import urllib.parse
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from semcorr.annotation.review import _nearest_box, _pixel, latest_annotation
from semcorr.errors import SemcorrError
from semcorr.formats.pose import ImportSpec, InterchangeReport, import_labels
from semcorr.paths import path_problem
from semcorr.store import read_json

DEFAULT_CATEGORY = "object"


def config_keypoints(path: Path) -> list[str]:
    """Keypoint names of a Label Studio labelling config (`<KeyPointLabels><Label value=...>`), in order."""
    try:
        root = ET.fromstring(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ET.ParseError) as exc:
        raise SemcorrError(f"{path}: not a Label Studio labelling config ({' '.join(str(exc).split())[:100]})"
                           ) from None
    names = [label.get("value") for group in root.iter("KeyPointLabels") for label in group.iter("Label")]
    if not names or not all(names):
        raise SemcorrError(f"{path}: no <KeyPointLabels> with <Label value=...>; give the project's labelling config")
    return list(dict.fromkeys(names))


def task_image(task: dict, images: Path, record: str) -> Path:
    """The local file of a task's `data.image` (a local-files `?d=` path, else the URL's file name, in `images`)."""
    url = (task.get("data") or {}).get("image") if isinstance(task.get("data"), dict) else None
    if not isinstance(url, str) or not url:
        raise SemcorrError(f"{record}: no data.image; export tasks with their image URL")
    parsed = urllib.parse.urlparse(url)
    local = urllib.parse.parse_qs(parsed.query).get("d", [None])[0]
    name = local or Path(urllib.parse.unquote(parsed.path)).name
    problem = path_problem(name)
    if problem:
        raise SemcorrError(f"{record}: image {url!r}: {problem}")
    for candidate in (images / name, images / Path(name).name):
        if candidate.is_file():
            return candidate
    raise SemcorrError(f"{record}: image {name} not found under {images}; pass --images with the folder holding it")


def _regions(task: dict, record: str) -> list[dict]:
    latest = latest_annotation(task)
    if latest is None:
        return []
    result = latest.get("result")
    if not isinstance(result, list) or not all(isinstance(r, dict) and isinstance(r.get("value"), dict)
                                               and "original_width" in r for r in result):
        raise SemcorrError(f"{record}: annotation result is not a list of Label Studio regions")
    return result


def load_labelstudio(export: Path, out_dir: Path, images: Path, config: Path | None = None,
                     category: str = DEFAULT_CATEGORY) -> InterchangeReport:
    """Import a Label Studio JSON export (the latest non-cancelled annotation of each task) as a new dataset."""
    import sleap_io as sio

    export, images = Path(export), Path(images)
    tasks = read_json(export)
    if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
        raise SemcorrError(f"{export}: top level: expected a list of tasks (Label Studio's JSON export)")
    parsed = []
    names = config_keypoints(config) if config else []
    for number, task in enumerate(tasks):
        record = f"{export}: task id={task.get('id', number)}"
        regions = _regions(task, record)
        for region in regions:
            label = (region["value"].get("keypointlabels") or [None])[0]
            if region.get("type") == "keypointlabels" and label not in names:
                if config:
                    raise SemcorrError(f"{record}: keypoint label {label!r} is not in {config}")
                names.append(label)
        parsed.append((record, task_image(task, images, record), regions))
    box_labels = [((r["value"].get("rectanglelabels") or [category])[0]) for _, _, regions in parsed for r in regions
                  if r.get("type") == "rectanglelabels"]
    skeletons = {name: sio.Skeleton(nodes=list(names), name=name) for name in dict.fromkeys(box_labels or [category])}
    frames, boxes = [], {}
    for record, path, regions in parsed:
        video = sio.Video(filename=str(path), open_backend=False)
        box_regions = {r["id"]: r for r in regions if r.get("type") == "rectanglelabels"}
        points: dict[str | None, np.ndarray] = {}
        for region in regions:
            if region.get("type") != "keypointlabels":
                continue
            xy = _pixel(region)
            owner = region.get("parentID") if region.get("parentID") in box_regions else (
                _nearest_box(xy, box_regions) if box_regions else None)
            array = points.setdefault(owner, np.column_stack([np.full((len(names), 2), np.nan), np.zeros(len(names))]))
            array[names.index(region["value"]["keypointlabels"][0])] = (*xy, 1.0)
        instances = []
        for owner, array in points.items():
            label = (box_regions[owner]["value"].get("rectanglelabels") or [category])[0] if owner else category
            instance = sio.Instance.from_numpy(array, skeletons.get(label) or skeletons[next(iter(skeletons))])
            if owner:
                region = box_regions[owner]
                w, h, v = region["original_width"], region["original_height"], region["value"]
                boxes[id(instance)] = np.array([v["x"] * w, v["y"] * h, v["width"] * w, v["height"] * h]) / 100
            instances.append(instance)
        frames.append(sio.LabeledFrame(video=video, frame_idx=0, instances=instances))
    labels = sio.Labels(labeled_frames=frames, skeletons=list(skeletons.values()))
    spec = ImportSpec(labels=labels, source=export, annotator="labelstudio", boxes=boxes)
    return import_labels([spec], out_dir, "labelstudio")
