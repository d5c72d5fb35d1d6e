"""Records shared by the pose-tool formats: store <-> sleap-io `Labels`, and writing an imported dataset.

sleap-io reads and writes SLEAP, DeepLabCut, NWB and Label Studio files; this module only maps
records between its model and the store:

- a category is a `Skeleton`: keypoint names in order, edges, flip pairs as symmetries (a
  symmetry is an unordered pair, so flip pairs come back as (lower, higher) index pairs);
- an instance is an `Instance`: visibility 2 -> visible point, 1 -> coordinates kept with
  `visible=False` (SLEAP's "labelled but hidden"), 0 -> NaN;
- an image is a (video, frame index): an image file is copied as it is, a frame of a video or of
  an embedded package is decoded by sleap-io and written as PNG.

Pose tools have no boxes: an imported instance's box is the box of its labelled keypoints, padded
on each side by BOX_MARGIN of the keypoints' longer extent (at least MIN_BOX_PAD_PX pixels) and
clipped to the image.
"""

from __future__ import annotations

import io
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from semcorr import atomic, store
from semcorr.errors import SemcorrError
from semcorr.paths import refuse_file_target, refuse_overlap, safe_component

BOX_MARGIN = 0.1
MIN_BOX_PAD_PX = 2.0
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@dataclass
class InterchangeReport:
    """What an import or export wrote, and what the format could not hold (one line per file).

    Attributes:
        path: the file or folder written.
        images: images (frames) written.
        instances: instances written.
        keypoints: labelled keypoints written.
        losses: "FILE: what was lost" lines; empty when nothing was lost.
    """

    path: Path
    images: int = 0
    instances: int = 0
    keypoints: int = 0
    losses: list[str] = field(default_factory=list)


def box_from_keypoints(keypoints: np.ndarray, width: int, height: int, margin: float = BOX_MARGIN) -> np.ndarray:
    """COCO [x, y, w, h] around the labelled keypoints, padded and clipped to the image; zeros when none."""
    labelled = keypoints[:, 2] > 0
    if not labelled.any():
        return np.zeros(4)
    xy = keypoints[labelled, :2]
    low, high = xy.min(axis=0), xy.max(axis=0)
    pad = max(margin * float((high - low).max()), MIN_BOX_PAD_PX)
    x0, y0 = max(low[0] - pad, 0.0), max(low[1] - pad, 0.0)
    x1, y1 = min(high[0] + pad, float(width)), min(high[1] + pad, float(height))
    return np.array([x0, y0, x1 - x0, y1 - y0])


def skeleton_from_category(category: store.Category):
    """The sleap-io `Skeleton` of a category: names in order, edges, flip pairs as symmetries."""
    import sleap_io as sio

    return sio.Skeleton(nodes=list(category.keypoints), edges=[list(e) for e in category.skeleton],
                        symmetries=[list(p) for p in category.flip_pairs], name=category.name)


def category_from_skeleton(skeleton, category_id: int, name: str) -> store.Category:
    """A store category from a sleap-io `Skeleton` (flip pairs as (lower, higher) index pairs)."""
    try:
        return store.Category(id=category_id, name=name, keypoints=tuple(skeleton.node_names),
                              skeleton=tuple((int(a), int(b)) for a, b in skeleton.edge_inds),
                              flip_pairs=tuple((int(a), int(b)) for a, b in skeleton.symmetry_inds))
    except ValueError as exc:
        raise SemcorrError(f"skeleton {name!r}: {exc}") from None


def points_from_keypoints(keypoints: np.ndarray) -> np.ndarray:
    """(K, 3) store keypoints to sleap-io's (K, 3) x, y, visible (hidden points keep x, y)."""
    points = keypoints.astype(float).copy()
    points[keypoints[:, 2] == 0, :2] = np.nan
    points[:, 2] = keypoints[:, 2] == 2
    return points


def keypoints_from_points(xy: np.ndarray, visible: np.ndarray) -> np.ndarray:
    """sleap-io point coordinates and visible flags to (K, 3) store keypoints (NaN where not labelled)."""
    xy = np.asarray(xy, float).reshape(-1, 2)
    finite = np.isfinite(xy).all(axis=1)
    visibility = np.where(finite & np.asarray(visible, bool), 2, np.where(finite, 1, 0)).astype(float)
    keypoints = np.column_stack([xy, visibility])
    keypoints[visibility == 0, :2] = np.nan
    return keypoints


