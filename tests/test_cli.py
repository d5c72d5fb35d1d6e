"""The CLI as a new user runs it: the demo end to end, and the synth command on its own."""

import json

import pandas as pd
from PIL import Image
from typer.testing import CliRunner

from semcorr.cli import app

runner = CliRunner()


def test_demo_produces_every_artifact(tmp_path):
    result = runner.invoke(app, ["demo", str(tmp_path / "demo"), "--images-per-category", "16"])
    assert result.exit_code == 0, result.output
    dataset, spair = tmp_path / "demo" / "dataset", tmp_path / "demo" / "spair"
    coco = json.loads((dataset / "annotations.json").read_text())
    assert len(coco["images"]) == 48 == len(list((dataset / "images").glob("*.jpg")))
    assert all(ann["segmentation"]["counts"] for ann in coco["annotations"])
    splits = json.loads((dataset / "splits.json").read_text())
    assert set(splits.values()) == {"trn", "val", "test"}
    pairs = pd.read_parquet(dataset / "pairs.parquet", columns=["split", "category"])
    assert set(pairs["split"]) == {"trn", "val", "test"}
    table2 = pd.read_csv(dataset / "stats" / "table2_categories.csv", index_col=0)
    assert table2.loc["total", "All"] == len(pairs)
    table1 = pd.read_csv(dataset / "stats" / "table1_difficulty.csv", index_col=0)
    assert table1.loc["All", ["Viewpoint easy", "Viewpoint medium", "Viewpoint hard"]].sum() == len(pairs)
    for figure in ("fig1_difficulty_pies.png", "fig2_azimuth_histograms.png"):
        with Image.open(dataset / "stats" / figure) as png:
            assert png.width > 500 and png.height > 500
    for split in ("trn", "val", "test"):
        assert len((spair / "Layout" / "large" / f"{split}.txt").read_text().splitlines()) == (pairs.split == split).sum()
    assert "demo done" in result.output and "Table 1" in result.output


def test_unknown_category_is_one_error_line(tmp_path):
    result = runner.invoke(app, ["synth", str(tmp_path / "x"), "--category", "unicorn"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "error: unknown built-in category 'unicorn'; choose from chair, car, airplane or give --mesh and --schema"]
    assert not (tmp_path / "x").exists()
