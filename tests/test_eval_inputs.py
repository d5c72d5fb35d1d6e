"""Bad inputs of `evaluate`, `alm predict` / `alm eval` and `qc`: predictions files, options, checkpoints.

Every row: exit 1, one line on stderr-or-stdout starting with "error:", no traceback, the
message names the file and the record, the dataset is unchanged and nothing is written.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import pickle
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
import torch
from typer.testing import CliRunner

from semcorr.alm.model import KeypointNet
from semcorr.alm.train import ALM, load_checkpoint, save_checkpoint
from semcorr.cli import app
from semcorr.errors import SemcorrError
from semcorr.patchnet import train as patch_train
from semcorr.patchnet.models import PatchNet

runner = CliRunner()


def fingerprint(root: Path) -> dict[str, str]:
    """Hash of every file under `root` (to prove an input is unchanged)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def assert_one_line_error(result, fragment: str) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def test_pair(synth_store):
    """(pair id, number of kps ids) of a pair in the test split, and an id no pair has."""
    pairs = pd.read_parquet(synth_store / "pairs.parquet")
    test = pairs[pairs["split"] == "test"]
    ids = pa.array(test["kps_ids"]).to_pylist()
    return int(test["pair_id"].iloc[0]), len(ids[0]), int(pairs["pair_id"].max()) + 1000


def good_points(count: int) -> list[list[float]]:
    return [[10.0 + i, 20.0 + i] for i in range(count)]


# each row: id, a function (pair id, kps count, unknown id) -> file bytes, expected message fragment
PREDICTION_ROWS = [
    ("string-number", lambda p, k, u: json.dumps({"pairs": {str(p): {"trg_kps": [["a", 1.0]] * k}}}).encode(),
     "pair {p}: trg_kps[0]"),
    ("ragged", lambda p, k, u: json.dumps({"pairs": {str(p): {"trg_kps": [[1.0, 2.0], [3.0]]}}}).encode(),
     "pair {p}: trg_kps[1]"),
    ("three-coords", lambda p, k, u: json.dumps({"pairs": {str(p): {"trg_kps": [[1, 2, 3]] * k}}}).encode(),
     "pair {p}: trg_kps[0]"),
    ("kps-not-list", lambda p, k, u: json.dumps({"pairs": {str(p): {"trg_kps": "1,2"}}}).encode(),
     "pair {p}: trg_kps: expected a list"),
    ("entry-not-object", lambda p, k, u: json.dumps({"pairs": {str(p): [[1, 2]] * k}}).encode(),
     "pair {p}: expected an object"),
    ("entry-null", lambda p, k, u: json.dumps({"pairs": {str(p): None}}).encode(), "pair {p}: expected an object"),
    ("top-level-list", lambda p, k, u: b"[1, 2, 3]", "top level"),
    ("pairs-list", lambda p, k, u: json.dumps({"pairs": [1, 2]}).encode(), "top level"),
    ("nan", lambda p, k, u: ('{"pairs": {"P": {"trg_kps": [[NaN, 1.0]]}}}'.replace("P", str(p))).encode(), "pair {p}: trg_kps[0]"),
    ("infinity", lambda p, k, u: ('{"pairs": {"P": {"trg_kps": [[Infinity, 1.0]]}}}'.replace("P", str(p))).encode(),
     "pair {p}: trg_kps[0]"),
    ("bool", lambda p, k, u: json.dumps({"pairs": {str(p): {"trg_kps": [[True, 1.0]] * k}}}).encode(),
     "pair {p}: trg_kps[0]"),
    ("unknown-pair", lambda p, k, u: json.dumps({"pairs": {str(u): {"trg_kps": good_points(k)}}}).encode(),
     "pair {u}: no such pair id"),
    ("too-few-points", lambda p, k, u: json.dumps({"pairs": {str(p): {"trg_kps": good_points(k - 1)}}}).encode(),
     "pair {p}: {k1} predicted points"),
    ("points-bad-kp-id", lambda p, k, u: json.dumps({"pairs": {str(p): {"points": [[1, 2, -1]]}}}).encode(),
     "pair {p}: points[0]"),
    ("points-fraction-id", lambda p, k, u: json.dumps({"pairs": {str(p): {"points": [[1, 2, 0.5]]}}}).encode(),
     "pair {p}: points[0]"),
    ("masks-not-list", lambda p, k, u: json.dumps({"pairs": {str(p): {"trg_kps": good_points(k),
                                                                        "masks": {"size": [1, 1]}}}}).encode(),
     "pair {p}: masks: expected a list"),
    ("mask-bad-counts", lambda p, k, u: json.dumps({"pairs": {str(p): {"trg_kps": good_points(k), "masks": [
        {"size": [150, 200], "counts": "\u00ff\u00ff"}]}}}).encode(), "pair {p}: masks[0]: RLE counts"),
    ("mask-short-runs", lambda p, k, u: json.dumps({"pairs": {str(p): {"trg_kps": good_points(k), "masks": [
        {"size": [150, 200], "counts": [5, 5]}]}}}).encode(), "pair {p}: masks[0]: RLE counts"),
    ("mask-no-size", lambda p, k, u: json.dumps({"pairs": {str(p): {"trg_kps": good_points(k), "masks": [
        {"counts": [30000]}]}}}).encode(), "pair {p}: masks[0]: RLE size"),
    ("mask-string-polygon", lambda p, k, u: json.dumps({"pairs": {str(p): {"trg_kps": good_points(k), "masks": [
        [["1", "2", "3", "4", "5", "6"]]]}}}).encode(), "pair {p}: masks[0]: a polygon"),
    ("mask-number", lambda p, k, u: json.dumps({"pairs": {str(p): {"trg_kps": good_points(k), "masks": [7]}}}
                                               ).encode(), "pair {p}: masks[0]"),
    ("not-utf8", lambda p, k, u: b'{"pairs": {"\xff\xfe": {}}}', "not UTF-8"),
    ("latin1", lambda p, k, u: '{"pairs": {}, "note": "caf\u00e9"}'.encode("latin-1"), "not UTF-8"),
    ("gzip-damaged", lambda p, k, u: b"\x1f\x8b\x08\x00garbage", "gzip-compressed but damaged"),
    ("malformed-json", lambda p, k, u: b'{"pairs": {', "malformed JSON"),
    ("empty-file", lambda p, k, u: b"", "malformed JSON"),
    ("huge-int", lambda p, k, u: b'{"pairs": {"1": {"trg_kps": [[' + b"9" * 5000 + b', 1]]}}}', "unreadable JSON"),
]


