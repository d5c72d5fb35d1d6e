"""DeepLabCut projects through sleap-io: `load_dlc` (import) and `save_dlc` (export).

A DeepLabCut project is `config.yaml` plus `labeled-data/<video>/CollectedData_<scorer>.csv`
(multi-row header: scorer / [individuals /] bodyparts / coords) with the frames as PNG beside
it. sleap-io reads and writes the CSV; this module writes `config.yaml` and the frames, checks a
CSV before sleap-io reads it (so a malformed file gets one line naming its row), and restores the
bodypart order of the config (sleap-io sorts bodyparts by name).

What DeepLabCut cannot hold, reported per file on export: visibility 1 ("labelled but hidden";
DeepLabCut has only a position or nothing, so these points are not written), flip pairs,
keypoint descriptions, boxes, masks, azimuth bins and flags. Every imported point is visible (2).
One project per category (`OUT/<category>/`); images with several instances make a
multi-animal project (individuals `individual1..N`).
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np
import yaml

from semcorr import atomic, store
from semcorr.errors import SemcorrError
from semcorr.formats.pose import ImportSpec, InterchangeReport, import_labels, labels_from_dataset
from semcorr.paths import path_problem, refuse_file_target, refuse_overlap, safe_component

DEFAULT_SCORER = "semcorr"
NOT_HELD = "flip pairs, keypoint descriptions, boxes, masks, azimuth bins and truncation/occlusion flags"


# ---------------------------------------------------------------------------- reading


def config_bodyparts(config: dict) -> list[str]:
    """The bodyparts of a DeepLabCut config in its order (multi-animal: animal parts, then unique parts)."""
    parts = config.get("bodyparts")
    if config.get("multianimalproject") or parts == "MULTI!":
        parts = list(config.get("multianimalbodyparts") or []) + list(config.get("uniquebodyparts") or [])
    return [str(p) for p in parts or []]


def read_config(path: Path) -> dict:
    """A DeepLabCut `config.yaml` as a dict; SemcorrError naming the file when it is not one."""
    try:
        config = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise SemcorrError(f"{path}: not a readable DeepLabCut config ({' '.join(str(exc).split())[:120]})") from None
    if not isinstance(config, dict) or not config_bodyparts(config):
        raise SemcorrError(f"{path}: not a DeepLabCut config (no bodyparts); give the project's config.yaml")
    return config


def check_dlc_csv(path: Path) -> list[str]:
    """Check a CollectedData CSV before sleap-io reads it; returns its bodyparts in column order.

    Raises:
        SemcorrError: naming the file and line of a wrong header, a non-number, an unsafe image
            path (absolute or with `..`) or a frame that is not beside the CSV.
    """
    try:
        rows = list(csv.reader(io.StringIO(Path(path).read_text(encoding="utf-8-sig"))))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise SemcorrError(f"{path}: cannot be read as CSV ({' '.join(str(exc).split())[:100]})") from None

    def fail(line: int, problem: str) -> SemcorrError:
        return SemcorrError(f"{path}: line {line}: {problem}; write the DeepLabCut header "
                            "scorer / [individuals /] bodyparts / coords and one row per frame")

    names = [row[0] if row else "" for row in rows[:4]]
    levels = 4 if len(names) > 1 and names[1] == "individuals" else 3
    expected = ["scorer", "individuals", "bodyparts", "coords"] if levels == 4 else ["scorer", "bodyparts", "coords"]
    for line, want in enumerate(expected, start=1):
        if len(rows) < line or not rows[line - 1] or rows[line - 1][0] != want:
            raise fail(line, f"header row {line} must start with {want!r}")
    coords_row, parts_row = rows[levels - 1], rows[levels - 2]
    first = next((i for i, c in enumerate(coords_row) if c in ("x", "y", "likelihood")), None)
    if first is None or first not in (1, 3) or any(c not in ("x", "y", "likelihood") for c in coords_row[first:]):
        raise fail(levels, "coords must be x, y (and likelihood) for every bodypart")
    if any(len(row) != len(coords_row) for row in rows[:levels]):
        raise fail(1, "header rows have different lengths")
    for number, row in enumerate(rows[levels:], start=levels + 1):
        if not row:
            continue
        if len(row) != len(coords_row):
            raise fail(number, f"{len(row)} cells, the header has {len(coords_row)}")
        image = "/".join(row[:first]) if first == 3 else row[0]
        problem = path_problem(image)
        if problem:
            raise fail(number, f"unsafe image path: {problem}")
        if not (Path(path).parent / Path(image).name).is_file() and not (Path(path).parent / image).is_file():
            raise fail(number, f"frame {image} is not beside the CSV")
        for column, cell in enumerate(row[first:], start=first):
            try:
                value = float(cell) if cell.strip() else math.nan
            except ValueError:
                value = None
            if value is None or math.isinf(value):
                raise fail(number, f"{parts_row[column]} {coords_row[column]} is {cell!r}, not a number")
    return list(dict.fromkeys(parts_row[first:]))


def _project_labels(config_path: Path) -> ImportSpec:
    """One DeepLabCut project read by sleap-io, bodyparts in the config's order."""
    import sleap_io as sio

    config = read_config(config_path)
    folder = config_path.parent / "labeled-data"
    csvs = sorted(folder.glob("*/CollectedData_*.csv")) if folder.is_dir() else []
    if not csvs:
        raise SemcorrError(f"{folder}: no labeled-data/<video>/CollectedData_<scorer>.csv; label frames first")
    header_parts: list[str] = []
    for path in csvs:
        header_parts += [p for p in check_dlc_csv(path) if p not in header_parts]
    order = config_bodyparts(config)
    unknown = [p for p in header_parts if p not in order]
    if unknown:
        raise SemcorrError(f"{csvs[0]}: bodypart {unknown[0]!r} is not in {config_path}; add it to the config")
    try:
        labels = sio.load_dlc_project(str(config_path))
    except Exception as exc:  # noqa: BLE001 - pandas/sleap-io raise many types for a bad project
        raise SemcorrError(f"{config_path}: sleap-io cannot read the project ({' '.join(str(exc).split())[:120]})"
                           ) from None
    skeleton = labels.skeletons[0]
    present = [p for p in order if p in skeleton.node_names]
    labels.reorder_nodes(present, skeleton=skeleton)
    name = str(config.get("Task") or config_path.parent.name)
    losses = []
    missing = [p for p in order if p not in present]
    if missing:
        losses.append(f"{config_path}: bodyparts {', '.join(missing)} are in the config but never labelled; "
                      "they are not in the imported category")
    return ImportSpec(labels=labels, source=config_path.parent, annotator="deeplabcut",
                      category_names={id(skeleton): name}, losses=losses)


