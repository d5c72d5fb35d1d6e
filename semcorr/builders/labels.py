"""SPair-71k pair difficulty labels, each rule in one place.

All functions take numpy arrays (or scalars) and are vectorised.
"""

from __future__ import annotations

import numpy as np

VIEWPOINT_LEVELS = ("easy", "medium", "hard")
SCALE_LEVELS = ("easy", "medium", "hard")
FLAG_LEVELS = ("none", "src", "tgt", "both")


def azimuth_bin_of(azimuth_deg: np.ndarray | float, num_bins: int = 8) -> np.ndarray:
    """Quantise azimuth angles (degrees) to bins centred on 0, 45, ..., 315."""
    width = 360.0 / num_bins
    return (np.floor(((np.asarray(azimuth_deg, dtype=np.float64) + width / 2) % 360.0) / width)).astype(np.int64)


def azimuth_bin_distance(src_bin: np.ndarray, trg_bin: np.ndarray, num_bins: int = 8) -> np.ndarray:
    """Circular difference of bin indexes, 0..num_bins/2 (7 and 0 are 1 apart)."""
    diff = np.abs(np.asarray(src_bin, dtype=np.int64) - np.asarray(trg_bin, dtype=np.int64)) % num_bins
    return np.minimum(diff, num_bins - diff)


def viewpoint_variation(src_bin: np.ndarray, trg_bin: np.ndarray) -> np.ndarray:
    """0 easy (difference 0 or 1), 1 medium (2 or 3), 2 hard (4)."""
    distance = azimuth_bin_distance(src_bin, trg_bin)
    return np.select([distance <= 1, distance <= 3], [0, 1], default=2).astype(np.int8)


def scale_variation(src_area: np.ndarray, trg_area: np.ndarray) -> np.ndarray:
    """From larger / smaller bbox area: [1, 2) easy 0, [2, 4) medium 1, [4, inf) hard 2.

    Compared by multiplication, so a ratio of exactly 2 or 4 lands in the harder level
    without rounding error.
    """
    src = np.asarray(src_area, dtype=np.float64)
    trg = np.asarray(trg_area, dtype=np.float64)
    larger, smaller = np.maximum(src, trg), np.minimum(src, trg)
    return np.select([larger >= 4 * smaller, larger >= 2 * smaller], [2, 1], default=0).astype(np.int8)


def flag_variation(src_flag: np.ndarray, trg_flag: np.ndarray) -> np.ndarray:
    """Truncation or occlusion of a pair: 0 none, 1 source only, 2 target only, 3 both."""
    return (np.asarray(src_flag, dtype=np.int8) + 2 * np.asarray(trg_flag, dtype=np.int8)).astype(np.int8)
