"""The dataset report: one static HTML page (Jinja2 template) with its PNGs beside it, readable offline.

Layout of the report folder::

    index.html           the page (no script, no server, no network: images are relative files)
    img/pair_<id>.png    sample pairs, drawn with the pair viewer
    img/image_<id>.png   one labelled image per category, drawn with the image viewer
    img/...              contact sheets, the annotation-round chart, the QC sheet (copied when present)
    stats/               what `semcorr stats` writes: Tables 1 and 2 (and MISC tables) as CSV, Figures 1 and 2

Every choice is seeded and every listing sorted, and nothing records a time, so the same
dataset and options give byte-identical files.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from semcorr import store
from semcorr.builders.statistics import FACTORS
from semcorr.errors import SemcorrError
from semcorr.viewers import drawing
from semcorr.viewers.image_view import render_image
from semcorr.viewers.pair_view import instances_by_image, pair_from_row, render_pair

TEMPLATES = Path(__file__).parent / "templates"
TEMPLATE = "report.html.j2"
ROUND_ACTIONS = ("accepted", "dragged", "discarded", "added", "manual", "auto-accepted", "imported")


@dataclass(frozen=True)
class ReportOptions:
    """What the report shows.

    Attributes:
        max_pairs_per_cell: sample pairs drawn per (category, difficulty level); 0 draws none.
        seed: the seed of the sample choice.
        thumbnail_height: height of each image in a sample pair drawing, in pixels.
        qc: a `qc` output (suspects CSV, or the folder holding suspects.csv), or None.
        qc_rows: how many of its top rows to show.
        schema_dirs: `vote-keypoints` output folders whose contact sheets to show.
    """

    max_pairs_per_cell: int = 2
    seed: int = 0
    thumbnail_height: int = 150
    qc: Path | None = None
    qc_rows: int = 20
    schema_dirs: tuple[Path, ...] = ()


@dataclass
class ReportSummary:
    """What a report holds, for the command's summary line."""

    path: Path
    pairs_drawn: int = 0
    images_drawn: int = 0
    sections: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------- tables for the template


def _cell(value: Any) -> str:
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, int | np.integer):
        return f"{int(value):,}"
    if isinstance(value, float | np.floating):
        return "" if np.isnan(value) else (f"{value:,.0f}" if float(value).is_integer() and abs(value) >= 1000
                                           else f"{value:.4g}")
    return "" if value is None else str(value)


def table_view(frame: pd.DataFrame, index_name: str | None = None, index: bool = True) -> dict:
    """A DataFrame as {"columns": [...], "rows": [[...], ...]} of display strings (numbers with thousands commas)."""
    columns = [" ".join(map(str, c)) if isinstance(c, tuple) else str(c) for c in frame.columns]
    head = [index_name if index_name is not None else str(frame.index.name or "")] if index else []
    rows = [[*([_cell(label)] if index else []), *map(_cell, values)]
            for label, *values in frame.itertuples(name=None)]
    return {"columns": head + columns, "rows": rows}


def summary_counts(dataset: store.Dataset, splits: dict[int, str] | None, pairs: pd.DataFrame | None) -> dict:
    """The headline counts: categories, images, instances, keypoints, images and pairs per split."""
    labelled = sum(int(inst.labelled.sum()) for inst in dataset.instances)
    visible = sum(int(inst.visible.sum()) for inst in dataset.instances)
    counts = {"categories": len(dataset.categories), "images": len(dataset.images),
              "instances": len(dataset.instances), "labelled keypoints": labelled, "visible keypoints": visible}
    for split in store.SPLIT_NAMES:
        if splits is not None:
            counts[f"images in {split}"] = sum(1 for s in splits.values() if s == split)
    if pairs is not None:
        per_split = pairs["split"].astype(str).value_counts()
        for split in store.SPLIT_NAMES:
            counts[f"pairs in {split}"] = int(per_split.get(split, 0))
        counts["pairs"] = len(pairs)
    return counts


