"""Pydantic models of the API's JSON bodies (they make the OpenAPI schema precise)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class RLE(BaseModel):
    """A COCO compressed RLE: runs column by column (Fortran order), background first, LEB128-like string."""

    size: list[int] = Field(..., min_length=2, max_length=2, description="[height, width]")
    counts: str = Field(..., description="COCO compressed RLE counts string")


class Instance(BaseModel):
    id: int = Field(..., ge=0, description="Index of the instance in this response (best score first)")
    class_id: int = Field(..., description="The dataset's category id")
    class_name: str
    score: float = Field(..., ge=0, le=1)
    box: list[float] = Field(..., min_length=4, max_length=4, description="[x0, y0, x1, y1] in pixels")
    area: int = Field(..., ge=0, description="Mask pixels")
    rle: RLE | None = Field(None, description="The mask (masks=rle)")
    polygons: list[list[float]] | None = Field(
        None, description="Outer boundaries of the mask as flat [x0, y0, x1, y1, ...] lists (masks=polygon; holes "
        "are dropped, simplified to 1 px)")


class ImageInfo(BaseModel):
    width: int = Field(..., ge=1)
    height: int = Field(..., ge=1)


class Timing(BaseModel):
    decode_ms: float
    queue_and_inference_ms: float
    total_ms: float


class Prediction(BaseModel):
    """Instances of one image after the request's filters."""

    image: ImageInfo
    count: int = Field(..., ge=0)
    instances: list[Instance]
    conf: float
    classes: list[int] | None = Field(None, description="Category ids kept (null: all)")
    max_det: int
    masks: Literal["rle", "polygon", "none"]
    timing: Timing


class ClassInfo(BaseModel):
    id: int = Field(..., description="Category id")
    name: str
    colour: list[int] = Field(..., min_length=3, max_length=3, description="RGB colour of overlays and the page")


class InputRules(BaseModel):
    formats: list[str]
    content_types: list[str]
    max_bytes: int
    max_pixels: int
    multipart_field: str = "file"


class ModelInfo(BaseModel):
    name: str = Field(..., description="Model architecture")
    source: str = Field(..., description="Checkpoint or exported model file name")
    version: str = Field(..., description="maskkit version")
    classes: list[ClassInfo]
    input: InputRules
    min_conf: float | None = Field(None, description="Scores below this are never returned (the model's threshold)")
    max_batch: int
    api_key_required: bool


class Health(BaseModel):
    status: Literal["ok"]
    queue_depth: int
    max_queue: int


class ErrorBody(BaseModel):
    error: str = Field(..., description="Short code, e.g. not_an_image, body_too_large, too_many_pixels")
    detail: str = Field(..., description="What is wrong, in words")
