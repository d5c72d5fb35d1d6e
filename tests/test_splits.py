"""Image-level splits: ratios, spread over azimuth bins, determinism."""

import re

import numpy as np
import pandas as pd
import pytest

from semcorr.builders.splits import assign_splits, interleave_assign, parse_ratios, split_units
from semcorr.errors import SemcorrError


def images(per_category: int = 100, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for c, category in enumerate(["bird", "boat"]):
        for i in range(per_category):
            rows.append({"image_id": c * 1000 + i, "category": category, "azimuth_bin": int(rng.integers(0, 8))})
    return pd.DataFrame(rows)


def test_ratio_counts_are_exact_for_100_images():
    splits = assign_splits(images(), (0.5, 0.2, 0.3), seed=0)
    counts = pd.Series(splits).groupby(lambda i: i // 1000).value_counts().unstack()
    assert counts.to_dict("records") == [{"trn": 50, "val": 20, "test": 30}] * 2


def test_each_split_spreads_over_azimuth_bins():
    table = images(per_category=160, seed=1)
    splits = assign_splits(table, (0.5, 0.2, 0.3), seed=0)
    table["split"] = table["image_id"].map(splits)
    for (category, azimuth_bin), group in table.groupby(["category", "azimuth_bin"]):
        shares = group["split"].value_counts(normalize=True)
        # every bin with >= 10 images gives every split something, near its share
        if len(group) >= 10:
            assert set(shares.index) == {"trn", "val", "test"}, (category, azimuth_bin)
            assert abs(shares["trn"] - 0.5) <= 0.15


def test_seeded_and_deterministic():
    table = images()
    assert assign_splits(table, (0.5, 0.2, 0.3), seed=4) == assign_splits(table, (0.5, 0.2, 0.3), seed=4)
    assert assign_splits(table, (0.5, 0.2, 0.3), seed=4) != assign_splits(table, (0.5, 0.2, 0.3), seed=5)


def test_interleave_prefixes_follow_ratios():
    assert interleave_assign(10, (0.5, 0.2, 0.3)).tolist() == [0, 2, 1, 0, 0, 2, 0, 1, 2, 0]
    assert np.bincount(interleave_assign(7, (1.0, 0.0, 0.0)), minlength=3).tolist() == [7, 0, 0]


def test_parse_ratios():
    assert parse_ratios("5:2:3") == (0.5, 0.2, 0.3)
    assert parse_ratios("1:1:2") == (0.25, 0.25, 0.5)
    for bad in ("5:2", "a:b:c", "-1:1:1", "0:0:0"):
        with pytest.raises(SemcorrError, match="--ratios"):
            parse_ratios(bad)


def test_image_with_two_categories_is_split_once():
    instances = pd.DataFrame({
        "ann_id": [1, 2, 3, 4], "image_id": [10, 10, 10, 11], "category": ["dog", "cat", "cat", "dog"],
        "azimuth_bin": [3, 5, 1, 2], "bbox_area": [10.0, 50.0, 20.0, 5.0],
    })
    units = split_units(instances)
    # image 10 has two cats and one dog: split under "cat", with its largest cat's bin
    assert units.to_dict("records") == [{"image_id": 10, "category": "cat", "azimuth_bin": 5},
                                        {"image_id": 11, "category": "dog", "azimuth_bin": 2}]


@pytest.mark.parametrize("bad", ["nan:1:1", "1:nan:1", "inf:1:1", "1e308:1e308:1", "-1:2:2", "0:0:0", "", "1:1:1:1"])
def test_parse_ratios_refuses_non_finite_negative_and_zero(bad):
    with pytest.raises(SemcorrError, match="--ratios"):
        parse_ratios(bad)


def two_category_store(root):
    """Images 1-3: image 1 holds two cats and a dog, image 2 a dog, image 3 a cat."""
    from PIL import Image

    from semcorr import store

    (root / "images").mkdir(parents=True)
    images = {}
    for i in (1, 2, 3):
        Image.new("RGB", (64, 48)).save(root / "images" / f"{i}.jpg")
        images[i] = store.ImageInfo(i, f"{i}.jpg", 64, 48)
    cat, dog = store.Category(1, "cat", ()), store.Category(2, "dog", ())
    instances = [store.Instance(10 + k, image_id, category_id, [1, 1, 10, 10], np.zeros((0, 3)))
                 for k, (image_id, category_id) in enumerate([(1, 1), (1, 1), (1, 2), (2, 2), (3, 1)])]
    store.save_dataset(store.Dataset(images=images, categories={1: cat, 2: dog}, instances=instances,
                                     image_root=root / "images"), root)


def test_split_counts_an_image_under_every_category_it_holds(tmp_path):
    from typer.testing import CliRunner

    from semcorr import commands, store
    from semcorr.builders.splits import split_counts
    from semcorr.cli import app

    two_category_store(tmp_path)
    counts = commands.run_split(tmp_path, (1.0, 0.0, 0.0), seed=0)
    splits = store.load_splits(tmp_path)
    assert splits == {1: "trn", 2: "trn", 3: "trn"}  # each image once
    # image 1 is split under cat (two cats) but counted for the dog as well: cat {1, 3}, dog {1, 2}
    assert counts.to_dict("index") == {"cat": {"trn": 2, "val": 0, "test": 0}, "dog": {"trn": 2, "val": 0, "test": 0}}
    table = pd.DataFrame({"image_id": [1, 1, 1, 2, 3], "category": ["cat", "cat", "dog", "dog", "cat"]})
    assert split_counts(table, {1: "val", 2: "trn"}).to_dict("index") == {
        "cat": {"trn": 0, "val": 1, "test": 0}, "dog": {"trn": 1, "val": 1, "test": 0}}
    result = CliRunner().invoke(app, ["split", str(tmp_path), "--ratios", "1:0:0"])
    assert result.exit_code == 0, result.output
    rows = dict(re.findall(r"(cat|dog)\W+(\d+)", result.output))
    assert rows == {"cat": "2", "dog": "2"}, result.output
    result = CliRunner().invoke(app, ["split", str(tmp_path), "--ratios", "nan:1:1"])
    assert result.exit_code == 1 and result.output.strip().splitlines()[-1].startswith("error: --ratios")
