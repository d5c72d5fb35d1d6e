"""Patch networks: shapes, FPR95 by hand, the Photo Tour layout, border padding, cycles, bad input."""

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from semcorr import store
from semcorr.errors import SemcorrError
from semcorr.patchnet import metrics, qc
from semcorr.patchnet.models import ARCHITECTURES, PatchNet, hinge_loss
from semcorr.patchnet.patches import cut_patch, sample_pairs
from semcorr.patchnet.phototour import PhotoTour, load_phototour, save_phototour
from semcorr.patchnet.train import load_checkpoint, save_checkpoint


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_every_architecture_scores_a_batch_of_pairs(architecture):
    torch.manual_seed(0)
    model = PatchNet(architecture, channels=1).eval()
    a, b = torch.randn(3, 1, 64, 64), torch.randn(3, 1, 64, 64)
    scores = model(a, b)
    assert scores.shape == (3,)
    if model.has_descriptor:
        assert model.describe(a).shape == (3, model.descriptor_size)
        if architecture != "pseudo-siam":  # shared weights: the order of the pair does not matter
            assert torch.allclose(scores if model.l2 else model.compare(model.describe(a), model.describe(a)),
                                  model(b, a) if model.l2 else model(a, a), atol=1e-5)
    else:
        with pytest.raises(ValueError):
            model.describe(a)


def test_descriptor_sizes_follow_the_paper_layers():
    assert PatchNet("siam").descriptor_size == 256  # C(96,7,3)-P-C(192,5,1)-P-C(256,3,1) on 64 -> 1x1x256
    assert PatchNet("siam-2stream").descriptor_size == 2 * 192 * 2 * 2  # two streams of 2x2x192 on 32x32
    assert PatchNet("siam-spp").descriptor_size == 256 * 21
    for architecture, size in (("2ch-spp", 96), ("siam-spp", 48)):  # SPP takes other patch sizes unchanged
        model = PatchNet(architecture).eval()
        assert model(torch.randn(2, 1, size, size), torch.randn(2, 1, size, size)).shape == (2,)
    colour = PatchNet("2ch-2stream", channels=3)
    assert colour(torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)).shape == (2,)


def test_hinge_losses_by_hand():
    two_channel, l2 = PatchNet("2ch"), PatchNet("siam-l2")
    scores, labels = torch.tensor([2.0, 0.5, -0.5, 0.3]), torch.tensor([1.0, 1.0, -1.0, -1.0])
    # max(0, 1 - y o): 0, 0.5, 0.5, 1.3
    assert hinge_loss(two_channel, scores, labels).item() == pytest.approx((0 + 0.5 + 0.5 + 1.3) / 4)
    # distances 0.2 (match: 0.2) and 0.4, 1.5 (non-matches: max(0, 1 - d) = 0.6, 0)
    assert hinge_loss(l2, torch.tensor([-0.2, -0.4, -1.5]), torch.tensor([1.0, -1.0, -1.0])).item() == \
        pytest.approx((0.2 + 0.6 + 0.0) / 3)


def test_fpr95_on_hand_made_scores():
    positives = np.arange(11, 31, dtype=float)  # 20 matches scored 11..30
    negatives = np.r_[np.arange(0, 10, dtype=float), 12.5, 25.5]  # 12 non-matches, two above 12
    scores = np.r_[positives, negatives]
    labels = np.r_[np.ones(20), np.zeros(12)]
    # 95% recall = 19 matches: threshold 12, where 12.5 and 25.5 are above: 2 of 12 non-matches
    assert metrics.fpr_at_recall(scores, labels) == pytest.approx(100 * 2 / 12)
    assert metrics.fpr_at_recall(np.r_[positives, negatives - 100], labels) == 0.0
    assert metrics.fpr_at_recall(np.ones(4), np.array([1, 0, 1, 0])) == 100.0  # ties enter together
    assert metrics.auc(np.array([0.9, 0.8, 0.7, 0.1]), np.array([1, 0, 1, 0])) == pytest.approx(0.75)
    with pytest.raises(ValueError):
        metrics.roc_curve(np.ones(3), np.ones(3))


