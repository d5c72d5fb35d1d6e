"""The ALM as a Label Studio ML backend: the protocol, predictions equal to `review push`'s, bad input,
training on an event, and a real Label Studio fetching predictions from it and starting its training."""

from __future__ import annotations

import dataclasses
import shutil
import threading

import numpy as np
import pytest

from semcorr import commands, store
from semcorr.annotation import review
from semcorr.errors import SemcorrError

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from semcorr.annotation.backend import Backend, create_app


def tiny_options():
    from semcorr.alm.train import TrainOptions

    return TrainOptions(backbone="scratch", crop_size=64, epochs=1, batch_size=8, seed=0)


@pytest.fixture(scope="module")
def trained(synth_store, tmp_path_factory):
    """A store copy with a tiny round-1 ALM trained on it (`annotation/alm_round1.pt`)."""
    root = tmp_path_factory.mktemp("backend") / "dataset"
    shutil.copytree(synth_store, root)
    commands.run_alm_train(root, 1, tiny_options())
    return root


def copy_of(trained, tmp_path, name="copy"):
    target = tmp_path / name
    shutil.copytree(trained, target)
    return target


def chair_task(dataset, task_id=5):
    image = next(i for i in sorted(dataset.images.values(), key=lambda i: i.id) if i.file_name.startswith("chair"))
    return {"id": task_id, "data": {"image": "/data/local-files/?d=x.png", "semcorr_image_id": image.id}}, image


def serve(root):
    backend = Backend(root, tiny_options())
    backend.load()
    return backend, TestClient(create_app(backend))


def test_protocol_and_prediction_equal_to_what_push_sends(trained):
    from semcorr.alm.train import load_checkpoint, predict

    _, client = serve(trained)
    assert client.get("/health").json()["status"] == "UP"
    assert client.post("/setup", json={"project": "1.1", "schema": "<View/>"}).json() == {
        "model_version": "alm-round-2"}
    dataset = store.load_dataset(trained)
    chair = next(c for c in dataset.categories.values() if c.name == "chair")
    task, image = chair_task(dataset)
    answer = client.post("/predict", json={"tasks": [task], "project": "1.1",
                                           "label_config": review.labeling_config(chair)})
    assert answer.status_code == 200
    body = answer.json()
    assert body["model_version"] == "alm-round-2" and len(body["results"]) == 1 and "errors" not in body
    prediction = body["results"][0]
    # independently: the round-1 checkpoint's predictions, turned into regions by hand
    alm = load_checkpoint(commands.alm_checkpoint_path(trained, 1))
    instances = [i for i in dataset.instances if i.image_id == image.id and i.category_id == chair.id]
    guess = predict(alm, dataset, instances)
    expected_ids, scores = [], []
    for inst in instances:
        expected_ids.append(f"a{inst.id}")
        for k, (x, y, v, s, _) in enumerate(guess[inst.id]):
            if v == 2 and 0 <= x <= image.width and 0 <= y <= image.height:
                expected_ids.append(f"a{inst.id}k{k}")
                scores.append(round(float(s), 4))
                region = next(r for r in prediction["result"] if r["id"] == f"a{inst.id}k{k}")
                assert region["value"]["x"] == pytest.approx(100 * x / image.width)
                assert region["value"]["keypointlabels"] == [chair.keypoints[k]] and region["parentID"] == f"a{inst.id}"
    assert [r["id"] for r in prediction["result"]] == expected_ids
    assert [r["score"] for r in prediction["result"] if "score" in r] == scores
    assert prediction["score"] == pytest.approx(np.mean(scores + [1.0] * len(instances)))
    # and exactly what `review push --round 2` builds from the same checkpoint
    assert prediction == review.task_prediction(instances, chair, image, 2, guess)


def test_bad_input_is_answered_never_a_crash(trained, tmp_path):
    root = copy_of(trained, tmp_path)
    dataset = store.load_dataset(root)
    chair = next(c for c in dataset.categories.values() if c.name == "chair")
    config = review.labeling_config(chair)
    task, image = chair_task(dataset)
    (dataset.image_root / image.file_name).write_bytes(b"not an image")
    _, client = serve(root)
    answer = client.post("/predict", json={"tasks": [task, {"id": 6, "data": {"semcorr_image_id": 999999}}],
                                           "label_config": config}).json()
    first, second = answer["results"]
    assert first.keys() == {"error"} and first["error"].startswith("task 5: ") and "\n" not in first["error"]
    assert second == {"error": "task 6: image 999999 is not in the dataset (tasks come from `semcorr review push`)"}
    assert answer["errors"] == [first["error"], second["error"]]
    answer = client.post("/predict", json={"tasks": [task], "label_config": "<View/>"})
    assert answer.status_code == 422 and "labelling config is not one semcorr made" in answer.json()["error"]
    assert client.post("/predict", json={"nothing": 1}).status_code == 400
    assert client.get("/health").json()["status"] == "UP"


def test_category_unknown_to_the_checkpoint(trained, tmp_path):
    root = copy_of(trained, tmp_path)
    dataset = store.load_dataset(root)
    chair = next(c for c in dataset.categories.values() if c.name == "chair")
    renamed = dataclasses.replace(chair, name="stool")
    dataset.categories[chair.id] = renamed
    store.save_dataset(dataset, root)
    _, client = serve(root)
    task, _ = chair_task(store.load_dataset(root))
    answer = client.post("/predict", json={"tasks": [task], "label_config": review.labeling_config(renamed)})
    assert answer.status_code == 422
    assert answer.json()["error"].startswith("category 'stool' is not known to the round 1 ALM (it knows airplane, car, chair)")


