"""The review round trip: action classes by hand, and push / review / pull against a real Label Studio."""

import copy
import shutil
import json

import numpy as np
import pytest

from semcorr import commands, store
from semcorr.annotation import review
from semcorr.annotation.labelstudio import LabelStudio, token_kind
from semcorr.annotation.plan import plan_images, save_plan
from semcorr.errors import SemcorrError
from semcorr.store import Category, ImageInfo

CUP = Category(id=1, name="cup", keypoints=("rim", "handle", "base"))
IMAGE = ImageInfo(1, "a.jpg", 200, 100)


def point(region_id, label, x, y, parent="a7"):
    return {"id": region_id, "type": "keypointlabels", "parentID": parent, "original_width": 200,
            "original_height": 100, "value": {"x": x / 2.0, "y": float(y), "keypointlabels": [label]}}


def test_classify_hand_made_cases():
    predicted = [point("a7k0", "rim", 10, 10), point("a7k1", "handle", 50, 50), point("a7k2", "base", 90, 90)]
    reviewed = [point("a7k0", "rim", 11, 10),  # moved 1 px: accepted
                point("a7k1", "handle", 53, 54),  # moved 5 px: dragged
                point("new1", "base", 20, 20, parent="a8"),  # a keypoint the ALM did not give: added
                point("new2", "spout", 30, 30), point("new3", "rim", 250, 10)]  # unknown label, outside the image
    actions, problems = review.classify(predicted, reviewed, CUP, IMAGE)
    assert [(a.ann_id, a.index, a.action) for a in actions] == [(7, 0, "accepted"), (7, 1, "dragged"),
                                                                 (7, 2, "discarded"), (8, 2, "added")]
    assert actions[1].displacement == pytest.approx(5.0) and actions[1].xy == (53.0, 54.0)
    assert problems == ["keypoint label 'spout' is not in the cup schema",
                        "keypoint rim at (250.0, 10.0) is outside the image"]
    manual, _ = review.classify([], [point("x", "rim", 5, 5)], CUP, IMAGE)
    assert [a.action for a in manual] == ["manual"]


def test_token_kinds_and_server_down(tmp_path):
    assert token_kind("0123456789abcdef") == "legacy" and token_kind("aaa.bbb.ccc") == "personal"
    from semcorr.annotation.server import free_port

    client = LabelStudio(f"http://127.0.0.1:{free_port()}", "secret-token-value", retries=1)
    problems = client.preflight()
    assert len(problems) == 1 and problems[0].startswith("server: ") and "not reachable" in problems[0]
    assert "secret-token-value" not in problems[0]


def small_store(root, synth_store):
    """A copy of the synthetic store with a plan; round-1 keypoints wiped (to be labelled by hand)."""
    shutil.copytree(synth_store, root)
    dataset = store.load_dataset(root)
    ids = sorted(dataset.images)[:4]
    splits = store.load_splits(root)
    plan = plan_images(ids, splits, manual=0.5, first=1.0, seed=0)
    save_plan(root, plan, 0, 0.5, 1.0, splits)
    return dataset, plan


