"""What annotators grade from and what vote-keypoints reports: contact sheets (one PNG per
view, one panel per scheme with its candidates numbered), a blank voting sheet, the score
table and the candidate list as CSV."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from semcorr import atomic
from semcorr.keypoint_design.candidates import SCHEMES, Candidates
from semcorr.keypoint_design.scoring import CRITERIA, VOTE_COLUMNS
from semcorr.keypoint_design.views import VIEW_NAMES, ViewRender
from semcorr.keypoint_schema import KeypointSchema

SCHEME_COLORS = {"skeleton": (214, 39, 40), "contour": (31, 119, 180), "appearance": (44, 160, 44)}


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def keypoint_panel(view: ViewRender, schema: KeypointSchema, view_index: int) -> tuple[Image.Image, str]:
    """The schema's keypoints seen in this view, numbered by id (0-based, as exported): left
    partners orange, right partners purple, the rest black; flip pairs joined by a thin line."""
    size = view.color.shape[0]
    image = Image.fromarray(view.color.copy())
    draw = ImageDraw.Draw(image)
    xyz = np.array([extra["xyz_canonical"] for extra in schema.keypoint_extra], dtype=np.float64).reshape(-1, 3)
    seen = np.array([VIEW_NAMES[view_index] in extra.get("visible_in", ()) for extra in schema.keypoint_extra])
    xy, _ = view.camera.project(xyz)
    colors = {i: (255, 127, 14) for i, _ in schema.flip_pairs} | {j: (148, 103, 189) for _, j in schema.flip_pairs}
    for left, right in schema.flip_pairs:
        if seen[left] and seen[right]:
            draw.line([tuple(xy[left]), tuple(xy[right])], fill=(150, 150, 150), width=1)
    radius, small = max(4, size // 90), _font(max(10, size // 40))
    for number, ((x, y), visible) in enumerate(zip(xy, seen)):
        if visible:
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=colors.get(number, (0, 0, 0)),
                         outline="white")
            draw.text((x + radius + 1, y - radius - 2), str(number), fill="black", font=small,
                      stroke_width=2, stroke_fill="white")
    return image, f"{view.name}: {int(seen.sum())} of {len(xyz)} keypoints seen"


def contact_sheet(view: ViewRender, candidate_sets: list[Candidates], visibility: dict[str, np.ndarray],
                  view_index: int, scores: pd.DataFrame, schema: KeypointSchema | None = None) -> Image.Image:
    """One view: a panel per scheme with its visible candidates drawn and numbered (1-based), and
    a last panel with the schema's keypoints when `schema` is given."""
    size = view.color.shape[0]
    header = max(28, size // 14)
    panels = len(candidate_sets) + (schema is not None)
    sheet = Image.new("RGB", (size * panels, size + header), "white")
    font, small = _font(max(12, size // 28)), _font(max(10, size // 40))
    for panel, cands in enumerate(candidate_sets):
        image = Image.fromarray(view.color.copy())
        draw = ImageDraw.Draw(image)
        seen = visibility[cands.scheme][view_index]
        xy, _ = view.camera.project(cands.xyz)
        radius = max(4, size // 90)
        for number, ((x, y), visible) in enumerate(zip(xy, seen), start=1):
            if not visible:
                continue
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=SCHEME_COLORS[cands.scheme],
                         outline="black")
            draw.text((x + radius + 1, y - radius - 2), str(number), fill="black", font=small,
                      stroke_width=2, stroke_fill="white")
        sheet.paste(image, (panel * size, header))
        row = scores.loc[(view.name, cands.scheme)]
        verdict = "chosen" if row["chosen"] else "not chosen"
        label = f"{view.name} / {cands.scheme}: {int(seen.sum())} visible, total {row['total']:.2f} ({verdict})"
        ImageDraw.Draw(sheet).text((panel * size + 6, 4), label, fill="black", font=font)
        ImageDraw.Draw(sheet).line([(panel * size, 0), (panel * size, size + header)], fill=(160, 160, 160))
    if schema is not None:
        image, label = keypoint_panel(view, schema, view_index)
        sheet.paste(image, (len(candidate_sets) * size, header))
        ImageDraw.Draw(sheet).text((len(candidate_sets) * size + 6, 4), label, fill="black", font=font)
        ImageDraw.Draw(sheet).line([(len(candidate_sets) * size, 0), (len(candidate_sets) * size, size + header)],
                                   fill=(160, 160, 160))
    return sheet


def score_table_csv(scores: pd.DataFrame) -> str:
    """view, scheme, criterion, automatic, votes, votes_std (long format), then total and chosen rows."""
    rows = []
    for (view, scheme), row in scores.iterrows():
        for name in CRITERIA:
            rows.append({"view": view, "scheme": scheme, "criterion": name, "automatic": round(row[f"auto_{name}"], 4),
                         "votes": round(row[f"vote_{name}"], 4) if pd.notna(row.get(f"vote_{name}")) else "",
                         "votes_std": round(row[f"vote_{name}_std"], 4)
                         if pd.notna(row.get(f"vote_{name}_std")) else ""})
        rows.append({"view": view, "scheme": scheme, "criterion": "total", "automatic": round(row["auto_total"], 4),
                     "votes": round(row["total"], 4) if row["source"] != "automatic" else "", "votes_std": ""})
        rows.append({"view": view, "scheme": scheme, "criterion": "chosen", "automatic": "",
                     "votes": "", "votes_std": "", "used": row["source"], "chosen": bool(row["chosen"])})
    return pd.DataFrame(rows).to_csv(index=False)


def voting_sheet_csv() -> str:
    """A blank sheet: one row per (view, scheme) for an annotator to fill in."""
    lines = [",".join(VOTE_COLUMNS)]
    lines += [f",{view},{scheme},,," for view in VIEW_NAMES for scheme in SCHEMES]
    return "\n".join(lines) + "\n"


def candidates_csv(candidate_sets: list[Candidates], visibility: dict[str, np.ndarray]) -> str:
    """scheme, number (as drawn), canonical x y z, strength, views it is visible in, description."""
    rows = []
    for cands in candidate_sets:
        for index, (point, strength, text) in enumerate(zip(cands.xyz, cands.strength, cands.descriptions)):
            views = [VIEW_NAMES[v] for v in np.flatnonzero(visibility[cands.scheme][:, index])]
            rows.append({"scheme": cands.scheme, "number": index + 1, "x": round(point[0], 5),
                         "y": round(point[1], 5), "z": round(point[2], 5), "strength": round(strength, 4),
                         "visible_in": " ".join(views), "description": text})
    return pd.DataFrame(rows).to_csv(index=False)


VOTING_SHEET = "voting_sheet.csv"
BLANK_VOTING_SHEET = "voting_sheet_blank.csv"


def _is_blank_sheet(path: Path) -> bool:
    """True when `path` holds exactly the blank template (ignoring line endings and trailing space)."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError):
        return False
    def normalise(content: str) -> list[str]:
        return [line.rstrip() for line in content.strip().splitlines()]

    return normalise(text) == normalise(voting_sheet_csv())


def write_voting_sheet(out_dir: Path) -> tuple[Path | None, str | None]:
    """Write the blank voting sheet without ever replacing a sheet someone has filled in.

    `voting_sheet.csv` is written when it is absent or still blank; otherwise the template goes to
    `voting_sheet_blank.csv` and the returned note says so.
    """
    sheet = out_dir / VOTING_SHEET
    if not sheet.exists() or (sheet.is_file() and _is_blank_sheet(sheet)):
        atomic.write_text(sheet, voting_sheet_csv())
        return sheet, None
    blank = out_dir / BLANK_VOTING_SHEET
    if blank.exists() and not (blank.is_file() and _is_blank_sheet(blank)):
        return None, (f"{sheet} and {blank} hold edits: both kept as they are, no blank voting sheet written")
    atomic.write_text(blank, voting_sheet_csv())
    return blank, f"{sheet} holds votes: kept as it is; the blank template went to {blank.name}"


def write_outputs(out_dir: Path, schema: KeypointSchema, scores: pd.DataFrame, candidate_sets: list[Candidates],
                  visibility: dict[str, np.ndarray], views: list[ViewRender], version: int
                  ) -> tuple[list[Path], list[str]]:
    """Write contact sheets, voting sheet, score table and candidates (atomically, file by file).

    Returns the files written and notes for the user (a filled voting sheet left untouched)."""
    files, notes = [], []
    for index, view in enumerate(views):
        buffer = io.BytesIO()
        contact_sheet(view, candidate_sets, visibility, index, scores, schema).save(buffer, format="PNG")
        path = out_dir / f"contact_{view.name}.png"
        atomic.write_bytes(path, buffer.getvalue())
        files.append(path)
    sheet, note = write_voting_sheet(out_dir)
    if sheet is not None:
        files.append(sheet)
    if note:
        notes.append(note)
    for name, text in (("scores.csv", score_table_csv(scores)),
                       ("candidates.csv", candidates_csv(candidate_sets, visibility))):
        atomic.write_text(out_dir / name, text)
        files.append(out_dir / name)
    return files, notes