# ---------------------------------------------------------------------------- sample pairs per difficulty cell


def cell_seed(seed: int, category: str, factor: int, level: int) -> list[int]:
    """The seed of one (category, factor, level) cell; independent of the other categories."""
    return [seed, zlib.crc32(category.encode()), factor, level]


def sample_cells(pairs: pd.DataFrame, cap: int, seed: int) -> dict[str, list[dict]]:
    """Per category, one cell per difficulty level of each factor the pairs carry, with up to `cap` pair ids.

    Returns:
        category -> [{"factor", "level", "count", "pair_ids"}], factors in Table 1 order; the
        pair ids are a seeded choice without repeats among the cell's pairs, sorted.
    """
    out: dict[str, list[dict]] = {}
    for category, group in pairs.groupby(pairs["category"].astype(str), sort=True):
        ids = group["pair_id"].to_numpy()
        cells = []
        for factor, (column, title, levels) in enumerate(FACTORS):
            if column not in group.columns:
                continue
            codes = group[column].to_numpy()
            for code, level in enumerate(levels):
                members = np.sort(ids[codes == code])
                rng = np.random.default_rng(cell_seed(seed, str(category), factor, code))
                chosen = rng.choice(members, size=min(cap, len(members)), replace=False) if len(members) else members
                cells.append({"factor": title, "level": level, "count": len(members),
                              "pair_ids": sorted(int(i) for i in chosen)})
        out[str(category)] = cells
    return out


def draw_pairs(dataset: store.Dataset, pairs: pd.DataFrame, pair_ids: list[int], img_dir: Path, height: int,
               progress: Callable[[int], None] | None = None) -> dict[int, str]:
    """Draw each pair once into `img_dir/pair_<id>.png` (colours name the keypoints, as in the schema table);
    returns pair id -> file name relative to the report."""
    chosen = pairs[pairs["pair_id"].isin(pair_ids).to_numpy()].sort_values("pair_id")
    kps_all = pa.array(chosen["kps_ids"]).to_pylist()
    groups = instances_by_image(dataset)
    files = {}
    for row, kps_ids in zip(chosen.itertuples(index=False), kps_all):
        name = f"img/pair_{int(row.pair_id):06d}.png"
        view = pair_from_row(dataset, row, kps_ids, groups)
        (img_dir.parent / name).write_bytes(drawing.png_bytes(render_pair(view, height=height, names=False)))
        files[int(row.pair_id)] = name
        if progress is not None:
            progress(1)
    return files


# ---------------------------------------------------------------------------- keypoint schema


def best_labelled_image(dataset: store.Dataset, category: store.Category) -> int | None:
    """The image of the category's instance with the most labelled keypoints (lowest id on ties)."""
    best = max(((int(inst.labelled.sum()), -inst.id, inst.image_id) for inst in dataset.instances
                if inst.category_id == category.id), default=None)
    return None if best is None or best[0] == 0 else best[2]


def schema_rows(category: store.Category) -> list[dict]:
    """One row per keypoint: id, name, colour, description, flip partner, skeleton neighbours."""
    partner = {a: b for a, b in category.flip_pairs} | {b: a for a, b in category.flip_pairs}
    rows = []
    for k, name in enumerate(category.keypoints):
        neighbours = sorted({b for a, b in category.skeleton if a == k} | {a for a, b in category.skeleton if b == k})
        rows.append({"id": k, "name": name, "color": "#{:02x}{:02x}{:02x}".format(*drawing.keypoint_color(k)),
                     "description": category.descriptions[k] if category.descriptions else "",
                     "flip": category.keypoints[partner[k]] if k in partner else "",
                     "skeleton": ", ".join(category.keypoints[n] for n in neighbours)})
    return rows