def test_push_review_pull_against_real_label_studio(label_studio, synth_store, tmp_path):
    root = tmp_path / "dataset"
    dataset, plan = small_store(root, synth_store)
    before = (root / "annotations.json").read_text()
    client = LabelStudio(label_studio.url, label_studio.token)
    alm1 = plan[plan.set == "alm1"].image_id.tolist()
    members = [i for i in dataset.instances if i.image_id in alm1]
    predictions = {i.id: np.column_stack([i.keypoints[:, :2] + 4.0, i.keypoints[:, 2], np.full(len(i.keypoints), 0.8)])
                   for i in members}
    first = review.push(client, root, dataset, alm1, 2, predictions)
    again = review.push(client, root, dataset, alm1, 2, predictions)
    assert first["created"] == len(alm1) and again == {"created": 0, "predictions": 0, "skipped": len(alm1)}
    project = review.find_project(client, review.project_title(root, "chair"))
    tasks = client.all_tasks(project["id"])
    assert len(tasks) == len([i for i in alm1 if dataset.images[i].file_name.startswith("chair")])
    # the simulated reviewer: keep keypoint regions 0.., drag the first, delete the second, add one
    task = tasks[0]
    result = copy.deepcopy(task["predictions"][0]["result"])
    keypoints = [r for r in result if r["type"] == "keypointlabels"]
    box = next(r for r in result if r["type"] == "rectanglelabels")
    ann_id = int(box["id"][1:])
    dragged, deleted = keypoints[0], keypoints[1]
    dragged["value"]["x"] += 5.0  # 5% of 200 px = 10 px
    result.remove(deleted)
    missing = next(i for i in range(10) if f"a{ann_id}k{i}" not in {r["id"] for r in keypoints})
    result.append({"id": "reviewer1", "type": "keypointlabels", "from_name": "keypoints", "to_name": "image",
                   "parentID": box["id"], "original_width": 200, "original_height": 150, "image_rotation": 0,
                   "value": {"x": 50.0, "y": 50.0, "width": 0.6, "keypointlabels": [CHAIR_NAMES[missing]]}})
    for region in result:
        region.pop("score", None)
    client.post(f"/api/tasks/{task['id']}/annotations", {"result": result})
    report, reviews, changed = commands.run_review_pull(root, 2, label_studio.url, label_studio.token)
    assert (report["dragged"], report["discarded"], report["added"]) == (1, 1, 1)
    assert report["accepted"] == len(keypoints) - 2 and report["tasks"] == 1
    assert report["drag_median_px"] == pytest.approx(10.0, abs=0.01)
    merged = {inst.id: inst for inst in store.load_dataset(root).instances}[ann_id]
    original = {inst.id: inst for inst in dataset.instances}[ann_id]
    drag_index = int(dragged["id"].split("k")[1])
    delete_index = int(deleted["id"].split("k")[1])
    assert merged.keypoints[drag_index, :2].tolist() == pytest.approx((original.keypoints[drag_index, :2] + 4 + [10, 0]).tolist(), abs=0.01)
    assert merged.keypoints[delete_index, 2] == 0 and np.isnan(merged.keypoints[delete_index, 0])
    assert merged.keypoints[missing].tolist() == pytest.approx([100.0, 75.0, 2.0])
    provenance = merged.extra_attributes["keypoint_provenance"]
    assert provenance[str(drag_index)]["action"] == "dragged" and provenance[str(missing)]["action"] == "added"
    raw = json.loads((root / "annotation" / "raw" / "round2_chair.json").read_text())
    assert len(raw) == len(tasks)
    # resumable: pulling again gives the same store
    after_first = (root / "annotations.json").read_text()
    commands.run_review_pull(root, 2, label_studio.url, label_studio.token)
    assert (root / "annotations.json").read_text() == after_first != before


CHAIR_NAMES = ("left_front_foot", "left_back_foot", "left_seat_front", "left_seat_back", "left_back_top",
               "right_front_foot", "right_back_foot", "right_seat_front", "right_seat_back", "right_back_top")


def test_bad_token_is_one_clear_preflight_line(label_studio):
    client = LabelStudio(label_studio.url, "not-the-token", retries=0)
    problems = client.preflight()
    assert len(problems) == 1 and problems[0].startswith("token (legacy): refused")
    assert "not-the-token" not in problems[0]


def test_push_with_server_down_changes_nothing(synth_store, tmp_path):
    from semcorr.annotation.server import free_port

    root = tmp_path / "dataset"
    small_store(root, synth_store)
    before = sorted((p.name, p.stat().st_size) for p in root.rglob("*") if p.is_file())
    with pytest.raises(SemcorrError, match="not reachable"):
        commands.run_review_push(root, 1, f"http://127.0.0.1:{free_port()}", "tok")
    assert sorted((p.name, p.stat().st_size) for p in root.rglob("*") if p.is_file()) == before


