"""Render an annotated SPair-style image set from prototypes.

Per image: a shape variation (anisotropic scale), part colours, an azimuth (balanced
over the 8 bins), an elevation, a camera distance (log-uniform, so bbox area ratios
reach all three scale levels), an optional off-centre aim that cuts the object at the
image border, and an optional occluding box. The instance mask, bbox, truncation and
occlusion flags come from the render; keypoints are projected and kept only where the
depth buffer shows them (self-occlusion, the occluder and the border hide them).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import trimesh
from PIL import Image
from pycocotools import mask as mask_utils

from semcorr import __version__
from semcorr.builders.labels import azimuth_bin_of
from semcorr.engine import LOCAL, Engine, iter_actors
from semcorr.errors import SemcorrError
from semcorr.rendering import Camera, Part, Renderer, keypoint_visibility, look_at
from semcorr.store import IMAGES_DIR, Category, Dataset, ImageInfo, Instance
from semcorr.synth.prototypes import Prototype


@dataclass(frozen=True)
class SynthOptions:
    """Sampling ranges of the synthetic renderer.

    Attributes:
        images_per_category: images rendered per category.
        width: image width.
        height: image height.
        yfov_deg: vertical field of view.
        elevation_deg: (low, high) camera elevation above the ground plane.
        distance: (low, high) camera distance to the object centre (object size 1).
        truncation_rate: share of images aimed off-centre so the border cuts the object.
        occlusion_rate: share of images with an occluding box.
        shape_jitter: per-axis scale is drawn from 1 +- this.
        seed: the seed; the same seed and options give identical files.
    """

    images_per_category: int = 40
    width: int = 400
    height: int = 300
    yfov_deg: float = 45.0
    elevation_deg: tuple[float, float] = (5.0, 40.0)
    distance: tuple[float, float] = (1.5, 4.5)
    truncation_rate: float = 0.25
    occlusion_rate: float = 0.3
    shape_jitter: float = 0.15
    seed: int = 0


@dataclass
class RenderedView:
    """One rendered image, its exact labels, and the camera and parts (occluder last) it was rendered from."""

    color: np.ndarray
    mask: np.ndarray
    keypoints: np.ndarray
    azimuth_deg: float
    elevation_deg: float
    distance: float
    truncated: bool
    occluded: bool
    camera: Camera
    parts: list[Part]
    keypoints_3d: np.ndarray


OCCLUDED_FRACTION = 0.05
MIN_VISIBLE_PIXELS = 300
EDGE_JUMP_PIXELS = 12.0


def _jittered_parts(prototype: Prototype, scale: np.ndarray, rng: np.random.Generator) -> list[Part]:
    parts = []
    transform = np.diag([*scale, 1.0])
    for part in prototype.parts:
        mesh = part.mesh.copy()
        mesh.apply_transform(transform)
        color = part.color
        if color is not None:
            rgb = np.clip(np.asarray(color[:3]) * rng.uniform(0.7, 1.3) + rng.uniform(-0.08, 0.08, 3), 0, 1)
            color = (*rgb.tolist(), 1.0)
        parts.append(Part(mesh=mesh, color=color))
    return parts


def _occluder(camera_pos: np.ndarray, rng: np.random.Generator) -> Part:
    distance = float(np.linalg.norm(camera_pos))
    towards = camera_pos / distance
    side = np.cross([0.0, 1.0, 0.0], towards)
    side /= np.linalg.norm(side)
    up = np.cross(towards, side)
    angle = rng.uniform(0, 2 * np.pi)
    offset = rng.uniform(0.15, 0.4) * (np.cos(angle) * side + np.sin(angle) * up)
    centre = towards * rng.uniform(0.7, max(0.75, 0.55 * distance)) + offset
    size = rng.uniform(0.15, 0.35, 3)
    box = trimesh.creation.box(extents=size, transform=trimesh.transformations.translation_matrix(centre))
    shade = rng.uniform(0.25, 0.6)
    return Part(mesh=box, color=(shade, shade * rng.uniform(0.8, 1.1), shade * rng.uniform(0.8, 1.1), 1.0))


def render_view(renderer: Renderer, prototype: Prototype, azimuth_bin: int, options: SynthOptions,
                rng: np.random.Generator, max_tries: int = 30) -> RenderedView:
    """Sample and render one labelled view whose azimuth falls in `azimuth_bin`."""
    for _ in range(max_tries):
        scale = 1.0 + rng.uniform(-options.shape_jitter, options.shape_jitter, 3)
        parts = _jittered_parts(prototype, scale, rng)
        keypoints_3d = prototype.keypoints_xyz * scale
        vertices = np.concatenate([p.mesh.vertices for p in parts])
        azimuth = (azimuth_bin * 45.0 + rng.uniform(-22.4, 22.4)) % 360.0
        elevation = rng.uniform(*options.elevation_deg)
        distance = float(np.exp(rng.uniform(*np.log(options.distance))))
        az, el = np.radians(azimuth), np.radians(elevation)
        eye = distance * np.array([np.sin(az) * np.cos(el), np.sin(el), np.cos(az) * np.cos(el)])
        yfov = np.radians(options.yfov_deg)
        half_view = distance * np.tan(yfov / 2)
        aim = look_at(eye, np.zeros(3))
        if rng.random() < options.truncation_rate:
            edge = int(rng.integers(4))
            axis = aim[:3, edge % 2] * (1 if edge < 2 else -1)
            reach = half_view * (options.width / options.height if edge % 2 == 0 else 1.0)
            target = rng.uniform(0.7, 1.0) * reach * axis
        else:
            angle = rng.uniform(0, 2 * np.pi)
            target = rng.uniform(0.0, 0.1) * half_view * (np.cos(angle) * aim[:3, 0] + np.sin(angle) * aim[:3, 1])
        camera = Camera(options.width, options.height, yfov, look_at(eye, target))
        occluder = _occluder(eye, rng) if rng.random() < options.occlusion_rate else None
        background = tuple(rng.uniform(0.6, 0.95, 3).tolist())

        scene_parts = parts + ([occluder] if occluder is not None else [])
        color, depth = renderer.render(scene_parts, camera, background=background,
                                       light_intensity=float(rng.uniform(2.0, 4.0)))
        object_depth = renderer.depth(parts, camera) if occluder is not None else depth
        full_mask = object_depth > 0
        mask = full_mask & (np.abs(depth - object_depth) <= 1e-4 * distance)
        if mask.sum() < MIN_VISIBLE_PIXELS:
            continue
        hidden_share = 1.0 - mask.sum() / full_mask.sum()
        vertex_xy, vertex_depth = camera.project(vertices)
        outside = ((vertex_xy[:, 0] < 0) | (vertex_xy[:, 0] > options.width)
                   | (vertex_xy[:, 1] < 0) | (vertex_xy[:, 1] > options.height) | (vertex_depth <= 0))
        touches_border = full_mask[0].any() or full_mask[-1].any() or full_mask[:, 0].any() or full_mask[:, -1].any()
        xy, kp_depth = camera.project(keypoints_3d)
        visible = keypoint_visibility(xy, kp_depth, depth, tolerance=0.02 + 0.004 * distance,
                                      edge_jump=np.maximum(0.08, EDGE_JUMP_PIXELS * kp_depth / camera.focal))
        if not visible.any():
            continue
        keypoints = np.zeros((len(xy), 3))
        keypoints[visible, :2] = xy[visible]
        keypoints[visible, 2] = 2
        return RenderedView(color=color, mask=mask, keypoints=keypoints, azimuth_deg=float(azimuth),
                            elevation_deg=float(elevation), distance=distance, truncated=bool(outside.any() or touches_border),
                            occluded=bool(occluder is not None and hidden_share >= OCCLUDED_FRACTION),
                            camera=camera, parts=scene_parts, keypoints_3d=keypoints_3d)
    raise SemcorrError(f"category {prototype.name!r}: no view in {max_tries} tries showed the object and a keypoint; "
                       "check the schema's keypoints lie on the mesh surface, or widen the sampling ranges")


def mask_to_rle(mask: np.ndarray) -> dict:
    """Binary (H, W) mask to COCO compressed RLE with a str `counts`."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def mask_bbox(mask: np.ndarray) -> np.ndarray:
    """COCO [x, y, w, h] of a binary mask's pixels."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return np.array([cols[0], rows[0], cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1], dtype=np.float64)


def jpeg_bytes(color: np.ndarray, quality: int = 92) -> bytes:
    """Encode an RGB image as JPEG bytes (deterministic for the same pixels)."""
    buffer = io.BytesIO()
    Image.fromarray(color).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


@dataclass
class RenderedImage:
    """What one rendered image contributes: its JPEG bytes and its instance's labels."""

    jpeg: bytes
    bbox: np.ndarray
    keypoints: np.ndarray
    segmentation: dict
    area: float
    azimuth_deg: float
    elevation_deg: float
    distance: float
    truncated: bool
    occluded: bool