def labels_from_dataset(dataset: store.Dataset, categories: list[store.Category], image_ids: list[int],
                        video_of_image, tracks: bool = False):
    """sleap-io `Labels` of some images: one frame per image, the user instances of `categories`.

    Args:
        dataset: the store.
        categories: the categories to write (one skeleton each).
        image_ids: the images, in frame order.
        video_of_image: image id -> (sleap-io Video, frame index).
        tracks: give the j-th instance of each image the track `individual<j+1>` (multi-animal files).

    Returns:
        (labels, counts): counts has `hidden` (visibility-1 points) and `empty` (instances without a
        labelled keypoint, which are left out).
    """
    import sleap_io as sio

    skeletons = {c.id: skeleton_from_category(c) for c in categories}
    by_image: dict[int, list[store.Instance]] = {}
    for inst in dataset.instances:
        if inst.category_id in skeletons:
            by_image.setdefault(inst.image_id, []).append(inst)
    track_list: list = []
    frames, videos, counts = [], [], {"hidden": 0, "empty": 0, "instances": 0, "keypoints": 0}
    for image_id in image_ids:
        video, frame_idx = video_of_image(image_id)
        if video not in videos:
            videos.append(video)
        instances = []
        for inst in by_image.get(image_id, []):
            if not inst.labelled.any():
                counts["empty"] += 1
                continue
            track = None
            if tracks:
                while len(track_list) <= len(instances):
                    track_list.append(sio.Track(name=f"individual{len(track_list) + 1}"))
                track = track_list[len(instances)]
            instances.append(sio.Instance.from_numpy(points_from_keypoints(inst.keypoints),
                                                     skeletons[inst.category_id], track=track))
            counts["hidden"] += int((inst.keypoints[:, 2] == 1).sum())
            counts["instances"] += 1
            counts["keypoints"] += int(inst.labelled.sum())
        frames.append(sio.LabeledFrame(video=video, frame_idx=frame_idx, instances=instances))
    labels = sio.Labels(labeled_frames=frames, videos=videos, skeletons=list(skeletons.values()), tracks=track_list)
    return labels, counts


# ---------------------------------------------------------------------------- import


def read_labels(reader, path: Path, what: str, fix: str):
    """sleap-io `reader(path)`; SemcorrError naming the file when it is missing or not a readable `what`."""
    path = Path(path)
    if not path.is_file():
        raise SemcorrError(f"{path}: file not found; give a {what}")
    try:
        return reader(str(path))
    except Exception as exc:  # noqa: BLE001 - h5py/pynwb/sleap-io raise many types for a bad file
        raise SemcorrError(f"{path}: not a readable {what} ({' '.join(str(exc).split())[:120]}); {fix}") from None



def frame_source(video, frame_idx: int) -> Path | None:
    """The image file a frame is, when the video is a set of image files; None for a real video."""
    filename = video.filename
    if isinstance(filename, list | tuple):
        return Path(filename[frame_idx]) if 0 <= frame_idx < len(filename) else None
    path = Path(str(filename))
    return path if path.suffix.lower() in IMAGE_SUFFIXES and frame_idx == 0 else None


def _frame_png(video, frame_idx: int, record: str) -> bytes:
    """A video frame decoded by sleap-io, as PNG bytes."""
    from PIL import Image

    try:
        pixels = np.asarray(video[frame_idx])
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a bad input here
        raise SemcorrError(f"{record}: cannot decode the frame ({' '.join(str(exc).split())[:100]}); make the "
                           "video readable or embed the frames") from None
    pixels = pixels.reshape(pixels.shape[-3:]) if pixels.ndim == 4 else pixels
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _image_size(path: Path, record: str) -> tuple[int, int]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as handle:
            handle.load()
            return handle.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise SemcorrError(f"{record}: image {path} cannot be read ({' '.join(str(exc).split())[:100]}); "
                           "replace the file") from None


def _unique_name(name: str, taken: set[str]) -> str:
    stem, dot, suffix = name.rpartition(".")
    candidate, counter = name, 1
    while candidate in taken:
        counter += 1
        candidate = f"{stem}-{counter}{dot}{suffix}"
    taken.add(candidate)
    return candidate


@dataclass
class ImportSpec:
    """How to read one sleap-io `Labels` into the store.

    Attributes:
        labels: what sleap-io read.
        source: the file or folder it came from (named in errors and provenance).
        annotator: provenance annotator ("sleap", "deeplabcut", ...).
        category_names: skeleton -> category name (else the skeleton's name, else "object").
        losses: loss lines already known for this source.
        boxes: id(sleap-io instance) -> COCO box, where the source has boxes (else from the keypoints).
    """

    labels: object
    source: Path
    annotator: str
    category_names: dict = field(default_factory=dict)
    losses: list[str] = field(default_factory=list)
    boxes: dict = field(default_factory=dict)


