"""One function per CLI command: read the dataset directory, call the builders, write results.

The CLI only parses options, calls one of these and prints the summary they return.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from semcorr import atomic, store
from semcorr.builders.spair_pairs import build_spair_pairs, spair_units
from semcorr.builders.splits import assign_splits, split_units
from semcorr.builders.statistics import azimuth_table, category_table, difficulty_table
from semcorr.errors import SemcorrError
from semcorr.exports.spair import SpairExportReport, export_spair
from semcorr.keypoint_schema import load_schema
from semcorr.synth.generate import SynthOptions, synthesize
from semcorr.synth.prototypes import BUILTIN_CATEGORIES, Prototype, builtin_prototype, load_prototype

Progress = Callable[[int], None] | None


def resolve_prototypes(categories: list[str], schemas: list[Path], meshes: list[Path]) -> list[Prototype]:
    """Built-in categories by name, plus (schema, mesh) prototypes; a schema may name its own mesh."""
    prototypes = [builtin_prototype(name) for name in categories]
    if meshes and len(meshes) != len(schemas):
        raise SemcorrError(f"--mesh given {len(meshes)} times for {len(schemas)} --schema; give one mesh per "
                           "schema, or none when every schema names its mesh")
    for index, schema_path in enumerate(schemas):
        schema = load_schema(schema_path)
        mesh = meshes[index] if meshes else schema.mesh
        if mesh is None:
            raise SemcorrError(f"{schema_path}: names no 'mesh'; pass --mesh for it")
        prototypes.append(load_prototype(mesh, schema))
    names = [p.name for p in prototypes]
    if len(set(names)) != len(names):
        raise SemcorrError(f"category names repeat: {', '.join(names)}")
    if not prototypes:
        raise SemcorrError(f"no categories: pass --category ({', '.join(BUILTIN_CATEGORIES)}) or --schema")
    return prototypes


def run_synth(out_dir: Path, prototypes: list[Prototype], options: SynthOptions, progress: Progress = None
              ) -> store.Dataset:
    """Render a synthetic store into `out_dir` (replaced atomically)."""
    with atomic.staged_directory(Path(out_dir)) as staging:
        dataset = synthesize(prototypes, options, staging, progress=progress)
        store.save_dataset(dataset, staging)
    dataset.image_root = Path(out_dir) / store.IMAGES_DIR
    return dataset


def run_split(root: Path, ratios: tuple[float, float, float], seed: int) -> pd.DataFrame:
    """Write `splits.json`; returns image counts per category and split."""
    dataset = store.load_dataset(root)
    instances = dataset.instance_table()
    if instances.empty:
        raise SemcorrError(f"{Path(root) / store.ANNOTATIONS_FILE}: holds no annotations to split")
    units = split_units(instances)
    splits = assign_splits(units, ratios=ratios, seed=seed)
    store.save_splits(splits, root)
    units["split"] = units["image_id"].map(splits)
    return units.groupby(["category", "split"]).size().unstack(fill_value=0).reindex(
        columns=list(store.SPLIT_NAMES), fill_value=0)


@dataclass
class PairsResult:
    """What build-pairs wrote."""

    pairs: pd.DataFrame
    skipped: pd.DataFrame
    path: Path


def run_build_pairs(root: Path, mode: str = "spair") -> PairsResult:
    """Build the pairs table of a split store and write `pairs.parquet`."""
    if mode != "spair":
        raise SemcorrError(f"--mode {mode!r} is not available yet; use --mode spair")
    dataset = store.load_dataset(root)
    splits = store.load_splits(root)
    units, visible, skipped = spair_units(dataset, splits)
    pairs = build_spair_pairs(units, visible)
    path = store.save_pairs(pairs, root)
    return PairsResult(pairs=pairs, skipped=skipped, path=path)


@dataclass
class StatsResult:
    """The statistics tables and the files they went to."""

    difficulty: pd.DataFrame
    categories: pd.DataFrame
    files: list[Path]


def run_stats(root: Path, out_dir: Path | None = None) -> StatsResult:
    """Tables 1 and 2 (CSV) and Figures 1 and 2 (PNG) of a store with pairs."""
    from semcorr.figures import plot_azimuth_histograms, plot_difficulty_pies

    root = Path(root)
    out_dir = Path(out_dir) if out_dir else root / "stats"
    dataset = store.load_dataset(root, check_files=False)
    splits = store.load_splits(root)
    pairs = store.load_pairs(root)
    units, _, _ = spair_units(dataset, splits)
    difficulty = difficulty_table(pairs)
    categories = category_table(pairs)
    azimuth = azimuth_table(units)
    files = []
    for name, table in (("table1_difficulty.csv", difficulty), ("table2_categories.csv", categories),
                        ("azimuth_by_split.csv", azimuth)):
        flat = table.copy()
        if isinstance(flat.columns, pd.MultiIndex):
            flat.columns = [f"{a} {b}" for a, b in flat.columns]
        atomic.write_text(out_dir / name, flat.to_csv(index=name != "azimuth_by_split.csv"))
        files.append(out_dir / name)
    files.append(plot_difficulty_pies(difficulty, out_dir / "fig1_difficulty_pies.png"))
    files.append(plot_azimuth_histograms(azimuth, out_dir / "fig2_azimuth_histograms.png"))
    return StatsResult(difficulty=difficulty, categories=categories, files=files)


def run_export_spair(root: Path, out_dir: Path, progress: Progress = None) -> SpairExportReport:
    """Export a store's SPair pairs in the SPair-71k layout."""
    dataset = store.load_dataset(root)
    pairs = store.load_pairs(root)
    return export_spair(dataset, pairs, out_dir, progress=progress)
