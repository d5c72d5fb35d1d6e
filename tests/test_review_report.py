"""The round report's calibration and reviewer-effort figures, and `review push --auto-accept`, on small
hand-made review data whose expected values are worked out by hand (no server)."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest

from semcorr import commands, store
from semcorr.annotation import review
from semcorr.annotation.plan import labelled_when_pushed, plan_images, record_push, save_plan
from semcorr.annotation.review import KeypointAction, TaskReview
from semcorr.errors import SemcorrError
from semcorr.store import Category, ImageInfo, Instance

CUP = Category(id=1, name="cup", keypoints=("rim", "handle", "base"))
IMAGE = ImageInfo(1, "a.jpg", 200, 100)
NAN = np.nan


def point(region_id, label, x, y, parent, score=None):
    region = {"id": region_id, "type": "keypointlabels", "parentID": parent, "original_width": 200,
              "original_height": 100, "value": {"x": x / 2.0, "y": float(y), "keypointlabels": [label]}}
    if score is not None:
        region["score"] = score
    return region


def two_cups() -> store.Dataset:
    """Cup 7: box 200 x 100 (acceptance radius 5% x 200 = 10 px); cup 8: box 40 x 20 (radius 2 px)."""
    big = Instance(id=7, image_id=1, category_id=1, bbox=np.array([0, 0, 200, 100.0]),
                   keypoints=np.array([[NAN, NAN, 0]] * 3))
    small = Instance(id=8, image_id=1, category_id=1, bbox=np.array([100, 50, 40, 20.0]),
                     keypoints=np.array([[NAN, NAN, 0]] * 3))
    return store.Dataset(images={1: IMAGE}, categories={1: CUP}, instances=[big, small], image_root=Path("."))


def hand_made_round():
    """Five scored predictions and what the reviewer did with them:

    a7k0 score 0.9, left in place            -> accepted               (hit)
    a7k1 score 0.7, dragged 10 px (= radius)  -> dragged, within radius (hit)
    a7k2 score 0.3, deleted                   -> discarded              (miss)
    a8k0 score 0.5, dragged 3 px (> 2 px)     -> dragged, outside       (miss)
    a8k1 score 0.1, deleted, placed 1 px away -> accepted, replaced     (hit)
    a8k2 not predicted, placed by the reviewer -> added
    """
    predicted = [point("a7k0", "rim", 10, 10, "a7", 0.9), point("a7k1", "handle", 50, 50, "a7", 0.7),
                 point("a7k2", "base", 90, 90, "a7", 0.3), point("a8k0", "rim", 110, 55, "a8", 0.5),
                 point("a8k1", "handle", 120, 60, "a8", 0.1)]
    reviewed = [point("a7k0", "rim", 10, 10, "a7"), point("a7k1", "handle", 56, 58, "a7"),
                point("a8k0", "rim", 113, 55, "a8"), point("new1", "handle", 121, 60, "a8"),
                point("new2", "base", 130, 65, "a8")]
    actions, problems = review.classify(predicted, reviewed, CUP, IMAGE)
    assert problems == []
    return actions


def test_the_reviewer_radius_is_the_calibration_radius():
    from semcorr.alm.calibration import ACCEPT_RADIUS

    assert review.ACCEPT_RADIUS == ACCEPT_RADIUS == 0.05


def test_classify_carries_each_prediction_score_to_its_action():
    actions = hand_made_round()
    got = [(a.ann_id, a.index, a.action, a.score, a.replaced) for a in actions]
    assert got == [(7, 0, "accepted", 0.9, False), (7, 1, "dragged", 0.7, False), (7, 2, "discarded", 0.3, False),
                   (8, 0, "dragged", 0.5, False), (8, 1, "accepted", 0.1, True), (8, 2, "added", None, False)]
    assert actions[1].displacement == pytest.approx(10.0) and actions[3].displacement == pytest.approx(3.0)


def test_predicted_against_actual_acceptance_by_hand():
    report = review.round_report([TaskReview(1, "a", hand_made_round())], two_cups())
    calibration = report["calibration"]
    assert calibration["scored_keypoints"] == 5 and calibration["accept_radius"] == 0.05
    assert calibration["expected_acceptance"] == pytest.approx((0.9 + 0.7 + 0.3 + 0.5 + 0.1) / 5)  # 0.5
    assert calibration["actual_acceptance"] == pytest.approx(3 / 5)
    table = [(b["low"], b["high"], b["count"], b["predicted"], b["actual"]) for b in calibration["reliability"]]
    assert table == [(0.0, 0.2, 1, pytest.approx(0.1), 1.0), (0.2, 0.4, 1, pytest.approx(0.3), 0.0),
                     (0.4, 0.6, 1, pytest.approx(0.5), 0.0), (0.6, 0.8, 1, pytest.approx(0.7), 1.0),
                     (0.8, 1.0, 1, pytest.approx(0.9), 1.0)]
    lines = review.calibration_lines(report)
    assert len(lines) == 2 and "predicted acceptance 0.50" in lines[0] and "actual 0.60" in lines[0]
    assert "5 predicted keypoints" in lines[0] and "5% of the box" in lines[0]
    assert "0.8-1.0: 1 pred 0.90 act 1.00" in lines[1]


def test_reviewer_effort_and_clicks_by_hand():
    report = review.round_report([TaskReview(1, "a", hand_made_round())], two_cups())
    effort = report["effort"]
    # final keypoints: a7k0, a7k1, a8k0, a8k1, a8k2; not placed: a7k0 (accepted), a7k1 (10 px <= 10), a8k1
    assert (effort["final_keypoints"], effort["not_placed"]) == (5, 3)
    assert effort["not_placed_share"] == pytest.approx(0.6)
    # with the ALM: accept 0 + drag 1 + discard 1 + drag 1 + delete-and-place 3 + add 2 = 8; scratch 5 x 2 = 10
    assert (effort["clicks_with_alm"], effort["clicks_from_scratch"], effort["clicks_saved"]) == (8, 10, 2)
    assert effort["clicks_saved_share"] == pytest.approx(0.2)
    line = review.effort_line(report)
    assert "3 of 5 final keypoints (60%)" in line and "about 8 clicks with the ALM vs 10 from scratch" in line
    assert "saved 2, 20%" in line and "auto-accepted" not in line
    assert (report["accepted"], report["dragged"], report["discarded"], report["added"]) == (2, 2, 1, 1)


def test_a_manual_round_prints_no_calibration_or_effort_line():
    actions = [KeypointAction(7, 0, "manual", (1.0, 1.0)), KeypointAction(7, 1, "manual", (2.0, 2.0))]
    report = review.round_report([TaskReview(1, "a", actions)], two_cups())
    assert report["calibration"]["scored_keypoints"] == 0 and math.isnan(report["calibration"]["expected_acceptance"])
    assert report["effort"]["clicks_with_alm"] == report["effort"]["clicks_from_scratch"] == 4
    assert review.calibration_lines(report) == [] and review.effort_line(report) is None
    assert "calibration" not in review.round_report([TaskReview(1, "a", actions)])  # no boxes, no radius


def test_reliability_bins_are_closed_on_the_left_and_the_last_holds_one():
    scores = [0.0, 0.199, 0.2, 0.4, 0.6, 0.8, 1.0, 0.6]
    hits = [True, False, True, True, False, True, True, True]
    table = review.reliability_table(scores, hits)
    assert [b["count"] for b in table] == [2, 1, 1, 2, 2]
    assert table[0]["actual"] == 0.5 and table[3]["predicted"] == pytest.approx(0.6)
    assert table[3]["actual"] == 0.5 and table[4]["predicted"] == pytest.approx(0.9)
    empty = review.reliability_table([0.1], [True])
    assert [b["count"] for b in empty] == [1, 0, 0, 0, 0] and math.isnan(empty[1]["predicted"])


# ------------------------------------------------------------------ --auto-accept


@pytest.mark.parametrize("bad", [float("nan"), 0.0, -0.1, 1.0001, float("inf"), "abc"])
def test_auto_accept_threshold_must_be_a_probability(bad):
    with pytest.raises(SemcorrError) as error:
        review.check_auto_accept(bad)
    assert "--auto-accept" in str(error.value) and "\n" not in str(error.value)


def test_auto_accept_threshold_accepts_off_and_the_unit_interval():
    assert review.check_auto_accept(None) is None
    assert review.check_auto_accept(1) == 1.0 and review.check_auto_accept(0.85) == 0.85


def store_for_auto_accept() -> store.Dataset:
    """Cup 7: rim unlabelled, handle dragged in round 2 (human), base labelled without provenance (kept);
    cup 8: rim discarded by a reviewer (human), handle and base unlabelled; cup 9 unlabelled."""
    dataset = two_cups()
    big, small = dataset.instances
    big.keypoints[1:] = [[50, 50, 2], [90, 90, 2]]
    big.extra_attributes["keypoint_provenance"] = {"1": {"action": "dragged", "round": 2, "annotator": "r"}}
    small.extra_attributes["keypoint_provenance"] = {"0": {"action": "discarded", "round": 2, "annotator": "r"}}
    dataset.instances.append(Instance(id=9, image_id=1, category_id=1, bbox=np.array([0, 0, 50, 50.0]),
                                      keypoints=np.array([[NAN, NAN, 0]] * 3)))
    return dataset


# x, y, visibility, calibrated location score, visibility probability (the ALM's 5 columns)
PREDICTIONS = {
    7: np.array([[12, 11, 2, 0.95, 0.99], [55, 50, 2, 0.99, 0.99], [91, 90, 2, 0.97, 0.99]]),
    8: np.array([[110, 55, 2, 0.99, 0.99], [120, 60, 0, 0.99, 0.2], [130, 65, 2, 0.90, 0.98]]),
    9: np.array([[250, 10, 2, 0.99, 0.99], [20, 20, 2, 0.5, 0.99], [30, 30, 2, NAN, 0.99]]),
}


def test_auto_accept_picks_confident_visible_points_and_never_human_work():
    dataset = store_for_auto_accept()
    # 7/0 chosen; 7/1 dragged and 7/2 labelled: kept; 8/0 discarded: kept; 8/1 predicted not visible;
    # 8/2 score 0.90 >= 0.9 chosen; 9/0 outside the image, 9/1 below P, 9/2 no score
    assert review.auto_accept_choices(dataset, PREDICTIONS, 0.9) == [(7, 0, 0.95), (8, 2, 0.9)]
    assert review.auto_accept_choices(dataset, PREDICTIONS, 0.96) == []
    before = copy.deepcopy(dataset)
    assert review.apply_auto_accept(dataset, PREDICTIONS, 0.9, 3) == 2
    big, small, other = dataset.instances
    assert big.keypoints.tolist()[0] == [12.0, 11.0, 2.0] and small.keypoints.tolist()[2] == [130.0, 65.0, 2.0]
    assert big.extra_attributes["keypoint_provenance"]["0"] == {
        "action": "auto-accepted", "round": 3, "annotator": "alm", "score": 0.95, "threshold": 0.9}
    assert small.extra_attributes["keypoint_provenance"]["2"]["score"] == 0.9
    for now, then in zip(dataset.instances, before.instances):  # everything else as it was
        keep = [k for k in range(3) if (now.id, k) not in {(7, 0), (8, 2)}]
        np.testing.assert_array_equal(now.keypoints[keep], then.keypoints[keep])
    assert big.extra_attributes["keypoint_provenance"]["1"]["action"] == "dragged"
    assert small.extra_attributes["keypoint_provenance"]["0"]["action"] == "discarded"
    assert other.extra_attributes == {}
    # pushing again (same predictions) writes the same, and a round-3 auto-accept does not make an
    # instance count as labelled before round 3
    again = copy.deepcopy(dataset)
    review.apply_auto_accept(again, PREDICTIONS, 0.9, 3)
    assert [i.extra_attributes for i in again.instances] == [i.extra_attributes for i in dataset.instances]
    assert not review.labelled_before_round(small, 3)


def auto_accepted_store() -> store.Dataset:
    dataset = store_for_auto_accept()
    review.apply_auto_accept(dataset, PREDICTIONS, 0.9, 3)
    return dataset


def test_an_untouched_auto_accepted_point_stays_auto_accepted_through_the_real_regions():
    """Push regions made from the 5-column predictions; the reviewer leaves cup 7's rim untouched and
    drags cup 8's base: the first stays auto-accepted, the second becomes the reviewer's drag."""
    dataset = auto_accepted_store()
    regions = [r for inst in dataset.instances
               for r in review.instance_regions(inst, CUP, IMAGE, PREDICTIONS[inst.id][:, :3], PREDICTIONS[inst.id][:, 3])]
    assert next(r for r in regions if r["id"] == "a7k0")["score"] == 0.95
    reviewed = [{k: v for k, v in r.items() if k != "score"} for r in regions]
    moved = next(r for r in reviewed if r["id"] == "a8k2")
    moved["value"] = dict(moved["value"], x=moved["value"]["x"] + 2.5)  # 5 px to the right
    actions, problems = review.classify(regions, reviewed, CUP, IMAGE)
    assert problems == []
    changed = review.merge(dataset, [TaskReview(1, "reviewer@example.com", actions)], 3)
    big, small, _ = dataset.instances
    assert big.extra_attributes["keypoint_provenance"]["0"]["action"] == "auto-accepted"
    assert big.keypoints.tolist()[0] == [12.0, 11.0, 2.0]
    drag = small.extra_attributes["keypoint_provenance"]["2"]
    assert drag["action"] == "dragged" and drag["annotator"] == "reviewer@example.com"
    assert small.keypoints[2].tolist() == pytest.approx([135.0, 65.0, 2.0])
    # every pushed region got an action; only the untouched auto-accepted one is not rewritten
    assert changed == len(actions) - 1
    report = review.round_report([TaskReview(1, "r", actions)], dataset)
    assert report["auto_accepted_kept"] == 1 and "1 auto-accepted keypoints left untouched" in review.effort_line(report)


@pytest.mark.parametrize("action, expected", [
    (KeypointAction(7, 0, "accepted", (12.0, 11.0), 0.0), "auto-accepted"),  # untouched
    (KeypointAction(7, 0, "accepted", (13.0, 11.0), 1.0), "accepted"),  # nudged within the tolerance
    (KeypointAction(7, 0, "accepted", (12.0, 11.0), 0.0, replaced=True), "accepted"),  # deleted and placed anew
    (KeypointAction(7, 0, "dragged", (30.0, 11.0), 18.0), "dragged"),
    (KeypointAction(7, 0, "discarded", None), "discarded"),
])
def test_the_reviewer_action_on_an_auto_accepted_point_wins(action, expected):
    dataset = auto_accepted_store()
    changed = review.merge(dataset, [TaskReview(1, "reviewer", [action])], 3)
    entry = dataset.instances[0].extra_attributes["keypoint_provenance"]["0"]
    assert entry["action"] == expected and changed == (expected != "auto-accepted")
    if expected == "auto-accepted":
        assert entry["annotator"] == "alm" and entry["score"] == 0.95
    else:
        assert entry["annotator"] == "reviewer"
    if expected == "discarded":
        assert dataset.instances[0].keypoints[0, 2] == 0 and np.isnan(dataset.instances[0].keypoints[0, 0])
    else:
        assert dataset.instances[0].keypoints[0].tolist() == [*action.xy, 2.0]


def test_push_refuses_a_bad_auto_accept_before_touching_anything(tmp_path):
    with pytest.raises(SemcorrError, match="--auto-accept"):
        commands.run_review_push(tmp_path / "absent", 2, "http://127.0.0.1:9", "tok", auto_accept=float("nan"))
    assert not (tmp_path / "absent").exists()


@pytest.mark.parametrize("value", ["nan", "0", "1.5", "-1"])
def test_cli_auto_accept_out_of_range_is_one_line(tmp_path, value):
    from typer.testing import CliRunner

    from semcorr.cli import app

    result = CliRunner().invoke(app, ["review", "push", str(tmp_path), "--round", "2", "--auto-accept", value])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1, result.output
    assert "--auto-accept" in result.output and "(0, 1]" in result.output


def test_record_push_keeps_what_auto_accept_wrote(tmp_path):
    plan = plan_images([1, 2], {1: "trn", 2: "trn"}, manual=0.5, first=1.0, seed=0)
    save_plan(tmp_path, plan, 0, 0.5, 1.0, {1: "trn", 2: "trn"})
    record_push(tmp_path, 2, [1, 2], [7], auto_accept={"threshold": 0.9, "keypoints": 4})
    record_push(tmp_path, 2, [1, 2], [], auto_accept=None)
    from semcorr.annotation.plan import load_plan

    entry = load_plan(tmp_path)["rounds"]["2"]
    assert entry["auto_accept"] == [{"threshold": 0.9, "keypoints": 4}]
    assert labelled_when_pushed(load_plan(tmp_path), 2) == {7}
