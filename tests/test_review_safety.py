"""Review safety (issue 10): no reviewed keypoint lost, no write outside the dataset, one clear line
for every server failure, a Label Studio server that keeps its secrets and dies with its parent,
and an annotation loop that keeps the test split frozen."""

from __future__ import annotations

import copy
import http.server
import itertools
import json
import os
import shutil
import signal
import socketserver
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from semcorr import commands, store
from semcorr.annotation import plan as planning
from semcorr.annotation import review, server
from semcorr.annotation.labelstudio import LabelStudio
from semcorr.annotation.review import KeypointAction, TaskReview
from semcorr.errors import SemcorrError
from semcorr.store import Category, ImageInfo, Instance

CUP = Category(id=1, name="cup", keypoints=("rim", "handle", "base"))
IMAGE = ImageInfo(1, "a.jpg", 200, 100)


def point(region_id, label, x, y, parent="a7"):
    return {"id": region_id, "type": "keypointlabels", "parentID": parent, "original_width": 200,
            "original_height": 100, "value": {"x": x / 2.0, "y": float(y), "keypointlabels": [label]}}


BOX = {"id": "a7", "type": "rectanglelabels", "original_width": 200, "original_height": 100,
       "value": {"x": 0.0, "y": 0.0, "width": 100.0, "height": 100.0, "rectanglelabels": ["cup"]}}


def cup_dataset() -> store.Dataset:
    inst = Instance(id=7, image_id=1, category_id=1, bbox=[0, 0, 200, 100],
                    keypoints=[[10, 10, 2], [50, 50, 2], [90, 90, 2]])
    return store.Dataset(images={1: IMAGE}, categories={1: CUP}, instances=[inst], image_root=Path("."))


# ------------------------------------------------------------------ 1. a reviewed keypoint is never lost


def test_delete_and_place_anew_is_one_move_in_every_order():
    """The reviewer deletes the ALM's wrong `handle` and places `handle` anew: whatever the order of the
    regions in the prediction and in the result, classify gives one move and merge keeps the point."""
    predicted = [BOX, point("a7k0", "rim", 10, 10), point("a7k1", "handle", 50, 50), point("a7k2", "base", 90, 90)]
    reviewed = [copy.deepcopy(BOX), point("a7k0", "rim", 10, 10), point("a7k2", "base", 90, 90),
                point("new", "handle", 80, 40)]
    for before in itertools.permutations(predicted):
        for after in itertools.permutations(reviewed):
            actions, problems = review.classify(list(before), list(after), CUP, IMAGE)
            assert problems == []
            assert [(a.index, a.action) for a in actions] == [(0, "accepted"), (1, "dragged"), (2, "accepted")]
            moved = actions[1]
            assert moved.xy == (80.0, 40.0) and moved.replaced and moved.displacement == pytest.approx(np.hypot(30, 10))
            dataset = cup_dataset()
            review.merge(dataset, [TaskReview(1, "ann@example.com", actions)], 2)
            inst = dataset.instances[0]
            assert inst.keypoints[1].tolist() == [80.0, 40.0, 2.0]
            assert inst.extra_attributes["keypoint_provenance"]["1"]["action"] == "dragged"


@pytest.mark.parametrize("kept", ["added", "manual", "dragged", "accepted"])
def test_merge_lets_a_reviewed_position_win_in_every_order(kept):
    """merge given the raw actions on one keypoint (as the old classify produced them), in every order."""
    actions = [KeypointAction(7, 1, kept, (80.0, 40.0), 3.0), KeypointAction(7, 1, "discarded", None)]
    if kept != "accepted":  # a position left as predicted loses to one the reviewer placed, in any order too
        actions.append(KeypointAction(7, 1, "accepted", (51.0, 50.0), 1.0))
    for order in itertools.permutations(actions):
        for split in range(len(order) + 1):  # the same actions spread over two task reviews
            dataset = cup_dataset()
            reviews = [TaskReview(1, "a", list(order[:split])), TaskReview(1, "a", list(order[split:]))]
            assert review.merge(dataset, reviews, 3) == 1
            inst = dataset.instances[0]
            assert inst.keypoints[1].tolist() == [80.0, 40.0, 2.0], order
            assert inst.extra_attributes["keypoint_provenance"]["1"]["action"] == kept


def test_a_lone_discard_still_removes_the_point():
    dataset = cup_dataset()
    review.merge(dataset, [TaskReview(1, "a", [KeypointAction(7, 2, "discarded", None)])], 2)
    assert dataset.instances[0].keypoints[2, 2] == 0 and np.isnan(dataset.instances[0].keypoints[2, 0])