def contact_sheets(schema_dirs: tuple[Path, ...]) -> dict[str, list[Path]]:
    """Category -> the contact sheets of its `vote-keypoints` output folder (the newest schema names it)."""
    found: dict[str, list[Path]] = {}
    for folder in schema_dirs:
        folder = Path(folder)
        schemas = sorted(folder.glob("schema_v*.json"), key=lambda p: (len(p.name), p.name))
        if not folder.is_dir() or not schemas:
            raise SemcorrError(f"--schema-dir {folder}: holds no schema_v<N>.json; give a `semcorr vote-keypoints` "
                               "output folder")
        raw = store.read_json(schemas[-1])
        category = raw.get("category") if isinstance(raw, dict) else None
        if not isinstance(category, str):
            raise SemcorrError(f"{schemas[-1]}: names no category; give a `semcorr vote-keypoints` output folder")
        found.setdefault(category, []).extend(sorted(folder.glob("contact_*.png")))
    return found


# ---------------------------------------------------------------------------- annotation rounds


def provenance_actions(dataset: store.Dataset) -> dict[int, list]:
    """Round -> the store's recorded keypoint actions of that round (the latest action on each keypoint)."""
    from semcorr.annotation.review import KeypointAction

    rounds: dict[int, list] = {}
    for inst in dataset.instances:
        recorded = inst.extra_attributes.get("keypoint_provenance")
        for key, entry in sorted((recorded or {}).items()) if isinstance(recorded, dict) else ():
            if not (isinstance(entry, dict) and entry.get("action") in ROUND_ACTIONS and str(key).isdigit()):
                continue
            round_index = entry.get("round") if isinstance(entry.get("round"), int) else 0
            displacement = entry.get("displacement", 0.0)
            rounds.setdefault(round_index, []).append(KeypointAction(
                ann_id=inst.id, index=int(key), action=entry["action"], xy=None,
                displacement=float(displacement) if isinstance(displacement, int | float) else 0.0))
    return rounds


def round_table(dataset: store.Dataset, plan: dict | None) -> pd.DataFrame:
    """Per round: keypoints by action and the ALM's PCK@0.1 before review (`review.round_report`)."""
    from semcorr.annotation.plan import labelled_when_pushed
    from semcorr.annotation.review import TaskReview, round_report

    rows = []
    for round_index, actions in sorted(provenance_actions(dataset).items()):
        seen = labelled_when_pushed(plan, round_index) if plan else None
        report = round_report([TaskReview(image_id=0, annotator="", actions=actions)], dataset, seen=seen)
        row = {"round": round_index, **{name: sum(a.action == name for a in actions) for name in ROUND_ACTIONS}}
        row["ALM PCK@0.1"] = report.get("alm_pck_before_review", float("nan"))
        row["PCK measured on"] = report.get("alm_pck_scope", "") if not np.isnan(row["ALM PCK@0.1"]) else ""
        rows.append(row)
    return pd.DataFrame(rows, columns=["round", *ROUND_ACTIONS, "ALM PCK@0.1", "PCK measured on"]).set_index("round")


def plan_table(plan: dict) -> pd.DataFrame:
    """Images per plan set (rows) and status (columns)."""
    entries = plan.get("images", {}) if isinstance(plan, dict) else {}
    frame = pd.DataFrame([{"set": str(v.get("set")), "status": str(v.get("status"))}
                          for v in entries.values() if isinstance(v, dict)], columns=["set", "status"])
    table = frame.groupby(["set", "status"]).size().unstack(fill_value=0) if len(frame) else frame
    return table.sort_index(axis=0).sort_index(axis=1)


