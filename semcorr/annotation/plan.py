"""Round planning (MISC210K 3.2): 40% of images labelled by hand train the ALM, the ALM
pre-labels 30% of the rest for review, is retrained on the feedback, and pre-labels the rest.

The test split is frozen before the first round: its images always go to the manual set, so
machine pre-labels never bias evaluation data. The plan lives in `annotation/plan.json`, with a
hash of the splits it was made from: `review push` refuses when `splits.json` changed since.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

from semcorr import atomic
from semcorr.errors import SemcorrError
from semcorr.store import read_json

PLAN_FILE = Path("annotation") / "plan.json"
SETS = ("manual", "alm1", "alm2")


def plan_images(image_ids: list[int], splits: dict[int, str], manual: float = 0.4, first: float = 0.3,
                seed: int = 0) -> pd.DataFrame:
    """image_id, set (manual / alm1 / alm2), frozen_test; seeded.

    `manual` of all images (chosen at random among the non-test ones, after every test image
    is put there) are labelled by hand; `first` of the remaining images form the first ALM
    set, the rest the second.
    """
    if not (0 <= manual <= 1 and 0 <= first <= 1):
        raise SemcorrError(f"--manual {manual} / --first {first}: fractions must lie in [0, 1]")
    ids = np.array(sorted(image_ids), dtype=np.int64)
    test = np.array([splits.get(int(i)) == "test" for i in ids])
    rng = np.random.default_rng(seed)
    others = rng.permutation(ids[~test])
    manual_count = max(0, round(manual * len(ids)) - int(test.sum()))
    chosen = set(ids[test].tolist()) | set(others[:manual_count].tolist())
    rest = others[manual_count:]
    first_count = round(first * len(rest))
    first_set = set(rest[:first_count].tolist())
    rows = [{"image_id": int(i), "set": "manual" if i in chosen else ("alm1" if i in first_set else "alm2"),
             "frozen_test": bool(t)} for i, t in zip(ids, test)]
    return pd.DataFrame(rows, columns=["image_id", "set", "frozen_test"])


def splits_hash(splits: dict[int, str]) -> str:
    """SHA-256 of the splits (image id -> split), independent of key order."""
    canonical = json.dumps({str(k): splits[k] for k in sorted(splits)}, sort_keys=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def save_plan(root: Path, plan: pd.DataFrame, seed: int, manual: float, first: float,
              splits: dict[int, str] | None = None) -> Path:
    """Write `annotation/plan.json`: every image starts as `planned`, except that an image whose set
    is unchanged from an existing plan keeps its status. `splits` (what the plan was made from) is
    recorded as a hash for `check_splits`."""
    path = Path(root) / PLAN_FILE
    previous = {}
    if path.is_file():
        try:
            old = read_json(path)
            previous = old.get("images", {}) if isinstance(old, dict) else {}
        except SemcorrError:
            previous = {}
    images = {}
    for r in plan.itertuples():
        before = previous.get(str(r.image_id))
        status = before.get("status", "planned") if isinstance(before, dict) and before.get("set") == r.set \
            else "planned"
        images[str(r.image_id)] = {"set": r.set, "frozen_test": bool(r.frozen_test), "status": status}
    content = {"seed": seed, "fractions": {"manual": manual, "first": first}}
    if splits is not None:
        content["splits_sha256"] = splits_hash(splits)
    atomic.write_json(path, {**content, "images": images}, indent=1)
    return path


def check_splits(root: Path, plan: dict, splits: dict[int, str]) -> None:
    """Refuse when the splits changed since the plan (a test image could otherwise be pre-labelled).

    Raises:
        SemcorrError: one line naming the images moved and telling to re-run `annotate plan`.
    """
    path = Path(root) / PLAN_FILE
    entries = plan.get("images", {})
    moved_in = sorted(int(k) for k, v in entries.items() if splits.get(int(k)) == "test" and not v.get("frozen_test"))
    recorded = plan.get("splits_sha256")
    changed = recorded is not None and recorded != splits_hash(splits)
    if moved_in or changed:
        detail = (f"{len(moved_in)} image(s) now in the test split were planned for ALM pre-labels (image id="
                  f"{moved_in[0]}{', ...' if len(moved_in) > 1 else ''})" if moved_in else "splits.json differs")
        raise SemcorrError(f"{path}: the splits changed since the plan was made ({detail}); re-run `semcorr annotate "
                           f"plan {root}` before pushing, so that test images stay out of machine pre-labelling")


def load_plan(root: Path) -> dict:
    """The plan; SemcorrError when there is none."""
    path = Path(root) / PLAN_FILE
    if not path.is_file():
        raise SemcorrError(f"{path}: no annotation plan; run `semcorr annotate plan` first")
    return read_json(path)


def images_in(plan: dict, name: str) -> list[int]:
    """Image ids of one set of the plan."""
    if name not in SETS:
        raise SemcorrError(f"set {name!r}: use one of {', '.join(SETS)}")
    return sorted(int(k) for k, v in plan["images"].items() if v["set"] == name)


def mark_status(root: Path, image_ids: list[int], status: str, keep: tuple[str, ...] = ()) -> None:
    """Record a status (e.g. `pushed round 2`, `reviewed round 2`) for these images in the plan;
    an image whose status is one of `keep` keeps it."""
    plan = load_plan(root)
    for image_id in image_ids:
        entry = plan["images"].get(str(image_id))
        if entry is not None and entry.get("status") not in keep:
            entry["status"] = status
    atomic.write_json(Path(root) / PLAN_FILE, plan, indent=1)


def record_push(root: Path, round_index: int, image_ids: list[int], prelabelled: list[int],
                auto_accept: dict | None = None) -> None:
    """Mark the images `pushed round N` (a `reviewed round N` image keeps its status) and record which
    instances already carried labels when pushed (the ALM may have trained on those), and, with
    `auto_accept` ({"threshold": P, "keypoints": n}), what `--auto-accept` wrote (one entry per push)."""
    plan = load_plan(root)
    for image_id in image_ids:
        entry = plan["images"].get(str(image_id))
        if entry is not None and entry.get("status") != f"reviewed round {round_index}":
            entry["status"] = f"pushed round {round_index}"
    rounds = plan.setdefault("rounds", {})
    before = rounds.get(str(round_index), {}).get("labelled_when_pushed", [])
    entry = {"labelled_when_pushed": sorted(set(before) | {int(i) for i in prelabelled})}
    pushes = rounds.get(str(round_index), {}).get("auto_accept", [])
    if auto_accept is not None:
        pushes = [*pushes, auto_accept]
    if pushes:
        entry["auto_accept"] = pushes
    rounds[str(round_index)] = entry
    atomic.write_json(Path(root) / PLAN_FILE, plan, indent=1)


def labelled_when_pushed(plan: dict, round_index: int) -> set[int] | None:
    """Annotation ids already labelled when round N was pushed; None when the push left no record."""
    entry = plan.get("rounds", {}).get(str(round_index))
    return None if entry is None else set(entry.get("labelled_when_pushed", []))


IMPORTED_LABELS = Path("annotation") / "imported_labels.json"


def clear_labels(root: Path, dataset) -> tuple[int, Path | None]:
    """Set every keypoint of the store to unlabelled (v=0), after keeping the old annotations.

    A loop started from labelled data (e.g. COCO keypoints from `coco-filter --keypoints`) would
    otherwise train round 1 on labels no one reviewed. The old `annotations.json` is first copied,
    byte for byte, to `annotation/imported_labels.json` (an existing copy is never overwritten: the
    next free `imported_labels.<k>.json` is used). Keypoints reviewed in a round are refused.

    Returns:
        (keypoints cleared, path of the copy or None when nothing was labelled). The caller saves
        the dataset.
    """
    from semcorr.store import ANNOTATIONS_FILE

    for inst in dataset.instances:
        provenance = inst.extra_attributes.get("keypoint_provenance") or {}
        reviewed = [v for v in provenance.values() if isinstance(v, dict) and v.get("action") != "imported"]
        if reviewed:
            raise SemcorrError(f"{Path(root) / ANNOTATIONS_FILE}: annotation id={inst.id} holds keypoints reviewed "
                               f"in round {reviewed[0].get('round')}; --clear-labels would discard review work, so "
                               "plan without it")
    cleared = int(sum(int(inst.labelled.sum()) for inst in dataset.instances))
    if not cleared:
        return 0, None
    source = (Path(root) / ANNOTATIONS_FILE).read_bytes()
    copy = write_new(Path(root) / IMPORTED_LABELS, source)
    for inst in dataset.instances:
        inst.keypoints[:] = (np.nan, np.nan, 0)
        inst.extra_attributes.pop("keypoint_provenance", None)
    return cleared, copy


def write_new(path: Path, data: bytes) -> Path:
    """Write `data` to `path`, or to `<stem>.<k><suffix>` for the first free k: never over an existing file."""
    import contextlib
    import os
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, staging = tempfile.mkstemp(prefix=f".{path.stem}.semcorr-{os.getpid()}-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        mask = os.umask(0o022)
        os.umask(mask)
        os.chmod(staging, 0o666 & ~mask)
        number = 0
        while True:
            target = path if number == 0 else path.with_name(f"{path.stem}.{number}{path.suffix}")
            try:
                os.link(staging, target)
                return target
            except FileExistsError:
                number += 1
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staging)