def test_a_keypoint_placed_twice_is_reported_and_kept_once():
    predicted = [point("a7k0", "rim", 10, 10)]
    reviewed = [point("a7k0", "rim", 10, 10), point("x1", "rim", 30, 30)]
    actions, problems = review.classify(predicted, reviewed, CUP, IMAGE)
    assert len(actions) == 1 and actions[0].xy == (30.0, 30.0) and actions[0].replaced is False
    assert len(problems) == 1 and "placed 2 times" in problems[0]


# ------------------------------------------------------------------ 2. raw exports: inside the dataset, never overwritten


def test_raw_export_names_stay_inside_and_are_never_overwritten(tmp_path):
    root = tmp_path / "dataset"
    evil = "/../../../x/pwn"
    first = review.save_raw_export(root, 2, evil, [{"id": 1}])
    assert first.parent == root / "annotation" / "raw" and "/" not in first.name and ".." not in first.name
    assert not (tmp_path / "x").exists() and not Path("/x/pwn.json").exists()
    assert review.save_raw_export(root, 2, evil, [{"id": 1}]) == first  # the same export: not written twice
    second = review.save_raw_export(root, 2, evil, [{"id": 1}, {"id": 2}])
    assert second != first and json.loads(first.read_text()) == [{"id": 1}]
    assert json.loads(second.read_text()) == [{"id": 1}, {"id": 2}]
    third = review.save_raw_export(root, 2, evil, [{"id": 3}])
    assert len({first, second, third}) == 3
    # two names that become the same safe component do not share files
    assert review.save_raw_export(root, 2, "a/b", []) != review.save_raw_export(root, 2, "a_b", [])
    assert sorted(p.name for p in (root / "annotation" / "raw").iterdir() if p.name.startswith(".")) == []


class StubClient:
    """Answers what `review.pull` asks, from memory."""

    url = "http://stub"

    def __init__(self, root, category, tasks, predictions, users):
        self.title = review.project_title(root, category)
        self.tasks, self.predictions, self.users = tasks, predictions, users

    def call(self, what, action, *args, **kwargs):
        return action(*args, **kwargs)

    @property
    def sdk(self):  # the label-studio-sdk calls `review.pull` makes
        from types import SimpleNamespace

        export = SimpleNamespace(download_sync=lambda project, **_: [json.dumps(self.tasks).encode()])
        return SimpleNamespace(projects=SimpleNamespace(list=lambda **_: [{"id": 1, "title": self.title}],
                                                        exports=export),
                               users=SimpleNamespace(get=lambda user_id: self.users[user_id]))

    def all_tasks(self, project_id):
        return [{"id": t["id"], "predictions": self.predictions} for t in self.tasks]


def test_pull_saves_raw_first_inside_the_dataset_and_names_the_annotator(tmp_path):
    evil = "/../../../x/pwn"
    category = Category(id=1, name=evil, keypoints=CUP.keypoints)
    dataset = cup_dataset()
    dataset.categories = {1: category}
    root = tmp_path / "a" / "b" / "dataset"
    root.mkdir(parents=True)
    predicted = [BOX, point("a7k0", "rim", 10, 10), point("a7k1", "handle", 50, 50)]
    result = [copy.deepcopy(BOX), point("new", "handle", 60, 50), point("a7k0", "rim", 10, 10)]
    tasks = [{"id": 5, "data": {"semcorr_round": 2, "semcorr_image_id": 1},
              "annotations": [{"id": 9, "result": result, "completed_by": 1}]}]
    client = StubClient(root, evil, tasks, [{"model_version": "alm-round-2", "result": predicted}],
                        {1: {"id": 1, "email": "ann@example.com", "first_name": "Ann", "last_name": "Lee"}})
    reviews = review.pull(client, root, dataset, 2)
    files = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    assert len(files) == 1 and files[0].parent == root / "annotation" / "raw"
    assert reviews[0].annotator == "Ann Lee <ann@example.com>"
    review.merge(dataset, reviews, 2)
    provenance = dataset.instances[0].extra_attributes["keypoint_provenance"]
    assert provenance["1"]["annotator"] == "Ann Lee <ann@example.com>" and provenance["1"]["action"] == "dragged"
    assert dataset.instances[0].keypoints[1].tolist() == [60.0, 50.0, 2.0]