class SynthWorker:
    """One offscreen renderer and the prototypes; renders (category index, image index, azimuth bin) jobs.

    Each image has its own seed ([seed, category index, 1, image index]), so any worker,
    in any order, renders the same bytes for a job.
    """

    def __init__(self, prototypes: list[Prototype], options: SynthOptions) -> None:
        self.prototypes, self.options = prototypes, options
        self.renderer = Renderer(options.width, options.height)

    def render(self, job: tuple[int, int, int]) -> RenderedImage:
        """Render one image of a job."""
        cat_index, index, azimuth_bin = job
        rng = np.random.default_rng([self.options.seed, cat_index, 1, index])
        view = render_view(self.renderer, self.prototypes[cat_index], azimuth_bin, self.options, rng)
        return RenderedImage(jpeg=jpeg_bytes(view.color), bbox=mask_bbox(view.mask), keypoints=view.keypoints,
                             segmentation=mask_to_rle(view.mask), area=float(view.mask.sum()),
                             azimuth_deg=view.azimuth_deg, elevation_deg=view.elevation_deg,
                             distance=view.distance, truncated=view.truncated, occluded=view.occluded)

    def close(self) -> None:
        """Release the renderer."""
        self.renderer.close()


def synth_jobs(prototypes: list[Prototype], options: SynthOptions) -> list[tuple[int, int, int]]:
    """(category index, image index, azimuth bin) of every image, in output order (bins balanced per category)."""
    jobs = []
    for cat_index in range(len(prototypes)):
        bin_rng = np.random.default_rng([options.seed, cat_index, 0])
        bins = bin_rng.permutation(np.resize(np.arange(8), options.images_per_category))
        jobs.extend((cat_index, index, int(bins[index])) for index in range(options.images_per_category))
    return jobs


