"""SPair pairs against a brute-force reference, counts, split isolation and determinism."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from semcorr import store
from semcorr.builders.spair_pairs import build_spair_pairs, spair_units
from tests.reference import reference_spair_pairs

COMPARED = ["pair_id", "category", "split", "src_image_id", "trg_image_id", "viewpoint_variation",
            "scale_variation", "truncation", "occlusion"]


def random_units(seed: int, count: int = 60, keypoints: int = 12) -> tuple[pd.DataFrame, np.ndarray]:
    """Units of 3 categories over 3 splits with sparse visibility (some units see nothing)."""
    rng = np.random.default_rng(seed)
    units = pd.DataFrame({
        "image_id": rng.permutation(np.arange(1, count + 1)),
        "ann_id": np.arange(100, 100 + count),
        "category": rng.choice(["bus", "cat", "dog"], count),
        "split": rng.choice(["trn", "val", "test"], count),
        "azimuth_bin": rng.integers(0, 8, count),
        "bbox_area": rng.choice([100.0, 200.0, 400.0, 150.0, 800.0, 399.0], count),
        "truncated": rng.random(count) < 0.3,
        "occluded": rng.random(count) < 0.3,
    })
    visible = rng.random((count, keypoints)) < 0.15
    return units, visible


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pairs_match_reference(seed):
    units, visible = random_units(seed)
    pairs = build_spair_pairs(units, visible)
    expected = reference_spair_pairs(units, visible)
    assert len(pairs) == len(expected) > 0
    got = pairs[COMPARED].to_dict("records")
    for row, want in zip(got, expected):
        assert {k: (int(v) if isinstance(v, np.integer) else v) for k, v in row.items()} == {
            k: want[k] for k in COMPARED}
    assert pa.array(pairs["kps_ids"]).to_pylist() == [want["kps_ids"] for want in expected]
    assert (pairs["num_shared"].to_numpy() == [len(w["kps_ids"]) for w in expected]).all()


def test_pair_count_brute_force():
    units, visible = random_units(5, count=40)
    pairs = build_spair_pairs(units, visible)
    count = 0
    for i in range(len(units)):
        for j in range(len(units)):
            same_group = (units.category[i], units.split[i]) == (units.category[j], units.split[j])
            if i != j and same_group and (visible[i] & visible[j]).any():
                count += 1
    assert len(pairs) == count


def test_pairs_never_cross_splits_and_are_symmetric(synth_store):
    pairs = store.load_pairs(synth_store)
    splits = store.load_splits(synth_store)
    assert (pairs["src_image_id"].map(splits) == pairs["split"]).all()
    assert (pairs["trg_image_id"].map(splits) == pairs["split"]).all()
    assert (pairs["src_image_id"] != pairs["trg_image_id"]).all()
    forward = set(zip(pairs.src_image_id, pairs.trg_image_id))
    assert forward == {(b, a) for a, b in forward}
    # every ordered pair appears in both directions, so src-only and tgt-only counts match
    assert (pairs.truncation == 1).sum() == (pairs.truncation == 2).sum()
    assert (pairs.occlusion == 1).sum() == (pairs.occlusion == 2).sum()
    assert set(pairs["split"]) == {"trn", "val", "test"}


def test_shared_keypoints_are_visible_in_both(synth_store):
    dataset = store.load_dataset(synth_store)
    pairs = store.load_pairs(synth_store)
    by_id = {inst.id: inst for inst in dataset.instances}
    for row, ids in zip(pairs.itertuples(), pa.array(pairs["kps_ids"]).to_pylist()):
        both = by_id[row.src_ann_id].visible & by_id[row.trg_ann_id].visible
        assert ids == np.flatnonzero(both).tolist()


def test_multi_instance_images_are_left_out(synth_store):
    dataset = store.load_dataset(synth_store)
    first = dataset.instances[0]
    twin = store.Instance(id=9999, image_id=first.image_id, category_id=first.category_id, bbox=first.bbox,
                          keypoints=first.keypoints.copy(), azimuth_bin=first.azimuth_bin)
    dataset.instances.append(twin)
    units, _, skipped = spair_units(dataset, store.load_splits(synth_store))
    assert first.image_id not in set(units["image_id"])
    assert skipped.to_dict("records") == [{"image_id": first.image_id, "category": "chair",
                                           "reason": "several instances of the category"}]


def test_build_is_deterministic(store_copy):
    from semcorr import commands

    first = (store_copy / store.PAIRS_FILE).read_bytes()
    commands.run_build_pairs(store_copy)
    assert (store_copy / store.PAIRS_FILE).read_bytes() == first