def test_roc_png(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.r_[np.ones(50), np.zeros(50)]
    path = metrics.plot_roc({"a": (labels + rng.normal(0, 0.5, 100), labels)}, tmp_path / "roc.png")
    with Image.open(path) as image:
        assert image.size == (660, 600)


def test_phototour_layout_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    patches = rng.integers(0, 256, (300, 64, 64), dtype=np.uint8)  # 300 patches: two sheets, the second partial
    point_ids = np.repeat(np.arange(150), 2)
    pairs = np.array([[0, 1], [2, 3], [0, 2], [298, 299], [5, 100]])
    written = save_phototour(tmp_path, PhotoTour(patches, point_ids, pairs, np.zeros(5, np.int8)))
    assert [p.name for p in written] == ["patches0000.bmp", "patches0001.bmp", "info.txt", "m50_5_5_0.txt"]
    with Image.open(tmp_path / "patches0000.bmp") as sheet:  # patch 17 is row 1, column 1 of the first sheet
        assert np.array_equal(np.asarray(sheet)[64:128, 64:128], patches[17])
    with Image.open(tmp_path / "patches0001.bmp") as sheet:  # patch 299 is number 43 of the second: row 2, col 11
        assert np.array_equal(np.asarray(sheet)[128:192, 704:768], patches[299])
    assert (tmp_path / "m50_5_5_0.txt").read_text().splitlines()[2] == "0 0 0 2 1 0 0"
    loaded = load_phototour(tmp_path)
    assert np.array_equal(loaded.patches, patches) and np.array_equal(loaded.point_ids, point_ids)
    assert np.array_equal(loaded.pairs, pairs) and loaded.labels.tolist() == [1, 1, 0, 1, 0]
    (tmp_path / "m50_5_5_0.txt").write_text("0 0 0 1 0 0 0\n3 x 0 2 1 0 0\n")
    with pytest.raises(SemcorrError, match=r"m50_5_5_0.txt: line 2: expected 7 integers"):
        load_phototour(tmp_path)


def test_patches_at_the_border_are_padded_not_skipped():
    image = Image.new("L", (100, 80), 200)
    patch, padded = cut_patch(image, (2.0, 2.0), 40.0)
    # the box runs from -18 to 22: the first 18 of 40 pixels (28.8 of 64 columns / rows) lie outside
    assert padded and patch.shape == (64, 64)
    assert (patch[:, :28] == 0).all() and (patch[:28, :] == 0).all() and (patch[30:, 30:] == 200).all()
    inside, padded = cut_patch(image, (50.0, 40.0), 40.0)
    assert not padded and (inside == 200).all()


def test_cycle_consistency_on_a_hand_made_chain():
    ab = {"a1": "b1", "a2": "b2", "a3": "b3", "a4": "b4"}
    bc = {"b1": "c1", "b2": "c2", "b3": "c3"}  # b4 has no match in C: the chain stops, nothing to report
    ca = {"c1": "a1", "c2": "a3", "c3": "a3"}
    assert qc.cycle_inconsistencies(ab, bc, ca) == [("a2", "b2", "c2", "a3")]


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    path = save_checkpoint(PatchNet("2ch"), tmp_path / "net.pt", {"train_pairs": 3})
    assert load_checkpoint(path, "2ch").meta == {"train_pairs": 3}
    with pytest.raises(SemcorrError, match="a 2ch checkpoint, not siam"):
        load_checkpoint(path, "siam")
    (tmp_path / "junk.pt").write_bytes(b"nope")
    with pytest.raises(SemcorrError, match="not a readable patchnet checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")


def test_training_pairs_are_balanced_and_starved_categories_named(synth_store):
    dataset, pairs = store.load_dataset(synth_store), store.load_pairs(synth_store)
    sampled = sample_pairs(dataset, pairs, 40, seed=0)
    assert sampled.first.shape == (40, 64, 64) and sampled.labels.sum() == 20
    assert set(sampled.kinds[sampled.labels == 0]) <= {"other_keypoint", "displaced"}
    assert np.array_equal(sample_pairs(dataset, pairs, 40, seed=0).second, sampled.second)  # seeded
    cars = [inst for inst in dataset.instances if dataset.categories[inst.category_id].name == "car"]
    for inst in cars[1:]:  # one car left: at most 12 visible keypoints, fewer than the 20 needed
        inst.keypoints[:] = (np.nan, np.nan, 0)
    with pytest.raises(SemcorrError, match="too few annotated keypoints to train on for category car"):
        sample_pairs(dataset, pairs, 40)


def plant_errors(dataset, count: int, seed: int) -> list[tuple[int, int]]:
    """Move `count` visible keypoints by 0.35 of their box's longer side in a random direction."""
    rng = np.random.default_rng(seed)
    candidates = [(inst, int(k)) for inst in dataset.instances for k in np.flatnonzero(inst.visible)]
    planted = []
    for index in rng.choice(len(candidates), count, replace=False):
        inst, k = candidates[index]
        image = dataset.images[inst.image_id]
        angle = rng.uniform(0, 2 * np.pi)
        moved = inst.keypoints[k, :2] + 0.35 * max(inst.bbox[2], inst.bbox[3]) * np.array([np.cos(angle),
                                                                                              np.sin(angle)])
        inst.keypoints[k, :2] = np.clip(moved, 0, [image.width - 1, image.height - 1])
        planted.append((inst.id, k))
    return planted


@pytest.fixture(scope="module")
def planted_store(tmp_path_factory):
    """30 images per built-in category at 320 x 240, split and paired, with 10 keypoints moved."""
    from semcorr import commands
    from semcorr.synth.generate import SynthOptions
    from semcorr.synth.prototypes import builtin_prototype

    root = tmp_path_factory.mktemp("planted") / "dataset"
    commands.run_synth(root, [builtin_prototype(n) for n in ("chair", "car", "airplane")],
                       SynthOptions(images_per_category=30, width=320, height=240, seed=0))
    commands.run_split(root, (0.5, 0.2, 0.3), seed=0)
    commands.run_build_pairs(root)
    dataset = store.load_dataset(root)
    planted = plant_errors(dataset, 10, seed=0)
    store.save_dataset(dataset, root)
    return root, planted


def test_qc_ranks_planted_errors_near_the_top(planted_store, tmp_path):
    """Train 2ch on a store with planted errors, run `semcorr qc` end to end, find the errors."""
    from typer.testing import CliRunner

    from semcorr.cli import app

    store_copy, planted = planted_store
    runner = CliRunner()
    models, out = tmp_path / "models", tmp_path / "qc"
    trained = runner.invoke(app, ["patchnet", "train", str(store_copy), "--out", str(models), "--arch", "2ch",
                                  "--train-pairs", "6000", "--test-pairs", "600", "--epochs", "4"])
    assert trained.exit_code == 0, trained.output
    assert (models / "roc.png").is_file() and (models / "patchnet_table.csv").is_file()
    checked = runner.invoke(app, ["qc", str(store_copy), "--checkpoint", str(models / "2ch.pt"), "--out", str(out),
                                  "--top", "10"])
    assert checked.exit_code == 0, checked.output
    suspects = pd.read_csv(out / "suspects.csv")
    rank = {key: i for i, key in enumerate(zip(suspects.ann_id, suspects.keypoint))}
    ranks = sorted(rank[key] for key in planted)
    print("planted ranks", ranks, "of", len(suspects))
    chance = len(planted) / len(suspects)
    top_k = sum(r < len(planted) for r in ranks) / len(planted)
    assert top_k >= 5 * chance  # far above what random ranking gives
    # Random ranking puts the median planted error near half the list. With torch 2.13's CPU kernels this
    # run gives a median of 151.5 of 592 (0.26); an earlier torch build gave 52. The appearance-only
    # ranking is this weak on flat renders; issue 13 replaces it with mask/shape/symmetry cues.
    assert np.median(ranks) < 0.35 * len(suspects)
    assert (out / "suspects.png").is_file() and (out / "suspect_images.csv").is_file()
    refused = runner.invoke(app, ["qc", str(store_copy), "--checkpoint", str(models / "2ch.pt"), "--out", str(out),
                                  "--arch", "siam"])
    assert refused.exit_code == 1 and "a 2ch checkpoint, not siam" in refused.output


def test_patchnet_train_and_eval_on_photo_tour_folders(tmp_path):
    """The paper's setting through the CLI: train on one Photo Tour folder, evaluate on another."""
    from typer.testing import CliRunner

    from semcorr.cli import app

    rng = np.random.default_rng(2)
    for name in ("liberty", "yosemite"):
        base = rng.integers(0, 256, (60, 64, 64)).astype(np.int16)
        noisy = np.clip(base + rng.integers(-10, 11, base.shape), 0, 255)
        patches = np.concatenate([base, noisy]).astype(np.uint8)  # patch i and 60 + i show one 3D point
        point_ids = np.r_[np.arange(60), np.arange(60)]
        pairs = np.array([[i, 60 + i] for i in range(60)] + [[i, 60 + (i + 1) % 60] for i in range(60)])
        save_phototour(tmp_path / name, PhotoTour(patches, point_ids, pairs, np.zeros(len(pairs), np.int8)))
    runner = CliRunner()
    trained = runner.invoke(app, ["patchnet", "train", str(tmp_path / "liberty"), "--test-source",
                                  str(tmp_path / "yosemite"), "--out", str(tmp_path / "models"), "--arch", "2ch",
                                  "--arch", "siam-l2", "--train-pairs", "120", "--test-pairs", "120", "--epochs", "1"])
    assert trained.exit_code == 0, trained.output
    table = pd.read_csv(tmp_path / "models" / "patchnet_table.csv")
    assert table.architecture.tolist() == ["2ch", "siam-l2"] and (table.test_pairs == 120).all()
    assert ((table.fpr95 >= 0) & (table.fpr95 <= 100)).all()
    evaluated = runner.invoke(app, ["patchnet", "eval", str(tmp_path / "yosemite"), "--checkpoint",
                                    str(tmp_path / "models" / "2ch.pt"), "--out", str(tmp_path / "eval")])
    assert evaluated.exit_code == 0, evaluated.output
    assert pd.read_csv(tmp_path / "eval" / "patchnet_table.csv").fpr95.tolist() == table.fpr95.tolist()[:1]


def test_cycle_check_follows_network_matches_over_three_images():
    """Ramp patches at known angles, matched by L2 of the normalised pixels (correlation = cos of the
    angle difference): A = {0, 50}, B = {20, 100}, C = {40, 150} degrees. A0 -> B0 (20) -> C0 (40)
    -> A1 (50): a chain that comes back to another keypoint id; A1 -> B0 -> C0 -> A1 returns."""
    ys, xs = np.mgrid[-31.5:32, -31.5:32]

    def ramp(degrees):
        angle = np.radians(degrees)
        return np.clip(128 + 3 * (xs * np.cos(angle) + ys * np.sin(angle)), 0, 255).astype(np.uint8)

    angles = {(1, 0): 0, (1, 1): 50, (2, 0): 20, (2, 1): 100, (3, 0): 40, (3, 1): 150}
    keys = pd.DataFrame([{"ann_id": 10 * image, "image_id": image, "category": "thing", "keypoint": k,
                          "x": 0.0, "y": 0.0} for image, k in angles])
    bank = qc.PatchBank(keys, np.stack([ramp(a) for a in angles.values()]), padded=0)
    model = PatchNet("siam-l2")
    model.trunk = torch.nn.Flatten()  # descriptor = the normalised pixels themselves
    broken, chains = qc.cycle_check(model, bank, [(1, 2, 3)], "thing")
    assert chains == 2
    assert broken[["start_ann_id", "start_keypoint", "via_b", "via_c", "end_ann_id", "end_keypoint", "kind"]
                  ].values.tolist() == [[10, 0, "20:0", "30:0", 10, 1, "keypoint"]]


def test_qc_on_multi_instance_pairs_runs_the_cycle_check(store_copy, tmp_path):
    from typer.testing import CliRunner

    from semcorr import commands
    from semcorr.cli import app

    commands.run_build_pairs(store_copy, mode="misc")
    runner = CliRunner()
    trained = runner.invoke(app, ["patchnet", "train", str(store_copy), "--out", str(tmp_path / "m"), "--arch",
                                  "siam-l2", "--train-pairs", "200", "--test-pairs", "100", "--epochs", "1"])
    assert trained.exit_code == 0, trained.output
    checked = runner.invoke(app, ["qc", str(store_copy), "--checkpoint", str(tmp_path / "m" / "siam-l2.pt"),
                                  "--out", str(tmp_path / "qc"), "--triples", "3"])
    assert checked.exit_code == 0, checked.output
    assert "cycle check:" in checked.output
    cycles = pd.read_csv(tmp_path / "qc" / "cycles.csv")
    assert list(cycles.columns)[:4] == ["category", "image_a", "image_b", "image_c"]
    assert set(cycles.kind) <= {"keypoint", "instance"}
    images = pd.read_csv(tmp_path / "qc" / "suspect_images.csv")
    # images with a point clearly off its mask first (none in this clean store), then by worst suspicion
    assert not images.off_mask.any() and images.worst.is_monotonic_decreasing
