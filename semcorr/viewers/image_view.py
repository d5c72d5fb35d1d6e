"""The image viewer: an image's instances with boxes, masks, skeleton edges and named keypoints.

Visibility 2 (labelled, visible) is a filled marker, visibility 1 (labelled, not visible) a
hollow ring; the marker's shape tells the keypoint's provenance (`drawing.PROVENANCE_MARKERS`).
"""

from __future__ import annotations

from PIL import Image, ImageDraw

from semcorr import store
from semcorr.builders.coco_filter import decode_mask
from semcorr.errors import SemcorrError
from semcorr.viewers import drawing
from semcorr.viewers.pair_view import image_pixels

MARKER_LEGEND = ("markers: filled = visible (v=2), ring = labelled but not visible (v=1); shape = provenance: "
                 "circle imported or none, square manual, diamond accepted, hexagon auto-accepted, "
                 "triangle dragged, inverted triangle added")


def keypoint_provenance(instance: store.Instance, index: int) -> str | None:
    """The recorded provenance action of keypoint `index` (None when none is recorded)."""
    recorded = instance.extra_attributes.get("keypoint_provenance")
    entry = recorded.get(str(index)) if isinstance(recorded, dict) else None
    action = entry.get("action") if isinstance(entry, dict) else None
    return action if action in drawing.PROVENANCE_MARKERS else None


def instance_line(instance: store.Instance, category: store.Category) -> str:
    """One caption line: the instance, its labelled and visible counts, flags and azimuth bin."""
    flags = [name for name, on in (("truncated", instance.truncated), ("occluded", instance.occluded)) if on]
    azimuth = "?" if instance.azimuth_bin is None else str(instance.azimuth_bin)
    return (f"#{instance.id} {category.name}: {int(instance.labelled.sum())}/{category.num_keypoints} labelled, "
            f"{int(instance.visible.sum())} visible | {', '.join(flags) or 'not truncated, not occluded'} | "
            f"azimuth bin {azimuth}")


def image_instances(dataset: store.Dataset, image_id: int) -> list[store.Instance]:
    """The instances of an image; SemcorrError naming the id range when the image is unknown."""
    if image_id not in dataset.images:
        ids = sorted(dataset.images)
        span = f"ids run from {ids[0]} to {ids[-1]}" if ids else "it holds no images"
        raise SemcorrError(f"{dataset.image_root.parent / store.ANNOTATIONS_FILE}: no image with id={image_id} "
                           f"({span}); give an image id of the dataset")
    return [inst for inst in dataset.instances if inst.image_id == image_id]


def render_image(dataset: store.Dataset, image_id: int, pixels: Image.Image | None = None,
                 names: bool = True) -> Image.Image:
    """Draw an image's annotations: masks, boxes with id and flags, skeleton edges, keypoints, a caption.

    Args:
        dataset: the store.
        image_id: the image to draw.
        pixels: its RGB pixels (read from the store when None).
        names: write keypoint names beside the markers.
    """
    instances = image_instances(dataset, image_id)
    info = dataset.images[image_id]
    image = pixels if pixels is not None else image_pixels(dataset, image_id)
    for index, inst in enumerate(instances):
        if inst.segmentation:
            image = drawing.overlay_mask(image, decode_mask(inst.segmentation, info.height, info.width),
                                         drawing.instance_color(index))
    image = image.copy()
    draw = ImageDraw.Draw(image)
    radius = max(3, round(min(info.width, info.height) / 60))
    font = drawing.label_font(max(10, round(radius * 2.6)))
    for index, inst in enumerate(instances):
        color = drawing.instance_color(index)
        x, y, w, h = inst.bbox
        draw.rectangle([x, y, x + w, y + h], outline=color, width=2)
        flags = "".join(tag for tag, on in ((" truncated", inst.truncated), (" occluded", inst.occluded)) if on)
        draw.text((x + 3, y + 2), f"#{inst.id}{flags}", fill=color, font=font, stroke_width=2,
                  stroke_fill=(255, 255, 255))
        category = dataset.categories[inst.category_id]
        for a, b in category.skeleton:
            if inst.labelled[a] and inst.labelled[b]:
                draw.line([tuple(inst.keypoints[a, :2]), tuple(inst.keypoints[b, :2])], fill=color,
                          width=max(1, radius // 2))
    taken: list[tuple[float, float, float, float]] = []
    for inst in instances:
        category = dataset.categories[inst.category_id]
        for k in map(int, inst.labelled.nonzero()[0]):
            xy = tuple(inst.keypoints[k, :2])
            if names:
                drawing.draw_label(draw, xy, category.keypoints[k], font, taken=taken)
            shape = drawing.PROVENANCE_MARKERS.get(keypoint_provenance(inst, k), "circle")
            drawing.draw_marker(draw, xy, radius, drawing.keypoint_color(k), shape, filled=inst.keypoints[k, 2] == 2)
    lines = [f"image {image_id} | {info.file_name} | {info.width}x{info.height} | {len(instances)} instance(s)",
             *(instance_line(inst, dataset.categories[inst.category_id]) for inst in instances), MARKER_LEGEND]
    return drawing.stacked(image, drawing.caption(image.width, lines, font_size=max(10, min(13, info.width // 45))))