def test_annotator_without_user_lookup_rights_is_the_user_id():
    class Refusing:
        def call(self, what, action, *args, **kwargs):
            raise SemcorrError("answered 403")

        def __getattr__(self, name):  # `sdk.users.get`: every SDK call is refused by `call`
            return self

    assert review.annotator_name(Refusing(), 3, {}) == "user 3"
    assert review.annotator_name(Refusing(), {"id": 4, "email": "b@x.org"}, {}) == "b@x.org"


# ------------------------------------------------------------------ 4. one clear line for every server failure


class Handler(http.server.BaseHTTPRequestHandler):
    mode = "invalid"

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path == "/health":
            return self.reply(200, b'{"status": "UP"}')
        if Handler.mode == "invalid":
            return self.reply(401, b'{"detail": "Invalid token."}')
        if Handler.mode == "disabled":
            return self.reply(401, json.dumps({"detail": "Authentication token no longer valid: legacy token "
                                                         "authentication has been disabled for this organization"})
                              .encode())
        if Handler.mode == "long":
            return self.reply(400, json.dumps({"detail": "x" * 300 + " the end"}).encode())
        if Handler.mode == "cut":  # promise 1000 bytes, send 10, hang up
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b'{"id": 1, ')
            self.wfile.flush()
            self.connection.shutdown(2)
            return None
        if Handler.mode == "hangup":
            self.connection.shutdown(2)
            return None
        if Handler.mode == "html":
            return self.reply(200, b"<!DOCTYPE html><html>login</html>")
        raise AssertionError(Handler.mode)

    def reply(self, code, body):
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def fake_server():
    class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
        daemon_threads = True

    httpd = Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


TOKEN = "0123456789abcdef0123"


def test_wrong_legacy_token_is_not_called_disabled(fake_server):
    Handler.mode = "invalid"
    problems = LabelStudio(fake_server, TOKEN, retries=0).preflight()
    assert len(problems) == 1 and "\n" not in problems[0]
    assert problems[0].startswith("token (legacy): refused (Invalid token.)") and "the token is wrong" in problems[0]
    assert "disabled" not in problems[0] and TOKEN not in problems[0]
    Handler.mode = "disabled"
    problems = LabelStudio(fake_server, TOKEN, retries=0).preflight()
    assert "legacy tokens are disabled" in problems[0] and "has been disabled for this organization" in problems[0]


@pytest.mark.parametrize("mode, fragment", [("cut", "cut off"), ("hangup", "closed the connection"),
                                            ("html", "not JSON"), ("long", "the end")])
def test_server_failures_are_one_line(fake_server, mode, fragment):
    Handler.mode = mode
    client = LabelStudio(fake_server, TOKEN, retries=1)
    with pytest.raises(SemcorrError) as caught:
        client.get("/api/projects")
    message = str(caught.value)
    assert "\n" not in message and fragment in message and fake_server in message and TOKEN not in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_push_with_a_wrong_token_is_one_line(fake_server, store_copy):
    Handler.mode = "invalid"
    commands.run_annotate_plan(store_copy, 0.4, 0.3, 0)
    with pytest.raises(SemcorrError) as caught:
        commands.run_review_push(store_copy, 1, fake_server, TOKEN)
    assert "\n" not in str(caught.value) and "the token is wrong" in str(caught.value)
    assert TOKEN not in str(caught.value)


def test_bad_url_is_one_line():
    with pytest.raises(SemcorrError, match="not an http"):
        LabelStudio.from_env("127.0.0.1:8080", TOKEN)


# ------------------------------------------------------------------ 5. the loop: frozen test split, statuses, PCK, clear labels


def test_push_refuses_when_splits_changed_since_the_plan(store_copy):
    commands.run_annotate_plan(store_copy, 0.4, 0.3, 0)
    plan = planning.load_plan(store_copy)
    splits = store.load_splits(store_copy)
    alm_image = next(int(k) for k, v in plan["images"].items() if v["set"] == "alm1")
    splits[alm_image] = "test"  # what re-running `split` can do
    store.save_splits(splits, store_copy)
    before = (store_copy / "annotation" / "plan.json").read_bytes()
    with pytest.raises(SemcorrError, match="splits changed since the plan.*re-run `semcorr annotate plan") as caught:
        commands.run_review_push(store_copy, 2, "http://127.0.0.1:9", TOKEN)
    assert "\n" not in str(caught.value) and f"image id={alm_image}" in str(caught.value)
    assert (store_copy / "annotation" / "plan.json").read_bytes() == before
    # a change that moves no image into the test split is refused too (the plan's hash)
    commands.run_annotate_plan(store_copy, 0.4, 0.3, 0)
    trn = next(i for i, s in splits.items() if s == "trn")
    splits[trn] = "val"
    store.save_splits(splits, store_copy)
    with pytest.raises(SemcorrError, match="splits.json differs"):
        commands.run_review_push(store_copy, 1, "http://127.0.0.1:9", TOKEN)


