"""The wire protocol between the edge runner and the expert server (no web framework in here).

Request: ``POST /v1/experts/{id}/infer?topk=K`` with a batch of images as the body, either

* ``application/octet-stream``: the raw ``uint8`` bytes of an ``[N, C, H, W]`` array in C order,
  with the header ``X-Shape: N,C,H,W``; or
* ``application/x-npy``: a NumPy ``.npy`` file of a ``uint8`` ``[N, C, H, W]`` array (read without
  pickle); or
* ``image/png`` (lossless), ``image/jpeg`` or ``image/webp`` (lossy): the images stacked into one
  picture (:mod:`askexpert.contract.codecs`), ``X-Shape`` optional for one image; its declared size is
  checked before it is decoded.

Response (JSON, :class:`InferResponse`): per image, the expert's top-k global class ids with their
probabilities (``-1`` stands for "other", i.e. "not one of my classes"), its answer and confidence,
plus the server's timings for the request (time queued, time computing, size of the batch it ran in).

Re-routing (:mod:`askexpert.contract.reroute`): ``?next=E2,E3`` gives the generalist's ranking of the
other experts; a server whose bundle re-routes asks them (or the general model) when the routed expert
says "other", within the request, and each image's result names the expert that answered and every try.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np
from numpy.lib import format as npformat
from pydantic import BaseModel, Field

from askexpert.contract.codecs import FORMATS, CodecError, Encoding, compress, decompress
from askexpert.contract.labels import OTHER

OCTET = "application/octet-stream"
NPY = "application/x-npy"
SHAPE_HEADER = "X-Shape"
MAX_IMAGES = 4096


class ProtocolError(ValueError):
    """A request body that does not follow the protocol; the message says what is wrong, ``reason`` which
    rule it broke: ``content_type`` (a type the protocol does not know) or ``bad_body`` (anything else)."""

    def __init__(self, message: str, reason: str = "bad_body") -> None:
        super().__init__(message)
        self.reason = reason


RAW = Encoding("raw")


def encode_images(images, encoding: Encoding = RAW) -> tuple[bytes, dict[str, str]]:
    """Body and headers for a ``uint8 [N, C, H, W]`` batch (a NumPy array, or a CPU tensor): raw bytes by
    default, or ``encoding``'s form (``.npy``, PNG, JPEG or WebP at its quality)."""
    arr = np.asarray(images)
    if arr.dtype != np.uint8 or arr.ndim != 4:
        raise ProtocolError(f"images must be uint8 [N, C, H, W], got {arr.dtype} {list(arr.shape)}")
    shape = {SHAPE_HEADER: ",".join(map(str, arr.shape))}
    if encoding.form == "raw":
        return np.ascontiguousarray(arr).tobytes(), {"Content-Type": OCTET, **shape}
    if encoding.form == "npy":
        out = io.BytesIO()
        np.save(out, np.ascontiguousarray(arr), allow_pickle=False)
        return out.getvalue(), {"Content-Type": NPY}
    try:
        return compress(arr, encoding), {"Content-Type": encoding.content_type, **shape}
    except CodecError as err:
        raise ProtocolError(str(err)) from err


def npy_bytes(shape) -> int:
    """Bytes of a ``uint8`` array of ``shape`` plus the largest ``.npy`` header NumPy writes for it."""
    return math.prod(shape) + 256


def max_body_bytes(input_shapes, max_images: int = MAX_IMAGES) -> int:
    """The largest valid request body for experts taking these ``[C, H, W]`` shapes: ``max_images`` images
    of the largest one, as raw bytes or as a ``.npy`` file (its header included)."""
    return max(npy_bytes((max_images, *shape)) for shape in input_shapes)


def _npy_array(body: bytes, max_images: int) -> np.ndarray:
    """The array of a ``.npy`` body, its header checked before any memory is given to the data (a header
    may declare any shape: a billion images must be refused, not allocated)."""
    fp = io.BytesIO(body)
    try:
        version = npformat.read_magic(fp)
        read_header = npformat.read_array_header_1_0 if version == (1, 0) else npformat.read_array_header_2_0
        shape, fortran, dtype = read_header(fp)
    except (ValueError, OSError, EOFError) as err:
        raise ProtocolError(f"body is not a valid .npy array ({err})") from err
    if dtype != np.uint8 or len(shape) != 4:
        raise ProtocolError(f"images must be uint8 [N, C, H, W], got {dtype} {list(shape)}")
    _check_count(shape, max_images)
    header = fp.tell()
    expected = math.prod(shape)  # Python integers: no overflow whatever the header says
    if len(body) - header != expected:
        raise ProtocolError(f".npy header declares {list(shape)} ({expected} bytes) but the body holds "
                            f"{len(body) - header} bytes of data")
    arr = np.frombuffer(body, dtype=np.uint8, offset=header)
    return arr.reshape(shape[::-1]).transpose() if fortran else arr.reshape(shape)


def _check_count(shape: tuple[int, ...], max_images: int) -> None:
    if min(shape) <= 0:
        raise ProtocolError(f"a request holds at least one image and every dimension is positive, got {list(shape)}")
    if shape[0] > max_images:
        raise ProtocolError(f"at most {max_images} images a request, got {shape[0]}")


