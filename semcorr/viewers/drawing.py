"""Drawing primitives shared by the pair and image viewers: colours, markers, overlays, captions, PNG bytes.

Coordinates are continuous pixels as in the store (x right, y down, pixel (r, c) covering
[c, c + 1) x [r, r + 1)), so a marker centred at (x, y) covers pixel (floor(y), floor(x)).
"""

from __future__ import annotations

import colorsys
import io

import numpy as np
from PIL import Image, ImageDraw, ImageFont

GOLDEN_RATIO = 0.6180339887498949
# instance colours (MISC pairs, images with several instances): Tableau 10, distinct from each other
INSTANCE_COLORS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
                   (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))
MASK_ALPHA = 0.35
CAPTION_BACKGROUND = (245, 245, 245)
# provenance of a keypoint -> marker shape (see `draw_marker`); keypoints without provenance are circles
PROVENANCE_MARKERS = {"imported": "circle", "manual": "square", "accepted": "diamond", "auto-accepted": "hexagon",
                      "dragged": "triangle", "added": "triangle_down"}
_POLYGONS = {"square": (4, 0), "diamond": (4, 45), "hexagon": (6, 0), "triangle": (3, 0), "triangle_down": (3, 180)}


def keypoint_color(keypoint_id: int) -> tuple[int, int, int]:
    """The colour of keypoint id `keypoint_id`: hues spread by the golden ratio, so neighbours differ."""
    hue = (int(keypoint_id) * GOLDEN_RATIO) % 1.0
    red, green, blue = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return round(red * 255), round(green * 255), round(blue * 255)


def instance_color(index: int) -> tuple[int, int, int]:
    """The colour of the `index`-th instance of an image (0-based)."""
    return INSTANCE_COLORS[int(index) % len(INSTANCE_COLORS)]


def label_font(size: int) -> ImageFont.ImageFont:
    """Pillow's bundled font at `size` pixels (the same bytes on every machine, so drawings repeat)."""
    return ImageFont.load_default(size=size)


def scaled(image: Image.Image, height: int) -> tuple[Image.Image, float]:
    """`image` resized to `height` pixels high (aspect kept) and the scale factor applied."""
    if image.height == height:
        return image.copy(), 1.0
    factor = height / image.height
    return image.resize((max(1, round(image.width * factor)), height), Image.Resampling.BILINEAR), factor


def overlay_mask(image: Image.Image, mask: np.ndarray, color: tuple[int, int, int],
                 alpha: float = MASK_ALPHA) -> Image.Image:
    """`image` with `color` blended at `alpha` over the True pixels of `mask` (same size as the image)."""
    pixels = np.asarray(image, dtype=np.float32).copy()
    if mask.shape != pixels.shape[:2]:
        mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(image.size, Image.Resampling.NEAREST)) > 0
    pixels[mask] = pixels[mask] * (1.0 - alpha) + np.asarray(color, dtype=np.float32) * alpha
    return Image.fromarray(np.round(pixels).astype(np.uint8))


def draw_marker(draw: ImageDraw.ImageDraw, xy: tuple[float, float], radius: float, color: tuple[int, int, int],
                shape: str = "circle", filled: bool = True) -> None:
    """A marker centred at `xy`: filled with a black rim, or (not `filled`) a hollow ring in `color`."""
    x, y = xy
    fill, outline, width = (color, (0, 0, 0), 1) if filled else (None, color, max(2, round(radius / 2.5)))
    if shape == "circle":
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=fill, outline=outline, width=width)
        return
    sides, rotation = _POLYGONS[shape]
    draw.regular_polygon((x, y, radius * 1.25), sides, rotation=rotation, fill=fill, outline=outline, width=width)


def draw_label(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, font: ImageFont.ImageFont,
               color: tuple[int, int, int] = (0, 0, 0),
               taken: list[tuple[float, float, float, float]] | None = None) -> None:
    """`text` beside a point at `xy`, with a white halo so it reads on any background.

    It goes to the right of the point, or to its left where the right would run past the picture's
    edge; with `taken` (boxes of labels already drawn, extended here), it also moves a line down or up
    to keep clear of them, and stays where it is only when every place is taken.
    """
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font, stroke_width=2)
    width, height = right - left, bottom - top
    limit = draw.im.size[0]
    x_right, x_left = xy[0] + 5, max(0.0, xy[0] - 5 - width)
    sides = [x_right, x_left] if x_right + width <= limit else [x_left]
    places = [(x, xy[1] - 12 + shift) for shift in (0, height + 1, -(height + 1), 2 * (height + 1))
              for x in sides]
    x, y = places[0]
    if taken is not None:
        def clear(box):
            return all(box[2] <= t[0] or t[2] <= box[0] or box[3] <= t[1] or t[3] <= box[1] for t in taken)
        x, y = next((place for place in places
                     if clear((place[0], place[1] + top, place[0] + width, place[1] + bottom))), places[0])
        taken.append((x, y + top, x + width, y + bottom))
    draw.text((x, y), text, fill=color, font=font, stroke_width=2, stroke_fill=(255, 255, 255))


def wrapped(text: str, font: ImageFont.ImageFont, width: float) -> list[str]:
    """`text` broken at spaces into lines no wider than `width` pixels (a longer word stands alone)."""
    lines: list[str] = []
    for word in text.split(" "):
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines or [""]


def caption(width: int, lines: list[str], font_size: int = 13) -> Image.Image:
    """A light band `width` pixels wide holding `lines` of text, one under the other, wrapped to fit."""
    font = label_font(font_size)
    line_height = font_size + 5
    lines = [part for line in lines for part in wrapped(line, font, width - 12)]
    band = Image.new("RGB", (width, 8 + line_height * len(lines)), CAPTION_BACKGROUND)
    draw = ImageDraw.Draw(band)
    for row, line in enumerate(lines):
        draw.text((6, 4 + row * line_height), line, fill=(0, 0, 0), font=font)
    return band


def stacked(top: Image.Image, bottom: Image.Image) -> Image.Image:
    """`bottom` pasted under `top` on a white canvas as wide as the wider one."""
    canvas = Image.new("RGB", (max(top.width, bottom.width), top.height + bottom.height), (255, 255, 255))
    canvas.paste(top, (0, 0))
    canvas.paste(bottom, (0, top.height))
    return canvas


def png_bytes(image: Image.Image) -> bytes:
    """The image as PNG with no metadata (no time, no software name): the same drawing, the same bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()
