"""The SPair-71k paper's Table 1 (difficulty by split) and Table 2 (pairs per category)."""

from __future__ import annotations

import pandas as pd

from semcorr.builders.labels import FLAG_LEVELS, SCALE_LEVELS, VIEWPOINT_LEVELS
from semcorr.store import SPLIT_NAMES

SPLIT_TITLES = {"trn": "Train", "val": "Val", "test": "Test"}
FACTORS = (
    ("viewpoint_variation", "Viewpoint", VIEWPOINT_LEVELS),
    ("scale_variation", "Scale", SCALE_LEVELS),
    ("truncation", "Truncation", FLAG_LEVELS),
    ("occlusion", "Occlusion", FLAG_LEVELS),
)


def difficulty_table(pairs: pd.DataFrame) -> pd.DataFrame:
    """Table 1: pair counts per split (rows Train, Val, Test, All) and factor level (columns)."""
    columns = {}
    for column, title, levels in FACTORS:
        for code, level in enumerate(levels):
            hits = pairs[pairs[column] == code]
            counts = hits.groupby("split", observed=True).size()
            values = [int(counts.get(split, 0)) for split in SPLIT_NAMES]
            columns[(title, level)] = values + [sum(values)]
    table = pd.DataFrame(columns, index=[SPLIT_TITLES[s] for s in SPLIT_NAMES] + ["All"])
    table.columns = pd.MultiIndex.from_tuples(table.columns, names=["factor", "level"])
    return table


def category_table(pairs: pd.DataFrame) -> pd.DataFrame:
    """Table 2: pair counts per category (rows, plus `total`) and split (columns, plus `All`)."""
    counts = pairs.groupby(["category", "split"], observed=True).size().unstack(fill_value=0)
    counts = counts.reindex(columns=list(SPLIT_NAMES), fill_value=0).astype(int)
    counts.columns = [SPLIT_TITLES[s] for s in SPLIT_NAMES]
    counts["All"] = counts.sum(axis=1)
    counts.loc["total"] = counts.sum(axis=0)
    counts.index.name = "category"
    return counts


def azimuth_table(units: pd.DataFrame) -> pd.DataFrame:
    """Image counts per (category, split, azimuth_bin), for the circular histograms."""
    known = units[units["azimuth_bin"] >= 0]
    table = known.groupby(["category", "split", "azimuth_bin"]).size().rename("images").reset_index()
    return table