def test_repush_keeps_reviewed_status_and_replan_keeps_statuses(store_copy):
    commands.run_annotate_plan(store_copy, 0.4, 0.3, 0)
    ids = planning.images_in(planning.load_plan(store_copy), "alm1")
    planning.record_push(store_copy, 2, ids, [ids[0]])
    planning.mark_status(store_copy, ids[:2], "reviewed round 2")
    planning.record_push(store_copy, 2, ids, [])
    plan = planning.load_plan(store_copy)
    assert [plan["images"][str(i)]["status"] for i in ids[:3]] == ["reviewed round 2"] * 2 + ["pushed round 2"]
    assert planning.labelled_when_pushed(plan, 2) == {ids[0]} and planning.labelled_when_pushed(plan, 3) is None
    commands.run_annotate_plan(store_copy, 0.4, 0.3, 0)  # same sets: statuses kept
    assert planning.load_plan(store_copy)["images"][str(ids[0])]["status"] == "reviewed round 2"


def test_pck_before_review_is_measured_on_held_out_instances_only():
    dataset = cup_dataset()
    dataset.instances.append(Instance(id=8, image_id=1, category_id=1, bbox=[0, 0, 200, 100],
                                      keypoints=np.zeros((3, 3))))
    reviews = [TaskReview(1, "a", [KeypointAction(7, 0, "accepted", (1, 1)),  # seen by the ALM: a hit
                                   KeypointAction(8, 0, "dragged", (1, 1), 150.0),  # held out: a miss
                                   KeypointAction(8, 1, "accepted", (1, 1))])]
    held = review.round_report(reviews, dataset, seen={7})
    assert held["alm_pck_scope"] == "held out" and held["alm_pck_before_review"] == pytest.approx(50.0)
    assert held["alm_pck_instances"] == 1 and "held out" in review.pck_line(held)
    seen = review.round_report(reviews, dataset, seen={7, 8})
    assert seen["alm_pck_scope"] == "not held out" and "NOT held out" in review.pck_line(seen)
    assert review.round_report(reviews, dataset)["alm_pck_scope"] == "unknown"
    assert review.pck_line(review.round_report([TaskReview(1, "a", [KeypointAction(7, 0, "manual", (1, 1))])],
                                               dataset)) is None


def test_clear_labels_keeps_the_old_annotations_and_starts_unlabelled(store_copy):
    original = (store_copy / "annotations.json").read_bytes()
    labelled = sum(int(i.labelled.sum()) for i in store.load_dataset(store_copy).instances)
    assert labelled
    cleared = {}
    commands.run_annotate_plan(store_copy, 0.4, 0.3, 0, clear_labels=True, cleared=cleared)
    copy_path = store_copy / "annotation" / "imported_labels.json"
    assert cleared == {"keypoints": labelled, "copy": copy_path} and copy_path.read_bytes() == original
    assert not any(i.labelled.any() for i in store.load_dataset(store_copy).instances)
    # nothing labelled any more: a second clear writes nothing
    commands.run_annotate_plan(store_copy, 0.4, 0.3, 0, clear_labels=True)
    assert sorted(p.name for p in copy_path.parent.glob("imported_labels*")) == ["imported_labels.json"]
    # labels again (imported once more): the first copy is never overwritten
    shutil.copyfile(copy_path, store_copy / "annotations.json")
    commands.run_annotate_plan(store_copy, 0.4, 0.3, 0, clear_labels=True)
    assert copy_path.read_bytes() == original and (copy_path.parent / "imported_labels.1.json").read_bytes() == original


def test_clear_labels_refuses_reviewed_work(store_copy):
    dataset = store.load_dataset(store_copy)
    inst = next(i for i in dataset.instances if i.labelled.any())
    inst.extra_attributes["keypoint_provenance"] = {"0": {"action": "dragged", "round": 2, "annotator": "a"}}
    store.save_dataset(dataset, store_copy)
    before = (store_copy / "annotations.json").read_bytes()
    with pytest.raises(SemcorrError, match=f"annotation id={inst.id} holds keypoints reviewed in round 2"):
        commands.run_annotate_plan(store_copy, 0.4, 0.3, 0, clear_labels=True)
    assert (store_copy / "annotations.json").read_bytes() == before
    assert not (store_copy / "annotation" / "imported_labels.json").exists()


