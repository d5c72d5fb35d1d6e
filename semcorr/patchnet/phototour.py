"""The Brown et al. "Photo Tour" patch benchmark layout (Liberty, Notre Dame, Yosemite).

A folder holds `patchesNNNN.bmp` sheets of 1024 x 1024 grayscale pixels, each 16 x 16 patches
of 64 x 64 in row-major order (the last sheet may be partly empty); `info.txt` gives one line
per patch, `<3D point id> <image id>`; `m50_<n>_<n>_0.txt` lists pairs as lines
`<patch a> <point a> <unused> <patch b> <point b> <unused> <unused>`: a match when the point
ids are equal.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from semcorr.errors import SemcorrError

SHEET, PATCH = 1024, 64
PER_ROW = SHEET // PATCH
PER_SHEET = PER_ROW * PER_ROW


@dataclass
class PhotoTour:
    """Patches (N, 64, 64) uint8, their 3D point ids (N,), and pairs (M, 2) with labels (M,)."""

    patches: np.ndarray
    point_ids: np.ndarray
    pairs: np.ndarray
    labels: np.ndarray

    def __post_init__(self):
        if self.patches.ndim != 3 or self.patches.shape[1:] != (PATCH, PATCH):
            raise ValueError(f"patches must be (N, {PATCH}, {PATCH}), got {self.patches.shape}")
        if len(self.point_ids) != len(self.patches):
            raise ValueError("one point id per patch")
        if self.pairs.ndim != 2 or self.pairs.shape[1] != 2 or len(self.labels) != len(self.pairs):
            raise ValueError("pairs must be (M, 2) with one label each")


def _read_text(path: Path) -> str:
    """A text file as str; one-line SemcorrError when it is not UTF-8 / ASCII text."""
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SemcorrError(f"{path}: not text (byte {exc.start} is not UTF-8); give the Photo Tour text file") from None


def load_phototour(folder: Path, matches: str | None = None) -> PhotoTour:
    """Read a Photo Tour folder; `matches` names the match file (default: the only m50_*.txt)."""
    folder = Path(folder)
    info = folder / "info.txt"
    if not info.is_file():
        raise SemcorrError(f"{info}: missing; a Photo Tour folder has info.txt, patches*.bmp and m50_*.txt")
    point_ids = []
    for number, line in enumerate(_read_text(info).splitlines(), 1):
        fields = line.split()
        if not fields or not fields[0].lstrip("-").isdigit():
            raise SemcorrError(f"{info}: line {number}: expected '<point id> <image id>', got {line!r}")
        point_ids.append(int(fields[0]))
    sheets = sorted(folder.glob("patches*.bmp"))
    needed = -(-len(point_ids) // PER_SHEET)
    if len(sheets) < needed:
        raise SemcorrError(f"{folder}: {len(point_ids)} patches in info.txt need {needed} sheets, found {len(sheets)}")
    patches = np.empty((len(point_ids), PATCH, PATCH), dtype=np.uint8)
    for sheet_index, path in enumerate(sheets[:needed]):
        try:
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("L"))
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise SemcorrError(f"{path}: not a readable patch sheet ({type(exc).__name__}: "
                               f"{' '.join(str(exc).split())[:80]})") from None
        if pixels.shape != (SHEET, SHEET):
            raise SemcorrError(f"{path}: a sheet is {SHEET} x {SHEET} pixels, this one is {pixels.shape}")
        tiles = pixels.reshape(PER_ROW, PATCH, PER_ROW, PATCH).swapaxes(1, 2).reshape(PER_SHEET, PATCH, PATCH)
        start = sheet_index * PER_SHEET
        take = min(PER_SHEET, len(point_ids) - start)
        patches[start: start + take] = tiles[:take]
    match_files = [folder / matches] if matches else sorted(folder.glob("m50_*.txt"))
    if len(match_files) != 1 or not match_files[0].is_file():
        raise SemcorrError(f"{folder}: name the match file (found {[p.name for p in match_files]})")
    pairs, labels = [], []
    for number, line in enumerate(_read_text(match_files[0]).splitlines(), 1):
        fields = line.split()
        if len(fields) < 5 or not all(f.lstrip("-").isdigit() for f in fields[:5]):
            raise SemcorrError(f"{match_files[0]}: line {number}: expected 7 integers, got {line!r}")
        a, b = int(fields[0]), int(fields[3])
        if not (0 <= a < len(point_ids) and 0 <= b < len(point_ids)):
            raise SemcorrError(f"{match_files[0]}: line {number}: patch index out of range 0..{len(point_ids) - 1}")
        pairs.append((a, b))
        labels.append(int(fields[1] == fields[4]))
    return PhotoTour(patches, np.array(point_ids, dtype=np.int64), np.array(pairs, dtype=np.int64).reshape(-1, 2),
                     np.array(labels, dtype=np.int8))


def save_phototour(folder: Path, data: PhotoTour, name: str | None = None) -> list[Path]:
    """Write sheets, info.txt and a match file in the same layout (for tests and small exports)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for sheet_index, start in enumerate(range(0, len(data.patches), PER_SHEET)):
        tiles = np.zeros((PER_SHEET, PATCH, PATCH), dtype=np.uint8)
        chunk = data.patches[start: start + PER_SHEET]
        tiles[: len(chunk)] = chunk
        sheet = tiles.reshape(PER_ROW, PER_ROW, PATCH, PATCH).swapaxes(1, 2).reshape(SHEET, SHEET)
        path = folder / f"patches{sheet_index:04d}.bmp"
        Image.fromarray(sheet, mode="L").save(path)
        written.append(path)
    info = folder / "info.txt"
    info.write_text("".join(f"{point} 0\n" for point in data.point_ids))
    count = len(data.pairs)
    matches = folder / (name or f"m50_{count}_{count}_0.txt")
    matches.write_text("".join(f"{a} {data.point_ids[a]} 0 {b} {data.point_ids[b]} 0 0\n" for a, b in data.pairs))
    return [*written, info, matches]