def plot_rounds(table: pd.DataFrame, path: Path) -> Path:
    """Stacked bars of keypoints per action and round, and the ALM's PCK per round."""
    from semcorr.figures import _save, plt

    fig, (bars, line) = plt.subplots(1, 2, figsize=(9, 3.2))
    bottom = np.zeros(len(table))
    labels = [str(i) for i in table.index]
    for name in ROUND_ACTIONS:
        values = table[name].to_numpy(dtype=float)
        if values.any():
            bars.bar(labels, values, bottom=bottom, label=name)
            bottom += values
    bars.set_xlabel("round")
    bars.set_ylabel("keypoints")
    bars.legend(fontsize=7)
    bars.set_title("keypoints by latest action", fontsize=10)
    line.plot(labels, table["ALM PCK@0.1"].to_numpy(dtype=float), marker="o")
    line.set_ylim(0, 100)
    line.set_xlabel("round")
    line.set_title("ALM PCK@0.1 before review", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def annotation_section(root: Path, dataset: store.Dataset, img_dir: Path) -> dict | None:
    """The annotation loop's state (None when the dataset has no annotation/ folder)."""
    from semcorr.annotation.plan import PLAN_FILE

    folder = Path(root) / "annotation"
    if not folder.is_dir():
        return None
    plan = store.read_json(Path(root) / PLAN_FILE) if (Path(root) / PLAN_FILE).is_file() else None
    rounds = round_table(dataset, plan if isinstance(plan, dict) else None)
    chart = None
    if len(rounds):
        plot_rounds(rounds, img_dir / "annotation_rounds.png")
        chart = "img/annotation_rounds.png"
    return {"plan": table_view(plan_table(plan), "set") if isinstance(plan, dict) else None,
            "rounds": table_view(rounds, "round") if len(rounds) else None, "chart": chart,
            "checkpoints": sorted(p.name for p in folder.glob("alm_round*.pt")),
            "raw_exports": sorted(p.name for p in (folder / "raw").glob("*.json")) if (folder / "raw").is_dir()
            else []}


# ---------------------------------------------------------------------------- QC suspects


def qc_section(qc: Path, rows: int, img_dir: Path) -> dict:
    """The top rows of a qc CSV with whatever columns it has, and its suspects sheet when it lies beside it."""
    path = Path(qc)
    if path.is_dir():
        path = path / "suspects.csv"
    if not path.is_file():
        raise SemcorrError(f"--qc {qc}: no such CSV file; give the suspects.csv that `semcorr qc` wrote (or its "
                           "folder)")
    try:
        table = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as exc:
        raise SemcorrError(f"--qc {path}: not a readable CSV ({' '.join(str(exc).split())[:100]}); give the "
                           "suspects.csv that `semcorr qc` wrote") from None
    sheet = None
    if (path.parent / "suspects.png").is_file():
        (img_dir / "qc_suspects.png").write_bytes((path.parent / "suspects.png").read_bytes())
        sheet = "img/qc_suspects.png"
    return {"file": path.name, "total": len(table), "table": table_view(table.head(rows), index=False),
            "sheet": sheet}


# ---------------------------------------------------------------------------- the page


def render_html(context: dict) -> str:
    """The report page from its Jinja2 template (autoescaped)."""
    import jinja2

    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                                     trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
                                     undefined=jinja2.StrictUndefined)
    return environment.get_template(TEMPLATE).render(**context)


def stats_section(stats: Any) -> dict:
    """Tables 1 and 2 (and the MISC tables) for the template, with the figure and CSV files `stats` wrote."""
    table1 = stats.difficulty.T
    table1.index = [f"{factor} {level}" for factor, level in table1.index]
    misc = None
    if stats.misc is not None:
        misc = {"instances": table_view(stats.misc["instances"], "category"),
                "pairs": table_view(stats.misc["pairs"].round(2), "category")}
    return {"table1": table_view(table1, "difficulty"), "table2": table_view(stats.categories, "category"),
            "misc": misc, "figures": [f"stats/{p.name}" for p in stats.files if p.suffix == ".png"],
            "csv": [f"stats/{p.name}" for p in stats.files if p.suffix == ".csv"]}