# ------------------------------------------------------------------ 3. the local server


def test_credentials_are_made_once_0600_and_reused(tmp_path):
    data = tmp_path / "ls"
    first = server.load_credentials(data, "me@example.com", None, None)
    path = data / server.CREDENTIALS_FILE
    assert path.stat().st_mode & 0o777 == 0o600
    assert server.load_credentials(data, "other@example.com", None, None) == first
    with pytest.raises(SemcorrError, match="already has its password and token"):
        server.load_credentials(data, "me@example.com", "new-password", None)
    orphan = tmp_path / "old"
    orphan.mkdir()
    (orphan / server.DATABASE_FILE).write_bytes(b"")
    with pytest.raises(SemcorrError, match="working password and token are unknown"):
        server.load_credentials(orphan, "me@example.com", None, None)


def test_document_root_is_the_folder_holding_the_images_never_slash(tmp_path):
    (tmp_path / "a" / "images").mkdir(parents=True)
    (tmp_path / "b" / "pics").mkdir(parents=True)
    assert server.document_root([tmp_path / "a" / "images"]) == (tmp_path / "a").resolve()
    assert server.document_root([tmp_path / "a" / "images", tmp_path / "b" / "pics"]) == tmp_path.resolve()
    with pytest.raises(SemcorrError, match="share no folder"):
        server.document_root([Path("/usr"), tmp_path / "a" / "images"])
    with pytest.raises(SemcorrError, match="--dataset"):
        server.document_root([])


def _wait_health(url, seconds=240):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return True
        except OSError:
            time.sleep(1)
    return False


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True, check=False).stdout
    return [int(p) for p in out.split()]


@pytest.mark.skipif(server.find_binary() is None, reason="Label Studio is not installed")
def test_review_server_hides_secrets_serves_only_the_dataset_and_dies_with_its_parent(store_copy, tmp_path):
    data_dir, port = tmp_path / "ls-data", server.free_port()
    semcorr = Path(sys.executable).parent / "semcorr"
    child = None
    parent = subprocess.Popen([str(semcorr), "review", "server", "--dataset", str(store_copy), "--data-dir",
                               str(data_dir), "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        assert _wait_health(url), "Label Studio did not start"
        credentials = json.loads((data_dir / server.CREDENTIALS_FILE).read_text())
        assert (data_dir / server.CREDENTIALS_FILE).stat().st_mode & 0o777 == 0o600
        children = _children(parent.pid)
        assert children
        child = children[0]
        cmdline = Path(f"/proc/{child}/cmdline").read_bytes().decode(errors="replace")
        assert credentials["password"] not in cmdline and credentials["token"] not in cmdline
        environ = dict(e.split("=", 1) for e in Path(f"/proc/{child}/environ").read_bytes().decode().split("\0") if "=" in e)
        assert environ["LOCAL_FILES_DOCUMENT_ROOT"] == str(store_copy.resolve()) != "/"
        client = LabelStudio(url, credentials["token"])
        assert client.preflight() == []
        parent.send_signal(signal.SIGTERM)
        parent.wait(timeout=60)
        output = parent.stdout.read()
        assert credentials["token"] not in output and credentials["password"] not in output
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (Path(f"/proc/{child}").exists() or not server.port_is_free(port)):
            time.sleep(0.5)
        assert not Path(f"/proc/{child}").exists() and server.port_is_free(port), "Label Studio was orphaned"
        # a restart on the same data dir reports (and uses) the credentials that work
        again = server.start(data_dir, port=port, image_roots=[store.load_dataset(store_copy).image_root])
        try:
            assert (again.token, again.password) == (credentials["token"], credentials["password"])
            assert LabelStudio(again.url, again.token).preflight() == []
        finally:
            again.stop()
    finally:
        if parent.poll() is None:
            parent.kill()
        if child is not None and Path(f"/proc/{child}").exists():
            os.killpg(child, signal.SIGKILL)


def test_cli_review_server_needs_a_dataset_and_plan_clears_labels(store_copy, tmp_path):
    from typer.testing import CliRunner

    from semcorr.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["review", "server", "--data-dir", str(tmp_path / "ls")])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1 and "--dataset" in result.output
    assert not (tmp_path / "ls").exists()
    result = runner.invoke(app, ["annotate", "plan", str(store_copy), "--clear-labels"])
    assert result.exit_code == 0, result.output
    assert "imported_labels.json" in result.output
    assert not any(i.labelled.any() for i in store.load_dataset(store_copy).instances)
