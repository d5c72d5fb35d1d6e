"""Bad inputs, as a careless user or an attacker would give them: one row each.

Every row runs the real command line (`semcorr.cli.main`) on a copy of the synthetic store
after one mutation and asserts: the expected exit status, exactly one line on stderr that
holds the expected fragment and no traceback, the inputs byte-for-byte unchanged and no
output written.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from semcorr.cli import main


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """Run `semcorr ARGS` in this process; (exit status, stdout, stderr)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


def snapshot(root: Path) -> dict[str, str]:
    """Relative path -> sha1 of every file under `root` (folders as 'dir')."""
    return {str(p.relative_to(root)): ("dir" if p.is_dir() else hashlib.sha1(p.read_bytes()).hexdigest())
            for p in sorted(root.rglob("*"))}


def edit_coco(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        path = root / "annotations.json"
        coco = json.loads(path.read_text())
        change(coco)
        path.write_text(json.dumps(coco))
    return mutate


def set_in(section: str, key: str, value, index: int = 0) -> Callable[[Path], None]:
    def change(coco: dict) -> None:
        coco[section][index][key] = value
    return edit_coco(change)


def drop_in(section: str, key: str) -> Callable[[Path], None]:
    return edit_coco(lambda coco: coco[section][0].pop(key))


def write_raw(name: str, data: bytes) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        (root / name).write_bytes(data)
    return mutate


def gzip_annotations(root: Path) -> None:
    path = root / "annotations.json"
    path.write_bytes(gzip.compress(path.read_bytes()))


def edit_pairs(change: Callable[[pd.DataFrame], pd.DataFrame]) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        table = pq.read_table(root / "pairs.parquet")
        pairs = change(table.to_pandas(types_mapper=lambda t: pd.ArrowDtype(t) if pa.types.is_list(t) else None))
        pq.write_table(pa.Table.from_pandas(pairs, preserve_index=False), root / "pairs.parquet")
    return mutate


def truncate_file(name: str, keep: int) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        path = root / name
        path.write_bytes(path.read_bytes()[:keep])
    return mutate


def first_image(root: Path) -> Path:
    coco = json.loads((root / "annotations.json").read_text())
    pairs = pd.read_parquet(root / "pairs.parquet", columns=["src_image_id"])
    used = int(pairs["src_image_id"].iloc[0])
    name = next(im["file_name"] for im in coco["images"] if im["id"] == used)
    return root / "images" / name


def damage_image(kind: str) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        path = first_image(root)
        data = path.read_bytes()
        path.write_bytes({"empty": b"", "text": b"hello, not an image\n", "truncated": data[: len(data) // 3]}[kind])
    return mutate


def kps_out_of_range(pairs: pd.DataFrame) -> pd.DataFrame:
    values = pa.array(pairs["kps_ids"]).to_pylist()
    values[0] = [*values[0], 99]
    pairs["kps_ids"] = pd.Series(pd.arrays.ArrowExtensionArray(pa.array(values, pa.list_(pa.int16()))))
    return pairs


def unknown_image(pairs: pd.DataFrame) -> pd.DataFrame:
    pairs.loc[0, "trg_image_id"] = 987654
    return pairs


VALIDATE = ["validate", "{D}"]
BUILD = ["build-pairs", "{D}"]
EXPORT = ["export", "spair", "{D}", "{OUT}"]

# (id, mutation, command, expected exit status, fragment of the error line)
ROWS = [
    # annotations.json: encoding and wrong JSON types anywhere
    ("non-utf8", write_raw("annotations.json", b'{"images": ["\xff\xfe"]}'), VALIDATE, 1, "not UTF-8"),
    ("gzipped", gzip_annotations, VALIDATE, 1, "gzip-compressed"),
    ("truncated-json", truncate_file("annotations.json", 100), VALIDATE, 1, "malformed JSON"),
    ("top-level-list", write_raw("annotations.json", b"[]"), VALIDATE, 1, "expected a JSON object"),
    ("image-id-string", set_in("annotations", "image_id", "abc"), VALIDATE, 1, "field 'image_id'"),
    ("image-id-float", set_in("annotations", "image_id", 1.5), BUILD, 1, "field 'image_id'"),
    ("width-string", set_in("images", "width", "wide"), VALIDATE, 1, "field 'width'"),
    ("no-height", drop_in("images", "height"), VALIDATE, 1, "field 'height'"),
    ("bbox-string", set_in("annotations", "bbox", "10 10 5 5"), VALIDATE, 1, "field 'bbox'"),
    ("bbox-null", set_in("annotations", "bbox", [10, None, 5, 5]), BUILD, 1, "field 'bbox"),
    ("keypoints-strings", set_in("annotations", "keypoints", ["1", "2", "2"]), VALIDATE, 1, "field 'keypoints"),
    ("info-list", edit_coco(lambda c: c.update(info=[1, 2])), VALIDATE, 1, "'info' must be an object"),
    ("attributes-list", set_in("annotations", "attributes", [1]), VALIDATE, 1, "field 'attributes'"),
    ("id-huge", set_in("annotations", "id", 10**20), VALIDATE, 1, "annotation id=100000000000000000000"),
    ("iscrowd-string", set_in("annotations", "iscrowd", "0"), VALIDATE, 1, "field 'iscrowd'"),
    ("rle-corrupt", edit_coco(lambda c: c["annotations"][0]["segmentation"].update(counts="\x01\x02~~")),
     VALIDATE, 1, "RLE"),
    ("polygon-strings", set_in("annotations", "segmentation", [["1", "2", "3", "4", "5", "6"]]), VALIDATE, 1,
     "field 'segmentation"),
    ("truncated-flag-string", edit_coco(lambda c: c["annotations"][0]["attributes"].update(truncated="yes")),
     VALIDATE, 1, "field 'truncated'"),
    ("duplicate-category-name", edit_coco(lambda c: c["categories"][1].update(name=c["categories"][0]["name"])),
     BUILD, 1, "duplicate category name"),
    ("file-name-dotdot", set_in("images", "file_name", "../../../../etc/passwd"), VALIDATE, 1, "unsafe path"),
    ("file-name-absolute", set_in("images", "file_name", "/etc/passwd"), VALIDATE, 1, "absolute path"),
    ("file-name-nul", set_in("images", "file_name", "a\x00b.jpg"), VALIDATE, 1, "NUL"),
    ("file-name-victim-misc", set_in("images", "file_name", "../../victim.jpg"), ["export", "misc", "{D}", "{OUT}"],
     1, "unsafe path"),
    # splits.json and pairs.parquet
    ("splits-unknown-id", write_raw("splits.json", b'{"987654": "trn"}'), VALIDATE, 1, "not an image"),
    ("splits-bad-name", write_raw("splits.json", b'{"1": "train"}'), BUILD, 1, "is not one of"),
    ("pairs-truncated", truncate_file("pairs.parquet", 200), VALIDATE, 1, "not a readable pairs table"),
    ("pairs-missing-column", edit_pairs(lambda p: p.drop(columns=["trg_image_id"])), VALIDATE, 1,
     "missing column(s) trg_image_id"),
    ("pairs-unknown-image", edit_pairs(unknown_image), VALIDATE, 1, "unknown trg image id 987654"),
    ("pairs-kps-out-of-range", edit_pairs(kps_out_of_range), EXPORT, 1, "kps_ids"),
    # pixels
    ("image-empty", damage_image("empty"), EXPORT, 1, "empty file"),
    ("image-not-an-image", damage_image("text"), EXPORT, 1, "cannot be read as an image"),
    ("image-truncated-jpeg", damage_image("truncated"), EXPORT, 1, "cannot be read as an image"),
    # outputs that would destroy inputs or are not folders
    ("export-into-itself", None, ["export", "spair", "{D}", "{D}"], 1, "is the input"),
    ("export-over-parent", None, ["export", "misc", "{D}", "{TMP}"], 1, "contains the input"),
    ("export-inside-dataset", None, ["export", "spair", "{D}", "{D}/spair"], 1, "lies inside the input"),
    ("export-coco-over-annotations", None, ["export", "coco", "{D}", "{D}/annotations.json"], 1, "is the input"),
    ("export-target-is-file", write_raw("notes.txt", b"mine"), ["export", "spair", "{D}", "{D}/../notes"], 1,
     "not a folder"),
    ("output-under-a-file", None, ["export", "coco", "{D}", "{D}/annotations.json/x.json"], 1, "annotations.json: File exists"),
    # options
    ("seed-negative", None, ["build-pairs", "{D}", "--seed", "-1"], 2, "--seed"),
    ("size-zero", None, ["synth", "{OUT}", "--size", "0x0"], 1, "--size '0x0'"),
    ("threshold-nan", None, ["build-pairs", "{D}", "--mode", "misc", "--threshold", "nan"], 2, "--threshold"),
    ("max-pairs-negative", None, ["build-pairs", "{D}", "--mode", "misc", "--max-pairs", "-5"], 2, "--max-pairs"),
    ("rate-above-one", None, ["synth", "{OUT}", "--truncation-rate", "1.5"], 2, "--truncation-rate"),
    ("markup-in-path", None, ["validate", "{TMP}/run[/x]"], 1, "run[/x]: dataset folder not found"),
    ("mode-unknown", None, ["build-pairs", "{D}", "--mode", "both"], 1, "--mode 'both'"),
]


@pytest.mark.parametrize(("mutation", "command", "status", "fragment"), [row[1:] for row in ROWS],
                         ids=[row[0] for row in ROWS])
def test_bad_input_is_one_clean_line(store_copy, tmp_path, capsys, mutation, command, status, fragment):
    if mutation is not None:
        mutation(store_copy)
    if "{D}/../notes" in command:
        (tmp_path / "notes").write_text("a file, not a folder")
    before = snapshot(tmp_path)
    args = [a.replace("{D}", str(store_copy)).replace("{OUT}", str(tmp_path / "out")).replace("{TMP}", str(tmp_path))
            for a in command]
    code, _, err = run_cli(args, capsys)
    assert code == status, err
    assert "Traceback" not in err and "internal error" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert fragment in lines[0], lines[0]
    assert snapshot(tmp_path) == before, "inputs changed or an output was written"


def test_disk_full_is_one_line_and_leaves_nothing(store_copy, tmp_path):
    """A write that fails half-way (file size limit: EFBIG, as on a full quota) leaves no partial output."""
    import resource
    import subprocess
    import sys

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    out = tmp_path / "exports"
    out.mkdir()
    before = snapshot(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "semcorr.cli", "export", "coco", str(store_copy), str(out / "c.json")],
                          capture_output=True, text=True, preexec_fn=limit_file_size, check=False)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "File too large" in lines[0] and "Traceback" not in proc.stderr
    assert snapshot(tmp_path) == before
