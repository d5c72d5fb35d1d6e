"""Round planning: fractions, the frozen test split, determinism."""

import pytest

from semcorr.annotation.plan import images_in, load_plan, plan_images, save_plan
from semcorr.errors import SemcorrError


def test_fractions_and_frozen_test(tmp_path):
    ids = list(range(1, 101))
    splits = {i: ("test" if i <= 10 else "trn") for i in ids}
    plan = plan_images(ids, splits, manual=0.4, first=0.3, seed=1)
    counts = plan["set"].value_counts().to_dict()
    assert counts == {"manual": 40, "alm1": 18, "alm2": 42}  # 40% manual; 30% of the other 60 -> 18
    assert set(plan[plan.frozen_test].set) == {"manual"} and plan.frozen_test.sum() == 10
    assert plan.equals(plan_images(ids, splits, 0.4, 0.3, seed=1))
    assert not plan.equals(plan_images(ids, splits, 0.4, 0.3, seed=2))
    save_plan(tmp_path, plan, 1, 0.4, 0.3)
    saved = load_plan(tmp_path)
    assert images_in(saved, "alm1") == sorted(plan[plan.set == "alm1"].image_id.tolist())
    assert {v["status"] for v in saved["images"].values()} == {"planned"}


def test_test_split_larger_than_manual_share():
    ids = list(range(10))
    plan = plan_images(ids, {i: "test" for i in range(6)}, manual=0.4, first=0.5)
    assert plan["set"].value_counts().to_dict() == {"manual": 6, "alm1": 2, "alm2": 2}


def test_bad_fractions_and_missing_plan(tmp_path):
    with pytest.raises(SemcorrError, match="fractions must lie in"):
        plan_images([1], {}, manual=1.5)
    with pytest.raises(SemcorrError, match="no annotation plan"):
        load_plan(tmp_path)
