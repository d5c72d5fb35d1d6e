"""The trust boundary for COCO keypoint JSON: raw records checked for type and range, once, at load.

Each record type is a strict pydantic model (no "0" for 0, no 1.5 for an id, no null inside
a bbox, no NaN); `check_record` turns the first problem into a SemcorrError that names the
file, the record and the field. Builders never see these raw records, only the typed
records of `semcorr.store`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

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
        if isinstance(value, str):
            if any(not 48 <= ord(ch) < 48 + 64 for ch in value):
                raise ValueError("compressed RLE counts hold characters outside COCO's alphabet")
        elif "size" in info.data:
            height, width = info.data["size"]
            if sum(value) != height * width:
                raise ValueError(f"run lengths add up to {sum(value)}, not height x width = {height * width}")
        return value


Polygon = Annotated[list[Number], Field(min_length=6)]


class RawAnnotation(_Record):
    """An `annotations` entry."""

    id: Id
    image_id: Id
    category_id: Id
    bbox: Annotated[list[Number], Field(min_length=4, max_length=4)]
    keypoints: list[Number] = []
    num_keypoints: Annotated[StrictInt, Field(ge=0)] | None = None
    segmentation: list[Polygon] | RawRle | None = None
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
    def _even_polygons(cls, value):
        if isinstance(value, list) and any(len(poly) % 2 for poly in value):
            raise ValueError("a polygon has an odd number of coordinates; write x1, y1, x2, y2, ...")
        return value


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


def describe(error: ValidationError) -> str:
    """The first problem of a pydantic error as `field 'a.b': what is wrong (got X)`."""
    first = error.errors(include_url=False)[0]
    where = ".".join(str(part) for part in first["loc"] if not str(part).startswith(("function-", "literal[")))
    where = where.replace(".list[", "[").split(".tagged-union")[0]
    got = repr(first.get("input"))
    got = got if len(got) <= 60 else got[:57] + "..."
    message = first["msg"].removeprefix("Value error, ")
    field = f"field {where!r}: " if where else ""
    shown = "" if first["type"] == "missing" else f" (got {got})"
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


def finite(values) -> bool:
    """True when every value is a finite number."""
    return all(isinstance(v, int | float) and math.isfinite(v) for v in values)