@pytest.mark.parametrize(("name", "make", "fragment"), PREDICTION_ROWS, ids=[r[0] for r in PREDICTION_ROWS])
def test_bad_predictions_are_one_line_naming_file_and_pair(synth_store, test_pair, tmp_path, name, make, fragment):
    pair_id, count, unknown = test_pair
    path = tmp_path / "preds.json"
    path.write_bytes(make(pair_id, count, unknown))
    before = fingerprint(synth_store)
    out = tmp_path / "evaluation"
    result = runner.invoke(app, ["evaluate", str(synth_store), "--predictions", str(path), "--out", str(out)])
    line = assert_one_line_error(result, fragment.format(p=pair_id, u=unknown, k1=count - 1))
    assert "preds.json" in line
    assert not out.exists()
    assert fingerprint(synth_store) == before


def test_gzipped_predictions_are_read_and_other_splits_ignored(synth_store, test_pair, tmp_path):
    pairs = pd.read_parquet(synth_store / "pairs.parquet")
    ids = pa.array(pairs["kps_ids"]).to_pylist()
    every = {str(int(p)): {"trg_kps": good_points(len(k))} for p, k in zip(pairs["pair_id"], ids)}
    path = tmp_path / "preds.json.gz"
    path.write_bytes(gzip.compress(json.dumps({"pairs": every}).encode()))
    out = tmp_path / "evaluation"
    result = runner.invoke(app, ["evaluate", str(synth_store), "--predictions", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "pck_by_category.csv").exists()
    assert "0 without a prediction" in result.output


@pytest.mark.parametrize(("options", "fragment"), [
    (["--alpha", "nan"], "--alpha nan"),
    (["--alpha", "-0.1"], "--alpha -0.1"),
    (["--alpha", "0"], "--alpha 0"),
    (["--alpha", "inf"], "--alpha inf"),
    (["--split", "train"], "--split 'train'"),
    (["--by", "box"], "--by 'box'"),
])
def test_bad_evaluate_options(synth_store, tmp_path, options, fragment):
    out = tmp_path / "evaluation"
    result = runner.invoke(app, ["evaluate", str(synth_store), "--baseline", "identity", "--out", str(out), *options])
    assert_one_line_error(result, fragment)
    assert not out.exists()


@pytest.mark.parametrize(("target", "fragment"), [
    (lambda d: d, "contains the input"),
    (lambda d: d.parent, "contains the input"),
    (lambda d: d / "images", "is the input"),
    (lambda d: d / "images" / "evaluation", "lies inside the input"),
    (lambda d: d / "annotations.json", "is not a folder"),
])
def test_evaluate_refuses_an_output_over_the_dataset(store_copy, target, fragment):
    before = fingerprint(store_copy)
    result = runner.invoke(app, ["evaluate", str(store_copy), "--baseline", "identity", "--out",
                                 str(target(store_copy))])
    assert_one_line_error(result, fragment)
    assert fingerprint(store_copy) == before


# ---------------------------------------------------------------------------- checkpoints


def alm_checkpoint(path: Path, keypoints: int = 10) -> Path:
    names = [f"kp{i}" for i in range(keypoints)]
    model = KeypointNet({"chair": keypoints}, "scratch", pretrained=False)
    return save_checkpoint(ALM(model=model, keypoints={"chair": names}, backbone="scratch", crop_size=64, round=1,
                               data_hash="x"), path)


def torch_bytes(obj) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


class NotWeights:  # a pickled class: weights_only loading refuses it
    pass


def put(folder: Path, data: bytes) -> Path:
    (folder / "c.pt").write_bytes(data)
    return folder / "c.pt"


def make_alm_payload(tmp_path: Path) -> dict:
    good = alm_checkpoint(tmp_path / "good.pt")
    return torch.load(good, weights_only=True)


# each row: id, a function tmp_path -> checkpoint path, fragment for ALM, fragment for patchnet
CHECKPOINT_ROWS = [
    ("missing-file", lambda t: t / "nope.pt", "checkpoint not found", "checkpoint not found"),
    ("folder", lambda t: t, "not a file", "not a file"),
    ("empty", lambda t: put(t, b""), "empty file", "empty file"),
    ("random-bytes", lambda t: put(t, bytes(range(256)) * 8),
     "not a readable checkpoint", "not a readable patchnet checkpoint"),
    ("truncated-alm", lambda t: put(t, alm_checkpoint(t / "full.pt").read_bytes()[:3000]),
     "not a readable checkpoint", "not a readable patchnet checkpoint"),
    ("pickled-class", lambda t: put(t, torch_bytes({"x": NotWeights()})),
     "not a readable checkpoint", "not a readable patchnet checkpoint"),
    ("plain-pickle", lambda t: put(t, pickle.dumps({"a": 1})),
     "not a readable checkpoint", "not a readable patchnet checkpoint"),
    ("a-list", lambda t: put(t, torch_bytes([1, 2, 3])),
     "holds a list", "holds a list"),
    ("missing-keys", lambda t: put(t, torch_bytes({"format": "semcorr-alm-2", "round": 1})), "missing backbone, crop_size, data_hash, keypoints, state_dict", "an ALM checkpoint"),
    ("other-kind", lambda t: patch_train.save_checkpoint(PatchNet("2ch", 1), t / "c.pt"),
     "a patchnet checkpoint", None),
    ("alm-for-patchnet", lambda t: alm_checkpoint(t / "c.pt"), None, "an ALM checkpoint, not a patchnet one"),
    ("weights-do-not-fit", lambda t: put(t, torch_bytes(
        {**make_alm_payload(t), "keypoints": {"chair": [f"k{i}" for i in range(7)]}})),
     "weights do not fit", "an ALM checkpoint"),
    ("bad-backbone", lambda t: put(t, torch_bytes({**make_alm_payload(t), "backbone": "resnet"})), "backbone 'resnet'", "an ALM checkpoint"),
    ("keypoints-list", lambda t: put(t, torch_bytes({**make_alm_payload(t), "keypoints": [1]})), "keypoints must map", "an ALM checkpoint"),
    ("patchnet-missing-state", lambda t: put(t, torch_bytes({"architecture": "2ch",
                                                                              "channels": 1})),
     "a patchnet checkpoint", "missing state_dict"),
    ("patchnet-bad-arch", lambda t: put(t, torch_bytes(
        {"architecture": "resnet", "channels": 1, "state_dict": {}})),
     "a patchnet checkpoint", "architecture 'resnet'"),
    ("patchnet-wrong-weights", lambda t: put(t, torch_bytes(
        {"architecture": "siam", "channels": 1, "state_dict": PatchNet("2ch", 1).state_dict()})),
     "a patchnet checkpoint", "weights do not fit the siam network"),
]


ALM_ROWS = [row for row in CHECKPOINT_ROWS if row[2] is not None]  # the rest are good ALM checkpoints
PATCHNET_ROWS = [row for row in CHECKPOINT_ROWS if row[3] is not None]  # the rest are good patchnet ones


@pytest.mark.parametrize(("name", "make", "fragment", "_patch"), ALM_ROWS, ids=[r[0] for r in ALM_ROWS])
def test_bad_alm_checkpoints_are_one_line(synth_store, tmp_path, name, make, fragment, _patch):
    work = tmp_path / "work"
    work.mkdir()
    path = make(work)
    with pytest.raises(SemcorrError) as info:
        load_checkpoint(path)
    assert str(info.value).startswith(str(path)) and fragment in str(info.value) and "\n" not in str(info.value)
    before = fingerprint(synth_store)
    result = runner.invoke(app, ["alm", "eval", str(synth_store), "--checkpoint", str(path)])
    assert_one_line_error(result, fragment)
    out = tmp_path / "pred.json"
    result = runner.invoke(app, ["alm", "predict", str(synth_store), "--checkpoint", str(path), "--out", str(out)])
    assert_one_line_error(result, fragment)
    assert not out.exists()
    assert fingerprint(synth_store) == before


@pytest.mark.parametrize(("name", "make", "_alm", "fragment"), PATCHNET_ROWS, ids=[r[0] for r in PATCHNET_ROWS])
def test_bad_patchnet_checkpoints_are_one_line(synth_store, tmp_path, name, make, _alm, fragment):
    work = tmp_path / "work"
    work.mkdir()
    path = make(work)
    with pytest.raises(SemcorrError) as info:
        patch_train.load_checkpoint(path)
    assert str(info.value).startswith(str(path)) and fragment in str(info.value) and "\n" not in str(info.value)
    out = tmp_path / "qc"
    result = runner.invoke(app, ["qc", str(synth_store), "--checkpoint", str(path), "--out", str(out)])
    assert_one_line_error(result, fragment)
    assert not out.exists()


def test_good_alm_checkpoint_round_trips(tmp_path):
    alm = load_checkpoint(alm_checkpoint(tmp_path / "good.pt"))
    assert alm.backbone == "scratch" and alm.keypoints["chair"][0] == "kp0"


# ---------------------------------------------------------------------------- alm predict options


@pytest.mark.parametrize(("options", "fragment"), [
    (["--threshold", "1.5"], "--threshold 1.5"),
    (["--threshold", "-0.1"], "--threshold -0.1"),
    (["--threshold", "nan"], "--threshold nan"),
    (["--set", "bogus"], "--set 'bogus'"),
])
def test_bad_alm_predict_options(synth_store, tmp_path, options, fragment):
    checkpoint = alm_checkpoint(tmp_path / "c.pt")
    out = tmp_path / "pred.json"
    result = runner.invoke(app, ["alm", "predict", str(synth_store), "--checkpoint", str(checkpoint),
                                 "--out", str(out), *options])
    assert_one_line_error(result, fragment)
    assert not out.exists()


@pytest.mark.parametrize(("target", "fragment"), [
    (lambda d: d / "annotations.json", "is the input"),
    (lambda d: d / "splits.json", "is the input"),
    (lambda d: d / "images" / "pred.json", "lies inside the input"),
    (lambda d: d, "is a folder"),
    (lambda d: d / "c.pt", "is the input"),
])
def test_alm_predict_refuses_to_write_over_the_dataset(store_copy, target, fragment):
    checkpoint = alm_checkpoint(store_copy / "c.pt")
    before = fingerprint(store_copy)
    result = runner.invoke(app, ["alm", "predict", str(store_copy), "--checkpoint", str(checkpoint),
                                 "--out", str(target(store_copy))])
    assert_one_line_error(result, fragment)
    assert fingerprint(store_copy) == before


def test_alm_eval_unknown_split(synth_store, tmp_path):
    checkpoint = alm_checkpoint(tmp_path / "c.pt")
    result = runner.invoke(app, ["alm", "eval", str(synth_store), "--checkpoint", str(checkpoint), "--split", "x"])
    assert_one_line_error(result, "--split 'x'")