def find_projects(source: Path) -> list[Path]:
    """The `config.yaml` files SOURCE names: a config, a project folder, or a folder of project folders."""
    source = Path(source)
    if source.is_file() and source.name == "config.yaml":
        return [source]
    if (source / "config.yaml").is_file():
        return [source / "config.yaml"]
    projects = sorted(source.glob("*/config.yaml")) if source.is_dir() else []
    if not projects:
        raise SemcorrError(f"{source}: no DeepLabCut project (config.yaml) here or in its subfolders")
    return projects


def load_dlc(source: Path, out_dir: Path) -> InterchangeReport:
    """Import DeepLabCut project(s) as a new dataset directory: one category per project (named by its Task)."""
    specs = [_project_labels(path) for path in find_projects(source)]
    for spec in specs:
        spec.losses.append(f"{spec.source}: DeepLabCut has no visibility flag: labelled points come in as visible "
                           "(2)")
    return import_labels(specs, out_dir, "dlc")


# ---------------------------------------------------------------------------- writing


def project_config(category: store.Category, project_path: Path, video: str, size: tuple[int, int],
                   individuals: int, scorer: str) -> dict:
    """A DeepLabCut `config.yaml` for one category (the keys DeepLabCut's `create_new_project` writes)."""
    names = list(category.keypoints)
    config = {
        "Task": category.name, "scorer": scorer, "date": "semcorr",
        "multianimalproject": individuals > 1, "identity": False if individuals > 1 else None,
        "project_path": str(project_path),
        "video_sets": {str(project_path / "videos" / f"{video}.mp4"): {"crop": f"0, {size[0]}, 0, {size[1]}"}},
        "bodyparts": "MULTI!" if individuals > 1 else names,
        "start": 0, "stop": 1, "numframes2pick": 20,
        "skeleton": [[names[a], names[b]] for a, b in category.skeleton], "skeleton_color": "black",
        "pcutoff": 0.6, "dotsize": 12, "alphavalue": 0.7, "colormap": "rainbow",
        "TrainingFraction": [0.95], "iteration": 0, "default_net_type": "resnet_50",
        "default_augmenter": "default", "snapshotindex": -1, "batch_size": 8,
        "cropping": False, "x1": 0, "x2": size[0], "y1": 0, "y2": size[1], "corner2move2": [50, 50], "move2corner": True,
    }
    if individuals > 1:
        config.update({"individuals": [f"individual{i + 1}" for i in range(individuals)], "uniquebodyparts": [],
                       "multianimalbodyparts": names})
    else:
        config.pop("identity")
    return config