def category_sections(dataset: store.Dataset, cells: dict[str, list[dict]], pair_files: dict[int, str],
                      img_dir: Path, sheets: dict[str, list[Path]]) -> list[dict]:
    """Per category: its difficulty cells with their drawings, its keypoint schema, a labelled image, contact sheets."""
    from semcorr.paths import safe_component

    sections = []
    for category in sorted(dataset.categories.values(), key=lambda c: c.name):
        image_id = best_labelled_image(dataset, category)
        image_file = None
        if image_id is not None:
            image_file = f"img/image_{image_id:06d}.png"
            if not (img_dir.parent / image_file).exists():
                (img_dir.parent / image_file).write_bytes(drawing.png_bytes(render_image(dataset, image_id)))
        copied = []
        for sheet in sheets.get(category.name, []):
            name = f"img/contact_{safe_component(category.name)}_{safe_component(sheet.stem)}.png"
            (img_dir.parent / name).write_bytes(sheet.read_bytes())
            copied.append(name)
        grid = [{**cell, "files": [(i, pair_files[i]) for i in cell["pair_ids"]]}
                for cell in cells.get(category.name, [])]
        sections.append({"name": category.name, "anchor": f"cat-{safe_component(category.name)}", "cells": grid,
                         "schema": schema_rows(category), "image": image_file, "image_id": image_id,
                         "contact_sheets": copied})
    return sections


def pair_mode(pairs: pd.DataFrame | None) -> str:
    """"SPair", "MISC" or "no pairs"."""
    if pairs is None:
        return "no pairs"
    return "SPair" if "src_ann_id" in pairs.columns else "MISC"


def write_report(folder: Path, root: Path, dataset: store.Dataset, stats: Any, options: ReportOptions,
                 progress: Callable[[int], None] | None = None) -> ReportSummary:
    """Write index.html and its images into `folder`, a staging folder the caller renames into place
    (so files are written plainly: the folder as a whole appears atomically).

    Args:
        folder: where the report goes.
        root: the dataset directory.
        dataset: its loaded store.
        stats: what `commands.run_stats` returned for it (its files inside `folder/stats`), or None without pairs.
        options: what to show.
        progress: called with 1 for each pair drawn.
    """
    root, folder = Path(root), Path(folder)
    img_dir = folder / "img"
    img_dir.mkdir(parents=True, exist_ok=True)
    has_pairs = (root / store.PAIRS_FILE).is_file()
    pairs = store.load_pairs(root) if has_pairs else None
    splits = store.load_splits(root) if (root / store.SPLITS_FILE).is_file() else None
    cells = sample_cells(pairs, options.max_pairs_per_cell, options.seed) if pairs is not None else {}
    chosen = sorted({i for cat in cells.values() for cell in cat for i in cell["pair_ids"]})
    pair_files = draw_pairs(dataset, pairs, chosen, img_dir, options.thumbnail_height, progress) if chosen else {}
    categories = category_sections(dataset, cells, pair_files, img_dir, contact_sheets(options.schema_dirs))
    context = {
        "title": root.resolve().name, "mode": pair_mode(pairs),
        "summary": table_view(pd.DataFrame({"count": summary_counts(dataset, splits, pairs)}), ""),
        "stats": stats_section(stats) if stats is not None else None,
        "categories": categories, "cap": options.max_pairs_per_cell, "seed": options.seed,
        "annotation": annotation_section(root, dataset, img_dir),
        "qc": qc_section(options.qc, options.qc_rows, img_dir) if options.qc is not None else None,
    }
    (folder / "index.html").write_text(render_html(context), encoding="utf-8")
    sections = ["summary"] + (["statistics", "sample pairs"] if stats is not None else []) + ["keypoint schemas"]
    sections += [name for name in ("annotation", "qc") if context[name] is not None]
    return ReportSummary(path=folder / "index.html", pairs_drawn=len(pair_files),
                         images_drawn=sum(c["image"] is not None for c in categories), sections=sections)
