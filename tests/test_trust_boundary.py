"""The trust boundary and the writes: generated bad JSON, RLE checks, safe paths, atomic outputs, kill -9."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycocotools import mask as mask_utils

from semcorr import atomic, store
from semcorr.coco_schema import rle_runs
from semcorr.errors import SemcorrError
from semcorr.paths import path_problem, refuse_overlap, safe_component
from tests.test_store import tiny_coco, write_store

# ---------------------------------------------------------------------------- generated JSON mutations

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8,
)
SECTIONS = st.sampled_from(["images", "annotations", "categories"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(section=SECTIONS, index=st.integers(0, 1), key=st.sampled_from(
    ["id", "image_id", "category_id", "bbox", "keypoints", "segmentation", "area", "iscrowd", "attributes",
     "file_name", "width", "height", "name", "skeleton", "flip_pairs", "keypoint_descriptions", "schema_version"]),
       value=JSON_VALUES, drop=st.booleans())
def test_any_field_any_value_loads_or_fails_cleanly(tmp_path_factory, section, index, key, value, drop):
    """Whatever a field holds, loading either succeeds (and saves back to valid JSON) or names file and record."""
    root = tmp_path_factory.mktemp("fuzz")
    coco = tiny_coco()
    record = coco[section][index]
    if drop:
        record.pop(key, None)
    else:
        record[key] = value
    write_store(root, coco) if section != "images" or key != "file_name" else (
        (root / "images").mkdir(), (root / "annotations.json").write_text(json.dumps(coco)))
    try:
        dataset = store.load_dataset(root, check_files=False)
    except SemcorrError as exc:
        message = str(exc)
        assert message.startswith(str(root / "annotations.json")) and "\n" not in message
        return
    store.save_dataset(dataset, root)  # what was accepted must save (no NaN, no junk) and load again
    again = store.load_dataset(root, check_files=False)
    assert len(again.instances) == len(dataset.instances)


def test_json_nan_and_infinity_are_refused(tmp_path):
    coco = tiny_coco()
    write_store(tmp_path, coco)
    text = json.dumps(coco).replace('"bbox": [10, 10, 50, 40]', '"bbox": [10, NaN, 50, Infinity]')
    (tmp_path / "annotations.json").write_text(text)
    with pytest.raises(SemcorrError, match=r"annotation id=5: field 'bbox"):
        store.load_dataset(tmp_path)


# ---------------------------------------------------------------------------- RLE


def runs_by_brute_force(mask: np.ndarray) -> list[int]:
    """Column-major run lengths starting with zeros, the way COCO counts them."""
    runs, value, count = [], 0, 0
    for pixel in mask.flatten(order="F"):
        if pixel != value:
            runs.append(count)
            value, count = pixel, 0
        count += 1
    return [*runs, count]


@pytest.mark.parametrize("seed", range(8))
def test_rle_string_decodes_like_brute_force(seed):
    rng = np.random.default_rng(seed)
    mask = (rng.random((31, 47)) > rng.uniform(0.1, 0.9)).astype(np.uint8)
    encoded = mask_utils.encode(np.asfortranarray(mask))["counts"].decode("ascii")
    assert rle_runs(encoded) == runs_by_brute_force(mask)


@pytest.mark.parametrize(("counts", "fragment"), [
    ("111", "add up to"),          # valid alphabet, wrong total: pycocotools would write past its buffer
    ("0\x7f", "not a valid COCO run-length"),
    ("0g", "not a valid COCO run-length"),  # a continuation bit on the last character
])
def test_corrupt_rle_is_refused_before_pycocotools(tmp_path, counts, fragment):
    coco = tiny_coco()
    coco["annotations"][0]["segmentation"] = {"size": [80, 100], "counts": counts}
    write_store(tmp_path, coco)
    with pytest.raises(SemcorrError, match=fragment):
        store.load_dataset(tmp_path)


# ---------------------------------------------------------------------------- names that become paths


@pytest.mark.parametrize(("name", "problem"), [
    ("a.jpg", None), ("sub/dir/a.jpg", None), ("../a.jpg", "'..'"), ("sub/../../a.jpg", "'..'"),
    ("/etc/passwd", "absolute"), ("C:/x.jpg", "absolute"), ("a\x00.jpg", "NUL"), ("", "empty"),
    ("a\\..\\b.jpg", "backslash"), (".", "names no file"), (7, "not a string"),
])
def test_path_problem(name, problem):
    found = path_problem(name)
    assert (found is None) if problem is None else (problem in found)


@pytest.mark.parametrize(("name", "expected"), [
    ("chair", "chair"), ("/../../../x/pwn", "x_pwn"), ("a b/c", "a_b_c"), ("..", "_"), ("", "_"),
])
def test_safe_component(name, expected):
    assert safe_component(name) == expected
    assert "/" not in safe_component(name) and safe_component(name) not in (".", "..")


def test_refuse_overlap_relations(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    refuse_overlap(tmp_path / "elsewhere", [data])
    for output, relation in ((data, "is"), (tmp_path, "contains"), (data / "sub", "lies inside")):
        with pytest.raises(SemcorrError, match=relation):
            refuse_overlap(output, [data])
    (tmp_path / "link").symlink_to(data)
    with pytest.raises(SemcorrError, match="is the input"):
        refuse_overlap(tmp_path / "link", [data])
    refuse_overlap(data / "out.json", [data], inside_ok=True)


# ---------------------------------------------------------------------------- atomic writes


def test_staged_directory_keeps_users_names_and_applies_umask(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "annotations.json").write_text("previous")
    user_old = tmp_path / ".out.old"
    user_old.write_text("the user's own file")
    previous = os.umask(0o022)
    try:
        with atomic.staged_directory(target, "dataset") as staging:
            (staging / "new.txt").write_text("new")
            atomic.write_text(staging / "file.json", "{}")
    finally:
        os.umask(previous)
    assert sorted(p.name for p in target.iterdir()) == [".semcorr-output", "file.json", "new.txt"]
    assert user_old.read_text() == "the user's own file"
    assert stat.S_IMODE(target.stat().st_mode) == 0o755
    assert stat.S_IMODE((target / "file.json").stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.old", "out"]


def test_failed_block_leaves_previous_output(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "annotations.json").write_text("previous")
    with pytest.raises(RuntimeError), atomic.staged_directory(target, "dataset") as staging:
        (staging / "half.txt").write_text("half")
        raise RuntimeError("boom")
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and (target / "annotations.json").read_text() == "previous"


@pytest.mark.parametrize(("content", "fragment"), [
    ({"notes.txt": "my thesis"}, "is not a semcorr dataset output"),
    ({"annotations.json": "{}", "annotation/raw/round2_chair.json": "[]"}, "holds annotation work"),
])
def test_folders_that_are_not_our_outputs_or_hold_human_work_are_never_replaced(tmp_path, content, fragment):
    target = tmp_path / "out"
    for name, text in content.items():
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        (target / name).write_text(text)
    with pytest.raises(SemcorrError, match=fragment), atomic.staged_directory(target, "dataset"):
        pass
    assert {str(p.relative_to(target)) for p in target.rglob("*") if p.is_file()} == set(content)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_target_that_is_a_file_is_refused(tmp_path):
    target = tmp_path / "out"
    target.write_text("a user's file")
    with pytest.raises(SemcorrError, match="is not a folder"), atomic.staged_directory(target, "dataset"):
        pass
    assert target.read_text() == "a user's file"


def test_stale_staging_of_dead_runs_is_cleaned_and_a_swapped_out_output_restored(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=False).stdout.strip()
    (tmp_path / f".out.semcorr-{dead}-abc123.partial").mkdir()
    (tmp_path / f".out.semcorr-{dead}-abc123.old").mkdir()
    (tmp_path / f".out.semcorr-{dead}-abc123.old" / "previous.txt").write_text("previous output")
    (tmp_path / f".other.semcorr-{dead}-abc123.partial").mkdir()  # another target's: not ours to touch now
    (tmp_path / ".out.XYZ.partial").mkdir()  # not our pattern: never touched
    atomic.clean_stale_staging(tmp_path / "out")
    assert (tmp_path / "out" / "previous.txt").read_text() == "previous output"
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".other.semcorr-{dead}-abc123.partial",
                                                           ".out.XYZ.partial", "out"]


KILL_MIDWAY = """
import os, signal, sys
import semcorr.{module} as target
original = target.{function}
calls = []
def killed(*args, **kwargs):
    calls.append(1)
    if len(calls) == {after}:
        os.kill(os.getpid(), signal.SIGKILL)
    return original(*args, **kwargs)