def synth_category(prototype: Prototype, cat_index: int) -> Category:
    """The store category of a prototype (ids from 1 in prototype order)."""
    schema = prototype.schema
    return Category(id=cat_index + 1, name=prototype.name, keypoints=schema.names, skeleton=schema.skeleton,
                    descriptions=schema.descriptions, flip_pairs=schema.flip_pairs, supercategory="synthetic",
                    schema_version=schema.version)


def synthesize(prototypes: list[Prototype], options: SynthOptions, out_dir: Path,
               progress: Callable[[int], None] | None = None, engine: Engine = LOCAL) -> Dataset:
    """Render every prototype's images into `out_dir/images` and return the dataset.

    Args:
        prototypes: one per category, in category id order (ids from 1).
        options: sampling options, seed included.
        out_dir: dataset directory (images are written under `images/`).
        progress: called with 1 after each image.
        engine: where to render (local: one renderer here; ray: one renderer per Ray actor);
            the files written are the same.
    """
    image_dir = Path(out_dir) / IMAGES_DIR
    image_dir.mkdir(parents=True, exist_ok=True)
    categories = {cat_index + 1: synth_category(p, cat_index) for cat_index, p in enumerate(prototypes)}
    jobs = synth_jobs(prototypes, options)
    rendered = iter_actors(engine, SynthWorker, (prototypes, options), "render", jobs, progress=progress)
    images: dict[int, ImageInfo] = {}
    instances: list[Instance] = []
    for (cat_index, index, _), view in zip(jobs, rendered):
        image_id = len(images) + 1
        file_name = f"{prototypes[cat_index].name}_{index:04d}.jpg"
        (image_dir / file_name).write_bytes(view.jpeg)
        images[image_id] = ImageInfo(id=image_id, file_name=file_name, width=options.width, height=options.height)
        instances.append(Instance(
            id=image_id, image_id=image_id, category_id=cat_index + 1, bbox=np.array(view.bbox),
            keypoints=np.array(view.keypoints), segmentation=view.segmentation, area=view.area,
            azimuth_bin=int(azimuth_bin_of(view.azimuth_deg)), truncated=view.truncated,
            occluded=view.occluded,
            extra_attributes={"source": "synth", "azimuth_deg": round(view.azimuth_deg, 3),
                              "elevation_deg": round(view.elevation_deg, 3),
                              "distance": round(view.distance, 4)},
        ))
    info = {"description": "semcorr synthetic dataset", "semcorr_version": __version__, "seed": options.seed,
            "image_root": IMAGES_DIR}
    return Dataset(images=images, categories=categories, instances=instances, image_root=image_dir, info=info)