def decode_images(body: bytes, content_type: str | None, shape_header: str | None, *,
                  max_images: int = MAX_IMAGES, expect: Sequence[int] | None = None) -> np.ndarray:
    """The ``uint8 [N, C, H, W]`` array of a request body (a read-only view of it), or a
    :class:`ProtocolError`. Sizes are checked in Python integers before anything is allocated.
    ``expect``: the ``[C, H, W]`` the expert takes; a compressed picture must hold exactly such images
    (its declared size is checked before it is decoded), and gives one image without ``X-Shape``."""
    kind = (content_type or "").split(";")[0].strip().lower()
    if kind == NPY:
        return _npy_array(body, max_images)
    if kind in FORMATS:
        return _picture(body, kind, shape_header, max_images, expect)
    if kind != OCTET:
        raise ProtocolError(f"unsupported content type {content_type!r}: send {OCTET} (with {SHAPE_HEADER}), {NPY}, "
                            f"or one of {', '.join(FORMATS)}", "content_type")
    if not shape_header:
        raise ProtocolError(f"raw bodies need the header {SHAPE_HEADER}: N,C,H,W")
    shape = _shape(shape_header)
    _check_count(shape, max_images)
    expected = math.prod(shape)  # Python integers: no overflow on a hostile header
    if len(body) != expected:
        raise ProtocolError(f"body has {len(body)} bytes but {SHAPE_HEADER} {shape_header} needs {expected}")
    return np.frombuffer(body, dtype=np.uint8).reshape(shape)


def _picture(body: bytes, kind: str, shape_header: str | None, max_images: int,
             expect: Sequence[int] | None) -> np.ndarray:
    if shape_header:
        shape = _shape(shape_header)
    elif expect is not None:
        shape = (1, *expect)
    else:
        raise ProtocolError(f"a {kind} body without {SHAPE_HEADER} needs the expert's input shape")
    _check_count(shape, max_images)
    if shape[1] not in (1, 3):
        raise ProtocolError(f"{kind} bodies carry 1 or 3 channels, {SHAPE_HEADER} declares {shape[1]}")
    if expect is not None and list(shape[1:]) != list(expect):
        raise ProtocolError(f"this expert takes images of shape {list(expect)} (C, H, W), {SHAPE_HEADER} declares "
                            f"{list(shape[1:])}")
    try:
        return decompress(body, kind, shape)
    except CodecError as err:
        raise ProtocolError(str(err)) from err


def _shape(shape_header: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in shape_header.split(","))
    except ValueError as err:
        raise ProtocolError(f"{SHAPE_HEADER} must be four integers N,C,H,W, got {shape_header[:80]!r}") from err
    if len(shape) != 4:
        raise ProtocolError(f"{SHAPE_HEADER} must be four integers N,C,H,W, got {shape_header[:80]!r}")
    return shape


def image_results(probs: np.ndarray, output_ids: Sequence[int], topk: int) -> list[dict]:
    """The one place an answer is built: per image (row of ``probs``, probabilities over an expert's outputs
    whose global class ids are ``output_ids``, ``OTHER`` for "other"), the fields of :class:`ImageResult`
    as plain values: the top ``topk`` outputs by probability, ties broken towards the lower output (as
    argmax)."""
    if len(probs) == 1:  # the edge's usual request: plain Python over one row beats NumPy's calls
        row = probs[0].tolist()
        if all(map(math.isfinite, row)):
            order = sorted(range(len(row)), key=row.__getitem__, reverse=True)[:topk]  # stable: ties keep
            ids = [output_ids[i] for i in order]  # the lower output first
            top_p = [row[i] for i in order]
            return [{"pred": ids[0], "confidence": top_p[0], "other": ids[0] == OTHER, "topk": ids, "probs": top_p}]
    return image_results_batched(probs, output_ids, topk)


def image_results_batched(probs: np.ndarray, output_ids: Sequence[int], topk: int) -> list[dict]:
    """:func:`image_results` in NumPy over the whole batch (the path of every batch but a lone image)."""
    k = min(topk, probs.shape[1])
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]  # ties: the lower output first, as argmax
    top_p = np.take_along_axis(probs, order, 1).tolist()
    ids = np.asarray(output_ids)[order].tolist()
    return [{"pred": id_row[0], "confidence": p_row[0], "other": id_row[0] == OTHER, "topk": id_row,
             "probs": p_row} for p_row, id_row in zip(top_p, ids, strict=True)]


def infer_response(expert: str, results: list[dict], queue_ms: float, compute_ms: float, batch_size: int) -> dict:
    """The body of an answer (:class:`InferResponse`) as plain values, for one JSON serialisation."""
    return {"expert": expert, "results": results,
            "timings": {"queue_ms": queue_ms, "compute_ms": compute_ms, "batch_size": batch_size}}


class TryResult(BaseModel):
    """One expert asked about one image of a re-routed request (contract.reroute)."""

    expert: str
    pred: int = Field(description="its answer as a global class id; -1 means 'other'")
    confidence: float
    queue_ms: float = Field(description="time the image waited for this expert's batch")
    compute_ms: float = Field(description="time that batch took on the model")
    batch_size: int = Field(description="images in that batch")


class ImageResult(BaseModel):
    pred: int = Field(description="the expert's answer as a global class id; -1 means 'other'")
    confidence: float = Field(description="the expert's probability of its answer")
    other: bool = Field(description="the expert says the image is not one of its classes")
    topk: list[int] = Field(description="global class ids, most probable first (-1: 'other')")
    probs: list[float] = Field(description="probabilities of the topk entries")
    expert: str | None = Field(None, description="the expert whose answer this is (a re-routed request: the "
                                                 "try that stands, contract.reroute)")
    tries: list[TryResult] | None = Field(None, description="every expert asked, in order (a request with "
                                                           "'next', on a server whose bundle re-routes)")


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