def _png(dataset: store.Dataset, image_id: int) -> bytes:
    buffer = io.BytesIO()
    store.open_image(dataset, image_id).save(buffer, format="PNG")
    return buffer.getvalue()


def save_dlc(root: Path, out_dir: Path, scorer: str = DEFAULT_SCORER) -> InterchangeReport:
    """Export a store as DeepLabCut projects, one per category, under `out_dir` (replaced atomically).

    Raises:
        SemcorrError: an output that overlaps the store, an unsafe scorer name, unreadable images.
    """
    import sleap_io as sio

    root, out_dir = Path(root), Path(out_dir)
    if safe_component(scorer) != scorer:
        raise SemcorrError(f"--scorer {scorer!r}: use letters, digits, '.', '_', '+' or '-'")
    refuse_file_target(out_dir)
    dataset = store.load_dataset(root)
    refuse_overlap(out_dir, [root, dataset.image_root])
    report = InterchangeReport(path=out_dir)
    with atomic.staged_directory(out_dir, "dlc") as staging:
        for category in (dataset.categories[c] for c in sorted(dataset.categories)):
            members = [inst for inst in dataset.instances if inst.category_id == category.id]
            image_ids = sorted({inst.image_id for inst in members})
            if not image_ids:
                continue
            video = safe_component(category.name)
            frame_of = {image_id: k for k, image_id in enumerate(image_ids)}
            per_image = np.bincount([frame_of[inst.image_id] for inst in members if inst.labelled.any()],
                                    minlength=1)
            individuals = max(int(per_image.max()), 1)
            project = staging / video
            frames = project / "labeled-data" / video
            frames.mkdir(parents=True)
            for frame_idx, image_id in enumerate(image_ids):
                (frames / f"img{frame_idx:04d}.png").write_bytes(_png(dataset, image_id))
            size = (max(dataset.images[i].width for i in image_ids), max(dataset.images[i].height for i in image_ids))
            # a video named like the folder, with a length: sleap-io names the CSV rows labeled-data/<stem>/imgNNNN.png
            holder = sio.Video(filename=str(frames), open_backend=False,
                               backend_metadata={"shape": (len(image_ids), size[1], size[0], 3)})
            labels, counts = labels_from_dataset(dataset, [category], image_ids,
                                                 lambda i, frames=frame_of, v=holder: (v, frames[i]),
                                                 tracks=individuals > 1)
            csv_path = frames / f"CollectedData_{scorer}.csv"
            sio.save_csv(labels, str(csv_path), format="dlc", scorer=scorer, include_score=False)
            config = project_config(category, out_dir.resolve() / video, video, size, individuals, scorer)
            atomic.write_text(project / "config.yaml", yaml.safe_dump(config, sort_keys=False))
            shown = out_dir / video / "labeled-data" / video / csv_path.name
            report.images += len(image_ids)
            report.instances += counts["instances"]
            report.keypoints += counts["keypoints"]
            if counts["hidden"]:
                report.losses.append(f"{shown}: {counts['hidden']} keypoints labelled but hidden (visibility 1) not "
                                     "written: DeepLabCut has no hidden flag")
            if counts["empty"]:
                report.losses.append(f"{shown}: {counts['empty']} instances without a labelled keypoint not written")
            report.losses.append(f"{shown}: DeepLabCut holds no {NOT_HELD}")
    return report