def test_alm_checkpoint_round_trip_and_cpu_determinism(synth_store, tmp_path):
    from semcorr.alm.train import TrainOptions, load_checkpoint, predict, save_checkpoint, train

    dataset = store.load_dataset(synth_store)
    instances = [i for i in dataset.instances if i.visible.any()][:12]
    options = TrainOptions(backbone="scratch", crop_size=64, epochs=1, batch_size=4, seed=3)
    first = train(dataset, instances, options, round_index=2)
    second = train(dataset, instances, options, round_index=2)
    for (name, a), (_, b) in zip(first.model.state_dict().items(), second.model.state_dict().items()):
        assert torch_equal(a, b), name
    path = save_checkpoint(first, tmp_path / "alm.pt")
    loaded = load_checkpoint(path)
    assert (loaded.round, loaded.backbone, loaded.crop_size, loaded.data_hash) == (2, "scratch", 64, first.data_hash)
    assert loaded.keypoints == first.keypoints
    mine, theirs = predict(first, dataset, instances[:3]), predict(loaded, dataset, instances[:3])
    assert all(np.array_equal(mine[k], theirs[k]) for k in mine)
    (tmp_path / "junk.pt").write_bytes(b"nope")
    with pytest.raises(SemcorrError, match="not a readable (ALM )?checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


def test_full_loop_on_a_synthetic_store(label_studio, synth_store, tmp_path):
    """Plan, manual round, ALM, two review rounds, all through the real server, reviewer simulated."""
    from semcorr.alm.train import TrainOptions
    from semcorr.annotation.plan import load_plan
    from semcorr.annotation.simulate import run_loop, unlabelled

    truth = store.load_dataset(synth_store)
    root = tmp_path / "loop"
    shutil.copytree(synth_store, root)
    store.save_dataset(unlabelled(truth), root)
    client = LabelStudio(label_studio.url, label_studio.token)
    options = TrainOptions(backbone="scratch", crop_size=64, epochs=1, batch_size=8, seed=0)
    report = run_loop(root, truth, client, options, manual=0.4, first=0.3, seed=1)
    splits = store.load_splits(root)
    plan = load_plan(root)
    assert all(entry["set"] == "manual" for key, entry in plan["images"].items() if splits[int(key)] == "test")
    assert {entry["status"] for entry in plan["images"].values()} <= {f"reviewed round {n}" for n in (1, 2, 3)}
    for step in report.rounds:  # what pull classified is exactly what the reviewer did
        pulled = step["report"]
        assert {k: pulled[k] for k in review.ACTIONS if pulled[k]} == step["submitted"], step["round"]
    assert report.rounds[0]["submitted"].keys() == {"manual"}
    assert {"accepted", "dragged"} <= report.rounds[1]["submitted"].keys()
    # the store now holds the truth wherever the reviewer placed or moved a point, and the visibility everywhere
    final = {i.id: i for i in store.load_dataset(root).instances}
    for inst in truth.instances:
        got = final[inst.id]
        provenance = got.extra_attributes.get("keypoint_provenance", {})
        assert np.array_equal(got.keypoints[:, 2] == 2, inst.keypoints[:, 2] == 2), inst.id
        for index in np.flatnonzero(inst.keypoints[:, 2] == 2):
            action = provenance[str(index)]["action"]
            tolerance = 0.05 * max(inst.bbox[2], inst.bbox[3]) if action == "accepted" else 1e-3
            assert np.hypot(*(got.keypoints[index, :2] - inst.keypoints[index, :2])) <= tolerance + 1e-6
    assert [e["after_round"] for e in report.evaluations] == [1, 2, 3]
    assert [e["warm_start"] for e in report.evaluations] == [False, True, True]


def test_qc_push_sends_suspect_images_as_a_review_round(label_studio, synth_store, tmp_path):
    import pandas as pd

    from semcorr.patchnet.run import push_suspects

    root = tmp_path / "qc-push"
    shutil.copytree(synth_store, root)
    dataset = store.load_dataset(root)
    chairs = [i for i in dataset.instances if dataset.categories[i.category_id].name == "chair"][:2]
    suspects = pd.DataFrame({"ann_id": [chairs[0].id, chairs[1].id, chairs[0].id], "image_id": [
        chairs[0].image_id, chairs[1].image_id, chairs[0].image_id], "keypoint": [1, 2, 3],
        "suspicion": [8.0, 4.0, 1.0], "off_mask": [False, True, False], "name": ["a", "b", "c"],
        "cue": ["swap", "mask", ""], "reason": ["left/right swap with c?", "0.10 box sides outside the mask", ""]})
    counts = push_suspects(root, suspects, 7, label_studio.url, label_studio.token, top=2)
    assert counts["created"] == 2 and counts["noted"] == 0  # the notes went in with the new tasks
    # (the third keypoint has no cue: nothing to note)
    client = LabelStudio(label_studio.url, label_studio.token)
    tasks = client.all_tasks(review.find_project(client, review.project_title(root, "chair"))["id"])
    first = next(t for t in tasks if t["data"]["semcorr_image_id"] == chairs[0].image_id)
    regions = {r["id"]: r for r in first["predictions"][0]["result"]}
    assert first["data"]["semcorr_round"] == 7 and first["predictions"][0]["model_version"] == "alm-round-7"
    visible = np.flatnonzero(chairs[0].visible)
    assert {f"a{chairs[0].id}k{k}" for k in visible} <= regions.keys()
    if 1 in visible:  # the worst suspect gets confidence 0, an unsuspected keypoint 1
        assert regions[f"a{chairs[0].id}k1"]["score"] == 0.0
    unsuspected = next(k for k in visible if k not in (1, 3))
    assert regions[f"a{chairs[0].id}k{unsuspected}"]["score"] == 1.0
    assert first["data"]["semcorr_qc"] == f"a (ann {chairs[0].id}): swap - left/right swap with c?"
    second = next(t for t in tasks if t["data"]["semcorr_image_id"] == chairs[1].image_id)
    assert second["data"]["semcorr_qc"] == f"b (ann {chairs[1].id}): mask - 0.10 box sides outside the mask"
    if chairs[1].visible[2]:  # off its mask: score 0 although its suspicion (4) is half the worst (8)
        assert {r["id"]: r for r in second["predictions"][0]["result"]}[f"a{chairs[1].id}k2"]["score"] == 0.0


def test_auto_accept_push_and_pull_against_real_label_studio(label_studio, synth_store, tmp_path, monkeypatch):
    """`review push --auto-accept 0.9` with hand-made 5-column predictions (the ALM stubbed): confident points go
    into the store as auto-accepted and are still pushed; at pull the reviewer's drag wins, untouched ones stay."""
    import semcorr.alm.train as alm_train

    root = tmp_path / "auto"
    dataset, plan = small_store(root, synth_store)
    alm1 = plan[plan.set == "alm1"].image_id.tolist()
    members = [i for i in dataset.instances if i.image_id in alm1]
    truth = {i.id: i.keypoints.copy() for i in members}
    for inst in members:  # unlabelled, as a real round-2 image is
        inst.keypoints[:] = (np.nan, np.nan, 0)
    store.save_dataset(dataset, root)
    predictions = {i: np.column_stack([k[:, :3], np.where(np.arange(len(k)) % 2 == 0, 0.95, 0.5), np.ones(len(k))])
                   for i, k in truth.items()}
    monkeypatch.setattr(alm_train, "load_checkpoint", lambda path: None)
    monkeypatch.setattr(alm_train, "predict", lambda alm, ds, instances: {i.id: predictions[i.id] for i in instances})
    with pytest.raises(SemcorrError, match="--auto-accept"):
        commands.run_review_push(root, 2, label_studio.url, label_studio.token, auto_accept=1.2)
    pushed = commands.run_review_push(root, 2, label_studio.url, label_studio.token, auto_accept=0.9)
    images = store.load_dataset(root).images
    expected = sorted((i, k) for i, p in predictions.items() for k, (x, y, v, s, _) in enumerate(p)
                      if s >= 0.9 and review.pushable(x, y, v, images[next(m.image_id for m in members if m.id == i)]))
    assert pushed["auto_accepted"] == len(expected) > 0
    stored = {i.id: i for i in store.load_dataset(root).instances}
    got = sorted((i, int(k)) for i in predictions for k, e in
                 stored[i].extra_attributes.get("keypoint_provenance", {}).items() if e["action"] == "auto-accepted")
    assert got == expected
    assert load_plan_rounds(root)["2"]["auto_accept"] == [{"threshold": 0.9, "keypoints": len(expected)}]
    client = LabelStudio(label_studio.url, label_studio.token)
    project = review.find_project(client, review.project_title(root, "chair"))
    task = client.all_tasks(project["id"])[0]
    regions = task["predictions"][0]["result"]
    keypoints = [r for r in regions if r["type"] == "keypointlabels"]
    assert {r["score"] for r in keypoints} <= {0.95, 0.5}  # auto-accepted points are still shown
    result = [{k: v for k, v in r.items() if k != "score"} for r in copy.deepcopy(regions)]
    dragged = next(r for r in result if r["type"] == "keypointlabels" and r["id"].endswith(("k0", "k2", "k4")))
    dragged["value"]["x"] += 5.0  # 10 px in a 200 px wide image
    client.post(f"/api/tasks/{task['id']}/annotations", {"result": result})
    report, _, changed = commands.run_review_pull(root, 2, label_studio.url, label_studio.token)
    ann_id, index = (int(v) for v in dragged["id"][1:].split("k"))
    after = {i.id: i for i in store.load_dataset(root).instances}
    assert after[ann_id].extra_attributes["keypoint_provenance"][str(index)]["action"] == "dragged"
    untouched = [(i, k) for i, k in expected if (i, k) != (ann_id, index)]
    assert all(after[i].extra_attributes["keypoint_provenance"][str(k)]["action"] == "auto-accepted"
               for i, k in untouched)
    in_task = [(int(r["id"][1:].split("k")[0]), int(r["id"].split("k")[1])) for r in keypoints]
    assert report["auto_accepted_kept"] == sum(key in expected for key in in_task) - 1
    assert changed == len(in_task) - report["auto_accepted_kept"]
    calibration = report["calibration"]
    assert calibration["scored_keypoints"] == len(keypoints)
    assert calibration["expected_acceptance"] == pytest.approx(np.mean([r["score"] for r in keypoints]))
    side = max(after[ann_id].bbox[2], after[ann_id].bbox[3])
    misses = 0 if 10.0 <= 0.05 * side + 1e-9 else 1
    assert calibration["actual_acceptance"] == pytest.approx((len(keypoints) - misses) / len(keypoints))
    assert report["effort"]["clicks_with_alm"] == 1 and report["effort"]["final_keypoints"] == len(keypoints)


def load_plan_rounds(root):
    from semcorr.annotation.plan import load_plan

    return load_plan(root)["rounds"]