target.{function} = killed
from semcorr.cli import main
main(sys.argv[1:])
"""


def run_killed(module: str, function: str, after: int, args: list[str]) -> int:
    code = KILL_MIDWAY.format(module=module, function=function, after=after)
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], check=False, capture_output=True).returncode


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(("module", "function", "after", "command"), [
    ("exports.spair", "_copy_jpeg", 5, ["export", "spair", "{D}", "{OUT}"]),
    ("synth.generate", "render_view", 4, ["synth", "{OUT}", "--category", "chair", "--images-per-category",
                                                "6", "--size", "160x120"]),
])
def test_kill_9_midway_keeps_previous_output_and_next_run_cleans_up(store_copy, tmp_path, module, function, after,
                                                                    command):
    out = tmp_path / "out"
    args = [a.replace("{D}", str(store_copy)).replace("{OUT}", str(out)) for a in command]
    from semcorr.cli import main
    with pytest.raises(SystemExit) as first:
        main(args)
    assert first.value.code == 0
    previous = tree(out)
    assert run_killed(module, function, after, args) == -signal.SIGKILL
    litter = [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.semcorr-")]
    assert litter, "the killed run should have been caught mid-way, with its staging folder"
    assert tree(out) == previous
    with pytest.raises(SystemExit) as again:
        main(args)
    assert again.value.code == 0
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.")]
    assert tree(out) == previous  # same inputs and seed: byte-identical output