def test_checkpoint_of_other_data_is_refused(trained, tmp_path):
    root = copy_of(trained, tmp_path)
    dataset = store.load_dataset(root)
    first = commands.alm_training_instances(root, dataset)[0].id
    inst = next(i for i in dataset.instances if i.id == first)
    inst.keypoints[np.flatnonzero(inst.labelled)[0], 0] += 7.0  # other labels than the checkpoint was trained on
    store.save_dataset(dataset, root)
    _, client = serve(root)
    answer = client.post("/setup", json={"project": "1.1"})
    assert answer.status_code == 422 and "trained on other data than this dataset's labelled instances" in \
        answer.json()["error"]
    assert client.post("/predict", json={"tasks": [], "label_config": ""}).status_code == 422
    assert client.get("/health").json()["problem"] == answer.json()["error"]


def test_training_event_warm_starts_the_next_round_and_predictions_follow(trained, tmp_path):
    from semcorr.alm.train import load_checkpoint

    root = copy_of(trained, tmp_path)
    backend, client = serve(root)
    assert client.post("/webhook", json={"action": "PROJECT_UPDATED"}).json()["status"] == "ignored"
    answer = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 1}})
    assert answer.status_code == 201 and answer.json() == {"status": "training", "round": 2}
    backend.join()
    assert backend.status()["last_training"]["round"] == 2 and "error" not in backend.status()["last_training"]
    assert load_checkpoint(commands.alm_checkpoint_path(root, 2)).round == 2
    assert client.post("/setup", json={}).json() == {"model_version": "alm-round-3"}
    dataset = store.load_dataset(root)
    chair = next(c for c in dataset.categories.values() if c.name == "chair")
    task, _ = chair_task(dataset)
    body = client.post("/predict", json={"tasks": [task], "label_config": review.labeling_config(chair)}).json()
    assert body["results"][0]["model_version"] == "alm-round-3"


def test_connect_refuses_a_bad_backend_url(trained):
    with pytest.raises(SemcorrError, match="--backend 'localhost:9090': not an http"):
        commands.run_review_connect(trained, "localhost:9090", "http://127.0.0.1:9", "tok")


@pytest.fixture
def live_backend(trained, tmp_path):
    """The backend served by uvicorn on a loopback port, in a thread."""
    import uvicorn

    from semcorr.annotation.server import free_port

    root = copy_of(trained, tmp_path, "live")
    backend = Backend(root, tiny_options())
    backend.load()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(backend), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started and thread.is_alive():
        thread.join(0.1)
    yield root, backend, f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(30)


def test_real_label_studio_fetches_predictions_and_starts_training(label_studio, live_backend, tmp_path):
    from semcorr.alm.train import load_checkpoint, predict
    from semcorr.annotation.labelstudio import LabelStudio, to_plain

    root, backend, backend_url = live_backend
    client = LabelStudio(label_studio.url, label_studio.token)
    dataset = store.load_dataset(root)
    chair = next(c for c in dataset.categories.values() if c.name == "chair")
    ids = sorted(i.id for i in dataset.images.values() if i.file_name.startswith("chair"))[:3]
    review.push(client, root, dataset, ids, 2)  # tasks with boxes only: the backend gives the keypoints
    counts = commands.run_review_connect(root, backend_url, label_studio.url, label_studio.token)
    assert counts == {"attached": 1, "already": 0}
    assert commands.run_review_connect(root, backend_url, label_studio.url, label_studio.token)["already"] == 1
    project = review.find_project(client, review.project_title(root, "chair"))
    client.call("retrieve predictions", client.sdk.actions.create, id="retrieve_tasks_predictions",
                project=project["id"], selected_items={"all": True, "excluded": []})
    alm = load_checkpoint(commands.alm_checkpoint_path(root, 1))
    tasks = client.all_tasks(project["id"])
    assert len(tasks) == len(ids)
    for task in tasks:
        image = dataset.images[task["data"]["semcorr_image_id"]]
        instances = [i for i in dataset.instances if i.image_id == image.id and i.category_id == chair.id]
        stored = [p for p in task["predictions"] if p["model_version"] == "alm-round-2"]
        assert len(stored) == 1, task["predictions"]
        expected = review.task_prediction(instances, chair, image, 2, predict(alm, dataset, instances))
        assert stored[0]["result"] == expected["result"]
        assert stored[0]["score"] == pytest.approx(expected["score"])
    # training through Label Studio's API: a new round is written and served
    ml = to_plain(client.call("GET /api/ml", client.sdk.ml.list, project=project["id"]))
    client.call("POST /api/ml/train", client.sdk.ml.train, ml[0]["id"])
    backend.join()
    assert backend.status()["round"] == 2 and commands.alm_checkpoint_path(root, 2).exists()
    client.call("retrieve predictions", client.sdk.actions.create, id="retrieve_tasks_predictions",
                project=project["id"], selected_items={"all": True, "excluded": []})
    versions = {p["model_version"] for t in client.all_tasks(project["id"]) for p in t["predictions"]}
    assert {"alm-round-2", "alm-round-3"} <= versions
