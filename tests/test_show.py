"""The pair and image viewers on a hand-made store with known coordinates: pixels where the keypoints are,
masks blended as worked out by hand, swapped correspondences drawn differently, bad input refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from semcorr import commands, store
from semcorr.cli import app
from semcorr.store import Category, ImageInfo, Instance
from semcorr.viewers.drawing import instance_color, keypoint_color
from semcorr.viewers.image_view import render_image
from semcorr.viewers.pair_view import pair_caption_lines, pair_from_spair_export, pair_from_store, render_pair

WIDTH, HEIGHT, GREY = 480, 360, 128
CUP = Category(id=1, name="cup", keypoints=("rim", "handle", "base"), skeleton=((0, 1), (1, 2)))
# image 1: rim and handle visible, base labelled but hidden; image 2: all three visible
SRC_KPS = np.array([[100.0, 100, 2], [300, 120, 2], [200, 300, 1]])
TRG_KPS = np.array([[150.0, 60, 2], [350, 250, 2], [250, 200, 2]])
SRC_BOX = [50.0, 50, 300, 280]
SQUARE = [[50, 50, 350, 50, 350, 330, 50, 330]]
runner = CliRunner()


def make_store(root: Path, trg_kps: np.ndarray = TRG_KPS, provenance: str | None = None) -> Path:
    """Two grey 480x360 images of one cup each, split together, SPair pairs built (pair ids 1: 1->2, 2: 2->1)."""
    (root / store.IMAGES_DIR).mkdir(parents=True)
    for name in ("a.png", "b.png"):
        Image.new("RGB", (WIDTH, HEIGHT), (GREY,) * 3).save(root / store.IMAGES_DIR / name)
    extra = {"keypoint_provenance": {"0": {"action": provenance, "round": 1}}} if provenance else {}
    src = Instance(id=10, image_id=1, category_id=1, bbox=np.array(SRC_BOX), keypoints=SRC_KPS.copy(),
                   segmentation=SQUARE, azimuth_bin=0, truncated=True, extra_attributes=extra)
    trg = Instance(id=20, image_id=2, category_id=1, bbox=np.array(SRC_BOX), keypoints=trg_kps.copy(), azimuth_bin=4)
    dataset = store.Dataset(images={1: ImageInfo(1, "a.png", WIDTH, HEIGHT), 2: ImageInfo(2, "b.png", WIDTH, HEIGHT)},
                            categories={1: CUP}, instances=[src, trg], image_root=root / store.IMAGES_DIR)
    store.save_dataset(dataset, root)
    store.save_splits({1: "trn", 2: "trn"}, root)
    commands.run_build_pairs(root)
    return root


def pixel(image: Image.Image, x: float, y: float) -> tuple[int, int, int]:
    return image.getpixel((int(np.floor(x)), int(np.floor(y))))


def near(image: Image.Image, x: float, y: float, color, reach: int = 1) -> bool:
    """Whether `color` is within `reach` pixels of (x, y)."""
    return any(pixel(image, x + dx, y + dy) == color for dx in range(-reach, reach + 1)
               for dy in range(-reach, reach + 1))


@pytest.fixture
def cup_store(tmp_path) -> Path:
    return make_store(tmp_path / "cups")


def test_pair_points_land_on_the_keypoint_pixels(cup_store):
    view = pair_from_store(cup_store, 1)
    assert view.src.instance_ids == [10] and view.trg.instance_ids == [20]
    drawing = render_pair(view)
    offset = WIDTH + 8  # the target starts after the source and an 8-pixel gap
    for k in (0, 1):
        assert pixel(drawing, *SRC_KPS[k, :2]) == keypoint_color(k)
        assert pixel(drawing, TRG_KPS[k, 0] + offset, TRG_KPS[k, 1]) == keypoint_color(k)
    # base is labelled but hidden in the source: no correspondence, no marker in either image
    assert sorted(k for _, _, k in view.links) == [0, 1]
    assert pixel(drawing, TRG_KPS[2, 0] + offset, TRG_KPS[2, 1]) == (GREY,) * 3
    # the rim's line passes through the midpoint of its two ends
    middle = (SRC_KPS[0, :2] + TRG_KPS[0, :2] + [offset, 0]) / 2
    assert near(drawing, *middle, keypoint_color(0))


def test_mask_is_blended_at_35_percent_in_the_instance_colour(cup_store):
    drawing = render_pair(pair_from_store(cup_store, 1))
    expected = tuple(round(GREY * 0.65 + c * 0.35) for c in instance_color(0))  # worked by hand: (94, 125, 146)
    assert expected == (94, 125, 146)
    assert pixel(drawing, 80, 250) == expected
    assert pixel(drawing, 20, 20) == (GREY,) * 3  # outside the mask and the box


def test_swapped_correspondence_changes_the_drawing(cup_store, tmp_path):
    swapped = make_store(tmp_path / "swapped", trg_kps=TRG_KPS[[1, 0, 2]])
    plain, crossed = render_pair(pair_from_store(cup_store, 1)), render_pair(pair_from_store(swapped, 1))
    offset = WIDTH + 8
    assert pixel(crossed, TRG_KPS[0, 0] + offset, TRG_KPS[0, 1]) == keypoint_color(1)
    assert pixel(plain, TRG_KPS[0, 0] + offset, TRG_KPS[0, 1]) == keypoint_color(0)
    assert np.asarray(plain).tobytes() != np.asarray(crossed).tobytes()


def test_caption_has_the_four_labels_and_azimuth_bins(cup_store):
    lines = pair_caption_lines(pair_from_store(cup_store, 1))
    # bins 0 and 4: circular difference 4, hard; equal boxes: scale easy; source truncated only: src
    assert lines[1] == "viewpoint hard | scale easy | truncation src | occlusion none"
    assert lines[2] == "azimuth bins: source 0, target 4"
    assert "pair 1 | cup | trn | 2 correspondences" in lines[0]


def test_image_view_visibility_and_provenance(tmp_path):
    root = make_store(tmp_path / "manual", provenance="manual")
    plain = render_image(store.load_dataset(make_store(tmp_path / "none")), 1)
    manual = render_image(store.load_dataset(root), 1)
    radius = 6  # 360 / 60
    # visibility 2: a filled marker on the keypoint's pixel
    assert pixel(plain, *SRC_KPS[1, :2]) == keypoint_color(1)
    # visibility 1: a hollow ring in the keypoint's colour, its centre left unfilled
    x, y = SRC_KPS[2, :2]
    assert pixel(plain, x, y) != keypoint_color(2)
    assert near(plain, x + radius - 1, y, keypoint_color(2))
    # provenance "manual" is a square: its corner (4.5, 4.5) from the centre lies outside the radius-6 circle
    x, y = SRC_KPS[0, :2]
    assert pixel(manual, x + 4, y + 4) == keypoint_color(0)
    assert pixel(plain, x + 4, y + 4) != keypoint_color(0)
    # skeleton edge rim-handle in the instance colour, through its midpoint
    assert near(plain, *(SRC_KPS[0, :2] + SRC_KPS[1, :2]) / 2, instance_color(0))


def test_show_commands_write_pngs_byte_identical(cup_store, tmp_path):
    for round_ in (1, 2):
        assert runner.invoke(app, ["show", "pair", str(cup_store), "1", "--out",
                                   str(tmp_path / f"p{round_}.png")]).exit_code == 0
        assert runner.invoke(app, ["show", "image", str(cup_store), "1", "--out",
                                   str(tmp_path / f"i{round_}.png")]).exit_code == 0
    assert (tmp_path / "p1.png").read_bytes() == (tmp_path / "p2.png").read_bytes()
    assert (tmp_path / "i1.png").read_bytes() == (tmp_path / "i2.png").read_bytes()
    with Image.open(tmp_path / "p1.png") as image:
        assert not image.info  # no time, no software name


def test_show_pair_on_an_spair_export(cup_store, tmp_path):
    export = tmp_path / "spair"
    pairs = store.load_pairs(cup_store)  # the export wants pairs in every split: copies under new ids
    pairs = pd.concat([pairs.assign(split=s, pair_id=pairs.pair_id + 10 * i) for i, s in enumerate(store.SPLIT_NAMES)],
                      ignore_index=True)
    store.save_pairs(pairs, cup_store)
    commands.run_export_spair(cup_store, export)
    view = pair_from_spair_export(export, 1)
    drawing = render_pair(view)
    offset = WIDTH + 8
    for k in (0, 1):  # exported pixel indexes are drawn at the pixel centre: the same pixels
        assert pixel(drawing, *SRC_KPS[k, :2]) == keypoint_color(k)
        assert pixel(drawing, TRG_KPS[k, 0] + offset, TRG_KPS[k, 1]) == keypoint_color(k)
    assert pair_caption_lines(view)[1] == "viewpoint hard | scale easy | truncation src | occlusion none"
    result = runner.invoke(app, ["show", "pair", str(export), "1", "--out", str(tmp_path / "e.png")])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(("argv", "message"), [
    (["show", "pair", "{root}", "99"], ("error: {root}/pairs.parquet: no pair with pair_id=99 (ids run from 1 to 2); "
                                       "give a pair id from the table")),
    (["show", "image", "{root}", "7"], ("error: {root}/annotations.json: no image with id=7 (ids run from 1 to 2); "
                                       "give an image id of the dataset")),
    (["show", "pair", "{root}", "1", "--out", "{root}/images/x.png"],
     ("error: --out {root}/images/x.png lies inside the input {root}/images; choose an output folder outside the "
     "inputs")),
    (["show", "image", "{root}", "1", "--out", "{root}/annotations.json"],
     "error: --out {root}/annotations.json: give the path of a .png file to write"),
    (["show", "pair", "{tmp}", "1"], ("error: {tmp}: neither a dataset directory (no annotations.json) nor an "
                                     "SPair-layout export (no Layout/large); give one of them")),
])
def test_bad_input_is_one_line_and_writes_nothing(cup_store, tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    fill = {"root": str(cup_store), "tmp": str(empty)}
    result = runner.invoke(app, [a.format(**fill) for a in argv])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [message.format(**fill)]
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert not list((cup_store / store.IMAGES_DIR).glob("x.png"))


def test_missing_image_file_is_one_line(cup_store, tmp_path):
    (cup_store / store.IMAGES_DIR / "b.png").unlink()
    result = runner.invoke(app, ["show", "pair", str(cup_store), "1", "--out", str(tmp_path / "p.png")])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        (f"error: {cup_store}/images/b.png: image id=2: image file not found; copy the image there or fix file_name "
        "in annotations.json")]
    assert not (tmp_path / "p.png").exists()


def test_labels_stay_inside_the_picture_and_clear_of_each_other():
    from PIL import Image, ImageDraw

    from semcorr.viewers import drawing

    image = Image.new("RGB", (200, 120), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    font = drawing.label_font(12)
    taken: list[tuple[float, float, float, float]] = []
    for _ in range(3):  # three names at one point near the right edge
        drawing.draw_label(draw, (190.0, 60.0), "left_front_foot", font, taken=taken)
    assert len(taken) == 3
    for x0, _, x1, _ in taken:
        assert 0 <= x0 and x1 <= 200
    for i in range(3):
        for j in range(i + 1, 3):
            a, b = taken[i], taken[j]
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (a, b)
    # the text really is where the boxes say: nothing drawn right of the point's label side
    pixels = np.asarray(image)
    assert (pixels[:, 196:] == 255).all()
