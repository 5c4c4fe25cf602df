"""The wire protocol between the edge runner and the expert server (no web framework in here).

Request: ``POST /v1/experts/{id}/infer?topk=K`` with a batch of images as the body, either

* ``application/octet-stream``: the raw ``uint8`` bytes of an ``[N, C, H, W]`` array in C order,
  with the header ``X-Shape: N,C,H,W``; or
* ``application/x-npy``: a NumPy ``.npy`` file of a ``uint8`` ``[N, C, H, W]`` array (read without
  pickle).

Response (JSON, :class:`InferResponse`): per image, the expert's top-k global class ids with their
probabilities (``-1`` stands for "other", i.e. "not one of my classes"), its answer and confidence,
plus the server's timings for the request (time queued, time computing, size of the batch it ran in).
"""

from __future__ import annotations

import io
import math

import numpy as np
from pydantic import BaseModel, Field

OCTET = "application/octet-stream"
NPY = "application/x-npy"
SHAPE_HEADER = "X-Shape"
MAX_IMAGES = 4096


class ProtocolError(ValueError):
    """A request body that does not follow the protocol; the message says what is wrong."""


def encode_images(images) -> tuple[bytes, dict[str, str]]:
    """Raw-bytes body and headers for a ``uint8 [N, C, H, W]`` batch (a NumPy array, or a CPU tensor)."""
    arr = np.asarray(images)
    if arr.dtype != np.uint8 or arr.ndim != 4:
        raise ProtocolError(f"images must be uint8 [N, C, H, W], got {arr.dtype} {list(arr.shape)}")
    return np.ascontiguousarray(arr).tobytes(), {"Content-Type": OCTET, SHAPE_HEADER: ",".join(map(str, arr.shape))}


def decode_images(body: bytes, content_type: str | None, shape_header: str | None) -> np.ndarray:
    """The ``uint8 [N, C, H, W]`` array of a request body, or a :class:`ProtocolError`."""
    kind = (content_type or "").split(";")[0].strip().lower()
    if kind == NPY:
        try:
            arr = np.load(io.BytesIO(body), allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            raise ProtocolError(f"body is not a valid .npy array ({err})") from err
    elif kind == OCTET:
        if not shape_header:
            raise ProtocolError(f"raw bodies need the header {SHAPE_HEADER}: N,C,H,W")
        try:
            shape = tuple(int(v) for v in shape_header.split(","))
        except ValueError as err:
            raise ProtocolError(f"{SHAPE_HEADER} must be four integers N,C,H,W, got {shape_header!r}") from err
        if len(shape) != 4 or min(shape) <= 0:
            raise ProtocolError(f"{SHAPE_HEADER} must be four positive integers N,C,H,W, got {shape_header!r}")
        expected = math.prod(shape)  # Python integers: no overflow on a hostile header
        if len(body) != expected:
            raise ProtocolError(f"body has {len(body)} bytes but {SHAPE_HEADER} {shape_header} needs {expected}")
        arr = np.frombuffer(body, dtype=np.uint8).reshape(shape)
    else:
        raise ProtocolError(f"unsupported content type {content_type!r}: send {OCTET} (with {SHAPE_HEADER}) or {NPY}")
    if arr.dtype != np.uint8 or arr.ndim != 4:
        raise ProtocolError(f"images must be uint8 [N, C, H, W], got {arr.dtype} {list(arr.shape)}")
    if arr.shape[0] > MAX_IMAGES:
        raise ProtocolError(f"at most {MAX_IMAGES} images a request, got {arr.shape[0]}")
    return arr


class ImageResult(BaseModel):
    pred: int = Field(description="the expert's answer as a global class id; -1 means 'other'")
    confidence: float = Field(description="the expert's probability of its answer")
    other: bool = Field(description="the expert says the image is not one of its classes")
    topk: list[int] = Field(description="global class ids, most probable first (-1: 'other')")
    probs: list[float] = Field(description="probabilities of the topk entries")


class ServerTimings(BaseModel):
    queue_ms: float = Field(description="time the request waited for its batch")
    compute_ms: float = Field(description="time the batch it ran in took on the model")
    batch_size: int = Field(description="images in that batch (this request and others)")


class InferResponse(BaseModel):
    expert: str
    results: list[ImageResult]
    timings: ServerTimings


class ExpertInfo(BaseModel):
    id: str
    classes: list[int]
    class_names: list[str]
    has_other: bool
    model: str
    timm_name: str
    parameters: int
    input_shape: list[int] = Field(description="[C, H, W] of every image a request sends")
    temperature: float = Field(1.0, description="softmax temperature of its answers (calibrated at build time)")


class HealthResponse(BaseModel):
    status: str
    experts: int
    device: str
    system_id: str | None = Field(None, description="sha256 of the bundle's system.json (None: a run directory)")
