"""PyTorch datasets over the SPair and MISC exports, and the padding collate."""

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed")

from semcorr import commands, store  # noqa: E402
from semcorr.exports.torch_dataset import MiscPairs, SpairPairs, pad_collate  # noqa: E402


def test_spair_pairs_in_three_lines(synth_store, tmp_path):
    commands.run_export_spair(synth_store, tmp_path / "spair")
    loader = torch.utils.data.DataLoader(SpairPairs(tmp_path / "spair", "trn"), batch_size=4, collate_fn=pad_collate)
    batch = next(iter(loader))
    lengths = [int((~torch.isnan(k[:, 0])).sum()) for k in batch["src_kps"]]
    assert batch["src_image"].shape == (4, 3, 150, 200) and batch["src_image_size"].tolist() == [[150, 200]] * 4
    assert batch["src_kps"].shape == (4, max(lengths), 2)
    for row, n in enumerate(lengths):  # padding is NaN for points and -1 for ids, exactly past each pair's length
        assert torch.isnan(batch["trg_kps"][row, n:]).all() and (batch["kps_ids"][row, n:] == -1).all()
        assert (batch["kps_ids"][row, :n] >= 0).all()
    assert len(batch["category"]) == 4


def test_misc_pairs_padding(tmp_path):
    from tests.test_coco_misc import multi_instance_store

    root = tmp_path / "dataset"
    root.mkdir()
    dataset = multi_instance_store(root)
    store.save_dataset(dataset, root)
    store.save_splits({1: "trn", 2: "trn"}, root)
    commands.run_build_pairs(root, mode="misc")
    commands.run_export_misc(root, tmp_path / "misc")
    data = MiscPairs(tmp_path / "misc", "trn")
    first, second = data[0], data[1]
    assert first["src_kps"].shape == (2, 3, 3) and first["trg_kps"].shape == (1, 3, 3)
    assert first["correspondences"].tolist() == [[0, 0, 0], [1, 0, 0], [1, 0, 1]]
    assert torch.isnan(first["src_kps"][0, 1, :2]).all() and first["src_kps"][0, 2, 2] == 1
    batch = pad_collate([first, second])
    assert batch["src_kps"].shape == (2, 2, 3, 3)  # second pair's single source instance padded to two
    assert torch.isnan(batch["src_kps"][1, 1]).all()
    assert batch["correspondences"][1].tolist() == [[0, 0, 0], [0, 1, 0], [0, 1, 1]]
