"""The trust boundary for COCO keypoint JSON: raw records checked for type and range, once, at load.

Each record type is a strict pydantic model (no "0" for 0, no 1.5 for an id, no null inside
a bbox, no NaN); `check_record` turns the first problem into a SemcorrError that names the
file, the record and the field. Builders never see these raw records, only the typed
records of `semcorr.store`.
"""

from __future__ import annotations

import itertools
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError, field_validator

from semcorr.errors import SemcorrError
from semcorr.paths import path_problem

MAX_ID = 2**53  # the largest integer every JSON reader keeps exact
MAX_SIDE = 100_000

Id = Annotated[StrictInt, Field(ge=0, le=MAX_ID)]
Number = Annotated[float, Field(allow_inf_nan=False)]
IndexPair = Annotated[list[StrictInt], Field(min_length=2, max_length=2)]
Side = Annotated[StrictInt, Field(ge=1, le=MAX_SIDE)]


class _Record(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow", allow_inf_nan=False)


class RawImage(_Record):
    """An `images` entry."""

    id: Id
    file_name: str
    width: Annotated[StrictInt, Field(ge=1, le=MAX_SIDE)]
    height: Annotated[StrictInt, Field(ge=1, le=MAX_SIDE)]

    @field_validator("file_name")
    @classmethod
    def _safe_file_name(cls, value: str) -> str:
        problem = path_problem(value)
        if problem:
            raise ValueError(f"unsafe path: {problem}; use a path relative to the image folder")
        return value


class RawCategory(_Record):
    """A `categories` entry with its keypoint schema."""

    id: Id
    name: Annotated[str, Field(min_length=1, max_length=200)]
    supercategory: str = ""
    keypoints: list[str] = []
    skeleton: list[IndexPair] = []
    keypoint_descriptions: list[str] = []
    flip_pairs: list[IndexPair] = []
    schema_version: Annotated[StrictInt, Field(ge=1)] = 1


class RawRle(_Record):
    """A run-length-encoded mask: compressed (string) or uncompressed (list of run lengths)."""

    size: Annotated[list[Side], Field(min_length=2, max_length=2)]
    counts: str | list[Annotated[StrictInt, Field(ge=0)]]

    @field_validator("counts")
    @classmethod
    def _counts(cls, value: str | list[int], info) -> str | list[int]:
        runs = rle_array(value) if isinstance(value, str) else np.asarray(value, dtype=np.int64)
        if runs is None:
            raise ValueError("compressed RLE counts are not a valid COCO run-length string (corrupt RLE)")
        total = int(runs.sum())
        if "size" in info.data:
            height, width = info.data["size"]
            if total != height * width:
                raise ValueError(f"RLE run lengths add up to {total}, not height x width = {height * width} "
                                 "(corrupt RLE)")
        return value


def rle_runs(counts: str, limit: int | None = None) -> list[int] | None:
    """`rle_array` as a list of ints."""
    runs = rle_array(counts, limit)
    return None if runs is None else runs.tolist()


def rle_array(counts: str, limit: int | None = None) -> np.ndarray | None:
    """Decode COCO's compressed RLE string into run lengths (pycocotools' rleFrString), None if malformed.

    pycocotools decodes without bounds checks (it reads past the end of a truncated string
    and writes runs that do not add up to the mask size past its buffer), so every RLE
    string is checked here, before it reaches the C code. Runs below 0 or above `limit`
    (the pixel count, when given) are malformed too. Vectorised: each run is 1 to 7
    characters of 5 bits, the last without the continuation bit 0x20 and with 0x10 as the
    sign; from the fourth run on, each is a difference to the run two before it.
    """
    if not counts:
        return np.zeros(0, dtype=np.int64)
    try:
        codes = np.frombuffer(counts.encode("ascii"), dtype=np.uint8).astype(np.int64) - 48
    except UnicodeEncodeError:
        return None
    if codes.min() < 0 or codes.max() > 63 or codes[-1] & 0x20:
        return None
    ends = (codes & 0x20) == 0
    starts = np.concatenate(([0], np.flatnonzero(ends)[:-1] + 1))
    lengths = np.diff(np.append(starts, len(codes)))
    if lengths.max() > 7:
        return None
    position = np.arange(len(codes)) - np.repeat(starts, lengths)
    values = np.add.reduceat((codes & 0x1F) << (5 * position), starts)
    negative = (codes[ends] & 0x10) != 0
    values[negative] -= np.left_shift(1, 5 * lengths[negative])
    runs = values.copy()
    runs[1::2] = np.cumsum(values[1::2])
    runs[2::2] = np.cumsum(values[2::2])
    if runs.min() < 0 or (limit is not None and runs.max() > limit):
        return None
    return runs


class RawAnnotation(_Record):
    """An `annotations` entry."""

    id: Id
    image_id: Id
    category_id: Id
    bbox: Annotated[list[Number], Field(min_length=4, max_length=4)]
    keypoints: list[Number] = []
    num_keypoints: Annotated[StrictInt, Field(ge=0)] | None = None
    segmentation: Any = None
    area: Annotated[Number, Field(ge=0)] | None = None
    iscrowd: Literal[0, 1] | StrictBool = 0
    attributes: dict[str, Any] = {}

    @field_validator("bbox")
    @classmethod
    def _positive_size(cls, value: list[float]) -> list[float]:
        if value[2] <= 0 or value[3] <= 0:
            raise ValueError("bbox has non-positive size: width and height must be > 0")
        return value

    @field_validator("segmentation")
    @classmethod
    def _mask(cls, value: Any) -> list[list[float]] | RawRle | None:
        if value is None:
            return None
        if isinstance(value, dict):
            try:
                return RawRle.model_validate(value)
            except ValidationError as exc:
                raise ValueError(f"RLE mask: {describe(exc, show_input=False)}") from None
        if isinstance(value, list):
            for poly in value:
                if not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2 or not finite(poly):
                    raise ValueError("a polygon must be a list of at least 3 points as finite numbers "
                                     "x1, y1, x2, y2, ...")
            return value
        raise ValueError("must be a list of polygons or an RLE object")


class RawAttributes(_Record):
    """The semcorr entries of an annotation's `attributes` (others are kept as they are)."""

    azimuth_bin: Annotated[StrictInt, Field(ge=0, le=7)] | None = None
    truncated: StrictBool | Literal[0, 1] = False
    occluded: StrictBool | Literal[0, 1] = False


class RawCoco(BaseModel):
    """The top level of a COCO file: three lists and an optional `info` object."""

    model_config = ConfigDict(strict=True, extra="allow")

    images: list[Any]
    annotations: list[Any]
    categories: list[Any]
    info: dict[str, Any] = {}


Model = TypeVar("Model", bound=BaseModel)


_TYPE_TAGS = {"bool", "int", "float", "str", "list", "dict", "tuple", "none", "RawRle"}


def describe(error: ValidationError, show_input: bool = True) -> str:
    """The first problem of a pydantic error as `field 'a.b': what is wrong (got X)`."""
    first = error.errors(include_url=False)[0]
    where = ".".join(str(part) for part in first["loc"] if isinstance(part, int) or not (
        "[" in str(part) or "-" in str(part) or str(part) in _TYPE_TAGS))
    got = repr(first.get("input"))
    got = got if len(got) <= 60 else got[:57] + "..."
    message = first["msg"].removeprefix("Value error, ")
    field = f"field {where!r}: " if where else ""
    shown = "" if first["type"] == "missing" or not show_input else f" (got {got})"
    return f"{field}{message}{shown}"


def check_record(model: type[Model], raw: Any, path: Path, record: str, fix: str) -> Model:
    """Validate one raw record; SemcorrError `path: record: problem; fix` otherwise."""
    if not isinstance(raw, dict):
        raise SemcorrError(f"{path}: {record}: expected a JSON object, got {type(raw).__name__}; {fix}")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise SemcorrError(f"{path}: {record}: {describe(exc)}; {fix}") from None


def record_name(raw: Any, index: int, kind: str) -> str:
    """How an error names a record: by its id when it has a usable one, else by position."""
    if isinstance(raw, dict) and isinstance(raw.get("id"), int | str) and not isinstance(raw.get("id"), bool):
        shown = repr(raw["id"]) if isinstance(raw["id"], str) else raw["id"]
        return f"{kind} id={shown}"
    return f"{kind}s[{index}]"


# ---------------------------------------------------------------------------- bulk fast paths
# Each `quick_*` answers True only for a record the pydantic model certainly accepts, checking
# plain JSON types in bulk; anything else (a rarer shape, or a real problem) goes through the
# model, which gives the usual one-line message. So the messages do not change, only the speed.

_SIMPLE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*(?:/[A-Za-z0-9_][A-Za-z0-9_.+-]*)*\Z")
_PLAIN_NUMBERS = {int, float}


def plain_finite(values: Any, low: float = -math.inf) -> bool:
    """A list of plain ints / floats (no bools), all finite and >= `low`."""
    if type(values) is not list:
        return False
    if not values:
        return True
    if not set(map(type, values)) <= _PLAIN_NUMBERS:
        return False
    try:
        return math.isfinite(sum(values)) and min(values) >= low
    except OverflowError:
        return False


def _plain_id(value: Any, low: int = 0, high: int = MAX_ID) -> bool:
    return type(value) is int and low <= value <= high


def quick_image(raw: Any) -> bool:
    """True when `RawImage` certainly accepts `raw` (simple safe file name, integer id and sides)."""
    return (type(raw) is dict and _plain_id(raw.get("id")) and type(raw.get("file_name")) is str
            and _SIMPLE_NAME.match(raw["file_name"]) is not None and _plain_id(raw.get("width"), 1, MAX_SIDE)
            and _plain_id(raw.get("height"), 1, MAX_SIDE))


def quick_annotation(raw: Any) -> bool:
    """True when `RawAnnotation` certainly accepts `raw` (polygons or no mask; RLE goes through the model)."""
    if not (type(raw) is dict and _plain_id(raw.get("id")) and _plain_id(raw.get("image_id"))
            and _plain_id(raw.get("category_id"))):
        return False
    bbox = raw.get("bbox")
    if not (plain_finite(bbox) and len(bbox) == 4 and bbox[2] > 0 and bbox[3] > 0):
        return False
    if not plain_finite(raw.get("keypoints", [])):
        return False
    count, area, crowd = raw.get("num_keypoints"), raw.get("area"), raw.get("iscrowd", 0)
    if not (count is None or _plain_id(count)) or not (area is None or plain_finite([area], 0)):
        return False
    if type(crowd) not in (int, bool) or crowd not in (0, 1):
        return False
    attributes = raw.get("attributes", {})
    if type(attributes) is not dict or not all(type(k) is str for k in attributes):
        return False
    segmentation = raw.get("segmentation")
    return segmentation is None or (type(segmentation) is list and all(
        plain_finite(poly) and len(poly) >= 6 and len(poly) % 2 == 0 for poly in segmentation))


def quick_attributes(known: dict) -> bool:
    """True when `RawAttributes` certainly accepts the semcorr entries `known`."""
    azimuth = known.get("azimuth_bin")
    return (azimuth is None or _plain_id(azimuth, 0, 7)) and all(
        type(known.get(flag, False)) in (bool, int) and known.get(flag, False) in (0, 1)
        for flag in ("truncated", "occluded"))


def finite(values) -> bool:
    """True when every value is a finite number (an int past the float range is not)."""
    try:
        return all(isinstance(v, int | float) and math.isfinite(v) for v in values)
    except OverflowError:
        return False


# ---------------------------------------------------------------------------- column-wise fast paths
# The same promise as `quick_*`, for a whole column of records at once: a True entry is a value the
# model certainly accepts; False sends that record through the model (which names the problem).

_NUMBER_TYPES = {int, float}


def plain_ids(values: list, low: int = 0, high: int = MAX_ID) -> np.ndarray:
    """(N,) bool: each value is a plain int (not bool) in low..high."""
    count = len(values)
    if set(map(type, values)) <= {int} and (not values or (min(values) >= low and max(values) <= high)):
        return np.ones(count, dtype=bool)
    return np.fromiter((type(v) is int and low <= v <= high for v in values), dtype=bool, count=count)


def id_array(values: list, ok: np.ndarray) -> np.ndarray:
    """(N,) int64 of the values where `ok` (plain ids), -1 elsewhere."""
    if ok.all():
        return np.array(values, dtype=np.int64) if values else np.zeros(0, dtype=np.int64)
    return np.fromiter((v if good else -1 for v, good in zip(values, ok.tolist())), dtype=np.int64,
                       count=len(values))


def _as_float(value: Any) -> float:
    """A plain number as a float, NaN for anything else (bools, strings, ints beyond the float range)."""
    if type(value) not in _NUMBER_TYPES:
        return math.nan
    try:
        return float(value)
    except OverflowError:
        return math.nan


def number_lists(lists: list, ok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flatten per-record lists of plain finite numbers.

    Returns (values, lengths): all the numbers as one float64 array and each record's count. A
    record whose entry is not a list, or holds anything but finite plain ints / floats, gets
    `ok` False (in place) and its values are NaN or dropped.
    """
    count = len(lists)
    if set(map(type, lists)) != {list} and count:
        is_list = np.fromiter((type(v) is list for v in lists), dtype=bool, count=count)
        ok &= is_list
        lists = [v if good else [] for v, good in zip(lists, is_list.tolist())]
    lengths = np.fromiter(map(len, lists), dtype=np.int64, count=count)
    flat = list(itertools.chain.from_iterable(lists))
    values = None
    if set(map(type, flat)) <= _NUMBER_TYPES:
        try:
            values = np.array(flat, dtype=np.float64)
        except OverflowError:
            values = None
    if values is None:
        values = np.fromiter(map(_as_float, flat), dtype=np.float64, count=len(flat))
    del flat
    bad = ~np.isfinite(values)
    if bad.any():
        ok[np.repeat(np.arange(count), lengths)[bad]] = False
    return values, lengths


def finite_polygons(segmentations: list, ok: np.ndarray) -> None:
    """Set `ok` False (in place) where a segmentation is not None or a list of polygons `quick_annotation` takes.

    A polygon is a list of at least 6 (an even count of) finite plain numbers; RLE objects and
    anything else are left to the model.
    """
    count = len(segmentations)
    is_list = np.fromiter((type(s) is list for s in segmentations), dtype=bool, count=count)
    is_none = np.fromiter((s is None for s in segmentations), dtype=bool, count=count)
    ok &= is_list | is_none
    lists = [s if good else [] for s, good in zip(segmentations, is_list.tolist())]
    sizes = np.fromiter(map(len, lists), dtype=np.int64, count=count)
    polygons = list(itertools.chain.from_iterable(lists))
    owner = np.repeat(np.arange(count), sizes)
    if set(map(type, polygons)) != {list} and polygons:
        bad = np.fromiter((type(p) is not list for p in polygons), dtype=bool, count=len(polygons))
        ok[owner[bad]] = False
        polygons = [p if type(p) is list else [] for p in polygons]
    lengths = np.fromiter(map(len, polygons), dtype=np.int64, count=len(polygons))
    ok[owner[(lengths < 6) | (lengths % 2 == 1)]] = False
    flat = list(itertools.chain.from_iterable(polygons))
    if not set(map(type, flat)) <= _NUMBER_TYPES:
        plain = False
    else:
        try:
            plain = math.isfinite(sum(flat))  # a NaN or an infinity anywhere makes the sum NaN or infinite
        except OverflowError:
            plain = False
    if not plain:  # find the records in question, polygon by polygon
        bad = np.fromiter((not plain_finite(p) for p in polygons), dtype=bool, count=len(polygons))
        ok[owner[bad]] = False


def plain_optional_numbers(values: list, low: float) -> np.ndarray:
    """(N,) bool: each value is None or a finite plain number >= low."""
    count = len(values)
    numbers = [v for v in values if v is not None]
    if set(map(type, numbers)) <= _NUMBER_TYPES:
        try:
            if not numbers or (math.isfinite(sum(numbers)) and min(numbers) >= low):
                return np.ones(count, dtype=bool)
        except OverflowError:
            pass
    return np.fromiter((v is None or plain_finite([v], low) for v in values), dtype=bool, count=count)


def plain_attributes(attributes: list[dict]) -> np.ndarray:
    """(N,) bool: `quick_attributes` of each attributes object, in bulk."""
    count = len(attributes)
    azimuths = [a.get("azimuth_bin") for a in attributes]
    flags = [a.get(flag, False) for flag in ("truncated", "occluded") for a in attributes]
    numbers = [v for v in azimuths if v is not None]
    if (set(map(type, numbers)) <= {int} and (not numbers or (min(numbers) >= 0 and max(numbers) <= 7))
            and set(map(type, flags)) <= {bool, int} and set(flags) <= {0, 1}):
        return np.ones(count, dtype=bool)
    return np.fromiter(map(quick_attributes, attributes), dtype=bool, count=count)