def import_labels(specs: list[ImportSpec], out_dir: Path, fmt: str) -> InterchangeReport:
    """Write the user instances of sleap-io `Labels` as a new dataset directory (atomically).

    Images are copied (image files as they are, video frames as PNG) into `out_dir/images/`;
    keypoints get provenance `imported`; boxes come from the keypoints (see `box_from_keypoints`).
    Predicted instances are left out and counted in the report's losses.

    Raises:
        SemcorrError: an output that overlaps a source or holds annotation work, duplicate category
            names, unreadable frames, keypoints outside their image; nothing is written then.
    """
    out_dir = Path(out_dir)
    refuse_file_target(out_dir)
    refuse_overlap(out_dir, [spec.source for spec in specs])
    categories: dict[int, store.Category] = {}
    skeleton_ids: dict[tuple[int, int], int] = {}
    for index, spec in enumerate(specs):
        for number, skeleton in enumerate(spec.labels.skeletons):
            name = spec.category_names.get(id(skeleton)) or skeleton.name or "object"
            if any(c.name == name for c in categories.values()):
                raise SemcorrError(f"{spec.source}: skeleton {name!r}: a category of that name was already read; "
                                   "give each skeleton its own name")
            category_id = len(categories) + 1
            categories[category_id] = category_from_skeleton(skeleton, category_id, name)
            skeleton_ids[(index, id(skeleton))] = category_id
    report = InterchangeReport(path=out_dir)
    images: dict[int, store.ImageInfo] = {}
    instances: list[store.Instance] = []
    copies: list[tuple[str, Path | bytes]] = []
    taken: set[str] = set()
    for index, spec in enumerate(specs):
        predicted = 0
        frames = sorted(spec.labels.labeled_frames,
                        key=lambda lf: (spec.labels.videos.index(lf.video), lf.frame_idx))
        for frame in frames:
            video_index = spec.labels.videos.index(frame.video)
            record = f"{spec.source}: video {video_index} frame {frame.frame_idx}"
            path = frame_source(frame.video, frame.frame_idx)
            if path is not None:
                if not path.is_file():
                    raise SemcorrError(f"{record}: image {path} not found; put the frame there")
                width, height = _image_size(path, record)
                name = _unique_name(f"{safe_component(path.parent.name)}/{safe_component(path.name)}", taken)
                copies.append((name, path))
            else:
                data = _frame_png(frame.video, frame.frame_idx, record)
                from PIL import Image

                with Image.open(io.BytesIO(data)) as handle:
                    width, height = handle.size
                stem = safe_component(Path(str(frame.video.filename)).stem)
                name = _unique_name(f"{stem}/{frame.frame_idx:06d}.png", taken)
                copies.append((name, data))
            image_id = len(images) + 1
            images[image_id] = store.ImageInfo(id=image_id, file_name=name, width=int(width), height=int(height))
            predicted += len(frame.predicted_instances)
            for number, inst in enumerate(frame.user_instances):
                category_id = skeleton_ids[(index, id(inst.skeleton))]
                category = categories[category_id]
                keypoints = keypoints_from_points(inst.points["xy"], inst.points["visible"])
                outside = [k for k, (x, y, v) in enumerate(keypoints)
                           if v > 0 and not (0 <= x <= width and 0 <= y <= height)]
                if outside:
                    k = outside[0]
                    raise SemcorrError(f"{record}: instance {number}: keypoint {category.keypoints[k]!r} at "
                                       f"({keypoints[k, 0]:g}, {keypoints[k, 1]:g}) is outside the {width}x{height} "
                                       "image; fix or delete the point")
                bbox = spec.boxes.get(id(inst))
                bbox = box_from_keypoints(keypoints, width, height) if bbox is None else bbox
                labelled = np.flatnonzero(keypoints[:, 2] > 0)
                provenance = {str(int(k)): {"action": "imported", "round": 0, "annotator": spec.annotator,
                                            "source": spec.source.name} for k in labelled}
                instances.append(store.Instance(
                    id=len(instances) + 1, image_id=image_id, category_id=category_id, bbox=bbox,
                    keypoints=keypoints, area=float(bbox[2] * bbox[3]),
                    extra_attributes={"source": fmt, "keypoint_provenance": provenance} if len(labelled) else
                    {"source": fmt}))
                report.keypoints += len(labelled)
        report.losses.extend(spec.losses)
        if predicted:
            report.losses.append(f"{spec.source}: {predicted} predicted instances left out (only user labels "
                                 "are imported)")
    report.images, report.instances = len(images), len(instances)
    source_names = ", ".join(spec.source.name for spec in specs)
    dataset = store.Dataset(images=images, categories=categories, instances=instances,
                            image_root=out_dir / store.IMAGES_DIR,
                            info={"description": f"semcorr import {fmt} of {source_names}"})
    with atomic.staged_directory(out_dir, "dataset") as staging:
        for name, content in copies:
            target = staging / store.IMAGES_DIR / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                target.write_bytes(content)
            else:
                shutil.copyfile(content, target)
        store.save_dataset(dataset, staging)
        store.load_dataset(staging)  # the written store passes the same validation as any other
    return report
