"""SLEAP `.slp` files through sleap-io: `load_sleap` (import into a store) and `save_sleap` (export a store).

A SLEAP file holds, per category, a skeleton (keypoint names in order, edges, symmetries = flip
pairs) and per image its instances with visible / hidden points: visibility 0/1/2 survives. It
has no boxes, masks, azimuth bins, truncation/occlusion flags, keypoint descriptions or
provenance; an export says so in its report. Each image is written as its own single-image video
that points at the store's image file (absolute path), the way SLEAP references external images.
"""

from __future__ import annotations

import os
from pathlib import Path

from semcorr import store
from semcorr.errors import SemcorrError
from semcorr.formats.pose import ImportSpec, InterchangeReport, import_labels, labels_from_dataset, read_labels
from semcorr.paths import refuse_overlap

NOT_HELD = "boxes, masks, azimuth bins, truncation/occlusion flags, keypoint descriptions and provenance"


def read_sleap_labels(path: Path):
    """sleap-io `Labels` of a `.slp` file; SemcorrError naming the file when it is not one."""
    import sleap_io as sio

    return read_labels(lambda name: sio.load_slp(name, open_videos=False), path, "SLEAP file",
                       "export it again from SLEAP")


def load_sleap(source: Path, out_dir: Path) -> InterchangeReport:
    """Import a SLEAP `.slp` file (user instances) as a new dataset directory; categories are the skeletons."""
    labels = read_sleap_labels(source)
    return import_labels([ImportSpec(labels=labels, source=Path(source), annotator="sleap")], out_dir, "sleap")


def save_sleap(root: Path, out_path: Path) -> InterchangeReport:
    """Export a store as a SLEAP `.slp` file (atomically); returns what was written and what SLEAP cannot hold."""
    import sleap_io as sio

    from semcorr import atomic

    root, out_path = Path(root), Path(out_path)
    if out_path.suffix != ".slp":
        raise SemcorrError(f"{out_path}: a SLEAP file must end in .slp")
    refuse_overlap(out_path, [root])
    dataset = store.load_dataset(root)
    image_ids = sorted(dataset.images)
    videos = {i: sio.Video(filename=str((dataset.image_root / dataset.images[i].file_name).resolve()),
                           open_backend=False) for i in image_ids}
    categories = [dataset.categories[c] for c in sorted(dataset.categories)]
    labels, counts = labels_from_dataset(dataset, categories, image_ids, lambda i: (videos[i], 0))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    atomic.clean_stale_staging(out_path)
    staging = out_path.with_name(f".{out_path.name}.semcorr-{os.getpid()}-slp.tmp")
    try:
        sio.save_slp(labels, str(staging), verbose=False)
        staging.replace(out_path)
    finally:
        staging.unlink(missing_ok=True)
    report = InterchangeReport(path=out_path, images=len(image_ids), instances=counts["instances"],
                               keypoints=counts["keypoints"])
    report.losses.append(f"{out_path}: SLEAP holds no {NOT_HELD}")
    if counts["empty"]:
        report.losses.append(f"{out_path}: {counts['empty']} instances without a labelled keypoint left out")
    return report
