"""Round planning (MISC210K 3.2): 40% of images labelled by hand train the ALM, the ALM
pre-labels 30% of the rest for review, is retrained on the feedback, and pre-labels the rest.

The test split is frozen before the first round: its images always go to the manual set, so
machine pre-labels never bias evaluation data. The plan lives in `annotation/plan.json`.
"""

from __future__ import annotations

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
    manual_count = max(0, int(round(manual * len(ids))) - int(test.sum()))
    chosen = set(ids[test].tolist()) | set(others[:manual_count].tolist())
    rest = others[manual_count:]
    first_count = int(round(first * len(rest)))
    first_set = set(rest[:first_count].tolist())
    rows = [{"image_id": int(i), "set": "manual" if i in chosen else ("alm1" if i in first_set else "alm2"),
             "frozen_test": bool(t)} for i, t in zip(ids, test)]
    return pd.DataFrame(rows, columns=["image_id", "set", "frozen_test"])


def save_plan(root: Path, plan: pd.DataFrame, seed: int, manual: float, first: float) -> Path:
    """Write `annotation/plan.json` (every image starts as `planned`)."""
    path = Path(root) / PLAN_FILE
    images = {str(r.image_id): {"set": r.set, "frozen_test": r.frozen_test, "status": "planned"}
              for r in plan.itertuples()}
    atomic.write_json(path, {"seed": seed, "fractions": {"manual": manual, "first": first}, "images": images},
                      indent=1)
    return path


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


def mark_status(root: Path, image_ids: list[int], status: str) -> None:
    """Record a status (e.g. `pushed round 2`, `reviewed round 2`) for these images in the plan."""
    plan = load_plan(root)
    for image_id in image_ids:
        entry = plan["images"].get(str(image_id))
        if entry is not None:
            entry["status"] = status
    atomic.write_json(Path(root) / PLAN_FILE, plan, indent=1)
